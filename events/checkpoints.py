"""Checkpoints: a run's last version and hash, kept outside the log.

A keyed chain proves that whoever wrote a row held the key; it cannot show that
rows were deleted from the end of a run, nor stop someone holding the key (or a
whole log rewritten unkeyed) from writing a new history. A checkpoint can: one
JSON line per run (run id, last version, hash at that version, time taken) that
the user keeps somewhere the log's writers cannot reach (git, another disk).
``check`` then fails a run that is shorter than its checkpoint or whose hash at
that version differs.

    {"run_id": "run-1", "version": 95, "hash": "3f2a…:9c…", "at": "2026-11-26T13:00:00.000000Z"}
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import msgspec

from events.errors import CheckpointError
from events.store import EventStore, Problem, format_time, utc_now


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``run_id`` had ``version`` events, the last hashed ``hash``, at ``at``."""

    run_id: str
    version: int
    hash: str
    at: str


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Checkpoint)


def take(
    store: EventStore, run_ids: Iterable[str] | None = None, *, now: datetime | None = None
) -> list[Checkpoint]:
    """A checkpoint of each run (every run of the log by default) as it is now; rows
    whose run id is not text (added by hand: ``verify`` names them) are no run."""
    at = format_time(now or utc_now())
    if run_ids is None:
        ids = [info.run_id for info in store.runs() if isinstance(info.run_id, str)]
    else:
        ids = list(run_ids)
    taken = []
    for run_id in ids:
        version = store.last_version(run_id)
        last = next(store.read_raw(run_id, after=version - 1, upto=version), None)
        if last is not None:
            taken.append(Checkpoint(run_id=run_id, version=version, hash=last.hash, at=at))
    return taken


def dumps(checkpoint: Checkpoint) -> str:
    """One JSON line, without the newline."""
    return _ENCODER.encode(checkpoint).decode()


def loads(text: str, *, source: str = "checkpoints") -> list[Checkpoint]:
    """The checkpoints of a JSON Lines text; blank lines are skipped. A line that is
    not a checkpoint is a ``CheckpointError`` naming the line."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            checkpoint = _DECODER.decode(line)
        except (msgspec.DecodeError, RecursionError) as e:  # nested too deeply: recursion
            raise CheckpointError(f"{source} line {number} is not a checkpoint: {e}") from e
        if checkpoint.version < 1:  # no run is at 0 (nor below): "events were deleted"
            raise CheckpointError(
                f"{source} line {number} is not a checkpoint: version {checkpoint.version} "
                "(a run's versions begin at 1)"
            )
        found.append(checkpoint)
    if not found:  # checked against nothing, verify said "ok" as if it had been
        raise CheckpointError(f"{source} holds no checkpoint: nothing to check the runs against")
    return found


def check(store: EventStore, checkpoint: Checkpoint) -> Problem | None:
    """What is wrong with the run against ``checkpoint``, or None: fewer events
    than it saw, or another hash at its version."""
    run_id, version = checkpoint.run_id, checkpoint.version
    row = next(store.read_raw(run_id, after=version - 1, upto=version), None)
    if row is None:
        have = store.last_version(run_id)
        deleted = "events were deleted" if have else "the run was deleted from the log"
        return Problem(
            version=version,
            problem=f"the run has {have} events, but the checkpoint taken at {checkpoint.at} "
            f"saw {version}: {deleted} (or the checkpoint is another log's)",
        )
    if row.hash != checkpoint.hash:
        return Problem(
            position=row.position,
            version=version,
            type=row.type,
            problem=f"hash differs from the checkpoint taken at {checkpoint.at}: the history "
            "up to this version was rewritten",
        )
    return None
