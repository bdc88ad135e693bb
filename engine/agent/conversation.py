"""The tool loop: one task's work as a multi-turn conversation with a model.

The model's tool calls are executed write-ahead (``tool.requested`` is appended
before the tool runs, ``tool.executed`` after, followed by any events the tool
produced) and their results go back as ``role: "tool"`` messages, until the model
calls a finishing tool or the turn limit is reached. A reply without a tool call
gets one explicit nudge; a second one ends the conversation. An answer the length
cap cut off (``done_reason`` "length") is not acted on: the model is told it was
cut and to answer shorter; a second cut in a row ends the conversation. A call that
fails exactly as the same call failed before gets a corrective note; the third time
ends the conversation with that reason rather than at the turn limit. Silence is never
success: only a finishing tool that succeeded finishes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgspec

from engine.agent.prompts import NUDGE
from engine.agent.runlog import RunLog
from engine.config import Settings
from engine.errors import ModelError, ModelResponseInvalid, WorkspaceGone
from engine.model.recording import RecordingModel
from engine.model.stored import stored_arguments
from engine.model.wire import LENGTH
from engine.terminal import without_timings
from engine.tools import ToolContext, ToolOutcome, ToolRegistry, execute
from engine.tools.confine import Confinement
from engine.tools.sandbox import read_only, workspace_problem
from engine.tools.snapshot import WorkspaceDigests
from events.schema import Message, ToolExecuted, ToolRequested
from projections.pipeline import TaskState

ToolRunner = Callable[[ToolRegistry, str, Mapping[str, Any], ToolContext], ToolOutcome]
"""Runs one tool call: ``engine.tools.execute``, or a replay's results from the log.
A runner whose ``in_workspace`` attribute is false runs nothing in the workspace (a
replay's recorded results): the check that the workspace is still there and
writable, made before each tool call, is not made for it."""

INVALID = (
    "Your last answer could not be used: {error}. Answer again with one valid tool call "
    "whose arguments are a complete JSON object."
)

CUT = (
    "Your last answer was cut off: it reached the length limit of one answer "
    "({tokens} tokens) before it ended, so none of it was run. Answer again, shorter: "
    "exactly one tool call, and write a long file in parts (create it with the first "
    "part, then add the rest with modify_file)."
)

REPEAT_LIMIT = 3
"""The same call failing the same way this often ends the task's conversation."""

REPEATED = (
    "\n\nYou made this exact {tool} call before and it failed the same way. Repeating it "
    "will not help: read the error above and change the arguments, call a different "
    "tool, or finish with the tool that ends your task."
)

DUPLICATE = (
    "not run: this {tool} call is identical to an earlier call in the same answer, "
    "which has run; its result is above"
)
BEYOND_CAP = (
    "not run: this answer made {calls} tool calls and only the first {cap} run "
    "(limits.max_calls_per_answer); make this call again in your next answer if it "
    "is still needed"
)

RESULT_PREVIEW = 2000
"""Characters of a tool result kept inline in ``tool.executed``; longer goes to a blob."""


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    finished: bool
    reason: str
    turns: int
    model_error: ModelError | None = None


def run_conversation(
    *,
    log: RunLog,
    model: RecordingModel,
    tools: ToolRegistry,
    settings: Settings,
    workspace: Path,
    role: str,
    messages: Sequence[Message],
    conversation: str,
    task_id: str,
    causation: int,
    prompt_digest: str = "",
    confinement: Confinement | None = None,
    digests: WorkspaceDigests | None = None,
    run_tool: ToolRunner = execute,
) -> Outcome:
    """Talk to ``role`` until a finishing tool succeeds or a bound is hit."""
    history = list(messages)
    schemas = tools.schemas()
    nudged = invalid = cut = False
    failures: dict[tuple[str, bytes, str], int] = {}  # identical failing calls since a success
    limit = settings.limits.max_turns_per_task
    context = functools.partial(
        ToolContext,
        workspace=workspace,
        blobs=log.store,
        task_id=task_id,
        allowlist=tuple(tuple(a) for a in settings.tools.allowlist),
        command_timeout=settings.tools.command_timeout,
        output_cap=settings.tools.output_cap,
        confinement=confinement,
        digests=digests,
        known_as=log.pipeline.workspace,
    )
    for turn in range(1, limit + 1):
        try:
            reply = model.chat(
                role,
                history,
                schemas,
                conversation=conversation,
                causation=causation,
                prompt_digest=prompt_digest,
            )
        except ModelResponseInvalid as e:
            # the model answered, but unusably (truncated or broken arguments): tell it
            # why once, as the nudge does for prose; twice in a row ends the turn
            if invalid:
                return Outcome(
                    finished=False, reason=f"model call failed: {e}", turns=turn, model_error=e
                )
            invalid = True
            history.append(Message(role="user", content=INVALID.format(error=e)))
            continue
        except ModelError as e:
            return Outcome(
                finished=False, reason=f"model call failed: {e}", turns=turn, model_error=e
            )
        invalid = False
        responded = log.version
        if reply.done_reason == LENGTH:
            # the cap ended the answer: its calls may be the first of several, or
            # one whose arguments were complete by chance; none of it is acted on
            if cut:
                return Outcome(
                    finished=False,
                    reason="the model's answer was cut off at the length limit twice in a row",
                    turns=turn,
                )
            cut = True
            tokens = reply.usage.completion_tokens or "its"
            history += [
                Message(role="assistant", content=reply.content),
                Message(role="user", content=CUT.format(tokens=tokens)),
            ]
            continue
        cut = False
        if not reply.tool_calls:
            if nudged:
                return Outcome(
                    finished=False,
                    reason="the model answered twice without a tool call",
                    turns=turn,
                )
            nudged = True
            history += [
                Message(role="assistant", content=reply.content),
                Message(role="user", content=NUDGE),
            ]
            continue
        history.append(
            Message(role="assistant", content=reply.content, tool_calls=reply.tool_calls)
        )
        finished = False
        repeated = ""
        seen: set[tuple[str, bytes]] = set()
        cap = settings.limits.max_calls_per_answer
        for index, call in enumerate(reply.tool_calls):
            same = (call.name, _canonical(call.arguments))
            refusal = ""
            if index >= cap:
                refusal = BEYOND_CAP.format(calls=len(reply.tool_calls), cap=cap)
            elif same in seen:
                refusal = DUPLICATE.format(tool=call.name)
            seen.add(same)
            ctx = context(tasks=log.pipeline.tasks.derived(_statuses))
            outcome = _run_tool(
                log, tools, ctx, call.name, call.arguments, responded, run_tool, refusal=refusal
            )
            text = outcome.text
            if outcome.ok:
                failures.clear()
            else:
                # failing "the same way" is what the error says, not how long it took:
                # "exit code 1 after 1.4s" and "after 2.5s" are one failure, or whether
                # the third strike ends the task would depend on the machine's speed
                key = (*same, without_timings(outcome.error))
                failures[key] = failures.get(key, 0) + 1
                if failures[key] >= REPEAT_LIMIT:
                    repeated = (
                        f"the model repeated the same failing call {REPEAT_LIMIT} times: "
                        f"{call.name}: {outcome.error}"
                    )
                elif failures[key] > 1:
                    text += REPEATED.format(tool=call.name)
            history.append(Message(role="tool", content=text, tool_call_id=call.id, name=call.name))
            finished = finished or outcome.finishes
        if finished:
            return Outcome(finished=True, reason="finished", turns=turn)
        if repeated:
            return Outcome(finished=False, reason=repeated, turns=turn)
    return Outcome(
        finished=False,
        reason=f"reached max_turns_per_task ({limit}) without finishing",
        turns=limit,
    )


def _run_tool(
    log: RunLog,
    tools: ToolRegistry,
    ctx: ToolContext,
    name: str,
    arguments: dict[str, object],
    causation: int,
    run_tool: ToolRunner,
    *,
    refusal: str = "",
) -> ToolOutcome:
    if getattr(run_tool, "in_workspace", True) and (
        not ctx.workspace.is_dir() or read_only(ctx.workspace)
    ):
        stopped = "the run stopped before its next tool call, with nothing lost"
        raise WorkspaceGone(workspace_problem(log.run_id, ctx.workspace, log.version, stopped))
    call_id = log.next_id("t")
    # a file's content is already a blob (the model's answer carried it): refer to it
    kept, refs = stored_arguments(arguments)
    for argument in refs:
        log.store.put(str(arguments[argument]).encode("utf-8"))
    requested = log.append(
        ToolRequested(call_id=call_id, tool=name, arguments=kept, argument_refs=refs),
        causation=causation,
    )[0]
    if refusal:  # recorded as asked for, and answered with why it did not run
        outcome = ToolOutcome(ok=False, error=refusal)
    else:
        outcome = run_tool(tools, name, arguments, ctx)
    result, result_ref = outcome.result, ""
    if len(result) > RESULT_PREVIEW:
        result_ref = log.store.put(result.encode("utf-8"))
        result = result[:RESULT_PREVIEW]
    log.append(
        ToolExecuted(
            call_id=call_id,
            tool=name,
            ok=outcome.ok,
            result=result,
            result_ref=result_ref,
            error=outcome.error,
            files_changed=outcome.files_changed,
        ),
        *outcome.events,
        causation=requested.version,
    )
    return outcome


def _statuses(tasks: Mapping[str, TaskState]) -> Mapping[str, str]:
    """Each task's status by id: what a tool may know of the tasks (read-only, and
    worked out once per version of the tasks)."""
    return MappingProxyType({t.task_id: t.status for t in tasks.values()})


def _canonical(arguments: object) -> bytes:
    """The arguments as JSON with sorted keys: equal calls, equal texts (never recorded)."""
    return _CANONICAL(arguments)


_CANONICAL = msgspec.json.Encoder(order="sorted", enc_hook=str).encode
