"""What holds for every run the shipped strategies can draw: the fold's invariants.

Runs come from ``events.strategies.run_events`` and are appended to an in-memory
store, so ``project`` reads them back through the typed decoder as it would from
SQLite. Example counts come from the hypothesis profiles in ``conftest.py``.
"""

from __future__ import annotations

from unittest.mock import patch

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    ArbiterDecided,
    Event,
    MemoryEventStore,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunForked,
    RunRewound,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
)
from events.store import RecordedEvent
from events.strategies import run_events
from projections import EMPTY, RunState, apply, apply_orchestration, apply_pipeline, fold, project
from projections import orchestration as orchestration_steps
from projections import pipeline as pipeline_steps


def logged(events: list[Event], run_id: str = "r1") -> tuple[MemoryEventStore, list[RecordedEvent]]:
    store = MemoryEventStore()
    return store, store.append(run_id, events, 0)


def one_by_one(recorded: list[RecordedEvent], state: RunState = EMPTY) -> list[RunState]:
    """The state after each event, ``apply`` after ``apply``."""
    states = []
    for event in recorded:
        state = apply(state, event)
        states.append(state)
    return states


@given(run_events(rewinds=True))
def test_folding_at_once_one_by_one_or_resumed_anywhere_gives_the_same_state(
    events: list[Event],
) -> None:
    store, recorded = logged(events)

    at_once = fold(recorded)
    stepwise = one_by_one(recorded)

    assert stepwise[-1] == at_once
    for split in range(len(recorded) + 1):
        head = fold(recorded[:split])
        assert head == (stepwise[split - 1] if split else EMPTY)
        assert fold(recorded[split:], head) == at_once
        if split:
            # a state from the log, whose history stays there, goes on the same way:
            # a later rewind reads what it needs back from the log
            projected = project(store, "r1", upto=split)
            assert fold(recorded[split:], projected) == at_once
            assert ([projected, *one_by_one(recorded[split:], projected)])[-1] == at_once


@given(run_events(rewinds=True))
def test_the_direct_steps_of_model_and_tool_calls_make_what_their_builder_steps_make(
    events: list[Event],
) -> None:
    _, recorded = logged(events)
    direct = one_by_one(recorded)
    assert pipeline_steps._PERSISTENT_STEPS and orchestration_steps._PERSISTENT_STEPS
    with (
        patch.dict(pipeline_steps._PERSISTENT_STEPS, clear=True),
        patch.dict(orchestration_steps._PERSISTENT_STEPS, clear=True),
    ):
        built = one_by_one(recorded)

    for mine, theirs in zip(direct, built, strict=True):
        assert (mine.pipeline, mine.orchestration) == (theirs.pipeline, theirs.orchestration)


@given(run_events(rewinds=True))
def test_the_state_at_version_n_is_the_fold_of_the_first_n_events(events: list[Event]) -> None:
    store, recorded = logged(events)

    for version in range(1, len(recorded) + 1):
        assert project(store, "r1", upto=version) == fold(recorded[:version])
    assert project(store, "r1") == fold(recorded)


@given(run_events(rewinds=True, max_steps=16))
def test_after_a_rewind_the_run_is_at_its_target_version_and_goes_on_from_there(
    events: list[Event],
) -> None:
    store, recorded = logged(events)
    states = one_by_one(recorded)

    for index, event in enumerate(recorded):
        if not isinstance(event.data, RunRewound):
            continue
        target = project(store, "r1", upto=event.data.to_version)
        assert (states[index].pipeline, states[index].orchestration) == (
            target.pipeline,
            target.orchestration,
        )
        # the following events continue from the target's state (up to the next rewind)
        pipeline, orchestration = target.pipeline, target.orchestration
        for later in recorded[index + 1 :]:
            if isinstance(later.data, RunRewound):
                break
            pipeline = apply_pipeline(pipeline, later.data, later.version)
            orchestration = apply_orchestration(orchestration, later.data, later.version)
            reached = states[later.version - 1]
            assert (reached.pipeline, reached.orchestration) == (pipeline, orchestration)
        assert len(states[index].history) == index + 1  # nothing is forgotten


@given(run_events(rewinds=True), run_events(rewinds=True), st.data())
def test_a_fork_is_its_parent_at_the_fork_point_plus_its_own_events(
    parent_events: list[Event], own_events: list[Event], data: st.DataObject
) -> None:
    store, parent = logged(parent_events, "parent")
    at = data.draw(st.integers(1, len(parent)), label="at")
    parent_before = project(store, "parent")
    forked = RunForked(parent_run="parent", at_version=at, workspace="/work/fork")
    # the fork's first event takes the place of the drawn run's run.started, so
    # the drawn rewinds still point at versions of the fork
    fork = store.append("fork", [forked, *own_events[1:]], 0)

    parent_at = project(store, "parent", upto=at)
    projected = project(store, "fork")
    first = project(store, "fork", upto=1)

    assert projected == fold(fork, parent_at)
    assert first.orchestration == parent_at.orchestration
    assert first.pipeline == msgspec.structs.replace(
        parent_at.pipeline,
        run_id="fork",
        parent_run="parent",
        forked_at=at,
        workspace="/work/fork",
    )
    assert projected.base == parent_at
    assert project(store, "parent") == parent_before


@given(run_events(rewinds=False))
def test_usage_is_the_sum_of_the_recorded_usage(events: list[Event]) -> None:
    _, recorded = logged(events)
    requests = {e.call_id: e for e in events if isinstance(e, ModelRequested)}
    expected: dict[tuple[str, str], list[float]] = {}
    for event in events:
        if isinstance(event, ModelResponded | ModelFailed):
            call = requests[event.call_id]
            for key in (("model", call.model), ("role", call.role)):
                totals = expected.setdefault(key, [0, 0, 0, 0, 0.0, 0])
                if isinstance(event, ModelFailed):
                    totals[1] += 1
                else:
                    # an answer taken from the log (cached_from) never reached a server
                    totals[5 if event.cached_from else 0] += 1
                    totals[2] += event.usage.prompt_tokens
                    totals[3] += event.usage.completion_tokens
                    totals[4] += event.duration_ms

    orchestration = fold(recorded).orchestration

    actual = {("model", k): u for k, u in orchestration.usage_by_model.items()}
    actual |= {("role", k): u for k, u in orchestration.usage_by_role.items()}
    assert set(actual) == set(expected)
    for key, (calls, failures, prompt, completion, duration, cached) in expected.items():
        usage = actual[key]
        assert (usage.calls, usage.cached, usage.failures) == (calls, cached, failures)
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
        assert usage.duration_ms == pytest.approx(duration)
    assert orchestration.total_tokens == sum(
        t[2] + t[3] for k, t in expected.items() if k[0] == "model"
    )


@given(run_events(rewinds=False, max_steps=20))
def test_steps_since_progress_counts_decisions_and_resets_on_task_and_file_changes(
    events: list[Event],
) -> None:
    _, recorded = logged(events)
    steps = since_progress = 0

    for event, state in zip(recorded, one_by_one(recorded), strict=True):
        data = event.data
        if isinstance(data, ArbiterDecided):
            steps += 1
            since_progress += 1
        elif isinstance(data, TaskAdded | TaskUpdated) or (
            isinstance(data, ToolExecuted) and data.files_changed
        ):
            since_progress = 0
        assert (state.pipeline.steps, state.pipeline.steps_since_progress) == (
            steps,
            since_progress,
        )


@given(
    run_events(rewinds=False, max_steps=8),
    st.lists(st.tuples(st.integers(1, 40), st.integers(-3, 60)), min_size=1, max_size=12),
)
def test_rewinds_to_any_version_even_to_rewinds_give_the_fold_of_the_events_in_effect(
    events: list[Event], rewinds: list[tuple[int, int]]
) -> None:
    """Rewinds anywhere in a run, to any version (below 0, past themselves, to
    another rewind): the state is the fold of the events in effect, as ``diff``
    finds them (a rewind to V takes back what was in effect at V, and to a version at
    or past itself, the one before it), however it is folded."""
    from engine.runs.diff import effective_events

    mixed: list[Event] = list(events)
    for place, target in rewinds:
        mixed.insert(min(place, len(mixed)), RunRewound(to_version=target))
    if isinstance(mixed[0], RunRewound):
        mixed.insert(0, events[0])
    store, recorded = logged(mixed)

    in_effect = fold(effective_events(store, "r1"))
    pipeline = msgspec.structs.replace(in_effect.pipeline, run_id="r1")  # none: nothing folded
    for state in (project(store, "r1"), fold(recorded), one_by_one(recorded)[-1]):
        assert (state.pipeline, state.orchestration) == (pipeline, in_effect.orchestration)


def test_a_run_of_rewinds_each_to_the_last_version_folds_each_event_a_few_times() -> None:
    """``autonomy rewind RUN --to <its last version>``, again and again: each rewind
    folded every one before it anew, so each cost twice the last (17 of them took
    minutes). Counted in fold steps, not timed: a few per rewind."""
    import importlib

    folding = importlib.import_module("projections.fold")

    rewinds = 18
    events: list[Event] = [TaskAdded(task_id="t1", title="x")]
    events += [RunRewound(to_version=v) for v in range(1, rewinds + 1)]
    steps = 0
    step = folding._step

    def counted(*args: object) -> object:
        nonlocal steps
        steps += 1
        return step(*args)  # type: ignore[arg-type]

    with patch.object(folding, "_step", counted):
        store, recorded = logged(events)
        states = [project(store, "r1"), fold(recorded), one_by_one(recorded)[-1]]

    assert all(list(s.pipeline.tasks) == ["t1"] for s in states)
    assert steps < 40 * rewinds, steps  # 2^18 before
