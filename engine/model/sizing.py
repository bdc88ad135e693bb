"""How much one request may hold and one answer may say: the context window a
role's messages are fitted to, and the cap on the answer.

An answer runs until the model stops or reaches the cap. Without a cap a model
that rambles fills the context (963 tokens, 90 s on a CPU, against llama-server),
and the next request, which repeats that answer, no longer fits. So every request
carries a cap (``num_predict`` for Ollama, ``max_tokens`` for OpenAI-compatible
servers): the role's ``max_answer_tokens``, or else ``REPLY_RESERVE`` (a quarter)
of the context, within [``MIN_ANSWER_TOKENS``, ``MAX_ANSWER_TOKENS``]. The
messages are fitted to what is left (``engine.prompts.fit``), so prompt and answer
fit together.

``max_answer_tokens = 0`` turns the cap off. It is also what the settings of a run
recorded before caps existed say (``engine.config.recorded_settings``): a replay of
such a run sends the requests it sent, with no cap and fitted as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from engine.model.roles import RoleConfig
from engine.prompts import REPLY_RESERVE, fit
from events.schema import Message

MIN_ANSWER_TOKENS = 128
"""The smallest default cap: enough for one tool call with a short file."""

MAX_ANSWER_TOKENS = 8192
"""The largest default cap: a longer answer is a runaway more often than a file."""


class Sizing(msgspec.Struct, frozen=True, kw_only=True):
    """The sizes one request of a role is built to."""

    context: int
    """Tokens of the context window the request must fit in."""
    answer_cap: int | None
    """Tokens one answer may take (None: no cap)."""

    def fit(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] = ()
    ) -> list[Message]:
        """``messages`` fitted to the window, leaving room for the answer."""
        return fit(messages, self.context, tools, reserve=self.answer_cap)


def answer_cap(config: RoleConfig, context: int) -> int | None:
    """The cap on one answer of a role whose window is ``context`` tokens."""
    if config.max_answer_tokens is not None:
        return config.max_answer_tokens or None
    share = int(context * REPLY_RESERVE)
    return max(MIN_ANSWER_TOKENS, min(MAX_ANSWER_TOKENS, share))


def sizing(config: RoleConfig) -> Sizing:
    """The window and the answer cap of ``config``'s requests."""
    context = config.num_ctx
    return Sizing(context=context, answer_cap=answer_cap(config, context))


__all__ = ["MAX_ANSWER_TOKENS", "MIN_ANSWER_TOKENS", "Sizing", "answer_cap", "sizing"]
