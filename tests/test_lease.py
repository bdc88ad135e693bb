"""One engine per run: a run's lease, and what resume does with a command a crash cut."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from waiting import Gate, reaped, wait_until

from engine.agent.prompts import opening
from engine.agent.runlog import RunLog
from engine.agent.runner import Engine
from engine.cli import cli
from engine.config import load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.runs.workspace import rewind
from engine.storage import open_store
from engine.testing import ScriptedModelServer
from events import MemoryEventStore, RunStarted, SQLiteEventStore, ToolExecuted, ToolRequested
from events.errors import LeaseHeld
from events.schema import TaskAdded, TaskUpdated
from events.store import EventStore
from projections import project


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EventStore:
    if request.param == "memory":
        return MemoryEventStore()
    return SQLiteEventStore(tmp_path / "events.db")


def test_a_held_lease_refuses_a_second_holder_naming_the_first(store: EventStore) -> None:
    with store.lease("r", "pid 1 on host-a"):
        with pytest.raises(LeaseHeld, match="pid 1 on host-a"), store.lease("r", "pid 2"):
            pass
        with store.lease("other-run", "pid 2 on host-b"):
            pass  # leases are per run
    with store.lease("r", "pid 2 on host-b"):
        pass  # released on exit


def test_a_lease_ends_with_its_process_however_it_dies(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from events import SQLiteEventStore
        with SQLiteEventStore({str(db)!r}).lease("r", "the holder"):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    with reaped(process):
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        store = SQLiteEventStore(db)
        with pytest.raises(LeaseHeld, match="the holder"), store.lease("r", "me"):
            pass
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        with store.lease("r", "me"):
            pass  # free at once: no expiry to wait for


def flags(server: ScriptedModelServer) -> list[str]:
    return ["--model-url", server.url, "--api", "ollama", "--model", "m"]


def autonomy_run(
    tmp_path: Path, server: ScriptedModelServer, **popen: Any
) -> subprocess.Popen[Any]:
    """``autonomy run`` of the demo goal as its own process, logging to
    ``tmp_path/events.db``, its workspace ``tmp_path/ws``."""
    autonomy = Path(sys.executable).parent / "autonomy"
    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    argv = [str(autonomy), "run", GOAL, "--workspace", str(workspace), "--db", str(db)]
    return subprocess.Popen([*argv, *flags(server)], **popen)


def run_ids(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT run_id FROM events")]


@pytest.mark.slow
def test_resume_of_a_live_run_is_refused_and_a_dead_ones_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    gate = Gate()
    with ScriptedModelServer(gate, models=["m"]) as server:
        model = flags(server)
        process = autonomy_run(
            tmp_path, server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert gate.arrived.wait(timeout=60), "the run never asked the model"
            (run_id,) = run_ids(db)
            runner = CliRunner()
            refused = runner.invoke(cli, ["resume", run_id, "--db", str(db), *model])
            assert refused.exit_code == 1, refused.output
            assert f"being run by another engine (pid {process.pid} on" in refused.output
            refused = runner.invoke(cli, ["rewind", run_id, "--to", "1", "--db", str(db)])
            assert refused.exit_code == 1 and "being run by another engine" in refused.output
            before = run_ids(db), open_store(db).last_version(run_id)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            gate.opened.set()
        assert (run_ids(db), open_store(db).last_version(run_id)) == before, (
            "refusals write nothing"
        )
        resumed = CliRunner().invoke(cli, ["resume", run_id, "--db", str(db), *model])
        assert resumed.exit_code == 0, resumed.output
    assert project(open_store(db), run_id).pipeline.status == "completed"


@pytest.mark.slow
def test_a_second_run_in_a_workspace_in_use_is_refused(tmp_path: Path) -> None:
    """A run's lease is its own: two runs (or a rewind of one while another ran) in
    one workspace wrote over each other's files, each recording the other's changes
    as its own. The workspace is locked by the run working in it; the lock ends
    with its process."""
    db, workspace = tmp_path / "events.db", tmp_path / "ws"
    gate = Gate()
    with ScriptedModelServer(gate, models=["m"]) as server:
        second = [
            *("run", GOAL, "--workspace", str(workspace), "--db", str(tmp_path / "b.db")),
            *("--run-id", "second", *flags(server)),
        ]
        process = autonomy_run(
            tmp_path, server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        with reaped(process):
            try:
                assert gate.arrived.wait(timeout=60), "the run never asked the model"
                (first,) = run_ids(db)
                refused = CliRunner().invoke(cli, second)
                assert refused.exit_code == 1, refused.output
                assert f"the workspace {workspace} is in use by run {first}, pid {process.pid}" in (
                    refused.output
                )
                assert not (tmp_path / "b.db").exists() or run_ids(tmp_path / "b.db") == []
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                gate.opened.set()
        again = CliRunner().invoke(cli, second)
        assert again.exit_code == 0, again.output


def test_an_interrupted_command_is_settled_as_interrupted_never_rerun_and_the_task_told(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "test_ran.py").write_text(
        "import pathlib\n\ndef test_x():\n    pathlib.Path('ran.txt').write_text('x')\n"
    )
    # older than the command (by more than engine.tools.commands.CLOCK_SLACK): not its
    made = (workspace / "test_ran.py").stat().st_ctime
    wait_until(lambda: time.time() > made + 0.25, "the clock has moved on")
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    log.append(
        TaskAdded(task_id="t1", title="calc", target_file="calc.py"),
        TaskUpdated(task_id="t1", status="in_progress", attempt=1),
        ToolRequested(
            call_id="r1/t4", tool="run_command", arguments={"argv": ["python", "-m", "pytest"]}
        ),
    )
    engine = Engine(log, settings=load_settings(env={}), client=None, workspace=workspace)  # type: ignore[arg-type]
    assert engine.recover() == ["r1/t4 (run_command): not applied"]
    events = [e.data for e in store.read("r1")]
    settled = next(e for e in events if isinstance(e, ToolExecuted))
    assert settled.call_id == "r1/t4" and not settled.ok
    assert settled.error.startswith("interrupted: the engine stopped while run_command")
    assert not (workspace / "ran.txt").exists(), "recovery ran the command again"
    failed = events[-1]
    assert isinstance(failed, TaskUpdated) and failed.status == "failed"
    assert failed.task_id == "t1" and failed.error == settled.error
    # the model reads it in the task's next prompt
    task = project(store, "r1").pipeline.tasks["t1"]
    assert opening("code", project(store, "r1").pipeline, task)[1].content.count("interrupted")


def test_rewind_takes_the_lease(tmp_path: Path) -> None:
    store = MemoryEventStore()
    RunLog.create(store, "r", RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    with store.lease("r", "a live engine"), pytest.raises(LeaseHeld, match="a live engine"):
        rewind(store, "r", 1)
    assert store.last_version("r") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, (signal.SIGTERM, signal.SIGINT)],
    ids=["int", "term", "hup", "term-and-int"],
)
def test_ctrl_c_records_why_the_run_stopped_and_resume_and_replay_carry_on(
    tmp_path: Path, sig: signal.Signals | tuple[signal.Signals, ...]
) -> None:
    """SIGTERM (a service manager, ``docker stop``) and SIGHUP (the terminal closed)
    ended the run with nothing recorded, a run the log called running; they stop it
    as Ctrl-C does, the shell's exit code for each (128 + its number). Two at once
    (a Ctrl-C as the service manager's SIGTERM lands) are one stop, the first's."""
    from engine.agent.runner import STOPPED_BY_SIGNAL
    from engine.runs.replay import replay
    from events.schema import RunFinished

    db = tmp_path / "events.db"
    gate = Gate()
    with ScriptedModelServer(gate, models=["m"]) as server:
        model = flags(server)
        process = autonomy_run(
            tmp_path, server, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        with reaped(process):
            try:
                assert gate.arrived.wait(timeout=60), "the run never asked the model"
                sent = sig if isinstance(sig, tuple) else (sig,)
                for each in sent:
                    process.send_signal(each)
                if len(sent) > 1:
                    # the second may reach another thread than the one blocked reading
                    # the model's answer, which then reads on (Python runs its handlers
                    # in the main thread only): the answer comes, and the stop is taken
                    gate.opened.set()
                out, err = process.communicate(timeout=60)
            finally:
                gate.opened.set()
        assert process.returncode in {128 + each for each in sent}, (out, err)
        assert "Traceback" not in err
        (run_id,) = run_ids(db)
        assert f"continue it with: autonomy resume {run_id} --db {db}" in err
        last = list(open_store(db).read(run_id))[-1].data
        assert isinstance(last, RunFinished) and last.status == "stopped"
        # each cause in its own words: a SIGTERM was recorded as a Ctrl-C
        reason = STOPPED_BY_SIGNAL[signal.Signals(process.returncode - 128)]
        assert last.reason == reason, (process.returncode, err)
        assert f"run {run_id} was stopped: {reason}; the log says so." in err
        resumed = CliRunner().invoke(cli, ["resume", run_id, "--db", str(db), *model])
        assert resumed.exit_code == 0, resumed.output
    store = open_store(db)
    assert project(store, run_id).pipeline.status == "completed"
    result = replay(store, run_id, tools="recorded")
    assert result.identical, result.report()


SWALLOWED = textwrap.dedent(
    """
    import os, signal, sys, time
    fired = []

    def after_fork():  # as Python runs logging's, just after Popen forks
        if not fired and callable(signal.getsignal(signal.SIGTERM)):  # autonomy's
            fired.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # its handler runs here, in the hook: the stop is dropped

    os.register_at_fork(after_in_parent=after_fork)
    from engine.console import main
    main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_a_stop_that_lands_where_python_swallows_it_still_stops_the_run(tmp_path: Path) -> None:
    """A SIGTERM (or Ctrl-C) whose handler ran in a hook Python calls itself (the
    at-fork hooks ``subprocess.Popen`` runs as a command starts) was printed as
    "Exception ignored" and lost: the run went on to its end, exit 0."""
    from events.schema import RunFinished

    db = tmp_path / "events.db"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        argv = ["run", GOAL, "--workspace", str(tmp_path / "ws"), "--db", str(db)]
        process = subprocess.Popen(
            [sys.executable, "-c", SWALLOWED, *argv, *flags(server)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with reaped(process):
            out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, (out, err)
    assert "Exception ignored" not in err and "Traceback" not in err, err
    (run_id,) = run_ids(db)
    last = list(open_store(db).read(run_id))[-1].data
    assert isinstance(last, RunFinished) and last.status == "stopped", last


def test_a_second_stop_after_the_first_was_recorded_says_the_first_and_exits_with_its_status() -> (
    None
):
    """Under load a Ctrl-C sent with a SIGTERM was handled more than the grace after
    it, and stopped again: the log said SIGTERM, the exit status was 130 (found by
    the signal test above, two suites at once). The stop the log records is the one
    said, and its signal's status is the exit status."""
    import click

    from engine.agent.runner import (
        STOPPED_BY_SIGNAL,
        STOPPED_BY_USER,
        RunInterrupted,
        Stop,
        _stops_recorded,
    )
    from engine.cli.running import interrupts
    from events.schema import RunFinished

    terminated = STOPPED_BY_SIGNAL[signal.SIGTERM]
    log = RunLog.create(MemoryEventStore(), "r", RunStarted(goal="g", workspace="/w"))
    log.append(RunFinished(status="stopped", reason=terminated))
    with pytest.raises(RunInterrupted) as stopped, _stops_recorded(log):
        raise Stop(STOPPED_BY_USER)
    assert stopped.value.reason == terminated
    assert log.version == 2, "recorded once"
    with pytest.raises(click.exceptions.Exit) as exited, interrupts(None, None):
        raise stopped.value
    assert exited.value.exit_code == 128 + signal.SIGTERM


def test_a_stop_signal_that_lands_while_the_end_is_said_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signal test above, two suites at once: a Ctrl-C sent with a SIGTERM was
    handled seconds after it (past the grace), while the run's end was being said;
    its KeyboardInterrupt replaced the exit, and the run the log said SIGTERM stopped
    exited 130. Once the end is said, a stop signal changes nothing."""
    import click

    import engine.cli.running as running
    from engine.agent.runner import STOPPED_BY_SIGNAL, RunInterrupted

    monkeypatch.setattr(running, "STOP_GRACE", 0.0)  # as if seconds had passed
    said: list[str] = []

    def echo(text: str, err: bool = False) -> None:
        said.append(text)
        signal.raise_signal(signal.SIGINT)  # lands as the end is said

    monkeypatch.setattr(click, "echo", echo)
    try:
        with pytest.raises(click.exceptions.Exit) as exited, running.interrupts(None, None):
            raise RunInterrupted("r", STOPPED_BY_SIGNAL[signal.SIGTERM])
    except KeyboardInterrupt as e:  # (not left to end the test session)
        pytest.fail(f"the late signal replaced the exit: {e!r}")
    assert exited.value.exit_code == 128 + signal.SIGTERM
    assert any("continue it with" in line for line in said)


def test_a_lease_file_the_disk_cannot_write_still_leases_and_hides_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing who holds the lease on a full disk failed resume and rewind with a bare
    "[Errno 28]"; emptying it at the end, on a workspace made read-only meanwhile,
    replaced the error that had stopped the run with "[Errno 1]"."""
    import errno
    import os

    from events import lease
    from events.errors import LeaseHeld
    from events.lease import FileLeases

    def refused(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    leases = FileLeases(tmp_path / "leases")
    with monkeypatch.context() as full:
        full.setattr(lease.os, "pwrite", refused)
        full.setattr(lease.os, "ftruncate", refused)
        with (
            leases.hold("r", "first"),
            pytest.raises(LeaseHeld, match="is being run by"),
            leases.hold("r", "second"),
        ):
            pass
        with pytest.raises(KeyError, match="what stopped the work"), leases.hold("r", "again"):
            raise KeyError("what stopped the work")
    with leases.hold("r", "free again"):
        pass
    assert os.listdir(tmp_path / "leases")


def test_a_second_stop_signal_while_the_first_is_recorded_is_the_same_stop() -> None:
    """A second signal raised its KeyboardInterrupt in the middle of recording the
    first stop (or in the threading code it had reached): a traceback, exit 1, and
    no stop recorded. Within a few seconds of the first, it is taken for the same."""
    import click

    from engine.agent.runner import STOPPED_BY_SIGNAL, RunInterrupted
    from engine.cli.running import interrupts

    recorded = []
    with pytest.raises(click.exceptions.Exit) as stopped, interrupts(None, None):
        try:
            signal.raise_signal(signal.SIGTERM)
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGINT)  # as the stop is being recorded
            recorded.append("run.finished")
            raise RunInterrupted("r", STOPPED_BY_SIGNAL[signal.SIGTERM]) from None
    assert recorded == ["run.finished"] and stopped.value.exit_code == 128 + signal.SIGTERM


def test_a_stop_where_no_run_is_going_exits_with_the_signals_status() -> None:
    """An idle worker (or a run before its first event) stopped by SIGTERM exited
    130, the status of a Ctrl-C: a service manager reads 143 as its own stop."""
    import click

    from engine.cli.running import interrupts

    with pytest.raises(click.exceptions.Exit) as stopped, interrupts(None, None):
        signal.raise_signal(signal.SIGTERM)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
