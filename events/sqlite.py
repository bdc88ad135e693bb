"""The SQLite event store: the embedded default.

Durability is a setting: ``synchronous="NORMAL"`` (the default, with WAL) survives a
crash of the process: a committed append is never lost when autonomy dies. It may
lose the last transactions on a power loss or OS crash. ``synchronous="FULL"`` also
survives those, at the cost of an fsync per append (measure it with
``benchmarks/bench_store.py``).

The hot path (append, read) uses the stdlib ``sqlite3`` with prepared statements;
``sqlite-utils`` creates the schema and the audit views. Every driver error is
mapped to the project's exception tree in ``_mapped_errors``.

``read_only=True`` opens a log for reading and never writes to it, so archived and
shared logs (a read-only file, a read-only directory or medium) can be read: the file
must exist and be an autonomy log (no schema is ever written into an empty file), it
is opened with ``mode=ro``, and with ``immutable=1`` as well when its directory cannot
hold the WAL's ``-shm`` file (read-only, or full); a ``-wal`` that holds writes is then
refused, since ``immutable=1`` would skip them (a log closed normally has none). A
writer never creates missing directories: the caller does, for the default
``.autonomy/`` only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from events.codec import Codec, hash_key_id
from events.errors import ConcurrencyError, EventStoreError, StoreCorrupted, StoreUnavailable
from events.lease import FileLeases
from events.sql import (
    COLUMNS,
    MOVE_SUMMARY_POSITION_SQL,
    SAVE_SUMMARY_SQL,
    SUMMARY_TABLES,
    SQLEventStore,
)
from events.store import (
    Clock,
    Draft,
    Row,
    SummaryRow,
    check_expected,
    format_time,
    keyed_marker,
    number,
    refuse_unkeyed_run,
    unkeyed_runs,
    utc_now,
)

APPLICATION_ID = 0x6175746F  # "auto": marks a database as autonomy's
SCHEMA_VERSION = 3  # 2: store_meta and repairs; 3: run_summaries, projection_positions
Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


# What an append needs in one round trip: the run's last version and hash and the
# log's last position (no row for a new run: then only the position is read).
_LAST_SQL = (
    "SELECT version, hash, (SELECT max(position) FROM events) FROM events"
    " WHERE run_id = ? ORDER BY version DESC LIMIT 1"
)
_INSERT_SQL = f"INSERT INTO events ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"

_APPEND_ONLY = ("events", "blobs", "store_meta", "repairs")
"""Tables whose rows, once written, are never changed: triggers refuse UPDATE and
DELETE. A writer that opens a log with any of them missing puts it back and
records that in ``repairs``, where ``verify`` reports it."""

_TRIGGERS = {
    f"{table}_append_only_{verb.lower()}": (
        f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_{verb.lower()} BEFORE {verb} ON "
        f"{table} BEGIN SELECT RAISE(ABORT, '{table} are append-only: {verb} refused'); END"
    )
    for table in _APPEND_ONLY
    for verb in ("UPDATE", "DELETE")
}


_UNDECODABLE = "Could not decode to UTF-8"
"""How the driver begins its error for a value that is not UTF-8 text."""


class _mapped_errors:
    """``with _mapped_errors(where):`` turns sqlite3 errors raised inside into the
    project's own, with the driver's as cause. A class rather than a
    ``@contextmanager`` generator: it wraps every append, and costs a third."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if isinstance(error, sqlite3.DatabaseError):
            # the driver's decode error quotes the bytes whole: said once, without them
            cause = None if str(error).startswith(_UNDECODABLE) else error
            raise _translated(error, self.where) from cause
        if isinstance(error, UnicodeDecodeError):
            # SQLite's error about a damaged schema quotes its bytes, which the driver
            # cannot decode: a UnicodeDecodeError (and a traceback) from every command
            raise StoreCorrupted(
                f"{self.where}: the database is corrupt: SQLite answered with bytes that "
                f"are not UTF-8 ({error.reason} at {error.start}), as from a damaged schema"
            ) from error


def _translated(e: sqlite3.DatabaseError, where: str) -> EventStoreError:
    text = str(e)
    if isinstance(e, sqlite3.OperationalError) and "locked" in text:
        return StoreUnavailable(f"{where}: the database is locked by another writer ({text})")
    code = getattr(e, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        # nothing was written (the transaction failed whole): the run goes on from its
        # log once there is room, as after any outage
        return StoreUnavailable(f"{where}: the disk holding the log is full ({text})")
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY):
        # the same for a file system that failed or was made read-only under the log:
        # the transaction failed whole, and the run goes on once the file can be used
        return StoreUnavailable(
            f"{where}: the log's file cannot be used now ({text}: a disk failing or full, "
            "or the file or its file system made read-only?)"
        )
    if code == sqlite3.SQLITE_CANTOPEN:  # "unable to open database file", no more said
        return EventStoreError(
            f"{where}: {text}: the file, or its directory (where SQLite keeps its -wal and "
            "-shm files), cannot be written by this user, or is gone; the commands that "
            "only read the log open it read-only"
        )
    if isinstance(e, sqlite3.OperationalError) and text.startswith(_UNDECODABLE):
        # the driver's, reading a value back: bytes where autonomy writes only text
        # (a damaged page, or an edit), and its message quoted them all
        column = text.split(" with text ")[0].removeprefix(_UNDECODABLE).strip()
        return StoreCorrupted(
            f"{where}: the log holds bytes that are not UTF-8 text in {column}, where "
            "autonomy writes only text: a damaged file or an edit (autonomy verify checks "
            "the database)"
        )
    if isinstance(e, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError):
        # ProgrammingError: a misuse such as a closed store, not a damaged file
        return EventStoreError(f"{where}: {text}")
    return StoreCorrupted(f"{where}: the database is corrupt or not an SQLite file ({text})")


def _wal_gone(path: Path, error: StoreUnavailable) -> StoreUnavailable:
    """``error``, or what is more likely when the log's ``-shm`` is there without its
    ``-wal``: another process has the log open and its ``-wal`` was removed, which
    SQLite says as "disk I/O error" (and this message as a failing disk)."""
    side, wal = path.with_name(path.name + "-shm"), path.with_name(path.name + "-wal")
    with contextlib.suppress(OSError):  # SQLite has made an empty one in its place
        if side.exists() and (not wal.exists() or wal.stat().st_size == 0):
            return StoreUnavailable(
                f"opening {path}: its {wal.name} file is gone or empty while its {side.name} "
                "is there: removed while another process had the log open? That process's "
                "next write copies what the removed file held into the log and stops; open "
                f"the log again after it has (SQLite said: {error.__cause__ or error})"
            )
    return error


def _check_path(target: Path, where: str, read_only: bool) -> None:
    if target.is_dir():
        raise StoreCorrupted(f"{where}: that is a directory, not a database file")
    if target.exists() and not target.is_file():
        # a device or a FIFO: /dev/null was "cannot rollback - no transaction is
        # active", and SQLite left a /dev/null-journal behind
        raise StoreCorrupted(f"{where}: that is a device or a FIFO, not a database file")
    if read_only:
        if not target.exists():
            raise EventStoreError(f"{where}: no such file")
        if target.stat().st_size == 0:
            raise StoreCorrupted(f"{where}: the file is empty, not an autonomy event log")
    elif not target.parent.is_dir():
        missing = "is a file, not a directory" if target.parent.exists() else "does not exist"
        raise EventStoreError(f"{where}: {target.parent} {missing} (create the directory first)")


def _not_there(path: Path) -> list[Path]:
    """The log's file and the WAL's side files that do not exist yet, when the log's
    file does not: what opening it as a new log makes."""
    files = [path.with_name(path.name + side) for side in ("", "-wal", "-shm")]
    return [] if os.path.lexists(path) else [f for f in files if not os.path.lexists(f)]


def _remove_if_empty(made: list[Path]) -> None:
    """Remove ``made`` (``_not_there``) when the log's file still holds nothing: a
    new log that could not be made (a full disk) leaves no empty file behind."""
    with contextlib.suppress(OSError):
        if made and made[0].stat().st_size == 0:
            for file in made:
                file.unlink(missing_ok=True)


def _identity(path: str) -> tuple[int, int] | None:
    """The file at ``path`` (device and inode); None for none, or an in-memory log."""
    if path == ":memory:":
        return None
    try:
        found = os.stat(path)
    except OSError:
        return _GONE
    return (found.st_dev, found.st_ino)


_GONE = (-1, -1)
"""The identity of no file: none is there."""


_NO_SHM = ("SQLITE_CANTOPEN", "SQLITE_READONLY_DIRECTORY", "SQLITE_IOERR_SHM")
"""What SQLite answers a reader when it cannot make a WAL log's ``-shm`` file: a
directory it may not write (``CANTOPEN``, or ``READONLY_DIRECTORY`` as a user other
than the directory's owner) or a full disk (``IOERR_SHMSIZE``)."""


def _connect_read_only(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection that cannot write to ``path``: ``mode=ro``, plus ``immutable=1``
    when SQLite cannot open the file that way because it cannot make the WAL's
    ``-shm`` file beside it (read-only storage, a full disk). ``immutable=1`` reads
    the main file alone, so a ``-wal`` that holds writes is refused, never skipped."""
    uri = path.resolve().as_uri()

    def connect(query: str) -> sqlite3.Connection:
        return sqlite3.connect(
            f"{uri}?{query}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout,
        )

    conn = connect("mode=ro")
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        journal = path.with_name(path.name + "-journal")
        if "readonly" in str(e) and journal.exists():
            raise EventStoreError(
                f"{path} has a rollback journal ({journal.name}) that a writer killed "
                "mid-write left: only a writer can roll it back; open the log for writing "
                f"once (autonomy runs --rebuild --db {path}), then read it"
            ) from e
        if not str(getattr(e, "sqlite_errorname", "")).startswith(_NO_SHM):
            raise
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreUnavailable(
                f"{path}: its {wal.name} file holds writes that are not in the main file "
                f"yet, and SQLite reads them only through a {path.name}-shm file, which "
                f"it cannot make in {path.parent} ({e}: a read-only directory or a full "
                "disk); open the log where it can be written, or copy it with its "
                f"{wal.name} to such a directory"
            ) from e
    return connect("mode=ro&immutable=1")


class _immediate:
    """``with _immediate(conn):`` one write transaction: ``BEGIN IMMEDIATE`` (the write
    lock taken first, so that writers queue rather than fail at their first write),
    committed when the block ends, rolled back when it raises or when its ``BEGIN``
    is cut: a stop (Ctrl-C, SIGTERM) raised between a ``BEGIN`` and its ``try`` left
    the transaction open, and recording the stop failed ("cannot start a
    transaction within a transaction"): the run stayed "running". A class rather
    than a ``@contextmanager`` generator, as ``_mapped_errors``: it wraps every
    append."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._rollback()
            raise

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is not None:
            self._rollback()
            return
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


class SQLiteEventStore(SQLEventStore):
    """Event store in an SQLite file (or ``":memory:"``)."""

    _odd_versions = "sum(typeof(version) != 'integer')"  # SQLite stores any type anywhere

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        synchronous: Synchronous = "NORMAL",
        clock: Clock = utc_now,
        codec: Codec | None = None,
        busy_timeout: float = 30.0,
        read_only: bool = False,
        must_exist: bool = False,
        key: bytes | None = None,
    ) -> None:
        super().__init__(clock=clock, codec=codec, key=key)
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise EventStoreError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = str(path)
        self.read_only = read_only
        """Opened for reading only: every write is refused by SQLite itself."""
        self.must_exist = must_exist
        """A writer that continues a log: a database without the log's tables is
        refused, never made a log (the main file of a log whose ``-wal`` was lost)."""
        if self.path != ":memory:":
            self._leases = FileLeases(Path(self.path + ".leases"))
        self._lock = threading.RLock()
        where = f"opening {self.path}"
        if self.path == ":memory:":
            if read_only:
                raise EventStoreError(f"{where}: an in-memory log cannot be opened read-only")
        else:
            _check_path(Path(self.path), where, read_only)
        made = [] if self.path == ":memory:" or read_only else _not_there(Path(self.path))
        try:
            with _mapped_errors(where):
                if read_only:
                    self._conn = _connect_read_only(Path(self.path), busy_timeout)
                else:
                    self._conn = sqlite3.connect(
                        self.path,
                        isolation_level=None,
                        check_same_thread=False,
                        timeout=busy_timeout,
                    )
        except StoreUnavailable as e:
            raise _wal_gone(Path(self.path), e) from e.__cause__
        try:
            with _mapped_errors(where):
                self._open(synchronous)
        except BaseException as e:
            self._conn.close()
            _remove_if_empty(made)  # a log that could not be made leaves no empty file
            if isinstance(e, StoreUnavailable):
                raise _wal_gone(Path(self.path), e) from e.__cause__
            raise
        self._identity = _identity(self.path) if not read_only else None
        self._wal: tuple[int, int] | None = None
        """The write-ahead file this connection writes to, once it is there."""

    def _check_identity(self) -> None:
        """``EventStoreError`` when the file at the log's path is no longer the one
        opened: SQLite writes on into a deleted or moved file, and a run whose log was
        removed under it completed, exit 0, with nothing recorded anywhere. So for
        its ``-wal``: SQLite wrote on into the removed one, readers saw none of it,
        and a kill then lost every event not yet copied into the log, those written
        before the removal too. What it holds is copied into the log first."""
        if self._identity is None:
            return
        if _identity(self.path) != self._identity:
            raise EventStoreError(
                f"the log {self.path} was removed or replaced while this process wrote to "
                "it (deleted, moved, or another file put in its place): what it wrote is "
                "in that file, if it still exists; nothing more was written"
            )
        wal = _identity(self.path + "-wal")
        if self._wal is None:
            self._wal = wal if wal != _GONE else None
        elif wal != self._wal:
            with contextlib.suppress(sqlite3.Error):  # read through the removed file's
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # open descriptor
            raise EventStoreError(
                f"the log's write-ahead file {self.path}-wal was removed or replaced while "
                "this process wrote to it (never remove it: it holds the latest events): "
                "what it held was copied into the log; nothing more was written"
            )

    def _open(self, synchronous: str) -> None:
        conn = self._conn
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # our schema and our application_id are written in one transaction, so a
        # database with tables but without our id is someone else's, even if one of
        # its tables happens to be called "events"
        if app_id not in (0, APPLICATION_ID) or (tables and app_id != APPLICATION_ID):
            raise StoreCorrupted(
                f"{self.path} is an SQLite database, but not an autonomy event log"
            )
        for name, kind in conn.execute(
            "SELECT name, type FROM sqlite_master WHERE type != 'table' AND name IN"
            f" ({', '.join('?' * len(_APPEND_ONLY))})",
            _APPEND_ONLY,
        ):
            raise StoreCorrupted(
                f"{self.path}: {name} is a {kind} where an autonomy log has its table: the "
                "log was changed"
            )
        if "events" not in tables and (self.read_only or self.must_exist):
            raise StoreCorrupted(f"{self.path} is an empty database, not an autonomy event log")
        if self.read_only:
            # an older schema is read as it is: what it lacks (store_meta, repairs)
            # reads as empty; only a writer brings the schema up to date
            return
        schema = conn.execute("PRAGMA user_version").fetchone()[0]
        if schema > SCHEMA_VERSION:  # its tables may hold what this code would not keep
            raise StoreCorrupted(
                f"{self.path} was written by a newer autonomy (log schema {schema}; this one "
                f"knows {SCHEMA_VERSION}): upgrade autonomy to write to it (reading works)"
            )
        if self.path != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if "events" not in tables or schema < SCHEMA_VERSION:
            with _immediate(conn):
                self._create_schema()
        self._reinstall_triggers()

    def _trigger_problems(self) -> tuple[list[str], list[str]]:
        """Append-only triggers missing, or whose text is not autonomy's (one that
        never fires keeps its name), on tables this log has (an older schema lacks
        some tables, and with them their triggers); and every trigger that is not
        autonomy's (one that deletes what a writer appends, say)."""
        found = dict(
            self._conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        )
        tables = self._names("table")
        wrong = [  # the text as SQLite keeps it; an older autonomy spaced it otherwise
            name
            for name, sql in _TRIGGERS.items()
            if " ".join((found.get(name) or "").split()) != sql.replace(" IF NOT EXISTS", "")
            and name.split("_append_only_")[0] in tables
        ]
        return wrong, sorted(name for name in found if name not in _TRIGGERS)

    def _names(self, kind: str) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,))
        return {r[0] for r in rows}

    def _reinstall_triggers(self) -> None:
        """Put back append-only triggers someone dropped or changed and remove any
        other, and record it in ``repairs`` (one transaction), so that ``verify``
        says what was wrong."""
        if self._trigger_problems() == ([], []):
            return
        conn = self._conn
        with _immediate(conn):
            wrong, foreign = self._trigger_problems()  # another writer may have won
            for name in [*wrong, *foreign]:
                conn.execute(f'DROP TRIGGER IF EXISTS "{name.replace(chr(34), chr(34) * 2)}"')
            for name in wrong:
                conn.execute(_TRIGGERS[name])
            what = []
            if wrong:
                what.append(
                    "append-only triggers were missing or changed and were reinstalled: "
                    + ", ".join(wrong)
                )
            if foreign:
                what.append("triggers that were not autonomy's were removed: " + ", ".join(foreign))
            if what:
                conn.execute(
                    "INSERT INTO repairs (at, what) VALUES (?, ?)",
                    (format_time(self.clock()), "; ".join(what)),
                )

    def _create_schema(self) -> None:
        create_schema(self._conn)

    # -- writing ---------------------------------------------------------------------

    def _append_rows(
        self, run_id: str, drafts: Sequence[Draft], expected_version: int, recorded_at: str
    ) -> list[Row]:
        conn = self._conn
        self._check_identity()
        with self._lock, _mapped_errors(f"appending to run {run_id!r}"):
            try:
                with _immediate(conn):
                    last = conn.execute(_LAST_SQL, (run_id,)).fetchone()
                    if last is None:
                        last = (
                            0,
                            "",
                            conn.execute("SELECT max(position) FROM events").fetchone()[0],
                        )
                    last_version, last_hash, top = last
                    check_expected(run_id, expected_version, last_version)
                    if last_version == 0 and self.key is None:
                        refuse_unkeyed_run(run_id, self._marker())
                    rows = number(
                        run_id,
                        drafts,
                        last_version=last_version,
                        last_hash=last_hash,
                        recorded_at=recorded_at,
                        first_position=(top or 0) + 1,
                        key=self.key,
                    )
                    conn.executemany(_INSERT_SQL, rows)
                    if last_version == 0 and self.key is not None and hash_key_id(rows[0][7]):
                        conn.execute(
                            "INSERT OR IGNORE INTO store_meta (name, value) VALUES ('keyed_from', ?)",
                            (
                                keyed_marker(
                                    self.key, rows[0][0], unkeyed_runs(self._first_rows(), run_id)
                                ),
                            ),
                        )
            except sqlite3.IntegrityError as e:
                # A writer that bypassed BEGIN IMMEDIATE (or another store) won the race.
                raise ConcurrencyError(run_id, expected_version, self.last_version(run_id)) from e
        return rows

    def _import_rows(self, run_id: str, rows: Sequence[Row], after: int) -> None:
        conn = self._conn
        self._check_identity()
        with self._lock, _mapped_errors(f"copying run {run_id!r}"), _immediate(conn):
            check_expected(run_id, after, self.last_version(run_id))
            top = conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0
            conn.executemany(_INSERT_SQL, [(top + 1 + i, *row[1:]) for i, row in enumerate(rows)])
            marker = self._import_marker(run_id, rows, top + 1, self._marker(), self._first_rows)
            if marker:
                conn.execute(
                    "INSERT OR IGNORE INTO store_meta (name, value) VALUES ('keyed_from', ?)",
                    (marker,),
                )

    def save_summaries(
        self, expected: int, position: int, rows: Sequence[SummaryRow], *, replace: bool = False
    ) -> bool:
        conn = self._conn
        with self._lock, _mapped_errors("saving the run summaries"), _immediate(conn):
            if replace:
                conn.execute("DELETE FROM run_summaries")
                conn.execute(
                    "UPDATE projection_positions SET position = ? WHERE name = 'run_summaries'",
                    (position,),
                )
            elif conn.execute(MOVE_SUMMARY_POSITION_SQL, (position, expected)).rowcount != 1:
                return False  # another writer moved it first: nothing written
            conn.executemany(SAVE_SUMMARY_SQL, rows)
        return True

    def summary_position(self) -> int | None:
        with self._lock:
            if "projection_positions" not in self._names("table"):  # an older log
                return None
        return super().summary_position()

    def summary_rows(self, run_ids: Sequence[str] | None = None) -> list[SummaryRow]:
        with self._lock:
            if "run_summaries" not in self._names("table"):
                return []
        return super().summary_rows(run_ids)

    # -- reading ---------------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[object], where: str) -> list[Any]:
        with self._lock, _mapped_errors(where):
            return self._conn.execute(sql, params).fetchall()

    # -- blobs -----------------------------------------------------------------------

    def _put_blob(self, digest: str, content: bytes) -> None:
        with self._lock, _mapped_errors("storing a blob"):
            self._conn.execute(
                "INSERT OR IGNORE INTO blobs (digest, size, content) VALUES (?, ?, ?)",
                (digest, len(content), content),
            )

    def _put_blobs(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._lock, _mapped_errors("storing blobs"):
            conn = self._conn
            with _immediate(conn):
                conn.executemany(
                    "INSERT OR IGNORE INTO blobs (digest, size, content) VALUES (?, ?, ?)",
                    [(digest, len(content), content) for digest, content in items],
                )

    def _get_blob(self, digest: str) -> tuple[bytes, int] | None:
        with self._lock, _mapped_errors("reading a blob"):
            row = self._conn.execute(
                "SELECT content, size FROM blobs WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None:
            return None
        content, size = row
        # SQLite keeps any type in any column of a file someone edited: what is not
        # bytes is checked as bytes (text as its UTF-8, NULL as none), and fails
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        return (bytes(content) if isinstance(content, bytes) else b"", size)

    def _blob_digests(self) -> Iterator[str]:
        rows = self._fetch("SELECT digest FROM blobs ORDER BY digest", (), "listing blobs")
        return (digest for (digest,) in rows)

    # -- the log as a whole ----------------------------------------------------------------

    def _first_rows(self) -> list[tuple[object, object]]:
        """(run id, hash) of each run's first row: in a transaction, for a keyed mark."""
        return self._conn.execute("SELECT run_id, hash FROM events WHERE version = 1").fetchall()

    def keyed_marker(self) -> str | None:
        with self._lock, _mapped_errors("reading store_meta"):
            return self._marker()

    def _marker(self) -> str | None:
        if "store_meta" not in self._names("table"):  # a log from before keys
            return None
        row = self._conn.execute(
            "SELECT value FROM store_meta WHERE name = 'keyed_from'"
        ).fetchone()
        return str(row[0]) if row else None

    database_checks = "integrity_check, append-only triggers, tables and indexes"

    def database_problems(self) -> list[str]:
        """``PRAGMA integrity_check``'s findings, append-only triggers missing now,
        and every repair a writer made (triggers it found missing and put back).

        ``integrity_check`` rather than ``quick_check``: only it compares each index
        with its table, and an index missing rows (a lookup by type or digest that
        silently finds nothing) is exactly what a damaged file looks like. It costs
        a few seconds on a million events (``benchmarks/bench_replay_audit.py``)."""
        problems = []
        found = [r[0] for r in self._fetch("PRAGMA integrity_check", (), "checking the database")]
        if found != ["ok"]:
            problems += [f"integrity_check: {text}" for text in found[:20]]
        wrong, foreign = self._trigger_problems()
        if wrong:
            problems.append(f"append-only triggers are missing or changed: {', '.join(wrong)}")
        if foreign:
            problems.append(f"triggers that are not autonomy's: {', '.join(foreign)}")
        with self._lock:
            problems += structure_problems(self._conn)
            has_repairs = "repairs" in self._names("table")  # not in a log from before keys
        repairs = (
            self._fetch("SELECT at, what FROM repairs ORDER BY id", (), "reading repairs")
            if has_repairs
            else []
        )
        problems += [f"{what} (at {at})" for at, what in repairs]
        return problems

    def record_repair(self, what: str) -> None:
        """Record in ``repairs`` what a writer found wrong with the database and is
        putting right, where ``verify`` reports it."""
        with self._lock, _mapped_errors("recording a repair"):
            self._conn.execute(
                "INSERT INTO repairs (at, what) VALUES (?, ?)", (format_time(self.clock()), what)
            )

    # -- misc ------------------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for audit queries and tests."""
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def create_schema(conn: sqlite3.Connection) -> None:
    """The log's tables, indexes and triggers, in the database of ``conn``."""
    import sqlite_utils  # only a new log needs it: opening one stays cheap

    db = sqlite_utils.Database(conn)
    db.table("events").create(
        {
            "position": int,
            "run_id": str,
            "version": int,
            "type": str,
            "schema_version": int,
            "recorded_at": str,
            "causation": int,
            "hash": str,
            "data": str,
        },
        pk="position",
        not_null={"run_id", "version", "type", "schema_version", "recorded_at", "hash", "data"},
        if_not_exists=True,
    )
    db.table("events").create_index(["run_id", "version"], unique=True, if_not_exists=True)
    db.table("events").create_index(["type"], if_not_exists=True)
    db.table("blobs").create(
        {"digest": str, "size": int, "content": bytes}, pk="digest", if_not_exists=True
    )
    # facts about the log itself: "keyed_from" (events.store.keyed_marker)
    db.table("store_meta").create(
        {"name": str, "value": str}, pk="name", not_null={"value"}, if_not_exists=True
    )
    # what a writer found wrong with the database and put right, for verify
    db.table("repairs").create(
        {"id": int, "at": str, "what": str},
        pk="id",
        not_null={"at", "what"},
        if_not_exists=True,
    )
    for statement in SUMMARY_TABLES:
        conn.execute(statement)
    for trigger in _TRIGGERS.values():
        conn.execute(trigger)
    conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


Structure = dict[str, tuple[object, ...]]

_CLAUSES = ("CHECK", "CONFLICT", "COLLATE", "STRICT", "AUTOINCREMENT", "WITHOUT", "REFERENCES")
"""Clauses of a CREATE TABLE no pragma tells, none of which autonomy's tables have: a
CHECK refusing an event type stopped every append; ``ON CONFLICT REPLACE`` on the
position made an insert delete a past event without the DELETE trigger firing."""

_TABLES_SINCE = (
    (0, ("events", "blobs")),
    (2, ("store_meta", "repairs")),
    (3, ("run_summaries", "projection_positions")),
)
"""The tables of each schema version, which a log of that version (or one holding
any of them) must have: ``repairs`` dropped erased what verify would have said of a
log's past (triggers put back), and verify said ok."""


def _structure(conn: sqlite3.Connection) -> Structure:
    """Each table's columns (name, type, NOT NULL, default, primary key) and each of
    its indexes (unique, partial, its columns), by ``table NAME`` and ``index NAME on
    TABLE``: what the schema says, read through SQLite's pragmas, so that the way a
    version of sqlite-utils spaced a CREATE statement does not count."""
    found: Structure = {}
    tables = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    for table, sql in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        # table_xinfo: generated (hidden) columns too; and what no pragma says, the
        # clauses of _CLAUSES
        columns = conn.execute(f"PRAGMA table_xinfo({quoted})").fetchall()
        references = conn.execute(f"PRAGMA foreign_key_list({quoted})").fetchall()
        found[f"table {table}"] = (
            tuple((c[1], str(c[2]).upper(), c[3], c[4], c[5], c[6]) for c in columns),
            tuple(tuple(r[2:5]) for r in references),
            tuple(word for word in _CLAUSES if re.search(rf"\b{word}\b", str(sql or ""), re.I)),
        )
        for _, index, unique, _origin, partial in conn.execute(f"PRAGMA index_list({quoted})"):
            keys = conn.execute(f'PRAGMA index_xinfo("{index.replace(chr(34), chr(34) * 2)}")')
            found[f"index {index} on {table}"] = (
                unique,
                partial,
                tuple((k[2], k[3], k[4]) for k in keys if k[5]),
            )
    return found


# The audit views join events to events on (run_id, type, a json_extract of data):
# without these, every lookup scans the whole run. Expressions must match the views'
# text. Made by the commands that query the views (``engine.runs.audit``), not by
# every writer (each index costs every append); verify knows them.
AUDIT_INDEXES: dict[str, str] = {
    "events_call_id": "CREATE INDEX IF NOT EXISTS events_call_id"
    " ON events(run_id, type, json_extract(data, '$.call_id'))",
    # with the version: the tasks view asks each task's latest update (ORDER BY version
    # DESC LIMIT 1), which without it scanned every update of the run for each task
    # (the view took 8.9 s for a run of 688 tasks, 0.014 s with it)
    "events_task_version": "CREATE INDEX IF NOT EXISTS events_task_version"
    " ON events(run_id, type, json_extract(data, '$.task_id'), version)",
    "events_type_run": "CREATE INDEX IF NOT EXISTS events_type_run ON events(type, run_id, version)",
}

REPLACED_AUDIT_INDEXES: dict[str, str] = {
    "events_task_id": "CREATE INDEX IF NOT EXISTS events_task_id"
    " ON events(run_id, type, json_extract(data, '$.task_id'))",
}
"""Audit indexes an earlier autonomy made, which the next audit drops."""


@functools.cache
def _autonomys_structure(audit: bool = False) -> Structure:
    """What autonomy makes: the log's schema, and with ``audit`` the audit indexes
    too, those of an earlier autonomy included."""
    fresh = sqlite3.connect(":memory:")
    try:
        create_schema(fresh)
        if audit:
            for ddl in (*AUDIT_INDEXES.values(), *REPLACED_AUDIT_INDEXES.values()):
                fresh.execute(ddl)
        return _structure(fresh)
    finally:
        fresh.close()


def structure_problems(conn: sqlite3.Connection) -> list[str]:
    """Where the tables and indexes of autonomy's log differ from those it makes: a
    column's NOT NULL taken off (a row with no run id then went in), an index dropped
    or made partial under its name, an index that is not autonomy's on its tables.
    A log has the tables of its schema version (``_TABLES_SINCE``), each as autonomy
    makes it: its columns, their types and constraints, no CHECK, no reference."""
    have, want = _structure(conn), _autonomys_structure()
    tables = {name.split(" ", 1)[1] for name in want if name.startswith("table ")}
    present = {name.split(" ", 1)[1] for name in have if name.startswith("table ")} & tables
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    problems = [
        f"table {table} is missing"
        for since, group in _TABLES_SINCE
        if version >= since or present & set(group)  # a log that has one has all
        for table in group
        if table not in present
    ]
    for name, shape in want.items():
        table = name.rsplit(" ", 1)[1]
        if table not in present:
            continue
        if name not in have:
            problems.append(f"{name} is missing")
        elif have[name] != shape:
            problems.append(f"{name} is not as autonomy makes it (changed since it was made)")
    audit = _autonomys_structure(audit=True)  # made by `audit` and `serve`, or not
    for name, shape in have.items():
        if not name.startswith("index ") or name in want or name.rsplit(" ", 1)[1] not in present:
            continue
        if name not in audit:
            problems.append(f"{name} is not autonomy's (made since)")
        elif shape != audit[name]:
            problems.append(f"{name} is not as autonomy makes it (changed since it was made)")
    return problems
