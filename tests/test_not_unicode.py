"""Text that is not Unicode: a file name that is not UTF-8 (which a test the model
wrote can make), a lone surrogate escape in a tool call the model wrote as text, a
command-line argument that is not UTF-8. A log holds Unicode text only: none of them
may crash the engine or a command; each is shown escaped, or refused clearly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from test_engine_run import PlansOneTask

from engine.cli import cli
from engine.runs.replay import replay
from engine.storage import open_store
from engine.terminal import PrintableStream, printable, unicode_text
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from engine.tools import ToolContext, default_registry, execute
from events import MemoryEventStore, ModelResponded, RunStarted, ToolExecuted, ToolRequested
from events.errors import SchemaError

AUTONOMY = str(Path(sys.executable).parent / "autonomy")
BAD_NAME = os.fsdecode(b"bad\xff.txt")
MAKES_IT = f"def test_it():\n    open({os.fsencode(BAD_NAME)!r}, 'wb').write(b'x')\n"


class MakesABadName(PlansOneTask):
    """Writes a test that makes a file whose name is not UTF-8, runs it, lists the
    workspace, then says it is done."""

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        messages = request.body.get("messages", [])
        done = sum(m.get("role") == "tool" for m in messages)
        if "create_file" not in offered:
            return Reply.text("looks fine")
        if done == 0:
            return Reply.calls(
                ("create_file", {"path": "test_bad.py", "content": MAKES_IT}),
                ("run_command", {"argv": ["python", "-m", "pytest", "-q"]}),
                ("list_directory", {"path": "."}),
            )
        return Reply.tool("complete_task", summary="done")


def run_cli(tmp_path: Path, script: object, *more: str) -> tuple[int, str]:
    with ScriptedModelServer(script, models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", "build it", "--workspace", str(tmp_path / "ws"),
             "--db", str(tmp_path / "e.db"), "--run-id", "r", "--max-steps", "6",
             "--model-url", server.url, "--api", "ollama", "--model", "m", *more],
        )  # fmt: skip
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def test_a_file_name_that_is_not_utf8_is_named_escaped_and_the_run_goes_on_and_replays(
    tmp_path: Path,
) -> None:
    _, output = run_cli(tmp_path, MakesABadName())
    assert (tmp_path / "ws" / BAD_NAME).exists(), "the model's test made it"
    assert "run r: " in output, "the run went on to its end"
    with open_store(tmp_path / "e.db") as store:
        executed = {
            e.data.tool: e.data for e in store.read("r") if isinstance(e.data, ToolExecuted)
        }
        command, listing = executed["run_command"], executed["list_directory"]
        assert command.ok and listing.ok
        assert "names that are not UTF-8: bad\\xff.txt" in command.result
        assert all(change.path != BAD_NAME for change in command.files_changed)
        assert "bad\\xff.txt" in listing.result
        assert store.verify("r").ok
        assert replay(store, "r", tools="recorded").identical
        assert replay(store, "r").identical


class WritesACallWithASurrogate(PlansOneTask):
    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        if "create_file" in offered:
            return Reply.text(
                '{"name": "create_file", "arguments": {"path": "x\\udcff.py", "content": "1"}}'
            )
        return Reply.text("fine")


def test_a_tool_call_written_as_text_with_a_lone_surrogate_is_no_call(tmp_path: Path) -> None:
    """Python's JSON parser takes ``"\\udcff"``; a model answer's parser refuses it, and
    the log could not hold it: the text is prose, not a call, and the run goes on."""
    run_cli(tmp_path, WritesACallWithASurrogate(), "--max-steps", "3")
    with open_store(tmp_path / "e.db") as store:
        answers = [e.data for e in store.read("r") if isinstance(e.data, ModelResponded)]
        requested = [e.data for e in store.read("r") if isinstance(e.data, ToolRequested)]
    assert any("x\\udcff.py" in a.content and not a.tool_calls for a in answers)
    assert all(r.tool != "create_file" for r in requested)


@pytest.mark.parametrize(
    "args",
    [
        [b"run", b"goal", b"--workspace", b"/tmp/w\xff"],
        [b"run", b"go\xffal"],
        [b"state", b"r\xff"],
        [b"audit", b"--sql", b"SELECT '\xff'"],
    ],
    ids=["workspace", "goal", "run-id", "sql"],
)
def test_an_argument_that_is_not_utf8_is_one_clear_error(tmp_path: Path, args: list[bytes]) -> None:
    done = subprocess.run(
        [os.fsencode(AUTONOMY), *args, b"--db", os.fsencode(tmp_path / "e.db")],
        capture_output=True,
    )
    assert done.returncode == 2 and b"Traceback" not in done.stderr, done.stderr
    assert b"is not UTF-8 text" in done.stderr and b"\\xff" in done.stderr
    assert not (tmp_path / "e.db").exists(), "nothing was written"


def test_an_event_holding_text_that_is_not_unicode_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    """The last guard, whatever the source: the store refuses the event clearly."""
    with open_store(tmp_path / "e.db") as store:
        with pytest.raises(SchemaError, match="holds text that is not valid Unicode"):
            store.append("r", [RunStarted(goal="g", workspace=BAD_NAME)], 0)
        assert store.last_version("r") == 0


def test_tools_and_the_terminal_show_such_text_escaped(tmp_path: Path) -> None:
    (tmp_path / BAD_NAME).write_bytes(b"x")
    context = ToolContext(workspace=tmp_path, blobs=MemoryEventStore())
    listing = execute(default_registry(), "list_directory", {"path": "."}, context)
    assert listing.ok and "bad\\xff.txt" in listing.result
    assert unicode_text("a\ud800b") == "a\ufffdb" and unicode_text("ok é") == "ok é"
    written: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            text.encode("utf-8")  # what a UTF-8 terminal's stream does: strict
            written.append(text)
            return len(text)

    PrintableStream(Out()).write(f"file {BAD_NAME}\n")  # type: ignore[arg-type]
    assert written == ["file bad\\xff.txt\n"]


HOSTILE_CHARACTERS = st.one_of(
    st.characters(codec=None, exclude_categories=()),  # lone surrogates too
    st.sampled_from(["\x1b", "\x07", "\x9b", "\udcff", "\u202e", "\u2066", "\r", "\n"]),
)


@given(st.text(alphabet=HOSTILE_CHARACTERS))
def test_any_text_is_printed_as_unicode_with_no_control_character(text: str) -> None:
    """Whatever a log, a disk or a model hands over (lone surrogates included), what
    is printed encodes as UTF-8 and holds no control character but tab and line
    break, and no bidirectional override; text that was fine stays as it was."""
    shown = printable(text)
    shown.encode("utf-8")
    assert not any(_hostile(c) for c in shown), shown
    assert not re.search(f"(?:^|[\\x00-\\x7f])[{SELECTORS}](?!\u20e3)", shown), shown
    assert not re.search(f"[{TAGS}]", FLAGS.sub("", shown)), shown  # a tag but in a flag
    if not any(_hostile(c) or 0xD800 <= ord(c) < 0xE000 or _contextual(c) for c in text):
        assert shown == text, "text that was fine stays as it was"


def _hostile(c: str) -> bool:
    """A control character (but tab and line break), a bidirectional override, or a
    character drawn as nothing: a format character but the joiners (U+200C, U+200D),
    a grapheme joiner, a Hangul filler."""
    return (
        (ord(c) < 0x20 and c not in "\t\n")
        or 0x7F <= ord(c) < 0xA0
        or c in BIDI
        or (unicodedata.category(c) == "Cf" and c not in DRAWN and not _contextual(c))
        or c in "\u034f\u115f\u1160\u3164\uffa0"
    )


DRAWN = "\u200c\u200d\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
"""Format characters that are drawn, or shape what is: the joiners, and the marks
drawn over the digits after them (an Arabic number sign)."""
SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
TAGS = "\U000e0020-\U000e007f"
FLAGS = re.compile(f"\U0001f3f4[{TAGS}]+")


def _contextual(c: str) -> bool:
    """A variation selector or a tag: escaped or not by what stands around it."""
    return bool(re.fullmatch(f"[{SELECTORS}{TAGS}]", c))


def test_every_character_drawn_as_nothing_is_shown_escaped_as_json_would() -> None:
    """A file name with a zero-width space, an invisible plus, a soft hyphen or a tag
    character (U+E0041, an invisible "A") was printed and shown on the pages as the
    name without it: "calc\\u2064.py" beside "calc.py", the two alike. Each is
    escaped, as JSON writes it, so JSON printed through the same stream stays JSON."""

    every = [
        chr(c)
        for c in range(0x110000)
        if unicodedata.category(chr(c)) == "Cf" and chr(c) not in DRAWN
    ]
    for c in every + list("\u034f\u115f\u1160\u3164\uffa0"):
        shown = printable(f"calc{c}.py")
        assert shown.isascii() and shown != "calc.py", repr(c)
        assert json.loads(f'"{shown}"') == f"calc{c}.py"
    assert printable("calc\ufe0f.py\ufe0e") == "calc\\ufe0f.py\\ufe0e"
    assert printable("\U000e0100x") == "\\udb40\\udd00x"
    assert printable("I \u2764\ufe0f it \u845b\U000e0100") == "I \u2764\ufe0f it \u845b\U000e0100"
    assert printable("\u2764\ufe0f\ufe0f") == "\u2764\ufe0f\\ufe0f"
    assert printable("\u200b\ufe0f") == "\\u200b\\ufe0f"
    # drawn, or part of what is: a keycap, a subdivision flag, an Arabic number sign
    scotland = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"
    assert printable(f"1\ufe0f\u20e3 #\ufe0f\u20e3 {scotland} \u0600\u0661") == (
        f"1\ufe0f\u20e3 #\ufe0f\u20e3 {scotland} \u0600\u0661"
    )
    assert printable("emoji \U0001f469\u200d\U0001f4bb \u0915\u094d\u200d") == (
        "emoji \U0001f469\u200d\U0001f4bb \u0915\u094d\u200d"
    )  # the joiners that shape emoji and scripts stay


BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


@given(st.text(alphabet=HOSTILE_CHARACTERS.filter(lambda c: not 0xD800 <= ord(c) < 0xE000)))
def test_json_printed_through_the_stream_is_json_of_the_same_text(text: str) -> None:
    """The CLI's stream escapes what the terminal would obey; JSON encoders leave DEL
    and C1 raw in strings, and their "\\x9b" made every --json answer (events, state,
    audit) and the printed config invalid where a model wrote one. They are escaped
    as JSON and TOML read them."""
    written: list[str] = []

    class Out:
        def write(self, part: str) -> int:
            written.append(part)
            return len(part)

    PrintableStream(Out()).write(json.dumps({"content": text}, ensure_ascii=False))  # type: ignore[arg-type]
    shown = "".join(written)
    assert json.loads(shown) == {"content": text}
