"""run_command: allowlist, no shell, working directory, timeout and output cap."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from waiting import lock_is_free, wait_until

from engine.tools import ToolContext, ToolOutcome, commands, default_registry, execute, snapshot
from engine.tools.commands import allowed
from engine.tools.confine import choose
from engine.tools.snapshot import WorkspaceDigests, changes
from events import MemoryEventStore

PYTHON_C = (("python", "-c"),)


def run(
    workspace: Path, argv: Any, blobs: MemoryEventStore | None = None, **ctx: Any
) -> ToolOutcome:
    context = ToolContext(workspace=workspace, blobs=blobs or MemoryEventStore(), **ctx)
    return execute(default_registry(), "run_command", {"argv": argv}, context)


def run_python(workspace: Path, code: str) -> tuple[ToolOutcome, MemoryEventStore]:
    """``python -c code`` run as the model would, which must succeed; and the blobs."""
    store = MemoryEventStore()
    outcome = run(workspace, ["python", "-c", code], store, allowlist=PYTHON_C)
    assert outcome.ok, outcome.text
    return outcome, store


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "-m", "pytest"], True),
        (["python", "-m", "pytest", "-q", "tests"], True),
        (["python3", "-m", "py_compile", "a.py"], True),
        (["python", "-m"], False),
        (["python", "-m", "pip", "install", "x"], False),
        (["python", "-c", "print(1)"], False),
        (["pytest"], False),
        (["rm", "-rf", "/"], False),
        ([], False),
    ],
)
def test_the_default_allowlist_matches_prefixes(argv: list[str], expected: bool) -> None:
    assert allowed(argv, (("python", "-m", "pytest"), ("python", "-m", "py_compile"))) is expected


def test_an_allowlist_from_config_may_hold_lists() -> None:
    assert allowed(["make", "test"], (["make", "test"],))  # type: ignore[arg-type]


def test_a_command_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    outcome = run(tmp_path, ["rm", "-rf", "."])
    assert not outcome.ok
    assert "command not allowed: rm -rf ." in outcome.error
    assert "python -m pytest" in outcome.error


def test_an_allowed_command_runs_in_the_workspace_with_our_python(tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd()); print(sys.executable)"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C)
    assert outcome.ok, outcome.error
    lines = outcome.result.splitlines()
    assert lines[1] == str(tmp_path.resolve())
    assert lines[2] == sys.executable
    assert "[exit code 0" in outcome.result


def test_py_compile_is_allowed_by_default_and_reports_failures(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("x = (\n")
    assert run(tmp_path, ["python", "-m", "py_compile", "good.py"]).ok
    bad = run(tmp_path, ["python", "-m", "py_compile", "bad.py"])
    assert not bad.ok and bad.error.startswith("exit code 1")
    assert "bad.py" in bad.result  # the output goes back to the model


def test_a_non_zero_exit_is_a_failure_with_the_output(tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C)
    assert not outcome.ok and outcome.error.startswith("exit code 3")
    assert "out" in outcome.result and "err" in outcome.result
    assert outcome.text.startswith("error: exit code 3")


def test_there_is_no_shell(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("still here\n")
    code = "import sys; print(sys.argv[1:])"
    tricky = ["; rm -rf keep.txt", "$(touch pwned)", "`touch pwned2`", "| cat", "&& echo hi"]
    outcome = run(tmp_path, ["python", "-c", code, *tricky], allowlist=PYTHON_C)
    assert outcome.ok
    assert repr(tricky) in outcome.result  # every argument arrived literally
    assert (tmp_path / "keep.txt").read_text() == "still here\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_a_command_line_string_is_split_but_not_given_to_a_shell(tmp_path: Path) -> None:
    outcome = run(
        tmp_path, "python -c 'import sys; print(sys.argv[1:])' '; rm -rf x'", allowlist=PYTHON_C
    )
    assert outcome.ok and "['; rm -rf x']" in outcome.result
    refused = run(tmp_path, "rm -rf x; python -m pytest")
    assert not refused.ok and "not allowed" in refused.error


def test_a_command_that_runs_too_long_is_stopped(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(30)"
    started = time.monotonic()
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C, command_timeout=0.5)
    assert time.monotonic() - started < 10
    assert not outcome.ok and "timed out after 0.5s" in outcome.error
    assert "started" in outcome.result  # what it printed before is kept


def test_the_model_may_shorten_but_not_lengthen_the_timeout(tmp_path: Path) -> None:
    context = ToolContext(
        workspace=tmp_path, blobs=MemoryEventStore(), allowlist=PYTHON_C, command_timeout=0.5
    )
    argv = ["python", "-c", "import time; time.sleep(30)"]
    started = time.monotonic()
    outcome = execute(
        default_registry(), "run_command", {"argv": argv, "timeout_seconds": 600}, context
    )
    assert "timed out after 0.5s" in outcome.error
    assert time.monotonic() - started < 10


def test_output_is_capped_keeping_head_and_tail(tmp_path: Path) -> None:
    code = "print('HEAD' + 'x' * 100000 + 'TAIL')"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C, output_cap=1000)
    assert outcome.ok
    assert len(outcome.result) < 1300
    assert "HEAD" in outcome.result and "TAIL" in outcome.result
    assert "bytes of output omitted" in outcome.result


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_a_timeout_also_stops_what_the_command_started(tmp_path: Path, sandbox: str) -> None:
    """The command starts a helper that holds a lock and would write late.txt once
    told to; the command is stopped by its timeout. Then the lock must come free
    (the helper is gone) and late.txt must never appear. No sleeps: the helper's
    life is read from its lock."""
    helper = (
        "import fcntl, pathlib, time; lock = open('holder.lock', 'a'); "
        "fcntl.flock(lock, fcntl.LOCK_EX); pathlib.Path('alive.txt').write_text('x')\n"
        "while not pathlib.Path('go').exists(): time.sleep(0.05)\n"
        "pathlib.Path('late.txt').write_text('x')"
    )
    code = (
        "import pathlib, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {helper!r}])\n"
        "while not pathlib.Path('alive.txt').exists(): time.sleep(0.02)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(1)"
    )
    context = ToolContext(
        workspace=tmp_path,
        blobs=MemoryEventStore(),
        allowlist=PYTHON_C,
        command_timeout=4.0,
        confinement=choose(sandbox),  # type: ignore[arg-type]
    )
    outcome = execute(default_registry(), "run_command", {"argv": ["python", "-c", code]}, context)
    assert "timed out" in outcome.error and "ready" in outcome.result, outcome.text
    wait_until(lambda: lock_is_free(tmp_path / "holder.lock"), "the helper is gone")
    (tmp_path / "go").write_text("")
    assert not (tmp_path / "late.txt").exists()


# -- the argv policy ---------------------------------------------------------------------

REFUSED = [
    (["python", "-m", "pytest", "--basetemp=/tmp/elsewhere"], "--basetemp"),
    (["python", "-m", "pytest", "--basetemp", "x"], "--basetemp"),
    (["python", "-m", "pytest", "-p", "evilplugin"], "-p"),
    (["python", "-m", "pytest", "-pevilplugin"], "-p"),
    (["python", "-m", "pytest", "-xp", "evilplugin"], "-p"),
    (["python", "-m", "pytest", "-c", "other.ini"], "-c"),
    (["python", "-m", "pytest", "-o", "cache_dir=/tmp/x"], "-o"),
    (["python", "-m", "pytest", "--override-ini=cache_dir=x"], "--override-ini"),
    (["python", "-m", "pytest", "--junitxml=report.xml"], "--junitxml"),
    (["python", "-m", "pytest", "--debug=debug.log"], "--debug"),
    (["python", "-m", "pytest", "--rootdir=/"], "--rootdir"),
    (["python", "-m", "pytest", "--confcutdir=/"], "--confcutdir"),
    (["python", "-m", "py_compile", "/etc/passwd"], "outside the workspace"),
    (["python", "-m", "py_compile", "../x.py"], "climbs out"),
    (["python", "-m", "pytest", "tests/../../x/test_a.py::test_b"], "climbs out"),
    (["python", "-m", "pytest", "--some-option=/etc/passwd"], "outside the workspace"),
    (["python", "-m", "py_compile", "~/.ssh/id_rsa"], "home directory"),
    (["python", "-m", "py_compile", "out/secret.py"], "symbolic link"),
    (["python", "-m", "pytest", ".git/hooks"], ".git"),
]


@pytest.mark.parametrize(("argv", "why"), REFUSED, ids=[" ".join(a[3:]) for a, _ in REFUSED])
def test_arguments_that_load_code_or_leave_the_workspace_are_refused(
    tmp_path: Path, argv: list[str], why: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.py").write_text("x = 1\n")
    (workspace / "out").symlink_to(tmp_path, target_is_directory=True)
    outcome = run(workspace, argv)
    assert not outcome.ok and why in outcome.error, outcome.error
    assert outcome.result == "", "a refused command must not run"


@pytest.mark.parametrize(
    "args",
    [
        ["-q"],
        ["-x", "-vv"],
        ["-k", "not slow and add"],
        ["test_a.py::test_add"],
        ["-W", "ignore::DeprecationWarning"],
        ["."],
        ["-rA", "--tb=short"],
    ],
)
def test_ordinary_pytest_arguments_pass_the_policy(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "test_a.py").write_text("def test_add():\n    assert 1 + 1 == 2\n")
    outcome = run(tmp_path, ["python", "-m", "pytest", *args])
    assert outcome.ok, outcome.text


def test_installed_packages_in_the_workspace_are_not_recorded(tmp_path: Path) -> None:
    """A virtualenv or node_modules in the workspace holds installed packages: a
    command that installs or changes them records none of it, and none of their
    contents go into the log (they went in whole at a run's first command)."""
    for name in (".venv/lib/site.py", "venv/bin/tool", "node_modules/x/index.js", "src/app.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    code = (
        "import os, pathlib; os.mkdir('.tox'); "
        "[pathlib.Path(p).write_text('changed') for p in "
        "('.venv/lib/site.py', '.venv/lib/new.py', 'node_modules/y.js', '.tox/log', 'src/app.py')]"
    )
    outcome, store = run_python(tmp_path, code)
    assert [c.path for c in outcome.files_changed] == ["src/app.py"]
    for name in (".venv/lib/site.py", "venv/bin/tool", "node_modules/x/index.js"):
        assert not store.has_blob(hashlib.sha256(f"# {name}\n".encode()).hexdigest()), name
    assert store.has_blob(hashlib.sha256(b"# src/app.py\n").hexdigest())


def test_files_a_command_creates_changes_and_deletes_are_recorded(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_text("same\n")
    (tmp_path / "changed.txt").write_text("before\n")
    (tmp_path / "gone.txt").write_text("doomed\n")
    code = (
        "import pathlib, os; pathlib.Path('new.txt').write_text('new'); "
        "pathlib.Path('changed.txt').write_text('after'); os.remove('gone.txt'); "
        "os.makedirs('__pycache__', exist_ok=True); "
        "pathlib.Path('__pycache__/x.pyc').write_bytes(b'cache')"
    )
    outcome, store = run_python(tmp_path, code)
    changes = {c.path: c for c in outcome.files_changed}
    assert sorted(changes) == ["changed.txt", "gone.txt", "new.txt"]
    assert store.get(changes["changed.txt"].before or "") == b"before\n"
    assert store.get(changes["changed.txt"].after or "") == b"after"
    assert changes["gone.txt"].after is None and store.get(changes["gone.txt"].before or "")
    assert changes["new.txt"].before is None and changes["new.txt"].size == 3
    assert "[files changed: changed.txt, gone.txt, new.txt]" in outcome.result


def test_files_too_large_to_record_are_named_not_read(tmp_path: Path) -> None:
    """A command made a hundred sparse files of 255 MB in a hundredth of a second;
    the snapshot read each whole (minutes, gigabytes of log). Past
    ``MAX_RECORDED_BYTES`` a file is named, not read; one recorded before that grows
    past it is neither changed nor gone."""
    (tmp_path / "grows.bin").write_bytes(b"small\n")
    code = (
        "import os; [(open(f'sparse{i}.bin', 'wb').close(), "
        "os.truncate(f'sparse{i}.bin', 255 * 2**20)) for i in range(3)]; "
        "os.truncate('grows.bin', 100 * 2**20); "
        "open('small.txt', 'w').write('kept')"
    )
    digests = WorkspaceDigests()
    store = MemoryEventStore()
    outcome = run(tmp_path, ["python", "-c", code], store, allowlist=PYTHON_C, digests=digests)
    assert outcome.ok, outcome.text
    assert [c.path for c in outcome.files_changed] == ["small.txt"]
    assert (
        "[not recorded, so a rewind leaves them as they are: larger than 64 MiB: grows.bin, "
        "sparse0.bin, sparse1.bin, sparse2.bin]" in outcome.result
    )
    assert len(store._blobs) == 2  # small.txt, and grows.bin before it grew


def test_one_command_records_a_bounded_amount_of_content_and_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the limit per file, eight sparse files of 63 MiB put 568 MB into the log
    from one command, and 100,000 small files one event of 26 MB. What is past a
    snapshot's budget, or past the changes one command records, is named, not
    recorded; a later snapshot reads it within its own budget."""
    monkeypatch.setattr(snapshot, "SNAPSHOT_BYTES", 10)
    monkeypatch.setattr(commands, "MAX_CHANGES", 3)
    code = "[open(f'f{i}.txt', 'w').write('1234') for i in range(6)]"
    digests = WorkspaceDigests()
    store = MemoryEventStore()
    outcome = run(tmp_path, ["python", "-c", code], store, allowlist=PYTHON_C, digests=digests)
    assert outcome.ok, outcome.text
    assert [c.path for c in outcome.files_changed] == ["f0.txt", "f1.txt"]  # 8 bytes of 10
    assert "past the 512 MiB one snapshot reads: f2.txt, f3.txt, f4.txt, f5.txt" in outcome.result
    assert len(store._blobs) == 1  # the same content, once
    monkeypatch.setattr(snapshot, "SNAPSHOT_BYTES", 10**6)
    code = "[open(f'g{i}.txt', 'w').write(str(i)) for i in range(5)]"
    outcome = run(tmp_path, ["python", "-c", code], store, allowlist=PYTHON_C, digests=digests)
    assert [c.path for c in outcome.files_changed] == ["g0.txt", "g1.txt", "g2.txt"]
    assert "past the 10,000 changes one command records: g3.txt, g4.txt" in outcome.result


def test_a_snapshot_records_a_bounded_number_of_files_and_still_finds_every_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that made 300,000 empty files made each snapshot take 3 to 6 s and
    the engine 300 MB (three million: 3 GB, the engine's memory, not the command's).
    Past the files one snapshot records, the directories left are named, and still
    searched: a repository the command made there is taken away."""
    monkeypatch.setattr(snapshot, "MAX_FILES", 4)
    code = (
        "import os\n"
        "for d in 'abc':\n"
        "    os.mkdir(d)\n"
        "    [open(f'{d}/f{i}', 'w').write(d) for i in range(3)]\n"
        "git = 'a/.g' + 'it'\n"  # as a model hides it from the argument check
        "os.makedirs(git)\n"
        "open(git + '/HEAD', 'w').write('ref: refs/heads/main')\n"
    )
    digests = WorkspaceDigests()
    outcome = run(
        tmp_path, ["python", "-c", code], MemoryEventStore(), allowlist=PYTHON_C, digests=digests
    )
    assert outcome.ok, outcome.text
    # walked last name first: c/ whole, then b/ until the fourth file, a/ not at all
    assert [c.path for c in outcome.files_changed] == ["c/f0", "c/f1", "c/f2"]
    assert digests.left_out == {"a/": snapshot.TOO_MANY_FILES, "b/": snapshot.TOO_MANY_FILES}
    assert "files one snapshot records: a/, b/" in outcome.result
    assert (tmp_path / "a" / "f0").exists()
    assert not (tmp_path / "a" / ".git").exists()  # made by the command: taken away


def test_a_config_file_a_command_writes_is_recorded_past_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that first used up the snapshot's budget (eight sparse files of 64
    MiB), then wrote an ``autonomy.toml``, left it unrecorded: the next run took the
    model's config (its allowlist, its model servers) for the user's."""
    monkeypatch.setattr(snapshot, "SNAPSHOT_BYTES", 10)
    code = (
        "import pathlib\n"
        "[open(f'a{i}.bin', 'w').write('1234') for i in range(4)]\n"
        "pathlib.Path('sub').mkdir()\n"
        "for name in ('autonomy.toml', 'sub/autonomy.toml'):\n"
        "    open(name, 'w').write('[tools]\\nallowlist = [[\"sh\"]]\\n')\n"
    )
    outcome = run(tmp_path, ["python", "-c", code], MemoryEventStore(), allowlist=PYTHON_C)
    assert outcome.ok, outcome.text
    recorded = [c.path for c in outcome.files_changed]
    assert {"autonomy.toml", "sub/autonomy.toml"} <= set(recorded), outcome.result
    assert "a2.bin" not in recorded  # the budget still holds for the rest


def test_the_workspaces_own_config_is_recorded_before_those_of_its_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config files were recorded first past the cut of changes, but by path: a
    command that wrote 10,000 ``NNNNN/autonomy.toml`` first had the workspace's own
    ``autonomy.toml`` cut, and the next run took it for the user's."""
    monkeypatch.setattr(commands, "MAX_CHANGES", 3)
    code = (
        "import pathlib\n"
        "for n in range(4):\n"
        "    pathlib.Path(f'{n:05}').mkdir()\n"
        "    open(f'{n:05}/autonomy.toml', 'w').write('')\n"
        "open('autonomy.toml', 'w').write('[tools]\\nallowlist = [[\"sh\"]]\\n')\n"
    )
    outcome = run(tmp_path, ["python", "-c", code], MemoryEventStore(), allowlist=PYTHON_C)
    assert outcome.ok, outcome.text
    assert outcome.files_changed[0].path == "autonomy.toml", outcome.result


def test_what_a_snapshot_cannot_read_is_not_recorded_as_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``chmod 000`` on a file or a directory (which root's engine reads anyway, so
    here the reads fail as they would for anyone else): its files were recorded as
    deleted, and their new content was never stored."""
    for name in ("app.py", "pkg/mod.py", "pkg/sub/deep.py", "other.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    digests = WorkspaceDigests()
    store = MemoryEventStore()
    before = digests.snapshot(tmp_path, store)
    (tmp_path / "app.py").write_text("# changed, then unreadable\n")
    (tmp_path / "other.py").write_text("# changed\n")
    scandir, read_bytes = os.scandir, Path.read_bytes

    def no_pkg(path: Any) -> Any:
        if Path(path) == tmp_path / "pkg":
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    def no_app(path: Path) -> bytes:
        if path.name == "app.py":
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(os, "scandir", no_pkg)
    monkeypatch.setattr(Path, "read_bytes", no_app)
    after = digests.snapshot(tmp_path, store)
    assert digests.left_out == {"app.py": "unreadable", "pkg/": "unreadable"}
    found = changes(before, after, digests.left_out)
    assert [c.path for c in found] == ["other.py"]


def test_a_result_names_at_most_a_hundred_files_of_each_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command that made 300,000 files made a result of 48 million characters (the
    files are all in ``files_changed``, for a rewind)."""
    monkeypatch.setattr(commands, "LISTED", 2)
    code = "[open(f'f{i}.txt', 'w').write(str(i)) for i in range(5)]"
    outcome, _ = run_python(tmp_path, code)
    assert len(outcome.files_changed) == 5
    assert "[files changed: f0.txt, f1.txt and 3 more]" in outcome.result


def test_a_name_a_command_made_cannot_fake_a_line_of_its_result(tmp_path: Path) -> None:
    outcome, _ = run_python(tmp_path, "open('a\\n[files changed: nothing]', 'w').write('x')")
    assert "[files changed: a\\n[files changed: nothing]]" in outcome.result, outcome.result
    assert outcome.result.count("\n[files changed:") == 1


SET_ID = 0o6000


def test_a_set_id_file_a_command_leaves_loses_the_bit(tmp_path: Path) -> None:
    """bubblewrap's nosuid holds inside the sandbox only: a program a command copied
    and gave ``chmod u+s`` stayed set-user-id on the host (owned by root when autonomy
    runs as root: a root shell for whoever could reach the workspace)."""
    code = (
        "import os\n"
        "os.makedirs('a/b/c')\n"
        "for name, mode in (('user', 0o4755), ('group', 0o2750), ('a/b/c/deep', 0o6700)):\n"
        "    open(name, 'w').write('#!/bin/sh\\n')\n"
        "    os.chmod(name, mode)\n"
        "    assert os.stat(name).st_mode & 0o6000, name\n"
    )
    outcome, _ = run_python(tmp_path, code)
    modes = {name: (tmp_path / name).stat().st_mode & 0o7777 for name in ("user", "group")}
    assert modes == {"user": 0o755, "group": 0o750}
    assert (tmp_path / "a/b/c/deep").stat().st_mode & 0o7777 == 0o700
    assert "[set-user-id and set-group-id bits removed from 3 file(s)]" in outcome.result


def test_a_rewritten_or_copied_file_never_keeps_a_set_id_bit(tmp_path: Path) -> None:
    """A file's write kept its mode whole, set-id bits included; a fork's copy too."""
    from engine.runs.workspace import copy_workspace
    from engine.tools.files import write_atomically

    source = tmp_path / "source"
    source.mkdir()
    (source / "tool").write_text("x")
    os.chmod(source / "tool", 0o4755)
    copy_workspace(source, tmp_path / "copy", ())
    assert (tmp_path / "copy" / "tool").stat().st_mode & 0o7777 == 0o755
    write_atomically(source / "tool", b"y")
    assert (source / "tool").stat().st_mode & 0o7777 == 0o755


def test_an_autonomy_toml_a_command_writes_is_recorded_past_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files sorted before it pushed a config file past the changes one command
    records: unrecorded, the next run could not tell it was the model's."""
    monkeypatch.setattr(commands, "MAX_CHANGES", 3)
    code = "import os\nos.mkdir('z')\n[open(p, 'w').write('x') for p in ('a', 'b', 'c', 'd', 'z/autonomy.toml')]"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C)
    assert [c.path for c in outcome.files_changed] == ["z/autonomy.toml", "a", "b"]
