"""PipelineState: where the run stands — status, phase, tasks, files, counters.

``apply_pipeline`` is a pure step: it never mutates its input (dicts are copied on
write) and returns the same object when an event does not concern it, which keeps
a rebuild of a long run cheap.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.schema import (
    ArbiterDecided,
    Event,
    PhaseChanged,
    RunFinished,
    RunForked,
    RunStarted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UserAnswered,
    UserAsked,
)
from projections.sequence import Appended

replace = msgspec.structs.replace


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    title: str
    description: str = ""
    target_file: str = ""
    priority: int = 5
    dependencies: tuple[str, ...] = ()
    status: str = "new"
    attempts: int = 0
    errors: tuple[str, ...] = ()
    added_at: int = 0
    updated_at: int = 0

    @property
    def last_error(self) -> str:
        return self.errors[-1] if self.errors else ""


class FileState(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    digest: str
    size: int
    changed_at: int
    """Version of the event that last changed the file."""


class PhaseEntry(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    trigger: str
    from_phase: str
    to_phase: str
    reason: str = ""
    decided_by: str = ""


class PendingTool(msgspec.Struct, frozen=True, kw_only=True):
    """A tool.requested without its tool.executed (yet): visible after a crash."""

    call_id: str
    tool: str
    arguments: dict[str, Any]
    version: int


class PipelineState(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str = ""
    goal: str = ""
    workspace: str = ""
    mode: str = ""
    config: dict[str, Any] = {}
    status: str = "new"
    """new, running, waiting_for_input, completed, failed or stopped."""
    reason: str = ""
    phase: str = "start"
    tasks: dict[str, TaskState] = {}
    files: dict[str, FileState] = {}
    phase_history: Appended[PhaseEntry] = msgspec.field(default_factory=Appended)
    steps: int = 0
    steps_since_progress: int = 0
    pending_tools: dict[str, PendingTool] = {}
    question: str = ""
    answers: tuple[str, ...] = ()
    parent_run: str = ""
    forked_at: int = 0


def apply_pipeline(state: PipelineState, event: Event, version: int) -> PipelineState:
    """The pipeline state after ``event`` (recorded at ``version``)."""
    if isinstance(event, ArbiterDecided):
        return replace(
            state, steps=state.steps + 1, steps_since_progress=state.steps_since_progress + 1
        )
    if isinstance(event, ToolRequested):
        pending = PendingTool(
            call_id=event.call_id, tool=event.tool, arguments=event.arguments, version=version
        )
        return replace(state, pending_tools={**state.pending_tools, event.call_id: pending})
    if isinstance(event, ToolExecuted):
        return _tool_executed(state, event, version)
    if isinstance(event, TaskAdded):
        task = TaskState(
            task_id=event.task_id,
            title=event.title,
            description=event.description,
            target_file=event.target_file,
            priority=event.priority,
            dependencies=event.dependencies,
            added_at=version,
            updated_at=version,
        )
        return replace(state, tasks={**state.tasks, event.task_id: task}, steps_since_progress=0)
    if isinstance(event, TaskUpdated):
        return _task_updated(state, event, version)
    if isinstance(event, PhaseChanged):
        entry = PhaseEntry(
            version=version,
            trigger=event.trigger,
            from_phase=event.from_phase,
            to_phase=event.to_phase,
            reason=event.reason,
            decided_by=event.decided_by,
        )
        return replace(state, phase=event.to_phase, phase_history=state.phase_history.append(entry))
    if isinstance(event, RunStarted):
        return replace(
            state,
            goal=event.goal,
            workspace=event.workspace,
            mode=event.mode,
            config=event.config,
            status="running",
            reason="",
        )
    if isinstance(event, RunFinished):
        return replace(state, status=event.status, reason=event.reason)
    if isinstance(event, UserAsked):
        return replace(state, status="waiting_for_input", question=event.question)
    if isinstance(event, UserAnswered):
        return replace(state, status="running", question="", answers=(*state.answers, event.answer))
    if isinstance(event, RunForked):
        return replace(
            state,
            parent_run=event.parent_run,
            forked_at=event.at_version,
            workspace=event.workspace or state.workspace,
        )
    return state


def _tool_executed(state: PipelineState, event: ToolExecuted, version: int) -> PipelineState:
    pending = state.pending_tools
    if event.call_id in pending:
        pending = {k: v for k, v in pending.items() if k != event.call_id}
    if not event.files_changed:
        return state if pending is state.pending_tools else replace(state, pending_tools=pending)
    files = dict(state.files)
    for change in event.files_changed:
        if change.after is None:
            files.pop(change.path, None)
        else:
            files[change.path] = FileState(
                path=change.path, digest=change.after, size=change.size, changed_at=version
            )
    return replace(state, files=files, pending_tools=pending, steps_since_progress=0)


def _task_updated(state: PipelineState, event: TaskUpdated, version: int) -> PipelineState:
    task = state.tasks.get(event.task_id)
    if task is None:  # an update of a task the log never added: keep it visible
        task = TaskState(task_id=event.task_id, title=event.task_id, added_at=version)
    task = replace(
        task,
        status=event.status,
        attempts=max(task.attempts, event.attempt),
        errors=(*task.errors, event.error) if event.error else task.errors,
        priority=event.priority if event.priority is not None else task.priority,
        updated_at=version,
    )
    return replace(state, tasks={**state.tasks, event.task_id: task}, steps_since_progress=0)
