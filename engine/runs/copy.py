"""Copying runs from one log to another (SQLite, PostgreSQL, either way).

A run is copied with its rows as they are — versions, times, causations and hashes —
at the target's next positions, and with every blob its events name. The rows' hash
chain is verified before anything is written (``EventStore.import_run``) and again
on the target afterwards. A run the target already has, row for row (the same
versions and the same last hash, so the same chain), is skipped: a copy cut off
half-way is finished by the same command, and so is one copied while it was being
written: the target has its first events, and gets the rest. A run the target has
otherwise is refused, and all of them are checked before the first is copied. A
fork is copied with the runs it was forked from, without which its state cannot be
rebuilt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from events.errors import (
    ConcurrencyError,
    EventStoreError,
    RunNotFound,
    SchemaError,
    StoreCorrupted,
)
from events.schema import RunForked, blob_references
from events.store import EventStore
from projections import project

_DIGEST = re.compile(r'"([0-9a-f]{64})"')
"""A sha256 in a payload: a blob's digest, or another hash (then not in the blobs)."""


@dataclass(frozen=True)
class Copied:
    run_id: str
    events: int
    blobs: int
    skipped: bool = False
    """The target had the run already, row for row."""
    had: int = 0
    """The events the target had of the run before (a copy made while it ran)."""
    running: bool = False
    """The run was running when it was copied: its later events are not in the copy."""


def copy_runs(source: EventStore, target: EventStore, run_ids: Sequence[str] = ()) -> list[Copied]:
    """Copy ``run_ids`` (every run of ``source`` when empty) into ``target``."""
    known = [info.run_id for info in source.runs()]
    wanted = list(dict.fromkeys(run_ids)) or known
    for run_id in wanted:
        if run_id not in known:
            raise RunNotFound(run_id)
    wanted = _with_parents(source, wanted)
    present = {run_id: head for run_id in wanted if (head := _head(target, run_id))[0] > 0}
    # a run the target has the first events of (copied while it was written) is brought
    # up to date; one it has other events of is no copy of this one
    differing = [
        run_id for run_id, head in present.items() if head != _head(source, run_id, head[0])
    ]
    if differing:
        raise EventStoreError(
            f"the target already has run(s) {', '.join(differing)}, with other events; "
            "nothing was copied"
        )
    for run_id in wanted:
        if missing := _missing_blobs(source, run_id, present.get(run_id, (0, ""))[0]):
            raise StoreCorrupted(
                f"run {run_id} refers to {len(missing)} blob(s) the source log does not have "
                f"(the first: {missing[0]}); a copy would not verify; nothing was copied "
                "(autonomy verify says more)"
            )
    return [
        _copy_or_skip(source, target, run_id, present.get(run_id, (0, ""))[0]) for run_id in wanted
    ]


def _missing_blobs(source: EventStore, run_id: str, had: int) -> list[str]:
    """The blobs ``run_id``'s events past ``had`` refer to that ``source`` lacks: the
    copy was "verified", and failed verify on the target as on the source."""
    referenced = {d for e in source.read(run_id, after=had) for d in blob_references(e.data)}
    return sorted(d for d in referenced if not source.has_blob(d))


def _copy_or_skip(source: EventStore, target: EventStore, run_id: str, had: int) -> Copied:
    """Copy what the target lacks of ``run_id`` (it had ``had`` events). Another copy
    into the same target may write them meanwhile (``ConcurrencyError``): what it
    wrote is looked at again, as this copy looked before it began, so that the copy
    that lost the race skips or finishes the run rather than failing."""
    while True:
        if had and had == source.last_version(run_id):
            return Copied(run_id, had, 0, skipped=True)
        try:
            return _copy_one(source, target, run_id, had)
        except ConcurrencyError as e:
            head = _head(target, run_id)
            if head[0] <= had or head != _head(source, run_id, head[0]):
                raise EventStoreError(
                    f"the target got run {run_id} meanwhile, with other events (another "
                    "writer); it was not copied"
                ) from e
            had = head[0]


def _with_parents(source: EventStore, run_ids: Sequence[str]) -> list[str]:
    """``run_ids``, each fork preceded by the runs it was forked from: a fork's state
    is its parent's up to the fork point, so a log holding the fork alone could not
    rebuild it (``verify``: "its state cannot be rebuilt")."""
    ordered: list[str] = []
    for run_id in run_ids:
        chain = [run_id]
        while True:
            try:
                first = next(iter(source.read(chain[0], upto=1)), None)
            except SchemaError as e:  # it was the bare decode error, naming no run
                raise EventStoreError(
                    f"run {chain[0]!r} cannot be copied: {e}; nothing was copied "
                    "(autonomy verify says more; name the runs to copy to leave it out)"
                ) from e
            data = first.data if first is not None else None
            if not isinstance(data, RunForked) or data.parent_run in chain:
                break
            if source.last_version(data.parent_run) == 0:  # not here: verify says so
                break
            chain.insert(0, data.parent_run)
        ordered += [r for r in chain if r not in ordered]
    return ordered


def _head(store: EventStore, run_id: str, at: int | None = None) -> tuple[int, str]:
    """A run's last version (or version ``at``) and the hash of that row: equal heads,
    equal chains up to there; (0, "") when there is no such row."""
    last = store.last_version(run_id) if at is None else at
    row = next(iter(store.read_raw(run_id, after=last - 1, upto=last)), None) if last else None
    return (last, row.hash) if row is not None else (0, "")


def _copy_one(source: EventStore, target: EventStore, run_id: str, had: int = 0) -> Copied:
    rows = list(source.read_raw(run_id))
    # data that is no text (an edited row) is refused by the import, which verifies
    digests = sorted(
        {d for row in rows[had:] if type(row.data) is str for d in _DIGEST.findall(row.data)}
    )
    blobs = [source.get(d) for d in digests if source.has_blob(d)]
    target.put_many(blobs)  # first: a copied event never names a missing blob
    target.import_run(run_id, rows, after=had)
    report = target.verify(run_id)
    if not report.ok or report.checked != len(rows):
        raise StoreCorrupted(
            f"run {run_id!r} does not verify on the target after the copy: {report.problem}"
        )
    running = project(source, run_id).pipeline.status == "running"
    return Copied(run_id, len(rows) - had, len(blobs), had=had, running=running)


def describe(copied: Iterable[Copied]) -> list[str]:
    return [
        f"{c.run_id}: already in the target, the same {c.events} events; skipped"
        if c.skipped
        else f"copied {c.run_id}: {c.events} events"
        + (f" after the {c.had} the target had" if c.had else "")
        + f", {c.blobs} blobs, verified"
        + (" (it was running: copy it again once it ends, for the rest)" if c.running else "")
        for c in copied
    ]
