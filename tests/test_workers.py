"""Workers on a PostgreSQL log, as real processes: runs queued with ``submit``, taken
by two workers, one of them killed in the middle of a run, which the other resumes;
a worker whose log goes away in the middle of a run, which it resumes once the log
is back."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from waiting import Gate, reaped, wait_until

from engine.agent.runner import STOPPED_BY_USER, STOPPED_WITH_WORKER
from engine.cli import cli
from engine.config import load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store
from engine.testing import ScriptedModelServer, ScriptedRequest
from projections import project


def job_1(request: ScriptedRequest) -> bool:
    return "[job 1]" in json.dumps(request.body)


@pytest.mark.slow
def test_a_killed_workers_run_is_resumed_by_another_and_all_runs_complete(
    pg_url: str, tmp_path: Path
) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "README.md").write_text("a calculator\n")
    for job in (1, 2, 3):
        result = CliRunner().invoke(
            cli,
            [
                *("submit", f"{GOAL} [job {job}]", "--workspace-template", str(template)),
                *("--run-id", f"job-{job}", "--db", pg_url),
            ],
        )
        assert result.exit_code == 0 and result.output.strip() == f"job-{job}", result.output
    autonomy = Path(sys.executable).parent / "autonomy"
    gate = Gate(when=job_1)
    with ScriptedModelServer(gate, models=["m"]) as server:
        worker = [str(autonomy), "worker", "--once", "--db", pg_url]
        worker += ["--workdir", str(tmp_path / "runs"), "--model-url", server.url]
        worker += ["--api", "ollama", "--model", "m"]
        first = subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        second = None
        try:
            assert gate.arrived.wait(timeout=60), "the first worker never asked the model"
            second = subprocess.Popen(
                [*worker, "--concurrency", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            gate.opened.set()
            output, _ = second.communicate(timeout=240)
        finally:
            gate.opened.set()
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
    text = output.decode()
    assert second.returncode == 0, text
    assert "worker: resuming job-1" in text, text
    with open_store(pg_url) as store:
        for job in (1, 2, 3):
            assert project(store, f"job-{job}").pipeline.status == "completed", text
            assert store.verify(f"job-{job}").ok
        done = store.connection.execute("SELECT count(*) FROM queue WHERE done_at IS NULL")
        assert done.fetchone()[0] == 0
    schema = pg_url.rsplit("%3D", 1)[1]  # each log's runs in a directory of its own
    assert (tmp_path / "runs" / schema / "job-1" / "calc.py").is_file()


@pytest.mark.slow
def test_a_worker_whose_log_goes_away_mid_run_waits_and_finishes_the_run_once_it_is_back(
    pg_server: Any, tmp_path: Path
) -> None:
    """The server refuses every connection while a worker's run waits on its model:
    the run is cut off at its next append. The worker says once that it lost the
    log, keeps the run queued and waits (no traceback, no "error" outcome); once the
    server takes connections again it resumes the run from its log and completes it."""
    url = pg_server.new_url() + "&connect_timeout=2"  # the URL's timeout is the store's
    template = tmp_path / "template"
    template.mkdir()
    submitted = CliRunner().invoke(
        cli,
        [
            *("submit", GOAL, "--workspace-template", str(template)),
            *("--run-id", "job", "--db", url),
        ],
    )
    assert submitted.exit_code == 0, submitted.output
    autonomy = Path(sys.executable).parent / "autonomy"
    gate = Gate(when=lambda request: "review" in json.dumps(request.body).lower())
    lines: list[str] = []
    with ScriptedModelServer(gate, models=["m"]) as server:
        worker = subprocess.Popen(
            [
                *(str(autonomy), "worker", "--once", "--db", url),
                *("--workdir", str(tmp_path / "runs"), "--model-url", server.url),
                *("--api", "ollama", "--model", "m"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        reader = threading.Thread(target=lambda: lines.extend(worker.stdout or ()), daemon=True)
        reader.start()
        with reaped(worker):
            try:
                assert gate.arrived.wait(timeout=60), "the run never reached its review"
                with pg_server.refusing():
                    gate.opened.set()
                    wait_until(
                        lambda: any("cannot be reached" in line for line in lines),
                        "the worker says it lost the log",
                        timeout=60,
                    )
                worker.wait(timeout=240)
                reader.join(timeout=30)
            finally:
                gate.opened.set()
    text = "".join(lines)
    assert worker.returncode == 0, text
    assert "Traceback" not in text, text
    assert sum("cannot be reached" in line for line in lines) == 1, text
    assert "worker: the log can be reached again" in text, text
    assert "worker: resuming job" in text and "worker: job completed" in text, text
    with open_store(url) as store:
        assert project(store, "job").pipeline.status == "completed"
        assert store.verify("job").ok
        outcome = store.connection.execute("SELECT outcome FROM queue WHERE run_id = 'job'")
        assert outcome.fetchone()[0] == "completed"


def test_a_queued_run_finished_elsewhere_is_marked_done_with_how_it_ended(
    pg_url: str, tmp_path: Path
) -> None:
    """A worker whose claim was lost finished its run; the next worker "resumed" it,
    was told there was nothing to resume, and recorded that error as the outcome."""
    from engine.runs.workers import Worker, submit
    from events import RunFinished, RunStarted

    said: list[str] = []
    with open_store(pg_url) as store:
        submit(store, GOAL, tmp_path, run_id="job")
        store.append(
            "job",
            [RunStarted(goal=GOAL, workspace=str(tmp_path)), RunFinished(status="completed")],
            0,
        )
        worker = Worker(store, tmp_path / "runs", lambda *_: load_settings(env={}), said.append)
        assert worker.run(once=True) == 1
        row = store.connection.execute("SELECT outcome FROM queue WHERE run_id = 'job'").fetchone()
    assert row == ("completed",), said
    assert said == ["worker: job was completed already"]


def test_a_worker_refused_a_queued_run_waits_longer_each_time_and_says_so_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run resumed by hand while queued: the worker took it again every 0.2 s, each
    time projecting it and printing "resuming"."""
    from engine.runs import workers
    from events import RunStarted

    waits: list[float] = []
    stop = threading.Event()

    def sleep(seconds: float, _: object) -> None:
        waits.append(seconds)
        if len(waits) == 5:
            stop.set()

    monkeypatch.setattr(workers, "_sleep", sleep)
    said: list[str] = []
    with open_store(pg_url) as store:
        workers.submit(store, GOAL, tmp_path, run_id="job")
        store.append("job", [RunStarted(goal=GOAL, workspace=str(tmp_path))], 0)
        settings = lambda *_: load_settings(env={"AUTONOMY_PREFLIGHT": "false"})  # noqa: E731
        with store.lease("job", "a person's resume"):
            workers.Worker(store, tmp_path / "runs", settings, said.append).run(
                once=False, stop=stop
            )
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert said == [
        "worker: resuming job from version 1",
        "worker: run job is being run by another engine (a person's resume); wait for it to "
        "stop, or stop it: its lease ends with its process; it stays queued",
    ]


class HoldEvery:
    """The demo's models, each request held until the test opens the gate; which
    jobs have asked."""

    def __init__(self) -> None:
        from engine.runs.demo import DemoModels

        self.models = DemoModels()
        self.asked: set[str] = set()
        self.opened = threading.Event()

    def __call__(self, request: ScriptedRequest) -> Any:
        body = json.dumps(request.body)
        self.asked.update(job for job in ("job 1", "job 2") if f"[{job}]" in body)
        self.opened.wait(timeout=120)
        return self.models(request)


@pytest.mark.slow
def test_ctrl_c_stops_every_run_of_a_worker_with_concurrency(pg_url: str, tmp_path: Path) -> None:
    """Ctrl-C reached the main thread only: its run was recorded as stopped (with a
    traceback), and the worker went on, the other thread resuming the run just
    stopped. Now every run is stopped and recorded, each is said once, exit 130."""
    template = tmp_path / "template"
    template.mkdir()
    for job in (1, 2):
        result = CliRunner().invoke(
            cli,
            [
                *("submit", f"{GOAL} [job {job}]", "--workspace-template", str(template)),
                *("--run-id", f"job-{job}", "--db", pg_url),
            ],
        )
        assert result.exit_code == 0, result.output
    autonomy = Path(sys.executable).parent / "autonomy"
    models = HoldEvery()
    with ScriptedModelServer(models, models=["m"]) as server:
        worker = subprocess.Popen(
            [
                *(str(autonomy), "worker", "--concurrency", "2", "--db", pg_url),
                *("--workdir", str(tmp_path / "runs"), "--model-url", server.url),
                *("--api", "ollama", "--model", "m"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with reaped(worker):
            try:
                wait_until(lambda: len(models.asked) == 2, "both runs ask their model")
                worker.send_signal(signal.SIGINT)
                models.opened.set()  # the other thread's call returns: its run stops there
                output, _ = worker.communicate(timeout=120)
            finally:
                models.opened.set()
    assert worker.returncode == 130, output
    assert "Traceback" not in output, output
    for job in ("job-1", "job-2"):
        assert output.count(f"run {job} was stopped: ") == 1, output
    assert "resuming" not in output, output
    with open_store(pg_url) as store:
        for job in ("job-1", "job-2"):
            assert project(store, job).pipeline.status == "stopped"
        # the main thread's run by the Ctrl-C, the other's by the worker's stop
        reasons = {list(store.read(job))[-1].data.reason for job in ("job-1", "job-2")}
        assert reasons == {STOPPED_BY_USER, STOPPED_WITH_WORKER}, reasons
        queued = store.connection.execute("SELECT count(*) FROM queue WHERE done_at IS NULL")
        assert queued.fetchone()[0] == 2, "both stay queued, for the next worker to resume"


@pytest.mark.slow
def test_a_queued_run_held_by_a_resume_by_hand_lets_the_runs_after_it_go_first(
    pg_url: str, tmp_path: Path
) -> None:
    """The oldest queued run, held by another engine (``autonomy resume`` by hand),
    was claimed again and again, and every run queued after it waited."""
    template = tmp_path / "template"
    template.mkdir()
    for job in ("a", "b"):
        result = CliRunner().invoke(
            cli,
            [
                *("submit", f"{GOAL} [job {job}]", "--workspace-template", str(template)),
                *("--run-id", f"job-{job}", "--db", pg_url),
            ],
        )
        assert result.exit_code == 0, result.output
    autonomy = Path(sys.executable).parent / "autonomy"
    with open_store(pg_url) as store, ScriptedModelServer(DemoModels(), models=["m"]) as server:
        held = contextlib.ExitStack()
        held.enter_context(store.lease("job-a", "a resume by hand"))
        with held:
            worker = subprocess.Popen(
                [
                    *(str(autonomy), "worker", "--once", "--db", pg_url),
                    *("--workdir", str(tmp_path / "runs"), "--model-url", server.url),
                    *("--api", "ollama", "--model", "m"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            with reaped(worker):
                wait_until(
                    lambda: (
                        store.last_version("job-b") > 0
                        and project(store, "job-b").pipeline.status == "completed"
                    ),
                    "the run queued after the held one completes",
                    timeout=120,
                )
                assert store.last_version("job-a") == 0, "the held run was not started"
                held.close()  # the resume by hand ends: job-a is free
                output, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, output
        assert project(store, "job-a").pipeline.status == "completed", output


@pytest.mark.slow
def test_a_worker_started_before_its_log_can_be_reached_waits_for_it(
    pg_server: Any, tmp_path: Path
) -> None:
    """A worker started while the database server refused connections (a machine
    booting, a service started before its database) exited at once with the
    driver's error; a worker that lost its log mid-run waited for it."""
    url = pg_server.new_url() + "&connect_timeout=2"
    template = tmp_path / "template"
    template.mkdir()
    submitted = CliRunner().invoke(
        cli, ["submit", GOAL, "--workspace-template", str(template), "--run-id", "job", "--db", url]
    )
    assert submitted.exit_code == 0, submitted.output
    autonomy = Path(sys.executable).parent / "autonomy"
    lines: list[str] = []
    refusing = contextlib.ExitStack()
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, refusing:
        refusing.enter_context(pg_server.refusing())
        worker = subprocess.Popen(
            [
                *(str(autonomy), "worker", "--once", "--db", url),
                *("--workdir", str(tmp_path / "runs"), "--model-url", server.url),
                *("--api", "ollama", "--model", "m"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        reader = threading.Thread(target=lambda: lines.extend(worker.stdout or ()), daemon=True)
        reader.start()
        with reaped(worker):
            wait_until(
                lambda: any("cannot be reached" in line for line in lines),
                "the worker says it waits for its log",
                timeout=60,
            )
            refusing.close()  # the server takes connections again
            worker.wait(timeout=240)
            reader.join(timeout=30)
    text = "".join(lines)
    assert worker.returncode == 0, text
    assert sum("cannot be reached" in line for line in lines) == 1, text
    assert "worker: the log can be reached again" in text and "worker: job completed" in text


@contextlib.contextmanager
def serving(worker: Any) -> Iterator[None]:
    """``worker`` taking runs in a thread of this process until the block ends."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"once": False, "stop": stop}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)


@pytest.mark.parametrize("begun", [False, True], ids=["new", "to-resume"])
def test_a_worker_whose_model_is_down_leaves_the_runs_queued(
    pg_url: str, tmp_path: Path, begun: bool
) -> None:
    """A worker that could not reach its model marked every queued run done with the
    preflight's error, in half a second; a run it was to resume too, which the log
    then called running for ever. The runs stay queued: `--once` ends with the error,
    a serving worker says it once per run and waits for its model."""
    import socket

    from engine.errors import PreflightFailed
    from engine.runs.workers import Worker, submit
    from events import RunStarted

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings = load_settings(
        env={}, overrides={"model_url": f"http://127.0.0.1:{port}", "api": "ollama", "model": "m"}
    )
    said: list[str] = []
    with open_store(pg_url) as store:
        submit(store, GOAL, tmp_path, run_id="job")
        if begun:  # cut off mid-run by a worker that died
            (tmp_path / "ws").mkdir()
            store.append("job", [RunStarted(goal=GOAL, workspace=str(tmp_path / "ws"))], 0)
        worker = Worker(store, tmp_path / "runs", lambda *_: settings, said.append)
        with pytest.raises(PreflightFailed, match="cannot connect"):
            worker.run(once=True)
        with serving(worker):
            wait_until(lambda: any("job stays queued" in line for line in said), "it says so")
        (done,) = store.connection.execute(
            "SELECT done_at FROM queue WHERE run_id = 'job'"
        ).fetchone()
        assert done is None and store.last_version("job") == (1 if begun else 0)


def test_a_worker_leaves_a_workspace_another_run_works_in(pg_url: str, tmp_path: Path) -> None:
    """Workers of two logs sharing a workdir: a new run's directory there was removed
    before it was copied afresh, and it was another log's run's live workspace. Each
    log's runs are made in a directory of its own (its schema's name), but two
    databases may have schemas of one name: one that a run holds is left, and the run
    stays queued."""
    from engine.agent.runner import workspace_lock
    from engine.runs.workers import Worker, submit

    theirs = tmp_path / "runs" / pg_url.rsplit("%3D", 1)[1] / "job"
    theirs.mkdir(parents=True)
    (tmp_path / "template").mkdir()
    (theirs / "their.py").write_text("mine\n")
    said: list[str] = []
    with open_store(pg_url) as store, workspace_lock(theirs, "job of another log"):
        submit(store, GOAL, tmp_path / "template", run_id="job")
        worker = Worker(store, tmp_path / "runs", lambda *_: load_settings(env={}), said.append)
        with serving(worker):
            wait_until(
                lambda: any("is in use by run job of another log" in s for s in said), "refused"
            )
        (done,) = store.connection.execute(
            "SELECT done_at FROM queue WHERE run_id = 'job'"
        ).fetchone()
    assert (theirs / "their.py").read_text() == "mine\n" and done is None


def test_workers_of_two_logs_sharing_a_workdir_keep_each_others_workspaces(
    pg_server: Any, tmp_path: Path
) -> None:
    """Workers of two logs (a schema per team) sharing a workdir both had a ``job``:
    the second removed the first's finished workspace and ran its own run there, so
    the first log's completed run named another run's files."""
    from engine.runs.demo import DemoModels
    from engine.runs.workers import Worker, submit

    workspaces = []
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        overrides = {"model_url": server.url, "api": "ollama", "model": "m", "mode": "rules"}
        settings = load_settings(env={}, overrides=overrides)
        for team in ("a", "b"):
            template = tmp_path / f"template-{team}"
            template.mkdir()
            (template / "team.txt").write_text(team)
            with open_store(pg_server.new_url()) as store:
                submit(store, GOAL, template, run_id="job")
                worker = Worker(store, tmp_path / "runs", lambda *_: settings, lambda _: None)
                assert worker.run(once=True) == 1
                state = project(store, "job").pipeline
                assert state.status == "completed"
                workspaces.append(Path(state.workspace))
    first, second = workspaces
    assert first != second and first.parent.parent == second.parent.parent
    assert (first / "team.txt").read_text() == "a" and (first / "calc.py").is_file()
    assert (second / "team.txt").read_text() == "b"
