"""Workers on a PostgreSQL log, as real processes: runs queued with ``submit``, taken
by two workers, one of them killed in the middle of a run, which the other resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from waiting import Gate

from engine.cli import cli
from engine.runs.demo import GOAL
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
    assert (tmp_path / "runs" / "job-1" / "calc.py").is_file()
