"""The event store: an append-only log of runs, and a content-addressed blob table.

Backends (``events.sqlite.SQLiteEventStore``, ``events.memory.MemoryEventStore``)
only move ``StoredEvent`` rows: the payload is JSON text they never interpret. This
base class does the mapping (encode on append, typed decode on read) and the parts
of the contract that are the same for every backend: version checks, the hash
chain, verification.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.codec import Codec, chain_hash, encode
from events.errors import BlobNotFound, ConcurrencyError, StoreCorrupted
from events.lease import FileLeases, LocalLeases
from events.schema import Event

Clock = Callable[[], datetime]
READ_CHUNK = 1000


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """``2026-11-24T12:00:00.000000Z``: UTC, microseconds, sortable as text."""
    # isoformat is twice as fast as strftime, and this runs on every append
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


Row = tuple[int, str, int, str, int, str, int | None, str, str]
"""(position, run_id, version, type, schema_version, recorded_at, causation, hash, data):
what backends store and yield; the field order of ``StoredEvent``."""

Payload = tuple[int, str, int, str]
"""(version, type, schema_version, data): the part of a row that a fold needs, see
``EventStore.read_payloads``."""


class StoredEvent(msgspec.Struct, frozen=True):
    """One row of the events table, payload still encoded."""

    position: int
    run_id: str
    version: int
    type: str
    schema_version: int
    recorded_at: str
    causation: int | None
    hash: str
    data: str


class RecordedEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as read back from the log: the envelope and the typed payload.

    ``gc=False`` like the payloads: scalars and an event, never part of a cycle."""

    position: int
    run_id: str
    version: int
    type: str
    schema_version: int
    recorded_at: str
    causation: int | None
    hash: str
    data: Event


class Draft(msgspec.Struct, frozen=True, kw_only=True):
    """An event about to be appended: encoded, not yet numbered."""

    type: str
    schema_version: int
    data: str
    causation: int | None


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    version: int
    first_position: int
    last_position: int
    started_at: str
    last_at: str


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Result of ``verify``: ``ok`` or the first bad event and what is wrong with it."""

    run_id: str
    ok: bool
    checked: int
    first_bad_position: int | None = None
    first_bad_version: int | None = None
    problem: str = ""


def blob_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def number(
    run_id: str,
    drafts: Sequence[Draft],
    *,
    last_version: int,
    last_hash: str,
    recorded_at: str,
    first_position: int,
) -> list[Row]:
    """Give drafts their versions, positions and chained hashes. Backends call this
    inside their write transaction, after checking the expected version."""
    rows: list[Row] = []
    previous = last_hash
    for offset, draft in enumerate(drafts):
        version = last_version + offset + 1
        digest = chain_hash(
            previous,
            run_id=run_id,
            version=version,
            type=draft.type,
            schema_version=draft.schema_version,
            recorded_at=recorded_at,
            causation=draft.causation,
            data=draft.data,
        )
        rows.append(
            (
                first_position + offset,
                run_id,
                version,
                draft.type,
                draft.schema_version,
                recorded_at,
                draft.causation,
                digest,
                draft.data,
            )
        )
        previous = digest
    return rows


class EventStore(ABC):
    """The log. ``append`` is atomic per batch and checks the expected version."""

    _leases: LocalLeases | FileLeases

    def __init__(self, *, clock: Clock = utc_now, codec: Codec | None = None) -> None:
        self._leases = LocalLeases()
        self.clock = clock
        self.codec = codec if codec is not None else Codec()

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        expected_version: int,
        *,
        causation: int | None = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` to ``run_id`` if its last version is ``expected_version``.

        Raises ``ConcurrencyError`` and writes nothing when another writer got there
        first. Returns the recorded events (positions, versions and hashes filled in).
        """
        if not events:
            return []
        drafts = [
            Draft(
                type=e.type_name(),
                schema_version=e.schema_version,
                data=encode(e),
                causation=causation,
            )
            for e in events
        ]
        rows = self._append_rows(run_id, drafts, expected_version, format_time(self.clock()))
        return [RecordedEvent(*row[:8], event) for row, event in zip(rows, events, strict=True)]

    @abstractmethod
    def _append_rows(
        self, run_id: str, drafts: Sequence[Draft], expected_version: int, recorded_at: str
    ) -> list[Row]:
        """Check the version, number the drafts with ``number`` and store them atomically."""

    # -- reading ---------------------------------------------------------------------

    def read(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[RecordedEvent]:
        """The events of one run with ``after < version <= upto``, in order."""
        decode = self._decode_row
        for row in self._rows(run_id, after, upto):
            yield decode(row)

    def read_all(
        self,
        *,
        after_position: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """Events of every run after a global position, optionally of some types only."""
        decode = self._decode_row
        for row in self._all_rows(after_position, types, limit):
            yield decode(row)

    def read_raw(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[StoredEvent]:
        """Rows of one run, payload undecoded."""
        for row in self._rows(run_id, after, upto):
            yield StoredEvent(*row)

    def read_payloads(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[Payload]:
        """Rows of one run reduced to ``Payload`` tuples, payload undecoded.

        The rebuild's fast path (``projections.project``): a backend may read fewer
        columns and build no row objects. A row that needs more (an old schema
        version, an error to report) is read again whole with ``read_raw``."""
        for row in self._rows(run_id, after, upto):
            yield (row[2], row[3], row[4], row[8])

    def read_all_raw(
        self,
        *,
        after_position: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[StoredEvent]:
        """Rows of every run after a position, payload undecoded."""
        for row in self._all_rows(after_position, types, limit):
            yield StoredEvent(*row)

    def decode(self, row: StoredEvent) -> RecordedEvent:
        """The typed event of a stored row (upcast first if it is an old version)."""
        return self._decode_row(msgspec.structs.astuple(row))

    def _decode_row(self, row: Row) -> RecordedEvent:
        event = self.codec.decode(row[3], row[4], row[8], position=row[0])
        return RecordedEvent(*row[:8], event)

    @abstractmethod
    def _rows(self, run_id: str, after: int, upto: int | None) -> Iterator[Row]:
        """Row tuples of one run with ``after < version <= upto``, in version order."""

    @abstractmethod
    def _all_rows(
        self, after_position: int, types: Iterable[str] | None, limit: int | None
    ) -> Iterator[Row]:
        """Row tuples of every run after a position, in position order."""

    @abstractmethod
    def last_version(self, run_id: str) -> int:
        """The run's last version, 0 when it has no events."""

    @abstractmethod
    def runs(self) -> list[RunInfo]:
        """One entry per run, in order of first appearance."""

    # -- blobs -----------------------------------------------------------------------

    def put(self, content: bytes) -> str:
        """Store ``content`` once under its sha256; returns the digest."""
        digest = blob_digest(content)
        self._put_blob(digest, content)
        return digest

    def put_many(self, contents: Iterable[bytes]) -> list[str]:
        """``put`` each of ``contents``, in one transaction where the backend has them."""
        items = [(blob_digest(content), content) for content in contents]
        self._put_blobs(items)
        return [digest for digest, _ in items]

    def _put_blobs(self, items: Sequence[tuple[str, bytes]]) -> None:
        for digest, content in items:
            self._put_blob(digest, content)

    def get(self, digest: str) -> bytes:
        content = self._get_blob(digest)
        if content is None:
            raise BlobNotFound(f"no blob {digest!r} in this log")
        return content

    def has_blob(self, digest: str) -> bool:
        return self._get_blob(digest) is not None

    @abstractmethod
    def _put_blob(self, digest: str, content: bytes) -> None: ...

    @abstractmethod
    def _get_blob(self, digest: str) -> bytes | None: ...

    # -- leases ----------------------------------------------------------------------

    def lease(self, run_id: str, owner: str) -> AbstractContextManager[None]:
        """Hold ``run_id``'s lease while the context lasts: ``LeaseHeld`` (naming the
        owner) if another engine holds it. See ``events.lease``."""
        return self._leases.hold(run_id, owner)

    # -- integrity -------------------------------------------------------------------

    def verify(self, run_id: str) -> VerifyReport:
        """Recompute the run's hash chain; report the first event that breaks it."""
        return verify_rows(run_id, self.read_raw(run_id))

    def import_run(self, run_id: str, rows: Sequence[StoredEvent]) -> None:
        """Add a run copied from another log: its rows as they are (versions, times,
        causations, hashes), at this log's next positions, in one transaction.

        ``StoreCorrupted`` (nothing written) when the rows' chain does not verify;
        ``ConcurrencyError`` when this log already has events of ``run_id``."""
        report = verify_rows(run_id, rows)
        if not report.ok:
            raise StoreCorrupted(
                f"run {run_id!r} does not verify at version {report.first_bad_version}: "
                f"{report.problem}; nothing was copied"
            )
        if rows:
            self._import_rows(run_id, [msgspec.structs.astuple(row) for row in rows])

    @abstractmethod
    def _import_rows(self, run_id: str, rows: Sequence[Row]) -> None:
        """Store ``rows`` (positions to be replaced by this log's) if the run has no
        events here, else raise ``ConcurrencyError``; atomically."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release the backend's resources."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_rows(run_id: str, rows: Iterable[StoredEvent]) -> VerifyReport:
    """The first row of ``rows`` (one run, in version order) that breaks its chain."""
    previous = ""
    checked = 0
    for row in rows:
        checked += 1
        problem = ""
        if row.version != checked:
            problem = f"version {row.version} where {checked} was expected (a gap)"
        else:
            expected = chain_hash(
                previous,
                run_id=run_id,
                version=row.version,
                type=row.type,
                schema_version=row.schema_version,
                recorded_at=row.recorded_at,
                causation=row.causation,
                data=row.data,
            )
            if expected != row.hash:
                problem = "hash does not match the chain: the row was changed after it was written"
        if problem:
            return VerifyReport(
                run_id=run_id,
                ok=False,
                checked=checked,
                first_bad_position=row.position,
                first_bad_version=row.version,
                problem=problem,
            )
        previous = row.hash
    return VerifyReport(run_id=run_id, ok=True, checked=checked)


RUNS_SQL = (
    "SELECT run_id, max(version), min(position), max(position), min(recorded_at),"
    " max(recorded_at) FROM events GROUP BY run_id ORDER BY min(position)"
)
"""What ``runs`` asks of an SQL backend; ``run_infos`` reads its rows."""


def run_infos(rows: Iterable[Sequence[Any]]) -> list[RunInfo]:
    return [
        RunInfo(run_id=r, version=v, first_position=f, last_position=la, started_at=s, last_at=e)
        for (r, v, f, la, s, e) in rows
    ]


def chunks(
    fetch: Callable[[int, int], list[Any]], after: int, key_at: int, limit: int | None = None
) -> Iterator[list[Any]]:
    """Keyset pagination for SQL backends: ``fetch(after, n)`` returns up to ``n``
    rows whose column ``key_at`` is above ``after``, in order; asked again after the
    last row's key until a chunk comes back short or ``limit`` rows were read. Each
    chunk is a query of its own, so no statement stays open (and no lock held)
    while the caller works on a chunk."""
    remaining = limit if limit is not None else 2**62
    while remaining > 0:
        size = min(READ_CHUNK, remaining)
        rows = fetch(after, size)
        yield rows
        remaining -= len(rows)
        if len(rows) < size:
            return
        after = rows[-1][key_at]


def check_expected(run_id: str, expected: int, actual: int) -> None:
    if expected != actual:
        raise ConcurrencyError(run_id, expected, actual)
