"""The audit views over a log someone wrote: a value of another type than autonomy
writes in one run (and on SQLite, text that is not UTF-8) fails no view and no
audit query, of that run or of any other, on SQLite and on PostgreSQL.

Before: on PostgreSQL, one run's ``"to_version": "abc"`` failed the ``runs`` view
for every run (``::bigint``), ``"ok": "maybe"`` the ``tool_calls`` view; on both, a
run with 2^63 - 1 prompt tokens in two calls overflowed ``audit model-usage``, and on
SQLite a lone surrogate escape (``"\\udc00"``) failed the ``tasks`` query (text that
is not UTF-8)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest

from engine.runs.audit import QUERIES, AuditResult, run_query, run_sql
from engine.storage import open_store
from events import (
    ArbiterDecided,
    EventStore,
    ModelRequested,
    ModelResponded,
    RunStarted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
)
from events.schema import Usage
from projections import VIEWS

BIG = 2**63 - 1
HOSTILE = [
    ("task.added", r'{"type":"task.added","task_id":"t1","title":"a\udc00b","priority":"high"}'),
    ("task.updated", '{"type":"task.updated","task_id":"t1","status":"failed","attempt":"two"}'),
    *[
        row
        for n in (4, 6)
        for row in (
            (
                "model.requested",
                f'{{"type":"model.requested","call_id":"bad/m{n}","role":"coder",'
                '"model":"m","conversation":"c","request_digest":"d"}',
            ),
            (
                "model.responded",
                f'{{"type":"model.responded","call_id":"bad/m{n}","usage":'
                f'{{"prompt_tokens":{BIG},"completion_tokens":"5"}},"duration_ms":1e400,'
                '"extracted_from_text":"maybe","tool_calls":"none"}',
            ),
        )
    ],
    ("model.failed", '{"type":"model.failed","call_id":"bad/m6","kind":"timeout","attempt":"x"}'),
    ("tool.requested", '{"type":"tool.requested","call_id":"bad/t9","tool":"read_file"}'),
    ("tool.executed", '{"type":"tool.executed","call_id":"bad/t9","ok":"maybe","error":"e"}'),
    ("arbiter.decided", '{"type":"arbiter.decided","action":"x","fallback_used":"maybe"}'),
    ("run.rewound", '{"type":"run.rewound","to_version":"abc"}'),
]
"""Rows of run ``bad`` after its first event, as someone wrote them."""


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A log holding run ``ok`` as autonomy writes one and run ``bad`` (its first
    event, then ``HOSTILE``)."""
    url = str(tmp_path / "events.db")
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
    with open_store(url) as store:
        store.append(
            "ok", [RunStarted(goal="g", workspace="/w"), TaskAdded(task_id="t1", title="a")], 0
        )
        store.append(
            "ok",
            [
                ModelRequested(call_id="ok/m3", role="coder", model="m", request_digest="d"),
                ModelResponded(call_id="ok/m3", usage=Usage(prompt_tokens=10, completion_tokens=5)),
                ToolRequested(call_id="ok/t5", tool="read_file"),
                ToolExecuted(call_id="ok/t5", tool="read_file", ok=False, error="no such file"),
                ArbiterDecided(action="continue"),
                TaskUpdated(task_id="t1", status="done", attempt=1),
            ],
            2,
        )
        store.append("bad", [RunStarted(goal="g", workspace="/w")], 0)
        yield url


def insert_hostile(url: str) -> None:
    sql = (
        "INSERT INTO events (position, run_id, version, type, schema_version, recorded_at,"
        " causation, hash, data) VALUES ({0}, {0}, {0}, {0}, 1, '2026-11-27T00:00:00Z', NULL,"
        " 'x', {0})"
    )
    if url.startswith("postgresql"):
        # its JSON reader refuses half a surrogate pair in any document it reads: not
        # cleaned (a check of every document cost every audit query a fifth more)
        hostile = [(kind, data.replace(r"\udc00", r"\ufffd")) for kind, data in HOSTILE]
        with psycopg.connect(url, autocommit=True) as pg:
            position = cast(tuple[int], pg.execute("SELECT max(position) FROM events").fetchone())
            for n, (kind, data) in enumerate(hostile, 1):
                pg.execute(sql.format("%s"), (position[0] + n, "bad", n + 1, kind, data))
        return
    with sqlite3.connect(url) as lite:
        (position,) = lite.execute("SELECT max(position) FROM events").fetchone()
        for n, (kind, data) in enumerate(HOSTILE, 1):
            lite.execute(sql.format("?"), (position + n, "bad", n + 1, kind, data))


def every_query(store: EventStore, run_id: str | None) -> dict[str, AuditResult]:
    connection = cast(Any, store).connection
    return {
        name: run_query(connection, name, run_id)
        for name, query in QUERIES.items()
        if not query.parameters
    }


def test_no_value_someone_wrote_in_one_run_fails_a_view_or_a_query(db: str) -> None:
    with open_store(db, read_only=True) as store:
        before = every_query(store, "ok")
    insert_hostile(db)

    for view in VIEWS:
        run_sql(db, f"SELECT * FROM {view}")  # an AuditError if it fails
    with open_store(db, read_only=True) as store:
        assert every_query(store, "ok") == before, "another run's rows changed nothing here"
        every_query(store, None)  # every run at once
        bad = every_query(store, "bad")

    [task] = bad["tasks"].as_dicts()
    assert task["title"][0] == "a" and task["title"][-1] == "b" and "\ufffd" in task["title"]
    assert task["status"] == "failed"
    [usage] = bad["model-usage"].as_dicts()
    assert (usage["calls"], usage["prompt_tokens"], usage["completion_tokens"]) == (2, 0, 0)
    ok_usage = before["model-usage"].as_dicts()
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in ok_usage] == [(10, 5)]
    assert run_sql(db, "SELECT call_id FROM tool_calls WHERE run_id = 'bad'").rows == [("bad/t9",)]
    [failure] = bad["model-failures"].as_dicts()
    assert (failure["call_id"], failure["kind"]) == ("bad/m6", "timeout")
    statuses = run_sql(db, "SELECT status FROM runs WHERE run_id = 'bad'").rows
    assert statuses == [("running",)]
