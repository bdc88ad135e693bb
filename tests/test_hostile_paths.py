"""Whatever the log or the model says, nothing outside the workspace is touched.

Every entry point that turns a recorded or requested path into a file operation —
the file tools, crash recovery (settling an interrupted tool), rewind, fork and any
restore — goes through the one resolver, ``engine.tools.sandbox.Sandbox``. So do the path arguments of the commands the model runs. The log
is not trusted here: these tests write logs that name hostile paths, as an edited
log (or a hostile model followed by a crash) would.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.agent.runlog import RunLog
from engine.agent.runner import Engine, ResumeRefused, resume_run, start_run
from engine.cli import cli
from engine.config import load_settings
from engine.errors import ConfigError
from engine.runs import workspace as workspace_module
from engine.runs.workspace import HistoryError, fork, restore, rewind
from engine.storage import open_store
from engine.tools import ToolContext, default_registry, execute
from events import MemoryEventStore, RunStarted, ToolRequested
from events.schema import FileChange, ToolExecuted
from events.store import EventStore

OUTSIDE = b"a file that belongs to someone else\n"
HOSTILE = b"written by a hostile log\n"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layout(root: Path) -> tuple[Path, Path]:
    """A workspace with a symlink that leads out, beside a victim directory."""
    workspace, victims = root / "ws", root / "victims"
    workspace.mkdir()
    victims.mkdir(exist_ok=True)
    (victims / "victim.txt").write_bytes(OUTSIDE)
    (workspace / "out").symlink_to(victims, target_is_directory=True)
    (workspace / ".autonomy").mkdir()
    (workspace / ".autonomy" / "events.db").write_bytes(OUTSIDE)
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_bytes(OUTSIDE)
    return workspace, victims


def hostile_names(root: Path) -> list[str]:
    """Paths that each reach the victims (or the tooling's own files) in their own way."""
    victim = root / "victims" / "victim.txt"
    return [
        "../victims/victim.txt",
        "a/../../victims/victim.txt",
        str(victim),
        "out/victim.txt",
        "out/../out/victim.txt",
        ".autonomy/events.db",
        ".git/config",
        "./.GIT/config",
        "x\x00y",
        "",
    ]


def untouched(root: Path) -> None:
    assert (root / "victims" / "victim.txt").read_bytes() == OUTSIDE
    assert sorted(p.name for p in (root / "victims").iterdir()) == ["victim.txt"]
    ws = root / "ws"
    assert (ws / ".autonomy" / "events.db").read_bytes() == OUTSIDE
    assert (ws / ".git" / "config").read_bytes() == OUTSIDE


def edited_log(store: EventStore, workspace: Path, path: str, run_id: str = "r") -> None:
    """A run whose log says a tool wrote ``path``: what an edited log (with its chain
    recomputed) or a crash-recovered escape would hold."""
    store.put(OUTSIDE)
    store.put(HOSTILE)
    log = RunLog.create(store, run_id, RunStarted(goal="g", workspace=str(workspace), mode="rules"))
    log.append(
        ToolRequested(call_id=f"{run_id}/t2", tool="create_file", arguments={"path": path}),
        ToolExecuted(
            call_id=f"{run_id}/t2",
            tool="create_file",
            ok=True,
            files_changed=(
                FileChange(path=path, before=sha(OUTSIDE), after=sha(HOSTILE), size=len(HOSTILE)),
            ),
        ),
    )


# -- rewind, fork, restore -------------------------------------------------------------


@pytest.mark.parametrize("index", range(10))
def test_rewind_of_a_log_naming_an_outside_path_is_refused_and_touches_nothing(
    tmp_path: Path, index: int
) -> None:
    workspace, _ = layout(tmp_path)
    store = MemoryEventStore()
    path = hostile_names(tmp_path)[index]
    edited_log(store, workspace, path)
    with pytest.raises(HistoryError, match="outside the workspace"):
        rewind(store, "r", 1)
    untouched(tmp_path)
    assert store.last_version("r") == 3, "a refused rewind appends nothing"


@pytest.mark.parametrize("index", range(10))
def test_fork_of_a_log_naming_an_outside_path_is_refused_and_touches_nothing(
    tmp_path: Path, index: int
) -> None:
    workspace, _ = layout(tmp_path)
    store = MemoryEventStore()
    edited_log(store, workspace, hostile_names(tmp_path)[index])
    with pytest.raises(HistoryError, match="outside the workspace"):
        fork(store, "r", 3, tmp_path / "fork", new_run_id="f")
    untouched(tmp_path)
    assert store.last_version("f") == 0


def test_the_cli_says_why_a_rewind_or_fork_was_refused(tmp_path: Path) -> None:
    workspace, _ = layout(tmp_path)
    db = tmp_path / "events.db"
    with open_store(db) as store:
        edited_log(store, workspace, "../victims/victim.txt")
    runner = CliRunner()
    result = runner.invoke(cli, ["rewind", "r", "--to", "1", "--db", str(db)])
    assert result.exit_code == 1
    assert "Error:" in result.output and "../victims/victim.txt" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        cli, ["fork", "r", "--at", "3", "--workspace", str(tmp_path / "f"), "--db", str(db)]
    )
    assert result.exit_code == 1 and "outside the workspace" in result.output
    untouched(tmp_path)


def test_a_fork_or_replay_never_copies_a_root_a_home_or_a_disk_the_log_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork, and a live replay, start from the files of the workspace the log names.
    Edited to name the root, a home directory or something larger than a project,
    they refuse before copying anything (here "larger" is 5 files)."""
    big = tmp_path / "big"
    big.mkdir()
    for n in range(6):
        (big / f"f{n}.txt").write_text("x")
    monkeypatch.setattr(workspace_module, "COPIED_FILES", 5)
    db = tmp_path / "events.db"
    with open_store(db) as store:
        for run_id, named in (("root", "/"), ("home", str(Path.home())), ("big", str(big))):
            store.append(run_id, [RunStarted(goal="g", workspace=named)], 0)
            target = tmp_path / f"fork-{run_id}"
            with pytest.raises(HistoryError, match="nothing was copied"):
                fork(store, run_id, 1, target, new_run_id=f"f-{run_id}")
            assert not target.exists() or not any(target.iterdir())
            assert store.last_version(f"f-{run_id}") == 0
    result = CliRunner().invoke(cli, ["replay", "big", "--db", str(db)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "more than 5 files" in result.output and "nothing was copied" in result.output


@pytest.mark.parametrize("named", ["/", "/etc", "/usr", "/tmp", "~", "/home"])
def test_no_run_starts_or_resumes_in_the_root_a_system_directory_or_a_home(
    named: str, tmp_path: Path
) -> None:
    """A workspace is what the agent's commands may write. Given one of these, or
    named by a log (edited, or another team member's in a shared one) that a resume
    or a worker takes up, the agent would have the machine: refused, nothing written."""
    directory = Path(named).expanduser()
    settings = load_settings(env={}, overrides={"preflight": False})
    store = MemoryEventStore()
    with pytest.raises(ConfigError, match="give the run a directory of its own"):
        start_run(store, goal="g", workspace=directory, settings=settings)
    assert store.runs() == []
    store.append("r", [RunStarted(goal="g", workspace=str(directory))], 0)
    with pytest.raises(ResumeRefused, match="nothing was run"):
        resume_run(store, "r", settings=settings)
    assert store.last_version("r") == 1
    target = tmp_path / "fork"
    with pytest.raises(HistoryError, match="nothing was copied"):
        fork(store, "r", 1, target, new_run_id="f")
    assert store.last_version("f") == 0


# -- crash recovery --------------------------------------------------------------------


def recovering_engine(store: EventStore, workspace: Path, path: str) -> Engine:
    """A run that crashed right after asking to write ``path``."""
    log = RunLog.create(store, "r", RunStarted(goal="g", workspace=str(workspace), mode="rules"))
    log.append(
        ToolRequested(call_id="r/t2", tool="create_file", arguments={"path": path, "content": "x"})
    )
    return Engine(
        log,
        settings=load_settings(env={}),
        client=None,  # type: ignore[arg-type]  # recovery asks no model
        workspace=workspace,
    )


@pytest.mark.parametrize("index", range(10))
def test_recovery_of_an_escaping_write_records_it_as_not_applied(
    tmp_path: Path, index: int
) -> None:
    workspace, _ = layout(tmp_path)
    store = MemoryEventStore()
    engine = recovering_engine(store, workspace, hostile_names(tmp_path)[index])
    notes = engine.recover()
    assert notes == ["r/t2 (create_file): not applied"]
    settled = engine.log.pipeline
    assert not settled.pending_tools and not settled.files
    assert not store.has_blob(sha(OUTSIDE)), "the outside file's content went into the log"
    # and a rewind of the recovered run touches nothing either
    rewind(store, "r", 1)
    untouched(tmp_path)


def test_a_crash_after_an_escaping_write_then_resume_and_rewind_leave_outside_alone(
    tmp_path: Path,
) -> None:
    """The report's sequence: the model asks for ../escape.txt, the engine dies between
    tool.requested and tool.executed, an outside file of that name exists; resume, then
    rewind to the start."""
    workspace, _ = layout(tmp_path)
    escape = tmp_path / "escape.txt"
    escape.write_bytes(OUTSIDE)
    store = MemoryEventStore()
    engine = recovering_engine(store, workspace, "../escape.txt")
    engine.recover()
    assert not engine.log.pipeline.files
    restored = rewind(store, "r", 1)
    assert restored.removed == () and restored.written == ()
    assert escape.read_bytes() == OUTSIDE


# -- every entry point, any hostile path ------------------------------------------------

_segment = st.sampled_from(["..", ".", "a", "out", ".git", ".autonomy", ".GIT", "", "victims"])
hostile_path = st.one_of(
    st.lists(_segment, min_size=1, max_size=6).map("/".join),
    st.lists(_segment, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet=st.sampled_from("./\\\x00aout"), max_size=20),
)


def escapes(root: Path, raw: str) -> bool:
    """Whether ``raw``, read from the workspace, leaves it or enters the tooling's
    directories — read lexically (``a/..`` is ``.``) or as the kernel reads it (``..``
    after a symbolic link is the link target's parent): either counts."""
    if "\x00" in raw:
        return True
    ws = (root / "ws").resolve()
    base = Path(raw) if os.path.isabs(raw) else ws / raw
    for candidate in (Path(os.path.realpath(base)), Path(os.path.normpath(base))):
        if not candidate.is_relative_to(ws):
            return True
        parts = {p.casefold() for p in candidate.relative_to(ws).parts}
        if parts & {".git", ".autonomy"}:
            return True
    return False


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=hostile_path)
def test_no_entry_point_writes_outside_whatever_the_path(tmp_path_factory, raw: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("h")
    workspace, _ = layout(root)
    # the file tools
    ctx = ToolContext(workspace=workspace, blobs=MemoryEventStore())
    for tool, args in [
        ("create_file", {"path": raw, "content": "x", "overwrite": True}),
        ("modify_file", {"path": raw, "old_text": "a file", "new_text": "x"}),
        ("delete_file", {"path": raw}),
    ]:
        outcome = execute(default_registry(), tool, args, ctx)
        if escapes(root, raw):
            assert not outcome.ok, (tool, raw)
    if escapes(root, raw) and raw.strip("\x00") and not raw.startswith("-"):
        # a command's path arguments go through the same resolver: refused, never run
        argv = ["python", "-m", "py_compile", raw]
        outcome = execute(default_registry(), "run_command", {"argv": argv}, ctx)
        assert not outcome.ok and outcome.result == "", (raw, outcome)
    # recovery, rewind, fork and restore of a log that names the path
    store = MemoryEventStore()
    engine = recovering_engine(store, workspace, raw)
    engine.recover()
    other = MemoryEventStore()
    edited_log(other, workspace, raw)
    for attempt in (
        lambda: rewind(other, "r", 1),
        lambda: fork(other, "r", 3, root / "fork", new_run_id="f"),
        lambda: restore(other, "r", 3, root / "restored"),
    ):
        with contextlib.suppress(HistoryError):
            attempt()
    untouched(root)
