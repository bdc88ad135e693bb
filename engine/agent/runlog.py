"""``RunLog``: one run's stream, as the engine writes and reads it.

It is the engine's only way to change the world (``append``) and its only source of
facts (``state``, the projection of everything appended so far). The state is not
kept beside the log: it is the fold of the log, extended by exactly the events
each ``append`` wrote, and the store's expected-version check guarantees nobody
else wrote in between (a second writer gets ``ConcurrencyError``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine.errors import ConfigError, NotWaiting
from engine.terminal import clipped, one_line
from events.errors import ConcurrencyError, StoreCorrupted
from events.schema import Event, UserAnswered
from events.store import EventStore, KeyedMark, RecordedEvent, VerifyReport, check_keyed_marker
from projections.fold import RunState, apply, fork_lineage, project
from projections.orchestration import OrchestrationState
from projections.pipeline import PipelineState

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a new run may be called: a run id names directories (a worker's workspace,
a counterfactual branch's), so never a path ("../x") nor anything a shell or a URL
would read otherwise."""


def check_run_id(run_id: str) -> str:
    """``run_id``, or ``ConfigError`` when it is not one ``RUN_ID`` allows."""
    if not RUN_ID.fullmatch(run_id):
        raise ConfigError(
            f"run id {run_id!r} is not allowed: 1 to 128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run_id


class RunLog:
    """Appends to one run and keeps its projection current."""

    def __init__(self, store: EventStore, run_id: str, state: RunState | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.state = state if state is not None else project(store, run_id)
        self.listeners: list[Callable[[RecordedEvent], None]] = []
        """Called with each event once it is appended and folded: what a face shows
        live (a failed model call on the terminal). They observe; they decide nothing."""

    @classmethod
    def create(cls, store: EventStore, run_id: str, first: Event) -> RunLog:
        """Start a new run with its first event; fails if the run id is taken."""
        log = cls(store, run_id, RunState(run_id=run_id))
        log.append(first)
        return log

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def pipeline(self) -> PipelineState:
        return self.state.pipeline

    @property
    def orchestration(self) -> OrchestrationState:
        return self.state.orchestration

    def append(self, *events: Event, causation: int | None = None) -> list[RecordedEvent]:
        """Append ``events`` atomically after the version this log has seen."""
        recorded = self.store.append(self.run_id, events, self.version, causation=causation)
        state = self.state
        for event in recorded:
            state = apply(state, event)
        self.state = state
        for listener in self.listeners:
            for event in recorded:
                listener(event)
        return recorded

    def next_id(self, prefix: str) -> str:
        """An id for something the next event introduces: stable across replays."""
        return f"{self.run_id}/{prefix}{self.version + 1}"


def refuse_tampered(
    store: EventStore,
    run_id: str,
    upto: int | None,
    nothing: str,
    verified: dict[tuple[str, int | None], VerifyReport] | None = None,
) -> None:
    """``StoreCorrupted`` unless ``run_id``'s events up to ``upto`` (all by default),
    and those of each run it was forked from up to its fork point, keep their chain
    (``EventStore.verify``), keyed where the log's keyed mark says they must be: a
    command that acts on a run (fork, rewind, resume, replay) acted on an edited event
    as if it were the log's, a fork of an edited run was a new run that verified, and
    a run forged with a plain sha256 chain in a keyed log was replayed ("identical")
    and forked into a keyed run. ``nothing``: what was not done. ``verified``: the
    reports of the chains already walked, kept by a caller that checks many runs (a
    log of 1,000 forks of forks walked each ancestor's again for each fork)."""
    mark = keyed_mark(store)
    problems = [f"the log's keyed mark fails: {mark.problem}"] if mark and mark.problem else []
    problems += lineage_problems(store, fork_lineage(store, run_id, upto)[::-1], mark, verified)
    if problems:
        raise StoreCorrupted(f"{problems[0]}; {nothing} (autonomy verify says more)")


def keyed_mark(store: EventStore) -> KeyedMark | None:
    """What the log's keyed mark says (None: no run was ever written keyed)."""
    marker = store.keyed_marker()
    return check_keyed_marker(marker, store.key) if marker is not None else None


def lineage_problems(
    store: EventStore,
    lineage: list[tuple[str, int | None]],
    mark: KeyedMark | None,
    verified: dict[tuple[str, int | None], VerifyReport] | None = None,
) -> list[str]:
    """What is wrong with the chains of ``lineage`` (runs, each up to a version, as
    ``fork_lineage`` lists them), one line per run that fails: its chain broken, or
    unkeyed where the log's keyed ``mark`` wants it keyed (rewritten without the key)."""
    problems = []
    for run, until in lineage:
        report = verified.get((run, until)) if verified is not None else None
        if report is None:
            report = store.verify(run, upto=until)
            if verified is not None:
                verified[(run, until)] = report
        if not report.ok:
            problems.append(
                f"run {run} fails verification at version {report.first_bad_version}: "
                f"{report.problem}"
            )
        elif mark is not None and report.authentication == "unkeyed" and report.checked:
            first = next(iter(store.read(run, upto=1)), None)
            if text := unkeyed_problem(mark, run, "unkeyed", first.position if first else None):
                problems.append(f"run {run}: {text}")
    return problems


def unkeyed_problem(
    mark: KeyedMark | None, run_id: str, authentication: str, first_position: int | None
) -> str:
    """Why run ``run_id`` (whose first row is at ``first_position``) was rewritten
    without the key: its chain is unkeyed where the log's keyed ``mark`` wants it
    keyed; "" when it is not so. Verify's rule, and of every command that acts on a run."""
    if mark is None or authentication != "unkeyed" or mark.allows_unkeyed(run_id, first_position):
        return ""
    return (
        f"the log is written keyed from position {mark.position}, but this run's chain is "
        "unkeyed: it was rewritten without the key"
    )


def answer_question(store: EventStore, run_id: str, text: str) -> str:
    """Record ``text`` as the answer to the question run ``run_id`` is waiting on
    (a ``user.answered`` event); returns the question. ``ConfigError`` when the run
    is not waiting (``NotWaiting``) or the answer is empty, ``RunNotFound`` for an
    unknown run."""
    log = RunLog(store, run_id)
    status = log.pipeline.status
    if status != "waiting_for_input":
        raise NotWaiting(
            _answered_already(log) or f"run {run_id} is {status}, not waiting for an answer"
        )
    if not text.strip():
        raise ConfigError("the answer is empty")
    question = log.pipeline.question
    try:
        log.append(UserAnswered(answer=text), causation=log.version)
    except ConcurrencyError:  # two answers at once: the other was written first
        if said := _answered_already(RunLog(store, run_id)):
            raise NotWaiting(said) from None
        raise
    return question


def _answered_already(log: RunLog) -> str:
    """What to say when ``log``'s question was answered (its last event the answer),
    and the run not resumed since; "" otherwise."""
    last = next(iter(log.store.read(log.run_id, after=log.version - 1)), None)
    if last is None or not isinstance(last.data, UserAnswered):
        return ""
    return (
        f"run {log.run_id} was answered already ({clipped(one_line(last.data.answer), 80)!r}, at "
        f"{last.recorded_at}); it goes on with: autonomy resume {log.run_id}"
    )
