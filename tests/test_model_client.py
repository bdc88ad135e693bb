"""ModelClient over real sockets (ScriptedModelServer) and httpx.MockTransport: both formats,
streamed and not, retries, typed errors, fallbacks, discovery."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
import pytest
from waiting import refusing_url

from engine.errors import (
    ModelDeadline,
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelTimeout,
    ModelUnavailable,
)
from engine.model import (
    ChatOptions,
    Endpoint,
    FailedAttempt,
    ModelClient,
    RetryPolicy,
    Timeouts,
)
from engine.testing import Reply, ScriptedModelServer
from events.schema import Message, ToolCall, Usage

FAST = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01, jitter=0.0)
PATIENT = Timeouts(connect=2.0, read=5.0, write=2.0, pool=2.0)
HASTY = Timeouts(connect=2.0, read=0.3, write=2.0, pool=2.0)
"""Only for scripted timeouts: short enough to keep tests fast, long enough that a loaded
CI machine still answers the requests that are meant to succeed."""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} in the workspace",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    for name in ("create_file", "read_file")
]
ASK = [
    Message(role="system", content="You are a careful Python developer."),
    Message(role="user", content="Create app.py that prints hi."),
]
FLAVOURS = [("ollama", True), ("ollama", False), ("openai", True), ("openai", False)]
FLAVOUR_IDS = ["ollama-streamed", "ollama-whole", "openai-streamed", "openai-whole"]


class Sleeps:
    """An injected sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module: building one costs an SSL context, ~30 ms."""
    with httpx.Client() as client:
        yield client


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_client(http: httpx.Client, sleeps: Sleeps) -> Callable[..., ModelClient]:
    def make(**kwargs: Any) -> ModelClient:
        kwargs.setdefault("retry", FAST)
        kwargs.setdefault("timeouts", PATIENT)
        return ModelClient(http, sleep=sleeps, **kwargs)

    return make


def at(server: ScriptedModelServer, api: str = "ollama", model: str = "qwen2.5:14b") -> Endpoint:
    return Endpoint(base_url=server.url, model=model, api=api)  # type: ignore[arg-type]


# -- both formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_a_text_answer_is_the_same_reply_from_every_format(
    make_client: Callable[..., ModelClient], api: str, stream: bool
) -> None:
    script = [Reply.text("Done. app.py prints hi.", prompt_tokens=40, completion_tokens=6)]
    with ScriptedModelServer(script) as server:
        reply = make_client(stream=stream).chat(at(server, api), ASK, TOOLS)
    assert reply.content == "Done. app.py prints hi."
    assert reply.tool_calls == ()
    assert reply.usage == Usage(prompt_tokens=40, completion_tokens=6)
    assert reply.done_reason == "stop"
    assert reply.endpoint == server.url
    assert reply.duration_ms > 0


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_tool_calls_are_normalised_from_both_argument_shapes(
    make_client: Callable[..., ModelClient], api: str, stream: bool
) -> None:
    script = [Reply.calls(("create_file", {"path": "app.py"}), ("read_file", {"path": "b.py"}))]
    with ScriptedModelServer(script) as server:
        reply = make_client(stream=stream).chat(at(server, api), ASK, TOOLS)
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("create_file", {"path": "app.py"}),
        ("read_file", {"path": "b.py"}),
    ]
    if api == "ollama":  # Ollama sends no ids: they are made from the position
        assert [c.id for c in reply.tool_calls] == ["call_0", "call_1"]
    else:
        assert [c.id for c in reply.tool_calls] == ["call_1_0", "call_1_1"]
    assert not reply.extracted_from_text


def test_the_ollama_request_is_what_ollama_expects(make_client: Callable[..., ModelClient]) -> None:
    conversation = [
        *ASK,
        Message(
            role="assistant",
            tool_calls=(ToolCall(id="call_0", name="create_file", arguments={"path": "app.py"}),),
        ),
        Message(role="tool", content="created", tool_call_id="call_0", name="create_file"),
    ]
    options = ChatOptions(temperature=0.2, num_ctx=16384, seed=7)
    with ScriptedModelServer([Reply.text("ok")]) as server:
        make_client(stream=True).chat(at(server), conversation, TOOLS, options)
    body = server.chat_requests[0].body
    assert body["model"] == "qwen2.5:14b" and body["stream"] is True
    assert body["options"] == {"temperature": 0.2, "num_ctx": 16384, "seed": 7}
    assert body["tools"] == TOOLS
    assert body["messages"][2]["tool_calls"][0]["function"]["arguments"] == {"path": "app.py"}
    assert body["messages"][3] == {"role": "tool", "content": "created", "tool_name": "create_file"}


def test_the_openai_request_is_what_openai_servers_expect(
    make_client: Callable[..., ModelClient],
) -> None:
    conversation = [
        *ASK,
        Message(
            role="assistant",
            tool_calls=(ToolCall(id="call_9", name="read_file", arguments={"path": "a"}),),
        ),
        Message(role="tool", content="text", tool_call_id="call_9", name="read_file"),
    ]
    options = ChatOptions(temperature=0.2, num_ctx=16384, seed=7)
    with ScriptedModelServer([Reply.text("ok")]) as server:
        make_client(stream=False).chat(at(server, "openai"), conversation, TOOLS, options)
    body = server.chat_requests[0].body
    assert body["temperature"] == 0.2 and body["seed"] == 7 and "options" not in body
    assert "stream" not in body  # a whole answer: the request as before streaming existed
    assert body["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"path":"a"}'
    assert body["messages"][3]["tool_call_id"] == "call_9"


def test_usage_summed_over_calls_equals_what_the_server_sent(
    make_client: Callable[..., ModelClient],
) -> None:
    counts = [(120, 30), (260, 45), (410, 12)]
    script = [
        Reply.text(f"step {i}", prompt_tokens=p, completion_tokens=c)
        for i, (p, c) in enumerate(counts)
    ]
    with ScriptedModelServer(script) as server:
        client = make_client(stream=True)
        replies = [client.chat(at(server), ASK) for _ in counts]
    assert sum(r.usage.prompt_tokens for r in replies) == 790
    assert sum(r.usage.completion_tokens for r in replies) == 87


def test_ollama_duration_is_the_server_s_and_openai_s_is_measured(http: httpx.Client) -> None:
    ticks = iter([100.0, 100.25, 200.0, 200.5])
    # no deadline: the scripted clock is read only to time the two answers
    client = ModelClient(
        http, clock=lambda: next(ticks), retry=FAST, timeouts=PATIENT, deadline=None
    )
    script = [Reply.text("a", prompt_tokens=10, completion_tokens=2), Reply.text("b")]
    with ScriptedModelServer(script) as server:
        ollama = client.chat(at(server), ASK)
        openai = client.chat(at(server, "openai"), ASK)
    assert ollama.duration_ms == pytest.approx(1 + 10 * 0.1 + 2 * 10)  # from total_duration
    assert openai.duration_ms == pytest.approx(500.0)


def test_model_identity_names_the_weights(make_client: Callable[..., ModelClient]) -> None:
    with ScriptedModelServer([Reply.text("a"), Reply.text("b"), Reply.text("c")]) as server:
        ollama = make_client().chat(at(server), ASK)
        openai = make_client().chat(at(server, "openai", "qwen2.5-coder:32b"), ASK)
        bare = make_client(identify_models=False).chat(at(server), ASK)
        tags = [r for r in server.requests if r.path == "/api/tags"]
        digest = next(
            m.digest for m in make_client().list_models(server.url) if m.name == "qwen2.5:14b"
        )
    assert ollama.model_identity == f"qwen2.5:14b@{digest}"
    assert openai.model_identity == "qwen2.5-coder:32b@fp_scripted"
    assert bare.model_identity == "qwen2.5:14b"
    assert len(tags) == 1  # the digest is looked up once per server and model


# -- the prose fallback ----------------------------------------------------------------------


PROSE_CALL = (
    "Sure! I'll create it now.\n```json\n"
    '{"name": "create_file", "arguments": {"path": "app.py", "content": "print(\'hi\')"}}\n```'
)


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_a_call_written_as_prose_is_extracted_and_marked(
    make_client: Callable[..., ModelClient], api: str, stream: bool
) -> None:
    with ScriptedModelServer([Reply.text(PROSE_CALL)]) as server:
        reply = make_client(stream=stream).chat(at(server, api), ASK, TOOLS)
    assert reply.extracted_from_text
    assert reply.tool_calls == (
        ToolCall(
            id="call_0", name="create_file", arguments={"path": "app.py", "content": "print('hi')"}
        ),
    )
    assert reply.content == PROSE_CALL  # the prose is kept as the model wrote it


def test_prose_stays_prose_without_tools_or_with_the_fallback_off(
    make_client: Callable[..., ModelClient],
) -> None:
    with ScriptedModelServer([Reply.text(PROSE_CALL), Reply.text(PROSE_CALL)]) as server:
        no_tools = make_client().chat(at(server), ASK)
        off = make_client(text_fallback=False).chat(at(server), ASK, TOOLS)
    for reply in (no_tools, off):
        assert reply.tool_calls == () and not reply.extracted_from_text


def test_prose_naming_a_tool_not_offered_stays_prose(
    make_client: Callable[..., ModelClient],
) -> None:
    text = '{"name": "delete_tree", "arguments": {"path": "/"}}'
    with ScriptedModelServer([Reply.text(text)]) as server:
        reply = make_client().chat(at(server), ASK, TOOLS)
    assert reply.tool_calls == () and reply.content == text


# -- faults and retries ----------------------------------------------------------------------


def collect() -> tuple[list[FailedAttempt], Callable[[FailedAttempt], None]]:
    seen: list[FailedAttempt] = []
    return seen, seen.append


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Reply.server_error(), ModelHTTPError),
        (Reply.http_error(503, "loading model"), ModelHTTPError),
        (Reply.rate_limited(), ModelHTTPError),
        (Reply.reset(), ModelUnavailable),
        (Reply.timeout(5), ModelTimeout),
    ],
    ids=["500", "503", "429", "reset", "timeout"],
)
@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_transient_faults_are_retried_with_backoff_then_succeed(
    make_client: Callable[..., ModelClient],
    sleeps: Sleeps,
    fault: Reply,
    error: type[ModelError],
    api: str,
    stream: bool,
) -> None:
    seen, on_failure = collect()
    with ScriptedModelServer([fault, fault, Reply.text("finally")]) as server:
        client = make_client(stream=stream, timeouts=HASTY if fault.fault else PATIENT)
        reply = client.chat(at(server, api), ASK, on_failure=on_failure)
    assert reply.content == "finally"
    assert [(f.attempt, type(f.error), f.will_retry) for f in seen] == [
        (1, error, True),
        (2, error, True),
    ]
    assert sleeps.calls == [0.001, 0.002]  # exponential: base, then twice base
    assert len(server.chat_requests) == 3


@pytest.mark.parametrize(
    ("fault", "error", "kind"),
    [
        (Reply.server_error("CUDA out of memory"), ModelHTTPError, "http"),
        (Reply.reset(), ModelUnavailable, "unavailable"),
        (Reply.timeout(5), ModelTimeout, "timeout"),
    ],
    ids=["500", "reset", "timeout"],
)
def test_retries_are_bounded_and_the_last_typed_error_is_raised(
    make_client: Callable[..., ModelClient],
    sleeps: Sleeps,
    fault: Reply,
    error: type[ModelError],
    kind: str,
) -> None:
    seen, on_failure = collect()
    started = time.monotonic()
    with ScriptedModelServer([fault] * 5) as server, pytest.raises(error) as caught:
        client = make_client(stream=True, timeouts=HASTY if fault.fault else PATIENT)
        client.chat(at(server), ASK, on_failure=on_failure)
    assert time.monotonic() - started < 5
    assert len(server.chat_requests) == 3 and server.remaining == 2
    assert [f.attempt for f in seen] == [1, 2, 3]
    assert [f.will_retry for f in seen] == [True, True, False]
    assert {f.error.kind for f in seen} == {kind}
    assert len(sleeps.calls) == 2
    assert caught.value is seen[-1].error
    assert "gave up after 3 attempts" in caught.value.__notes__[0]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_are_not_retried(
    make_client: Callable[..., ModelClient], sleeps: Sleeps, status: int
) -> None:
    seen, on_failure = collect()
    script = [Reply.http_error(status, 'model "qwen9" not found')] * 2
    with (
        ScriptedModelServer(script) as server,
        pytest.raises(ModelHTTPError, match="not found") as caught,
    ):
        make_client().chat(at(server), ASK, on_failure=on_failure)
    assert caught.value.status == status and not caught.value.retryable
    assert len(server.chat_requests) == 1 and sleeps.calls == []
    assert [f.will_retry for f in seen] == [False]


def test_retry_after_from_a_429_replaces_the_backoff(
    make_client: Callable[..., ModelClient], sleeps: Sleeps
) -> None:
    script = [
        Reply.rate_limited(retry_after=0.005),
        Reply.rate_limited(retry_after=99),
        Reply.text("ok"),
    ]
    with ScriptedModelServer(script) as server:
        make_client().chat(at(server), ASK)
    assert sleeps.calls == [0.005, FAST.max_delay]  # honoured, but never past max_delay


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (Reply.malformed(), "not the expected JSON"),
        (Reply.empty_tool_name(path="app.py"), "empty function name"),
        (Reply.invalid_arguments("create_file"), "'create_file' are not valid JSON"),
    ],
    ids=["malformed", "empty-tool-name", "invalid-arguments"],
)
@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_unusable_replies_raise_response_invalid_without_retry(
    make_client: Callable[..., ModelClient],
    sleeps: Sleeps,
    fault: Reply,
    says: str,
    api: str,
    stream: bool,
) -> None:
    seen, on_failure = collect()
    with (
        ScriptedModelServer([fault, Reply.text("unused")]) as server,
        pytest.raises(ModelResponseInvalid, match=says),
    ):
        make_client(stream=stream).chat(at(server, api), ASK, TOOLS, on_failure=on_failure)
    assert len(server.chat_requests) == 1 and sleeps.calls == []
    assert [(f.error.kind, f.will_retry) for f in seen] == [("invalid", False)]


def test_a_delay_within_the_read_timeout_is_just_slow(
    make_client: Callable[..., ModelClient],
) -> None:
    with ScriptedModelServer([Reply.delayed(0.05, Reply.text("slow but fine"))]) as server:
        reply = make_client(timeouts=Timeouts(read=2.0)).chat(at(server), ASK)
    assert reply.content == "slow but fine"


def test_an_exhausted_script_is_an_http_error_not_a_hang(
    make_client: Callable[..., ModelClient],
) -> None:
    with (
        ScriptedModelServer([]) as server,
        pytest.raises(ModelHTTPError, match="script exhausted"),
    ):
        make_client().chat(at(server), ASK)


# -- fallbacks -------------------------------------------------------------------------------


def test_a_refused_endpoint_falls_back_to_the_next_in_order(
    make_client: Callable[..., ModelClient], sleeps: Sleeps
) -> None:
    down = Endpoint(base_url=refusing_url(), model="qwen2.5:14b")
    seen, on_failure = collect()
    with ScriptedModelServer([Reply.text("from the second host")]) as server:
        reply = make_client().chat([down, at(server)], ASK, on_failure=on_failure)
    assert reply.content == "from the second host" and reply.endpoint == server.url
    assert [(f.attempt, f.endpoint, f.error.kind, f.will_retry) for f in seen] == [
        (1, down, "unavailable", True),
        (2, down, "unavailable", True),
        (3, down, "unavailable", True),  # not again here, but elsewhere
    ]
    assert len(sleeps.calls) == 2  # backoff within an endpoint, none when switching


def test_a_fallback_may_speak_the_other_api_and_run_another_model(
    make_client: Callable[..., ModelClient],
) -> None:
    down = Endpoint(base_url=refusing_url(), model="qwen2.5-coder:32b")
    with ScriptedModelServer([Reply.text("hi")]) as server:
        backup = at(server, "openai", "qwen2.5-coder:14b")
        reply = make_client().chat([down, backup], ASK)
    assert server.chat_requests[0].path == "/v1/chat/completions"
    assert server.chat_requests[0].body["model"] == "qwen2.5-coder:14b"
    assert reply.model_identity == "qwen2.5-coder:14b@fp_scripted"


def test_a_4xx_does_not_fall_back(make_client: Callable[..., ModelClient]) -> None:
    with (
        ScriptedModelServer([Reply.http_error(404, "no such model")]) as first,
        ScriptedModelServer([Reply.text("never")]) as second,
        pytest.raises(ModelHTTPError),
    ):
        make_client().chat([at(first), at(second)], ASK)
    assert second.chat_requests == []


def test_when_every_endpoint_is_down_the_last_error_is_raised(
    make_client: Callable[..., ModelClient],
) -> None:
    endpoints = [Endpoint(base_url=refusing_url(), model="m") for _ in range(2)]
    seen, on_failure = collect()
    with pytest.raises(ModelUnavailable, match="cannot connect") as caught:
        make_client().chat(endpoints, ASK, on_failure=on_failure)
    assert [f.attempt for f in seen] == [1, 2, 3, 4, 5, 6]
    assert seen[-1].endpoint == endpoints[1] and not seen[-1].will_retry
    assert "gave up after 6 attempts" in caught.value.__notes__[0]


# -- error mapping and timeouts through MockTransport ------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> ModelClient:
    kwargs.setdefault("retry", FAST)
    return ModelClient(
        httpx.Client(transport=httpx.MockTransport(handler)), sleep=Sleeps(), **kwargs
    )


def test_every_request_carries_finite_timeouts() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": []})
        return httpx.Response(200, json={"model": "m", "message": {"content": "hi"}, "done": True})

    timeouts = Timeouts(connect=2.0, read=60.0, write=3.0, pool=4.0)
    mock_client(handler, timeouts=timeouts).chat(Endpoint(base_url="http://ollama", model="m"), ASK)
    assert seen and all(
        t == {"connect": 2.0, "read": 60.0, "write": 3.0, "pool": 4.0} for t in seen
    )


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (httpx.ConnectError("refused"), ModelUnavailable),
        (httpx.ConnectTimeout("slow connect"), ModelTimeout),
        (httpx.ReadTimeout("slow read"), ModelTimeout),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            ModelUnavailable,
        ),
        (httpx.ReadError("reset by peer"), ModelUnavailable),
    ],
)
def test_transport_errors_map_to_typed_retryable_errors(
    raised: Exception, error: type[ModelError]
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise raised

    with pytest.raises(error) as caught:
        mock_client(handler).chat(Endpoint(base_url="http://ollama", model="m"), ASK)
    assert caught.value.retryable and calls == 3
    assert caught.value.__cause__ is raised


def test_a_url_without_scheme_fails_at_once_as_unusable() -> None:
    with httpx.Client() as http:
        client = ModelClient(http, retry=FAST, sleep=Sleeps())
        with pytest.raises(ModelUnavailable, match="not a usable server URL") as caught:
            client.chat(Endpoint(base_url="localhost:11434", model="m"), ASK)
    assert not caught.value.retryable


def test_a_failed_digest_lookup_leaves_the_identity_at_the_model_name() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/tags":
            return httpx.Response(500, json={"error": "busy"})
        return httpx.Response(200, json={"model": "m", "message": {"content": "hi"}, "done": True})

    reply = mock_client(handler).chat(Endpoint(base_url="http://ollama", model="m"), ASK)
    assert reply.model_identity == "m" and reply.content == "hi"


# -- discovery -------------------------------------------------------------------------------


def test_discovery_lists_models_from_both_apis(make_client: Callable[..., ModelClient]) -> None:
    with ScriptedModelServer(models=["qwen2.5:14b", "qwen2.5-coder:32b"]) as server:
        client = make_client()
        ollama = client.list_models(server.url)
        openai = client.list_models(server.url, "openai")
        assert client.has_model(at(server, model="qwen2.5-coder:32b"))
        assert not client.has_model(at(server, model="llama3"))
    assert (
        [m.name for m in ollama] == [m.name for m in openai] == ["qwen2.5:14b", "qwen2.5-coder:32b"]
    )
    assert all(m.digest for m in ollama)
    assert not make_client().has_model(Endpoint(base_url=refusing_url(), model="m"))


def test_discovery_retries_like_a_chat(make_client: Callable[..., ModelClient]) -> None:
    seen, on_failure = collect()
    with pytest.raises(ModelUnavailable):
        make_client().list_models(refusing_url(), on_failure=on_failure)
    assert len(seen) == FAST.attempts


# -- retry policy ----------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_and_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=4.0, jitter=0.25)
    assert [policy.delay(n, lambda: 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(2, lambda: 0.0) == pytest.approx(0.75)
    assert policy.delay(2, lambda: 1.0) == pytest.approx(1.25)


def test_at_least_one_attempt_is_required(http: httpx.Client) -> None:
    with pytest.raises(ValueError):
        ModelClient(http, retry=RetryPolicy(attempts=0))


def test_request_bodies_are_json_the_servers_can_read(
    make_client: Callable[..., ModelClient],
) -> None:
    with ScriptedModelServer([Reply.text("ok")]) as server:
        make_client().chat(at(server), [Message(role="user", content='ünïcode ✓ "quotes"')])
    assert server.chat_requests[0].body["messages"][0]["content"] == 'ünïcode ✓ "quotes"'
    assert json.dumps(server.chat_requests[0].body)


class _Compressing(BaseHTTPRequestHandler):
    """A server that gzips every answer, asked to or not: 8 MiB of zeros in 8 KB."""

    body = gzip.compress(b"\0" * (8 * 2**20))
    asked: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()

    def _answer(self) -> None:
        self.asked.append(self.headers.get("Accept-Encoding"))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_compressed_though_asked_not_to_be_is_refused_unpacked(
    make_client: Callable[..., ModelClient],
) -> None:
    """httpx unpacks what it reads, and the cap counted what it unpacked to: a gzip of
    1,827 bytes (a bomb, twice packed) took the engine to 7 GB. The client asks for
    no compression, counts the bytes as sent, and refuses a compressed answer; so
    does the discovery of a model's window."""
    from engine.model.discovery import discover

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Compressing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ModelResponseInvalid, match=r"compressed \(gzip"):
            make_client().chat(Endpoint(base_url=url, model="m"), ASK)
        with httpx.Client() as http_client:
            said = discover(http_client, Endpoint(base_url=url, model="m"))
        assert isinstance(said, str) and "compressed" in said
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
    assert _Compressing.asked and set(_Compressing.asked) == {"identity"}


def test_lines_split_from_one_byte_pieces_are_whole() -> None:
    """A line that arrived a byte at a time was split again at each byte."""
    from engine.model.client import _lines

    body = b'{"a": 1}\n{"b": 2}\ntail'
    assert list(_lines(bytes([b]) for b in body)) == [b'{"a": 1}', b'{"b": 2}', b"tail"]


def _stalling_server(how: str) -> tuple[socket.socket, threading.Event]:
    """A server that keeps a request waiting, one way or another, until ``stop`` is
    set, the client goes, or 20 s have passed (so that a client that would wait for
    ever fails the test instead of hanging it): ``1xx`` sends ``102 Processing`` again
    and again, ``headers`` sends its status line, then a header a byte at a time."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                if how == "headers":
                    connection.sendall(b"HTTP/1.1 200 OK\r\n")
                if how == "body":  # no length: the body ends when the connection does
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                ends = time.monotonic() + 20
                while not stop.wait(0.1) and time.monotonic() < ends:
                    connection.sendall(
                        b"HTTP/1.1 102 Processing\r\n\r\n" if how == "1xx"
                        else b'{"message": {"role": "assistant", "content": "' if how == "body"
                        else b"X"
                    )  # fmt: skip

    threading.Thread(target=serve, daemon=True).start()
    return listener, stop


@pytest.mark.parametrize("how", ["1xx", "headers", "body"])
def test_the_deadline_ends_a_call_waiting_for_its_answer_to_begin(how: str) -> None:
    """httpx bounds each read, not the whole: a server that sent ``102 Processing``
    every second, or its headers a byte at a time, kept a call (and the run) waiting
    for ever, whatever the role's deadline. A body of no stated length, still coming
    at the deadline, ended there as a body that is no JSON: recorded as "invalid"
    (and the model told its answer could not be used), not as the deadline's."""
    listener, stop = _stalling_server(how)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = ModelClient(httpx.Client(), retry=RetryPolicy(attempts=1), deadline=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ModelDeadline):
            client.chat(Endpoint(base_url=url, model="m"), ASK)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 30, "ended by the deadline, not by the test"


def test_an_answer_of_more_tool_calls_than_any_needs_is_refused(
    make_client: Callable[..., ModelClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call past ``max_calls_per_answer`` is refused and recorded: an answer of
    45,000 calls wrote 90,000 events in one step. Past ``MAX_TOOL_CALLS`` the answer
    is no answer (here 3, for a small script)."""
    from engine.model import client as client_module

    monkeypatch.setattr(client_module, "MAX_TOOL_CALLS", 3)
    calls = [("read_file", {"path": f"f{i}.py"}) for i in range(4)]
    for api in ("ollama", "openai"):
        with (
            ScriptedModelServer([Reply.calls(*calls)]) as server,
            pytest.raises(
                ModelResponseInvalid,
                match="holds 4 tool calls; no answer is taken with more than 3",
            ),
        ):
            make_client().chat(at(server, api), ASK)


DEEP = b"[" * 50_000 + b"]" * 50_000
"""An error body that nests past any JSON decoder's recursion."""


class _DeeplyNested(BaseHTTPRequestHandler):
    """A server whose errors nest 50,000 deep: the chat and the model list answer
    500 with ``DEEP``; with ``chat_ok``, the chat answers and only the list fails."""

    chat_ok: ClassVar[bool] = False

    def do_GET(self) -> None:
        self._send(500, DEEP)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.chat_ok:
            answer = {"model": "m", "message": {"content": "hi"}, "done": True}
            self._send(200, json.dumps(answer).encode())
        else:
            self._send(500, DEEP)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_an_error_body_nested_past_the_decoders_depth_is_an_http_error_not_a_crash(
    make_client: Callable[..., ModelClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the message of such a body ended ``autonomy run`` in a RecursionError
    traceback, the run left running with no failure recorded; so did the preflight's
    model list, and the digest lookup after a good answer (the answer lost)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DeeplyNested)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = Endpoint(base_url=f"http://127.0.0.1:{server.server_address[1]}", model="m")
        with pytest.raises(ModelHTTPError, match=r"HTTP 500.*\[\[\[") as failed:
            make_client(retry=FAST).chat(endpoint, ASK)
        assert len(str(failed.value)) < 1_000
        with pytest.raises(ModelHTTPError, match="HTTP 500"):
            make_client(retry=FAST).list_models(endpoint.base_url)
        monkeypatch.setattr(_DeeplyNested, "chat_ok", True)
        reply = make_client(retry=FAST).chat(endpoint, ASK)
        assert (reply.content, reply.model_identity) == ("hi", "m")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
