"""OrchestrationState: who decided what, who was consulted, what the models cost.

Model usage is a projection of ``model.*`` events, never a counter in an object,
so it cannot drift from what was recorded. Conversations are rebuilt from the
message deltas carried by ``model.requested``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from events.schema import (
    ArbiterDecided,
    Event,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    SpecialistConsulted,
    UserAnswered,
    UserAsked,
)
from projections.sequence import Appended, FirstSeen

replace = msgspec.structs.replace


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    action: str
    parameters: dict[str, Any] = {}
    reasoning: str = ""
    decided_by: str = ""
    fallback_used: bool = False
    fallback_reason: str = ""


class Consultation(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    specialist: str
    task_id: str = ""
    outcome: str = ""
    summary: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Totals for one model or one role."""

    calls: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CallInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a model call was, so that its response can be attributed."""

    role: str
    model: str
    conversation: str
    request_digest: str
    temperature: float | None
    version: int


class OrchestrationState(msgspec.Struct, frozen=True, kw_only=True):
    decisions: Appended[Decision] = msgspec.field(default_factory=Appended)
    consultations: Appended[Consultation] = msgspec.field(default_factory=Appended)
    usage_by_model: dict[str, Usage] = {}
    usage_by_role: dict[str, Usage] = {}
    conversations: dict[str, tuple[Message, ...]] = {}
    """Full message list of each conversation's latest request (stored form)."""
    open_calls: dict[str, CallInfo] = {}
    """Requests not yet answered (a call that finally failed stays here)."""
    answered: FirstSeen[str, str] = msgspec.field(default_factory=FirstSeen)
    """request digest -> call id of the first successful response to it."""
    user_messages: tuple[tuple[str, str], ...] = ()
    """(question, answer) pairs; an open question has answer ""."""

    @property
    def total_tokens(self) -> int:
        return sum(u.tokens for u in self.usage_by_model.values())


def _add(table: dict[str, Usage], key: str, **delta: float) -> dict[str, Usage]:
    old = table.get(key, Usage())
    new = Usage(
        calls=old.calls + int(delta.get("calls", 0)),
        failures=old.failures + int(delta.get("failures", 0)),
        prompt_tokens=old.prompt_tokens + int(delta.get("prompt_tokens", 0)),
        completion_tokens=old.completion_tokens + int(delta.get("completion_tokens", 0)),
        duration_ms=old.duration_ms + float(delta.get("duration_ms", 0.0)),
    )
    return {**table, key: new}


def apply_orchestration(
    state: OrchestrationState, event: Event, version: int
) -> OrchestrationState:
    """The orchestration state after ``event`` (recorded at ``version``)."""
    if isinstance(event, ModelRequested):
        previous = state.conversations.get(event.conversation, ())
        messages = (*previous[: event.message_offset], *event.messages)
        temperature = event.options.get("temperature")
        call = CallInfo(
            role=event.role,
            model=event.model,
            conversation=event.conversation,
            request_digest=event.request_digest,
            temperature=float(temperature) if isinstance(temperature, int | float) else None,
            version=version,
        )
        return replace(
            state,
            conversations={**state.conversations, event.conversation: messages},
            open_calls={**state.open_calls, event.call_id: call},
        )
    if isinstance(event, ModelResponded):
        answered_call = state.open_calls.get(event.call_id)
        if answered_call is None:
            return state
        delta = {
            "calls": 1,
            "prompt_tokens": event.usage.prompt_tokens,
            "completion_tokens": event.usage.completion_tokens,
            "duration_ms": event.duration_ms,
        }
        return replace(
            state,
            open_calls={k: v for k, v in state.open_calls.items() if k != event.call_id},
            usage_by_model=_add(state.usage_by_model, answered_call.model, **delta),
            usage_by_role=_add(state.usage_by_role, answered_call.role, **delta),
            answered=state.answered.with_first(answered_call.request_digest, event.call_id),
        )
    if isinstance(event, ModelFailed):
        failed_call = state.open_calls.get(event.call_id)
        if failed_call is None:
            return state
        return replace(
            state,
            usage_by_model=_add(state.usage_by_model, failed_call.model, failures=1),
            usage_by_role=_add(state.usage_by_role, failed_call.role, failures=1),
        )
    if isinstance(event, ArbiterDecided):
        decision = Decision(
            version=version,
            action=event.action,
            parameters=event.parameters,
            reasoning=event.reasoning,
            decided_by=event.decided_by,
            fallback_used=event.fallback_used,
            fallback_reason=event.fallback_reason,
        )
        return replace(state, decisions=state.decisions.append(decision))
    if isinstance(event, SpecialistConsulted):
        consultation = Consultation(
            version=version,
            specialist=event.specialist,
            task_id=event.task_id,
            outcome=event.outcome,
            summary=event.summary,
        )
        return replace(state, consultations=state.consultations.append(consultation))
    if isinstance(event, UserAsked):
        return replace(state, user_messages=(*state.user_messages, (event.question, "")))
    if isinstance(event, UserAnswered):
        pairs = list(state.user_messages) or [("", "")]
        pairs[-1] = (pairs[-1][0], event.answer)
        return replace(state, user_messages=tuple(pairs))
    return state
