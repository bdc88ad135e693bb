"""The known failure modes of local models: each policy misbehaves once per
conversation, then does the right thing; the engine's corrections must carry both
goals to completion, within bounds."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.agent.runner import start_run
from engine.config import load_settings
from engine.misbehaving import GOALS, POLICIES, Goal, Misbehaving
from engine.testing import ScriptedModelServer
from events import MemoryEventStore, ToolExecuted
from projections import project


@pytest.mark.slow
@pytest.mark.parametrize("goal", GOALS, ids=[g.name for g in GOALS])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_misbehaving_model_still_completes_the_goal(
    tmp_path: Path, policy: str, goal: Goal
) -> None:
    model = Misbehaving(policy, goal)
    store = MemoryEventStore()
    with ScriptedModelServer(model, models=["m"]) as server, httpx.Client() as http:
        settings = load_settings(
            env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m"}
        )
        log = start_run(store, goal=goal.goal, workspace=tmp_path, settings=settings, http=http)
        calls = len(server.chat_requests)
    state = project(store, log.run_id).pipeline
    assert model.count > 0, "the policy never misbehaved: the test would prove nothing"
    assert state.status == "completed", state.reason
    assert len(state.tasks) == len(goal.files), "a misbehaving answer must not duplicate work"
    assert state.steps <= 3 + 2 * len(goal.files) and calls <= 8 * len(goal.files) + 4
    for spec in goal.files:
        assert (tmp_path / spec.path).read_text() == spec.content
    if goal.name == "two-files":
        ran = [
            e.data.result
            for e in store.read(log.run_id)
            if isinstance(e.data, ToolExecuted) and e.data.tool == "run_command" and e.data.ok
        ]
        assert any("2 passed" in r for r in ran)


def test_an_unknown_policy_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="prose_only"):
        Misbehaving("polite", GOALS[0])
