r"""CLI commands: audit and report. Registered on the group (``engine.cli.base.cli``) when this module
is imported."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from engine.cli.base import cli, db_option, opened_log, try_audit_indexes
from engine.runs.audit import FORMATS
from engine.terminal import data_stream

if TYPE_CHECKING:
    from events.store import EventStore


def _audit_help() -> str:
    from engine.runs.audit import QUERIES

    names = "\n".join(
        f"    {name}{''.join(' ' + p.upper() for p in q.parameters)}\n        {q.description}"
        for name, q in QUERIES.items()
    )
    examples = "\n".join(f"    {q.example}" for q in QUERIES.values())
    return f"""Answer an audit question about one run (RUN_ID) or every run.

QUERY is one of the named queries below, each plain SQL over the documented
views (runs, phase_changes, tasks, model_calls, tool_calls, decisions); or give
--sql with your own SELECT, run on a read-only connection (RUN_ID, if given, is
bound as :run_id).

\b
Queries:
{names}

Example:

\b
{examples}
    autonomy audit --sql "SELECT tool, count(*) FROM tool_calls WHERE ok = 0 GROUP BY tool"
    autonomy audit RUN_ID --sql "SELECT * FROM model_calls WHERE run_id = :run_id"
"""


@cli.command(help=_audit_help())
@click.argument("words", nargs=-1, metavar="[RUN_ID] QUERY [ARGS]...")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="How rows are printed: an aligned table, a JSON array of objects, or CSV.",
)
@click.option("--sql", metavar="SELECT", help="Run this SQL (read-only) instead of a named query.")
@db_option
def audit(words: tuple[str, ...], fmt: str, sql: str | None, db: Path | None) -> None:
    from engine.runs.audit import AuditError, Format, format_result, run_query, run_sql
    from engine.storage import resolve_db
    from events.errors import RunNotFound

    if sql is not None:
        if len(words) > 1:
            raise AuditError("with --sql, give at most a RUN_ID (bound as :run_id)")
        params = {"run_id": words[0]} if words else {}
        result = run_sql(resolve_db(db), sql, params)
    else:
        run_id, name, arguments = _split(words)
        with opened_log(db, read_only=True) as store:
            if run_id is not None and store.last_version(run_id) == 0:
                raise RunNotFound(run_id)
            connection = _sql(store)
            try_audit_indexes(db, connection)
            result = run_query(connection, name, run_id, arguments)
    text = format_result(result, cast(Format, fmt))
    if fmt == "csv" and sys.stdout is not None:
        # not click.echo, which drops what looks like a colour code off a terminal
        data_stream(sys.stdout).write(text + "\n")
    else:
        click.echo(text)


def _sql(store: EventStore) -> Any:
    """The store's SQL connection (an ``sqlite3.Connection``, or
    ``events.postgres.SQLiteStyle``): the views live there."""
    from engine.runs.audit import AuditError

    connection = getattr(store, "connection", None)
    if connection is None:
        raise AuditError("this log has no SQL views to query")
    return connection


def _split(words: tuple[str, ...]) -> tuple[str | None, str, tuple[str, ...]]:
    """``[RUN_ID] QUERY [ARGS]``: the query name is the first word that names one."""
    from engine.runs.audit import QUERIES, AuditError

    if not words:
        raise AuditError(f"name a query: {', '.join(QUERIES)} (or give --sql)")
    if words[0] in QUERIES:
        return None, words[0], words[1:]
    if len(words) == 1:
        # one word that is no query: a query name mistyped, not a run id
        raise AuditError(
            f"unknown audit query {words[0]!r}; the queries are {', '.join(QUERIES)} (or --sql)"
        )
    return words[0], words[1], words[2:]


@cli.command()
@click.argument("run_id")
@click.option(
    "--html",
    "html_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Where the HTML page is written.",
)
@db_option
def report(run_id: str, html_file: Path, db: Path | None) -> None:
    """Write one self-contained HTML page about a run, for a person to read.

    The service's run page (`autonomy serve`), static: final status, phase
    timeline, the trace (each decision with its model calls, prompts and answers
    and tool calls, folded), tasks, decisions (fallbacks marked), tool calls
    (failures marked in red with their error) and tokens per model and per role.
    Its stylesheet is inlined; no scripts and no external assets: the file can be
    mailed or attached as is.

    Example:

    \b
        autonomy report RUN_ID --html run.html
    """
    from engine.web.report import write_report
    from events.errors import RunNotFound

    with opened_log(db, read_only=True) as store:
        if store.last_version(run_id) == 0:
            raise RunNotFound(run_id)
        write_report(store, run_id, html_file)
    click.echo(f"wrote {html_file}")
