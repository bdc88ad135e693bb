"""The pytest plugin: harmless when unused, ``--replay-db``, ``replay_run``, strategies.

Sessions run in-process with ``pytester`` against a log recorded by the demo models.
Most tests put a stand-in ``engine.runs.replay`` in ``sys.modules`` so that they check the
plugin, not the replay engine; one test replays for real.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.pytest_plugin import replay_run
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store
from engine.testing import ScriptedModelServer
from events.schema import RunForked, RunStarted

pytest_plugins = ["pytester"]

RUN_FLAGS = ("run", GOAL, "--api", "ollama", "--model", "qwen2.5-coder:7b")
GOOD, BAD, FORKED = "calc-good", "calc-bad", "calc-forked"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs of the demo, and a fork of the first."""
    base = tmp_path_factory.mktemp("plugin")
    db = base / "events.db"
    for run_id in (GOOD, BAD):
        with ScriptedModelServer(DemoModels(), models=["qwen2.5-coder:7b"]) as server:
            result = CliRunner().invoke(
                cli,
                [
                    *RUN_FLAGS,
                    "--workspace",
                    str(base / run_id),
                    "--db",
                    str(db),
                    "--model-url",
                    server.url,
                    "--run-id",
                    run_id,
                ],
            )
        assert result.exit_code == 0, result.output
    with open_store(db) as store:
        store.append(FORKED, [RunForked(parent_run=GOOD, at_version=5, workspace="/w")], 0)
    return db


@dataclass(frozen=True)
class FakeResult:
    identical: bool
    text: str

    def report(self) -> str:
        return self.text


class FakeRefused(Exception):
    pass


@pytest.fixture
def fake_replay(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``engine.runs.replay`` stand-in: GOOD is identical, BAD diverges, FORKED is refused.
    Returns the run ids replayed, in order."""
    replayed: list[str] = []

    def replay(store: object, run_id: str) -> FakeResult:
        replayed.append(run_id)
        if run_id == FORKED:
            raise FakeRefused("it was forked")
        if run_id == BAD:
            return FakeResult(False, "diverged at version 7: expected tool.executed")
        return FakeResult(True, "identical (95 events)")

    module = types.ModuleType("engine.runs.replay")
    module.replay = replay  # type: ignore[attr-defined]
    module.ReplayRefused = FakeRefused  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.runs.replay", module)
    return replayed


def test_the_plugin_is_loaded_and_harmless_when_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_plain(request):
            assert request.config.pluginmanager.hasplugin("autonomy")
            assert request.config.getoption("--replay-db") is None
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*replay*")


def test_replay_db_adds_one_test_per_run(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    result = pytester.runpytest("--replay-db", str(db), "-v", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*collected 3 items",
            f"*events.db::replay?{GOOD}? PASSED*",
            f"*events.db::replay?{BAD}? FAILED*",
            f"*events.db::replay?{FORKED}? SKIPPED*",
            "*diverged at version 7: expected tool.executed*",
            "*cannot be replayed: it was forked*",
        ]
    )
    assert sorted(fake_replay) == sorted([GOOD, BAD, FORKED])


def test_replay_items_are_selected_with_k(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    result = pytester.runpytest("--replay-db", str(db), "-k", "good")
    result.assert_outcomes(passed=1, deselected=2)
    assert fake_replay == [GOOD]


def test_replay_db_items_count_with_the_users_own_tests(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("--replay-db", str(db), "-v")
    result.stdout.fnmatch_lines(["*collected 4 items"])
    result.assert_outcomes(passed=2, failed=1, skipped=1)


def test_a_replay_db_that_does_not_exist_is_a_usage_error(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    result = pytester.runpytest("--replay-db", str(tmp_path / "missing.db"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--replay-db*missing.db*no event log*"])


def test_a_second_replay_db_is_a_usage_error_not_the_first_one_dropped(
    pytester: pytest.Pytester, db: Path, tmp_path: Path
) -> None:
    """Given twice, the second log was collected and the first silently not."""
    result = pytester.runpytest("--replay-db", str(db), "--replay-db", str(tmp_path / "b.db"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--replay-db is given 2 times*one log a session*"])


def test_replay_run_asserts_in_a_users_test(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    pytester.makepyfile(
        f"""
        from engine.pytest_plugin import replay_run

        def test_good():
            replay_run({str(db)!r}, {GOOD!r})

        def test_bad():
            replay_run({str(db)!r}, {BAD!r})
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*AssertionError: replay of run 'calc-bad'*diverged:*", "*diverged at version 7*"]
    )


def test_strategies_are_re_exported(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from hypothesis import given, settings
        from engine.pytest_plugin import any_event, run_events
        from events.schema import Event

        @settings(max_examples=5)
        @given(any_event())
        def test_any(event):
            assert isinstance(event, Event)

        @settings(max_examples=3)
        @given(run_events())
        def test_runs(events):
            assert isinstance(events, (list, tuple))
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_an_unknown_name_is_an_attribute_error() -> None:
    import engine.pytest_plugin as plugin

    with pytest.raises(AttributeError, match="no_such_strategy"):
        _ = plugin.no_such_strategy


def test_replay_run_passes_on_a_recorded_demo_run_with_the_real_replay(db: Path) -> None:
    replay_run(db, GOOD)
    replay_run(db, GOOD, tools="recorded")


def test_the_real_replay_replays_a_fork_instead_of_skipping_it(
    pytester: pytest.Pytester, db: Path
) -> None:
    result = pytester.runpytest(
        "--replay-db", str(db), "-k", "forked", "--replay-tools", "recorded"
    )
    result.assert_outcomes(passed=1, deselected=2)


def test_probing_the_plugin_for_hooks_never_imports_hypothesis() -> None:
    """pytest probes every plugin for pytest_* hooks; a user's project without the
    test extra (the agent's own `python -m pytest` runs) must still load the plugin."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['hypothesis'] = None  # as if it were not installed\n"
        "import engine.pytest_plugin as plugin\n"
        "assert not hasattr(plugin, 'pytest_collection_modifyitems_x')\n"
        "assert not hasattr(plugin, 'pytestmark')\n"
        "assert 'events.strategies' not in sys.modules\n"
        "try:\n"
        "    plugin.any_event\n"
        "except AttributeError as e:\n"
        "    assert 'test extra' in str(e)\n"
        "else:\n"
        "    raise SystemExit('a strategy without hypothesis must be an AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


HOSTILE_ID = "run\x1b]52;c;aGk=\x07\nsecond line"


def test_what_a_log_says_reaches_the_terminal_escaped(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log shared with you (or edited) names its runs and holds the model's words:
    pytest prints test names and failure reports as they are, so an escape sequence
    there (the clipboard through OSC 52, a cleared screen) or a bidirectional override
    would reach the terminal as a command. They are shown escaped."""
    db = tmp_path / "hostile.db"
    with open_store(db) as store:
        store.append(HOSTILE_ID, [RunStarted(goal="g", workspace=str(tmp_path))], 0)

    def replay(store: object, run_id: str) -> FakeResult:
        return FakeResult(False, "task title changed: 'ok' \u202e\x1b[2J 'evil'")

    module = types.ModuleType("engine.runs.replay")
    module.replay = replay  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.runs.replay", module)
    result = pytester.runpytest("--replay-db", str(db), "-v")
    shown = "\n".join(result.outlines + result.errlines)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown, shown
    assert "replay[run\\x1b]52;c;aGk=\\x07\\nsecond line]" in shown
    assert "'ok' \\u202e\\x1b[2J 'evil'" in shown
    result.assert_outcomes(failed=1)


def test_a_log_in_a_directory_pytest_skips_is_collected_and_nothing_else_there(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    """``.autonomy/events.db``, a workspace's own log: pytest does not enter hidden
    directories, and dropped it, replaying nothing while the session passed."""
    hidden = pytester.path / ".autonomy"
    hidden.mkdir()
    (hidden / "events.db").write_bytes(db.read_bytes())
    (hidden / "test_not_mine.py").write_text("def test_x():\n    assert False\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest("--replay-db", ".autonomy/events.db", "-v")
    result.stdout.fnmatch_lines(["*collected 4 items"])
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    assert sorted(fake_replay) == sorted([GOOD, BAD, FORKED])


def test_one_run_is_selected_by_its_node_id_and_the_log_is_not_written(
    pytester: pytest.Pytester, db: Path, fake_replay: list[str]
) -> None:
    """Naming an item still collected every run; and opening the log to check it
    wrote to it (a log kept in git changed at every session)."""
    before = db.read_bytes()
    result = pytester.runpytest("--replay-db", str(db), f"{db}::replay[{GOOD}]")
    result.assert_outcomes(passed=1)
    assert fake_replay == [GOOD]
    assert db.read_bytes() == before


def test_run_ids_that_would_show_alike_get_names_of_their_own(
    pytester: pytest.Pytester, tmp_path: Path, fake_replay: list[str]
) -> None:
    db = tmp_path / "alike.db"
    with open_store(db) as store:
        for run_id in ("a\nb", "a\\nb"):
            store.append(run_id, [RunStarted(goal="g", workspace=str(tmp_path))], 0)
    result = pytester.runpytest("--replay-db", str(db), "-v")
    result.stdout.fnmatch_lines(["*replay?a\\nb? PASSED*", "*replay?a\\\\nb? PASSED*"])


@pytest.mark.parametrize(
    "error",
    [
        "ConfigError('limits.max_steps: expected an integer')",
        # an edited log naming a workspace too long for the file system
        "OSError(36, 'File name too long')",
    ],
)
def test_a_run_the_replay_cannot_start_fails_in_one_line(
    pytester: pytest.Pytester, db: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """A log's own fault (a recorded config that no longer loads, a fork's parent
    gone, a workspace no file system takes) was some 900 lines of traceback;
    ``autonomy replay`` says it in one."""
    from engine.errors import ConfigError

    raised = eval(error, {"ConfigError": ConfigError})
    said = str(raised)

    def replay(store: object, run_id: str) -> FakeResult:
        raise raised

    module = types.ModuleType("engine.runs.replay")
    module.replay = replay  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engine.runs.replay", module)
    result = pytester.runpytest("--replay-db", str(db), "-k", "good")
    result.assert_outcomes(failed=1, deselected=2)
    assert f"run '{GOOD}' could not be replayed: {said}" in result.stdout.str()
    assert "Traceback" not in result.stdout.str() and len(result.outlines) < 30
