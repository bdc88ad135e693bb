"""Bad answers and slow servers are recorded failures, never tracebacks: invalid UTF-8,
bodies over the size cap, answers of the wrong shape, trickling and hanging servers cut
at the call's deadline. Real sockets (ScriptedModelServer), small bounds, no sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from engine.agent.runlog import RunLog
from engine.config import ConfigError, settings_from_mapping
from engine.errors import (
    ModelDeadline,
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelResponseTooLarge,
)
from engine.model import (
    Bounds,
    Endpoint,
    ModelClient,
    RecordingModel,
    RetryPolicy,
    RoleConfig,
    Roles,
    Timeouts,
)
from engine.testing import Reply, ScriptedModelServer
from events import MemoryEventStore, Message, ModelFailed, RunStarted

ASK = [Message(role="user", content="Create app.py that prints hi.")]
FLAVOURS = [("ollama", True), ("ollama", False), ("openai", True), ("openai", False)]
FLAVOUR_IDS = ["ollama-streamed", "ollama-whole", "openai-streamed", "openai-whole"]
NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def client(http: httpx.Client, stream: bool = False, **bounds: object) -> ModelClient:
    return ModelClient(
        http,
        stream=stream,
        retry=bounds.pop("retry", NO_RETRY),  # type: ignore[arg-type]
        identify_models=False,
        sleep=lambda s: None,
        **bounds,  # type: ignore[arg-type]
    )


def failure(
    http: httpx.Client, reply: Reply, api: str, stream: bool, **bounds: object
) -> ModelError:
    with ScriptedModelServer([reply]) as server:
        endpoint = Endpoint(base_url=server.url, model="m", api=api)  # type: ignore[arg-type]
        with pytest.raises(ModelError) as caught:
            client(http, stream, **bounds).chat(endpoint, ASK)
    return caught.value


# -- malformed bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_invalid_utf8_in_an_answer_is_an_invalid_reply(
    http: httpx.Client, api: str, stream: bool
) -> None:
    error = failure(http, Reply.invalid_utf8(), api, stream)
    assert type(error) is ModelResponseInvalid and error.kind == "invalid"
    assert "not valid UTF-8" in str(error)


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_invalid_utf8_in_an_error_body_still_gives_the_status_and_message(
    http: httpx.Client, api: str, stream: bool
) -> None:
    error = failure(http, Reply.invalid_utf8(status=400), api, stream)
    assert isinstance(error, ModelHTTPError) and error.status == 400
    assert "not UTF-8" in str(error) and "\ufffd" in str(error)


@pytest.mark.parametrize(
    "calls",
    [
        (("create_file", ["app.py"]),),
        (("create_file", 42),),
        ((7, {"path": "app.py"}),),
    ],
    ids=["arguments-a-list", "arguments-a-number", "name-a-number"],
)
def test_a_tool_call_of_the_wrong_shape_is_an_invalid_reply(
    http: httpx.Client, calls: tuple[tuple[object, object], ...]
) -> None:
    for api, stream in FLAVOURS:
        error = failure(http, Reply.calls(*calls), api, stream)  # type: ignore[arg-type]
        assert type(error) is ModelResponseInvalid, (api, stream, error)


# -- the size cap ---------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
def test_an_answer_over_the_cap_is_refused(http: httpx.Client, api: str, stream: bool) -> None:
    error = failure(http, Reply.huge(200_000), api, stream, max_response_bytes=10_000)
    assert isinstance(error, ModelResponseTooLarge) and error.kind == "too_large"
    assert "max_response_bytes (10000)" in str(error)


def test_the_cap_is_applied_as_bytes_arrive_not_after_reading_everything(
    http: httpx.Client,
) -> None:
    # 100 kB at one byte per 5 ms would take 500 s to read whole; the deadline of 60 s
    # would end it first. Refused as too large, it was cut while streaming in.
    slow_and_big = Reply.trickled(0.005, Reply.huge(100_000))
    error = failure(http, slow_and_big, "ollama", True, max_response_bytes=80, deadline=60.0)
    assert isinstance(error, ModelResponseTooLarge)
    assert "more than 80 bytes arrived" in str(error)


def test_an_answer_just_under_the_cap_is_read(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.huge(5_000)]) as server:
        endpoint = Endpoint(base_url=server.url, model="m", api="openai")
        reply = client(http, max_response_bytes=6_000).chat(endpoint, ASK)
    assert len(reply.content) == 5_000


# -- deadlines ------------------------------------------------------------------------------

PATIENT = Timeouts(connect=5.0, read=30.0)
"""Read timeouts far longer than the deadlines below: only the deadline can end the call."""


@pytest.mark.parametrize(("api", "stream"), FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize(
    "reply",
    [Reply.trickled(0.05, Reply.huge(10_000)), Reply.hanging(10), Reply.timeout(10)],
    ids=["trickle", "headers-then-silence", "silence"],
)
def test_a_trickling_or_hanging_server_is_cut_at_the_deadline(
    http: httpx.Client, reply: Reply, api: str, stream: bool
) -> None:
    error = failure(http, reply, api, stream, timeouts=PATIENT, deadline=0.3)
    assert isinstance(error, ModelDeadline) and error.kind == "deadline"
    assert "deadline of 0.3 s" in str(error)


def test_the_deadline_covers_every_attempt_and_fallback(http: httpx.Client) -> None:
    # each attempt times out after 0.1 s; ten attempts on each of two servers would take
    # two seconds, the deadline ends the call after 0.35 s
    failed: list[str] = []
    script = [Reply.timeout(10)] * 40
    with ScriptedModelServer(script) as one, ScriptedModelServer(script) as two:
        endpoints = [Endpoint(base_url=s.url, model="m") for s in (one, two)]
        bounded = client(
            http,
            timeouts=Timeouts(connect=5.0, read=0.1),
            retry=RetryPolicy(attempts=10, base_delay=0.001, max_delay=0.001),
            deadline=0.35,
        )
        with pytest.raises(ModelDeadline):
            bounded.chat(endpoints, ASK, on_failure=lambda f: failed.append(f.error.kind))
    assert failed[-1] == "deadline" and set(failed[:-1]) == {"timeout"}
    assert len(failed) < 20


def test_bounds_given_per_call_replace_the_client_s(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.huge(5_000)]) as server:
        endpoint = Endpoint(base_url=server.url, model="m", api="openai")
        with pytest.raises(ModelResponseTooLarge):
            client(http).chat(endpoint, ASK, bounds=Bounds(max_response_bytes=1_000))


# -- per role, in autonomy.toml -------------------------------------------------------------


def test_each_role_sets_its_bounds_in_the_config() -> None:
    settings = settings_from_mapping(
        {
            "models": {
                "coding": {
                    "connect_timeout": 3,
                    "read_timeout": 90.5,
                    "deadline": 240,
                    "retries": 0,
                    "max_response_bytes": 1000,
                }
            }
        }
    )
    bounds = settings.models.coding.bounds()
    assert (bounds.timeouts.connect, bounds.timeouts.read) == (3.0, 90.5)
    assert (bounds.deadline, bounds.retry.attempts, bounds.max_response_bytes) == (240.0, 1, 1000)
    assert settings.models.arbiter.bounds() == RoleConfig(model="x").bounds()


@pytest.mark.parametrize(
    ("key", "value"),
    [("deadline", 0), ("read_timeout", -1), ("retries", -1), ("max_response_bytes", 0)],
)
def test_a_bound_that_cannot_hold_is_a_config_error(key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"models.coding.{key}"):
        settings_from_mapping({"models": {"coding": {key: value}}})


# -- recorded -------------------------------------------------------------------------------


def test_each_bad_answer_is_one_recorded_failure_with_its_kind(
    http: httpx.Client, tmp_path: Path
) -> None:
    store = MemoryEventStore()
    log = RunLog.create(store, "r", RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    coding = RoleConfig(
        model="m", deadline=0.3, read_timeout=30, retries=0, max_response_bytes=10_000
    )
    script = [
        Reply.invalid_utf8(),
        Reply.huge(50_000),
        Reply.trickled(0.05, Reply.huge(1_000)),
        Reply.text("fine"),
    ]
    with ScriptedModelServer(script) as server:
        roles = Roles(coding=msgspec.structs.replace(coding, base_url=server.url))
        model = RecordingModel(client(http), log, roles)
        for _ in range(3):
            with pytest.raises(ModelError):
                model.chat("coding", ASK, conversation="c")
        assert model.chat("coding", ASK, conversation="c").content == "fine"
    failed = [e.data for e in store.read("r") if isinstance(e.data, ModelFailed)]
    assert [f.kind for f in failed] == ["invalid", "too_large", "deadline"]
    assert all(f.attempt == 1 and f.detail for f in failed)
