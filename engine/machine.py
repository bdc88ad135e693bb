"""One mechanism for every state machine of the engine: a table, and a guarded
``transitions`` Machine built from it.

The phase machine (``engine.phases``) and the task lifecycle (``engine.tasks``) are
both a :class:`Table` — states, an initial state, final states, and edges
``(trigger, sources, dest, guard)`` — plus a :class:`StateMachine` that holds the
current state and refuses any move the table does not allow.

Why a table rather than a hand-written ``transitions`` configuration: the same data
drives the machine, the Mermaid diagram (``autonomy graph``), ``trigger_for`` (an
arbiter names a destination, the table names the trigger) and the tests that check
every pair of states. Nothing can describe a move the machine would not make.

Rules the table enforces when it is built, because each one keeps the log readable:

- one edge per ``(trigger, source)``: a trigger from a state has one meaning;
- one edge per ``(source, dest)``: a move can be named by its destination;
- final states have no outgoing edges;
- every guard named by an edge has a predicate.

The machine has **no callbacks**. State is restored from events by constructing a
machine in that state (``Table.restore``); nothing is re-run, so replaying a log can
have no side effect. Guards are pure predicates over a ``facts`` value the caller
passes in (for phases: counts of tasks by status), so a decision depends only on
projected state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from transitions import Machine, MachineError

from engine.errors import IllegalTransition

Guard = Callable[[Any], bool]
"""A pure predicate over the caller's facts (``None`` when none were given)."""

# Names ``transitions`` binds on the model; a trigger with one of them would shadow it.
_RESERVED_TRIGGERS = frozenset({"state", "trigger", "may_trigger"})
_RESERVED_PREFIXES = ("is_", "may_", "to_")


@dataclass(frozen=True)
class Edge:
    """A transition: ``trigger`` moves from any of ``sources`` to ``dest`` when the
    named ``guard`` (if any) holds for the facts given."""

    trigger: str
    sources: tuple[str, ...]
    dest: str
    guard: str = ""


@dataclass(frozen=True)
class Table:
    """A state machine as data. Validated on construction; raises ``ValueError``
    for an inconsistent table (a programming error, never a runtime one)."""

    name: str
    states: tuple[str, ...]
    initial: str
    edges: tuple[Edge, ...]
    final: frozenset[str] = frozenset()
    guards: Mapping[str, Guard] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = set(self.states)
        problems: list[str] = []
        if len(known) != len(self.states):
            problems.append("duplicate state names")
        if self.initial not in known:
            problems.append(f"initial state {self.initial!r} is not a state")
        problems += [f"final state {s!r} is not a state" for s in self.final - known]
        by_trigger_source: set[tuple[str, str]] = set()
        by_source_dest: set[tuple[str, str]] = set()
        for edge in self.edges:
            if edge.trigger in _RESERVED_TRIGGERS or edge.trigger.startswith(_RESERVED_PREFIXES):
                problems.append(f"trigger name {edge.trigger!r} is reserved by transitions")
            if edge.dest not in known:
                problems.append(f"{edge.trigger}: destination {edge.dest!r} is not a state")
            if edge.guard and edge.guard not in self.guards:
                problems.append(f"{edge.trigger}: guard {edge.guard!r} has no predicate")
            if not edge.sources:
                problems.append(f"{edge.trigger}: no source states")
            for source in edge.sources:
                if source not in known:
                    problems.append(f"{edge.trigger}: source {source!r} is not a state")
                if source in self.final:
                    problems.append(f"{edge.trigger}: leaves final state {source!r}")
                if (edge.trigger, source) in by_trigger_source:
                    problems.append(f"{edge.trigger}: defined twice from {source!r}")
                if (source, edge.dest) in by_source_dest:
                    problems.append(f"two edges from {source!r} to {edge.dest!r}")
                by_trigger_source.add((edge.trigger, source))
                by_source_dest.add((source, edge.dest))
        if problems:
            raise ValueError(f"invalid {self.name} table: " + "; ".join(problems))

    # -- queries on the table (no machine needed) ----------------------------------

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger name, in table order, each once."""
        return tuple(dict.fromkeys(edge.trigger for edge in self.edges))

    def edge(self, trigger: str, source: str) -> Edge | None:
        """The edge ``trigger`` takes from ``source``, if there is one."""
        for edge in self.edges:
            if edge.trigger == trigger and source in edge.sources:
                return edge
        return None

    def edges_from(self, source: str) -> tuple[Edge, ...]:
        """The edges leaving ``source``, guarded or not, in table order."""
        return tuple(edge for edge in self.edges if source in edge.sources)

    def trigger_for(self, source: str, dest: str) -> str | None:
        """The trigger that moves ``source`` to ``dest``, or None when no edge does."""
        for edge in self.edges:
            if edge.dest == dest and source in edge.sources:
                return edge.trigger
        return None

    def pairs(self) -> frozenset[tuple[str, str]]:
        """Every ``(source, dest)`` the table allows (ignoring guards)."""
        return frozenset((s, e.dest) for e in self.edges for s in e.sources)

    def restore(self, state: str) -> StateMachine:
        """A machine in ``state``, as read from the log; no callback runs."""
        return StateMachine(self, state)

    @cached_property
    def machine(self) -> Machine:
        """The ``transitions`` Machine that applies this table's moves, built once
        (building one costs far more than a move) and shared by every
        ``StateMachine`` of the table: it holds no model, each move is applied to a
        model of its own (``StateMachine.fire``), so sharing it shares no state.
        No callbacks on purpose: restoring must not re-run anything. Guards are
        passed the caller's ``facts`` straight through."""
        return Machine(
            model=None,
            states=list(self.states),
            initial=self.initial,
            transitions=[
                {
                    "trigger": edge.trigger,
                    "source": list(edge.sources),
                    "dest": edge.dest,
                    "conditions": [self.guards[edge.guard]] if edge.guard else [],
                }
                for edge in self.edges
            ],
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=False,
        )

    def mermaid(self) -> str:
        """A Mermaid ``stateDiagram-v2`` of the whole table: one line per edge and
        source, guards in UML brackets."""
        lines = ["stateDiagram-v2", f"    [*] --> {self.initial}"]
        for edge in self.edges:
            label = f"{edge.trigger} [{edge.guard}]" if edge.guard else edge.trigger
            lines += [f"    {source} --> {edge.dest}: {label}" for source in edge.sources]
        lines += [f"    {state} --> [*]" for state in self.states if state in self.final]
        return "\n".join(lines) + "\n"


class _Model:
    """What a ``transitions`` move is applied to: it carries the state in and out;
    kept private so that nothing outside this module depends on it."""

    def __init__(self, state: str) -> None:
        self.state = state


class StateMachine:
    """The current state of one machine and the only way to change it.

    ``StateMachine(table)`` starts at the table's initial state;
    ``StateMachine(table, state)`` (or ``table.restore(state)``) rebuilds one from a
    state read out of events. ``fire`` applies a legal move and returns it, or raises
    ``IllegalTransition`` and changes nothing.
    """

    def __init__(self, table: Table, state: str | None = None) -> None:
        start = table.initial if state is None else state
        if start not in table.states:
            raise ValueError(
                f"{table.name}: cannot restore unknown state {start!r}; "
                f"states are {', '.join(table.states)}"
            )
        self.table = table
        self._state = start

    def __repr__(self) -> str:
        return f"<StateMachine {self.table.name} state={self.state!r}>"

    @property
    def state(self) -> str:
        """The current state."""
        return self._state

    @property
    def is_final(self) -> bool:
        """Whether the current state is final (nothing may follow it)."""
        return self.state in self.table.final

    def can(self, trigger: str, facts: Any = None) -> bool:
        """Whether ``fire(trigger, facts)`` would succeed now: the table has the edge
        and its guard holds (what the Machine's conditions check, read directly)."""
        edge = self.table.edge(trigger, self.state)
        if edge is None:
            return False
        return not edge.guard or bool(self.table.guards[edge.guard](facts))

    def allowed(self, facts: Any = None) -> tuple[str, ...]:
        """The triggers that may fire now with these facts, in table order."""
        return tuple(
            e.trigger for e in self.table.edges_from(self.state) if self.can(e.trigger, facts)
        )

    def fire(self, trigger: str, facts: Any = None) -> tuple[str, str]:
        """Apply ``trigger`` and return ``(from, to)``; raise ``IllegalTransition``
        (state unchanged) when the table has no such edge or its guard refuses."""
        source = self.state
        edge = self.table.edge(trigger, source)
        if edge is None:
            raise IllegalTransition(self._refusal(trigger, source, facts))
        model = _Model(source)
        try:
            moved = self.table.machine.events[trigger].trigger(model, facts)
        except MachineError as e:  # the table and the Machine disagree: never expected
            raise IllegalTransition(f"{self._refusal(trigger, source, facts)} ({e})") from e
        if not moved:
            raise IllegalTransition(
                f"{self.table.name}: {trigger!r} from {source!r} to {edge.dest!r} "
                f"needs {edge.guard!r}, which does not hold for "
                f"{'no facts (none were given)' if facts is None else repr(facts)}; "
                f"{self._allowed_text(facts)}"
            )
        self._state = model.state
        return source, self._state

    def _refusal(self, trigger: str, source: str, facts: Any) -> str:
        if trigger not in self.table.triggers:
            return (
                f"{self.table.name}: unknown trigger {trigger!r}; "
                f"triggers are {', '.join(self.table.triggers)}"
            )
        return f"{self.table.name}: cannot {trigger!r} from {source!r}; {self._allowed_text(facts)}"

    def _allowed_text(self, facts: Any) -> str:
        if self.is_final:
            return f"{self.state!r} is final"
        allowed = self.allowed(facts)
        listed = ", ".join(
            f"{t} (-> {e.dest})"
            for t in allowed
            if (e := self.table.edge(t, self.state)) is not None
        )
        return f"allowed from {self.state!r}: {listed or 'nothing with these facts'}"

    def mermaid(self) -> str:
        """The table's Mermaid diagram (the same for every state)."""
        return self.table.mermaid()


def reachable(table: Table, start: str | None = None) -> frozenset[str]:
    """States reachable from ``start`` (default: initial) ignoring guards; a table
    whose states are not all reachable has a hole worth a test."""
    seen = {table.initial if start is None else start}
    frontier: Iterable[str] = list(seen)
    while frontier:
        nxt = {e.dest for s in frontier for e in table.edges_from(s)} - seen
        seen |= nxt
        frontier = nxt
    return frozenset(seen)
