"""Answer caps: every request carries a cap on the answer's length, per role; an
answer the cap ended (finish ``length``) is recorded as such and the model is told,
never run as a good answer; a run recorded before caps replays without one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.agent.conversation import CUT
from engine.agent.runlog import RunLog
from engine.agent.runner import start_run
from engine.config import Settings, load_settings, recorded_settings
from engine.model import ModelClient, RecordingModel, RetryPolicy, RoleConfig, Roles
from engine.model.context import estimate_tokens, fit
from engine.model.sizing import MAX_ANSWER_TOKENS, MIN_ANSWER_TOKENS, answer_cap
from engine.runs.demo import DemoModels
from engine.runs.replay import replay
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import MemoryEventStore, Message, ModelRequested, ModelResponded, RunStarted
from events.schema import ToolRequested

FAST = RetryPolicy(attempts=1, base_delay=0.001)
ASK = Message(role="user", content="Create app.py that prints hi.")
TOOLS = [{"type": "function", "function": {"name": "create_file", "parameters": {}}}]


def recorder(server: ScriptedModelServer, http: httpx.Client, **role: Any) -> RecordingModel:
    config = RoleConfig(model="m", base_url=server.url, **role)
    log = RunLog.create(MemoryEventStore(), "r", RunStarted(goal="g", workspace="/w"))
    return RecordingModel(ModelClient(http, retry=FAST), log, Roles(coding=config))


def requested(model: RecordingModel) -> list[ModelRequested]:
    return [e.data for e in model.runlog.store.read("r") if isinstance(e.data, ModelRequested)]


def responded(model: RecordingModel) -> list[ModelResponded]:
    return [e.data for e in model.runlog.store.read("r") if isinstance(e.data, ModelResponded)]


# -- the cap on the wire --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "where"), [("ollama", "options.num_predict"), ("openai", "max_tokens")]
)
def test_every_request_carries_a_quarter_of_the_context_as_its_cap(api: str, where: str) -> None:
    with ScriptedModelServer([Reply.text("ok")]) as server, httpx.Client() as http:
        model = recorder(server, http, api=api, num_ctx=6000)
        model.chat("coding", [ASK], conversation="c")
        body = server.chat_requests[0].body
    sent = body["options"]["num_predict"] if api == "ollama" else body["max_tokens"]
    assert sent == 1500
    assert requested(model)[0].options["num_predict"] == 1500, "the cap is recorded"


@pytest.mark.parametrize(("setting", "sent"), [(300, 300), (0, None)])
def test_max_answer_tokens_sets_the_cap_and_0_sends_none(setting: int, sent: int | None) -> None:
    with ScriptedModelServer([Reply.text("ok")]) as server, httpx.Client() as http:
        model = recorder(server, http, api="openai", max_answer_tokens=setting)
        model.chat("coding", [ASK], conversation="c")
        body = server.chat_requests[0].body
    assert body.get("max_tokens") == sent
    assert requested(model)[0].options.get("num_predict") == sent


@given(st.integers(min_value=1, max_value=10_000_000))
def test_the_default_cap_is_a_quarter_of_the_context_within_bounds(context: int) -> None:
    cap = answer_cap(RoleConfig(model="m"), context)
    assert cap is not None and MIN_ANSWER_TOKENS <= cap <= MAX_ANSWER_TOKENS
    if MIN_ANSWER_TOKENS * 4 <= context <= MAX_ANSWER_TOKENS * 4:
        assert cap == context // 4


def test_the_prompt_is_fitted_to_leave_room_for_the_cap() -> None:
    head = [Message(role="system", content="s"), Message(role="user", content="task")]
    history = [Message(role="user", content="x" * 400) for _ in range(20)]  # ~100 tokens each
    roomy = fit(head + history, 3000, reserve=100)
    tight = fit(head + history, 3000, reserve=2000)
    assert estimate_tokens(tight) <= 1000 < estimate_tokens(roomy) <= 2900
    assert tight[:2] == head and roomy[:2] == head


# -- a length finish ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "stream"), [("ollama", True), ("ollama", False), ("openai", False)]
)
def test_the_scripted_server_cuts_an_answer_at_the_cap_mid_call(api: str, stream: bool) -> None:
    long_file = Reply.tool("create_file", path="app.py", content="print('hi') " * 50)
    with ScriptedModelServer([long_file]) as server, httpx.Client() as http:
        model = recorder(server, http, api=api, max_answer_tokens=20)
        model.client.stream = stream
        reply = model.chat("coding", [ASK], TOOLS, conversation="c")
    assert reply.done_reason == "length" and reply.usage.completion_tokens == 20
    assert reply.tool_calls == () and not reply.extracted_from_text
    assert reply.content.startswith('{"name": "create_file", "arguments": {"path": "app.py"')
    (answer,) = responded(model)
    assert answer.done_reason == "length", "the cut is recorded on model.responded"


def test_a_cut_call_whose_json_broke_is_dropped_not_refused() -> None:
    # a server that sends the cut call itself, arguments unfinished
    broken = Reply(tool_calls=(("create_file", '{"path": "app.py", "content": "pri'),),
                   done_reason="length")  # fmt: skip
    with ScriptedModelServer([broken]) as server, httpx.Client() as http:
        model = recorder(server, http, api="openai")
        reply = model.chat("coding", [ASK], TOOLS, conversation="c")
    assert reply.done_reason == "length" and reply.tool_calls == ()


class CutFirst(DemoModels):
    """The demo, but the first answer of each coding conversation runs long."""

    def __init__(self, cuts: int = 1) -> None:
        super().__init__()
        self.cuts = cuts
        self.told: list[str] = []

    def __call__(self, request: ScriptedRequest) -> Reply:
        body = request.body or {}
        offered = {t["function"]["name"] for t in body.get("tools", [])}
        messages = body.get("messages", [])
        if "complete_task" in offered and "approve_code" not in offered:
            last = messages[-1]["content"]
            if last.startswith("Your last answer was cut off"):
                self.told.append(last)
            asked = sum(1 for m in messages if m["role"] == "assistant")
            if asked < self.cuts:
                return Reply.tool("create_file", path="calc.py", content="x = 1\n" * 200)
        return super().__call__(request)


def settings_with_cap(server: ScriptedModelServer, cap: int, steps: int = 2) -> Settings:
    """Two steps by default: the plan, then coding t1 (the rest of the demo is not
    what these tests are about)."""
    overrides = {"model_url": server.url, "api": "ollama", "model": "m", "max_steps": steps}
    settings = load_settings(env={}, overrides=overrides)
    coding = msgspec.structs.replace(settings.models.coding, max_answer_tokens=cap)
    return msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, coding=coding)
    )


def test_a_cut_answer_is_not_run_the_model_is_told_and_the_task_gets_done(
    tmp_path: Path,
) -> None:
    store = MemoryEventStore()
    model = CutFirst()
    with ScriptedModelServer(model, models=["m"]) as server:
        log = start_run(store, goal="g", workspace=tmp_path / "ws",
                        settings=settings_with_cap(server, 60), run_id="r")  # fmt: skip
    assert log.pipeline.tasks["t1"].status == "qa_pending", log.pipeline.reason
    events = list(store.read("r"))
    cut = [
        e for e in events if isinstance(e.data, ModelResponded) and e.data.done_reason == "length"
    ]
    assert cut, "the server cut the long answer at the cap"
    assert not any(
        isinstance(e.data, ToolRequested) and e.causation in {c.version for c in cut}
        for e in events
    ), "nothing in a cut answer runs"
    assert model.told and model.told[0] == CUT.format(tokens=60)
    assert replay(store, "r", tools="recorded").identical


def test_two_cut_answers_in_a_row_end_the_task_s_turn(tmp_path: Path) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(CutFirst(cuts=99), models=["m"]) as server:
        log = start_run(store, goal="g", workspace=tmp_path / "ws",
                        settings=settings_with_cap(server, 60), run_id="r")  # fmt: skip
    errors = [e for t in log.pipeline.tasks.values() for e in t.errors]
    assert "the model's answer was cut off at the length limit twice in a row" in errors


def test_a_cut_arbiter_answer_falls_back_to_the_rules_with_the_reason(tmp_path: Path) -> None:
    class CutArbiter(DemoModels):
        def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
            return Reply.cut(super().arbiter(messages), 3)

    store = MemoryEventStore()
    with ScriptedModelServer(CutArbiter(), models=["m"]) as server:
        log = start_run(store, goal="g", workspace=tmp_path / "ws",
                        settings=settings_with_cap(server, 0), run_id="r")  # fmt: skip
    reasons = [d.fallback_reason for d in log.orchestration.decisions if d.fallback_used]
    assert "the arbiter's answer was cut off at the length limit (3 tokens)" in reasons


# -- old runs -------------------------------------------------------------------------------


def test_settings_recorded_before_caps_existed_replay_without_a_cap() -> None:
    old = msgspec.to_builtins(Settings())
    for table in old["models"].values():
        del table["max_answer_tokens"]
    settings = recorded_settings(old)
    assert all(settings.models.get(r).max_answer_tokens == 0 for r in ("arbiter", "coding"))
    new = recorded_settings(msgspec.to_builtins(Settings()))
    assert new.models.coding.max_answer_tokens is None, "a new run's own setting is kept"
