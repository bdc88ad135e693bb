r"""The ``autonomy`` command line: a thin shell over the library.

Each command opens the log, calls one library function and prints the answer. An
error the library describes (any ``AutonomyError``) or an OS error becomes its
message and cause chain on stderr and exit status 1, never a traceback; that
handling lives in ``Command.invoke``, so every ``@cli.command()`` has it. A new
command is a few lines::

    @cli.command()
    @db_option
    def tasks(db: Path | None) -> None:
        '''List the tasks of every run.

        Example:

        \b
            autonomy tasks --db run.db
        '''
        with opened_log(db) as store:
            ...

``db_option`` is the shared ``--db PATH`` (also ``AUTONOMY_DB``); ``settings_options``
adds ``--config``, ``--mode``, ``--max-steps``, ``--sandbox``, ``--model-url``, ``--api`` and
``--model`` and hands the command one ``SettingsFlags`` whose ``load(workspace)``
gives the effective ``Settings``.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import click
import msgspec
from tabulate import tabulate

from engine import __version__
from engine.config import Settings, dump_toml, load_settings, locate_config, settings_from_mapping
from engine.errors import ConfigError
from engine.keys import load_key
from engine.phases import mermaid
from engine.progress import run_display
from engine.runner import RunInterrupted, resume_run, start_run
from engine.runner import summary as run_summary
from engine.storage import DB_ENV, default_db_path, is_postgres_url, open_store, resolve_db
from events.errors import AutonomyError, RunNotFound
from events.schema import (
    EVENT_TYPES,
    ArbiterDecided,
    Event,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunForked,
    RunRewound,
    RunStarted,
    SpecialistConsulted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UserAnswered,
    UserAsked,
)
from events.store import EventStore, RecordedEvent
from projections import RunState, project

# -- errors --------------------------------------------------------------------------------


def describe_error(error: BaseException) -> str:
    """The error's message, then one ``caused by`` line per link of its cause chain."""
    lines = [str(error) or type(error).__name__]
    seen = {id(error)}
    cause = _cause_of(error)
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause) and str(cause) in lines[0]:
            # the message already quotes it (TOML errors, for one): say it once
            cause = _cause_of(cause)
            continue
        kind = type(cause)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        lines.append(f"  caused by {name}: {cause}")
        cause = _cause_of(cause)
    return "\n".join(lines)


def _cause_of(error: BaseException) -> BaseException | None:
    if error.__cause__ is not None:
        return error.__cause__
    return None if error.__suppress_context__ else error.__context__


class CommandError(click.ClickException):
    """A library error, shown as ``Error: message`` plus its causes; exit status 1."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(describe_error(error))


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn the errors a user can cause into a clean ``CommandError``.

    ``AutonomyError`` is everything the library raises on purpose; ``OSError``
    covers paths that cannot be read or written. A broken pipe (``| head``) is left
    to click, which exits quietly. Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except (AutonomyError, OSError) as e:
        raise CommandError(e) from e


class Command(click.Command):
    """A command whose library errors become clean messages (``handle_errors``)."""

    def invoke(self, ctx: click.Context) -> Any:
        with handle_errors():
            return super().invoke(ctx)


class Group(click.Group):
    """The ``autonomy`` group; every ``@cli.command()`` is a ``Command``."""

    command_class = Command


# -- shared options ------------------------------------------------------------------------


class LogParam(click.ParamType[Any]):
    """A log: a file path (a ``Path``) or a ``postgresql://`` URL (kept a string:
    ``Path`` would fold its ``//``)."""

    name = "log"
    _file = click.Path(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and is_postgres_url(value):
            return value
        return self._file.convert(value, param, ctx)


db_option = click.option(
    "--db",
    type=LogParam(),
    metavar="PATH|URL",
    envvar=DB_ENV,
    show_envvar=True,
    help="The event log: a file, or a postgresql:// URL. Default: .autonomy/events.db "
    "under the workspace, else under the current directory.",
)
"""``--db PATH|URL`` for every command that reads or writes a log."""


@contextmanager
def opened_log(
    db: Path | str | None,
    workspace: Path | None = None,
    *,
    must_exist: bool = True,
    read_only: bool = False,
    create_key: bool = True,
) -> Iterator[EventStore]:
    """The log named by ``--db`` (or ``AUTONOMY_DB``, or the default), opened with
    the audit views and the chain's key (``engine.keys``); closed afterwards.
    Commands that continue a log want ``must_exist``; commands that only read want
    ``read_only`` (they then work on read-only files and directories and never
    write). Only the default log's directory (``.autonomy/``) is created when
    missing, never one the user named. ``create_key=False`` is for commands that
    judge a log (``verify``): a key made now would only be the wrong one."""
    path = resolve_db(db, workspace)
    key = load_key(create=create_key and not read_only)
    store = open_store(
        path,
        must_exist=must_exist,
        read_only=read_only,
        create_dir=path == default_db_path(workspace),
        key=key,
    )
    try:
        yield store
    finally:
        store.close()


@dataclass(frozen=True)
class SettingsFlags:
    """What ``settings_options`` collected: the config file and the flags given."""

    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self, workspace: Path | None) -> Settings:
        """Defaults < the config file (``--config``, else ``autonomy.toml`` in the
        workspace) < the environment < the flags."""
        path = locate_config(self.config_file, workspace)
        return load_settings(path, env=os.environ, overrides=self.overrides)

    def load_over(self, base: Settings) -> Settings:
        """``base`` (a run's recorded settings) < ``--config`` if given < the
        environment < the flags."""
        return load_settings(self.config_file, env=os.environ, overrides=self.overrides, base=base)


_SETTINGS_OPTIONS = (
    click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="AUTONOMY_CONFIG",
        show_envvar=True,
        help="The config file. Default: autonomy.toml in the workspace, if there is one.",
    ),
    # These flags have no envvar= on purpose: load_settings reads the same variables
    # itself (so the library and the CLI agree, USE_ORCHESTRATION included); the help
    # names them the way show_envvar would.
    click.option(
        "--mode",
        type=click.Choice(["orchestrated", "rules"]),
        help="Who picks the next step: the rules or the arbiter model. "
        "[env var: AUTONOMY_MODE; USE_ORCHESTRATION=true|false]",
    ),
    click.option(
        "--max-steps",
        type=click.IntRange(min=1),
        help="Coordinator steps before the run stops. [env var: AUTONOMY_MAX_STEPS]",
    ),
    click.option(
        "--model-url",
        metavar="URL",
        help="Point every role at this one server (fallbacks cleared). "
        "[env var: AUTONOMY_MODEL_URL]",
    ),
    click.option(
        "--api",
        type=click.Choice(["ollama", "openai"]),
        help="The API every role's server speaks. [env var: AUTONOMY_API]",
    ),
    click.option(
        "--model",
        metavar="NAME",
        help="Use this one model for every role. [env var: AUTONOMY_MODEL]",
    ),
    click.option(
        "--sandbox",
        type=click.Choice(["auto", "required", "off"]),
        help="How commands the model runs are confined: auto (bubblewrap when "
        "installed, else a warning), required (refuse to run without it) or off. "
        "[env var: AUTONOMY_SANDBOX]",
    ),
    click.option(
        "--preflight/--no-preflight",
        default=None,
        help="Check that every role's model server answers and lists its model before "
        "the run starts (default: on). [env var: AUTONOMY_PREFLIGHT]",
    ),
)

_OVERRIDE_NAMES = ("mode", "max_steps", "model_url", "api", "model", "sandbox", "preflight")


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the settings flags; the command receives them as ``flags: SettingsFlags``."""

    @functools.wraps(command)
    def wrapper(*args: Any, config_file: Path | None, **kwargs: Any) -> Any:
        overrides = {name: kwargs.pop(name) for name in _OVERRIDE_NAMES}
        flags = SettingsFlags(config_file=config_file, overrides=overrides)
        return command(*args, flags=flags, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for option in reversed(_SETTINGS_OPTIONS):
        decorated = option(decorated)
    return decorated


# -- the commands --------------------------------------------------------------------------


@click.group(cls=Group)
@click.version_option(__version__, prog_name="autonomy")
def cli() -> None:
    """autonomy: an autonomous coding agent whose every decision is an event in an
    append-only SQLite log, so any run can be audited, verified and replayed.

    Example:

    \b
        autonomy demo
        autonomy runs
        autonomy events RUN_ID --type tool.executed
    """


@cli.command()
@db_option
@click.pass_context
def runs(ctx: click.Context, db: Path | None) -> None:
    """List the runs in the log.

    One row per run, projected from its events: status, phase, steps, tokens,
    start time (UTC) and why it ended (a model server that kept failing, say). A
    run waiting for an answer shows its question. A run
    whose events cannot be read is listed as unreadable (exit status 1); `autonomy
    verify RUN_ID` says why.

    Example:

    \b
        autonomy runs --db .autonomy/events.db
    """
    unreadable: list[str] = []
    rows: list[list[str]] = []
    with opened_log(db, read_only=True) as store:
        for info in store.runs():
            try:
                rows.append(_run_row(store, info.run_id, info.started_at))
            except AutonomyError as e:
                # one damaged run must not hide the others
                unreadable.append(f"run {info.run_id}: {e}")
                rows.append(
                    [info.run_id, "unreadable", "?", "?", "?", _seconds(info.started_at), ""]
                )
    if not rows:
        click.echo("no runs in this log")
        return
    headers = ["run", "status", "phase", "steps", "tokens", "started", "reason"]
    click.echo(tabulate(rows, headers=headers, disable_numparse=True))
    for problem in unreadable:
        click.echo(f"Error: {problem}", err=True)
    if unreadable:
        ctx.exit(1)


def _run_row(store: EventStore, run_id: str, started_at: str) -> list[str]:
    pipeline, orchestration = (state := project(store, run_id)).pipeline, state.orchestration
    status = pipeline.status
    if status == "waiting_for_input":
        status = f"waiting_for_input: {_short(pipeline.question, 50)}"
    tokens = sum(usage.tokens for usage in orchestration.usage_by_model.values())
    ended = pipeline.status not in ("new", "running", "waiting_for_input")
    reason = _short(pipeline.reason, 80) if ended else ""
    steps, started = str(pipeline.steps), _seconds(started_at)
    return [run_id, status, pipeline.phase, steps, str(tokens), started, reason]


def _check_types(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    unknown = [t for t in value if t not in EVENT_TYPES]
    if unknown:
        raise click.BadParameter(
            f"unknown event type {unknown[0]!r}; the types are {', '.join(EVENT_TYPES)}"
        )
    return value


@cli.command()
@click.argument("run_id")
@click.option(
    "--type",
    "types",
    multiple=True,
    metavar="TYPE",
    callback=_check_types,
    help="Only events of this type (repeatable), e.g. tool.executed.",
)
@click.option("--from", "from_version", type=click.IntRange(min=1), help="First version shown.")
@click.option("--to", "to_version", type=click.IntRange(min=1), help="Last version shown.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: the full envelope and data.")
@db_option
def events(
    run_id: str,
    types: tuple[str, ...],
    from_version: int | None,
    to_version: int | None,
    as_json: bool,
    db: Path | None,
) -> None:
    """Show the events of one run.

    One line per event: version, time (UTC), type and a short summary. Every event is read back through the typed decoder. --json prints one JSON
    object per line with the envelope (position, version, type, hash, ...) and
    the full data.

    Example:

    \b
        autonomy events RUN_ID --type tool.requested --type tool.executed
        autonomy events RUN_ID --from 10 --to 20 --json | jq .data
    """
    with opened_log(db, read_only=True) as store:
        if store.last_version(run_id) == 0:
            raise RunNotFound(run_id)
        after = from_version - 1 if from_version is not None else 0
        for event in store.read(run_id, after=after, upto=to_version):
            if types and event.type not in types:
                continue
            if as_json:
                click.echo(msgspec.json.encode(event).decode())
            else:
                click.echo(_event_line(event))


@cli.command()
def graph() -> None:
    """Print the phase machine as a Mermaid state diagram.

    Generated from the same table the engine runs on, so it cannot drift.

    Example:

    \b
        autonomy graph > phases.mmd
    """
    click.echo(mermaid())


@cli.command()
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where autonomy.toml is looked for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@settings_options
def config(workspace: Path, as_json: bool, flags: SettingsFlags) -> None:
    """Print the effective settings as TOML (or JSON).

    Defaults, then autonomy.toml, then the environment, then the flags. The TOML
    printed is a complete autonomy.toml. A wrong key or type in the
    file is reported with its name.

    Example:

    \b
        autonomy config --config autonomy.toml --model-url http://localhost:11434
        autonomy config > autonomy.toml
    """
    settings = flags.load(workspace)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(settings)).decode())
        return
    source = locate_config(flags.config_file, workspace)
    click.echo(
        f"# effective settings: defaults < {source or 'no config file'} < environment < flags"
    )
    click.echo(dump_toml(settings), nl=False)


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
    text = read_goal(goal, workspace)
    settings = flags.load(workspace)
    with opened_log(db, workspace, must_exist=False) as store, interrupts(store, db, workspace):
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
            from engine.cli_integrity import append_checkpoint

            append_checkpoint(store, log.run_id, checkpoint_file)
        _finish(project(store, log.run_id))


@cli.command()
@click.argument("run_id")
@db_option
@settings_options
def resume(run_id: str, db: Path | None, flags: SettingsFlags) -> None:
    """Continue a run that crashed or was interrupted, from its log alone.

    The settings are the ones the run recorded when it started, under any
    --config, environment variables and flags given now. A tool call that was
    requested but never reported is settled first by comparing the workspace
    with the hashes in the log.

    Example:

    \b
        autonomy resume run-20261124-101500-ab12 --db ./calc/.autonomy/events.db
    """
    with opened_log(db) as store:
        pipeline = project(store, run_id).pipeline
        recorded = pipeline.config
        settings = flags.load_over(settings_from_mapping(recorded) if recorded else Settings())
        steps = settings.limits.max_steps
        with (
            interrupts(store, db, None),
            run_display(steps, steps=pipeline.steps, plain=click.echo) as show,
        ):
            resume_run(store, run_id, settings=settings, progress=show)
        _finish(project(store, run_id))


@contextmanager
def interrupts(store: EventStore, db: Path | str | None, workspace: Path | None) -> Iterator[None]:
    """Ctrl-C: the run has recorded why it stopped; say how to continue it, exit 130
    (the shell's code for SIGINT) — never a traceback."""
    try:
        yield
    except RunInterrupted as e:
        where = resolve_db(db, workspace)
        click.echo(f"\n{e}; the log says so.", err=True)
        click.echo(f"continue it with: autonomy resume {e.run_id} --db {where}", err=True)
        raise click.exceptions.Exit(130) from None


def read_goal(goal: str | None, workspace: Path) -> str:
    """GOAL as given, or the content of the file it names, or MASTER_PLAN.md."""
    if goal is None:
        plan = workspace / "MASTER_PLAN.md"
        if not plan.is_file():
            raise ConfigError(f"no GOAL given and no MASTER_PLAN.md in {workspace}")
        return plan.read_text(encoding="utf-8")
    candidate = Path(goal)
    if len(goal) < 1024 and "\n" not in goal and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    return goal


def _finish(state: RunState) -> None:
    click.echo("")
    for line in run_summary(state):
        click.echo(line)
    status = state.pipeline.status
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
        module = importlib.import_module("engine.demo")
    except ModuleNotFoundError as e:
        if e.name != "engine.demo":
            raise
        raise click.ClickException("this build of autonomy has no demo (engine.demo)") from e
    run_demo = cast(Callable[..., int], module.run_demo)
    ctx.exit(run_demo(workdir, echo=click.echo))


def main(argv: Sequence[str] | None = None) -> None:
    """The ``autonomy`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="autonomy")


# -- one line per event --------------------------------------------------------------------


def _event_line(event: RecordedEvent) -> str:
    time = event.recorded_at[:23] + "Z" if len(event.recorded_at) > 23 else event.recorded_at
    # call ids are "<run id>/m12": within one run's listing the prefix is noise
    text = summary(event.data).replace(f"{event.run_id}/", "")
    return f"{event.version:>5}  {time}  {event.type:<20}  {_short(text, 100)}"


def summary(event: Event) -> str:
    """A short, one-line description of an event's payload."""
    match event:
        case RunStarted():
            return f"{event.mode} run in {event.workspace}: {event.goal}"
        case RunFinished():
            return f"{event.status}" + (f": {event.reason}" if event.reason else "")
        case RunRewound():
            return f"to version {event.to_version}" + (f": {event.reason}" if event.reason else "")
        case RunForked():
            return f"from {event.parent_run} at version {event.at_version}"
        case UserAsked():
            return event.question
        case UserAnswered():
            return event.answer
        case PhaseChanged():
            why = f": {event.reason}" if event.reason else ""
            return (
                f"{event.from_phase} -> {event.to_phase} ({event.trigger}, {event.decided_by}){why}"
            )
        case TaskAdded():
            target = f" -> {event.target_file}" if event.target_file else ""
            return f"{event.task_id} {event.title!r}{target}"
        case TaskUpdated():
            error = f": {event.error}" if event.error else ""
            return f"{event.task_id} {event.status} (attempt {event.attempt}){error}"
        case ModelRequested():
            tools = f", tools: {', '.join(event.tool_names)}" if event.tool_names else ""
            return (
                f"{event.call_id} {event.role} -> {event.model} @ {event.endpoint or '?'} "
                f"(+{len(event.messages)} messages{tools})"
            )
        case ModelResponded():
            said = ", ".join(c.name for c in event.tool_calls) or repr(_short(event.content, 40))
            usage = event.usage
            return (
                f"{event.call_id} {said} ({usage.prompt_tokens}+{usage.completion_tokens} "
                f"tokens, {event.duration_ms:.0f} ms)"
            )
        case ModelFailed():
            return f"{event.call_id} {event.kind} (attempt {event.attempt}): {event.detail}"
        case ArbiterDecided():
            params = _compact(event.parameters) if event.parameters else ""
            fallback = f" [fallback: {event.fallback_reason}]" if event.fallback_used else ""
            return f"{event.action} {params} by {event.decided_by}{fallback}".replace("  ", " ")
        case SpecialistConsulted():
            return f"{event.specialist} {event.task_id}: {event.outcome}"
        case ToolRequested():
            return f"{event.call_id} {event.tool} {_compact(event.arguments)}"
        case ToolExecuted():
            files = (
                f" [{', '.join(c.path for c in event.files_changed)}]"
                if event.files_changed
                else ""
            )
            outcome = "ok" if event.ok else f"FAILED: {event.error}"
            return f"{event.call_id} {event.tool} {outcome}{files}"
    return _compact(msgspec.to_builtins(event))


def _compact(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _seconds(recorded_at: str) -> str:
    """``2025-03-14T15:09:26.535897Z`` as ``2025-03-14 15:09:26``."""
    return recorded_at[:19].replace("T", " ")


# Command groups kept in their own modules; importing them registers their commands.
from engine import (  # noqa: E402, F401
    cli_audit,
    cli_history,
    cli_integrity,
    cli_orchestration,
    cli_serve,
    cli_workers,
)
