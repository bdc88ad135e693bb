"""Prompts: a base system prompt per kind of work, and the opening user message.

Every input a prompt depends on comes from projected state (goal, task, files,
last error), so the same log always builds the same prompt; its digest rides on
``model.requested``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from events.schema import Message
from projections.pipeline import PipelineState, TaskState

SYSTEM = {
    "plan": (
        "You are the planner of an autonomous coding agent. Read the goal, look at the "
        "workspace if useful, then call create_task_plan exactly once with small, "
        "concrete tasks. Each task names the file it creates or changes (target_file) "
        "and the ids or titles of tasks it depends on."
    ),
    "code": (
        "You are the coding specialist of an autonomous coding agent. Implement the "
        "task with the file tools; paths are relative to the workspace. Run the tests "
        "with run_command when there are any. When the task is done, call "
        "complete_task with a short summary. Always answer with a tool call."
    ),
    "debug": (
        "You are the debugging specialist of an autonomous coding agent. The task "
        "failed review; the reviewer's report is below. Find the cause, fix it with "
        "the file tools, check with run_command, then call complete_task."
    ),
    "qa": (
        "You are the reviewer of an autonomous coding agent. Read the task's files and "
        "run the tests with run_command. Then call approve_code if the task is done "
        "and correct, or report_issue describing exactly what is wrong. Silence is "
        "not approval: you must call one of the two."
    ),
}

NUDGE = (
    "Your last answer called no tool. This agent acts only through tool calls: answer "
    "with exactly one call to one of the offered tools."
)


def opening(action: str, state: PipelineState, task: TaskState | None) -> list[Message]:
    """The system prompt and first user message for one conversation."""
    lines = [f"Goal:\n{state.goal.strip()}"]
    if task is not None:
        lines.append(f"Task {task.task_id}: {task.title}")
        if task.description:
            lines.append(task.description)
        if task.target_file:
            lines.append(f"Target file: {task.target_file}")
        if task.errors and action in ("debug", "code"):
            lines.append(f"Last problem reported:\n{task.errors[-1]}")
    if state.files:
        lines.append("Files in the workspace written so far: " + ", ".join(sorted(state.files)))
    return [
        Message(role="system", content=SYSTEM[action]),
        Message(role="user", content="\n\n".join(lines)),
    ]


def digest(messages: Sequence[Message]) -> str:
    """Digest of a built prompt (system + opening), recorded with the request."""
    h = hashlib.sha256()
    for m in messages[:2]:
        h.update(m.role.encode() + b"\0" + m.content.encode() + b"\0")
    return h.hexdigest()
