"""What only the SQLite store promises: triggers, pragmas, files that are not ours,
tampering found by ``verify``, and real processes racing for one run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import events.sqlite
from events import (
    ConcurrencyError,
    EventStoreError,
    RunFinished,
    RunStarted,
    SQLiteEventStore,
    StoreCorrupted,
    StoreUnavailable,
    TaskAdded,
)
from events.sqlite import APPLICATION_ID

ROOT = Path(__file__).resolve().parents[1]
START = RunStarted(goal="write a todo app", workspace="/work/todo")


def task(n: int) -> TaskAdded:
    return TaskAdded(task_id=f"t{n}", title=f"task {n}")


def pragma(store: SQLiteEventStore, name: str) -> object:
    return store.connection.execute(f"PRAGMA {name}").fetchone()[0]


# -- append-only by construction ----------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}' WHERE version = 1",
        "UPDATE events SET run_id = 'other'",
        "DELETE FROM events WHERE version = 2",
        "DELETE FROM events",
    ],
)
def test_update_and_delete_of_events_are_refused(
    file_store: SQLiteEventStore, statement: str
) -> None:
    file_store.append("run-1", [START, task(1)], 0)
    before = list(file_store.read_raw("run-1"))

    with pytest.raises(sqlite3.DatabaseError, match="events are append-only"):
        file_store.connection.execute(statement)

    assert list(file_store.read_raw("run-1")) == before


@pytest.mark.parametrize(
    "statement",
    ["UPDATE blobs SET content = x'00'", "DELETE FROM blobs"],
)
def test_update_and_delete_of_blobs_are_refused(
    file_store: SQLiteEventStore, statement: str
) -> None:
    digest = file_store.put(b"print('hello')\n")

    with pytest.raises(sqlite3.DatabaseError, match="blobs are append-only"):
        file_store.connection.execute(statement)

    assert file_store.get(digest) == b"print('hello')\n"


# -- opening ---------------------------------------------------------------------------------


def test_opening_twice_keeps_the_schema_and_the_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as first:
        first.append("run-1", [START, task(1)], 0)
        first.put(b"blob")

    with SQLiteEventStore(path) as second:
        assert [r.data for r in second.read("run-1")] == [START, task(1)]
        assert second.verify("run-1").ok
        second.append("run-1", [task(2)], 2)
        triggers = second.connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
        ).fetchone()[0]
    assert triggers == 8  # UPDATE and DELETE on events, blobs, store_meta, repairs


def test_two_stores_may_hold_the_same_file_open(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as writer, SQLiteEventStore(path) as reader:
        writer.append("run-1", [START], 0)

        assert [r.data for r in reader.read("run-1")] == [START]
        with pytest.raises(ConcurrencyError):
            reader.append("run-1", [task(1)], 0)


def test_a_new_database_is_marked_as_ours(file_store: SQLiteEventStore) -> None:
    assert pragma(file_store, "application_id") == APPLICATION_ID
    assert pragma(file_store, "user_version") >= 1


def test_missing_parent_directories_are_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "events.db"
    with pytest.raises(EventStoreError, match="does not exist"):
        SQLiteEventStore(path)
    assert not (tmp_path / "a").exists()


def test_a_file_database_uses_wal(file_store: SQLiteEventStore) -> None:
    assert pragma(file_store, "journal_mode") == "wal"


@pytest.mark.parametrize(("setting", "value"), [("NORMAL", 1), ("FULL", 2)])
def test_synchronous_setting_is_applied(tmp_path: Path, setting: str, value: int) -> None:
    with SQLiteEventStore(tmp_path / "events.db", synchronous=setting) as store:
        assert pragma(store, "synchronous") == value


def test_synchronous_defaults_to_normal(file_store: SQLiteEventStore) -> None:
    assert pragma(file_store, "synchronous") == 1


def test_an_invalid_synchronous_value_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EventStoreError, match=r"synchronous.*'SOMETIMES'"):
        SQLiteEventStore(tmp_path / "events.db", synchronous="SOMETIMES")
    assert not (tmp_path / "events.db").exists()


@pytest.mark.parametrize(
    "garbage",
    [b"hello, this is not a database\n" * 200, b"\x00\xff" * 4096, b"not a db\n"],
    ids=["text", "binary", "short"],
)
def test_a_file_that_is_not_a_database_raises_store_corrupted(
    tmp_path: Path, garbage: bytes
) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(garbage)

    with pytest.raises(StoreCorrupted, match=r"events\.db.*not an SQLite file") as caught:
        SQLiteEventStore(path)

    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert path.read_bytes() == garbage  # opening must not touch a file that is not ours


def test_an_sqlite_file_made_by_something_else_raises_store_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.close()

    with pytest.raises(StoreCorrupted, match="not an autonomy event log"):
        SQLiteEventStore(path)

    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"notes"}


def test_an_sqlite_file_of_another_application_raises_store_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 42")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()

    with pytest.raises(StoreCorrupted, match="not an autonomy event log"):
        SQLiteEventStore(path)


def test_a_directory_as_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EventStoreError, match="directory"):
        SQLiteEventStore(tmp_path)


def test_a_full_disk_is_an_outage_that_loses_nothing(file_store: SQLiteEventStore) -> None:
    """SQLite's "database or disk is full" (here by ``max_page_count``): the append
    that did not fit is not written at all, the store says the log cannot be written
    now (``StoreUnavailable``, as for a server that is down: a run stops with the
    resume hint, a worker waits), and with room again the log goes on, intact."""
    file_store.append("r", [START], 0)
    connection = file_store.connection
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages + 2}")
    version = 1
    with pytest.raises(StoreUnavailable, match="the disk holding the log is full"):
        while True:
            file_store.append("r", [TaskAdded(task_id=f"t{version}", title="x" * 3000)], version)
            version += 1
    assert file_store.last_version("r") == version
    connection.execute("PRAGMA max_page_count = 1073741823")
    file_store.append("r", [TaskAdded(task_id="last", title="y")], version)
    assert file_store.verify("r").ok and file_store.last_version("r") == version + 1


def test_using_a_closed_store_is_an_event_store_error_not_corruption(tmp_path: Path) -> None:
    store = SQLiteEventStore(tmp_path / "events.db")
    store.append("run-1", [START], 0)
    store.close()

    with pytest.raises(EventStoreError) as caught:
        list(store.read("run-1"))

    assert not isinstance(caught.value, StoreCorrupted)
    assert "closed" in str(caught.value)


# -- tampering --------------------------------------------------------------------------------


def test_verify_reports_the_position_of_a_changed_row(file_store: SQLiteEventStore) -> None:
    file_store.append("run-1", [START, task(1)], 0)
    file_store.append("run-2", [START], 0)
    file_store.append("run-1", [task(2), task(3)], 2)
    victim = next(r for r in file_store.read_raw("run-1") if r.version == 3)
    conn = file_store.connection
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute(
        "UPDATE events SET data = json_set(data, '$.title', 'something else') WHERE position = ?",
        (victim.position,),
    )

    report = file_store.verify("run-1")

    assert not report.ok
    assert report.first_bad_position == victim.position
    assert report.first_bad_version == 3
    assert "changed" in report.problem
    assert file_store.verify("run-2").ok


def test_verify_reports_a_changed_time_or_causation(file_store: SQLiteEventStore) -> None:
    file_store.append("run-1", [START, task(1)], 0)
    conn = file_store.connection
    conn.execute("DROP TRIGGER events_append_only_update")
    conn.execute("UPDATE events SET causation = 1 WHERE version = 2")

    report = file_store.verify("run-1")

    assert (report.ok, report.first_bad_version) == (False, 2)


def test_verify_reports_a_gap_in_versions(file_store: SQLiteEventStore) -> None:
    file_store.append("run-1", [START, task(1), task(2), task(3)], 0)
    conn = file_store.connection
    conn.execute("DROP TRIGGER events_append_only_delete")
    conn.execute("DELETE FROM events WHERE run_id = 'run-1' AND version = 3")
    after_gap = next(r for r in file_store.read_raw("run-1") if r.version == 4)

    report = file_store.verify("run-1")

    assert not report.ok
    assert report.first_bad_position == after_gap.position
    assert report.first_bad_version == 4
    assert "gap" in report.problem


# -- real processes -----------------------------------------------------------------------------

_RACER = textwrap.dedent(
    """
    import sys
    from events import ConcurrencyError, SQLiteEventStore, TaskAdded

    path, name, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SQLiteEventStore(path, busy_timeout=20)
    print("ready", flush=True)
    sys.stdin.readline()  # both processes are open: go
    batch = [TaskAdded(task_id=f"{name}-{i}", title=name) for i in range(3)]
    try:
        store.append("run-1", batch, expected)
    except ConcurrencyError as e:
        print("conflict", e.actual, flush=True)
    else:
        print("won", flush=True)
    store.close()
    """
)


@pytest.mark.slow
def test_two_processes_appending_at_the_same_version_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as store:
        store.append("run-1", [START], 0)
    outputs, codes = _start_together(_RACER, path, "1", timeout=30)

    results = sorted(out.split()[0] for out, _ in outputs)
    assert results == ["conflict", "won"], outputs
    assert codes == [0, 0], [err for _, err in outputs]
    with SQLiteEventStore(path) as store:
        log = list(store.read("run-1"))
        assert [r.version for r in log] == [1, 2, 3, 4]
        writers = {r.data.task_id for r in log[1:]}
        assert len({w.split("-")[0] for w in writers}) == 1  # one writer's whole batch
        assert store.verify("run-1").ok
        positions = [r.position for r in store.read_all()]
        assert positions == sorted(set(positions))


_WORKER = textwrap.dedent(
    """
    import sys
    from events import ConcurrencyError, SQLiteEventStore, TaskAdded

    path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = SQLiteEventStore(path, busy_timeout=20)
    print("ready", flush=True)
    sys.stdin.readline()
    conflicts = 0
    for i in range(count):
        while True:
            try:
                store.append("run-1", [TaskAdded(task_id=f"{name}-{i}", title=name)],
                             store.last_version("run-1"))
                break
            except ConcurrencyError:
                conflicts += 1
    print("done", conflicts, flush=True)
    store.close()
    """
)


@pytest.mark.slow
def test_two_processes_retrying_on_conflict_leave_a_log_without_gaps(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as store:
        store.append("run-1", [START], 0)
    outputs, _ = _start_together(_WORKER, path, "40", timeout=60)

    assert [out.split()[0] for out, _ in outputs] == ["done", "done"], outputs
    with SQLiteEventStore(path) as store:
        log = list(store.read("run-1"))
        assert [r.version for r in log] == list(range(1, 82))
        ids = [r.data.task_id for r in log[1:]]
        assert sorted(ids) == sorted({f"{n}-{i}" for n in ("alpha", "beta") for i in range(40)})
        for name in ("alpha", "beta"):  # each writer's events keep their order
            mine = [int(i.split("-")[1]) for i in ids if i.startswith(name)]
            assert mine == list(range(40))
        assert store.verify("run-1").ok


def test_a_foreign_database_with_its_own_events_table_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "calendar.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, title TEXT)")
    conn.execute("INSERT INTO events (title) VALUES ('dentist')")
    conn.commit()
    conn.close()

    with pytest.raises(StoreCorrupted, match="not an autonomy event log"):
        SQLiteEventStore(path)

    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.execute("UPDATE events SET title = 'doctor'")  # no append-only trigger was added
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    conn.close()
    assert names == {"events"}
    assert application_id == 0


def _start_together(
    script: str, path: Path, count: str, *, timeout: float
) -> tuple[list[tuple[str, str]], list[int]]:
    """Run ``script`` in two processes ("alpha", "beta") that wait at a barrier until
    both are ready, then go at once; returns their (stdout, stderr) and exit codes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), name, count],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("alpha", "beta")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        outputs = [proc.communicate("go\n", timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    return outputs, [proc.returncode for proc in procs]


# -- reads hold nothing between chunks ------------------------------------------------------


@pytest.mark.parametrize("read", ["read", "read_raw", "read_payloads"])
def test_a_read_in_progress_does_not_stop_appends_after_another_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    # Each chunk is a query of its own. A statement left open between chunks would
    # pin this connection to an old snapshot, and its next append would fail as
    # "locked" once another connection had written.
    monkeypatch.setattr(events.store, "READ_CHUNK", 2)
    path = tmp_path / "log.db"
    with SQLiteEventStore(path) as mine, SQLiteEventStore(path) as theirs:
        mine.append("run-1", [START, *(task(n) for n in range(1, 6))], 0)
        reading = getattr(mine, read)("run-1")
        next(reading)

        theirs.append("run-1", [task(6)], 6)
        mine.append("run-1", [task(7)], 7)

        assert len(list(reading)) == 7, "the rest of the read sees both appends"


def test_a_log_locked_by_another_writer_is_unavailable_not_broken(tmp_path: Path) -> None:
    """A writer holding the lock longer than the busy timeout: the append says so as
    ``StoreUnavailable`` (nothing written, ask again: a service answers 503), not as a
    damaged log."""
    path = tmp_path / "events.db"
    with SQLiteEventStore(path, busy_timeout=0.05) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w", config={})], 0)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked by another writer"):
                store.append("r", [RunFinished(status="completed")], 1)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.last_version("r") == 1
        store.append("r", [RunFinished(status="completed")], 1)
        assert store.last_version("r") == 2


def test_a_copy_cut_off_half_way_is_finished_by_the_same_copy(tmp_path: Path) -> None:
    """Runs the target has row for row are skipped, so running the copy again after a
    kill copies what is left; a run the target has with other events is refused, and
    then nothing is copied."""
    from engine.runs.copy import copy_runs, describe

    with SQLiteEventStore(tmp_path / "source.db") as source:
        for run_id in ("a", "b"):
            source.append(run_id, [START, task(1)], 0)
        with SQLiteEventStore(tmp_path / "target.db") as target:
            copy_runs(source, target, ["a"])  # then the copy of every run was killed
            lines = describe(copy_runs(source, target))
            assert lines[0] == "a: already in the target, the same 2 events; skipped"
            assert lines[1].startswith("copied b: 2 events")
            assert describe(copy_runs(source, target))[1].endswith("skipped")
        with SQLiteEventStore(tmp_path / "other.db") as other:
            other.append("a", [task(9)], 0)
            with pytest.raises(EventStoreError, match=r"already has run\(s\) a, with other"):
                copy_runs(source, other)
            assert other.last_version("b") == 0 and other.last_version("a") == 1


def test_a_run_copied_while_it_was_written_is_brought_up_to_date(tmp_path: Path) -> None:
    """A copy made while the run went on held its first events; the copy given again
    once it ended was refused ("the target already has run(s) a, with other events"),
    and the target's run could never get the rest."""
    from engine.runs.copy import copy_runs, describe

    with (
        SQLiteEventStore(tmp_path / "source.db") as source,
        SQLiteEventStore(tmp_path / "target.db") as target,
    ):
        source.append("a", [START, task(1)], 0)
        (line,) = describe(copy_runs(source, target))
        assert line.startswith("copied a: 2 events, 0 blobs, verified (it was running")
        source.append("a", [task(2), task(3)], 2)
        (line,) = describe(copy_runs(source, target))
        assert line.startswith("copied a: 2 events after the 2 the target had")
        assert list(target.read_raw("a")) != [] and [r.hash for r in target.read_raw("a")] == [
            r.hash for r in source.read_raw("a")
        ]
        assert target.verify("a").ok
        target.append("a", [task(4)], 4)  # the target's own event: then no copy of it
        with pytest.raises(EventStoreError, match="with other events"):
            copy_runs(source, target)


def test_a_copy_of_every_run_names_the_run_it_cannot_read(tmp_path: Path) -> None:
    """One event written by hand (its data not an event's) made a copy of every run
    fail with the bare decode error, naming no run."""
    from engine.runs.copy import copy_runs

    with SQLiteEventStore(tmp_path / "source.db") as source:
        source.append("a", [START], 0)
        source.connection.execute(
            "INSERT INTO events VALUES (2, 'forged', 1, 'run.started', 1,"
            " '2026-01-01T00:00:00Z', NULL, 'h', '{\"type\": \"run.started\"}')"
        )
        with SQLiteEventStore(tmp_path / "target.db") as target:
            with pytest.raises(EventStoreError, match=r"run 'forged' cannot be copied: .*goal"):
                copy_runs(source, target)
            assert target.last_version("a") == 0, "nothing was copied"
            copy_runs(source, target, ["a"])  # named, the others are copied
            assert target.last_version("a") == 1


def test_a_run_whose_blobs_are_missing_is_not_copied_as_verified(tmp_path: Path) -> None:
    """A source run referring to a blob the source lacks (deleted, or never stored)
    was copied without it and said "verified"; the copy then failed verify on the
    target as on the source. Nothing is copied now, and the message says why."""
    from engine.runs.copy import copy_runs
    from events import FileChange, ToolExecuted

    gone = "ab" * 32
    with SQLiteEventStore(tmp_path / "source.db") as source:
        source.append("a", [START], 0)
        change = FileChange(path="calc.py", after=gone, size=3)
        source.append("b", [START, ToolExecuted(call_id="b/t2", tool="create_file", ok=True,
                                                files_changed=(change,))], 0)  # fmt: skip
        with SQLiteEventStore(tmp_path / "target.db") as target:
            with pytest.raises(StoreCorrupted, match=f"run b refers to 1 blob.*{gone}.*nothing"):
                copy_runs(source, target)
            assert target.last_version("a") == 0 and target.last_version("b") == 0
            copy_runs(source, target, ["a"])  # named, the others are copied
            assert target.last_version("a") == 1


def test_two_copies_into_one_target_at_once_both_end_well(tmp_path: Path) -> None:
    """The copy that lost the race to write a run (the other wrote it between this
    one's look at the target and its write) failed: "run 'a': expected version 0 but
    the log is at 2; nothing was written". It now looks again: the same rows are the
    same run, skipped; the rows the other copy lacked (it read the run earlier) are
    added after them; rows of another run of that name are still refused."""
    from engine.runs.copy import copy_runs, describe

    with (
        SQLiteEventStore(tmp_path / "source.db") as source,
        SQLiteEventStore(tmp_path / "target.db") as target,
        SQLiteEventStore(tmp_path / "target.db") as theirs,
    ):
        meanwhile: list[Any] = []
        put_many = target.put_many

        def racing(blobs: Any) -> None:  # the other copy writes just before this one
            while meanwhile:
                meanwhile.pop()()
            put_many(blobs)

        target.put_many = racing  # type: ignore[method-assign]
        source.append("a", [START, task(1)], 0)
        meanwhile.append(lambda: copy_runs(source, theirs))
        assert describe(copy_runs(source, target)) == [
            "a: already in the target, the same 2 events; skipped"
        ]
        source.append("b", [START, task(1), task(2)], 0)
        rows = list(source.read_raw("b"))
        meanwhile.append(lambda: theirs.import_run("b", rows[:2], after=0))
        assert describe(copy_runs(source, target, ["b"]))[0].startswith(
            "copied b: 1 events after the 2 the target had"
        )
        assert [r.hash for r in target.read_raw("b")] == [r.hash for r in rows]
        assert target.verify("a").ok and target.verify("b").ok
        source.append("c", [START], 0)
        meanwhile.append(lambda: theirs.append("c", [task(7)], 0))  # no copy of it
        with pytest.raises(EventStoreError, match="got run c meanwhile, with other events"):
            copy_runs(source, target, ["c"])
        assert target.last_version("c") == 1


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_append_to_a_log_removed_under_it_fails(tmp_path: Path, how: str) -> None:
    """SQLite writes on into a deleted or moved file: a run whose log's directory was
    removed mid-run completed, exit 0, and every event of it was gone."""
    from events import RunStarted, TaskAdded
    from events.errors import EventStoreError

    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        if how == "replaced":
            SQLiteEventStore(db).close()  # another log at the same path
        with pytest.raises(EventStoreError, match="was removed or replaced while this process"):
            store.append("r", [TaskAdded(task_id="t", title="x")], 1)


WAL_REMOVED_UNDER_A_WRITER = textwrap.dedent(
    """
    import os, sys
    from events import RunStarted, SQLiteEventStore, TaskAdded
    from events.errors import EventStoreError
    store = SQLiteEventStore(sys.argv[1])
    store.connection.execute("PRAGMA wal_autocheckpoint = 0")  # all in the -wal
    store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
    store.append("r", [TaskAdded(task_id=f"t{i}", title="x") for i in range(5)], 1)
    os.remove(sys.argv[1] + "-wal")
    if sys.argv[2] == "waits":
        print("removed", flush=True)
        sys.stdin.readline()  # the other process opens the log meanwhile
    try:
        store.append("r", [TaskAdded(task_id="late", title="x")], 6)
    except EventStoreError as e:
        print("refused:", e, flush=True)
    if sys.argv[2] == "killed":
        os._exit(9)  # killed: nothing closes the log
    store.close()
    """
)


def test_a_log_whose_wal_is_removed_under_a_writer_loses_nothing_written(tmp_path: Path) -> None:
    """SQLite wrote on into the removed ``-wal``: readers saw none of the run, and a
    kill then lost every event not yet copied into the log, those written before the
    removal too ("events.db is an empty database"). The next append copies what the
    removed file holds into the log and refuses, as for the log itself removed."""
    db = tmp_path / "events.db"
    done = subprocess.run(
        [sys.executable, "-c", WAL_REMOVED_UNDER_A_WRITER, str(db), "killed"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 9, done.stderr
    assert "refused: the log's write-ahead file" in done.stdout, done.stdout
    assert "what it held was copied into the log" in done.stdout
    with SQLiteEventStore(db) as store:
        assert store.last_version("r") == 6
        assert store.verify("r").ok


def test_a_log_opened_while_its_wal_is_removed_under_a_writer_says_so(tmp_path: Path) -> None:
    """A second process opening the log was told "disk I/O error: a disk failing or
    full, or the file or its file system made read-only?": SQLite's words for a
    ``-shm`` whose ``-wal`` is gone. It is told what happened, and once the writer has
    copied what the removed file held into the log, the log opens with all of it."""
    from click.testing import CliRunner

    from engine.cli import cli

    db = tmp_path / "events.db"
    with subprocess.Popen(
        [sys.executable, "-c", WAL_REMOVED_UNDER_A_WRITER, str(db), "waits"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        assert writer.stdout.readline() == "removed\n"
        with pytest.raises(StoreUnavailable) as opened:
            SQLiteEventStore(db)
        read_only = CliRunner().invoke(cli, ["runs", "--db", str(db)])
        writer.stdin.write("\n")
        writer.stdin.close()
        said = writer.stdout.read()
        assert writer.wait(timeout=60) == 0
    assert "events.db-wal file is gone or empty while its events.db-shm is there" in str(
        opened.value
    )
    assert "disk failing" not in str(opened.value)
    assert read_only.exit_code == 1 and "events.db-wal file is gone" in read_only.output
    assert "what it held was copied into the log" in said, said
    with SQLiteEventStore(db) as store:
        assert store.last_version("r") == 6
        assert store.verify("r").ok


def test_a_fork_is_copied_with_the_runs_it_was_forked_from(tmp_path: Path) -> None:
    """A fork copied alone said "verified", and the target's verify then failed: "its
    state cannot be rebuilt: no run 'parent' in this log"."""
    from engine.runs.copy import copy_runs, describe
    from engine.runs.verification import verify_log
    from events import RunForked

    with (
        SQLiteEventStore(tmp_path / "source.db") as source,
        SQLiteEventStore(tmp_path / "target.db") as target,
    ):
        source.append("parent", [START, task(1)], 0)
        source.append("child", [RunForked(parent_run="parent", at_version=2, workspace="/f")], 0)
        source.append(
            "grandchild", [RunForked(parent_run="child", at_version=1, workspace="/g")], 0
        )
        lines = describe(copy_runs(source, target, ["grandchild"]))
        assert [line.split(":")[0] for line in lines] == [
            "copied parent",
            "copied child",
            "copied grandchild",
        ]
        assert verify_log(target).ok


def test_a_run_whose_data_is_stored_as_bytes_is_refused_by_a_copy(tmp_path: Path) -> None:
    """An event's data edited into a BLOB ended `autonomy copy` in a TypeError (its
    blob references were looked for in bytes) before the copy's verification."""
    from engine.runs.copy import copy_runs

    with SQLiteEventStore(tmp_path / "source.db") as source:
        source.append("r", [START, task(1)], 0)
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("DROP TRIGGER events_append_only_update")
        conn.execute("UPDATE events SET data = CAST(data AS BLOB) WHERE version = 2")
    with (
        SQLiteEventStore(tmp_path / "source.db") as source,
        SQLiteEventStore(tmp_path / "target.db") as target,
    ):
        with pytest.raises(
            StoreCorrupted, match=r"version 2: its data is bytes.*nothing was copied"
        ):
            copy_runs(source, target)
        assert target.last_version("r") == 0


def test_a_device_or_fifo_as_the_log_is_refused_and_nothing_made_beside_it(
    tmp_path: Path,
) -> None:
    """``--db /dev/null`` said "cannot rollback - no transaction is active" and SQLite
    left ``/dev/null-journal`` behind; a FIFO was "disk I/O error"."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    journal = Path("/dev/null-journal")
    had_journal = journal.exists()
    for target in (Path("/dev/null"), fifo):
        for read_only in (False, True):
            with pytest.raises(StoreCorrupted, match="a device or a FIFO, not a database file"):
                SQLiteEventStore(target, read_only=read_only)
    assert journal.exists() == had_journal
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_log_under_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "text.db").write_text("x")
    with pytest.raises(EventStoreError, match=r"text\.db is a file, not a directory"):
        SQLiteEventStore(tmp_path / "text.db" / "x.db")


@pytest.mark.parametrize(
    ("code", "text"),
    [(778, "disk I/O error"), (8, "attempt to write a readonly database")],
    ids=["ioerr-write", "readonly"],
)
def test_a_file_system_failing_under_the_log_is_an_outage_not_a_mistake(
    code: int, text: str
) -> None:
    """A log made unwritable mid-run for another reason than a full disk (a file
    system remounted read-only, a failing disk, ``chattr +i``) ended the run with a
    bare "disk I/O error", nothing said of what was kept or how to go on; it is
    now the log not taking writes now, as a full disk is (the run is cut off, and
    resumed once the file can be used)."""
    error = sqlite3.OperationalError(text)
    error.sqlite_errorcode = code  # type: ignore[attr-defined]
    translated = events.sqlite._translated(error, "appending to run 'r'")
    assert isinstance(translated, StoreUnavailable)
    assert str(translated).startswith(
        f"appending to run 'r': the log's file cannot be used now ({text}"
    )


@pytest.mark.parametrize("read_only", [False, True])
def test_a_schema_with_a_byte_that_is_not_utf8_is_store_corrupted(
    tmp_path: Path, read_only: bool
) -> None:
    """SQLite's error about a damaged schema quotes its bytes: the driver's decoding
    of it was a UnicodeDecodeError, and every command a traceback."""
    path = tmp_path / "events.db"
    with SQLiteEventStore(path):
        pass
    data = bytearray(path.read_bytes())
    trigger = data.find(b"CREATE TRIGGER")
    data[trigger + 8] = 0x88  # CREATE T\x88IGGER
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupted, match="the database is corrupt: SQLite answered with"):
        SQLiteEventStore(path, read_only=read_only)


def test_verify_reports_rows_whose_positions_were_swapped(tmp_path: Path) -> None:
    """The chain leaves positions out (a copy renumbers them): two events of a run
    swapped in the log's order verified ok."""
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as store:
        store.append(
            "r",
            [
                RunStarted(goal="g", workspace="/w"),
                *[TaskAdded(task_id=f"t{i}", title="x") for i in (1, 2)],
            ],
            0,
        )
    conn = sqlite3.connect(path)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    for sql in ("-2 WHERE version = 2", "2 WHERE version = 3", "3 WHERE position = -2"):
        conn.execute(f"UPDATE events SET position = {sql}")
    conn.commit()
    conn.close()
    with SQLiteEventStore(path) as store:
        report = store.verify("r")
    assert not report.ok
    assert report.problem == "at position 2, not after the previous event's 3: the rows were moved"


class _StopAfterBegin:
    """A connection on which a stop (a Ctrl-C's ``KeyboardInterrupt``) lands just
    after the first ``BEGIN IMMEDIATE`` returns, as a signal's handler can."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.fired = False

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        cursor = self.connection.execute(sql, *args)
        if sql == "BEGIN IMMEDIATE" and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)


@pytest.mark.parametrize("write", ["append", "blobs", "summaries"])
def test_a_stop_just_after_a_transaction_begins_leaves_none_open(
    tmp_path: Path, write: str
) -> None:
    """A SIGTERM landing between ``BEGIN IMMEDIATE`` and the ``try`` that ends it
    left the transaction open: recording the stop failed ("cannot start a
    transaction within a transaction", exit 1) and the run stayed "running"."""
    with SQLiteEventStore(tmp_path / "events.db") as store:
        store.append("r", [START], 0)
        position = store.summary_position() or 0
        writes = {
            "append": lambda: store.append("r", [task(1)], 1),
            "blobs": lambda: store.put_many([b"one", b"two"]),
            "summaries": lambda: store.save_summaries(position, position, []),
        }
        store._conn = _StopAfterBegin(store._conn)  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            writes[write]()
        assert not store._conn.in_transaction
        store.append("r", [RunFinished(status="stopped")], 1)  # the stop, recorded
        assert store.last_version("r") == 2
