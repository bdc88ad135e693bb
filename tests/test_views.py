"""The audit views answer questions about a log with SQL alone: each view's rows for a
small hand-built run, and the README's "which tool calls failed, and why" through
``sqlite3`` and through the ``sqlite-utils`` command line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from events import (
    ArbiterDecided,
    Event,
    FileChange,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunRewound,
    RunStarted,
    SQLiteEventStore,
    TaskAdded,
    TaskUpdated,
    ToolCall,
    ToolExecuted,
    ToolRequested,
    Usage,
)
from projections import VIEWS, install_views, project
from projections.fold import apply
from projections.views import foreign_views

FAILED_TOOL_CALLS = "SELECT call_id, tool, error FROM tool_calls WHERE run_id = ? AND ok = 0"
SYNTAX_ERROR = "SyntaxError: invalid syntax (parse.py, line 3)"


def requested(call_id: str, digest: str) -> ModelRequested:
    return ModelRequested(
        call_id=call_id,
        role="coder",
        model="qwen2.5-coder:7b",
        endpoint="http://127.0.0.1:11434",
        conversation="coder:t1",
        request_digest=digest * 64,
    )


RUN: list[list[Event]] = [  # one list per append, so the clock ticks between them
    [
        RunStarted(goal="a todo app", workspace="/work/todo"),
        PhaseChanged(trigger="plan", from_phase="start", to_phase="planning", reason="new run"),
        TaskAdded(task_id="t1", title="parser", target_file="todo/parse.py", priority=3),
        TaskAdded(task_id="t2", title="cli", dependencies=("t1",)),
    ],
    [
        ArbiterDecided(
            action="work_on_task",
            parameters={"task_id": "t1"},
            reasoning="the parser comes first",
            decided_by="arbiter",
        ),
        PhaseChanged(
            trigger="code", from_phase="planning", to_phase="coding", decided_by="arbiter"
        ),
        TaskUpdated(task_id="t1", status="in_progress", attempt=1),
        requested("m1", "a"),
        ModelFailed(call_id="m1", kind="timeout", detail="read timed out", attempt=1),
        ModelFailed(call_id="m1", kind="http_status", detail="503", attempt=2),
        ModelResponded(
            call_id="m1",
            tool_calls=(ToolCall(id="c1", name="write_file"),),
            usage=Usage(prompt_tokens=1200, completion_tokens=80),
            done_reason="stop",
            duration_ms=1500.0,
            model_identity="sha256:2b0496514337",
        ),
        ToolRequested(call_id="c1", tool="write_file", arguments={"path": "todo/parse.py"}),
        ToolExecuted(call_id="c1", tool="write_file", ok=False, error=SYNTAX_ERROR),
        TaskUpdated(task_id="t1", status="failed", attempt=1, error=SYNTAX_ERROR),
    ],
    [
        ArbiterDecided(
            action="retry_task",
            parameters={"task_id": "t1"},
            decided_by="rules",
            fallback_used=True,
            fallback_reason="the arbiter answered in prose",
        ),
        requested("m2", "b"),
        ModelResponded(
            call_id="m2", usage=Usage(prompt_tokens=900, completion_tokens=40), duration_ms=700.0
        ),
        ToolRequested(call_id="c2", tool="write_file", arguments={"path": "todo/parse.py"}),
        ToolExecuted(
            call_id="c2",
            tool="write_file",
            ok=True,
            result="wrote todo/parse.py",
            files_changed=(FileChange(path="todo/parse.py", after="d" * 64, size=120),),
        ),
        TaskUpdated(task_id="t1", status="completed", attempt=2, priority=1),
        requested("m3", "c"),
        ModelFailed(call_id="m3", kind="connection", attempt=1),
        ToolRequested(call_id="c3", tool="run_command", arguments={"argv": ["pytest"]}),
        RunFinished(status="completed", reason="all tasks done"),
    ],
]
OTHER_RUN: list[Event] = [  # same call id, another run: views must not mix runs
    RunStarted(goal="another app", workspace="/work/other"),
    ToolRequested(call_id="c1", tool="read_file"),
    ToolExecuted(call_id="c1", tool="read_file", ok=False, error="no such file"),
]


@pytest.fixture
def audited(file_store: SQLiteEventStore) -> SQLiteEventStore:
    """A file log holding ``RUN`` as run r1 and ``OTHER_RUN`` as r2, views installed."""
    for batch in RUN:
        file_store.append("r1", batch, file_store.last_version("r1"))
    file_store.append("r2", OTHER_RUN, 0)
    install_views(file_store.connection)
    return file_store


def rows(store: SQLiteEventStore, sql: str, *params: Any) -> list[dict[str, Any]]:
    cursor = store.connection.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def test_every_view_is_installed_once_and_reinstalling_changes_nothing(
    audited: SQLiteEventStore,
) -> None:
    def schema() -> list[tuple[str, str]]:
        return audited.connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name"
        ).fetchall()

    before = schema()
    install_views(audited.connection)

    assert [name for name, _ in before] == sorted(VIEWS)
    assert schema() == before


def test_runs_shows_each_run_with_its_goal_status_and_size(audited: SQLiteEventStore) -> None:
    runs = rows(audited, "SELECT * FROM runs ORDER BY run_id")

    assert runs == [
        {
            "run_id": "r1",
            "started_at": "2025-03-14T15:09:26.535897Z",
            "last_event_at": "2025-03-14T15:09:26.537897Z",
            "events": 24,
            "goal": "a todo app",
            "workspace": "/work/todo",
            "status": "completed",
            "reason": "all tasks done",
        },
        {
            "run_id": "r2",
            "started_at": "2025-03-14T15:09:26.538897Z",
            "last_event_at": "2025-03-14T15:09:26.538897Z",
            "events": 3,
            "goal": "another app",
            "workspace": "/work/other",
            "status": "running",
            "reason": None,
        },
    ]


def test_a_run_reopened_after_it_finished_is_running_without_the_old_reason(
    audited: SQLiteEventStore,
) -> None:
    audited.append(
        "r3",
        [
            RunStarted(goal="retry", workspace="/work/retry"),
            RunFinished(status="failed", reason="tests fail"),
            RunRewound(to_version=1, reason="try again"),
        ],
        0,
    )

    (status, reason) = audited.connection.execute(
        "SELECT status, reason FROM runs WHERE run_id = 'r3'"
    ).fetchone()

    assert (status, reason) == ("running", None)
    assert project(audited, "r3").pipeline.status == "running"


def test_phase_changes_lists_every_change_with_its_trigger_and_decider(
    audited: SQLiteEventStore,
) -> None:
    changes = rows(
        audited,
        "SELECT version, trigger, from_phase, to_phase, reason, decided_by FROM phase_changes"
        " WHERE run_id = 'r1' ORDER BY version",
    )

    assert changes == [
        {
            "version": 2,
            "trigger": "plan",
            "from_phase": "start",
            "to_phase": "planning",
            "reason": "new run",
            "decided_by": "rules",
        },
        {
            "version": 6,
            "trigger": "code",
            "from_phase": "planning",
            "to_phase": "coding",
            "reason": "",
            "decided_by": "arbiter",
        },
    ]


def test_tasks_shows_the_latest_status_the_attempts_and_the_last_error(
    audited: SQLiteEventStore,
) -> None:
    tasks = rows(audited, "SELECT * FROM tasks WHERE run_id = 'r1' ORDER BY task_id")

    assert tasks == [
        {
            "run_id": "r1",
            "task_id": "t1",
            "title": "parser",
            "target_file": "todo/parse.py",
            "priority": 1,
            "status": "completed",
            "attempts": 2,
            "last_error": SYNTAX_ERROR,
            "added_version": 3,
        },
        {
            "run_id": "r1",
            "task_id": "t2",
            "title": "cli",
            "target_file": "",
            "priority": 5,
            "status": "new",
            "attempts": 0,
            "last_error": None,
            "added_version": 4,
        },
    ]


def test_the_tasks_view_agrees_with_the_projection(audited: SQLiteEventStore) -> None:
    tasks = project(audited, "r1").pipeline.tasks

    in_sql = rows(audited, "SELECT task_id, status, attempts, priority, last_error FROM tasks")
    projected = [
        {
            "task_id": t.task_id,
            "status": t.status,
            "attempts": t.attempts,
            "priority": t.priority,
            "last_error": t.last_error or None,
        }
        for t in tasks.values()
    ]
    assert sorted(in_sql, key=lambda r: r["task_id"]) == projected


def test_model_calls_joins_each_request_to_its_response_and_failures(
    audited: SQLiteEventStore,
) -> None:
    calls = rows(
        audited,
        "SELECT call_id, version, role, model, status, failures, last_failure, prompt_tokens,"
        " completion_tokens, duration_ms, done_reason, model_identity, tool_calls"
        " FROM model_calls WHERE run_id = 'r1' ORDER BY version",
    )

    assert calls == [
        {
            "call_id": "m1",
            "version": 8,
            "role": "coder",
            "model": "qwen2.5-coder:7b",
            "status": "ok",
            "failures": 2,
            "last_failure": "http_status: 503",
            "prompt_tokens": 1200,
            "completion_tokens": 80,
            "duration_ms": 1500.0,
            "done_reason": "stop",
            "model_identity": "sha256:2b0496514337",
            "tool_calls": 1,
        },
        {
            "call_id": "m2",
            "version": 16,
            "role": "coder",
            "model": "qwen2.5-coder:7b",
            "status": "ok",
            "failures": 0,
            "last_failure": None,
            "prompt_tokens": 900,
            "completion_tokens": 40,
            "duration_ms": 700.0,
            "done_reason": "",
            "model_identity": "",
            "tool_calls": 0,
        },
        {
            "call_id": "m3",
            "version": 21,
            "role": "coder",
            "model": "qwen2.5-coder:7b",
            "status": "failed",
            "failures": 1,
            "last_failure": "connection",
            "prompt_tokens": None,
            "completion_tokens": None,
            "duration_ms": None,
            "done_reason": None,
            "model_identity": None,
            "tool_calls": None,
        },
    ]


def test_model_call_tokens_add_up_to_the_projected_usage(audited: SQLiteEventStore) -> None:
    usage = project(audited, "r1").orchestration.usage_by_model["qwen2.5-coder:7b"]

    (tokens, failures, calls) = audited.connection.execute(
        "SELECT sum(prompt_tokens) + sum(completion_tokens), sum(failures),"
        " sum(status = 'ok') FROM model_calls WHERE run_id = 'r1'"
    ).fetchone()

    assert (tokens, failures, calls) == (usage.tokens, usage.failures, usage.calls)


def test_tool_calls_joins_each_request_to_its_execution(audited: SQLiteEventStore) -> None:
    calls = rows(
        audited,
        "SELECT call_id, requested_version, executed_version, tool, arguments, ok, error, result,"
        " json_array_length(files_changed) AS changed FROM tool_calls WHERE run_id = 'r1'"
        " ORDER BY requested_version",
    )

    assert calls == [
        {
            "call_id": "c1",
            "requested_version": 12,
            "executed_version": 13,
            "tool": "write_file",
            "arguments": '{"path":"todo/parse.py"}',
            "ok": 0,
            "error": SYNTAX_ERROR,
            "result": "",
            "changed": 0,
        },
        {
            "call_id": "c2",
            "requested_version": 18,
            "executed_version": 19,
            "tool": "write_file",
            "arguments": '{"path":"todo/parse.py"}',
            "ok": 1,
            "error": "",
            "result": "wrote todo/parse.py",
            "changed": 1,
        },
        {
            "call_id": "c3",
            "requested_version": 23,
            "executed_version": None,
            "tool": "run_command",
            "arguments": '{"argv":["pytest"]}',
            "ok": None,
            "error": None,
            "result": None,
            "changed": None,
        },
    ]


def test_decisions_show_which_fell_back_and_why(audited: SQLiteEventStore) -> None:
    decisions = rows(
        audited,
        "SELECT version, action, parameters, reasoning, decided_by, fallback_used,"
        " fallback_reason FROM decisions WHERE run_id = 'r1' ORDER BY version",
    )

    assert decisions == [
        {
            "version": 5,
            "action": "work_on_task",
            "parameters": '{"task_id":"t1"}',
            "reasoning": "the parser comes first",
            "decided_by": "arbiter",
            "fallback_used": 0,
            "fallback_reason": "",
        },
        {
            "version": 15,
            "action": "retry_task",
            "parameters": '{"task_id":"t1"}',
            "reasoning": "",
            "decided_by": "rules",
            "fallback_used": 1,
            "fallback_reason": "the arbiter answered in prose",
        },
    ]


# -- the README's audit question ------------------------------------------------------------


def test_which_tool_calls_failed_and_why_with_sqlite3_alone(audited: SQLiteEventStore) -> None:
    path = audited.path
    audited.close()
    with sqlite3.connect(path) as connection:  # a fresh connection, as a person would use
        failed = connection.execute(FAILED_TOOL_CALLS, ("r1",)).fetchall()

    assert failed == [("c1", "write_file", SYNTAX_ERROR)]


@pytest.mark.slow
def test_which_tool_calls_failed_and_why_with_the_sqlite_utils_command(
    audited: SQLiteEventStore,
) -> None:
    sqlite_utils = Path(sys.executable).parent / "sqlite-utils"
    query = FAILED_TOOL_CALLS.replace("?", ":run")

    answer = subprocess.run(
        [str(sqlite_utils), "query", audited.path, query, "-p", "run", "r1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    table = subprocess.run(
        [str(sqlite_utils), "query", audited.path, query, "-p", "run", "r2", "--table"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert json.loads(answer.stdout) == [
        {"call_id": "c1", "tool": "write_file", "error": SYNTAX_ERROR}
    ]
    assert "no such file" in table.stdout and SYNTAX_ERROR not in table.stdout


def _tasks_of(store: SQLiteEventStore, run_id: str) -> list[tuple[str, str, int]]:
    found = rows(store, "SELECT * FROM tasks WHERE run_id = ? ORDER BY task_id", run_id)
    return [(r["task_id"], r["status"], r["attempts"]) for r in found]


def _projected_tasks(store: SQLiteEventStore, run_id: str) -> list[tuple[str, str, int]]:
    tasks = project(store, run_id).pipeline.tasks
    return sorted((t.task_id, t.status, t.attempts) for t in tasks.values())


def test_tasks_follow_rewinds_as_the_projection_does(audited: SQLiteEventStore) -> None:
    store = audited
    started = RunStarted(goal="g", workspace="/w")
    store.append("rw", [started], 0)  # 1
    store.append("rw", [TaskAdded(task_id="t1", title="a")], 1)  # 2
    store.append("rw", [TaskUpdated(task_id="t1", status="skipped", attempt=3)], 2)  # 3
    store.append("rw", [RunRewound(to_version=1)], 3)  # 4: before any task
    assert _tasks_of(store, "rw") == [] == _projected_tasks(store, "rw")

    store.append("rw", [TaskAdded(task_id="t1", title="a")], 4)  # 5
    store.append("rw", [TaskUpdated(task_id="t1", status="in_progress", attempt=1)], 5)  # 6
    store.append("rw", [TaskUpdated(task_id="t1", status="failed", attempt=1)], 6)  # 7
    store.append("rw", [RunRewound(to_version=6)], 7)  # 8: undoes the failure
    assert _tasks_of(store, "rw") == [("t1", "in_progress", 1)] == _projected_tasks(store, "rw")

    # rewinding into a range an earlier rewind had left: the state that was at 3 then
    store.append("rw", [RunRewound(to_version=3)], 8)  # 9
    assert _tasks_of(store, "rw") == [("t1", "skipped", 3)] == _projected_tasks(store, "rw")


def test_a_model_call_cut_off_by_a_stop_is_interrupted_in_model_usage(
    audited: SQLiteEventStore,
) -> None:
    from engine.runs.audit import run_query
    from events.schema import RunResumed

    store = audited
    store.append("cut", [RunStarted(goal="g", workspace="/w"), requested("cut/m2", "c")], 0)
    [call] = rows(store, "SELECT status FROM model_calls WHERE run_id = 'cut'")
    assert call["status"] == "pending", "nothing followed yet: the call may still be answered"

    store.append("cut", [RunResumed(open_calls=("cut/m2",))], 2)

    [call] = rows(store, "SELECT status FROM model_calls WHERE run_id = 'cut'")
    assert call["status"] == "interrupted"
    usage = run_query(store.connection, "model-usage", run_id="cut")
    [row] = [dict(zip(usage.columns, r, strict=True)) for r in usage.rows]
    assert (row["calls"], row["failed_calls"], row["interrupted_calls"]) == (1, 0, 1)
    orchestration = project(store, "cut").orchestration
    assert orchestration.usage_by_model["qwen2.5-coder:7b"].interrupted == 1
    assert not orchestration.open_calls

    # the next call is answered: the interrupted one stays counted, by both folds
    store.append("cut", [requested("cut/m4", "d"), ModelResponded(call_id="cut/m4")], 3)
    folded = project(store, "cut")
    for event in store.append(
        "cut", [requested("cut/m6", "e"), ModelResponded(call_id="cut/m6")], 5
    ):
        folded = apply(folded, event)  # one by one, as the engine folds
    for state in (project(store, "cut"), folded):
        usage_by_model = state.orchestration.usage_by_model["qwen2.5-coder:7b"]
        usage_by_role = state.orchestration.usage_by_role["coder"]
        assert (usage_by_model.calls, usage_by_model.interrupted) == (2, 1)
        assert (usage_by_role.calls, usage_by_role.interrupted) == (2, 1)


def test_a_view_wrapped_by_a_forger_is_put_back_and_a_table_in_its_place_refused(
    audited: SQLiteEventStore,
) -> None:
    """A view that held autonomy's SQL anywhere in its text was kept: wrapped in a
    filter, ``audit tool-failures`` said "(no rows)" for a log with failures."""
    from engine.runs.audit import run_sql
    from engine.storage import open_store
    from events.errors import EventStoreError

    path = audited.path
    audited.close()
    forged = f"SELECT * FROM ({VIEWS['tool_calls'].strip()}) WHERE ok IS NOT 0"
    with sqlite3.connect(path) as raw:
        raw.execute("DROP VIEW tool_calls")
        raw.execute(f"CREATE VIEW tool_calls AS {forged}")
    failures = "SELECT call_id FROM tool_calls WHERE ok = 0 AND run_id = 'r1'"
    assert run_sql(path, failures).rows == [("c1",)]  # read-only: shadowed by the real one
    with open_store(path) as store:  # a writer: put back
        assert rows(store, failures) == [{"call_id": "c1"}]
    with sqlite3.connect(path) as raw:
        raw.execute("DROP VIEW tool_calls")
        raw.execute("CREATE TABLE tool_calls (run_id, call_id, ok)")
    for read_only in (True, False):
        with pytest.raises(EventStoreError, match="a table named tool_calls where autonomy"):
            open_store(path, read_only=read_only)


def test_every_view_autonomy_installs_is_one_it_knows_it_made() -> None:
    """``foreign_views`` knows autonomy's views by their SQL's digest, every version
    ever installed: a view changed here must add its new digest to
    ``MADE_BY_AUTONOMY`` (the old ones stay: older logs keep their views)."""
    from projections.views import MADE_BY_AUTONOMY, view_digest

    assert set(MADE_BY_AUTONOMY) >= set(VIEWS)
    for name, sql in VIEWS.items():
        installed = f'CREATE VIEW "{name}" AS {sql.strip()}'  # as sqlite_master keeps it
        assert view_digest(installed) in MADE_BY_AUTONOMY[name], (
            f"view {name} changed: add {view_digest(installed)} to MADE_BY_AUTONOMY[{name!r}]"
        )
        assert view_digest(f"CREATE VIEW [{name}] AS\n{sql}") == view_digest(installed)


OPENER = """
import sys
from pathlib import Path
from engine.storage import open_store
print("ready", flush=True)
sys.stdin.read(1)  # all at once: the test writes to every opener when all are ready
try:
    with open_store(Path(sys.argv[1]), key=bytes.fromhex(sys.argv[2])):
        print("opened")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
"""


def test_writers_that_open_a_log_at_once_change_its_views_once_and_none_fails(
    tmp_path: Path,
) -> None:
    """Six processes open a log whose views are missing, or one of which a forger
    replaced (as after an upgrade, or a tampering, when workers start): each made the
    views, and most failed ("view effective_spans already exists": 32 of 96 openings
    in 16 rounds), and each recorded the repair (45 records for 8 forgeries)."""
    from engine.storage import open_store

    path, key = tmp_path / "events.db", bytes(range(32))
    with open_store(path, key=key) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
    for round_ in range(4):
        with sqlite3.connect(path, isolation_level=None) as lite:
            if round_ % 2:
                for name in reversed(list(VIEWS)):
                    lite.execute(f'DROP VIEW "{name}"')
            else:
                lite.execute('DROP VIEW "tool_calls"')
                lite.execute('CREATE VIEW "tool_calls" AS SELECT * FROM events WHERE 0')
        lite.close()
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", OPENER, str(path), key.hex()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        try:
            for opener in openers:
                assert opener.stdout is not None and opener.stdout.readline() == "ready\n"
            for opener in openers:
                assert opener.stdin is not None
                opener.stdin.write("g")
                opener.stdin.flush()
            said = [opener.communicate(timeout=60)[0].strip() for opener in openers]
        finally:
            for opener in openers:
                opener.kill()
                opener.wait()
        assert said == ["opened"] * 6, said
    with open_store(path, key=key) as store:
        assert not foreign_views(store.connection)
        repairs = store.connection.execute("SELECT what FROM repairs").fetchall()
    assert (
        repairs
        == [("audit views that no autonomy made were replaced by autonomy's: tool_calls",)] * 2
    )
