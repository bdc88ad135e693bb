"""RecordingModel: every call leaves model.requested, then model.failed per failed attempt,
then model.responded on success — and usage and conversations are projections of that log.
Also the role configuration the recorder looks up.

``engine.agent.runlog.RunLog`` was being written alongside this module, so these tests use
``FakeRunLog``, which has the same interface (store, run_id, version, orchestration,
append) and folds with the real projections.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from waiting import refusing_url

from engine.errors import (
    ConfigError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelTimeout,
    ModelUnavailable,
)
from engine.model import (
    INLINE_LIMIT,
    ChatOptions,
    Endpoint,
    ModelClient,
    ModelReply,
    RecordingModel,
    RetryPolicy,
    RoleConfig,
    Roles,
    Timeouts,
    request_digest,
    roles_from_mapping,
    stored_form,
)
from engine.model.recording import CONVERSATIONS_KEPT, OfferedTools
from engine.testing import Reply, ScriptedModelServer
from events import (
    Event,
    EventStore,
    MemoryEventStore,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RecordedEvent,
    SQLiteEventStore,
    ToolCall,
    Usage,
    encode,
)
from projections.fold import EMPTY, RunState, apply
from projections.orchestration import OrchestrationState

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, jitter=0.0)
PATIENT = Timeouts(connect=2.0, read=5.0, write=2.0, pool=2.0)
HASTY = Timeouts(connect=2.0, read=0.3, write=2.0, pool=2.0)  # for scripted timeouts only
TOOLS = [
    {
        "type": "function",
        "function": {"name": "create_file", "description": "Create a file.", "parameters": {}},
    }
]
SYSTEM = Message(role="system", content="You are a careful Python developer.")
ASK = Message(role="user", content="Create app.py that prints hi.")


class FakeRunLog:
    """The RunLog interface over a real store and the real folds."""

    def __init__(self, store: EventStore, run_id: str = "run-1") -> None:
        self.store = store
        self.run_id = run_id
        self._state: RunState = EMPTY

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def orchestration(self) -> OrchestrationState:
        return self._state.orchestration

    def append(self, *events: Event, causation: int | None = None) -> list[RecordedEvent]:
        recorded = self.store.append(self.run_id, list(events), self.version, causation=causation)
        for event in recorded:
            self._state = apply(self._state, event)
        return recorded


@pytest.fixture(params=["memory", "sqlite"])
def event_store(request: pytest.FixtureRequest) -> Iterator[EventStore]:
    clock = FixedClock()
    store: EventStore = (
        MemoryEventStore(clock=clock)
        if request.param == "memory"
        else SQLiteEventStore(":memory:", clock=clock)
    )
    yield store
    store.close()


class FixedClock:
    def __call__(self) -> datetime:
        return datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def recorder(
    log: FakeRunLog,
    http: httpx.Client,
    *endpoints: str,
    stream: bool = True,
    api: str = "ollama",
    timeouts: Timeouts = PATIENT,
) -> RecordingModel:
    first, *others = endpoints
    coding = RoleConfig(
        model="qwen2.5-coder:32b",
        base_url=first,
        api=api,  # type: ignore[arg-type]
        num_ctx=16384,
        temperature=0.2,
        seed=11,
        fallbacks=tuple(Endpoint(base_url=u, model="qwen2.5-coder:32b") for u in others),
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
    )
    client = ModelClient(http, stream=stream, retry=FAST, timeouts=timeouts, sleep=lambda s: None)
    return RecordingModel(client, log, Roles(coding=coding))


def events(log: FakeRunLog) -> list[RecordedEvent]:
    return list(log.store.read(log.run_id))


# -- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "stream"), [("ollama", True), ("ollama", False), ("openai", False)]
)
def test_a_successful_call_leaves_requested_then_responded(
    event_store: EventStore, http: httpx.Client, api: str, stream: bool
) -> None:
    log = FakeRunLog(event_store)
    script = [Reply.tool("create_file", path="app.py", content="print('hi')")]
    with ScriptedModelServer(script) as server:
        reply = recorder(log, http, server.url, stream=stream, api=api).chat(
            "coding", [SYSTEM, ASK], TOOLS, conversation="task:T1", causation=None
        )
    requested, responded = events(log)
    assert isinstance(requested.data, ModelRequested) and isinstance(responded.data, ModelResponded)
    req, resp = requested.data, responded.data
    assert req.call_id == resp.call_id == "run-1/m1"
    assert (req.role, req.model, req.endpoint, req.api) == (
        "coding",
        "qwen2.5-coder:32b",
        server.url,
        api,
    )
    assert req.conversation == "task:T1"
    assert req.tool_names == ("create_file",)
    assert req.options == {"temperature": 0.2, "num_ctx": 16384, "seed": 11, "num_predict": 4096}
    assert req.message_offset == 0 and req.messages == (SYSTEM, ASK)
    assert req.request_digest == request_digest(
        "qwen2.5-coder:32b", [SYSTEM, ASK], TOOLS, req.options
    )
    assert responded.causation == requested.version
    assert resp.tool_calls == reply.tool_calls
    assert resp.tool_calls[0].arguments == {"path": "app.py", "content": "print('hi')"}
    assert (resp.usage, resp.done_reason, resp.model_identity) == (
        reply.usage,
        reply.done_reason,
        reply.model_identity,
    )
    assert resp.duration_ms == reply.duration_ms > 0
    assert log.version == responded.version  # the answer is the log's last event


def test_the_caller_s_causation_is_kept_on_the_request(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    with ScriptedModelServer([Reply.text("a"), Reply.text("b")]) as server:
        model = recorder(log, http, server.url)
        model.chat("coding", [ASK], conversation="c")
        model.chat("coding", [ASK], conversation="c", causation=2)
    requested = [e for e in events(log) if isinstance(e.data, ModelRequested)]
    assert [e.causation for e in requested] == [None, 2]
    call_ids = [e.data.call_id for e in requested if isinstance(e.data, ModelRequested)]
    assert call_ids == ["run-1/m1", "run-1/m3"]  # from the log's versions, not uuids


def test_a_call_written_as_prose_is_recorded_as_extracted(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    prose = 'Creating it:\n```json\n{"name": "create_file", "arguments": {"path": "a.py"}}\n```'
    with ScriptedModelServer([Reply.text(prose)]) as server:
        recorder(log, http, server.url).chat("coding", [ASK], TOOLS, conversation="c")
    responded = events(log)[-1].data
    assert isinstance(responded, ModelResponded)
    assert responded.extracted_from_text and responded.content == prose
    assert responded.tool_calls == (
        ToolCall(id="call_0", name="create_file", arguments={"path": "a.py"}),
    )


# -- conversations: only new messages are stored ------------------------------------------------


def test_a_follow_up_request_stores_only_the_messages_after_the_common_prefix(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    call = ToolCall(id="call_0", name="create_file", arguments={"path": "app.py"})
    turn1 = [SYSTEM, ASK]
    turn2 = [
        *turn1,
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", content="created app.py", tool_call_id="call_0", name="create_file"),
    ]
    with ScriptedModelServer(
        [Reply.tool("create_file", path="app.py"), Reply.text("done")]
    ) as server:
        model = recorder(log, http, server.url)
        model.chat("coding", turn1, TOOLS, conversation="task:T1")
        model.chat("coding", turn2, TOOLS, conversation="task:T1")
        model_other = recorder(log, http, server.url)
        server.add(Reply.text("other"))
        model_other.chat("coding", turn1, conversation="task:T2")
    requests = [e.data for e in events(log) if isinstance(e.data, ModelRequested)]
    assert [(r.message_offset, len(r.messages)) for r in requests] == [(0, 2), (2, 2), (0, 2)]
    assert requests[1].messages == tuple(turn2[2:])
    assert log.orchestration.conversations["task:T1"] == tuple(turn2)
    assert requests[0].request_digest != requests[1].request_digest


class EchoClient(ModelClient):
    """Answers every request at once with the number of its messages, and keeps them."""

    def __init__(self, http: httpx.Client) -> None:
        super().__init__(http)
        self.sent: list[list[Message]] = []

    def chat(self, endpoints: Any, messages: Any, *args: Any, **kwargs: Any) -> ModelReply:
        self.sent.append(list(messages))
        return ModelReply(content=str(len(messages)))


def test_conversations_taken_up_again_in_any_order_record_the_digests_of_their_requests(
    http: httpx.Client,
) -> None:
    # more conversations than a recorder keeps worked out, each growing in turn, one
    # rebuilt from equal copies, one with a message replaced in place, one long text
    log = FakeRunLog(MemoryEventStore())
    client = EchoClient(http)
    model = RecordingModel(client, log, Roles(coding=RoleConfig(model="m", num_ctx=16384)))
    names = [f"task:T{n}" for n in range(CONVERSATIONS_KEPT + 2)]
    histories = {name: [SYSTEM, Message(role="user", content=name)] for name in names}
    for turn in range(3):
        for name in [*names, *reversed(names[:3])]:
            history = histories[name]
            if name == names[1] and turn == 1:
                histories[name] = history = [msgspec.structs.replace(m) for m in history]
            if name == names[2] and turn == 2:
                history[1] = Message(role="user", content="edited")
            content = "x" * (INLINE_LIMIT + 1) if name == names[3] else f"{name} {turn}"
            history.append(Message(role="tool", content=content))
            model.chat("coding", history, TOOLS, conversation=name)
    requests = [e.data for e in events(log) if isinstance(e.data, ModelRequested)]
    assert len(requests) == len(client.sent) == 3 * (len(names) + 3)
    for request, sent in zip(requests, client.sent, strict=True):
        assert request.request_digest == request_digest("m", sent, TOOLS, request.options)
    for name in names:
        stored = [stored_form(m) for m in histories[name]]
        assert list(log.orchestration.conversations[name]) == stored


def test_a_rewritten_history_is_stored_from_where_it_diverges(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    edited = Message(role="user", content="Create main.py instead.")
    with ScriptedModelServer([Reply.text("a"), Reply.text("b")]) as server:
        model = recorder(log, http, server.url)
        model.chat("coding", [SYSTEM, ASK], conversation="c")
        model.chat("coding", [SYSTEM, edited], conversation="c")
    second = [e.data for e in events(log) if isinstance(e.data, ModelRequested)][1]
    assert (second.message_offset, second.messages) == (1, (edited,))
    assert log.orchestration.conversations["c"] == (SYSTEM, edited)


def test_long_messages_go_to_blobs_and_the_event_keeps_a_preview_and_digest(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    big = "x = 1\n" * (INLINE_LIMIT // 3)
    listing = Message(role="tool", content=big, tool_call_id="call_0", name="read_file")
    follow = Message(role="user", content="Now fix it.")
    with ScriptedModelServer([Reply.text("a"), Reply.text("b")]) as server:
        model = recorder(log, http, server.url)
        model.chat("coding", [ASK, listing], conversation="c")
        model.chat("coding", [ASK, listing, follow], conversation="c")
        sent = server.chat_requests[0].body["messages"][1]["content"]
    first, second = (e.data for e in events(log) if isinstance(e.data, ModelRequested))
    kept = first.messages[1]
    assert kept.content_ref and len(kept.content) < 500 and big.startswith(kept.content)
    assert event_store.get(kept.content_ref).decode() == big
    assert kept == stored_form(listing)
    assert sent == big  # the model still gets the whole text
    assert (second.message_offset, second.messages) == (
        2,
        (follow,),
    )  # prefix matched in stored form
    assert len(msgspec.json.encode(second)) < 1000


def test_the_digest_covers_the_whole_request_canonically() -> None:
    options = {"temperature": 0.2, "num_ctx": 8192}
    base = request_digest("m", [SYSTEM, ASK], TOOLS, options)
    assert base == request_digest("m", [SYSTEM, ASK], TOOLS, dict(reversed(options.items())))
    assert len(base) == 64
    for changed in (
        request_digest("n", [SYSTEM, ASK], TOOLS, options),
        request_digest("m", [ASK], TOOLS, options),
        request_digest("m", [SYSTEM, ASK], [], options),
        request_digest("m", [SYSTEM, ASK], TOOLS, {**options, "seed": 1}),
    ):
        assert changed != base


def test_a_conversation_s_tool_schemas_are_encoded_and_stored_once(
    event_store: EventStore, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.model import recording

    encoded: list[object] = []

    class Counted(OfferedTools):
        def __init__(self, schemas: Any) -> None:
            encoded.append(schemas)
            super().__init__(schemas)

    monkeypatch.setattr(recording, "OfferedTools", Counted)
    log = FakeRunLog(event_store)
    script = [Reply.text("one"), Reply.text("two"), Reply.text("three"), Reply.text("four")]
    tools = [dict(t) for t in TOOLS]
    with ScriptedModelServer(script) as server:
        model = recorder(log, http, server.url)
        model.chat("coding", [SYSTEM, ASK], tools, conversation="c")
        model.chat("coding", [SYSTEM], [dict(t) for t in TOOLS], conversation="d")
        model.chat("coding", [SYSTEM, ASK, ASK], tools, conversation="c")
        model.chat("coding", [SYSTEM, ASK], [], conversation="e")
    requests = [e.data for e in events(log) if isinstance(e.data, ModelRequested)]
    assert len(encoded) == 3  # conversation d's schemas are other objects, e has none
    assert [bool(r.tools_ref) for r in requests] == [True, True, True, False]
    assert len({r.tools_ref for r in requests[:3]}) == 1
    assert event_store.get(requests[0].tools_ref) == OfferedTools(TOOLS).canonical
    assert [r.request_digest for r in requests] == [
        request_digest("qwen2.5-coder:32b", m, t, requests[0].options)
        for m, t in (
            ([SYSTEM, ASK], TOOLS),
            ([SYSTEM], TOOLS),
            ([SYSTEM, ASK, ASK], TOOLS),
            ([SYSTEM, ASK], []),
        )
    ]


# -- failures --------------------------------------------------------------------------------


def kinds(log: FakeRunLog) -> list[str]:
    return [e.type for e in events(log)]


def test_each_failed_attempt_is_recorded_before_the_answer(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    script = [Reply.server_error("model loading"), Reply.timeout(5), Reply.text("ok")]
    with ScriptedModelServer(script) as server:
        recorder(log, http, server.url, timeouts=HASTY).chat("coding", [ASK], conversation="c")
    recorded = events(log)
    assert kinds(log) == ["model.requested", "model.failed", "model.failed", "model.responded"]
    failed = [e.data for e in recorded if isinstance(e.data, ModelFailed)]
    assert [(f.kind, f.attempt, f.endpoint) for f in failed] == [
        ("http", 1, server.url),
        ("timeout", 2, server.url),
    ]
    assert "model loading" in failed[0].detail
    assert {e.causation for e in recorded[1:]} == {recorded[0].version}
    usage = log.orchestration.usage_by_role["coding"]
    assert (usage.calls, usage.failures) == (1, 2)


@pytest.mark.parametrize(
    ("script", "error", "kind", "attempts"),
    [
        ([Reply.server_error()] * 3, ModelHTTPError, "http", 3),
        ([Reply.timeout(5)] * 3, ModelTimeout, "timeout", 3),
        ([Reply.http_error(404, 'model "x" not found')], ModelHTTPError, "http", 1),
        ([Reply.empty_tool_name(path="a")], ModelResponseInvalid, "invalid", 1),
        ([Reply.invalid_arguments("create_file")], ModelResponseInvalid, "invalid", 1),
        ([Reply.malformed()], ModelResponseInvalid, "invalid", 1),
        ([Reply.reset()] * 3, ModelUnavailable, "unavailable", 3),
    ],
    ids=["500s", "timeouts", "404", "empty-name", "bad-arguments", "malformed", "resets"],
)
def test_a_call_that_fails_for_good_leaves_failures_and_no_response(
    event_store: EventStore,
    http: httpx.Client,
    script: list[Reply],
    error: type[Exception],
    kind: str,
    attempts: int,
) -> None:
    log = FakeRunLog(event_store)
    timeouts = HASTY if kind == "timeout" else PATIENT
    with ScriptedModelServer(script) as server, pytest.raises(error):
        model = recorder(log, http, server.url, timeouts=timeouts)
        model.chat("coding", [ASK], TOOLS, conversation="c")
    assert kinds(log) == ["model.requested"] + ["model.failed"] * attempts
    failed = [e.data for e in events(log) if isinstance(e.data, ModelFailed)]
    assert [f.attempt for f in failed] == list(range(1, attempts + 1))
    assert {f.kind for f in failed} == {kind}
    usage = log.orchestration.usage_by_role["coding"]
    assert (usage.calls, usage.failures, usage.tokens) == (0, attempts, 0)


def test_fallback_attempts_name_the_unreachable_endpoint(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    down = refusing_url()
    with ScriptedModelServer([Reply.text("from the second host")]) as server:
        reply = recorder(log, http, down, server.url).chat("coding", [ASK], conversation="c")
    failed = [e.data for e in events(log) if isinstance(e.data, ModelFailed)]
    assert [(f.endpoint, f.kind, f.attempt) for f in failed] == [
        (down, "unavailable", 1),
        (down, "unavailable", 2),
        (down, "unavailable", 3),
    ]
    assert kinds(log)[-1] == "model.responded" and reply.endpoint == server.url


def test_an_unknown_role_is_refused_before_anything_is_recorded(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    with pytest.raises(ConfigError):
        recorder(log, http, "http://127.0.0.1:9").chat("planner", [ASK], conversation="c")
    assert events(log) == []


# -- projections of the log ------------------------------------------------------------------


def test_usage_in_the_projection_equals_what_the_server_sent(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    counts = [(120, 30), (260, 45), (410, 12)]
    script = [Reply.server_error()] + [
        Reply.text(f"step {i}", prompt_tokens=p, completion_tokens=c)
        for i, (p, c) in enumerate(counts)
    ]
    with ScriptedModelServer(script) as server:
        model = recorder(log, http, server.url)
        for i in range(3):
            model.chat("coding", [ASK, Message(role="user", content=f"step {i}")], conversation="c")
        sent = [r for r in server.chat_requests]
    usage = log.orchestration.usage_by_model["qwen2.5-coder:32b"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (790, 87)
    assert (usage.calls, usage.failures) == (3, 1)
    assert log.orchestration.usage_by_role["coding"] == usage
    assert len(sent) == 4


def test_the_same_script_records_the_same_events(http: httpx.Client) -> None:
    def run() -> list[str]:
        log = FakeRunLog(MemoryEventStore(clock=FixedClock()))
        script = [
            Reply.server_error(),
            Reply.tool("create_file", path="a.py"),
            Reply.text("done"),
        ]
        with ScriptedModelServer(script) as server:
            model = recorder(log, http, server.url)
            model.chat("coding", [ASK], TOOLS, conversation="c")
            model.chat(
                "coding", [ASK, Message(role="user", content="go on")], TOOLS, conversation="c"
            )
        # the server listens on a fresh port each run; everything else must be identical
        return [encode(e.data).replace(server.url, "<server>") for e in events(log)]

    first, second = run(), run()
    assert first == second
    assert len(first) == 5 and '"type":"model.failed"' in first[1]


def test_options_recorded_are_the_options_sent(event_store: EventStore, http: httpx.Client) -> None:
    log = FakeRunLog(event_store)
    with ScriptedModelServer([Reply.text("ok")]) as server:
        recorder(log, http, server.url).chat("coding", [ASK], conversation="c")
        sent = server.chat_requests[0].body["options"]
    requested = events(log)[0].data
    assert isinstance(requested, ModelRequested)
    assert (
        requested.options
        == sent
        == ChatOptions(temperature=0.2, num_ctx=16384, seed=11, num_predict=4096).as_dict()
    )


def test_usage_and_duration_are_recorded_as_the_server_sent_them(
    event_store: EventStore, http: httpx.Client
) -> None:
    log = FakeRunLog(event_store)
    with ScriptedModelServer([Reply.text("ok")]) as server:
        recorder(log, http, server.url, stream=False).chat("coding", [ASK], conversation="c")
    responded = events(log)[-1].data
    assert isinstance(responded, ModelResponded)
    # the scripted server counts words ("Create app.py that prints hi." is 5) and derives
    # durations from them: 1 ms load + 0.1 ms per prompt token + 10 ms per completion token
    assert responded.usage == Usage(prompt_tokens=5, completion_tokens=1)
    assert responded.duration_ms == pytest.approx(1 + 5 * 0.1 + 1 * 10)
    assert (responded.content, responded.done_reason) == ("ok", "stop")


# -- roles: what the recorder looks up -----------------------------------------------------------------------------------


def test_default_roles_are_the_predecessor_s_models_on_two_ollama_hosts() -> None:
    roles = Roles()
    assert roles.arbiter.model == roles.analysis.model == "qwen2.5:14b"
    assert roles.coding.model == "qwen2.5-coder:32b"
    assert roles.reasoning.model == "qwen2.5:32b"
    for name in ("arbiter", "coding", "reasoning", "analysis"):
        role = roles.get(name)
        first, second = role.endpoints()
        assert first.base_url == "http://localhost:11434" and first.api == "ollama"
        assert second.base_url == "http://localhost:11435" and second.model == role.model


def test_role_options_and_endpoints() -> None:
    role = RoleConfig(
        model="m",
        base_url="http://a:1",
        num_ctx=4096,
        temperature=0.0,
        seed=3,
        fallbacks=(Endpoint(base_url="http://b:2", model="n", api="openai"),),
    )
    assert role.options() == ChatOptions(temperature=0.0, num_ctx=4096, seed=3)
    assert [e.label for e in role.endpoints()] == ["http://a:1", "http://b:2"]


def test_roles_from_config_overlay_the_defaults() -> None:
    roles = roles_from_mapping(
        {
            "coding": {"base_url": "http://gpu:11434", "num_ctx": 32768},
            "arbiter": {
                "model": "qwen2.5:7b",
                "fallbacks": [{"base_url": "http://x:8000", "api": "openai", "model": "q"}],
            },
        }
    )
    assert roles.coding.model == "qwen2.5-coder:32b" and roles.coding.base_url == "http://gpu:11434"
    assert roles.coding.num_ctx == 32768
    assert roles.arbiter.fallbacks == (Endpoint(base_url="http://x:8000", api="openai", model="q"),)
    assert roles.reasoning == Roles().reasoning


@pytest.mark.parametrize(
    ("table", "names"),
    [
        ({"planner": {"model": "x"}}, "models.planner"),
        ({"coding": {"num_ctx": "big"}}, "models.coding.num_ctx"),
        ({"coding": {"api": "anthropic"}}, "models.coding.api"),
        ({"coding": {"modle": "x"}}, "modle"),
        ({"coding": "qwen"}, "models.coding"),
    ],
)
def test_a_wrong_role_config_is_a_config_error_naming_the_key(
    table: dict[str, Any], names: str
) -> None:
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        roles_from_mapping(table)


def test_an_unknown_role_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model role 'planner'"):
        Roles().get("planner")


def test_the_same_schemas_are_encoded_once_whatever_list_holds_them(
    event_store: EventStore, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a registry gives each conversation a list of its own, of the very same schemas
    made: list[object] = []
    real = OfferedTools.__init__

    def counted(self: OfferedTools, schemas: Any) -> None:
        made.append(schemas)
        real(self, schemas)

    monkeypatch.setattr(OfferedTools, "__init__", counted)
    log = FakeRunLog(event_store)
    tools, same, copied = list(TOOLS), list(TOOLS), [dict(t) for t in TOOLS]
    offers = {"task:T1": tools, "task:T2": same, "task:T3": copied}
    with ScriptedModelServer([Reply.text(str(n)) for n in range(5)]) as server:
        model = recorder(log, http, server.url, stream=False)
        for conversation in ("task:T1", "task:T2", "task:T1", "task:T2", "task:T3"):
            model.chat("coding", [SYSTEM, ASK], offers[conversation], conversation=conversation)
    # equal schemas in other objects are encoded again: nothing says they were not changed
    assert len(made) == 2 and made[0] == tools and made[1] == copied
    requests = [e.data for e in events(log) if isinstance(e.data, ModelRequested)]
    assert len({r.tools_ref for r in requests}) == 1 and requests[0].tools_ref
    assert len({r.request_digest for r in requests}) == 1
