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
which is how the projection holds them.

Fewer model calls: a request whose digest equals one already answered in this run
and whose temperature is 0 is answered from the log. It still leaves
``model.requested``, then a ``model.responded`` copying the first answer with
``cached_from`` = that answer's call id, no usage and no HTTP request.

Before sending, the messages are fitted to the role's ``num_ctx``
(``engine.prompts.fit``): oldest history goes first, never the system prompt or
the current task.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from engine.model.client import FailedAttempt, ModelClient, tool_names
from engine.model.roles import Roles
from engine.model.stored import (
    INLINE_LIMIT,
    PREVIEW_CHARS,
    blobs_of,
    full_answer,
    stored_answer,
    stored_form,
)
from engine.model.wire import ModelReply
from engine.prompts import fit, schemas_size
from events.schema import Event, Message, ModelFailed, ModelRequested, ModelResponded, Usage
from events.store import EventStore, RecordedEvent
from projections.orchestration import OrchestrationState

__all__ = [
    "INLINE_LIMIT",
    "PREVIEW_CHARS",
    "RecordingModel",
    "RunLog",
    "common_prefix",
    "request_digest",
    "stored_form",
]


class RunLog(Protocol):
    """What the recorder needs of a run's log (``engine.runlog.RunLog`` has it)."""

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


def request_digest(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any],
) -> str:
    """sha256 of the canonical JSON of a whole request (full messages, not stored
    forms): equal requests have equal digests, whatever the dict order.
    Replay computes the same digest to find the recorded answer."""
    return _request_digest(model, messages, tools_json(tools), options)


def tools_json(tools: Sequence[Mapping[str, Any]]) -> bytes:
    """The tools' schemas as canonical JSON: what a request's digest covers, and
    the blob its ``tools_ref`` names."""
    return msgspec.json.encode([dict(t) for t in tools], order="sorted")


def _request_digest(
    model: str, messages: Sequence[Message], tools: bytes, options: Mapping[str, Any]
) -> str:
    # The bytes of ``{"messages":…,"model":…,"options":…,"tools":…}`` encoded with
    # sorted keys, hashed piece by piece so that the tools' JSON, the same for every
    # request of a conversation, is encoded once (``RecordingModel._tools``).
    encode = msgspec.json.encode
    digest = hashlib.sha256(b'{"messages":')
    digest.update(encode(list(messages), order="sorted"))
    digest.update(b',"model":')
    digest.update(encode(model))
    digest.update(b',"options":')
    digest.update(encode(dict(options), order="sorted"))
    digest.update(b',"tools":')
    digest.update(tools)
    digest.update(b"}")
    return digest.hexdigest()


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
    count = 0
    for old, new in zip(previous, current, strict=False):
        if old != new:
            break
        count += 1
    return count


_SCHEMA_SETS = 16
"""How many sets of tool schemas a recorder keeps encoded (a run uses a few)."""


class _Schemas(NamedTuple):
    tools: list[dict[str, Any]]
    json: bytes
    ref: str
    size: int
    names: tuple[str, ...]


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
        self._schemas: dict[tuple[int, ...], _Schemas] = {}
        """The tools' schemas seen lately, by the identity of their objects: a role
        sends the same ones with every request (a cache, not state: it holds what
        ``tools_json`` and ``store.put`` would give again)."""

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
        """
        config = self.roles.get(role)
        primary = config.primary
        options = config.options()
        log = self.runlog
        call_id = f"{log.run_id}/m{log.version + 1}"
        schemas = self._tools(tools)
        messages = fit(messages, config.num_ctx, tools, tools_size=schemas.size)
        tools_ref = schemas.ref
        sent_options = options.as_dict()
        digest = _request_digest(primary.model, messages, schemas.json, sent_options)
        cached = self._cached(digest, sent_options.get("temperature"))

        stored = [stored_form(m, limit=self.inline_limit) for m in messages]
        offset = common_prefix(log.orchestration.conversations.get(conversation, ()), stored)
        delta = tuple(stored[offset:])
        self._put_blobs(messages[offset:], delta)

        requested = log.append(
            ModelRequested(
                call_id=call_id,
                role=role,
                model=primary.model,
                endpoint=primary.label,
                api=primary.api,
                conversation=conversation,
                request_digest=digest,
                prompt_digest=prompt_digest,
                message_offset=offset,
                messages=delta,
                tool_names=schemas.names,
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
            cached = full_answer(cached, log.store)
            return ModelReply(
                content=cached.content,
                tool_calls=cached.tool_calls,
                done_reason=cached.done_reason,
                model_identity=cached.model_identity,
                extracted_from_text=cached.extracted_from_text,
            )

        def record_failure(failed: FailedAttempt) -> None:
            log.append(
                ModelFailed(
                    call_id=call_id,
                    kind=failed.error.kind,
                    detail=str(failed.error),
                    attempt=failed.attempt,
                    endpoint=failed.endpoint.label,
                ),
                causation=requested.version,
            )

        reply = self.client.chat(
            config.endpoints(),
            messages,
            tools,
            options,
            on_failure=record_failure,
            bounds=config.bounds(self.client.bounds),
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
        self._put(blobs_of(answer, kept))
        log.append(kept, causation=requested.version)
        return reply

    def _tools(self, tools: Sequence[dict[str, Any]]) -> _Schemas:
        """The tools' schemas as canonical JSON, and the blob that keeps them as sent
        ("" without tools: a replay diffs them): worked out once for the same
        schema objects (which nobody changes in place)."""
        key = tuple(map(id, tools))
        known = self._schemas.get(key)
        if known is not None:
            return known
        encoded = tools_json(tools)
        ref = self.runlog.store.put(encoded) if tools else ""
        # the objects are kept, so that their ids are not reused while cached
        known = _Schemas(list(tools), encoded, ref, schemas_size(tools), tool_names(tools))
        if len(self._schemas) >= _SCHEMA_SETS:
            del self._schemas[next(iter(self._schemas))]
        self._schemas[key] = known
        return known

    def _cached(self, digest: str, temperature: object) -> ModelResponded | None:
        """The first answer to this exact request in this run, if the request is
        deterministic (temperature 0) and was answered."""
        if temperature != 0:
            return None
        original = self.runlog.orchestration.answered.get(digest)
        if original is None:
            return None
        for recorded in self.runlog.store.read(self.runlog.run_id):
            data = recorded.data
            if isinstance(data, ModelResponded) and data.call_id == original:
                return data
        return None

    def _put_blobs(self, originals: Sequence[Message], stored: Sequence[Message]) -> None:
        # only the new messages: the prefix was blobbed when it was new
        for original, kept in zip(originals, stored, strict=True):
            self._put(blobs_of(original, kept))

    def _put(self, contents: Iterable[bytes]) -> None:
        for content in contents:
            self.runlog.store.put(content)
