"""The arbiter's validation, memory and cache, without a whole run."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from engine.agent.arbiter import ACTIONS, SCHEMAS, Refused, only_move, to_step
from engine.agent.coordinator import Step
from engine.agent.runlog import RunLog
from engine.config import load_settings
from engine.model.client import ModelClient
from engine.model.recording import RecordingModel
from engine.testing import Reply, ScriptedModelServer
from events import MemoryEventStore, ModelResponded, RunStarted
from events.schema import Message
from projections.pipeline import PipelineState, TaskState
from projections.sequence import PersistentMap


def test_the_arbiter_has_exactly_the_seven_actions_of_the_issue() -> None:
    assert set(ACTIONS) == {
        "consult_coding_specialist",
        "consult_reasoning_specialist",
        "consult_analysis_specialist",
        "change_phase",
        "continue_current_phase",
        "request_user_input",
        "finish_run",
    }
    assert len(SCHEMAS) == 7


def _state() -> PipelineState:
    tasks = PersistentMap({"t1": TaskState(task_id="t1", title="x")})
    return PipelineState(goal="g", tasks=tasks, phase="planning")


def test_unknown_and_incomplete_actions_are_refused() -> None:
    rules = Step(action="code", task_id="t1", reason="ready")
    with pytest.raises(Refused, match="unknown action"):
        to_step("dance", {}, _state(), rules)
    with pytest.raises(Refused, match="needs the parameter"):
        to_step("request_user_input", {}, _state(), rules)
    with pytest.raises(Refused, match="refuses"):
        to_step("change_phase", {"phase": "qa", "reason": "r"}, _state(), rules)


def test_a_valid_consultation_becomes_the_task_work() -> None:
    rules = Step(action="code", task_id="t1", reason="ready")
    step = to_step("consult_coding_specialist", {"reason": "go"}, _state(), rules)
    assert (step.action, step.task_id) == ("code", "t1")


def test_bookkeeping_and_the_first_plan_are_not_asked() -> None:
    assert only_move(Step(action="plan", reason="r"), PipelineState())
    assert only_move(Step(action="set_status", task_id="t1", status="new", reason="r"), _state())
    assert not only_move(Step(action="code", task_id="t1", reason="r"), _state())


def test_an_identical_temperature_0_request_is_answered_from_the_log(tmp_path: Path) -> None:
    with ScriptedModelServer([Reply.text("hello"), Reply.text("other")]) as server:
        settings = load_settings(env={}, overrides={"model_url": server.url, "model": "m"})
        roles = settings.models
        roles = msgspec.structs.replace(
            roles, arbiter=msgspec.structs.replace(roles.arbiter, temperature=0.0)
        )
        log = RunLog.create(MemoryEventStore(), "r", RunStarted(goal="g", workspace=str(tmp_path)))
        with httpx.Client() as http:
            model = RecordingModel(ModelClient(http), log, roles)
            messages = [Message(role="user", content="hi")]
            first = model.chat("arbiter", messages, conversation="a")
            second = model.chat("arbiter", messages, conversation="b")
        assert len(server.chat_requests) == 1
    assert first.content == second.content == "hello"
    responded = [e.data for e in log.store.read("r") if isinstance(e.data, ModelResponded)]
    assert responded[1].cached_from == responded[0].call_id
    usage = log.orchestration.usage_by_role["arbiter"]
    assert (usage.calls, usage.cached) == (len(server.chat_requests), 1), (
        "usage counts what the server answered; answers from the log are counted apart"
    )
