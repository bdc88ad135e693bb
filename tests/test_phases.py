"""The phase machine: every pair of phases against the table, guards, events, and a
hypothesis state machine checking that the emitted events project to its phase."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.errors import IllegalTransition
from engine.machines.machine import reachable
from engine.machines.phases import (
    PHASE_TABLE,
    PHASES,
    START,
    TERMINAL,
    PhaseFacts,
    PhaseMachine,
    mermaid,
    phase_changed,
    phase_changed_to,
    trigger_for,
)
from events.schema import PhaseChanged
from projections.pipeline import PipelineState, apply_pipeline

LIVE = (START, *PHASES)

# The specification, written out by hand so that a change to the table must be a
# change to this test too: (source, dest) -> (trigger, guard).
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    ("start", "planning"): ("plan", ""),
    ("project_planning", "planning"): ("plan", ""),
    ("investigation", "planning"): ("plan", ""),
    ("planning", "project_planning"): ("project_plan", ""),
    ("documentation", "project_planning"): ("project_plan", ""),
    ("planning", "investigation"): ("investigate", ""),
    ("coding", "investigation"): ("investigate", ""),
    ("debugging", "investigation"): ("investigate", ""),
    ("planning", "coding"): ("code", "has_ready_task"),
    ("qa", "coding"): ("code", "has_ready_task"),
    ("debugging", "coding"): ("code", "has_ready_task"),
    ("investigation", "coding"): ("code", "has_ready_task"),
    ("coding", "qa"): ("review", "has_qa_pending"),
    ("debugging", "qa"): ("review", "has_qa_pending"),
    ("qa", "debugging"): ("debug", "has_qa_failed"),
    ("investigation", "debugging"): ("debug", "has_qa_failed"),
    ("coding", "documentation"): ("document", "all_tasks_done"),
    ("qa", "documentation"): ("document", "all_tasks_done"),
    ("debugging", "documentation"): ("document", "all_tasks_done"),
    ("documentation", "completed"): ("complete", "all_tasks_done"),
    **{(phase, "failed"): ("fail", "") for phase in LIVE},
    **{(phase, "stopped"): ("stop", "") for phase in LIVE},
}

# Facts under which each guard holds.
HOLDS: dict[str, PhaseFacts | None] = {
    "": None,
    "has_ready_task": PhaseFacts(total=2, open=2, ready=1),
    "has_qa_pending": PhaseFacts(total=2, open=1, qa_pending=1),
    "has_qa_failed": PhaseFacts(total=2, open=1, qa_failed=1),
    "all_tasks_done": PhaseFacts(total=2, open=0),
}
FACT_VARIANTS = (None, PhaseFacts(), *(f for f in HOLDS.values() if f is not None))

ALL_PAIRS = list(itertools.product(PHASE_TABLE.states, repeat=2))


def test_the_phases_and_terminal_states_are_the_agreed_ones() -> None:
    assert set(PHASES) == {
        "planning",
        "coding",
        "qa",
        "debugging",
        "documentation",
        "project_planning",
        "investigation",
    }
    assert set(TERMINAL) == {"completed", "failed", "stopped"}
    assert set(PHASE_TABLE.states) == {START, *PHASES, *TERMINAL}
    assert PhaseMachine().state == START


@pytest.mark.parametrize(("source", "dest"), ALL_PAIRS, ids=[f"{s}->{d}" for s, d in ALL_PAIRS])
def test_every_pair_of_phases_is_allowed_or_refused_as_specified(source: str, dest: str) -> None:
    expected = EXPECTED.get((source, dest))
    assert trigger_for(source, dest) == (expected[0] if expected else None)
    machine = PhaseMachine.restore(source)
    if expected is None:
        for facts in FACT_VARIANTS:
            with pytest.raises(IllegalTransition):
                phase_changed_to(machine, dest, facts=facts)
            assert machine.state == source
        return
    trigger, guard = expected
    if guard:  # without the facts the guard needs, the move is refused
        with pytest.raises(IllegalTransition, match=guard):
            machine.fire(trigger, PhaseFacts())
        assert machine.state == source
    assert machine.fire(trigger, HOLDS[guard]) == (source, dest)


def test_no_trigger_under_any_facts_makes_an_unspecified_move() -> None:
    for source, trigger, facts in itertools.product(
        PHASE_TABLE.states, PHASE_TABLE.triggers, FACT_VARIANTS
    ):
        machine = PhaseMachine.restore(source)
        if machine.can(trigger, facts):
            moved = machine.fire(trigger, facts)
            assert EXPECTED[moved][0] == trigger
        else:
            with pytest.raises(IllegalTransition):
                machine.fire(trigger, facts)
            assert machine.state == source


def test_every_phase_is_reachable_and_every_live_phase_can_end() -> None:
    assert reachable(PHASE_TABLE) == frozenset(PHASE_TABLE.states)
    for phase in LIVE:
        assert {"completed", "failed", "stopped"} <= reachable(PHASE_TABLE, phase)


def test_terminal_phases_allow_nothing() -> None:
    for phase in TERMINAL:
        machine = PhaseMachine.restore(phase)
        assert all(machine.allowed(f) == () for f in FACT_VARIANTS)


def test_a_qa_failure_goes_to_debugging_and_back_to_qa() -> None:
    machine = PhaseMachine.restore("qa")
    phase_changed(machine, "debug", facts=PhaseFacts(total=1, open=1, qa_failed=1))
    assert machine.state == "debugging"
    phase_changed(machine, "investigate")
    phase_changed(machine, "debug", facts=PhaseFacts(total=1, open=1, qa_failed=1))
    phase_changed(machine, "review", facts=PhaseFacts(total=1, open=1, qa_pending=1))
    assert machine.state == "qa"


def test_the_run_cannot_complete_with_open_tasks() -> None:
    machine = PhaseMachine.restore("documentation")
    with pytest.raises(IllegalTransition, match="all_tasks_done"):
        machine.fire("complete", PhaseFacts(total=3, open=1))
    with pytest.raises(IllegalTransition, match="all_tasks_done"):
        machine.fire("complete", PhaseFacts())  # no tasks at all is not "all done"
    assert machine.state == "documentation"


def test_facts_come_from_projected_tasks() -> None:
    from projections.pipeline import TaskState

    tasks = {
        "t1": TaskState(task_id="t1", title="a", status="completed"),
        "t2": TaskState(task_id="t2", title="b", status="qa_pending", dependencies=("t1",)),
        "t3": TaskState(task_id="t3", title="c", status="new", dependencies=("t1",)),
        "t4": TaskState(task_id="t4", title="d", status="new", dependencies=("t2",)),
        "t5": TaskState(task_id="t5", title="e", status="skipped"),
    }
    facts = PhaseFacts.from_tasks(tasks)
    assert facts == PhaseFacts(total=5, open=3, ready=1, qa_pending=1, qa_failed=0)
    assert PhaseFacts.from_tasks(tasks.values()) == facts


def test_phase_changed_returns_the_event_to_append() -> None:
    machine = PhaseMachine()
    event = phase_changed(machine, "plan", reason="no tasks yet", decided_by="arbiter")
    assert event == PhaseChanged(
        trigger="plan",
        from_phase="start",
        to_phase="planning",
        reason="no tasks yet",
        decided_by="arbiter",
    )


def test_an_arbiter_naming_an_unreachable_phase_gets_a_clear_refusal() -> None:
    machine = PhaseMachine.restore("planning")
    with pytest.raises(IllegalTransition, match=r"no move from 'planning' to 'qa'.*coding"):
        phase_changed_to(machine, "qa")
    with pytest.raises(IllegalTransition, match="'flying' \\(not a phase\\)"):
        phase_changed_to(machine, "flying")
    assert machine.state == "planning"


def test_mermaid_contains_every_transition() -> None:
    lines = mermaid().splitlines()
    assert lines[0] == "stateDiagram-v2"
    for (source, dest), (trigger, guard) in EXPECTED.items():
        label = f"{trigger} [{guard}]" if guard else trigger
        assert f"    {source} --> {dest}: {label}" in lines
    arrows = [line for line in lines if " --> " in line and "[*]" not in line]
    assert len(arrows) == len(EXPECTED)


facts_strategy = st.one_of(
    st.none(),
    st.builds(
        PhaseFacts,
        total=st.integers(0, 3),
        open=st.integers(0, 3),
        ready=st.integers(0, 2),
        qa_pending=st.integers(0, 2),
        qa_failed=st.integers(0, 2),
    ),
)


class PhaseLog(RuleBasedStateMachine):
    """Random triggers with random facts; the log of emitted events must always
    project to the machine's phase, and a machine restored from it must behave the
    same."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = PhaseMachine()
        self.events: list[PhaseChanged] = []

    def projected(self) -> str:
        state = PipelineState()
        for version, event in enumerate(self.events, 1):
            state = apply_pipeline(state, event, version)
        return state.phase

    @rule(trigger=st.sampled_from(PHASE_TABLE.triggers), facts=facts_strategy)
    def fire(self, trigger: str, facts: PhaseFacts | None) -> None:
        before = self.machine.state
        if self.machine.can(trigger, facts):
            self.events.append(phase_changed(self.machine, trigger, "random", "test", facts))
        else:
            with pytest.raises(IllegalTransition):
                phase_changed(self.machine, trigger, "random", "test", facts)
            assert self.machine.state == before

    @rule(phase=st.sampled_from(PHASE_TABLE.states), facts=facts_strategy)
    def change_to(self, phase: str, facts: PhaseFacts | None) -> None:
        before = self.machine.state
        try:
            self.events.append(phase_changed_to(self.machine, phase, facts=facts))
        except IllegalTransition:
            assert self.machine.state == before

    @rule()
    def reload(self) -> None:
        # What the engine does after a restart: the log is the only memory.
        self.machine = PhaseMachine.restore(self.projected())

    @invariant()
    def the_log_projects_to_the_machine_phase(self) -> None:
        assert self.projected() == self.machine.state

    @invariant()
    def a_restored_machine_allows_the_same_triggers(self) -> None:
        restored = PhaseMachine.restore(self.projected())
        for facts in FACT_VARIANTS:
            assert restored.allowed(facts) == self.machine.allowed(facts)

    @invariant()
    def every_event_is_a_specified_move(self) -> None:
        for event in self.events:
            assert EXPECTED[event.from_phase, event.to_phase][0] == event.trigger


TestPhaseLog = PhaseLog.TestCase
