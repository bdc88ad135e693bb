"""The stored form of what a model says and is told: long texts go to blobs, once.

A file the model writes travels through several events: the model's answer
(``model.responded``), the tool call (``tool.requested``), and the next request of
the conversation, which repeats the answer (``model.requested``). Inline, a 20 MB
``create_file`` was stored three times. In stored form every text longer than
``INLINE_LIMIT`` characters — a message's content, an answer's content, a top-level
string argument of a tool call — is replaced by its first ``PREVIEW_CHARS``
characters and the sha256 of the full text (``content_ref``, ``argument_refs``),
the blob table holds the text once (blobs are content-addressed), and every event
that carries it refers to the same digest.

``stored_*`` are pure (they compute digests, they write nothing); ``blobs_of``
gives the texts the stored form moved out, for the caller to ``put``;
``full_*`` read them back (replay).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import msgspec

from engine.model.wire import ModelReply
from events.schema import Message, ModelResponded, ToolCall
from events.store import blob_digest

INLINE_LIMIT = 4096
"""Text longer than this (in characters) goes to a blob."""

PREVIEW_CHARS = 200
"""How much of a blobbed text stays inline, for people reading the log."""


class Blobs(Protocol):
    """Where blobbed texts are read back (``events.EventStore.get`` fits)."""

    def get(self, digest: str) -> bytes: ...


def _digest(text: str) -> str:
    return blob_digest(text.encode("utf-8"))


def stored_arguments(
    arguments: Mapping[str, Any], refs: Mapping[str, str] = {}, *, limit: int = INLINE_LIMIT
) -> tuple[dict[str, Any], dict[str, str]]:
    """Arguments with each long top-level string replaced by a preview, and the
    digests of the full strings by argument name (``refs`` already made are kept)."""
    kept = dict(arguments)
    out_refs = dict(refs)
    for name in _long_arguments(arguments, refs, limit):
        value = arguments[name]
        out_refs[name] = _digest(value)
        kept[name] = value[:PREVIEW_CHARS]
    return kept, out_refs


def _long_arguments(arguments: Mapping[str, Any], refs: Mapping[str, str], limit: int) -> list[str]:
    """The names of the arguments the stored form moves out (not moved out yet)."""
    return [
        name
        for name, value in arguments.items()
        if isinstance(value, str) and len(value) > limit and name not in refs
    ]


def stored_call(call: ToolCall, *, limit: int = INLINE_LIMIT) -> ToolCall:
    """The tool call with long arguments moved out (see ``stored_arguments``);
    ``call`` itself when nothing is long."""
    if not _long_arguments(call.arguments, call.argument_refs, limit):
        return call
    arguments, refs = stored_arguments(call.arguments, call.argument_refs, limit=limit)
    return msgspec.structs.replace(call, arguments=arguments, argument_refs=refs)


def stored_form(message: Message, *, limit: int = INLINE_LIMIT) -> Message:
    """The message as the log keeps it: long content and long tool-call arguments
    replaced by preview + digest; ``message`` itself when nothing is long."""
    if _all_inline(message.content, message.content_ref, message.tool_calls, limit):
        return message
    changes: dict[str, Any] = {}
    if not message.content_ref and len(message.content) > limit:
        changes["content"] = message.content[:PREVIEW_CHARS]
        changes["content_ref"] = _digest(message.content)
    if message.tool_calls:
        calls = tuple(stored_call(c, limit=limit) for c in message.tool_calls)
        if any(new is not old for new, old in zip(calls, message.tool_calls, strict=True)):
            changes["tool_calls"] = calls
    return msgspec.structs.replace(message, **changes) if changes else message


def _all_inline(content: str, content_ref: str, calls: tuple[ToolCall, ...], limit: int) -> bool:
    """Whether a stored form would keep this content and these calls as they are."""
    if len(content) > limit and not content_ref:
        return False
    return not any(_long_arguments(c.arguments, c.argument_refs, limit) for c in calls)


def stored_answer(answer: ModelResponded, *, limit: int = INLINE_LIMIT) -> ModelResponded:
    """A ``model.responded`` with long content and long tool-call arguments moved out;
    ``answer`` itself when nothing is long."""
    if _all_inline(answer.content, answer.content_ref, answer.tool_calls, limit):
        return answer
    message = _as_message(answer)
    return _with_message(answer, message, stored_form(message, limit=limit))


def _as_message(answer: ModelResponded) -> Message:
    return Message(
        role="assistant",
        content=answer.content,
        tool_calls=answer.tool_calls,
        content_ref=answer.content_ref,
    )


def _with_message(answer: ModelResponded, was: Message, message: Message) -> ModelResponded:
    """``answer`` carrying ``message``'s content and tool calls (itself if ``message``
    is ``was``, the message ``answer`` made, unchanged)."""
    if message is was:
        return answer
    return msgspec.structs.replace(
        answer,
        content=message.content,
        content_ref=message.content_ref,
        tool_calls=message.tool_calls,
    )


def blobs_of(
    full: Message | ToolCall | ModelResponded, stored: Message | ToolCall | ModelResponded
) -> Iterator[bytes]:
    """The texts ``stored`` moved out of ``full``, to ``put`` in the blob table."""
    if stored is full:
        return
    if isinstance(full, ToolCall):
        assert isinstance(stored, ToolCall)
        for name in stored.argument_refs.keys() - full.argument_refs.keys():
            yield str(full.arguments[name]).encode("utf-8")
        return
    assert not isinstance(stored, ToolCall)
    if stored.content_ref and not full.content_ref:
        yield full.content.encode("utf-8")
    for old, new in zip(full.tool_calls, stored.tool_calls, strict=True):
        yield from blobs_of(old, new)


def full_arguments(
    arguments: Mapping[str, Any], refs: Mapping[str, str], blobs: Blobs
) -> dict[str, Any]:
    """Stored arguments with their moved-out strings read back."""
    full = dict(arguments)
    for name, digest in refs.items():
        full[name] = blobs.get(digest).decode("utf-8")
    return full


def full_call(call: ToolCall, blobs: Blobs) -> ToolCall:
    """The tool call as the model sent it."""
    if not call.argument_refs:
        return call
    arguments = full_arguments(call.arguments, call.argument_refs, blobs)
    return msgspec.structs.replace(call, arguments=arguments, argument_refs={})


def full_message(message: Message, blobs: Blobs) -> Message:
    """The message as it was sent."""
    changes: dict[str, Any] = {}
    if message.content_ref:
        changes["content"] = blobs.get(message.content_ref).decode("utf-8")
        changes["content_ref"] = ""
    if any(c.argument_refs for c in message.tool_calls):
        changes["tool_calls"] = tuple(full_call(c, blobs) for c in message.tool_calls)
    return msgspec.structs.replace(message, **changes) if changes else message


def full_answer(answer: ModelResponded, blobs: Blobs) -> ModelResponded:
    """The ``model.responded`` with content and arguments as the model sent them;
    ``answer`` itself when nothing was moved out."""
    if not answer.content_ref and not any(c.argument_refs for c in answer.tool_calls):
        return answer
    message = _as_message(answer)
    return _with_message(answer, message, full_message(message, blobs))


def full_reply(answer: ModelResponded, blobs: Blobs, **changes: Any) -> ModelReply:
    """The reply a recorded ``answer`` stands for, its long texts read back;
    ``changes`` sets the fields the caller knows otherwise (an endpoint, no usage)."""
    full = full_answer(answer, blobs)
    fields: dict[str, Any] = {
        "content": full.content,
        "tool_calls": full.tool_calls,
        "done_reason": full.done_reason,
        "usage": full.usage,
        "duration_ms": full.duration_ms,
        "model_identity": full.model_identity,
        "extracted_from_text": full.extracted_from_text,
    }
    return ModelReply(**(fields | changes))
