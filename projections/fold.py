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

To answer a rewind a state knows every event it has folded: those ``project``
read are left in the log, which is append-only, so a state refers to them as
"the first N events of run R in this store" (``logged``); events folded in memory
afterwards (``apply``, ``fold``) are kept in ``history``. Only a rewind, and
comparing states of different origins, reads the logged part again. Keeping a
copy of every row instead made a rebuild hold the whole run in memory (64 MiB
for 100k events) and cost it a tenth of its speed.

Speed: ``apply`` makes persistent updates (one event, a few small allocations).
``fold`` and ``project`` fold many events into one private, transient builder
(plain dicts and lists, see ``projections.pipeline``) and freeze it once, so a
rebuild allocates no intermediate states at all. Both run the same steps, and
neither ever changes a state it was given.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from events.codec import CURRENT
from events.errors import RunNotFound, StoreCorrupted
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
    """An event of a run's history with its version."""

    version: int
    event: Event


History = Appended[Folded]
"""Events a state has folded in memory, in order (see ``RunState.logged``)."""


class Logged(msgspec.Struct, frozen=True, gc=False):
    """The events of ``run_id`` in ``store`` with ``after < version <= upto``: the
    part of a state's history that ``project`` read and left in the (append-only)
    log. ``after`` is 0 but after a fork event in the middle of a run."""

    store: EventStore
    run_id: str
    after: int
    upto: int

    def events(self) -> list[Folded]:
        rows = self.store.read(self.run_id, after=self.after, upto=self.upto)
        return [Folded(r.version, r.data) for r in rows]


_NO_HISTORY: History = Appended()
_EMPTY_PIPELINE = PipelineState()
_EMPTY_ORCHESTRATION = OrchestrationState()


class RunState(msgspec.Struct, frozen=True, kw_only=True, gc=False, eq=False):
    """Both projections of one run at one version.

    ``gc=False``: a state refers only to older, immutable values (its base, the
    shared history, the store), so it can never be part of a reference cycle. Two
    states are equal when every field is, history compared by the events it holds
    wherever they are kept.
    """

    run_id: str = ""
    version: int = 0
    pipeline: PipelineState = _EMPTY_PIPELINE
    orchestration: OrchestrationState = _EMPTY_ORCHESTRATION
    logged: Logged | None = None
    """The events folded first, left in the log (a state made by ``project``)."""
    history: History = _NO_HISTORY
    """The events folded after ``logged``, in order (rewinds re-fold a prefix)."""
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
            and _same_history(self, other)
        )

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def events(self) -> list[Folded]:
        """Every event this run has folded since ``base``, in order, wherever it is
        kept (read from the log for the ``logged`` part)."""
        return [*(self.logged.events() if self.logged else ()), *self.history]


def _same_history(mine: RunState, theirs: RunState) -> bool:
    if mine.logged == theirs.logged and mine.history == theirs.history:
        return True
    return mine.events() == theirs.events()


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
    data, version, run_id = event.data, event.version, event.run_id
    entry = Folded(version, data)
    kind = type(data)
    if kind is RunForked:
        return _forked(state, entry, run_id)
    if kind is RunRewound:
        assert isinstance(data, RunRewound)
        target = _refold(state, data.to_version, run_id)
        pipeline, orchestration = target.pipeline.freeze(), target.orchestration.freeze()
    else:
        pipeline, orchestration = state.pipeline, state.orchestration
        steps = _STEPS.get(kind)
        if steps is not None:  # else neither projection is concerned
            if steps[0] is not None:
                pipeline = apply_pipeline(pipeline, data, version)
            if steps[1] is not None:
                orchestration = apply_orchestration(orchestration, data, version)
        if not pipeline.run_id:
            pipeline = replace(pipeline, run_id=run_id)
    return RunState(
        run_id=run_id,
        version=version,
        pipeline=pipeline,
        orchestration=orchestration,
        logged=state.logged,
        history=state.history.append(entry),
        base=state.base,
    )


def _forked(state: RunState, entry: Folded, run_id: str) -> RunState:
    # The state given is the parent's at the fork point (or, for a fork event in
    # the middle of a run, the run so far): it becomes the base, and the fork's
    # own history starts here.
    pipeline = replace(apply_pipeline(state.pipeline, entry.event, entry.version), run_id=run_id)
    return RunState(
        run_id=run_id,
        version=entry.version,
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

    __slots__ = ("base", "history", "logged", "orchestration", "pipeline", "run_id", "version")

    history: list[Folded]

    def __init__(self, state: RunState) -> None:
        self.run_id = state.run_id
        self.version = state.version
        self.pipeline = PipelineBuilder(state.pipeline)
        self.orchestration = OrchestrationBuilder(state.orchestration)
        self.logged = state.logged
        self.history = thaw_sequence(state.history)
        self.base = state.base

    def freeze(self) -> RunState:
        """The state built; the builder must not be used afterwards."""
        return RunState(
            run_id=self.run_id,
            version=self.version,
            pipeline=self.pipeline.freeze(),
            orchestration=self.orchestration.freeze(),
            logged=self.logged,
            history=Appended.adopt(self.history),
            base=self.base,
        )

    def rewind(self, to_version: int) -> None:
        """Take the projections of this run at ``to_version``."""
        target = _refold(self, to_version, self.run_id)
        self.pipeline = target.pipeline
        self.orchestration = target.orchestration


def _step(run: _RunBuilder, entry: Folded, run_id: str) -> _RunBuilder:
    """Fold one event into ``run``; returns the builder to continue with."""
    data, version = entry.event, entry.version
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
        run.run_id = run_id
        run.rewind(data.to_version)
    elif kind is RunForked:
        return _RunBuilder(_forked(run.freeze(), entry, run_id))
    if not run.pipeline.run_id:
        run.pipeline.run_id = run_id
    run.run_id = run_id
    run.version = version
    run.history.append(entry)
    return run


def _refold(state: RunState | _RunBuilder, to_version: int, run_id: str) -> _RunBuilder:
    """The run of ``state`` at ``to_version``, folded again: from its base up to
    the logged events (read from the log) and on through its history.

    A rewind among them takes the run back to a state this fold passed: kept as it
    passes it, and taken again, not folded again. Folded again, each rewind folded
    every one before it anew, so a run of rewinds cost twice as much with each one
    (``autonomy rewind`` to the run's last version, 17 times: minutes)."""
    logged = state.logged
    if logged is not None and to_version > logged.after:
        # the same fold, over the same events, as the history it stands for
        start = project(logged.store, logged.run_id, upto=min(to_version, logged.upto))
    else:
        start = state.base if state.base is not None else EMPTY
    entries = list(itertools.takewhile(lambda e: e.version <= to_version, state.history))
    returns = {_return_to(e) for e in entries if type(e.event) is RunRewound}
    kept: dict[int, RunState] = {}
    target = _RunBuilder(start)
    for entry in entries:
        then = kept.get(_return_to(entry)) if type(entry.event) is RunRewound else None
        if then is not None:
            target.pipeline = PipelineBuilder(then.pipeline)
            target.orchestration = OrchestrationBuilder(then.orchestration)
            target.run_id, target.version = run_id, entry.version
            target.history.append(entry)
        else:
            target = _step(target, entry, run_id)
            if type(entry.event) is RunForked:
                kept.clear()  # a rewind to before a fork event returns to its base
        if entry.version in returns:
            kept[entry.version] = frozen = target.freeze()
            target = _RunBuilder(frozen)
    target.pipeline.run_id = run_id
    return target


def _return_to(entry: Folded) -> int:
    """The version a rewind in a run's history takes it back to: its target, or the
    version before it for a target at or past it (as the rewind is folded)."""
    event = entry.event
    assert isinstance(event, RunRewound)
    return min(event.to_version, entry.version - 1)


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
        run = _step(run, Folded(event.version, event.data), event.run_id)
    return state if run is None else run.freeze()


def project(store: EventStore, run_id: str, upto: int | None = None) -> RunState:
    """The state of ``run_id`` at version ``upto`` (the latest by default).

    Raises ``RunNotFound`` when the run has no events. A fork starts from its
    parent's state at the fork point, read from the same store. The state's
    history is left in the log (``RunState.logged``).
    """
    # A rewind in the run takes it back to its state at an earlier version, which
    # this fold works out by folding the run again up to there (``_refold``), whose
    # rewinds do the same: each such state is worked out once per outermost call.
    known = _PROJECTED.get()
    if known is None:
        with shared_projections():
            return _project(store, run_id, upto)
    if upto is None:  # the latest: not the same state for as long as a sharing lasts
        return _project(store, run_id, upto)
    key = (id(store), run_id, upto)
    found = known.get(key)
    if found is None:
        found = known[key] = _project(store, run_id, upto)
    return found


_PROJECTED: contextvars.ContextVar[dict[tuple[int, str, int | None], RunState] | None] = (
    contextvars.ContextVar("_PROJECTED", default=None)
)
"""The states worked out at a version (for a rewind, or a fork's parent at the fork
point), by store, run and version, for as long as the outermost ``project`` or
``shared_projections`` lasts: a version of an append-only log is the same state."""


@contextlib.contextmanager
def shared_projections() -> Iterator[None]:
    """Within it, every ``project`` shares the states worked out at a version: the
    parent of each fork at its fork point is folded once, however many runs descend
    from it. Verifying a log of 1,000 forks of forks folded each run's whole lineage
    again (quadratic: 68 s and 1.6 GB for a log file of 459 KB)."""
    if _PROJECTED.get() is not None:
        yield
        return
    token, parents = _PROJECTED.set({}), _PARENTS.set({})
    try:
        yield
    finally:
        _PROJECTED.reset(token)
        _PARENTS.reset(parents)


_PARENTS: contextvars.ContextVar[dict[tuple[int, str], RunForked | None] | None] = (
    contextvars.ContextVar("_PARENTS", default=None)
)
"""Each run's ``run.forked`` (None: not a fork), read once while ``shared_projections``
lasts: a walk of each run's lineage read each ancestor's first event again."""


def _forked_from(store: EventStore, run_id: str) -> RunForked | None:
    """The ``run.forked`` that starts ``run_id``, if it is a fork."""
    known = _PARENTS.get()
    if known is not None and (id(store), run_id) in known:
        return known[(id(store), run_id)]
    first = next(iter(store.read(run_id, upto=1)), None)
    forked = first.data if first is not None and isinstance(first.data, RunForked) else None
    if known is not None and first is not None:
        known[(id(store), run_id)] = forked
    return forked


def _project(store: EventStore, run_id: str, upto: int | None) -> RunState:
    state, lineage = _lineage(store, run_id, upto)
    known = _PROJECTED.get()
    for run_id, until, first, rows in lineage:
        state = _fold_rows(store, state, run_id, first, rows)
        if known is not None and until is not None:
            known[(id(store), run_id, until)] = state
    return state


_Lineage = list[tuple[str, int | None, Payload, Iterator[Payload]]]


def _lineage(store: EventStore, run_id: str, upto: int | None) -> tuple[RunState, _Lineage]:
    """The runs whose events make ``run_id``'s state at ``upto``: the run, the one it
    was forked from up to the fork point, and so on, each with its first row read
    and the rest to read, farthest first; and the state the farthest starts from.
    Walked in a loop, not by recursion, and refused (``StoreCorrupted``) when a run
    descends from itself: a log no autonomy writes, which ended every command that
    folds runs (``runs``, ``verify``) in a ``RecursionError``."""
    lineage: _Lineage = []
    seen: set[str] = set()
    known = _PROJECTED.get() or {}
    while True:
        # The rows are read and decoded here rather than through ``store.read``: a
        # row at its type's current schema version (all of them, but for a log
        # written by an older autonomy) costs one C-level decode and no objects
        # besides the event.
        rows = store.read_payloads(run_id, upto=upto)
        first = next(rows, None)
        if first is None:
            if upto is not None and upto <= 0 and store.last_version(run_id) > 0:
                return RunState(run_id=run_id), lineage[::-1]
            raise RunNotFound(run_id)
        lineage.append((run_id, upto, first, rows))
        forked = _decode_payload(store, run_id, first)
        if not isinstance(forked, RunForked):
            return EMPTY, lineage[::-1]
        seen.add(run_id)
        if forked.parent_run in seen:
            raise _fork_cycle(run_id, forked.parent_run)
        run_id, upto = forked.parent_run, forked.at_version
        if (shared := known.get((id(store), run_id, upto))) is not None:
            return shared, lineage[::-1]  # the parent at the fork point: worked out


def fork_lineage(
    store: EventStore, run_id: str, upto: int | None = None
) -> list[tuple[str, int | None]]:
    """``(run_id, upto)`` and, for a fork, the run it was forked from up to the fork
    point, and so on: farthest first, each as far as it is in effect. What a walk
    over a run's effective history reads (a rewind's files, a diff's events), in a
    loop rather than by recursion; a run missing from the log is listed (its read
    finds nothing) and ends the lineage. ``StoreCorrupted`` when a run descends from
    itself, as for ``project``."""
    lineage: list[tuple[str, int | None]] = [(run_id, upto)]
    seen: set[str] = set()
    while upto is None or upto >= 1:
        forked = _forked_from(store, run_id)
        if forked is None:
            break
        seen.add(run_id)
        if forked.parent_run in seen:
            raise _fork_cycle(run_id, forked.parent_run)
        run_id, upto = forked.parent_run, forked.at_version
        lineage.append((run_id, upto))
    return lineage[::-1]


def _fork_cycle(run_id: str, parent: str) -> StoreCorrupted:
    return StoreCorrupted(
        f"run {run_id!r} is forked from {parent!r}, which is itself a fork of it: no "
        "autonomy writes such a log (it was changed)"
    )


def _fold_rows(
    store: EventStore, start: RunState, run_id: str, first: Payload, rows: Iterator[Payload]
) -> RunState:
    """The state of ``run_id`` folded from ``start`` over its rows ``first`` and
    ``rows``."""
    run = _RunBuilder(start)
    # The hot loop of a rebuild: ``_decode_payload`` and ``_step`` with their
    # common paths inlined. What the builder folds stays in the log: its history
    # is kept empty and its ``logged`` and version are brought up to date only
    # where something reads them (a rewind, a fork event, the end).
    after = 0
    previous = 0
    decode_text = CURRENT.decode
    class_of = EVENT_TYPES.get
    steps_of = _STEPS.get
    pipeline = run.pipeline
    orchestration = run.orchestration
    event: Event
    for version, type_name, schema_version, data in itertools.chain((first,), rows):
        try:
            event = decode_text(data)
            kind = type(event)
            if class_of(type_name) is not kind or kind.schema_version != schema_version:
                event = store.event_at(run_id, version)
        except (msgspec.MsgspecError, RecursionError, TypeError):  # the codec says how
            event = store.event_at(run_id, version)
        steps = steps_of(type(event))
        if steps is None:
            if previous:  # else the builder is still the state the run starts from
                _catch_up(run, Logged(store, run_id, after, previous))
            run = _step(run, Folded(version, event), run_id)
            run.history.clear()
            if type(event) is RunForked:
                after = version - 1  # the state so far is the fork's base
            pipeline = run.pipeline
            orchestration = run.orchestration
        else:
            pipeline_step, orchestration_step = steps
            if pipeline_step is not None:
                pipeline_step(pipeline, event, version)
            if orchestration_step is not None:
                orchestration_step(orchestration, event, version)
        previous = version
    _catch_up(run, Logged(store, run_id, after, previous))
    return run.freeze()


def _catch_up(run: _RunBuilder, logged: Logged) -> None:
    """Bring what ``project``'s loop leaves behind up to date: the builder has
    folded ``logged`` (its last event included) and kept it in the log."""
    run.run_id = logged.run_id
    run.version = logged.upto
    run.logged = logged
    if not run.pipeline.run_id:
        run.pipeline.run_id = logged.run_id


def _decode_payload(store: EventStore, run_id: str, payload: Payload) -> Event:
    """The event of a payload: decoded by the tagged union when it is the row's
    type at its current schema version, else read whole (``EventStore.event_at``)."""
    version, type_name, schema_version, data = payload
    try:
        event: Event = CURRENT.decode(data)
        if EVENT_TYPES.get(type_name) is type(event) and event.schema_version == schema_version:
            return event
    except (msgspec.MsgspecError, RecursionError):  # broken data: the codec says how
        pass
    return store.event_at(run_id, version)
