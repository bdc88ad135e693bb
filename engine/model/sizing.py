"""How much one request may hold and one answer may say: the context window a
role's messages are fitted to, and the cap on the answer.

An answer runs until the model stops or reaches the cap. Without a cap a model
that rambles fills the context (963 tokens, 90 s on a CPU, against llama-server),
and the next request, which repeats that answer, no longer fits. So every request
carries a cap (``num_predict`` for Ollama, ``max_tokens`` for OpenAI-compatible
servers): the role's ``max_answer_tokens``, or else ``REPLY_RESERVE`` (a quarter)
of the context, within [``MIN_ANSWER_TOKENS``, ``MAX_ANSWER_TOKENS``]. The
messages are fitted to what is left (``engine.model.context.fit``), so prompt and answer
fit together.

``max_answer_tokens = 0`` turns the cap off. It is also what the settings of a run
recorded before caps existed say (``engine.config.recorded_settings``): a replay of
such a run sends the requests it sent, with no cap and fitted as they were.

A server that refuses a request as too long for its window (``ModelContextOverflow``)
says how long the window is and how many of its tokens the prompt took;
``model.failed`` records both, with the engine's estimate of the same prompt, and
from then on that window, and the measured ratio of the server's tokens to the
estimate, size the role's requests (``sizing(config, learned)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from engine.model.context import REPLY_RESERVE, fit
from engine.model.roles import DEFAULT_CONTEXT, RoleConfig
from events.schema import Message
from projections.orchestration import OrchestrationState, served_key

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
    scale: float = 1.0
    """The server's tokens per estimated token (``engine.model.context.estimate_tokens``),
    as an overflow error measured it; 1.0 until one did."""

    def fit(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] = (),
        *,
        tool_chars: int | None = None,
        chars: Sequence[int] | None = None,
    ) -> list[Message]:
        """``messages`` fitted to the window, leaving room for the answer
        (``tool_chars`` and ``chars`` as for ``engine.model.context.fit``)."""
        if self.scale == 1.0:
            return fit(
                messages,
                self.context,
                tools,
                reserve=self.answer_cap,
                tool_chars=tool_chars,
                chars=chars,
            )
        cap = self.answer_cap
        reserve = None if cap is None else int(cap / self.scale)
        return fit(
            messages,
            int(self.context / self.scale),
            tools,
            reserve=reserve,
            tool_chars=tool_chars,
            chars=chars,
        )


def answer_cap(config: RoleConfig, context: int) -> int | None:
    """The cap on one answer of a role whose window is ``context`` tokens."""
    if config.max_answer_tokens is not None:
        return config.max_answer_tokens or None
    share = int(context * REPLY_RESERVE)
    return max(MIN_ANSWER_TOKENS, min(MAX_ANSWER_TOKENS, share))


def sizing(role: str, config: RoleConfig, learned: OrchestrationState | None = None) -> Sizing:
    """The window and the answer cap of ``role``'s requests (``config``), from the
    config and what the run ``learned`` of its servers (the projection of its log).

    The window is the config's ``num_ctx`` when set; else the one the primary
    server said (``model.context_learned``); else ``DEFAULT_CONTEXT`` of the role,
    or the model's trained maximum if that is smaller. A window an overflow error of
    one of the role's endpoints reported then replaces it when it is the tighter
    (compared in estimated tokens)."""
    context, scale = config.num_ctx or _served(role, config, learned), 1.0
    if learned is not None:
        for endpoint in config.endpoints():
            refused = learned.refused_contexts.get(endpoint.label)
            if refused is not None and refused.context / refused.scale < context / scale:
                context, scale = refused.context, refused.scale
    return Sizing(context=context, answer_cap=answer_cap(config, context), scale=scale)


def sizing_inputs(learned: OrchestrationState) -> tuple[object, ...]:
    """What of the run's state ``sizing`` reads: the same objects, the same sizing
    (the projection replaces a map only when an event changes it)."""
    return (learned.refused_contexts, learned.served_contexts)


def _served(role: str, config: RoleConfig, learned: OrchestrationState | None) -> int:
    assumed = DEFAULT_CONTEXT.get(role, min(DEFAULT_CONTEXT.values()))
    primary = config.primary
    said = (
        learned.served_contexts.get(served_key(primary.label, primary.model)) if learned else None
    )
    if said is None:
        return assumed
    return said.context or min(assumed, said.trained or assumed)


__all__ = [
    "MAX_ANSWER_TOKENS",
    "MIN_ANSWER_TOKENS",
    "Sizing",
    "answer_cap",
    "sizing",
    "sizing_inputs",
]
