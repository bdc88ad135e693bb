"""The rules coordinator: the next step, decided from projected state alone.

``decide`` is a pure function of ``PipelineState`` and the limits: the same log
always gives the same decision, which is what makes a run replayable and a bad
decision explainable. Its order of concerns:

1. limits: ``max_steps`` and the no-progress limit end the run as failed;
2. bookkeeping: a failed task is retried or skipped, blocked tasks are blocked,
   unblocked or skipped;
3. work: no tasks -> plan; qa_pending -> qa; qa_failed -> debug; a ready task ->
   code; nothing open -> documentation -> completed; open tasks none of which can
   move -> the run fails, saying which.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from engine.config import Limits
from engine.machines.tasks import (
    blocked_for_good,
    derived,
    is_done,
    next_status_after_failure,
    should_block,
    should_unblock,
    survey,
)
from projections.orchestration import OrchestrationState
from projections.pipeline import PipelineState, TaskState

WORK_PHASE = {
    "plan": "planning",
    "code": "coding",
    "qa": "qa",
    "debug": "debugging",
    "document": "documentation",
    "complete": "completed",
}
"""The phase each kind of work happens in."""


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One decision: what to do, on which task, and why."""

    action: str
    """plan, code, qa, debug, document, complete, set_status or finish."""
    reason: str
    task_id: str = ""
    status: str = ""
    """For set_status: the task's new status; for finish and complete: the run's final
    status (complete: "" is "completed", or "partial" when tasks were skipped)."""

    @property
    def phase(self) -> str:
        """The phase this step's work needs ("" for bookkeeping)."""
        if self.action == "finish":
            return self.status
        return WORK_PHASE.get(self.action, "")

    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.task_id:
            out["task_id"] = self.task_id
        if self.status:
            out["status"] = self.status
        if self.phase:
            out["phase"] = self.phase
        return out


WHY = {"qa": "is waiting for review", "debug": "failed review", "code": "is ready to code"}
"""What makes a task the object of each kind of work, as a step's reason says."""


class Agenda(NamedTuple):
    """The work the tasks offer now, by kind in the order the rules take it, each
    kind most urgent first (``agenda``)."""

    qa: tuple[TaskState, ...]
    """Waiting for review."""
    debug: tuple[TaskState, ...]
    """Failed review."""
    code: tuple[TaskState, ...]
    """Ready to code."""

    def items(self) -> Iterator[tuple[str, tuple[TaskState, ...]]]:
        """(action, tasks) for each kind of work, in the order the rules take it."""
        return zip(self._fields, self, strict=True)

    def step(self, action: str, task: TaskState) -> Step:
        """The step doing ``action`` (a field's name) on ``task``."""
        return Step(action=action, task_id=task.task_id, reason=f"{task.task_id} {WHY[action]}")


def agenda(tasks: Mapping[str, TaskState]) -> Agenda:
    """The work ``tasks`` offer, worked out once per version of a state's tasks."""
    return derived(tasks, _agenda)


def _agenda(tasks: Mapping[str, TaskState] | Iterable[TaskState]) -> Agenda:
    found = survey(tasks)
    return Agenda(_ordered(found.qa_pending), _ordered(found.qa_failed), _ordered(found.ready))


def _ordered(tasks: tuple[TaskState, ...]) -> tuple[TaskState, ...]:
    # Lower priority numbers first (1 is most urgent); the log's order breaks ties.
    return tuple(sorted(tasks, key=_priority)) if len(tasks) > 1 else tasks


_priority = attrgetter("priority")


def model_trouble(orchestration: OrchestrationState) -> str:
    """The model failures since the last answer, as a cause a person can act on
    ("" when the last call was answered)."""
    failed = orchestration.failures_since_answer
    if not failed:
        return ""
    return f"{orchestration.last_failure} ({failed} failed attempt(s) since the last answer)"


def decide(state: PipelineState, limits: Limits, trouble: str = "") -> Step:
    """The next step for a run in ``state``; ``trouble`` (``model_trouble``) names
    the cause when a run that makes no progress keeps failing to reach its model."""
    cause = f"{trouble}; " if trouble else ""
    if state.steps >= limits.max_steps:
        return Step(
            action="finish",
            status="failed",
            reason=f"{cause}reached max_steps ({limits.max_steps})",
        )
    if state.steps_since_progress >= limits.no_progress_limit:
        return Step(
            action="finish",
            status="failed",
            reason=f"{cause}no progress in {state.steps_since_progress} steps "
            "(no file changed and no task changed status)",
        )
    tasks = state.tasks
    found = survey(tasks)
    # only the unsettled tasks can need any of these; in the log's order
    for task in found.unsettled:
        if task.status == "failed":
            status = next_status_after_failure(task.attempts, limits.max_attempts_per_task)
            verb = "retry" if status == "in_progress" else "skip"
            return Step(
                action="set_status",
                task_id=task.task_id,
                status=status,
                reason=f"{verb} {task.task_id} after attempt {task.attempts} of "
                f"{limits.max_attempts_per_task}: {task.last_error or 'failed'}",
            )
        if task.status == "qa_failed" and task.attempts >= limits.max_attempts_per_task:
            return Step(
                action="set_status",
                task_id=task.task_id,
                status="failed",
                reason=f"{task.task_id} failed review after {task.attempts} attempt(s): "
                f"{task.last_error or 'rejected'}",
            )
        if blocked_for_good(task, tasks):
            return Step(
                action="set_status",
                task_id=task.task_id,
                status="skipped",
                reason=f"{task.task_id} depends on a task that will never complete",
            )
        if should_block(task, tasks):
            return Step(
                action="set_status",
                task_id=task.task_id,
                status="blocked",
                reason=f"{task.task_id} waits on a failed or blocked dependency",
            )
        if should_unblock(task, tasks):
            return Step(
                action="set_status",
                task_id=task.task_id,
                status="new",
                reason=f"{task.task_id}'s dependencies can complete again",
            )
    if not tasks:
        return Step(action="plan", reason="no tasks yet: make a plan for the goal")
    work = agenda(tasks)
    for action, waiting in work.items():
        if waiting:
            return work.step(action, waiting[0])
    if found.done < found.total:
        open_tasks = [t.task_id for t in tasks.values() if not is_done(t.status)]
        return Step(
            action="finish",
            status="failed",
            reason=f"open tasks cannot move: {', '.join(open_tasks)}",
        )
    completed = found.completed
    if not completed:
        return Step(
            action="finish", status="failed", reason=f"every task was skipped ({found.total})"
        )
    skipped = found.total - completed
    if state.phase != "documentation":
        if skipped:  # "every task is done" said of a run that skipped some
            return Step(
                action="document",
                reason=f"every task is settled: {completed} completed, {skipped} skipped",
            )
        return Step(action="document", reason="every task is done")
    if skipped:
        # the pipeline reached its end, but not every task was done: "completed"
        # is kept for runs that did all their work
        return Step(
            action="complete",
            status="partial",
            reason=f"{completed} of {found.total} task(s) completed; {skipped} skipped",
        )
    return Step(action="complete", reason=f"{completed} task(s) completed")
