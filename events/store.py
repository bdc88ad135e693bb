"""The event store: an append-only log of runs, and a content-addressed blob table.

Backends (``events.sqlite.SQLiteEventStore``, ``events.memory.MemoryEventStore``)
only move ``StoredEvent`` rows: the payload is JSON text they never interpret. This
base class does the mapping (encode on append, typed decode on read) and the parts
of the contract that are the same for every backend: version checks, the hash
chain, verification.

The chain is keyed when the store is given a key (the engine passes it in; this
package never reads the environment). A run's first event decides, for good,
whether the run is keyed: an unkeyed run (every log before keys) stays unkeyed,
and a keyed run takes appends only from a store holding the same key. The first
keyed run also leaves a mark in the log (``keyed_marker``): from that position on,
every run must be keyed, and the mark names the unkeyed runs the log held then,
the only ones it may ever hold, so a run rewritten with plain sha256 by someone
without the key is found wherever its rows are put. What cannot be found from the
log alone (the mark deleted and every keyed run rewritten) is what checkpoints kept
elsewhere are for (``events.checkpoints``).
"""

from __future__ import annotations

import functools
import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import msgspec

from events.codec import CURRENT, ChainKey, Codec, chain_hash, encode, hash_key_id
from events.errors import (
    BlobCorrupt,
    BlobNotFound,
    ConcurrencyError,
    RunNotFound,
    SchemaError,
    StoreCorrupted,
    WrongKey,
)
from events.lease import FileLeases, LocalLeases
from events.schema import EVENT_TYPES, Event

Clock = Callable[[], datetime]
READ_CHUNK = 1000


def utc_now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=1)
def format_time(moment: datetime) -> str:
    """``2026-11-24T12:00:00.000000Z``: UTC, microseconds, sortable as text."""
    # isoformat is twice as fast as strftime, and this runs on every append; the
    # cache serves a clock that stands still (a replay's scratch log, a test's)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


Row = tuple[int, str, int, str, int, str, int | None, str, str]
"""(position, run_id, version, type, schema_version, recorded_at, causation, hash, data):
what backends store and yield; the field order of ``StoredEvent``."""

Brief = tuple[int, str, int, int | None, str]
"""(version, type, schema_version, causation, data): what a replay reads of a row, see
``EventStore.read_brief``."""

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


class RowExtent(msgspec.Struct, frozen=True):
    """What the events table holds of one run, counted by the database rather than
    read along the run's versions: ``verify`` compares it with the chain it walked,
    so that no row stays where no read goes (a version below 1 or past any bound, a
    second row at one version). Values are as stored: a tampered row may hold any."""

    run_id: object
    rows: int
    first_version: object
    last_version: object
    first_position: object
    odd_versions: int
    """Rows whose version is not a whole number."""

    def problem(self, chain: int) -> str:
        """What is wrong for a run whose chain walked versions 1..``chain`` ("" if
        nothing is)."""
        if (
            self.rows == chain
            and self.first_version == 1
            and self.last_version == chain
            and not self.odd_versions
        ):
            if isinstance(self.first_position, int) and self.first_position >= 1:
                return ""
            return f"a row of this run is at position {self.first_position}, below 1: it was moved"
        odd = f", {self.odd_versions} of them not whole numbers" if self.odd_versions else ""
        return (
            f"the table holds {self.rows} rows of this run (versions {self.first_version} to "
            f"{self.last_version}{odd}) but its chain is {chain} events: rows were added "
            "where no read of the run goes (a version below 1, past the last, or twice)"
        )


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


SummaryRow = tuple[str, int, int, str]
"""(run_id, version, last_position, summary): one run's row of the run summaries, a
derived table a projection keeps (``projections.summaries``). The store keeps the
summary as text it never reads, like an event's payload."""


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One thing wrong with a run: where (position, version, type) and what."""

    position: int | None = None
    version: int | None = None
    type: str = ""
    problem: str


MAX_PROBLEMS = 50
"""Problems reported per run; past that, one more line says how many were left out."""


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Result of ``verify``: ``ok``, or every problem found (``problems``; the
    first is repeated in ``first_bad_*`` and ``problem``).

    ``key_id`` is the key the run was written with ("" for an unkeyed run);
    ``authenticated`` is True only when the chain was recomputed under that key."""

    run_id: str
    ok: bool
    checked: int
    first_bad_position: int | None = None
    first_bad_version: int | None = None
    problem: str = ""
    problems: tuple[Problem, ...] = ()
    key_id: str = ""
    authenticated: bool = False

    @property
    def authentication(self) -> str:
        """How far the chain proves the rows: ``keyed``, ``unkeyed``, or why not."""
        if not self.key_id:
            return "unkeyed"
        return "keyed" if self.authenticated else f"not authenticated (key {self.key_id})"


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
    key: ChainKey | None = None,
) -> list[Row]:
    """Give drafts their versions, positions and chained hashes. Backends call this
    inside their write transaction, after checking the expected version.

    A new run is keyed when ``key`` is given; an existing run keeps what its hashes
    say it is (``run_key``)."""
    key = run_key(run_id, last_hash, key) if last_version else key
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
            key=key,
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


def run_key(run_id: str, last_hash: str, key: ChainKey | None) -> ChainKey | None:
    """The key to continue a run whose last hash is ``last_hash`` with: none for an
    unkeyed run; ``key`` for a run keyed with it; else ``WrongKey``."""
    written_with = hash_key_id(last_hash)
    if not written_with:
        return None
    if key is None:
        raise WrongKey(
            f"run {run_id!r} was written with key {written_with}, and this store has no "
            "key: appending to it would break its chain"
        )
    if key.id != written_with:
        raise WrongKey(
            f"run {run_id!r} was written with key {written_with}, not with this store's "
            f"key {key.id}: appending to it would break its chain"
        )
    return key


def refuse_unkeyed_run(run_id: str, marker: str | None) -> None:
    """A store without a key may not start a run in a log that holds keyed runs:
    ``verify`` would take the run for one rewritten by someone without the key."""
    if marker is not None:
        raise WrongKey(
            f"cannot start run {run_id!r} without a key: this log's runs are keyed from "
            f"position {marker.split(' ')[0]} on"
        )


def keyed_marker(key: ChainKey, position: int, unkeyed: Iterable[str]) -> str:
    """The log's mark that runs are keyed from ``position`` on: the position, the
    key id, a MAC, and the runs the log held then (``unkeyed``), which are the only
    unkeyed runs it may ever hold. The MAC covers the position and the runs, so that
    nobody without the key can move the mark or add a run to it. The runs are named
    because a run's position is not in its chain: a run rewritten without the key
    and renumbered below the mark's position looked like one from before keys."""
    listed = msgspec.json.encode(sorted(set(unkeyed))).decode()
    return f"{position} {key.id} {key.mac(_marked(position, listed))} {listed}"


def _marked(position: int, listed: str | None) -> bytes:
    if listed is None:  # a mark written before marks named their runs
        return f"keyed from {position}".encode()
    return f"keyed from {position}; unkeyed runs {listed}".encode()


class KeyedMark(msgspec.Struct, frozen=True):
    """What a log's keyed mark says (``check_keyed_marker``)."""

    position: int
    """Runs are keyed from this position on."""
    unkeyed: frozenset[str] | None
    """The runs that may be unkeyed; None for a mark from before marks named them,
    where an unkeyed run is allowed below ``position`` (a weaker check: positions
    can be renumbered)."""
    problem: str = ""
    """What is wrong with the mark ("" if nothing, or if only a key could tell and
    there is none)."""

    def allows_unkeyed(self, run_id: str, first_position: int | None) -> bool:
        """Whether run ``run_id`` (whose first row is at ``first_position``) may be
        unkeyed."""
        if self.unkeyed is not None:
            return run_id in self.unkeyed
        return first_position is None or first_position < self.position


def check_keyed_marker(marker: str, key: ChainKey | None) -> KeyedMark:
    """What a ``keyed_marker`` says, and what is wrong with it."""
    parts = marker.split(" ", 3)
    try:
        position_text, marker_key, mac = parts[:3]
        position = int(position_text)
        listed = parts[3] if len(parts) == 4 else None
        runs = None if listed is None else msgspec.json.decode(listed, type=list[str])
    except (ValueError, msgspec.DecodeError):
        return KeyedMark(
            0, frozenset(), f"the log's keyed mark {marker!r} is malformed: it was changed"
        )
    mark = KeyedMark(position, None if runs is None else frozenset(runs))
    if key is not None and key.id != marker_key:
        # the runs keyed with that key fail under this one too, so no genuine log
        # verifies here with it: a mark naming another key was made to go unchecked
        return msgspec.structs.replace(
            mark,
            problem=f"the log's keyed mark names key {marker_key}, not this key ({key.id}): it "
            "cannot be checked (the wrong key, or the mark was changed)",
        )
    if key is not None and key.mac(_marked(position, listed)) != mac:
        return msgspec.structs.replace(
            mark, problem="the log's keyed mark does not match its MAC: it was changed"
        )
    return mark


def unkeyed_runs(first_rows: Iterable[Sequence[object]], but: str) -> list[str]:
    """The unkeyed runs among ``first_rows`` ((run id, hash) of each run's first
    row), ``but`` aside: for a keyed mark (``keyed_marker``)."""
    return [
        run_id
        for run_id, stored_hash in first_rows
        if isinstance(run_id, str) and run_id != but and not hash_key_id(str(stored_hash))
    ]


class EventStore(ABC):
    """The log. ``append`` is atomic per batch and checks the expected version.

    ``key`` (secret bytes, or None) keys the hash chain of the runs this store
    starts; see the module docstring."""

    _leases: LocalLeases | FileLeases
    read_only: bool = False
    """Opened for reading only: derived tables are then caught up in memory."""

    def __init__(
        self, *, clock: Clock = utc_now, codec: Codec | None = None, key: bytes | None = None
    ) -> None:
        self.after_append: Callable[[EventStore, list[RecordedEvent]], None] | None = None
        """Called after each append commits (``projections.summaries`` keeps the run
        summaries up to date from it); its errors are the caller's."""
        self._leases = LocalLeases()
        self.clock = clock
        self.codec = codec if codec is not None else Codec()
        self.key = ChainKey(key) if key else None

    @property
    def key_id(self) -> str:
        """The id of the key new runs are keyed with ("" without one): what the
        engine records in ``run.started``."""
        return self.key.id if self.key is not None else ""

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
        recorded = [RecordedEvent(*row[:8], event) for row, event in zip(rows, events, strict=True)]
        if self.after_append is not None:
            self.after_append(self, recorded)
        return recorded

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
        return self._decode_rows(self._rows(run_id, after, upto))

    def read_brief(self, run_id: str, *, upto: int | None = None) -> Iterator[RecordedEvent]:
        """The events of one run up to ``upto``, as ``read`` gives them but for what
        a replay never looks at: a backend may leave each event's ``position``,
        ``recorded_at`` and ``hash`` unread (0, "", ""), and read fewer columns."""
        return self.read(run_id, upto=upto)

    def _decode_brief(self, run_id: str, rows: Iterable[Brief]) -> Iterator[RecordedEvent]:
        """The events of ``Brief`` rows, decoded as ``_decode_rows`` does; a row the
        fast path cannot take is read again whole, for the codec."""
        decode = CURRENT.decode
        class_of = EVENT_TYPES.get
        for version, kind, schema, causation, data in rows:
            if type(version) is not int or (causation is not None and type(causation) is not int):
                raise StoreCorrupted(
                    f"an event of run {run_id!r} has a version or cause of another type "
                    "than the log writes: the log was changed (autonomy verify says how)"
                )
            try:
                event: Event = decode(data)
                if class_of(kind) is not type(event) or event.schema_version != schema:
                    event = self.event_at(run_id, version)
            except (msgspec.MsgspecError, RecursionError, TypeError):  # the codec says how
                event = self.event_at(run_id, version)
            yield RecordedEvent(0, run_id, version, kind, schema, "", causation, "", event)

    def event_at(self, run_id: str, version: int) -> Event:
        """The event at ``version``, its row read whole and decoded as ``read`` does:
        where a fast path cannot take a row (an older schema version, broken data),
        the codec's upcast, or the ``SchemaError`` naming the row."""
        for event in self.read(run_id, after=version - 1, upto=version):
            return event.data
        raise RunNotFound(run_id)  # pragma: no cover - rows are never deleted

    def read_all(
        self,
        *,
        after_position: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[RecordedEvent]:
        """Events of every run after a global position, optionally of some types only."""
        return self._decode_rows(self._all_rows(after_position, types, limit))

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
        return next(self._decode_rows((msgspec.structs.astuple(row),)))

    def _decode_rows(self, rows: Iterable[Row]) -> Iterator[RecordedEvent]:
        """The typed events of ``rows``: a payload at its type's current schema
        version (every row but in a log written by an older autonomy) costs one
        C-level decode (``CURRENT``) and a check that the class decoded is the row's
        type at its version; any other row, and any that fails, goes through
        ``self.codec`` for the upcast or the ``SchemaError`` naming the row."""
        decode = CURRENT.decode
        class_of = EVENT_TYPES.get
        for position, run_id, version, kind, schema, at, causation, digest, data in rows:
            if (
                type(at) is not str
                or type(digest) is not str
                or type(version) is not int
                or (causation is not None and type(causation) is not int)
            ):
                raise StoreCorrupted(
                    f"the event at position {position} of run {run_id!r} has a version, time, "
                    "cause or hash of another type than the log writes: the log was changed "
                    "(autonomy verify says how)"
                )
            try:
                event: Event = decode(data)
                if class_of(kind) is not type(event) or event.schema_version != schema:
                    event = self.codec.decode(kind, schema, data, position=position)
            except (msgspec.MsgspecError, RecursionError, TypeError):  # the codec says how
                event = self.codec.decode(kind, schema, data, position=position)
            yield RecordedEvent(
                position, run_id, version, kind, schema, at, causation, digest, event
            )

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

    def runs(self) -> list[RunInfo]:
        """One entry per run, in order of first appearance."""
        return self.runs_after(0)

    @abstractmethod
    def runs_after(self, position: int) -> list[RunInfo]:
        """One entry per run with events after ``position``, in order of its first
        event there, describing only those events (their versions, positions and
        times): the runs a catch-up projection must bring up to date."""

    # -- the run summaries (a derived table, see ``projections.summaries``) --------------

    @abstractmethod
    def summary_position(self) -> int | None:
        """The position up to which the run summaries hold every event; None when
        the log has no summaries table (an older log opened read-only)."""

    @abstractmethod
    def summary_rows(self, run_ids: Sequence[str] | None = None) -> list[SummaryRow]:
        """The stored summaries of ``run_ids`` (every run's by default)."""

    @abstractmethod
    def save_summaries(
        self, expected: int, position: int, rows: Sequence[SummaryRow], *, replace: bool = False
    ) -> bool:
        """Store ``rows`` and move the summaries' position from ``expected`` to
        ``position``, in one transaction, if the position is still ``expected``
        (else another writer caught up first: nothing is written, False).
        ``replace`` drops every other row first (a rebuild) whatever the position."""

    poll_seconds = 0.2
    """How often ``wait_for_append`` looks at a backend that cannot be told."""

    def wait_for_append(self, run_id: str, after: int, timeout: float) -> bool:
        """Wait until ``run_id`` has an event past version ``after``, for at most
        ``timeout`` seconds; whether it has one. The one way a live tail waits
        (``engine.web``): a backend that is told of appends (PostgreSQL's
        ``LISTEN``) waits for that; the others look every ``poll_seconds``."""
        deadline = time.monotonic() + timeout
        while self.last_version(run_id) <= after:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.poll_seconds, left))
        return True

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
        """The content stored under ``digest``, checked against it: ``BlobCorrupt``
        when its sha256 or its recorded size differs (so nothing restores changed
        bytes), ``BlobNotFound`` when there is none."""
        found = self._get_blob(digest)
        if found is None:
            raise BlobNotFound(f"no blob {digest!r} in this log")
        content, size = found
        actual = blob_digest(content)
        if actual != digest:
            raise BlobCorrupt(
                f"blob {digest} is corrupt: its content hashes to {actual}; it was changed "
                "after it was stored"
            )
        if size != len(content):
            raise BlobCorrupt(
                f"blob {digest} is corrupt: {len(content)} bytes where {size} were stored"
            )
        return content

    def has_blob(self, digest: str) -> bool:
        return self._get_blob(digest) is not None

    def blob_digests(self) -> Iterator[str]:
        """The digest of every stored blob."""
        return self._blob_digests()

    @abstractmethod
    def _put_blob(self, digest: str, content: bytes) -> None: ...

    @abstractmethod
    def _get_blob(self, digest: str) -> tuple[bytes, int] | None:
        """The content stored under ``digest`` and the size recorded with it."""

    @abstractmethod
    def _blob_digests(self) -> Iterator[str]: ...

    # -- the log as a whole --------------------------------------------------------------

    def keyed_marker(self) -> str | None:
        """The mark the first keyed run left (``keyed_marker``), None if none did."""
        return None

    def row_extents(self) -> list[RowExtent]:
        """Each run's rows as the database counts them (``RowExtent``)."""
        found: dict[str, list[int]] = {}
        for row in self.read_all_raw():
            seen = found.setdefault(row.run_id, [])
            seen.append(row.version)
        positions = {info.run_id: info.first_position for info in self.runs()}
        return [
            RowExtent(run_id, len(v), min(v), max(v), positions.get(run_id, 0), 0)
            for run_id, v in found.items()
        ]

    database_checks: str = ""
    """What ``database_problems`` checks, in a few words, for ``verify`` to say."""

    def database_problems(self) -> list[str]:
        """What is wrong with the storage itself (a backend with a file checks it);
        a backend without one has nothing to report."""
        return []

    # -- leases ----------------------------------------------------------------------

    def lease(self, run_id: str, owner: str) -> AbstractContextManager[None]:
        """Hold ``run_id``'s lease while the context lasts: ``LeaseHeld`` (naming the
        owner) if another engine holds it. See ``events.lease``."""
        return self._leases.hold(run_id, owner)

    # -- integrity -------------------------------------------------------------------

    def verify(self, run_id: str, *, upto: int | None = None) -> VerifyReport:
        """Recompute the run's hash chain and report every event that breaks it.

        An unkeyed run is recomputed with plain sha256. A keyed run is recomputed
        under this store's key when it is the run's key; without a key only its
        structure is checked (versions, one key id throughout), and the report
        says it is not authenticated; with another key it fails. A ``run.started``
        that names a key its chain was not written with fails too: that is a keyed
        run rewritten as plain sha256. ``upto``: the last version to check (what was
        counted of a run that may be appended to meanwhile).
        """
        return self.verify_rows(run_id, self.read_raw(run_id, upto=upto))

    def verify_rows(self, run_id: str, rows: Iterable[StoredEvent]) -> VerifyReport:
        """``verify`` of ``rows`` (one run, in version order) from anywhere: this
        log's, or another's being copied in (``import_run``)."""
        problems: list[Problem] = []
        previous = ""
        checked = 0
        written_with = ""
        key: ChainKey | None = None
        recompute = True
        position = 0
        for row in rows:
            checked += 1
            odd = odd_columns(row)
            if odd:  # nothing below may meet a value of another type
                problems.append(_problem(row, f"{odd}: the row was changed"))
                if type(row.version) is int:
                    checked = row.version
                previous = row.hash if type(row.hash) is str else ""
                continue
            if row.position <= position:
                # the chain leaves positions out (a copy renumbers them): their order
                # is what holds, a run's events in the order they were appended
                text = (
                    f"at position {row.position}, not after the previous event's "
                    f"{position}: the rows were moved"
                )
                problems.append(_problem(row, text))
            position = row.position
            if checked == 1:
                written_with = hash_key_id(row.hash)
                key, recompute, text = self._run_key_for_verify(written_with)
                if text:
                    problems.append(_problem(row, text))
                named = self._named_key(row)
                # (a keyed chain whose run.started names no key proves as much: only
                # a run.started naming another key than its chain's is a rewrite)
                if named and named != written_with:
                    chain = f"keyed with {written_with}" if written_with else "unkeyed"
                    problems.append(
                        _problem(
                            row,
                            f"run.started names key {named or 'none'} but the chain is "
                            f"{chain}: the run was rewritten",
                        )
                    )
            if row.version != checked:
                text = f"version {row.version} where {checked} was expected (a gap)"
                problems.append(_problem(row, text))
                checked = row.version
            if hash_key_id(row.hash) != written_with:
                text = (
                    f"hash written with key {hash_key_id(row.hash) or 'none'} in a run "
                    f"written with key {written_with or 'none'}: the row was changed"
                )
                problems.append(_problem(row, text))
            elif recompute:
                expected = chain_hash(
                    previous,
                    run_id=run_id,  # the chain covers the id the rows are read as
                    version=row.version,
                    type=row.type,
                    schema_version=row.schema_version,
                    recorded_at=row.recorded_at,
                    causation=row.causation,
                    data=row.data,
                    key=key,
                )
                if expected != row.hash:
                    text = "hash does not match the chain: the row was changed after it was written"
                    problems.append(_problem(row, text))
            previous = row.hash
        if len(problems) > MAX_PROBLEMS:
            left = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], Problem(problem=f"... and {left} more")]
        first = problems[0] if problems else None
        return VerifyReport(
            run_id=run_id,
            ok=not problems,
            checked=checked,
            first_bad_position=first.position if first else None,
            first_bad_version=first.version if first else None,
            problem=first.problem if first else "",
            problems=tuple(problems),
            key_id=written_with,
            authenticated=key is not None,
        )

    def _run_key_for_verify(self, written_with: str) -> tuple[ChainKey | None, bool, str]:
        """For a run written with key ``written_with`` (""=unkeyed): the key to
        recompute it with, whether it can be recomputed, and a problem if any."""
        if not written_with:
            return None, True, ""
        if self.key is None:
            return None, False, ""
        if self.key.id != written_with:
            return (
                None,
                False,
                f"written with key {written_with}, not with this key ({self.key.id}): "
                "wrong key, or the run was rewritten",
            )
        return self.key, True, ""

    def _named_key(self, row: StoredEvent) -> str | None:
        """The key id a ``run.started`` row names; None for another type or a row
        that does not decode (decoding is checked elsewhere)."""
        if row.type != "run.started":
            return None
        try:
            event = self.codec.decode(row.type, row.schema_version, row.data)
        except SchemaError:
            return None
        named = getattr(event, "key_id", "")
        return named if isinstance(named, str) else ""

    def import_run(self, run_id: str, rows: Sequence[StoredEvent], *, after: int = 0) -> None:
        """Add a run copied from another log: its rows as they are (versions, times,
        causations, hashes), at this log's next positions, in one transaction; with
        ``after``, only the rows past that version, to a run this log has up to it
        (the same rows: a copy made while the run was written, brought up to date).

        ``StoreCorrupted`` (nothing written) when the rows' chain does not verify;
        ``ConcurrencyError`` when this log's run does not end at ``after``."""
        report = self.verify_rows(run_id, rows)
        if not report.ok:
            raise StoreCorrupted(
                f"run {run_id!r} does not verify at version {report.first_bad_version}: "
                f"{report.problem}; nothing was copied"
            )
        if rows[after:]:
            self._import_rows(run_id, [msgspec.structs.astuple(row) for row in rows[after:]], after)

    def _import_marker(
        self,
        run_id: str,
        rows: Sequence[Row],
        first_position: int,
        marker: str | None,
        first_rows: Callable[[], Iterable[Sequence[object]]],
    ) -> str:
        """The keyed mark to write with an imported run ("" for none): a keyed run,
        written with this store's key, copied into a log that has no mark yet (the
        runs already there, ``first_rows()``, are named by it). An unkeyed run copied
        into a log that has a mark is refused (``WrongKey``), as a new unkeyed run is."""
        written_with = hash_key_id(str(rows[0][7])) if rows else ""
        if rows and rows[0][2] != 1:  # the rest of a run this log has: marked (or not) then
            return ""
        if not written_with:
            if rows and marker is not None:
                raise WrongKey(
                    f"cannot copy run {run_id!r} here: it is unkeyed, and this log's runs are "
                    f"keyed from position {marker.split(' ')[0]} on (verify would take it for "
                    "a run rewritten without the key)"
                )
            return ""
        if marker is not None or self.key is None or self.key.id != written_with:
            return ""
        return keyed_marker(self.key, first_position, unkeyed_runs(first_rows(), run_id))

    @abstractmethod
    def _import_rows(self, run_id: str, rows: Sequence[Row], after: int) -> None:
        """Store ``rows`` (positions to be replaced by this log's) if the run's last
        version here is ``after`` (0: it has no events), else raise
        ``ConcurrencyError``; atomically."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release the backend's resources."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _problem(row: StoredEvent, text: str) -> Problem:
    return Problem(
        position=row.position if type(row.position) is int else None,
        version=row.version if type(row.version) is int else None,
        type=row.type if type(row.type) is str else repr(row.type),
        problem=text,
    )


_COLUMN_TYPES: tuple[tuple[str, tuple[type, ...]], ...] = (
    ("position", (int,)),
    ("run_id", (str,)),
    ("version", (int,)),
    ("type", (str,)),
    ("schema_version", (int,)),
    ("recorded_at", (str,)),
    ("causation", (int, type(None))),
    ("hash", (str,)),
    ("data", (str,)),
)


def odd_columns(row: StoredEvent) -> str:
    """Which of a row's columns hold a value of another type than the log writes
    ("" if none): SQLite keeps any type in any column of a file someone edited."""
    odd = [
        f"its {name} is {type(value).__name__} {value!r:.40}"
        for name, kinds in _COLUMN_TYPES
        if type(value := getattr(row, name)) not in kinds
    ]
    return "; ".join(odd)


BEYOND = 2**62
"""More than any log's versions, positions or rows: the bound of a read that has none."""


READABLE = f"version BETWEEN 1 AND {BEYOND}"
"""The versions a read of a run reaches (a row elsewhere is one someone added, which
``verify`` finds by ``row_extents``): a run's last version and the run list say
only what a read of the run gives."""
RUNS_SQL = (
    "SELECT run_id, max(version), min(position), max(position), min(recorded_at),"
    f" max(recorded_at) FROM {{events}} WHERE {READABLE} GROUP BY run_id ORDER BY min(position)"
)
"""What ``runs_after`` asks of an SQL backend (``{events}`` the table, or the rows
after a position); ``run_infos`` reads its rows."""
RUNS_AFTER_SQL = (
    "WITH later AS MATERIALIZED (SELECT run_id, version, position, recorded_at FROM events"
    " WHERE position > ?) " + RUNS_SQL.format(events="later")
)
"""The runs with events after a position: only those rows are read. Without the
materialized CTE, SQLite groups along the (run_id, version) index and reads every
row of the log (130 ms on a million events, against well under 1 ms)."""


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
    remaining = limit if limit is not None else BEYOND
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
