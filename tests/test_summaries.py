"""The run summaries (``projections.summaries``): one stored row per run, the same
fold as ``autonomy state``, kept up to date as events are appended, caught up on
read, read-only logs listed without a write, checked by verify, rebuilt at will,
and not corrupted by processes appending to different runs at once."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import projections.summaries
from engine.cli import cli
from engine.runs.verification import verify_log
from engine.storage import open_store
from events import MemoryEventStore, RunForked, RunRewound, SQLiteEventStore
from events.schema import Event, ModelRequested, ModelResponded, RunFinished, RunStarted, Usage
from events.store import EventStore
from events.strategies import run_events
from projections import project
from projections.summaries import (
    Maintainer,
    RunSummary,
    catch_up,
    maintain,
    rebuild_summaries,
    run_summaries,
    status_at_end,
    summarize,
    summary_problems,
)

START = RunStarted(goal="write a todo app", workspace="/work/todo")


def folded(store: EventStore) -> list[RunSummary]:
    """What the summaries must say: each run's latest state, folded whole."""
    return [summarize(project(store, info.run_id), info) for info in store.runs()]


def failed_run(store: EventStore) -> None:
    store.append("a", [START, *model_call(1), RunFinished(status="failed")], 0)


def model_call(n: int, tokens: int = 10) -> list[Event]:
    return [
        ModelRequested(call_id=f"m{n}", role="coder", model="qwen", request_digest=f"d{n}"),
        ModelResponded(call_id=f"m{n}", usage=Usage(prompt_tokens=tokens, completion_tokens=1)),
    ]


@given(run_events(rewinds=True, max_steps=16), st.data())
def test_a_live_tail_reads_a_runs_status_from_its_row_and_the_events_past_it(
    events: list[Event], data: st.DataObject
) -> None:
    """A live tail folded the run itself, a state of several MB for each stream (200
    streams of a run of 20,000 events: 1.5 GB). ``status_at_end`` says what the whole
    fold says, reading no event at or before the run's stored row."""
    store = MemoryEventStore()
    maintain(store, every=10**9)
    split = data.draw(st.integers(1, len(events)), label="caught up at")
    store.append("r", events[:split], 0)
    catch_up(store)
    store.append("r", events[split:], split)
    row_version = split if store.summary_position() is not None else 0
    read = store.read
    asked: list[int] = []

    def reading(run_id: str, *, after: int = 0, upto: int | None = None) -> Any:
        asked.append(after)
        return read(run_id, after=after, upto=upto)

    store.read = reading  # type: ignore[method-assign]
    whole = project(store, "r")
    asked.clear()

    assert status_at_end(store, "r") == (whole.version, whole.pipeline.status)
    rewound = any(isinstance(e, RunRewound | RunForked) for e in events[row_version:])
    if not rewound:
        assert all(after >= row_version for after in asked), asked


# -- the same fold ------------------------------------------------------------------------


@given(run_events(rewinds=True, max_steps=16), st.data())
def test_a_row_folded_on_from_any_version_says_what_the_whole_fold_says(
    events: list[Event], data: st.DataObject
) -> None:
    store = MemoryEventStore()
    maintain(store, every=10**9)  # only lifecycle events and the explicit catch-ups
    split = data.draw(st.integers(0, len(events)), label="split")
    store.append("r", events[:split], 0)
    catch_up(store)
    for version, event in enumerate(events[split:], start=split):
        store.append("r", [event], version)
        if data.draw(st.booleans(), label="catch up here"):
            catch_up(store)

    assert run_summaries(store) == folded(store)
    assert summary_problems(store) == []


@given(run_events(rewinds=True, max_steps=8), run_events(rewinds=True, max_steps=8), st.data())
def test_a_fork_summary_starts_from_its_parent_at_the_fork_point(
    parent_events: list[Event], own_events: list[Event], data: st.DataObject
) -> None:
    store = MemoryEventStore()
    maintain(store, every=3)
    store.append("parent", parent_events, 0)
    at = data.draw(st.integers(1, len(parent_events)), label="at")
    forked = RunForked(parent_run="parent", at_version=at, workspace="/work/fork")
    for version, event in enumerate([forked, *own_events[1:]]):
        store.append("fork", [event], version)

    assert run_summaries(store) == folded(store)
    fork = run_summaries(store)[1]
    assert fork.parent_run == "parent" and fork.status == project(store, "fork").pipeline.status


def test_a_rewound_run_has_the_status_of_its_effective_history() -> None:
    store = MemoryEventStore()
    maintain(store)
    store.append("r", [START, *model_call(1, 100), RunFinished(status="failed", reason="x")], 0)
    assert run_summaries(store)[0].status == "failed"

    store.append("r", [RunRewound(to_version=3, reason="try again")], 4)

    (summary,) = run_summaries(store)
    assert (summary.status, summary.tokens, summary.version) == ("running", 101, 5)
    assert summary == folded(store)[0]


def test_new_events_are_folded_on_from_the_row_without_reading_the_run_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryEventStore()
    maintain(store)
    store.append("r", [START, *model_call(1)], 0)
    assert store.summary_position() == 3  # run.started is a lifecycle event: caught up

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole run was folded again")

    monkeypatch.setattr(projections.summaries, "project", refuse)
    store.append("r", model_call(2, 20), 3)
    store.append("r", [RunFinished(status="completed", reason="done")], 5)

    (summary,) = run_summaries(store)
    assert (summary.status, summary.tokens, summary.version) == ("completed", 32, 6)


# -- kept up to date as events are appended --------------------------------------------------


def test_a_writer_stores_the_rows_every_few_events_and_at_each_lifecycle_event() -> None:
    store = MemoryEventStore()
    store.after_append = Maintainer(every=4)
    store.append("r", [START], 0)
    assert store.summary_position() == 1
    for n in range(3):
        store.append("r", model_call(n), 1 + 2 * n)
    assert store.summary_position() == 5  # after the second call: 4 events since
    store.append("r", [RunFinished(status="completed")], 7)

    assert store.summary_position() == 8
    assert store.summary_rows()[0][1:3] == (8, 8)


def test_listing_an_up_to_date_log_folds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "events.db"
    with open_store(db) as store:
        for r in range(3):
            store.append(f"run-{r}", [START, *model_call(r), RunFinished(status="completed")], 0)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a run was folded")

    monkeypatch.setattr(projections.summaries, "project", refuse)
    monkeypatch.setattr(projections.summaries, "fold", refuse)
    result = CliRunner().invoke(cli, ["runs", "--db", str(db)])

    assert result.exit_code == 0, result.output
    assert [line.split()[:5] for line in result.output.splitlines()[2:]] == [
        [f"run-{r}", "completed", "start", "0", str(10 + 1)] for r in range(3)
    ]


# -- read-only and older logs ----------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_read_only_log_is_caught_up_in_memory_and_never_written(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as bare:  # no maintainer: the rows stay behind
        bare.append("a", [START, *model_call(1)], 0)
        bare.append("b", [START], 0)
    before = sha256(db)

    with open_store(db, read_only=True) as store:
        assert run_summaries(store) == folded(store)
        assert store.summary_position() == 0

    assert sha256(db) == before


def test_a_log_from_before_the_summaries_is_listed_read_only_and_built_on_open(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as bare:
        failed_run(bare)
    conn = sqlite3.connect(db)
    conn.executescript(
        "DROP TABLE run_summaries; DROP TABLE projection_positions; PRAGMA user_version = 2;"
    )
    conn.close()

    with open_store(db, read_only=True) as store:
        assert store.summary_position() is None
        assert [s.status for s in run_summaries(store)] == ["failed"]
    with open_store(db) as store:  # a writer brings the schema up and builds the rows
        assert store.summary_position() == 4
        assert [s.status for s in run_summaries(store)] == ["failed"]


# -- checked by verify, fixed by a rebuild ---------------------------------------------------


def test_verify_reports_a_summary_that_disagrees_with_the_log_and_a_rebuild_fixes_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "events.db"
    with open_store(db) as store:
        failed_run(store)
        store.append("b", [START], 0)
    conn = sqlite3.connect(db)
    text = conn.execute("SELECT summary FROM run_summaries WHERE run_id = 'a'").fetchone()[0]
    conn.execute(
        "UPDATE run_summaries SET summary = ? WHERE run_id = 'a'",
        (text.replace('"status":"failed"', '"status":"completed"'),),
    )
    conn.execute("DELETE FROM run_summaries WHERE run_id = 'b'")
    conn.commit()
    conn.close()
    runner = CliRunner()

    listed = runner.invoke(cli, ["runs", "--db", str(db)])
    found = runner.invoke(cli, ["verify", "--db", str(db)])

    assert "completed" in listed.output  # the list trusts its rows: O(runs)
    assert found.exit_code == 1
    assert "run summaries: run 'a': status 'completed' where the log says 'failed'" in (
        found.output
    )
    assert "run summaries: no row for run 'b'" in found.output

    rebuilt = runner.invoke(cli, ["runs", "--rebuild", "--db", str(db)])

    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.output.splitlines()[2].split()[:2] == ["a", "failed"]
    assert runner.invoke(cli, ["verify", "--db", str(db)]).exit_code == 0


@pytest.mark.parametrize("damage", ["unreadable", "another-format"])
def test_a_row_that_cannot_be_read_is_folded_again_not_left_out(
    tmp_path: Path, damage: str
) -> None:
    """A run's row damaged (or of another format) long after the run ended: readers
    skipped it, as rows to fold again, but only runs with events past the position
    were folded, so the run was in no listing (``runs`` said "no runs in this log",
    exit 0). It is folded and listed; a writer stores it again."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        failed_run(store)
        store.append("b", [START], 0)
        expected = folded(store)
    conn = sqlite3.connect(db)
    text = conn.execute("SELECT summary FROM run_summaries WHERE run_id = 'a'").fetchone()[0]
    damaged = "{bad" if damage == "unreadable" else text.replace('"format":1', '"format":99')
    assert damaged != text
    conn.execute("UPDATE run_summaries SET summary = ? WHERE run_id = 'a'", (damaged,))
    conn.commit()
    conn.close()

    with open_store(db, read_only=True) as store:
        assert run_summaries(store) == expected
    listed = CliRunner().invoke(cli, ["runs", "--db", str(db)])
    assert listed.exit_code == 0 and "failed" in listed.output, listed.output
    with open_store(db) as store:
        assert run_summaries(store) == expected
        assert summary_problems(store) == []  # stored again


def test_verify_reports_a_summary_position_past_the_logs_end(tmp_path: Path) -> None:
    """Readers take every run past the summaries' position as not stored yet: set to
    2^63 - 1, no run written later was ever listed by `autonomy runs`, and verify said
    ok until one was."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        failed_run(store)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE projection_positions SET position = ?", (2**63 - 1,))
    conn.commit()
    conn.close()
    found = CliRunner().invoke(cli, ["verify", "--db", str(db)])
    assert found.exit_code == 1, found.output
    assert (
        f"run summaries: they say they hold the log up to position {2**63 - 1}, past its "
        "last event's" in found.output
    )


@pytest.mark.parametrize("position", [0, 2])
def test_verify_reports_a_forged_row_behind_its_run_whatever_the_position(
    tmp_path: Path, position: int
) -> None:
    """A row is checked at its own version, also when the stored position is behind
    the run (set back by whoever forged the row): verify skipped such rows, which
    readers fold on from, and said ok while `autonomy runs` showed the forgery."""
    db = tmp_path / "events.db"
    with open_store(db) as store:
        failed_run(store)
    conn = sqlite3.connect(db)
    text = conn.execute("SELECT summary FROM run_summaries WHERE run_id = 'a'").fetchone()[0]
    forged = text.replace('"status":"failed"', '"status":"completed"')
    conn.execute("UPDATE run_summaries SET summary = ? WHERE run_id = 'a'", (forged,))
    conn.execute("UPDATE projection_positions SET position = ?", (position,))
    conn.commit()
    conn.close()
    found = CliRunner().invoke(cli, ["verify", "--db", str(db)])
    assert found.exit_code == 1, found.output
    assert "run 'a': status 'completed' where the log says 'failed'" in found.output


def test_verify_reports_a_row_of_a_version_its_run_does_not_have() -> None:
    store = MemoryEventStore()
    store.append("a", [START], 0)
    run_summaries(store)  # the rows made
    ((run_id, _, last, text),) = store.summary_rows()
    forged = (run_id, 7, last, text.replace('"version":1', '"version":7'))
    store.save_summaries(1, 1, [forged])
    assert summary_problems(store) == [
        "run summaries: run 'a': its row is of version 7, where the run has 1 events"
    ]


def test_a_rebuild_drops_rows_of_runs_the_log_does_not_have() -> None:
    store = MemoryEventStore()
    store.append("a", [START], 0)
    store.save_summaries(0, 1, [("ghost", 1, 1, "{}")])
    assert summary_problems(store) == [
        "run summaries: a row for run 'ghost', which the log does not have",
        "run summaries: no row for run 'a'",
    ]

    assert rebuild_summaries(store) == 1

    assert summary_problems(store) == []
    assert [s.run_id for s in run_summaries(store)] == ["a"]


def test_a_rebuild_stores_every_run_it_can_fold_and_leaves_the_one_it_cannot(
    tmp_path: Path,
) -> None:
    """One run that cannot be folded (an event a writer wrote by hand, its data not
    an event's) made ``runs --rebuild`` fail, and no run's row was stored."""

    from engine.cli import cli

    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("a", [START], 0)
        store.connection.execute(
            "INSERT INTO events VALUES (2, 'forged', 1, 'run.started', 1,"
            " '2026-01-01T00:00:00Z', NULL, 'h', '{\"type\": \"run.started\"}')"
        )
    result = CliRunner().invoke(cli, ["runs", "--rebuild", "--db", str(db)])
    assert result.exit_code == 1, result.output
    rows = [line.split()[:2] for line in result.output.splitlines()]
    assert ["forged", "unreadable"] in rows and ["a", "running"] in rows, result.output
    assert "Error: run forged:" in result.output and "Traceback" not in result.output
    with SQLiteEventStore(db, read_only=True) as store:
        assert [row[0] for row in store.summary_rows(None)] == ["a"]  # its row is kept


# -- concurrency ----------------------------------------------------------------------------

WRITER = """
import sys
from engine.storage import open_store
from events.schema import ModelRequested, ModelResponded, RunFinished, RunStarted, Usage
from projections.summaries import Maintainer

db, run_id, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open_store(db) as store:
    store.after_append = Maintainer(every=3)
    store.append(run_id, [RunStarted(goal=run_id, workspace="/w")], 0)
    for n in range(calls):
        store.append(run_id, [ModelRequested(call_id=f"m{n}", role="coder", model="q",
                                             request_digest=f"d{n}")], 1 + 2 * n)
        store.append(run_id, [ModelResponded(call_id=f"m{n}", usage=Usage(prompt_tokens=n))],
                     2 + 2 * n)
    store.append(run_id, [RunFinished(status="completed")], 1 + 2 * calls)
"""


def test_processes_appending_to_different_runs_leave_every_summary_right(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    open_store(db).close()
    calls = 250
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(db), run_id, str(calls)])
        for run_id in ("left", "right")
    ]
    listings = 0
    while any(w.poll() is None for w in writers) or listings == 0:
        with open_store(db, read_only=True) as reader:
            listed = run_summaries(reader)  # caught up in memory, never written
            assert summary_problems(reader) == []
        assert all(s.status in ("running", "completed") for s in listed)
        listings += 1
    assert [w.wait(timeout=60) for w in writers] == [0, 0]

    with open_store(db, read_only=True) as store:
        assert store.summary_position() == 2 * (2 + 2 * calls)  # the last writer stored all
        assert summary_problems(store) == []
        summaries = run_summaries(store)
        assert summaries == folded(store)
    assert {s.run_id: s.tokens for s in summaries} == {
        "left": sum(range(calls)),
        "right": sum(range(calls)),
    }


# -- PostgreSQL --------------------------------------------------------------------------


def test_postgres_keeps_the_summaries_in_its_own_table(pg_url: str) -> None:
    with open_store(pg_url) as store:
        store.append("a", [START, *model_call(1)], 0)
        store.append("a", [RunFinished(status="completed")], 3)
        assert store.summary_position() == 4
        assert run_summaries(store) == folded(store)
        verdict = verify_log(store)
        assert verdict.database == ()


@pytest.mark.parametrize("position", ["x", -5, 2.5, b"7"])
def test_a_summary_position_that_is_no_position_is_read_as_none(
    tmp_path: Path, position: object
) -> None:
    """``int()`` of an edited position: a ValueError in verify, runs, audit and every
    page of the service. The summaries are derived: they are folded again."""
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as bare:
        failed_run(bare)
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE projection_positions SET position = ?", (position,))
    conn.commit()
    conn.close()
    with open_store(db, read_only=True) as store:
        assert store.summary_position() == 0
        assert [s.status for s in run_summaries(store)] == ["failed"]
