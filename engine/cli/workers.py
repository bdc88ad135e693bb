r"""CLI commands for workers on a PostgreSQL log: ``submit`` and ``worker``
(``engine.runs.workers``). Registered on the group (``engine.cli.base.cli``) when this module is imported."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli.base import SettingsFlags, cli, db_option, opened_log, settings_options

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.runs.workers import SettingsFor
    from events.store import EventStore


@cli.command("submit")
@click.argument("goal")
@click.option(
    "--workspace-template",
    "template",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    metavar="DIR",
    help="Each run starts in a fresh copy of this directory.",
)
@click.option("--run-id", "run_id", metavar="ID", help="Name the run (default: time-based).")
@db_option
def submit_command(goal: str, template: Path, run_id: str | None, db: Path | str | None) -> None:
    """Queue a run of GOAL for the workers of a PostgreSQL log; prints its run id.

    Example:

    \b
        autonomy submit "Write calc.py with add(a, b) and tests" --workspace-template ./empty --db "$URL"
    """
    from engine.runs.workers import submit

    with opened_log(db) as store:
        click.echo(submit(store, goal, template, run_id))


@cli.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many runs this worker runs at once.",
)
@click.option(
    "--once", is_flag=True, help="Stop when every queued run is done, instead of waiting for more."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("autonomy-runs"),
    show_default=True,
    help="Where the workspaces of the runs it starts are made (one per run id).",
)
@db_option
@settings_options
def worker_command(
    concurrency: int, once: bool, workdir: Path, db: Path | str | None, flags: SettingsFlags
) -> None:
    """Take queued runs from a PostgreSQL log and run them; a run whose worker died is
    resumed from the log. The model flags are those of `autonomy run`.

    Example:

    \b
        autonomy worker --db "$URL" --concurrency 2 --model-url http://gpu-1:11434
    """
    from engine.cli.base import refuse_a_config_a_model_wrote
    from engine.config import recorded_settings
    from engine.runs.workers import Worker

    def settings_for(store: EventStore) -> SettingsFor:
        def settings(workspace: Path, recorded: Mapping[str, Any] | None) -> Settings:
            if recorded is not None:
                return flags.load_over(recorded_settings(recorded))
            if flags.config_file is None:  # the template's own, as autonomy run checks it
                refuse_a_config_a_model_wrote(store, workspace)
            return flags.load(workspace)

        return settings

    workdir.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            with opened_log(db) as store:
                work = Worker(store, workdir.resolve(), settings_for(store), progress=click.echo)
                work.run(once=once)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrency - 1)]
    for thread in threads:
        thread.start()
    one()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
