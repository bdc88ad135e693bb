"""Waiting on conditions, never on time: helpers for tests with real processes."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds ``path``'s flock: the process that took it is gone."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True
