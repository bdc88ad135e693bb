"""A run's events as a trace: steps, each a decision with the model calls and tool
calls it led to, nested the way a person debugging a run reads them.

    decision (action, who decided, fallback)          one ``Step``
      specialist consulted, its outcome
      model call (role, model, prompt, answer, tokens, seconds, failures)
        tool call (arguments, result, files changed)
      other events (phase changes, task changes, questions) in order

A step starts at an arbiter's model call or at a decision that has none before it,
so the arbiter's call sits with the decision it produced. Tool calls nest under the
model call whose answer asked for them (the latest model call of the step). The
trace is built from the events alone, in one pass; nothing is re-derived that
``projections`` already folds (the service shows the state beside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from events.schema import (
    ArbiterDecided,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    SpecialistConsulted,
    ToolExecuted,
    ToolRequested,
)
from events.store import RecordedEvent


@dataclass
class ToolTrace:
    requested: RecordedEvent
    executed: RecordedEvent | None = None

    @property
    def request(self) -> ToolRequested:
        assert isinstance(self.requested.data, ToolRequested)
        return self.requested.data

    @property
    def result(self) -> ToolExecuted | None:
        data = self.executed.data if self.executed is not None else None
        return data if isinstance(data, ToolExecuted) else None

    @property
    def failed(self) -> bool:
        return self.result is None or not self.result.ok

    @property
    def seconds(self) -> float | None:
        if self.executed is None:
            return None
        return seconds_between(self.requested.recorded_at, self.executed.recorded_at)


@dataclass
class ModelTrace:
    requested: RecordedEvent
    responded: RecordedEvent | None = None
    failures: list[RecordedEvent] = field(default_factory=list)
    tools: list[ToolTrace] = field(default_factory=list)

    @property
    def request(self) -> ModelRequested:
        assert isinstance(self.requested.data, ModelRequested)
        return self.requested.data

    @property
    def response(self) -> ModelResponded | None:
        data = self.responded.data if self.responded is not None else None
        return data if isinstance(data, ModelResponded) else None

    @property
    def failed(self) -> bool:
        return self.response is None and bool(self.failures)

    @property
    def seconds(self) -> float | None:
        response = self.response
        return response.duration_ms / 1000 if response is not None else None


@dataclass
class Step:
    """One coordinator step (or the events before the first one)."""

    number: int
    first: RecordedEvent
    decision: RecordedEvent | None = None
    specialist: SpecialistConsulted | None = None
    items: list[RecordedEvent | ModelTrace | ToolTrace] = field(default_factory=list)
    last: RecordedEvent | None = None

    @property
    def decided(self) -> ArbiterDecided | None:
        data = self.decision.data if self.decision is not None else None
        return data if isinstance(data, ArbiterDecided) else None

    @property
    def seconds(self) -> float:
        return seconds_between(self.first.recorded_at, (self.last or self.first).recorded_at)

    @property
    def tokens(self) -> int:
        return sum(
            m.response.usage.prompt_tokens + m.response.usage.completion_tokens
            for m in self.items
            if isinstance(m, ModelTrace) and m.response is not None
        )

    @property
    def failures(self) -> int:
        """Failed tool calls and failed model attempts in the step."""
        tools = [t for m in self.items if isinstance(m, ModelTrace) for t in m.tools]
        tools += [t for t in self.items if isinstance(t, ToolTrace)]
        attempts = sum(len(m.failures) for m in self.items if isinstance(m, ModelTrace))
        return attempts + sum(t.failed for t in tools)

    @property
    def roles(self) -> set[str]:
        return {m.request.role for m in self.items if isinstance(m, ModelTrace)}

    @property
    def kinds(self) -> set[str]:
        """The kinds of event in the step (``model``, ``tool``, ``phase``...): the filter."""
        found = {kind_of(self.first.type)}
        for item in self.items:
            if isinstance(item, ModelTrace):
                found.add("model")
                found.update("tool" for _ in item.tools[:1])
            elif isinstance(item, ToolTrace):
                found.add("tool")
            else:
                found.add(kind_of(item.type))
        return found


@dataclass
class Trace:
    steps: list[Step]
    started_at: str
    ended_at: str

    @property
    def seconds(self) -> float:
        return seconds_between(self.started_at, self.ended_at)

    def offset(self, step: Step) -> float:
        """Where ``step`` starts, as a fraction of the run's duration (the waterfall)."""
        total = self.seconds
        return seconds_between(self.started_at, step.first.recorded_at) / total if total else 0.0

    def width(self, step: Step) -> float:
        total = self.seconds
        return step.seconds / total if total else 0.0


def kind_of(event_type: str) -> str:
    """The kind an event is filtered by: the first word of its type (``task``,
    ``phase``...), ``decision`` for ``arbiter.decided``."""
    return "decision" if event_type == "arbiter.decided" else event_type.split(".")[0]


def seconds_between(start: str, end: str) -> float:
    """Seconds from one ``recorded_at`` to another (ISO 8601, UTC); 0 when either is
    no time (an edited log: ``verify`` says where, the page still shows the run)."""
    first, last = _moment(start), _moment(end)
    return (last - first).total_seconds() if first and last else 0.0


def _moment(recorded_at: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(recorded_at).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None  # naive and aware do not subtract


def build_trace(events: list[RecordedEvent]) -> Trace:
    """The trace of a run's events (in version order)."""
    steps: list[Step] = []
    calls: dict[str, ModelTrace] = {}
    tools: dict[str, ToolTrace] = {}
    step: Step | None = None
    latest_call: ModelTrace | None = None

    def start(event: RecordedEvent) -> Step:
        nonlocal latest_call
        latest_call = None
        steps.append(Step(number=len(steps), first=event))
        return steps[-1]

    for event in events:
        data = event.data
        arbiter_call = isinstance(data, ModelRequested) and data.role == "arbiter"
        decision_without_call = isinstance(data, ArbiterDecided) and (
            step is None or step.decision is not None or not _only_arbiter(step)
        )
        if step is None or arbiter_call or decision_without_call:
            step = start(event)
        step.last = event
        match data:
            case ArbiterDecided():
                step.decision = event
                step.items.append(event)
            case SpecialistConsulted():
                step.specialist = data
            case ModelRequested():
                latest_call = calls[data.call_id] = ModelTrace(requested=event)
                step.items.append(latest_call)
            case ModelResponded() if data.call_id in calls:
                calls[data.call_id].responded = event
            case ModelFailed() if data.call_id in calls:
                calls[data.call_id].failures.append(event)
            case ToolRequested():
                tool = tools[data.call_id] = ToolTrace(requested=event)
                if latest_call is not None:
                    latest_call.tools.append(tool)
                else:  # a tool no model asked for: the rules ran it
                    step.items.append(tool)
            case ToolExecuted() if data.call_id in tools:
                tools[data.call_id].executed = event
            case _:
                step.items.append(event)
    first, last = (events[0], events[-1]) if events else (None, None)
    return Trace(
        steps=steps,
        started_at=first.recorded_at if first else "",
        ended_at=last.recorded_at if last else "",
    )


def _only_arbiter(step: Step) -> bool:
    """The step so far is the arbiter's model call(s), waiting for its decision."""
    return bool(step.items) and all(
        isinstance(i, ModelTrace) and i.request.role == "arbiter" for i in step.items
    )
