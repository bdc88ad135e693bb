"""The ``autonomy`` CLI through click's CliRunner, on logs built with the library."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner, Result

from engine.cli import cli, main
from engine.cli.base import describe_error
from engine.config import Limits, Settings, ToolSettings, load_settings, read_config
from engine.machines.phases import mermaid
from engine.model.roles import RoleConfig
from engine.storage import default_db_path, open_store, resolve_db
from events import (
    ArbiterDecided,
    Message,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunStarted,
    SQLiteEventStore,
    StoreCorrupted,
    TaskAdded,
    TaskUpdated,
    ToolCall,
    ToolExecuted,
    ToolRequested,
    Usage,
    UserAsked,
)
from events.codec import chain_hash
from events.schema import FileChange
from projections.views import VIEWS

ROOT = Path(__file__).resolve().parents[1]

BUILD = [
    RunStarted(goal="a calculator module with tests", workspace="/tmp/ws", mode="rules"),
    PhaseChanged(trigger="plan", from_phase="start", to_phase="planning", reason="no tasks"),
    ArbiterDecided(action="plan", reasoning="no tasks yet"),
    TaskAdded(task_id="t1", title="Write calc.py", target_file="calc.py"),
    PhaseChanged(trigger="code", from_phase="planning", to_phase="coding", reason="t1 ready"),
    ArbiterDecided(action="code", parameters={"task_id": "t1"}),
    ModelRequested(
        call_id="m1",
        role="coding",
        model="qwen2.5-coder:7b",
        endpoint="http://127.0.0.1:11434",
        request_digest="d" * 64,
        messages=(Message(role="user", content="write calc.py"),),
        tool_names=("create_file",),
    ),
    ModelResponded(
        call_id="m1",
        tool_calls=(ToolCall(id="c1", name="create_file", arguments={"path": "calc.py"}),),
        usage=Usage(prompt_tokens=120, completion_tokens=30),
        duration_ms=310.0,
    ),
    ToolRequested(call_id="c1", tool="create_file", arguments={"path": "../calc.py"}),
    ToolExecuted(call_id="c1", tool="create_file", ok=False, error="path leaves the workspace"),
    TaskUpdated(task_id="t1", status="failed", attempt=1, error="path leaves the workspace"),
    RunFinished(status="failed", reason="no progress"),
]
ASKING = [
    RunStarted(goal="a web app", workspace="/tmp/other"),
    UserAsked(question="Which framework should the web app use: Flask or FastAPI?"),
]


@pytest.fixture
def db(tmp_path: Path, clock: Callable[[], datetime]) -> Path:
    """A log with two runs: ``build`` (failed after one tool error) and ``asking``
    (waiting for an answer)."""
    path = tmp_path / "events.db"
    with SQLiteEventStore(path, clock=clock) as store:
        store.append("build", BUILD, 0)
        store.append("asking", ASKING, 0)
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for variable in (
        "AUTONOMY_DB",
        "AUTONOMY_CONFIG",
        "AUTONOMY_MODE",
        "USE_ORCHESTRATION",
        "AUTONOMY_MAX_STEPS",
        "AUTONOMY_MODEL_URL",
        "AUTONOMY_API",
        "AUTONOMY_MODEL",
    ):
        monkeypatch.delenv(variable, raising=False)
    return CliRunner()


def run(runner: CliRunner, *args: str | Path, **kwargs: object) -> Result:
    return runner.invoke(cli, [str(a) for a in args], **kwargs)  # type: ignore[arg-type]


def assert_clean_error(result: Result) -> None:
    """Failed with a message, not a traceback."""
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert result.stderr.startswith("Error: ")


def tamper(db: Path, sql: str, *params: object) -> None:
    """Change the log behind the store's back, as an attacker (or a bug) would."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


# -- runs --------------------------------------------------------------------------------


def test_runs_shows_one_projected_row_per_run(runner: CliRunner, db: Path) -> None:
    result = run(runner, "runs", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "status", "phase", "steps", "tokens", "started", "reason"]
    build = next(line for line in lines if line.startswith("build"))
    assert build.split() == [
        *("build", "failed", "coding", "2", "150", "2025-03-14", "15:09:26"),
        *("no", "progress"),
    ]


def test_runs_shows_the_question_of_a_run_waiting_for_input(runner: CliRunner, db: Path) -> None:
    result = run(runner, "runs", "--db", db)
    asking = next(line for line in result.stdout.splitlines() if line.startswith("asking"))
    assert "waiting_for_input: Which framework should the web app use" in asking


def test_runs_reads_the_log_named_by_autonomy_db(runner: CliRunner, db: Path) -> None:
    result = run(runner, "runs", env={"AUTONOMY_DB": str(db)})
    assert result.exit_code == 0, result.output
    assert "build" in result.stdout


def test_runs_defaults_to_the_log_under_the_current_directory(
    runner: CliRunner, db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".autonomy").mkdir()
    db.rename(tmp_path / ".autonomy" / "events.db")
    monkeypatch.chdir(tmp_path)
    result = run(runner, "runs")
    assert result.exit_code == 0, result.output
    assert "asking" in result.stdout


def test_runs_on_an_empty_log_says_so(runner: CliRunner, tmp_path: Path) -> None:
    open_store(tmp_path / "empty.db").close()
    result = run(runner, "runs", "--db", tmp_path / "empty.db")
    assert result.exit_code == 0
    assert result.stdout == "no runs in this log\n"


def test_runs_lists_an_unreadable_run_without_hiding_the_others(
    runner: CliRunner, db: Path
) -> None:
    tamper(db, "UPDATE events SET type = 'task.exploded' WHERE run_id = 'build' AND version = 4")
    result = run(runner, "runs", "--db", db)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    rows = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:]}
    assert rows == {"build": "unreadable", "asking": "waiting_for_input:"}
    assert "run build: event at position 4, type 'task.exploded': unknown event type" in (
        result.stderr
    )


def test_a_reading_command_does_not_create_a_missing_log(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "events.db"
    result = run(runner, "runs", "--db", missing)
    assert_clean_error(result)
    assert f"no event log at {missing}" in result.stderr
    assert not missing.parent.exists()


# -- events ------------------------------------------------------------------------------


def test_events_prints_one_readable_line_per_event(runner: CliRunner, db: Path) -> None:
    result = run(runner, "events", "build", "--db", db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(BUILD)
    for version, (line, event) in enumerate(zip(lines, BUILD, strict=True), start=1):
        number, time, type_ = line.split()[:3]
        assert int(number) == version
        assert re.fullmatch(r"2025-03-14T15:09:26\.\d{3}Z", time)
        assert type_ == event.type_name()
    assert "planning -> coding (code, rules): t1 ready" in lines[4]
    assert "m1 create_file (120+30 tokens, 310 ms)" in lines[7]
    assert "c1 create_file FAILED: path leaves the workspace" in lines[9]
    assert "failed: no progress" in lines[11]


def test_events_filters_by_type_and_version(runner: CliRunner, db: Path) -> None:
    result = run(
        runner, "events", "build", "--type", "tool.executed", "--type", "task.updated", "--db", db
    )
    assert [line.split()[2] for line in result.stdout.splitlines()] == [
        "tool.executed",
        "task.updated",
    ]
    result = run(runner, "events", "build", "--from", "3", "--to", "5", "--db", db)
    assert [int(line.split()[0]) for line in result.stdout.splitlines()] == [3, 4, 5]


def test_events_json_prints_the_full_envelope_and_data(runner: CliRunner, db: Path) -> None:
    result = run(runner, "events", "build", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    with open_store(db) as store:
        stored = list(store.read_raw("build"))
    assert len(records) == len(stored) == len(BUILD)
    for record, row, event in zip(records, stored, BUILD, strict=True):
        assert {k: v for k, v in record.items() if k != "data"} == {
            k: v for k, v in msgspec.structs.asdict(row).items() if k != "data"
        }
        assert record["data"] == json.loads(msgspec.json.encode(event))
        assert record["data"]["type"] == record["type"]


def test_events_of_an_unknown_run_is_a_clean_error(runner: CliRunner, db: Path) -> None:
    result = run(runner, "events", "nope", "--db", db)
    assert_clean_error(result)
    assert "no run 'nope' in this log" in result.stderr
    # an id of any length: 100,000 characters were said whole
    result = run(runner, "events", "x" * 100_000, "--db", db)
    assert_clean_error(result)
    assert f"no run '{'x' * 199}'… (100,000 characters) in this log" in result.stderr
    assert len(result.stderr) < 1_000


def test_state_at_a_version_the_run_never_reached_is_a_clean_error(
    runner: CliRunner, db: Path
) -> None:
    """Not the last state under the version asked for: the run has no such version."""
    result = run(runner, "state", "build", "--at", "99", "--db", db)
    assert_clean_error(result)
    assert f"run build has versions 0 to {len(BUILD)}; 99 is not one of them" in result.stderr
    assert run(runner, "state", "build", "--at", len(BUILD), "--db", db).exit_code == 0


def test_state_keeps_what_a_model_wrote_on_its_line_and_shows_its_escapes(
    runner: CliRunner, tmp_path: Path
) -> None:
    """A question or a file name with a line break printed a line of its own in
    ``state`` ("run r: completed"); piped, click dropped an escape sequence, so the
    name shown was not the one recorded."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append(
            "r",
            [
                RunStarted(goal="g", workspace=str(tmp_path)),
                ToolRequested(call_id="r/t2", tool="create_file", arguments={}),
                ToolExecuted(
                    call_id="r/t2",
                    tool="create_file",
                    ok=True,
                    files_changed=(
                        FileChange(path="notes\x1b[8m\nrun r: done.txt", after="0" * 64, size=1),
                    ),
                ),
                UserAsked(question="Which Python?\nrun r: completed (all tasks done)"),
            ],
            0,
        )
    result = run(runner, "state", "r", "--db", db)
    assert result.exit_code == 0, result.output
    assert not [line for line in result.output.splitlines() if line.startswith("run r: ")]
    assert "waiting for an answer to: Which Python?\\nrun r: completed" in result.output
    assert "notes\\x1b[8m\\nrun r: done.txt" in result.output


def test_events_refuses_an_unknown_type_and_lists_the_known_ones(
    runner: CliRunner, db: Path
) -> None:
    result = run(runner, "events", "build", "--type", "tool.executd", "--db", db)
    assert result.exit_code == 2
    assert "unknown event type 'tool.executd'" in result.stderr
    assert "tool.executed" in result.stderr


# -- verify ------------------------------------------------------------------------------


def test_verify_says_ok_for_every_intact_run(runner: CliRunner, db: Path) -> None:
    result = run(runner, "verify", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        (
            "database: ok (integrity_check, append-only triggers, tables and indexes, audit views,"
            " 0 blobs)"
        ),
        "build: ok (12 events, unkeyed)",
        "asking: ok (2 events, unkeyed)",
    ]
    result = run(runner, "verify", "asking", "--db", db)
    assert result.stdout.splitlines()[1:] == ["asking: ok (2 events, unkeyed)"]


def test_verify_reports_a_changed_row_by_position_and_type(runner: CliRunner, db: Path) -> None:
    tamper(db, "UPDATE events SET data = replace(data, 'calc.py', 'evil.py') WHERE position = 4")
    result = run(runner, "verify", "--db", db)
    assert result.exit_code == 1
    assert "asking: ok" in result.stdout
    assert (
        "build: FAILED at position 4 (version 4, task.added): hash does not match the chain"
        in result.stdout
    )
    assert "1 of 2 runs failed verification" in result.stderr


def test_verify_reports_an_event_that_no_longer_decodes(runner: CliRunner, db: Path) -> None:
    # A forger who also recomputes the chain (or an old log read by code whose schema
    # changed without an upcaster) is caught by the typed decode.
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_append_only_update")
    rows = conn.execute(
        "SELECT position, version, type, schema_version, recorded_at, causation, data "
        "FROM events WHERE run_id = 'build' ORDER BY version"
    ).fetchall()
    previous = ""
    for position, version, type_, schema_version, recorded_at, causation, data in rows:
        if version == 4:
            data = '{"type": "task.added", "task_id": 4, "title": "Write calc.py"}'
        digest = chain_hash(
            previous,
            run_id="build",
            version=version,
            type=type_,
            schema_version=schema_version,
            recorded_at=recorded_at,
            causation=causation,
            data=data,
        )
        conn.execute(
            "UPDATE events SET data = ?, hash = ? WHERE position = ?", (data, digest, position)
        )
        previous = digest
    conn.commit()
    conn.close()
    result = run(runner, "verify", "build", "--db", db)
    assert result.exit_code == 1
    assert "build: FAILED event at position 4, type 'task.added': data does not match" in (
        result.stdout
    )


def test_an_event_edited_to_nest_deeper_than_any_decoder_can_is_reported_not_a_crash(
    runner: CliRunner, db: Path
) -> None:
    """An edited row whose JSON nests 50,000 deep ran every decoder out of stack (a
    RecursionError traceback from verify, events, state and replay)."""
    deep = '{"type": "task.added", "task_id": "t1", "title": "x", "d": ' + "[" * 50_000
    tamper(db, "UPDATE events SET data = ? WHERE run_id = 'build' AND version = 4",
           deep + "]" * 50_000 + "}")  # fmt: skip
    expected = "event at position 4, type 'task.added': data nests too deeply to be read"
    verified = run(runner, "verify", "build", "--db", db)
    assert verified.exit_code == 1 and expected in verified.stdout
    for command in (["events", "build"], ["state", "build"]):
        result = run(runner, *command, "--db", db)
        assert_clean_error(result)
        assert expected in result.stderr
    replayed = run(runner, "replay", "build", "--db", db)  # checks the chain first
    assert_clean_error(replayed)
    assert "run build fails verification at version 4" in replayed.stderr


def test_verify_of_an_unknown_run_is_a_clean_error(runner: CliRunner, db: Path) -> None:
    result = run(runner, "verify", "nope", "--db", db)
    assert_clean_error(result)
    assert "no run 'nope'" in result.stderr


# -- broken databases --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["runs", "verify", "events build"])
def test_a_corrupt_database_file_is_a_clean_error(
    runner: CliRunner, tmp_path: Path, command: str
) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(bytes(range(256)) * 64)
    result = run(runner, *command.split(), "--db", garbage)
    assert_clean_error(result)
    assert "corrupt or not an SQLite file" in result.stderr
    assert "file is not a database" in result.stderr


def test_an_sqlite_database_that_is_not_ours_is_a_clean_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE events (id INTEGER)")
    conn.close()
    result = run(runner, "runs", "--db", other)
    assert_clean_error(result)
    assert "not an autonomy event log" in result.stderr


# -- config ------------------------------------------------------------------------------


def test_config_prints_the_effective_settings_as_a_usable_autonomy_toml(
    runner: CliRunner, tmp_path: Path
) -> None:
    (tmp_path / "autonomy.toml").write_text("[limits]\nmax_steps = 9\n")
    result = run(
        runner,
        "config",
        "--workspace",
        tmp_path,
        "--model-url",
        "http://gpu:11434",
        env={"AUTONOMY_MODEL": "qwen2.5-coder:7b"},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# effective settings: defaults < {tmp_path}/autonomy.toml")
    printed = tmp_path / "printed.toml"
    printed.write_text(result.stdout)
    settings = read_config(printed)
    assert settings.limits.max_steps == 9
    assert settings.models.analysis.base_url == "http://gpu:11434"
    assert settings.models.analysis.model == "qwen2.5-coder:7b"
    assert settings == load_settings(
        tmp_path / "autonomy.toml",
        env={"AUTONOMY_MODEL": "qwen2.5-coder:7b"},
        overrides={"model_url": "http://gpu:11434"},
    )


def test_config_json_is_the_settings_struct(runner: CliRunner, tmp_path: Path) -> None:
    result = run(
        runner,
        "config",
        "--workspace",
        tmp_path,
        "--json",
        "--mode",
        "orchestrated",
        env={"USE_ORCHESTRATION": "false", "AUTONOMY_MAX_STEPS": "4"},
    )
    assert result.exit_code == 0, result.output
    settings = msgspec.json.decode(result.stdout, type=Settings)
    assert settings.mode == "orchestrated"  # the flag beats the environment
    assert settings.limits.max_steps == 4


def test_config_with_a_wrong_key_is_a_clean_error_naming_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    config = tmp_path / "mine.toml"
    config.write_text("[limits]\nmax_stepz = 3\n")
    result = run(runner, "config", "--config", config)
    assert_clean_error(result)
    assert f"{config}: limits.max_stepz: unknown key; did you mean max_steps?" in result.stderr
    assert "caused by msgspec.ValidationError" in result.stderr


def test_config_names_a_malformed_variable(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "config", "--workspace", tmp_path, env={"AUTONOMY_MAX_STEPS": "abc"})
    assert_clean_error(result)
    assert "AUTONOMY_MAX_STEPS='abc'" in result.stderr


def test_config_with_a_toml_syntax_error_names_the_line(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "autonomy.toml").write_text('mode = "rules"\n[limits\n')
    result = run(runner, "config", "--workspace", tmp_path)
    assert_clean_error(result)
    assert "autonomy.toml: not valid TOML" in result.stderr
    assert "line 2" in result.stderr


def test_config_refuses_a_bad_flag_value_before_loading(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "config", "--workspace", tmp_path, "--max-steps", "0")
    assert result.exit_code == 2
    assert "--max-steps" in result.stderr


# -- graph, help, entry point ------------------------------------------------------------


def test_graph_prints_the_mermaid_phase_diagram(runner: CliRunner) -> None:
    result = run(runner, "graph")
    assert result.exit_code == 0
    assert result.stdout.startswith("stateDiagram")
    assert result.stdout == mermaid() + "\n"


def test_every_command_has_help_with_an_example(runner: CliRunner) -> None:
    assert "Example" in run(runner, "--help").stdout
    assert set(cli.commands) >= {"runs", "events", "verify", "graph", "config", "demo", "serve"}
    for name, command in cli.commands.items():
        result = run(runner, name, "--help")
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, f"autonomy {name} --help has no example"
        if any(p.name == "db" for p in command.params):
            assert "[env var: AUTONOMY_DB]" in " ".join(result.stdout.split()), name


def test_main_is_the_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["graph"])
    assert caught.value.code == 0
    assert "stateDiagram" in capsys.readouterr().out


def test_ctrl_c_in_any_command_exits_130_saying_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path
) -> None:
    """click printed "Aborted!" and exited 1; a shell expects 130 (128 + SIGINT)."""
    import projections.summaries

    def interrupted(*args: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(projections.summaries, "summaries_and_problems", interrupted)
    with pytest.raises(SystemExit) as caught:
        main(["runs", "--db", str(db)])
    assert caught.value.code == 130
    assert "Aborted" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:  # the other exits are click's own
        main(["runs", "--no-such-option"])
    assert caught.value.code == 2 and "No such option" in capsys.readouterr().err


_INTERRUPTED_WHILE_STARTING = """
import importlib.abc, importlib.metadata, os, signal, sys

class Interrupt(importlib.abc.MetaPathFinder):
    # a real SIGINT while the commands are imported: Ctrl-C as the program starts
    def find_spec(self, name, path, target=None):
        if name == "click":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, Interrupt())
(script,) = importlib.metadata.entry_points(group="console_scripts", name="autonomy")
script.load()(["graph"])
"""


def test_ctrl_c_while_the_console_script_starts_exits_130_saying_nothing() -> None:
    """The import of the commands was outside click's handling: a traceback."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED_WHILE_STARTING],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")


def test_describe_error_follows_the_cause_chain() -> None:
    try:
        try:
            try:
                raise OSError("disk on fire")
            except OSError as e:
                raise ValueError("could not write") from e
        except ValueError:
            raise StoreCorrupted("the log is damaged")  # implicit context  # noqa: B904
    except StoreCorrupted as e:
        described = describe_error(e)
    assert described.splitlines() == [
        "the log is damaged",
        "  caused by ValueError: could not write",
        "  caused by OSError: disk on fire",
    ]


def test_an_os_error_in_a_command_is_a_clean_error(runner: CliRunner) -> None:
    @cli.command("explode")
    def explode() -> None:
        """Example: none."""
        raise PermissionError(13, "Permission denied", "/root/secret")

    try:
        result = run(runner, "explode")
    finally:
        del cli.commands["explode"]
    assert_clean_error(result)
    assert "Permission denied: '/root/secret'" in result.stderr


def test_a_bug_keeps_its_traceback(runner: CliRunner) -> None:
    @cli.command("buggy")
    def buggy() -> None:
        """Example: none."""
        raise KeyError("not a user mistake")

    try:
        result = run(runner, "buggy")
    finally:
        del cli.commands["buggy"]
    assert isinstance(result.exception, KeyError)


# -- storage -----------------------------------------------------------------------------


def test_the_default_log_lives_under_the_workspace(tmp_path: Path) -> None:
    assert default_db_path(tmp_path) == tmp_path / ".autonomy" / "events.db"
    assert default_db_path(None) == Path(".autonomy") / "events.db"


def test_resolve_db_prefers_the_option_then_the_environment(tmp_path: Path) -> None:
    env = {"AUTONOMY_DB": "/srv/log.db"}
    assert resolve_db(tmp_path / "a.db", tmp_path, env=env) == tmp_path / "a.db"
    assert resolve_db(None, tmp_path, env=env) == Path("/srv/log.db")
    assert resolve_db(None, tmp_path, env={}) == tmp_path / ".autonomy" / "events.db"


def test_open_store_installs_the_audit_views(tmp_path: Path) -> None:
    with open_store(tmp_path / "log" / "events.db", synchronous="FULL", create_dir=True) as store:
        store.append("r", BUILD, 0)
        assert isinstance(store, SQLiteEventStore)
        failed = store.connection.execute(
            "SELECT call_id, tool, error FROM tool_calls WHERE run_id = 'r' AND ok = 0"
        ).fetchall()
        assert store.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert failed == [("c1", "create_file", "path leaves the workspace")]


# -- the README and CI agree -------------------------------------------------------------

README = (ROOT / "README.md").read_text()


def _fenced(language: str | None = None) -> list[str]:
    """The README's fenced blocks (of one language, if given)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README, re.DOTALL | re.MULTILINE)
    return [body for lang, body in blocks if language is None or lang == language]


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    commands = [line.strip() for block in _fenced("sh") for line in block.splitlines()]
    main_job = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/autonomy demo"
    tests = (
        "bash .ci/system-packages && python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
        ".venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/pytest -q"
    )
    assert main_job in commands
    assert tests in commands
    ci = (ROOT / ".ci" / "run").read_text()
    # the same command, in CI's own fresh virtual environment
    assert tests.replace(".venv", '"$VENV"').replace("python3", '"$PYTHON"') in ci


def test_the_readme_config_example_sets_every_key_to_its_default(tmp_path: Path) -> None:
    # the README shows two TOML files: autonomy.toml, and the servers' keys file
    (example,) = [block for block in _fenced("toml") if block.startswith("mode =")]
    path = tmp_path / "autonomy.toml"
    path.write_text(example)
    assert read_config(path) == Settings()
    keys = set(re.findall(r"^#?\s*(\w+)\s*=", example, re.MULTILINE))
    keys |= set(re.findall(r"^\[(\w+)", example, re.MULTILINE))  # table headers
    for struct in (Settings, Limits, ToolSettings, RoleConfig):
        missing = {f.encode_name for f in msgspec.structs.fields(struct)} - keys
        assert not missing, f"README's autonomy.toml lacks {struct.__name__} keys {missing}"


def test_the_readme_lists_every_audit_view_with_its_columns(tmp_path: Path) -> None:
    rows = dict(re.findall(r"^\| `(\w+)` \| (`.*`) \|$", README, re.MULTILINE))
    with open_store(tmp_path / "events.db") as store:
        for view in VIEWS:
            columns = [r[1] for r in store.connection.execute(f"PRAGMA table_info({view})")]
            assert rows.get(view) == ", ".join(f"`{c}`" for c in columns), view
