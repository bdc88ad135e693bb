"""The arbiter: a model that chooses the next step, validated, with the rules as
its safety net.

The arbiter answers by calling exactly one of seven tools (``SCHEMAS``). Its
prompt holds a compact projection of the state (phase, tasks, files, open
question and answers), the legal moves, the move the rules would make, and its
own recent decisions with their outcomes, read from ``OrchestrationState``: its
memory is the log, not an attribute.

Every answer is validated before anything happens: prose, several calls, an
unknown action, a missing or malformed parameter, a move the phase machine
refuses, a task that cannot take that work, or the same decision repeated
``arbiter_repeat_limit`` times without progress all lead to the rules
coordinator deciding the step, with ``fallback_reason`` saying why. The arbiter
is not asked at all when only one move is legal (bookkeeping, limits, the
first plan, documentation and completion).

``decide`` returns a ``Verdict``; ``Engine.step`` records it as
``arbiter.decided`` and carries it out.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from operator import attrgetter
from typing import Any

import msgspec

from engine.agent.coordinator import Step, agenda, model_trouble
from engine.agent.coordinator import decide as rules_decide
from engine.agent.prompts import listed, listed_tasks
from engine.config import Limits
from engine.errors import ModelError
from engine.machines.phases import PhaseFacts, PhaseMachine
from engine.model.recording import RecordingModel
from engine.model.wire import LENGTH
from events.schema import Message
from projections.fold import RunState
from projections.orchestration import Consultation, Decision
from projections.pipeline import FileState, PipelineState, TaskState
from projections.sequence import Appended, PersistentMap, persistent_map

ROLE = "arbiter"
MEMORY = 6
"""How many of its own recent decisions the arbiter is shown."""


def _schema(name: str, description: str, **params: str) -> dict[str, Any]:
    required = [p for p in params if not params[p].startswith("(optional)")]
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
                "required": required,
            },
        },
    }


SCHEMAS: list[dict[str, Any]] = [
    _schema(
        "consult_coding_specialist",
        "Have the coding specialist implement a ready task, or rework one that failed review.",
        task_id="(optional) the task; default: the most urgent one that can take coding",
        reason="why this is the next step",
    ),
    _schema(
        "consult_reasoning_specialist",
        "Have the reasoning specialist plan, add missing tasks or re-prioritise open ones.",
        reason="what needs thinking about",
    ),
    _schema(
        "consult_analysis_specialist",
        "Have the analysis specialist review a task waiting for review and run its tests.",
        task_id="(optional) the task; default: the most urgent one waiting for review",
        reason="why this is the next step",
    ),
    _schema(
        "change_phase",
        "Move to another phase and do its work (coding, qa, debugging, documentation, completed).",
        phase="the phase to enter",
        reason="why",
    ),
    _schema(
        "continue_current_phase",
        "Keep working in the current phase: the next piece of work it has.",
        reason="why",
    ),
    _schema(
        "request_user_input",
        "Pause the run and ask the user a question; the answer comes back in this prompt.",
        question="the question for the user",
    ),
    _schema(
        "finish_run",
        "End the run: only when every task is completed or skipped.",
        reason="why the run is done",
    ),
]
"""The arbiter's seven tools, in the OpenAI function format the client sends."""

ACTIONS = tuple(s["function"]["name"] for s in SCHEMAS)
_REQUIRED = {s["function"]["name"]: s["function"]["parameters"]["required"] for s in SCHEMAS}
_PARAMETERS = {
    s["function"]["name"]: frozenset(s["function"]["parameters"]["properties"]) for s in SCHEMAS
}

SYSTEM = (
    "You are the arbiter of an autonomous coding agent. You do no work yourself: you "
    "choose the next step by calling exactly one of your tools. Prefer the legal move "
    "the rules suggest unless the state, the errors or your recent decisions show it "
    "is not working. Do not repeat a decision that made no progress. Ask the user only "
    "when the goal is ambiguous in a way the code cannot settle."
)


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """One step decided: the work to do and how it was decided."""

    step: Step
    action: str
    """The arbiter's action, or the rules step's action on a fallback."""
    parameters: dict[str, Any]
    reasoning: str
    decided_by: str
    """"arbiter" or "rules"."""
    fallback_reason: str = ""
    question: str = ""
    """For request_user_input: what to ask."""


# -- the legal moves -----------------------------------------------------------------------


def only_move(rules: Step, state: PipelineState) -> bool:
    """Whether the rules' step is the only legal move, so asking would waste a call."""
    return rules.action not in ("code", "qa", "debug") or not state.tasks


def suggestion(step: Step, phase: str) -> tuple[str, dict[str, str]]:
    """The rules' step in the arbiter's vocabulary."""
    if step.action in ("code", "debug"):
        return "consult_coding_specialist", {"task_id": step.task_id, "reason": step.reason}
    if step.action == "qa":
        return "consult_analysis_specialist", {"task_id": step.task_id, "reason": step.reason}
    if step.action == "plan":
        return "consult_reasoning_specialist", {"reason": step.reason}
    if step.action in ("complete", "finish"):
        return "finish_run", {"reason": step.reason}
    if step.phase and step.phase != phase:
        return "change_phase", {"phase": step.phase, "reason": step.reason}
    return "continue_current_phase", {"reason": step.reason}


# -- the prompt ----------------------------------------------------------------------------


def prompt(state: RunState, rules: Step, limits: Limits) -> list[Message]:
    """The arbiter's messages: system prompt, then the compact state and memory."""
    p, o = state.pipeline, state.orchestration
    lines = [
        f"Goal: {p.goal.strip()[:600]}",
        f"Phase: {p.phase}. Step {p.steps + 1} of at most {limits.max_steps}; "
        f"{p.steps_since_progress} step(s) since the last progress.",
    ]
    if p.tasks:
        lines.append("Tasks:")
        # a task's line is worked out again only when the task changed
        lines += listed_tasks(p.tasks, persistent_map(p.tasks).derived_each(_task_line))
    else:
        lines.append("Tasks: none yet.")
    if p.files:
        lines.append(persistent_map(p.files).derived(_files_line))
    for question, answer in o.user_messages:
        lines.append(
            f"You asked the user: {question}\nThe user answered: {answer or '(no answer yet)'}"
        )
    memory = _memory(state, MEMORY)
    if memory:
        lines.append("Your recent decisions and their outcomes (oldest first):")
        lines += memory
    work = agenda(p.tasks)
    if any(work):
        moves = (
            [f"qa {t.task_id}" for t in work.qa]
            + [f"debug {t.task_id}" for t in work.debug]
            + [f"code {t.task_id}" for t in work.code]
        )
        lines.append("Work that can be done now: " + listed(moves, sep="; "))
    name, args = suggestion(rules, p.phase)
    lines.append(f"Suggested next move: {name} {_json_text(args)}")
    return [Message(role="system", content=SYSTEM), Message(role="user", content="\n".join(lines))]


def _task_line(t: TaskState) -> str:
    deps = f" after {','.join(t.dependencies)}" if t.dependencies else ""
    err = f" last error: {t.last_error[:160]}" if t.last_error else ""
    return (
        f"- {t.task_id} [{t.status}] p{t.priority} attempts {t.attempts}{deps}: {t.title[:80]}{err}"
    )


def _files_line(files: PersistentMap[str, FileState]) -> str:
    return "Files: " + ", ".join(sorted(files)[:30])


_sorted_json = json.JSONEncoder(sort_keys=True).encode
"""``json.dumps(value, sort_keys=True)``, without building an encoder per call."""


def _json_text(value: Any) -> str:
    """``json.dumps(value, sort_keys=True)``: the bytes the prompts have always held.

    Strings and objects keyed by strings (the arbiter's arguments and steps) are
    written here with the encoder's own string escaping: a few calls, where the
    encoder spends microseconds a step setting itself up. Anything else is the
    encoder's."""
    if type(value) is str:
        return _quoted(value)
    if type(value) is dict:
        try:
            items = [f"{_quoted(k)}: {_json_text(value[k])}" for k in sorted(value)]
        except TypeError:  # a key that is not a string: the encoder's rules for it
            return _sorted_json(value)
        return "{" + ", ".join(items) + "}"
    return _sorted_json(value)


_quoted = json.encoder.encode_basestring_ascii


def recent_decisions(state: RunState, limit: int = MEMORY) -> list[str]:
    """The last ``limit`` decisions, each with what came of it: the specialist's
    outcome, or the fallback that replaced it."""
    return [line[2:] for line in _memory(state, limit)]


def _memory(state: RunState, limit: int) -> list[str]:
    """``recent_decisions`` as the prompt lists them: "- " and the line."""
    # what a decision was is worked out once; only what came of it is read each time
    remembered = state.orchestration.decisions.derived_each(_remembered, -limit)
    if not remembered:
        return []
    after = _consulted_after(state.orchestration.consultations, remembered[0][0])
    ends = [version for version, _ in remembered[1:]]
    ends.append(state.version + 1)
    out = []
    count = 0
    for (_, head), end in zip(remembered, ends, strict=True):
        results = []
        while count < len(after) and (c := after[count]).version < end:
            results.append(f"{c.specialist}: {c.outcome}")
            count += 1
        out.append(head + ("; ".join(results) or "no specialist consulted"))
    return out


def _consulted_after(consultations: Appended[Consultation], version: int) -> list[Consultation]:
    """The consultations after ``version``: a few at the end, so they are looked for
    in ever longer tails."""
    size = 8
    while True:
        tail = consultations[-size:]
        if len(tail) == len(consultations) or tail[0].version <= version:
            return tail[bisect_right(tail, version, key=_version) :]
        size *= 4


_version = attrgetter("version")


def _remembered(d: Decision) -> tuple[int, str]:
    """A remembered decision's version, and its prompt line up to its outcome."""
    params = {k: v for k, v in d.parameters.items() if k != "reason"}
    who = f"fallback to rules ({d.fallback_reason})" if d.fallback_used else d.decided_by
    return d.version, f"- {d.action} {_json_text(params)} by {who} -> "


# -- validation ----------------------------------------------------------------------------


class Refused(Exception):
    """The arbiter's answer cannot be carried out; the message says why."""


def _task_for(state: PipelineState, kinds: tuple[str, ...], task_id: str) -> Step:
    work = agenda(state.tasks)
    for action, tasks in work.items():
        if action in kinds:
            for task in tasks:
                if not task_id or task.task_id == task_id:
                    return work.step(action, task)
    if task_id:
        status = state.tasks[task_id].status if task_id in state.tasks else "unknown"
        raise Refused(f"task {task_id!r} ({status}) cannot take that work now")
    raise Refused("no task can take that work now")


def _step_for_phase(state: PipelineState, rules: Step, phase: str) -> Step:
    by_phase = {"coding": ("code",), "qa": ("qa",), "debugging": ("debug",)}
    if phase in by_phase:
        return _task_for(state, by_phase[phase], "")
    if rules.phase == phase:
        return rules
    raise Refused(f"the engine has no work for phase {phase!r} now")


def to_step(name: str, args: dict[str, Any], state: PipelineState, rules: Step) -> Step:
    """The step an arbiter call asks for, or ``Refused``."""
    if name not in ACTIONS:
        raise Refused(f"unknown action {name!r}; the actions are {', '.join(ACTIONS)}")
    for key in _REQUIRED[name]:
        value = args.get(key)
        if not isinstance(value, str) or not value.strip():
            raise Refused(f"{name} needs the parameter {key!r} (a non-empty string)")
    unknown = args.keys() - _PARAMETERS[name]
    if unknown:
        raise Refused(f"{name} has no parameter(s) {', '.join(sorted(unknown))}")
    task_id = args.get("task_id") or ""
    if not isinstance(task_id, str):
        raise Refused(f"{name}: task_id must be a string")
    reason = str(args.get("reason") or args.get("question") or "")
    if name == "consult_coding_specialist":
        step = _task_for(state, ("debug", "code"), task_id)
    elif name == "consult_analysis_specialist":
        step = _task_for(state, ("qa",), task_id)
    elif name == "consult_reasoning_specialist":
        step = Step(action="plan" if not state.tasks else "reason", reason=reason)
    elif name == "change_phase":
        phase = args["phase"].strip()
        _check_phase(state, phase)
        step = _step_for_phase(state, rules, phase)
    elif name == "continue_current_phase":
        if rules.phase and rules.phase != state.phase:
            raise Refused(
                f"the current phase {state.phase!r} has no work left; the next work is in {rules.phase!r}"
            )
        step = rules
    elif name == "finish_run":
        if rules.action not in ("document", "complete", "finish"):
            raise Refused("tasks are still open; the run cannot finish")
        step = rules
    else:  # request_user_input: the engine pauses; no work
        return Step(action="ask", reason=reason)
    step = msgspec.structs.replace(step, reason=reason or step.reason)
    _check_phase(state, step.phase)
    return step


def _check_phase(state: PipelineState, target: str) -> None:
    if not target or target == state.phase:
        return
    machine = PhaseMachine.restore(state.phase)
    trigger = machine.table.trigger_for(state.phase, target)
    facts = PhaseFacts.from_tasks(state.tasks)
    if trigger is None or not machine.can(trigger, facts):
        raise Refused(f"the phase machine refuses {state.phase!r} -> {target!r}")


def repeated(state: RunState, name: str, args: dict[str, Any], limit: int) -> bool:
    """Whether this decision would be the ``limit``-th identical arbiter decision in
    a row with no progress in between."""
    if limit <= 1:
        return state.pipeline.steps_since_progress > 0 and bool(state.orchestration.decisions)
    last = state.orchestration.decisions[-(limit - 1) :]
    if len(last) < limit - 1 or state.pipeline.steps_since_progress < limit - 1:
        return False
    key = {k: v for k, v in args.items() if k != "reason"}
    return all(
        d.decided_by == "arbiter"
        and d.action == name
        and {k: v for k, v in d.parameters.get("arguments", {}).items() if k != "reason"} == key
        for d in last
    )


# -- deciding ------------------------------------------------------------------------------


def decide(
    state: RunState, limits: Limits, model: RecordingModel, *, causation: int | None = None
) -> Verdict:
    """The next step: the arbiter's if it is valid, else the rules' with the reason."""
    p = state.pipeline
    rules = rules_decide(p, limits, model_trouble(state.orchestration))

    def fallback(reason: str) -> Verdict:
        """The rules' step; ``reason`` says why the arbiter's was not taken ("" when
        the arbiter was not asked)."""
        return Verdict(
            step=rules,
            action=rules.action,
            parameters=rules.parameters(),
            reasoning=rules.reason,
            decided_by="rules",
            fallback_reason=reason,
        )

    if only_move(rules, p):
        return fallback("")
    try:
        reply = model.chat(
            ROLE,
            prompt(state, rules, limits),
            SCHEMAS,
            conversation=f"arbiter:{p.steps + 1}",
            causation=causation,
        )
    except ModelError as e:
        return fallback(f"the arbiter model failed: {e}")
    if reply.done_reason == LENGTH:
        tokens = reply.usage.completion_tokens
        return fallback(f"the arbiter's answer was cut off at the length limit ({tokens} tokens)")
    if not reply.tool_calls:
        return fallback(f"the arbiter answered without a tool call: {reply.content[:120]!r}")
    if len(reply.tool_calls) > 1:
        names = ", ".join(c.name for c in reply.tool_calls)
        return fallback(
            f"the arbiter called {len(reply.tool_calls)} tools ({names}); exactly one is allowed"
        )
    call = reply.tool_calls[0]
    args = dict(call.arguments) if isinstance(call.arguments, dict) else {}
    try:
        step = to_step(call.name, args, p, rules)
    except Refused as e:
        return fallback(f"arbiter's {call.name}: {e}")
    if repeated(state, call.name, args, limits.arbiter_repeat_limit):
        return fallback(
            f"arbiter's {call.name} repeated {limits.arbiter_repeat_limit} times without progress"
        )
    parameters = {"arguments": args, **step.parameters()}
    if step.action != "ask":
        parameters["work"] = step.action
    return Verdict(
        step=step,
        action=call.name,
        parameters=parameters,
        reasoning=step.reason,
        decided_by="arbiter",
        question=str(args.get("question", "")) if step.action == "ask" else "",
    )


__all__ = [
    "ACTIONS",
    "SCHEMAS",
    "Refused",
    "Verdict",
    "decide",
    "only_move",
    "prompt",
    "recent_decisions",
    "repeated",
    "suggestion",
    "to_step",
]
