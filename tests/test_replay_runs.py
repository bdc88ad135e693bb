"""Every run replays: answered, killed and resumed, rewound (resumed or not, several
times), forked, waiting for input, stopped by a limit — and, with hypothesis, any
mix of those the engine can produce.

Runs are made in memory against the scripted models (file tools only, so that
replays with live tools stay fast). A kill is simulated by a store that refuses
the N-th append with a ``BaseException``, as a SIGKILL would stop the process:
what was written stays, what was not is lost.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import refusing_url

from engine.agent.runlog import RunLog
from engine.agent.runner import STOPPED_BY_USER, ResumeRefused, resume_run, start_run
from engine.config import Settings, load_settings
from engine.model.roles import Endpoint
from engine.runs.demo import GOAL, DemoModels
from engine.runs.replay import replay
from engine.runs.replay_sources import RECOVERY_ERRORS, STOP_TYPES, is_stop
from engine.runs.workspace import HistoryError, fork, rewind
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer
from events import MemoryEventStore
from events.errors import ConcurrencyError
from events.schema import (
    Event,
    ModelRequested,
    RunFinished,
    RunResumed,
    RunRewound,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UserAnswered,
)
from events.store import RecordedEvent
from events.strategies import any_event
from projections import RunState, project

# the module's logs are recorded once and forked by its counterfactual tests, under one
# key (a fork checks its parent's chain, which another key cannot: "wrong key")
pytestmark = pytest.mark.usefixtures("session_key")


class Killed(BaseException):
    """The process died."""


class KillableStore(MemoryEventStore):
    """A store whose ``kill_after``-th next append kills the writer."""

    def __init__(self) -> None:
        super().__init__()
        self.kill_after: int | None = None

    def append(
        self,
        run_id: str,
        events: Sequence[Event],
        expected_version: int,
        *,
        causation: int | None = None,
    ) -> list[RecordedEvent]:
        if self.kill_after is not None:
            if self.kill_after == 0:
                self.kill_after = None
                raise Killed()
            self.kill_after -= 1
        return super().append(run_id, events, expected_version, causation=causation)


class Quick(DemoModels):
    """The demo's plan and reviews, with file tools only (no commands to wait for)."""

    content = "# {task}\nX = {done}\n"
    """What the coder writes."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        target = "calc.py" if task == "t1" else "test_calc.py"
        steps = [
            Reply.tool(
                "create_file", path=target, content=self.content.format(task=task, done=done)
            ),
            Reply.tool("complete_task", task_id=task, summary="written"),
        ]
        return steps[min(done, len(steps) - 1)]

    def _review(self, task: str, done: int) -> Reply:
        if done == 0:
            return Reply.tool("read_file", path="calc.py" if task == "t1" else "test_calc.py")
        return Reply.tool("approve_code", task_id=task, summary="fine")


class Asking(Quick):
    """Asks the user once, then follows the suggestions."""

    def arbiter(self, messages: list[dict[str, Any]]) -> Reply:
        if "You asked the user" not in messages[-1]["content"]:
            return Reply.tool("request_user_input", question="Which Python version?")
        return super().arbiter(messages)


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(Asking(), models=["m"]) as running:
        yield running


def config(server: ScriptedModelServer, **overrides: Any) -> Settings:
    return load_settings(
        env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m", **overrides}
    )


def start(
    store: KillableStore, workspace: Path, server: ScriptedModelServer, **overrides: Any
) -> str:
    with httpx.Client() as http, contextlib.suppress(Killed):
        start_run(
            store,
            goal=GOAL,
            workspace=workspace,
            settings=config(server, **overrides),
            http=http,
            run_id="r",
        )
    store.kill_after = None  # a kill not reached by the time the engine stopped
    return "r"


def resume(
    store: KillableStore, run_id: str, server: ScriptedModelServer, **overrides: Any
) -> None:
    try:
        with httpx.Client() as http, contextlib.suppress(Killed):
            resume_run(store, run_id, settings=config(server, **overrides), http=http)
    finally:
        store.kill_after = None  # a kill not reached by the time the engine stopped


def answer(store: KillableStore, run_id: str, text: str = "Python 3.12") -> None:
    log = RunLog(store, run_id)
    assert log.pipeline.status == "waiting_for_input"
    log.append(UserAnswered(answer=text), causation=log.version)


def assert_replays(store: KillableStore, run_id: str, **kwargs: Any) -> None:
    result = replay(store, run_id, **kwargs)
    assert result.identical, result.report()


def test_a_log_holding_settings_no_run_would_start_with_still_replays(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    """Settings are checked where a run starts (a password in a server's URL is
    refused there); a log written before that check, or elsewhere, replays all the
    same: its recorded settings are taken as they are."""
    settings = config(server)
    coding = msgspec.structs.replace(
        settings.models.coding,
        fallbacks=(Endpoint(base_url="http://alice:s3cret@127.0.0.1:1", model="m"),),
    )
    settings = msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, coding=coding)
    )
    store = KillableStore()
    with httpx.Client() as http:
        start_run(
            store, goal=GOAL, workspace=tmp_path / "ws", settings=settings, http=http, run_id="r"
        )
    assert "s3cret" in json.dumps(project(store, "r").pipeline.config)
    assert_replays(store, "r")


def test_a_run_waiting_for_input_replays(tmp_path: Path, server: ScriptedModelServer) -> None:
    store = KillableStore()
    run_id = start(store, tmp_path / "ws", server)
    assert project(store, run_id).pipeline.status == "waiting_for_input"
    assert_replays(store, run_id)


def test_an_answered_and_resumed_run_replays(tmp_path: Path, server: ScriptedModelServer) -> None:
    store = KillableStore()
    run_id = start(store, tmp_path / "ws", server)
    answer(store, run_id)
    resume(store, run_id, server)
    assert project(store, run_id).pipeline.status == "completed"
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def test_an_answer_is_an_input_a_different_one_is_replayed_as_given(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    store = KillableStore()
    run_id = start(store, tmp_path / "ws", server)
    answer(store, run_id, "Python 3.11")
    resume(store, run_id, server)
    result = replay(store, run_id)
    assert result.identical, result.report()
    assert any(
        isinstance(e.data, UserAnswered) and e.data.answer == "Python 3.11"
        for e in store.read(run_id)
    )


def answered_run(tmp_path: Path, server: ScriptedModelServer) -> tuple[KillableStore, str]:
    store = KillableStore()
    run_id = start(store, tmp_path / "ws", server)
    answer(store, run_id)
    return store, run_id


def killed_when(
    tmp_path: Path, server: ScriptedModelServer, left: Callable[[RunState], bool]
) -> tuple[KillableStore, str]:
    """An answered run resumed and killed at the first append that leaves its
    state as ``left`` says (a tool pending, a model call open)."""
    for kill_after in range(1, 40):
        store, run_id = answered_run(tmp_path / str(kill_after), server)
        store.kill_after = kill_after
        resume(store, run_id, server)
        if left(project(store, run_id)):
            return store, run_id
    raise AssertionError("no kill left the run that way")


@pytest.mark.parametrize("kill_after", [3, 4, 6, 9, 14])
def test_a_run_killed_at_an_append_and_resumed_replays(
    tmp_path: Path, server: ScriptedModelServer, kill_after: int
) -> None:
    store, run_id = answered_run(tmp_path, server)
    store.kill_after = kill_after
    resume(store, run_id, server)
    assert project(store, run_id).pipeline.status == "running", "the kill stopped it"
    assert_replays(store, run_id)  # killed, never resumed
    resume(store, run_id, server)
    assert project(store, run_id).pipeline.status == "completed"
    assert any(isinstance(e.data, RunResumed) for e in store.read(run_id))
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def test_a_tool_settled_by_recovery_is_taken_from_the_log(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    store, run_id = killed_when(tmp_path, server, lambda state: bool(state.pipeline.pending_tools))
    pending = set(project(store, run_id).pipeline.pending_tools)
    resume(store, run_id, server)
    settled = [
        e.data
        for e in store.read(run_id)
        if isinstance(e.data, ToolExecuted) and e.data.call_id in pending
    ]
    assert settled, "recovery settled the pending tool"
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def test_rewound_runs_replay_resumed_or_not_and_rewound_twice(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    store, run_id = answered_run(tmp_path, server)
    resume(store, run_id, server)
    last = store.last_version(run_id)
    rewind(store, run_id, last // 2)
    assert_replays(store, run_id)  # rewound, not resumed
    rewind(store, run_id, last // 3)  # twice in a row
    assert_replays(store, run_id)
    resume(store, run_id, server)
    assert project(store, run_id).pipeline.status == "completed"
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def test_a_resumed_fork_replays_from_its_parents_prefix(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    store, run_id = answered_run(tmp_path, server)
    resume(store, run_id, server)
    at = store.last_version(run_id) // 2
    fork(store, run_id, at, tmp_path / "fork", new_run_id="f")
    resume(store, "f", server)
    assert project(store, "f").pipeline.status == "completed"
    result = replay(store, "f")
    assert result.identical, result.report()
    assert result.compared == at + store.last_version("f")


def test_a_run_stopped_by_its_step_limit_replays(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    store = KillableStore()
    run_id = start(store, tmp_path / "ws", server, max_steps=4)
    answer(store, run_id)
    resume(store, run_id, server, max_steps=4)
    assert project(store, run_id).pipeline.status not in ("running", "completed")
    assert_replays(store, run_id)


class Absolute(Quick):
    """Names its files by absolute paths, plans a task through a link in the
    workspace: the tools resolve both in the replay's scratch copy."""

    workspace = Path()

    def _plan(self) -> Reply:
        return Reply.tool(
            "create_task_plan",
            tasks=[
                {"title": "calc", "target_file": str(self.workspace / "calc.py")},
                {"title": "tests", "target_file": "linked/test_calc.py", "dependencies": ["calc"]},
            ],
        )

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        target = str(self.workspace / ("calc.py" if task == "t1" else "test_calc.py"))
        if done == 0:
            return Reply.tool("create_file", path=target, content=f"# {task}\n")
        return Reply.tool("complete_task", task_id=task, summary="written")


def test_absolute_paths_and_a_plan_through_a_link_replay_in_the_scratch_copy(
    tmp_path: Path,
) -> None:
    """The recorded workspace's absolute paths name the scratch copy's files, and a
    plan's target is its text (the engine's own tools read no workspace): both
    used to diverge, a path under the recorded workspace being outside the copy."""
    workspace = tmp_path / "ws"
    (workspace / "real").mkdir(parents=True)
    (workspace / "linked").symlink_to("real", target_is_directory=True)
    models = Absolute()
    models.workspace = workspace
    store = KillableStore()
    with ScriptedModelServer(models, models=["m"]) as running:
        start(store, workspace, running)
    state = project(store, "r")
    assert state.pipeline.status == "completed"
    assert [t.target_file for t in state.pipeline.tasks.values()] == [
        "calc.py",
        "linked/test_calc.py",
    ]
    assert_replays(store, "r")
    assert_replays(store, "r", tools="recorded")


class RecoveryWords(Quick):
    """Reads a file whose name makes the error recovery writes, and one holding the
    words recovery writes for a file tool it settled."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        steps = [
            Reply.tool("read_file", path="not applied: x.py"),
            Reply.tool("read_file", path="words.txt"),
        ]
        return steps[done] if done < len(steps) else super()._code(task, done - 2, fixing)


def test_a_run_whose_tools_answer_in_recoverys_words_replays(tmp_path: Path) -> None:
    """A replay knew what recovery settled after a crash by its words, which a model
    can make: a read of "not applied: x.py" failed with "not applied: x.py does not
    exist", and the replay stopped its engine there as if the run had been killed,
    then diverged. Only a log older than ``run.resumed`` is read by its words now."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "words.txt").write_text(
        "completed before a crash (recovered by comparing the workspace)"
    )
    store = KillableStore()
    with ScriptedModelServer(RecoveryWords(), models=["m"]) as running:
        start(store, workspace, running)
    errors = [e.data.error for e in store.read("r") if isinstance(e.data, ToolExecuted)]
    assert any(error.startswith("not applied: x.py does not exist") for error in errors)
    assert project(store, "r").pipeline.status == "completed"
    assert_replays(store, "r")
    assert_replays(store, "r", tools="recorded")


class Repeats(Quick):
    """Its coder asks for the same missing file for ever (the third strike ends the task)."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        return Reply.tool("read_file", path="missing.py")


def test_where_the_recorded_run_did_something_else_than_ask_the_report_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replayed with a fourth strike allowed, the replay asks the coder again where
    the recording ended the task: the report compared that request with the
    recording's next one, of another conversation, at another version."""
    from engine.agent import conversation

    store = KillableStore()
    with ScriptedModelServer(Repeats(), models=["m"]) as running:
        start(store, tmp_path / "ws", running, max_steps=3)
    assert_replays(store, "r", tools="recorded")
    monkeypatch.setattr(conversation, "REPEAT_LIMIT", 4)
    report = replay(store, "r", tools="recorded").report()
    first = report.splitlines()[0]
    assert first.endswith(": expected specialist.consulted, got model.requested"), report


class LongOutput(Quick):
    """Writes a test whose output is longer than the output cap, and runs it."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if task != "t1":
            return super()._code(task, done, fixing)
        steps = [
            Reply.tool("create_file", path="tox.ini", content="[pytest]\n"),
            Reply.tool(
                "create_file",
                path="test_big.py",
                content="def test_big():\n    print('x' * 30000)\n    assert 0\n",
            ),
            Reply.tool("run_command", argv=["python", "-m", "pytest"]),
            Reply.tool("complete_task", task_id=task, summary="ran"),
        ]
        return steps[min(done, len(steps) - 1)]


def test_a_cut_output_that_names_the_workspace_replays_with_live_tools(tmp_path: Path) -> None:
    """pytest's "rootdir:" names the workspace; past the output cap the head and tail
    are kept, and a scratch path of another length cut them elsewhere: the live
    replay of a run nothing happened to diverged ("bytes of output omitted")."""
    store = KillableStore()
    with ScriptedModelServer(LongOutput(), models=["m"]) as running:
        start(store, tmp_path / "ws", running)
    results = [
        store.get(e.data.result_ref).decode() if e.data.result_ref else e.data.result
        for e in store.read("r")
        if isinstance(e.data, ToolExecuted)
    ]
    assert any("output omitted" in r and "rootdir:" in r for r in results)
    assert_replays(store, "r")


class RunsPytest(Quick):
    """Writes a test and runs pytest on it verbosely: the header names the root
    directory and the configuration file pytest found."""

    def _code(self, task: str, done: int, fixing: bool) -> Reply:
        if task != "t1":
            return super()._code(task, done, fixing)
        steps = [
            Reply.tool("create_file", path="test_ok.py", content="def test_ok():\n    pass\n"),
            Reply.tool("run_command", argv=["python", "-m", "pytest", "-v", "--co"]),
            Reply.tool("complete_task", task_id=task, summary="ran"),
        ]
        return steps[min(done, len(steps) - 1)]


def results_of(store: KillableStore, run_id: str = "r") -> list[str]:
    return [
        store.get(e.data.result_ref).decode() if e.data.result_ref else e.data.result
        for e in store.read(run_id)
        if isinstance(e.data, ToolExecuted)
    ]


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory outside /tmp, which a confined command sees as it is (its /tmp is
    a fresh one)."""
    made = Path(tempfile.mkdtemp(prefix="autonomy-test-", dir="/var/tmp"))
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


def test_a_project_configured_above_the_workspace_replays_with_live_tools(
    outside_tmp: Path,
) -> None:
    """A workspace in a larger project (its pytest configuration one directory up):
    a live replay ran the commands in a scratch copy under /tmp, where pytest found
    no configuration and named another root, and diverged. The copy is now where
    the recorded workspace was, for the commands."""
    (outside_tmp / "tox.ini").write_text("[pytest]\n")
    store = KillableStore()
    with ScriptedModelServer(RunsPytest(), models=["m"]) as running:
        start(store, outside_tmp / "ws", running)
    ran = [r for r in results_of(store) if "rootdir:" in r]
    assert ran and f"rootdir: {outside_tmp}\nconfigfile: tox.ini" in ran[0], ran
    assert_replays(store, "r")


def test_a_workspace_path_shorter_than_any_scratch_directory_replays_with_live_tools() -> None:
    """A recorded workspace with a path shorter than the replay's scratch directory
    ("/tmp/autonomy-replay-XXXXXXXX") could not be matched in length: an output past
    the cap that names it was cut elsewhere, and the live replay diverged."""
    short = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    try:
        store = KillableStore()
        with ScriptedModelServer(LongOutput(), models=["m"]) as running:
            start(store, short / "w", running)
        assert any("output omitted" in r and "rootdir:" in r for r in results_of(store))
        assert_replays(store, "r")
    finally:
        shutil.rmtree(short, ignore_errors=True)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_any_run_the_engine_can_produce_replays_identically(
    tmp_path_factory: pytest.TempPathFactory, server: ScriptedModelServer, data: st.DataObject
) -> None:
    """Kills at random appends, answers, rewinds to random versions, resumes."""
    store = KillableStore()
    workspace = tmp_path_factory.mktemp("any") / "ws"
    kills = st.one_of(st.none(), st.integers(0, 30))
    # the first append writes run.started: a kill before it leaves no run at all
    store.kill_after = data.draw(st.one_of(st.none(), st.integers(1, 30)), label="first kill")
    steps = data.draw(st.integers(3, 30), label="max_steps")
    run_id = start(store, workspace, server, max_steps=steps)
    for _ in range(data.draw(st.integers(0, 4), label="rounds")):
        status = project(store, run_id).pipeline.status
        if status == "waiting_for_input":
            answer(store, run_id)
        elif data.draw(st.booleans(), label="rewind"):
            to = data.draw(st.integers(1, store.last_version(run_id)), label="to")
            # refused inside the step that ended the run (its end is one append)
            with contextlib.suppress(HistoryError):
                rewind(store, run_id, to)
        store.kill_after = data.draw(kills, label="kill")
        try:
            resume(store, run_id, server, max_steps=steps)
        except (ResumeRefused, ConcurrencyError):
            store.kill_after = None
    assert_replays(store, run_id)


# -- counterfactual replay and diff ------------------------------------------------------


class Terse(Quick):
    """Writes other file contents than ``Quick``: a different model."""

    content = "# {task}, tersely\n"


def cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from engine.cli import cli as autonomy

    result = CliRunner().invoke(autonomy, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def quick_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete orchestrated run ``q`` of the ``Quick`` models, in a file log."""
    base = tmp_path_factory.mktemp("live")
    db = base / "events.db"
    with ScriptedModelServer(Quick(), models=["m"]) as running:
        code, out = cli(
            *("run", GOAL, "--workspace", str(base / "ws"), "--db", str(db)),
            *("--model-url", running.url, "--api", "ollama", "--model", "m", "--run-id", "q"),
        )
    assert code == 0, out
    return db


def change_prompt(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, action: str, text: str
) -> None:
    """Change one system prompt for this test (built prompts are memoised)."""
    from engine.agent import prompts

    monkeypatch.setitem(prompts.SYSTEM, action, text)
    prompts.build_prompt.cache_clear()
    request.addfinalizer(prompts.build_prompt.cache_clear)


def copy_of(db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.db"
    copy.write_bytes(db.read_bytes())
    return copy


def first_write(db: Path, run_id: str) -> int:

    with open_store(db) as store:
        return next(
            e.version
            for e in store.read(run_id)
            if isinstance(e.data, ToolExecuted) and e.data.files_changed
        )


def step_before(db: Path, run_id: str, version: int) -> int:
    """The last version before the step holding ``version``."""
    from events.schema import ArbiterDecided

    with open_store(db) as store:
        decided = [
            e.version
            for e in store.read(run_id, upto=version)
            if isinstance(e.data, ArbiterDecided)
        ]
    return decided[-1] - 1


def test_live_from_a_version_forks_the_run_and_a_live_model_continues_it(
    quick_db: Path, tmp_path: Path
) -> None:
    db = copy_of(quick_db, tmp_path)
    at = step_before(db, "q", first_write(db, "q"))  # the step that writes the first file
    with ScriptedModelServer(Terse(), models=["m"]) as other:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--live-from", str(at), "--as", "terse"),
            *("--workspace", str(tmp_path / "terse"), "--model-url", other.url),
        )
        asked = len(other.chat_requests)
    assert code == 0, out
    assert f"replayed: identical ({at} events)" in out
    assert "live branch terse: completed" in out and "autonomy diff q terse" in out
    assert asked > 0, "the live branch asked the live model"
    assert (tmp_path / "terse" / "calc.py").read_text() == "# t1, tersely\n"

    code, out = cli("diff", "q", "terse", "--db", str(db))

    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("first difference, after ")
    assert lines[1].startswith('  q: tool create_file {"content": "# t1\\nX = 0')
    assert lines[2].startswith('  terse: tool create_file {"content": "# t1, tersely')
    code, out = cli("diff", "q", "terse", "--db", str(db), "--json")
    document = json.loads(out)
    assert document["first_divergent_step"]["q"]["kind"] == "tool"
    assert set(document["phases"]["coding"]) == {"q", "terse"}


def test_live_from_a_model_request_mid_step_goes_live_as_a_resume_would(
    quick_db: Path, tmp_path: Path
) -> None:
    """Forked right after a model request: the call left open counts as interrupted,
    and the live engine decides its next step afresh."""
    from events.schema import ModelRequested, RunResumed

    db = copy_of(quick_db, tmp_path)
    with open_store(db) as store:
        at, call_id = next(
            (e.version, e.data.call_id)
            for e in store.read("q", upto=first_write(db, "q"))
            if isinstance(e.data, ModelRequested) and e.data.role == "coding"
        )
    with ScriptedModelServer(Terse(), models=["m"]) as other:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--live-from", str(at), "--as", "mid"),
            *("--workspace", str(tmp_path / "mid"), "--model-url", other.url),
        )
    assert code == 0, out
    assert "live branch mid: completed" in out
    with open_store(db) as store:
        resumed = next(e.data for e in store.read("mid") if e.type == "run.resumed")
        usage = project(store, "mid").orchestration.usage_by_role["coding"]
    assert isinstance(resumed, RunResumed) and resumed.open_calls == (call_id,)
    assert usage.interrupted == 1
    assert (tmp_path / "mid" / "calc.py").read_text() == "# t1, tersely\n"


def test_continue_live_goes_live_at_the_step_a_changed_prompt_changes(
    quick_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    from engine.agent import prompts

    db = copy_of(quick_db, tmp_path)
    change_prompt(monkeypatch, request, "qa", prompts.SYSTEM["qa"] + " Be brief.")
    with ScriptedModelServer(Quick(), models=["m"]) as running:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--continue-live", "--as", "brief"),
            *("--workspace", str(tmp_path / "brief"), "--model-url", running.url),
        )
        prompts_seen = [
            m["content"]
            for r in running.chat_requests
            for m in r.body.get("messages", [])
            if m.get("role") == "system"
        ]
    assert code == 0, out
    assert "replayed: diverged at version" in out and "message 1 (system) changed" in out
    assert "live branch brief: completed" in out
    assert any(p.endswith("Be brief.") for p in prompts_seen), "the new prompt went live"

    code, out = cli("diff", "q", "brief", "--db", str(db))
    assert code == 0 and "are the same in all" in out, out


def test_continue_live_at_a_changed_arbiter_request_forks_just_before_it(
    quick_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arbiter's request comes before its step's decision: a divergence there
    forked before the previous step's decision, and the branch drew the plan again
    live although everything up to the request had replayed identically."""
    import re

    from engine.agent import arbiter

    db = copy_of(quick_db, tmp_path)
    monkeypatch.setattr(arbiter, "SYSTEM", arbiter.SYSTEM + " Be careful.")
    with ScriptedModelServer(Quick(), models=["m"]) as running:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--continue-live", "--as", "careful"),
            *("--workspace", str(tmp_path / "careful"), "--model-url", running.url),
        )
    assert code == 0, out
    diverged = re.search(
        r"diverged at version (\d+): model request \d+ \(conversation arbiter", out
    )
    forked = re.search(r"forked at version (\d+)", out)
    assert diverged and forked, out
    assert int(forked.group(1)) == int(diverged.group(1)) - 1, out


def test_live_from_a_version_the_code_does_not_reach_is_refused(
    quick_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    db = copy_of(quick_db, tmp_path)
    change_prompt(monkeypatch, request, "code", "Write code.")
    last = first_write(db, "q") + 40
    code, out = cli(
        *("replay", "q", "--db", str(db), "--live-from", str(last), "--as", "x"),
        *("--model-url", "http://127.0.0.1:9"),
    )
    assert code == 1 and out.startswith("Error: ") and "--continue-live" in out
    code, out = cli("runs", "--db", str(db))
    assert " x " not in out, "nothing was forked"


def test_a_counterfactual_asks_only_a_server_named_here(
    quick_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --model-url the live branch asked the servers the log names: a log
    someone made named theirs, and the branch's prompts carry the workspace's files.
    A server is named here (--model-url, a --config, AUTONOMY_MODEL_URL), or nothing
    is done."""
    db = copy_of(quick_db, tmp_path)
    monkeypatch.delenv("AUTONOMY_MODEL_URL", raising=False)
    at = step_before(db, "q", first_write(db, "q"))
    code, out = cli("replay", "q", "--db", str(db), "--live-from", str(at), "--as", "x")
    assert code == 1, out
    assert "a counterfactual replay asks a live model: name its server (--model-url" in out
    code, out = cli("runs", "--db", str(db))
    assert " x " not in out, "nothing was forked"


def test_going_live_where_the_branch_could_not_go_on_forks_nothing(
    quick_db: Path, tmp_path: Path
) -> None:
    """The fork was made first: a model server that does not answer, or a fork point
    where the run had ended, left a branch in the log that the same command then
    refused as taken ("there is already a run")."""
    db = copy_of(quick_db, tmp_path)
    at = step_before(db, "q", first_write(db, "q"))
    with open_store(db) as store:
        last = store.last_version("q")
    for version, url, said in (
        (at, refusing_url(), "preflight"),
        (last, "http://127.0.0.1:9", "is completed"),
    ):
        code, out = cli(
            *("replay", "q", "--db", str(db), "--live-from", str(version), "--as", "branch"),
            *("--workspace", str(tmp_path / f"branch-{version}"), "--model-url", url),
        )
        assert code == 1 and out.startswith("Error: ") and said in out, out
        assert " branch " not in cli("runs", "--db", str(db))[1], "nothing was forked"
        assert not (tmp_path / f"branch-{version}").exists()


def test_a_live_branch_stopped_by_ctrl_c_says_how_to_continue_it(
    quick_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the live part of a counterfactual replay printed a traceback (the
    branch itself was recorded as stopped): it is said as for resume, exit 130."""
    from engine.model.recording import RecordingModel

    db = copy_of(quick_db, tmp_path)
    at = step_before(db, "q", first_write(db, "q"))

    real = RecordingModel.chat

    def interrupted(self: RecordingModel, *args: Any, **kwargs: Any) -> Any:
        if self.runlog.run_id == "cut":  # the live branch's first call, not the replay's
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecordingModel, "chat", interrupted)
    with ScriptedModelServer(Terse(), models=["m"]) as other:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--live-from", str(at), "--as", "cut"),
            *("--workspace", str(tmp_path / "cut"), "--model-url", other.url),
        )
    assert code == 130, out
    assert "run cut was stopped: interrupted by the user (Ctrl-C); the log says so." in out
    assert f"continue it with: autonomy resume cut --db {db}" in out
    with open_store(db) as store:
        assert project(store, "cut").pipeline.status == "stopped"


def test_a_live_branch_that_fails_exits_as_a_failed_run_does(
    quick_db: Path, tmp_path: Path
) -> None:
    """The command exited 0 whatever became of the branch: scripts could not tell."""
    db = copy_of(quick_db, tmp_path)
    at = step_before(db, "q", first_write(db, "q"))
    with ScriptedModelServer(Terse(), models=["m"]) as other:
        code, out = cli(
            *("replay", "q", "--db", str(db), "--live-from", str(at), "--as", "short"),
            *("--workspace", str(tmp_path / "short"), "--model-url", other.url),
            *("--max-steps", str(at // 10 + 1)),
        )
    assert "live branch short: failed" in out, out
    assert code == 1, out


def test_going_live_at_a_question_says_where_to_go_live_instead(tmp_path: Path) -> None:
    """The refusal said 'answer first with: autonomy answer asking at version 15 ...',
    no command at all (and, as one, it would answer the recorded run)."""
    db = tmp_path / "events.db"
    with ScriptedModelServer(Asking(), models=["m"]) as running:
        code, out = cli(
            *("run", GOAL, "--workspace", str(tmp_path / "ws"), "--db", str(db)),
            *("--model-url", running.url, "--api", "ollama", "--model", "m", "--run-id", "a"),
        )
        assert code == 0 and "waiting" in out, out
        with open_store(db) as store:
            asked = store.last_version("a")
        code, out = cli(
            *("replay", "a", "--db", str(db), "--live-from", str(asked), "--as", "b"),
            *("--model-url", running.url),
        )
    assert code == 1 and f"a waits for an answer at version {asked}" in out, out
    assert "autonomy answer" not in out


def test_options_that_mean_nothing_are_refused(quick_db: Path) -> None:
    """``--until`` past the run's end said "identical"; a counterfactual replay took
    ``--json``, ``--until`` and ``--tools`` and did without them."""
    with open_store(quick_db) as store:
        last = store.last_version("q")
    code, out = cli("replay", "q", "--db", str(quick_db), "--until", str(last + 1))
    assert code == 1 and f"has versions 1 to {last}; {last + 1} is not one of them" in out, out
    for extra in (["--json"], ["--until", "3"], ["--tools", "recorded"]):
        code, out = cli("replay", "q", "--db", str(quick_db), "--live-from", "3", *extra)
        assert code == 1 and f"{extra[0]} does not apply to a counterfactual replay" in out, out
    code, out = cli("replay", "q", "--db", str(quick_db), "--as", "branch")
    assert code == 1 and "--as and --workspace name a counterfactual replay's branch" in out
    code, out = cli("events", "q", "--db", str(quick_db), "--from", "10", "--to", "5")
    assert code == 2 and "--from 10 is past --to 5" in out, out


def test_diff_of_a_run_with_itself_has_no_divergent_step(quick_db: Path) -> None:
    code, out = cli("diff", "q", "q", "--db", str(quick_db))
    assert code == 0, out
    assert out.splitlines()[0].startswith("q and q are the same in all ")


def test_diff_and_copy_leave_the_log_they_read_as_it_was(tmp_path: Path) -> None:
    """Both opened the log they only read for writing, which brings a log written by
    an older autonomy up to date: tests/data/pre_v2.db, kept in git, changed each
    time it was compared or copied from."""
    db = tmp_path / "old.db"
    db.write_bytes((Path(__file__).parent / "data" / "pre_v2.db").read_bytes())
    before = db.read_bytes()
    code, out = cli("diff", "pre-v2", "pre-v2", "--db", str(db))
    assert code == 0, out
    code, out = cli("copy", "--from", str(db), "--to", str(tmp_path / "other.db"))
    assert code == 0, out
    assert db.read_bytes() == before


def test_a_changed_tool_schema_is_noticed_in_a_log_without_recorded_schemas(
    tmp_path: Path, server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.model import recording
    from engine.tools.registry import Tool

    # a log as older versions wrote it: requests without the tools' schemas
    monkeypatch.setattr(recording.RecordingModel, "_tools_ref", lambda self, offered: "")
    store, run_id = answered_run(tmp_path, server)
    resume(store, run_id, server)
    monkeypatch.undo()
    assert_replays(store, run_id, tools="recorded")
    original = Tool.schema

    def reworded(self: Tool[Any]) -> dict[str, Any]:
        schema = original(self)
        if self.name == "create_file":
            schema["function"]["description"] += " Carefully."
        return schema

    monkeypatch.setattr(Tool, "schema", reworded)

    result = replay(store, run_id, tools="recorded")

    assert not result.identical
    assert "the tools' schemas changed" in result.report().splitlines()[0]


def resume_as_before_run_resumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the engine write what it wrote before ``run.resumed`` marked a stop: the
    same recovery (settled tools, a cut command's failed task caused by its request),
    without the marker, and model requests without their tools' schemas
    (``tools_ref``, new with it). ``monkeypatch.undo()`` ends it."""
    append = RunLog.append

    def without_marker(self: RunLog, *events: Event, causation: int | None = None) -> Any:
        if events and all(isinstance(e, RunResumed) for e in events):
            return []
        events = tuple(
            msgspec.structs.replace(e, tools_ref="") if isinstance(e, ModelRequested) else e
            for e in events
        )
        return append(self, *events, causation=causation)

    monkeypatch.setattr(RunLog, "append", without_marker)


def test_a_model_call_cut_off_replays_in_a_log_written_before_run_resumed(
    tmp_path: Path, server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    resume_as_before_run_resumed(monkeypatch)
    store, run_id = killed_when(
        tmp_path, server, lambda state: bool(state.orchestration.open_calls)
    )
    resume(store, run_id, server)
    monkeypatch.undo()
    assert not any(isinstance(e.data, RunResumed) for e in store.read(run_id))
    assert project(store, run_id).pipeline.status == "completed"
    assert_replays(store, run_id)


def test_a_file_tool_cut_off_replays_in_a_log_written_before_run_resumed(
    tmp_path: Path, server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    resume_as_before_run_resumed(monkeypatch)

    def on_a_known_file(state: RunState) -> bool:
        # a file the log never recorded is left unrecorded now, in words no log
        # written before run.resumed holds: the cut is one such a log can show
        files = state.pipeline.files
        return any(p.arguments.get("path") in files for p in state.pipeline.pending_tools.values())

    store, run_id = killed_when(tmp_path, server, on_a_known_file)
    (pending,) = project(store, run_id).pipeline.pending_tools
    resume(store, run_id, server)
    monkeypatch.undo()
    events = list(store.read(run_id))
    assert not any(isinstance(e.data, RunResumed) for e in events)
    (settled,) = [
        e.data for e in events if isinstance(e.data, ToolExecuted) and e.data.call_id == pending
    ]
    assert "crash" in settled.result + settled.error, "recovery settled it, in its words"
    assert project(store, run_id).pipeline.status == "completed"
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def test_a_command_cut_off_replays_in_a_log_written_before_run_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedModelServer(DemoModels(), models=["m"]) as commands:  # its coder runs py_compile
        resume_as_before_run_resumed(monkeypatch)
        store = command_cut_by_a_kill(tmp_path, commands)
        resume(store, "r", commands)
        monkeypatch.undo()
    events = list(store.read("r"))
    assert not any(isinstance(e.data, RunResumed) for e in events)
    failed = [
        e
        for e in events
        if isinstance(e.data, TaskUpdated) and e.data.error.startswith("interrupted: the engine")
    ]
    assert failed, "recovery failed the command's task"
    assert isinstance(events[failed[0].causation - 1].data, ToolRequested)  # type: ignore[operator]
    assert project(store, "r").pipeline.status == "completed"
    assert_replays(store, "r")
    assert_replays(store, "r", tools="recorded")


def test_a_command_cut_by_a_kill_fails_its_task_and_the_run_replays(
    tmp_path: Path, server: ScriptedModelServer
) -> None:
    """Recovery settles an interrupted run_command and fails its task, caused by
    run.resumed: the replay takes both from the log, as what the stop brought."""

    with ScriptedModelServer(DemoModels(), models=["m"]) as commands:  # its coder runs py_compile
        store = command_cut_by_a_kill(tmp_path, commands)
        run_id = "r"
        resume(store, run_id, commands)
    events = list(store.read(run_id))
    failed = [
        e
        for e in events
        if isinstance(e.data, TaskUpdated) and e.data.error.startswith("interrupted: the engine")
    ]
    assert failed, "recovery failed the command's task"
    assert isinstance(events[failed[0].causation - 1].data, RunResumed)  # type: ignore[operator]
    assert project(store, run_id).pipeline.status == "completed"
    assert_replays(store, run_id)
    assert_replays(store, run_id, tools="recorded")


def command_cut_by_a_kill(tmp_path: Path, commands: ScriptedModelServer) -> KillableStore:
    """Run ``r`` killed at the first append that leaves a ``run_command`` pending."""
    for kill_after in range(1, 60):
        store = KillableStore()
        store.kill_after = kill_after
        run_id = start(store, tmp_path / str(kill_after), commands)
        pending = project(store, run_id).pipeline.pending_tools.values()
        if any(p.tool == "run_command" for p in pending):
            return store
    raise AssertionError("no kill left a command pending")


@given(any_event())
def test_only_the_types_a_recording_looks_at_for_stops_can_be_stops(event: Event) -> None:
    """``Recording`` asks ``is_stop`` only of ``STOP_TYPES`` (a set lookup for the
    other events of a run): every event ``is_stop`` is true of must be of one."""
    assert not is_stop(event, by_words=True) or type(event) in STOP_TYPES


def test_every_kind_of_stop_is_of_a_type_a_recording_looks_at() -> None:
    stops = [
        RunResumed(),
        RunRewound(to_version=3),
        RunFinished(status="stopped", reason=STOPPED_BY_USER),
        ToolExecuted(
            call_id="r/t4", tool="run_command", ok=False, error=next(iter(RECOVERY_ERRORS))
        ),
        TaskUpdated(task_id="t1", status="failed", error="not applied: x.py"),
    ]
    for stop in stops:
        assert is_stop(stop, by_words=True) and type(stop) in STOP_TYPES, stop
