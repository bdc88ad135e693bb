"""The reads every SQL backend shares (``events.sqlite``, ``events.postgres``).

A backend gives its placeholder (``?`` or ``%s``) and ``_fetch``; the queries are
written once here, with ``?``. Reads go in ``chunks``: one query per
``READ_CHUNK`` rows, so no statement stays open (no lock, no pooled connection
held) while the caller works on a chunk, and the chunks are chained in C
(``itertools.chain``), not re-yielded row by row.
"""

from __future__ import annotations

import itertools
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar

from events.store import (
    BEYOND,
    READABLE,
    RUNS_AFTER_SQL,
    RUNS_SQL,
    Brief,
    EventStore,
    Payload,
    RecordedEvent,
    Row,
    RowExtent,
    RunInfo,
    SummaryRow,
    chunks,
    run_infos,
)

COLUMNS = "position, run_id, version, type, schema_version, recorded_at, causation, hash, data"
_RUN_WHERE = (
    "FROM events WHERE run_id = ? AND version > ? AND version <= ? ORDER BY version LIMIT ?"
)


def _bounded(number: int) -> int:
    """``number`` within what the database's 64-bit integers hold: a caller's version
    or position of any size means the same (none past it, all before it)."""
    return max(-BEYOND, min(number, BEYOND))


class SQLEventStore(EventStore):
    placeholder: ClassVar[str] = "?"
    _run_sql: ClassVar[str]
    _payloads_sql: ClassVar[str]
    _brief_sql: ClassVar[str]
    _last_version_sql: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._run_sql = cls.sql(f"SELECT {COLUMNS} {_RUN_WHERE}")
        cls._payloads_sql = cls.sql(f"SELECT version, type, schema_version, data {_RUN_WHERE}")
        cls._brief_sql = cls.sql(
            f"SELECT version, type, schema_version, causation, data {_RUN_WHERE}"
        )
        cls._last_version_sql = cls.sql(
            f"SELECT max(version) FROM events WHERE run_id = ? AND {READABLE}"
        )

    @classmethod
    def sql(cls, text: str) -> str:
        """``text`` with its ``?`` placeholders in this backend's style."""
        return text.replace("?", cls.placeholder)

    @abstractmethod
    def _fetch(self, sql: str, params: Sequence[object], where: str) -> list[Any]:
        """All rows of one query."""

    def _rows(self, run_id: str, after: int, upto: int | None) -> Iterator[Row]:
        return itertools.chain.from_iterable(
            self._run_chunks(self._run_sql, 2, run_id, after, upto)
        )

    def read_payloads(
        self, run_id: str, *, after: int = 0, upto: int | None = None
    ) -> Iterator[Payload]:
        return itertools.chain.from_iterable(
            self._run_chunks(self._payloads_sql, 0, run_id, after, upto)
        )

    def read_brief(self, run_id: str, *, upto: int | None = None) -> Iterator[RecordedEvent]:
        rows: Iterator[Brief] = itertools.chain.from_iterable(
            self._run_chunks(self._brief_sql, 0, run_id, 0, upto)
        )
        return self._decode_brief(run_id, rows)

    def _run_chunks(
        self, sql: str, version_at: int, run_id: str, after: int, upto: int | None
    ) -> Iterator[list[Any]]:
        """The rows ``sql`` selects from one run (``version_at``: the version's column)."""
        bound = _bounded(upto if upto is not None else BEYOND)
        where = f"reading run {run_id!r}"
        return chunks(
            lambda last, size: self._fetch(sql, (run_id, last, bound, size), where),
            _bounded(after),
            version_at,
        )

    def _all_rows(
        self, after_position: int, types: Iterable[str] | None, limit: int | None
    ) -> Iterator[Row]:
        wanted = sorted(set(types)) if types is not None else []
        if types is not None and not wanted:
            return iter(())
        typed = f" AND type IN ({', '.join('?' * len(wanted))})" if wanted else ""
        sql = self.sql(
            f"SELECT {COLUMNS} FROM events WHERE position > ?{typed} ORDER BY position LIMIT ?"
        )
        return itertools.chain.from_iterable(
            chunks(
                lambda last, size: self._fetch(sql, (last, *wanted, size), "reading the log"),
                _bounded(after_position),
                0,
                limit,
            )
        )

    def last_version(self, run_id: str) -> int:
        rows = self._fetch(self._last_version_sql, (run_id,), f"reading run {run_id!r}")
        return int(rows[0][0] or 0)

    _odd_versions: ClassVar[str] = "0"
    """SQL counting the rows of a group whose version is not an integer (a column
    type the database enforces has none)."""

    def row_extents(self) -> list[RowExtent]:
        sql = (
            "SELECT run_id, count(*), min(version), max(version), min(position),"
            f" {self._odd_versions} FROM events GROUP BY run_id"
        )
        return [RowExtent(*row) for row in self._fetch(sql, (), "counting each run's rows")]

    def runs_after(self, position: int) -> list[RunInfo]:
        if position <= 0:  # every row: along the index is the fastest way
            return run_infos(self._fetch(RUNS_SQL.format(events="events"), (), "listing runs"))
        return run_infos(
            self._fetch(self.sql(RUNS_AFTER_SQL), (_bounded(position),), "listing runs")
        )

    # -- the run summaries -------------------------------------------------------------

    def summary_position(self) -> int | None:
        rows = self._fetch(
            self.sql(SUMMARY_POSITION_SQL), (), "reading the run summaries' position"
        )
        position = rows[0][0] if rows else 0
        # derived, and rebuilt from the events when behind: a position that is no
        # position (an edited log) is read as none, so every run is folded again
        return position if type(position) is int and position >= 0 else 0

    def summary_rows(self, run_ids: Sequence[str] | None = None) -> list[SummaryRow]:
        sql = "SELECT run_id, version, last_position, summary FROM run_summaries"
        if run_ids is None:
            return [tuple(r) for r in self._fetch(sql, (), "reading the run summaries")]
        found: list[SummaryRow] = []
        for start in range(0, len(run_ids), 500):  # SQLite allows 999 parameters
            batch = run_ids[start : start + 500]
            where = f" WHERE run_id IN ({', '.join('?' * len(batch))})"
            found += [tuple(r) for r in self._fetch(self.sql(sql + where), batch, "reading")]
        return found


SUMMARY_POSITION_SQL = "SELECT position FROM projection_positions WHERE name = 'run_summaries'"
SAVE_SUMMARY_SQL = (
    "INSERT INTO run_summaries (run_id, version, last_position, summary) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (run_id) DO UPDATE SET version = excluded.version,"
    " last_position = excluded.last_position, summary = excluded.summary"
)
"""A run's summary row, written over the old one (SQLite and PostgreSQL alike)."""
MOVE_SUMMARY_POSITION_SQL = (
    "UPDATE projection_positions SET position = ? WHERE name = 'run_summaries' AND position = ?"
)
"""Moves the position only from the one expected: its row count says who caught up."""
SUMMARY_TABLES = (
    "CREATE TABLE IF NOT EXISTS run_summaries (run_id TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL, last_position BIGINT NOT NULL, summary TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS projection_positions (name TEXT PRIMARY KEY,"
    " position BIGINT NOT NULL)",
    "INSERT INTO projection_positions (name, position) VALUES ('run_summaries', 0)"
    " ON CONFLICT DO NOTHING",
)
"""The derived tables of ``projections.summaries``: not append-only (a catch-up
rewrites a run's row), rebuilt from the log at will, checked by ``verify``."""
