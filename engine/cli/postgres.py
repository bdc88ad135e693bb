r"""CLI command for the administration of a PostgreSQL log: ``grant-writer``.
Registered on the group (``engine.cli.base.cli``) when this module is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from engine.cli.base import cli, db_option


@cli.command("grant-writer")
@click.argument("role")
@db_option
def grant_writer_command(role: str, db: Path | str | None) -> None:
    """Let ROLE (an existing PostgreSQL role) run, work and audit on the log, with no
    UPDATE, DELETE or TRUNCATE on its events and blobs. Run it as the schema's owner,
    and again after an upgrade of autonomy.

    Example:

    \b
        psql -c "CREATE ROLE agent LOGIN PASSWORD '...'"
        autonomy grant-writer agent --db postgresql://owner@db.example/autonomy
    """
    from engine.storage import is_postgres_url, open_store, resolve_db
    from events.errors import EventStoreError

    target = resolve_db(db)
    if not is_postgres_url(target):
        raise EventStoreError(
            f"grant-writer needs a log on PostgreSQL (--db postgresql://...), not {target}"
        )
    from events.postgres import grant_writer
    from projections.views_postgres import VIEWS

    with open_store(target, must_exist=True) as store:
        grant_writer(cast(Any, store).connection.raw, role, readable=VIEWS)
    click.echo(f"{role} may now append to and read the log, and may not change it")
