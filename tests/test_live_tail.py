"""A live tail waits for appends instead of polling for them: on PostgreSQL an append
is announced with ``NOTIFY`` and ``wait_for_append`` listens. The writer is another
process; the reader is shown to be waiting (``PostgresEventStore.waiting``: it has
looked at the run since it listens) before the writer appends, so only the
announcement can wake it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient
from waiting import wait_until

from engine.web.app import ServiceSettings, create_app
from events import RunStarted, TaskAdded
from events.postgres import LISTENER_NAME, PostgresEventStore

START = RunStarted(goal="g", workspace="/w", config={})
WAKE_WITHIN = 30.0
"""How soon a reader must be woken: far more than an announced append needs (it is
told at once), half of what its wait is given, so one that polls instead of
listening fails."""

WRITER = textwrap.dedent(
    """
    import sys
    from events import RunFinished, TaskAdded
    from events.postgres import PostgresEventStore
    with PostgresEventStore(sys.argv[1]) as store:
        for line in sys.stdin:
            version, what = line.split()
            event = RunFinished(status="completed") if what == "finish" else TaskAdded(
                task_id=what, title=what)
            store.append(sys.argv[2], [event], int(version))
            print("appended", flush=True)
    """
)


@contextmanager
def writer(url: str, run_id: str) -> Iterator[Callable[[int, str], None]]:
    """Another process that appends to ``run_id`` when told: ``write(expected, what)``."""
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None

    def write(expected: int, what: str) -> None:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{expected} {what}\n")
        process.stdin.flush()
        assert process.stdout.readline() == "appended\n"

    try:
        yield write
    finally:
        process.stdin.close()
        process.wait(timeout=30)
        process.stdout.close()


def listening(store: Any, run_id: str = "r", waiters: int = 1) -> Callable[[], bool]:
    """Whether ``waiters`` threads wait for ``run_id``'s announcement on ``store``."""
    return lambda: bool(store.waiting(run_id) >= waiters)


def backends(url: str, *names: str) -> set[int]:
    """The server's sessions with one of these ``application_name``s."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", (list(names),)
        ).fetchall()
    return {pid for (pid,) in rows}


def join_all(threads: list[tuple[threading.Thread, dict[str, Any]]], within: float) -> None:
    """Join every thread, all within ``within`` seconds from now."""
    deadline = time.monotonic() + within
    for thread, _ in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(value=target()), daemon=True)
    thread.start()
    return thread, result


def test_a_waiting_reader_is_woken_by_another_processes_append(pg_url: str) -> None:
    with PostgresEventStore(pg_url) as store, writer(pg_url, "r") as write:
        store.append("r", [START], 0)
        thread, result = in_thread(lambda: store.wait_for_append("r", 1, 2 * WAKE_WITHIN))
        wait_until(listening(store), "the reader listens")
        write(1, "t1")
        thread.join(timeout=WAKE_WITHIN)
        assert result == {"value": True}
        assert store.wait_for_append("r", 1, 0) and not store.wait_for_append("r", 2, 0.01)


def test_an_append_to_another_run_does_not_end_the_wait(pg_url: str) -> None:
    with PostgresEventStore(pg_url) as store, writer(pg_url, "other") as write:
        store.append("r", [START], 0)
        write(0, "t1")
        assert not store.wait_for_append("r", 1, 0.2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_service_streams_another_processes_appends_on_postgres(pg_url: str) -> None:
    with PostgresEventStore(pg_url) as store:
        store.append("r", [START], 0)
    app = create_app(
        ServiceSettings(db=pg_url, allowed_hosts=("127.0.0.1",), wait_seconds=2 * WAKE_WITHIN)
    )
    with (
        TestClient(app, base_url="http://127.0.0.1") as client,
        writer(pg_url, "r") as write,
        client.stream("GET", "/api/runs/r/stream") as response,
    ):
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))

        def tail() -> list[str]:
            seen = []
            for line in lines:
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:])["type"])
                if line == "event: end":
                    return seen
            return seen

        thread, result = in_thread(tail)
        wait_until(listening(app.state.store), "the stream listens")
        write(1, "t1")
        write(2, "finish")
        thread.join(timeout=WAKE_WITHIN)
    assert result == {"value": ["task.added", "run.finished"]}


WAITERS = 8


def test_many_waiters_share_one_listening_connection_and_one_append_wakes_them_all(
    pg_url: str,
) -> None:
    others = backends(pg_url, LISTENER_NAME)
    with PostgresEventStore(pg_url) as store:
        store.append("r", [START], 0)
        waits = [
            in_thread(lambda: store.wait_for_append("r", 1, 2 * WAKE_WITHIN))
            for _ in range(WAITERS)
        ]
        wait_until(listening(store, waiters=WAITERS), "every waiter listens")
        assert len(backends(pg_url, LISTENER_NAME) - others) == 1
        store.append("r", [TaskAdded(task_id="t1", title="x")], 1)
        join_all(waits, WAKE_WITHIN)  # each would wait 2 x WAKE_WITHIN unwoken
        assert [result for _, result in waits] == [{"value": True}] * WAITERS
        assert store.waiting("r") == 0


def test_closing_the_store_ends_every_wait_and_its_listening_connection(pg_url: str) -> None:
    others = backends(pg_url, LISTENER_NAME)
    store = PostgresEventStore(pg_url)
    store.append("r", [START], 0)
    waits = [in_thread(lambda: store.wait_for_append("r", 1, 2 * WAKE_WITHIN)) for _ in range(3)]
    wait_until(listening(store, waiters=3), "every waiter listens")
    store.close()
    join_all(waits, WAKE_WITHIN)
    assert [result for _, result in waits] == [{"value": False}] * 3
    assert not backends(pg_url, LISTENER_NAME) - others


def test_waiters_listen_again_when_their_connection_is_dropped(pg_url: str) -> None:
    others = backends(pg_url, LISTENER_NAME)
    with PostgresEventStore(pg_url) as store, writer(pg_url, "r") as write:
        store.append("r", [START], 0)
        waits = [
            in_thread(lambda: store.wait_for_append("r", 1, 2 * WAKE_WITHIN)) for _ in range(3)
        ]
        wait_until(listening(store, waiters=3), "every waiter listens")
        (dropped,) = backends(pg_url, LISTENER_NAME) - others
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (dropped,))

        def listening_again() -> bool:
            new = backends(pg_url, LISTENER_NAME) - others - {dropped}
            return len(new) == 1 and store.waiting("r") == 3

        wait_until(listening_again, "the waiters listen on a new connection")
        write(1, "t1")
        join_all(waits, WAKE_WITHIN)
        assert [result for _, result in waits] == [{"value": True}] * 3
