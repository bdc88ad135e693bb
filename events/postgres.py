"""The PostgreSQL event store: one log shared by many machines.

Same contract as ``events.sqlite`` (``tests/test_store_contract.py`` runs against
both). Open it with a ``postgresql://`` URL (libpq's: ``?host=/socket/dir``,
``options=-csearch_path%3Dschema`` and the ``PG*`` variables all work).

* Payloads are ``json``: Postgres keeps the text exactly as written, which the hash
  chain needs (``jsonb`` would reorder keys and drop spaces, so it would need the
  text beside it), and the audit views read it with ``->>``. Measured in
  ``benchmarks/bench_postgres.py``.
* Blobs are ``bytea``, stored once under their sha256.
* Append-only is enforced by the database: triggers refuse UPDATE, DELETE and
  TRUNCATE on ``events`` and ``blobs``.
* Appends are serialized by a transaction-level advisory lock, like SQLite's write
  lock: positions are then ``max + 1`` without gaps and commit in order, so a reader
  tailing ``read_all(after_position=...)`` never skips an event that commits late.
  The lock is held for as little as that needs: an append to a run that exists is
  one autocommit statement (``autonomy_append``) that takes it, inserts and commits,
  so no round trip to the client happens under it (``benchmarks/bench_postgres.py``).
* Each append announces its run on the ``autonomy_events`` channel (``NOTIFY``,
  delivered when it commits): ``wait_for_append`` listens there instead of polling,
  on one connection per store however many threads wait (``events.listener``).
* A store is safe to share between threads: its pool (``pool_size`` connections at
  most, each checked before it is lent, so a server that restarted costs no error
  once it is back), its listener and its audit connection (re-made once lost).
* Leases are session-level advisory locks on a hash of the schema and run id, each held on a
  connection of its own; the owner's description is kept in ``leases`` so that a
  refusal names it. The server releases the lock when the session ends, however
  the owner's process ends.
* The schema is created and upgraded by ``MIGRATIONS``, in order, under an
  advisory lock; ``autonomy_schema`` records the version reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.sql
import psycopg_pool
from psycopg.types.string import TextLoader

from events.codec import Codec, hash_key_id
from events.errors import ConcurrencyError, EventStoreError, LeaseLost, StoreUnavailable
from events.lease import refusal
from events.listener import Announcements
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
    keyed_marker,
    number,
    refuse_unkeyed_run,
    unkeyed_runs,
    utc_now,
)

_APPEND_LOCK = 0x61757470  # "autp": the two-int key space, apart from run leases
"""The append lock's first key; its second is ``hashtext(current_schema())``, worked
out by the server: one lock per log, not per database (migration 6; before it, the
key was ``(0x6175746F, 1)`` for every schema, and one team's first append, held
open by a machine gone silent, stopped every other team's appends too)."""
_MIGRATION_LOCK = (0x6175746F, 2)
CHANNEL = "autonomy_events"
"""Where appends are announced; the payload is the run id (its first
``_ANNOUNCED_CHARS`` characters: a payload must stay under 8000 bytes)."""
_ANNOUNCED_CHARS = 1000
# the lock and the announcement in one round trip; NOTIFY is sent only on commit
_LOCK_AND_ANNOUNCE = (
    f"SELECT pg_advisory_xact_lock(%s, hashtext(current_schema())), pg_notify('{CHANNEL}', %s)"
)

_APPEND_ONLY = """
CREATE FUNCTION autonomy_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION autonomy_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION autonomy_append_only();
CREATE TRIGGER blobs_append_only BEFORE UPDATE OR DELETE ON blobs
  FOR EACH ROW EXECUTE FUNCTION autonomy_append_only();
CREATE TRIGGER blobs_no_truncate BEFORE TRUNCATE ON blobs
  FOR EACH STATEMENT EXECUTE FUNCTION autonomy_append_only();
"""

APPEND_ONLY_TRIGGERS = (
    "events_append_only",
    "events_no_truncate",
    "blobs_append_only",
    "blobs_no_truncate",
    "store_meta_append_only",
    "events_position",
)
"""The triggers ``_APPEND_ONLY`` and migrations 3 and 7 create; ``verify`` checks they
are there."""

_POSITION = """
CREATE FUNCTION autonomy_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(1635087472, hashtext(TG_TABLE_SCHEMA));
  SELECT coalesce(max(position), 0) + 1 INTO NEW.position FROM events;
  RETURN NEW;
END $$;
DO $$ BEGIN
  EXECUTE format('ALTER FUNCTION autonomy_position() SET search_path = pg_catalog, %I, pg_temp',
                 current_schema());
END $$;
CREATE TRIGGER events_position BEFORE INSERT ON events
  FOR EACH ROW EXECUTE FUNCTION autonomy_position();
"""
"""Migration 7: every row's position is the log's next, whoever inserts it and
whatever position the insert gives. A writer role may insert rows (a forged one
fails ``verify``), and one at position 2^63 - 1 made every later append of every
writer fail for good ("bigint out of range": an append takes the largest position
plus one, and no writer may delete a row). The append lock is taken for it too, so
an insert that bypasses autonomy's is ordered with theirs. It has its own search
path, not the inserter's (a temporary ``events``, a ``+`` of their own could choose
the position): ``pg_catalog`` first, then the log's schema, where no writer may
create anything. (A static query, planned once a session: one ``format``-ed for the
table of each row cost batched appends 2.7 times their time.)"""

_BLOB_DIGEST = """
ALTER TABLE blobs ADD CONSTRAINT blobs_digest
  CHECK (digest = encode(sha256(content), 'hex') AND size = octet_length(content)) NOT VALID;
"""
"""Migration 8: a blob row whose digest is not its content's, or whose size is not
its length, is refused. A writer role may insert blobs, and an append stores each
with ``ON CONFLICT DO NOTHING``: one stored under the digest of a file a run would
write later, with other bytes, kept that file's real content out of the log for good
(verify said the blob was corrupt; the content was nowhere). ``NOT VALID``: rows
already there are not read again (verify checks them)."""

_APPEND_FUNCTION = """
CREATE FUNCTION autonomy_append(run text, first_version integer, at text, types text[],
    schema_versions integer[], causations bigint[], hashes text[], payloads text[])
  RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE top bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(1635087471, 1);
  SELECT coalesce(max(position), 0) INTO top FROM events;
  INSERT INTO events (position, run_id, version, type, schema_version, recorded_at,
                      causation, hash, data)
    SELECT top + u.n, run, first_version + u.n::integer - 1, u.t, u.s, at, u.c, u.h, u.d::json
      FROM unnest(types, schema_versions, causations, hashes, payloads)
        WITH ORDINALITY AS u(t, s, c, h, d, n);
  PERFORM pg_notify('autonomy_events', left(run, 1000));
  RETURN top + 1;
END $$;
"""
"""Migration 4's ``autonomy_append``: an append to a run that exists, in one statement
(``_APPEND_CALL``): the append lock is taken, the positions given, the rows inserted
and the run announced inside it, and an autocommit statement commits at once, so
the lock is held for no round trip to the client. Migration 6 makes it again with
the log's own lock."""


MIGRATIONS: tuple[str, ...] = (
    # 1: the log, the blobs, append-only triggers, lease owners
    """
CREATE TABLE events (
  position bigint PRIMARY KEY,
  run_id text NOT NULL,
  version integer NOT NULL,
  type text NOT NULL,
  schema_version integer NOT NULL,
  recorded_at text NOT NULL,
  causation bigint,
  hash text NOT NULL,
  data json NOT NULL,
  UNIQUE (run_id, version)
);
CREATE INDEX events_type ON events (type);
CREATE TABLE blobs (digest text PRIMARY KEY, size bigint NOT NULL, content bytea NOT NULL);
CREATE TABLE leases (run_id text PRIMARY KEY, owner text NOT NULL);
"""
    + _APPEND_ONLY,
    # 2: runs queued for workers (engine.runs.workers); a worker holds a row's lock while
    # it runs that run, and sets done_at when it ends
    """
CREATE TABLE queue (
  run_id text PRIMARY KEY,
  goal text NOT NULL,
  template text NOT NULL,
  submitted_at timestamptz NOT NULL DEFAULT now(),
  done_at timestamptz,
  outcome text
);
""",
    # 3: facts about the log itself, as in the SQLite log: "keyed_from", the mark the
    # first keyed run leaves (events.store.keyed_marker); append-only like the events
    """
CREATE TABLE store_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TRIGGER store_meta_append_only BEFORE UPDATE OR DELETE ON store_meta
  FOR EACH ROW EXECUTE FUNCTION autonomy_append_only();
""",
    # 4: appends in one statement (``_APPEND_FUNCTION``)
    _APPEND_FUNCTION,
    # 5: each run's summary, kept by projections.summaries (derived, rebuilt at will)
    ";\n".join(SUMMARY_TABLES),
    # 6: the append lock is the log's (its schema's), not the database's (_APPEND_LOCK)
    _APPEND_FUNCTION.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").replace(
        "pg_advisory_xact_lock(1635087471, 1)",
        "pg_advisory_xact_lock(1635087472, hashtext(current_schema()))",
    ),
    # 7: a row's position is always the log's next (_POSITION)
    _POSITION,
    # 8: a blob is stored under its own digest only (_BLOB_DIGEST)
    _BLOB_DIGEST,
)
SCHEMA_VERSION = len(MIGRATIONS)

_LAST_SQL = "SELECT version, hash FROM events WHERE run_id = %s ORDER BY version DESC LIMIT 1"
_APPEND_CALL = (
    "SELECT autonomy_append(%s::text, %s::integer, %s::text, %b::text[], %b::integer[],"
    " %b::bigint[], %b::text[], %b::text[])"
)
"""Each argument cast to ``autonomy_append``'s own type: uncast, psycopg sends a small
number as a ``smallint``, and a function of the same name taking one (made by whoever
owns the schema) was called instead of autonomy's, dropping what it was given."""
_INSERT_SQL = f"INSERT INTO events ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_BLOB_SQL = "INSERT INTO blobs (digest, size, content) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"


LISTENER_NAME = "autonomy-listener"
"""The ``application_name`` of ``wait_for_append``'s connection."""


def _first_rows(conn: psycopg.Connection[Any]) -> list[tuple[object, object]]:
    """(run id, hash) of each run's first row: in a transaction, for a keyed mark."""
    return conn.execute("SELECT run_id, hash FROM events WHERE version = 1").fetchall()


def _last_version(conn: psycopg.Connection[Any], run_id: str) -> int:
    row = conn.execute("SELECT max(version) FROM events WHERE run_id = %s", (run_id,)).fetchone()
    return int(row[0] or 0) if row else 0


def redacted(url: str) -> str:
    """``url`` without its password, for messages and hints: a ``postgresql://`` URL
    stays one, its password (in the user part or the query) shown as ``***``; a
    ``key=value`` string loses its password."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            parts = urllib.parse.urlsplit(url)
            password = parts.password
        except ValueError:  # "Invalid IPv6 URL": no host to keep; nothing after the scheme
            return url.split("://", 1)[0] + "://(a URL that cannot be read)"
        netloc = parts.netloc
        if password is not None:
            netloc = netloc.replace(f":{password}@", ":***@", 1)
        query = "&".join(
            "password=***" if pair.split("=", 1)[0] == "password" else pair
            for pair in parts.query.split("&")
        )
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return url.split("@", 1)[-1] if "@" in url else url
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params)


def _url_connect_timeout(url: str) -> float:
    """The ``connect_timeout`` the URL names (libpq's parameter), else 10 seconds."""
    try:
        given = psycopg.conninfo.conninfo_to_dict(url).get("connect_timeout")
    except psycopg.Error:
        return DEFAULT_CONNECT_TIMEOUT  # psycopg.connect says what is wrong with the URL
    if given is None:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        seconds = float(given)
    except (TypeError, ValueError):
        raise EventStoreError(
            f"the log's URL has connect_timeout={given!r}: give a number of seconds"
        ) from None
    return seconds if 0 < seconds < math.inf else DEFAULT_CONNECT_TIMEOUT


def _lease_key(schema: str, run_id: str) -> int:
    """A signed 64-bit advisory lock key for the run of the log in ``schema``: advisory
    locks are the database's, and a key of the run id alone refused a team's run
    ``job-1`` while another team's ``job-1``, in its own schema, ran."""
    named = f"{schema}\0{run_id}".encode()
    return int.from_bytes(hashlib.sha256(named).digest()[:8], "big", signed=True)


def _announced(run_id: str) -> str:
    return run_id[:_ANNOUNCED_CHARS]


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Payloads are read as the exact text stored, not parsed into Python objects. A
    transaction left idle (a client gone silent between two statements of a run's
    first append, which holds the log-wide append lock) is ended by the server after
    ``IDLE_IN_TRANSACTION``: one silent machine stopped every append of the team's log
    for as long as TCP took to notice (hours)."""
    conn.adapters.register_loader("json", TextLoader)
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}s'")
    # a pooled connection waits between a run's steps by design: an administrator's
    # idle_session_timeout ended it there, and the pool then lent no connection for
    # 10 s, a run stopped and resumed over and over (PostgreSQL 14 and later)
    with contextlib.suppress(psycopg.errors.UndefinedObject):
        conn.execute("SET idle_session_timeout = 0")


IDLE_IN_TRANSACTION = 60
"""Seconds an append's transaction may wait on its client (which takes milliseconds)."""

KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
"""TCP keepalives (libpq's parameters) for connections that sit idle by design, a
lease's or a worker's claim: a server gone is noticed in about a minute, not hours."""


DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds a store waits for the server when neither its caller nor the URL says."""

RECONNECT_SECONDS = 5.0
"""How long the pool keeps reconnecting on its own once the server is lost (its
default, 5 minutes, backs off to waits of 2 minutes between attempts: a service
would answer 503 for minutes after the server came back). After that each request
that finds no connection has the pool try one: a server back is served again at
the next request or so."""

UNAVAILABLE_STATES = (
    "08", "57P01", "57P02", "57P03", "53300", "53100", "57014", "55P03", "40001", "40P01"
)  # fmt: skip
"""SQLSTATEs (or their class) of a server that cannot be reached or take us now: a
connection exception, a shutdown (admin, crash, starting up), too many
connections, a full disk; a statement cancelled (a DBA's cancel, a
``statement_timeout``), a lock not had in time (``lock_timeout``), a serialization
failure or a deadlock. A query that fails for them may succeed when asked again."""


def mapped_error(e: psycopg.Error, where: str, url: str = "") -> EventStoreError:
    """The error of this tree that says what happened (see ``events.errors``); the
    ``url`` connected to, if libpq quotes it (one it cannot parse), without its password."""
    detail = one_line((getattr(e, "diag", None) and e.diag.message_primary) or str(e))
    if url:
        detail = detail.replace(url, redacted(url))
    text = f"{where}: {detail}" if where else detail
    state = e.sqlstate or ""
    lost = isinstance(e, psycopg.OperationalError) and not state  # no server answered
    if lost or state.startswith(UNAVAILABLE_STATES):
        return StoreUnavailable(text)
    return EventStoreError(text)


def one_line(text: str) -> str:
    """libpq's message as one line: it adds a hint on a line of its own ("connection
    refused" then "Is the server running on that host...?"), which came out as an
    error line and a stray indented one after it."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


@contextlib.contextmanager
def _mapped_errors(where: str, pool: str = "", url: str = "") -> Iterator[None]:
    try:
        yield
    except psycopg_pool.PoolTimeout as e:
        last = _POOL_TROUBLE.last.get(pool)
        reason = f"the database server cannot be reached: {last}" if last else "no connection"
        raise StoreUnavailable(f"{where}: {reason} ({e})") from e
    except psycopg.Error as e:
        if url and url in str(e):  # libpq quoted it, password and all: not shown as the cause
            raise mapped_error(e, where, url) from None
        raise mapped_error(e, where, url) from e


class _PoolTrouble(logging.Filter):
    """psycopg_pool logs a warning for each connection it failed to make, or found
    broken, and deals with it itself (it tries again, makes another); printed, they
    would come between a run's lines or a service's, as library noise. The store
    says what happened instead, once, when a caller gives up waiting: so this filter
    keeps the last failure to connect of each pool (by name) and lets none of the
    pool's warnings through."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        args = record.args
        if record.msg == "error connecting in %r: %s" and isinstance(args, tuple):
            self.last[str(args[0])] = one_line(str(args[1])).removeprefix("connection failed: ")
        return False


_POOL_TROUBLE = _PoolTrouble()
logging.getLogger("psycopg.pool").addFilter(_POOL_TROUBLE)


class PostgresEventStore(SQLEventStore):
    """Event store in a PostgreSQL database."""

    placeholder = "%s"

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utc_now,
        codec: Codec | None = None,
        pool_size: int = 4,
        connect_timeout: float | None = None,
        key: bytes | None = None,
        read_only: bool = False,
    ) -> None:
        """``connect_timeout``: seconds to wait for the server, to connect or for a
        connection of the pool; by default the URL's ``connect_timeout`` when positive
        (libpq's 0, for ever, is not taken), else 10.
        ``read_only``: the derived tables (run summaries) are caught up in memory,
        never written, as for a read-only SQLite log; appends still work."""
        super().__init__(clock=clock, codec=codec, key=key)
        self.url = url
        self.where = redacted(url)
        self.read_only = read_only
        if connect_timeout is None:
            connect_timeout = _url_connect_timeout(url)
        # whole seconds for libpq, where 0 would mean waiting for ever
        self.connect_timeout = max(1, math.ceil(connect_timeout))
        """Seconds a connection to this log waits for the server (libpq's
        ``connect_timeout``): this store's, and another's to the same log (a worker's)."""
        self._closed = threading.Event()
        self.made_with: tuple[str, ...] = ()
        """Statements that make the rest of what this log's schema holds (the audit
        views, by ``engine.storage``): ``verify`` compares what they make too."""
        self._held: dict[str, psycopg.Connection[Any]] = {}
        """The runs whose lease this store holds, with the session holding each."""
        self._audit: SQLiteStyle | None = None
        self._audit_lock = threading.Lock()
        self._announcements = Announcements(self._listener)
        with _mapped_errors(f"opening {self.where}", url=self.url):
            with psycopg.connect(url, autocommit=True, connect_timeout=self.connect_timeout) as c:
                migrate(c, create=not read_only)
            self._pool = psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True, "connect_timeout": self.connect_timeout, **KEEPALIVES},
                configure=_configure,
                check=psycopg_pool.ConnectionPool.check_connection,
                timeout=connect_timeout,
                reconnect_timeout=RECONNECT_SECONDS,
                open=True,
            )

    @contextlib.contextmanager
    def _conn(self, where: str) -> Iterator[psycopg.Connection[Any]]:
        if self._closed.is_set():
            raise EventStoreError(f"{where}: the store is closed")
        with _mapped_errors(where, self._pool.name), self._pool.connection() as conn:
            if _POOL_TROUBLE.last:  # a failure to connect is past: forget it
                _POOL_TROUBLE.last.pop(self._pool.name, None)
            yield conn

    # -- writing ---------------------------------------------------------------------

    def _append_rows(
        self, run_id: str, drafts: Sequence[Draft], expected_version: int, recorded_at: str
    ) -> list[Row]:
        """Two statements, the lock held inside the second only: the run's last
        version and hash are read without it (versions only grow, so a writer that
        got there in between makes the insert collide on ``(run_id, version)``);
        ``autonomy_append`` then takes it, numbers, inserts and commits. A run's first
        append goes through ``_start_run``."""
        where = f"appending to run {run_id!r}"
        self._check_lease(run_id)
        with self._conn(where) as conn:
            last = conn.execute(_LAST_SQL, (run_id,)).fetchone()
            if last is None:
                check_expected(run_id, expected_version, 0)
                return self._start_run(conn, run_id, drafts, recorded_at)
            last_version, last_hash = last
            check_expected(run_id, expected_version, last_version)
            rows = number(
                run_id,
                drafts,
                last_version=last_version,
                last_hash=last_hash,
                recorded_at=recorded_at,
                first_position=0,
                key=self.key,
            )
            try:
                found = conn.execute(
                    _APPEND_CALL,
                    (
                        run_id,
                        last_version + 1,
                        recorded_at,
                        [r[3] for r in rows],
                        [r[4] for r in rows],
                        [r[6] for r in rows],
                        [r[7] for r in rows],
                        [r[8] for r in rows],
                    ),
                ).fetchone()
            except psycopg.errors.UniqueViolation as e:
                raise ConcurrencyError(run_id, expected_version, _last_version(conn, run_id)) from e
        first = int(found[0]) if found else 0
        return [(first + i, *row[1:]) for i, row in enumerate(rows)]

    def _start_run(
        self, conn: psycopg.Connection[Any], run_id: str, drafts: Sequence[Draft], recorded_at: str
    ) -> list[Row]:
        """A run's first append: in a transaction under the append lock, which also
        orders it with the log's keyed mark (read, and written by a first keyed run)."""
        with conn.transaction():
            first = self._lock_for_new_run(conn, run_id)
            if self.key is None:
                refuse_unkeyed_run(run_id, self._marker(conn))
            rows = number(
                run_id,
                drafts,
                last_version=0,
                last_hash="",
                recorded_at=recorded_at,
                first_position=first,
                key=self.key,
            )
            with conn.cursor() as cursor:
                cursor.executemany(_INSERT_SQL, rows)
            if self.key is not None and hash_key_id(rows[0][7]):
                unkeyed = unkeyed_runs(_first_rows(conn), run_id)
                self._mark_keyed(conn, keyed_marker(self.key, first, unkeyed))
        return rows

    def _import_rows(self, run_id: str, rows: Sequence[Row], after: int) -> None:
        with self._conn(f"copying run {run_id!r}") as conn, conn.transaction():
            first = self._lock_for_new_run(conn, run_id, after)
            with conn.cursor() as cursor:
                cursor.executemany(
                    _INSERT_SQL, [(first + i, *row[1:]) for i, row in enumerate(rows)]
                )
            marker = self._import_marker(
                run_id, rows, first, self._marker(conn), lambda: _first_rows(conn)
            )
            if marker:
                self._mark_keyed(conn, marker)

    @staticmethod
    def _lock_for_new_run(conn: psycopg.Connection[Any], run_id: str, after: int = 0) -> int:
        """In a transaction: take the append lock (announcing the run), check that
        the run still has no events (or ends at ``after``, for the rest of a copied
        run), and return the log's next position."""
        conn.execute(_LOCK_AND_ANNOUNCE, (_APPEND_LOCK, _announced(run_id)))
        check_expected(run_id, after, _last_version(conn, run_id))
        top = conn.execute("SELECT max(position) FROM events").fetchone()
        return int(top[0] or 0) + 1 if top else 1

    @staticmethod
    def _mark_keyed(conn: psycopg.Connection[Any], marker: str) -> None:
        conn.execute(
            "INSERT INTO store_meta (name, value) VALUES ('keyed_from', %s) ON CONFLICT DO NOTHING",
            (marker,),
        )

    def save_summaries(
        self, expected: int, position: int, rows: Sequence[SummaryRow], *, replace: bool = False
    ) -> bool:
        with self._conn("saving the run summaries") as conn, conn.transaction() as tx:
            if replace:
                conn.execute("DELETE FROM run_summaries")
                conn.execute(
                    "UPDATE projection_positions SET position = %s WHERE name = 'run_summaries'",
                    (position,),
                )
            else:
                moved = conn.execute(self.sql(MOVE_SUMMARY_POSITION_SQL), (position, expected))
                if moved.rowcount != 1:
                    raise psycopg.Rollback(tx)
            with conn.cursor() as cursor:
                cursor.executemany(self.sql(SAVE_SUMMARY_SQL), rows)
            return True
        return False

    # -- integrity -------------------------------------------------------------------

    database_checks = "append-only triggers and their definitions"
    """What ``verify`` says it checked (``NOT_COMPARED`` after a call that could not
    compare the definitions)."""

    def database_problems(self) -> list[str]:
        """The append-only triggers of this schema's tables missing or not firing now
        (disabled, or firing on replicas only), and every trigger and function of the
        schema that is not as autonomy makes it: compared, definition by definition,
        with those of a scratch schema the migrations make in a transaction rolled
        back (PostgreSQL checks its own pages; an owner or a superuser can still
        change a trigger's condition, a function's body). A role that may not make
        that scratch schema gets the first check only, and is told so."""
        rows = self._fetch(
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relnamespace = to_regnamespace(quote_ident(current_schema()))"
            " AND t.tgname = ANY(%s) AND t.tgenabled IN ('O', 'A')",
            (list(APPEND_ONLY_TRIGGERS),),
            "checking the append-only triggers",
        )
        present = {row[0] for row in rows}
        missing = [name for name in APPEND_ONLY_TRIGGERS if name not in present]
        problems = []
        if missing:
            problems.append(f"append-only triggers are missing or disabled: {', '.join(missing)}")
        self.database_checks = type(self).database_checks  # as this call finds it
        with self._conn("comparing the schema's triggers and functions") as conn:
            try:
                differ = _definitions_differ(conn, self.made_with)
            except psycopg.errors.InsufficientPrivilege:  # said, not a problem of the log
                differ = []
                self.database_checks = NOT_COMPARED
            except psycopg.errors.ReadOnlySqlTransaction:  # a standby, or read-only default
                # transactions: verify failed outright, and checked no run's chain
                differ = []
                self.database_checks = NOT_COMPARED_READ_ONLY
        said = tuple(f"trigger {name} on " for name in missing)  # not twice
        return problems + [line for line in differ if not line.startswith(said)]

    # -- reading ---------------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[object], where: str) -> list[Any]:
        with self._conn(where) as conn:
            return conn.execute(sql, params).fetchall()

    def wait_for_append(self, run_id: str, after: int, timeout: float) -> bool:
        """Wait on ``LISTEN autonomy_events`` until an append to ``run_id`` past
        ``after`` commits, or ``timeout``.

        Every thread waits on the store's one listening connection (see
        ``events.listener``): an announcement of the run wakes all its waiters at
        once. The run is looked at after ``LISTEN`` and on each announcement of
        it, so an append that commits at any moment is seen. A dropped listening
        connection wakes the waiters, which look again and listen on a new one;
        while it cannot be made, a notification is lost for at most ``timeout``:
        a live tail calls this in a loop with a bounded timeout, which is its
        fallback poll. Closing the store ends every wait (False)."""
        deadline = time.monotonic() + timeout
        where = f"waiting for run {run_id!r}"
        if self._closed.is_set():
            raise EventStoreError(f"{where}: the store is closed")
        with (
            _mapped_errors(where),
            self._announcements.subscribed(_announced(run_id)) as announced,
        ):
            while self.last_version(run_id) <= after:
                if not announced.wait(deadline):
                    return False
            return True

    def waiting(self, run_id: str) -> int:
        """How many threads wait for an announcement of ``run_id`` now, having
        looked at it since they listen: a test or a monitor can tell that an
        append would reach them only by its announcement."""
        return self._announcements.asleep(_announced(run_id))

    def _listener(self) -> psycopg.Connection[Any]:
        """A new connection listening on ``CHANNEL``."""
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            application_name=LISTENER_NAME,
            connect_timeout=self.connect_timeout,
        )
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    # -- blobs -----------------------------------------------------------------------

    def _put_blob(self, digest: str, content: bytes) -> None:
        self._put_blobs([(digest, content)])

    def _put_blobs(self, items: Sequence[tuple[str, bytes]]) -> None:
        with self._conn("storing blobs") as conn, conn.transaction(), conn.cursor() as cursor:
            cursor.executemany(
                _BLOB_SQL, [(digest, len(content), content) for digest, content in items]
            )

    def keyed_marker(self) -> str | None:
        with self._conn("reading store_meta") as conn:
            return self._marker(conn)

    @staticmethod
    def _marker(conn: psycopg.Connection[Any]) -> str | None:
        row = conn.execute("SELECT value FROM store_meta WHERE name = 'keyed_from'").fetchone()
        return str(row[0]) if row else None

    def _get_blob(self, digest: str) -> tuple[bytes, int] | None:
        rows = self._fetch(
            "SELECT content, size FROM blobs WHERE digest = %s", (digest,), "reading a blob"
        )
        return None if not rows else (bytes(rows[0][0]), int(rows[0][1]))

    def _blob_digests(self) -> Iterator[str]:
        rows = self._fetch("SELECT digest FROM blobs ORDER BY digest", (), "listing blobs")
        return (digest for (digest,) in rows)

    # -- leases ----------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, run_id: str, owner: str) -> Iterator[None]:
        """The run's lease: a session-level advisory lock on a connection of its own,
        released when the context ends (before it ends, so that whoever asks next finds
        it free) or when the session dies."""
        where = f"taking the lease of run {run_id}"
        with _mapped_errors(where):
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=self.connect_timeout, **KEEPALIVES
            )
        held = None
        key = 0
        try:
            with _mapped_errors(where):
                (schema,) = conn.execute("SELECT current_schema()").fetchone() or ("",)
                key = _lease_key(str(schema), run_id)
                held = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                if not (held and held[0]):
                    row = conn.execute(
                        "SELECT owner FROM leases WHERE run_id = %s", (run_id,)
                    ).fetchone()
                    raise refusal(run_id, row[0] if row else "")
                conn.execute(
                    "INSERT INTO leases (run_id, owner) VALUES (%s, %s)"
                    " ON CONFLICT (run_id) DO UPDATE SET owner = excluded.owner",
                    (run_id, owner),
                )
            # the lease lives as long as this session: an administrator's idle timeout
            # must not end it while the engine thinks (PostgreSQL 14 and later)
            with contextlib.suppress(psycopg.Error):
                conn.execute("SET idle_session_timeout = 0")
            self._held[run_id] = conn
            yield
        finally:
            self._held.pop(run_id, None)
            with contextlib.suppress(psycopg.Error):
                if held and held[0]:
                    # closing alone releases it only once the server has seen the
                    # session end, which a loaded server does after the next engine
                    # has already been refused the lease
                    conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                conn.close()

    def _check_lease(self, run_id: str) -> None:
        """``LeaseLost`` when this store holds ``run_id``'s lease and the session that
        holds it has ended: its lock went with it, and another engine may have taken
        the run (a restarted server, an idle timeout, a cut network); one round trip
        before each append of a leased run. No lease here (an answer, an import): no
        check."""
        conn = self._held.get(run_id)
        if conn is None:
            return
        try:
            conn.execute("SELECT 1")
        except psycopg.Error as e:
            raise LeaseLost(
                f"appending to run {run_id!r}: the database session holding this engine's "
                f"lease of the run ended ({str(e).strip() or type(e).__name__}), so another "
                "engine may run it now; nothing more was written"
            ) from e

    # -- misc ------------------------------------------------------------------------

    @property
    def connection(self) -> SQLiteStyle:
        """A connection of its own for audit queries, taking SQLite's placeholders
        (see ``SQLiteStyle``); opened on first use (again once lost), closed with
        the store. psycopg serialises the threads that share it."""
        with self._audit_lock:
            if self._closed.is_set():
                raise EventStoreError(f"reading {self.where}: the store is closed")
            if self._audit is None:
                self._audit = SQLiteStyle(self._audit_connection(), self._audit_again)
            return self._audit

    def _audit_connection(self) -> psycopg.Connection[Any]:
        with _mapped_errors(f"opening {self.where}", url=self.url):
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.connect_timeout)
        _configure(conn)
        return conn

    def _audit_again(self, lost: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
        """The audit connection instead of ``lost`` (made once by the first thread
        that finds it lost)."""
        with self._audit_lock:
            if self._closed.is_set() or self._audit is None:
                raise EventStoreError(f"reading {self.where}: the store is closed")
            if self._audit.raw is lost:
                with contextlib.suppress(psycopg.Error):
                    lost.close()
                self._audit.raw = self._audit_connection()
            return self._audit.raw

    def close(self) -> None:
        """Close the pool and the connections; threads waiting for an append end."""
        if not self._closed.is_set():
            self._closed.set()
            self._announcements.close()
            self._pool.close()
            _POOL_TROUBLE.last.pop(self._pool.name, None)
            with self._audit_lock:
                if self._audit is not None:
                    self._audit.raw.close()


_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


APPEND_ONLY_TABLES = ("events", "blobs", "store_meta")
"""Tables a writer may only read and add to."""
WORKING_TABLES = ("leases", "queue")
"""Tables a writer also updates: lease owners, and the queue's outcome of a run."""

DERIVED_TABLES = ("run_summaries", "projection_positions")
"""Derived data a writer keeps and may rebuild (``projections.summaries``): never the
log's truth, so it may be rewritten; ``verify`` checks it against the log."""


def grant_writer(conn: psycopg.Connection[Any], role: str, readable: Iterable[str] = ()) -> None:
    """Let ``role`` run, work and read on the log in ``conn``'s schema, and nothing
    more: SELECT and INSERT on the log's tables, UPDATE only on the working tables,
    the derived run summaries rewritable, SELECT on ``readable`` (the audit views), never UPDATE, DELETE or TRUNCATE on the
    log (its triggers are the second wall). Run by the schema's owner, after
    ``migrate``; again after an upgrade adds a table."""
    if role.strip().lower() == "public" or not role.strip():
        # quoted or not, "public" is PostgreSQL's every role (and "" no role's name):
        # granting to it said "public may now append" and let every login write the log
        raise EventStoreError(
            f"granting to {role!r}: that is no role but every role (PUBLIC) or none; "
            "give the name of the role the workers connect as"
        )
    sql = psycopg.sql

    def names(tables: Iterable[str]) -> psycopg.sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, tables))

    statements = [
        "GRANT USAGE ON SCHEMA {schema} TO {who}",
        "GRANT SELECT ON autonomy_schema TO {who}",
        "GRANT SELECT, INSERT ON {log} TO {who}",
        "GRANT SELECT, INSERT, UPDATE ON {working} TO {who}",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {derived} TO {who}",
    ]
    views = list(readable)
    if views:
        statements.append("GRANT SELECT ON {views} TO {who}")
    with _mapped_errors(f"granting to {role!r}"), conn.transaction():
        row = conn.execute("SELECT current_schema()").fetchone()
        if not (row and row[0]):
            raise EventStoreError(f"granting to {role!r}: no schema on the search path")
        for statement in statements:
            conn.execute(
                sql.SQL(statement).format(
                    schema=sql.Identifier(row[0]),
                    who=sql.Identifier(role),
                    log=names(APPEND_ONLY_TABLES),
                    working=names(WORKING_TABLES),
                    derived=names(DERIVED_TABLES),
                    views=names(views),
                )
            )


class SQLiteStyle:
    """A psycopg connection that takes SQLite's placeholders (``?``, ``:name``), so
    that the audit code runs the same SQL on either database. Statements are
    prepared: one statement per call, never a script. Driver errors become
    ``EventStoreError``. With ``reconnect`` (given the lost connection, it returns
    the one to use now), a statement that finds the connection lost (a server
    restarted) runs once more on a new one: the audit statements are reads, and
    the queue's insert cannot be doubled (its run id is the key)."""

    dialect = "postgres"

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        reconnect: Callable[[psycopg.Connection[Any]], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.raw = raw
        self.reconnect = reconnect
        self._turn = threading.RLock()
        """Held for each statement, and for the whole of a ``limited`` block: no
        other thread's statement runs inside its transaction (psycopg alone
        serialises statements, not transactions)."""
        self._bounded = False
        """In a ``limited`` block: a statement that finds the connection lost is not
        run again on a new one, outside the block's limit."""

    def execute(
        self, sql: str, params: Sequence[object] | dict[str, object] = ()
    ) -> psycopg.Cursor[Any]:
        query = sql.replace("%", "%%")
        if isinstance(params, dict):
            query = _NAMED.sub(lambda m: f"%({m[1]})s" if m[1] in params else m[0], query)
        else:
            query = query.replace("?", "%s")
        with self._turn:
            raw = self.raw
            try:
                try:
                    return raw.execute(query, params, prepare=True)
                except psycopg.OperationalError:
                    if self.reconnect is None or not raw.broken or self._bounded:
                        raise
                    return self.reconnect(raw).execute(query, params, prepare=True)
            except psycopg.Error as e:
                raise mapped_error(e, "") from e

    @contextlib.contextmanager
    def limited(self, seconds: float) -> Iterator[None]:
        """Statements of the block are stopped by the server after ``seconds`` each
        (``statement_timeout``, for one read-only transaction that is rolled back
        after): a service's named audit query, as SQLite's progress handler bounds
        it. Other threads' statements wait for the block."""
        milliseconds = str(max(1, math.ceil(seconds * 1000)))
        with self._turn:
            raw = self.raw
            try:
                try:
                    raw.execute("BEGIN READ ONLY")
                except psycopg.OperationalError:
                    # lost (a restarted server): made again here, as a statement does
                    if self.reconnect is None or not raw.broken:
                        raise
                    raw = self.reconnect(raw)
                    raw.execute("BEGIN READ ONLY")
                raw.execute("SELECT set_config('statement_timeout', %s, true)", (milliseconds,))
                self._bounded = True
                yield
            except psycopg.Error as e:
                raise mapped_error(e, "") from e
            finally:
                self._bounded = False
                with contextlib.suppress(psycopg.Error):
                    raw.execute("ROLLBACK")


NOT_COMPARED_READ_ONLY = (
    "append-only triggers; their definitions not compared, since the server takes no "
    "write here (a standby, or default_transaction_read_only) and they are compared in "
    "a scratch schema (verify where it may make one)"
)

NOT_COMPARED = (
    "append-only triggers; their definitions not compared, since this role may not make "
    "the scratch schema they are compared in (verify as the owner)"
)


def _definitions(conn: psycopg.Connection[Any], schema: str) -> dict[str, str]:
    """Each trigger on the tables of ``schema`` (with whether it fires), each
    function and each view in it, each rule, row security policy and constraint on
    its tables and whether they have row security on, by kind and name, as
    PostgreSQL prints it, the schema's name replaced by ``<schema>``."""
    rows = conn.execute(
        "SELECT 'trigger ' || t.tgname || ' on ' || c.relname,"
        " pg_get_triggerdef(t.oid) || ' [' || t.tgenabled::text || ']'"
        " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE c.relnamespace = to_regnamespace(quote_ident(%s)) AND NOT t.tgisinternal"
        " UNION ALL"
        " SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)"
        " || ')', pg_get_functiondef(p.oid)"
        " FROM pg_proc p WHERE p.pronamespace = to_regnamespace(quote_ident(%s))"
        " UNION ALL"
        " SELECT 'view ' || c.relname, pg_get_viewdef(c.oid)"
        " FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = to_regnamespace(quote_ident(%s))"
        # a rule can drop an append as a trigger can (DO INSTEAD NOTHING); a row
        # security policy shows the owner's verify one row and the agents another; a
        # dropped constraint lets a second row in at a version
        " UNION ALL"
        " SELECT 'rule ' || r.rulename || ' on ' || c.relname, pg_get_ruledef(r.oid)"
        " FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
        " WHERE c.relnamespace = to_regnamespace(quote_ident(%s)) AND r.rulename <> '_RETURN'"
        " UNION ALL"
        " SELECT 'policy ' || pol.polname || ' on ' || c.relname, pol.polcmd::text || ' '"
        " || coalesce(pg_get_expr(pol.polqual, pol.polrelid), '') || ' '"
        " || coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), '')"
        " FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid"
        " WHERE c.relnamespace = to_regnamespace(quote_ident(%s))"
        " UNION ALL"
        " SELECT 'row security of ' || c.relname,"
        " c.relrowsecurity::text || ' ' || c.relforcerowsecurity::text"
        " FROM pg_class c WHERE c.relkind IN ('r', 'p')"
        " AND c.relnamespace = to_regnamespace(quote_ident(%s))"
        " UNION ALL"
        " SELECT 'constraint ' || con.conname || ' on ' || c.relname, pg_get_constraintdef(con.oid)"
        " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
        " WHERE c.relnamespace = to_regnamespace(quote_ident(%s))",
        (schema,) * 7,
    ).fetchall()
    # Read with the schema on the search path (the log's own; the scratch one's SET
    # LOCAL), PostgreSQL names nothing of it with its schema but a function's own
    # name and a trigger's table in their CREATE line. Replaced there only: ``u.`` or
    # ``events.`` elsewhere is a table's alias or name (a log in schema "u" failed
    # verify as tampered with).
    quoted = '"' + schema.replace('"', '""') + '"'
    header = re.compile(
        r"^(CREATE OR REPLACE FUNCTION |CREATE (?:CONSTRAINT )?TRIGGER .*? ON )"
        rf"(?:{re.escape(quoted)}|{re.escape(schema)})\.",
        re.M,
    )
    # and the search path a function is given (autonomy_position's): a literal
    literal = "'" + schema.replace("'", "''") + "'"
    path = re.compile(rf"^( SET search_path TO 'pg_catalog', ){re.escape(literal)}", re.M)
    return {
        name: path.sub(r"\1<schema>", header.sub(r"\1<schema>.", text, count=1), count=1)
        for name, text in rows
    }


def _definitions_differ(conn: psycopg.Connection[Any], also: Sequence[str] = ()) -> list[str]:
    """What differs between the triggers, functions and views of the current schema
    and those the migrations (and the statements ``also``: the audit views) make in
    a fresh one (made, read and rolled back)."""
    (schema,) = conn.execute("SELECT current_schema()").fetchone() or ("",)
    have = _definitions(conn, schema)
    scratch = f"autonomy_verify_{os.getpid()}_{secrets.token_hex(4)}"
    with conn.transaction(force_rollback=True):
        conn.execute(f'CREATE SCHEMA "{scratch}"')
        conn.execute(f'SET LOCAL search_path = "{scratch}"')
        for statement in (*MIGRATIONS, *also):
            conn.execute(statement)
        want = _definitions(conn, scratch)
    problems = [
        f"{name} is not as autonomy makes it (changed since it was made)"
        for name in sorted(want)
        if name in have and have[name] != want[name]
    ]
    problems += [
        f"{name} is missing" for name in sorted(want.keys() - have.keys())
        if name.startswith(("function ", "view ", "constraint ", "row security "))
    ]  # fmt: skip
    problems += [
        f"{name} is not autonomy's (a foreign one, made since)"
        for name in sorted(have.keys() - want.keys())
        if name.startswith(("trigger ", "rule ", "policy ", "constraint "))
    ]
    # a function of the name of one of autonomy's, taking other arguments: one such
    # autonomy_append was what the writers called (see _APPEND_CALL), and verify said ok
    ours = {name.split("(")[0] for name in want if name.startswith("function ")}
    problems += [
        f"{name} is not autonomy's (a function of the name of one of autonomy's, made since)"
        for name in sorted(have.keys() - want.keys())
        if name.startswith("function ") and name.split("(")[0] in ours
    ]
    return problems


def migrate(conn: psycopg.Connection[Any], *, create: bool = True) -> int:
    """Bring the schema of ``conn``'s search path up to ``SCHEMA_VERSION``; returns
    the version found before. Concurrent openers wait for each other. A schema
    already current is only read, so a role that may not create anything (see
    ``grant_writer``) opens it. Without ``create`` (a command that only reads), a
    schema holding no log is refused, not given one; a schema whose tables have
    autonomy's names but are not autonomy's is refused in any case."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
        # in the schema CREATE would use, not any on the search path
        (schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
        if schema is None:  # PostgreSQL's own words were "null values cannot be
            # formatted as an SQL identifier", from every command
            (path,) = conn.execute("SHOW search_path").fetchone() or ("",)
            raise EventStoreError(
                f"no schema of the search path ({path}) exists in this database, or this "
                "role may not use it (USAGE): create it, or grant it, or name another "
                "(?options=-csearch_path%3DNAME in the URL)"
            )
        exists = conn.execute(
            "SELECT to_regclass(format('%I.autonomy_schema', current_schema()))"
        ).fetchone()
        if not (exists and exists[0]):
            taken = [
                name
                for name in ("events", "blobs", "leases", "queue")
                if (conn.execute("SELECT to_regclass(format('%%I.%%I', current_schema(), %s::text))",
                                 (name,)).fetchone() or (None,))[0]
            ]  # fmt: skip
            if taken:
                raise EventStoreError(
                    f"schema {schema!r} of this database holds no autonomy event log but "
                    f"tables of the same names ({', '.join(taken)}); give the log a schema of "
                    "its own (?options=-csearch_path%3Dautonomy in the URL)"
                )
            if not create:
                raise EventStoreError(
                    f"schema {schema!r} of this database holds no autonomy event log; a "
                    "command that writes one (autonomy run) creates it"
                )
            conn.execute("CREATE TABLE autonomy_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM autonomy_schema").fetchone()
        found = int(row[0] or 0) if row else 0
        if found > SCHEMA_VERSION:
            raise EventStoreError(
                f"the log's schema is version {found}, newer than this autonomy knows "
                f"({SCHEMA_VERSION}); upgrade autonomy"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO autonomy_schema (version) VALUES (%s)", (version,))
    return found
