"""engine.model.canonical: a conversation's requests worked out message by message give
the digests, stored forms and sizes of the whole request, byte for byte; and
engine.model.context.fit, which takes those sizes, trims as it always did."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from engine.model.canonical import ConversationCache, OfferedTools, RequestTail, request_digest
from engine.model.client import tool_names
from engine.model.context import estimate_tokens, fit, message_chars
from engine.model.stored import stored_form
from events.schema import Message, ToolCall
from events.strategies import messages, texts

LIMIT = 16
"""A small inline limit, so that stored forms move texts out often."""

_long_messages = st.one_of(
    messages(),
    st.builds(
        Message,
        role=st.sampled_from(("user", "assistant", "tool")),
        content=texts(max_size=40),
    ),
)
_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_calls = st.builds(
    ToolCall,
    id=st.text(max_size=4),
    name=st.text(max_size=6),
    arguments=st.dictionaries(st.text(max_size=6), _json, max_size=3),
)
_messages = st.lists(
    st.builds(
        Message,
        role=st.sampled_from(("system", "user", "assistant", "tool")),
        content=st.text(max_size=20),
        tool_calls=st.lists(_calls, max_size=2).map(tuple),
        name=st.text(max_size=4),
    ),
    max_size=4,
)
_tools = st.lists(st.dictionaries(st.text(max_size=6), _json, max_size=4), max_size=3)
_options = st.dictionaries(st.text(max_size=6), _json_scalars, max_size=3)


def whole_digest(
    model: str, sent: list[Message], tools: list[dict[str, Any]], options: dict[str, Any]
) -> str:
    """The definition every recorded log's digests were made with: replay depends on it."""
    whole = {
        "model": model,
        "messages": [msgspec.to_builtins(m) for m in sent],
        "tools": [dict(t) for t in tools],
        "options": dict(options),
    }
    return hashlib.sha256(msgspec.json.encode(whole, order="sorted")).hexdigest()


@given(model=st.text(max_size=8), messages=_messages, tools=_tools, options=_options)
def test_the_digest_hashed_in_parts_is_the_digest_of_the_whole_canonical_request(
    model: str, messages: list[Message], tools: list[dict[str, Any]], options: dict[str, Any]
) -> None:
    expected = whole_digest(model, messages, tools, options)
    offered = OfferedTools(tools)
    assert request_digest(model, messages, tools, options) == expected
    assert request_digest(model, messages, offered, options) == expected
    assert offered.chars == sum(len(msgspec.json.encode(t)) for t in tools)
    assert offered.names == tool_names(tools)


# each step of a conversation: the list grows in place (the usual turn), or a new list
# starts with copies of some of the messages (equal, not the same objects), or with
# some of the very objects; then a fitted request may keep the first two and the last
_steps = st.lists(
    st.tuples(
        st.sampled_from(("grow", "grow", "copied", "same")),
        st.integers(0, 6),
        st.lists(_long_messages, min_size=1, max_size=3),
        st.integers(0, 3),
    ),
    min_size=2,
    max_size=5,
)


@given(model=st.text(max_size=8), tools=_tools, options=_options, steps=_steps)
def test_a_conversation_cache_works_out_each_request_as_the_whole_request(
    model: str,
    tools: list[dict[str, Any]],
    options: dict[str, Any],
    steps: list[tuple[str, int, list[Message], int]],
) -> None:
    cache = ConversationCache(limit=LIMIT)
    offered = OfferedTools(tools)
    history: list[Message] = []
    for how, keep, new, dropped in steps:
        if how == "grow":
            history += new
        elif how == "copied":
            history = [msgspec.structs.replace(m) for m in history[:keep]] + new
        else:
            history = history[:keep] + new
        cache.update(history)
        fitted = history[:2] + history[2 + dropped :]
        for sent in (history, fitted):
            assert cache.digest(sent, offered, RequestTail(model, options)) == whole_digest(
                model, sent, tools, options
            )
            assert cache.stored_forms(sent) == [stored_form(m, limit=LIMIT) for m in sent]
        assert cache.chars == [message_chars(m) for m in history]


def fit_as_defined(messages: list[Message], num_ctx: int, reserve: int) -> list[Message]:
    """fit as it was first written: estimate the whole request again after each drop."""
    budget = num_ctx - reserve
    kept = list(messages)
    if estimate_tokens(kept) <= budget:
        return kept
    head, history = kept[:2], kept[2:]
    while history and estimate_tokens(head + history) > budget:
        history.pop(0)
        while history and history[0].role == "tool":
            history.pop(0)
    return head + history


@given(
    sent=st.lists(_long_messages, max_size=8),
    num_ctx=st.integers(1, 120),
    reserve=st.integers(0, 40),
    given_chars=st.booleans(),
)
def test_fit_keeps_what_estimating_the_whole_request_after_each_drop_kept(
    sent: list[Message], num_ctx: int, reserve: int, given_chars: bool
) -> None:
    chars = [message_chars(m) for m in sent] if given_chars else None
    assert fit(sent, num_ctx, reserve=reserve, chars=chars) == fit_as_defined(
        sent, num_ctx, reserve
    )
