"""Replay: re-execute a recorded run with the current code, the model answering from the log.

``replay(store, run_id)`` starts the run again from its own ``run.started`` in an
in-memory log under the same run id (so call ids and task ids come out the same),
with the engine unchanged except for its model client: a ``ReplayClient`` answers
the i-th model request with the i-th recorded answer (and replays the recorded
failed attempts before it), after checking that the request is the one the
recorded run made. Tools really run, in a scratch copy of the workspace restored
from the blobs as it was when the run started (``engine.workspace.restore``).

A request the log never answered stops the replay with ``RequestNotRecorded``,
whose message names the model request and says which messages changed and how.
Then the events the replay produced are compared with the recorded ones, version
by version, ignoring what cannot repeat: times, positions, hashes and digests,
durations, and the timings and workspace path inside texts (``Normaliser``). The
result is "identical (N events)" or the first divergence with a diff.

A rewound run replays too: where the recorded run was rewound, the replay appends
the same ``run.rewound``, restores its scratch workspace to that version and goes
on as ``autonomy resume`` does. A fork is refused (``ReplayRefused``): replay its
parent. Events that only a crash writes (a recovered tool) show as divergences.
"""

from __future__ import annotations

import difflib
import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec

from engine.config import Settings, settings_from_mapping
from engine.errors import (
    ModelDeadline,
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelResponseTooLarge,
    ModelTimeout,
    ModelUnavailable,
    ReplayDivergence,
)
from engine.model.bounds import Bounds, RetryPolicy
from engine.model.client import FailedAttempt, ModelClient, OnFailure
from engine.model.recording import request_digest
from engine.model.roles import Endpoint
from engine.model.stored import full_answer, full_message
from engine.model.wire import NO_OPTIONS, ChatOptions, ModelReply
from engine.runlog import RunLog
from engine.runner import Engine
from engine.workspace import restore
from events.errors import AutonomyError, RunNotFound
from events.memory import MemoryEventStore
from events.schema import (
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunForked,
    RunRewound,
    RunStarted,
)
from events.store import EventStore, RecordedEvent
from projections.fold import EMPTY, RunState, apply

IGNORED_FIELDS = frozenset(
    {"duration_ms", "request_digest", "result_ref", "content_ref", "endpoint"}
)
"""Payload fields that cannot repeat: measured durations, digests of texts that
hold timings (the texts themselves are compared, normalised), and the address of
the model server (a resume may point at another; the model's name is compared)."""

TIMING = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|s|sec|seconds?)\b")
"""A duration inside a text ("2 passed in 0.67s", "after 1.2s"): never the same twice."""

_ERRORS: dict[str, type[ModelError]] = {
    "timeout": ModelTimeout,
    "deadline": ModelDeadline,
    "unavailable": ModelUnavailable,
    "http": ModelHTTPError,
    "invalid": ModelResponseInvalid,
    "too_large": ModelResponseTooLarge,
}


class ReplayRefused(AutonomyError):
    """This run cannot be replayed."""


class RequestNotRecorded(ReplayDivergence):
    """The replayed engine asked the model something the recorded run never asked."""

    def __init__(self, message: str, *, request: int, diff: str) -> None:
        super().__init__(message)
        self.request = request
        """Which model request (1-based, in the order the run made them)."""
        self.diff = diff
        """What differs from the recorded request, readable."""


class Normaliser:
    """Makes a text comparable across runs: the scratch workspace's path becomes the
    recorded one, and timings become ``<time>``."""

    def __init__(self, scratch: Path | None = None, recorded_workspace: str = "") -> None:
        self.paths = (
            [str(scratch.resolve()), str(scratch)]
            if scratch is not None and recorded_workspace
            else []
        )
        self.recorded_workspace = recorded_workspace

    def __call__(self, text: str) -> str:
        for path in self.paths:
            text = text.replace(path, self.recorded_workspace)
        return TIMING.sub("<time>", text)


# -- the recorded run ------------------------------------------------------------------


@dataclass
class RecordedCall:
    """One recorded model call: its request, its failed attempts, its answer (if any)."""

    requested: RecordedEvent
    failures: list[ModelFailed]
    responded: ModelResponded | None = None

    @property
    def request(self) -> ModelRequested:
        data = self.requested.data
        assert isinstance(data, ModelRequested)
        return data


class Recording:
    """A recorded run, read once: its events, the model calls that reached the
    client in order, and the full conversation each request carried (folded on
    demand, never twice)."""

    def __init__(self, store: EventStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.events = list(store.read(run_id))
        if not self.events:
            raise RunNotFound(run_id)
        self.calls: list[RecordedCall] = []
        by_id: dict[str, RecordedCall] = {}
        for event in self.events:
            data = event.data
            if isinstance(data, ModelRequested):
                call = RecordedCall(event, [])
                self.calls.append(call)
                by_id[data.call_id] = call
            elif isinstance(data, ModelFailed) and data.call_id in by_id:
                by_id[data.call_id].failures.append(data)
            elif isinstance(data, ModelResponded) and data.call_id in by_id:
                by_id[data.call_id].responded = data
        # an answer the recorder copied from an earlier one never reached the client
        self.calls = [c for c in self.calls if not (c.responded and c.responded.cached_from)]
        self._state: RunState = EMPTY
        self._folded = 0

    def state_at(self, version: int) -> RunState:
        """The recorded state at ``version``; versions must be asked in increasing order
        for the fold to stay linear (an earlier one is re-folded from the start)."""
        if version < self._state.version:
            self._state, self._folded = EMPTY, 0
        while self._folded < len(self.events) and self.events[self._folded].version <= version:
            self._state = apply(self._state, self.events[self._folded])
            self._folded += 1
        return self._state

    def messages_of(self, call: RecordedCall) -> list[Message]:
        """The full messages the recorded request sent (blobbed contents read back)."""
        state = self.state_at(call.requested.version)
        stored = state.orchestration.conversations.get(call.request.conversation, ())
        return [full_message(m, self.store) for m in stored]


# -- the model, answering from the log --------------------------------------------------


def _refuse(request: httpx.Request) -> httpx.Response:
    raise ReplayDivergence(f"a replay never calls a model server, but {request.url} was asked")


class ReplayClient(ModelClient):
    """A ``ModelClient`` that answers from a recording instead of the network.

    ``chat`` has the signature of ``ModelClient.chat``, so the engine and its
    ``RecordingModel`` use it unchanged: the recorder appends ``model.requested``,
    then this client replays the recorded failed attempts (through ``on_failure``,
    so ``model.failed`` events are written again) and returns the recorded answer,
    or raises the recorded final error. Its HTTP transport refuses every request.
    """

    def __init__(self, recording: Recording, normalise: Normaliser | None = None) -> None:
        super().__init__(
            httpx.Client(transport=httpx.MockTransport(_refuse)),
            retry=RetryPolicy(attempts=1),
            identify_models=False,
            text_fallback=False,
        )
        self.recording = recording
        self.normalise = normalise or Normaliser()
        self.asked = 0
        """How many model requests the replay has made so far."""

    def chat(
        self,
        endpoints: Endpoint | Sequence[Endpoint],
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        options: ChatOptions = NO_OPTIONS,
        *,
        on_failure: OnFailure | None = None,
        bounds: Bounds | None = None,  # a replay waits for nothing
    ) -> ModelReply:
        listed = [endpoints] if isinstance(endpoints, Endpoint) else list(endpoints)
        self.asked += 1
        number = self.asked
        calls = self.recording.calls
        if number > len(calls):
            last = messages[-1] if messages else Message(role="none")
            diff = f"  its last message ({last.role}):\n" + _indent(_excerpt(last.content), 4)
            raise RequestNotRecorded(
                f"model request {number}: the recorded run made only {len(calls)} model "
                f"requests; the replay asks one more\n{diff}",
                request=number,
                diff=diff,
            )
        call = calls[number - 1]
        recorded = call.request
        model = listed[0].model if listed else recorded.model
        digest = request_digest(model, messages, tools, options.as_dict())
        if digest != recorded.request_digest:
            self._check_same_request(number, call, model, messages, tools, options)
        failures = call.failures
        errors = [self._error(f) for f in failures]
        for n, (failed, error) in enumerate(zip(failures, errors, strict=True)):
            if on_failure is not None:
                on_failure(
                    FailedAttempt(
                        attempt=failed.attempt,
                        endpoint=_endpoint(listed, failed.endpoint, model),
                        error=error,
                        will_retry=n < len(failures) - 1 or call.responded is not None,
                    )
                )
        if call.responded is None:
            raise errors[-1] if errors else ModelUnavailable("the recorded call has no answer")
        answer = full_answer(call.responded, self.recording.store)  # long texts from blobs
        return ModelReply(
            content=answer.content,
            tool_calls=answer.tool_calls,
            done_reason=answer.done_reason,
            usage=answer.usage,
            duration_ms=answer.duration_ms,
            model_identity=answer.model_identity,
            extracted_from_text=answer.extracted_from_text,
            endpoint=listed[0].label if listed else recorded.endpoint,
        )

    def _check_same_request(
        self,
        number: int,
        call: RecordedCall,
        model: str,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]],
        options: ChatOptions,
    ) -> None:
        """The digests differ: the request is still the recorded one if only what
        cannot repeat (timings, the workspace path) differs; otherwise raise."""
        recorded = call.request
        lines: list[str] = []
        if model != recorded.model:
            lines.append(f"  model: recorded {recorded.model!r}, replayed {model!r}")
        names = tuple(str(t.get("function", {}).get("name", "")) for t in tools)
        if names != recorded.tool_names:
            lines.append(f"  tools: recorded {list(recorded.tool_names)}, replayed {list(names)}")
        if options.as_dict() != recorded.options:
            lines.append(f"  options: recorded {recorded.options}, replayed {options.as_dict()}")
        lines += message_diff(self.recording.messages_of(call), messages, self.normalise)
        if not lines:
            return
        diff = "\n".join(lines)
        raise RequestNotRecorded(
            f"model request {number} (recorded at version {call.requested.version}, "
            f"conversation {recorded.conversation!r}) was never answered in the log; "
            f"it differs from the recorded request:\n{diff}",
            request=number,
            diff=diff,
        )

    @staticmethod
    def _error(failed: ModelFailed) -> ModelError:
        return _ERRORS.get(failed.kind, ModelError)(failed.detail)

    def close(self) -> None:
        self.http.close()


def _endpoint(listed: Sequence[Endpoint], label: str, model: str) -> Endpoint:
    for endpoint in listed:
        if endpoint.label == label:
            return endpoint
    return listed[0] if listed else Endpoint(base_url=label, model=model)


def message_diff(
    recorded: Sequence[Message], replayed: Sequence[Message], normalise: Normaliser
) -> list[str]:
    """One block per message that differs: which one, and how (a unified diff of its
    content, or the other fields that changed). Empty when they are the same."""
    lines: list[str] = []
    for index in range(max(len(recorded), len(replayed))):
        old = recorded[index] if index < len(recorded) else None
        new = replayed[index] if index < len(replayed) else None
        label = f"message {index + 1}"
        if old is None and new is not None:
            lines.append(f"  {label} ({new.role}) is new in the replay:")
            lines.append(_indent(_excerpt(new.content), 4))
            continue
        if new is None and old is not None:
            lines.append(f"  {label} ({old.role}) of the recorded request is missing")
            continue
        assert old is not None and new is not None
        fields = _fields(old, normalise)
        changed = {k for k, v in _fields(new, normalise).items() if fields.get(k) != v}
        changed |= {k for k in fields if k not in _fields(new, normalise)}
        if not changed:
            continue
        lines.append(f"  {label} ({old.role}) changed:")
        for key in sorted(changed - {"content"}):
            lines.append(
                f"    {key}: recorded {fields.get(key)!r}, "
                f"replayed {_fields(new, normalise).get(key)!r}"
            )
        if "content" in changed:
            diff = difflib.unified_diff(
                old.content.splitlines(),
                new.content.splitlines(),
                fromfile=f"recorded {label}",
                tofile=f"replayed {label}",
                lineterm="",
            )
            lines.append(_indent("\n".join(diff), 4))
    return lines


def _fields(message: Message, normalise: Normaliser) -> dict[str, Any]:
    fields = msgspec.to_builtins(message)
    assert isinstance(fields, dict)
    fields.pop("content_ref", None)
    cleaned: dict[str, Any] = _clean(fields, normalise)
    return cleaned


def _excerpt(text: str, lines: int = 12) -> str:
    kept = text.splitlines()
    more = f"\n[... {len(kept) - lines} more lines]" if len(kept) > lines else ""
    return "\n".join(kept[:lines]) + more


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.splitlines())


# -- comparing the events ---------------------------------------------------------------


@dataclass(frozen=True)
class Divergence:
    """The first place where the replay and the recording differ."""

    version: int
    expected: str
    """The recorded event's type ("(none)" past the recorded run's end)."""
    actual: str
    """The replayed event's type ("(none)" when the replay stopped short)."""
    diff: str


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    compared: int
    """How many events were compared."""
    divergence: Divergence | None = None

    @property
    def identical(self) -> bool:
        return self.divergence is None

    def report(self) -> str:
        if self.divergence is None:
            return f"identical ({self.compared} events)"
        d = self.divergence
        return f"diverged at version {d.version}: expected {d.expected}, got {d.actual}\n{d.diff}"


def _clean(value: Any, normalise: Normaliser) -> Any:
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, dict):
        return {k: _clean(v, normalise) for k, v in value.items() if k not in IGNORED_FIELDS}
    if isinstance(value, list | tuple):
        return [_clean(v, normalise) for v in value]
    return value


def comparable(event: RecordedEvent, normalise: Normaliser) -> dict[str, Any]:
    """What must be equal between a recorded and a replayed event."""
    return {
        "type": event.type,
        "causation": event.causation,
        "data": _clean(msgspec.to_builtins(event.data), normalise),
    }


def compare(
    recorded: Sequence[RecordedEvent],
    replayed: Sequence[RecordedEvent],
    normalise: Normaliser,
) -> Divergence | None:
    """The first version at which the two differ, or None."""
    for index in range(max(len(recorded), len(replayed))):
        old = recorded[index] if index < len(recorded) else None
        new = replayed[index] if index < len(replayed) else None
        version = index + 1
        if old is None and new is not None:
            return Divergence(
                version, "(none)", new.type, "the replay wrote more events than the recorded run"
            )
        if new is None and old is not None:
            return Divergence(
                version, old.type, "(none)", "the replay stopped before the recorded run did"
            )
        assert old is not None and new is not None
        expected, actual = comparable(old, normalise), comparable(new, normalise)
        if expected != actual:
            return Divergence(version, old.type, new.type, payload_diff(expected, actual))
    return None


def payload_diff(expected: Any, actual: Any) -> str:
    """A unified diff of two payloads as indented, key-sorted JSON."""
    old = json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    new = json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return "\n".join(difflib.unified_diff(old, new, "recorded", "replayed", lineterm=""))


# -- replay ----------------------------------------------------------------------------------


def _check_replayable(recording: Recording) -> RunStarted:
    first = recording.events[0].data
    if isinstance(first, RunForked):
        raise ReplayRefused(
            f"run {recording.run_id} is a fork of {first.parent_run} at version "
            f"{first.at_version}; replay the parent run"
        )
    if not isinstance(first, RunStarted):
        raise ReplayRefused(f"run {recording.run_id} does not start with run.started")
    return first


def replay(
    store: EventStore, run_id: str, *, until: int | None = None, scratch: Path | None = None
) -> ReplayResult:
    """Re-execute ``run_id`` with the current code and compare what it writes with
    the log (up to version ``until``, if given). ``scratch`` is the directory the
    tools work in; a temporary one (removed afterwards) by default."""
    recording = Recording(store, run_id)
    started = _check_replayable(recording)
    if scratch is None:
        with tempfile.TemporaryDirectory(prefix="autonomy-replay-") as tmp:
            return _replay(recording, started, until, Path(tmp) / "workspace")
    return _replay(recording, started, until, scratch)


def _rewind_next(recording: Recording, log: RunLog, scratch: Path, until: int | None) -> bool:
    """If the recorded run was rewound where the replay stopped, rewind the replay
    the same way (event and scratch workspace) and say so."""
    following = log.version + 1
    if following > len(recording.events) or (until is not None and following > until):
        return False
    data = recording.events[following - 1].data
    if not isinstance(data, RunRewound):
        return False
    log.append(data)
    restore(log.store, log.run_id, data.to_version, scratch)
    return True


def _replay(
    recording: Recording, started: RunStarted, until: int | None, scratch: Path
) -> ReplayResult:
    settings = settings_from_mapping(started.config) if started.config else Settings()
    restore(recording.store, recording.run_id, 0, scratch, copy_from=Path(started.workspace))
    scratch = scratch.resolve()
    normalise = Normaliser(scratch, started.workspace)
    log = RunLog.create(MemoryEventStore(), recording.run_id, started)
    client = ReplayClient(recording, normalise)
    stopped: AutonomyError | None = None
    try:
        engine = Engine(log, settings=settings, client=client, workspace=scratch)
        while True:
            while log.pipeline.status == "running" and (until is None or log.version < until):
                engine.step()
            rewound = _rewind_next(recording, log, scratch, until)
            if not rewound:
                break
            # as `autonomy resume` does after a rewind: a fresh engine, recovery first
            engine = Engine(log, settings=settings, client=client, workspace=scratch)
            engine.recover()
    except AutonomyError as e:
        stopped = e
    finally:
        client.close()
    if until is not None and log.version > until:
        stopped = None  # whatever stopped the step did so past the versions compared
    produced = list(log.store.read(recording.run_id))
    expected = recording.events
    if until is not None:
        expected = [e for e in expected if e.version <= until]
        produced = [e for e in produced if e.version <= until]
    if isinstance(stopped, RequestNotRecorded) and produced and produced[-1].version == log.version:
        # the request itself is what differs: compare what came before it, then say how
        asked = produced[-1]
        divergence = compare(expected[: asked.version - 1], produced[:-1], normalise)
        if divergence is None:
            recorded = (
                expected[asked.version - 1].type if asked.version <= len(expected) else "(none)"
            )
            divergence = Divergence(asked.version, recorded, asked.type, str(stopped))
        return ReplayResult(recording.run_id, asked.version, divergence)
    divergence = compare(expected, produced, normalise)
    if divergence is None and stopped is not None:
        divergence = Divergence(
            log.version, "(none)", "(error)", f"the replayed engine stopped: {stopped}"
        )
    return ReplayResult(recording.run_id, len(expected), divergence)
