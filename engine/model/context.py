"""Fitting a conversation to a model's context window.

``fit`` trims a conversation to a context window of ``num_ctx``
tokens, oldest history first, never the system prompt nor the opening message
(the current task). Tokens are estimated as characters / 4 (``estimate_tokens``),
the usual rule of thumb for English and code with BPE tokenizers: cheap, stable,
and deliberately rough, so ``fit`` also keeps ``REPLY_RESERVE`` of the window
free for the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from events.schema import Message

CHARS_PER_TOKEN = 4
"""The token estimate's ratio (see the module docstring)."""

REPLY_RESERVE = 0.25
"""Share of the context window kept free for the model's answer."""


def message_chars(message: Message) -> int:
    """The characters ``estimate_tokens`` counts for one message: its content, its
    tool calls' names and arguments, and a few for its role and framing."""
    chars = len(message.content) + 8
    if not message.tool_calls:
        return chars
    for call in message.tool_calls:
        chars += len(call.name) + len(msgspec.json.encode(call.arguments))
    return chars


def tools_chars(tools: Sequence[Mapping[str, Any]]) -> int:
    """The characters ``estimate_tokens`` counts for the tools' schemas."""
    return sum(len(msgspec.json.encode(tool)) for tool in tools)


def estimate_tokens(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] = (),
    *,
    tool_chars: int | None = None,
) -> int:
    """Tokens a request will take, estimated as characters / ``CHARS_PER_TOKEN``
    (content, tool call arguments and tool schemas). ``tool_chars`` is what ``tools``
    count, when the caller has it already (``OfferedTools.chars``)."""
    if tool_chars is None:
        tool_chars = tools_chars(tools)
    return (tool_chars + sum(map(message_chars, messages))) // CHARS_PER_TOKEN + 1


def fit(
    messages: Sequence[Message],
    num_ctx: int,
    tools: Sequence[Mapping[str, Any]] = (),
    *,
    reserve: int | None = None,
    tool_chars: int | None = None,
    chars: Sequence[int] | None = None,
) -> list[Message]:
    """``messages`` trimmed to fit ``num_ctx`` tokens less the reply reserve:
    ``reserve`` tokens (the answer's cap), or ``REPLY_RESERVE`` of the window.

    The first two messages (system prompt and current task) always stay; history
    after them is dropped oldest first, an assistant turn together with the tool
    results answering it, so no tool result is left without its call. If even the
    system prompt and the task do not fit, they are sent anyway: the server
    truncates, and the log shows what was sent. ``tool_chars`` as for
    ``estimate_tokens``; ``chars``, when the caller has them, are the
    ``message_chars`` of each message."""
    budget = int(num_ctx * (1 - REPLY_RESERVE)) if reserve is None else num_ctx - reserve
    if tool_chars is None:
        tool_chars = tools_chars(tools)
    sizes = list(map(message_chars, messages)) if chars is None else chars
    total = tool_chars + sum(sizes)
    kept = list(messages)
    first = 2  # the first message of the history still kept
    while first < len(kept) and total // CHARS_PER_TOKEN + 1 > budget:
        total -= sizes[first]
        first += 1
        while first < len(kept) and kept[first].role == "tool":
            total -= sizes[first]
            first += 1
    return kept if first == 2 else kept[:2] + kept[first:]
