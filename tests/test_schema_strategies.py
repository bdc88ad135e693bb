"""The hypothesis strategies shipped in ``events.strategies``: they reach every
event type (also one added later), draw JSON-exact values, and ``run_events``
builds runs whose ids and phases link up the way an engine's do."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

import events.strategies as strategies
from events import (
    EVENT_TYPES,
    Event,
    MemoryEventStore,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunRewound,
    RunStarted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
)
from events.strategies import any_event, event_of_type, run_events, structs_of

# find() without shrinking (we need an example, not the smallest one), derandomized
# so that "no example" can only mean the strategy cannot draw it
NO_DB = settings(database=None, max_examples=2000, phases=[Phase.generate], derandomize=True)


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_any_event_reaches_every_type(type_name: str) -> None:
    cls = EVENT_TYPES[type_name]

    found = find(any_event(), lambda e: isinstance(e, cls), settings=NO_DB)

    assert found.type_name() == type_name


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_each_type_strategy_draws_only_its_type(type_name: str) -> None:
    @given(event_of_type(type_name))
    def only_this_type(event: Event) -> None:
        assert type(event) is EVENT_TYPES[type_name]

    only_this_type()


def test_named_strategies_exist_only_for_real_types() -> None:
    assert set(strategies.NAMED) <= set(EVENT_TYPES)


class Probe(Event, frozen=True, kw_only=True, tag="test.probe"):
    """An event type that exists only in this test."""

    note: str
    count: int = 0
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = {}  # noqa: RUF012 - msgspec copies mutable defaults


def test_a_newly_added_type_is_covered_without_touching_the_strategies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(EVENT_TYPES, "test.probe", Probe)

    found = find(any_event(), lambda e: isinstance(e, Probe), settings=NO_DB)

    assert isinstance(found, Probe)
    derived = find(event_of_type("test.probe"), lambda e: e.count != 0, settings=NO_DB)
    assert isinstance(derived, Probe)


def test_overriding_a_field_that_does_not_exist_is_an_error() -> None:
    with pytest.raises(TypeError, match="no field"):
        structs_of(TaskAdded, titel=st.just("typo"))


def test_overrides_replace_the_field_strategy() -> None:
    @given(structs_of(TaskAdded, priority=st.just(3), title=st.just("fixed")))
    def overridden(event: TaskAdded) -> None:
        assert (event.priority, event.title) == (3, "fixed")

    overridden()


def test_dicts_with_non_string_keys_are_refused() -> None:
    with pytest.raises(TypeError, match="string keys"):
        strategies.for_annotation(dict[int, str])


# -- run_events -------------------------------------------------------------------------------


class Linked:
    """A tiny fold that checks what ``run_events`` promises, rewinds included."""

    def __init__(self) -> None:
        self.states: list[tuple[str, frozenset[str], dict[str, str | None]]] = [
            (strategies.INITIAL_PHASE, frozenset(), {}),
        ]

    def check(self, events: list[Event]) -> None:
        assert isinstance(events[0], RunStarted)
        assert not any(isinstance(e, RunStarted) for e in events[1:])
        assert not any(isinstance(e, RunFinished) for e in events[:-1])
        for index, event in enumerate(events):
            phase, tasks, files = self.states[-1]
            previous = events[index - 1] if index else None
            if isinstance(event, TaskAdded):
                assert event.task_id not in tasks
                assert set(event.dependencies) <= tasks
                tasks = tasks | {event.task_id}
            elif isinstance(event, TaskUpdated):
                assert event.task_id in tasks
            elif isinstance(event, PhaseChanged):
                assert event.from_phase == phase != event.to_phase
                phase = event.to_phase
            elif isinstance(event, ModelResponded | ModelFailed):
                assert isinstance(previous, ModelRequested)
                assert previous.call_id == event.call_id
            elif isinstance(event, ToolExecuted):
                assert isinstance(previous, ToolRequested)
                assert (previous.call_id, previous.tool) == (event.call_id, event.tool)
                files = dict(files)
                for change in event.files_changed:
                    assert change.before == files.get(change.path)
                    files[change.path] = change.after
                assert event.ok or not event.files_changed
            elif isinstance(event, RunRewound):
                assert 1 <= event.to_version <= index  # an earlier version of this run
                phase, tasks, files = self.states[event.to_version]
            self.states.append((phase, tasks, files))


@given(run_events(rewinds=True, max_steps=20))
def test_run_events_link_ids_phases_and_files(events: list[Event]) -> None:
    Linked().check(events)


@given(run_events())
def test_run_events_has_no_rewinds_unless_asked(events: list[Event]) -> None:
    assert not any(isinstance(e, RunRewound) for e in events)


@given(run_events(finished=True), run_events(finished=False))
def test_run_events_finishes_when_told(closed: list[Event], open_run: list[Event]) -> None:
    assert isinstance(closed[-1], RunFinished)
    assert not any(isinstance(e, RunFinished) for e in open_run)


def test_run_events_can_rewind() -> None:
    found = find(
        run_events(rewinds=True),
        lambda events: any(isinstance(e, RunRewound) for e in events),
        settings=NO_DB,
    )

    assert any(isinstance(e, RunRewound) for e in found)


@given(run_events(rewinds=True))
def test_run_events_store_and_read_back_unchanged(events: list[Event]) -> None:
    store = MemoryEventStore()
    store.append("run-1", events, 0)

    assert [r.data for r in store.read("run-1")] == events
    assert store.verify("run-1").ok
