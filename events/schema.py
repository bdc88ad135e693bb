"""The event catalogue: what can happen in a run.

Every event is a frozen msgspec Struct in one tagged union (`Event`). The tag is
explicit (``type="tool.executed"``), never derived from a class name, and it is
also the ``type`` column of the stored row. Rules for evolving a type (msgspec's
schema-evolution rules): a new field gets a default; a field never changes type;
a breaking change bumps the class's ``schema_version`` and registers an upcaster
in ``events.upcasters`` for the old version.

Large bodies (file contents, long tool output) are not stored inline: they go to
the blob table and the event keeps the digest plus a short preview.
"""

from __future__ import annotations

from typing import Any, ClassVar, get_args

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False):
    """Base of every event payload.

    ``gc=False`` (here and on the value types below): the cyclic garbage collector
    never tracks events, so a run of 100k decoded events costs it nothing. An
    event cannot be part of a reference cycle: it is frozen and holds only JSON
    data (an event whose dict contained the event itself could not be encoded).
    """

    schema_version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


# -- value types carried inside events ------------------------------------------------


class ToolCall(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One tool call as a model asked for it, normalised across wire formats.

    ``argument_refs`` names, for each argument too long to keep inline (a file's
    content), the blob holding its full text; the argument then holds a preview."""

    id: str
    name: str
    arguments: dict[str, Any] = {}
    argument_refs: dict[str, str] = {}


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A chat message. ``content_ref`` is set when the full content lives in a blob
    and ``content`` holds only a preview."""

    role: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""
    content_ref: str = ""


class Usage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class FileChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A file a tool changed: sha256 of its content before and after (None: absent)."""

    path: str
    before: str | None = None
    after: str | None = None
    size: int = 0


# -- runs --------------------------------------------------------------------------


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    """``key_id`` names the key the run's hash chain is keyed with ("" for an
    unkeyed run): its id (``events.codec.key_id``), never the key."""

    goal: str
    workspace: str
    mode: str = "orchestrated"
    config: dict[str, Any] = {}
    engine_version: str = ""
    key_id: str = ""
    confinement: str = ""
    """How the run's commands are confined (``engine.tools.confine``), as described
    when it started; "" in logs written before confinement existed."""
    preflight: tuple[str, ...] = ()
    """What the preflight (``engine.model.preflight``) warned about before the run
    started: a model served under another name, a fallback serving for a primary
    that is down. Empty when it warned of nothing, or did not run."""


class RunFinished(Event, frozen=True, kw_only=True, tag="run.finished"):
    status: str
    reason: str = ""


class RunRewound(Event, frozen=True, kw_only=True, tag="run.rewound"):
    to_version: int
    reason: str = ""


class RunForked(Event, frozen=True, kw_only=True, tag="run.forked"):
    parent_run: str
    at_version: int
    workspace: str = ""


class RunResumed(Event, frozen=True, kw_only=True, tag="run.resumed"):
    """An engine took the run up again (``autonomy resume``), before it settled
    anything: a replay stops its own engine here, as the crash or the stop did.
    ``pending_tools`` are the tool calls requested but never reported, which the
    ``tool.executed`` events right after settle; ``open_calls`` the model calls the
    stop cut off (never answered, never failed); ``config`` the settings the
    resumed engine runs with (the recorded ones under any flags given then)."""

    engine_version: str = ""
    pending_tools: tuple[str, ...] = ()
    open_calls: tuple[str, ...] = ()
    config: dict[str, Any] = {}
    preflight: tuple[str, ...] = ()
    """What the preflight warned about before the resumed engine started (as in
    ``run.started``)."""


class UserAsked(Event, frozen=True, kw_only=True, tag="user.asked"):
    question: str


class UserAnswered(Event, frozen=True, kw_only=True, tag="user.answered"):
    answer: str


# -- pipeline ----------------------------------------------------------------------


class PhaseChanged(Event, frozen=True, kw_only=True, tag="phase.changed"):
    trigger: str
    from_phase: str
    to_phase: str
    reason: str = ""
    decided_by: str = "rules"


class TaskAdded(Event, frozen=True, kw_only=True, tag="task.added"):
    """Version 2 stores ``dependencies`` under the key ``depends_on`` (version 1:
    ``dependencies``; the upcaster renames it)."""

    schema_version: ClassVar[int] = 2

    task_id: str
    title: str
    description: str = ""
    target_file: str = ""
    priority: int = 5
    dependencies: tuple[str, ...] = msgspec.field(default=(), name="depends_on")


class TaskUpdated(Event, frozen=True, kw_only=True, tag="task.updated"):
    task_id: str
    status: str
    attempt: int = 0
    error: str = ""
    priority: int | None = None


# -- orchestration -------------------------------------------------------------------


class ModelRequested(Event, frozen=True, kw_only=True, tag="model.requested"):
    """A request to a model. ``messages`` holds only the messages after
    ``message_offset`` of the same conversation's previous request; the full
    conversation is a projection. ``request_digest`` covers the whole request."""

    call_id: str
    role: str
    model: str
    endpoint: str = ""
    api: str = "ollama"
    conversation: str = ""
    request_digest: str
    prompt_digest: str = ""
    message_offset: int = 0
    messages: tuple[Message, ...] = ()
    tool_names: tuple[str, ...] = ()
    options: dict[str, Any] = {}
    tools_ref: str = ""
    """sha256 of the blob holding the tools' JSON schemas as sent ("" in older logs)."""


class ModelResponded(Event, frozen=True, kw_only=True, tag="model.responded"):
    """A model's answer. Long content is in the blob ``content_ref`` (``content`` is
    then a preview); long tool-call arguments likewise (``ToolCall.argument_refs``)."""

    call_id: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    done_reason: str = ""
    duration_ms: float = 0.0
    model_identity: str = ""
    extracted_from_text: bool = False
    cached_from: str = ""
    content_ref: str = ""


class ModelFailed(Event, frozen=True, kw_only=True, tag="model.failed"):
    """One failed attempt. For a ``context_overflow`` the sizes, when the server said
    them: its ``context`` window and the ``prompt_tokens`` it counted, in its tokens,
    and ``estimated_tokens``, the engine's estimate of the same prompt (together they
    say how the server's tokens compare with the estimate). 0 otherwise."""

    call_id: str
    kind: str
    detail: str = ""
    attempt: int = 1
    endpoint: str = ""
    context: int = 0
    prompt_tokens: int = 0
    estimated_tokens: int = 0


class ModelContextLearned(Event, frozen=True, kw_only=True, tag="model.context_learned"):
    """What a model server said of a model's context window, asked when the run
    started or resumed (``engine.model.discovery``): an input the world gave the
    run, which a replay takes from the log. ``context`` is the window a request gets
    (Ollama's ``num_ctx`` parameter of the model, llama-server's ``n_ctx``), and
    ``trained`` the model's own maximum (``*.context_length``, ``n_ctx_train``);
    0 for what the server did not say. ``source`` names the API that said it."""

    endpoint: str
    model: str
    context: int = 0
    trained: int = 0
    source: str = ""


class ArbiterDecided(Event, frozen=True, kw_only=True, tag="arbiter.decided"):
    """One coordinator step: what was decided, by whom, and any fallback."""

    action: str
    parameters: dict[str, Any] = {}
    reasoning: str = ""
    decided_by: str = "rules"
    fallback_used: bool = False
    fallback_reason: str = ""


class SpecialistConsulted(Event, frozen=True, kw_only=True, tag="specialist.consulted"):
    specialist: str
    task_id: str = ""
    outcome: str = ""
    summary: str = ""


class ToolRequested(Event, frozen=True, kw_only=True, tag="tool.requested"):
    """A tool call about to run; long arguments as in ``ToolCall.argument_refs``."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = {}
    argument_refs: dict[str, str] = {}


class ToolExecuted(Event, frozen=True, kw_only=True, tag="tool.executed"):
    call_id: str
    tool: str = ""
    ok: bool
    result: str = ""
    result_ref: str = ""
    error: str = ""
    files_changed: tuple[FileChange, ...] = ()


AnyEvent = (
    RunStarted
    | RunFinished
    | RunRewound
    | RunForked
    | RunResumed
    | UserAsked
    | UserAnswered
    | PhaseChanged
    | TaskAdded
    | TaskUpdated
    | ModelRequested
    | ModelResponded
    | ModelFailed
    | ModelContextLearned
    | ArbiterDecided
    | SpecialistConsulted
    | ToolRequested
    | ToolExecuted
)

EVENT_TYPES: dict[str, type[Event]] = {cls.type_name(): cls for cls in get_args(AnyEvent)}
"""Every event class by its tag; the single list of what the log may contain."""


def blob_references(event: Event) -> list[str]:
    """The digests of the blobs ``event`` refers to: file contents before and after
    a tool changed them, a long tool result, a long message's or answer's full
    content, a long tool-call argument, the tools' schemas a request offered. Every
    one: verify checks these, and a blob left out (a request's tools, a long answer)
    could be deleted or changed with its run still verifying."""
    if isinstance(event, ToolExecuted):
        refs = [d for change in event.files_changed for d in (change.before, change.after) if d]
        return [*refs, event.result_ref] if event.result_ref else refs
    if isinstance(event, ModelRequested):
        refs = [event.tools_ref] if event.tools_ref else []
        for message in event.messages:
            if message.content_ref:
                refs.append(message.content_ref)
            refs += _call_refs(message.tool_calls)
        return refs
    if isinstance(event, ModelResponded):
        refs = [event.content_ref] if event.content_ref else []
        return refs + _call_refs(event.tool_calls)
    if isinstance(event, ToolRequested):
        return [d for d in event.argument_refs.values() if d]
    return []


def _call_refs(calls: tuple[ToolCall, ...]) -> list[str]:
    return [d for call in calls for d in call.argument_refs.values() if d]
