"""Counterfactual replay: the log answers up to a version, a live model after it.

``go_live(store, run_id, ...)`` first replays the run with the current code and
tool results from the log (``engine.runs.replay``), then forks it (``run.forked`` in
the same log, a workspace of its own restored from the blobs) and resumes the
fork with a live model, so that the recorded run and the new branch can be
compared (``autonomy diff``):

- ``live_from=V``: versions 1..V must replay identically (else the current code
  would not have reached V as recorded); the fork starts at V;
- ``continue_live=True``: the replay runs until its first divergence (a changed
  prompt, say); the fork starts before the step that holds it, so the current
  code takes that step again, live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from engine.agent.runlog import refuse_tampered
from engine.agent.runner import (
    Progress,
    ResumeRefused,
    check_models,
    model_client,
    refuse_unresumable,
    resume_run,
)
from engine.config import Settings, recorded_settings
from engine.runs.replay import ReplayRefused, ReplayResult, replay
from engine.runs.workspace import fork
from events.schema import ArbiterDecided, ModelRequested
from events.store import EventStore
from projections.fold import project


@dataclass(frozen=True)
class LiveBranch:
    """What ``go_live`` did."""

    run_id: str
    """The new run: a fork of the replayed one."""
    forked_at: int
    replayed: ReplayResult
    """The replay that led to the fork point."""
    status: str
    """The new run's status when it stopped."""


def go_live(
    store: EventStore,
    run_id: str,
    *,
    new_run_id: str,
    workspace: Path,
    settings: Callable[[Settings], Settings],
    live_from: int | None = None,
    continue_live: bool = False,
    http: httpx.Client | None = None,
    progress: Progress | None = None,
) -> LiveBranch:
    """Replay ``run_id`` up to a fork point, then continue a fork of it live.

    ``settings`` turns the run's recorded settings into the live ones (a model
    server, a model name). Raises ``ReplayRefused`` when the replay does not lead
    to the fork point."""
    if (live_from is None) == (not continue_live):
        raise ReplayRefused("give either a version to go live from, or continue_live")
    refuse_tampered(store, run_id, live_from, "nothing was replayed")
    if live_from is not None:
        result = replay(store, run_id, until=live_from, tools="recorded")
        if not result.identical:
            raise ReplayRefused(
                f"the current code does not replay versions 1..{live_from} of {run_id} as "
                f"recorded, so it would not have reached version {live_from}; go live at the "
                f"first divergence instead (--continue-live):\n{result.report()}"
            )
        at = live_from
    else:
        result = replay(store, run_id, tools="recorded")
        at = _step_start(store, run_id, result)
    # what would stop the branch once forked is found before it is: a fork point the
    # run cannot go on from, a model server that does not answer
    pipeline = project(store, run_id, upto=at).pipeline
    if pipeline.status == "waiting_for_input":
        raise ReplayRefused(
            f"{run_id} waits for an answer at version {at} ({pipeline.question}): a branch "
            "from there would wait too; go live from a version before the question or "
            "after its answer; nothing was forked"
        )
    try:
        refuse_unresumable(f"{run_id} at version {at}", pipeline)
    except ResumeRefused as e:
        raise ReplayRefused(f"{e}; nothing was forked") from e
    live = settings(recorded_settings(pipeline.config))
    client = model_client(live, http, None)
    try:
        check_models(client, live, None)
    finally:
        if http is None:  # made here
            client.http.close()
    fork(store, run_id, at, workspace, new_run_id=new_run_id)
    if progress:
        progress(f"forked {run_id} at version {at} as {new_run_id}; continuing live")
    resume_run(store, new_run_id, settings=live, http=http, progress=progress)
    return LiveBranch(new_run_id, at, result, project(store, new_run_id).pipeline.status)


def _step_start(store: EventStore, run_id: str, result: ReplayResult) -> int:
    """The last version before the step holding the first divergence."""
    if result.divergence is None:
        raise ReplayRefused(
            f"{result.report()}: nothing diverged; to go on live from a version, "
            f"give that version (--live-from)"
        )
    if result.diverged_in != run_id:
        raise ReplayRefused(
            f"{run_id} diverges in the run it was forked from, {result.diverged_in}; "
            f"continue that one live instead"
        )
    divergent = result.divergence.version
    # a step starts with the arbiter's request, or with its decision when the rules
    # decided it: the divergence may be in that request, before the step's decision
    # (the previous step was taken again live, its plan re-drawn)
    start, asked = divergent, None
    for event in store.read(run_id, upto=divergent):
        data = event.data
        if isinstance(data, ModelRequested) and data.conversation.startswith("arbiter:"):
            asked = asked or event.version
        elif isinstance(data, ArbiterDecided):
            start, asked = asked or event.version, None
    return max((asked or start) - 1, 1)
