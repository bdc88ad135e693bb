"""`autonomy run`, `autonomy demo` and friends, end to end through the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer
from events import ToolExecuted


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_run_shows_progress_and_a_summary_and_exits_zero_when_completed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke(
            "run",
            GOAL,
            "--workspace",
            str(ws),
            "--model-url",
            server.url,
            "--api",
            "ollama",
            "--model",
            "m",
            "--run-id",
            "r1",
        )
    assert code == 0, out
    assert "step   1 | planning" in out
    assert "tokens" in out
    assert "run r1: completed" in out
    assert "task t1 [completed]" in out and "file calc.py" in out
    assert (ws / ".autonomy" / "events.db").is_file(), "the default log lives in the workspace"
    code, out = invoke("runs", "--db", str(ws / ".autonomy" / "events.db"))
    assert code == 0 and "r1" in out and "completed" in out
    # and its commands ran: with the log in its default place, every one had failed
    # (bubblewrap could not hide the log's files inside its hidden directory), and
    # the demo's run completed all the same
    with open_store(ws / ".autonomy" / "events.db") as store:
        commands = [
            e.data
            for e in store.read("r1")
            if isinstance(e.data, ToolExecuted) and e.data.tool == "run_command"
        ]
    assert commands and all(c.ok for c in commands), [c.result for c in commands]


def test_run_reads_master_plan_when_no_goal_is_given(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "MASTER_PLAN.md").write_text("# Plan\nDo nothing at all.\n")
    with ScriptedModelServer(lambda request: Reply.text("no"), models=["m"]) as server:
        code, out = invoke(
            "run",
            "--workspace",
            str(ws),
            "--model-url",
            server.url,
            "--model",
            "m",
            "--run-id",
            "r2",
            "--max-steps",
            "3",
        )
        body = server.chat_requests[0].body
    assert code == 1, "a run that did not complete exits non-zero"
    assert "Do nothing at all." in body["messages"][1]["content"]
    assert "run r2: failed" in out


def test_run_without_goal_or_master_plan_is_a_clean_error(tmp_path: Path) -> None:
    code, out = invoke("run", "--workspace", str(tmp_path))
    assert code != 0
    assert "MASTER_PLAN.md" in out and "Traceback" not in out


def test_an_empty_goal_is_a_clean_error_and_starts_nothing(tmp_path: Path) -> None:
    """Given empty, as blanks, or as an empty MASTER_PLAN.md: no run, no log, no call."""
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "MASTER_PLAN.md").write_text("\n  \n")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        for args, ws in (
            (["run", ""], tmp_path / "a"),
            (["run", "  \t "], tmp_path / "b"),
            (["run"], tmp_path / "plan"),
        ):
            ws.mkdir(exist_ok=True)
            code, out = invoke(*args, "--workspace", str(ws), "--model-url", server.url)
            assert code == 1 and "the goal is empty" in out and "Traceback" not in out, out
            assert not (ws / ".autonomy").exists()
        assert server.chat_requests == []


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"Build \xff it\n", "is not UTF-8 text"),
        (b"x" * 4_000_001, "is larger than a goal may be (1,000,000 characters"),
        (b"x" * 1_000_001, "the goal is 1,000,001 characters, more than the 1,000,000"),
    ],
    ids=["not-utf8", "a-huge-file", "just-too-long"],
)
def test_a_goal_file_that_no_run_could_use_is_a_clean_error_and_starts_nothing(
    tmp_path: Path, content: bytes, said: str
) -> None:
    (tmp_path / "MASTER_PLAN.md").write_bytes(content)
    code, out = invoke("run", "--workspace", str(tmp_path), "--no-preflight")
    assert code == 1 and said in " ".join(out.split()) and "Traceback" not in out, out[:500]
    assert not (tmp_path / ".autonomy").exists()


def test_run_with_a_wrong_config_key_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "autonomy.toml").write_text("[limits]\nmax_stepz = 3\n")
    code, out = invoke("run", "goal", "--workspace", str(tmp_path))
    assert code != 0 and "max_stepz" in out and "Traceback" not in out


def test_demo_completes_and_says_where_the_database_is(tmp_path: Path) -> None:
    tmp_path = tmp_path / "new"  # a --workdir that does not exist yet is the demo's to make
    code, out = invoke("demo", "--workdir", str(tmp_path))
    assert code == 0, out
    assert "completed" in out
    assert f"database:  {tmp_path / 'events.db'}" in out
    assert f"autonomy serve --db {tmp_path / 'events.db'}" in out
    code, out = invoke("verify", "--db", str(tmp_path / "events.db"))
    assert code == 0, out


def test_a_run_id_that_is_a_path_or_odd_is_refused_everywhere_one_is_given(
    tmp_path: Path,
) -> None:
    """A run id names directories (a worker's workspace, a branch's): never "../x"."""
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke(
            "run", GOAL, "--workspace", str(tmp_path / "ws"), "--model-url", server.url,
            "--model", "m", "--run-id", "r1",
        )  # fmt: skip
        assert code == 0, out
        db = str(tmp_path / "ws" / ".autonomy" / "events.db")
        for bad in ("../x", "a/b", ".hidden", "x" * 129, "sp ace"):
            attempts = (
                ["run", GOAL, "--workspace", str(tmp_path / "ws2"), "--model-url", server.url,
                 "--run-id", bad],
                ["fork", "r1", "--at", "5", "--workspace", str(tmp_path / "f"), "--as", bad,
                 "--db", db],
                ["replay", "r1", "--continue-live", "--as", bad, "--model-url", server.url,
                 "--db", db],
            )  # fmt: skip
            for args in attempts:
                code, out = invoke(*args)
                assert code != 0 and "is not allowed" in out and "Traceback" not in out, (
                    args,
                    out,
                )
    assert not (tmp_path / "x").exists() and not (tmp_path / "f").exists()


def test_what_would_stop_a_run_is_found_before_its_log_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A home directory as the workspace was refused after its log was made there
    (as root, /.autonomy/events.db); a checkpoint file in no directory was found
    only after the whole run; --db :memory: ran the run and lost its log; answer,
    resume or rewind on an empty file made it a log."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, out = invoke("run", GOAL, "--workspace", str(home), "--model-url", "http://127.0.0.1:9")
    assert code == 1 and "a home directory" in out, out
    assert not (home / ".autonomy").exists(), "no log is left in it"
    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    given = ("run", GOAL, "--workspace", str(workspace), "--model-url", "http://127.0.0.1:9")
    code, out = invoke(*given, "--db", ":memory:")
    assert code == 1 and "--db :memory: keeps the run's log only until" in out, out
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody reads it: writing it would wait for ever
    for bad, said in ((tmp_path / "none" / "ck.jsonl", "No such file"), (fifo, "")):
        code, out = invoke(*given, "--db", str(db), "--checkpoint-file", str(bad))
        assert code == 1 and "the checkpoint file" in out and said in out, out
    assert not db.exists() and not workspace.exists(), "nothing was run"
    empty = tmp_path / "empty.db"
    empty.touch()
    code, out = invoke("answer", "r", "yes", "--db", str(empty))
    assert code == 1 and "the file is empty, not an autonomy event log" in out, out
    assert empty.stat().st_size == 0


@pytest.mark.parametrize("what", ["link to nowhere", "file"])
def test_a_default_log_directory_that_cannot_be_made_says_what_stands_there(
    tmp_path: Path, what: str
) -> None:
    """A ``.autonomy`` that is a link to nowhere, or a file, was "[Errno 17] File
    exists" and no more."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    if what == "file":
        (workspace / ".autonomy").write_text("x")
        said = "a file, not a directory"
    else:
        (workspace / ".autonomy").symlink_to(tmp_path / "gone")
        said = f"a link to {tmp_path / 'gone'}, which is not a directory"
    code, out = invoke(
        "run", GOAL, "--workspace", str(workspace), "--model-url", "http://127.0.0.1:9"
    )
    assert code == 1 and out.startswith(f"Error: the log's directory {workspace / '.autonomy'}")
    assert f"cannot be made: {said}\n" in out and "Errno" not in out, out
    assert sorted(p.name for p in workspace.iterdir()) == [".autonomy"]


@pytest.mark.parametrize("what", ["none", "device", "fifo", "directory", "link to nothing"])
def test_a_master_plan_that_is_not_a_file_is_said_to_be_so(tmp_path: Path, what: str) -> None:
    """A MASTER_PLAN.md that is a link to /dev/zero or a FIFO was "no MASTER_PLAN.md"."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    plan = workspace / "MASTER_PLAN.md"
    if what == "device":
        plan.symlink_to("/dev/zero")
    elif what == "fifo":
        os.mkfifo(plan)
    elif what == "directory":
        plan.mkdir()
    elif what == "link to nothing":
        plan.symlink_to(tmp_path / "gone")
    code, out = invoke("run", "--workspace", str(workspace), "--model-url", "http://127.0.0.1:9")
    said = (
        f"no GOAL given and no MASTER_PLAN.md in {workspace}"
        if what == "none"
        else f"no GOAL given, and {plan} is not a file (a device, a FIFO, a directory or a link"
    )
    assert code == 1 and out.startswith(f"Error: {said}"), out


def test_a_goal_file_that_waits_for_its_data_is_not_waited_on(tmp_path: Path) -> None:
    """Read blocking, a file that waits for data (a FIFO, /proc/kmsg) hung the run."""
    import subprocess
    import sys

    fifo = tmp_path / "goal"
    os.mkfifo(fifo)
    code = "import sys; from engine.cli.running import _goal_file; print(repr(_goal_file(__import__('pathlib').Path(sys.argv[1]))))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "''", done.stderr


def test_a_log_the_model_could_write_beside_is_refused_before_it_is_made(tmp_path: Path) -> None:
    """A log named inside the workspace (not under .autonomy/, which commands never
    see): a command planted a rollback journal beside it, and the next open for
    writing replaced the whole log with the journal's database."""
    ws = tmp_path / "ws"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        given = ("--model-url", server.url, "--api", "ollama", "--model", "m")
        code, out = invoke("run", GOAL, "--workspace", str(ws), "--db", str(ws / "run.db"), *given)
        assert code == 1 and f"the log {ws / 'run.db'} is inside the workspace" in out, out
        assert not (ws / "run.db").exists()
        kept = ws / "sub" / ".autonomy" / "events.db"  # hidden from commands: allowed
        kept.parent.mkdir(parents=True)
        code, out = invoke("run", GOAL, "--workspace", str(ws), "--db", str(kept), *given)
        assert code == 0, out
    # a log already there (an earlier autonomy allowed it) is not resumed in place
    from engine.agent.runlog import RunLog
    from engine.storage import open_store
    from events import RunStarted

    inside = ws / "logs" / "old.db"
    inside.parent.mkdir()
    with open_store(inside) as store:
        RunLog.create(store, "r", RunStarted(goal=GOAL, workspace=str(ws), mode="rules"))
    code, out = invoke("resume", "r", "--db", str(inside), "--model-url", "http://127.0.0.1:9")
    assert code == 1 and "where the model's commands write files beside it" in out, out


def test_a_run_that_waits_is_summed_up_without_empty_parentheses() -> None:
    """A waiting run has no reason: its summary said "waiting_for_input ()"."""
    from engine.agent.runner import summary
    from projections.fold import RunState
    from projections.pipeline import PipelineState

    state = RunState(run_id="r", pipeline=PipelineState(status="waiting_for_input", question="?"))
    assert summary(state)[0] == "run r: waiting_for_input"


def test_a_line_break_in_the_workspace_path_stays_on_its_line(tmp_path: Path) -> None:
    """``run ... started in PATH`` printed a path with a line break as two lines: the
    second could read as a status line of autonomy's own."""
    workspace = tmp_path / "ws\nrun run-fake: completed (2 task(s) completed)"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke(
            "run", GOAL, "--workspace", str(workspace), "--db", str(tmp_path / "e.db"),
            "--model-url", server.url, "--api", "ollama", "--model", "m",
        )  # fmt: skip
    assert code == 0, out
    assert "\nrun run-fake" not in out and "ws\\nrun run-fake: completed" in out, out


def test_a_run_whose_output_pipe_closes_is_recorded_as_stopped(tmp_path: Path) -> None:
    """``autonomy run ... | head -5``: the first line written after ``head`` left ended
    the run with nothing recorded, 'running' in the log for ever. It stops as on a
    signal: recorded, resumable, SIGPIPE's exit status, no traceback."""
    import signal
    import subprocess
    import sys

    from engine.agent.runner import STOPPED_BY_PIPE
    from engine.storage import open_store
    from projections import project

    db = tmp_path / "e.db"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        run = subprocess.Popen(
            [sys.executable, "-c", "from engine.console import main; main()", "run", GOAL,
             "--workspace", str(tmp_path / "ws"), "--db", str(db), "--run-id", "r",
             "--model-url", server.url, "--api", "ollama", "--model", "m"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert run.stdout is not None and run.stderr is not None
        first = run.stdout.readline()
        run.stdout.close()  # as head does once it has its lines
        said = run.stderr.read()
        run.wait(timeout=120)
    assert first.startswith("run r started in"), first
    assert run.returncode == 128 + signal.SIGPIPE, said
    assert "Traceback" not in said and "Exception ignored" not in said, said
    assert "run r was stopped" in said and f"autonomy resume r --db {db}" in said, said
    assert "run r was stopped: the reader of its output went away" in said, said
    with open_store(db) as store:
        assert project(store, "r").pipeline.status == "stopped"
        assert list(store.read("r"))[-1].data.reason == STOPPED_BY_PIPE  # not a Ctrl-C
