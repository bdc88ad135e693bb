"""Copying runs from one log to another (SQLite, PostgreSQL, either way).

A run is copied with its rows as they are — versions, times, causations and hashes —
at the target's next positions, and with every blob its events name. The rows' hash
chain is verified before anything is written (``EventStore.import_run``) and again
on the target afterwards. A run the target already has, row for row (the same
versions and the same last hash, so the same chain), is skipped: a copy cut off
half-way is finished by the same command. A run the target has otherwise is refused,
and all of them are checked before the first is copied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from events.errors import EventStoreError, RunNotFound, StoreCorrupted
from events.store import EventStore

_DIGEST = re.compile(r'"([0-9a-f]{64})"')
"""A sha256 in a payload: a blob's digest, or another hash (then not in the blobs)."""


@dataclass(frozen=True)
class Copied:
    run_id: str
    events: int
    blobs: int
    skipped: bool = False
    """The target had the run already, row for row."""


def copy_runs(source: EventStore, target: EventStore, run_ids: Sequence[str] = ()) -> list[Copied]:
    """Copy ``run_ids`` (every run of ``source`` when empty) into ``target``."""
    known = [info.run_id for info in source.runs()]
    wanted = list(dict.fromkeys(run_ids)) or known
    for run_id in wanted:
        if run_id not in known:
            raise RunNotFound(run_id)
    present = {run_id: head for run_id in wanted if (head := _head(target, run_id))[0] > 0}
    differing = [run_id for run_id, head in present.items() if head != _head(source, run_id)]
    if differing:
        raise EventStoreError(
            f"the target already has run(s) {', '.join(differing)}, with other events; "
            "nothing was copied"
        )
    return [
        Copied(run_id, present[run_id][0], 0, skipped=True)
        if run_id in present
        else _copy_one(source, target, run_id)
        for run_id in wanted
    ]


def _head(store: EventStore, run_id: str) -> tuple[int, str]:
    """A run's last version and the hash of its last row: equal heads, equal chains."""
    last = store.last_version(run_id)
    row = next(iter(store.read_raw(run_id, after=last - 1)), None) if last else None
    return last, row.hash if row is not None else ""


def _copy_one(source: EventStore, target: EventStore, run_id: str) -> Copied:
    rows = list(source.read_raw(run_id))
    digests = sorted({d for row in rows for d in _DIGEST.findall(row.data)})
    blobs = [source.get(d) for d in digests if source.has_blob(d)]
    target.put_many(blobs)  # first: a copied event never names a missing blob
    target.import_run(run_id, rows)
    report = target.verify(run_id)
    if not report.ok or report.checked != len(rows):
        raise StoreCorrupted(
            f"run {run_id!r} does not verify on the target after the copy: {report.problem}"
        )
    return Copied(run_id=run_id, events=len(rows), blobs=len(blobs))


def describe(copied: Iterable[Copied]) -> list[str]:
    return [
        f"{c.run_id}: already in the target, the same {c.events} events; skipped"
        if c.skipped
        else f"copied {c.run_id}: {c.events} events, {c.blobs} blobs, verified"
        for c in copied
    ]
