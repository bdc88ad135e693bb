"""CLI commands: orchestration. Registered on the group (``engine.cli.base.cli``) when this module is imported."""

from __future__ import annotations

from pathlib import Path

import click

from engine.cli.base import cli, db_option, opened_log


@cli.command()
@click.argument("run_id")
@click.argument("text")
@db_option
def answer(run_id: str, text: str, db: Path | None) -> None:
    """Answer the question a waiting run asked; then `autonomy resume RUN_ID`.

    The answer is recorded as a `user.answered` event and the run is running
    again; the arbiter sees the question and the answer in its next prompt.

    Example:

    \b
        autonomy answer run-20261124-101500-ab12 "Use Python 3.12 only"
        autonomy resume run-20261124-101500-ab12
    """
    from engine.agent.runlog import answer_question

    with opened_log(db) as store:
        question = answer_question(store, run_id, text)
        click.echo(
            f"answered {question!r} for run {run_id}; continue with: autonomy resume {run_id}"
        )
