"""The run's state as one pure fold over its events, rewinds and forks included.

``apply(state, event) -> state`` folds one recorded event into a ``RunState`` that
holds both projections. It understands:

- ``run.rewound(to_version=V)``: the state becomes the state at version V — the
  fold of the run's own first V events — and later events continue from there.
  Nothing is forgotten: the rewound events stay in the log, the rewind is itself
  an event, and ``project(upto=V')`` still gives any past state.
- ``run.forked(parent, at)``: a fork starts from its parent's state at the fork
  point. ``project`` reads that state from the store and passes it as the state
  the fork's first event is applied to; the fold keeps it as ``base`` so a rewind
  inside the fork can return to it.

To answer a rewind without I/O the state keeps the events it has folded, in an
append-only sequence shared between versions (O(1) per event).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from events.errors import RunNotFound
from events.schema import RunForked, RunRewound
from events.store import EventStore, RecordedEvent
from projections.orchestration import OrchestrationState, apply_orchestration
from projections.pipeline import PipelineState, apply_pipeline
from projections.sequence import Appended

replace = msgspec.structs.replace


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """Both projections of one run at one version."""

    run_id: str = ""
    version: int = 0
    pipeline: PipelineState = msgspec.field(default_factory=PipelineState)
    orchestration: OrchestrationState = msgspec.field(default_factory=OrchestrationState)
    history: Appended[RecordedEvent] = msgspec.field(default_factory=Appended)
    """Every event folded into this state, in order (rewinds re-fold a prefix)."""
    base: RunState | None = None
    """The state this run started from: its parent's, for a fork."""


EMPTY = RunState()


def apply(state: RunState, event: RecordedEvent) -> RunState:
    """The state after one more event."""
    data = event.data
    if isinstance(data, RunRewound):
        return _rewound(state, event, data)
    if isinstance(data, RunForked):
        # The state given is the parent's at the fork point: it becomes the base.
        pipeline = replace(apply_pipeline(state.pipeline, data, event.version), run_id=event.run_id)
        return RunState(
            run_id=event.run_id,
            version=event.version,
            pipeline=pipeline,
            orchestration=state.orchestration,
            history=Appended([event]),
            base=state,
        )
    pipeline = apply_pipeline(state.pipeline, data, event.version)
    if not pipeline.run_id:
        pipeline = replace(pipeline, run_id=event.run_id)
    return RunState(
        run_id=event.run_id,
        version=event.version,
        pipeline=pipeline,
        orchestration=apply_orchestration(state.orchestration, data, event.version),
        history=state.history.append(event),
        base=state.base,
    )


def _rewound(state: RunState, event: RecordedEvent, data: RunRewound) -> RunState:
    start = state.base if state.base is not None else EMPTY
    target = start
    for earlier in state.history:
        if earlier.version > data.to_version:
            break
        target = apply(target, earlier)
    return RunState(
        run_id=event.run_id,
        version=event.version,
        pipeline=replace(target.pipeline, run_id=event.run_id),
        orchestration=target.orchestration,
        history=state.history.append(event),
        base=state.base,
    )


def fold(events: Iterable[RecordedEvent], state: RunState = EMPTY) -> RunState:
    """Fold events into ``state`` (the empty state by default)."""
    for event in events:
        state = apply(state, event)
    return state


def project(store: EventStore, run_id: str, upto: int | None = None) -> RunState:
    """The state of ``run_id`` at version ``upto`` (the latest by default).

    Raises ``RunNotFound`` when the run has no events. A fork starts from its
    parent's state at the fork point, read from the same store.
    """
    events = store.read(run_id, upto=upto)
    first = next(events, None)
    if first is None:
        if upto is not None and upto <= 0 and store.last_version(run_id) > 0:
            return RunState(run_id=run_id)
        raise RunNotFound(run_id)
    start = EMPTY
    if isinstance(first.data, RunForked):
        start = project(store, first.data.parent_run, upto=first.data.at_version)
    return fold(events, apply(start, first))
