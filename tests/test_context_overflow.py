"""Context overflow: a request too long for the server's context window is its own
failure kind, recognised in every server's wording, and answered by shrinking the
history to the size the server said — never by sending the same request again."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from engine.agent.runlog import RunLog
from engine.agent.runner import start_run
from engine.config import load_settings
from engine.errors import ModelContextOverflow
from engine.model import ModelClient, RecordingModel, RetryPolicy, RoleConfig, Roles
from engine.model.wire import Overflow, context_overflow
from engine.runs.replay import replay
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import (
    Event,
    MemoryEventStore,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunStarted,
)
from projections import project

LLAMA_SERVER = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 5000,
        "n_ctx": 4096,
    }
}
OPENAI = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your "
        "messages resulted in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
VLLM = {
    "object": "error",
    "message": "This model's maximum context length is 4096 tokens. However, you requested "
    "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length "
    "of the messages or completion.",
    "type": "BadRequestError",
    "code": 400,
}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (LLAMA_SERVER, Overflow(context=4096, prompt_tokens=5000)),
        (OPENAI, Overflow(context=8192, prompt_tokens=9000)),
        ({"error": VLLM["message"]}, Overflow(context=4096, prompt_tokens=4000)),
        ({"error": "the input length exceeds the context length"}, Overflow()),
        ({"error": {"message": "context length exceeded"}}, Overflow()),
    ],
)
def test_an_overflow_is_recognised_in_each_server_s_words(body: object, said: Overflow) -> None:
    assert context_overflow(json.dumps(body).encode()) == said


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": "model \'m\' not found, try pulling it first"}',
        b'{"error": {"message": "invalid tool schema", "type": "invalid_request_error"}}',
        b"Bad Request",
        b"\xff\xfe",
    ],
)
def test_other_errors_are_not_overflows(body: bytes) -> None:
    assert context_overflow(body) is None


# -- shrinking and asking again -------------------------------------------------------------

SYSTEM = Message(role="system", content="You write code.")
TASK = Message(role="user", content="Task t1: write calc.py")
FAST = RetryPolicy(attempts=1, base_delay=0.001)


def history(turns: int, words: int = 60) -> list[Message]:
    """``turns`` user messages of ``words`` words each (and 5 characters a word)."""
    return [Message(role="user", content=f"turn{i} " + "abcd " * words) for i in range(turns)]


def recorder(server: ScriptedModelServer, http: httpx.Client, api: str) -> RecordingModel:
    config = RoleConfig(model="m", base_url=server.url, api=api, num_ctx=100_000)  # type: ignore[arg-type]
    log = RunLog.create(MemoryEventStore(), "r", RunStarted(goal="g", workspace="/w"))
    return RecordingModel(ModelClient(http, retry=FAST), log, Roles(coding=config))


def logged(model: RecordingModel) -> list[Event]:
    return [e.data for e in model.runlog.store.read("r")][1:]


def test_an_overflow_is_asked_again_fitted_to_the_window_the_server_said() -> None:
    script = [Reply.text("ok")] * 2
    with ScriptedModelServer(script, refuse_over=400) as server, httpx.Client() as http:
        model = recorder(server, http, "openai")
        reply = model.chat("coding", [SYSTEM, TASK, *history(10)], conversation="c")
        sent = [r.body["messages"] for r in server.chat_requests]
        # the window is in the log now: the next request is fitted to it at once
        model.chat("coding", [SYSTEM, TASK, *history(11)], conversation="c")
        asked = len(server.chat_requests)
    assert reply.content == "ok"
    first, failed, second, answered, *_ = logged(model)
    assert isinstance(first, ModelRequested) and isinstance(second, ModelRequested)
    assert isinstance(failed, ModelFailed) and isinstance(answered, ModelResponded)
    assert failed.kind == "context_overflow" and failed.context == 400
    assert failed.prompt_tokens == sum(len(m["content"].split()) for m in sent[0])
    assert failed.estimated_tokens > 0
    assert len(sent) == 2 and len(sent[1]) < len(sent[0]), "never the same request"
    assert sum(len(m["content"].split()) for m in sent[1]) <= 400
    assert second.options["num_predict"] == 128, "the cap fits the window learned"
    assert sent[1][:2] == sent[0][:2], "the system prompt and the task stay"
    assert model.runlog.orchestration.refused_contexts[server.url].context == 400
    assert asked == 3, "the second call was not refused"


def test_a_server_that_does_not_say_its_window_gets_a_quarter_less_each_time() -> None:
    with ScriptedModelServer([Reply.text("ok")], refuse_over=300) as server, httpx.Client() as http:  # fmt: skip
        model = recorder(server, http, "ollama")
        reply = model.chat("coding", [SYSTEM, TASK, *history(12)], conversation="c")
        sizes = [len(r.body["messages"]) for r in server.chat_requests]
    assert reply.content == "ok"
    assert sizes == sorted(set(sizes), reverse=True), "each request smaller than the last"
    assert len(sizes) > 2
    failures = [e for e in logged(model) if isinstance(e, ModelFailed)]
    assert all(f.kind == "context_overflow" and f.context == 0 for f in failures)


def test_when_only_the_prompt_and_the_task_are_left_the_overflow_is_raised() -> None:
    with ScriptedModelServer([], refuse_over=3) as server, httpx.Client() as http:
        model = recorder(server, http, "openai")
        with pytest.raises(ModelContextOverflow) as raised:
            model.chat("coding", [SYSTEM, TASK, *history(6)], conversation="c")
        sizes = [len(r.body["messages"]) for r in server.chat_requests]
    assert raised.value.context == 3 and "does not fit the context window" in str(raised.value)
    assert sizes[-1] == 2 and sizes == sorted(set(sizes), reverse=True)


class ReadsALot:
    """One task whose coder reads a long file several times before finishing (it
    counts its own calls: its history is shrunk on the way)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: ScriptedRequest) -> Reply:
        body = request.body or {}
        offered = {t["function"]["name"] for t in body.get("tools", [])}
        if "create_task_plan" in offered:
            return Reply.tool(
                "create_task_plan", tasks=[{"title": "calc", "target_file": "calc.py"}]
            )
        if "consult_coding_specialist" in offered:
            return Reply.text("no opinion")  # the rules decide
        done, self.calls = self.calls, self.calls + 1
        if done == 0:
            return Reply.tool("create_file", path="notes.txt", content="word " * 120)
        if done < 6:
            return Reply.tool("read_file", path="notes.txt")
        return Reply.tool("complete_task", summary="done")


def test_a_run_that_overflowed_replays_identically(tmp_path: Path) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(ReadsALot(), models=["m"], refuse_over=500) as server:
        settings = load_settings(env={}, overrides={
            "model_url": server.url, "api": "openai", "model": "m", "max_steps": 2})  # fmt: skip
        start_run(store, goal="g", workspace=tmp_path / "ws", settings=settings, run_id="r")
    kinds = [e.data.kind for e in store.read("r") if isinstance(e.data, ModelFailed)]
    assert "context_overflow" in kinds
    assert project(store, "r").pipeline.tasks["t1"].status == "qa_pending"
    assert replay(store, "r", tools="recorded").identical
