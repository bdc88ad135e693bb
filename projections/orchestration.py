"""OrchestrationState: who decided what, who was consulted, what the models cost.

Model usage is a projection of ``model.*`` events, never a counter in an object,
so it cannot drift from what was recorded. Conversations are rebuilt from the
message deltas carried by ``model.requested``.

Like ``apply_pipeline``, ``apply_orchestration`` is pure, returns its input when
an event does not concern it, keeps growing parts in persistent collections,
writes each event's step once against an ``OrchestrationBuilder`` (see
``projections.pipeline``; a model call's two events are also written directly
over the persistent maps, at the end of the module), and its state Structs are
``gc=False`` (built bottom-up, never part of a cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import msgspec

from events.schema import (
    ArbiterDecided,
    Event,
    Message,
    ModelContextLearned,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunResumed,
    SpecialistConsulted,
    UserAnswered,
    UserAsked,
)
from projections.sequence import (
    Appended,
    AppendedEditor,
    Growing,
    MapEditor,
    PersistentMap,
    freeze_map,
    freeze_sequence,
    one_event_builder,
    persistent_map,
    thaw_map,
    thaw_sequence,
)

replace = msgspec.structs.replace


class Decision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    version: int
    action: str
    parameters: dict[str, Any] = {}
    reasoning: str = ""
    decided_by: str = ""
    fallback_used: bool = False
    fallback_reason: str = ""


class Consultation(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    version: int
    specialist: str
    task_id: str = ""
    outcome: str = ""
    summary: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Totals for one model or one role."""

    calls: int = 0
    """Answers that came from a model server."""
    cached: int = 0
    """Answers taken from the log instead (``model.responded.cached_from``)."""
    failures: int = 0
    interrupted: int = 0
    """Calls a stop cut off: never answered, never failed, the run resumed after."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CallInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a model call was, so that its response can be attributed."""

    role: str
    model: str
    conversation: str
    request_digest: str
    temperature: float | None
    version: int
    failures: int = 0


class RefusedContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The context window a server's overflow error reported (``model.failed``)."""

    context: int
    """The window, in the server's tokens."""
    scale: float = 1.0
    """The server's tokens per token the engine estimated, measured on the refused
    prompt (1.0 when the server did not count it)."""


class ServedContext(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a server said of one model's context window (``model.context_learned``)."""

    context: int = 0
    trained: int = 0


def served_key(endpoint: str, model: str) -> str:
    """The key of ``OrchestrationState.served_contexts`` for a model on a server."""
    return f"{endpoint} {model}"


_NO_USAGE: PersistentMap[str, Usage] = PersistentMap()
_NO_SERVED: PersistentMap[str, ServedContext] = PersistentMap()
_NO_REFUSALS: PersistentMap[str, RefusedContext] = PersistentMap()
_NO_CONVERSATIONS: PersistentMap[str, tuple[Message, ...]] = PersistentMap()
_NO_CALLS: PersistentMap[str, CallInfo] = PersistentMap()
_NOTHING_ANSWERED: PersistentMap[str, int] = PersistentMap()
_NO_DECISIONS: Appended[Decision] = Appended()
_NO_CONSULTATIONS: Appended[Consultation] = Appended()
_UNUSED = Usage()


class OrchestrationState(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    decisions: Appended[Decision] = _NO_DECISIONS
    consultations: Appended[Consultation] = _NO_CONSULTATIONS
    usage_by_model: PersistentMap[str, Usage] = _NO_USAGE
    usage_by_role: PersistentMap[str, Usage] = _NO_USAGE
    conversations: PersistentMap[str, tuple[Message, ...]] = _NO_CONVERSATIONS
    """Full message list of each conversation's latest request (stored form)."""
    open_calls: PersistentMap[str, CallInfo] = _NO_CALLS
    """Requests not yet answered (a call that finally failed stays here)."""
    answered: PersistentMap[str, int] = _NOTHING_ANSWERED
    """request digest -> version of the first successful response to it (the one
    event a recorder reads to answer the same request again)."""
    user_messages: tuple[tuple[str, str], ...] = ()
    """(question, answer) pairs; an open question has answer ""."""
    failures_since_answer: int = 0
    """Failed model attempts since the last answer: a model server that keeps failing."""
    last_failure: str = ""
    """The latest failed attempt: ``model server URL: kind: detail``."""
    refused_contexts: PersistentMap[str, RefusedContext] = _NO_REFUSALS
    """endpoint -> the context window its latest overflow error reported."""
    served_contexts: PersistentMap[str, ServedContext] = _NO_SERVED
    """``served_key(endpoint, model)`` -> what the server said of the model's window."""

    @property
    def total_tokens(self) -> int:
        return sum(u.tokens for u in self.usage_by_model.values())


class OrchestrationBuilder:
    """An ``OrchestrationState`` under construction (see ``PipelineBuilder``)."""

    __slots__ = (
        "answered",
        "consultations",
        "conversations",
        "decisions",
        "failures_since_answer",
        "last_failure",
        "open_calls",
        "refused_contexts",
        "served_contexts",
        "usage_by_model",
        "usage_by_role",
        "user_messages",
    )

    decisions: Growing[Decision]
    consultations: Growing[Consultation]
    usage_by_model: MutableMapping[str, Usage]
    usage_by_role: MutableMapping[str, Usage]
    conversations: MutableMapping[str, tuple[Message, ...]]
    open_calls: MutableMapping[str, CallInfo]
    answered: MutableMapping[str, int]
    refused_contexts: MutableMapping[str, RefusedContext]
    served_contexts: MutableMapping[str, ServedContext]

    def __init__(self, state: OrchestrationState) -> None:
        """Start from ``state``, over copies of its collections: for many events
        (``apply`` of one event builds over editors instead, see ``one_event_builder``)."""
        self.user_messages = state.user_messages
        self.failures_since_answer = state.failures_since_answer
        self.last_failure = state.last_failure
        self.decisions = thaw_sequence(state.decisions)
        self.consultations = thaw_sequence(state.consultations)
        self.usage_by_model = thaw_map(state.usage_by_model)
        self.usage_by_role = thaw_map(state.usage_by_role)
        self.conversations = thaw_map(state.conversations)
        self.open_calls = thaw_map(state.open_calls)
        self.answered = thaw_map(state.answered)
        self.refused_contexts = thaw_map(state.refused_contexts)
        self.served_contexts = thaw_map(state.served_contexts)

    def freeze(self) -> OrchestrationState:
        """The state built; the builder must not be used afterwards."""
        return OrchestrationState(
            decisions=freeze_sequence(self.decisions),
            consultations=freeze_sequence(self.consultations),
            usage_by_model=freeze_map(self.usage_by_model),
            usage_by_role=freeze_map(self.usage_by_role),
            conversations=freeze_map(self.conversations),
            open_calls=freeze_map(self.open_calls),
            answered=freeze_map(self.answered),
            refused_contexts=freeze_map(self.refused_contexts),
            served_contexts=freeze_map(self.served_contexts),
            user_messages=self.user_messages,
            failures_since_answer=self.failures_since_answer,
            last_failure=self.last_failure,
        )


_OrchestrationEdit = one_event_builder(
    OrchestrationBuilder,
    ("user_messages", "failures_since_answer", "last_failure"),
    {
        "decisions": AppendedEditor,
        "consultations": AppendedEditor,
        "usage_by_model": MapEditor,
        "usage_by_role": MapEditor,
        "conversations": MapEditor,
        "open_calls": MapEditor,
        "answered": MapEditor,
        "refused_contexts": MapEditor,
        "served_contexts": MapEditor,
    },
)


Step = Callable[[OrchestrationBuilder, Any, int], None]
"""How one event type changes orchestration under construction (``event``, ``version``)."""


def apply_orchestration(
    state: OrchestrationState, event: Event, version: int
) -> OrchestrationState:
    """The orchestration state after ``event`` (recorded at ``version``)."""
    persistent = _PERSISTENT_STEPS.get(type(event))
    if persistent is not None:
        return persistent(state, event, version)
    step = ORCHESTRATION_STEPS.get(type(event))
    if step is None:
        return state
    building = _OrchestrationEdit(state)
    step(building, event, version)
    return building.freeze()


def _model_requested(b: OrchestrationBuilder, event: ModelRequested, version: int) -> None:
    conversations = b.conversations
    conversations[event.conversation] = _conversation(conversations, event)
    b.open_calls[event.call_id] = _call(event, version)


def _conversation(
    conversations: Mapping[str, tuple[Message, ...]], event: ModelRequested
) -> tuple[Message, ...]:
    """The messages of the request's conversation: those it had, up to the request's
    offset, and the request's new ones."""
    previous = conversations.get(event.conversation, ())
    added = event.messages
    if type(added) is not tuple:  # a hand-made event may carry a list
        added = tuple(added)
    if event.message_offset < len(previous):
        return previous[: event.message_offset] + added
    return previous + added if previous else added


def _call(event: ModelRequested, version: int) -> CallInfo:
    temperature = event.options.get("temperature")
    return CallInfo(
        role=event.role,
        model=event.model,
        conversation=event.conversation,
        request_digest=event.request_digest,
        temperature=float(temperature) if isinstance(temperature, (int, float)) else None,
        version=version,
    )


def _model_responded(b: OrchestrationBuilder, event: ModelResponded, version: int) -> None:
    b.failures_since_answer = 0
    call = b.open_calls.pop(event.call_id, None)
    if call is None:
        return
    for table, key in ((b.usage_by_model, call.model), (b.usage_by_role, call.role)):
        table[key] = _answered(table.get(key, _UNUSED), event)
    answered = b.answered
    if call.request_digest not in answered:
        answered[call.request_digest] = version


def _answered(old: Usage, event: ModelResponded) -> Usage:
    """``old`` with the answer counted."""
    served, cached = (0, 1) if event.cached_from else (1, 0)
    return Usage(
        calls=old.calls + served,
        cached=old.cached + cached,
        failures=old.failures,
        interrupted=old.interrupted,
        prompt_tokens=old.prompt_tokens + event.usage.prompt_tokens,
        completion_tokens=old.completion_tokens + event.usage.completion_tokens,
        duration_ms=old.duration_ms + event.duration_ms,
    )


def _model_failed(b: OrchestrationBuilder, event: ModelFailed, version: int) -> None:
    call = b.open_calls.get(event.call_id)
    if call is None:
        return
    b.open_calls[event.call_id] = replace(call, failures=call.failures + 1)
    b.failures_since_answer += 1
    where = f"model server {event.endpoint}: " if event.endpoint else ""
    b.last_failure = f"{where}{event.kind}: {event.detail}" if event.detail else where + event.kind
    for table, key in ((b.usage_by_model, call.model), (b.usage_by_role, call.role)):
        old = table.get(key, _UNUSED)
        table[key] = replace(old, failures=old.failures + 1)
    if event.context > 0:
        counted = event.prompt_tokens > 0 and event.estimated_tokens > 0
        scale = event.prompt_tokens / event.estimated_tokens if counted else 1.0
        b.refused_contexts[event.endpoint] = RefusedContext(context=event.context, scale=scale)


def _model_context_learned(
    b: OrchestrationBuilder, event: ModelContextLearned, version: int
) -> None:
    served = ServedContext(context=event.context, trained=event.trained)
    b.served_contexts[served_key(event.endpoint, event.model)] = served


def _run_resumed(b: OrchestrationBuilder, event: RunResumed, version: int) -> None:
    # the calls the stop cut off will never be answered: they count as interrupted
    for call_id in event.open_calls:
        call = b.open_calls.pop(call_id, None)
        if call is None:
            continue
        for table, key in ((b.usage_by_model, call.model), (b.usage_by_role, call.role)):
            old = table.get(key, _UNUSED)
            table[key] = replace(old, interrupted=old.interrupted + 1)


def _arbiter_decided(b: OrchestrationBuilder, event: ArbiterDecided, version: int) -> None:
    b.decisions.append(
        Decision(
            version=version,
            action=event.action,
            parameters=event.parameters,
            reasoning=event.reasoning,
            decided_by=event.decided_by,
            fallback_used=event.fallback_used,
            fallback_reason=event.fallback_reason,
        )
    )


def _specialist_consulted(
    b: OrchestrationBuilder, event: SpecialistConsulted, version: int
) -> None:
    b.consultations.append(
        Consultation(
            version=version,
            specialist=event.specialist,
            task_id=event.task_id,
            outcome=event.outcome,
            summary=event.summary,
        )
    )


def _user_asked(b: OrchestrationBuilder, event: UserAsked, version: int) -> None:
    b.user_messages = (*b.user_messages, (event.question, ""))


def _user_answered(b: OrchestrationBuilder, event: UserAnswered, version: int) -> None:
    pairs = b.user_messages or (("", ""),)
    b.user_messages = (*pairs[:-1], (pairs[-1][0], event.answer))


ORCHESTRATION_STEPS: dict[type[Event], Step] = {
    ModelRequested: _model_requested,
    ModelResponded: _model_responded,
    ModelFailed: _model_failed,
    ModelContextLearned: _model_context_learned,
    ArbiterDecided: _arbiter_decided,
    SpecialistConsulted: _specialist_consulted,
    UserAsked: _user_asked,
    UserAnswered: _user_answered,
    RunResumed: _run_resumed,
}
"""The step of each event type that changes orchestration; other types leave it as is."""


# -- the commonest events, written again over persistent maps --------------------------------
# A model call is two events of every five a run logs, and ``apply`` of one through a
# builder for one event costs about twice what these direct updates do (the builder,
# an editor per map touched, ``freeze``: ``benchmarks/bench_fold_apply.py``). Each
# does what its step above does, through the same helpers;
# ``tests/test_fold_properties.py`` holds the two to the same states.


def _model_requested_now(
    state: OrchestrationState, event: ModelRequested, version: int
) -> OrchestrationState:
    conversations = persistent_map(state.conversations)
    return replace(
        state,
        conversations=conversations.set(event.conversation, _conversation(conversations, event)),
        open_calls=persistent_map(state.open_calls).set(event.call_id, _call(event, version)),
    )


def _model_responded_now(
    state: OrchestrationState, event: ModelResponded, version: int
) -> OrchestrationState:
    open_calls = persistent_map(state.open_calls)
    call = open_calls.get(event.call_id)
    if call is None:
        return replace(state, failures_since_answer=0)
    by_model = persistent_map(state.usage_by_model)
    by_role = persistent_map(state.usage_by_role)
    answered = persistent_map(state.answered)
    if call.request_digest not in answered:
        answered = answered.set(call.request_digest, version)
    return replace(
        state,
        failures_since_answer=0,
        open_calls=open_calls.delete(event.call_id),
        usage_by_model=by_model.set(
            call.model, _answered(by_model.get(call.model, _UNUSED), event)
        ),
        usage_by_role=by_role.set(call.role, _answered(by_role.get(call.role, _UNUSED), event)),
        answered=answered,
    )


_PERSISTENT_STEPS: dict[
    type[Event], Callable[[OrchestrationState, Any, int], OrchestrationState]
] = {
    ModelRequested: _model_requested_now,
    ModelResponded: _model_responded_now,
}
