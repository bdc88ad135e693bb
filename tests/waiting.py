"""Waiting on conditions, never on time: helpers for tests with real processes."""

from __future__ import annotations

import fcntl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


@contextmanager
def reaped(process: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    """``process`` for the block; at its end, however it ends, killed if it still
    runs and waited for: a test never leaves a process behind."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds ``path``'s flock: the process that took it is gone."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


class Gate:
    """Scripted models (the demo's by default) whose first request that ``when``
    accepts waits until the test opens the gate: a run held mid-way, at a moment
    the test knows (``arrived``), for as long as the test needs."""

    def __init__(self, when: Callable[[Any], bool] = lambda request: True) -> None:
        from engine.runs.demo import DemoModels

        self.models = DemoModels()
        self.when = when
        self.arrived = threading.Event()
        self.opened = threading.Event()

    def __call__(self, request: Any) -> Any:
        if not self.arrived.is_set() and self.when(request):
            self.arrived.set()
            self.opened.wait(timeout=120)
        return self.models(request)


_HELD: list[Any] = []


def refusing_url() -> str:
    """A loopback URL that refuses connections for the whole test session: a port
    bound and never listened on, and kept. (A port bound and closed again was taken
    by the next test server under load, which then answered the "down" endpoint.)"""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return f"http://127.0.0.1:{sock.getsockname()[1]}"
