"""A pytest plugin for regression tests on recorded runs (entry point ``autonomy``).

Installed with autonomy, so pytest loads it in every session; unused, it only adds
the ``--replay-db`` option: no fixtures, no hooks that do anything, nothing imported
beyond pytest until a helper is called.

``replay_run(db, run_id)`` replays a recorded run with the current code (see
``engine.runs.replay``) and raises ``AssertionError`` with the first divergence::

    from engine.pytest_plugin import replay_run

    def test_the_calc_run_still_decides_the_same():
        replay_run("tests/runs.db", "calc-run")

``pytest --replay-db PATH`` collects that log as a test file: one item per run
recorded in it, ``PATH::replay[RUN_ID]`` (counted in "collected N items"), which
passes when the replay is identical. Every kind of run replays (answered, killed
and resumed, rewound, forked, waiting for input); an item is skipped, with the
reason, only when ``engine.runs.replay`` refuses the run (a run that does not start
with ``run.started`` or ``run.forked``). ``-k`` selects among them like any test, and so
does naming an item (``pytest --replay-db runs.db 'runs.db::replay[RUN]'``); the log
is collected wherever it is (``.autonomy/events.db``, in a directory pytest does not
enter, included), opened read-only. ``--replay-tools recorded`` takes tool results
from the log instead of running them. A run the replay cannot start (a recorded
config that no longer loads) fails with the one-line reason. Names and reports show
what the log says escaped (``engine.terminal.printable``), no two runs named alike.

The hypothesis strategies of ``events.strategies`` are re-exported here, so a
regression suite needs one import::

    from engine.pytest_plugin import any_event, run_events
"""

from __future__ import annotations

import fnmatch
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from events.store import EventStore

OPTION = "--replay-db"
TOOLS_OPTION = "--replay-tools"
_DB = pytest.StashKey[Path]()
_ENTERED = pytest.StashKey[frozenset[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autonomy", "autonomy: replay recorded runs")
    group.addoption(
        OPTION,
        action="append",  # given twice, said so: "store" kept the last one silently
        metavar="PATH",
        default=None,
        help="Add one test per run recorded in this autonomy event log: the run is "
        "replayed with the current code and must produce the same events.",
    )
    group.addoption(
        TOOLS_OPTION,
        action="store",
        choices=("live", "recorded"),
        default="live",
        help="With --replay-db: run the tools (live, the default) or take their "
        "results from the log (recorded).",
    )


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption(OPTION)
    if not given:
        return
    if len(set(given)) > 1:
        raise pytest.UsageError(
            f"{OPTION} is given {len(given)} times ({', '.join(given)}): one log a session; "
            "run pytest once for each"
        )
    db = given[0]
    path = Path(db).resolve()
    from engine.storage import open_store

    try:
        with open_store(path, must_exist=True, read_only=True):  # reading changes no log
            pass
    except Exception as e:
        raise pytest.UsageError(f"{OPTION} {db}: {e}") from e
    config.stash[_DB] = path
    config.stash[_ENTERED] = _entered(config, path)
    if not any(_names(arg, path) for arg in config.args):  # the user may name its runs
        config.args.append(str(path))  # collected like a test file given on the command line


def _names(arg: str, db: Path) -> bool:
    """Whether a command-line argument names the log or one of its items."""
    try:
        return Path(arg.split("::", 1)[0]).resolve() == db
    except (OSError, ValueError):
        return False


def _entered(config: pytest.Config, db: Path) -> frozenset[Path]:
    """The directories on the way to the log that pytest would not enter (hidden, a
    virtualenv, ``norecursedirs``; ``.autonomy/`` holds a workspace's log): entered for
    the log alone (``pytest_ignore_collect``)."""
    patterns = config.getini("norecursedirs")
    chain = list(reversed(db.parents))
    for n, directory in enumerate(chain):
        if (
            any(fnmatch.fnmatch(directory.name, p) for p in patterns)
            or (directory / "pyvenv.cfg").is_file()
        ):
            return frozenset(chain[n:])
    return frozenset()


@pytest.hookimpl(tryfirst=True)
def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The log and the directories leading to it are collected wherever it is (a
    log under ``.autonomy/`` was dropped, its runs never replayed, the session
    passing); what else those directories hold is not."""
    db = config.stash.get(_DB, None)
    if db is None:
        return None
    if collection_path == db or collection_path in db.parents:
        return False
    if collection_path.parent in config.stash.get(_ENTERED, frozenset()):
        return True
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if parent.config.stash.get(_DB, None) == file_path:
        return ReplayLogFile.from_parent(parent, path=file_path)
    return None


def replay_run(db: Path | str | EventStore, run_id: str, *, tools: str = "live") -> None:
    """Replay ``run_id`` from the log ``db`` (a path or an open store); raise
    ``AssertionError`` with the divergence report unless the replay is identical.

    Uses ``engine.runs.replay.replay(store, run_id, tools=tools)``, whose result has
    ``identical`` and ``report()``. ``tools``: ``"live"`` runs the tools in a
    scratch workspace, ``"recorded"`` takes their results from the log. Errors that
    are not divergences (no such run, a run that cannot be replayed) propagate."""
    from engine.agent.runlog import refuse_tampered
    from engine.runs.replay import replay
    from events.store import EventStore

    options: dict[str, Any] = {} if tools == "live" else {"tools": tools}
    if isinstance(db, EventStore):
        refuse_tampered(db, run_id, None, "nothing was replayed")
        result = replay(db, run_id, **options)
        where = "the given store"
    else:
        from engine.storage import open_store

        with open_store(db, read_only=True) as store:
            refuse_tampered(store, run_id, None, "nothing was replayed")
            result = replay(store, run_id, **options)
        where = str(db)
    if not result.identical:
        report = result.report() if callable(result.report) else result.report
        raise AssertionError(f"replay of run {run_id!r} ({where}) diverged:\n{report}")


class ReplayItem(pytest.Item):
    """One recorded run, replayed as a test."""

    def __init__(self, *, db: Path, run_id: str, tools: str = "live", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = db
        self.run_id = run_id
        self.tools = tools

    def runtest(self) -> None:
        refused = getattr(importlib.import_module("engine.runs.replay"), "ReplayRefused", None)
        try:
            replay_run(self.db, self.run_id, tools=self.tools)
        except Exception as e:
            if refused is not None and isinstance(e, refused):
                pytest.skip(_shown(f"run {self.run_id!r} cannot be replayed: {e}"))
            raise

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, AssertionError):
            return _shown(str(excinfo.value))
        from events.errors import AutonomyError

        # the log's fault, said in its words; or the system's (a name too long for the
        # file system, from an edited log): one line, as the command line says it
        if isinstance(excinfo.value, AutonomyError | OSError):
            return _shown(f"run {self.run_id!r} could not be replayed: {excinfo.value}")
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.db, None, f"replay of run {_shown(self.run_id)}"


def _shown(text: str, *, one_line: bool = False) -> str:
    """Text from a log as pytest may print it: a run id, a task title or a model's
    words hold any characters (a log is shared, or edited), and pytest writes them to
    the terminal as they are; each control character and bidirectional override is
    shown as an escape instead (``engine.terminal.printable``), and with ``one_line``
    (a test's name) each line break too."""
    from engine.terminal import printable

    if not one_line:
        return printable(text)
    # a backslash doubled first, so that no two run ids get one name ("a\nb", "a\\nb")
    return printable(text.replace("\\", "\\\\")).replace("\n", "\\n")


class ReplayLogFile(pytest.File):
    """An event log as a test file: one ``ReplayItem`` per run recorded in it."""

    def collect(self) -> list[pytest.Item]:
        from engine.storage import open_store

        with open_store(self.path, read_only=True) as store:
            run_ids = [info.run_id for info in store.runs()]
        tools = self.config.getoption(TOOLS_OPTION)
        return [
            ReplayItem.from_parent(
                self,
                name=f"replay[{_shown(run_id, one_line=True)}]",
                db=self.path,
                run_id=run_id,
                tools=tools,
            )
            for run_id in run_ids
        ]


def __getattr__(name: str) -> Any:
    """The hypothesis strategies of ``events.strategies``, imported on first use so
    that loading the plugin never needs hypothesis."""
    # pytest probes a plugin for hooks and markers (pytest_*, pytestmark): those
    # must not import hypothesis, which only the test extra installs.
    if name.startswith(("_", "pytest")):
        raise AttributeError(name)
    try:
        strategies = importlib.import_module("events.strategies")
    except ModuleNotFoundError as e:
        raise AttributeError(
            f"{name!r} is a hypothesis strategy; install the test extra: pip install 'autonomy[test]'"
        ) from e
    try:
        return getattr(strategies, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
