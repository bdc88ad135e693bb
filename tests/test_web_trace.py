"""engine.web.trace: a run's events nested as the trace view shows them."""

from __future__ import annotations

from engine.web.trace import ModelTrace, ToolTrace, build_trace
from events import MemoryEventStore
from events.schema import (
    ArbiterDecided,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunStarted,
    SpecialistConsulted,
    ToolCall,
    ToolExecuted,
    ToolRequested,
    Usage,
)

EVENTS = [
    RunStarted(goal="g", workspace="/w"),
    # a rules decision: no model call before it, and a tool the rules ran
    ArbiterDecided(action="plan", decided_by="rules"),
    PhaseChanged(trigger="plan", from_phase="start", to_phase="planning"),
    ToolRequested(call_id="t4", tool="create_task_plan", arguments={"tasks": []}),
    ToolExecuted(call_id="t4", tool="create_task_plan", ok=True),
    # the arbiter's call, then its decision: one step
    ModelRequested(
        call_id="m6",
        role="arbiter",
        model="m",
        request_digest="d6",
        messages=(Message(role="user", content="what next?"),),
    ),
    ModelResponded(
        call_id="m6",
        tool_calls=(ToolCall(id="c", name="consult_coding_specialist"),),
        usage=Usage(prompt_tokens=10, completion_tokens=2),
        duration_ms=500.0,
    ),
    ArbiterDecided(action="consult_coding_specialist", decided_by="arbiter"),
    ModelRequested(call_id="m9", role="coding", model="m", request_digest="d9"),
    ModelFailed(call_id="m9", kind="timeout", detail="read timed out"),
    ModelResponded(
        call_id="m9",
        tool_calls=(ToolCall(id="c", name="create_file"),),
        usage=Usage(prompt_tokens=20, completion_tokens=5),
    ),
    ToolRequested(call_id="t12", tool="create_file", arguments={"path": "../x"}),
    ToolExecuted(call_id="t12", tool="create_file", ok=False, error="outside the workspace"),
    SpecialistConsulted(specialist="coding", task_id="t1", outcome="failed"),
]


def test_steps_nest_model_calls_and_their_tool_calls_under_each_decision() -> None:
    store = MemoryEventStore()
    trace = build_trace(store.append("r", EVENTS, 0))
    start, plan, consult = trace.steps
    assert [e.type for e in start.items] == ["run.started"]  # type: ignore[union-attr]
    assert plan.decided is not None and plan.decided.action == "plan"
    assert isinstance(plan.items[-1], ToolTrace) and plan.items[-1].result is not None
    assert consult.decided is not None and consult.decided.decided_by == "arbiter"
    arbiter, coding = (i for i in consult.items if isinstance(i, ModelTrace))
    assert arbiter.request.role == "arbiter" and arbiter.seconds == 0.5
    assert [t.request.tool for t in coding.tools] == ["create_file"]
    assert coding.tools[0].failed and len(coding.failures) == 1 and not coding.failed
    assert consult.specialist is not None and consult.specialist.outcome == "failed"
    assert consult.tokens == 37 and consult.failures == 2 and plan.failures == 0
    assert consult.roles == {"arbiter", "coding"}
    assert {"decision", "model", "tool"} <= consult.kinds
