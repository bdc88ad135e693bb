"""Where a replay's inputs come from: the log, read once (``Recording``).

A run's inputs are what the world gave it: model answers, tool results, user
answers, and the stops (a crash, a kill, a rewind). Each has a source in a replay:

- model answers always come from the log (``ReplayClient``): the i-th request the
  replay makes gets the i-th recorded answer, after a check that it is the request
  the recorded run made;
- tool results run live (``tools="live"``, the default: do the tools still behave
  the same?) or come from the log for the tools that touch the world, files and
  commands (``tools="recorded"``: does the engine still decide the same?), by
  ``RecordedTools``; workflow tools are the engine's own code and always run;
- user answers, rewinds, forks and what recovery settled after a crash are taken
  from the log by the driver (``engine.runs.replay``);
- a stop: where the recorded engine stopped (``Recording.stopped_at``: the log ends
  while the run was running, or a ``run.resumed``/``run.rewound`` comes next), the
  replay's engine is stopped too, by ``Interrupted``, before it writes or runs
  anything the recorded one did not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from engine.agent.runlog import RunLog
from engine.agent.runner import is_user_stop
from engine.errors import (
    ModelContextOverflow,
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
from engine.model.recording import request_digest, tool_schemas_diff
from engine.model.roles import Endpoint
from engine.model.stored import full_message, full_reply
from engine.model.wire import NO_OPTIONS, ChatOptions, ModelReply
from engine.runs.divergence import Normaliser, excerpt, indent, message_diff
from engine.tools import ToolContext, ToolOutcome, ToolRegistry, execute
from engine.tools.commands import COMMAND_TOOLS
from engine.tools.files import FILE_TOOLS
from events.errors import RunNotFound
from events.schema import (
    Event,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunFinished,
    RunForked,
    RunResumed,
    RunRewound,
    TaskUpdated,
    ToolExecuted,
    UserAsked,
)
from events.store import EventStore, RecordedEvent
from projections.fold import EMPTY, RunState, apply, project

WORLD_TOOLS = frozenset(tool.name for tool in (*FILE_TOOLS, *COMMAND_TOOLS))
"""Tools whose results depend on the world (the workspace, the commands): with
``tools="recorded"`` their results come from the log."""

STOPS = (RunResumed, RunRewound)
"""Events written where the recorded run's engine had been stopped from outside."""

RECOVERY_RESULTS = frozenset({"completed before a crash (recovered by comparing the workspace)"})
RECOVERY_ERRORS = frozenset(
    {
        "interrupted by a crash before it changed the workspace; not applied",
        "interrupted by a crash; whether it finished is unknown, so it counts as not done",
    }
)
RECOVERY_ERROR_PREFIXES = ("interrupted: the engine stopped while ", "not applied: ")
"""What crash recovery (``Engine.recover``) writes when it settles a tool left
pending, word for word as resume wrote it before ``run.resumed`` marked a stop: in
such a log, these texts are how a replay knows that the recorded engine stopped
before the tool reported. Frozen: old logs keep the words they were written with.
Only there: a model can make the same words (a file it asks for named "not applied:
x.py"), and in a log that has ``run.resumed`` the structure says where a stop was
(``Recording.by_words``)."""


def is_stop(event: Event, *, by_words: bool = False) -> bool:
    """Whether ``event`` was written where the recorded run's engine had been stopped
    from outside: a ``STOPS`` event, a Ctrl-C's ``run.finished``, or (``by_words``, in
    a log older than ``run.resumed``) what recovery settled after a crash."""
    return (
        isinstance(event, STOPS) or is_user_stop(event) or (by_words and settled_by_recovery(event))
    )


STOP_TYPES = frozenset({*STOPS, RunFinished, ToolExecuted, TaskUpdated})
"""The only types ``is_stop`` can be true of: a cheap test before it."""


def settled_by_recovery(event: Event) -> bool:
    """Whether ``event`` is what recovery wrote after a stop: a tool settled, or the
    task a settled command was run for failed (see ``RECOVERY_RESULTS``)."""
    if isinstance(event, ToolExecuted):
        if event.ok:
            return event.result in RECOVERY_RESULTS
        error = event.error
    elif isinstance(event, TaskUpdated) and event.status == "failed":
        error = event.error
    else:
        return False
    return error in RECOVERY_ERRORS or error.startswith(RECOVERY_ERROR_PREFIXES)


_ERRORS: dict[str, type[ModelError]] = {
    "timeout": ModelTimeout,
    "deadline": ModelDeadline,
    "unavailable": ModelUnavailable,
    "http": ModelHTTPError,
    "too_large": ModelResponseTooLarge,
    "invalid": ModelResponseInvalid,
}


class Interrupted(BaseException):
    """The recorded run's engine stopped here: the replay's engine stops too.

    A ``BaseException``, as a kill is: no ``except Exception`` of the engine may
    turn it into a recorded failure."""


class RequestNotRecorded(ReplayDivergence):
    """The replayed engine asked the model something the recorded run never asked."""

    def __init__(self, message: str, *, request: int, diff: str, headline: str = "") -> None:
        super().__init__(message)
        self.request = request
        """Which model request (1-based, in the order the run made them)."""
        self.diff = diff
        """What differs from the recorded request, readable."""
        self.headline = headline or message.splitlines()[0]
        """One line: which request, and what differs in it."""


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
    demand, never twice). ``until`` cuts it: the replay stops there."""

    def __init__(self, store: EventStore, run_id: str, until: int | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.until = until
        self.events = list(store.read_brief(run_id))
        if not self.events:
            raise RunNotFound(run_id)
        self.calls: list[RecordedCall] = []
        by_id: dict[str, RecordedCall] = {}
        stops: list[int] = []
        self._words_until = len(self.events) + 1
        # one pass, by the payload's class (the union is closed: no event subclasses one)
        for event in self.events:
            data = event.data
            if type(data) is ModelRequested:
                if data.tools_ref and self._words_until > event.version:
                    self._words_until = event.version
                call = RecordedCall(event, [])
                self.calls.append(call)
                by_id[data.call_id] = call
            elif type(data) is ModelResponded:
                if data.call_id in by_id:
                    by_id[data.call_id].responded = data
            elif type(data) is ModelFailed:
                if data.call_id in by_id:
                    by_id[data.call_id].failures.append(data)
            elif type(data) in STOP_TYPES and is_stop(
                data, by_words=event.version < self._words_until
            ):
                stops.append(event.version)
        self._stops = frozenset(stops)
        """The versions of the events written where the recorded engine had been stopped."""
        # an answer the recorder copied from an earlier one never reached the client
        self.calls = [c for c in self.calls if not (c.responded and c.responded.cached_from)]
        self.killed = not isinstance(self.events[-1].data, RunFinished | UserAsked)
        """The log ends while the run was running: its engine was stopped (or runs)."""
        first = self.events[0].data
        self.forked = first if isinstance(first, RunForked) else None
        self._start = (
            project(store, self.forked.parent_run, upto=self.forked.at_version)
            if self.forked
            else EMPTY
        )
        self._state: RunState = self._start
        self._folded = 0

    def by_words(self, version: int) -> bool:
        """Whether what recovery settled at ``version`` is known by its words alone
        (``RECOVERY_ERRORS``): in events written before the code that writes
        ``run.resumed``: before the run's first model request that records its
        tools' schemas (``tools_ref``, new with ``run.resumed``). Any text a model
        words comes after a request of its own."""
        return version < self._words_until

    def event(self, version: int) -> RecordedEvent | None:
        """The recorded event at ``version``, or None past the end (or past ``until``)."""
        if version > len(self.events) or (self.until is not None and version > self.until):
            return None
        return self.events[version - 1]

    def stopped_at(self, version: int) -> bool:
        """Whether the recorded run's engine stopped before writing ``version``."""
        if self.until is not None and version > self.until:
            return True
        if version > len(self.events):
            return self.killed
        return version in self._stops

    def state_at(self, version: int) -> RunState:
        """The recorded state at ``version``; versions must be asked in increasing order
        for the fold to stay linear (an earlier one is re-folded from the start)."""
        if version < self._state.version:
            self._state, self._folded = self._start, 0
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
    or raises the recorded final error. A call the recorded run never saw the end
    of (no answer, no failure: the process died waiting) raises ``Interrupted``.
    Its HTTP transport refuses every request.
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
        self.requested: ModelRequested | None = None
        """The request the replay's recorder has just written (see ``observe``)."""

    def observe(self, event: RecordedEvent) -> None:
        """A listener for the replay's log: the recorder writes each request's digest
        (``model.requested``) just before it asks this client, which then compares
        that digest rather than working it out again."""
        if isinstance(event.data, ModelRequested):
            self.requested = event.data

    def chat(
        self,
        endpoints: Endpoint | Sequence[Endpoint],
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        options: ChatOptions = NO_OPTIONS,
        *,
        on_failure: OnFailure | None = None,
        bounds: Bounds | None = None,  # a replay waits for nothing
        stream: bool | None = None,  # nor streams: the answer is in the log
    ) -> ModelReply:
        listed = (endpoints,) if isinstance(endpoints, Endpoint) else endpoints
        self.asked += 1
        number = self.asked
        calls = self.recording.calls
        if number > len(calls):
            last = messages[-1] if messages else Message(role="none")
            diff = f"  its last message ({last.role}):\n" + indent(excerpt(last.content), 4)
            raise RequestNotRecorded(
                f"model request {number}: the recorded run made only {len(calls)} model "
                f"requests; the replay asks one more\n{diff}",
                request=number,
                diff=diff,
            )
        call = calls[number - 1]
        recorded = call.request
        model = listed[0].model if listed else recorded.model
        written, self.requested = self.requested, None
        digest = (
            written.request_digest
            if written is not None and written.model == model
            else request_digest(model, messages, tools, options.as_dict())
        )
        if digest != recorded.request_digest:
            self._check_same_request(number, call, model, messages, tools, options)
        failures = call.failures
        answer = call.responded
        if answer is None and not failures:
            raise Interrupted(f"model call {recorded.call_id} was cut off")
        if failures:
            self._fail_again(failures, answer is not None, listed, model, on_failure)
        assert answer is not None
        endpoint = listed[0].label if listed else recorded.endpoint
        return full_reply(answer, self.recording.store, endpoint=endpoint)

    def _fail_again(
        self,
        failures: Sequence[ModelFailed],
        answered: bool,
        listed: Sequence[Endpoint],
        model: str,
        on_failure: OnFailure | None,
    ) -> None:
        """Report the recorded failed attempts; raise the last one's error if no
        answer followed."""
        errors = [self._error(f) for f in failures]
        for n, (failed, error) in enumerate(zip(failures, errors, strict=True)):
            if on_failure is not None:
                on_failure(
                    FailedAttempt(
                        attempt=failed.attempt,
                        endpoint=_endpoint(listed, failed.endpoint, model),
                        error=error,
                        will_retry=n < len(failures) - 1 or answered,
                    )
                )
        if not answered:
            raise errors[-1]

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
        what: list[str] = []
        lines: list[str] = []
        if model != recorded.model:
            what.append("model changed")
            lines.append(f"  model: recorded {recorded.model!r}, replayed {model!r}")
        names = tuple(str(t.get("function", {}).get("name", "")) for t in tools)
        if names != recorded.tool_names:
            what.append("tools changed")
            lines.append(f"  tools: recorded {list(recorded.tool_names)}, replayed {list(names)}")
        else:
            schema_lines = self._tools_diff(call, tools)
            if schema_lines:
                what.append(schema_lines[0].strip().rstrip(":"))
                lines += schema_lines
        if options.as_dict() != recorded.options:
            what.append("options changed")
            lines.append(f"  options: recorded {recorded.options}, replayed {options.as_dict()}")
        changed = message_diff(self.recording.messages_of(call), messages, self.normalise)
        if changed:
            what.append(changed[0].strip().rstrip(":"))
        lines += changed
        if not lines:
            return
        diff = "\n".join(lines)
        headline = (
            f"model request {number} (conversation {recorded.conversation}): {'; '.join(what)}"
        )
        raise RequestNotRecorded(
            f"{headline}\nmodel request {number} (recorded at version "
            f"{call.requested.version}, conversation {recorded.conversation!r}) was never "
            f"answered in the log; it differs from the recorded request:\n{diff}",
            request=number,
            diff=diff,
            headline=headline,
        )

    def _tools_diff(self, call: RecordedCall, tools: Sequence[dict[str, Any]]) -> list[str]:
        """What changed in the tools' schemas (same names): a diff when the log holds
        the recorded schemas, else whether the recorded digest allows them."""
        recorded = call.request
        if recorded.tools_ref:
            old = msgspec.json.decode(self.recording.store.get(recorded.tools_ref))
            return tool_schemas_diff(old, list(tools))
        # an older log: the recorded request with the replay's tools in place of its own
        digest = request_digest(
            recorded.model, self.recording.messages_of(call), tools, recorded.options
        )
        if digest == recorded.request_digest:
            return []
        return [
            "  the tools' schemas changed: this log does not hold the recorded schemas, "
            "only their digest"
        ]

    @staticmethod
    def _error(failed: ModelFailed) -> ModelError:
        if failed.kind == ModelContextOverflow.kind:
            return ModelContextOverflow(
                failed.detail, context=failed.context, prompt_tokens=failed.prompt_tokens
            )
        return _ERRORS.get(failed.kind, ModelError)(failed.detail)

    def close(self) -> None:
        self.http.close()


def _endpoint(listed: Sequence[Endpoint], label: str, model: str) -> Endpoint:
    for endpoint in listed:
        if endpoint.label == label:
            return endpoint
    return listed[0] if listed else Endpoint(base_url=label, model=model)


# -- the tools ---------------------------------------------------------------------------


class RecordedTools:
    """The replay's ``ToolRunner``: stops where the recorded run stopped before a
    tool reported, and with ``live=False`` takes the results of ``WORLD_TOOLS``
    from the log instead of running them."""

    def __init__(self, recording: Recording, log: RunLog, *, live: bool) -> None:
        self.recording = recording
        self.log = log
        self.live = live
        self.in_workspace = live
        """With results from the log nothing runs in the workspace (``ToolRunner``)."""

    def __call__(
        self, registry: ToolRegistry, name: str, arguments: Mapping[str, Any], ctx: ToolContext
    ) -> ToolOutcome:
        requested = self.log.version  # the tool.requested just appended
        if self.recording.stopped_at(requested + 1):
            raise Interrupted(f"tool call at version {requested} never reported")
        if self.live or name not in WORLD_TOOLS:
            return execute(registry, name, arguments, ctx)
        recorded = self.recording.event(requested + 1)
        call_id = f"{self.log.run_id}/t{requested}"
        data = recorded.data if recorded is not None else None
        if not isinstance(data, ToolExecuted) or data.call_id != call_id:
            raise ReplayDivergence(
                f"tool call {call_id} ({name}) has no recorded result at version "
                f"{requested + 1}; replay with --tools live to run it"
            )
        result = (
            self.recording.store.get(data.result_ref).decode("utf-8")
            if data.result_ref
            else data.result
        )
        follow: list[Any] = []
        version = requested + 2
        while (event := self.recording.event(version)) is not None and (
            event.causation == requested
        ):
            follow.append(event.data)
            version += 1
        return ToolOutcome(
            ok=data.ok,
            result=result,
            error=data.error,
            files_changed=data.files_changed,
            events=tuple(follow),
            finishes=data.ok and registry.get(name).finishes,
        )
