"""Prompts: a base system prompt per kind of work and the opening user message
(fitting a conversation to a model's context window is the model layer's:
``engine.model.context``).

Every input a prompt depends on comes from projected state (goal, task, files,
last error), so the same log always builds the same prompt; its digest rides on
``model.requested``.

*Dynamic enhancement*: ``complexity`` scores a task 1-10 from the size of its
target file, its dependencies, its attempts so far and the phase; the score adds
guidance to the system prompt of a complex task (read first, change in small
steps, test each; do not repeat failed attempts).

*Caching*: building a prompt is a pure function of its inputs, so built
prompts are memoised by those inputs (``build_prompt``'s LRU cache).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

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
    "reason": (
        "You are the reasoning specialist of an autonomous coding agent: strategy and "
        "failure diagnosis. Read the goal, the tasks and their errors below. If work is "
        "missing, add tasks with create_task_plan; if the order of work is wrong, call "
        "set_task_priority on the task that should move. Always answer with a tool call."
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


PHASE_WEIGHT = {"plan": 2, "reason": 2, "code": 1, "debug": 2, "qa": 0}
"""Extra complexity a kind of work carries: debugging and planning are harder."""

COMPLEX = 7
"""Scores at or above this get the 'complex task' guidance."""

ENHANCEMENT = {
    "complex": (
        "This task is complex (score {score}/10): read the files involved first, change "
        "one thing at a time, run the checks after each change, and only finish when "
        "they pass."
    ),
    "retry": "Earlier attempts at this task failed ({attempts}); do not repeat them.",
}
"""Guidance added to the base prompt. Below ``COMPLEX`` the base prompt is sent
as is: a simple task gains nothing from more words, and a prompt that does not
change keeps replays of older runs identical."""


def complexity(action: str, task: TaskState | None, file_sizes: Mapping[str, int]) -> int:
    """A 1-10 score for a piece of work: +1 per 2 KB of the target file (up to
    +4), +1 per dependency (up to +2), +1 per earlier attempt (up to +2), plus the
    kind of work's ``PHASE_WEIGHT``."""
    score = 1 + PHASE_WEIGHT.get(action, 0)
    if task is not None:
        score += min(4, file_sizes.get(task.target_file, 0) // 2048)
        score += min(2, len(task.dependencies))
        score += min(2, max(0, task.attempts - 1))
    return max(1, min(10, score))


def enhancement(action: str, score: int, attempts: int) -> str:
    """The guidance added to the base system prompt for this score ("" below
    ``COMPLEX``)."""
    if score < COMPLEX:
        return ""
    parts = [ENHANCEMENT["complex"].format(score=score)]
    if attempts > 1 and action in ("code", "debug"):
        parts.append(ENHANCEMENT["retry"].format(attempts=attempts - 1))
    return " ".join(parts)


LISTED = 40
"""The most tasks, files or pieces of work a prompt lists. A prompt that listed every
one grew with the run (the arbiter's to 100,000 characters over 4,000 steps, past its
context window, where fitting could only drop the conversation after it); a run
within these counts is asked exactly as before."""

SETTLED = frozenset({"completed", "skipped"})


def listed_tasks(tasks: Mapping[str, TaskState], lines: Mapping[str, str]) -> list[str]:
    """The ``lines`` of ``tasks`` a prompt lists: all of them up to ``LISTED``; past
    that, the tasks not settled yet, then how many are not listed, by status."""
    if len(tasks) <= LISTED:
        return list(lines.values())
    shown = [key for key, t in tasks.items() if t.status not in SETTLED][:LISTED]
    left: dict[str, int] = {}
    for t in tasks.values():
        left[t.status] = left.get(t.status, 0) + 1
    for key in shown:
        left[tasks[key].status] -= 1
    counts = ", ".join(f"{n} {status}" for status, n in sorted(left.items()) if n)
    return [lines[key] for key in shown] + [
        f"({len(tasks) - len(shown)} more tasks not listed: {counts})"
    ]


def listed(names: Sequence[str], what: str = "", sep: str = ", ") -> str:
    """``names`` joined by ``sep``, at most ``LISTED`` of them, saying how many more
    there are (of ``what``)."""
    if len(names) <= LISTED:
        return sep.join(names)
    more = f"{len(names) - LISTED} more" + (f" {what}" if what else "")
    return sep.join(names[:LISTED]) + f" (and {more})"


def opening(action: str, state: PipelineState, task: TaskState | None) -> list[Message]:
    """The system prompt (base + enhancement) and first user message for one
    conversation."""
    sizes = {path: f.size for path, f in state.files.items()}
    score = complexity(action, task, sizes)
    task_key: tuple[Any, ...] = ()
    if task is not None:
        last_error = task.errors[-1] if task.errors and action in ("debug", "code") else ""
        task_key = (
            task.task_id,
            task.title,
            task.description,
            task.target_file,
            last_error,
            task.attempts,
        )
    tasks: tuple[str, ...] = ()
    if action == "reason":
        lines = {
            key: f"{t.task_id} [{t.status}] priority {t.priority}: {t.title}"
            + (f" (last error: {t.last_error[:200]})" if t.last_error else "")
            for key, t in state.tasks.items()
        }
        tasks = tuple(listed_tasks(state.tasks, lines))
    files = tuple(sorted(state.files))
    return list(build_prompt(action, state.goal, task_key, files, score, tasks))


@functools.lru_cache(maxsize=256)
def build_prompt(
    action: str,
    goal: str,
    task: tuple[Any, ...],
    files: tuple[str, ...],
    score: int,
    tasks: tuple[str, ...] = (),
) -> tuple[Message, Message]:
    """The two opening messages, memoised by their inputs (all hashable): the
    engine asks for the same prompt again on a retry and on every replay."""
    lines = [f"Goal:\n{goal.strip()}"]
    attempts = 0
    if task:
        task_id, title, description, target_file, last_error, attempts = task
        lines.append(f"Task {task_id}: {title}")
        if description:
            lines.append(description)
        if target_file:
            lines.append(f"Target file: {target_file}")
        if last_error:
            lines.append(f"Last problem reported:\n{last_error}")
    if tasks:
        lines.append("Tasks:\n" + "\n".join(tasks))
    if files:
        lines.append("Files in the workspace written so far: " + listed(files, "files"))
    system = SYSTEM[action]
    extra = enhancement(action, score, attempts)
    if extra:
        system = f"{system}\n\n{extra}"
    return (
        Message(role="system", content=system),
        Message(role="user", content="\n\n".join(lines)),
    )


def digest(messages: Sequence[Message]) -> str:
    """Digest of a built prompt (system + opening), recorded with the request."""
    h = hashlib.sha256()
    for m in messages[:2]:
        h.update(m.role.encode() + b"\0" + m.content.encode() + b"\0")
    return h.hexdigest()
