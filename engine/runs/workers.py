"""Workers: runs queued in a PostgreSQL log, taken and run by any number of processes
on any number of machines.

``submit`` adds a row to the ``queue`` table (``events.postgres`` migration 2): the
goal and a workspace template. A worker takes the oldest row nobody holds with
``SELECT ... FOR UPDATE SKIP LOCKED`` on a connection of its own and keeps that
transaction open while the run goes on: the row lock is its claim. A run it starts
gets a fresh copy of the template as workspace; a run that already has events (its
worker died) is resumed from the log, in the workspace the log names. The engine
holds the run's lease as always. When the run ends the worker sets ``done_at`` and
commits. A worker killed in the middle loses its session: the server drops the row
lock and the lease together, and the next worker to look takes the run over.

The claim is a transaction as long as the run: it holds back VACUUM's horizon for
that long (fine for runs of minutes to hours on a log that is only appended to).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.agent.runner import new_run_id, resume_run, start_run
from engine.config import Settings
from events.errors import AutonomyError, EventStoreError, LeaseHeld
from events.store import EventStore
from projections import project

SettingsFor = Callable[[Path, Mapping[str, Any] | None], Settings]
"""The settings of a run: (its workspace, the config it recorded or None) -> Settings."""

_CLAIM_SQL = (
    "SELECT run_id, goal, template FROM queue WHERE done_at IS NULL"
    " ORDER BY submitted_at, run_id LIMIT 1 FOR UPDATE SKIP LOCKED"
)


def _postgres(store: EventStore) -> Any:
    url = getattr(store, "url", None)
    if url is None:
        raise EventStoreError("workers need a log on PostgreSQL: give --db postgresql://...")
    return url


def submit(store: EventStore, goal: str, template: Path, run_id: str | None = None) -> str:
    """Queue a run of ``goal`` in a copy of ``template``; returns its run id."""
    _postgres(store)
    if not template.is_dir():
        raise EventStoreError(f"the workspace template {template} is not a directory")
    run_id = run_id or new_run_id()
    if store.last_version(run_id) > 0:
        raise EventStoreError(f"run {run_id} is already in the log")
    connection = store.connection  # type: ignore[attr-defined]
    connection.execute(
        "INSERT INTO queue (run_id, goal, template) VALUES (?, ?, ?)",
        (run_id, goal, str(template.resolve())),
    )
    return run_id


@dataclass
class Worker:
    store: EventStore
    workdir: Path
    settings_for: SettingsFor
    progress: Callable[[str], None] = print
    poll: float = 0.2

    def run(self, *, once: bool, stop: threading.Event | None = None) -> int:
        """Take and run queued runs; with ``once``, return when every queued run is
        done (waiting while other workers hold some). Returns how many it ran."""
        import psycopg

        url = _postgres(self.store)
        ran = 0
        while stop is None or not stop.is_set():
            with psycopg.connect(url) as claim:
                row = claim.execute(_CLAIM_SQL).fetchone()
                if row is None:
                    claim.rollback()
                    left = claim.execute("SELECT count(*) FROM queue WHERE done_at IS NULL")
                    if once and left.fetchone()[0] == 0:  # type: ignore[index]
                        return ran
                    claim.rollback()
                    time.sleep(self.poll)
                    continue
                run_id, goal, template = row
                outcome = self._one(run_id, goal, Path(template))
                if outcome is None:  # another engine runs it (a manual resume)
                    claim.rollback()
                    time.sleep(self.poll)
                    continue
                claim.execute(
                    "UPDATE queue SET done_at = now(), outcome = %s WHERE run_id = %s",
                    (outcome, run_id),
                )
                claim.commit()
                ran += 1
        return ran

    def _one(self, run_id: str, goal: str, template: Path) -> str | None:
        """Start or resume one run; its final status (or the error that ended it)."""
        try:
            if self.store.last_version(run_id) == 0:
                workspace = self.workdir / run_id
                if workspace.exists():
                    shutil.rmtree(workspace)
                shutil.copytree(template, workspace, symlinks=True)
                self.progress(f"worker: starting {run_id} in {workspace}")
                settings = self.settings_for(workspace, None)
                start_run(
                    self.store,
                    goal=goal,
                    workspace=workspace,
                    settings=settings,
                    run_id=run_id,
                    progress=self.progress,
                )
            else:
                state = project(self.store, run_id)
                self.progress(f"worker: resuming {run_id} from version {state.version}")
                recorded = state.pipeline.config or None
                settings = self.settings_for(Path(state.pipeline.workspace), recorded)
                resume_run(self.store, run_id, settings=settings, progress=self.progress)
        except LeaseHeld:
            return None
        except (AutonomyError, OSError) as e:
            self.progress(f"worker: {run_id} ended with an error: {e}")
            return f"error: {e}"
        status = project(self.store, run_id).pipeline.status
        self.progress(f"worker: {run_id} {status}")
        return str(status)
