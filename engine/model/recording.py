"""``RecordingModel``: every model call becomes events in the run's log.

One call leaves, in order::

    model.requested   call id, role, model, endpoint, digest of the full request,
                      the conversation's new messages only, tool names, options
    model.failed      one per failed attempt (kind, detail, attempt, endpoint)
    model.responded   content, tool calls, usage, done reason, duration, identity

``model.failed`` and ``model.responded`` are caused by (``causation`` = version of)
their ``model.requested``. A call that fails for good leaves only ``model.failed``
events and raises the typed error: an error is never recorded as a response.
Usage and conversations are then projections of the log (``OrchestrationState``),
not counters kept in an object.

Ids come from the log, not from uuid: the call id is ``{run_id}/m{version}`` where
``version`` is the one its ``model.requested`` gets, so a replay produces the same ids.

Growth stays linear: a request repeats the whole conversation, so the event holds
only the messages after the longest common prefix with the conversation's previous
request (``message_offset`` says where they go). Messages, answers and tool-call
arguments longer than ``INLINE_LIMIT`` characters are kept in *stored form*
(``engine.model.stored``): the full text goes to the blob table, once, and the
event keeps a preview and the blob's sha256. Prefixes are compared on stored forms,
which is how the projection holds them. Each message's stored form, size and share
of the request digest are worked out once, when it is new to its conversation
(``engine.model.canonical.ConversationCache``), not again at every turn.

Fewer model calls: a request whose digest equals one already answered in this run
and whose temperature is 0 is answered from the log. It still leaves
``model.requested``, then a ``model.responded`` copying the first answer with
``cached_from`` = that answer's call id, no usage and no HTTP request.

Before sending, the messages are fitted to the role's context window, less room
for the answer, whose cap the request carries (``engine.model.sizing``): oldest
history goes first, never the system prompt or the current task.
"""

from __future__ import annotations

import difflib
import json
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from engine.errors import ModelContextOverflow
from engine.model.bounds import Bounds
from engine.model.canonical import (
    ConversationCache,
    OfferedTools,
    RequestTail,
    request_digest,
)
from engine.model.client import FailedAttempt, ModelClient
from engine.model.context import estimate_tokens, fit
from engine.model.roles import Endpoint, RoleConfig, Roles
from engine.model.sizing import Sizing, sizing, sizing_inputs
from engine.model.stored import (
    INLINE_LIMIT,
    PREVIEW_CHARS,
    blobs_of,
    full_reply,
    stored_answer,
    stored_form,
)
from engine.model.wire import ChatOptions, ModelReply
from events.schema import Event, Message, ModelFailed, ModelRequested, ModelResponded, Usage
from events.store import EventStore, RecordedEvent
from projections.orchestration import OrchestrationState

__all__ = [
    "INLINE_LIMIT",
    "PREVIEW_CHARS",
    "OfferedTools",
    "RecordingModel",
    "RunLog",
    "common_prefix",
    "request_digest",
    "stored_form",
]


OFFERED_KEPT = 8
"""Tools lists whose encoding a recorder keeps (the arbiter's and a few conversations')."""

CONVERSATIONS_KEPT = 8
"""Conversations whose last request a recorder keeps worked out (``ConversationCache``):
the ones a run goes back to are the few open at once (a task's, the arbiter's)."""


class RunLog(Protocol):
    """What the recorder needs of a run's log (``engine.agent.runlog.RunLog`` has it)."""

    @property
    def store(self) -> EventStore: ...

    @property
    def run_id(self) -> str: ...

    @property
    def version(self) -> int:
        """The version of the run's last event (0 before the first)."""
        ...

    @property
    def orchestration(self) -> OrchestrationState: ...

    def append(self, *events: Event, causation: int | None = None) -> list[RecordedEvent]: ...


def tool_schemas_diff(
    recorded: Sequence[Mapping[str, Any]], replayed: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What changed between two lists of tool schemas, tool by tool: a line that says
    what ("tool create_file: the description of `path` changed") and a unified diff
    of that tool's schema. Empty when they are equal."""
    old = {_tool_name(t): t for t in recorded}
    new = {_tool_name(t): t for t in replayed}
    lines: list[str] = []
    for name in [*old, *(n for n in new if n not in old)]:
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None or after is None:
            lines.append(f"  tool {name}: {'new in the replay' if before is None else 'gone'}")
            continue
        changed = [_describe(path) for path in _changed_paths(before, after, ())]
        lines.append(f"  tool {name}: {', '.join(changed)} changed")
        diff = difflib.unified_diff(
            json.dumps(before, indent=2, sort_keys=True).splitlines(),
            json.dumps(after, indent=2, sort_keys=True).splitlines(),
            "recorded",
            "replayed",
            lineterm="",
        )
        lines += ["    " + line for line in diff]
    return lines


def _tool_name(schema: Mapping[str, Any]) -> str:
    return str(schema.get("function", {}).get("name", ""))


def _changed_paths(old: Any, new: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[tuple[str, ...]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                found += _changed_paths(old.get(key), new.get(key), (*path, str(key)))
        return found
    return [path] if old != new else []


def _describe(path: tuple[str, ...]) -> str:
    """``function.parameters.properties.path.description`` -> "the description of `path`"."""
    inner = path[1:] if path[:1] == ("function",) else path
    if inner == ("description",):
        return "its description"
    if len(inner) >= 3 and inner[:2] == ("parameters", "properties"):
        rest = inner[3:]
        what = f"`{inner[2]}`"
        return f"the {'.'.join(rest)} of {what}" if rest else f"the argument {what}"
    return "`" + ".".join(inner) + "`"


def common_prefix(previous: Sequence[Message], current: Sequence[Message]) -> int:
    """How many leading messages the two lists share."""
    if len(current) >= len(previous) and all(map(operator.is_, previous, current)):
        return len(previous)  # the usual next turn: the very messages, then new ones
    count = 0
    for old, new in zip(previous, current, strict=False):
        if old is not new and old != new:
            break
        count += 1
    return count


class RolePlan:
    """What every request of a role shares while the role's config, what the run
    learned of its servers (``engine.model.sizing.sizing_inputs``) and the client's
    bounds stay the same objects: its endpoints, bounds, sizes and options. It holds
    the objects it was made from, so their ids are not reused while it compares them."""

    def __init__(
        self, role: str, config: RoleConfig, learned: OrchestrationState, base: Bounds
    ) -> None:
        self.config = config
        self.inputs = sizing_inputs(learned)
        self.base = base
        self.size: Sizing = sizing(role, config, learned)
        self.primary: Endpoint = config.primary
        self.label = self.primary.label
        self.endpoints = config.endpoints()
        self.bounds = config.bounds(base)
        self.options: ChatOptions = config.options(
            num_ctx=self.size.context, num_predict=self.size.answer_cap
        )
        self.sent_options = self.options.as_dict()
        self.tail = RequestTail(self.primary.model, self.sent_options)

    def holds(self, config: RoleConfig, learned: OrchestrationState, base: Bounds) -> bool:
        """Whether the plan is still the one these inputs make."""
        return (
            config is self.config
            and base is self.base
            and all(map(operator.is_, sizing_inputs(learned), self.inputs))
        )


class RecordingModel:
    """A ``ModelClient`` whose every call, attempt and answer is appended to a run log.

    ``roles`` says which model, endpoints and options each role uses. After ``chat``
    returns, the ``model.responded`` event is the log's last event (its version is
    ``runlog.version``), so tool events can name it as their cause.
    """

    def __init__(
        self,
        client: ModelClient,
        runlog: RunLog,
        roles: Roles,
        *,
        inline_limit: int = INLINE_LIMIT,
    ) -> None:
        self.client = client
        self.runlog = runlog
        self.roles = roles
        self.inline_limit = inline_limit
        self._offered: dict[tuple[int, ...], tuple[OfferedTools, str]] = {}
        """Tools lists offered, by the identities of their schemas, with their blob: a
        registry hands every conversation of a role (and every turn) the very same
        schema objects, in a list of its own. A cache of an encoding, not state (each
        entry keeps its schemas, so no id is reused)."""
        self._conversations: OrderedDict[str, ConversationCache] = OrderedDict()
        """The last request of the conversations asked last, worked out message by
        message (``engine.model.canonical``): a cache, not state."""
        self._plans: dict[str, RolePlan] = {}
        """Each role's plan for its next request: a cache, not state."""

    def chat(
        self,
        role: str,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        *,
        conversation: str,
        causation: int | None = None,
        prompt_digest: str = "",
    ) -> ModelReply:
        """Ask ``role``'s model, recording the request, each failure and the answer.

        ``conversation`` names the thread of messages this request continues (e.g.
        ``"task:T3"``); ``causation`` is the version of the event that led to the
        call. ``messages`` are the full messages (not stored forms): they are what
        the model is sent. Raises the client's typed ``ModelError`` after recording
        the failures.

        A request the server refuses as too long for its context window
        (``ModelContextOverflow``) is asked again, as a new call, with the history
        shrunk to the window the refusal reported (``engine.model.sizing``), or by a
        quarter when it reported none: never the same request twice. When only the
        system prompt and the task are left, the overflow is raised.
        """
        config = self.roles.get(role)
        offer = self._offer(tools)
        chars = offer[0].chars
        known = self._conversation(conversation)
        known.update(messages)
        overflow: ModelContextOverflow | None = None
        sent: list[Message] = []
        while True:
            plan = self._plan(role, config)
            fitted = plan.size.fit(messages, tool_chars=chars, chars=known.chars)
            if overflow is not None and len(fitted) >= len(sent):
                # what the server said makes no smaller request: drop a quarter anyway
                budget = estimate_tokens(sent, tool_chars=chars) * 3 // 4
                fitted = fit(messages, budget, tool_chars=chars, reserve=0, chars=known.chars)
                if len(fitted) >= len(sent):
                    raise overflow  # only the system prompt and the task are left
            try:
                return self._ask(
                    role, plan, fitted, offer, known, conversation, causation, prompt_digest
                )
            except ModelContextOverflow as e:
                overflow, sent = e, fitted

    def _ask(
        self,
        role: str,
        plan: RolePlan,
        messages: Sequence[Message],
        offer: tuple[OfferedTools, str],
        known: ConversationCache,
        conversation: str,
        causation: int | None,
        prompt_digest: str,
    ) -> ModelReply:
        """One request as fitted, recorded; raises the client's error."""
        primary = plan.primary
        offered, tools_ref = offer
        sent_options = dict(plan.sent_options)  # each event its own
        log = self.runlog
        call_id = f"{log.run_id}/m{log.version + 1}"
        digest = known.digest(messages, offered, plan.tail)
        cached = self._cached(digest, sent_options.get("temperature"))

        stored = known.stored_forms(messages)
        offset = common_prefix(log.orchestration.conversations.get(conversation, ()), stored)
        delta = tuple(stored[offset:])
        self._put_blobs(messages[offset:], delta)

        requested = log.append(
            ModelRequested(
                call_id=call_id,
                role=role,
                model=primary.model,
                endpoint=plan.label,
                api=primary.api,
                conversation=conversation,
                request_digest=digest,
                prompt_digest=prompt_digest,
                message_offset=offset,
                messages=delta,
                tool_names=offered.names,
                options=sent_options,
                tools_ref=tools_ref,
            ),
            causation=causation,
        )[0]

        if cached is not None:
            log.append(
                msgspec.structs.replace(
                    cached,
                    call_id=call_id,
                    usage=Usage(),
                    duration_ms=0.0,
                    cached_from=cached.call_id,
                ),
                causation=requested.version,
            )
            # the copy cost nothing: no usage, no time
            return full_reply(cached, log.store, usage=Usage(), duration_ms=0.0)

        def record_failure(failed: FailedAttempt) -> None:
            error = failed.error
            sizes: dict[str, int] = {}
            if isinstance(error, ModelContextOverflow) and error.context:
                sizes = {
                    "context": error.context,
                    "prompt_tokens": error.prompt_tokens,
                    "estimated_tokens": estimate_tokens(messages, tool_chars=offered.chars),
                }
            log.append(
                ModelFailed(
                    call_id=call_id,
                    kind=error.kind,
                    detail=str(error),
                    attempt=failed.attempt,
                    endpoint=failed.endpoint.label,
                    **sizes,
                ),
                causation=requested.version,
            )

        reply = self.client.chat(
            plan.endpoints,
            messages,
            offered.schemas,
            plan.options,
            on_failure=record_failure,
            bounds=plan.bounds,
            stream=plan.config.stream,
        )
        answer = ModelResponded(
            call_id=call_id,
            content=reply.content,
            tool_calls=reply.tool_calls,
            usage=reply.usage,
            done_reason=reply.done_reason,
            duration_ms=reply.duration_ms,
            model_identity=reply.model_identity,
            extracted_from_text=reply.extracted_from_text,
        )
        kept = stored_answer(answer, limit=self.inline_limit)
        if kept is not answer:
            self._put(blobs_of(answer, kept))
        log.append(kept, causation=requested.version)
        return reply

    def _plan(self, role: str, config: RoleConfig) -> RolePlan:
        """The plan of ``role``'s requests, worked out again only when one of its inputs
        is another object."""
        learned = self.runlog.orchestration
        plan = self._plans.get(role)
        if plan is None or not plan.holds(config, learned, self.client.bounds):
            plan = self._plans[role] = RolePlan(role, config, learned, self.client.bounds)
        return plan

    def _conversation(self, name: str) -> ConversationCache:
        """The cache of conversation ``name``, made the most recently used."""
        known = self._conversations.get(name)
        if known is None:
            known = self._conversations[name] = ConversationCache(limit=self.inline_limit)
            if len(self._conversations) > CONVERSATIONS_KEPT:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(name)
        return known

    def _offer(self, tools: Sequence[dict[str, Any]]) -> tuple[OfferedTools, str]:
        """The tools encoded, and their blob; worked out again only for another list."""
        key = tuple(map(id, tools))
        known = self._offered.get(key)
        if known is None:
            if len(self._offered) >= OFFERED_KEPT:
                self._offered.clear()
            offered = OfferedTools(list(tools))
            known = self._offered[key] = offered, self._tools_ref(offered)
        return known

    def _tools_ref(self, offered: OfferedTools) -> str:
        """The blob of the tools' schemas as sent ("" without tools): a replay diffs them."""
        return self.runlog.store.put(offered.canonical) if offered.schemas else ""

    def _cached(self, digest: str, temperature: object) -> ModelResponded | None:
        """The first answer to this exact request in this run, if the request is
        deterministic (temperature 0) and was answered."""
        if temperature != 0:
            return None
        version = self.runlog.orchestration.answered.get(digest)
        if version is None:
            return None
        log = self.runlog
        for recorded in log.store.read(log.run_id, after=version - 1, upto=version):
            if isinstance(recorded.data, ModelResponded):
                return recorded.data
        return None

    def _put_blobs(self, originals: Sequence[Message], stored: Sequence[Message]) -> None:
        # only the new messages: the prefix was blobbed when it was new
        for original, kept in zip(originals, stored, strict=True):
            if kept is not original:
                self._put(blobs_of(original, kept))

    def _put(self, contents: Iterable[bytes]) -> None:
        for content in contents:
            self.runlog.store.put(content)
