"""The service's JSON API and pages, through Starlette's test client."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.testclient import TestClient
from waiting import wait_until
from web_runs import (
    NUL_URLS,
    Asker,
    ended,
    every_stream_taken,
    long_run,
    record,
    serving,
    started_run,
    streams_of,
)

from engine.cli.serve import listen
from engine.storage import open_store
from engine.web import app as web_app
from engine.web.app import ServiceSettings, create_app
from engine.web.pages import TRACE_PAGE
from events import (
    ModelRequested,
    RunFinished,
    RunResumed,
    RunRewound,
    RunStarted,
    TaskAdded,
    ToolExecuted,
    UserAsked,
)
from events.errors import ConcurrencyError
from projections import project

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    # the module's log is recorded once; tests that write to it hold its key
    pytest.mark.usefixtures("session_key"),
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One log with a completed demo run ``done`` and a run ``asking`` that waits."""
    base = tmp_path_factory.mktemp("web")
    path = base / "events.db"
    record(path, base / "done", "done")
    record(path, base / "asking", "asking", Asker())
    return path


JSON = {"Content-Type": "application/json"}


def client_for(db: Path, **settings: object) -> TestClient:
    app = create_app(ServiceSettings(db=db, allowed_hosts=("127.0.0.1",), **settings))  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    with client_for(db) as c:
        yield c


def test_api_runs_lists_each_run_with_status_goal_and_tokens(client: TestClient) -> None:
    runs = {r["run_id"]: r for r in client.get("/api/runs").json()}
    assert runs["done"]["status"] == "completed" and runs["done"]["tokens"] > 0
    assert runs["asking"]["status"] == "waiting_for_input"
    assert runs["asking"]["question"] == "Which Python version?"
    assert "calc.py" in runs["done"]["goal"]


def test_api_state_is_the_projection_at_any_version(client: TestClient, db: Path) -> None:
    with open_store(db) as store:
        expected = project(store, "done", upto=10)
    at_10 = client.get("/api/runs/done?at=10").json()
    assert at_10["version"] == 10 and at_10["pipeline"]["phase"] == expected.pipeline.phase
    assert sorted(at_10["pipeline"]["tasks"]) == sorted(expected.pipeline.tasks)
    assert client.get("/api/runs/done").json()["pipeline"]["status"] == "completed"


def test_api_events_filters_by_type_and_position(client: TestClient) -> None:
    events = client.get("/api/runs/done/events?after=5&type=tool.executed").json()
    assert events and {e["type"] for e in events} == {"tool.executed"}
    assert all(e["version"] > 5 and "ok" in e["data"] and e["hash"] for e in events)


def test_api_events_come_in_pages_linked_to_the_next(db: Path) -> None:
    """At most ``events_page`` events an answer (a larger ``limit`` is cut to it); the
    ``Link`` header leads through the whole run, filters kept, each event once."""
    with open_store(db) as store:
        every = [e.version for e in store.read("done")]
        executed = [e.version for e in store.read("done") if isinstance(e.data, ToolExecuted)]
    with client_for(db, events_page=4) as client:
        for url, expected in (
            ("/api/runs/done/events?limit=100", every),
            ("/api/runs/done/events?type=tool.executed&limit=3", executed),
        ):
            seen: list[int] = []
            pages = 0
            next_url: str | None = url
            while next_url is not None:
                response = client.get(next_url)
                assert response.status_code == 200, response.text
                page = [e["version"] for e in response.json()]
                assert 0 < len(page) <= (3 if "limit=3" in url else 4)
                seen += page
                pages += 1
                link = response.headers.get("link")
                next_url = link[1 : link.index(">")] if link else None
                assert next_url is None or 'rel="next"' in link
            assert seen == expected and pages == -(-len(expected) // (3 if "limit=3" in url else 4))
        assert "link" not in client.get(f"/api/runs/done/events?after={every[-2]}").headers
        assert client.get("/api/runs/done/events?limit=x").status_code == 400


def test_api_audit_answers_are_capped_like_sql_ones(db: Path) -> None:
    with client_for(db, sql_rows=2) as client:
        cut = client.get("/api/audit/phase-timeline?run_id=done").json()
        assert len(cut["rows"]) == 2 and cut["truncated"] is True
    with client_for(db) as client:
        whole = client.get("/api/audit/phase-timeline?run_id=done").json()
        assert len(whole["rows"]) > 2 and whole["truncated"] is False


def test_unknown_runs_and_bad_queries_are_json_errors_not_tracebacks(client: TestClient) -> None:
    for url in ("/api/runs/nope", "/api/runs/nope/events", "/api/runs/nope/stream", "/runs/nope"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert "Traceback" not in response.text and "nope" in response.text
    assert client.get("/api/runs/nope").json() == {"error": "no run 'nope' in this log"}
    bad = client.get("/api/audit/no-such-query")
    assert bad.status_code == 400 and "unknown audit query" in bad.json()["error"]
    assert client.get("/api/runs/done?at=x").status_code == 400
    assert client.get("/api/runs/done?at=100000").status_code == 400
    assert client.get("/api/runs/done/blobs/" + "0" * 64).status_code == 404


@pytest.mark.parametrize("value", ["x", "-1", "1e3", "\u00b2", "9" * 30, " 5"])
def test_numbers_in_a_query_are_checked_not_crashed_on(client: TestClient, value: str) -> None:
    """A version or count that is not ASCII digits, or too large for the log's 64-bit
    integers, is a 400 naming it (a superscript two passes ``str.isdigit`` but not
    ``int``; 30 nines overflow SQLite)."""
    for url in (
        f"/api/runs/done?at={quote(value)}",
        f"/api/runs/done/events?after={quote(value)}",
        f"/api/runs/done/events?limit={quote(value)}",
        f"/api/runs/done/stream?after={quote(value)}",
    ):
        response = client.get(url)
        assert response.status_code == 400, (url, response.text)
        assert "must be a" in response.json()["error"], url
    assert client.get("/api/runs/done/events?limit=0").status_code == 400
    # a stream resumed with a Last-Event-ID it cannot read starts from the beginning
    with client.stream(
        "GET", "/api/runs/done/stream", headers={"Last-Event-ID": value.encode("latin-1")}
    ) as s:
        assert s.status_code == 200
        first = next(line for line in s.iter_lines() if line.startswith("id:"))
        assert first == "id: 1"


def test_api_audit_runs_the_named_queries(client: TestClient) -> None:
    usage = client.get("/api/audit/model-usage?run_id=done").json()
    assert "prompt_tokens" in usage["columns"] and usage["rows"]
    history = client.get("/api/audit/file-history?run_id=done&arg=calc.py").json()
    assert {r["change"] for r in history["rows"]} >= {"create", "modify"}


def test_api_sql_is_read_only(client: TestClient, db: Path) -> None:
    rows = client.post("/api/sql", json={"sql": "SELECT count(*) AS n FROM runs"}).json()
    assert rows["rows"] == [{"n": 2}]
    bound = client.post(
        "/api/sql",
        json={"sql": "SELECT status FROM runs WHERE run_id = :run_id", "run_id": "asking"},
    ).json()
    assert bound["rows"] == [{"status": "waiting_for_input"}]
    refused = client.post("/api/sql", json={"sql": "DELETE FROM blobs"})
    assert refused.status_code == 400 and "read" in refused.json()["error"]
    not_json = client.post("/api/sql", content=b"not json", headers=JSON)
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    assert client.post("/api/sql", content=b"not json").status_code == 415


RUNAWAY = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
"""A query that never ends on its own."""


def test_api_sql_stops_a_runaway_query_and_caps_the_rows(db: Path) -> None:
    """Within the service's limits (here 0.5 s and 3 rows): a query that would never end
    is stopped with a clear error, and a large answer is cut, saying so; the service
    goes on serving."""
    log = db
    with client_for(log, sql_seconds=0.5, sql_rows=3) as client:
        stopped = client.post("/api/sql", json={"sql": RUNAWAY})
        assert stopped.status_code == 400, stopped.text
        assert "stopped after 0.5 s, this service's limit" in stopped.json()["error"]
        cut = client.post("/api/sql", json={"sql": "SELECT position FROM events ORDER BY position"})
        assert cut.status_code == 200, cut.text
        assert cut.json()["rows"] == [{"position": 1}, {"position": 2}, {"position": 3}]
        assert cut.json()["truncated"] is True
        whole = client.post("/api/sql", json={"sql": "SELECT 1 AS one"}).json()
        assert whole == {"columns": ["one"], "rows": [{"one": 1}], "truncated": False}


def test_api_sql_stops_a_query_whose_one_step_runs_on_and_runs_few_at_once(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite looks at the deadline between the steps of its program only: one
    ``printf('%.*c', 2000000000, 'x')`` ran 15 s past a 10 s limit and answered 200
    with a null, and 45 such queries at once held every request thread for minutes.
    Each query runs in a process of its own, ended at its limit; more queries than
    the service runs at once are a 503 at once, not a thread waiting."""
    import engine.web.app as app_module

    burner = "SELECT printf('%.*c', 2000000000, 'x') AS x"
    with client_for(db, sql_seconds=0.5) as client:
        stopped = client.post("/api/sql", json={"sql": burner})
        assert stopped.status_code == 400, stopped.text
        assert "stopped after 0.5 s, this service's limit" in stopped.json()["error"]
        assert client.get("/api/runs").status_code == 200
    monkeypatch.setattr(app_module, "SQL_AT_ONCE", 0)  # as if that many ran now
    with client_for(db) as client:
        busy = client.post("/api/sql", json={"sql": "SELECT 1"})
        assert busy.status_code == 503 and busy.headers["Retry-After"], busy.text
        assert "runs 0 SQL queries at a time" in busy.json()["error"]


def test_a_named_audit_query_that_runs_on_is_stopped_too(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit views once recursed for ever on a log someone wrote; a named query
    (``GET /api/audit/NAME``) had no limit, and held a request thread for good."""
    import threading

    import engine.runs.audit as audit

    monkeypatch.setattr(audit, "query_sql", lambda *args: RUNAWAY)
    answers: list[Any] = []
    client = client_for(db, sql_seconds=0.5).__enter__()
    asking = threading.Thread(
        target=lambda: answers.append(client.get("/api/audit/tasks?run_id=done")),
        daemon=True,  # without the limit it would never end
    )
    asking.start()
    asking.join(timeout=60)
    assert answers, "the query was not stopped"  # (the client left open: its thread runs on)
    client.__exit__(None, None, None)
    assert answers[0].status_code == 400, answers[0].text
    assert "stopped after 0.5 s, this service's limit" in answers[0].json()["error"]


def test_an_audit_query_that_fails_is_said_in_its_section_and_the_page_stands(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failing query (a sum a log someone wrote overflowed) made the whole run
    page a 400."""
    import engine.runs.audit as audit

    real = audit.query_sql
    overflowing = "SELECT abs(-9223372036854775807 - 1) AS x"
    monkeypatch.setattr(
        audit,
        "query_sql",
        lambda name, *a: overflowing if name == "model-usage" else real(name, *a),
    )
    with client_for(db) as client:
        page = client.get("/runs/done")
    assert page.status_code == 200, page.text
    failed = page.text.split('id="audit-model-usage"')[1].split("</details>")[0]
    assert "(failed)" in failed
    assert "audit query model-usage failed: integer overflow" in failed
    tasks = page.text.split('id="audit-tasks"')[1].split("</details>")[0]
    assert "<table>" in tasks and "failed:" not in tasks


def test_a_url_with_a_nul_names_nothing_on_sqlite_too(client: TestClient) -> None:
    for url in NUL_URLS:
        answer = client.get(url.replace("/r/", "/done/"))
        assert answer.status_code == 400 and "NUL" in answer.text, (url, answer.text)


def test_blobs_and_diffs_show_the_files_a_tool_changed(client: TestClient, db: Path) -> None:
    with open_store(db) as store:
        changes = [
            c for e in store.read("done") if isinstance(e.data, ToolExecuted)
            for c in e.data.files_changed if c.path == "calc.py"
        ]  # fmt: skip
    modified = next(c for c in changes if c.before and c.after)
    content = client.get(f"/api/runs/done/blobs/{modified.after}").text
    assert "Return the sum" in content
    # a run the log has not: 404, as every route of a run (it answered any run's blob)
    nowhere = client.get(f"/api/runs/nope/blobs/{modified.after}")
    assert nowhere.status_code == 404 and "no run 'nope'" in nowhere.json()["error"]
    diff = client.get(
        f"/runs/done/diff?path=calc.py&before={modified.before}&after={modified.after}"
    ).text
    assert "+    &#34;&#34;&#34;Return the sum" in diff or '+    """Return the sum' in diff


def test_the_run_page_shows_the_trace_with_prompts_escaped(client: TestClient, db: Path) -> None:
    page = client.get("/runs/done")
    assert page.status_code == 200
    with open_store(db) as store:
        first = next(e.data for e in store.read("done") if isinstance(e.data, ModelRequested))
    assert "consult_coding_specialist" in page.text and "reasoning specialist" in page.text
    assert first.messages[0].content[:40].replace("'", "&#39;") in page.text


def test_text_from_the_log_is_escaped_on_every_page(tmp_path: Path) -> None:
    """Goals, questions and model output are data: a log cannot script the browser."""
    hostile = "<script>alert(1)</script>"
    path = tmp_path / "hostile.db"
    with open_store(path) as store:
        started = RunStarted(goal=hostile, workspace=str(tmp_path))
        store.append("hostile run?#", [started, UserAsked(question=hostile)], 0)
    with client_for(path) as client:
        pages = [client.get("/"), client.get(f"/runs/{quote('hostile run?#')}")]
    for page in pages:
        assert page.status_code == 200 and "&lt;script&gt;alert(1)" in page.text
        assert hostile not in page.text


def test_a_long_runs_page_shows_its_trace_a_page_at_a_time(tmp_path: Path) -> None:
    """The newest steps first; earlier ones a page away, and each phase's link goes to
    the page that holds it. The whole trace of 20,000 events was an 11 MB page."""
    path = tmp_path / "long.db"
    long_run(path, 450)
    steps = TRACE_PAGE
    with client_for(path) as client:
        last = client.get("/runs/long")
        first = client.get("/runs/long?page=1")
        wrong = [client.get(f"/runs/long?page={p}") for p in ("4", "0", "x", "9" * 30)]
    assert last.status_code == 200 and first.status_code == 200
    assert "page 3 of 3" in last.text and f"#{2 * steps + 1}</span>" in last.text
    assert f"#{steps + 1}</span>" not in last.text, "an earlier page's step"
    assert last.text.count('<details class="step') == 451 - 2 * steps
    assert 'href="?page=2" rel="prev">earlier' in last.text
    assert "page 1 of 3" in first.text and "#1</span>" in first.text
    assert first.text.count('<details class="step') == steps
    # the phase links: each to its version, on the page that holds it
    assert 'href="#v2"' in first.text and 'href="?page=3#v' in first.text
    assert [w.status_code for w in wrong] == [404, 400, 400, 400]
    assert "has 3 page(s), not a page 4" in wrong[0].text


def test_the_stream_of_a_finished_run_sends_its_events_then_ends(client: TestClient) -> None:
    with client.stream("GET", "/api/runs/done/stream?after=100") as response:
        body = "".join(response.iter_text())
    data = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert [d["version"] for d in data[:-1]] == list(range(101, 101 + len(data) - 1))
    assert "event: end" in body and data[-2]["type"] == "run.finished"
    with client.stream("GET", "/api/runs/done/stream", headers={"Last-Event-ID": "110"}) as again:
        resumed = "".join(again.iter_text())
    assert resumed.startswith("id: 111\n")


def test_a_stream_reads_a_long_run_a_page_at_a_time_and_ends_only_at_its_end(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 4 (``events_page``): no read holds more (a client starting at 0 of a
    long run made the service read the whole run at once), every event once and in
    order, then ``end``; a full page is followed by the next, not by the end."""
    with open_store(db) as store:
        last = store.last_version("done")
    read = web_app._read_after
    sizes: list[int] = []

    def counted(*args: Any) -> Any:
        events = read(*args)
        sizes.append(len(events))
        return events

    monkeypatch.setattr(web_app, "_read_after", counted)
    with (
        client_for(db, stream_page=4) as client,
        client.stream("GET", "/api/runs/done/stream") as response,
    ):
        body = "".join(response.iter_text())
    ids = [int(line[4:]) for line in body.splitlines() if line.startswith("id: ")]
    assert ids == list(range(1, last + 1)) and body.endswith("event: end\ndata: " +
        '{"status":"completed"}\n\n')  # fmt: skip
    assert max(sizes) == 4 and sum(sizes) == last


def test_a_run_going_on_again_is_live_again(tmp_path: Path) -> None:
    """Live is the run's status as the projection folds it. A run stopped (Ctrl-C)
    and resumed was running again, but taken for over by a list of lifecycle event
    types that lacked ``run.resumed``: its stream ended at once, its page had no live
    tail. So is a run rewound to where it was running; one rewound to where it was
    stopped is over (it was taken for live, its stream never ended)."""
    path = tmp_path / "events.db"
    start = RunStarted(goal="g", workspace=str(tmp_path / "ws"))
    stopped = RunFinished(status="stopped", reason="interrupted (Ctrl-C)")
    with open_store(path) as store:
        store.append("resumed", [start, stopped, RunResumed()], 0)
        store.append("rewound", [start, RunFinished(status="failed"), RunRewound(to_version=1)], 0)
        store.append("over", [start, stopped], 0)
        store.append("undone", [start, stopped, RunResumed(), RunRewound(to_version=2)], 0)
    with client_for(path) as client:
        for run_id in ("resumed", "rewound"):
            assert client.get(f"/api/runs/{run_id}").json()["pipeline"]["status"] == "running"
            assert 'id="tail"' in client.get(f"/runs/{run_id}").text, run_id
            with client.stream("GET", f"/api/runs/{run_id}/stream") as response:
                lines = response.iter_lines()
                assert "id: 3" in lines  # read up to the run's last event, then
                with open_store(path) as store:
                    store.append(run_id, [RunFinished(status="completed")], 3)
                body = "\n".join(lines)
            assert "id: 4\n" in body, body  # the stream waited for it
            assert body.endswith('event: end\ndata: {"status":"completed"}\n'), body
        for run_id in ("over", "undone"):  # stopped; rewound to where it was stopped
            assert 'id="tail"' not in client.get(f"/runs/{run_id}").text, run_id
            with client.stream("GET", f"/api/runs/{run_id}/stream") as response:
                over = "".join(response.iter_text())
            assert over.endswith('event: end\ndata: {"status":"stopped"}\n\n'), over


def test_answering_a_waiting_run_records_the_answer(db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    with client_for(copy) as client:
        empty = client.post("/api/runs/asking/answer", json={"answer": "  "})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        answered = client.post("/api/runs/asking/answer", json={"answer": "Python 3.12"})
        assert answered.status_code == 200, answered.text
        assert answered.json()["next"] == "autonomy resume asking"
        # a second answer (a race lost, or late) conflicts with the run's state: 409,
        # as the README says, not the 400 of a malformed request
        again = client.post("/api/runs/asking/answer", json={"answer": "3.11"})
        assert again.status_code == 409, again.text
        assert "was answered already ('Python 3.12', at " in again.json()["error"]
        done = client.post("/api/runs/done/answer", json={"answer": "3.11"})
        assert done.status_code == 409 and "not waiting for an answer" in done.text
        assert client.post("/api/runs/nope/answer", json={"answer": "x"}).status_code == 404
    with open_store(copy) as store:
        assert project(store, "asking").pipeline.answers == ("Python 3.12",)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/runs/asking/answer", b'{"answer": "a \\udcff b"}'),
        ("/api/sql", b'{"sql": "SELECT \'\\ud800\'"}'),
        ("/api/sql", b"[" * 100_000 + b"]" * 100_000),
    ],
    ids=["answer-surrogate", "sql-surrogate", "nested"],
)
def test_a_body_no_log_could_hold_is_a_400_and_writes_nothing(
    db: Path, tmp_path: Path, path: str, body: bytes
) -> None:
    """A lone surrogate escape (which Python's JSON parser takes, and no log holds) or
    JSON nested past any parser's depth: the client's mistake, said as such."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    with client_for(copy) as client:
        answer = client.post(path, content=body, headers=JSON)
    assert answer.status_code == 400, answer.text
    assert "not JSON" in answer.json()["error"]
    if b"\\ud" in body:  # said as such, not as msgspec's "Input data was truncated"
        assert "surrogate" in answer.json()["error"], answer.text
    with open_store(copy) as store:
        assert project(store, "asking").pipeline.status == "waiting_for_input"


def test_a_page_of_another_site_cannot_answer_a_run(db: Path, tmp_path: Path) -> None:
    """Cross-site request forgery: a page the user visits elsewhere posts to the
    service on their loopback. A form can send ``text/plain`` without asking the
    service first (no preflight), shaped to parse as JSON; a script can send JSON with
    its own ``Origin``. Both are refused, and the run still waits; the service's own
    page (same origin, JSON) and a client that is no browser (no Origin) answer."""
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    forged = '{"answer": "rm -rf ~ is fine", "x": "="}'  # what <form enctype=text/plain> sends
    with client_for(copy) as client:
        as_form = client.post(
            "/api/runs/asking/answer",
            content=forged,
            headers={"Content-Type": "text/plain", "Origin": "https://evil.example"},
        )
        assert as_form.status_code == 403, as_form.text
        assert "another site" in as_form.json()["error"]
        no_origin = client.post(
            "/api/runs/asking/answer", content=forged, headers={"Content-Type": "text/plain"}
        )
        assert no_origin.status_code == 415, no_origin.text
        assert "application/json" in no_origin.json()["error"]
        for origin in ("https://evil.example", "null", "http://127.0.0.1:9999"):
            scripted = client.post(
                "/api/runs/asking/answer", json={"answer": "x"}, headers={"Origin": origin}
            )
            assert scripted.status_code == 403, (origin, scripted.text)
        sql = client.post(
            "/api/sql", json={"sql": "SELECT 1"}, headers={"Origin": "https://evil.example"}
        )
        assert sql.status_code == 403
        # a method no route takes changes nothing: the routes say so (it was told to
        # send a JSON body, 415)
        for method in ("DELETE", "PUT", "PATCH", "TRACE"):
            for path in ("/", "/api/runs/asking/answer"):
                other = client.request(method, path, headers={"Content-Type": "text/plain"})
                assert other.status_code == 405, (method, path, other.text)
        with open_store(copy) as store:
            assert project(store, "asking").pipeline.status == "waiting_for_input"
        proxied = {"Origin": "https://runs.example", "X-Forwarded-Host": "runs.example"}
        behind_a_proxy = client.post("/api/sql", json={"sql": "SELECT 1"}, headers=proxied)
        assert behind_a_proxy.status_code == 200, behind_a_proxy.text
        own_page = client.post(
            "/api/runs/asking/answer",
            json={"answer": "Python 3.12"},
            headers={"Origin": "http://127.0.0.1"},
        )
        assert own_page.status_code == 200, own_page.text
    with open_store(copy) as store:
        assert project(store, "asking").pipeline.answers == ("Python 3.12",)


def test_a_body_larger_than_a_mebibyte_is_refused_unread(db: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    huge = json.dumps({"answer": "x" * (1 << 20)})
    with client_for(copy) as client:
        refused = client.post("/api/runs/asking/answer", content=huge, headers=JSON)
        assert refused.status_code == 413, refused.text
        assert "larger than 1,048,576 bytes" in refused.json()["error"]
    with open_store(copy) as store:
        assert project(store, "asking").pipeline.status == "waiting_for_input"


@pytest.mark.parametrize("size", [web_app.MAX_BODY + 1, 2**63, 2**64 - 1], ids=str)
def test_a_body_announced_larger_than_a_mebibyte_is_refused_at_once(
    tmp_path: Path, size: int
) -> None:
    """The README said "413, the body unread", but the body was waited for: a POST whose
    ``Content-Length`` said 2,000,000 and that sent nothing got no answer until the
    connection's deadline closed it. The header is enough: a 413 at once, and the
    connection closed (a body that does come is not read to its end). So for a length
    past any the log holds (2**63 to 2**64 - 1, the most the server reads), which was
    no number to the check."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("run", [RunStarted(goal="g", workspace=str(tmp_path / "ws"))], 0)
    with serving(db) as base, ExitStack() as opened:
        port = int(base.rsplit(":", 1)[1])
        for path in ("/api/sql", "/api/runs/run/answer"):
            client = opened.enter_context(socket.create_connection(("127.0.0.1", port)))
            client.settimeout(60)
            client.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                f"\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            answer = ended(client)  # no body sent: the answer, then the connection closed
            assert answer.startswith(b"HTTP/1.1 413 "), answer
            assert b"connection: close\r\n" in answer.lower(), answer
            assert answer.endswith(b'"the request body is larger than 1,048,576 bytes"}'), answer


def test_open_streams_leave_threads_for_the_pages(tmp_path: Path) -> None:
    """More live streams than the 40 threads requests share, each waiting long for an
    event (here 10 minutes): a request is still answered at once, since the streams wait in
    threads of their own (here 2, taken in turns). Once the run ends, every stream ends."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("live", [RunStarted(goal="g", workspace=str(tmp_path))], 0)
    streams, ended = 45, threading.Semaphore(0)
    started = threading.Semaphore(0)
    settings = {"wait_seconds": 600.0, "keepalive_seconds": 1200.0, "stream_threads": 2}
    with client_for(db, **settings) as client:

        def follow() -> None:
            with client.stream("GET", "/api/runs/live/stream") as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith("data: "))
                started.release()
                for line in lines:
                    if line.startswith("event: end"):
                        ended.release()
                        return

        followers = [threading.Thread(target=follow, daemon=True) for _ in range(streams)]
        for follower in followers:
            follower.start()
        try:
            for _ in range(streams):
                assert started.acquire(timeout=30), "a stream never sent the run's first event"
            answered: list[int] = []
            asking = threading.Thread(
                target=lambda: answered.append(client.get("/api/runs").status_code), daemon=True
            )
            asking.start()
            wait_until(lambda: answered == [200], "a page is answered while the streams wait")
        finally:  # the run ends: so do the streams, and the client can close
            with open_store(db) as store:
                store.append("live", [RunFinished(status="completed")], 1)
        for _ in range(streams):
            assert ended.acquire(timeout=60), "a stream did not end with its run"


def test_live_streams_past_the_most_served_at_once_are_told_to_come_back(tmp_path: Path) -> None:
    """Each open stream held a connection to the log and its run's fold, and nothing
    bounded how many: 200 streams nobody read took the service to 1.5 GB, and made a
    busy run's tail 12 s late. Past ``max_streams`` (64) a stream is a 503 with
    ``Retry-After``; once clients leave, streams are served again."""
    import httpx

    with serving(started_run(tmp_path, "live")) as base:
        # asked for all at once: each saw the count before any had begun, and 150 of
        # 64 were let in
        host, port = base.removeprefix("http://").rsplit(":", 1)
        with ExitStack() as opened:
            asking = [
                opened.enter_context(socket.create_connection((host, int(port)), timeout=60))
                for _ in range(80)
            ]
            for stream in asking:
                stream.sendall(
                    f"GET /api/runs/live/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
                )
            codes = [stream.recv(12)[9:12] for stream in asking]
            assert codes.count(b"200") == 64 and codes.count(b"503") == 16, codes
        with every_stream_taken(base, "live"):
            refused = httpx.get(f"{base}/api/runs/live/stream", timeout=30)
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "2"
            assert "64 live streams open, as many as it serves at once" in refused.text
            assert httpx.get(f"{base}/api/runs", timeout=30).status_code == 200

        def served() -> bool:
            with httpx.stream("GET", f"{base}/api/runs/live/stream", timeout=30) as again:
                return again.status_code == 200

        wait_until(served, "a stream is served once the others' clients have left")


def test_a_stream_asked_from_past_the_runs_end_starts_at_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's stale Last-Event-ID (or ``after``) past the run's last version: the
    stream never saw the events that ended the run, and never ended. Here the run
    ends just after the stream's first look at its status."""
    from projections import summaries

    path = tmp_path / "events.db"
    with open_store(path) as store:
        store.append("r", [RunStarted(goal="g", workspace=str(tmp_path))], 0)
    looked = summaries.status_at_end

    def then_the_run_ends(store: Any, run_id: str) -> tuple[int, str]:
        found = looked(store, run_id)
        if found[0] == 1:
            with open_store(path) as writer:
                writer.append("r", [RunFinished(status="completed")], 1)
        return found

    monkeypatch.setattr(web_app, "status_at_end", then_the_run_ends)
    body: list[str] = []
    with client_for(path, wait_seconds=0.05) as client:

        def follow() -> None:
            headers = {"Last-Event-ID": "50"}
            with client.stream("GET", "/api/runs/r/stream", headers=headers) as sent:
                body.append("".join(sent.iter_text()))

        following = threading.Thread(target=follow, daemon=True)
        following.start()
        following.join(timeout=60)
        assert body, "the stream did not end with its run"
    assert "id: 2\n" in body[0] and body[0].endswith('event: end\ndata: {"status":"completed"}\n\n')


def test_an_answer_that_loses_a_race_is_a_conflict_not_an_error(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two people answer at once: both saw the run waiting, one append wins, and the
    other's expected version is stale (``ConcurrencyError``). That is a 409 saying so,
    not a 500."""

    def raced(store: object, run_id: str, text: str) -> str:
        raise ConcurrencyError(run_id, 15, 16)

    monkeypatch.setattr(web_app, "answer_question", raced)
    with client_for(db) as client:
        lost = client.post("/api/runs/asking/answer", json={"answer": "3.12"})
    assert lost.status_code == 409, lost.text
    assert "expected version 15 but the log is at 16" in lost.json()["error"]
    assert "someone else wrote to the run meanwhile" in lost.json()["error"]


def test_a_token_is_required_on_every_request_when_set(db: Path) -> None:
    with client_for(db, token="s3cret") as client:
        assert client.get("/api/runs").status_code == 401
        assert client.get("/").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            client.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        page = client.get("/?token=s3cret")
        assert page.status_code == 200 and "autonomy_token" in page.headers["set-cookie"]
        # the cookie set by the page opens the page's own requests, and is not the
        # token: a browser sends it to every port of the host
        assert "s3cret" not in page.headers["set-cookie"]
        assert client.get("/api/runs").status_code == 200
        client.cookies.clear()
        client.cookies.set(next(iter(page.cookies)), "s3cret")
        assert client.get("/api/runs").status_code == 401


def test_every_answer_keeps_text_from_the_log_from_acting_as_the_service(
    client: TestClient, db: Path
) -> None:
    """A file the model wrote, served as stored, and every page and API answer: no
    script but the service's own, no sniffing ``text/plain`` into HTML, no framing."""
    with open_store(db) as store:
        digest = next(iter(store.blob_digests()))
    answers = [
        client.get(path)
        for path in ("/", "/runs/done", "/api/runs", f"/api/runs/done/blobs/{digest}", "/nope")
    ]
    answers.append(client.get("/api/runs", headers={"Host": "attacker.example"}))
    answers.append(client.post("/api/sql", content=b"x"))
    for answer in answers:
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, answer
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_loopback_service_refuses_other_host_names(client: TestClient) -> None:
    """A page on another site cannot reach it by rebinding its DNS name to 127.0.0.1."""
    assert client.get("/api/runs", headers={"Host": "attacker.example"}).status_code == 400


def test_two_runs_are_compared_as_autonomy_diff_does(client: TestClient) -> None:
    compared = client.get("/api/runs/done/diff/asking")
    assert compared.status_code == 200, compared.text
    document = compared.json()
    assert document["first_divergent_step"] is not None
    missing = client.get("/api/runs/done/diff/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_the_services_connections_send_a_response_at_once() -> None:
    """TCP_NODELAY, inherited from the listening socket: without it a response written
    in two parts waits for the client's delayed ACK (about 40 ms a request)."""
    listener = listen("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_api_sql_opens_no_other_file(client: TestClient, tmp_path: Path) -> None:
    """``query_only`` covers the log's own file: ATTACH would open, and create, any
    other the service's user may write, and VACUUM INTO would write one."""
    for name, sql in (
        ("plain.db", "ATTACH DATABASE '{}' AS x"),
        ("uri.db", "ATTACH DATABASE 'file:{}?mode=rwc' AS x"),
        ("vacuum.db", "VACUUM INTO '{}'"),
    ):
        target = tmp_path / name
        answer = client.post("/api/sql", json={"sql": sql.format(target)})
        assert answer.status_code == 400, answer.text
        assert not target.exists(), sql


def test_api_sql_answers_are_bounded_in_bytes_and_say_so(db: Path) -> None:
    """A row cap alone let one row of 300 MB through (``hex(zeroblob(...))``)."""
    with client_for(db, sql_bytes=20_000) as client:
        huge = client.post("/api/sql", json={"sql": "SELECT hex(zeroblob(100000)) AS x"})
        assert huge.status_code == 400 and "too big" in huge.json()["error"], huge.text
        cut = client.post("/api/sql", json={"sql": "SELECT data FROM events"})
        assert cut.status_code == 200 and cut.json()["truncated"] is True
        assert 0 < sum(len(r["data"]) for r in cut.json()["rows"]) <= 20_000


def test_api_sql_bounds_what_one_row_can_hold(client: TestClient) -> None:
    """SQLite bounds each value, not a row, and a row is held whole before its bytes
    can be counted: 40 values of 16 MB took the service from 37 MB to 1.25 GB. A row
    has at most ``SQL_COLUMNS`` columns of at most ``value_limit`` bytes (1 MiB under
    the 16 MiB cap), and a query past either is a 400 that says so."""
    from engine.runs.audit import SQL_COLUMNS, value_limit

    longest = value_limit(16 * 1024 * 1024)
    assert longest == 1024 * 1024 and SQL_COLUMNS * longest <= 4 * 16 * 1024 * 1024
    values = ", ".join(f"randomblob({longest + 1}) AS c{i}" for i in range(40))
    wide = ", ".join(f"{i} AS c{i}" for i in range(SQL_COLUMNS + 1))
    for sql, why in ((f"SELECT {values}", "too big"), (f"SELECT {wide}", "too many columns")):
        refused = client.post("/api/sql", json={"sql": sql})
        assert refused.status_code == 400, refused.text[:200]
        error = refused.json()["error"]
        assert why in error and f"at most {longest:,} bytes" in error, error
        assert f"at most {SQL_COLUMNS} columns" in error, error
    widest = client.post("/api/sql", json={"sql": "SELECT * FROM model_calls JOIN tool_calls"})
    assert widest.status_code == 200, widest.text[:200]
    most = client.post("/api/sql", json={"sql": f"SELECT length(randomblob({longest})) AS n"})
    assert most.json()["rows"] == [{"n": longest}]


def test_run_sql_holds_one_row_at_a_time_past_its_byte_cap(db: Path) -> None:
    """Rows were fetched 256 at a time before their bytes were counted: 256 rows of a
    16 MB value each, 4 GB held for an answer of 16 MiB."""
    import tracemalloc

    from engine.runs.audit import Limits, run_sql

    cap = 1024 * 1024
    sql = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)"
        " SELECT randomblob(60000) AS b FROM n"
    )
    tracemalloc.start()
    try:
        cut = run_sql(db, sql, {}, Limits(max_bytes=cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cut.truncated and len(cut.rows) == cap // 60000
    assert peak < 2 * cap, f"{peak:,} bytes held for an answer of {cap:,}"


def test_api_sql_answers_every_value_of_columns_of_one_name(client: TestClient, db: Path) -> None:
    """Rows were objects keyed by column name: ``SELECT 1 AS a, 2 AS a`` answered
    ``{"a": 2}``, one value lost (so did ``audit --sql --format json``). A name that
    repeats is ``a:2``, ``a:3``... (past one a column already has), in "columns" too."""
    from engine.runs.audit import format_result, run_sql

    sql = 'SELECT 1 AS a, 2 AS a, 3 AS "a:2", 4 AS b, 5 AS a'
    answer = client.post("/api/sql", json={"sql": sql})
    assert answer.status_code == 200, answer.text
    assert answer.json()["columns"] == ["a", "a:3", "a:2", "b", "a:4"]
    assert answer.json()["rows"] == [{"a": 1, "a:3": 2, "a:2": 3, "b": 4, "a:4": 5}]
    assert list(answer.json()["rows"][0]) == answer.json()["columns"]
    both = "SELECT a.version, b.version FROM events a JOIN events b USING (run_id) LIMIT 1"
    joined = client.post("/api/sql", json={"sql": both})
    assert joined.json()["rows"] == [{"version": 1, "version:2": 1}], joined.text
    assert json.loads(format_result(run_sql(db, sql), "json")) == answer.json()["rows"]


def test_api_sql_answers_values_json_has_no_type_for(client: TestClient) -> None:
    answer = client.post(
        "/api/sql", json={"sql": "SELECT x'00ff' AS b, 1e999 AS inf, -1e999 AS minus"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["rows"] == [{"b": "00ff", "inf": "inf", "minus": "-inf"}]
    for run_id in (123, 10**30, ["done"]):
        wrong = client.post("/api/sql", json={"sql": "SELECT :run_id", "run_id": run_id})
        assert wrong.status_code == 400 and "string" in wrong.json()["error"], wrong.text


def test_a_stream_meeting_an_event_it_cannot_read_says_so_and_ends(
    db: Path, tmp_path: Path
) -> None:
    """A newer writer on a shared log appends a type this service does not know: the
    stream says why it stops (``failed``) instead of breaking off mid-response, which
    made the page reconnect for ever."""
    copy = tmp_path / "events.db"
    with open_store(db) as store:
        store.connection.execute("VACUUM INTO ?", (str(copy),))
    with sqlite3.connect(copy) as raw:  # a live run: its first 5 events, then the new type
        columns = "version, type, schema_version, recorded_at, causation, hash, data"
        raw.execute(
            f"INSERT INTO events (run_id, {columns}) SELECT 'live', {columns} FROM events"
            " WHERE run_id = 'done' AND version <= 5"
        )
        raw.execute(
            f"INSERT INTO events (run_id, {columns}) VALUES"
            " ('live', 6, 'future.thing', 1, '2026-11-27T00:00:00Z', NULL, 'x', '{}')"
        )
    with (
        client_for(copy) as client,
        client.stream("GET", "/api/runs/live/stream?after=2") as response,
    ):
        body = "".join(response.iter_text())
    assert response.status_code == 200
    ids = [line for line in body.splitlines() if line.startswith("id: ")]
    assert ids == ["id: 3", "id: 4", "id: 5"], body  # the events before it, then why
    assert body.endswith("\n\n") and "event: failed" in body and "future.thing" in body


def test_a_run_pages_audit_tables_are_capped_with_a_link_to_the_rest(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each table shows at most ``AUDIT_ROWS`` rows, as the trace shows a page of steps:
    a run of 100,000 decisions made a 52 MB page."""
    monkeypatch.setattr(web_app, "AUDIT_ROWS", 2)
    page = client.get("/runs/done").text
    assert "(the first 2 rows)" in page
    assert 'href="/api/audit/decisions?run_id=done"' in page


def test_a_service_on_another_loopback_address_answers(db: Path) -> None:
    """127.0.0.2 is loopback too: it served, then refused every request as another host."""
    with serving(db, "--host", "127.0.0.2") as url:
        assert url.startswith("http://127.0.0.2:")
        assert httpx.get(f"{url}/api/runs", timeout=30).status_code == 200


def test_a_diff_of_contents_too_large_to_compare_links_them_instead(
    client: TestClient, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model's 9 MB file made its diff link a 73 MB page and 35 s of CPU."""
    monkeypatch.setattr(web_app, "DIFF_BYTES", 10)
    with open_store(db) as store:
        (change,) = [
            c for e in store.read("done") if isinstance(e.data, ToolExecuted)
            for c in e.data.files_changed if c.path == "calc.py" and c.before and c.after
        ][:1]  # fmt: skip
    page = client.get(f"/runs/done/diff?path=calc.py&before={change.before}&after={change.after}")
    assert page.status_code == 200
    assert "Too large to compare here" in page.text and "Return the sum" not in page.text
    assert f'href="/api/runs/done/blobs/{change.after}">the content after</a>' in page.text


def test_a_diff_of_too_many_lines_links_them_and_needs_a_run(tmp_path: Path) -> None:
    """difflib's time grows with the square of the lines: two files far under
    ``DIFF_BYTES``, a line inserted after each of 10,000, took 30 s a request while
    every other request waited. Past ``DIFF_LINES`` lines either side (as difflib
    counts them: a carriage return ends one too) the contents are linked instead.
    A run that does not exist has no diff page (it answered 200)."""
    path = tmp_path / "events.db"
    most = web_app.DIFF_LINES
    with open_store(path) as store:
        store.append("run", [RunStarted(goal="g", workspace=str(tmp_path / "ws"))], 0)
        fits = store.put(b"".join(b"%d\n" % i for i in range(most)))
        edited = store.put(b"".join(b"%d\n" % (i or most) for i in range(most)))
        longer = store.put(b"".join(b"%d\n" % i for i in range(most + 1)))
        returns = store.put(b"".join(b"%d\r" % i for i in range(most + 1)))
    with client_for(path) as client:
        compared = client.get(f"/runs/run/diff?path=f&before={fits}&after={edited}")
        assert compared.status_code == 200 and f"+{most}\n" in compared.text
        for large in (longer, returns):
            page = client.get(f"/runs/run/diff?path=f&before={fits}&after={large}")
            assert page.status_code == 200
            assert f"Too large to compare here (over {most:,} lines)" in page.text
            assert f'href="/api/runs/run/blobs/{large}">the content after</a>' in page.text
            assert f'href="/api/runs/run/blobs/{fits}">the content before</a>' in page.text
        unknown = client.get(f"/runs/no-such-run/diff?path=f&before={fits}&after={edited}")
        assert unknown.status_code == 404 and "no-such-run" in unknown.text


def test_a_huge_value_a_model_wrote_is_cut_on_the_page_and_in_the_report(tmp_path: Path) -> None:
    """Arguments nested in a list stay inline in the log whatever their size: eight of
    3 MB made a run page of 36 MB, and a report as large."""
    from engine.keys import load_key
    from engine.web.report import write_report
    from events import ModelResponded, RunStarted, ToolCall, ToolRequested

    db = tmp_path / "events.db"
    huge = {"nested": ["A" * 3_000_000]}
    with open_store(db, key=load_key(create=True)) as store:
        store.append(
            "big",
            [
                RunStarted(goal="a big run", workspace="/tmp/big"),
                ModelResponded(
                    call_id="m1", tool_calls=(ToolCall(id="x", name="create_file", arguments=huge),)
                ),
                ToolRequested(call_id="c1", tool="create_file", arguments=huge),
            ],
            0,
        )
        write_report(store, "big", tmp_path / "report.html")
    with client_for(db) as client:
        page = client.get("/runs/big")
    assert page.status_code == 200
    for html in (page.text, (tmp_path / "report.html").read_text()):
        assert len(html) < 1_000_000
        assert "more characters not shown: the event holds them all" in html


def test_a_run_page_lists_at_most_a_thousand_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100,000 tasks made a run page of 42 MB: the page lists the first ones and says
    where the rest are."""
    from engine.keys import load_key
    from engine.web import pages
    from events import RunStarted, TaskAdded

    monkeypatch.setattr(pages, "LISTED_ROWS", 30)
    db = tmp_path / "events.db"
    tasks = [TaskAdded(task_id=f"t{n}", title=f"task number {n}") for n in range(45)]
    with open_store(db, key=load_key(create=True)) as store:
        store.append("many", [RunStarted(goal="g", workspace="/tmp/many"), *tasks], 0)
    with client_for(db) as client:
        page = client.get("/runs/many").text
    section = page[page.index('<section id="tasks">') :]
    section = section[: section.index("</section>")]
    assert "task number 29<" in section and "task number 30<" not in section
    assert "And 15 more tasks: <code>autonomy audit many tasks</code>" in section


def test_api_sql_sets_nothing_for_the_process_and_reads_no_pointer(client: TestClient) -> None:
    """``PRAGMA hard_heap_limit`` (allowed by a read-only connection: it is no write)
    set the whole process's heap limit, and every later request of the service was a
    500 MemoryError until it was restarted; ``fts3_tokenizer`` answered with an
    address in the process's memory, and takes one to register code at. Refused,
    and the service answers after as before; the pragmas that describe the tables
    still run."""
    for sql in (
        "PRAGMA hard_heap_limit=100000",
        "PRAGMA soft_heap_limit=1000",
        "PRAGMA temp_store_directory='/tmp'",
        "SELECT fts3_tokenizer('simple')",
        "SELECT hex(fts3_tokenizer('x', x'4141414141414141'))",
    ):
        refused = client.post("/api/sql", json={"sql": sql})
        assert refused.status_code == 400 and "not authorized" in refused.json()["error"], sql
    assert client.get("/api/runs").status_code == 200
    rows = client.post("/api/sql", json={"sql": "SELECT count(*) AS n FROM runs"}).json()
    assert rows["rows"] == [{"n": 2}]
    columns = client.post("/api/sql", json={"sql": "PRAGMA table_info(events)"}).json()
    assert {"name": "run_id"}.items() <= next(
        r for r in columns["rows"] if r["name"] == "run_id"
    ).items()


def test_a_body_that_is_not_utf8_is_not_json(client: TestClient) -> None:
    """A byte that is not UTF-8 inside a JSON string was a 500 with the exception."""
    for path in ("/api/sql", "/api/runs/asking/answer"):
        answer = client.post(path, content=b'{"sql": "\xff"}', headers=JSON)
        assert answer.status_code == 400 and "not JSON" in answer.json()["error"], path


HOLD_THE_LOG = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("CREATE TABLE held (x)")
print("held", flush=True)
sys.stdin.read()  # until the test closes it
conn.execute("ROLLBACK")
"""


def test_a_log_another_process_holds_is_a_503_soon_not_a_30_s_wait(
    db: Path, tmp_path: Path
) -> None:
    """Requests waited the 30 s a command waits for a locked SQLite log: 45 page
    requests took the 40 threads, and nothing else was answered until the lock
    went. The service waits ``busy_seconds``, then answers 503 with Retry-After; it
    answers as before once the lock is gone."""
    import subprocess
    import sys

    copy = tmp_path / "events.db"
    with sqlite3.connect(db) as source, sqlite3.connect(copy) as target:
        source.backup(target)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOG, str(copy)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with client_for(copy, busy_seconds=0.2) as client:
            for path in ("/", "/api/runs"):
                answer = client.get(path)
                assert answer.status_code == 503, (path, answer.text)
                assert answer.headers.get("retry-after"), path
            assert holder.stdin is not None
            holder.stdin.close()  # the lock goes
            holder.wait(timeout=30)
            assert client.get("/").status_code == 200
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_ctrl_c_ends_the_live_streams_open_and_says_nothing(tmp_path: Path) -> None:
    """A live stream never ends by itself: on Ctrl-C the server's grace period ran out
    and it cancelled each one, a traceback on stderr per open page. ``serving`` checks
    that it exits 0 saying nothing; each stream is ended properly (its last chunk)."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("live", [RunStarted(goal="g", workspace=str(tmp_path / "ws"))], 0)
    with ExitStack() as opened:
        with serving(db) as base:
            streams = streams_of(base, "live", 20, opened)
        assert all(ended(stream).endswith(b"0\r\n\r\n") for stream in streams)


DEADLINE = """
import sys
from engine.console import main
from engine.web import server
server.REQUEST_SECONDS = float(sys.argv.pop(1))
main()
"""


def test_a_request_that_does_not_arrive_in_time_is_dropped_and_a_stream_is_not(
    tmp_path: Path,
) -> None:
    """A slow loris: uvicorn waited for ever on a connection that sent nothing, half a
    request, or a byte at a time, until such connections held every file descriptor.
    Each request now has ``REQUEST_SECONDS`` (1 here) to arrive; a live stream, whose
    request has arrived, goes on; a body cut off, or half sent at Ctrl-C, is quiet
    (``serving``: exit 0, nothing on stderr)."""
    import select
    import sys
    import time

    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("live", [RunStarted(goal="g", workspace=str(tmp_path / "ws"))], 0)
    post = (
        b"POST /api/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    command = (sys.executable, "-c", DEADLINE, "1")
    with ExitStack() as opened, serving(db, command=command) as base:
        (stream,) = streams_of(base, "live", 1, opened)
        port = int(base.rsplit(":", 1)[1])

        def connect(sent: bytes) -> socket.socket:
            client = opened.enter_context(socket.create_connection(("127.0.0.1", port)))
            client.settimeout(60)
            client.sendall(sent)
            return client

        slow = [connect(sent) for sent in (b"", b"GET /api/runs HTTP/1.1\r\n", post)]
        answered = connect(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answered.recv(65536).startswith(b"HTTP/1.1 200")
        slow.append(answered)  # kept alive: its next request has the deadline too
        trickled = connect(b"G")
        started = time.monotonic()
        for byte in b"ET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n":
            readable, _, _ = select.select([trickled], [], [], 0.2)
            if readable or time.monotonic() - started > 30:
                break  # closed (or something is wrong: the assertion below says what)
            trickled.sendall(bytes([byte]))
        slow.append(trickled)
        closed = [ended(client) for client in slow]  # each is closed
        assert closed[:3] == [b""] * 3, closed  # with no answer
        # the stream outlived them all, and still tells what is appended
        with open_store(db) as store:
            store.append("live", [TaskAdded(task_id="t1", title="x")], 1)
        seen = b""
        while b"id: 2\n" not in seen:
            chunk = stream.recv(65536)
            assert chunk, seen
            seen += chunk
        connect(post)  # half sent as the service is stopped


def test_run_sql_on_postgresql_keeps_to_its_limits(db: Path, pg_url: str) -> None:
    """The library's ``run_sql`` on a PostgreSQL log (which the service no longer
    offers its clients): a runaway query is stopped, a large answer cut."""
    from engine.runs.audit import AuditError, Limits, run_sql

    with open_store(db) as source, open_store(pg_url) as target:
        for event in source.read("done"):
            target.append("done", [event.data], event.version - 1, causation=event.causation)
    with pytest.raises(AuditError, match=r"stopped after 0\.5 s, this service's limit"):
        run_sql(pg_url, RUNAWAY, {}, Limits(seconds=0.5))
    cut = run_sql(pg_url, "SELECT position FROM events ORDER BY position", {}, Limits(max_rows=3))
    assert (cut.rows, cut.truncated) == ([(1,), (2,), (3,)], True)
