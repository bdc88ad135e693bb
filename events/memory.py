"""An in-memory event store with the same contract as the SQLite one, for tests.

It keeps the payload encoded, exactly like a database row, so reads go through the
same typed decode (and the same upcasters) as the SQLite store. A scratch log
(``chained=False``) encodes a payload when it is first read instead: a replay
writes one, compares what it appended, and reads back little of it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import cast

import msgspec

from events.codec import Codec, encode
from events.errors import SchemaError
from events.schema import Event
from events.store import (
    Clock,
    Draft,
    EventStore,
    RecordedEvent,
    Row,
    RunInfo,
    SummaryRow,
    check_expected,
    format_time,
    keyed_marker,
    number,
    refuse_unkeyed_run,
    unkeyed_runs,
    utc_now,
)

Kept = tuple[int, str, int, str, int, str, int | None, str, str | Event]
"""A row as this store keeps it: a ``Row``, or in a scratch log a row whose payload
is still the event appended (encoded when it is first read, by ``_encoded``)."""


class MemoryEventStore(EventStore):
    """Event store in a Python list; behaves like ``SQLiteEventStore``.

    ``chained=False`` (without a key) makes a scratch log: its rows' hashes are left
    empty (nothing to verify), an append numbers its events in place, with no hash
    and no draft, and keeps each event as it is, to be encoded when a read first
    asks for its row; a replay writes to one. An event that cannot be encoded, which
    a database store refuses at append, is then a ``SchemaError`` naming its row at
    that read (a replay compares every event it appends with a recorded one, which
    could be encoded). Events are frozen, but a dict inside one is not: one changed
    after its append would be read back changed."""

    def __init__(
        self,
        *,
        clock: Clock = utc_now,
        codec: Codec | None = None,
        key: bytes | None = None,
        chained: bool = True,
    ) -> None:
        super().__init__(clock=clock, codec=codec, key=key)
        self.chained = chained
        self._marker: str | None = None
        self._log: list[Kept] = []
        self._by_run: dict[str, list[Kept]] = {}
        self._blobs: dict[str, bytes] = {}
        self._summaries: dict[str, SummaryRow] = {}
        self._summary_position = 0
        self._lock = threading.RLock()

    def _append_rows(
        self, run_id: str, drafts: Sequence[Draft], expected_version: int, recorded_at: str
    ) -> list[Row]:
        with self._lock:
            stream = self._by_run.get(run_id, [])
            last = stream[-1] if stream else None
            check_expected(run_id, expected_version, last[2] if last else 0)
            if last is None and self.key is None:
                refuse_unkeyed_run(run_id, self._marker)
            rows = number(
                run_id,
                drafts,
                last_version=last[2] if last else 0,
                last_hash=last[7] if last else "",
                recorded_at=recorded_at,
                first_position=len(self._log) + 1,
                key=self.key,
            )
            if not stream and self.key is not None and self._marker is None:
                unkeyed = unkeyed_runs(self._first_rows(), run_id)
                self._marker = keyed_marker(self.key, rows[0][0], unkeyed)
            self._log.extend(rows)
            self._by_run.setdefault(run_id, []).extend(rows)
        return rows

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        expected_version: int,
        *,
        causation: int | None = None,
    ) -> list[RecordedEvent]:
        if self.chained or self.key is not None or not events:
            return super().append(run_id, events, expected_version, causation=causation)
        recorded_at = format_time(self.clock())
        recorded: list[RecordedEvent] = []
        with self._lock:
            stream = self._by_run.get(run_id)
            version = stream[-1][2] if stream else 0
            check_expected(run_id, expected_version, version)
            if stream is None:
                refuse_unkeyed_run(run_id, self._marker)
                stream = self._by_run[run_id] = []
            log = self._log
            position = len(log)
            for event in events:
                position += 1
                version += 1
                kind, schema = event.type_name(), event.schema_version
                row = (position, run_id, version, kind, schema, recorded_at, causation, "", event)
                log.append(row)
                stream.append(row)
                recorded.append(RecordedEvent(*row))
        if self.after_append is not None:
            self.after_append(self, recorded)
        return recorded

    def _import_rows(self, run_id: str, rows: Sequence[Row], after: int) -> None:
        with self._lock:
            check_expected(run_id, after, self.last_version(run_id))
            first = len(self._log) + 1
            renumbered: list[Kept] = [(first + i, *row[1:]) for i, row in enumerate(rows)]
            self._log.extend(renumbered)
            self._by_run.setdefault(run_id, []).extend(renumbered)
            marker = self._import_marker(run_id, rows, first, self._marker, self._first_rows)
            self._marker = marker or self._marker

    def _rows(self, run_id: str, after: int, upto: int | None) -> Iterator[Row]:
        with self._lock:
            stream = list(self._by_run.get(run_id, ()))
        # versions are 1..n without gaps, so version v sits at index v - 1
        yield from self._encoded(stream[max(after, 0) : None if upto is None else max(upto, 0)])

    def _all_rows(
        self, after_position: int, types: Iterable[str] | None, limit: int | None
    ) -> Iterator[Row]:
        wanted = set(types) if types is not None else None
        with self._lock:
            rows = self._log[max(after_position, 0) :]
        if wanted is not None:
            rows = [row for row in rows if row[3] in wanted]
        yield from self._encoded(rows if limit is None else rows[: max(limit, 0)])

    def _encoded(self, rows: Iterable[Kept]) -> Iterator[Row]:
        """``rows`` as rows: a scratch log's payloads encoded, once (the row is kept
        encoded for the next read)."""
        for row in rows:
            yield cast(Row, row) if type(row[8]) is str else self._encode(row)

    def _encode(self, row: Kept) -> Row:
        position, run_id, version, kind, schema, at, causation, digest, event = row
        try:
            data = encode(cast(Event, event))
        except (TypeError, ValueError, msgspec.EncodeError) as e:
            raise SchemaError(
                f"the event appended to this scratch log cannot be encoded as JSON: {e}",
                position=position,
                type=kind,
            ) from e
        encoded: Row = (position, run_id, version, kind, schema, at, causation, digest, data)
        with self._lock:
            self._log[position - 1] = encoded
            self._by_run[run_id][version - 1] = encoded
        return encoded

    def last_version(self, run_id: str) -> int:
        with self._lock:
            stream = self._by_run.get(run_id)
            return stream[-1][2] if stream else 0

    def runs_after(self, position: int) -> list[RunInfo]:
        with self._lock:
            rows = self._log[max(position, 0) :]
        found: dict[str, list[Kept]] = {}
        for row in rows:
            found.setdefault(row[1], []).append(row)
        return [
            RunInfo(
                run_id=run_id,
                version=s[-1][2],
                first_position=s[0][0],
                last_position=s[-1][0],
                started_at=min(r[5] for r in s),
                last_at=max(r[5] for r in s),
            )
            for run_id, s in found.items()
        ]

    def summary_position(self) -> int | None:
        return self._summary_position

    def summary_rows(self, run_ids: Sequence[str] | None = None) -> list[SummaryRow]:
        with self._lock:
            if run_ids is None:
                return list(self._summaries.values())
            return [self._summaries[r] for r in run_ids if r in self._summaries]

    def save_summaries(
        self, expected: int, position: int, rows: Sequence[SummaryRow], *, replace: bool = False
    ) -> bool:
        with self._lock:
            if replace:
                self._summaries.clear()
            elif self._summary_position != expected:
                return False
            self._summary_position = position
            self._summaries.update((row[0], row) for row in rows)
        return True

    def _put_blob(self, digest: str, content: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, bytes(content))

    def _get_blob(self, digest: str) -> tuple[bytes, int] | None:
        with self._lock:
            content = self._blobs.get(digest)
        return None if content is None else (content, len(content))

    def _blob_digests(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._blobs))

    def keyed_marker(self) -> str | None:
        return self._marker

    def _first_rows(self) -> list[tuple[object, object]]:
        return [(run_id, rows[0][7]) for run_id, rows in self._by_run.items() if rows]
