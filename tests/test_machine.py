"""The table-driven state machine mechanism, on a small table of its own."""

from __future__ import annotations

import pytest

from engine.errors import IllegalTransition
from engine.machine import Edge, StateMachine, Table, reachable

calls: list[object] = []


def _counting_guard(facts: object) -> bool:
    calls.append(facts)
    return facts == "open sesame"


def door_table() -> Table:
    return Table(
        name="door",
        states=("closed", "open", "locked", "gone"),
        initial="closed",
        final=frozenset({"gone"}),
        guards={"has_key": _counting_guard},
        edges=(
            Edge("open_up", ("closed",), "open"),
            Edge("close", ("open",), "closed"),
            Edge("lock", ("closed",), "locked"),
            Edge("unlock", ("locked",), "closed", "has_key"),
            Edge("demolish", ("closed", "open", "locked"), "gone"),
        ),
    )


def test_a_new_machine_is_in_the_initial_state() -> None:
    assert StateMachine(door_table()).state == "closed"


def test_fire_returns_the_move_and_applies_it() -> None:
    machine = StateMachine(door_table())
    assert machine.fire("open_up") == ("closed", "open")
    assert machine.state == "open"


def test_an_illegal_trigger_raises_and_leaves_the_state_unchanged() -> None:
    machine = StateMachine(door_table())
    with pytest.raises(IllegalTransition) as caught:
        machine.fire("close")
    assert machine.state == "closed"
    message = str(caught.value)
    assert "'close' from 'closed'" in message
    assert "open_up (-> open)" in message and "lock (-> locked)" in message


def test_an_unknown_trigger_is_refused_naming_the_known_ones() -> None:
    machine = StateMachine(door_table())
    with pytest.raises(IllegalTransition, match=r"unknown trigger 'fly'.*open_up, close"):
        machine.fire("fly")
    assert machine.state == "closed"
    assert not machine.can("fly")


def test_a_guard_that_does_not_hold_refuses_and_changes_nothing() -> None:
    machine = StateMachine(door_table(), "locked")
    with pytest.raises(IllegalTransition, match=r"needs 'has_key'.*no facts"):
        machine.fire("unlock")
    with pytest.raises(IllegalTransition, match=r"needs 'has_key'.*'wrong'"):
        machine.fire("unlock", "wrong")
    assert machine.state == "locked"
    assert machine.fire("unlock", "open sesame") == ("locked", "closed")


def test_can_and_allowed_follow_the_table_and_the_guards() -> None:
    machine = StateMachine(door_table(), "locked")
    assert machine.allowed() == ("demolish",)
    assert machine.allowed("open sesame") == ("unlock", "demolish")
    assert machine.can("unlock", "open sesame")
    assert not machine.can("unlock")
    assert not machine.can("open_up")


def test_a_final_state_allows_nothing() -> None:
    machine = StateMachine(door_table(), "gone")
    assert machine.is_final
    assert machine.allowed("open sesame") == ()
    with pytest.raises(IllegalTransition, match="'gone' is final"):
        machine.fire("close")


def test_restore_builds_the_state_without_running_anything() -> None:
    calls.clear()
    machine = door_table().restore("locked")
    assert machine.state == "locked"
    assert calls == []  # not even a guard is consulted to restore


def test_restoring_an_unknown_state_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown state 'ajar'"):
        StateMachine(door_table(), "ajar")


def test_machines_of_one_table_are_independent() -> None:
    table = door_table()
    first, second = StateMachine(table), StateMachine(table)
    first.fire("lock")
    assert (first.state, second.state) == ("locked", "closed")


def test_a_table_builds_its_transitions_machine_once_for_all_its_machines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.machine

    built: list[object] = []

    class Counting(engine.machine.Machine):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine.machine, "Machine", Counting)
    table = door_table()
    for _ in range(3):
        machine = StateMachine(table)
        machine.fire("lock")
        machine.fire("unlock", "open sesame")
    assert len(built) == 1


def test_table_queries() -> None:
    table = door_table()
    assert table.triggers == ("open_up", "close", "lock", "unlock", "demolish")
    assert table.trigger_for("locked", "closed") == "unlock"
    assert table.trigger_for("open", "locked") is None
    assert ("closed", "gone") in table.pairs()
    assert reachable(table) == frozenset(table.states)
    assert reachable(table, "gone") == {"gone"}


def test_mermaid_draws_every_edge_from_the_table() -> None:
    table = door_table()
    text = StateMachine(table).mermaid()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> closed" in lines
    assert "    gone --> [*]" in lines
    for edge in table.edges:
        label = f"{edge.trigger} [{edge.guard}]" if edge.guard else edge.trigger
        for source in edge.sources:
            assert f"    {source} --> {edge.dest}: {label}" in lines
    assert len(lines) == 1 + 1 + sum(len(e.sources) for e in table.edges) + 1


@pytest.mark.parametrize(
    ("edges", "problem"),
    [
        ((Edge("go", ("a",), "b"), Edge("go", ("a",), "c")), "defined twice from 'a'"),
        ((Edge("go", ("a",), "b"), Edge("again", ("a",), "b")), "two edges from 'a' to 'b'"),
        ((Edge("go", ("a",), "nowhere"),), "destination 'nowhere' is not a state"),
        ((Edge("go", ("a",), "b", "magic"),), "guard 'magic' has no predicate"),
        ((Edge("back", ("c",), "a"),), "leaves final state 'c'"),
        ((Edge("trigger", ("a",), "b"),), "reserved"),
        ((Edge("to_b", ("a",), "b"),), "reserved"),
    ],
)
def test_an_inconsistent_table_is_refused(edges: tuple[Edge, ...], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Table(name="t", states=("a", "b", "c"), initial="a", final=frozenset({"c"}), edges=edges)


def test_can_says_what_fire_does_for_every_state_trigger_and_facts() -> None:
    """``can`` reads the table and the guards without building the ``transitions``
    Machine; ``fire`` applies the move through it. They must agree everywhere."""
    from engine.phases import PHASE_TABLE, PhaseFacts
    from engine.tasks import TASK_TABLE

    phase_facts = [
        None,
        PhaseFacts(),
        *(PhaseFacts(**{f: 1}) for f in PhaseFacts.__struct_fields__),
    ]
    from engine.tasks import Attempts

    task_facts = [None, *(Attempts(attempts=n, max_attempts=2) for n in range(4))]
    for table, facts_list in ((PHASE_TABLE, phase_facts), (TASK_TABLE, task_facts)):
        for state in table.states:
            for trigger in table.triggers:
                for facts in facts_list:
                    machine = StateMachine(table, state)
                    expected = machine.can(trigger, facts)
                    try:
                        machine.fire(trigger, facts)
                        fired = True
                    except IllegalTransition:
                        fired = False
                    assert expected == fired, (table.name, state, trigger, facts)
