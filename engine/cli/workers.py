r"""CLI commands for workers on a PostgreSQL log: ``submit`` and ``worker``
(``engine.runs.workers``). Registered on the group (``engine.cli.base.cli``) when this module is imported."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
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
    from engine.agent.runner import RunInterrupted
    from engine.cli.base import refuse_a_config_a_model_wrote
    from engine.cli.running import interrupts
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
    stop, interrupt = threading.Event(), threading.Event()

    def one(main: bool = False) -> None:
        try:
            with contextlib.ExitStack() as opened:
                store = _reached(lambda: opened.enter_context(opened_log(db)), stop)
                work = Worker(
                    store,
                    workdir.resolve(),
                    settings_for(store),
                    progress=click.echo,
                    interrupt=interrupt,
                )
                work.run(once=once, stop=stop)
        except BaseException as e:
            stop.set()  # one worker's end is all of theirs: no run is taken after it
            if main:
                raise
            errors.append(e)  # reported by the main thread

    threads = [threading.Thread(target=one, daemon=True) for _ in range(concurrency - 1)]
    for thread in threads:
        thread.start()
    with interrupts(db, None):  # Ctrl-C, SIGTERM: recorded, said once, exit 128 + signal
        try:
            one(main=True)  # a signal reaches this thread only
            _wait(threads)
        except (KeyboardInterrupt, RunInterrupted):
            interrupt.set()  # their runs stop too, at their next step, not left to go on
            _wait(threads, STOPPING_WAIT)
            for other in errors:
                if isinstance(other, RunInterrupted):
                    click.echo(f"{other}; the log says so.", err=True)
            raise
        except BaseException:
            _wait(threads)  # their runs go on to their end; no other is taken
            raise
        if errors:
            raise errors[0]


def _reached(open_log: Callable[[], EventStore], stop: threading.Event) -> EventStore:
    """The log ``open_log`` opens, waiting for it as for a log lost mid-run: a worker
    started before its database server (a machine booting, a service started first)
    exited at once with the driver's error."""
    from engine.runs.workers import Worker, log_lost
    from events.errors import StoreUnavailable

    waited = 0.0
    while True:
        try:
            store = open_log()
        except StoreUnavailable as e:
            waited = log_lost(e, waited, Worker.poll, click.echo)
            if stop.wait(waited):
                raise
            continue
        if waited:
            click.echo("worker: the log can be reached again")
        return store


def _wait(threads: list[threading.Thread], seconds: float | None = None) -> None:
    """Until ``threads`` end, or ``seconds`` have passed."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for thread in threads:
        while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            thread.join(0.5)  # a bare join would not let a Ctrl-C through


STOPPING_WAIT = 30.0
"""How long a worker stopping waits for its other threads' runs to reach their next
step and record their stop; a run still in a model call then stays running in the
log and is resumed by the next worker, as after a crash."""
