"""The audit views list a rewound run's effective history, as the projection does,
on SQLite and on PostgreSQL alike (``projections.views``, ``views_postgres``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.storage import open_store
from events import (
    ArbiterDecided,
    Event,
    EventStore,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunRewound,
    RunStarted,
    ToolExecuted,
    ToolRequested,
    Usage,
    UserAsked,
)
from projections import project


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    db = (
        str(tmp_path / "events.db")
        if request.param == "sqlite"
        else request.getfixturevalue("pg_server").new_url()
    )
    opened = open_store(db)
    yield opened
    opened.close()


def decided(action: str) -> ArbiterDecided:
    return ArbiterDecided(action=action, reasoning=action, decided_by="rules")


def moved(source: str, dest: str) -> PhaseChanged:
    return PhaseChanged(trigger=dest, from_phase=source, to_phase=dest, reason="next")


def asked(call_id: str) -> ModelRequested:
    return ModelRequested(
        call_id=call_id,
        role="coder",
        model="m",
        endpoint="http://127.0.0.1:1",
        conversation="c",
        request_digest="d" * 64,
    )


def answered(call_id: str, tokens: int) -> ModelResponded:
    return ModelResponded(call_id=call_id, usage=Usage(prompt_tokens=tokens, completion_tokens=1))


def executed(call_id: str) -> ToolExecuted:
    return ToolExecuted(call_id=call_id, tool="read_file", ok=True, result="ok")


def append(store: EventStore, run_id: str, *events: Event) -> None:
    for event in events:
        store.append(run_id, [event], store.last_version(run_id))


def rows(store: EventStore, sql: str, run_id: str) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql, (run_id,))  # type: ignore[attr-defined]
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def agree_with_the_projection(store: EventStore, run_id: str) -> None:
    """Every view's rows for ``run_id`` are what the projection holds."""
    state = project(store, run_id)
    pipeline, orchestration = state.pipeline, state.orchestration
    phases = rows(
        store, "SELECT version, to_phase FROM phase_changes WHERE run_id = ? ORDER BY 1", run_id
    )
    assert [(r["version"], r["to_phase"]) for r in phases] == [
        (p.version, p.to_phase) for p in pipeline.phase_history
    ]
    decisions = rows(
        store, "SELECT version, action FROM decisions WHERE run_id = ? ORDER BY 1", run_id
    )
    assert [(r["version"], r["action"]) for r in decisions] == [
        (d.version, d.action) for d in orchestration.decisions
    ]
    calls = rows(
        store,
        "SELECT status, prompt_tokens FROM model_calls WHERE run_id = ? AND status = 'ok'",
        run_id,
    )
    usage = orchestration.usage_by_model.get("m")
    assert len(calls) == (usage.calls if usage else 0)
    assert sum(r["prompt_tokens"] for r in calls) == (usage.prompt_tokens if usage else 0)
    (run,) = rows(store, "SELECT status, reason FROM runs WHERE run_id = ?", run_id)
    assert run["status"] == pipeline.status
    assert (run["reason"] or "") == (pipeline.reason if pipeline.status != "running" else "")


def tool_calls(store: EventStore, run_id: str) -> list[tuple[str, int, int | None]]:
    found = rows(
        store,
        "SELECT call_id, requested_version, executed_version FROM tool_calls"
        " WHERE run_id = ? ORDER BY requested_version",
        run_id,
    )
    return [(r["call_id"], r["requested_version"], r["executed_version"]) for r in found]


def test_every_view_follows_rewinds_as_the_projection_does(store: EventStore) -> None:
    run = "rw"
    append(
        store,
        run,
        RunStarted(goal="g", workspace="/w"),  # 1
        decided("plan"),  # 2
        moved("start", "planning"),  # 3
        asked("m4"),  # 4
        answered("m4", 10),  # 5
        ToolRequested(call_id="t6", tool="read_file"),  # 6
        executed("t6"),  # 7
        decided("code"),  # 8
        moved("planning", "coding"),  # 9
        asked("m10"),  # 10
        answered("m10", 100),  # 11
        ToolRequested(call_id="t12", tool="read_file"),  # 12
        RunFinished(status="completed", reason="done"),  # 13
    )
    agree_with_the_projection(store, run)
    assert [c[0] for c in tool_calls(store, run)] == ["t6", "t12"]

    append(store, run, RunRewound(to_version=6))  # 14: the tool call is left unanswered
    agree_with_the_projection(store, run)
    assert tool_calls(store, run) == [("t6", 6, None)]
    (call,) = rows(store, "SELECT status FROM model_calls WHERE run_id = ?", run)
    assert call["status"] == "ok"

    append(
        store,
        run,
        executed("t6"),  # 15
        decided("review"),  # 16
        RunFinished(status="failed", reason="tests fail"),  # 17
        RunRewound(to_version=17),  # 18: back to the failure, nothing undone
    )
    agree_with_the_projection(store, run)
    assert tool_calls(store, run) == [("t6", 6, 15)]
    (status,) = rows(store, "SELECT status FROM runs WHERE run_id = ?", run)
    assert status["status"] == "failed", "rewound, not resumed: the state it was rewound to"

    # rewinding into a range an earlier rewind had left: version 11 as it was then
    append(store, run, RunRewound(to_version=11))  # 19
    agree_with_the_projection(store, run)
    assert tool_calls(store, run) == [("t6", 6, 7)]
    assert project(store, run).pipeline.status == "running"


def test_a_run_rewound_to_a_question_waits_for_its_answer_in_runs(store: EventStore) -> None:
    append(
        store,
        "q",
        RunStarted(goal="g", workspace="/w"),
        UserAsked(question="which database?"),
        RunFinished(status="stopped", reason="interrupted"),
        RunRewound(to_version=2),
    )
    (run,) = rows(store, "SELECT status FROM runs WHERE run_id = ?", "q")
    assert run["status"] == "waiting_for_input" == project(store, "q").pipeline.status


def test_views_of_an_older_release_are_replaced_on_postgres(pg_server: Any) -> None:
    url = pg_server.new_url()
    with open_store(url) as store:
        raw = store.connection.raw  # type: ignore[attr-defined]
        # as an older release left them: another text (digest) for a view others read
        raw.execute("COMMENT ON VIEW effective_spans IS 'autonomy 0000000000000000'")
        raw.execute("COMMENT ON VIEW runs IS 'autonomy 0000000000000000'")
    with open_store(url) as store:
        append(store, "r", RunStarted(goal="g", workspace="/w"))
        (run,) = rows(store, "SELECT status FROM runs WHERE run_id = ?", "r")
        assert run["status"] == "running"


def test_a_rewind_to_its_own_version_or_past_it_ends_and_agrees_with_the_projection(
    store: EventStore,
) -> None:
    """A rewind whose target is its own version or later (a log no autonomy writes,
    as the fold reads it: back to the version before it) made ``effective_spans``
    recurse for ever: every audit view of the log spun a core, a service's request
    thread with it."""
    if hasattr(store.connection, "set_progress_handler"):  # SQLite: stop a loop, not a test
        store.connection.set_progress_handler(_bounded(), 100_000)  # type: ignore[attr-defined]
    else:
        store.connection.execute("SET statement_timeout = 30000")  # type: ignore[attr-defined]
    append(
        store,
        "past",
        RunStarted(goal="g", workspace="/w"),  # 1
        decided("plan"),  # 2
        RunRewound(to_version=3),  # 3: to itself
        decided("code"),  # 4
        RunRewound(to_version=99),  # 5: past itself
        decided("review"),  # 6
    )
    agree_with_the_projection(store, "past")
    assert [d.action for d in project(store, "past").orchestration.decisions] == [
        "plan",
        "code",
        "review",
    ]
    append(store, "past", RunRewound(to_version=-4), decided("again"))  # below the first
    decisions = rows(store, "SELECT action FROM decisions WHERE run_id = ?", "past")
    assert [d["action"] for d in decisions] == ["again"]


def _bounded() -> Any:
    calls = 0

    def handler() -> int:
        nonlocal calls
        calls += 1
        return 1 if calls > 2_000 else 0  # 2e8 virtual machine steps: interrupted

    return handler
