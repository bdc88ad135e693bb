"""Replay: re-execute a recorded run with the current code, its inputs from the log.

``replay(store, run_id)`` starts the run again in an in-memory log under the same
run id (so call ids and task ids come out the same), with the engine unchanged
except for where its inputs come from (``engine.runs.replay_sources``): model answers
from the log, after a check that each request is the recorded one; tool results
live, in a scratch copy of the workspace restored from the blobs
(``engine.runs.workspace.restore``), or with ``tools="recorded"`` from the log.

One driver loop replays every kind of run. Before each step of the engine it
looks at the recorded event that comes next: if it is an input the world gave
the run rather than something the engine wrote (``run.started``, ``run.forked``,
``user.answered``, ``run.rewound``, ``run.resumed``, and a ``tool.executed``
settling a tool left pending by a stop, which recovery wrote), the replay takes it
from the log, brings the scratch workspace to the recorded state and starts a
fresh engine, as ``autonomy answer``, ``rewind``, ``fork`` and ``resume`` do;
otherwise its engine steps. Where the recorded engine was stopped (killed,
crashed, rewound while running), the replay's is stopped at the same point
(``Interrupted``). A fork is replayed as its parent up to the fork point, then its
own events.

The events written are then compared with the recorded ones, version by version
(``engine.runs.divergence``). A request the log never answered stops the replay with
``RequestNotRecorded``, whose message says what changed in the request. The
result is "identical (N events)" or the first divergence with a diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.agent.runlog import RunLog
from engine.agent.runner import Engine, confine_commands, is_user_stop
from engine.config import Settings, ToolSettings, recorded_settings
from engine.runs import TOOL_SOURCES, ToolSource
from engine.runs.divergence import Divergence, Normaliser, compare
from engine.runs.replay_sources import (
    Interrupted,
    RecordedTools,
    Recording,
    ReplayClient,
    RequestNotRecorded,
    settled_by_recovery,
)
from engine.runs.workspace import restore
from engine.tools.sandbox import temporary_directory
from events.errors import AutonomyError, EventStoreError
from events.memory import MemoryEventStore
from events.schema import (
    Event,
    ModelContextLearned,
    RunForked,
    RunResumed,
    RunRewound,
    RunStarted,
    TaskUpdated,
    ToolExecuted,
    UserAnswered,
)
from events.store import EventStore, RecordedEvent
from projections.fold import RunState, shared_projections
from projections.pipeline import PipelineState

__all__ = [
    "Divergence",
    "Recording",
    "ReplayClient",
    "ReplayRefused",
    "ReplayResult",
    "RequestNotRecorded",
    "replay",
]


INPUTS = (RunStarted, RunForked, UserAnswered, RunRewound, RunResumed, ModelContextLearned)
"""Events the world gives a run (a person, ``resume`` after a stop, a model server
saying its context window); the replay takes them from the log."""


def scratch_store() -> MemoryEventStore:
    """The log a replay writes to: compared by payload, never verified, so neither
    hashed nor timed."""
    return MemoryEventStore(chained=False, clock=_scratch_time)


def _scratch_time() -> datetime:
    return _EPOCH


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ReplayRefused(AutonomyError):
    """This run cannot be replayed."""


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    compared: int
    """How many events were compared (a fork's parent's included)."""
    divergence: Divergence | None = None
    diverged_in: str = ""
    """The run whose events diverged: ``run_id``, or a parent it was forked from."""
    inherited: int = 0
    """How many of ``compared`` are of the runs ``run_id`` was forked from."""

    @property
    def identical(self) -> bool:
        return self.divergence is None

    def report(self) -> str:
        if self.divergence is None:
            if self.inherited:
                # a fork of one event said "identical (41 events)", with no word of
                # the 40 of its parent that made them 41
                own = self.compared - self.inherited
                return (
                    f"identical ({self.compared} events: {own} of {self.run_id}, "
                    f"{self.inherited} of the runs it was forked from up to the fork)"
                )
            return f"identical ({self.compared} events)"
        d = self.divergence
        where = (
            # a parent, or a parent's parent: which one is said by its id
            f" of {self.diverged_in} (a run {self.run_id} was forked from)"
            if self.diverged_in != self.run_id
            else ""
        )
        return f"diverged at version {d.version}{where}: {d.title}\n{d.diff}"

    def document(self) -> dict[str, Any]:
        """As plain JSON types, for ``--json``."""
        return {
            "run_id": self.run_id,
            "identical": self.identical,
            "compared": self.compared,
            "inherited": self.inherited,
            "diverged_in": self.diverged_in or None,
            "divergence": self.divergence.document() if self.divergence else None,
        }


def replay(
    store: EventStore,
    run_id: str,
    *,
    until: int | None = None,
    scratch: Path | None = None,
    tools: ToolSource = "live",
    here: ToolSettings | None = None,
) -> ReplayResult:
    """Re-execute ``run_id`` with the current code and compare what it writes with
    the log (up to version ``until``, if given). ``scratch`` is the directory the
    tools work in; a temporary one (removed afterwards) by default. ``tools``:
    ``"live"`` runs the tools, ``"recorded"`` takes their results from the log.
    ``here``: how this machine's person would have commands confined (the recorded
    run's confinement holds only where it is tighter: ``recorded_settings``)."""
    if tools not in TOOL_SOURCES:
        raise ReplayRefused(f"tools must be one of {', '.join(TOOL_SOURCES)}, not {tools!r}")
    with shared_projections():  # a fork's parent is folded once, however many forks
        return _replay_run(store, run_id, until, scratch, tools, here)


def _replay_run(
    store: EventStore,
    run_id: str,
    until: int | None,
    scratch: Path | None,
    tools: ToolSource,
    here: ToolSettings | None,
) -> ReplayResult:
    recording = Recording(store, run_id, until)
    _check_replayable(recording)
    recorded_workspace = getattr(recording.events[0].data, "workspace", "")
    if until is not None and not 1 <= until <= len(recording.events):
        raise ReplayRefused(
            f"run {run_id} has versions 1 to {len(recording.events)}; {until} is not one of them"
        )
    live = tools == "live"
    if scratch is None:
        with temporary_directory("autonomy-replay-") as tmp:
            # what a command prints of its directory must be cut where the recorded one was
            where = as_long_as(tmp, recorded_workspace) if live else tmp
            return _replay(recording, where, live, here)
    return _replay(recording, scratch, live, here)


def as_long_as(base: Path, recorded: str) -> Path:
    """A directory under ``base`` whose path is as long as the ``recorded`` workspace's,
    where ``base`` is no longer: a command's output that names its directory (pytest's
    "rootdir:") and is longer than the output cap is cut at the same places, so that
    it differs from the recorded one only where the path does, which the comparison
    reads as the same (a scratch path of another length shifted the cut: a divergence
    in a run nothing happened to)."""
    pad = len(recorded) - len(str(base)) - 1  # the next name's length, "/" aside
    path = base
    while pad > 0:
        size = min(pad, 200)  # a name may be 255 bytes
        if pad - size - 1 == 0:  # one character would be left, which no "/name" makes
            size -= 1
        path = path / ("w" * size)
        pad -= size + 1
    return path


def _check_replayable(recording: Recording) -> None:
    first = recording.events[0].data
    if not isinstance(first, RunStarted | RunForked):
        raise ReplayRefused(f"run {recording.run_id} starts with {recording.events[0].type}")


def _replay(
    recording: Recording, scratch: Path, live: bool, here: ToolSettings | None
) -> ReplayResult:
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()
    memory = scratch_store()
    compared = inherited = 0
    for segment in _segments(recording, memory, scratch, live, here):
        segment.drive()
        result = segment.result()
        compared += result.compared
        if not result.identical:
            return ReplayResult(recording.run_id, compared, result.divergence, result.run_id)
        if segment.recording is not recording:
            inherited += result.compared
    return ReplayResult(recording.run_id, compared, inherited=inherited)


def _segments(
    recording: Recording,
    memory: MemoryEventStore,
    scratch: Path,
    live: bool,
    here: ToolSettings | None,
) -> list[_Segment]:
    """The runs to replay in order: a fork's ancestors up to each fork point, then
    the run itself. Their logs are made as each one starts."""
    chain = [recording]
    while (forked := chain[0].forked) is not None:
        chain.insert(0, Recording(recording.store, forked.parent_run, forked.at_version))
    return [_Segment(r, memory, scratch, live, here) for r in chain]


@dataclass
class _Segment:
    """One run of the chain, replayed into ``memory``."""

    recording: Recording
    memory: MemoryEventStore
    scratch: Path
    live: bool
    here: ToolSettings | None = None
    """The confinement given here: the recorded one holds where it is tighter."""
    settings: Settings = field(default_factory=Settings)
    stopped: AutonomyError | None = None
    log: _ReplayLog | None = None
    produced: list[RecordedEvent] = field(default_factory=list)
    """What this segment's log was written, as appended (nothing to read back)."""

    def drive(self) -> None:
        """Take inputs from the log and step the engine until the recorded run ends."""
        recording = self.recording
        log = self._start()
        client = ReplayClient(recording, self._normaliser(log.pipeline))
        log.listeners.append(client.observe)
        tools = RecordedTools(recording, log, live=self.live)
        confinement = (
            confine_commands(self.settings, recording.store).seen_at(log.pipeline.workspace)
            if self.live
            else None
        )
        engine: Engine | None = None
        try:
            while True:
                recorded = recording.event(log.version + 1)
                if recorded is None:
                    return  # the recorded run ends here (or at ``until``)
                if _is_input(recorded, log.pipeline, recording):
                    self._take(log, recorded)
                    engine = None
                    continue
                if log.pipeline.status != "running":
                    return
                if engine is None:
                    engine = Engine(
                        log,
                        settings=self.settings,
                        client=client,
                        workspace=self.scratch,
                        run_tool=tools,
                        confinement=confinement,
                    )
                before = log.version
                try:
                    engine.step()
                except Interrupted:
                    # the recorded engine was stopped here; what follows is a new one's
                    engine = None
                    if log.version == before and not _is_input_next(recording, log):
                        return
        except AutonomyError as e:
            self.stopped = e
        finally:
            client.close()

    def _start(self) -> _ReplayLog:
        recording = self.recording
        first = recording.events[0]
        if isinstance(first.data, RunForked):
            self.produced += self.memory.append(
                recording.run_id, [first.data], 0, causation=first.causation
            )
            log = _ReplayLog(self.memory, recording.run_id)
            log.listeners.append(self.produced.append)
        else:
            log = _ReplayLog(self.memory, recording.run_id, RunState(run_id=recording.run_id))
            log.listeners.append(self.produced.append)
            log.take(first)
            if self.live:
                restore(
                    recording.store,
                    recording.run_id,
                    0,
                    self.scratch,
                    copy_from=Path(log.pipeline.workspace),
                )
        log.recording = recording
        config = log.pipeline.config
        self.settings = recorded_settings(config, self.here)
        self.log = log
        if isinstance(first.data, RunForked):
            self._restore(log)
        return log

    def _take(self, log: _ReplayLog, recorded: RecordedEvent) -> None:
        log.take(recorded)
        data = recorded.data
        if isinstance(data, RunResumed) and data.config:
            self.settings = recorded_settings(data.config, self.here)
        self._restore(log)

    def _restore(self, log: RunLog) -> None:
        # the recorded workspace at this version; nothing reads it when no tool runs
        if self.live:
            restore(self.recording.store, self.recording.run_id, log.version, self.scratch)

    def _normaliser(self, pipeline: PipelineState) -> Normaliser:
        return Normaliser(self.scratch, pipeline.workspace)

    def result(self) -> ReplayResult:
        """The comparison of what this segment wrote with its recording."""
        assert self.log is not None
        recording, log = self.recording, self.log
        normalise = self._normaliser(log.pipeline)
        run_id = recording.run_id
        until = recording.until
        produced = self.produced
        expected = recording.events
        if until is not None:
            expected = [e for e in expected if e.version <= until]
            produced = [e for e in produced if e.version <= until]
        stopped = self.stopped
        if (
            isinstance(stopped, RequestNotRecorded)
            and produced
            and produced[-1].version == log.version
        ):
            # the request itself is what differs: compare what came before it, then say how
            asked = produced[-1]
            at = expected[asked.version - 1] if asked.version <= len(expected) else None
            if at is not None and at.type != asked.type:
                # the recorded run did something else here (ended the task, say): that is
                # the divergence, not the next recorded request, of another conversation
                divergence = compare(expected[: asked.version], produced, normalise)
                if divergence is not None:
                    return ReplayResult(run_id, divergence.version, divergence, run_id)
            divergence = compare(expected[: asked.version - 1], produced[:-1], normalise)
            if divergence is None:
                recorded = (
                    expected[asked.version - 1].type if asked.version <= len(expected) else "(none)"
                )
                detail = str(stopped).removeprefix(stopped.headline).lstrip("\n")
                divergence = Divergence(
                    asked.version, recorded, asked.type, detail, headline=stopped.headline
                )
            return ReplayResult(run_id, asked.version, divergence, run_id)
        divergence = compare(expected, produced, normalise)
        if stopped is not None and (divergence is None or divergence.version > len(produced)):
            # what it wrote is the recorded run's: the error is why it wrote no more (a
            # blob the log lacks was "the replay stopped before the recorded run's
            # model.responded", with no word of the blob)
            unwritten = len(produced) + 1
            divergence = Divergence(
                unwritten,
                expected[unwritten - 1].type if unwritten <= len(expected) else "(none)",
                "(error)",
                f"  {stopped}" + (_LOG_AT_FAULT if isinstance(stopped, EventStoreError) else ""),
                headline=f"the replayed engine stopped with an error: {type(stopped).__name__}",
            )
        return ReplayResult(run_id, len(expected), divergence, run_id)


_LOG_AT_FAULT = (
    "\n  the log cannot give the replay what the recorded run had: `autonomy verify` "
    "says what else is missing or changed"
)


def _is_input(recorded: RecordedEvent, pipeline: PipelineState, recording: Recording) -> bool:
    """Whether the world gave the run this event (see ``INPUTS``): a settled tool is
    one left pending by a stop, which no engine of the replay is running; a task
    change caused by ``run.resumed`` (or, in a log older than ``run.resumed``, in
    recovery's words) is what recovery made of a command the stop cut."""
    data = recorded.data
    if isinstance(data, INPUTS) or is_user_stop(data):
        return True
    if isinstance(data, ToolExecuted):
        return data.call_id in pipeline.pending_tools
    if isinstance(data, TaskUpdated) and recorded.causation:
        cause = recording.event(recorded.causation)
        # a log older than run.resumed: recovery's words say what it wrote
        return cause is not None and (
            isinstance(cause.data, RunResumed)
            or (recording.by_words(recorded.version) and settled_by_recovery(data))
        )
    return False


def _is_input_next(recording: Recording, log: RunLog) -> bool:
    recorded = recording.event(log.version + 1)
    return recorded is not None and _is_input(recorded, log.pipeline, recording)


class _ReplayLog(RunLog):
    """The replay's run log: refuses to write where the recorded engine had stopped
    (``Interrupted``), and takes inputs from the recording."""

    recording: Recording | None = None

    def append(self, *events: Event, causation: int | None = None) -> list[RecordedEvent]:
        if self.recording is not None and self.recording.stopped_at(self.version + 1):
            raise Interrupted(f"the recorded run stopped after version {self.version}")
        return super().append(*events, causation=causation)

    def take(self, recorded: RecordedEvent) -> None:
        """Append an input as the recording has it."""
        super().append(recorded.data, causation=recorded.causation)
