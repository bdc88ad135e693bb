"""Workflow tools: the model's way to plan tasks and to move a task along.

These tools change no file; each returns the ``task.added`` / ``task.updated``
events the engine appends after ``tool.executed``. A status change is checked
against the task lifecycle table first, so a QA model cannot approve a task that
was never submitted, and a coder cannot submit a task twice. Each of them ends the
task conversation when it succeeds (``finishes``).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from engine.errors import IllegalTransition, ToolError
from engine.machines.tasks import check_status_change
from engine.tools.registry import Args, Tool, ToolContext, ToolOutcome
from events.schema import Event, TaskAdded, TaskUpdated

Meta = msgspec.Meta
MAX_PLAN_TASKS = 50

_EXAMPLE_PLAN: list[dict[str, Any]] = [
    {
        "title": "Write the calc module",
        "description": "add(a, b) and sub(a, b) returning numbers",
        "target_file": "src/calc.py",
        "priority": 1,
        "dependencies": [],
    },
    {
        "title": "Test the calc module",
        "description": "pytest tests for add and sub",
        "target_file": "tests/test_calc.py",
        "priority": 2,
        "dependencies": ["Write the calc module"],
    },
]


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One task of a plan."""

    title: Annotated[
        str, Meta(min_length=1, description="Short imperative title, unique in the plan")
    ]
    description: Annotated[str, Meta(description="What to do and how to tell it is done")] = ""
    target_file: Annotated[
        str, Meta(description="The main file the task writes, relative to the workspace")
    ] = ""
    priority: Annotated[int, Meta(ge=1, le=10, description="1 (most urgent) to 10 (least)")] = 5
    dependencies: Annotated[
        tuple[str, ...],
        Meta(
            description="Tasks that must be completed first: ids of existing tasks, or titles of tasks earlier in this plan"
        ),
    ] = ()


class CreateTaskPlanArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``create_task_plan``."""

    tasks: Annotated[
        tuple[TaskSpec, ...],
        Meta(
            min_length=1,
            max_length=MAX_PLAN_TASKS,
            description="The tasks, in the order they should be done",
            examples=[_EXAMPLE_PLAN],
        ),
    ]


_TASK_ID = Annotated[
    str, Meta(description="The task's id; defaults to the current task", examples=["t1"])
]


class CompleteTaskArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``complete_task``."""

    task_id: _TASK_ID = ""
    summary: Annotated[
        str,
        Meta(
            min_length=1,
            description="What was done, for the reviewer",
            examples=["Added add() and sub() to src/calc.py"],
        ),
    ]


class ApproveCodeArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``approve_code``."""

    task_id: _TASK_ID = ""
    summary: Annotated[
        str,
        Meta(
            min_length=1,
            description="What was checked and why it passes",
            examples=["Tests pass; add and sub handle negatives"],
        ),
    ]


class ReportIssueArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``report_issue``."""

    task_id: _TASK_ID = ""
    description: Annotated[
        str,
        Meta(
            min_length=1,
            description="What is wrong and how to reproduce it",
            examples=["sub(1, 2) returns 1, expected -1"],
        ),
    ]


def _new_ids(existing: set[str], count: int) -> list[str]:
    # Deterministic from the projected tasks, so a replay produces the same ids.
    ids: list[str] = []
    number = len(existing)
    while len(ids) < count:
        number += 1
        if f"t{number}" not in existing:
            ids.append(f"t{number}")
    return ids


def create_task_plan(args: CreateTaskPlanArgs, ctx: ToolContext) -> ToolOutcome:
    """Add the plan's tasks, numbered after the existing ones."""
    existing = set(ctx.tasks)
    ids = _new_ids(existing, len(args.tasks))
    sandbox = ctx.sandbox()
    by_title: dict[str, str] = {}
    events: list[Event] = []
    lines: list[str] = []
    for task_id, spec in zip(ids, args.tasks, strict=True):
        title = spec.title.strip()
        if title in by_title:
            raise ToolError(f"two tasks are titled {title!r}; titles must be unique in a plan")
        known = existing | set(by_title.values())
        deps: list[str] = []
        for ref in spec.dependencies:
            dep = ref if ref in known else by_title.get(ref.strip())
            if dep is None:
                raise ToolError(
                    f"task {title!r} depends on {ref!r}, which is neither an existing task "
                    f"({', '.join(sorted(existing)) or 'none'}) nor the title of an earlier "
                    "task in this plan; order the plan so that dependencies come first"
                )
            if dep not in deps:
                deps.append(dep)
        target = ""
        if spec.target_file.strip():
            target = sandbox.relative(sandbox.lexical(spec.target_file.strip()))
        by_title[title] = task_id
        events.append(
            TaskAdded(
                task_id=task_id,
                title=title,
                description=spec.description,
                target_file=target,
                priority=spec.priority,
                dependencies=tuple(deps),
            )
        )
        after = f" after {', '.join(deps)}" if deps else ""
        lines.append(f"{task_id}: {title}" + (f" -> {target}" if target else "") + after)
    return ToolOutcome(
        ok=True, result=f"planned {len(events)} tasks:\n" + "\n".join(lines), events=tuple(events)
    )


def _task_update(
    ctx: ToolContext, tool: str, requested: str, status: str, error: str = ""
) -> tuple[TaskUpdated, str]:
    """The status change, and a note for the model when its ``task_id`` was not the
    conversation's task. Inside a task's conversation the task is known: a wrong or
    made-up id (small models fill ids "by meaning": ``"calc.py written"``) is taken
    as the conversation's task instead of sinking it."""
    task_id = requested.strip() or ctx.task_id
    note = ""
    if ctx.task_id and task_id != ctx.task_id:
        note = (
            f" (note: this conversation is about task {ctx.task_id}; task_id "
            f"{requested!r} was taken to mean {ctx.task_id} — you may leave task_id out)"
        )
        task_id = ctx.task_id
    if not task_id:
        raise ToolError(f"{tool} needs a task_id: there is no current task")
    current = ctx.tasks.get(task_id)
    if current is None:
        raise ToolError(f"unknown task {task_id!r}; tasks: {', '.join(ctx.tasks) or 'none'}")
    try:
        check_status_change(current, status)
    except IllegalTransition as e:
        raise ToolError(f"{tool} cannot be used on task {task_id} now: {e}") from e
    return TaskUpdated(task_id=task_id, status=status, error=error), note


def complete_task(args: CompleteTaskArgs, ctx: ToolContext) -> ToolOutcome:
    """Hand the task to QA."""
    event, note = _task_update(ctx, "complete_task", args.task_id, "qa_pending")
    return ToolOutcome(
        ok=True,
        result=f"task {event.task_id} submitted for review: {args.summary}{note}",
        events=(event,),
    )


def approve_code(args: ApproveCodeArgs, ctx: ToolContext) -> ToolOutcome:
    """Pass QA: the task is completed."""
    event, note = _task_update(ctx, "approve_code", args.task_id, "completed")
    return ToolOutcome(
        ok=True, result=f"task {event.task_id} approved: {args.summary}{note}", events=(event,)
    )


def report_issue(args: ReportIssueArgs, ctx: ToolContext) -> ToolOutcome:
    """Fail QA: the task goes to debugging with the issue as its error."""
    event, note = _task_update(
        ctx, "report_issue", args.task_id, "qa_failed", error=args.description
    )
    return ToolOutcome(
        ok=True,
        result=f"issue reported on task {event.task_id}: {args.description}{note}",
        events=(event,),
    )


class SetTaskPriorityArgs(Args, frozen=True, kw_only=True):
    task_id: Annotated[
        str, Meta(min_length=1, description="The task to re-prioritise", examples=["t1"])
    ]
    priority: Annotated[
        int, Meta(ge=1, le=10, description="1 (most urgent) to 10 (least)", examples=[1])
    ]
    reason: Annotated[str, Meta(description="Why the order should change")] = ""


def set_task_priority(args: SetTaskPriorityArgs, ctx: ToolContext) -> ToolOutcome:
    """Re-prioritise an open task (the reasoning specialist's lever on the order of work)."""
    current = ctx.tasks.get(args.task_id)
    if current is None:
        raise ToolError(f"unknown task {args.task_id!r}; tasks: {', '.join(ctx.tasks) or 'none'}")
    if current in ("completed", "skipped"):
        raise ToolError(f"task {args.task_id} is {current}; only open tasks can be re-prioritised")
    event = TaskUpdated(task_id=args.task_id, status=current, priority=args.priority)
    return ToolOutcome(
        ok=True,
        result=f"task {args.task_id} now has priority {args.priority}: {args.reason}",
        events=(event,),
    )


WORKFLOW_TOOLS: tuple[Tool[Any], ...] = (
    Tool(
        "create_task_plan",
        "Record the plan: a list of tasks, each with a title, description, target file, "
        "priority and dependencies. Ends the planning conversation.",
        CreateTaskPlanArgs,
        create_task_plan,
        finishes=True,
    ),
    Tool(
        "complete_task",
        "Declare the current task done and hand it to QA. Ends the conversation.",
        CompleteTaskArgs,
        complete_task,
        finishes=True,
    ),
    Tool(
        "approve_code",
        "QA: the task's code is correct; mark it completed. Ends the conversation.",
        ApproveCodeArgs,
        approve_code,
        finishes=True,
    ),
    Tool(
        "report_issue",
        "QA: the task's code is wrong; describe the problem so it can be debugged. "
        "Ends the conversation.",
        ReportIssueArgs,
        report_issue,
        finishes=True,
    ),
)

SET_TASK_PRIORITY: Tool[Any] = Tool(
    "set_task_priority",
    "Reasoning: change an open task's priority (1 most urgent) so the work order "
    "changes. Ends the conversation.",
    SetTaskPriorityArgs,
    set_task_priority,
    finishes=True,
)
"""The reasoning specialist's extra tool; not in ``WORKFLOW_TOOLS`` (the issue's
tool list): ``engine.agent.runner`` adds it to the engine's registry."""
