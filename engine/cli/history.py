r"""CLI commands over a run's history: ``replay``, ``state``, ``rewind``, ``fork`` and
``copy`` (runs from one log to another).

Registered on the group (``engine.cli.base.cli``) when this module is imported. Each opens the log,
calls one library function (``engine.runs.replay``, ``projections.project``,
``engine.runs.workspace``) and prints the answer.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.cli.base import LogParam, SettingsFlags, cli, db_option, opened_log, settings_options
from engine.runs import TOOL_SOURCES

if TYPE_CHECKING:
    from engine.runs import ToolSource
    from projections import RunState


@cli.command()
@click.argument("run_id")
@click.option(
    "--until",
    type=click.IntRange(min=1),
    metavar="V",
    help="Replay and compare only up to version V.",
)
@click.option(
    "--tools",
    type=click.Choice(TOOL_SOURCES),
    default="live",
    show_default=True,
    envvar="AUTONOMY_REPLAY_TOOLS",
    show_envvar=True,
    help="live: run the tools in a scratch workspace (do they still behave the same?); "
    "recorded: take their results and file changes from the log (does the engine "
    "still decide the same?), much faster.",
)
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.option(
    "--live-from",
    type=click.IntRange(min=1),
    metavar="V",
    help="Counterfactual: answers from the log up to version V, then fork the run "
    "there and let a live model (--model-url, --model, --api) continue the fork.",
)
@click.option(
    "--continue-live",
    is_flag=True,
    help="Counterfactual: replay to the first divergence (a changed prompt), then fork "
    "before that step and continue live with the current code.",
)
@click.option("--as", "new_id", metavar="NEW_ID", help="The live branch's run id.")
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="The live branch's workspace (new or empty; default: beside the run's own).",
)
@db_option
@settings_options
@click.pass_context
def replay(
    ctx: click.Context,
    run_id: str,
    until: int | None,
    tools: ToolSource,
    as_json: bool,
    live_from: int | None,
    continue_live: bool,
    new_id: str | None,
    workspace: Path | None,
    db: Path | None,
    flags: SettingsFlags,
) -> None:
    """Re-execute a run with the current code; the model answers from the log.

    No model server is asked: the i-th model request gets the i-th recorded
    answer, once the whole request (messages, options, tools and their schemas)
    is checked to be the one recorded. User answers, rewinds, forks, kills and
    what recovery settled after them are taken from the log where the run met
    them. With --tools live, tools really run in a temporary copy of the
    workspace restored from the log; with --tools recorded their results come
    from the log. The events written are compared with the recorded ones (times,
    durations, hashes and timings in outputs aside). Prints "identical (N
    events)", or the first divergence: a line saying what differs, then a diff.
    Exit status 1 on a divergence.

    Counterfactual: with --live-from V (versions 1..V must replay identically) or
    --continue-live (up to the first divergence), the run is forked there and a
    live model (--model-url, --model, --api) continues the fork; compare the two
    with `autonomy diff`.

    Example:

    \b
        autonomy replay run-20261124-101500-ab12 --db ./calc/.autonomy/events.db
        autonomy replay RUN_ID --until 40 --tools recorded
        autonomy replay RUN_ID --continue-live --as RUN_ID-v2 --model-url http://localhost:11434
    """
    from engine.agent.runlog import refuse_tampered
    from engine.runs.replay import replay as replay_run
    from engine.runs.verification import refuse_corrupt_blobs

    if live_from is None and not continue_live and (new_id is not None or workspace):
        from engine.errors import ConfigError

        raise ConfigError(
            "--as and --workspace name a counterfactual replay's branch: give --live-from V "
            "or --continue-live with them"
        )
    if live_from is not None or continue_live:
        given = [flag for flag, value in (("--until", until), ("--json", as_json)) if value]
        if ctx.get_parameter_source("tools") == click.core.ParameterSource.COMMANDLINE:
            given.append("--tools")
        if given:
            from engine.errors import ConfigError

            raise ConfigError(
                f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to a "
                "counterfactual replay (--live-from, --continue-live): it replays with tool "
                "results from the log up to the fork, then continues live; compare the branch "
                "with autonomy diff (--json)"
            )
        _go_live(run_id, live_from, continue_live, new_id, workspace, db, flags)
        return
    deciding = [
        f"--{name.replace('_', '-')}"
        for name in ("mode", "max_steps", "model_url", "api", "model", "preflight")
        if flags.overrides.get(name) is not None
    ]
    if deciding:
        from engine.errors import ConfigError

        raise ConfigError(
            f"{' and '.join(deciding)} {'does' if len(deciding) == 1 else 'do'} not apply to a "
            "replay, which decides as the run did, with the answers the log holds; go live "
            "with them from a version (--live-from V) or from the first divergence "
            "(--continue-live)"
        )
    from engine.config import Settings

    # the commands run confined as given here (--config, --sandbox, the environment)
    # where that is tighter than the log says
    here = flags.load_over(Settings()).tools
    with opened_log(db, read_only=True) as store:
        # an edited log replays to what it says: "identical" proves nothing then
        refuse_tampered(store, run_id, until, "nothing was replayed")
        refuse_corrupt_blobs(store, run_id)  # before anything runs, not when one is read
        result = replay_run(store, run_id, until=until, tools=tools, here=here)
    if as_json:
        click.echo(json.dumps(result.document(), indent=2, ensure_ascii=False))
    else:
        click.echo(result.report())
    if not result.identical:
        ctx.exit(1)


def _go_live(
    run_id: str,
    live_from: int | None,
    continue_live: bool,
    new_id: str | None,
    workspace: Path | None,
    db: Path | None,
    flags: SettingsFlags,
) -> None:
    from engine.agent.runlog import check_run_id
    from engine.agent.runner import new_run_id
    from engine.cli.running import exit_for, interrupts
    from engine.errors import ConfigError
    from engine.runs.counterfactual import go_live
    from projections import project

    if live_from is not None and continue_live:
        raise ConfigError("give --live-from V or --continue-live, not both")
    if (
        flags.overrides.get("model_url") is None
        and flags.config_file is None
        and not os.environ.get("AUTONOMY_MODEL_URL", "").strip()
    ):
        # the log's servers are the log's: one someone made names theirs, and the live
        # branch's prompts carry the workspace's files
        raise ConfigError(
            "a counterfactual replay asks a live model: name its server (--model-url URL, "
            "or --config FILE that names the models); the servers the log names are not "
            "asked unless you name them"
        )
    # a long run id leaves room for the suffix: a run id is at most 128 characters
    branch = check_run_id(
        new_id if new_id is not None else f"{run_id[:118]}-live-{new_run_id()[-4:]}"
    )
    with opened_log(db) as store:
        if workspace is None:
            own = Path(project(store, run_id).pipeline.workspace)
            workspace = own.with_name(f"{own.name}-{branch}")
        with interrupts(db, None):  # Ctrl-C in the live part: as for resume
            done = go_live(
                store,
                run_id,
                new_run_id=branch,
                workspace=workspace,
                settings=flags.load_over,
                live_from=live_from,
                continue_live=continue_live,
                progress=click.echo,
            )
        click.echo(f"replayed: {done.replayed.report().splitlines()[0]}")
        click.echo(f"live branch {done.run_id}: {done.status}, forked at version {done.forked_at}")
        click.echo(f"compare with: autonomy diff {run_id} {done.run_id}")
    exit_for(done.status)


@cli.command(name="diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--json", "as_json", is_flag=True, help="The comparison as one JSON object.")
@db_option
def diff_command(run_a: str, run_b: str, as_json: bool, db: Path | None) -> None:
    """Compare two runs: the first step where they differ, then figures per phase.

    Steps are what the engine did, not when: each decision (action and
    parameters), each tool call (tool and arguments) and each file change (path
    and content hash), along each run's effective history (rewinds followed, a
    fork's parent up to the fork point). Per phase, for each run: steps, model
    calls, tokens, model seconds, files written, tests passed. Useful to see what
    a prompt change did, with a run made by `autonomy replay --continue-live`.

    Example:

    \b
        autonomy diff calc-run calc-run-brief
        autonomy diff calc-run calc-run-brief --json | jq .first_divergent_step
    """
    from engine.runs.diff import diff_runs

    with opened_log(db, read_only=True) as store:
        result = diff_runs(store, run_a, run_b)
    if as_json:
        click.echo(json.dumps(result.document(), indent=2, ensure_ascii=False))
        return
    for line in result.lines():
        click.echo(line)


@cli.command()
@click.argument("run_id")
@click.option("--at", "at", type=click.IntRange(min=0), metavar="V", help="The state at version V.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON.")
@db_option
def state(run_id: str, at: int | None, as_json: bool, db: Path | None) -> None:
    """Show a run's pipeline and orchestration state, now or at any version.

    The state is the fold of the run's events up to that version (rewinds and
    forks included): status, phase, tasks, files, phase history, decisions,
    model usage, conversations. --json prints the whole state as one JSON object.

    Example:

    \b
        autonomy state RUN_ID
        autonomy state RUN_ID --at 25 --json | jq .pipeline.tasks
    """
    import msgspec

    from engine.errors import ConfigError
    from engine.runs.state import state_document
    from events.errors import RunNotFound
    from projections import project

    with opened_log(db, read_only=True) as store:
        last = store.last_version(run_id)
        if last == 0:
            raise RunNotFound(run_id)
        if at is not None and at > last:
            raise ConfigError(f"run {run_id} has versions 0 to {last}; {at} is not one of them")
        projected = project(store, run_id, upto=at)
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(state_document(projected))).decode())
    else:
        for line in state_lines(projected):
            click.echo(line)


@cli.command()
@click.argument("run_id")
@click.option(
    "--to", "to", type=click.IntRange(min=1), required=True, metavar="V",
    help="The version to go back to.",
)  # fmt: skip
@click.option("--reason", default="", help="Why, for the log.")
@db_option
def rewind(run_id: str, to: int, reason: str, db: Path | None) -> None:
    """Return a run to version V; `autonomy resume` then continues from there.

    Appends run.rewound (nothing is deleted: the later events stay in the log),
    and restores the workspace files the run touched to their content at V from
    the log's blobs: files created after V are removed, files changed after V get
    their old content back, files the run never touched are left alone.

    Example:

    \b
        autonomy rewind RUN_ID --to 40 --reason "try the review again"
        autonomy resume RUN_ID
    """
    from engine.runs.workspace import rewind as rewind_run
    from engine.runs.workspace import rewind_unfinished
    from projections import project

    with opened_log(db) as store:
        before = store.last_version(run_id)
        try:
            restored = rewind_run(store, run_id, to, reason=reason)
        except KeyboardInterrupt:
            if store.last_version(run_id) > before:  # stopped as it wrote the files
                said = rewind_unfinished(run_id, to, "may not all be restored;")
                click.echo(f"stopped: {said}", err=True)
            raise
        pipeline = project(store, run_id).pipeline
    click.echo(f"rewound {run_id} to version {to}: {restored.summary()}")
    click.echo(f"status at version {to}: {pipeline.status}, phase {pipeline.phase}")
    if pipeline.status in ("running", "new"):
        click.echo(f"continue with: autonomy resume {run_id}")


@cli.command()
@click.argument("run_id")
@click.option(
    "--at", "at", type=click.IntRange(min=1), required=True, metavar="V",
    help="The version of the parent run to start from.",
)  # fmt: skip
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The new run's workspace: a new or empty directory.",
)
@click.option("--as", "new_id", metavar="NEW_ID", help="The new run's id (default: time-based).")
@db_option
def fork(run_id: str, at: int, workspace: Path, new_id: str | None, db: Path | None) -> None:
    """Start a new run from RUN_ID's state at version V, in a new workspace.

    The new run's first event is run.forked; its workspace gets the parent's
    files as they were at V. The parent run, its events and its workspace are
    left as they are. `autonomy resume NEW_ID` continues the new run.

    Example:

    \b
        autonomy fork RUN_ID --at 40 --workspace ../calc-retry --as calc-retry
        autonomy resume calc-retry
    """
    from engine.agent.runner import new_run_id
    from engine.runs.workspace import fork as fork_run
    from engine.terminal import one_line
    from projections import project

    run_as = new_id if new_id is not None else new_run_id()  # "" is refused, as "a/b"
    with opened_log(db) as store:
        try:
            restored = fork_run(store, run_id, at, workspace, new_run_id=run_as)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM: whether there is a fork, said
            made = False
            with contextlib.suppress(Exception):
                made = store.last_version(run_as) != 0
            click.echo(
                f"\nstopped: the fork {run_as} was made; continue it with: autonomy resume {run_as}"
                if made
                else "\nstopped: nothing was forked",
                err=True,
            )
            raise
        pipeline = project(store, run_as).pipeline
    click.echo(f"forked {run_id} at version {at} as {run_as} in {one_line(pipeline.workspace)}")
    click.echo(f"workspace: {restored.summary()}")
    click.echo(f"status: {pipeline.status}, phase {pipeline.phase}")
    if pipeline.status in ("running", "new"):
        click.echo(f"continue with: autonomy resume {run_as}")


# -- showing a state -----------------------------------------------------------------------


def state_lines(projected: RunState) -> list[str]:
    """The state, readable."""
    from engine.tables import table
    from engine.terminal import one_line

    p, o = projected.pipeline, projected.orchestration
    lines = [
        f"run {projected.run_id} at version {projected.version}",
        f"  status: {p.status}" + (f" ({p.reason})" if p.reason else ""),
        f"  phase: {p.phase}, steps: {p.steps} ({p.steps_since_progress} since progress)",
        f"  workspace: {p.workspace}",
    ]
    if p.parent_run:
        lines.append(f"  forked from {p.parent_run} at version {p.forked_at}")
    if p.question:
        lines.append(f"  waiting for an answer to: {p.question}")
    if p.tasks:
        rows = [
            [t.task_id, t.status, t.attempts, t.priority, t.title, t.last_error[:60]]
            for t in p.tasks.values()
        ]
        lines += ["", "tasks:"]
        table_text = table(
            rows, ["id", "status", "attempts", "priority", "title", "last error"], "numbers"
        )
        lines += ["  " + line for line in table_text.splitlines()]
    if p.files:
        lines += ["", "files:"]
        lines += [
            f"  {path} ({f.size} bytes, sha256 {f.digest[:12]}, version {f.changed_at})"
            for path, f in sorted(p.files.items())
        ]
    if p.pending_tools:
        lines += ["", "tools requested but not reported:"]
        lines += [f"  {t.call_id} {t.tool} (version {t.version})" for t in p.pending_tools.values()]
    if len(p.phase_history):
        lines += ["", "phases:"]
        lines += [
            f"  {e.version:>5}  {e.from_phase} -> {e.to_phase} ({e.trigger}, {e.decided_by})"
            for e in p.phase_history
        ]
    if len(o.decisions):
        lines += ["", f"decisions: {len(o.decisions)}, the last:"]
        last = o.decisions[-1]
        fallback = f" [fallback: {last.fallback_reason}]" if last.fallback_used else ""
        lines.append(
            f"  {last.version:>5}  {last.action} by {last.decided_by}: {last.reasoning}{fallback}"
        )
    if o.usage_by_model:
        lines += ["", "models:"]
        lines += [
            f"  {name}: {u.calls} calls, {u.failures} failed attempts, "
            f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens"
            for name, u in o.usage_by_model.items()
        ]
    if o.conversations:
        lines += ["", "conversations:"]
        lines += [f"  {name}: {len(msgs)} messages" for name, msgs in o.conversations.items()]
    if o.open_calls:
        lines += ["", "model calls without an answer:"]
        lines += [f"  {cid} ({c.role}, {c.model})" for cid, c in o.open_calls.items()]
    # each on its line: a question or a file name a model wrote with a line break in it
    # printed a line of its own ("run r1: completed")
    return [one_line(line) for line in lines]


@cli.command("copy")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option(
    "--from",
    "source",
    required=True,
    type=LogParam(),
    metavar="PATH|URL",
    help="The log to copy from.",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=LogParam(),
    metavar="PATH|URL",
    help="The log to copy into (created if missing).",
)
def copy(run_ids: tuple[str, ...], source: Path | str, target: Path | str) -> None:
    """Copy runs (every run when none is named) from one log to another, with their
    blobs: SQLite to PostgreSQL and back. Each run's hash chain is verified before it
    is written and again on the target. A run the target already has row for row is
    skipped (so a copy cut off is finished by running it again); one it has with other
    events is refused, and then nothing is copied.

    Example:

    \b
        autonomy copy --from .autonomy/events.db --to postgresql://db.example/autonomy
    """
    from engine.runs.copy import copy_runs, describe

    with (
        opened_log(source, read_only=True) as from_store,
        opened_log(target, must_exist=False) as to_store,
    ):
        for line in describe(copy_runs(from_store, to_store, run_ids)):
            click.echo(line)
