"""``verify`` as a library: every check of a log, every run, every problem.

What each check proves:

- **The database** — ``PRAGMA integrity_check``; the append-only triggers present, and
  any a writer found missing and put back (``repairs``); every blob's content
  matches its digest and size.
- **Each run's chain** (``EventStore.verify``) — keyed runs recomputed under the
  key (``keyed``), or, without it, checked for structure only (``not
  authenticated``); unkeyed runs (logs from before keys) recomputed with sha256,
  which shows accidents but not a forger (``unkeyed``).
- **Each run's rows** — as many in the table as its chain has events, at versions
  1 to its last and positions from 1: no row where no read of the run goes (a
  version below 1 or past the last, a second row at one version), none moved.
- **The keyed mark** — once a run was written keyed, every later run must be:
  an unkeyed one was rewritten by someone without the key. A mark naming another
  key than the one verify holds cannot be checked, and fails.
- **Each event** decodes through the typed decoder, the blobs it refers to are
  present and intact, and the run's state can be rebuilt.
- **The run summaries** (``projections.summaries``, derived data) — each stored row
  agrees with a fold of its run; ``autonomy runs --rebuild`` writes them again.
- **Checkpoints** kept elsewhere (``events.checkpoints``) — the run is at least as
  long as each, with the same hash at its version: no deleted tail, no rewritten
  history, whoever holds the key.

One unreadable run never stops the others: its error is that run's problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import msgspec

from engine.agent.runlog import lineage_problems, unkeyed_problem
from events.checkpoints import Checkpoint, check
from events.errors import AutonomyError, BlobCorrupt, BlobNotFound, EventStoreError, SchemaError
from events.schema import (
    Event,
    ModelRequested,
    RunForked,
    RunRewound,
    ToolRequested,
    blob_references,
)
from events.sqlite import SQLiteEventStore
from events.store import EventStore, KeyedMark, Problem, RowExtent, check_keyed_marker
from projections import RunState, project
from projections.fold import fork_lineage, shared_projections
from projections.summaries import summary_problems
from projections.views import foreign_views


class RunVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What ``verify`` found for one run."""

    run_id: str
    events: int
    authentication: str
    checkpoint: int | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


class LogVerdict(msgspec.Struct, frozen=True, kw_only=True):
    """What ``verify`` found: the database's problems, then each run's verdict."""

    database: tuple[str, ...]
    blobs: int
    runs: tuple[RunVerdict, ...]
    checks: str = ""
    """What was checked of the database itself (``EventStore.database_checks``)."""
    runs_read: bool = True
    """False when the runs could not even be listed (a damaged file): ``runs`` is
    empty, and the database's problems say why."""

    @property
    def ok(self) -> bool:
        return not self.database and all(run.ok for run in self.runs)


ABSENT = "absent"
"""The authentication of a run a checkpoint names and the log has no event of (its
chain was not keyed nor unkeyed: there is none)."""


def verify_log(
    store: EventStore,
    run_ids: Sequence[str] | None = None,
    *,
    checkpoints: Iterable[Checkpoint] = (),
) -> LogVerdict:
    """Check the database and each run (every run by default, and every run a
    checkpoint names, even one the log no longer has)."""
    with shared_projections():  # a fork's parent is folded once, however many forks
        return _verify_log(store, run_ids, checkpoints)


def _verify_log(
    store: EventStore, run_ids: Sequence[str] | None, checkpoints: Iterable[Checkpoint]
) -> LogVerdict:
    by_run: dict[str, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        by_run.setdefault(checkpoint.run_id, []).append(checkpoint)
    database = list(store.database_problems())
    checks = store.database_checks
    if isinstance(store, SQLiteEventStore):  # PostgreSQL's are among its definitions
        database += [
            f"audit view {name} is not one autonomy made: whoever reads the file with "
            "another program (sqlite3, Datasette) reads what it was made to show"
            for name in foreign_views(store.connection)
        ]
        checks += ", audit views"
    try:
        infos = store.runs()
        # each run's rows are counted first and its chain walked up to the version
        # counted: a run appended to meanwhile (verify while runs go on) is no run with
        # rows where no read goes
        extents: dict[object, RowExtent] = {e.run_id: e for e in store.row_extents()}
    except EventStoreError as e:
        if not database:
            raise
        # a damaged file (a page of bytes that are not text): what the database check
        # found says why, and is the verdict, not lost in the error
        unread = f"its runs cannot be read ({e})"
        return LogVerdict(
            database=(*database, unread), blobs=0, runs=(), checks=checks, runs_read=False
        )
    first_position = {info.run_id: info.first_position for info in infos}
    # a run id that is not text is no run autonomy wrote: the database's problem (below)
    ids = (
        list(run_ids) if run_ids is not None else [r for r in first_position if isinstance(r, str)]
    )
    ids += [run_id for run_id in by_run if run_id not in ids and run_ids is None]
    blobs = _BlobChecks(store)
    verdicts = []
    states: dict[str, RunState] = {}
    if run_ids is None:
        database += [
            f"{e.rows} rows have a run id that is not text ({e.run_id!r}): they were added"
            for e in extents.values()
            if not isinstance(e.run_id, str)
        ]
        # a run whose every row is where no read goes is in no listing: it is here
        ids += [r for r in extents if isinstance(r, str) and r not in ids]
    for run_id in ids:
        extent = extents.get(run_id)
        counted = extent.last_version if extent is not None else None
        upto = counted if type(counted) is int and counted >= 1 else None
        verdict = _verify_run(store, run_id, blobs, by_run.get(run_id, ()), states, upto)
        if extent is not None and (text := extent.problem(verdict.events)):
            verdict = msgspec.structs.replace(
                verdict, problems=(*verdict.problems, Problem(problem=text))
            )
        verdicts.append(verdict)
    # the keyed mark is read after the runs: it is written with the first keyed run's
    # first rows, so a keyed run the walk saw has its mark by now (read before, a first
    # keyed run started meanwhile was "a deleted mark")
    marker = store.keyed_marker()
    mark = check_keyed_marker(marker, store.key) if marker is not None else None
    if mark is not None and mark.problem:
        database.append(mark.problem)
    for i, verdict in enumerate(verdicts):
        first = first_position.get(verdict.run_id)
        if text := unkeyed_problem(mark, verdict.run_id, verdict.authentication, first):
            verdicts[i] = msgspec.structs.replace(
                verdict, problems=(*verdict.problems, Problem(position=first, problem=text))
            )
    # a fork's state is made of the history it was forked from: an ancestor whose own
    # verdict is clean is so up to any fork point, and is not read again
    clean = {verdict.run_id for verdict in verdicts if verdict.ok}
    for i, verdict in enumerate(verdicts):
        if inherited := _inherited_problems(store, verdict.run_id, mark, clean):
            verdicts[i] = msgspec.structs.replace(verdict, problems=(*verdict.problems, *inherited))
    if marker is None and any(v.authentication not in ("unkeyed", ABSENT) for v in verdicts):
        database.append("runs are keyed, but the log's keyed mark is missing: it was deleted")
    database += summary_problems(store, run_ids, states)
    if run_ids is None:
        database += blobs.check_all()
    return LogVerdict(
        database=tuple(database),
        blobs=blobs.count,
        runs=tuple(verdicts),
        checks=checks,
    )


def _inherited_problems(
    store: EventStore, run_id: str, mark: KeyedMark | None, clean: set[str]
) -> list[Problem]:
    """For a fork: what is wrong with the history it was forked from (each run it
    descends from, up to its fork point, but those of ``clean``, verified whole here),
    which its state is made of. ``verify FORK`` checked the fork's own chain only, and
    said ok of a fork whose parent had been edited before the fork point."""
    try:
        ancestors = [(r, at) for r, at in fork_lineage(store, run_id)[:-1] if r not in clean]
    except AutonomyError:  # a cycle: the run's own verdict says so
        return []
    return [
        Problem(problem=f"the history it was forked from fails: {text}")
        for text in lineage_problems(store, ancestors, mark)
    ]


def _verify_run(
    store: EventStore,
    run_id: str,
    blobs: _BlobChecks,
    checkpoints: Sequence[Checkpoint],
    states: dict[str, RunState],
    upto: int | None = None,
) -> RunVerdict:
    problems: list[Problem] = []
    try:
        report = store.verify(run_id, upto=upto)
        problems += report.problems
        authentication, events = report.authentication, report.checked
        decodes = True
        requested: set[str] = set()
        for row in store.read_raw(run_id):
            try:
                event = store.decode(row).data
            except SchemaError as e:
                problems.append(Problem(problem=str(e)))
                decodes = False
                continue
            texts = _written_by_no_autonomy(store, row.version, event, requested)
            texts += filter(None, (blobs.check(digest) for digest in blob_references(event)))
            problems += [
                Problem(position=row.position, version=row.version, type=row.type, problem=text)
                for text in texts
            ]
    except AutonomyError as e:
        # one unreadable run must not hide the others
        return RunVerdict(
            run_id=run_id,
            events=0,
            authentication="unreadable",
            problems=(*problems, Problem(problem=f"unreadable: {e}")),
        )
    if not events:  # named by a checkpoint alone: what it saw is the whole verdict
        authentication = ABSENT
    elif decodes:
        try:
            states[run_id] = project(store, run_id)  # the state can be rebuilt
        except AutonomyError as e:
            problems.append(Problem(problem=f"its state cannot be rebuilt: {e}"))
    covered = None
    for checkpoint in checkpoints:
        found = check(store, checkpoint)
        if found is not None:
            problems.append(found)
        covered = max(covered or 0, checkpoint.version)
    if not events and not problems:
        problems.append(Problem(problem="no events in this log"))
    return RunVerdict(
        run_id=run_id,
        events=events,
        authentication=authentication,
        checkpoint=covered,
        problems=tuple(problems),
    )


def _written_by_no_autonomy(
    store: EventStore, version: int, event: Event, requested: set[str]
) -> list[str]:
    """What no autonomy writes, in ``event`` at ``version``: a second request under
    one call id (``requested``: the ids seen so far, this one added), a rewind to a
    version no rewind goes to, a fork point its parent never had."""
    if isinstance(event, ModelRequested | ToolRequested):
        if event.call_id in requested:
            return [
                f"a second request with call id {event.call_id!r} (a call's id is its "
                "request's version: no autonomy writes two; audits count both)"
            ]
        requested.add(event.call_id)
    elif isinstance(event, RunRewound) and not 1 <= event.to_version < version:
        return [
            f"rewound to version {event.to_version}, which no rewind goes to (it goes to "
            f"one of 1 to {version - 1})"
        ]
    elif version == 1 and isinstance(event, RunForked):
        return [problem] if (problem := _fork_point_problem(store, event)) else []
    return []


def _fork_point_problem(store: EventStore, forked: RunForked) -> str:
    """What is wrong with a fork's point: a version its parent never had (a fork is
    made at one of them: the fold took the parent's last state for it, unsaid)."""
    last = store.last_version(forked.parent_run)
    if last and not 1 <= forked.at_version <= last:
        return (
            f"forked from {forked.parent_run} at version {forked.at_version}, which it never "
            f"had (its versions are 1 to {last})"
        )
    return ""  # a parent missing from the log: its state cannot be rebuilt, said below


def refuse_corrupt_blobs(store: EventStore, run_id: str) -> None:
    """Read every blob the run refers to through the checked ``get``: a changed one
    raises ``BlobCorrupt`` (a missing one is left to whoever needs it). For
    commands such as ``replay`` that may read a blob late, after work is done."""
    seen: set[str] = set()
    for recorded in store.read(run_id):
        for digest in blob_references(recorded.data):
            if digest not in seen:
                seen.add(digest)
                with contextlib.suppress(BlobNotFound):
                    store.get(digest)


class _BlobChecks:
    """Each blob checked once (``EventStore.get`` recomputes its digest and size),
    however many events refer to it."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.found: dict[str, str] = {}

    @property
    def count(self) -> int:
        return len(self.found)

    def check(self, digest: str) -> str:
        if digest not in self.found:
            try:
                self.store.get(digest)
                self.found[digest] = ""
            except (BlobCorrupt, BlobNotFound) as e:
                self.found[digest] = str(e)
        return self.found[digest]

    def check_all(self) -> list[str]:
        """The problems of the blobs no event refers to (those of the others are
        their runs' problems)."""
        referenced = set(self.found)
        return [
            problem
            for digest in list(self.store.blob_digests())
            if digest not in referenced and (problem := self.check(digest))
        ]
