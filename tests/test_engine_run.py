"""End-to-end runs of the rules engine against the scripted model server."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from engine.agent.runner import resume_run, start_run
from engine.cli import cli
from engine.config import Settings, load_settings
from engine.errors import ConfigError
from engine.model.roles import ROLE_NAMES
from engine.runs.demo import DemoModels
from engine.runs.replay import replay
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from engine.tools import commands
from events import EventStore, MemoryEventStore, RunStarted, ToolExecuted, ToolRequested
from projections import project


def settings_for(server: ScriptedModelServer, **overrides: Any) -> Settings:
    return load_settings(
        env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m", **overrides}
    )


def run(script: Any, tmp_path: Path, **overrides: Any) -> tuple[EventStore, str, Path]:
    """``autonomy run`` through the CLI against a scripted server; the log it wrote."""
    workspace = tmp_path / "ws"
    db = tmp_path / "events.db"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()]
    with ScriptedModelServer(script, models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                "build calc",
                "--workspace",
                str(workspace),
                "--db",
                str(db),
                "--model-url",
                server.url,
                "--api",
                "ollama",
                "--model",
                "m",
                "--run-id",
                "r",
                *flags,
            ],
        )
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1), result.output
    return open_store(db), "r", workspace


def test_rules_mode_still_runs_but_warns_that_it_is_deprecated(tmp_path: Path) -> None:
    with (
        ScriptedModelServer(DemoModels(), models=["m"]) as server,
        pytest.warns(DeprecationWarning),
    ):
        log = start_run(
            MemoryEventStore(),
            goal="g",
            workspace=tmp_path,
            settings=settings_for(server, mode="rules"),
        )
    assert log.pipeline.status == "completed"


def tool_results(store: EventStore, run_id: str) -> list[ToolExecuted]:
    return [e.data for e in store.read(run_id) if isinstance(e.data, ToolExecuted)]


def test_a_run_plans_codes_passes_review_after_debugging_and_completes(tmp_path: Path) -> None:
    store, run_id, workspace = run(DemoModels(), tmp_path)
    state = project(store, run_id).pipeline
    assert state.status == "completed", state.reason
    assert {t.task_id: t.status for t in state.tasks.values()} == {
        "t1": "completed",
        "t2": "completed",
    }
    phases = [p.to_phase for p in state.phase_history]
    assert phases[0] == "planning" and phases[-1] == "completed"
    assert "debugging" in phases, "the first review rejected t1, so debugging must follow"
    assert phases.index("debugging") > phases.index("qa")
    assert '"""Return the sum of a and b."""' in (workspace / "calc.py").read_text()
    assert set(state.files) == {"calc.py", "test_calc.py"}
    pytest_runs = [r for r in tool_results(store, run_id) if "passed" in r.result]
    assert pytest_runs, "pytest must really have run in the workspace"
    assert store.verify(run_id).ok


def test_every_file_written_is_restorable_from_blobs(tmp_path: Path) -> None:
    store, run_id, workspace = run(DemoModels(), tmp_path)
    for path, file in project(store, run_id).pipeline.files.items():
        assert store.get(file.digest) == (workspace / path).read_bytes()


class PlansOneTask:
    """A model that plans one task (``title``, for ``target``), then answers each
    other request with ``work``."""

    title = "the task"
    target = "x.py"

    def __call__(self, request: ScriptedRequest) -> Reply:
        offered = {t["function"]["name"] for t in request.body.get("tools", [])}
        if "create_task_plan" in offered:
            return Reply.tool(
                "create_task_plan", tasks=[{"title": self.title, "target_file": self.target}]
            )
        return self.work(request, offered)

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        raise NotImplementedError


class NeverFinishes(PlansOneTask):
    """Plans one task, then codes forever without calling complete_task."""

    title = "never done"

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        return Reply.tool("list_directory", path=".")


def test_a_task_that_keeps_failing_is_retried_then_skipped_and_the_run_fails(
    tmp_path: Path,
) -> None:
    store, run_id, _ = run(NeverFinishes(), tmp_path, max_steps=40)
    state = project(store, run_id).pipeline
    task = state.tasks["t1"]
    assert task.status == "skipped"
    limits = Settings().limits
    assert task.attempts == limits.max_attempts_per_task
    assert all("max_turns_per_task" in error for error in task.errors)
    assert state.status == "failed"
    assert "skipped" in state.reason


def test_a_model_that_never_calls_a_tool_ends_the_run_with_a_reason(tmp_path: Path) -> None:
    script = lambda request: Reply.text("I think we should write some code.")  # noqa: E731
    store, run_id, _ = run(script, tmp_path)
    state = project(store, run_id).pipeline
    assert state.status == "failed"
    assert "no progress" in state.reason
    assert state.steps <= Settings().limits.no_progress_limit + 1


class Escaper(PlansOneTask):
    """Plans a task, then tries to leave the workspace three ways, then finishes."""

    title = "escape"
    target = "ok.py"

    def __init__(self, outside: Path) -> None:
        self.moves = [
            Reply.tool("read_file", path="../../etc/passwd"),
            Reply.tool("create_file", path=str(outside / "pwned.txt"), content="x"),
            Reply.tool("create_file", path="link/pwned.txt", content="x"),
            Reply.tool("modify_file", path="link/secret.txt", old_text="secret", new_text="stolen"),
            Reply.tool("create_file", path="ok.py", content="X = 1\n"),
            Reply.tool("complete_task", task_id="t1", summary="done"),
        ]

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        if "approve_code" in offered:
            return Reply.tool("approve_code", task_id="t1", summary="fine")
        done = sum(1 for m in request.body["messages"] if m["role"] == "tool")
        return self.moves[min(done, len(self.moves) - 1)]


def test_paths_outside_the_workspace_are_refused_recorded_and_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "link").symlink_to(outside, target_is_directory=True)
    store, run_id, _ = run(Escaper(outside), tmp_path)
    refused = [r for r in tool_results(store, run_id) if not r.ok]
    assert len(refused) == 4
    assert all("outside" in r.error or "workspace" in r.error for r in refused)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert project(store, run_id).pipeline.status == "completed"


def test_resume_refuses_a_finished_run_with_a_clear_error(tmp_path: Path) -> None:
    from engine.agent.runner import ResumeRefused

    store, run_id, _ = run(DemoModels(), tmp_path)
    with (
        ScriptedModelServer([], models=["m"]) as server,
        pytest.raises(ResumeRefused, match="completed"),
    ):
        resume_run(store, run_id, settings=settings_for(server))


class RunawayAnswer(PlansOneTask):
    """Plans one task, then answers its first coding turn with 40 distinct calls."""

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        messages = request.body.get("messages", [])
        if "create_file" in offered and not any(m.get("role") == "tool" for m in messages):
            return Reply.calls(
                *(("create_file", {"path": f"n{i}.py", "content": f"N = {i}\n"}) for i in range(40))
            )
        return Reply.text("done")


def test_only_the_first_calls_of_an_answer_run_the_rest_are_answered_with_why(
    tmp_path: Path,
) -> None:
    """A model in a loop may emit thousands of calls in one answer: the first
    ``max_calls_per_answer`` run; each further one is recorded, not run, and its
    result tells the model to ask again; the run goes on, and replays."""
    store, run_id, workspace = run(RunawayAnswer(), tmp_path, max_steps=4)
    executed = [
        e.data for e in store.read(run_id)
        if isinstance(e.data, ToolExecuted) and e.data.tool == "create_file"
    ]  # fmt: skip
    cap = Settings().limits.max_calls_per_answer
    assert cap == 16 and len(executed) >= 40
    executed = executed[:40]  # the first answer's (the task's next attempt answers alike)
    assert all(e.ok for e in executed[:cap])
    assert not any(e.ok for e in executed[cap:])
    assert "made 40 tool calls and only the first 16 run" in executed[cap].error
    assert sorted(p.name for p in workspace.glob("n*.py")) == sorted(f"n{i}.py" for i in range(cap))
    assert replay(store, run_id, tools="recorded").identical


def test_a_run_recorded_before_the_cap_on_calls_per_answer_replays_every_call(
    tmp_path: Path,
) -> None:
    """A log written before ``max_calls_per_answer`` existed ran every call of an
    answer: its replay runs them all too, rather than diverging at the 17th."""
    db = tmp_path / "events.db"
    with ScriptedModelServer(RunawayAnswer(), models=["m"]) as server, open_store(db) as store:
        settings = settings_for(server, max_steps=4)
        limits = msgspec.structs.replace(settings.limits, max_calls_per_answer=1000)
        settings = msgspec.structs.replace(settings, limits=limits)
        start_run(store, goal="g", workspace=tmp_path / "ws", settings=settings, run_id="r")
    # the run.started row as a log written before the key existed holds it
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER events_append_only_update")
        conn.execute(
            "UPDATE events SET data = json_remove(data, '$.config.limits.max_calls_per_answer')"
            " WHERE type = 'run.started'"
        )
    with open_store(db) as store:
        events = [e.data for e in store.read("r")]
        result = replay(store, "r", tools="recorded")
    started = events[0]
    assert (
        isinstance(started, RunStarted) and "max_calls_per_answer" not in started.config["limits"]
    )
    created = [e for e in events if isinstance(e, ToolExecuted) and e.tool == "create_file"]
    assert len(created) >= 40 and all(e.ok for e in created[:40])
    assert result.identical, result.report()


class RepeatsAFailingCall(PlansOneTask):
    """Plans one task, then asks for the same missing file for ever."""

    title = "read it"

    def __init__(self) -> None:
        self.seen: list[list[str]] = []  # each request's tool messages

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        messages = request.body.get("messages", [])
        self.seen.append([m["content"] for m in messages if m.get("role") == "tool"])
        return Reply.tool("read_file", path="missing.py")


def test_the_same_failing_call_is_corrected_then_ends_the_task_turn(tmp_path: Path) -> None:
    model = RepeatsAFailingCall()
    store, run_id, _ = run(model, tmp_path, max_steps=4, mode="rules")
    task = project(store, run_id).pipeline.tasks["t1"]
    assert task.errors[0].startswith("the model repeated the same failing call 3 times: read_file")
    reads = [
        e.data
        for e in store.read(run_id)
        if isinstance(e.data, ToolExecuted) and e.data.tool == "read_file"
    ]
    assert len(reads) >= 3 and not any(r.ok for r in reads)
    first, second = next(tools for tools in model.seen if len(tools) == 2)
    assert "You made this exact read_file call before" in second
    assert "You made this exact" not in first
    assert not any(len(tools) > 2 for tools in model.seen), "the third failure ends the turn"


class DeletesTheWorkspace(PlansOneTask):
    """Plans one task; its coder's first answer comes once the workspace is gone."""

    title = "write x"

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        if "create_file" in offered and self.workspace.exists():
            shutil.rmtree(self.workspace)
        return Reply.tool("create_file", path="x.py", content="X = 1\n")


def test_a_workspace_deleted_while_the_run_runs_stops_it_before_its_next_tool(
    tmp_path: Path,
) -> None:
    """Every tool failed, the model was told so, called its tasks done, and the run
    ended "completed" with no files. The run stops, resumable, saying why and how."""
    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    with ScriptedModelServer(DeletesTheWorkspace(workspace), models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", "build x", "--workspace", str(workspace), "--db", str(db), "--run-id", "r",
             "--model-url", server.url, "--api", "ollama", "--model", "m"],
        )  # fmt: skip
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert f"run r's workspace {workspace.resolve()} is gone (deleted or moved?)" in result.output
    assert "autonomy fork r --at " in result.output
    store, run_id = open_store(db), "r"
    events = [e.data for e in store.read(run_id)]
    assert not any(isinstance(e, ToolRequested) and e.tool == "create_file" for e in events)
    assert project(store, run_id).pipeline.status == "running", "resumable once it is back"


class RepeatsAFailingCommand(PlansOneTask):
    """Plans one task, then runs the same failing command for ever."""

    title = "compile it"

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        return Reply.tool("run_command", argv=["python", "-m", "py_compile", "missing.py"])


class Clock:
    """``time`` for ``engine.tools.commands``: each command takes a different time."""

    def __init__(self) -> None:
        self.now, self.calls = 0.0, 0

    def monotonic(self) -> float:
        self.calls += 1
        self.now += 0.7 * self.calls  # 0.7 s, then 2.1 s, then 3.5 s, ...
        return self.now


def test_a_command_failing_the_same_way_at_another_speed_is_the_same_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "exit code 1 after 1.4s" and "after 2.5s" were two failures: whether the
    third strike ended the task depended on the machine's speed, and a replay with
    live tools decided otherwise than the recorded run."""
    monkeypatch.setattr(commands, "time", Clock())
    store, run_id, _ = run(RepeatsAFailingCommand(), tmp_path, max_steps=4, mode="rules")
    errors = [
        e.data.error
        for e in store.read(run_id)
        if isinstance(e.data, ToolExecuted) and e.data.tool == "run_command"
    ]
    assert len(set(errors[:3])) == 3, errors  # three speeds
    task = project(store, run_id).pipeline.tasks["t1"]
    assert task.errors[0].startswith(
        "the model repeated the same failing call 3 times: run_command"
    ), task.errors


def test_a_model_server_that_keeps_failing_is_named_live_and_in_the_reason(
    tmp_path: Path,
) -> None:
    missing = lambda request: Reply.http_error(  # noqa: E731
        404, "model 'm' not found, try pulling it first"
    )
    with ScriptedModelServer(missing, models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", "build calc", "--workspace", str(tmp_path / "ws"),
             "--db", str(tmp_path / "events.db"), "--model-url", server.url, "--api", "ollama",
             "--model", "m", "--run-id", "r"],
        )  # fmt: skip
        url = server.url
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "model call failed: reasoning (m) at" in result.output
    assert f"at {url}" in result.output and "model 'm' not found" in result.output
    state = project(open_store(tmp_path / "events.db"), "r").pipeline
    assert state.status == "failed"
    assert state.reason.startswith(f"model server {url}")
    assert "not found, try pulling it first" in state.reason and "failed attempt(s)" in state.reason


class OneTaskNeverFinishes(DemoModels):
    """The demo, but the test task's coder never calls complete_task."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if task == "t2":
            return Reply.tool("list_directory", path=".")
        return super()._code(task, done, fixing)


def test_a_run_that_skipped_tasks_is_partial_not_completed_and_exits_2(tmp_path: Path) -> None:
    with ScriptedModelServer(OneTaskNeverFinishes(), models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", "build calc", "--workspace", str(tmp_path / "ws"),
             "--db", str(tmp_path / "events.db"), "--model-url", server.url, "--api", "ollama",
             "--model", "m", "--run-id", "r", "--max-steps", "60"],
        )  # fmt: skip
    state = project(open_store(tmp_path / "events.db"), "r").pipeline
    assert state.tasks["t2"].status == "skipped" and state.tasks["t1"].status == "completed"
    assert state.status == "partial", state.reason
    assert state.reason == "1 of 2 task(s) completed; 1 skipped"
    assert result.exit_code == 2, result.output
    # the step into documentation said "every task is done" of it
    assert "| document | " in result.output, result.output
    assert "every task is done" not in result.output
    assert "every task is settled: 1 completed, 1 skipped" in result.output


def test_certificates_are_loaded_only_for_https_model_servers() -> None:
    from engine.agent.runner import http_client

    plain = load_settings(env={}, overrides={"model_url": "http://127.0.0.1:1", "model": "m"})
    secure = load_settings(env={}, overrides={"model_url": "https://models.example", "model": "m"})
    with http_client(plain) as http:
        assert http._transport._pool._ssl_context.verify_mode.name == "CERT_NONE"  # type: ignore[attr-defined]
    with http_client(secure) as http:
        assert http._transport._pool._ssl_context.verify_mode.name == "CERT_REQUIRED"  # type: ignore[attr-defined]


def streaming(settings: Settings, stream: bool) -> Settings:
    """``settings`` with every role streaming (or not)."""
    replace = msgspec.structs.replace
    roles = settings.models
    return replace(
        settings,
        models=replace(
            roles,
            **{name: replace(roles.get(name), stream=stream) for name in ROLE_NAMES},
        ),
    )


def answers(store: EventStore, run_id: str) -> list[Any]:
    """What the log says the models answered, less where and how long it took (the
    requests hold tool results with timings)."""
    found = []
    for e in store.read(run_id):
        if e.type == "model.responded":
            data = msgspec.to_builtins(e.data)
            data.pop("endpoint", None), data.pop("duration_ms", None)
            found.append(data)
    return found


class OneFile(DemoModels):
    """The demo's well-behaved models on a goal of one file and no commands: quick."""

    def _plan(self) -> Reply:
        return Reply.tool(
            "create_task_plan", tasks=[{"title": "Write a.py", "target_file": "a.py"}]
        )

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if done == 0:
            return Reply.tool("create_file", path="a.py", content="A = 1\n")
        return Reply.tool("complete_task", task_id=task, summary="a.py written")

    def _review(self, task: str, done: int) -> Reply:
        return Reply.tool("approve_code", task_id=task, summary="fine")


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_run_completes_in_each_wire_format_and_streaming_changes_no_event(
    tmp_path: Path, api: str
) -> None:
    logs = {}
    for stream in (True, False):
        store = MemoryEventStore()
        with ScriptedModelServer(OneFile(), models=["m"]) as server:
            settings = streaming(settings_for(server, api=api), stream)
            workspace = tmp_path / str(stream)
            log = start_run(store, goal="g", workspace=workspace, settings=settings, run_id="r")
        assert log.pipeline.status == "completed", log.pipeline.reason
        assert {bool(r.body.get("stream")) for r in server.chat_requests} == {stream}
        logs[stream] = answers(store, log.run_id)
    assert logs[True] == logs[False]


@pytest.mark.parametrize("goal", ["", "   ", "\n\t\n"])
def test_a_run_with_an_empty_goal_is_refused_before_anything_is_written(
    tmp_path: Path, goal: str
) -> None:
    store = MemoryEventStore()
    with pytest.raises(ConfigError, match="the goal is empty"):
        start_run(store, goal=goal, workspace=tmp_path / "ws", settings=Settings(preflight=False))
    assert store.runs() == [] and not (tmp_path / "ws").exists()


def test_a_runs_summary_shows_a_long_task_title_cut() -> None:
    """A model's task title has no length cap: one of 3 MB was printed whole at the
    end of the run (`state` and `audit tasks` show it all)."""
    from engine.agent.runner import TITLE_SHOWN, summary
    from events import TaskAdded

    store = MemoryEventStore()
    title = "build " + "x" * 100_000
    store.append(
        "r", [RunStarted(goal="g", workspace="/w"), TaskAdded(task_id="t1", title=title)], 0
    )

    (line,) = [line for line in summary(project(store, "r")) if "task t1" in line]

    assert line == f"  task t1 [new] {title[: TITLE_SHOWN - 1]}… (attempts: 0)"
