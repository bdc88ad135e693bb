"""Context discovery: a run asks each server how large its window is (Ollama's
/api/show, llama-server's /props, /v1/models metadata), records the answer as
model.context_learned, and fits requests and answer caps to it; a num_ctx in the
config wins; a replay takes the answer from the log and asks no server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from waiting import refusing_url

from engine.agent.runlog import RunLog
from engine.agent.runner import resume_run, start_run
from engine.config import Settings, load_settings
from engine.model import Endpoint, RoleConfig
from engine.model.discovery import Learned, discover
from engine.model.sizing import sizing
from engine.runs.demo import DemoModels
from engine.runs.replay import replay
from engine.testing import Reply, ScriptedModelServer
from events import (
    MemoryEventStore,
    ModelContextLearned,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    UserAnswered,
)
from projections import project
from projections.orchestration import OrchestrationState, ServedContext, served_key
from projections.sequence import PersistentMap


@pytest.mark.parametrize(
    ("api", "context", "missing", "learned"),
    [
        ("ollama", None, (), Learned(trained=32768, source="/api/show")),
        ("ollama", 4096, (), Learned(context=4096, trained=32768, source="/api/show")),
        ("openai", 4096, (), Learned(context=4096, source="/props")),
        ("openai", None, (), Learned(trained=32768, source="/v1/models")),
        ("openai", 2048, ("/props",), Learned(context=2048, trained=32768, source="/v1/models")),
    ],
)
def test_each_server_says_its_window_its_own_way(
    api: str, context: int | None, missing: tuple[str, ...], learned: Learned
) -> None:
    with ScriptedModelServer(context=context, missing=missing) as server, httpx.Client() as http:
        endpoint = Endpoint(base_url=server.url, model="qwen2.5:14b", api=api)  # type: ignore[arg-type]
        assert discover(http, endpoint) == learned


@pytest.mark.parametrize(
    "said", ["9" * 10_000, 10**23, 2**53, 1, 255], ids=["10k-digits", "10**23", "2**53", "1", "255"]
)
def test_a_window_no_model_has_is_not_learned(said: object) -> None:
    """``num_ctx`` of 10,000 digits ended ``autonomy run`` with a traceback; 10**23
    was learned and sent back as num_ctx, and so was 2**53; 1 fitted every prompt to
    nothing."""
    with ScriptedModelServer(context=said) as server, httpx.Client() as http:  # type: ignore[arg-type]
        found = discover(http, Endpoint(base_url=server.url, model="qwen2.5:14b"))
    assert found == Learned(trained=32768, source="/api/show")


def test_vllm_s_max_model_len_is_the_window() -> None:
    def vllm(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 8192}]})
        return httpx.Response(404, json={"detail": "Not Found"})

    with httpx.Client(transport=httpx.MockTransport(vllm)) as http:
        found = discover(http, Endpoint(base_url="http://vllm:8000", model="m", api="openai"))
    assert found == Learned(context=8192, source="/v1/models")


@pytest.mark.parametrize(
    ("url", "api", "missing", "reason"),
    [
        (None, "openai", ("/props", "/v1/models"), "/props: HTTP 404; /v1/models: HTTP 404"),
        (None, "ollama", ("/api/show",), "/api/show: HTTP 404"),
        ("official", "openai", (), "/props: HTTP 404; /v1/models says no window for 'm'"),
        ("down", "ollama", (), "/api/show: ConnectError"),
    ],
)
def test_a_server_that_says_nothing_gives_the_reason_not_an_error(
    url: str | None, api: str, missing: tuple[str, ...], reason: str
) -> None:
    def official(request: httpx.Request) -> httpx.Response:  # OpenAI's own: no window said
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}, {"id": "n"}]})
        return httpx.Response(404, json={"error": {"message": "not found"}})

    mock = httpx.MockTransport(official) if url == "official" else None
    with ScriptedModelServer(missing=missing) as server, httpx.Client(transport=mock) as http:
        base = refusing_url() if url == "down" else server.url
        model = "m" if url == "official" else "qwen2.5:14b"
        found = discover(http, Endpoint(base_url=base, model=model, api=api))  # type: ignore[arg-type]
    assert isinstance(found, str) and found.startswith(reason)


def learned(**served: ServedContext) -> OrchestrationState:
    return OrchestrationState(served_contexts=PersistentMap(served))


def test_the_window_is_the_config_s_then_the_server_s_then_the_role_s_default() -> None:
    role = RoleConfig(model="m", base_url="http://h:1")
    key = served_key("http://h:1", "m")
    assert sizing("coding", role).context == 16384
    assert sizing("arbiter", role).context == 8192
    assert sizing("coding", role, learned(**{key: ServedContext(context=4096)})).context == 4096
    small = learned(**{key: ServedContext(trained=2048)})
    assert sizing("coding", role, small).context == 2048, "no more than the model was trained on"
    big = learned(**{key: ServedContext(trained=131072)})
    assert sizing("coding", role, big).context == 16384, "a trained maximum is not a window"
    fixed = msgspec.structs.replace(role, num_ctx=32768)
    said = learned(**{key: ServedContext(context=4096)})
    assert sizing("coding", fixed, said).context == 32768, "num_ctx in the config wins"


def settings_for(server: ScriptedModelServer, api: str, **role: Any) -> Settings:
    overrides = {"model_url": server.url, "api": api, "model": "m", "max_steps": 2}
    settings = load_settings(env={}, overrides=overrides)
    if not role:
        return settings
    models = {
        name: msgspec.structs.replace(settings.models.get(name), **role)
        for name in ("arbiter", "coding", "reasoning", "analysis")
    }
    return msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, **models)
    )


def test_a_run_learns_the_window_records_it_and_sizes_its_requests_to_it(tmp_path: Path) -> None:
    store = MemoryEventStore()
    lines: list[str] = []
    with ScriptedModelServer(DemoModels(), models=("m",), context=2048) as server:
        start_run(store, goal="g", workspace=tmp_path / "ws", progress=lines.append,
                  settings=settings_for(server, "openai"), run_id="r")  # fmt: skip
        asked = [r.body for r in server.chat_requests]
        url = server.url
    assert f"context window of m at {url}: 2048 tokens (from /props)" in lines
    events = list(store.read("r"))
    learned = events[1]
    assert learned.type == "model.context_learned" and learned.causation == 1
    assert learned.data == ModelContextLearned(
        endpoint=url, model="m", context=2048, source="/props"
    )
    assert asked and all(body["max_tokens"] == 512 for body in asked)
    requests = [e.data for e in events if isinstance(e.data, ModelRequested)]
    assert all(r.options["num_ctx"] == 2048 and r.options["num_predict"] == 512 for r in requests)
    # the replay asks no server (its client refuses any request) and decides the same
    assert replay(store, "r", tools="recorded").identical


def test_num_ctx_in_the_config_wins_and_nothing_is_asked(tmp_path: Path) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(DemoModels(), models=("m",), context=2048) as server:
        start_run(store, goal="g", workspace=tmp_path / "ws",
                  settings=settings_for(server, "openai", num_ctx=8000), run_id="r")  # fmt: skip
        paths = [r.path for r in server.requests]
        asked = [r.body for r in server.chat_requests]
    # /v1/models once: the preflight's question (is the model served?), not discovery's
    assert "/props" not in paths and paths.count("/v1/models") == 1
    assert not any(e.type == "model.context_learned" for e in store.read("r"))
    assert asked and all(body["max_tokens"] == 2000 for body in asked)


def test_a_run_whose_server_says_nothing_assumes_the_role_s_default(tmp_path: Path) -> None:
    store = MemoryEventStore()
    lines: list[str] = []
    with ScriptedModelServer(DemoModels(), models=("m",), missing=("/api/show",)) as server:
        start_run(store, goal="g", workspace=tmp_path / "ws", run_id="r",
                  settings=settings_for(server, "ollama"), progress=lines.append)  # fmt: skip
        asked = [r.body for r in server.chat_requests]
    assert any("context window of m at" in line and "HTTP 404" in line for line in lines)
    assert not any(e.type == "model.context_learned" for e in store.read("r"))
    coding = [b for b in asked if "complete_task" in str(b.get("tools"))]
    assert coding and all(b["options"]["num_ctx"] == 16384 for b in coding)
    assert all(b["options"]["num_predict"] == 4096 for b in coding)


class AsksOnce(DemoModels):
    """The demo, whose arbiter asks the user one question first."""

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        if "You asked the user" not in messages[-1]["content"]:
            return Reply.tool("request_user_input", question="Which Python version?")
        return super().arbiter(messages)


def test_a_resumed_run_asks_again_records_it_after_run_resumed_and_replays(
    tmp_path: Path,
) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(AsksOnce(), models=("m",), context=2048) as server:
        settings = settings_for(server, "ollama")
        start_run(store, goal="g", workspace=tmp_path / "ws", settings=settings, run_id="r")
        log = RunLog(store, "r")
        assert log.pipeline.status == "waiting_for_input"
        log.append(UserAnswered(answer="3.12"), causation=log.version)
        resume_run(store, "r", settings=msgspec.structs.replace(
            settings, limits=msgspec.structs.replace(settings.limits, max_steps=3)))  # fmt: skip
    events = list(store.read("r"))
    resumed = next(e for e in events if e.type == "run.resumed")
    learned = [e for e in events if e.type == "model.context_learned"]
    assert [e.causation for e in learned] == [1, resumed.version]
    assert replay(store, "r", tools="recorded").identical


class Rambles(DemoModels):
    """The demo, but the coder first answers with prose that never ends."""

    def __init__(self) -> None:
        super().__init__()
        self.rambled = False

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if not self.rambled:
            self.rambled = True
            return Reply.text("Let me think about this step by step. " * 400)
        return super()._code(task, done, fixing)


def test_against_a_llama_server_like_one_a_rambling_answer_stops_at_the_cap(
    tmp_path: Path,
) -> None:
    # issue 13: llama-server (OpenAI wire, its own window) and no cap let one answer
    # fill the window; here the window (2048) is learned and the answer is cut at 512
    store = MemoryEventStore()
    server = ScriptedModelServer(Rambles(), models=("m",), context=2048, refuse_over=2048)
    with server:
        start_run(store, goal="g", workspace=tmp_path / "ws",
                  settings=settings_for(server, "openai"), run_id="r")  # fmt: skip
        asked = [r.body for r in server.chat_requests]
    assert asked and all(body["max_tokens"] == 512 for body in asked)
    events = [e.data for e in store.read("r")]
    cut = [e for e in events if isinstance(e, ModelResponded) and e.done_reason == "length"]
    assert len(cut) == 1 and cut[0].usage.completion_tokens == 512
    assert not any(isinstance(e, ModelFailed) for e in events)
    assert project(store, "r").pipeline.tasks["t1"].status == "qa_pending"
    assert replay(store, "r", tools="recorded").identical


def test_a_server_that_says_only_the_trained_maximum_is_told_in_words_with_what_the_run_uses(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    with ScriptedModelServer(DemoModels(), models=("m",), trained=32768) as server:
        start_run(MemoryEventStore(), goal="g", workspace=tmp_path / "ws", run_id="r",
                  settings=settings_for(server, "ollama"), progress=lines.append)  # fmt: skip
        url = server.url
    assert (
        f"context window of m at {url}: not said by the server (the model was trained for "
        "32768 tokens); each role keeps its default window, or that one if smaller "
        "(num_ctx sets it) (from /api/show)"
    ) in lines


def test_a_num_ctx_after_a_million_blank_lines_is_read_in_one_pass() -> None:
    """Ollama's parameters text was searched with ``^\\s*num_ctx...`` (MULTILINE),
    quadratic in the blank lines before the line: 400,000 of them, in an answer well
    under the reply cap, held a run before its first model call for minutes. Bounded
    by a subprocess: the old search would not have ended for hours."""
    import subprocess
    import sys

    code = (
        "from engine.model.discovery import _num_ctx\n"
        "assert _num_ctx('\\n' * 1_000_000 + 'num_ctx 4096\\n') == 4096\n"
        "assert _num_ctx(' \\n' * 1_000_000) == 0\n"
        "assert _num_ctx('num_ctx \\u0664\\u0660\\u0669\\u0666\\nnum_ctx 8192') == 8192\n"
    )
    done = subprocess.run([sys.executable, "-c", code], timeout=120, check=False)
    assert done.returncode == 0
