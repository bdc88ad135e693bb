"""The specialists the arbiter consults: coding, reasoning and analysis.

A specialist is data: the model role that answers it, the kind of work it does
(which selects its system prompt in ``engine.agent.prompts``) and its tool subset. All
of them run through the one tool loop (``engine.agent.conversation``) and the one tool
registry, so every call they make is write-ahead logged like any other.

- **coding** implements a task, or reworks one that failed review (``debug``);
- **reasoning** plans the goal into tasks, and later adds tasks or re-prioritises
  open ones (``create_task_plan``, ``set_task_priority``) — strategy and failure
  diagnosis;
- **analysis** reviews a task (``approve_code`` / ``report_issue``) and runs tests.

Each consultation is recorded as ``specialist.consulted`` caused by the
``arbiter.decided`` event that asked for it, as are the model and tool events of
its conversation.
"""

from __future__ import annotations

import msgspec

from engine.tools import TOOLSETS

_READ = ("read_file", "list_directory", "search_code")


class Specialist(msgspec.Struct, frozen=True, kw_only=True):
    """Who does one kind of work, with which model role and which tools."""

    name: str
    role: str
    """The model role (``settings.models``) that answers."""
    tools: tuple[str, ...]


CODING = Specialist(name="coding", role="coding", tools=TOOLSETS["coding"])
DEBUGGING = Specialist(name="coding", role="coding", tools=TOOLSETS["debugging"])
PLANNING = Specialist(name="reasoning", role="reasoning", tools=TOOLSETS["planning"])
REASONING = Specialist(
    name="reasoning",
    role="reasoning",
    tools=(*_READ, "create_task_plan", "set_task_priority"),
)
ANALYSIS = Specialist(name="analysis", role="analysis", tools=TOOLSETS["qa"])

BY_WORK: dict[str, Specialist] = {
    "plan": PLANNING,
    "reason": REASONING,
    "code": CODING,
    "debug": DEBUGGING,
    "qa": ANALYSIS,
}
"""The specialist for each kind of work a step can ask for."""

ACTION_FOR_SPECIALIST: dict[str, str] = {
    "coding": "consult_coding_specialist",
    "reasoning": "consult_reasoning_specialist",
    "analysis": "consult_analysis_specialist",
}
"""The arbiter's tool that consults each specialist."""


def specialist_for(work: str) -> Specialist:
    """The specialist doing ``work`` (plan, reason, code, debug or qa)."""
    try:
        return BY_WORK[work]
    except KeyError:
        raise KeyError(f"no specialist does {work!r}; known: {', '.join(BY_WORK)}") from None


__all__ = ["ACTION_FOR_SPECIALIST", "BY_WORK", "Specialist", "specialist_for"]
