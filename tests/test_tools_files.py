"""The file tools: reading with a cap, listing, searching, and writes that are
syntax-checked, stored as blobs and reported with before/after hashes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ToolError
from engine.tools import ToolContext, ToolOutcome, default_registry, execute, files
from engine.tools.files import apply_edit
from events import MemoryEventStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "app.py").write_text("def f():\n    return 1\n")
    (ws / "README.md").write_text("# demo\nhello world\n")
    (ws / ".git").mkdir()
    (ws / ".git" / "HEAD").write_text("hello world\n")
    (ws / ".autonomy").mkdir()
    (ws / ".autonomy" / "notes").write_text("hello world\n")
    (ws / "blob.bin").write_bytes(b"hello world\x00\x01\x02")
    return ws


@pytest.fixture
def blobs() -> MemoryEventStore:
    return MemoryEventStore()


@pytest.fixture
def ctx(workspace: Path, blobs: MemoryEventStore) -> ToolContext:
    return ToolContext(workspace=workspace, blobs=blobs, max_read_bytes=1000)


def call(ctx: ToolContext, name: str, **arguments: Any) -> ToolOutcome:
    return execute(default_registry(), name, arguments, ctx)


# -- read_file -------------------------------------------------------------------------


def test_read_file_returns_the_content(ctx: ToolContext) -> None:
    outcome = call(ctx, "read_file", path="src/app.py")
    assert outcome.ok and outcome.result == "def f():\n    return 1\n"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("read_file", {}),
        ("modify_file", {"old_text": "a", "new_text": "b"}),
        ("create_file", {"content": "x = 1\n", "overwrite": True}),
        ("delete_file", {}),
    ],
)
def test_a_fifo_a_command_left_is_refused_not_waited_on(
    ctx: ToolContext, workspace: Path, tool: str, arguments: dict[str, Any]
) -> None:
    """A command may leave a FIFO in the workspace; opening one to read waits for a
    writer that never comes, and the engine would hang (as it did)."""
    os.mkfifo(workspace / "pipe.py")
    done: list[ToolOutcome] = []
    worker = threading.Thread(
        target=lambda: done.append(call(ctx, tool, path="pipe.py", **arguments)), daemon=True
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():  # release it (a writer opening the FIFO), then fail
        os.close(os.open(workspace / "pipe.py", os.O_WRONLY))
        worker.join()
        pytest.fail(f"{tool} waited on a FIFO")
    assert not done[0].ok and "is not a regular file" in done[0].error
    assert (workspace / "pipe.py").exists(), "nothing is done to it"


def test_a_file_too_large_to_be_source_is_refused_and_one_long_line_is_cut(
    ctx: ToolContext, workspace: Path
) -> None:
    """A command can write files of up to file_size_mb: read_file and modify_file take
    at most 8 MB (a file of 256 MB of short lines took gigabytes as strings), and a
    single line longer than a read is cut, not returned whole."""
    (workspace / "data.txt").write_bytes(b"1\n" * 4_500_000)  # 9 MB
    for tool, extra in (("read_file", {}), ("modify_file", {"old_text": "1", "new_text": "2"})):
        outcome = call(ctx, tool, path="data.txt", **extra)
        assert not outcome.ok and "is 9,000,000 bytes" in outcome.error, outcome.error
    (workspace / "line.txt").write_text("y" * 50_000)
    outcome = call(ctx, "read_file", path="line.txt")
    assert outcome.ok and outcome.result.startswith("y" * 1000)
    assert "[truncated: line 1 is 50,000 characters; showing the first 1,000]" in outcome.result
    assert len(outcome.result) < 1100


def test_read_file_is_capped_and_says_how_to_continue(ctx: ToolContext, workspace: Path) -> None:
    lines = [f"line {i:04d} " + "x" * 40 + "\n" for i in range(1, 101)]
    (workspace / "big.txt").write_text("".join(lines))
    first = call(ctx, "read_file", path="big.txt")
    assert first.ok
    assert len(first.result) < 1200
    assert (
        "[truncated: showing lines 1-19 of 100; call read_file with start_line=20" in first.result
    )
    second = call(ctx, "read_file", path="big.txt", start_line=20)
    assert second.result.startswith("line 0020 ")
    last = call(ctx, "read_file", path="big.txt", start_line=100)
    assert last.result == lines[-1]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("blob.bin", "binary file"),
        ("missing.py", "does not exist"),
        ("src", "is a directory; use list_directory"),
    ],
)
def test_read_file_refusals(ctx: ToolContext, path: str, error: str) -> None:
    outcome = call(ctx, "read_file", path=path)
    assert not outcome.ok and error in outcome.error


# -- list_directory and search_code -----------------------------------------------------


def test_list_directory_shows_entries_but_not_tooling(ctx: ToolContext) -> None:
    outcome = call(ctx, "list_directory")
    assert outcome.result.splitlines() == [
        "README.md  (19 bytes)",
        "blob.bin  (14 bytes)",
        "src/",
    ]
    deep = call(ctx, "list_directory", path=".", recursive=True)
    assert "src/app.py  (22 bytes)" in deep.result
    assert call(ctx, "list_directory", path="src/app.py").error.endswith("use read_file to read it")


def test_a_name_a_command_made_cannot_fake_a_line_of_the_listing(ctx: ToolContext) -> None:
    """A file named ``nl\\nfake  (9 bytes)`` listed as two entries, one of them made up."""
    (ctx.workspace / "nl\nfake  (9 bytes)").write_text("x")
    (ctx.workspace / "tab\there").write_text("x")
    listing = call(ctx, "list_directory").result.splitlines()
    assert "nl\\nfake  (9 bytes)  (1 bytes)" in listing and "fake  (9 bytes)" not in listing
    assert "tab\\there  (1 bytes)" in listing
    assert len(listing) == 5, listing


def test_search_code_finds_substrings_and_skips_tooling_and_binaries(ctx: ToolContext) -> None:
    outcome = call(ctx, "search_code", pattern="hello world")
    assert outcome.ok
    assert outcome.result == "README.md:2: hello world"


def test_search_code_regex_glob_and_single_file(ctx: ToolContext) -> None:
    assert call(ctx, "search_code", pattern=r"return \d", regex=True).result == (
        "src/app.py:2: return 1"
    )
    assert call(ctx, "search_code", pattern="e", glob="*.py").result.startswith("src/app.py:")
    assert (
        call(ctx, "search_code", pattern="def", path="src/app.py").result
        == "src/app.py:1: def f():"
    )
    # without regex=True the pattern is literal
    assert call(ctx, "search_code", pattern=r"return \d").result == "no matches"


def test_search_code_is_bounded(ctx: ToolContext, workspace: Path) -> None:
    (workspace / "many.txt").write_text("needle\n" * 500)
    outcome = call(ctx, "search_code", pattern="needle", max_results=7)
    lines = outcome.result.splitlines()
    assert len(lines) == 8 and lines[-1].startswith("[stopped after 7 matches")
    capped = execute(
        default_registry(),
        "search_code",
        {"pattern": "needle", "max_results": 10_000},
        ToolContext(workspace=workspace, blobs=MemoryEventStore(), max_search_results=3),
    )
    assert len(capped.result.splitlines()) == 4


def test_search_code_reports_a_bad_regex(ctx: ToolContext) -> None:
    outcome = call(ctx, "search_code", pattern="(unclosed", regex=True)
    assert not outcome.ok and "invalid regular expression" in outcome.error


SEARCH_FOR_EVER = """
import sys, time
from pathlib import Path
from engine.tools import ToolContext, default_registry, execute
from events import MemoryEventStore

workspace = Path(sys.argv[1])
(workspace / "a.txt").write_text("a" * 60 + "b\\n")
(workspace / "b.txt").write_text("aaa\\n")
context = ToolContext(workspace=workspace, blobs=MemoryEventStore())
for pattern in ("(a|aa)+$", "a{3}$"):
    started = time.monotonic()
    found = execute(default_registry(), "search_code", {"pattern": pattern, "regex": True}, context)
    print(found.ok, round(time.monotonic() - started), found.error or found.result)
"""


def test_a_pattern_that_backtracks_for_ever_is_stopped_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    """Matching runs in the engine: ``(a|aa)+$`` on 60 a's backtracks for longer than
    any run lasts, and ``re`` cannot be stopped (the engine hung). The search stops
    after ``SEARCH_SECONDS`` with an error that says why; the next search works."""
    done = subprocess.run(
        [sys.executable, "-c", SEARCH_FOR_EVER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    stopped, next_one = done.stdout.splitlines()
    ok, seconds, said = stopped.split(" ", 2)
    assert ok == "False" and int(seconds) < 60, stopped
    assert said.startswith("the search for '(a|aa)+$' was stopped after 2s of matching"), said
    assert "nested repetition" in said
    assert next_one.startswith("True ") and next_one.endswith(" b.txt:1: aaa"), next_one


def test_a_search_out_of_time_from_reading_files_says_so_not_the_patterns_fault(
    ctx: ToolContext, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget counted only matching: 20,000 large files took 30 s, and on many
    small ones a plain pattern was blamed for "nested repetition". Reading counts
    too, and a search out of time returns what it found, saying where it stopped."""
    for name in ("a.txt", "b.txt"):
        (workspace / name).write_text("needle\n")
    monkeypatch.setattr(files, "SEARCH_SECONDS", 0)
    outcome = call(ctx, "search_code", pattern="needle")
    assert outcome.ok, outcome.error
    assert outcome.result == "[stopped after 0s, 0 files searched; narrow the path or the glob]"


# -- create_file -----------------------------------------------------------------------


def test_create_file_writes_stores_the_blob_and_reports_the_hashes(
    ctx: ToolContext, workspace: Path, blobs: MemoryEventStore
) -> None:
    content = "def add(a, b):\n    return a + b\n"
    outcome = call(ctx, "create_file", path="pkg/sub/calc.py", content=content)
    assert outcome.ok, outcome.error
    data = content.encode()
    assert (workspace / "pkg" / "sub" / "calc.py").read_bytes() == data
    (change,) = outcome.files_changed
    assert change.path == "pkg/sub/calc.py"
    assert change.before is None
    assert change.after == sha(data)
    assert change.size == len(data)
    assert blobs.get(change.after) == data
    assert not outcome.finishes


def test_create_file_refuses_to_clobber_unless_asked(
    ctx: ToolContext, workspace: Path, blobs: MemoryEventStore
) -> None:
    old = (workspace / "README.md").read_bytes()
    refused = call(ctx, "create_file", path="README.md", content="new\n")
    assert (
        not refused.ok and "already exists" in refused.error and "overwrite=true" in refused.error
    )
    assert (workspace / "README.md").read_bytes() == old
    replaced = call(ctx, "create_file", path="README.md", content="new\n", overwrite=True)
    (change,) = replaced.files_changed
    assert change.before == sha(old) and change.after == sha(b"new\n")
    assert blobs.get(change.before) == old  # the old content can be restored


def test_a_python_syntax_error_is_refused_and_nothing_is_written(
    ctx: ToolContext, workspace: Path, blobs: MemoryEventStore
) -> None:
    outcome = call(ctx, "create_file", path="src/bad.py", content="def f(:\n    pass\n")
    assert not outcome.ok
    assert "line 1" in outcome.error and "unchanged" in outcome.error
    assert not (workspace / "src" / "bad.py").exists()
    assert outcome.files_changed == ()


def test_non_python_files_are_not_syntax_checked(ctx: ToolContext) -> None:
    assert call(ctx, "create_file", path="notes.txt", content="def f(:\n").ok


# -- modify_file -----------------------------------------------------------------------


def test_modify_file_exact_match(ctx: ToolContext, workspace: Path) -> None:
    outcome = call(ctx, "modify_file", path="src/app.py", old_text="return 1", new_text="return 2")
    assert outcome.ok and "matched exact" in outcome.result
    assert (workspace / "src" / "app.py").read_text() == "def f():\n    return 2\n"
    (change,) = outcome.files_changed
    assert change.before == sha(b"def f():\n    return 1\n")
    assert change.after == sha(b"def f():\n    return 2\n")


def test_modify_file_tolerates_whitespace_when_the_match_is_unique(
    ctx: ToolContext, workspace: Path
) -> None:
    source = "class A:\n    def f(self):\n        x = 1\n\n        return x\n"
    (workspace / "a.py").write_text(source)
    # quoted without the class indentation, with a blank line dropped and odd spacing
    outcome = call(
        ctx,
        "modify_file",
        path="a.py",
        old_text="def f(self):\n    x =  1\n    return x",
        new_text="def f(self):\n    x = 2\n    return x * 2",
    )
    assert outcome.ok, outcome.error
    assert "ignoring whitespace" in outcome.result
    assert (workspace / "a.py").read_text() == (
        "class A:\n    def f(self):\n        x = 2\n        return x * 2\n"
    )


def test_modify_file_refuses_an_ambiguous_whitespace_match(
    ctx: ToolContext, workspace: Path
) -> None:
    source = "def f():\n    return 1\n\ndef g():\n        return 1\n"
    (workspace / "two.py").write_text(source)
    outcome = call(ctx, "modify_file", path="two.py", old_text="  return 1 ", new_text="return 3")
    assert not outcome.ok
    assert "matches 2 places" in outcome.error and "lines 2, 5" in outcome.error
    assert (workspace / "two.py").read_text() == source


def test_modify_file_refuses_repeated_exact_text_unless_replace_all(
    ctx: ToolContext, workspace: Path
) -> None:
    (workspace / "r.txt").write_text("a\nb\na\n")
    outcome = call(ctx, "modify_file", path="r.txt", old_text="a", new_text="c")
    assert not outcome.ok and "occurs 2 times" in outcome.error and "lines 1, 3" in outcome.error
    assert (workspace / "r.txt").read_text() == "a\nb\na\n"
    assert call(ctx, "modify_file", path="r.txt", old_text="a", new_text="c", replace_all=True).ok
    assert (workspace / "r.txt").read_text() == "c\nb\nc\n"


def test_modify_file_with_missing_text_leaves_the_file_and_hints(
    ctx: ToolContext, workspace: Path
) -> None:
    outcome = call(ctx, "modify_file", path="src/app.py", old_text="return 11", new_text="x")
    assert not outcome.ok
    assert "not found" in outcome.error and "closest line is 2: 'return 1'" in outcome.error
    assert (workspace / "src" / "app.py").read_text() == "def f():\n    return 1\n"


def test_modify_file_that_breaks_python_leaves_the_file_untouched(
    ctx: ToolContext, workspace: Path, blobs: MemoryEventStore
) -> None:
    path = workspace / "src" / "app.py"
    before = path.read_bytes()
    outcome = call(ctx, "modify_file", path="src/app.py", old_text="return 1", new_text="return (")
    assert not outcome.ok
    assert "syntax error at line 2" in outcome.error
    assert path.read_bytes() == before
    assert not blobs.has_blob(sha(b"def f():\n    return (\n"))


def test_modify_file_keeps_the_file_mode(ctx: ToolContext, workspace: Path) -> None:
    script = workspace / "run.sh"
    script.write_text("echo 1\n")
    script.chmod(0o755)
    assert call(ctx, "modify_file", path="run.sh", old_text="1", new_text="2").ok
    assert script.stat().st_mode & 0o777 == 0o755


def test_apply_edit_directly() -> None:
    assert apply_edit("a b\n", "a b", "c") == ("c\n", "exact")
    assert apply_edit("x\n  a   b  \ny\n", "a b", "c") == ("x\n  c\ny\n", "ignoring whitespace")
    with pytest.raises(ToolError, match="empty"):
        apply_edit("a", "  \n", "b")
    with pytest.raises(ToolError, match="the same"):
        apply_edit("a", "a", "a")


# -- delete_file -----------------------------------------------------------------------


def test_delete_file_reports_the_old_hash_and_keeps_the_content(
    ctx: ToolContext, workspace: Path, blobs: MemoryEventStore
) -> None:
    old = (workspace / "README.md").read_bytes()
    outcome = call(ctx, "delete_file", path="README.md")
    assert outcome.ok
    assert not (workspace / "README.md").exists()
    (change,) = outcome.files_changed
    assert (change.path, change.before, change.after, change.size) == (
        "README.md",
        sha(old),
        None,
        0,
    )
    assert blobs.get(sha(old)) == old


def test_delete_file_refuses_directories_and_missing_files(ctx: ToolContext) -> None:
    assert "is a directory" in call(ctx, "delete_file", path="src").error
    assert "does not exist" in call(ctx, "delete_file", path="nope.txt").error


# -- bounds on what one call may cost ------------------------------------------------------


def test_a_pattern_unrolled_into_millions_of_items_is_refused_before_it_is_compiled(
    ctx: ToolContext,
) -> None:
    """``regex`` writes counted repeats out when it compiles: 33 characters,
    ``(?:(?:(?:a{40}){40}){40}){40}``, took 400 MB of the engine's memory (kept in the
    module's cache for the run), a 45-character one 8 GB. The size is read from the
    text first; a pattern longer than a search needs is refused before either."""
    for pattern in ("(?:(?:(?:a{40}){40}){40}){40}", "(?:a{1000}){1000}", "x{999999999}"):
        outcome = call(ctx, "search_code", pattern=pattern, regex=True)
        assert not outcome.ok and "too large once its counted repeats" in outcome.error
    assert call(ctx, "search_code", pattern="(?:a{100}){100}|hello", regex=True).ok
    assert call(ctx, "search_code", pattern="(?:(?:a{40}){40}){40}", regex=True).ok
    # as text, the braces are only characters
    assert call(ctx, "search_code", pattern="(?:a{1000}){1000}").result == "no matches"
    too_long = call(ctx, "search_code", pattern="x" * (files.MAX_PATTERN_CHARS + 1))
    assert not too_long.ok and "1,001 characters; a search takes at most 1,000" in too_long.error


@pytest.mark.parametrize(
    ("pattern", "size"),
    [
        ("abc", 3),
        ("a{1000}", 1000),
        ("(?:a{10}){10}", (1 + 10) * 10),  # the group's "?:" counts a little
        ("[{(]{5}", 5),  # a class is one item, whatever it holds
        (r"\{5}", 3),  # an escaped brace counts no repeat
        ("a{,5}b{2,}", 7),
        ("((a{10}){10}", 100),  # unclosed: as if closed at the end
        ("a)){9}", 1 + 1 + 9),  # an unopened ")" is a character
    ],
)
def test_the_unrolled_size_of_a_pattern(pattern: str, size: int) -> None:
    assert files._unrolled_size(pattern) == size


@given(st.text(alphabet="ab()[]{}\\,0123456789^*+?|:", max_size=60))
def test_any_text_has_an_unrolled_size(pattern: str) -> None:
    assert files._unrolled_size(pattern) >= 0


def test_a_search_out_of_time_in_a_tree_without_files_stops(
    ctx: ToolContext, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget was looked at only once a file had been read: 200,000 empty
    directories (or files the glob leaves out) were walked whatever it said."""
    for n in range(5):
        (workspace / "empty" / f"d{n}").mkdir(parents=True)
    monkeypatch.setattr(files, "SEARCH_SECONDS", 0)
    outcome = call(ctx, "search_code", pattern="x", path="empty", glob="*.none")
    assert outcome.result.startswith("[stopped after 0s, 0 files searched"), outcome.result


def test_an_edit_that_would_make_a_file_too_large_is_refused_before_it_is_made(
    ctx: ToolContext, workspace: Path
) -> None:
    """``replace_all`` multiplies: a 100 KB file and a 5 KB new_text wrote a 500 MB
    file (2 GB of memory, 1 GB of log) that read_file then refused to read. The
    result's size is worked out first; no tool writes more than read_file reads."""
    (workspace / "a.txt").write_text("a" * 10_000)
    outcome = call(
        ctx, "modify_file", path="a.txt", old_text="a", new_text="b" * 1_000, replace_all=True
    )
    assert not outcome.ok and "would be 10,000,000 bytes" in outcome.error
    assert (workspace / "a.txt").read_text() == "a" * 10_000
    big = call(ctx, "create_file", path="big.txt", content="x" * (files.MAX_TEXT_FILE_BYTES + 1))
    assert not big.ok and "at most 8,000,000 bytes" in big.error
    assert not (workspace / "big.txt").exists()


def test_text_found_many_times_names_the_first_lines_only(
    ctx: ToolContext, workspace: Path
) -> None:
    """Every line was named, each counted from the file's start: 150,000 places
    took 30 s and made an error of a million characters."""
    (workspace / "a.txt").write_text("x\na\n" * 5_000)
    outcome = call(ctx, "modify_file", path="a.txt", old_text="a", new_text="b")
    assert "occurs 5,000 times" in outcome.error
    assert "(lines 2, 4, 6, 8, 10, 12, 14, 16, 18, 20 and 4,990 more)" in outcome.error


def _naive_spans(lines: list[str], old: str) -> list[tuple[int, int]]:
    want = [files._normal(line) for line in old.splitlines() if line.strip()]
    have = [(i, files._normal(line)) for i, line in enumerate(lines) if line.strip()]
    k = len(want)
    return [
        (have[j][0], have[j + k - 1][0])
        for j in range(len(have) - k + 1)
        if k and [n for _, n in have[j : j + k]] == want
    ]


@given(
    st.lists(st.sampled_from(["a", " a", "b", "", "a b", "a  b "]), max_size=30),
    st.lists(st.sampled_from(["a", "b ", "", "a b"]), min_size=1, max_size=5),
)
def test_whitespace_tolerant_matching_finds_what_comparing_at_every_line_finds(
    lines: list[str], old: list[str]
) -> None:
    """In one pass now (comparing at every line took 15 s for 40,000 lines and an
    old_text of 20,000), with the same answers, overlapping matches included."""
    text = [line + "\n" for line in lines]
    assert files._tolerant_spans(text, "\n".join(old)) == _naive_spans(text, "\n".join(old))


def test_the_closest_line_hint_looks_at_a_bounded_part_of_the_file(
    ctx: ToolContext, workspace: Path
) -> None:
    """difflib's cost grows with the square of a line's length: one line of 48,000
    characters took 16 s. Lines are cut and counted before they are compared."""
    (workspace / "a.txt").write_text("value = compute(1)\n" + "q" * 48_000 + "\n")
    outcome = call(ctx, "modify_file", path="a.txt", old_text="value = compute(2)", new_text="x")
    assert "the closest line is 1: 'value = compute(1)'" in outcome.error
    (workspace / "b.txt").write_text("x\n" * files.HINT_LINES + "value = compute(1)\n")
    beyond = call(ctx, "modify_file", path="b.txt", old_text="value = compute(2)", new_text="x")
    assert "read the file again and copy the text exactly" in beyond.error


def test_a_file_too_large_to_keep_is_neither_deleted_nor_replaced_by_the_file_tools(
    ctx: ToolContext, workspace: Path
) -> None:
    """Their old content goes into the log so that a rewind can put it back: read
    whole, a sparse 255 MB file a command made was stored twice (768 MB of log),
    although a command's snapshot leaves such files out."""
    with open(workspace / "big.dat", "wb") as handle:
        handle.truncate(files.MAX_RECORDED_BYTES + 1)
    deleted = call(ctx, "delete_file", path="big.dat")
    replaced = call(ctx, "create_file", path="big.dat", content="small", overwrite=True)
    for outcome, verb in ((deleted, "deleted"), (replaced, "replaced")):
        assert not outcome.ok and f"so it cannot be {verb} by this tool" in outcome.error
    assert (workspace / "big.dat").stat().st_size == files.MAX_RECORDED_BYTES + 1


def test_an_error_quoting_a_huge_argument_is_cut(ctx: ToolContext) -> None:
    """Errors are kept whole in the log and sent back to the model; several quote
    the model's argument: a 1 MB command line made a 4 MB error."""
    unclosed = "echo '" + "\x01" * 30_000
    outcome = call(ctx, "run_command", argv=unclosed)
    assert not outcome.ok and "cannot split command" in outcome.error
    assert len(outcome.error) < 2_100 and outcome.error.endswith("more characters cut]")
    too_long = call(ctx, "run_command", argv="python " + "x" * 40_000)
    assert "the command line is 40,007 characters; at most 32,768 are split" in too_long.error
