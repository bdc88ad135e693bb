"""Runs recorded for the service's tests, and `autonomy serve` in a real process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from waiting import reaped

from engine.cli import cli
from engine.keys import load_key
from engine.runs.demo import GOAL, PYTEST, DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import (
    ArbiterDecided,
    Event,
    FileChange,
    PhaseChanged,
    RunStarted,
    TaskAdded,
    ToolExecuted,
    ToolRequested,
)

AUTONOMY = str(Path(sys.executable).parent / "autonomy")


class Quick(DemoModels):
    """The demo, with its two pytest runs replaced by a syntax check: the same trace in
    a fraction of the time (each pytest in the workspace costs a second or more)."""

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        if reply.tool_calls == (("run_command", {"argv": PYTEST}),):
            return Reply.tool("run_command", argv=["python", "-m", "py_compile", "test_calc.py"])
        return reply


class Asker(Quick):
    """The demo, but the arbiter first asks the user which Python to use."""

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        if "You asked the user" not in messages[-1]["content"]:
            return Reply.tool("request_user_input", question="Which Python version?")
        return super().arbiter(messages)


class Gated(Quick):
    """The demo models, holding the first request until ``gate`` is set: a run that
    is still going while a test looks at it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def __call__(self, request: ScriptedRequest) -> Reply:
        self.gate.wait(timeout=60)
        return super().__call__(request)


def model_flags(server: ScriptedModelServer) -> list[str]:
    return ["--model-url", server.url, "--api", "ollama", "--model", "m"]


def run_args(db: Path, workspace: Path, run_id: str, server: ScriptedModelServer) -> list[str]:
    where = ["--workspace", str(workspace), "--db", str(db), "--run-id", run_id]
    return ["run", GOAL, *where, *model_flags(server)]


def record(db: Path, workspace: Path, run_id: str, script: DemoModels | None = None) -> None:
    """Record a whole run of the demo (or ``script``) into ``db`` as ``run_id``."""
    with ScriptedModelServer(script or Quick(), models=["m"]) as server:
        result = CliRunner().invoke(cli, run_args(db, workspace, run_id, server))
    assert result.exit_code == 0, result.output


def long_run(path: Path, steps: int) -> None:
    """Run ``long``: ``steps`` decisions, the phase changing at every hundredth."""
    events: list[Event] = [RunStarted(goal="a long run", workspace="/tmp/long")]
    phases = ["start", "planning", "coding", "qa", "debugging", "documentation"]
    for n in range(steps):
        if n % 100 == 0:
            before, after = phases[n // 100 % 5], phases[n // 100 % 5 + 1]
            events.append(PhaseChanged(trigger="t", from_phase=before, to_phase=after))
        events.append(ArbiterDecided(action="code", reasoning=f"decision {n}"))
    with open_store(path, key=load_key(create=True)) as store:
        store.append("long", events, 0)


SPOOFED_FILE = "calc\u202eyp.exe"
"""A file name a model chose: with its right-to-left override obeyed, "calcexe.py"."""
SPOOFED_TITLE = "\u202eko deifirev \u2714 tests\u200b"
"""A task title: obeyed, "tests ✔ verified ok" and everything after it reversed."""


def spoofing_run(path: Path) -> None:
    """Run ``spoofing``: a task and a file whose names a model made to look like
    other names (``SPOOFED_FILE``, ``SPOOFED_TITLE``)."""
    with open_store(path, key=load_key(create=True)) as store:
        after = store.put(b"print('hi')\n")
        store.append(
            "spoofing",
            [
                RunStarted(goal="a spoofing run", workspace="/tmp/spoofing"),
                TaskAdded(task_id="t1", title=SPOOFED_TITLE),
                ToolRequested(call_id="c1", tool="create_file", arguments={"path": SPOOFED_FILE}),
                ToolExecuted(
                    call_id="c1",
                    tool="create_file",
                    ok=True,
                    result=f"wrote {SPOOFED_FILE}",
                    files_changed=(FileChange(path=SPOOFED_FILE, after=after, size=12),),
                ),
            ],
            0,
        )


@contextmanager
def running(db: Path, workspace: Path, run_id: str, server: ScriptedModelServer) -> Iterator[None]:
    """`autonomy run` in another process, against ``server``; waited for at the end."""
    process = subprocess.Popen(
        [AUTONOMY, *run_args(db, workspace, run_id, server)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with reaped(process):
        try:
            yield
        finally:
            process.wait(timeout=60)


@contextmanager
def serving(
    db: Path, *args: str, env: dict[str, str] | None = None, command: Sequence[str] = (AUTONOMY,)
) -> Iterator[str]:
    """`autonomy serve` on a free loopback port; yields its base URL. Stopped as a
    person stops it, with Ctrl-C (SIGINT): it must then exit 0, saying nothing.
    ``command`` runs ``autonomy`` (a script that changes something first, say)."""
    process = subprocess.Popen(
        [*command, "serve", "--db", str(db), "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once the socket listens
        assert " on http://" in line, (line, process.communicate(timeout=10))
        yield line.split(" on ", 1)[1].split("?")[0].strip().rstrip("/")
    except BaseException:
        process.kill()
        process.wait()
        raise
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError("autonomy serve did not stop on Ctrl-C") from None
    assert process.returncode == 0 and not err.strip(), (process.returncode, err)


def streams_of(base: str, run_id: str, count: int, opened: ExitStack) -> list[socket.socket]:
    """``count`` live streams of ``run_id`` open on the service at ``base``, each
    once it has sent the run's first event; ``opened`` closes them."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    streams = []
    for _ in range(count):
        stream = opened.enter_context(socket.create_connection((host, int(port)), timeout=60))
        streams.append(stream)
        stream.sendall(f"GET /api/runs/{run_id}/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        sent = b""
        while b"id: 1\n" not in sent:
            chunk = stream.recv(65536)
            assert chunk, sent
            sent += chunk
    return streams


def started_run(tmp_path: Path, run_id: str) -> Path:
    """A log under ``tmp_path`` holding run ``run_id``, started and running."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append(run_id, [RunStarted(goal="g", workspace=str(tmp_path / "ws"))], 0)
    return db


@contextmanager
def every_stream_taken(base: str, run_id: str) -> Iterator[None]:
    """As many live streams of ``run_id`` open on the service at ``base`` as it serves
    at once (``max_streams``), until the block ends."""
    from engine.web.app import ServiceSettings

    with ExitStack() as opened:
        streams_of(base, run_id, ServiceSettings(db="").max_streams, opened)
        yield


def ended(stream: socket.socket) -> bytes:
    """What ``stream`` sends until the service closes it (or resets it)."""
    rest = b""
    try:
        while chunk := stream.recv(65536):
            rest += chunk
    except ConnectionResetError:
        pass
    return rest


NUL_URLS = (
    "/api/runs/a%00b",
    "/runs/%00",
    "/api/runs/%00/events",
    "/api/runs/%00/stream",
    "/api/runs/r/blobs/%00",
    "/api/audit/tasks?run_id=%00",
)
"""URLs naming a run or a blob with a NUL in its name, for run ``r``."""
