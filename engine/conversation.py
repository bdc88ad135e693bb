"""The tool loop: one task's work as a multi-turn conversation with a model.

The model's tool calls are executed write-ahead (``tool.requested`` is appended
before the tool runs, ``tool.executed`` after, followed by any events the tool
produced) and their results go back as ``role: "tool"`` messages, until the model
calls a finishing tool or the turn limit is reached. A reply without a tool call
gets one explicit nudge; a second one ends the conversation. Silence is never
success: only a finishing tool that succeeded finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from engine.config import Settings
from engine.errors import ModelError
from engine.model.recording import RecordingModel
from engine.prompts import NUDGE
from engine.runlog import RunLog
from engine.tools import ToolContext, ToolOutcome, ToolRegistry, execute
from events.schema import Message, ToolExecuted, ToolRequested

ToolRunner = Callable[[ToolRegistry, str, Mapping[str, Any], ToolContext], ToolOutcome]
"""Runs one tool call: ``engine.tools.execute``, or a replay's results from the log."""

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
    run_tool: ToolRunner = execute,
) -> Outcome:
    """Talk to ``role`` until a finishing tool succeeds or a bound is hit."""
    history = list(messages)
    schemas = tools.schemas()
    nudged = False
    limit = settings.limits.max_turns_per_task
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
        except ModelError as e:
            return Outcome(
                finished=False, reason=f"model call failed: {e}", turns=turn, model_error=e
            )
        responded = log.version
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
        for call in reply.tool_calls:
            outcome_text, finishes = _run_tool(
                log,
                tools,
                settings,
                workspace,
                task_id,
                call.name,
                call.arguments,
                responded,
                run_tool,
            )
            history.append(
                Message(role="tool", content=outcome_text, tool_call_id=call.id, name=call.name)
            )
            finished = finished or finishes
        if finished:
            return Outcome(finished=True, reason="finished", turns=turn)
    return Outcome(
        finished=False,
        reason=f"reached max_turns_per_task ({limit}) without finishing",
        turns=limit,
    )


def _run_tool(
    log: RunLog,
    tools: ToolRegistry,
    settings: Settings,
    workspace: Path,
    task_id: str,
    name: str,
    arguments: dict[str, object],
    causation: int,
    run_tool: ToolRunner,
) -> tuple[str, bool]:
    call_id = log.next_id("t")
    requested = log.append(
        ToolRequested(call_id=call_id, tool=name, arguments=dict(arguments)), causation=causation
    )[0]
    ctx = ToolContext(
        workspace=workspace,
        blobs=log.store,
        task_id=task_id,
        tasks={t.task_id: t.status for t in log.pipeline.tasks.values()},
        allowlist=tuple(tuple(a) for a in settings.tools.allowlist),
        command_timeout=settings.tools.command_timeout,
        output_cap=settings.tools.output_cap,
    )
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
    return outcome.text, outcome.finishes
