"""PipelineState: where the run stands — status, phase, tasks, files, counters.

``apply_pipeline`` is a pure step: it never mutates its input and returns the same
object when an event does not concern it. The growing parts (tasks, files,
pending tools, phase history) are persistent collections, so a step never copies
what the run has accumulated.

Each event's step is written once, as a change to a ``PipelineBuilder``: the
state's fields, with dicts and lists for its collections. ``apply_pipeline``
builds over the state itself, with an editor for each persistent collection the
step touches (one event, one persistent update, nothing else copied; see
``projections.sequence.one_event_builder``); ``projections.fold`` folds many
events into one transient builder over plain dicts and lists and freezes it once
at the end. Either way no state that anyone else holds is ever changed. The two
events of a tool call, the commonest with a model call's, are also written directly
over the persistent maps, which ``apply_pipeline`` uses instead (half the cost of a
builder for one event); a property test holds each to what its builder step makes.

Every state Struct here is ``gc=False``: states are built bottom-up from frozen
values and hold no reference back to anything that holds them, so they can
never be part of a reference cycle, and a long run's many states then cost the
cyclic garbage collector nothing.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import msgspec

from events.schema import (
    ArbiterDecided,
    Event,
    PhaseChanged,
    RunFinished,
    RunForked,
    RunResumed,
    RunStarted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UserAnswered,
    UserAsked,
)
from projections.sequence import (
    Appended,
    AppendedEditor,
    Growing,
    MapEditor,
    PersistentMap,
    freeze_map,
    freeze_sequence,
    one_event_builder,
    persistent_map,
    thaw_map,
    thaw_sequence,
)

replace = msgspec.structs.replace


class TaskState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
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


class FileState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    path: str
    digest: str
    size: int
    changed_at: int
    """Version of the event that last changed the file."""


class PhaseEntry(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    version: int
    trigger: str
    from_phase: str
    to_phase: str
    reason: str = ""
    decided_by: str = ""


class PendingTool(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A tool.requested without its tool.executed (yet): visible after a crash."""

    call_id: str
    tool: str
    arguments: dict[str, Any]
    version: int


_NO_TASKS: PersistentMap[str, TaskState] = PersistentMap()
_NO_FILES: PersistentMap[str, FileState] = PersistentMap()
_NO_PENDING: PersistentMap[str, PendingTool] = PersistentMap()
_NO_PHASES: Appended[PhaseEntry] = Appended()


class PipelineState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    run_id: str = ""
    goal: str = ""
    workspace: str = ""
    mode: str = ""
    config: dict[str, Any] = {}
    status: str = "new"
    """new, running, waiting_for_input, completed, failed or stopped."""
    reason: str = ""
    phase: str = "start"
    tasks: PersistentMap[str, TaskState] = _NO_TASKS
    files: PersistentMap[str, FileState] = _NO_FILES
    phase_history: Appended[PhaseEntry] = _NO_PHASES
    steps: int = 0
    steps_since_progress: int = 0
    pending_tools: PersistentMap[str, PendingTool] = _NO_PENDING
    question: str = ""
    answers: tuple[str, ...] = ()
    parent_run: str = ""
    forked_at: int = 0


class PipelineBuilder:
    """A ``PipelineState`` under construction (see the module docstring)."""

    __slots__ = (
        "answers",
        "config",
        "files",
        "forked_at",
        "goal",
        "mode",
        "parent_run",
        "pending_tools",
        "phase",
        "phase_history",
        "question",
        "reason",
        "run_id",
        "status",
        "steps",
        "steps_since_progress",
        "tasks",
        "workspace",
    )

    tasks: MutableMapping[str, TaskState]
    files: MutableMapping[str, FileState]
    phase_history: Growing[PhaseEntry]
    pending_tools: MutableMapping[str, PendingTool]

    def __init__(self, state: PipelineState) -> None:
        """Start from ``state``, over copies of its collections: for many events
        (``apply`` of one event builds over editors instead, see ``one_event_builder``)."""
        self.run_id = state.run_id
        self.goal = state.goal
        self.workspace = state.workspace
        self.mode = state.mode
        self.config = state.config
        self.status = state.status
        self.reason = state.reason
        self.phase = state.phase
        self.steps = state.steps
        self.steps_since_progress = state.steps_since_progress
        self.question = state.question
        self.answers = state.answers
        self.parent_run = state.parent_run
        self.forked_at = state.forked_at
        self.tasks = thaw_map(state.tasks)
        self.files = thaw_map(state.files)
        self.phase_history = thaw_sequence(state.phase_history)
        self.pending_tools = thaw_map(state.pending_tools)

    def freeze(self) -> PipelineState:
        """The state built; the builder must not be used afterwards."""
        return PipelineState(
            run_id=self.run_id,
            goal=self.goal,
            workspace=self.workspace,
            mode=self.mode,
            config=self.config,
            status=self.status,
            reason=self.reason,
            phase=self.phase,
            tasks=freeze_map(self.tasks),
            files=freeze_map(self.files),
            phase_history=freeze_sequence(self.phase_history),
            steps=self.steps,
            steps_since_progress=self.steps_since_progress,
            pending_tools=freeze_map(self.pending_tools),
            question=self.question,
            answers=self.answers,
            parent_run=self.parent_run,
            forked_at=self.forked_at,
        )


_PipelineEdit = one_event_builder(
    PipelineBuilder,
    [
        f
        for f in PipelineBuilder.__slots__
        if f not in ("tasks", "files", "phase_history", "pending_tools")
    ],
    {
        "tasks": MapEditor,
        "files": MapEditor,
        "phase_history": AppendedEditor,
        "pending_tools": MapEditor,
    },
)


Step = Callable[[PipelineBuilder, Any, int], None]
"""How one event type changes a pipeline under construction (``event``, ``version``)."""


def apply_pipeline(state: PipelineState, event: Event, version: int) -> PipelineState:
    """The pipeline state after ``event`` (recorded at ``version``)."""
    persistent = _PERSISTENT_STEPS.get(type(event))
    if persistent is not None:
        return persistent(state, event, version)
    step = PIPELINE_STEPS.get(type(event))
    if step is None:
        return state
    building = _PipelineEdit(state)
    step(building, event, version)
    return building.freeze()


def _arbiter_decided(b: PipelineBuilder, event: ArbiterDecided, version: int) -> None:
    b.steps += 1
    b.steps_since_progress += 1


def _tool_requested(b: PipelineBuilder, event: ToolRequested, version: int) -> None:
    b.pending_tools[event.call_id] = PendingTool(
        call_id=event.call_id, tool=event.tool, arguments=event.arguments, version=version
    )


def _tool_executed(b: PipelineBuilder, event: ToolExecuted, version: int) -> None:
    b.pending_tools.pop(event.call_id, None)
    if not event.files_changed:
        return
    files = b.files
    for change in event.files_changed:
        if change.after is None:
            files.pop(change.path, None)
        else:
            files[change.path] = FileState(
                path=change.path, digest=change.after, size=change.size, changed_at=version
            )
    b.steps_since_progress = 0


def _task_added(b: PipelineBuilder, event: TaskAdded, version: int) -> None:
    b.tasks[event.task_id] = TaskState(
        task_id=event.task_id,
        title=event.title,
        description=event.description,
        target_file=event.target_file,
        priority=event.priority,
        dependencies=event.dependencies,
        added_at=version,
        updated_at=version,
    )
    b.steps_since_progress = 0


def _task_updated(b: PipelineBuilder, event: TaskUpdated, version: int) -> None:
    task = b.tasks.get(event.task_id)
    if task is None:  # an update of a task the log never added: keep it visible
        task = TaskState(task_id=event.task_id, title=event.task_id, added_at=version)
    b.tasks[event.task_id] = replace(
        task,
        status=event.status,
        attempts=max(task.attempts, event.attempt),
        errors=(*task.errors, event.error) if event.error else task.errors,
        priority=event.priority if event.priority is not None else task.priority,
        updated_at=version,
    )
    b.steps_since_progress = 0


def _phase_changed(b: PipelineBuilder, event: PhaseChanged, version: int) -> None:
    b.phase = event.to_phase
    b.phase_history.append(
        PhaseEntry(
            version=version,
            trigger=event.trigger,
            from_phase=event.from_phase,
            to_phase=event.to_phase,
            reason=event.reason,
            decided_by=event.decided_by,
        )
    )


def _run_started(b: PipelineBuilder, event: RunStarted, version: int) -> None:
    b.goal = event.goal
    b.workspace = event.workspace
    b.mode = event.mode
    b.config = event.config
    b.status = "running"
    b.reason = ""


def _run_finished(b: PipelineBuilder, event: RunFinished, version: int) -> None:
    b.status = event.status
    b.reason = event.reason


def _run_resumed(b: PipelineBuilder, event: RunResumed, version: int) -> None:
    if b.status == "stopped":  # the user stopped it (Ctrl-C); resume carries on
        b.status = "running"
        b.reason = ""


def _user_asked(b: PipelineBuilder, event: UserAsked, version: int) -> None:
    b.status = "waiting_for_input"
    b.question = event.question


def _user_answered(b: PipelineBuilder, event: UserAnswered, version: int) -> None:
    b.status = "running"
    b.question = ""
    b.answers = (*b.answers, event.answer)


def _run_forked(b: PipelineBuilder, event: RunForked, version: int) -> None:
    b.parent_run = event.parent_run
    b.forked_at = event.at_version
    b.workspace = event.workspace or b.workspace


PIPELINE_STEPS: dict[type[Event], Step] = {
    ArbiterDecided: _arbiter_decided,
    ToolRequested: _tool_requested,
    ToolExecuted: _tool_executed,
    TaskAdded: _task_added,
    TaskUpdated: _task_updated,
    PhaseChanged: _phase_changed,
    RunStarted: _run_started,
    RunFinished: _run_finished,
    RunResumed: _run_resumed,
    UserAsked: _user_asked,
    UserAnswered: _user_answered,
    RunForked: _run_forked,
}
"""The step of each event type that changes the pipeline; other types leave it as is."""


# -- the commonest events, written again over persistent maps --------------------------------
# A tool call is two events of every seven a run logs; as for a model call
# (``projections.orchestration``), ``apply`` updates the maps directly rather than
# through a builder for one event.


def _tool_requested_now(state: PipelineState, event: ToolRequested, version: int) -> PipelineState:
    pending = PendingTool(
        call_id=event.call_id, tool=event.tool, arguments=event.arguments, version=version
    )
    return replace(
        state, pending_tools=persistent_map(state.pending_tools).set(event.call_id, pending)
    )


def _tool_executed_now(state: PipelineState, event: ToolExecuted, version: int) -> PipelineState:
    pending = persistent_map(state.pending_tools).delete(event.call_id)
    if not event.files_changed:
        return replace(state, pending_tools=pending)
    files = persistent_map(state.files)
    for change in event.files_changed:
        if change.after is None:
            files = files.delete(change.path)
        else:
            files = files.set(
                change.path,
                FileState(
                    path=change.path, digest=change.after, size=change.size, changed_at=version
                ),
            )
    return replace(state, pending_tools=pending, files=files, steps_since_progress=0)


_PERSISTENT_STEPS: dict[type[Event], Callable[[PipelineState, Any, int], PipelineState]] = {
    ToolRequested: _tool_requested_now,
    ToolExecuted: _tool_executed_now,
}
