"""The arbiter's validation, memory and cache, without a whole run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.agent.arbiter import (
    ACTIONS,
    SCHEMAS,
    Refused,
    _json_text,
    only_move,
    prompt,
    recent_decisions,
    to_step,
)
from engine.agent.coordinator import Step
from engine.agent.coordinator import decide as rules_decide
from engine.agent.runlog import RunLog
from engine.config import Limits, load_settings
from engine.machines.phases import PHASES
from engine.model.client import ModelClient
from engine.model.recording import RecordingModel
from engine.testing import Reply, ScriptedModelServer
from events import MemoryEventStore, ModelResponded, RunStarted
from events.schema import Message
from events.store import RecordedEvent
from events.strategies import run_events
from projections import EMPTY, RunState, apply
from projections.pipeline import FileState, PipelineState, TaskState
from projections.sequence import Appended, PersistentMap


def test_the_arbiter_has_exactly_the_seven_actions_of_the_issue() -> None:
    assert set(ACTIONS) == {
        "consult_coding_specialist",
        "consult_reasoning_specialist",
        "consult_analysis_specialist",
        "change_phase",
        "continue_current_phase",
        "request_user_input",
        "finish_run",
    }
    assert len(SCHEMAS) == 7


def _state() -> PipelineState:
    tasks = PersistentMap({"t1": TaskState(task_id="t1", title="x")})
    return PipelineState(goal="g", tasks=tasks, phase="planning")


def test_unknown_and_incomplete_actions_are_refused() -> None:
    rules = Step(action="code", task_id="t1", reason="ready")
    with pytest.raises(Refused, match="unknown action"):
        to_step("dance", {}, _state(), rules)
    with pytest.raises(Refused, match="needs the parameter"):
        to_step("request_user_input", {}, _state(), rules)
    with pytest.raises(Refused, match="refuses"):
        to_step("change_phase", {"phase": "qa", "reason": "r"}, _state(), rules)


def test_a_valid_consultation_becomes_the_task_work() -> None:
    rules = Step(action="code", task_id="t1", reason="ready")
    step = to_step("consult_coding_specialist", {"reason": "go"}, _state(), rules)
    assert (step.action, step.task_id) == ("code", "t1")


def test_bookkeeping_and_the_first_plan_are_not_asked() -> None:
    assert only_move(Step(action="plan", reason="r"), PipelineState())
    assert only_move(Step(action="set_status", task_id="t1", status="new", reason="r"), _state())
    assert not only_move(Step(action="code", task_id="t1", reason="r"), _state())


def test_an_identical_temperature_0_request_is_answered_from_the_log(tmp_path: Path) -> None:
    with ScriptedModelServer([Reply.text("hello"), Reply.text("other")]) as server:
        settings = load_settings(env={}, overrides={"model_url": server.url, "model": "m"})
        roles = settings.models
        roles = msgspec.structs.replace(
            roles, arbiter=msgspec.structs.replace(roles.arbiter, temperature=0.0)
        )
        store = _ReadCounting()
        log = RunLog.create(store, "r", RunStarted(goal="g", workspace=str(tmp_path)))
        with httpx.Client() as http:
            model = RecordingModel(ModelClient(http), log, roles)
            messages = [Message(role="user", content="hi")]
            first = model.chat("arbiter", messages, conversation="a")
            second = model.chat("arbiter", messages, conversation="b")
        assert len(server.chat_requests) == 1
    assert first.content == second.content == "hello"
    assert store.ranges == [(2, 3)], "the copy reads the one answer it copies, not the run"
    responded = [e.data for e in log.store.read("r") if isinstance(e.data, ModelResponded)]
    assert responded[1].cached_from == responded[0].call_id
    usage = log.orchestration.usage_by_role["arbiter"]
    assert (usage.calls, usage.cached) == (len(server.chat_requests), 1), (
        "usage counts what the server answered; answers from the log are counted apart"
    )


class _ReadCounting(MemoryEventStore):
    """A log that notes which versions each ``read`` asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[tuple[int, int | None]] = []

    def read(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[RecordedEvent]:
        self.ranges.append((after, upto))
        return super().read(run_id, after=after, upto=upto)


def _fresh(state: RunState) -> RunState:
    """``state`` over collections of its own: nothing worked out for it yet."""
    p, o = state.pipeline, state.orchestration
    return msgspec.structs.replace(
        state,
        pipeline=msgspec.structs.replace(
            p, tasks=PersistentMap(p.tasks.items()), files=PersistentMap(p.files.items())
        ),
        orchestration=msgspec.structs.replace(
            o, decisions=Appended(o.decisions), consultations=Appended(o.consultations)
        ),
    )


ANSWERS = [
    ("consult_coding_specialist", {"reason": "r"}),
    ("consult_analysis_specialist", {"reason": "r"}),
    ("continue_current_phase", {"reason": "r"}),
    ("finish_run", {"reason": "r"}),
    *[("change_phase", {"phase": phase, "reason": "r"}) for phase in PHASES],
]


def _outcome(name: str, args: dict[str, str], state: RunState, rules: Step) -> Step | str:
    try:
        return to_step(name, args, state.pipeline, rules)
    except Refused as e:
        return str(e)


def _same_as_fresh(state: RunState, limits: Limits) -> None:
    again = _fresh(state)
    rules = rules_decide(state.pipeline, limits)
    assert rules == rules_decide(again.pipeline, limits)
    assert prompt(state, rules, limits) == prompt(again, rules, limits)
    assert recent_decisions(state, 2) == recent_decisions(again, 2)
    for name, args in ANSWERS:
        assert _outcome(name, args, state, rules) == _outcome(name, args, again, rules)


@given(run_events(rewinds=True, max_steps=30), st.randoms(use_true_random=False))
def test_what_the_arbiter_remembers_between_steps_never_changes_what_it_decides(
    events: list[Any], rnd: Any
) -> None:
    # The prompt, the rules' step and the validation of every kind of answer, for the
    # states a run goes through (each made from the one before, so that what was
    # worked out for a task or a decision is reused), equal those of a fresh state;
    # and again in any order, rewinds' branches among them.
    recorded = MemoryEventStore().append("r1", events, 0)
    limits = Limits(max_attempts_per_task=2)
    states = []
    state = EMPTY
    for event in recorded:
        state = apply(state, event)
        states.append(state)
        _same_as_fresh(state, limits)
    rnd.shuffle(states)
    for state in states:
        _same_as_fresh(state, limits)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON | st.dictionaries(st.integers(), st.text(), max_size=3))
def test_the_arbiters_json_is_the_encoders_with_sorted_keys(value: Any) -> None:
    assert _json_text(value) == json.dumps(value, sort_keys=True)


def test_a_prompt_lists_at_most_forty_tasks_and_files() -> None:
    """Every task and every file went into the arbiter's prompt and the reasoning
    specialist's opening: over 4,000 steps the arbiter's grew to 100,000 characters,
    past its context window, where fitting could only drop what came after it. Past
    40, the tasks not settled are listed, then how many more there are; a run within
    40 is asked as before."""
    from engine.agent.prompts import opening

    def state(count: int, settled: int) -> RunState:
        tasks = PersistentMap(
            {
                f"t{n}": TaskState(
                    task_id=f"t{n}", title=f"task {n}", status="completed" if n < settled else "new"
                )
                for n in range(count)
            }
        )
        files = PersistentMap(
            {
                f"f{n:03}.py": FileState(path=f"f{n:03}.py", digest="d", size=1, changed_at=1)
                for n in range(count)
            }
        )
        return RunState(run_id="r", pipeline=PipelineState(goal="g", tasks=tasks, files=files))

    rules = Step(action="reason", reason="r")
    small = prompt(state(40, 0), rules, Limits())[1].content
    assert "- t39 [new]" in small and "more tasks not listed" not in small
    big = prompt(state(300, 250), rules, Limits())[1].content
    assert "- t250 [new]" in big and "- t249 [completed]" not in big
    assert "(260 more tasks not listed: 250 completed, 10 new)" in big
    assert "(and 10 more)" in big  # the work that can be done now: 50 tasks to code
    reasoning = opening("reason", state(300, 250).pipeline, None)[1].content
    assert (
        "t250 [new]" in reasoning
        and "(260 more tasks not listed: 250 completed, 10 new)" in reasoning
    )
    assert "f039.py (and 260 more files)" in reasoning and "f040.py" not in reasoning
    assert len(reasoning) < 5_000 and len(big) < 10_000
