"""The phase machine: which phase may follow which, and under what facts.

Triggers are named after their destination (``review`` enters ``qa``), so an arbiter
that says "change phase to qa" maps to exactly one trigger (``trigger_for``). The
table, drawn by ``autonomy graph``::

    start ── plan ──> planning ── code [has_ready_task] ──> coding
    coding ── review [has_qa_pending] ──> qa ── code ──> coding      (next task)
    qa ── debug [has_qa_failed] ──> debugging ── review ──> qa       (fix, re-check)
    planning | coding | debugging ── investigate ──> investigation
    investigation ── plan / code / debug ──> back to planning, coding or debugging
    qa | coding | debugging ── document [all_tasks_done] ──> documentation
    documentation ── complete [all_tasks_done] ──> completed
    planning | documentation ── project_plan ──> project_planning ── plan ──> planning
    every non-final phase ── fail ──> failed, ── stop ──> stopped

The guards encode the predecessor's lessons: a QA failure always has a route to
debugging (``debug`` from ``qa`` only needs a ``qa_failed`` task) and back to QA;
the run cannot claim completion while a task is still open. Guards read
:class:`PhaseFacts`, counts derived from projected tasks, never engine attributes.
"""

from __future__ import annotations

import msgspec

from engine.errors import IllegalTransition
from engine.machines.machine import Edge, StateMachine, Table
from engine.machines.tasks import Tasks, count_facts, derived
from events.schema import PhaseChanged

START = "start"
"""The pseudo-phase of a run before its first ``phase.changed``."""

PHASES: tuple[str, ...] = (
    "planning",
    "coding",
    "qa",
    "debugging",
    "documentation",
    "project_planning",
    "investigation",
)
"""The working phases, in the order a simple run meets them."""

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "stopped"})
"""Phases that end a run; nothing follows them."""

_TERMINAL_ORDER = ("completed", "failed", "stopped")
_LIVE = (START, *PHASES)


class PhaseFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What the phase guards may know: task counts by situation.

    Build it with :meth:`from_tasks` from projected tasks, so a guard decides from
    the log alone."""

    total: int = 0
    open: int = 0
    """Tasks neither completed nor skipped."""
    ready: int = 0
    """Tasks that could be coded now (see ``engine.machines.tasks.is_ready``)."""
    qa_pending: int = 0
    qa_failed: int = 0

    @classmethod
    def from_tasks(cls, tasks: Tasks) -> PhaseFacts:
        """Facts for tasks (anything with task_id, status and dependencies), given
        as a mapping by id (``PipelineState.tasks``) or as an iterable."""
        return derived(tasks, _phase_facts)  # once per version of a state's tasks


def _phase_facts(tasks: Tasks) -> PhaseFacts:
    return PhaseFacts(**count_facts(tasks))


def _facts(value: object) -> PhaseFacts:
    # A guard given no facts knows nothing, so every guarded move is refused.
    return value if isinstance(value, PhaseFacts) else PhaseFacts()


def _has_ready_task(facts: object) -> bool:
    return _facts(facts).ready > 0


def _has_qa_pending(facts: object) -> bool:
    return _facts(facts).qa_pending > 0


def _has_qa_failed(facts: object) -> bool:
    return _facts(facts).qa_failed > 0


def _all_tasks_done(facts: object) -> bool:
    f = _facts(facts)
    return f.total > 0 and f.open == 0


PHASE_TABLE = Table(
    name="phase",
    states=(*_LIVE, *_TERMINAL_ORDER),
    initial=START,
    final=TERMINAL,
    guards={
        "has_ready_task": _has_ready_task,
        "has_qa_pending": _has_qa_pending,
        "has_qa_failed": _has_qa_failed,
        "all_tasks_done": _all_tasks_done,
    },
    edges=(
        Edge("plan", (START, "project_planning", "investigation"), "planning"),
        Edge("project_plan", ("planning", "documentation"), "project_planning"),
        # Investigation is research: entered when planning, coding or debugging
        # needs to look around, left back to any of those.
        Edge("investigate", ("planning", "coding", "debugging"), "investigation"),
        Edge("code", ("planning", "qa", "debugging", "investigation"), "coding", "has_ready_task"),
        Edge("review", ("coding", "debugging"), "qa", "has_qa_pending"),
        Edge("debug", ("qa", "investigation"), "debugging", "has_qa_failed"),
        # A task skipped while coding or debugging can leave nothing open, so the
        # way to documentation is not only through qa.
        Edge("document", ("coding", "qa", "debugging"), "documentation", "all_tasks_done"),
        Edge("complete", ("documentation",), "completed", "all_tasks_done"),
        Edge("fail", _LIVE, "failed"),
        Edge("stop", _LIVE, "stopped"),
    ),
)
"""The phase machine as data: the single source of the machine, the diagram and
``trigger_for``."""


class PhaseMachine(StateMachine):
    """A state machine over :data:`PHASE_TABLE`; starts at ``start``."""

    def __init__(self, phase: str = START) -> None:
        super().__init__(PHASE_TABLE, phase)

    @classmethod
    def restore(cls, phase: str) -> PhaseMachine:
        """The machine in ``phase`` as projected from ``phase.changed`` events (the
        last ``to_phase``, or ``start``); no callback is re-run."""
        return cls(phase)


def trigger_for(source: str, dest: str) -> str | None:
    """The trigger moving ``source`` to ``dest`` (guards not checked), or None."""
    return PHASE_TABLE.trigger_for(source, dest)


def phase_changed(
    machine: StateMachine,
    trigger: str,
    reason: str = "",
    decided_by: str = "rules",
    facts: PhaseFacts | None = None,
) -> PhaseChanged:
    """Fire ``trigger`` and return the ``phase.changed`` event to append.

    Raises ``IllegalTransition`` (machine unchanged) when the move is refused. The
    caller appends the event; if that append fails it must restore the machine from
    the log rather than trust this in-memory move."""
    source, dest = machine.fire(trigger, facts)
    return PhaseChanged(
        trigger=trigger, from_phase=source, to_phase=dest, reason=reason, decided_by=decided_by
    )


def phase_changed_to(
    machine: StateMachine,
    phase: str,
    reason: str = "",
    decided_by: str = "rules",
    facts: PhaseFacts | None = None,
) -> PhaseChanged:
    """Like :func:`phase_changed`, naming the destination instead of the trigger
    (what an arbiter's ``change_phase(phase)`` says)."""
    trigger = machine.table.trigger_for(machine.state, phase)
    if trigger is None:
        known = "" if phase in machine.table.states else " (not a phase)"
        reachable = sorted(e.dest for e in machine.table.edges_from(machine.state))
        raise IllegalTransition(
            f"phase: no move from {machine.state!r} to {phase!r}{known}; "
            f"from {machine.state!r} the table reaches: {', '.join(reachable) or 'nothing'}"
        )
    return phase_changed(machine, trigger, reason, decided_by, facts)


def mermaid() -> str:
    """The phase diagram (Mermaid ``stateDiagram-v2``) for ``autonomy graph``."""
    return PHASE_TABLE.mermaid()
