"""Run leases: one engine at a time per run.

A run's engine holds its lease for as long as it runs; ``resume`` (or a rewind)
of a run whose lease is held is refused with ``LeaseHeld``, naming the owner.

On one machine the lease is an exclusive ``flock`` on a small file beside the log
(``events.db.leases/<digest of the run id>``), holding the owner's description. The
kernel releases it when the owner's process ends, however it ends — so a crashed
engine's lease is free at once, with no heartbeat to keep and no clock to trust,
and a live engine's lease never expires under it, however long a model call takes.
(A shared log on a database server uses the same idea: a lock that belongs to the
owner's session.) In-memory stores keep their leases in the process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from events.errors import EventStoreError, LeaseHeld


def describe_owner() -> str:
    """This process, as a lease's owner: pid, host and since when."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"


def refusal(run_id: str, owner: str) -> LeaseHeld:
    return LeaseHeld(
        f"run {run_id} is being run by another engine ({owner or 'owner unknown'}); "
        "wait for it to stop, or stop it: its lease ends with its process",
        owner,
    )


class LocalLeases:
    """Leases held in this process (in-memory stores)."""

    def __init__(self) -> None:
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, run_id: str, owner: str) -> Iterator[None]:
        with self._lock:
            if run_id in self._held:
                raise refusal(run_id, self._held[run_id])
            self._held[run_id] = owner
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(run_id, None)


class FileLeases:
    """Leases as ``flock``-ed files in ``directory``, one per run."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, run_id: str) -> Path:
        return self.directory / hashlib.sha256(run_id.encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def hold(self, run_id: str, owner: str) -> Iterator[None]:
        try:
            self.directory.mkdir(exist_ok=True)
            fd = os.open(self._file(run_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            why = (
                ": the log's directory cannot be written by this user, so no command that "
                "writes to the log runs here (those that only read it do)"
                if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                else ""
            )
            raise EventStoreError(
                f"cannot take the lease of run {run_id} in {self.directory}: {e.strerror or e}{why}"
            ) from e
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_by = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                raise refusal(run_id, held_by) from None
            # who holds it, for whoever is refused: the lease holds without it (a full
            # disk failed resume and rewind with a bare errno)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{owner}\n".encode(), 0)
            try:
                yield
            finally:
                # no error of its own here: it would hide the one that ended the work
                # (a read-only workspace, said as EPERM)
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the flock
