"""Named audit queries over the documented SQL views, and read-only ad-hoc SQL.

Every named query is plain SQL over the views of ``projections.views`` (``runs``,
``phase_changes``, ``tasks``, ``model_calls``, ``tool_calls``, ``decisions``), so
what ``autonomy audit`` prints can be reproduced with ``sqlite3`` alone. A query
is restricted to one run when a run id is given, to every run otherwise.

    QUERIES          name -> AuditQuery(sql, description, parameters, example)
    run_query        one named query on an open connection -> AuditResult
    run_sql          any SELECT on a read-only connection to a database file
    ensure_indexes   the expression indexes that make the views' joins fast
    format_result    an AuditResult as a table, JSON or CSV

Opening a log installs the views but not the indexes: each expression index is
computed on every append, and the three together made appends about 1.65x slower
(61 -> 101 us per single append, 10 -> 17 us batched; ``ensure_indexes`` before
the appends of 5,000 benchmark events). So the first ``autonomy audit`` of a log
builds them, and a person querying the views with ``sqlite3`` alone gets the same
answers, only slower on a large log.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from engine.storage import is_postgres_url, open_store
from engine.tables import table
from events.errors import AutonomyError, EventStoreError, StoreUnavailable
from events.sqlite import AUDIT_INDEXES, REPLACED_AUDIT_INDEXES

Format = Literal["table", "json", "csv"]
FORMATS: tuple[Format, ...] = ("table", "json", "csv")


class AuditError(AutonomyError):
    """An audit query could not be run: an unknown name, a missing argument, or SQL
    that SQLite refused (a write on the read-only connection, a syntax error)."""


@dataclass(frozen=True)
class AuditQuery:
    """A named query. ``sql`` has a ``{run}`` slot, filled with a run filter on the
    column ``run_id`` (or ``TRUE`` for every run), and binds ``parameters`` by name.
    ``postgres`` is its text for a log in PostgreSQL where SQLite's does not run
    there (JSON functions, boolean sums); empty when the same text runs on both."""

    sql: str
    description: str
    parameters: tuple[str, ...] = ()
    example: str = ""
    postgres: str = ""


@dataclass(frozen=True)
class AuditResult:
    """Column names and rows, in the order SQLite returned them."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    truncated: bool = False
    """More rows matched than the caller's ``max_rows``: these are the first."""
    error: str = ""
    """Why the query gave no rows, when it failed (``audited``)."""

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as objects, keyed by ``names``."""
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in self.rows]

    @property
    def names(self) -> tuple[str, ...]:
        """The columns, each named once: a name that repeats (``SELECT 1 AS a, 2 AS
        a``, a join's two ``run_id``) is ``a``, then ``a:2``, ``a:3``..., skipping a
        name another column has. Keyed by the bare names, the rows as objects kept
        only the last value of each (``{"a": 2}``)."""
        taken = set(self.columns)
        seen: set[str] = set()
        names: list[str] = []
        for column in self.columns:
            name, n = column, 1
            while name in seen or (n > 1 and name in taken):
                n += 1
                name = f"{column}:{n}"
            seen.add(name)
            names.append(name)
        return tuple(names)


# The sandbox's refusals (engine/tools/sandbox.py), recognised by their wording.
_REFUSED = """(
     error LIKE '%outside the workspace%'
  OR error LIKE '%out of the workspace%'
  OR error LIKE '%belongs to the tooling%'
  OR error LIKE 'empty path: give a path relative to the workspace%'
  OR error LIKE '%contains a NUL byte%'
  OR error LIKE '%is too long or too deep%')"""

QUERIES: dict[str, AuditQuery] = {
    "tool-failures": AuditQuery(
        sql="""
SELECT run_id, requested_version AS version, call_id, tool, arguments,
  CASE WHEN executed_version IS NULL THEN 'never executed' ELSE 'failed' END AS outcome,
  error
FROM tool_calls
WHERE {run} AND (ok = 0 OR executed_version IS NULL)
ORDER BY run_id, requested_version""",
        description="Tool calls that failed (with the error), or were requested but "
        "never reported (a crash in between).",
        example="autonomy audit RUN_ID tool-failures",
    ),
    "model-failures": AuditQuery(
        sql="""
SELECT run_id, version, call_id, role, model, endpoint, kind, attempt, detail FROM (
  SELECT f.run_id, f.version, json_extract(f.data, '$.call_id') AS call_id, c.role, c.model,
    coalesce(nullif(json_extract(f.data, '$.endpoint'), ''), c.endpoint) AS endpoint,
    json_extract(f.data, '$.kind') AS kind,
    json_extract(f.data, '$.attempt') AS attempt,
    json_extract(f.data, '$.detail') AS detail
  FROM events f
  LEFT JOIN model_calls c
    ON c.run_id = f.run_id AND c.call_id = json_extract(f.data, '$.call_id')
  WHERE f.type = 'model.failed'
)
WHERE {run}
ORDER BY run_id, version""",
        description="Every failed attempt of a model call: role, model, the endpoint "
        "that failed, the kind of failure (unavailable, timeout, http, invalid, ...), "
        "the attempt's number and what went wrong.",
        example="autonomy audit RUN_ID model-failures",
        postgres="""
SELECT run_id, version, call_id, role, model, endpoint, kind, attempt, detail FROM (
  SELECT f.run_id, f.version, f.data->>'call_id' AS call_id, c.role, c.model,
    coalesce(nullif(f.data->>'endpoint', ''), c.endpoint) AS endpoint,
    f.data->>'kind' AS kind,
    autonomy_integer(f.data->'attempt') AS attempt,
    f.data->>'detail' AS detail
  FROM events f
  LEFT JOIN model_calls c ON c.run_id = f.run_id AND c.call_id = f.data->>'call_id'
  WHERE f.type = 'model.failed'
) failures
WHERE {run}
ORDER BY run_id, version""",
    ),
    "decisions": AuditQuery(
        sql="""
SELECT run_id, version, action, parameters, decided_by, fallback_used, fallback_reason,
  reasoning
FROM decisions
WHERE {run}
ORDER BY run_id, version""",
        description="Every coordinator decision: action, who decided, whether a "
        "fallback was used and why.",
        example="autonomy audit decisions --format json",
    ),
    "model-usage": AuditQuery(
        sql="""
SELECT model, role, count(*) AS calls,
  sum(status = 'failed') AS failed_calls,
  sum(failures) AS failed_attempts,
  sum(status = 'interrupted') AS interrupted_calls,
  -- a count of at most 15 digits, as PostgreSQL's views read one: a log someone
  -- wrote with 2^63 - 1 tokens in two calls overflowed the sum
  coalesce(sum(CASE WHEN typeof(prompt_tokens) = 'integer'
                     AND prompt_tokens BETWEEN -999999999999999 AND 999999999999999
                    THEN prompt_tokens END), 0) AS prompt_tokens,
  coalesce(sum(CASE WHEN typeof(completion_tokens) = 'integer'
                     AND completion_tokens BETWEEN -999999999999999 AND 999999999999999
                    THEN completion_tokens END), 0) AS completion_tokens,
  round(coalesce(sum(duration_ms), 0) / 1000.0, 3) AS seconds
FROM model_calls
WHERE {run}
GROUP BY model, role
ORDER BY model, role""",
        description="Per model and role: calls, failed calls and attempts, calls "
        "interrupted by a stop, prompt and completion tokens, time spent answering.",
        example="autonomy audit RUN_ID model-usage",
        postgres="""
SELECT model, role, count(*) AS calls,
  sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)::bigint AS failed_calls,
  sum(failures)::bigint AS failed_attempts,
  sum(CASE WHEN status = 'interrupted' THEN 1 ELSE 0 END)::bigint AS interrupted_calls,
  coalesce(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
  coalesce(sum(completion_tokens), 0)::bigint AS completion_tokens,
  round((coalesce(sum(duration_ms), 0) / 1000.0)::numeric, 3)::float8 AS seconds
FROM model_calls
WHERE {run}
GROUP BY model, role
ORDER BY model, role""",
    ),
    "phase-timeline": AuditQuery(
        sql="""
SELECT run_id, version, recorded_at, from_phase, to_phase, trigger, decided_by, reason
FROM phase_changes
WHERE {run}
ORDER BY run_id, version""",
        description="Every phase change in order, with its trigger, decider and reason.",
        example="autonomy audit RUN_ID phase-timeline",
    ),
    "tasks": AuditQuery(
        sql="""
SELECT run_id, task_id, title, target_file, priority, status, attempts, last_error
FROM tasks
WHERE {run}
ORDER BY run_id, added_version""",
        description="Every task in effect at the end of the run (after any rewind), with "
        "its latest status, attempts and last error.",
        example="autonomy audit RUN_ID tasks",
    ),
    "file-history": AuditQuery(
        sql="""
SELECT t.run_id, t.executed_version AS version, t.call_id, t.tool,
  CASE WHEN json_extract(f.value, '$.after') IS NULL THEN 'delete'
       WHEN json_extract(f.value, '$.before') IS NULL THEN 'create'
       ELSE 'modify' END AS change,
  json_extract(f.value, '$.before') AS before_hash,
  json_extract(f.value, '$.after') AS after_hash,
  json_extract(f.value, '$.size') AS size
FROM tool_calls t, json_each(t.files_changed) f
WHERE {run} AND json_extract(f.value, '$.path') = :path
ORDER BY t.run_id, t.executed_version""",
        description="Every write or delete of PATH (relative to the workspace): version, "
        "tool, content hashes before and after.",
        parameters=("path",),
        example="autonomy audit RUN_ID file-history calc.py",
        postgres="""
SELECT t.run_id, t.executed_version AS version, t.call_id, t.tool,
  CASE WHEN f.value->>'after' IS NULL THEN 'delete'
       WHEN f.value->>'before' IS NULL THEN 'create'
       ELSE 'modify' END AS change,
  f.value->>'before' AS before_hash,
  f.value->>'after' AS after_hash,
  (f.value->>'size')::bigint AS size
FROM tool_calls t, json_array_elements(t.files_changed::json) f
WHERE {run} AND f.value->>'path' = :path
ORDER BY t.run_id, t.executed_version""",
    ),
    "refused-paths": AuditQuery(
        sql=f"""
SELECT run_id, requested_version AS version, call_id, tool,
  coalesce(json_extract(arguments, '$.path'), arguments) AS path, error
FROM tool_calls
WHERE {{run}} AND ok = 0 AND {_REFUSED}
ORDER BY run_id, requested_version""",
        description="Tool calls the sandbox refused: paths outside the workspace, "
        "inside .autonomy/ or .git/, or too long or too deep.",
        example="autonomy audit refused-paths --format csv",
        postgres=f"""
SELECT run_id, requested_version AS version, call_id, tool,
  coalesce(arguments::json->>'path', arguments) AS path, error
FROM tool_calls
WHERE {{run}} AND ok = 0 AND {_REFUSED}
ORDER BY run_id, requested_version""",
    ),
}

INDEXES = AUDIT_INDEXES
"""The SQLite log's audit indexes (``events.sqlite.AUDIT_INDEXES``, where verify
knows them)."""


# The same for a log in PostgreSQL, on the expressions its views compare (read
# through ``autonomy_clean``: an index on ``data->>'call_id'`` itself refused the
# append of any event holding a NUL character).
POSTGRES_INDEXES = {
    "events_call_id": "events(run_id, type, (autonomy_clean(data)->>'call_id'))",
    "events_task_version": "events(run_id, type, (autonomy_clean(data)->>'task_id'), version)",
    "events_type_run": "events(type, run_id, version)",
}


REPLACED_INDEXES = tuple(REPLACED_AUDIT_INDEXES)
"""Audit indexes an earlier autonomy made that others now do better: dropped (each
costs every append)."""


def dialect(connection: Any) -> str:
    """``sqlite`` or ``postgres`` (``events.postgres.SQLiteStyle``)."""
    return str(getattr(connection, "dialect", "sqlite"))


def ensure_indexes(connection: Any) -> None:
    """Create the audit indexes that are missing (a no-op once they exist)."""
    if dialect(connection) == "postgres":
        from projections.views_postgres import CLEAN_FUNCTION

        _execute(connection, CLEAN_FUNCTION, {}, "creating the audit indexes")
        made = _execute(
            connection,
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
            {},
            "creating the audit indexes",
        )
        definitions = dict(made.rows)
        for name in REPLACED_INDEXES:
            if name in definitions:
                _execute(connection, f"DROP INDEX {name}", {}, "replacing an audit index")
        for name, target in POSTGRES_INDEXES.items():
            old = definitions.get(name, "")
            if "data" in target and old and "autonomy_clean" not in old:
                # made by an older autonomy, on the bare expression: made again
                _execute(connection, f"DROP INDEX {name}", {}, "replacing an audit index")
            _execute(
                connection,
                f"CREATE INDEX IF NOT EXISTS {name} ON {target}",
                {},
                "creating the audit indexes",
            )
        return
    existing = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    missing = [ddl for name, ddl in INDEXES.items() if name not in existing]
    replaced = [name for name in REPLACED_INDEXES if name in existing]
    if not missing and not replaced:
        return
    try:
        connection.execute("BEGIN IMMEDIATE")
        for name in replaced:
            connection.execute(f"DROP INDEX IF EXISTS {name}")
        for ddl in missing:
            connection.execute(ddl)
        connection.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise AuditError(f"creating the audit indexes: {e}") from e


def query_sql(name: str, run_id: str | None, dialect: str = "sqlite") -> str:
    """The SQL of a named query, filtered to ``run_id`` (bound as ``:run_id``) if given."""
    query = _query(name)
    sql = query.postgres if dialect == "postgres" and query.postgres else query.sql
    if dialect == "postgres":
        from projections.views_postgres import nul_safe

        sql = nul_safe(sql)
    return sql.format(run="run_id = :run_id" if run_id is not None else "TRUE").strip()


@dataclass(frozen=True)
class Limits:
    """How much one query may take: ``seconds`` of the database's time (then it is
    stopped, an ``AuditError``), and the first ``max_rows`` rows (``truncated``
    says there were more). None: no limit."""

    seconds: float | None = None
    max_rows: int | None = None
    max_bytes: int | None = None
    """The most text and bytes the rows may hold together (``truncated`` past it);
    on SQLite no single value may be longer either."""


NO_LIMITS = Limits()

SQL_COLUMNS = 64
"""The most columns a query's row may have under a byte limit: three times the widest
of the log's tables and views (``model_calls``, 20), so a join of two still fits.
SQLite allows 2,000 and bounds each value (``SQLITE_LIMIT_LENGTH``), not a row, and
a row is held whole before its bytes can be counted: 40 values of 16 MB took a
service with a 16 MiB answer cap to 1.25 GB."""
ROW_SHARE = 4
"""A row may hold at most this many times the bytes of the whole answer: values are
bounded to ``ROW_SHARE * max_bytes // SQL_COLUMNS`` (1 MiB for a 16 MiB cap), so a
row of ``SQL_COLUMNS`` of them is held (by SQLite, then Python) before it is
refused, and no more."""
SMALLEST_VALUE = 64 * 1024
"""...but a value may be this long whatever the cap (a small cap would refuse an
ordinary event), unless it is longer than the whole answer may be."""


def value_limit(max_bytes: int) -> int:
    """The longest value a query may make under an answer cap of ``max_bytes``."""
    return min(max(max_bytes, 1_000), max(ROW_SHARE * max_bytes // SQL_COLUMNS, SMALLEST_VALUE))


def run_query(
    connection: Any,
    name: str,
    run_id: str | None = None,
    arguments: tuple[str, ...] = (),
    max_rows: int | None = None,
    seconds: float | None = None,
) -> AuditResult:
    """Run the named query; ``arguments`` fill its ``parameters`` in order. At most
    ``max_rows`` rows are read (``truncated`` says there were more), for at most
    ``seconds`` (a service's request: a query that ran on, as the audit views once
    did on a log someone wrote, held its thread for good; on PostgreSQL, its
    connection too)."""
    query = _query(name)
    if len(arguments) != len(query.parameters):
        wanted = " ".join(p.upper() for p in query.parameters) or "no arguments"
        raise AuditError(
            f"{name} takes {wanted}, got {len(arguments)} argument(s); e.g. {query.example}"
        )
    params: dict[str, Any] = dict(zip(query.parameters, arguments, strict=True))
    if run_id is not None:
        params["run_id"] = run_id
    sql = query_sql(name, run_id, dialect(connection))
    limits = Limits(max_rows=max_rows, seconds=seconds)
    if seconds is None:
        return _execute(connection, sql, params, f"audit query {name}", limits)
    if not isinstance(connection, sqlite3.Connection):  # PostgreSQL's (SQLiteStyle)
        with connection.limited(seconds):
            return _execute(connection, sql, params, f"audit query {name}", limits)
    deadline = time.monotonic() + seconds
    connection.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
    try:
        return _execute(connection, sql, params, f"audit query {name}", limits)
    finally:
        connection.set_progress_handler(None, 10_000)


def audited(connection: Any, name: str, run_id: str, max_rows: int | None = None) -> AuditResult:
    """``run_query`` of a run's table on a page that shows several: one that fails (a
    value someone wrote that a view cannot sum) is an empty result saying why, and the
    others still show."""
    try:
        return run_query(connection, name, run_id, (), max_rows)
    except AuditError as e:
        return AuditResult(columns=(), rows=[], error=str(e))


def run_sql(
    db: Path | str,
    sql: str,
    params: dict[str, Any] | None = None,
    limits: Limits = NO_LIMITS,
) -> AuditResult:
    """Run ``sql`` on a read-only connection to the log file ``db``, within ``limits``.

    The log is opened as every reading command opens it (``open_store(read_only=
    True)``: ``mode=ro``, the views, then ``PRAGMA query_only``), so any write
    (INSERT, CREATE, ATTACH-and-write...) is refused by SQLite itself and reported
    as an ``AuditError``, and a log on read-only storage can be queried. On a
    ``postgresql://`` URL, the query is one prepared statement in a READ ONLY
    transaction that has already run a query (so it cannot be made writable
    again), rolled back afterwards."""
    if is_postgres_url(db):
        return _run_sql_postgres(str(db), sql, params or {}, limits)
    path = Path(db)
    if not path.is_file():
        raise AuditError(f"no database file at {path}")
    try:
        store = open_store(path, read_only=True)
    except AutonomyError as e:
        raise AuditError(f"opening {path} read-only: {e}") from e
    try:
        connection = store.connection  # type: ignore[attr-defined]  # an SQLite log here
        # query_only covers the log's own file: ATTACH would open (and create) others
        connection.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        if limits.max_bytes is not None:  # a row no larger than a few answers
            connection.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, value_limit(limits.max_bytes))
            connection.setlimit(sqlite3.SQLITE_LIMIT_COLUMN, SQL_COLUMNS)
        deadline = time.monotonic() + limits.seconds if limits.seconds is not None else None
        # called every 10,000 virtual machine steps; a true answer stops the query. Also
        # without a deadline: Python runs its signal handlers only between its own steps,
        # so a Ctrl-C waited for a long query to end (an endless one for ever); in this
        # handler, the KeyboardInterrupt is raised and the query stops
        connection.set_progress_handler(
            lambda: deadline is not None and time.monotonic() > deadline, 10_000
        )
        connection.set_authorizer(_reads_only)
        try:
            return _execute(connection, sql, params or {}, "the SQL query (read-only)", limits)
        except AuditError as e:
            text = str(e)
            if "not authorized" in text:
                raise AuditError(
                    f"{e}: a query reads the log; of the pragmas, it may run only "
                    f"{', '.join(sorted(READ_PRAGMAS))}"
                ) from e
            if limits.max_bytes is not None and any(s in text for s in OVER_LIMITS):
                raise AuditError(
                    f"{e}: within this service's limits a value is at most "
                    f"{value_limit(limits.max_bytes):,} bytes long and a row at most "
                    f"{SQL_COLUMNS} columns wide"
                ) from e
            raise
        finally:
            connection.set_authorizer(None)
    finally:
        store.close()


OVER_LIMITS = ("too big", "too many columns", "BY clause")
"""SQLite's words for a query over the length and column limits (``too many terms
in ORDER BY clause``, and GROUP BY)."""

READ_PRAGMAS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info",
        "index_xinfo", "foreign_key_list", "database_list", "collation_list",
    }
)  # fmt: skip
"""The pragmas a query may run: they describe the log's tables and change nothing.
Any other is refused, whatever ``query_only`` lets through: some set what the whole
process does (``hard_heap_limit``, which made every later connection of a service a
``MemoryError``; ``temp_store_directory``)."""

REFUSED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension"})
"""Functions a query may not call: ``fts3_tokenizer`` answers with a pointer into
the process's memory and, given one, registers code at it."""


def _reads_only(action: int, first: str | None, second: str | None, *_: object) -> int:
    """SQLite's authorizer for a query: pragmas other than ``READ_PRAGMAS`` and the
    functions of ``REFUSED_FUNCTIONS`` are refused (an error naming what was not
    authorized); all else is left to ``query_only`` and the connection's limits."""
    if action == sqlite3.SQLITE_PRAGMA and (first or "").lower() not in READ_PRAGMAS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (second or "").lower() in REFUSED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _run_sql_postgres(url: str, sql: str, params: dict[str, Any], limits: Limits) -> AuditResult:
    import psycopg

    from events.postgres import SQLiteStyle, mapped_error, redacted

    try:
        raw = psycopg.connect(url)
    except psycopg.Error as e:
        error = mapped_error(e, f"opening {redacted(url)} read-only")
        raise (error if isinstance(error, StoreUnavailable) else AuditError(str(error))) from e
    try:
        raw.read_only = True
        raw.execute("SELECT 1")  # a query first: the transaction stays READ ONLY
        if limits.seconds is not None:
            milliseconds = str(max(1, math.ceil(limits.seconds * 1000)))
            raw.execute("SELECT set_config('statement_timeout', %s, true)", (milliseconds,))
        return _execute(SQLiteStyle(raw), sql, params, "the SQL query (read-only)", limits)
    finally:
        raw.rollback()
        raw.close()


def format_result(result: AuditResult, fmt: Format) -> str:
    """The rows as a plain-text table, a JSON array of objects, or CSV with a header."""
    if fmt == "json":
        rows = [{k: json_value(v) for k, v in row.items()} for row in result.as_dicts()]
        return json.dumps(rows, indent=2, ensure_ascii=False)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        # a value holding a carriage return is quoted too (the writer quotes only for
        # its own line ending), or no CSV reader reads the row back
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(result.columns)
        for row in result.rows:
            carriage = any(isinstance(value, str) and "\r" in value for value in row)
            (quoted if carriage else writer).writerow(row)
        return out.getvalue().removesuffix("\n")
    if fmt == "table":
        if not result.rows:
            return "(no rows)"
        return table(result.rows, result.columns)
    raise AuditError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def json_value(value: Any) -> Any:
    """A value of a row as JSON has it: bytes as hex, a float JSON has no number for
    (an infinity, NaN) as its name, what PostgreSQL returns beyond JSON's types as
    a number (numerics: sums of integers) or as text (dates)."""
    if isinstance(value, str | int | bool) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Decimal) and value.is_finite():
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def describe_queries() -> str:
    """One paragraph per named query, for help texts."""
    lines = []
    for name, query in QUERIES.items():
        args = "".join(f" {p.upper()}" for p in query.parameters)
        lines.append(f"{name}{args}: {query.description}")
    return "\n".join(lines)


def _query(name: str) -> AuditQuery:
    try:
        return QUERIES[name]
    except KeyError:
        raise AuditError(
            f"unknown audit query {name!r}; the queries are {', '.join(QUERIES)} (or --sql)"
        ) from None


def _execute(
    connection: Any, sql: str, params: dict[str, Any], what: str, limits: Limits = NO_LIMITS
) -> AuditResult:
    truncated = False
    rows: list[Any] = []
    try:
        cursor = connection.execute(sql, params)
        if not cursor.description:
            pass
        elif limits.max_bytes is not None:
            rows, truncated = _fetch_within(cursor, limits.max_rows, limits.max_bytes)
        elif limits.max_rows is None:
            rows = cursor.fetchall()
        else:
            rows = cursor.fetchmany(limits.max_rows + 1)
    except (sqlite3.Error, EventStoreError) as e:
        if _not_utf8(e) and connection.text_factory is str:
            # json_extract of a lone surrogate escape ("\udc00", in a log someone
            # wrote) is text that is not UTF-8: read as it is, each bad byte U+FFFD
            connection.text_factory = _replacing
            try:
                return _execute(connection, sql, params, what, limits)
            finally:
                connection.text_factory = str
        if _timed_out(e) and limits.seconds is not None:  # (a cancel, so "unavailable")
            raise AuditError(
                f"{what} was stopped after {limits.seconds:g} s, this service's limit"
            ) from e
        if isinstance(e, StoreUnavailable):
            raise  # not the query's fault: the same query may succeed later
        if isinstance(e, sqlite3.ProgrammingError) and "binding" in str(e).lower():
            # sqlite3's words ("you supplied a dictionary (which has only names)")
            given = ", ".join(f":{name}" for name in params) or "none"
            raise AuditError(
                f"{what} failed: {e} A parameter gets its value by name; those with one: "
                f"{given} (:run_id is the RUN_ID given)"
            ) from e
        raise AuditError(f"{what} failed: {e}") from e
    columns = tuple(d[0] for d in cursor.description or ())
    truncated = truncated or (limits.max_rows is not None and len(rows) > limits.max_rows)
    return AuditResult(columns=columns, rows=rows[: limits.max_rows], truncated=truncated)


def _fetch_within(cursor: Any, max_rows: int | None, max_bytes: int) -> tuple[list[Any], bool]:
    """Rows until ``max_rows`` (and one more, to know there are more) or until their
    text and bytes pass ``max_bytes``: whether rows were left unread."""
    rows: list[Any] = []
    size = 0
    while max_rows is None or len(rows) <= max_rows:
        # one row at a time: a batch of 256 rows of a 16 MB value each is 4 GB held
        # before its bytes are counted
        row = cursor.fetchone()
        if row is None:
            return rows, False
        size += sum(len(v) if isinstance(v, str | bytes) else 8 for v in row)
        if size > max_bytes:
            return rows, True
        rows.append(row)
    return rows, False


def _not_utf8(error: Exception) -> bool:
    """SQLite's text that Python could not decode (``sqlite3.OperationalError``)."""
    return isinstance(error, sqlite3.OperationalError) and "Could not decode to UTF-8" in str(error)


def _replacing(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _timed_out(error: Exception) -> bool:
    """SQLite's answer to a progress handler that said stop, PostgreSQL's to a
    ``statement_timeout``."""
    text = str(error)
    return text.endswith("interrupted") or "statement timeout" in text
