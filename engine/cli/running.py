"""Commands that run the agent: ``run``, ``resume`` and ``demo``."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from engine.cli.base import (
    SettingsFlags,
    cli,
    db_option,
    opened_log,
    refuse_a_config_a_model_wrote,
    settings_options,
)
from engine.errors import ConfigError

if TYPE_CHECKING:
    from projections import RunState


@cli.command()
@click.argument("goal", required=False)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The directory the agent works in (created if missing).",
)
@click.option("--run-id", "run_id", metavar="ID", help="Name the run (default: time-based).")
@click.option(
    "--checkpoint-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    envvar="AUTONOMY_CHECKPOINT_FILE",
    show_envvar=True,
    help="Append the run's checkpoint to FILE when it stops (see `autonomy checkpoint`).",
)
@db_option
@settings_options
def run(
    goal: str | None,
    workspace: Path,
    run_id: str | None,
    checkpoint_file: Path | None,
    db: Path | None,
    flags: SettingsFlags,
) -> None:
    """Run the agent on GOAL until it completes, fails or waits for input.

    GOAL is text or the path of a file holding it; without GOAL, MASTER_PLAN.md
    in the workspace is the goal. First every role's model server is asked whether
    it serves the role's model (--no-preflight skips that). Progress (step, phase,
    task, tokens) and every failed model call are printed as the run goes; on a
    terminal, with a live line for the model call in flight and a bar of steps.
    Exit status: 0 when the run
    completed (every task done) or waits for an answer, 2 when it ended with some
    tasks skipped (status partial), 1 otherwise.

    Example:

    \b
        autonomy run "Write calc.py with add(a, b) and its tests" --workspace ./calc
        autonomy run --workspace ./project --model-url http://localhost:11434 --model qwen2.5-coder:32b
    """
    from engine.agent.progress import run_display
    from engine.agent.runner import check_log_place, check_workspace, start_run
    from engine.storage import resolve_db
    from projections import project

    # what would stop the run is found before its log is made: no log is left in a
    # home directory, and no run is done for a checkpoint file it then cannot write
    check_workspace(workspace)
    check_log_place(resolve_db(db, workspace), workspace)
    if str(db) == ":memory:":
        raise ConfigError(
            "--db :memory: keeps the run's log only until the command ends; give a file"
        )
    if checkpoint_file is not None:
        from engine.cli.integrity import check_checkpoint_file

        check_checkpoint_file(checkpoint_file)
    text = read_goal(goal, workspace)
    settings = flags.load(workspace)
    with opened_log(db, workspace, must_exist=False) as store, interrupts(db, workspace):
        if flags.config_file is None:
            refuse_a_config_a_model_wrote(store, workspace)
        with run_display(settings.limits.max_steps, plain=click.echo) as show:
            log = start_run(
                store,
                goal=text,
                workspace=workspace,
                settings=settings,
                run_id=run_id,
                progress=show,
            )
        if checkpoint_file is not None:
            from engine.cli.integrity import append_checkpoint

            append_checkpoint(store, log.run_id, checkpoint_file)
        _finish(project(store, log.run_id))


@cli.command()
@click.argument("run_id")
@db_option
@settings_options
def resume(run_id: str, db: Path | None, flags: SettingsFlags) -> None:
    """Continue a run that crashed or was interrupted, from its log alone.

    The settings are the ones the run recorded when it started, under any
    --config, environment variables and flags given now; but how commands are
    confined (sandbox, network, limits) comes only from those given now, never
    from the log. A tool call that was
    requested but never reported is settled first by comparing the workspace
    with the hashes in the log.

    Example:

    \b
        autonomy resume run-20261124-101500-ab12 --db ./calc/.autonomy/events.db
    """
    from engine.agent.progress import run_display
    from engine.agent.runner import resume_run
    from engine.config import recorded_settings
    from engine.runs.workspace import finish_cut_rewind
    from projections import project

    with opened_log(db) as store:
        pipeline = project(store, run_id).pipeline
        settings = flags.load_over(recorded_settings(pipeline.config))
        steps = settings.limits.max_steps
        with (
            interrupts(db, None),
            run_display(steps, steps=pipeline.steps, plain=click.echo) as show,
        ):
            resume_run(store, run_id, settings=settings, progress=show, prepare=finish_cut_rewind)
        _finish(project(store, run_id))


@contextmanager
def interrupts(db: Path | str | None, workspace: Path | None) -> Iterator[None]:
    """Ctrl-C: the run has recorded why it stopped; say how to continue it, exit 130
    (the shell's code for SIGINT) — never a traceback. SIGTERM (a service manager,
    ``docker stop``, ``kill``) and SIGHUP (the terminal closed) stop it the same way,
    exit 128 + the signal's number: they ended it with nothing recorded, a run the
    log called running for ever. A log lost in the middle of the run: say so, and
    how to continue it once it is back; exit 1."""
    from engine import stops
    from engine.agent.runner import STOPPED_BY_SIGNAL, RunCutOff, RunInterrupted, Stop

    received = [signal.SIGINT]
    stopping: list[float] = []
    ENDED.clear()  # this command's end only

    def stop(signum: int, frame: object) -> None:
        # one stop at a time: a second signal (a Ctrl-C as a service manager's SIGTERM
        # lands) raised in the middle of recording the first, or of the threading code
        # it had reached, a traceback and no stop recorded. A signal some seconds
        # later stops again (the first may have landed where it was swallowed), unless
        # the run has ended: raised while its end was said, it made the exit status 130
        # for a run the log said SIGTERM stopped (a loaded machine: seconds between)
        now = time.monotonic()
        if ENDED or (stopping and now - stopping[-1] < STOP_GRACE):
            return
        stopping.append(now)
        received.append(signal.Signals(signum))
        stop = Stop(STOPPED_BY_SIGNAL[received[-1]])
        stops.asked(stop)  # in case it lands where Python swallows it (engine.stops)
        if not stops.deferring():
            raise stop

    def unraisable(raised: Any) -> None:
        # a stop Python swallowed (engine.stops): noted, and raised where the run goes
        # on; not printed as "Exception ignored in: <function _releaseLock ...>"
        if not isinstance(raised.exc_value, Stop):
            swallowing(raised)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, *STOPPING)}
    swallowing, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    except RunInterrupted as e:
        # `autonomy run ... | head`: the pipe's reader went away, and the run stopped as
        # on a signal (SIGPIPE's exit status); stderr may be that pipe too
        piped = isinstance(e.__context__, BrokenPipeError)
        # the status of the stop the log records, not of the last signal
        by = {text: signum for signum, text in STOPPED_BY_SIGNAL.items()}.get(e.reason)
        status = ended(128 + (signal.SIGPIPE if piped else by or received[-1]))
        if piped:
            _discard_stdout()
        with contextlib.suppress(OSError):
            click.echo(f"\n{e}; the log says so.", err=True)
            click.echo(f"continue it with: {_resume_command(e.run_id, db, workspace)}", err=True)
        raise click.exceptions.Exit(status) from None
    except RunCutOff as e:
        status = ended(1)
        click.echo(f"\nError: {e}", err=True)
        command = _resume_command(e.run_id, db, workspace)
        click.echo(f"once the log can be written again, continue it with: {command}", err=True)
        raise click.exceptions.Exit(status) from None
    except KeyboardInterrupt:
        # stopped where no run was going (an idle worker, a run before its first
        # event): nothing to record or say; the signal's exit status, not always 130
        raise click.exceptions.Exit(128 + received[-1]) from None
    finally:
        stops.taken()
        sys.unraisablehook = swallowing
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _discard_stdout() -> None:
    """What is left to print goes nowhere: the pipe it went to is closed, and Python
    flushing it at exit printed "Exception ignored ... BrokenPipeError"."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())  # type: ignore[union-attr]
        os.close(devnull)


STOPPING = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop a run as Ctrl-C does (recorded, resumable)."""

ENDED: list[int] = []
"""The exit status of the run this process stopped (``interrupts``), once it is said:
a signal handled after that, when Python's own handler is back, ends the command
with it, not with a Ctrl-C's (found under load: a SIGTERM's stop said, then 130)."""


def ended(status: int) -> int:
    """Note that the run's end is being said, with ``status``: from here no stop
    signal stops anything (``ENDED``)."""
    ENDED.append(status)
    return status


STOP_GRACE = 5.0
"""Seconds after a stop signal during which another is taken for the same stop."""


def _resume_command(run_id: str, db: Path | str | None, workspace: Path | None) -> str:
    """The command that resumes ``run_id`` in the same log: without ``--db`` when the
    log is ``$AUTONOMY_DB`` (still set for the next command), and never with a
    password (``events.postgres.redacted``: hints end up in terminal logs)."""
    from engine.storage import DB_ENV, resolve_db

    if (db is None or str(db) == "") and os.environ.get(DB_ENV, "").strip():
        return f"autonomy resume {run_id}"
    where = resolve_db(db, workspace)
    if isinstance(where, str):  # a postgresql:// URL
        from events.postgres import redacted

        where = redacted(where)
    return f"autonomy resume {run_id} --db {where}"


def read_goal(goal: str | None, workspace: Path) -> str:
    """GOAL as given, or the content of the file it names, or MASTER_PLAN.md; never
    empty (``check_goal``), so that no log is opened for a run that cannot start."""
    from engine.agent.runner import check_goal

    if goal is None:
        plan = workspace / "MASTER_PLAN.md"
        if not plan.is_file():
            there = plan.exists() or plan.is_symlink()
            raise ConfigError(
                f"no GOAL given, and {plan} is not a file (a device, a FIFO, a directory "
                "or a link to nothing)"
                if there
                else f"no GOAL given and no MASTER_PLAN.md in {workspace}"
            )
        text = _goal_file(plan)
    elif len(goal) < 1024 and "\n" not in goal and Path(goal).is_file():
        text = _goal_file(Path(goal))
    else:
        text = goal
    check_goal(text)
    return text


def _goal_file(path: Path) -> str:
    """The goal a file holds, read no further than a goal may be long."""
    from engine.agent.runner import MAX_GOAL_CHARS

    try:
        # not blocking: a file that waits for its data (/proc/kmsg, a FIFO) hung the run
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as source:
            data = source.read(4 * MAX_GOAL_CHARS + 1)  # UTF-8: at most 4 bytes a character
        if len(data) > 4 * MAX_GOAL_CHARS:
            raise ConfigError(
                f"the goal file {path} is larger than a goal may be "
                f"({MAX_GOAL_CHARS:,} characters: it goes into every request to the model)"
            )
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"the goal file {path} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise ConfigError(f"cannot read the goal file {path}: {e.strerror or e}") from None


def _finish(state: RunState) -> None:
    from engine.agent.runner import summary as run_summary

    click.echo("")
    for line in run_summary(state):
        click.echo(line)
    exit_for(state.pipeline.status)


def exit_for(status: str) -> None:
    """The exit status of a command that ran a run to ``status``: 0 when it completed
    or waits for an answer, 2 when it ended partial, 1 otherwise."""
    if status == "partial":
        raise click.exceptions.Exit(2)
    if status not in ("completed", "waiting_for_input"):
        raise click.exceptions.Exit(1)


@cli.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo's workspace and log go. Default: a new temporary directory.",
)
@click.pass_context
def demo(ctx: click.Context, workdir: Path | None) -> None:
    """Run a complete example against a scripted model server.

    A whole run end to end, in a temporary workspace, against the built-in
    scripted model server on loopback; then what happened and where the log is.

    Example:

    \b
        autonomy demo
        autonomy demo --workdir /tmp/autonomy-demo
    """
    try:
        module = importlib.import_module("engine.runs.demo")
    except ModuleNotFoundError as e:
        if e.name != "engine.runs.demo":
            raise
        raise click.ClickException("this build of autonomy has no demo (engine.runs.demo)") from e
    run_demo = cast(Callable[..., int], module.run_demo)
    ctx.exit(run_demo(workdir, echo=click.echo))
