"""A request's canonical form and its digest, worked out once per message.

The digest of a request (``request_digest``) is the sha256 of its canonical JSON,
``{"messages": [...], "model": ..., "options": {...}, "tools": [...]}`` with every
key sorted; it is how a replay finds a recorded answer, so it never changes. It is
hashed part by part, in the order of that JSON:

- the tools, the same for every turn of a conversation, are encoded once
  (``OfferedTools``);
- the messages come first, and the next request of a conversation repeats the
  previous one's messages (the very objects: its history is a list that grows), so
  a ``ConversationCache`` keeps, for each message of the last request, the hash's
  state after it, with the message's stored form and estimated size: a request
  encodes, hashes and stores only the messages the previous one did not have.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from engine.model.client import tool_names
from engine.model.context import message_chars
from engine.model.stored import stored_form
from events.schema import Message

if TYPE_CHECKING:
    from hashlib import _Hash

_OPEN = b'{"messages":['


class OfferedTools:
    """The tools' schemas of a request, encoded once: their canonical JSON (in the
    request digest, and the blob ``tools_ref`` names), their names, and the
    characters ``engine.model.context.fit`` counts for them."""

    def __init__(self, schemas: Sequence[dict[str, Any]]) -> None:
        self.schemas = schemas
        self.canonical = msgspec.json.encode([dict(t) for t in schemas], order="sorted")
        self.names = tool_names(schemas)
        # what estimate_tokens counts: each schema's compact JSON (key order does not
        # change its length), i.e. the list without its brackets and commas
        self.chars = len(self.canonical) - 1 - len(schemas) if schemas else 0


def request_digest(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | OfferedTools,
    options: Mapping[str, Any],
) -> str:
    """sha256 of the canonical JSON of a whole request (full messages, not stored
    forms): equal requests have equal digests, whatever the dict order.
    Replay computes the same digest to find the recorded answer."""
    offered = tools if isinstance(tools, OfferedTools) else OfferedTools([dict(t) for t in tools])
    return _digest(messages, offered, RequestTail(model, options))


def _digest(messages: Sequence[Message], offered: OfferedTools, tail: RequestTail) -> str:
    h = hashlib.sha256(_OPEN)
    h.update(b",".join([msgspec.json.encode(m, order="sorted") for m in messages]))
    return tail.digest(h, offered)


class RequestTail:
    """The canonical JSON between a request's messages and its tools (its model and
    options), encoded once for all the requests of a role that share them."""

    def __init__(self, model: str, options: Mapping[str, Any]) -> None:
        encode = msgspec.json.encode
        self.encoded = b"".join(
            (
                b'],"model":',
                encode(model),
                b',"options":',
                encode(dict(options), order="sorted"),
                b',"tools":',
            )
        )

    def digest(self, h: _Hash, offered: OfferedTools) -> str:
        """The digest of a request whose messages ``h`` has hashed."""
        h.update(self.encoded + offered.canonical + b"}")
        return h.hexdigest()


class ConversationCache:
    """What a recorder worked out for the messages of a conversation's last request:
    each message's stored form (``engine.model.stored``) and size as
    ``engine.model.context`` estimates it, and the digest's hash state after them all.

    ``update`` takes the next request's messages and works out only those after the
    longest prefix of the very same objects (all of them when that prefix is not the
    whole of the last request: the hash state is kept after the last message only).
    The cache holds the messages it describes, so their ids are not reused while it
    compares them."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.messages: list[Message] = []
        self.stored: list[Message] = []
        self.chars: list[int] = []
        self._hashed: _Hash | None = None  # after the described messages, once there are some

    def update(self, messages: Sequence[Message]) -> None:
        """Describe ``messages`` from now on."""
        kept = _same_prefix(self.messages, messages)
        if kept < len(self.messages):  # not a continuation: all hashed again
            del self.messages[kept:], self.stored[kept:], self.chars[kept:]
            h, added = hashlib.sha256(_OPEN), messages
        else:
            added = messages[kept:]
            if not added:
                return
            if self._hashed is None:
                h = hashlib.sha256(_OPEN)
            else:
                h = self._hashed.copy()
                h.update(b",")
        h.update(b",".join([msgspec.json.encode(m, order="sorted") for m in added]))
        self._hashed = h
        limit = self.limit
        for message in messages[kept:]:
            self.messages.append(message)
            self.stored.append(stored_form(message, limit=limit))
            self.chars.append(message_chars(message))

    def stored_forms(self, messages: Sequence[Message]) -> list[Message]:
        """The stored forms of ``messages`` (a fitted request: some of the described ones)."""
        if self._describes(messages):
            return self.stored
        by_id = {id(m): s for m, s in zip(self.messages, self.stored, strict=True)}
        return [
            by_id[id(m)] if id(m) in by_id else stored_form(m, limit=self.limit) for m in messages
        ]

    def digest(self, messages: Sequence[Message], offered: OfferedTools, tail: RequestTail) -> str:
        """``request_digest`` of ``messages`` (a fitted request: some of the described
        ones), with the tools ``offered`` and the model and options in ``tail``."""
        if self._hashed is None or not self._describes(messages):
            return _digest(messages, offered, tail)
        return tail.digest(self._hashed.copy(), offered)

    def _describes(self, messages: Sequence[Message]) -> bool:
        """Whether ``messages`` are the described ones, all of them."""
        return len(messages) == len(self.messages) and all(
            map(operator.is_, messages, self.messages)
        )


def _same_prefix(previous: Sequence[object], current: Sequence[object]) -> int:
    """How many leading items of the two are the very same objects."""
    if len(current) >= len(previous) and all(map(operator.is_, previous, current)):
        return len(previous)  # the usual next turn, checked without a Python loop
    kept = 0
    for old, new in zip(previous, current, strict=False):
        if old is not new:
            break
        kept += 1
    return kept
