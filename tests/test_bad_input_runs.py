"""Whole runs that meet bad input go on: a poison path is one failed tool call, also
when a run crashed on it and is resumed; a model that answers garbage or hangs is a
recorded model.failed, and the run carries on to the end."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec

from engine.agent.runlog import RunLog
from engine.agent.runner import resume_run, start_run
from engine.config import Settings, load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.runs.replay import replay
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import (
    MemoryEventStore,
    ModelFailed,
    ModelRequested,
    RunStarted,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
)
from projections import project

POISON = "d/" * 1500 + "x.txt"


def rules(url: str, max_steps: int | None = None, **coding: object) -> Settings:
    """Rules mode on ``url``; ``max_steps`` ends a run early (no need to watch the
    whole demo to see that it went on)."""
    overrides = {"model_url": url, "api": "ollama", "model": "m", "mode": "rules"}
    settings = load_settings(env={}, overrides={**overrides, "max_steps": max_steps})
    role = msgspec.structs.replace(settings.models.coding, **coding)
    return msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, coding=role)
    )


class PoisonOnce(DemoModels):
    """The demo models, but the first file the coder creates has a poison path."""

    def __init__(self) -> None:
        super().__init__()
        self.poisoned = False

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        if not self.poisoned and any(name == "create_file" for name, _ in reply.tool_calls):
            self.poisoned = True
            return Reply.tool("create_file", path=POISON, content="x = 1\n")
        return reply


def poison_calls(store: MemoryEventStore, run_id: str) -> tuple[list[str], list[ToolExecuted]]:
    events = list(store.read(run_id))
    requested = [
        e.data.call_id
        for e in events
        if isinstance(e.data, ToolRequested) and e.data.arguments.get("path") == POISON
    ]
    executed = [
        e.data for e in events if isinstance(e.data, ToolExecuted) and e.data.call_id in requested
    ]
    return requested, executed


def test_a_poison_path_is_one_failed_call_and_the_run_goes_on(tmp_path: Path) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(PoisonOnce(), models=["m"]) as server, httpx.Client() as http:
        settings = rules(server.url, max_steps=4)
        log = start_run(store, goal=GOAL, workspace=tmp_path / "ws", settings=settings, http=http)
    requested, executed = poison_calls(store, log.run_id)
    assert len(requested) == 1 and len(executed) == 1
    assert not executed[0].ok and "too long or too deep" in executed[0].error
    # the conversation went on: the model got the refusal and made its next calls
    tools = [e.data.tool for e in store.read(log.run_id) if isinstance(e.data, ToolRequested)]
    assert tools[tools.index("create_file") + 1 :][:2] == ["run_command", "complete_task"]
    assert project(store, log.run_id).pipeline.status == "failed"  # at max_steps
    assert not (tmp_path / "ws" / "d").exists()


def test_resuming_a_run_that_crashed_on_a_poison_call_settles_it_once(tmp_path: Path) -> None:
    # the log of a run that died executing the poison call (RecursionError in mkdir)
    store = MemoryEventStore()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    log = RunLog.create(store, "r1", RunStarted(goal=GOAL, workspace=str(workspace), mode="rules"))
    log.append(
        ToolRequested(
            call_id="r1/t2", tool="create_file", arguments={"path": POISON, "content": "x"}
        )
    )
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        resume_run(store, "r1", settings=rules(server.url, max_steps=2), http=http)
    requested, executed = poison_calls(store, "r1")
    assert requested == ["r1/t2"], "the poison call is never made again"
    assert len(executed) == 1 and not executed[0].ok
    # and the run moved on: it planned, then stopped at max_steps
    assert project(store, "r1").pipeline.tasks


class BadThenGood(DemoModels):
    """The coder first answers bytes that are not UTF-8, then hangs, then behaves."""

    def __init__(self) -> None:
        super().__init__()
        self.faults = [Reply.invalid_utf8(), Reply.hanging(10)]

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        coding = any(t["function"]["name"] == "create_file" for t in request.body["tools"])
        if coding and self.faults:
            return self.faults.pop(0)
        return reply


def test_a_model_that_answers_garbage_then_hangs_is_recorded_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    store = MemoryEventStore()
    with ScriptedModelServer(BadThenGood(), models=["m"]) as server, httpx.Client() as http:
        # only the deadline can end the hang: the read timeout is far longer
        settings = rules(server.url, read_timeout=60.0, deadline=1.0)
        log = start_run(store, goal=GOAL, workspace=tmp_path / "ws", settings=settings, http=http)
    events = [e.data for e in store.read(log.run_id)]
    failed = [e for e in events if isinstance(e, ModelFailed)]
    assert [f.kind for f in failed] == ["invalid", "deadline"]
    # the unusable answer was told to the model, which was asked again; the hang
    # then ended that attempt of the task with its reason; the run went on
    told = [
        m.content
        for e in events
        if isinstance(e, ModelRequested)
        for m in e.messages
        if m.role == "user" and m.content.startswith("Your last answer could not be used")
    ]
    assert told and "not valid UTF-8" in told[0]
    errors = [e.error for e in events if isinstance(e, TaskUpdated) and e.status == "failed"]
    assert "deadline of 1 s" in errors[0]
    assert project(store, log.run_id).pipeline.status != "running"
    # and the run replays: the recorded failures come back with their kinds
    result = replay(store, log.run_id)
    assert result.identical, result.report()


class HugeNumberOnce(DemoModels):
    """The demo models, but the coder's first call is written as prose holding an
    integer of 5,000 digits (past what Python's int() takes from text)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = False

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        if not self.sent and any(name == "create_file" for name, _ in reply.tool_calls):
            self.sent = True
            return Reply.text(
                'I will call {"name": "read_file", "arguments": {"path": "calc.py", "n": '
                + "1" * 5000
                + "}}"
            )
        return reply


def test_a_call_written_as_prose_with_a_number_python_refuses_is_prose(tmp_path: Path) -> None:
    """Such an answer ended the run in a ValueError traceback, the run left "running"."""
    store = MemoryEventStore()
    with ScriptedModelServer(HugeNumberOnce(), models=["m"]) as server, httpx.Client() as http:
        log = start_run(
            store, goal=GOAL, workspace=tmp_path / "ws", settings=rules(server.url), http=http
        )
    assert log.pipeline.status == "completed"
    assert replay(store, log.run_id, tools="recorded").identical
