"""An in-memory event store with the same contract as the SQLite one, for tests.

It keeps the payload encoded, exactly like a database row, so reads go through the
same typed decode (and the same upcasters) as the SQLite store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from events.codec import Codec
from events.store import (
    Clock,
    Draft,
    EventStore,
    RunInfo,
    StoredEvent,
    check_expected,
    number,
    utc_now,
)


class MemoryEventStore(EventStore):
    """Event store in a Python list; behaves like ``SQLiteEventStore``."""

    def __init__(self, *, clock: Clock = utc_now, codec: Codec | None = None) -> None:
        super().__init__(clock=clock, codec=codec)
        self._rows: list[StoredEvent] = []
        self._by_run: dict[str, list[StoredEvent]] = {}
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.RLock()

    def _append_rows(
        self, run_id: str, drafts: Sequence[Draft], expected_version: int, recorded_at: str
    ) -> list[StoredEvent]:
        with self._lock:
            stream = self._by_run.get(run_id, [])
            last = stream[-1] if stream else None
            check_expected(run_id, expected_version, last.version if last else 0)
            rows = number(
                run_id,
                drafts,
                last_version=last.version if last else 0,
                last_hash=last.hash if last else "",
                recorded_at=recorded_at,
                first_position=len(self._rows) + 1,
            )
            self._rows.extend(rows)
            self._by_run.setdefault(run_id, []).extend(rows)
        return rows

    def read_raw(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[StoredEvent]:
        with self._lock:
            stream = list(self._by_run.get(run_id, ()))
        # versions are 1..n without gaps, so version v sits at index v - 1
        yield from stream[max(after, 0) : upto]

    def read_all_raw(
        self,
        *,
        after_position: int = 0,
        types: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> Iterator[StoredEvent]:
        wanted = set(types) if types is not None else None
        with self._lock:
            rows = self._rows[max(after_position, 0) :]
        count = 0
        for row in rows:
            if limit is not None and count >= limit:
                return
            if wanted is None or row.type in wanted:
                count += 1
                yield row

    def last_version(self, run_id: str) -> int:
        with self._lock:
            stream = self._by_run.get(run_id)
            return stream[-1].version if stream else 0

    def runs(self) -> list[RunInfo]:
        with self._lock:
            streams = sorted(self._by_run.values(), key=lambda s: s[0].position)
            return [
                RunInfo(
                    run_id=s[0].run_id,
                    version=s[-1].version,
                    first_position=s[0].position,
                    last_position=s[-1].position,
                    started_at=min(r.recorded_at for r in s),
                    last_at=max(r.recorded_at for r in s),
                )
                for s in streams
            ]

    def _put_blob(self, digest: str, content: bytes) -> None:
        with self._lock:
            self._blobs.setdefault(digest, bytes(content))

    def _get_blob(self, digest: str) -> bytes | None:
        with self._lock:
            return self._blobs.get(digest)
