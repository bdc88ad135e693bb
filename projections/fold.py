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

To answer a rewind without I/O the state keeps the events it has folded
(``history``). ``project`` keeps each stored row's JSON text rather than the
decoded event: one untracked string, several times smaller than the decoded
object graph; only a rewind decodes the texts again.

Speed: ``apply`` makes persistent updates (one event, a few small allocations).
``fold`` and ``project`` fold many events into one private, transient builder
(plain dicts and lists, see ``projections.pipeline``) and freeze it once, so a
rebuild allocates no intermediate states at all. Both run the same steps, and
neither ever changes a state it was given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from events.codec import CURRENT
from events.errors import RunNotFound
from events.schema import EVENT_TYPES, Event, RunForked, RunRewound
from events.store import EventStore, Payload, RecordedEvent
from projections.orchestration import (
    ORCHESTRATION_STEPS,
    OrchestrationBuilder,
    OrchestrationState,
    apply_orchestration,
)
from projections.pipeline import PIPELINE_STEPS, PipelineBuilder, PipelineState, apply_pipeline
from projections.sequence import Appended, thaw_sequence

replace = msgspec.structs.replace


class Folded(msgspec.Struct, frozen=True, gc=False):
    """An event of a run's history with its version (see ``History``)."""

    version: int
    event: Event


History = Appended[Folded | str]
"""The events a state has folded, in order. An entry is a ``Folded``, or, for
rows read by ``project``, the row's JSON text: then its version is its index + 1
and it is at its type's current schema version (anything else is kept decoded),
so the tagged union alone decodes it back to the same event."""

_NO_HISTORY: History = Appended()
_EMPTY_PIPELINE = PipelineState()
_EMPTY_ORCHESTRATION = OrchestrationState()


class RunState(msgspec.Struct, frozen=True, kw_only=True, gc=False, eq=False):
    """Both projections of one run at one version.

    ``gc=False``: a state refers only to older, immutable values (its base, the
    shared history), so it can never be part of a reference cycle. Two states are
    equal when every field is, history compared by the events it holds (a text
    and the decoded event it stands for are the same entry).
    """

    run_id: str = ""
    version: int = 0
    pipeline: PipelineState = _EMPTY_PIPELINE
    orchestration: OrchestrationState = _EMPTY_ORCHESTRATION
    history: History = _NO_HISTORY
    """Every event folded into this state, in order (rewinds re-fold a prefix)."""
    base: RunState | None = None
    """The state this run started from: its parent's, for a fork."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunState):
            return NotImplemented
        return self is other or (
            self.run_id == other.run_id
            and self.version == other.version
            and self.pipeline == other.pipeline
            and self.orchestration == other.orchestration
            and self.base == other.base
            and _same_history(self.history, other.history)
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


def _same_history(mine: History, theirs: History) -> bool:
    if mine == theirs:
        return True
    if len(mine) != len(theirs):
        return False

    def decoded(index: int, entry: Folded | str) -> Folded:
        return Folded(index + 1, CURRENT.decode(entry)) if isinstance(entry, str) else entry

    return all(
        decoded(i, a) == decoded(i, b) for i, (a, b) in enumerate(zip(mine, theirs, strict=True))
    )


EMPTY = RunState()

_Steps = tuple[
    Callable[[PipelineBuilder, Any, int], None] | None,
    Callable[[OrchestrationBuilder, Any, int], None] | None,
]
_STEPS: dict[type[Event], _Steps] = {
    kind: (PIPELINE_STEPS.get(kind), ORCHESTRATION_STEPS.get(kind))
    for kind in (PIPELINE_STEPS.keys() | ORCHESTRATION_STEPS.keys()) - {RunForked}
}
"""Both steps of each ordinary event type; rewinds and forks are the fold's own."""


# -- one event, persistently ---------------------------------------------------------------


def apply(state: RunState, event: RecordedEvent) -> RunState:
    """The state after one more event."""
    return _apply(state, event.data, event.version, event.run_id, Folded(event.version, event.data))


def _apply(
    state: RunState, data: Event, version: int, run_id: str, entry: Folded | str
) -> RunState:
    kind = type(data)
    if kind is RunForked:
        return _forked(state, data, version, run_id, entry)
    if kind is RunRewound:
        assert isinstance(data, RunRewound)
        target = _refold(state.base, state.history, data.to_version, run_id)
        return RunState(
            run_id=run_id,
            version=version,
            pipeline=target.pipeline.freeze(),
            orchestration=target.orchestration.freeze(),
            history=state.history.append(entry),
            base=state.base,
        )
    pipeline = apply_pipeline(state.pipeline, data, version)
    if not pipeline.run_id:
        pipeline = replace(pipeline, run_id=run_id)
    return RunState(
        run_id=run_id,
        version=version,
        pipeline=pipeline,
        orchestration=apply_orchestration(state.orchestration, data, version),
        history=state.history.append(entry),
        base=state.base,
    )


def _forked(
    state: RunState, data: Event, version: int, run_id: str, entry: Folded | str
) -> RunState:
    # The state given is the parent's at the fork point: it becomes the base, and
    # the fork's own history starts here.
    if isinstance(entry, str) and version != 1:
        entry = Folded(version, data)  # a text's version is its index + 1
    pipeline = replace(apply_pipeline(state.pipeline, data, version), run_id=run_id)
    return RunState(
        run_id=run_id,
        version=version,
        pipeline=pipeline,
        orchestration=state.orchestration,
        history=Appended((entry,)),
        base=state,
    )


# -- many events, into one transient builder -------------------------------------------------


class _RunBuilder:
    """A ``RunState`` under construction: both projections' builders, over plain
    dicts and lists copied from the state it starts from, and the history as a
    list. Private to one fold; frozen once at its end."""

    __slots__ = ("base", "history", "orchestration", "pipeline", "run_id", "version")

    history: list[Folded | str]

    def __init__(self, state: RunState) -> None:
        self.run_id = state.run_id
        self.version = state.version
        self.pipeline = PipelineBuilder(state.pipeline, transient=True)
        self.orchestration = OrchestrationBuilder(state.orchestration, transient=True)
        self.history = thaw_sequence(state.history)
        self.base = state.base

    def freeze(self) -> RunState:
        """The state built; the builder must not be used afterwards."""
        return RunState(
            run_id=self.run_id,
            version=self.version,
            pipeline=self.pipeline.freeze(),
            orchestration=self.orchestration.freeze(),
            history=Appended.adopt(self.history),
            base=self.base,
        )


def _step(
    run: _RunBuilder, data: Event, version: int, run_id: str, entry: Folded | str
) -> _RunBuilder:
    """Fold one event into ``run``; returns the builder to continue with."""
    kind = type(data)
    steps = _STEPS.get(kind)
    if steps is not None:
        pipeline_step, orchestration_step = steps
        if pipeline_step is not None:
            pipeline_step(run.pipeline, data, version)
        if orchestration_step is not None:
            orchestration_step(run.orchestration, data, version)
    elif kind is RunRewound:
        assert isinstance(data, RunRewound)
        target = _refold(run.base, run.history, data.to_version, run_id)
        run.pipeline = target.pipeline
        run.orchestration = target.orchestration
    elif kind is RunForked:
        return _RunBuilder(_forked(run.freeze(), data, version, run_id, entry))
    if not run.pipeline.run_id:
        run.pipeline.run_id = run_id
    run.run_id = run_id
    run.version = version
    run.history.append(entry)
    return run


def _refold(
    base: RunState | None, history: Iterable[Folded | str], to_version: int, run_id: str
) -> _RunBuilder:
    """The run at ``to_version``: ``history`` up to it, folded again from ``base``."""
    target = _RunBuilder(base if base is not None else EMPTY)
    for index, earlier in enumerate(history):
        if isinstance(earlier, str):
            version = index + 1
            if version > to_version:
                break
            event: Event = CURRENT.decode(earlier)
        else:
            version = earlier.version
            if version > to_version:
                break
            event = earlier.event
        target = _step(target, event, version, run_id, earlier)
    target.pipeline.run_id = run_id
    return target


def fold(events: Iterable[RecordedEvent], state: RunState = EMPTY) -> RunState:
    """Fold events into ``state`` (the empty state by default).

    The same as applying them one by one, but much faster for many events: the
    state's collections are copied once into a private builder, so use ``apply``
    to add a single event to a large state.
    """
    run: _RunBuilder | None = None
    for event in events:
        if run is None:
            run = _RunBuilder(state)
        run = _step(run, event.data, event.version, event.run_id, Folded(event.version, event.data))
    return state if run is None else run.freeze()


def project(store: EventStore, run_id: str, upto: int | None = None) -> RunState:
    """The state of ``run_id`` at version ``upto`` (the latest by default).

    Raises ``RunNotFound`` when the run has no events. A fork starts from its
    parent's state at the fork point, read from the same store.
    """
    # The rows are read and decoded here rather than through ``store.read`` so
    # that history can keep each row's JSON text instead of the decoded event, and
    # so that a row at its type's current schema version (all of them, but for a
    # log written by an older autonomy) costs one C-level decode and no objects
    # besides the event.
    rows = store.read_payloads(run_id, upto=upto)
    first = next(rows, None)
    if first is None:
        if upto is not None and upto <= 0 and store.last_version(run_id) > 0:
            return RunState(run_id=run_id)
        raise RunNotFound(run_id)
    version, _, _, data = first
    event, current = _decode_payload(store, run_id, first)
    start = EMPTY
    if isinstance(event, RunForked):
        start = project(store, event.parent_run, upto=event.at_version)
    entry: Folded | str = data if current and version == 1 else Folded(version, event)
    run = _RunBuilder(_apply(start, event, version, run_id, entry))
    # The hot loop of a rebuild: ``_decode_payload`` and ``_step`` with their
    # common paths inlined. The builder's version is only brought up to date where
    # something reads it: before a rewind or fork, and at the end.
    previous = version
    decode_text = CURRENT.decode
    class_of = EVENT_TYPES.get
    steps_of = _STEPS.get
    history = run.history
    pipeline = run.pipeline
    orchestration = run.orchestration
    text_version = len(history) + 1  # the version a text appended now would have
    for version, type_name, schema_version, data in rows:
        try:
            event = decode_text(data)
            kind = type(event)
            current = class_of(type_name) is kind and kind.schema_version == schema_version
        except msgspec.MsgspecError:
            current = False
        if current and version == text_version:
            entry = data
        else:
            if not current:
                event = _decode_row(store, run_id, version)
            entry = Folded(version, event)
        steps = steps_of(type(event))
        if steps is None:
            run.version = previous
            run = _step(run, event, version, run_id, entry)
            history = run.history
            pipeline = run.pipeline
            orchestration = run.orchestration
            text_version = len(history) + 1
        else:
            pipeline_step, orchestration_step = steps
            if pipeline_step is not None:
                pipeline_step(pipeline, event, version)
            if orchestration_step is not None:
                orchestration_step(orchestration, event, version)
            history.append(entry)
            text_version += 1
        previous = version
    run.version = previous
    run.run_id = run_id
    return run.freeze()


def _decode_payload(store: EventStore, run_id: str, payload: Payload) -> tuple[Event, bool]:
    """The event of a payload, and whether its text is at the current schema version
    (so that the union alone decodes it back, see ``History``)."""
    version, type_name, schema_version, data = payload
    try:
        event: Event = CURRENT.decode(data)
        if EVENT_TYPES.get(type_name) is type(event) and event.schema_version == schema_version:
            return event, True
    except msgspec.MsgspecError:
        pass
    return _decode_row(store, run_id, version), False


def _decode_row(store: EventStore, run_id: str, version: int) -> Event:
    """A row the fast path cannot take (an older schema version, or broken data),
    read whole and decoded by the codec: upcast, checked against the row's type,
    or a ``SchemaError`` naming its position."""
    for row in store.read_raw(run_id, after=version - 1, upto=version):
        return store.decode(row).data
    raise RunNotFound(run_id)  # pragma: no cover - rows are never deleted
