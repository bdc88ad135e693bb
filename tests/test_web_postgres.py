"""The service on a PostgreSQL log: one store for the service's life, shared by every
request and every live stream (``engine.web.app``), so a few connections serve any
number of browsers, and connections the server dropped are made again."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient
from test_live_tail import WAITERS, backends, in_thread
from waiting import wait_until
from web_runs import NUL_URLS, ended, serving, streams_of

from engine.cli import cli
from engine.storage import open_store
from engine.web.app import ServiceSettings, create_app
from events import RunFinished, RunStarted, TaskAdded, UserAsked
from events.postgres import LISTENER_NAME, PostgresEventStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

START = RunStarted(goal="g", workspace="/w", config={})


def named(url: str) -> tuple[str, str]:
    """``url`` with an ``application_name`` of its own (one per test schema), and the name."""
    name = "serve_" + url.rsplit("%3D", 1)[1]
    return f"{url}&application_name={name}", name


@pytest.fixture
def service(pg_url: str) -> Iterator[tuple[TestClient, str]]:
    """The service in this process on a log with a run ``r`` waiting for an answer;
    the client, and the ``application_name`` of the service's connections."""
    with PostgresEventStore(pg_url) as store:
        store.append("r", [START, TaskAdded(task_id="t1", title="x"), UserAsked(question="q?")], 0)
    url, name = named(pg_url)
    app = create_app(ServiceSettings(db=url, allowed_hosts=("127.0.0.1",)))
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client, name


def test_pages_share_the_services_store_and_never_write(
    service: tuple[TestClient, str], pg_url: str
) -> None:
    client, name = service
    with PostgresEventStore(pg_url) as store:
        store.append("s", [START], 0)  # a run the stored summaries do not hold
        stored = store.summary_position()
        for _ in range(3):
            for path in ("/", "/api/runs", "/runs/r", "/api/runs/r/events"):
                assert client.get(path).status_code == 200, path
        statuses = {run["run_id"]: run["status"] for run in client.get("/api/runs").json()}
        assert statuses == {"r": "waiting_for_input", "s": "running"}
        assert len(backends(pg_url, name)) <= 5  # the pool (4) and the audit connection
        assert store.summary_position() == stored  # caught up in memory, not stored
        answered = client.post("/api/runs/r/answer", json={"answer": "yes"})
        assert answered.status_code == 200, answered.text
        assert store.last_version("r") == 4


def test_the_service_serves_on_when_the_server_dropped_its_connections(
    service: tuple[TestClient, str], pg_url: str
) -> None:
    client, name = service
    pages = ("/api/runs", "/runs/r", "/api/audit/model-usage?run_id=r", "/api/runs/r")
    assert [client.get(path).status_code for path in pages] == [200] * len(pages)
    dropped = backends(pg_url, name)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(dropped),)
        )
    # pooled connections are checked before they are lent; the audit connection is
    # made again by the statement that finds it lost, a named query's first (its time
    # limit's transaction found it lost, and answered 503 until a run page made it again)
    assert [client.get(path).status_code for path in reversed(pages)] == [200] * len(pages)
    assert backends(pg_url, name) and not dropped & backends(pg_url, name)


def test_serve_names_a_log_it_cannot_reach_in_one_line() -> None:
    url = "postgresql://me:s3cret@/nowhere?host=/nonexistent-socket-dir"
    result = CliRunner().invoke(cli, ["serve", "--db", url, "--port", "0"])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "s3cret" not in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_live_streams_and_pages_share_a_few_connections(
    pg_server: Any,
) -> None:
    """8 browsers on a live run, and pages: the service's pool (4), its listening
    connection and its audit connection at most, where a store per request (and per
    stream) held 2 or more each."""
    url = pg_server.new_url()
    served_url, name = named(url)
    with PostgresEventStore(url) as store:
        store.append("r", [START], 0)
        others = backends(url, LISTENER_NAME)
        with serving(served_url) as base:  # type: ignore[arg-type]
            heard: list[list[str]] = [[] for _ in range(WAITERS)]
            started = threading.Barrier(WAITERS + 1, timeout=60)

            def stream(seen: list[str]) -> None:
                with httpx.stream("GET", f"{base}/api/runs/r/stream", timeout=60) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            seen.append(json.loads(line[6:]).get("type", ""))
                            if len(seen) == 1:
                                started.wait()
                        if line.startswith("event: "):
                            seen.append(line)
                            return

            threads = [in_thread(lambda seen=seen: stream(seen))[0] for seen in heard]
            started.wait()  # every stream has sent the run's first event
            store.append("r", [TaskAdded(task_id="t1", title="x")], 1)
            pages = [
                in_thread(lambda path=path: httpx.get(base + path, timeout=60).status_code)
                for path in (
                    "/",
                    "/api/runs",
                    "/runs/r",
                    "/api/runs/r",
                    "/api/audit/model-usage?run_id=r",
                )
                * 2
            ]
            for thread, _ in pages:
                thread.join(timeout=60)
            assert [result["value"] for _, result in pages] == [200] * len(pages)
            wait_until(lambda: all("task.added" in seen for seen in heard), "every stream hears")
            held = backends(url, name, LISTENER_NAME) - others
            assert 2 <= len(held) <= 6, held
            store.append("r", [RunFinished(status="completed")], 2)
            for thread in threads:
                thread.join(timeout=60)
    assert heard == [["run.started", "task.added", "run.finished", "event: end"]] * WAITERS


def test_a_stream_whose_log_fails_ends_with_a_failed_event(
    service: tuple[TestClient, str], pg_url: str
) -> None:
    client, _ = service
    with PostgresEventStore(pg_url) as store:
        store.append("s", [START], 0)
    store = client.app.state.store  # type: ignore[attr-defined]
    with client.stream("GET", "/api/runs/s/stream") as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        wait_until(lambda: store.waiting("s") == 1, "the stream waits")
        store.close()  # as a server gone would fail the next read
        rest = list(lines)
    assert "event: failed" in rest
    error = json.loads(next(line for line in rest if line.startswith("data: "))[6:])
    assert "closed" in error["error"]


def test_a_log_that_cannot_be_reached_answers_503_and_serves_again_once_it_can(
    pg_server: Any,
) -> None:
    """A server that refuses connections is not an error of the request: every page
    and API answers 503 with ``Retry-After`` and what happened, never a traceback or
    a 500; once the server takes connections again, the same service serves, at
    once even after an outage longer than the pool keeps reconnecting on its own
    (its default backs off to 2 minutes between tries: the service answered 503 for
    half as long as the outage had lasted, after the server was back)."""
    url = pg_server.new_url()
    with open_store(url) as store:  # and the audit views
        store.append("r", [START, UserAsked(question="q?")], 0)
    served_url, name = named(url)
    # the store the service shares, handed to it as `autonomy serve` does; a short
    # timeout, so that a request waits 0.25 s for a connection, not the default 10
    shared = PostgresEventStore(served_url, connect_timeout=0.25, read_only=True)
    app = create_app(ServiceSettings(db=served_url, allowed_hosts=("127.0.0.1",)), shared)
    pages = ("/api/runs/r", "/api/runs", "/runs/r", "/", "/api/audit/model-usage?run_id=r")
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        assert [client.get(path).status_code for path in pages] == [200] * len(pages)
        with pg_server.refusing(name):
            answers = {path: client.get(path) for path in pages}
            answered = client.post("/api/runs/r/answer", json={"answer": "yes"})
            # no connection left, none being made: the pool stopped trying on its own
            pool = shared._pool  # what the pool is doing, not the store
            wait_until(
                lambda: pool.get_stats()["pool_size"] == 0,
                "the pool stops reconnecting on its own",
                timeout=60,
            )
        for path, answer in [*answers.items(), ("answer", answered)]:
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["retry-after"] == "2"
            assert "cannot be reached now" in answer.text and "Traceback" not in answer.text
        assert answers["/api/runs/r"].json()["error"].startswith("the log cannot be reached")
        assert "<html" in answers["/runs/r"].text.lower()  # a page, for a person
        # a request that finds no connection has the pool make one
        wait_until(
            lambda: all(client.get(path).status_code == 200 for path in pages),
            "the service serves again",
        )
        assert client.post("/api/runs/r/answer", json={"answer": "yes"}).status_code == 200
    with PostgresEventStore(url) as store:
        assert [e.type for e in store.read("r")][-1] == "user.answered"


def test_ctrl_c_ends_the_live_streams_on_a_postgresql_log(pg_server: Any) -> None:
    """The streams' waits are on the shared store, which the service closes as it
    stops: Ctrl-C with streams open exits 0 saying nothing (``serving``)."""
    url = pg_server.new_url()
    with PostgresEventStore(url) as store:
        store.append("r", [START], 0)
    with ExitStack() as opened:
        with serving(url) as base:  # type: ignore[arg-type]
            streams = streams_of(base, "r", 6, opened)
        assert all(ended(stream).endswith(b"0\r\n\r\n") for stream in streams)


def test_the_service_runs_no_sql_of_its_clients_on_a_postgresql_log(
    service: tuple[TestClient, str], tmp_path: Any
) -> None:
    """A read-only transaction does not make a query read only: as the log's role (a
    superuser, as a local log's often is) it ran a program on the database's machine,
    read its files and ended the writers' sessions. The service refuses the SQL."""
    client, _ = service
    planted = tmp_path / "ran"
    for sql in (
        f"COPY (SELECT 1) TO PROGRAM 'touch {planted}'",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
        "SELECT 1",
    ):
        refused = client.post("/api/sql", json={"sql": sql})
        assert refused.status_code == 403, refused.text
        assert "not offered on a PostgreSQL log" in refused.json()["error"]
    assert not planted.exists()
    assert client.get("/api/audit/model-usage?run_id=r").status_code == 200


def test_a_url_with_a_nul_names_nothing_and_says_so(service: tuple[TestClient, str]) -> None:
    """A PostgreSQL log's text never holds NUL, and asking it for a run or blob whose
    name did gave 500 ("PostgreSQL text fields cannot contain NUL"): now 400."""
    client, _ = service
    for url in NUL_URLS:
        answer = client.get(url)
        assert answer.status_code == 400, (url, answer.text)
        assert "NUL" in answer.text, url
    assert client.get("/api/runs/r").status_code == 200


def test_a_named_audit_query_that_runs_on_is_stopped_on_postgresql_too(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /api/audit/NAME`` had no time limit on a PostgreSQL log (SQLite's had
    one): a query that ran on held a request thread and the service's one audit
    connection, and every run page waited behind it. The limit is the server's
    ``statement_timeout`` in a transaction of its own, rolled back after: the
    connection serves on, with no limit left on it and no transaction open."""
    import engine.runs.audit as audit

    runaway = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    with PostgresEventStore(pg_url) as store:
        store.append("r", [START, TaskAdded(task_id="t1", title="x")], 0)
    url, name = named(pg_url)
    app = create_app(ServiceSettings(db=url, allowed_hosts=("127.0.0.1",), sql_seconds=0.5))
    # entered by hand: left open when the query is not stopped (its thread runs on)
    client = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    client.__enter__()
    real = audit.query_sql
    monkeypatch.setattr(audit, "query_sql", lambda *args: runaway)
    answers: list[Any] = []
    asking = threading.Thread(
        target=lambda: answers.append(client.get("/api/audit/tasks?run_id=r")),
        daemon=True,  # without the limit it would never end
    )
    asking.start()
    asking.join(timeout=60)
    assert answers, "the query was not stopped"
    assert answers[0].status_code == 400, answers[0].text
    assert "stopped after 0.5 s, this service's limit" in answers[0].json()["error"]

    monkeypatch.setattr(audit, "query_sql", real)
    tasks = client.get("/api/audit/tasks?run_id=r")
    assert tasks.status_code == 200, tasks.text
    assert [row["task_id"] for row in tasks.json()["rows"]] == ["t1"]
    assert client.get("/runs/r").status_code == 200
    with psycopg.connect(pg_url, autocommit=True) as conn:
        states = conn.execute(
            "SELECT state FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchall()
    assert states and all(state == "idle" for (state,) in states), states
    client.__exit__(None, None, None)
