"""Commands that show a log and the engine's tables: ``runs``, ``events``, ``graph``,
``config``; and the one-line summary of an event they print."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine.cli.base import SettingsFlags, cli, db_option, opened_log, settings_options
from events.errors import RunNotFound

if TYPE_CHECKING:
    from events.schema import Event
    from events.store import RecordedEvent
    from projections.summaries import RunSummary


@cli.command()
@click.option(
    "--rebuild",
    is_flag=True,
    help="First fold every run again and store its summary (when verify found them wrong).",
)
@db_option
@click.pass_context
def runs(ctx: click.Context, rebuild: bool, db: Path | None) -> None:
    """List the runs in the log.

    One row per run, from the run summaries the log keeps (each run's state as
    `autonomy state` folds it, caught up with any newer events): status, phase,
    steps, tokens, start time (UTC) and why it ended (a model server that kept
    failing, say). A run waiting for an answer shows its question. A run whose events cannot be read is listed as unreadable (exit
    status 1); `autonomy verify RUN_ID` says why.

    Example:

    \b
        autonomy runs --db .autonomy/events.db
        autonomy runs --rebuild
    """
    from engine.tables import table
    from projections.summaries import rebuild_summaries, summaries_and_problems

    if rebuild:
        with opened_log(db, create_key=False) as store:
            rebuild_summaries(store)
    with opened_log(db, read_only=True) as store:
        summaries, problems = summaries_and_problems(store)
        rows = [_run_row(summary) for summary in summaries]
        for run_id in problems:  # one damaged run must not hide the others
            first = next(store.read_raw(run_id, upto=1), None)
            started = _seconds(first.recorded_at) if first else "?"
            rows.append([run_id, "unreadable", "?", "?", "?", started, ""])
    if not rows:
        click.echo("no runs in this log")
        return
    headers = ["run", "status", "phase", "steps", "tokens", "started", "reason"]
    click.echo(table(rows, headers))
    for run_id, problem in problems.items():
        click.echo(f"Error: run {run_id}: {problem}", err=True)
    if problems:
        ctx.exit(1)


def _run_row(summary: RunSummary) -> list[str]:
    status = summary.status
    ended = status not in ("new", "running", "waiting_for_input")
    if status == "waiting_for_input":
        status = f"waiting_for_input: {_short(summary.question, 50)}"
    return [
        summary.run_id,
        status,
        summary.phase,
        str(summary.steps),
        str(summary.tokens),
        _seconds(summary.started_at),
        _short(summary.reason, 80) if ended else "",
    ]


def _check_types(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    from events.schema import EVENT_TYPES

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
    import msgspec

    if from_version is not None and to_version is not None and from_version > to_version:
        raise click.BadParameter(
            f"--from {from_version} is past --to {to_version}: no event is between them",
            param_hint="--from",
        )
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
    from engine.machines.phases import mermaid

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
    import sys

    import msgspec

    from engine.config import dump_toml, locate_config
    from engine.terminal import data_stream

    settings = flags.load(workspace)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(settings)).decode())
        return
    source = locate_config(flags.config_file, workspace)
    # a file or a pipe gets the TOML exactly (escaped as for a terminal, a character
    # past U+FFFF was a surrogate pair, which no TOML reader takes); a terminal, escaped
    out = data_stream(sys.stdout)
    out.write(
        f"# effective settings: defaults < {source or 'no config file'} < environment < flags\n"
    )
    out.write(dump_toml(settings))


def _event_line(event: RecordedEvent) -> str:
    time = event.recorded_at[:23] + "Z" if len(event.recorded_at) > 23 else event.recorded_at
    # call ids are "<run id>/m12": within one run's listing the prefix is noise
    text = summary(event.data).replace(f"{event.run_id}/", "")
    return f"{event.version:>5}  {time}  {event.type:<20}  {_short(text, 100)}"


def summary(event: Event) -> str:
    """A short, one-line description of an event's payload."""
    from events.schema import (
        ArbiterDecided,
        ModelContextLearned,
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
        case ModelContextLearned():
            said = f"window {event.context or '?'}, trained {event.trained or '?'} tokens"
            return f"{event.model} @ {event.endpoint}: {said} ({event.source})"
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
    import msgspec

    return _compact(msgspec.to_builtins(event))


def _compact(value: Any) -> str:
    import msgspec

    return msgspec.json.encode(value).decode()


def _short(text: str, limit: int) -> str:
    from engine.terminal import clipped

    return clipped(" ".join(text.split()), limit)


def _seconds(recorded_at: str) -> str:
    """``2025-03-14T15:09:26.535897Z`` as ``2025-03-14 15:09:26``."""
    return recorded_at[:19].replace("T", " ")
