"""`autonomy replay` and `autonomy state`: a recorded run re-executed without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from engine.agent import prompts
from engine.cli import cli
from engine.model.wire import NO_OPTIONS
from engine.runs.demo import GOAL, DemoModels
from engine.runs.replay import Recording, ReplayClient, RequestNotRecorded, replay
from engine.runs.state import state_document
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import ArbiterDecided, MemoryEventStore, ModelRequested, RunStarted
from events.schema import Message
from projections import project

# the module's log is recorded once and forked by its tests, under one key (a fork
# checks its parent's chain, which another key cannot: "wrong key")
pytestmark = pytest.mark.usefixtures("session_key")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def record(tmp_path: Path, script: Any = None, run_id: str = "r", mode: str = "rules") -> Path:
    """A complete run through `autonomy run` against the scripted demo models; its log."""
    db = tmp_path / "events.db"
    with ScriptedModelServer(script or DemoModels(), models=["m"]) as server:
        code, out = invoke(
            "run",
            GOAL,
            "--workspace",
            str(tmp_path / "ws"),
            "--db",
            str(db),
            "--model-url",
            server.url,
            "--api",
            "ollama",
            "--model",
            "m",
            "--mode",
            mode,
            "--run-id",
            run_id,
        )
    assert code == 0, out
    return db


def change_prompt(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, text: str
) -> None:
    """Change the qa system prompt for this test (built prompts may be memoised)."""
    monkeypatch.setitem(prompts.SYSTEM, "qa", text)
    clear = getattr(getattr(prompts, "build_prompt", None), "cache_clear", None)
    if clear is not None:
        clear()
        request.addfinalizer(clear)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(tmp_path_factory.mktemp("recorded"))


def versions_of(db: Path, run_id: str, kind: type) -> list[int]:
    with open_store(db) as store:
        return [e.version for e in store.read(run_id) if isinstance(e.data, kind)]


def test_replay_of_a_recorded_run_is_identical(recorded: Path) -> None:
    with open_store(recorded) as store:
        last = store.last_version("r")

    code, out = invoke("replay", "r", "--db", str(recorded))

    assert code == 0, out
    assert out.strip() == f"identical ({last} events)"


def test_a_recorded_replay_runs_nothing_in_its_workspace(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tool results from the log nothing runs in the scratch workspace, so the
    check made before each tool call, that the workspace is still there and
    writable, is not made for it (two system calls a tool call, a twentieth of a
    recorded replay); a live replay makes it, and stops where it fails."""
    import engine.agent.conversation as conversation

    monkeypatch.setattr(conversation, "read_only", lambda directory: True)
    with open_store(recorded) as store:
        recorded_tools = replay(store, "r", tools="recorded")
        live = replay(store, "r")

    assert recorded_tools.identical, recorded_tools.report()
    assert not live.identical
    assert live.report().startswith(
        "diverged at version 7: the replayed engine stopped with an error: WorkspaceGone\n"
    )


def test_a_replay_takes_the_confinement_given_and_refuses_flags_that_decide(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`replay --config mine.toml --sandbox required`, and `--model-url` or `--mode`,
    were taken and ignored: the commands ran under the log's confinement alone (a log
    someone made, under none of the limits given), and a flag that would change a
    decision changed nothing, silently."""
    import engine.runs.replay as replaying

    config = tmp_path / "mine.toml"
    config.write_text('[tools]\nsandbox = "required"\n[tools.limits]\ncpu_seconds = 5\n')
    given: list[Any] = []
    real = replaying.replay

    def spied(*args: Any, **kwargs: Any) -> Any:
        given.append(kwargs.get("here"))
        return real(*args, **kwargs)

    monkeypatch.setattr(replaying, "replay", spied)
    code, out = invoke("replay", "r", "--db", str(recorded), "--config", str(config))
    assert code == 0 and out.startswith("identical"), out
    (here,) = given
    assert (here.sandbox, here.limits.cpu_seconds) == ("required", 5)

    code, out = invoke("replay", "r", "--db", str(recorded), "--model-url", "http://127.0.0.1:9")
    assert code == 1
    assert "--model-url does not apply to a replay, which decides as the run did" in out
    code, out = invoke("replay", "r", "--db", str(recorded), "--mode", "rules", "--max-steps", "3")
    assert code == 1 and "--mode and --max-steps do not apply to a replay" in out


def test_replay_of_an_orchestrated_run_is_identical(tmp_path: Path) -> None:
    db = record(tmp_path, mode="orchestrated")
    with open_store(db) as store:
        result = replay(store, "r")
    assert result.identical, result.report()


def test_replay_never_calls_a_model_server(recorded: Path) -> None:
    # the run recorded against a server that is gone: a replay must not notice
    with open_store(recorded) as store:
        result = replay(store, "r")
    assert result.identical, result.report()


def test_replay_compares_the_digest_its_recorder_wrote_without_working_it_out_again(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.runs import replay_sources

    def refuse(*args: object) -> str:
        raise AssertionError("the recorder's digest was worked out again")

    monkeypatch.setattr(replay_sources, "request_digest", refuse)
    with open_store(recorded) as store:
        result = replay(store, "r", tools="recorded")
    assert result.identical, result.report()


def test_a_changed_prompt_is_reported_at_the_first_request_that_uses_it(
    recorded: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    original = prompts.SYSTEM["qa"]
    change_prompt(monkeypatch, request, original + " Be brief.")
    with open_store(recorded) as store:
        requests = [
            (e.version, e.data) for e in store.read("r") if isinstance(e.data, ModelRequested)
        ]
    first_qa = next(i for i, (_, r) in enumerate(requests) if r.conversation.startswith("qa:"))

    code, out = invoke("replay", "r", "--db", str(recorded))

    assert code == 1
    version = requests[first_qa][0]
    conversation = requests[first_qa][1].conversation
    assert out.splitlines()[0] == (
        f"diverged at version {version}: model request {first_qa + 1} "
        f"(conversation {conversation}): message 1 (system) changed"
    )
    assert "message 1 (system) changed" in out
    assert "+" + original + " Be brief." in out
    assert "-" + original + "\n" in out
    assert "message 2" not in out, "only the changed message is named"


def test_replay_until_a_version_before_the_change_is_identical(
    recorded: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    change_prompt(monkeypatch, request, "Review.")
    with open_store(recorded) as store:
        first_qa = next(
            e.version
            for e in store.read("r")
            if isinstance(e.data, ModelRequested) and e.data.conversation.startswith("qa:")
        )

    code, out = invoke("replay", "r", "--db", str(recorded), "--until", str(first_qa - 1))

    assert code == 0, out
    assert out.strip() == f"identical ({first_qa - 1} events)"


def test_a_changed_decision_is_reported_as_a_diff_of_the_event(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import msgspec

    from engine.agent.coordinator import decide

    def reworded(*args: Any, **kwargs: Any) -> Any:
        return msgspec.structs.replace(decide(*args, **kwargs), reason="reworded")

    monkeypatch.setattr("engine.agent.runner.decide", reworded)
    first_decision = versions_of(recorded, "r", ArbiterDecided)[0]

    code, out = invoke("replay", "r", "--db", str(recorded))

    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"diverged at version {first_decision}: arbiter.decided: reasoning changed"
    assert lines[1] == "  reasoning:"
    assert lines[2].startswith('    recorded: "') and lines[3] == '    replayed: "reworded"'
    assert "parameters" not in out, "only what differs is shown"


def test_a_long_changed_line_is_highlighted_word_by_word(
    recorded: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    original = prompts.SYSTEM["qa"]
    words = original.split(" ")
    middle = len(words) // 2
    change_prompt(monkeypatch, request, " ".join([*words[:middle], "carefully", *words[middle:]]))

    code, out = invoke("replay", "r", "--db", str(recorded))

    assert code == 1
    highlighted = next(line for line in out.splitlines() if "in words:" in line)
    assert " {+carefully+} " in highlighted
    assert "[-" not in highlighted, "nothing was removed"
    assert len(highlighted) < len(original), "only the words around the change are kept"


def test_a_line_that_differs_only_in_a_timing_is_no_change_in_a_message_diff() -> None:
    """Timings are compared as <time>; the diff showed "-after 4.6s +after 2.5s" as a
    change beside the one that counts."""
    from engine.runs.divergence import Normaliser, message_diff

    recorded = [Message(role="tool", content="exit code 1 after 4.6s\nAssertionError: 1 != 2")]
    replayed = [Message(role="tool", content="exit code 1 after 2.5s\nAssertionError: 1 != 3")]
    shown = "\n".join(message_diff(recorded, replayed, Normaliser()))
    assert " exit code 1 after <time>" in shown, shown  # context, not a change
    assert "-AssertionError: 1 != 2" in shown and "+AssertionError: 1 != 3" in shown
    assert "after 4.6s" not in shown and "after 2.5s" not in shown


def test_a_differing_event_type_shows_both_events_fields() -> None:
    from engine.runs.divergence import Normaliser, compare
    from events.schema import TaskAdded, UserAsked

    recorded, replayed = MemoryEventStore(), MemoryEventStore()
    started = RunStarted(goal="g", workspace="/w")
    recorded.append("x", [started, TaskAdded(task_id="t1", title="Write calc.py")], 0)
    replayed.append("x", [started, UserAsked(question="Which Python?")], 0)

    divergence = compare(list(recorded.read("x")), list(replayed.read("x")), Normaliser())

    assert divergence is not None and divergence.version == 2
    assert divergence.title == "expected task.added, got user.asked"
    assert '  recorded task.added:\n    task_id: "t1"' in divergence.diff
    assert '  replayed user.asked:\n    question: "Which Python?"' in divergence.diff


def test_a_payload_nested_deeper_than_python_recurses_is_compared_as_text() -> None:
    """A model's arguments 900 lists deep (the decoder takes them, and a log someone
    made verifies) ended a replay, and the pytest plugin's, in a RecursionError."""
    from engine.runs.divergence import Normaliser, compare
    from events.schema import ToolRequested

    deep: Any = "x"
    for _ in range(900):  # deeper, and no encoder writes it
        deep = [deep]
    recorded, replayed = MemoryEventStore(), MemoryEventStore()
    started = RunStarted(goal="g", workspace="/w")
    call = ToolRequested(call_id="c1", tool="create_file", arguments={"path": "a.py"})
    deeper = msgspec.structs.replace(call, arguments={"path": "a.py", "deep": deep})
    recorded.append("x", [started, deeper], 0)
    replayed.append("x", [started, call], 0)

    divergence = compare(list(recorded.read("x")), list(replayed.read("x")), Normaliser())

    assert divergence is not None and divergence.version == 2
    assert divergence.title == "tool.requested: data changed"
    assert "[[[[" in divergence.diff


def test_a_divergence_is_numbered_by_the_recorded_version_not_its_position() -> None:
    """A log with a gap in its versions (which verify reports) had its divergence
    numbered by position: one version off after the gap."""
    import msgspec

    from engine.runs.divergence import Normaliser, compare
    from events.schema import TaskAdded

    store = MemoryEventStore()
    started = RunStarted(goal="g", workspace="/w")
    written = store.append(
        "x", [started, TaskAdded(task_id="t1", title="a"), TaskAdded(task_id="t2", title="b")], 0
    )
    gapped = [*written[:2], msgspec.structs.replace(written[2], version=4)]
    replayed = [
        *written[:2],
        msgspec.structs.replace(written[2], data=TaskAdded(task_id="t2", title="c")),
    ]
    divergence = compare(gapped, replayed, Normaliser())
    assert divergence is not None and divergence.version == 4
    assert compare(gapped[:2], written, Normaliser()).version == 3  # type: ignore[union-attr]


def test_a_changed_payload_lists_the_fields_that_changed_with_their_values() -> None:
    from engine.runs.divergence import Normaliser, compare
    from events.schema import TaskAdded

    recorded, replayed = MemoryEventStore(), MemoryEventStore()
    started = RunStarted(goal="g", workspace="/w")
    recorded.append("x", [started, TaskAdded(task_id="t1", title="a", priority=1)], 0)
    replayed.append("x", [started, TaskAdded(task_id="t1", title="b", priority=1)], 0)

    divergence = compare(list(recorded.read("x")), list(replayed.read("x")), Normaliser())

    assert divergence is not None
    assert divergence.title == "task.added: title changed"
    assert [(c.field, c.recorded, c.replayed) for c in divergence.changes] == [
        ("data.title", "a", "b")
    ]


def test_a_replayed_event_no_store_could_encode_is_a_divergence_not_a_crash() -> None:
    from engine.runs.divergence import Normaliser, compare
    from engine.runs.replay import scratch_store
    from events.schema import ToolRequested

    recorded = MemoryEventStore()
    started = RunStarted(goal="g", workspace="/w")
    asked = ToolRequested(call_id="x/t2", tool="read_file", arguments={"path": "a.py"})
    recorded.append("x", [started, asked], 0)
    # the scratch log a replay writes to takes it (it encodes what is read back only)
    unstorable = ToolRequested(call_id="x/t2", tool="read_file", arguments={"path": Path("a.py")})
    produced = scratch_store().append("x", [started, unstorable], 0)

    divergence = compare(list(recorded.read("x")), produced, Normaliser())

    assert divergence is not None and divergence.version == 2
    assert divergence.title == (
        "the replay wrote a tool.requested that cannot be encoded: "
        "Encoding objects of type PosixPath is unsupported"
    )


def test_replay_json_of_an_identical_run(recorded: Path) -> None:
    code, out = invoke("replay", "r", "--db", str(recorded), "--json", "--tools", "recorded")
    assert code == 0, out
    document = json.loads(out)
    assert document["identical"] is True and document["divergence"] is None
    assert document["compared"] > 10


def test_replay_replays_failed_attempts_and_is_identical(tmp_path: Path) -> None:
    class FlakyFirst(DemoModels):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def __call__(self, request: ScriptedRequest) -> Reply:
            self.calls += 1
            if self.calls == 1:
                return Reply.server_error()
            return super().__call__(request)

    db = record(tmp_path, FlakyFirst())
    with open_store(db) as store:
        failed = [e for e in store.read("r") if e.type == "model.failed"]
        assert failed, "the recorded run has a failed attempt"
        result = replay(store, "r")

    assert result.identical, result.report()


def test_a_request_beyond_the_recording_is_refused_with_what_was_asked() -> None:
    store = MemoryEventStore()
    store.append("x", [RunStarted(goal="g", workspace="/nowhere", mode="rules")], 0)
    client = ReplayClient(Recording(store, "x"))

    with pytest.raises(RequestNotRecorded, match="made only 0 model requests") as caught:
        client.chat([], [Message(role="user", content="hello?")], (), NO_OPTIONS)

    assert "hello?" in caught.value.diff
    client.close()


def test_a_fork_replays_as_its_parents_prefix_then_its_own_events(
    recorded: Path, tmp_path: Path
) -> None:
    db = tmp_path / "copy.db"
    db.write_bytes(recorded.read_bytes())
    code, out = invoke(
        "fork", "r", "--at", "5", "--workspace", str(tmp_path / "f"), "--as", "f", "--db", str(db)
    )
    assert code == 0, out
    with open_store(db) as store:
        own = store.last_version("f")

    code, out = invoke("replay", "f", "--db", str(db))

    assert code == 0, out
    assert out.strip() == (
        f"identical ({5 + own} events: {own} of f, 5 of the runs it was forked from up to the fork)"
    )


def test_a_fork_of_a_fork_that_diverges_in_its_first_ancestor_names_it(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """It said "(the parent run)" of a run that was the parent's parent."""
    db = tmp_path / "copy.db"
    db.write_bytes(recorded.read_bytes())
    qa = versions_of(db, "r", ModelRequested)[-1]  # a review: the qa prompt was used before
    for run, at, fork in (("r", qa + 1, "f"), ("f", 1, "ff")):  # a fork counts from 1
        code, out = invoke(
            "fork", run, "--at", str(at), "--workspace", str(tmp_path / fork), "--as", fork,
            "--db", str(db),
        )  # fmt: skip
        assert code == 0, out
    change_prompt(monkeypatch, request, "Review it.")
    code, out = invoke("replay", "ff", "--db", str(db))
    assert code == 1 and " of r (a run ff was forked from): " in out.splitlines()[0], out


def test_replay_of_an_unknown_run_is_a_clean_error(recorded: Path) -> None:
    code, out = invoke("replay", "nope", "--db", str(recorded))
    assert code == 1 and "nope" in out


# -- state ------------------------------------------------------------------------------


@pytest.mark.parametrize("at", [1, 12, 40, None])
def test_state_json_at_a_version_is_the_projection_at_that_version(
    recorded: Path, at: int | None
) -> None:
    args = ["state", "r", "--db", str(recorded), "--json"] + (
        [] if at is None else ["--at", str(at)]
    )

    code, out = invoke(*args)

    assert code == 0, out
    document = json.loads(out)
    with open_store(recorded) as store:
        expected = project(store, "r", upto=at)
    assert document == json.loads(json.dumps(state_document(expected)))
    assert document["version"] == expected.version
    assert document["pipeline"]["status"] == expected.pipeline.status
    assert set(document["pipeline"]["tasks"]) == set(expected.pipeline.tasks)
    assert document["pipeline"]["files"] == {
        path: {"path": f.path, "digest": f.digest, "size": f.size, "changed_at": f.changed_at}
        for path, f in expected.pipeline.files.items()
    }
    assert len(document["orchestration"]["decisions"]) == len(expected.orchestration.decisions)


def test_state_text_shows_phase_tasks_and_files(recorded: Path) -> None:
    code, out = invoke("state", "r", "--db", str(recorded))
    assert code == 0, out
    assert "status: completed" in out
    assert "t1" in out and "calc.py" in out and "phases:" in out


def test_state_of_an_unknown_run_is_a_clean_error(recorded: Path) -> None:
    code, out = invoke("state", "nope", "--db", str(recorded))
    assert code == 1 and "nope" in out


def test_a_changed_tool_schema_is_reported_with_what_changed(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.tools.registry import Tool

    original = Tool.schema

    def reworded(self: Tool[Any]) -> dict[str, Any]:
        schema = original(self)
        if self.name == "create_file":
            path = schema["function"]["parameters"]["properties"]["path"]
            path["description"] = path.get("description", "") + " (relative)"
        return schema

    monkeypatch.setattr(Tool, "schema", reworded)

    code, out = invoke("replay", "r", "--db", str(recorded))

    assert code == 1
    assert out.splitlines()[0].endswith("tool create_file: the description of `path` changed"), (
        out.splitlines()[0]
    )
    assert "  tool create_file: the description of `path` changed" in out
    assert "+" in out and 'directories are created (relative)"' in out


@pytest.mark.parametrize(
    ("column", "value", "kind"),
    [("causation", b"", "task.updated"), ("recorded_at", "q", "tool.requested")],
)
def test_an_edited_cell_is_a_clear_error_in_replay_and_the_run_page(
    recorded: Path, tmp_path: Path, column: str, value: object, kind: str
) -> None:
    """A causation of bytes made replay's divergence report a TypeError; a time that
    is no time made the run page's trace (and `report`) a ValueError."""
    import shutil
    import sqlite3

    from engine.web.trace import build_trace
    from events.errors import StoreCorrupted

    db = tmp_path / "edited.db"
    shutil.copy(recorded, db)
    with sqlite3.connect(db) as conn:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        for name, _ in triggers.fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(
            f"UPDATE events SET {column} = ? WHERE position = (SELECT max(position) FROM events"
            " WHERE type = ?)",
            (value, kind),
        )
    with open_store(db, read_only=True) as store:
        if column == "causation":
            with pytest.raises(StoreCorrupted, match=r"cause(?: or hash)? of another type"):
                replay(store, "r", tools="recorded")
        else:
            trace = build_trace(list(store.read("r")))
            assert trace.seconds >= 0 and all(step.seconds >= 0 for step in trace.steps)
            tools = [
                t
                for step in trace.steps
                for m in step.items
                if hasattr(m, "tools")
                for t in m.tools
            ]
            assert tools and all(tool.seconds >= 0 for tool in tools)
            assert replay(store, "r", tools="recorded").identical  # times are not compared


def test_a_blob_the_log_lacks_is_named_by_a_replay_that_needs_it(
    recorded: Path, tmp_path: Path
) -> None:
    """A live replay compares each request with the recorded one, whose long tool
    results are blobs: with one gone it said "the replay stopped before the recorded
    run's model.responded" and no word of the blob. A recorded replay needs none."""
    import shutil
    import sqlite3

    db = tmp_path / "no-blobs.db"
    shutil.copy(recorded, db)
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TRIGGER blobs_append_only_delete")
        conn.execute("DELETE FROM blobs")
    with open_store(db, read_only=True) as store:
        live = replay(store, "r")
        recorded_tools = replay(store, "r", tools="recorded")

    assert live.divergence is not None
    assert live.divergence.actual == "(error)"
    assert live.divergence.title == "the replayed engine stopped with an error: BlobNotFound"
    assert "no blob '" in live.report() and "autonomy verify" in live.report()
    assert recorded_tools.identical, recorded_tools.report()


@pytest.mark.parametrize(
    ("recorded", "replayed", "same"),
    [
        ("[exit code 1 after 4.6s]", "[exit code 1 after 0.2s]", True),
        ("==== 1 failed, 2 passed in 0.67s ====", "==== 1 failed, 2 passed in 1.02s ====", True),
        ("3 passed in 61.23s (0:01:01)", "3 passed in 59.80s", True),
        ("Ran 3 tests in 0.001s", "Ran 3 tests in 0.004s", True),
        ("== 1 test collected in 0.63s ==", "== 1 test collected in 0.69s ==", True),
        (
            "2/3 tests collected (1 deselected) in 0.01s",
            "2/3 tests collected (1 deselected) in 0.02s",
            True,
        ),
        ("1 test collected in 0.63s", "2 tests collected in 0.63s", False),
        ("request timeout: 5s", "request timeout: 500s", False),
        ("retry after: 100 ms", "retry after: 9 ms", False),
        ("wait 5 seconds", "wait 10 seconds", False),
        ("exit code 1 after 4.6s", "exit code 2 after 4.6s", False),
    ],
)
def test_only_the_durations_commands_print_compare_as_the_same(
    recorded: str, replayed: str, same: bool
) -> None:
    """Every duration-like text compared as <time>: a file the run read holding
    "timeout: 5s", edited to "500s" since, replayed live as "identical" although the
    model was shown other text (and a prompt's "wait 5s" changed to "10s" would too)."""
    from engine.runs.divergence import Normaliser

    normalise = Normaliser()
    assert (normalise(recorded) == normalise(replayed)) is same
