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

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from engine.agent.runlog import RUN_ID, check_run_id
from engine.agent.runner import (
    STOPPED_WITH_WORKER,
    Stop,
    check_goal,
    finished,
    hidden_from_commands,
    new_run_id,
    resume_run,
    start_run,
    workspace_lock,
)
from engine.config import Settings
from engine.errors import PreflightFailed
from engine.runs.workspace import copy_workspace, finish_cut_rewind
from engine.tools.sandbox import remove_tree
from events.errors import AutonomyError, EventStoreError, LeaseHeld, StoreUnavailable
from events.store import EventStore
from projections import project

OUTAGE_WAIT = 5.0
"""The longest a worker waits between two tries to reach a log it lost."""

_RAN, _BUSY, _EMPTY = object(), object(), object()


def log_lost(
    error: StoreUnavailable, waited: float, poll: float, progress: Callable[[str], None]
) -> float:
    """The next wait of a worker that cannot reach its log (``poll`` doubled each time,
    up to ``OUTAGE_WAIT``), after ``waited``; said once, at the first."""
    if not waited:
        progress(f"worker: the log cannot be reached ({error}); waiting for it")
    return min(max(waited * 2, poll), OUTAGE_WAIT)


def _sleep(seconds: float, stop: threading.Event | None) -> None:
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


SettingsFor = Callable[[Path, Mapping[str, Any] | None], Settings]
"""The settings of a run: (its workspace, the config it recorded or None) -> Settings."""

_CLAIM_SQL = (
    "SELECT run_id, goal, template FROM queue WHERE done_at IS NULL"
    " ORDER BY run_id = ANY(%s), submitted_at, run_id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
"""The oldest queued run no other worker has claimed, those found held by another
engine (``Worker._held``: a resume by hand) last: one of them at the head of the
queue kept every run queued after it waiting."""


def _postgres(store: EventStore) -> Any:
    url = getattr(store, "url", None)
    if url is None:
        raise EventStoreError("workers need a log on PostgreSQL: give --db postgresql://...")
    return url


def submit(store: EventStore, goal: str, template: Path, run_id: str | None = None) -> str:
    """Queue a run of ``goal`` in a copy of ``template``; returns its run id."""
    _postgres(store)
    check_goal(goal)
    if run_id is not None:
        check_run_id(run_id)
    if not template.is_dir():
        raise EventStoreError(f"the workspace template {template} is not a directory")
    run_id = run_id or new_run_id()
    if store.last_version(run_id) > 0:
        raise EventStoreError(f"run {run_id} is already in the log")
    connection = store.connection  # type: ignore[attr-defined]
    # one statement, so that two submits of one id at once are one queued run and one
    # clear refusal (not the driver's "duplicate key value violates...")
    added = connection.execute(
        "INSERT INTO queue (run_id, goal, template) VALUES (?, ?, ?)"
        " ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
        (run_id, goal, str(template.resolve())),
    ).fetchall()
    if not added:
        raise EventStoreError(f"run {run_id} is already queued")
    return run_id


@dataclass
class Worker:
    store: EventStore
    workdir: Path
    settings_for: SettingsFor
    progress: Callable[[str], None] = print
    poll: float = 0.2
    _waited: float = field(default=0.0, init=False)
    """The last wait between two tries to reach the log; 0 while it can be reached."""
    _busy: float = field(default=0.0, init=False)
    """The last wait for a queued run another engine holds; 0 once one ran."""
    _directory: str = field(default="", init=False)
    """``_log_directory``, once worked out."""
    _held: set[str] = field(default_factory=set, init=False)
    """Queued runs found held by another engine (said once each)."""
    interrupt: threading.Event | None = None
    """Set: the run in progress stops at its next step, as on Ctrl-C (recorded as
    stopped, resumable), and ``run`` raises ``RunInterrupted``. What a worker whose
    other thread got the Ctrl-C does (only one thread gets the signal)."""

    def _log_directory(self) -> str:
        """The directory of ``workdir`` this log's new runs are made in: its schema's
        name (or, for a name that is no file name, a digest of it). Workers of two
        logs (a schema per team) sharing a workdir both had a ``job-0``: the second
        removed the first's finished workspace, and ran its own run there, so the
        other log's completed run named another run's files."""
        if not self._directory:
            row = cast(Any, self.store).connection.execute("SELECT current_schema()").fetchone()
            schema = str(row[0]) if row and row[0] else "log"
            safe = RUN_ID.fullmatch(schema)
            digest = hashlib.sha256(schema.encode()).hexdigest()[:16]
            self._directory = schema if safe else f"schema-{digest}"
        return self._directory

    def _said(self, line: str) -> None:
        """``progress``, and where the run stops when the worker is interrupted."""
        self.progress(line)
        if self.interrupt is not None and self.interrupt.is_set():
            raise Stop(STOPPED_WITH_WORKER)

    def run(self, *, once: bool, stop: threading.Event | None = None) -> int:
        """Take and run queued runs; with ``once``, return when every queued run is
        done (waiting while other workers hold some). Returns how many it ran.

        While the log cannot be reached (``StoreUnavailable``: the server down or
        refusing, before or in the middle of a run) the worker says so once and
        tries again, every ``poll`` seconds doubled up to ``OUTAGE_WAIT``: a run cut
        off stays queued, and is resumed from its log once the log is back."""
        url = _postgres(self.store)
        ran = 0
        while stop is None or not stop.is_set():
            try:
                outcome = self._take(url, once)
            except StoreUnavailable as e:
                self._waited = log_lost(e, self._waited, self.poll, self.progress)
                _sleep(self._waited, stop)
                continue
            if outcome is _EMPTY:
                return ran
            if outcome is _BUSY:
                # another engine holds the run taken (a resume by hand): it will be a
                # while; tried again less and less often, not every poll (which
                # projected the run and printed "resuming" five times a second)
                self._busy = min(max(self._busy * 2, self.poll), OUTAGE_WAIT)
                _sleep(self._busy, stop)
                continue
            self._busy = 0.0
            ran += 1
        return ran

    def _take(self, url: str, once: bool) -> object:
        """Claim the oldest queued run nobody holds and run it: ``_RAN``, or ``_BUSY``
        (none free now, or another engine runs the one taken), or ``_EMPTY`` (with
        ``once``: none left at all)."""
        import psycopg

        from events.postgres import KEEPALIVES, mapped_error

        where = "taking a queued run"
        try:
            # closed, not left by ``with`` (which rolls back first, and warns when the
            # server is gone): what is not committed ends with the session
            timeout = getattr(self.store, "connect_timeout", None)
            with contextlib.closing(
                psycopg.connect(url, connect_timeout=timeout, **KEEPALIVES)
            ) as claim:
                # the claim's transaction lasts the whole run: an administrator's idle
                # timeout ending it handed the run to another worker mid-run
                claim.execute("SET idle_in_transaction_session_timeout = 0")
                claim.commit()
                if self._waited:
                    self.progress("worker: the log can be reached again")
                    self._waited = 0.0
                row = claim.execute(_CLAIM_SQL, (sorted(self._held),)).fetchone()
                if row is None:
                    claim.rollback()
                    left = claim.execute("SELECT count(*) FROM queue WHERE done_at IS NULL")
                    none_left = left.fetchone()[0] == 0  # type: ignore[index]
                    claim.rollback()
                    return _EMPTY if once and none_left else _BUSY
                run_id, goal, template = row
                where = f"marking run {run_id} done"
                try:
                    outcome = self._one(run_id, goal, Path(template))
                except PreflightFailed as e:
                    # this worker cannot reach its model (its server down, a model it
                    # lacks): the run stays queued, for it later or another worker. It
                    # marked every queued run done with that error, a run it was to
                    # resume too, which the log then called running for ever
                    claim.rollback()
                    if once:
                        raise
                    if run_id not in self._held:
                        self._held.add(run_id)
                        self.progress(f"worker: {e}; {run_id} stays queued")
                    return _BUSY
                if outcome is None:  # another engine runs it (a manual resume)
                    claim.rollback()
                    return _BUSY
                claim.execute(
                    "UPDATE queue SET done_at = now(), outcome = %s WHERE run_id = %s",
                    (outcome, run_id),
                )
                claim.commit()
                return _RAN
        except psycopg.Error as e:
            raise mapped_error(e, where) from e

    def _one(self, run_id: str, goal: str, template: Path) -> str | None:
        """Start or resume one run; its final status (or the error that ended it).
        ``StoreUnavailable`` is raised: the run is not done, it waits for its log."""
        try:
            # the queue is written by whoever may write the log: its run id becomes a
            # directory here, so it must not be a path ("../x" was removed, then used)
            check_run_id(run_id)
            if self.store.last_version(run_id) == 0:
                workspace = self.workdir / self._log_directory() / run_id
                if workspace.exists():
                    # another run working in it (a run of another log, whose workers
                    # share this workdir: a schema per team) is LeaseHeld: not removed
                    with workspace_lock(workspace, run_id):
                        pass
                    remove_tree(workspace)
                copy_workspace(template, workspace, hidden_from_commands(self.store))
                if run_id not in self._held:
                    self.progress(f"worker: starting {run_id} in {workspace}")
                settings = self.settings_for(workspace, None)
                start_run(
                    self.store,
                    goal=goal,
                    workspace=workspace,
                    settings=settings,
                    run_id=run_id,
                    progress=self._said,
                )
            else:
                state = project(self.store, run_id)
                if finished(state.pipeline):
                    # by another engine (a worker whose claim was lost, a resume by
                    # hand): done, with how it ended, not "resumed" into an error
                    status = state.pipeline.status
                    self.progress(f"worker: {run_id} was {status} already")
                    return str(status)
                if run_id not in self._held:
                    self.progress(f"worker: resuming {run_id} from version {state.version}")
                recorded = state.pipeline.config or None
                settings = self.settings_for(Path(state.pipeline.workspace), recorded)
                resume_run(
                    self.store, run_id, settings=settings, progress=self._said,
                    prepare=finish_cut_rewind,
                )  # fmt: skip
        except LeaseHeld as e:
            if run_id not in self._held:
                self._held.add(run_id)
                self.progress(f"worker: {e}; it stays queued")
            return None
        except PreflightFailed:
            raise  # the worker's own trouble, not the run's end (``_take``)
        except StoreUnavailable:
            raise
        except (AutonomyError, OSError) as e:
            self.progress(f"worker: {run_id} ended with an error: {e}")
            return f"error: {e}"
        status = project(self.store, run_id).pipeline.status
        self.progress(f"worker: {run_id} {status}")
        return str(status)
