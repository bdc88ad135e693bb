"""Workflow tools: they return task events for the engine to append, checked against
the task lifecycle, and they end the conversation only when they succeed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.tools import ToolContext, ToolOutcome, default_registry, execute
from events import MemoryEventStore
from events.schema import TaskAdded, TaskUpdated
from projections.pipeline import PipelineState, apply_pipeline


def call(
    tmp_path: Path,
    name: str,
    known: dict[str, str] | None = None,
    task_id: str = "",
    **args: Any,
) -> ToolOutcome:
    """Run tool ``name``; ``known`` is the projected task statuses."""
    ctx = ToolContext(
        workspace=tmp_path, blobs=MemoryEventStore(), tasks=known or {}, task_id=task_id
    )
    return execute(default_registry(), name, args, ctx)


def test_a_plan_becomes_task_added_events_with_deterministic_ids(tmp_path: Path) -> None:
    outcome = call(
        tmp_path,
        "create_task_plan",
        tasks=[
            {"title": "Write calc", "target_file": "src/calc.py", "priority": 1},
            {
                "title": "Test calc",
                "target_file": "./tests/test_calc.py",
                "dependencies": ["Write calc"],
            },
        ],
    )
    assert outcome.ok and outcome.finishes
    assert outcome.events == (
        TaskAdded(task_id="t1", title="Write calc", target_file="src/calc.py", priority=1),
        TaskAdded(
            task_id="t2",
            title="Test calc",
            target_file="tests/test_calc.py",
            dependencies=("t1",),
        ),
    )
    assert "t2: Test calc -> tests/test_calc.py after t1" in outcome.result


def test_ids_continue_after_existing_tasks_which_may_be_dependencies(tmp_path: Path) -> None:
    outcome = execute(
        default_registry(),
        "create_task_plan",
        {"tasks": [{"title": "Docs", "dependencies": ["t2", "t1", "t2"]}]},
        ToolContext(
            workspace=tmp_path,
            blobs=MemoryEventStore(),
            tasks={"t1": "completed", "t2": "new"},
        ),
    )
    assert outcome.ok
    (event,) = outcome.events
    assert isinstance(event, TaskAdded)
    assert (event.task_id, event.dependencies) == ("t3", ("t2", "t1"))


@pytest.mark.parametrize(
    ("tasks", "error"),
    [
        ([{"title": "A", "dependencies": ["B"]}, {"title": "B"}], "earlier task in this plan"),
        ([{"title": "A", "dependencies": ["t9"]}], "'t9', which is neither an existing task"),
        ([{"title": "A"}, {"title": "A"}], "two tasks are titled 'A'"),
        ([{"title": "A", "target_file": "../escape.py"}], "climbs out of the workspace"),
        ([{"title": "A", "target_file": ".git/hooks/x"}], ".git"),
        ([], "length >= 1 - at `$.tasks`"),
        ([{"description": "no title"}], "title"),
        ([{"title": "A", "priority": 11}], "<= 10"),
    ],
)
def test_a_bad_plan_is_refused_with_the_reason(
    tmp_path: Path, tasks: list[dict[str, Any]], error: str
) -> None:
    outcome = call(tmp_path, "create_task_plan", tasks=tasks)
    assert not outcome.ok and not outcome.finishes
    assert error in outcome.error
    assert outcome.events == ()


def test_complete_task_submits_the_current_task_for_review(tmp_path: Path) -> None:
    outcome = call(
        tmp_path, "complete_task", known={"t1": "in_progress"}, task_id="t1", summary="done"
    )
    assert outcome.ok and outcome.finishes
    assert outcome.events == (TaskUpdated(task_id="t1", status="qa_pending"),)


def test_complete_task_after_a_qa_failure_goes_back_to_review(tmp_path: Path) -> None:
    outcome = call(
        tmp_path, "complete_task", known={"t1": "qa_failed"}, task_id="t1", summary="fixed"
    )
    assert outcome.events == (TaskUpdated(task_id="t1", status="qa_pending"),)


def test_approve_code_completes_a_task_waiting_for_review(tmp_path: Path) -> None:
    outcome = call(
        tmp_path, "approve_code", known={"t1": "qa_pending"}, task_id="t1", summary="tests pass"
    )
    assert outcome.ok and outcome.finishes
    assert outcome.events == (TaskUpdated(task_id="t1", status="completed"),)


def test_report_issue_fails_qa_with_the_description_as_error(tmp_path: Path) -> None:
    outcome = call(
        tmp_path,
        "report_issue",
        known={"t1": "qa_pending"},
        task_id="t1",
        description="sub(1, 2) returns 1",
    )
    assert outcome.ok and outcome.finishes
    assert outcome.events == (
        TaskUpdated(task_id="t1", status="qa_failed", error="sub(1, 2) returns 1"),
    )


@pytest.mark.parametrize(
    ("name", "status", "args", "error"),
    [
        (
            "approve_code",
            "in_progress",
            {"summary": "ok"},
            "cannot go from 'in_progress' to 'completed'",
        ),
        ("approve_code", "completed", {"summary": "ok"}, "'completed' is final"),
        ("complete_task", "new", {"summary": "done"}, "cannot go from 'new' to 'qa_pending'"),
        ("complete_task", "qa_pending", {"summary": "again"}, "'qa_pending' to 'qa_pending'"),
        ("report_issue", "in_progress", {"description": "bad"}, "'in_progress' to 'qa_failed'"),
        ("report_issue", "qa_pending", {"description": ""}, "length >= 1"),
        ("approve_code", "qa_pending", {}, "missing required field `summary`"),
    ],
)
def test_a_status_change_the_lifecycle_forbids_is_refused_and_does_not_finish(
    tmp_path: Path, name: str, status: str, args: dict[str, Any], error: str
) -> None:
    outcome = call(tmp_path, name, known={"t1": status}, task_id="t1", **args)
    assert not outcome.ok and not outcome.finishes
    assert error in outcome.error
    assert outcome.events == ()


def test_the_task_id_must_be_known_and_the_current_one(tmp_path: Path) -> None:
    unknown = call(tmp_path, "complete_task", known={"t1": "in_progress"}, summary="x", task=1)
    assert "unknown field `task`" in unknown.error
    missing = call(tmp_path, "complete_task", known={"t1": "in_progress"}, summary="x")
    assert "needs a task_id" in missing.error
    other = execute(
        default_registry(),
        "complete_task",
        {"task_id": "t2", "summary": "x"},
        ToolContext(
            workspace=tmp_path,
            blobs=MemoryEventStore(),
            tasks={"t1": "in_progress", "t2": "in_progress"},
            task_id="t1",
        ),
    )
    assert other.ok, "a wrong id in a task's conversation does not sink the task"
    assert "this conversation is about task t1; task_id 't2' was taken to mean t1" in other.result
    assert other.events[0].task_id == "t1"  # type: ignore[attr-defined]
    by_meaning = execute(
        default_registry(),
        "complete_task",
        {"task_id": "calc.py written", "summary": "calc.py written"},
        ToolContext(
            workspace=tmp_path, blobs=MemoryEventStore(), tasks={"t1": "in_progress"}, task_id="t1"
        ),
    )
    assert by_meaning.ok and by_meaning.events[0].task_id == "t1"  # type: ignore[attr-defined]
    nowhere = execute(
        default_registry(),
        "complete_task",
        {"task_id": "t7", "summary": "x"},
        ToolContext(workspace=tmp_path, blobs=MemoryEventStore(), tasks={"t1": "in_progress"}),
    )
    assert "unknown task 't7'; tasks: t1" in nowhere.error


def test_the_events_fold_into_the_expected_tasks(tmp_path: Path) -> None:
    state = PipelineState()
    version = 0

    def apply(outcome: ToolOutcome) -> None:
        nonlocal state, version
        assert outcome.ok, outcome.error
        for event in outcome.events:
            version += 1
            state = apply_pipeline(state, event, version)

    def statuses() -> dict[str, str]:
        return {k: t.status for k, t in state.tasks.items()}

    apply(
        call(
            tmp_path,
            "create_task_plan",
            tasks=[{"title": "A"}, {"title": "B", "dependencies": ["A"]}],
        )
    )
    assert statuses() == {"t1": "new", "t2": "new"}
    state = apply_pipeline(state, TaskUpdated(task_id="t1", status="in_progress", attempt=1), 99)
    apply(call(tmp_path, "complete_task", known=statuses(), task_id="t1", summary="a"))
    apply(call(tmp_path, "report_issue", known=statuses(), task_id="t1", description="broken"))
    apply(call(tmp_path, "complete_task", known=statuses(), task_id="t1", summary="fixed"))
    apply(call(tmp_path, "approve_code", known=statuses(), task_id="t1", summary="good"))
    assert statuses() == {"t1": "completed", "t2": "new"}
    assert state.tasks["t1"].errors == ("broken",)
    assert state.tasks["t2"].dependencies == ("t1",)
