"""Where the event log lives, and opening it ready for audit.

The log is one SQLite file (or a PostgreSQL database named by a ``postgresql://``
URL, see ``events.postgres``), by default ``.autonomy/events.db`` under the workspace
(or under the current directory when there is no workspace); ``--db PATH`` or
``AUTONOMY_DB`` put it elsewhere. ``open_store`` opens it and installs the audit
views (``projections.views``), so ``sqlite3 .autonomy/events.db "SELECT * FROM
tool_calls WHERE ok = 0"`` works on any log the engine has touched.

Commands that only read open the log with ``read_only=True``: nothing is written to
the file (no schema, no views: those the file lacks are TEMP views of the
connection), so archived logs on read-only storage can be read. A writer's ``--db``
must be in a directory that exists; only the default ``.autonomy/`` is created.

``synchronous`` is the durability setting: ``NORMAL`` (the default, with WAL)
never loses a committed event when autonomy crashes, but may lose the last
transactions on a power loss or an OS crash; ``FULL`` survives those too, at the
cost of an fsync per append.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from events.errors import EventStoreError

if TYPE_CHECKING:
    from events.sqlite import Synchronous
    from events.store import EventStore

DB_ENV = "AUTONOMY_DB"
"""The environment variable naming the log, when ``--db`` is not given."""

DB_DIR = ".autonomy"
DB_NAME = "events.db"


def is_postgres_url(db: object) -> bool:
    """Whether ``db`` names a log on a PostgreSQL server rather than a file."""
    return str(db).startswith(("postgresql://", "postgres://"))


def default_db_path(workspace: Path | None) -> Path:
    """``workspace/.autonomy/events.db``, or ``./.autonomy/events.db`` without one."""
    return (workspace if workspace is not None else Path(".")) / DB_DIR / DB_NAME


def resolve_db(
    db_option: Path | str | None,
    workspace: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Path | str:
    """The log to use: ``db_option`` if given, else ``$AUTONOMY_DB`` (from ``env``,
    ``os.environ`` when None), else ``default_db_path(workspace)``. A file is a
    ``Path``; a ``postgresql://`` URL stays the string it is."""
    if db_option is not None and str(db_option) != "":
        chosen = str(db_option)
    else:
        chosen = (os.environ if env is None else env).get(DB_ENV, "").strip()
    if not chosen:
        return default_db_path(workspace)
    return chosen if is_postgres_url(chosen) else Path(chosen)


def open_store(
    db: Path | str,
    *,
    synchronous: Synchronous = "NORMAL",
    must_exist: bool = False,
    read_only: bool = False,
    create_dir: bool = False,
    key: bytes | None = None,
    busy_timeout: float = 30.0,
) -> EventStore:
    """Open the log at ``db`` with the audit views installed.

    ``must_exist=True`` is for commands that continue a log: a missing file, or one
    without the log's tables, is an error instead of a new, empty log. ``read_only=True`` is for
    commands that only read: the file must exist and be a log, and nothing is
    written to it (``SQLiteEventStore(read_only=True)``; views the file lacks are
    TEMP views; then ``PRAGMA query_only``). A new log is created only in a
    directory that exists, unless ``create_dir`` (the default ``.autonomy/``).
    ``key`` keys the chain of the runs started through this store; without one,
    the user's key is used if there is one (``engine.keys.load_key``): a log that
    holds keyed runs takes new runs only from a store with a key. A
    ``postgresql://`` URL opens the log on that server (its schema is created if
    missing; ``read_only``: its run summaries are caught up in memory, never
    written). ``busy_timeout``: how long an SQLite log another process holds locked
    is waited for (``StoreUnavailable`` after).
    """
    # imported here, not above: the command line's start does not pay for them
    from engine.keys import load_key
    from events.sqlite import SQLiteEventStore
    from projections.summaries import maintain
    from projections.views import install_views

    if key is None:
        key = load_key(create=False)
    if is_postgres_url(db):
        return open_postgres(str(db), key=key, read_only=read_only)
    path = Path(db)
    if (must_exist or read_only) and str(db) != ":memory:" and not path.exists():
        raise EventStoreError(f"no event log at {path} (give --db PATH or set {DB_ENV})")
    if must_exist and path.is_file() and path.stat().st_size == 0:
        # a command that continues a log (answer, resume, rewind) made an empty file one
        raise EventStoreError(f"{path}: the file is empty, not an autonomy event log")
    if create_dir and not read_only:
        _make_directory(path.parent)
    store = SQLiteEventStore(
        path,
        synchronous=synchronous,
        read_only=read_only,
        must_exist=must_exist,
        key=key,
        busy_timeout=busy_timeout,
    )
    try:
        # views no autonomy made are put back as every changed view is, and said so,
        # so that verify tells of it (a view replaced silently was the evidence lost)
        install_views(store.connection, temp=read_only, repaired=store.record_repair)
        if read_only:
            # mode=ro guards the file; this also refuses writes through ATTACH
            store.connection.execute("PRAGMA query_only = ON")
        else:
            maintain(store)
    except sqlite3.DatabaseError as e:
        store.close()
        raise EventStoreError(f"installing the audit views in {path}: {e}") from e
    except BaseException:
        store.close()
        raise
    return store


def _make_directory(directory: Path) -> None:
    """Make the log's default directory; ``EventStoreError`` saying what stands there
    instead (it was "[Errno 17] File exists" for a link to nowhere)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if directory.is_symlink():
            what = f"a link to {os.readlink(directory)}, which is not a directory"
        elif directory.exists() and not directory.is_dir():
            what = "a file, not a directory"
        else:
            what = e.strerror or str(e)
        raise EventStoreError(f"the log's directory {directory} cannot be made: {what}") from None


def open_postgres(url: str, *, key: bytes | None = None, read_only: bool = False) -> EventStore:
    """The log on the PostgreSQL server at ``url``, with the audit views installed."""
    try:
        import psycopg

        from events.postgres import PostgresEventStore
        from projections.summaries import maintain
        from projections.views_postgres import install_views as install_postgres_views
        from projections.views_postgres import view_statements
    except ImportError as e:
        raise EventStoreError(
            f"a PostgreSQL log needs psycopg: pip install 'autonomy[postgres]' ({e})"
        ) from e
    store = PostgresEventStore(url, key=key, read_only=read_only)
    store.made_with = view_statements()
    try:
        install_postgres_views(store.connection.raw)
        maintain(store)
    except psycopg.Error as e:
        store.close()
        raise EventStoreError(f"installing the audit views in {store.where}: {e}") from e
    except BaseException:
        store.close()
        raise
    return store
