"""Orchestrated runs end to end: the CLI against the scripted model server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.config import Settings
from engine.runs.demo import DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import ArbiterDecided, EventStore, ModelRequested, SpecialistConsulted
from projections import project


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def run(
    script: Any, tmp_path: Path, *flags: str, name: str = "r"
) -> tuple[EventStore, str, Path, list[ScriptedRequest], Any]:
    workspace = tmp_path / name
    db = tmp_path / f"{name}.db"
    with ScriptedModelServer(script, models=["m"]) as server:
        result = invoke(
            "run",
            "build calc",
            "--workspace",
            str(workspace),
            "--db",
            str(db),
            "--model-url",
            server.url,
            "--api",
            "ollama",
            "--model",
            "m",
            "--run-id",
            name,
            *flags,
        )
        requests = list(server.chat_requests)
    assert result.exit_code in (0, 1), result.output
    return open_store(db), name, workspace, requests, result


def decisions(store: EventStore, run_id: str) -> list[ArbiterDecided]:
    return [e.data for e in store.read(run_id) if isinstance(e.data, ArbiterDecided)]


def role_of(request: ScriptedRequest) -> str:
    offered = {t["function"]["name"] for t in request.body.get("tools", [])}
    if "consult_coding_specialist" in offered:
        return "arbiter"
    if "create_task_plan" in offered:
        return "reasoning"
    if "approve_code" in offered:
        return "analysis"
    return "coding"


def test_a_full_orchestrated_run_completes_with_the_arbiter_deciding(tmp_path: Path) -> None:
    store, run_id, workspace, _requests, result = run(DemoModels(), tmp_path)
    state = project(store, run_id)
    assert state.pipeline.status == "completed", result.output
    started = next(iter(store.read(run_id))).data
    assert getattr(started, "mode", "") == "orchestrated"
    by = [d.decided_by for d in decisions(store, run_id)]
    assert "arbiter" in by and not any(d.fallback_used for d in decisions(store, run_id))
    consulted = [e for e in store.read(run_id) if isinstance(e.data, SpecialistConsulted)]
    assert {getattr(c.data, "specialist", "") for c in consulted} == {
        "reasoning",
        "coding",
        "analysis",
    }
    versions = {e.version: e.data for e in store.read(run_id)}
    assert all(isinstance(versions.get(c.causation or 0), ArbiterDecided) for c in consulted)
    assert '"""Return the sum of a and b."""' in (workspace / "calc.py").read_text()


def test_usage_and_calls_per_role_equal_what_the_server_saw(tmp_path: Path) -> None:
    store, run_id, _, requests, _ = run(DemoModels(), tmp_path)
    usage = project(store, run_id).orchestration.usage_by_role
    cached = [e for e in store.read(run_id) if getattr(e.data, "cached_from", "")]
    assert not cached
    seen: dict[str, int] = {}
    for r in requests:
        seen[role_of(r)] = seen.get(role_of(r), 0) + 1
    assert {role: u.calls for role, u in usage.items()} == seen
    assert seen["arbiter"] > 0


def test_parity_rules_and_orchestrated_reach_the_same_tasks_and_files(tmp_path: Path) -> None:
    outcomes = []
    for mode in ("rules", "orchestrated"):
        with pytest.warns(DeprecationWarning) if mode == "rules" else _nothing():
            store, run_id, workspace, _, _ = run(
                DemoModels(), tmp_path, f"--mode={mode}", name=mode
            )
        p = project(store, run_id).pipeline
        tasks = {t.task_id: (t.title, t.status) for t in p.tasks.values()}
        files = {f.name: f.read_text() for f in workspace.iterdir() if f.suffix == ".py"}
        outcomes.append((p.status, tasks, files))
    assert outcomes[0] == outcomes[1]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class BadArbiter(DemoModels):
    """The demo's workers with an arbiter that always answers ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        return self.reply


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply.text("I think we should write more code."), "without a tool call"),
        (Reply.tool("dance", style="tango"), "unknown action"),
        (Reply.tool("change_phase", phase="completed", reason="done"), "refuses"),
        (Reply.tool("change_phase", reason="move on"), "needs the parameter 'phase'"),
        (Reply.tool("finish_run", reason="good enough"), "still open"),
    ],
    ids=["prose", "unknown-action", "illegal-phase", "missing-parameter", "early-finish"],
)
def test_bad_arbiter_output_falls_back_to_the_rules_with_the_reason(
    reply: Reply, reason: str, tmp_path: Path
) -> None:
    store, run_id, _, _, _ = run(BadArbiter(reply), tmp_path)
    state = project(store, run_id).pipeline
    fallbacks = [d for d in decisions(store, run_id) if d.fallback_used]
    assert fallbacks and all(reason in d.fallback_reason for d in fallbacks)
    assert all(d.decided_by == "rules" for d in fallbacks)
    assert state.status == "completed"
    assert state.steps <= Settings().limits.max_steps


def test_continue_current_phase_forever_is_bounded_and_recorded(tmp_path: Path) -> None:
    script = BadArbiter(Reply.tool("continue_current_phase", reason="keep going"))
    store, run_id, _, _, _ = run(script, tmp_path)
    state = project(store, run_id).pipeline
    assert state.status == "completed"
    assert any(d.fallback_used for d in decisions(store, run_id))
    assert state.steps <= Settings().limits.max_steps


class Repeater(DemoModels):
    """An arbiter that keeps consulting the reasoning specialist, who does nothing."""

    def __call__(self, request: ScriptedRequest) -> Reply:
        offered = {t["function"]["name"] for t in request.body.get("tools", [])}
        if "consult_coding_specialist" in offered:
            return Reply.tool("consult_reasoning_specialist", reason="think again")
        if "set_task_priority" in offered:
            return Reply.text("hmm")
        return super().__call__(request)


def test_the_same_decision_without_progress_falls_back_after_the_repeat_limit(
    tmp_path: Path,
) -> None:
    store, run_id, _, _, _ = run(Repeater(), tmp_path)
    limit = Settings().limits.arbiter_repeat_limit
    found = [d for d in decisions(store, run_id) if "repeated" in d.fallback_reason]
    assert found and str(limit) in found[0].fallback_reason
    assert project(store, run_id).pipeline.status == "completed"


class Asker(DemoModels):
    """Asks the user once, then follows the suggestions."""

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        if "You asked the user" not in messages[-1]["content"]:
            return Reply.tool("request_user_input", question="Which Python version?")
        return super().arbiter(messages)


def test_a_run_that_asks_pauses_gets_an_answer_and_completes(tmp_path: Path) -> None:
    script = Asker()
    _store, run_id, _, _, result = run(script, tmp_path)
    assert result.exit_code == 0
    assert "waiting_for_input" in result.output and "Which Python version?" in result.output
    db = str(tmp_path / "r.db")
    listed = invoke("runs", "--db", db)
    assert "Which Python version?" in listed.output
    refused = invoke("resume", run_id, "--db", db)
    assert refused.exit_code == 1 and "answer" in refused.output
    answered = invoke("answer", run_id, "Python 3.12", "--db", db)
    assert answered.exit_code == 0, answered.output
    with ScriptedModelServer(script, models=["m"]) as server:
        resumed = invoke("resume", run_id, "--db", db, "--model-url", server.url)
        requests = list(server.chat_requests)
    assert resumed.exit_code == 0, resumed.output
    assert project(open_store(tmp_path / "r.db"), run_id).pipeline.status == "completed"
    arbiter_prompts = [
        r.body["messages"][-1]["content"] for r in requests if role_of(r) == "arbiter"
    ]
    assert arbiter_prompts and "The user answered: Python 3.12" in arbiter_prompts[0]


def test_answer_refuses_a_run_that_is_not_waiting(tmp_path: Path) -> None:
    _store, run_id, _, _, _ = run(DemoModels(), tmp_path)
    result = invoke("answer", run_id, "yes", "--db", str(tmp_path / "r.db"))
    assert result.exit_code == 1 and "not waiting" in result.output


def test_arbiter_requests_are_recorded_under_the_arbiter_role(tmp_path: Path) -> None:
    store, run_id, _, _, _ = run(DemoModels(), tmp_path)
    roles = {e.data.role for e in store.read(run_id) if isinstance(e.data, ModelRequested)}
    assert roles == {"arbiter", "reasoning", "coding", "analysis"}


class Reprioritiser(DemoModels):
    """Consults the reasoning specialist once, which re-prioritises t2."""

    def __init__(self) -> None:
        super().__init__()
        self.consulted = False

    def __call__(self, request: ScriptedRequest) -> Reply:
        offered = {t["function"]["name"] for t in request.body.get("tools", [])}
        if "set_task_priority" in offered:
            return Reply.tool("set_task_priority", task_id="t2", priority=9, reason="tests last")
        return super().__call__(request)

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        if not self.consulted:
            self.consulted = True
            return Reply.tool("consult_reasoning_specialist", reason="check the order")
        return super().arbiter(messages)


def test_the_reasoning_specialist_can_reprioritise_a_task(tmp_path: Path) -> None:
    store, run_id, _, _, _ = run(Reprioritiser(), tmp_path)
    state = project(store, run_id)
    assert state.pipeline.status == "completed"
    assert state.pipeline.tasks["t2"].priority == 9
    reasoning = [c for c in state.orchestration.consultations if c.specialist == "reasoning"]
    assert [c.outcome for c in reasoning] == ["finished", "finished"]  # the plan, the re-order


def test_an_answer_to_a_run_answered_already_says_so(tmp_path: Path) -> None:
    """Two answers at once: the one written second was told "expected version 15 but
    the log is at 16" or "run r is running, not waiting for an answer", neither of
    which says the question was answered."""
    from engine.agent.runlog import answer_question
    from engine.errors import ConfigError
    from events import MemoryEventStore, RunStarted, UserAnswered, UserAsked

    store = MemoryEventStore()
    store.append("r", [RunStarted(goal="g", workspace=str(tmp_path)), UserAsked(question="?")], 0)
    real = store.append

    def racing(run_id: str, events: Any, expected: int, **kwargs: Any) -> Any:
        store.append = real  # type: ignore[method-assign]
        real(run_id, [UserAnswered(answer="the other one")], expected)  # written first
        return real(run_id, events, expected, **kwargs)

    store.append = racing  # type: ignore[method-assign]
    for _ in range(2):  # while it was written, and after
        with pytest.raises(ConfigError, match=r"was answered already \('the other one', at "):
            answer_question(store, "r", "mine")
    assert project(store, "r").pipeline.answers == ("the other one",)
