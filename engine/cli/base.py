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

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine import __version__
from engine.storage import DB_ENV, is_postgres_url
from events.errors import AutonomyError

if TYPE_CHECKING:
    from engine.config import Settings
    from events.store import EventStore

# -- errors --------------------------------------------------------------------------------


def describe_error(error: BaseException) -> str:
    """The error's message, then one ``caused by`` line per link of its cause chain."""
    lines = [str(error) or type(error).__name__]
    seen = {id(error)}
    cause = _cause_of(error)
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause) and " ".join(str(cause).split()) in " ".join(lines[0].split()):
            # the message already quotes it (TOML errors, for one; libpq's over two
            # lines, which the message gives as one): say it once
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
    from engine.keys import load_key
    from engine.storage import default_db_path, open_store, resolve_db

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


def refuse_a_config_a_model_wrote(store: EventStore, workspace: Path) -> None:
    """``ConfigError`` when the workspace's own ``autonomy.toml`` is one a run's tools
    wrote (the log says so): the model's commands write the workspace, and a config it
    left would choose the next run's model servers (where the project's code and
    every prompt go). Named with ``--config``, the file is the user's choice."""
    from engine.config import CONFIG_FILE, locate_config
    from engine.errors import ConfigError
    from engine.runs.workspace import written_by_a_tool

    path = locate_config(None, workspace)
    if path is None:
        return
    if path.is_symlink() and path.resolve().is_relative_to(workspace.resolve()):
        # a link to another file of the workspace: one in a directory no snapshot
        # records (.venv, say) would hide who wrote it; a shared config elsewhere is fine
        raise ConfigError(
            f"{path} is a link to {path.resolve()}, a file of the workspace itself, whose "
            "writer the log cannot say; nothing was run. Name the file with --config if "
            "you mean to use it"
        )
    try:
        content = path.read_bytes()
    except OSError:
        return  # unreadable: the settings said so already
    written = written_by_a_tool(store, CONFIG_FILE, content)
    if written is not None:
        run_id, version = written
        raise ConfigError(
            f"{path} is the file a tool of run {run_id} wrote (version {version}): a "
            "model's, not yours, and it chooses the model servers this run would send "
            "its prompts and your code to; nothing was run. Read it, and name it with "
            "--config if you mean to use it (or delete it)"
        )


@dataclass(frozen=True)
class SettingsFlags:
    """What ``settings_options`` collected: the config file and the flags given."""

    config_file: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self, workspace: Path | None) -> Settings:
        """Defaults < the config file (``--config``, else ``autonomy.toml`` in the
        workspace, which may only tighten confinement) < the environment < the flags."""
        from engine.config import load_settings, locate_config

        path = locate_config(self.config_file, workspace)
        return load_settings(
            path,
            env=os.environ,
            overrides=self.overrides,
            in_workspace=self.config_file is None and path is not None,
        )

    def load_over(self, base: Settings) -> Settings:
        """``base`` (a run's recorded settings) < ``--config`` if given < the
        environment < the flags."""
        from engine.config import load_settings

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


# color: click would strip escape sequences from what it prints to a pipe, before the
# stream shows them escaped (engine.terminal.PrintableStream): a file name holding one
# was printed as another name; autonomy styles nothing itself
@click.group(cls=Group, context_settings={"color": True})
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


def try_audit_indexes(db: Path | str | None, connection: Any) -> None:
    """Add the audit indexes if the log can take them (``autonomy audit``, and
    ``serve``, whose run pages query the views: without them a run of 16,000 tool
    calls took 8 s a page). On SQLite that is done on a
    connection of its own (the reading one is read-only), and a log on read-only
    storage is still queried, only more slowly, and never written to; a PostgreSQL
    log takes them on ``connection`` when its role may."""
    from engine.runs.audit import AuditError, ensure_indexes
    from engine.storage import is_postgres_url, open_store, resolve_db
    from events.errors import AutonomyError

    path = resolve_db(db)
    if is_postgres_url(path):
        if connection is not None:
            with contextlib.suppress(AuditError):
                ensure_indexes(connection)
        return
    with contextlib.suppress(AutonomyError, OSError):
        path = Path(path)
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return
        with closing(open_store(path, must_exist=True)) as store:
            ensure_indexes(store.connection)  # type: ignore[attr-defined]
