r"""CLI commands that judge a log: ``verify`` and ``checkpoint``.

Registered on the group (``engine.cli.base.cli``) when this module is imported. ``verify`` calls
``engine.runs.verification.verify_log`` and prints one line per run; ``checkpoint``
prints ``events.checkpoints`` lines for the user to keep elsewhere.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from engine.cli.base import cli, db_option, opened_log

if TYPE_CHECKING:
    from engine.runs.verification import LogVerdict, RunVerdict
    from events.store import EventStore, Problem


@cli.command()
@click.argument("run_id", required=False)
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also check each run against these checkpoints (from `autonomy checkpoint`).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the database, each run.")
@db_option
@click.pass_context
def verify(
    ctx: click.Context,
    run_id: str | None,
    checkpoint_file: Path | None,
    as_json: bool,
    db: Path | None,
) -> None:
    """Check that the log is intact: database, blobs, every run's chain and events.

    The database passes PRAGMA integrity_check and has its append-only triggers (a
    writer that found them dropped put them back, and that is reported here);
    every blob matches its digest; every stored run summary agrees with a fold of
    its run (`autonomy runs --rebuild` writes them again). For each run: the hash chain is unbroken,
    every event decodes and its blobs are intact, the run's state can be
    rebuilt, and, with --checkpoints, the run is as long as each checkpoint and
    has the same hash at its version. A keyed run is authenticated only with
    its key (AUTONOMY_KEY_FILE, else ~/.config/autonomy/key): without it, the
    line says "not authenticated"; with another key, the run fails. Runs from
    before keys say "unkeyed". Prints one line per run, "ok" or each problem
    with its position and type; exit status 1 if anything has a problem.

    Example:

    \b
        autonomy verify
        autonomy verify RUN_ID --db .autonomy/events.db
        autonomy verify --checkpoints ~/backup/autonomy.checkpoints --json
    """
    import msgspec

    from engine.runs.verification import verify_log
    from events.checkpoints import Checkpoint, loads
    from events.errors import RunNotFound

    checkpoints: list[Checkpoint] = []
    if checkpoint_file is not None:
        checkpoints = loads(_read(checkpoint_file), source=str(checkpoint_file))
    with opened_log(db, read_only=True) as store:
        if run_id is not None and store.last_version(run_id) == 0:
            raise RunNotFound(run_id)
        verdict = verify_log(
            store, [run_id] if run_id is not None else None, checkpoints=checkpoints
        )
    if as_json:
        document = msgspec.to_builtins(verdict)
        document["ok"] = verdict.ok
        for run, verdict_run in zip(document["runs"], verdict.runs, strict=True):
            run["ok"] = verdict_run.ok
        click.echo(msgspec.json.encode(document).decode())
    else:
        for line in verdict_lines(verdict):
            click.echo(line)
    failed = sum(not run.ok for run in verdict.runs)
    if failed:
        click.echo(f"{failed} of {len(verdict.runs)} runs failed verification", err=True)
    if not verdict.ok:
        ctx.exit(1)


def verdict_lines(verdict: LogVerdict) -> list[str]:
    """``database: ok (...)`` or one line per database problem, then per run."""
    lines = [f"database: FAILED {problem}" for problem in verdict.database]
    if not lines:
        checked = ", ".join(filter(None, (verdict.checks, f"{verdict.blobs} blobs")))
        lines.append(f"database: ok ({checked})")
    if not verdict.runs and verdict.runs_read:
        lines.append("no runs in this log")
    for run in verdict.runs:
        lines += _run_lines(run)
    return lines


def _run_lines(run: RunVerdict) -> list[str]:
    """One line for a run that is ok, one per problem: each its own line, whatever the
    run id holds (a writer's run id with a line break printed an "ok" line of its own
    for a run the log does not have)."""
    from engine.terminal import one_line

    run_id = one_line(run.run_id)
    if run.ok:
        checkpointed = f", checkpoint at {run.checkpoint}" if run.checkpoint is not None else ""
        return [f"{run_id}: ok ({run.events} events, {run.authentication}{checkpointed})"]
    return [
        f"{run_id}: FAILED {_where(problem)}{one_line(problem.problem)}" for problem in run.problems
    ]


def _where(problem: Problem) -> str:
    """``at position P (version V, type): `` with what is known of the place."""
    if problem.position is None:
        return f"at version {problem.version}: " if problem.version is not None else ""
    detail = ", ".join(
        part for part in (f"version {problem.version}", problem.type) if "None" not in part and part
    )
    return (
        f"at position {problem.position} ({detail}): "
        if detail
        else f"at position {problem.position}: "
    )


@cli.command()
@click.argument("run_id", required=False)
@db_option
def checkpoint(run_id: str | None, db: Path | None) -> None:
    """Print a checkpoint of each run (or of RUN_ID): JSON Lines to keep elsewhere.

    One line per run: run id, last version, hash at that version, time taken.
    Keep them where the log's writers cannot reach (git, another disk); `autonomy
    verify --checkpoints FILE` then fails a run that lost events after its
    checkpoint or whose history up to it was rewritten, even by someone holding
    the key. `autonomy run --checkpoint-file FILE` appends one when a run stops.

    Example:

    \b
        autonomy checkpoint >> ~/backup/autonomy.checkpoints
        autonomy verify --checkpoints ~/backup/autonomy.checkpoints
    """
    from engine.agent.runlog import refuse_tampered
    from events.checkpoints import dumps, take
    from events.errors import RunNotFound, StoreCorrupted
    from events.store import VerifyReport
    from projections.fold import shared_projections

    refused = 0
    verified: dict[tuple[str, int | None], VerifyReport] = {}  # each chain walked once
    with opened_log(db, read_only=True) as store, shared_projections():
        if run_id is not None and store.last_version(run_id) == 0:
            raise RunNotFound(run_id)
        for taken in take(store, [run_id] if run_id is not None else None):
            # a checkpoint vouches for the run up to it: none of one that fails
            # verification, which a later verify would then take for the truth
            try:
                refuse_tampered(
                    store, taken.run_id, taken.version, "no checkpoint was taken", verified
                )
            except StoreCorrupted as e:
                click.echo(f"Error: run {taken.run_id}: {e}", err=True)
                refused += 1
                continue
            click.echo(dumps(taken))
    if refused:
        raise click.exceptions.Exit(1)


def append_checkpoint(store: EventStore, run_id: str, path: Path) -> None:
    """Append the checkpoint of ``run_id`` to the file at ``path``, whole or not at
    all: a write cut short (a full disk) left half a line, and every later
    ``verify --checkpoints`` refused the file. ``CheckpointError`` says so."""
    from events.checkpoints import dumps, take
    from events.errors import CheckpointError

    lines = "".join(dumps(taken) + "\n" for taken in take(store, [run_id])).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, lines)
                if written != len(lines):
                    raise OSError(28, "the file took only part of the line (is the disk full?)")
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # as it was
                raise
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(
            f"run {run_id} is recorded in the log, but its checkpoint could not be appended "
            f"to {path}: {e.strerror or e}; nothing was added there (once it can be written: "
            f"autonomy checkpoint {run_id} >> {path})"
        ) from None


def check_checkpoint_file(path: Path) -> None:
    """``CheckpointError`` unless a checkpoint can be appended to ``path``: a regular
    file (made if missing) in a directory that is there; a FIFO, a device or a
    directory is refused without waiting on it."""
    import stat

    from events.errors import CheckpointError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise CheckpointError(f"cannot write the checkpoint file {path}: {e.strerror or e}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CheckpointError(f"the checkpoint file {path} is not a regular file")
    finally:
        os.close(fd)


def _read(path: Path) -> str:
    from events.errors import CheckpointError

    try:
        # opened without waiting: a FIFO no one writes waited for a writer for ever (one
        # that is written, <(git show ...), is then read to its end as a file is)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            data = f.read(CHECKPOINT_FILE_BYTES + 1)  # /dev/zero would be read for ever
        if len(data) > CHECKPOINT_FILE_BYTES:
            raise CheckpointError(
                f"the checkpoint file {path} is larger than {CHECKPOINT_FILE_BYTES:,} bytes, "
                "more than any log's checkpoints"
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read the checkpoint file {path}: {e}") from e


CHECKPOINT_FILE_BYTES = 256 * 1024 * 1024
"""The largest checkpoint file read: a line of about 200 bytes per run."""
