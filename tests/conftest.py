"""Shared fixtures: hypothesis profiles, a deterministic clock, fresh stores.

Hypothesis profiles: ``dev`` (the default) keeps the local run quick; ``ci`` is
selected when ``CI=true`` and draws more examples, still sized so that the whole
suite finishes in a few minutes on 2 cores. ``HYPOTHESIS_PROFILE=<name>`` picks one
explicitly. Neither has a deadline: timing on a shared CI machine is noise, and a
slow example is not a wrong one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from events import EventStore, MemoryEventStore, SQLiteEventStore

settings.register_profile(
    "dev",
    max_examples=25,
    deadline=None,
    stateful_step_count=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    stateful_step_count=30,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(
    os.environ.get(
        "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI", "").lower() == "true" else "dev"
    )
)


class TickingClock:
    """A clock that starts at a fixed moment and advances by ``step`` per call, so
    two stores given two equal clocks record equal times (and equal hashes)."""

    def __init__(
        self,
        start: datetime = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC),
        step: timedelta = timedelta(milliseconds=1),
    ) -> None:
        self.now = start
        self.step = step
        self.calls = 0

    def __call__(self) -> datetime:
        moment = self.now
        self.now += self.step
        self.calls += 1
        return moment


@pytest.fixture(scope="session", autouse=True)
def _session_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The key of fixtures wider than one test (a log recorded once per module): set
    before any of them runs, so that none reads or creates the user's own key."""
    path = tmp_path_factory.mktemp("session-key") / "autonomy" / "key"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTONOMY_KEY_FILE", str(path))
        yield path


@pytest.fixture(autouse=True)
def _key_file_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test keys its logs with a key of its own, never the user's: the key
    file is placed (``AUTONOMY_KEY_FILE``) in a fresh temporary directory, and
    child processes inherit the setting."""
    path = tmp_path_factory.mktemp("key") / "autonomy" / "key"
    monkeypatch.setenv("AUTONOMY_KEY_FILE", str(path))
    return path


@pytest.fixture
def session_key(
    _key_file_in_tmp: Path, _session_key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """For a module whose log is recorded once (under the session's key) and then
    written to by its tests (an answer, a fork): the test holds that key, as the
    log's user would. Use it with ``pytestmark = pytest.mark.usefixtures(...)``."""
    monkeypatch.setenv("AUTONOMY_KEY_FILE", str(_session_key_file))
    return _session_key_file


BACKENDS = ("memory", "sqlite-memory", "sqlite-file")


def open_store(backend: str, directory: Path, **kwargs: object) -> EventStore:
    """A fresh store of the named backend; a file store lives in ``directory``."""
    if backend == "memory":
        return MemoryEventStore(**kwargs)  # type: ignore[arg-type]
    if backend == "sqlite-memory":
        return SQLiteEventStore(":memory:", **kwargs)  # type: ignore[arg-type]
    if backend == "sqlite-file":
        return SQLiteEventStore(directory / "events.db", **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown backend {backend!r}")


@pytest.fixture
def make_clock() -> type[TickingClock]:
    """The ``TickingClock`` class, for tests that need several equal clocks."""
    return TickingClock


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
def memory_store(clock: TickingClock) -> Iterator[MemoryEventStore]:
    store = MemoryEventStore(clock=clock)
    yield store
    store.close()


@pytest.fixture
def sqlite_store(clock: TickingClock) -> Iterator[SQLiteEventStore]:
    """SQLite in memory."""
    store = SQLiteEventStore(":memory:", clock=clock)
    yield store
    store.close()


@pytest.fixture
def file_store(tmp_path: Path, clock: TickingClock) -> Iterator[SQLiteEventStore]:
    """SQLite in a file under the test's temporary directory."""
    store = SQLiteEventStore(tmp_path / "events.db", clock=clock)
    yield store
    store.close()


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: TickingClock
) -> Iterator[EventStore]:
    """A fresh store of each backend in turn."""
    opened = open_store(request.param, tmp_path, clock=clock)
    yield opened
    opened.close()


class _EarlyServer:
    """The session's PostgreSQL server, started in a thread as soon as collection
    shows a test will need it: ``initdb`` and the server's start (seconds on a busy
    machine) then overlap the tests that run before the first PostgreSQL test.

    The thread lives until the session ends and stops the server itself: the
    server's parent-death signal fires when the thread that started it ends."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.done = threading.Event()
        self.server: Any = None
        self.error: Exception | None = None

    def begin(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._serve, name="pg-server", daemon=True)
            self.thread.start()

    def _serve(self) -> None:
        from pg import PgServer

        try:
            self.server = PgServer().start()
        except (RuntimeError, OSError) as e:
            self.error = e
        finally:
            self.ready.set()
        if self.server is not None:
            self.done.wait()
            self.server.stop()

    def wait(self) -> Any:
        self.begin()
        self.ready.wait()
        if self.error is not None:
            pytest.fail(
                f"cannot start a PostgreSQL server for the tests: {self.error}", pytrace=False
            )
        return self.server

    def stop(self) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join()


_EARLY_SERVER = _EarlyServer()


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if any("pg_server" in getattr(item, "fixturenames", ()) for item in items):
        _EARLY_SERVER.begin()


def pytest_sessionfinish() -> None:
    _EARLY_SERVER.stop()  # also when no test asked for it after all (-x, -k)


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """A PostgreSQL server for the session (``tests/pg.py``), started early (see
    ``_EarlyServer``) and stopped when the session ends; fails, never skips, when
    none can be started."""
    return _EARLY_SERVER.wait()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """The URL of a fresh, empty schema on the session's server."""
    return str(pg_server.new_url())
