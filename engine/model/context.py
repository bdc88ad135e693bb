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
        tool_chars = sum(len(msgspec.json.encode(tool)) for tool in tools)
    chars = tool_chars
    for m in messages:
        chars += len(m.content) + 8
        for call in m.tool_calls:
            chars += len(call.name) + len(msgspec.json.encode(call.arguments))
    return chars // CHARS_PER_TOKEN + 1


def fit(
    messages: Sequence[Message],
    num_ctx: int,
    tools: Sequence[Mapping[str, Any]] = (),
    *,
    reserve: int | None = None,
    tool_chars: int | None = None,
) -> list[Message]:
    """``messages`` trimmed to fit ``num_ctx`` tokens less the reply reserve:
    ``reserve`` tokens (the answer's cap), or ``REPLY_RESERVE`` of the window.

    The first two messages (system prompt and current task) always stay; history
    after them is dropped oldest first, an assistant turn together with the tool
    results answering it, so no tool result is left without its call. If even the
    system prompt and the task do not fit, they are sent anyway: the server
    truncates, and the log shows what was sent. ``tool_chars`` as for
    ``estimate_tokens``."""
    budget = int(num_ctx * (1 - REPLY_RESERVE)) if reserve is None else num_ctx - reserve
    if tool_chars is None:
        tool_chars = sum(len(msgspec.json.encode(tool)) for tool in tools)
    kept = list(messages)
    if estimate_tokens(kept, tool_chars=tool_chars) <= budget:
        return kept
    head, history = kept[:2], kept[2:]
    while history and estimate_tokens(head + history, tool_chars=tool_chars) > budget:
        history.pop(0)
        while history and history[0].role == "tool":
            history.pop(0)
    return head + history
