"""The task lifecycle: a second table on the same mechanism as the phases.

::

    new ── begin ──> in_progress ── submit ──> qa_pending ── approve ──> completed
    qa_pending ── reject ──> qa_failed ── submit ──> qa_pending        (fixed in debugging)
    qa_failed ── rework ──> in_progress                                (re-coded in debugging)
    in_progress | qa_failed ── fail ──> failed
    failed ── retry [attempts_left] ──> in_progress
    failed ── skip [attempts_exhausted] ──> skipped
    new | in_progress ── block ──> blocked ── unblock ──> new;  blocked ── skip ──> skipped

The predecessor never routed a QA failure to debugging and never retried a failed
task. Here ``qa_failed`` has two ways back to ``qa_pending``, and a failed task has
exactly one legal next status for a given attempt count: ``in_progress`` while
attempts are left, ``skipped`` after (``next_status_after_failure``).

Predicates take plain data — anything with ``task_id``, ``status`` and
``dependencies`` (``projections.pipeline.TaskState`` fits) — so the coordinator can
ask them about projected state without this module importing projections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

import msgspec

from engine.errors import IllegalTransition
from engine.machines.machine import Edge, StateMachine, Table
from projections.sequence import PersistentMap

TASK_STATUSES: tuple[str, ...] = (
    "new",
    "in_progress",
    "qa_pending",
    "qa_failed",
    "failed",
    "blocked",
    "completed",
    "skipped",
)

DONE: frozenset[str] = frozenset({"completed", "skipped"})
"""Statuses from which a task never moves again."""

_BLOCKABLE = ("new", "in_progress")
# A dependency in one of these cannot complete for now; ``skipped`` never will.
_HOLDING_BACK = frozenset({"failed", "skipped", "blocked"})


class Attempts(msgspec.Struct, frozen=True, kw_only=True):
    """Facts for the retry/skip guards: attempts made so far, and the limit."""

    attempts: int
    max_attempts: int


def _attempts_left(facts: object) -> bool:
    return isinstance(facts, Attempts) and facts.attempts < facts.max_attempts


def _attempts_exhausted(facts: object) -> bool:
    return isinstance(facts, Attempts) and facts.attempts >= facts.max_attempts


TASK_TABLE = Table(
    name="task",
    states=TASK_STATUSES,
    initial="new",
    final=DONE,
    guards={"attempts_left": _attempts_left, "attempts_exhausted": _attempts_exhausted},
    edges=(
        Edge("begin", ("new",), "in_progress"),
        Edge("submit", ("in_progress", "qa_failed"), "qa_pending"),
        Edge("approve", ("qa_pending",), "completed"),
        Edge("reject", ("qa_pending",), "qa_failed"),
        Edge("rework", ("qa_failed",), "in_progress"),
        Edge("fail", ("in_progress", "qa_failed"), "failed"),
        Edge("retry", ("failed",), "in_progress", "attempts_left"),
        Edge("skip", ("failed",), "skipped", "attempts_exhausted"),
        # A task whose dependency was skipped can never run; skipping it is the end.
        Edge("skip", ("blocked",), "skipped"),
        Edge("block", _BLOCKABLE, "blocked"),
        Edge("unblock", ("blocked",), "new"),
    ),
)
"""The task lifecycle as data."""


class TaskLike(Protocol):
    """What the predicates need to know about a task."""

    @property
    def task_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def dependencies(self) -> Sequence[str]: ...


class TaskInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A minimal ``TaskLike`` for callers and tests that have no projected task."""

    task_id: str
    status: str = "new"
    dependencies: tuple[str, ...] = ()


Tasks = Mapping[str, TaskLike] | Iterable[TaskLike]

T = TypeVar("T")
TL = TypeVar("TL", bound=TaskLike)


def _index(tasks: Mapping[str, TL] | Iterable[TL]) -> Mapping[str, TL]:
    # Accept both ``state.tasks`` (a dict by id) and a plain list of tasks.
    if isinstance(tasks, Mapping):
        return tasks
    return {t.task_id: t for t in tasks}


# -- status changes ------------------------------------------------------------------


def check_status_change(
    current: str,
    new: str,
    *,
    attempts: int = 0,
    max_attempts: int | None = None,
) -> str:
    """Validate a task's move from ``current`` to ``new``; return its trigger.

    Raises ``IllegalTransition`` naming the statuses reachable from ``current``. The
    retry and skip of a failed task need ``attempts`` and ``max_attempts``."""
    if current not in TASK_STATUSES:
        raise IllegalTransition(f"task: unknown status {current!r}")
    trigger = TASK_TABLE.trigger_for(current, new)
    if trigger is None:
        reachable = [e.dest for e in TASK_TABLE.edges_from(current)]
        raise IllegalTransition(
            f"task: cannot go from {current!r} to {new!r}; "
            + (
                f"from {current!r} it may go to: {', '.join(reachable)}"
                if reachable
                else f"{current!r} is final"
            )
        )
    facts = None if max_attempts is None else Attempts(attempts=attempts, max_attempts=max_attempts)
    machine = StateMachine(TASK_TABLE, current)
    if not machine.can(trigger, facts):
        machine.fire(trigger, facts)  # raises, saying which guard refused
    return trigger


def next_status_after_failure(
    attempts: int, max_attempts: int
) -> Literal["in_progress", "skipped"]:
    """Where a failed task goes: retried while ``attempts`` (made so far, including
    the one that failed) is below ``max_attempts``, skipped after."""
    return "in_progress" if attempts < max_attempts else "skipped"


# -- predicates over plain data --------------------------------------------------------


def is_done(status: str) -> bool:
    """Completed or skipped: the task will not move again."""
    return status in DONE


def is_open(status: str) -> bool:
    """Anything not done, including blocked and failed tasks."""
    return status not in DONE


def is_ready(task: TaskLike, tasks: Tasks) -> bool:
    """Whether ``task`` can be coded now: new or in progress (a retry, or a run
    resumed mid-task) with every dependency completed."""
    return _is_ready(task, _index(tasks))


def _is_ready(task: TaskLike, index: Mapping[str, TaskLike]) -> bool:
    if task.status not in ("new", "in_progress"):
        return False
    return all(
        (dep := index.get(dep_id)) is not None and dep.status == "completed"
        for dep_id in task.dependencies
    )


def ready_tasks(tasks: Tasks) -> list[TaskLike]:
    """The tasks that are ready, in the order given (the log's order for a dict)."""
    return list(survey(tasks).ready)


class Survey(NamedTuple, Generic[TL]):
    """The tasks by situation, each in the order given: what the coordinator and the
    phase guards look at (``survey``)."""

    ready: tuple[TL, ...]
    """Could be coded now (``is_ready``)."""
    qa_pending: tuple[TL, ...]
    qa_failed: tuple[TL, ...]
    unsettled: tuple[TL, ...]
    """Those whose status may have to change before any work is done: failed,
    qa_failed and blocked tasks, and new or in-progress ones that ``should_block``."""
    total: int
    done: int
    """Completed or skipped."""
    completed: int


def survey(tasks: Mapping[str, TL] | Iterable[TL]) -> Survey[TL]:
    """The tasks sorted by situation in one pass, worked out once per version of a
    projected state's tasks (the engine asks several times a step)."""
    return derived(tasks, _survey)


def _survey(tasks: Mapping[str, TL] | Iterable[TL]) -> Survey[TL]:
    index = _index(tasks)
    ready: list[TL] = []
    pending: list[TL] = []
    failed_review: list[TL] = []
    unsettled: list[TL] = []
    done = completed = 0
    for task in index.values():
        status = task.status
        if status in DONE:
            done += 1
            completed += status == "completed"
        elif status == "qa_pending":
            pending.append(task)
        elif status == "qa_failed":
            failed_review.append(task)
            unsettled.append(task)
        elif status in _BLOCKABLE:
            if not task.dependencies:
                ready.append(task)
                continue
            # the one pass over its dependencies says both is_ready and should_block
            deps = [index.get(dep_id) for dep_id in task.dependencies]
            if any(dep is None or dep.status in _HOLDING_BACK for dep in deps):
                unsettled.append(task)
            elif all(dep is not None and dep.status == "completed" for dep in deps):
                ready.append(task)
        elif status in ("failed", "blocked"):
            unsettled.append(task)
    return Survey(
        ready=tuple(ready),
        qa_pending=tuple(pending),
        qa_failed=tuple(failed_review),
        unsettled=tuple(unsettled),
        total=len(index),
        done=done,
        completed=completed,
    )


def derived(
    tasks: Mapping[str, TL] | Iterable[TL],
    compute: Callable[[Mapping[str, TL] | Iterable[TL]], T],
) -> T:
    """``compute(tasks)``, worked out once per version of a projected state's tasks
    (a ``PersistentMap``: its items never change); ``compute`` must depend on the
    tasks alone."""
    if isinstance(tasks, PersistentMap):
        return tasks.derived(compute)
    return compute(tasks)


def blocking_dependencies(task: TaskLike, tasks: Tasks) -> tuple[str, ...]:
    """Dependencies that hold ``task`` back: unknown, failed, skipped or blocked."""
    if not task.dependencies:
        return ()
    index = _index(tasks)
    return tuple(
        dep_id
        for dep_id in task.dependencies
        if (dep := index.get(dep_id)) is None or dep.status in _HOLDING_BACK
    )


def should_block(task: TaskLike, tasks: Tasks) -> bool:
    """A new or in-progress task with a dependency that cannot complete for now."""
    return task.status in _BLOCKABLE and bool(blocking_dependencies(task, tasks))


def should_unblock(task: TaskLike, tasks: Tasks) -> bool:
    """A blocked task none of whose dependencies holds it back any more."""
    return task.status == "blocked" and not blocking_dependencies(task, tasks)


def blocked_for_good(task: TaskLike, tasks: Tasks) -> bool:
    """A blocked task with a dependency that will never complete (skipped or
    unknown): the coordinator should skip it rather than wait forever."""
    if task.status != "blocked":
        return False
    index = _index(tasks)
    return any(
        (dep := index.get(dep_id)) is None or dep.status == "skipped"
        for dep_id in task.dependencies
    )


def count_facts(tasks: Tasks) -> dict[str, int]:
    """Counts for ``engine.machines.phases.PhaseFacts``: total, open, ready, qa_pending,
    qa_failed."""
    found = survey(tasks)
    return {
        "total": found.total,
        "open": found.total - found.done,
        "ready": len(found.ready),
        "qa_pending": len(found.qa_pending),
        "qa_failed": len(found.qa_failed),
    }
