"""Scripted models that misbehave the way local models do, then do the right thing.

For testing an agent (ours, or a user's configuration) against the known failure
modes of small local models, with ``engine.testing.ScriptedModelServer``::

    from engine.misbehaving import POLICIES, CALC, Misbehaving
    with ScriptedModelServer(Misbehaving("hallucinated_tool", CALC)) as server:
        ...  # autonomy run CALC.goal --model-url server.url

``GoalModels`` is a competent scripted model for a goal given as the files it should
write: it plans one task per file, writes each file, checks it with a command, and
as the reviewer reads the file (running the tests, for a test file) and approves.
The coder runs each file's check (``py_compile``, or ``pytest`` for the test file).
It decides from what the conversation shows (the tools offered, how many tool calls
succeeded), not from a count of turns, so a misbehaving turn in between does not
derail it.

``Misbehaving(policy, goal)`` wraps it: the first tool call of every conversation is
replaced by the policy's misbehaviour, once; every other answer is competent's. So
each policy "eventually does the right thing", and a run against it must still
complete, within bounds, through the engine's own corrections (error results the
model can act on, the nudge, the text-call fallback, the forgiving finishing tools).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.testing import Reply, ScriptedRequest


@dataclass(frozen=True)
class FileSpec:
    """A file a goal needs: its path, its content, and the command that checks it."""

    path: str
    content: str
    check: tuple[str, ...]
    title: str


@dataclass(frozen=True)
class Goal:
    """A goal and the files that achieve it, in dependency order."""

    name: str
    goal: str
    files: tuple[FileSpec, ...]


CALC = Goal(
    "calc",
    "Create calc.py with functions add(a, b) and sub(a, b)",
    (
        FileSpec(
            "calc.py",
            "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
            ("python", "-m", "py_compile", "calc.py"),
            "Write calc.py with add and sub",
        ),
    ),
)

TWO_FILES = Goal(
    "two-files",
    "Write mathx.py with square(x) and cube(x), and pytest tests for it in test_mathx.py",
    (
        FileSpec(
            "mathx.py",
            "def square(x):\n    return x * x\n\n\ndef cube(x):\n    return x * x * x\n",
            ("python", "-m", "py_compile", "mathx.py"),
            "Write mathx.py",
        ),
        FileSpec(
            "test_mathx.py",
            "from mathx import cube, square\n\n\ndef test_square():\n    assert square(3) == 9"
            "\n\n\ndef test_cube():\n    assert cube(2) == 8\n",
            ("python", "-m", "pytest", "-q"),
            "Test mathx.py",
        ),
    ),
)

GOALS: tuple[Goal, ...] = (CALC, TWO_FILES)


def _tools(request: ScriptedRequest) -> set[str]:
    return {t["function"]["name"] for t in (request.body or {}).get("tools", [])}


def _succeeded(messages: list[dict[str, Any]]) -> int:
    """Tool results that were not errors: how far the conversation's work got."""
    return sum(
        1
        for m in messages
        if m.get("role") == "tool" and not str(m.get("content", "")).startswith("error:")
    )


class GoalModels:
    """A competent model for one ``Goal`` (every role)."""

    def __init__(self, goal: Goal) -> None:
        self.goal = goal

    def __call__(self, request: ScriptedRequest) -> Reply:
        offered = _tools(request)
        messages = (request.body or {}).get("messages", [])
        if "consult_coding_specialist" in offered:
            prompt = messages[-1].get("content", "") if messages else ""
            found = re.search(r"^Suggested next move: (\w+) (\{.*\})$", prompt, re.MULTILINE)
            if found is None:
                return Reply.text("I cannot tell what to do next.")
            return Reply.tool(found.group(1), **json.loads(found.group(2)))
        if "create_task_plan" in offered:
            tasks = [
                {
                    "title": f.title,
                    "target_file": f.path,
                    "priority": i + 1,
                    "dependencies": [self.goal.files[i - 1].title] if i else [],
                }
                for i, f in enumerate(self.goal.files)
            ]
            return Reply.tool("create_task_plan", tasks=tasks)
        spec = self._file(messages)
        done = _succeeded(messages)
        if "approve_code" in offered:  # the coder ran the check; the reviewer reads
            steps = [
                Reply.tool("read_file", path=spec.path),
                Reply.tool("approve_code", summary=f"{spec.path} is correct"),
            ]
        else:
            steps = [
                Reply.tool("create_file", path=spec.path, content=spec.content, overwrite=True),
                Reply.tool("run_command", argv=list(spec.check)),
                Reply.tool("complete_task", summary=f"{spec.path} written and checked"),
            ]
        return steps[min(done, len(steps) - 1)]

    def _file(self, messages: list[dict[str, Any]]) -> FileSpec:
        """The file of the conversation's task: task tN is the Nth file planned."""
        opening = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        found = re.search(r"Task t(\d+)", opening)
        index = int(found.group(1)) - 1 if found else 0
        return self.goal.files[min(max(index, 0), len(self.goal.files) - 1)]


Call = tuple[str, dict[str, Any]]
Policy = Callable[[Call], Reply | None]
"""Turns the competent call into a misbehaving answer; None: this call is left alone."""


def _first_string(arguments: dict[str, Any]) -> str | None:
    return next((k for k, v in arguments.items() if isinstance(v, str)), None)


def _renamed(call: Call) -> Reply | None:
    name, args = call
    if not args:
        return None
    key = next(iter(args))
    return Reply.tool(name, **{("file_" + key if key == "path" else key + "_value"): args[key]})


def _missing(call: Call) -> Reply | None:
    name, args = call
    required = {"create_file": "content", "read_file": "path", "run_command": "argv"}.get(name)
    if required is None or required not in args:
        return None
    return Reply.tool(name, **{k: v for k, v in args.items() if k != required})


def _object_for_string(call: Call) -> Reply | None:
    name, args = call
    key = _first_string(args)
    if key is None:
        return None
    return Reply.tool(name, **{**args, key: {"value": args[key]}})


def _wrong_id(call: Call) -> Reply | None:
    name, args = call
    if name not in ("complete_task", "approve_code", "report_issue"):
        return None
    return Reply.tool(name, **{**args, "task_id": str(args.get("summary", "done"))[:40]})


POLICIES: Mapping[str, Policy] = {
    "tool_call_tags": lambda c: Reply.text(
        "<tool_call>\n" + json.dumps({"name": c[0], "arguments": c[1]}) + "\n</tool_call>"
    ),
    "fenced_json": lambda c: Reply.text(
        "I will do that now.\n```json\n" + json.dumps({"name": c[0], "arguments": c[1]}) + "\n```"
    ),
    "action_lines": lambda c: Reply.text(
        f"Thought: this is the next step.\nAction: {c[0]}\nAction Input: {json.dumps(c[1])}"
    ),
    "wrong_argument_names": _renamed,
    "extra_arguments": lambda c: Reply.tool(c[0], **c[1], encoding="utf-8"),
    "missing_arguments": _missing,
    "arguments_as_json_string": lambda c: Reply.calls((c[0], json.dumps(c[1]))),
    "object_for_string": _object_for_string,
    "hallucinated_tool": lambda c: Reply.tool("write_file_and_run", **c[1]),
    "repeated_call": lambda c: Reply.calls(c, c),
    "prose_only": lambda c: Reply.text("Sure! I will take care of that right away."),
    "truncated_json": lambda c: Reply.invalid_arguments(c[0], json.dumps(c[1])[:-3]),
    "wrong_id": _wrong_id,
}
"""The known failure modes of local models, by name."""


class Misbehaving:
    """``GoalModels`` whose first tool call in each conversation misbehaves once."""

    def __init__(self, policy: str, goal: Goal) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; the policies are {', '.join(POLICIES)}")
        self.policy = POLICIES[policy]
        self.competent = GoalModels(goal)
        self.misbehaved: set[str] = set()
        self.count = 0
        """How many answers misbehaved."""

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = self.competent(request)
        if len(reply.tool_calls) != 1 or not isinstance(reply.tool_calls[0][1], dict):
            return reply
        messages = (request.body or {}).get("messages", [])
        # once per conversation: its opening messages name it
        key = hashlib.sha256(json.dumps(messages[:2], sort_keys=True).encode()).hexdigest()
        if key in self.misbehaved:
            return reply
        name, arguments = reply.tool_calls[0]
        assert isinstance(arguments, dict)
        bad = self.policy((name, arguments))
        if bad is None:
            return reply
        self.misbehaved.add(key)
        self.count += 1
        return bad
