"""Crashes and resumes: nothing lost, nothing duplicated, the run completes."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from engine.agent.runlog import RunLog
from engine.agent.runner import RunCutOff, resume_run, start_run
from engine.cli import cli
from engine.config import load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.runs.replay import replay
from engine.runs.workspace import rewind
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import FileChange, RunStarted, SQLiteEventStore, ToolExecuted, ToolRequested
from events.store import EventStore
from projections import project


def rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT position, run_id, version, type, hash, data FROM events ORDER BY position"
        ).fetchall()


def written(db: Path) -> int:
    """How many events the log holds: 0 until the writer has created its schema."""
    try:
        return len(rows(db)) if db.exists() else 0
    except sqlite3.OperationalError:  # no such table yet, or the file is being created
        return 0


def crashed_run(tmp_path: Path) -> tuple[SQLiteEventStore, RunLog, Path]:
    """A run whose last event is a tool.requested for create_file: the crash point."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    log.append(
        ToolRequested(
            call_id="r1/t2", tool="create_file", arguments={"path": "calc.py", "content": "X = 1\n"}
        )
    )
    return store, log, workspace


def settings(server: ScriptedModelServer) -> object:
    return load_settings(env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m"})


def settled_on_resume(store: EventStore, call_id: str) -> ToolExecuted:
    """Resume run ``r1`` (the demo models answering) and return how it settled the
    tool call ``call_id`` a crash had cut."""
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=settings(server), http=http)  # type: ignore[arg-type]
    (settled,) = [
        e.data for e in store.read("r1")
        if isinstance(e.data, ToolExecuted) and e.data.call_id == call_id
    ]  # fmt: skip
    assert isinstance(settled, ToolExecuted)
    return settled


def test_a_new_file_a_tool_made_before_the_crash_is_kept_but_not_recorded(tmp_path: Path) -> None:
    """The tool did its work on a file the log has no record of, then the process died:
    nothing tells its write from one the person made meanwhile (an editor's save of
    the same content), so the file is kept, unrecorded, and the run goes on."""
    store, _, workspace = crashed_run(tmp_path)
    (workspace / "calc.py").write_text("X = 1\n")  # the tool did its work, then the process died
    first = settled_on_resume(store, "r1/t2")
    assert not first.ok and not first.files_changed
    assert "calc.py is a file the log has no record of" in first.error
    assert project(store, "r1").pipeline.status == "completed"


def test_a_tool_that_never_ran_is_recorded_as_not_applied_on_resume(tmp_path: Path) -> None:
    store, _, _ = crashed_run(tmp_path)
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=settings(server), http=http)  # type: ignore[arg-type]
    first = next(e.data for e in store.read("r1") if isinstance(e.data, ToolExecuted))
    assert first.call_id == "r1/t2" and not first.ok
    assert "not applied" in first.error
    state = project(store, "r1").pipeline
    assert state.status == "completed" and not state.pending_tools


@pytest.mark.parametrize(
    ("tool", "arguments", "on_disk", "applied"),
    [
        ("create_file", {"content": "X = 2\n", "overwrite": True}, "X = 2\n", True),
        ("create_file", {"content": "X = 2\n", "overwrite": True}, "import os\n", False),
        ("modify_file", {"old_text": "X = 1", "new_text": "X = 3"}, "X = 3\n", True),
        ("modify_file", {"old_text": "X = 1", "new_text": "X = 3"}, "X = 4\n", False),
        ("delete_file", {}, None, True),
    ],
    ids=["create", "create-then-a-persons-write", "modify", "modify-then-other", "delete"],
)
def test_a_file_tool_cut_by_a_crash_is_applied_only_if_its_file_holds_what_it_writes(
    tmp_path: Path, tool: str, arguments: dict[str, object], on_disk: str | None, applied: bool
) -> None:
    """Recovery compared the file with the log's last record of it only: a call cut
    before its write, then the file written by someone else (an editor, a person),
    was recorded as the call's own successful write of content it never asked for
    (and verify, replay and the audit's file history all said so). That write is
    recorded as found, and the call as not applied."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    old = store.put(b"X = 1\n")
    log.append(
        ToolExecuted(call_id="r1/t2", tool="create_file", ok=True,
                     files_changed=(FileChange(path="calc.py", after=old, size=6),)),
        ToolRequested(call_id="r1/t3", tool=tool, arguments={"path": "calc.py", **arguments}),
    )  # fmt: skip
    if on_disk is not None:
        (workspace / "calc.py").write_text(on_disk)
    settled = settled_on_resume(store, "r1/t3")
    assert settled.ok is applied, settled
    after = hashlib.sha256(on_disk.encode()).hexdigest() if on_disk is not None else None
    assert [(c.path, c.before, c.after) for c in settled.files_changed] == [("calc.py", old, after)]
    if not applied:
        assert "something else changed it since (recorded as found); not applied" in (settled.error)


@pytest.mark.parametrize(
    ("tool", "arguments", "on_disk", "written"),
    [
        ("modify_file", {"old_text": "hello", "new_text": "bye"}, "hello world\n", "before"),
        ("modify_file", {"old_text": "hello", "new_text": "bye"}, "bye world\n", "after"),
        ("create_file", {"content": "made\n", "overwrite": True}, "made\n", "after"),
        ("create_file", {"content": "made\n"}, "made\n", "after"),
        ("create_file", {"content": "made\n"}, "made\n", "before"),
        ("create_file", {"content": "made\n"}, "made\n", "linked"),
        ("create_file", {"content": "made\n"}, "made\n", "saved-again"),
        ("create_file", {"content": "made\n"}, "the person's\n", "after"),
        ("delete_file", {}, None, "before"),
    ],
    ids=[
        "modify-not-done", "modify-done", "overwrite-done", "create-done",
        "create-the-same-as-was-there",
        "a-hard-link-to-the-same", "the-same-saved-again", "create-other", "delete-gone",
    ],
)  # fmt: skip
def test_a_file_tool_cut_by_a_crash_on_a_file_the_log_never_recorded_leaves_it_be(
    tmp_path: Path, tool: str, arguments: dict[str, object], on_disk: str | None, written: str
) -> None:
    """A file the person had before the run (the log has no record of it), cut in a
    file tool's call: recovery recorded it as made by the call (nothing before it),
    and a rewind to before the call then deleted the person's file; so too for one
    that held, from before, just what a create_file would write (which then failed),
    its ctime changed since by a chmod or a hard link, or saved again (an editor's
    save: a new file, born since); a delete of it, gone, was "interrupted before it
    changed the workspace". What it held before the call is not known: it is left as
    it is and not recorded, whatever it holds."""
    from waiting import wait_until

    workspace = tmp_path / "ws"
    workspace.mkdir()
    notes, old = workspace / "notes.txt", tmp_path / "old.txt"
    if on_disk is not None and written != "after":
        (old if written == "linked" else notes).write_text(on_disk)
        older = time.time()
        # past the slack a file's time is given (engine.tools.commands.CLOCK_SLACK, 0.1 s)
        wait_until(lambda: time.time() > older + 0.25, "the clock has moved on")
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    log.append(
        ToolRequested(call_id="r1/t2", tool=tool, arguments={"path": "notes.txt", **arguments})
    )
    if on_disk is not None and written == "after":
        notes.write_text(on_disk)
    elif written == "linked":
        os.link(old, notes)  # a new name, its ctime new, the file old
    elif written == "saved-again" and on_disk is not None:
        saved = workspace / ".notes.txt.swp"
        saved.write_text(on_disk)
        saved.rename(notes)  # as an editor saves: a new file, born after the request
    elif on_disk is not None:
        notes.chmod(0o600)  # its ctime now after the request; its content from before
    settled = settled_on_resume(store, "r1/t2")
    assert not settled.ok and not settled.files_changed, settled
    assert "the log has no record of, so what this call did to it cannot be told" in (settled.error)
    rewind(store, "r1", 1)  # to before the call: the person's file stays as it is
    assert (notes.read_text() if notes.exists() else None) == on_disk


@pytest.mark.parametrize("gone", ["deleted", "a file now"])
def test_a_run_whose_workspace_is_gone_is_refused_and_the_fork_it_names_completes(
    tmp_path: Path, gone: str
) -> None:
    """Resume writes nothing into a workspace that is no longer there (or no longer a
    directory) and says how to go on: a fork restored from the log's files."""
    store, _, workspace = crashed_run(tmp_path)
    store.close()
    workspace.rmdir()
    if gone == "a file now":
        workspace.write_text("not a workspace")
    db = str(tmp_path / "events.db")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        flags = ["--db", db, "--model-url", server.url, "--api", "ollama", "--model", "m"]
        refused = CliRunner().invoke(cli, ["resume", "r1", *flags])
        assert refused.exit_code == 1 and "Traceback" not in refused.output
        assert f"run r1's workspace {workspace} is " in refused.output
        assert ("not a directory" if gone == "a file now" else "gone") in refused.output
        assert "nothing was run" in refused.output
        with open_store(db) as store:
            assert store.last_version("r1") == 2, "nothing written"
        hint = refused.output.split("autonomy fork ")[1].split(",")[0]
        new = str(tmp_path / "again")
        args = hint.replace("NEW_DIR", new).split()
        forked = CliRunner().invoke(cli, ["fork", *args, "--as", "again", "--db", db])
        assert forked.exit_code == 0, forked.output
        resumed = CliRunner().invoke(cli, ["resume", "again", *flags])
        assert resumed.exit_code == 0, resumed.output
    with open_store(db) as store:
        assert project(store, "again").pipeline.status == "completed"
    assert (tmp_path / "again" / "calc.py").is_file()


def test_a_run_cut_by_a_full_disk_stops_clean_resumes_and_replays(tmp_path: Path) -> None:
    """The disk filling up mid-run (SQLite's limit on the file, ``max_page_count``)
    stops the run where its log stops, as an outage does; with room again it
    resumes to the end, and the whole run, cut included, replays identically."""
    store = SQLiteEventStore(tmp_path / "events.db")
    store.append("warm", [RunStarted(goal="g", workspace=str(tmp_path))], 0)
    pages = store.connection.execute("PRAGMA page_count").fetchone()[0]
    store.connection.execute(f"PRAGMA max_page_count = {pages + 8}")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        with pytest.raises(RunCutOff, match="the disk holding the log is full"):
            start_run(store, goal=GOAL, workspace=tmp_path / "ws", settings=settings(server),
                      http=http, run_id="r")  # fmt: skip
        cut = store.last_version("r")
        assert cut > 1 and store.verify("r").ok
        store.connection.execute("PRAGMA max_page_count = 1073741823")
        resume_run(store, "r", settings=settings(server), http=http)  # type: ignore[arg-type]
    assert project(store, "r").pipeline.status == "completed"
    assert replay(store, "r", tools="recorded").identical


class Slow:
    """The demo models, answering slowly so that a run can be killed mid-way."""

    def __init__(self) -> None:
        self.models = DemoModels()

    def __call__(self, request: ScriptedRequest) -> Reply:
        return Reply.delayed(0.15, self.models(request))


@pytest.mark.slow
def test_sigkill_in_the_middle_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    workspace = tmp_path / "ws"
    autonomy = Path(sys.executable).parent / "autonomy"
    with ScriptedModelServer(Slow(), models=["m"]) as server:
        model = ["--model-url", server.url, "--api", "ollama", "--model", "m"]
        proc = subprocess.Popen(
            [str(autonomy), "run", GOAL, "--workspace", str(workspace), "--db", str(db), *model],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if written(db) >= 25:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        before = rows(db)
        run_id = str(before[0][1])
        assert project(open_store(db), run_id).pipeline.status == "running"
        result = CliRunner().invoke(cli, ["resume", run_id, "--db", str(db), *model])
        assert result.exit_code == 0, result.output
    after = rows(db)
    assert after[: len(before)] == before, "resume must not change or drop what was written"
    assert [r[2] for r in after] == list(range(1, len(after) + 1)), (
        "versions 1..n, no gap or duplicate"
    )
    store = open_store(db)
    assert store.verify(run_id).ok
    assert project(store, run_id).pipeline.status == "completed"
    # the kill and the resume are in the log: the replay stops and resumes where they did
    result = replay(store, run_id)
    assert result.identical, result.report()


def test_a_command_cut_by_a_crash_leaves_no_set_id_file(tmp_path: Path) -> None:
    """A command's set-id bits are taken off when it ends; one cut by a crash never
    ended in the engine, so resume takes them off."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    log.append(ToolRequested(call_id="r1/t2", tool="run_command", arguments={"argv": ["x"]}))
    (workspace / "tool").write_text("#!/bin/sh\n")  # what the command left before the kill
    (workspace / "tool").chmod(0o4755)
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=settings(server), http=http)  # type: ignore[arg-type]
    assert (workspace / "tool").stat().st_mode & 0o7777 == 0o755


def test_what_a_write_killed_before_its_rename_left_is_removed_on_resume(tmp_path: Path) -> None:
    """A file tool's write goes beside the file, then is renamed over it: a kill in
    between left .calc.py.XXXXXXXX.tmp in the workspace for good (and forks copied it)."""
    store, _, workspace = crashed_run(tmp_path)
    partial = workspace / ".calc.py.k3x9q2ab.tmp"
    partial.write_text("X = ")
    mine = workspace / ".calc.py.mine.tmp"  # not what a write leaves: kept
    mine.write_text("notes")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=settings(server), http=http)  # type: ignore[arg-type]
    assert not partial.exists() and mine.exists()


def test_what_a_command_cut_by_a_crash_wrote_is_recorded_and_a_rewind_undoes_it(
    tmp_path: Path,
) -> None:
    """A command cut by a kill (or a Ctrl-C) was settled as interrupted with no file
    changes: what it had written was in no log, and a rewind left it. Resume records
    what differs from the log's files and what was made since the command's request
    (not the workspace's older files), and fails the task in the same write."""
    from waiting import wait_until

    from events import FileChange, TaskAdded, TaskUpdated

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("the person's own file\n")
    (workspace / "calc.py").write_text("X = 1\n")
    older = (workspace / "notes.txt").stat().st_ctime
    # past the slack a file's time is given (engine.tools.commands.CLOCK_SLACK, 0.1 s)
    wait_until(lambda: time.time() > older + 0.25, "the clock has moved on")
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    calc = store.put(b"X = 1\n")
    log.append(
        TaskAdded(task_id="t1", title="calc"),
        TaskUpdated(task_id="t1", status="in_progress", attempt=1),
        ToolExecuted(
            call_id="r1/t1", tool="create_file", ok=True,
            files_changed=(FileChange(path="calc.py", after=calc, size=6),),
        ),
    )  # fmt: skip
    before = log.version
    log.append(ToolRequested(call_id="r1/t9", tool="run_command", arguments={"argv": ["x"]}))
    (workspace / "calc.py").write_text("X = 2\n")  # what the command did before the kill
    (workspace / "made.py").write_text("Y = 3\n")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=settings(server), http=http)  # type: ignore[arg-type]
    events = list(store.read("r1"))
    (settled,) = [
        e for e in events if isinstance(e.data, ToolExecuted) and e.data.call_id == "r1/t9"
    ]
    assert isinstance(settled.data, ToolExecuted) and not settled.data.ok
    assert {c.path: c.after for c in settled.data.files_changed} == {
        "calc.py": hashlib.sha256(b"X = 2\n").hexdigest(),
        "made.py": hashlib.sha256(b"Y = 3\n").hexdigest(),
    }
    failed = events[settled.version]  # the task, in the same write
    assert isinstance(failed.data, TaskUpdated) and failed.data.status == "failed"
    assert (failed.recorded_at, failed.causation) == (settled.recorded_at, settled.causation)
    code = CliRunner().invoke(
        cli, ["rewind", "r1", "--to", str(before), "--db", str(tmp_path / "events.db")]
    )
    assert code.exit_code == 0, code.output
    assert (workspace / "calc.py").read_text() == "X = 1\n"
    assert not (workspace / "made.py").exists()
    assert (workspace / "notes.txt").read_text() == "the person's own file\n"
