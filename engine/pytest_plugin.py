"""A pytest plugin for regression tests on recorded runs (entry point ``autonomy``).

Installed with autonomy, so pytest loads it in every session; unused, it only adds
the ``--replay-db`` option: no fixtures, no hooks that do anything, nothing imported
beyond pytest until a helper is called.

``replay_run(db, run_id)`` replays a recorded run with the current code (see
``engine.replay``) and raises ``AssertionError`` with the first divergence::

    from engine.pytest_plugin import replay_run

    def test_the_calc_run_still_decides_the_same():
        replay_run("tests/runs.db", "calc-run")

``pytest --replay-db PATH`` adds one test item per run recorded in that log,
``replay[RUN_ID]``, which passes when the replay is identical. Runs that cannot be
replayed as a whole (forked, rewound, recovered after a crash) are skipped with the
reason. ``-k`` selects among them like any test.

The hypothesis strategies of ``events.strategies`` are re-exported here, so a
regression suite needs one import::

    from engine.pytest_plugin import any_event, run_events
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from events.store import EventStore

OPTION = "--replay-db"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("autonomy", "autonomy: replay recorded runs")
    group.addoption(
        OPTION,
        action="store",
        metavar="PATH",
        default=None,
        help="Add one test per run recorded in this autonomy event log: the run is "
        "replayed with the current code and must produce the same events.",
    )


def replay_run(db: Path | str | EventStore, run_id: str) -> None:
    """Replay ``run_id`` from the log ``db`` (a path or an open store); raise
    ``AssertionError`` with the divergence report unless the replay is identical.

    Uses ``engine.replay.replay(store, run_id)``, whose result has ``identical`` and
    ``report()``. Errors that are not divergences (no such run, a run that cannot be
    replayed) propagate as they are."""
    from engine.replay import replay
    from events.store import EventStore

    if isinstance(db, EventStore):
        result = replay(db, run_id)
        where = "the given store"
    else:
        from engine.storage import open_store

        with open_store(db, read_only=True) as store:
            result = replay(store, run_id)
        where = str(db)
    if not result.identical:
        report = result.report() if callable(result.report) else result.report
        raise AssertionError(f"replay of run {run_id!r} ({where}) diverged:\n{report}")


class ReplayItem(pytest.Item):
    """One recorded run, replayed as a test."""

    def __init__(self, *, db: Path, run_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = db
        self.run_id = run_id

    def runtest(self) -> None:
        refused = getattr(importlib.import_module("engine.replay"), "ReplayRefused", None)
        try:
            replay_run(self.db, self.run_id)
        except Exception as e:
            if refused is not None and isinstance(e, refused):
                pytest.skip(f"run {self.run_id!r} cannot be replayed: {e}")
            raise

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str | Any:
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.db, None, f"replay of run {self.run_id}"


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so they apply to these items
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    db = config.getoption(OPTION)
    if db is None:
        return
    path = Path(db)
    from engine.storage import open_store

    try:
        with open_store(path, read_only=True) as store:
            run_ids = [info.run_id for info in store.runs()]
    except Exception as e:
        raise pytest.UsageError(f"{OPTION} {path}: {e}") from e
    items.extend(
        ReplayItem.from_parent(session, name=f"replay[{run_id}]", db=path, run_id=run_id)
        for run_id in run_ids
    )


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
