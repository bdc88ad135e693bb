"""Each run's summary — status, phase, steps, tokens, goal, times — in O(runs).

``autonomy runs`` and the service's run list read one stored row per run instead
of folding every event of every run. The rows are derived data, a catch-up
projection: the store keeps them (``run_summaries``) with the position up to which
they hold every event (``projection_positions``), and ``run_summaries(store)``
brings the runs with events past that position up to date before answering.

- **The same fold.** A summary is read off the state ``projections.fold`` builds,
  the one ``autonomy state`` shows, so the two cannot drift. Beside the summary a
  row keeps the part of the state the summary depends on (the pipeline's scalars,
  the orchestration's open calls and usage): new events are folded on from there,
  through the same steps, without reading the run again. A rewind or a fork in the
  new events, or a run without a row, is folded whole with ``project``.
  ``tests/test_summaries.py`` holds, with hypothesis, that continuing from a row
  anywhere gives the summary of the whole fold.
- **Kept up to date as events are appended.** ``maintain(store)`` hooks the store
  (``EventStore.after_append``): every ``MAINTAIN_EVERY`` events and at every event
  that changes a run's lifecycle it catches up and stores the rows, in a
  transaction of its own after the append's (so an append never waits on it, and
  a failure leaves the rows behind, never wrong: readers catch up).
- **Concurrency.** Storing moves the position only from the one the catch-up
  started at (``save_summaries``); when another process got there first nothing is
  written, and its rows stand. Appends never write the rows, so writers of
  different runs cannot corrupt them.
- **Read-only logs** are caught up in memory and never written; a log from before
  the table (read-only) is folded whole, as before.
- **Checked and rebuilt.** ``summary_problems`` compares the stored rows with a fold
  of the log (``autonomy verify``); ``rebuild_summaries`` writes them all again
  (``autonomy runs --rebuild``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from events.errors import AutonomyError
from events.schema import RunFinished, RunForked, RunRewound, RunStarted, UserAnswered, UserAsked
from events.store import EventStore, RecordedEvent, RunInfo, SummaryRow
from projections.fold import RunState, fold, project, shared_projections
from projections.orchestration import CallInfo, OrchestrationState, Usage
from projections.pipeline import PipelineState
from projections.sequence import PersistentMap

FORMAT = 1
"""The stored rows' format; a row of another format is folded again."""

MAINTAIN_EVERY = 200
"""Events a writer appends between two catch-ups (besides those at lifecycle events):
readers fold at most about this many per live run in memory."""

_LIFECYCLE = (RunStarted, RunForked, RunFinished, RunRewound, UserAsked, UserAnswered)


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One run at its latest version, as ``autonomy runs`` and ``GET /api/runs`` list it."""

    run_id: str
    status: str
    reason: str = ""
    phase: str
    steps: int
    tokens: int
    goal: str
    question: str = ""
    """The open question of a run waiting for input."""
    parent_run: str = ""
    started_at: str
    updated_at: str
    version: int
    first_position: int
    last_position: int


_PIPELINE_SCALARS = (
    "run_id", "goal", "workspace", "mode", "status", "reason", "phase", "steps",
    "steps_since_progress", "question", "parent_run", "forked_at",
)  # fmt: skip
"""The fields of ``PipelineState`` a summary depends on (the rest are collections)."""


class _Row(msgspec.Struct, frozen=True, kw_only=True):
    """What a stored row holds: the summary, and the part of the state to fold on from."""

    format: int
    summary: RunSummary
    pipeline: dict[str, Any]
    open_calls: dict[str, CallInfo]
    usage_by_model: dict[str, Usage]


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(_Row)


# -- reading -----------------------------------------------------------------------------


def run_summaries(store: EventStore) -> list[RunSummary]:
    """Every run's summary, in order of first appearance, caught up to the log's end
    (and stored, unless the log is read-only). A run whose events cannot be folded
    raises its ``AutonomyError``; ``summaries_and_problems`` lists it instead."""
    summaries, problems = summaries_and_problems(store)
    if problems:
        raise next(iter(problems.values()))
    return summaries


def summaries_and_problems(
    store: EventStore,
) -> tuple[list[RunSummary], dict[str, AutonomyError]]:
    """``run_summaries``, and the error of each run that could not be folded (listed
    by the ``runs`` command without hiding the others; not stored)."""
    rows, problems = _catch_up(store, only_changed=False)
    summaries = sorted((row.summary for row in rows.values()), key=_first_position)
    return summaries, problems


def status_at_end(store: EventStore, run_id: str) -> tuple[int, str]:
    """The run's last version, and its status there: folded on from the run's stored
    row (its events past the row only: at most ``MAINTAIN_EVERY`` or so), as a
    catch-up does; the whole run when it has no row, or a rewind or a fork is among
    those events. Nothing is stored. What a live tail asks as it goes: a tail that
    folded the run itself held a state of several MB for each stream."""
    row = None
    if store.summary_position() is not None:
        row = _decoded(store.summary_rows([run_id])).get(run_id)
    if row is not None:
        events = list(store.read(run_id, after=row.summary.version))
        if not any(type(e.data) in (RunRewound, RunForked) for e in events):
            state = fold(events, _state(row))
            return state.version, state.pipeline.status
    state = project(store, run_id)
    return state.version, state.pipeline.status


def _expected_row(store: EventStore, state: RunState, info: RunInfo) -> _Row:
    """The row a fold makes of a run at ``state`` (its latest version, which ``info``
    describes, or an earlier one, whose events are read for their positions and times)."""
    if state.version == info.version:
        first, last, started, updated = (
            info.first_position,
            info.last_position,
            info.started_at,
            info.last_at,
        )
    else:
        rows = list(store.read_raw(info.run_id, upto=state.version))
        first, last = rows[0].position, rows[-1].position
        started = min(r.recorded_at for r in rows)
        updated = max(r.recorded_at for r in rows)
    return _row_of(
        state, first_position=first, last_position=last, started_at=started, updated_at=updated
    )


def _first_position(summary: RunSummary) -> int:
    return summary.first_position


# -- catching up -------------------------------------------------------------------------


def _catch_up(
    store: EventStore, *, only_changed: bool
) -> tuple[dict[str, _Row], dict[str, AutonomyError]]:
    """Every run's row (only those of runs with new events when ``only_changed``),
    brought up to date; stored unless the store is read-only or another process
    stored first."""
    found = store.summary_position()
    position = found or 0
    changed = store.runs_after(position)
    wanted = [info.run_id for info in changed] if only_changed else None
    stored = store.summary_rows(wanted) if found is not None else []
    rows = _decoded(stored)
    # a row that cannot be read (a damaged one, another format) is folded again: its
    # run, ended long before the position, was otherwise missing from every listing
    unread = {run_id for run_id, *_ in stored if run_id not in rows}
    unread -= {info.run_id for info in changed}
    if unread:
        changed = changed + [info for info in store.runs() if info.run_id in unread]
    problems: dict[str, AutonomyError] = {}
    updated: list[SummaryRow] = []
    with shared_projections():  # a fork's parent is folded once, however many forks
        for info in changed:
            try:
                rows[info.run_id] = row = _advanced(store, rows.get(info.run_id), info)
            except AutonomyError as e:
                problems[info.run_id] = e
                rows.pop(info.run_id, None)
                continue
            updated.append(_stored(row))
    if changed and found is not None and not problems and not store.read_only:
        top = max(position, *(info.last_position for info in changed))
        store.save_summaries(position, top, updated)
    return rows, problems


def _decoded(stored: Iterable[SummaryRow]) -> dict[str, _Row]:
    rows = {}
    for run_id, _version, _position, text in stored:
        try:
            row = _DECODER.decode(text)
        except msgspec.DecodeError:
            continue  # folded again (and reported by verify)
        if row.format == FORMAT and row.summary.run_id == run_id:
            rows[run_id] = row
    return rows


def _advanced(store: EventStore, row: _Row | None, info: RunInfo) -> _Row:
    """``row`` brought up to the run's last event: the new events folded on from it,
    or the whole run folded when there is no row, or a rewind or fork among them."""
    if row is not None:
        known = row.summary
        events = list(store.read(info.run_id, after=known.version))
        if not any(type(e.data) in (RunRewound, RunForked) for e in events):
            state = fold(events, _state(row))
            return _row_of(
                state,
                first_position=known.first_position,
                last_position=events[-1].position if events else known.last_position,
                started_at=min([known.started_at, *(e.recorded_at for e in events)]),
                updated_at=max([known.updated_at, *(e.recorded_at for e in events)]),
            )
        started_at = known.started_at
        first_position = known.first_position
    else:
        first = next(store.read_raw(info.run_id, upto=1), None)
        started_at = info.started_at if first is None else min(first.recorded_at, info.started_at)
        first_position = info.first_position if first is None else first.position
    state = project(store, info.run_id)
    last = next(store.read_raw(info.run_id, after=state.version - 1), None)
    return _row_of(
        state,
        first_position=first_position,
        last_position=last.position if last is not None else info.last_position,
        started_at=started_at,
        updated_at=max(info.last_at, row.summary.updated_at if row else info.last_at),
    )


def _state(row: _Row) -> RunState:
    """The state to fold on from: what the summary depends on, collections empty."""
    return RunState(
        run_id=row.summary.run_id,
        version=row.summary.version,
        pipeline=PipelineState(**row.pipeline),
        orchestration=OrchestrationState(
            open_calls=PersistentMap(row.open_calls),
            usage_by_model=PersistentMap(row.usage_by_model),
        ),
    )


def summarize(state: RunState, info: RunInfo) -> RunSummary:
    """The summary of a run at ``state`` whose events ``info`` describes: what a
    stored row must say (``summary_problems`` and the tests compare with it)."""
    return _row_of(
        state,
        first_position=info.first_position,
        last_position=info.last_position,
        started_at=info.started_at,
        updated_at=info.last_at,
    ).summary


def _row_of(
    state: RunState, *, first_position: int, last_position: int, started_at: str, updated_at: str
) -> _Row:
    pipeline, orchestration = state.pipeline, state.orchestration
    summary = RunSummary(
        run_id=state.run_id,
        status=pipeline.status,
        reason=pipeline.reason,
        phase=pipeline.phase,
        steps=pipeline.steps,
        tokens=orchestration.total_tokens,
        goal=pipeline.goal,
        question=pipeline.question if pipeline.status == "waiting_for_input" else "",
        parent_run=pipeline.parent_run,
        started_at=started_at,
        updated_at=updated_at,
        version=state.version,
        first_position=first_position,
        last_position=last_position,
    )
    return _Row(
        format=FORMAT,
        summary=summary,
        pipeline={name: getattr(pipeline, name) for name in _PIPELINE_SCALARS},
        open_calls=dict(orchestration.open_calls.items()),
        usage_by_model=dict(orchestration.usage_by_model.items()),
    )


def _stored(row: _Row) -> SummaryRow:
    summary = row.summary
    text = _ENCODER.encode(row).decode()
    return (summary.run_id, summary.version, summary.last_position, text)


# -- keeping them up to date as events are appended ----------------------------------------


class Maintainer:
    """``EventStore.after_append``: catches the summaries up every ``every`` events
    this store appends, and at once after a lifecycle event (a run starting,
    finishing, asking, rewound...). Only the runs with new events are read."""

    def __init__(self, every: int = MAINTAIN_EVERY) -> None:
        self.every = every
        self.pending = 0

    def __call__(self, store: EventStore, appended: Sequence[RecordedEvent]) -> None:
        self.pending += len(appended)
        lifecycle = any(isinstance(e.data, _LIFECYCLE) for e in appended)
        if self.pending < self.every and not lifecycle:
            return
        self.pending = 0
        catch_up(store)


def maintain(store: EventStore, every: int = MAINTAIN_EVERY) -> EventStore:
    """Keep ``store``'s run summaries up to date as it appends (see ``Maintainer``),
    after catching up once: a log from before the table gets it built here."""
    if not store.read_only:
        store.after_append = Maintainer(every)
        catch_up(store)
    return store


def catch_up(store: EventStore) -> None:
    """Bring the stored rows of the runs with new events up to date. Derived data:
    a failure (a run that cannot be folded, a locked database) leaves the rows
    behind, never wrong, and readers catch up."""
    with contextlib.suppress(AutonomyError):
        _catch_up(store, only_changed=True)


# -- checking and rebuilding ---------------------------------------------------------------


def rebuild_summaries(store: EventStore) -> int:
    """Fold every run again and store its summary, dropping every stored row (what
    ``verify`` found wrong is then right). Returns the number of runs stored. A run
    that cannot be folded (an event a writer forged) gets no row, which readers then
    report as unreadable: it made the whole rebuild fail, and no run's row was kept."""
    infos = store.runs()
    rows = []
    unfolded = []
    for info in infos:
        try:
            rows.append(_stored(_advanced(store, None, info)))
        except AutonomyError:
            unfolded.append(info.first_position)
    # the rows cover the log up to just before the first run that could not be folded:
    # readers catch up from there, and say that run is unreadable (past it, it was
    # left out of every listing)
    top = max((info.last_position for info in infos), default=0)
    if unfolded:
        top = min(unfolded) - 1
    store.save_summaries(0, top, rows, replace=True)
    return len(rows)


def summary_problems(
    store: EventStore,
    run_ids: Sequence[str] | None = None,
    states: dict[str, RunState] | None = None,
) -> list[str]:
    """Where the stored summaries disagree with a fold of the log: a row that cannot
    be read, a row for a run the log does not have, and, for each run whose events
    the rows' position covers, a missing row or one whose summary differs (naming
    the fields). Runs with events past the position are not stored yet: readers
    catch them up. Only ``run_ids``' rows when given; ``states``: runs' latest states
    already folded (verify's)."""
    position = store.summary_position()
    if position is None:
        return []
    stored = store.summary_rows(run_ids)
    decoded = _decoded(stored)
    infos = {info.run_id: info for info in store.runs()}
    problems = []
    last = max((info.last_position for info in infos.values()), default=0)
    if position > last:
        # readers take every run past the position as not stored yet: set past the
        # log's end, no run written later was ever listed, and verify said ok
        problems.append(
            f"run summaries: they say they hold the log up to position {position}, "
            f"past its last event's ({last}): runs written after would never be listed"
        )
    if run_ids is not None:
        infos = {run_id: infos[run_id] for run_id in run_ids if run_id in infos}
    unreadable = {run_id for run_id, *_ in stored if run_id not in decoded}
    for run_id, *_ in stored:
        if run_id not in infos:
            problems.append(f"run summaries: a row for run {run_id!r}, which the log does not have")
        elif run_id not in decoded:
            problems.append(f"run summaries: the row of run {run_id!r} cannot be read")
    for run_id, info in infos.items():
        row = decoded.get(run_id)
        if run_id in unreadable:
            continue
        if row is None:
            if info.last_position <= position:
                problems.append(f"run summaries: no row for run {run_id!r}")
            continue  # else not stored yet: readers catch it up
        # every row, also one behind its run (a run with events past the position):
        # readers fold on from it, so a row forged there (and the position set back)
        # was shown by `autonomy runs` while verify said ok
        version = row.summary.version
        if not 1 <= version <= info.version or (
            info.last_position <= position and version != info.version
        ):
            problems.append(
                f"run summaries: run {run_id!r}: its row is of version {version}, "
                f"where the run has {info.version} events"
            )
            continue
        state = (states or {}).get(run_id)
        try:  # the run as the row saw it: a writer may have gone on since
            if state is None or state.version != version:
                state = project(store, run_id, upto=version)
            expected = _expected_row(store, state, info)
        except AutonomyError:
            continue  # an unreadable run: its own problem, not its summary's
        wrong = [
            f"{field} {getattr(row.summary, field)!r} where the log says "
            f"{getattr(expected.summary, field)!r}"
            for field in RunSummary.__struct_fields__
            if getattr(row.summary, field) != getattr(expected.summary, field)
        ]
        wrong += [
            f"the {part} it folds on from differs from the log's"
            for part in ("pipeline", "open_calls", "usage_by_model")
            if getattr(row, part) != getattr(expected, part)
        ]
        if wrong:
            problems.append(f"run summaries: run {run_id!r}: {'; '.join(wrong)}")
    return problems
