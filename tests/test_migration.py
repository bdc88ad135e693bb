"""Migration: a log recorded before a schema change still verifies and replays.

``tests/data/pre_v2.db`` was recorded (the scripted demo run, through ``autonomy
run``) while ``task.added`` was at schema version 1, whose payload called a task's
prerequisites ``dependencies``. Version 2 stores them as ``depends_on``; the
upcaster ``task.added`` v1 -> v2 in ``events.upcasters.project_upcasters`` renames
the key before the typed decode. The old rows are never rewritten: the log stays
as it was recorded, hash chain included.

Never re-record the database to make a test pass: it stands for a user's old log.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.storage import open_store
from events import Codec, TaskAdded
from projections import project

OLD_DB = Path(__file__).parent / "data" / "pre_v2.db"
RUN = "pre-v2"


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A copy: opening a log installs views, and the recorded file must stay as it is."""
    copy = tmp_path / "pre_v2.db"
    shutil.copyfile(OLD_DB, copy)
    return copy


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def stored_versions(db: Path, type_: str) -> set[int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT schema_version FROM events WHERE type = ?", (type_,))
        return {version for (version,) in rows}


def test_the_old_database_holds_task_added_at_a_version_older_than_the_code(old_db: Path) -> None:
    assert stored_versions(old_db, "task.added") == {1}
    assert TaskAdded.schema_version == 2


def test_the_upcaster_renames_dependencies_to_depends_on() -> None:
    v1 = '{"type":"task.added","task_id":"t2","title":"tests","dependencies":["t1"]}'

    event = Codec().decode("task.added", 1, v1)

    assert event == TaskAdded(task_id="t2", title="tests", dependencies=("t1",))


def test_verify_passes_on_the_database_recorded_before_the_change(old_db: Path) -> None:
    code, out = invoke("verify", "--db", str(old_db))

    assert code == 0, out
    assert f"{RUN}: ok" in out
    assert stored_versions(old_db, "task.added") == {1}, "upcasting never rewrites the log"


def test_replay_is_identical_on_the_database_recorded_before_the_change(old_db: Path) -> None:
    code, out = invoke("replay", RUN, "--db", str(old_db))

    assert code == 0, out
    assert out.startswith("identical (")


def test_old_events_keep_their_dependencies_through_the_upcaster(old_db: Path) -> None:
    with open_store(old_db) as store:
        tasks = project(store, RUN).pipeline.tasks

    assert tasks["t2"].dependencies == ("t1",), "the v1 key reached the v2 field"
