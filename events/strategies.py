"""Hypothesis strategies for events, shipped so that users can build their own
regression and property tests on the same generators as ours.

Every strategy is derived from the Struct's fields (``events_of``), so a field added
to an event is generated without touching this module, and ``any_event`` covers
every type in ``EVENT_TYPES``, including types added later. The named per-type
strategies only narrow some fields to realistic shapes (digests, paths, phases).

Values are kept JSON-exact: no NaN or infinities, integers within 53 bits, text
without surrogates, and ``Any`` values limited to JSON scalars and flat lists. An
event drawn here therefore encodes, stores and decodes back to an equal event.

    from hypothesis import given
    from events.strategies import any_event, run_events

    @given(run_events())
    def test_my_fold_accepts_any_plausible_run(events): ...
"""

from __future__ import annotations

import hashlib
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from events.schema import (
    EVENT_TYPES,
    ArbiterDecided,
    Event,
    FileChange,
    Message,
    ModelContextLearned,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunForked,
    RunResumed,
    RunRewound,
    RunStarted,
    SpecialistConsulted,
    TaskAdded,
    TaskUpdated,
    ToolCall,
    ToolExecuted,
    ToolRequested,
    Usage,
    UserAnswered,
    UserAsked,
)

S = TypeVar("S", bound=msgspec.Struct)

INITIAL_PHASE = "start"  # a run's phase before its first phase.changed
PHASES = ("planning", "coding", "qa", "debugging", "documentation")
TASK_STATUSES = ("pending", "in_progress", "completed", "failed", "skipped")
ROLES = ("arbiter", "planner", "coder", "reviewer", "debugger", "documenter")
TOOLS = ("read_file", "write_file", "list_dir", "run_command", "search", "finish")
RUN_STATUSES = ("completed", "failed", "stopped", "no_progress")

# -- building blocks ------------------------------------------------------------------

MAX_INT = 2**53  # exact in every JSON reader, not only msgspec's

_ALPHABET = st.characters(codec="utf-8")  # no lone surrogates: they do not encode


def texts(max_size: int = 24) -> SearchStrategy[str]:
    """Short text of any (encodable) characters."""
    return st.text(_ALPHABET, max_size=max_size)


def names() -> SearchStrategy[str]:
    """Identifier-like text: ids, keys, tool and model names."""
    return st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)


def digests() -> SearchStrategy[str]:
    """A sha256 hex digest, as blobs and request digests are."""
    return st.binary(max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())


def paths() -> SearchStrategy[str]:
    """A relative POSIX path inside a workspace."""
    part = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
    suffix = st.sampled_from(("", ".py", ".md", ".toml", ".txt"))
    return st.builds(
        lambda parts, ext: "/".join(parts) + ext, st.lists(part, min_size=1, max_size=3), suffix
    )


def json_scalars() -> SearchStrategy[Any]:
    """Values that survive a JSON round trip unchanged when typed as ``Any``."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-MAX_INT, MAX_INT),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(),
    )


def json_values() -> SearchStrategy[Any]:
    return st.one_of(json_scalars(), st.lists(json_scalars(), max_size=3))


def json_objects() -> SearchStrategy[dict[str, Any]]:
    """A small ``dict[str, Any]`` of JSON scalars and flat lists."""
    return st.dictionaries(names(), json_values(), max_size=3)


def for_annotation(annotation: Any) -> SearchStrategy[Any]:
    """A JSON-exact strategy for a field annotation as msgspec reports it."""
    if annotation is Any:
        return json_values()
    if annotation is str:
        return texts()
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(-MAX_INT, MAX_INT)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if annotation is None or annotation is type(None):
        return st.none()
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return structs_of(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([for_annotation(a) for a in args])
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(for_annotation(args[0]), max_size=3).map(tuple)
        return st.tuples(*(for_annotation(a) for a in args))
    if origin is list:
        return st.lists(for_annotation(args[0]), max_size=3)
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"JSON objects have string keys, not {args[0]!r}")
        return st.dictionaries(names(), for_annotation(args[1]), max_size=3)
    # a type this module does not know yet: hypothesis may, and the round-trip
    # tests tell whether what it draws is JSON-exact
    return st.from_type(annotation)


def structs_of(cls: type[S], **overrides: SearchStrategy[Any]) -> SearchStrategy[S]:
    """Instances of a msgspec Struct with every field drawn from its annotation.

    ``overrides`` replace the strategy of individual fields by name; naming a field
    the Struct does not have is an error, so overrides cannot silently go stale.
    """
    fields = {f.name: f.type for f in msgspec.structs.fields(cls)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {
        name: overrides[name] if name in overrides else for_annotation(annotation)
        for name, annotation in fields.items()
    }
    return st.builds(cls, **kwargs)


events_of = structs_of
"""``events_of(TaskAdded, priority=st.just(1))``: the same as ``structs_of``."""


# -- value types ------------------------------------------------------------------------


def argument_refs() -> SearchStrategy[dict[str, str]]:
    """A long argument's blob, by the argument's name (``ToolCall.argument_refs``)."""
    return st.dictionaries(
        st.sampled_from(("content", "new", "old", "patch")), digests(), max_size=2
    )


def tool_calls() -> SearchStrategy[ToolCall]:
    return structs_of(
        ToolCall,
        id=names(),
        name=st.sampled_from(TOOLS),
        arguments=json_objects(),
        argument_refs=argument_refs(),
    )


def messages() -> SearchStrategy[Message]:
    return structs_of(
        Message,
        role=st.sampled_from(("system", "user", "assistant", "tool")),
        tool_calls=st.lists(tool_calls(), max_size=2).map(tuple),
        content_ref=st.one_of(st.just(""), digests()),
    )


def usages() -> SearchStrategy[Usage]:
    counts = st.integers(0, 200_000)
    return structs_of(Usage, prompt_tokens=counts, completion_tokens=counts)


def file_changes() -> SearchStrategy[FileChange]:
    maybe_digest = st.one_of(st.none(), digests())
    return structs_of(
        FileChange,
        path=paths(),
        before=maybe_digest,
        after=maybe_digest,
        size=st.integers(0, 10_000_000),
    )


# -- one strategy per event type -------------------------------------------------------


def run_started() -> SearchStrategy[RunStarted]:
    return events_of(
        RunStarted,
        workspace=paths().map(lambda p: "/work/" + p),
        mode=st.sampled_from(("orchestrated", "traditional")),
        config=json_objects(),
        engine_version=st.sampled_from(("", "0.1.0", "0.2.0.dev3")),
        # the id of the key the store chains the run with: "" for an unkeyed store
        key_id=st.just(""),
    )


def run_finished() -> SearchStrategy[RunFinished]:
    return events_of(RunFinished, status=st.sampled_from(RUN_STATUSES))


def run_rewound() -> SearchStrategy[RunRewound]:
    return events_of(RunRewound, to_version=st.integers(1, 10_000))


def run_forked() -> SearchStrategy[RunForked]:
    return events_of(
        RunForked,
        parent_run=names(),
        at_version=st.integers(1, 10_000),
        workspace=paths().map(lambda p: "/work/" + p),
    )


def run_resumed() -> SearchStrategy[RunResumed]:
    return events_of(
        RunResumed,
        pending_tools=st.lists(names(), max_size=3).map(tuple),
        open_calls=st.lists(names(), max_size=3).map(tuple),
    )


def user_asked() -> SearchStrategy[UserAsked]:
    return events_of(UserAsked)


def user_answered() -> SearchStrategy[UserAnswered]:
    return events_of(UserAnswered)


def phase_changed() -> SearchStrategy[PhaseChanged]:
    return events_of(
        PhaseChanged,
        trigger=names(),
        from_phase=st.sampled_from((INITIAL_PHASE, *PHASES)),
        to_phase=st.sampled_from(PHASES),
        decided_by=st.sampled_from(("rules", "arbiter", "user")),
    )


def task_added() -> SearchStrategy[TaskAdded]:
    return events_of(
        TaskAdded,
        task_id=names(),
        target_file=st.one_of(st.just(""), paths()),
        priority=st.integers(0, 10),
        dependencies=st.lists(names(), max_size=3).map(tuple),
    )


def task_updated() -> SearchStrategy[TaskUpdated]:
    return events_of(
        TaskUpdated,
        task_id=names(),
        status=st.sampled_from(TASK_STATUSES),
        attempt=st.integers(0, 10),
        priority=st.one_of(st.none(), st.integers(0, 10)),
    )


def model_requested() -> SearchStrategy[ModelRequested]:
    return events_of(
        ModelRequested,
        call_id=names(),
        role=st.sampled_from(ROLES),
        model=st.sampled_from(("qwen2.5-coder:7b", "llama3.1:8b", "gpt-4o-mini")),
        endpoint=st.sampled_from(("", "http://127.0.0.1:11434", "http://localhost:8000/v1")),
        api=st.sampled_from(("ollama", "openai")),
        request_digest=digests(),
        prompt_digest=st.one_of(st.just(""), digests()),
        message_offset=st.integers(0, 500),
        messages=st.lists(messages(), max_size=3).map(tuple),
        tool_names=st.lists(st.sampled_from(TOOLS), max_size=3, unique=True).map(tuple),
        options=json_objects(),
        tools_ref=st.one_of(st.just(""), digests()),
    )


def model_responded() -> SearchStrategy[ModelResponded]:
    return events_of(
        ModelResponded,
        call_id=names(),
        tool_calls=st.lists(tool_calls(), max_size=2).map(tuple),
        usage=usages(),
        done_reason=st.sampled_from(("", "stop", "length", "tool_calls")),
        duration_ms=st.floats(0, 600_000, allow_nan=False),
        model_identity=st.one_of(st.just(""), digests(), st.just("fp_3b956da36b")),
        cached_from=st.one_of(st.just(""), names()),
        content_ref=st.one_of(st.just(""), digests()),
    )


def model_failed() -> SearchStrategy[ModelFailed]:
    return events_of(
        ModelFailed,
        call_id=names(),
        kind=st.sampled_from(
            ("timeout", "connection", "http_status", "invalid_response", "context_overflow")
        ),
        attempt=st.integers(1, 5),
    )


def model_context_learned() -> SearchStrategy[ModelContextLearned]:
    return events_of(
        ModelContextLearned,
        endpoint=st.sampled_from(("http://localhost:11434", "http://127.0.0.1:8080")),
        model=names(),
        context=st.sampled_from((0, 2048, 4096, 32768)),
        trained=st.sampled_from((0, 32768, 131072)),
        source=st.sampled_from(("/api/show", "/props", "/v1/models")),
    )


def arbiter_decided() -> SearchStrategy[ArbiterDecided]:
    return events_of(
        ArbiterDecided,
        action=st.sampled_from(("change_phase", "work_on_task", "consult", "finish")),
        parameters=json_objects(),
        decided_by=st.sampled_from(("rules", "arbiter")),
    )


def specialist_consulted() -> SearchStrategy[SpecialistConsulted]:
    return events_of(
        SpecialistConsulted,
        specialist=st.sampled_from(("reviewer", "debugger", "architect")),
        task_id=st.one_of(st.just(""), names()),
        outcome=st.sampled_from(("", "approved", "rejected", "advice")),
    )


def tool_requested() -> SearchStrategy[ToolRequested]:
    return events_of(
        ToolRequested,
        call_id=names(),
        tool=st.sampled_from(TOOLS),
        arguments=json_objects(),
        argument_refs=argument_refs(),
    )


def tool_executed() -> SearchStrategy[ToolExecuted]:
    return events_of(
        ToolExecuted,
        call_id=names(),
        tool=st.sampled_from(TOOLS),
        result_ref=st.one_of(st.just(""), digests()),
        files_changed=st.lists(file_changes(), max_size=3).map(tuple),
    )


NAMED: dict[str, Callable[[], SearchStrategy[Any]]] = {
    RunStarted.type_name(): run_started,
    RunFinished.type_name(): run_finished,
    RunRewound.type_name(): run_rewound,
    RunForked.type_name(): run_forked,
    RunResumed.type_name(): run_resumed,
    UserAsked.type_name(): user_asked,
    UserAnswered.type_name(): user_answered,
    PhaseChanged.type_name(): phase_changed,
    TaskAdded.type_name(): task_added,
    TaskUpdated.type_name(): task_updated,
    ModelRequested.type_name(): model_requested,
    ModelResponded.type_name(): model_responded,
    ModelFailed.type_name(): model_failed,
    ModelContextLearned.type_name(): model_context_learned,
    ArbiterDecided.type_name(): arbiter_decided,
    SpecialistConsulted.type_name(): specialist_consulted,
    ToolRequested.type_name(): tool_requested,
    ToolExecuted.type_name(): tool_executed,
}
"""The realistic strategy of each type that has one, by tag."""


def event_of_type(type_name: str) -> SearchStrategy[Event]:
    """Events of one type, by tag: the named strategy, else one derived from the Struct."""
    cls = EVENT_TYPES[type_name]
    named = NAMED.get(type_name)
    strategy: SearchStrategy[Event] = named() if named is not None else events_of(cls)
    return strategy


def any_event() -> SearchStrategy[Event]:
    """An event of any type in ``EVENT_TYPES``."""
    return st.one_of([event_of_type(name) for name in EVENT_TYPES])


# -- whole runs -------------------------------------------------------------------------


class _RunState(msgspec.Struct, frozen=True):
    """What ``run_events`` must know to link the next step, at one version."""

    phase: str = INITIAL_PHASE
    tasks: tuple[str, ...] = ()
    files: tuple[tuple[str, str | None], ...] = ()


@st.composite
def run_events(
    draw: st.DrawFn,
    *,
    max_steps: int = 12,
    rewinds: bool = False,
    finished: bool | None = None,
) -> list[Event]:
    """A plausible run: ``RunStarted``, then steps of the kind an engine appends.

    Ids link up as they do in a real log: a task is updated only after it was added,
    a ``model.responded``/``model.failed`` answers the preceding request's call id, a
    ``tool.executed`` follows its ``tool.requested`` and its file changes chain the
    content digests per path, and each phase change starts from the current phase.
    ``rewinds=True`` adds ``run.rewound`` events to an earlier version; the steps
    after one continue from the state at that version. ``finished`` forces (True),
    forbids (False) or lets hypothesis choose (None) a closing ``run.finished``.
    """
    events: list[Event] = [draw(run_started())]
    # states[v] is the state after the first v events; a rewind goes back to one
    states = [_RunState(), _RunState()]
    serial = 0

    def next_id(prefix: str) -> str:
        nonlocal serial  # ids stay unique across rewinds, as the engine's do
        serial += 1
        return f"{prefix}{serial}"

    kinds = ["task", "update", "phase", "model", "tool", "arbiter", "specialist", "ask", "resume"]
    if rewinds:
        kinds.append("rewind")
    for _ in range(draw(st.integers(0, max_steps))):
        state = states[-1]
        kind = draw(st.sampled_from(kinds))
        step: list[Event] = []
        if kind == "task":
            task_id = next_id("t")
            deps = (
                draw(st.lists(st.sampled_from(state.tasks), max_size=2, unique=True))
                if state.tasks
                else []
            )
            added = draw(task_added())
            step.append(msgspec.structs.replace(added, task_id=task_id, dependencies=tuple(deps)))
            state = msgspec.structs.replace(state, tasks=(*state.tasks, task_id))
        elif kind == "update" and state.tasks:
            updated = draw(task_updated())
            step.append(
                msgspec.structs.replace(updated, task_id=draw(st.sampled_from(state.tasks)))
            )
        elif kind == "phase":
            target = draw(st.sampled_from([p for p in PHASES if p != state.phase]))
            changed = draw(phase_changed())
            step.append(msgspec.structs.replace(changed, from_phase=state.phase, to_phase=target))
            state = msgspec.structs.replace(state, phase=target)
        elif kind == "model":
            call_id = next_id("m")
            step.append(msgspec.structs.replace(draw(model_requested()), call_id=call_id))
            answer: ModelResponded | ModelFailed = draw(
                st.one_of(model_responded(), model_failed())
            )
            step.append(msgspec.structs.replace(answer, call_id=call_id))
        elif kind == "tool":
            call_id = next_id("c")
            requested = msgspec.structs.replace(draw(tool_requested()), call_id=call_id)
            executed = msgspec.structs.replace(
                draw(tool_executed()), call_id=call_id, tool=requested.tool, files_changed=()
            )
            if executed.ok:
                files = dict(state.files)
                changes: list[FileChange] = []
                for path in draw(st.lists(paths(), max_size=2, unique=True)):
                    after = draw(st.one_of(digests(), st.none()))
                    size = draw(st.integers(0, 100_000)) if after is not None else 0
                    changes.append(
                        FileChange(path=path, before=files.get(path), after=after, size=size)
                    )
                    files[path] = after
                executed = msgspec.structs.replace(executed, files_changed=tuple(changes))
                state = msgspec.structs.replace(state, files=tuple(files.items()))
            step += [requested, executed]
        elif kind == "arbiter":
            step.append(draw(arbiter_decided()))
        elif kind == "specialist":
            step.append(draw(specialist_consulted()))
        elif kind == "ask":
            step += [draw(user_asked()), draw(user_answered())]
        elif kind == "resume":
            step.append(draw(run_resumed()))
        elif kind == "rewind":
            to_version = draw(st.integers(1, len(events)))
            step.append(msgspec.structs.replace(draw(run_rewound()), to_version=to_version))
            state = states[to_version]
        # the events before a step's last one leave the state as it was
        for event in step[:-1]:
            events.append(event)
            states.append(states[-1])
        if step:
            events.append(step[-1])
            states.append(state)
    if finished is None:
        finished = draw(st.booleans())
    if finished:
        events.append(draw(run_finished()))
    return events
