"""``autonomy demo``: a complete run against the built-in scripted model server.

No model server is needed: a ``ScriptedModelServer`` on loopback plays the models,
speaking the real Ollama wire format. The goal is small and real: a module with a
function and its pytest tests. The scripted reviewer rejects the first version
once, so the run shows every phase: planning, coding, qa, debugging, qa again,
documentation, completed. The tools really run: files are written in a temporary
workspace and pytest runs on them.

The run is orchestrated: whenever more than one move is legal the scripted arbiter
is asked, and it takes the move its prompt suggests (a well-behaved arbiter).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import load_settings
from engine.keys import load_key
from engine.runner import http_client, start_run, summary
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from projections.fold import project

GOAL = """Write a Python module calc.py with a function add(a, b) that returns the sum of
two numbers, and pytest tests for it in test_calc.py."""

CALC_V1 = "def add(a, b):\n    return a + b\n"
CALC_DOCSTRING = '    """Return the sum of a and b."""\n'
TESTS = (
    "from calc import add\n\n\n"
    "def test_add_integers():\n    assert add(2, 3) == 5\n\n\n"
    "def test_add_floats():\n    assert add(0.5, 0.25) == 0.75\n"
)
PYTEST = ["python", "-m", "pytest", "-q"]
DEMO_MODEL = "qwen2.5-coder:7b"
"""The model the scripted server plays (and lists, so the preflight finds it)."""


class DemoModels:
    """The scripted models' behaviour: a function of each request, as a model is.

    It reads which tools were offered (planning, coding, review) and how many tool
    results the conversation already has, and answers the next move.
    """

    def __init__(self) -> None:
        self.reviews: dict[str, int] = {}

    def __call__(self, request: ScriptedRequest) -> Reply:
        body = request.body or {}
        offered = {t["function"]["name"] for t in body.get("tools", [])}
        messages = body.get("messages", [])
        done = sum(1 for m in messages if m.get("role") == "tool")
        opening = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        found = re.search(r"Task (t\d+)", opening)
        task = found.group(1) if found else ""
        if "consult_coding_specialist" in offered:
            return self.arbiter(messages)
        if "create_task_plan" in offered:
            return self._plan()
        if "approve_code" in offered:
            return self._review(task, done)
        return self._code(task, done, "Last problem reported" in opening)

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        """The arbiter's answer: the suggested move from its prompt."""
        prompt = messages[-1].get("content", "") if messages else ""
        found = re.search(r"^Suggested next move: (\w+) (\{.*\})$", prompt, re.MULTILINE)
        if found is None:
            return Reply.text("I cannot tell what to do next.")
        return Reply.tool(found.group(1), **json.loads(found.group(2)))

    def _plan(self) -> Reply:
        return Reply.tool(
            "create_task_plan",
            tasks=[
                {"title": "Write calc.py with add(a, b)", "target_file": "calc.py", "priority": 1},
                {
                    "title": "Write pytest tests for add",
                    "target_file": "test_calc.py",
                    "priority": 2,
                    "dependencies": ["Write calc.py with add(a, b)"],
                },
            ],
        )

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if fixing:
            steps = [
                Reply.tool(
                    "modify_file",
                    path="calc.py",
                    old_text="def add(a, b):\n",
                    new_text="def add(a, b):\n" + CALC_DOCSTRING,
                ),
                Reply.tool("complete_task", task_id=task, summary="added the docstring"),
            ]
        elif task == "t1":
            steps = [
                Reply.tool("create_file", path="calc.py", content=CALC_V1),
                Reply.tool("run_command", argv=["python", "-m", "py_compile", "calc.py"]),
                Reply.tool("complete_task", task_id=task, summary="calc.add written"),
            ]
        else:
            steps = [
                Reply.tool("create_file", path="test_calc.py", content=TESTS),
                Reply.tool("run_command", argv=PYTEST),
                Reply.tool("complete_task", task_id=task, summary="tests written and passing"),
            ]
        return steps[min(done, len(steps) - 1)]

    def _review(self, task: str, done: int) -> Reply:
        if done == 0:
            target = "calc.py" if task == "t1" else "test_calc.py"
            return Reply.tool("read_file", path=target)
        if done == 1 and task == "t2":
            return Reply.tool("run_command", argv=PYTEST)
        self.reviews[task] = self.reviews.get(task, 0) + 1
        if task == "t1" and self.reviews[task] == 1:
            return Reply.tool(
                "report_issue",
                task_id=task,
                description="add() has no docstring; public functions must say what they do",
            )
        return Reply.tool("approve_code", task_id=task, summary="correct and tested")


def run_demo(workdir: Path | None = None, *, echo: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit status (0 when the run completed)."""
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="autonomy-demo-"))
    base.mkdir(parents=True, exist_ok=True)  # the demo's own directory: it may make it
    workspace = base / "workspace"
    db = base / "events.db"
    with ScriptedModelServer(DemoModels(), models=[DEMO_MODEL]) as server:
        settings = load_settings(
            env={},
            overrides={"model_url": server.url, "api": "ollama", "model": DEMO_MODEL},
        )
        echo(f"scripted model server on {server.url} (Ollama wire format)")
        with open_store(db, key=load_key(create=True)) as store, http_client(settings) as http:
            log = start_run(
                store, goal=GOAL, workspace=workspace, settings=settings, http=http, progress=echo
            )
            state = project(store, log.run_id)
    echo("")
    for line in summary(state):
        echo(line)
    echo(f"workspace: {workspace}")
    echo(f"database:  {db}  (try: autonomy events {log.run_id} --db {db})")
    echo(
        f"browse it: autonomy serve --db {db}  (then open http://127.0.0.1:8765/runs/{log.run_id})"
    )
    return 0 if state.pipeline.status == "completed" else 1
