"""Prompts: complexity scoring, enhancement, fitting to num_ctx, caching."""

from __future__ import annotations

from engine.agent.prompts import SYSTEM, build_prompt, complexity, opening
from engine.model.context import estimate_tokens, fit
from events.schema import Message
from projections.pipeline import PipelineState, TaskState


def test_complexity_grows_with_file_size_dependencies_attempts_and_phase() -> None:
    small = TaskState(task_id="t1", title="x", target_file="a.py")
    big = TaskState(
        task_id="t2", title="y", target_file="b.py", dependencies=("t1", "t0"), attempts=3
    )
    assert complexity("qa", small, {}) == 1
    assert complexity("debug", big, {"b.py": 8192}) == 10
    assert complexity("code", small, {}) < complexity("debug", small, {})


def test_a_complex_task_gets_extra_guidance_and_a_simple_one_the_base_prompt() -> None:
    state = PipelineState(goal="g")
    hard = TaskState(task_id="t1", title="x", dependencies=("a", "b"), attempts=3)
    easy = TaskState(task_id="t2", title="y")
    hard_prompt = opening("debug", state, hard)[0].content
    assert "complex" in hard_prompt and "Earlier attempts" in hard_prompt
    assert opening("qa", state, easy)[0].content == SYSTEM["qa"]


def test_fit_drops_oldest_history_but_never_the_system_prompt_or_the_task() -> None:
    head = [Message(role="system", content="S" * 400), Message(role="user", content="T" * 400)]
    history = [Message(role="assistant", content=f"{i}" * 4000) for i in range(10)]
    fitted = fit(head + history, num_ctx=4096)
    assert fitted[:2] == head
    assert fitted[-1] == history[-1] and len(fitted) < len(head) + len(history)
    assert estimate_tokens(fitted) <= 4096 * 0.75


def test_fit_leaves_no_tool_result_without_its_call() -> None:
    head = [Message(role="system", content="s"), Message(role="user", content="t")]
    turns = [
        Message(role="assistant", content="a" * 4000),
        Message(role="tool", content="r" * 4000),
    ]
    fitted = fit(head + turns * 3, num_ctx=3000)
    assert fitted[2].role != "tool"


def test_built_prompts_are_cached_by_their_inputs() -> None:
    before = build_prompt.cache_info().hits
    state = PipelineState(goal="same goal")
    assert opening("plan", state, None) == opening("plan", state, None)
    assert build_prompt.cache_info().hits == before + 1
