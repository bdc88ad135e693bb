"""The event store contract, written once and run against every backend.

``StoreContract`` holds the tests; each backend subclasses it in a few lines and
says how to open a fresh store. A new backend (PostgreSQL) adds one subclass.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

import events.memory
import events.sqlite
import events.store
from events import (
    BlobNotFound,
    ConcurrencyError,
    EventStore,
    MemoryEventStore,
    PhaseChanged,
    RecordedEvent,
    RunFinished,
    RunStarted,
    SQLiteEventStore,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
)
from events.codec import chain_hash, encode
from events.errors import LeaseHeld, SchemaError, StoreCorrupted
from events.postgres import PostgresEventStore
from events.schema import Event, FileChange
from events.store import Clock
from events.strategies import any_event

START = RunStarted(goal="write a todo app", workspace="/work/todo", config={"steps": 40})


def task(n: int) -> TaskAdded:
    return TaskAdded(task_id=f"t{n}", title=f"task {n}", target_file=f"src/m{n}.py", priority=n)


def versions(recorded: list[RecordedEvent]) -> list[int]:
    return [r.version for r in recorded]


class StoreContract(ABC):
    """What every ``EventStore`` must do. Subclasses implement ``open_store``."""

    @abstractmethod
    def open_store(self, clock: Clock) -> EventStore: ...

    @pytest.fixture(autouse=True)
    def _fresh_store(
        self, request: pytest.FixtureRequest, tmp_path: Path, make_clock: Callable[[], Any]
    ) -> Iterator[None]:
        self.request = request
        self.tmp_path = tmp_path
        self.make_clock = make_clock
        self.clock = make_clock()
        self.store = self.open_store(self.clock)
        yield
        self.store.close()

    # -- append and read ---------------------------------------------------------------

    def test_appended_events_read_back_equal(self) -> None:
        events: list[Event] = [START, task(1), TaskUpdated(task_id="t1", status="in_progress")]
        self.store.append("run-1", events, 0)

        read = list(self.store.read("run-1"))

        assert [r.data for r in read] == events
        assert [r.type for r in read] == ["run.started", "task.added", "task.updated"]
        assert {r.run_id for r in read} == {"run-1"}
        assert [r.schema_version for r in read] == [e.schema_version for e in events]

    def test_append_returns_what_read_returns(self) -> None:
        appended = self.store.append("run-1", [START, task(1)], 0)
        appended += self.store.append("run-1", [task(2)], 2)

        assert appended == list(self.store.read("run-1"))

    def test_versions_count_from_one_without_gaps(self) -> None:
        self.store.append("run-1", [START], 0)
        self.store.append("run-1", [task(1), task(2), task(3)], 1)
        self.store.append("run-1", [task(4)], 4)

        assert versions(list(self.store.read("run-1"))) == [1, 2, 3, 4, 5]
        assert self.store.last_version("run-1") == 5

    def test_each_run_has_its_own_versions(self) -> None:
        self.store.append("run-a", [START, task(1)], 0)
        self.store.append("run-b", [START], 0)

        assert versions(list(self.store.read("run-a"))) == [1, 2]
        assert versions(list(self.store.read("run-b"))) == [1]

    def test_positions_strictly_increase_across_interleaved_runs(self) -> None:
        self.store.append("run-a", [START], 0)
        self.store.append("run-b", [START, task(1)], 0)
        self.store.append("run-a", [task(2)], 1)
        self.store.append("run-b", [task(3)], 2)

        positions = [r.position for r in self.store.read_all()]
        assert positions == sorted(set(positions))
        assert len(positions) == 5
        run_a = [r.position for r in self.store.read("run-a")]
        assert run_a[0] < run_a[1]

    def test_read_of_an_unknown_run_is_empty(self) -> None:
        self.store.append("run-1", [START], 0)

        assert list(self.store.read("no-such-run")) == []
        assert self.store.last_version("no-such-run") == 0

    def test_empty_append_is_a_no_op(self) -> None:
        self.store.append("run-1", [START], 0)

        assert self.store.append("run-1", [], 1) == []
        assert self.store.append("run-2", [], 0) == []

        assert self.store.last_version("run-1") == 1
        assert [r.run_id for r in self.store.runs()] == ["run-1"]
        later = self.store.append("run-1", [task(1)], 1)
        assert later[0].position == 2  # the empty append took no position

    # -- optimistic concurrency -------------------------------------------------------------

    def test_stale_expected_version_raises_and_writes_nothing(self) -> None:
        self.store.append("run-1", [START, task(1)], 0)
        before = list(self.store.read_all())

        with pytest.raises(ConcurrencyError) as caught:
            self.store.append("run-1", [task(2)], 1)

        assert (caught.value.run_id, caught.value.expected, caught.value.actual) == ("run-1", 1, 2)
        assert list(self.store.read_all()) == before

    def test_expected_version_ahead_of_the_log_raises(self) -> None:
        self.store.append("run-1", [START], 0)

        with pytest.raises(ConcurrencyError):
            self.store.append("run-1", [task(1)], 5)
        with pytest.raises(ConcurrencyError):
            self.store.append("new-run", [START], 1)

        assert self.store.last_version("run-1") == 1
        assert self.store.last_version("new-run") == 0

    def test_a_conflicting_batch_writes_none_of_its_events(self) -> None:
        self.store.append("run-1", [START], 0)
        self.store.append("run-1", [task(1)], 1)  # another writer got there first

        with pytest.raises(ConcurrencyError):
            self.store.append("run-1", [task(2), task(3), task(4)], 1)

        assert [r.data for r in self.store.read("run-1")] == [START, task(1)]
        assert len(list(self.store.read_all())) == 2

    def test_the_store_accepts_appends_after_a_conflict(self) -> None:
        self.store.append("run-1", [START], 0)
        with pytest.raises(ConcurrencyError):
            self.store.append("run-1", [task(1)], 0)

        recorded = self.store.append("run-1", [task(1)], 1)

        assert versions(recorded) == [2]
        assert self.store.verify("run-1").ok

    # -- read windows --------------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("after", "upto", "expected"),
        [
            (0, None, [1, 2, 3, 4, 5]),
            (2, None, [3, 4, 5]),
            (0, 3, [1, 2, 3]),
            (1, 4, [2, 3, 4]),
            (3, 3, []),
            (4, 2, []),
            (5, None, []),
            (0, 99, [1, 2, 3, 4, 5]),
            (0, 0, []),
            (0, -1, []),
            (-3, 2, [1, 2]),
            # beyond a 64-bit integer (a version typed by a person): none after, all before
            (10**30, None, []),
            (0, 10**30, [1, 2, 3, 4, 5]),
            (-(10**30), 2, [1, 2]),
        ],
    )
    def test_read_returns_versions_after_and_up_to(
        self, after: int, upto: int | None, expected: list[int]
    ) -> None:
        self.store.append("run-1", [START, task(1), task(2), task(3), task(4)], 0)

        assert versions(list(self.store.read("run-1", after=after, upto=upto))) == expected

    def test_read_all_after_a_position(self) -> None:
        self.store.append("run-a", [START, task(1)], 0)
        self.store.append("run-b", [START], 0)
        self.store.append("run-a", [task(2)], 2)
        everything = list(self.store.read_all())

        after_two = list(self.store.read_all(after_position=everything[1].position))

        assert after_two == everything[2:]
        assert list(self.store.read_all(after_position=everything[-1].position)) == []
        assert list(self.store.read_all(after_position=10**30)) == []
        assert list(self.store.read_all(after_position=-(10**30))) == everything
        assert self.store.runs_after(10**30) == []

    def test_read_all_filters_by_type(self) -> None:
        self.store.append("run-a", [START, task(1), TaskUpdated(task_id="t1", status="done")], 0)
        self.store.append("run-b", [START, task(2)], 0)

        added = list(self.store.read_all(types=["task.added"]))
        started_or_updated = list(self.store.read_all(types={"run.started", "task.updated"}))

        assert [(r.run_id, r.data) for r in added] == [("run-a", task(1)), ("run-b", task(2))]
        assert [r.type for r in started_or_updated] == [
            "run.started",
            "task.updated",
            "run.started",
        ]
        assert list(self.store.read_all(types=[])) == []
        assert list(self.store.read_all(types=["no.such.type"])) == []

    def test_read_all_limit_counts_only_matching_events(self) -> None:
        self.store.append("run-a", [START, task(1), task(2), task(3)], 0)

        limited = list(self.store.read_all(types=["task.added"], limit=2))
        first = list(self.store.read_all(limit=1))

        assert [r.data for r in limited] == [task(1), task(2)]
        assert [r.data for r in first] == [START]
        assert list(self.store.read_all(limit=0)) == []

    def test_read_all_combines_position_types_and_limit(self) -> None:
        self.store.append("run-a", [START, task(1), task(2)], 0)
        self.store.append("run-b", [START, task(3), task(4)], 0)
        after = list(self.store.read_all())[1].position  # run-a's task(1)

        page = list(self.store.read_all(after_position=after, types=["task.added"], limit=2))

        assert [r.data for r in page] == [task(2), task(3)]

    def test_reads_span_several_fetch_chunks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(events.store, "READ_CHUNK", 2)
        self.store.append("run-a", [START, *(task(n) for n in range(1, 7))], 0)
        self.store.append("run-b", [START, task(9)], 0)

        assert versions(list(self.store.read("run-a"))) == [1, 2, 3, 4, 5, 6, 7]
        assert versions(list(self.store.read("run-a", after=1, upto=6))) == [2, 3, 4, 5, 6]
        assert len(list(self.store.read_all())) == 9
        assert len(list(self.store.read_all(limit=5))) == 5
        added = list(self.store.read_all(types=["task.added"], limit=7))
        assert [r.data for r in added] == [*(task(n) for n in range(1, 7)), task(9)]

    @pytest.mark.parametrize(("after", "upto"), [(0, None), (2, 5), (0, 0), (6, None)])
    def test_payloads_are_the_rows_version_type_schema_version_and_data(
        self, monkeypatch: pytest.MonkeyPatch, after: int, upto: int | None
    ) -> None:
        monkeypatch.setattr(events.store, "READ_CHUNK", 2)
        self.store.append("run-a", [START, *(task(n) for n in range(1, 7))], 0)
        self.store.append("run-b", [START, task(9)], 0)

        payloads = list(self.store.read_payloads("run-a", after=after, upto=upto))

        rows = self.store.read_raw("run-a", after=after, upto=upto)
        assert payloads == [(r.version, r.type, r.schema_version, r.data) for r in rows]
        assert list(self.store.read_payloads("nobody")) == []

    @pytest.mark.parametrize("upto", [None, 5, 0])
    def test_a_brief_read_is_the_read_but_for_position_time_and_hash(
        self, monkeypatch: pytest.MonkeyPatch, upto: int | None
    ) -> None:
        monkeypatch.setattr(events.store, "READ_CHUNK", 2)
        self.store.append("run-a", [START, task(1)], 0)
        self.store.append("run-a", [*(task(n) for n in range(2, 7))], 2, causation=2)
        self.store.append("run-b", [START, task(9)], 0)

        def brief(r: RecordedEvent) -> tuple[object, ...]:
            return (r.run_id, r.version, r.type, r.schema_version, r.causation, r.data)

        read = [brief(r) for r in self.store.read("run-a", upto=upto)]
        assert [brief(r) for r in self.store.read_brief("run-a", upto=upto)] == read
        assert len(read) == (7 if upto is None else upto)
        assert list(self.store.read_brief("nobody")) == []

    # -- runs ------------------------------------------------------------------------------------

    def test_runs_lists_each_run_in_order_of_first_appearance(self) -> None:
        self.store.append("run-b", [START], 0)
        self.store.append("run-a", [START, task(1)], 0)
        self.store.append("run-b", [task(2), task(3)], 1)
        log = list(self.store.read_all())

        runs = self.store.runs()

        assert [(r.run_id, r.version) for r in runs] == [("run-b", 3), ("run-a", 2)]
        run_b = runs[0]
        b_rows = [r for r in log if r.run_id == "run-b"]
        assert (run_b.first_position, run_b.last_position) == (
            b_rows[0].position,
            b_rows[-1].position,
        )
        assert (run_b.started_at, run_b.last_at) == (b_rows[0].recorded_at, b_rows[-1].recorded_at)

    def test_runs_of_an_empty_store_is_empty(self) -> None:
        assert self.store.runs() == []

    # -- envelope ------------------------------------------------------------------------------------

    def test_causation_is_stored_with_each_event_of_the_batch(self) -> None:
        self.store.append("run-1", [START], 0)
        self.store.append(
            "run-1",
            [ToolRequested(call_id="c1", tool="write_file"), ToolExecuted(call_id="c1", ok=True)],
            1,
            causation=1,
        )

        assert [r.causation for r in self.store.read("run-1")] == [None, 1, 1]

    def test_recorded_at_comes_from_the_injected_clock(self) -> None:
        self.store.append("run-1", [START], 0)
        self.store.append("run-1", [task(1), task(2)], 1)

        assert [r.recorded_at for r in self.store.read("run-1")] == [
            "2025-03-14T15:09:26.535897Z",
            "2025-03-14T15:09:26.536897Z",
            "2025-03-14T15:09:26.536897Z",  # one batch, one moment
        ]
        assert self.clock.calls == 2

    def test_recorded_at_is_utc_whatever_the_clock_zone(self) -> None:
        paris = timezone(timedelta(hours=1))
        store = self.open_store(lambda: datetime(2025, 1, 1, 13, 0, tzinfo=paris))
        try:
            store.append("run-1", [START], 0)
            assert next(store.read("run-1")).recorded_at == "2025-01-01T12:00:00.000000Z"
        finally:
            store.close()

    def test_recorded_events_carry_a_sha256_hash_chain(self) -> None:
        recorded = self.store.append("run-1", [START, task(1), task(2)], 0)

        hashes = [r.hash for r in recorded]
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
        assert len(set(hashes)) == 3

    def test_equal_input_gives_equal_hashes_in_every_backend(self) -> None:
        reference = MemoryEventStore(clock=self.make_clock())
        events: list[Event] = [
            START,
            task(1),
            PhaseChanged(trigger="plan", from_phase="start", to_phase="planning"),
        ]

        ours = self.store.append("run-1", events, 0)
        theirs = reference.append("run-1", events, 0)

        assert [r.hash for r in ours] == [r.hash for r in theirs]

    # -- blobs -----------------------------------------------------------------------------------------

    def test_put_returns_the_sha256_and_get_returns_the_content(self) -> None:
        content = b"def main() -> None:\n    print('hello')\n"

        digest = self.store.put(content)

        assert digest == hashlib.sha256(content).hexdigest()
        assert self.store.get(digest) == content
        assert self.store.has_blob(digest)

    def test_put_is_idempotent(self) -> None:
        first = self.store.put(b"same bytes")
        second = self.store.put(b"same bytes")

        assert first == second
        assert self.store.get(first) == b"same bytes"

    def test_put_many_stores_each_once_and_returns_digests_in_order(self) -> None:
        existing = self.store.put(b"b")
        digests = self.store.put_many([b"a", b"b", b"a", b""])

        assert digests[1] == existing and digests[0] == digests[2]
        assert [self.store.get(d) for d in digests] == [b"a", b"b", b"a", b""]

    def test_a_lease_is_exclusive_per_run_and_ends_with_its_context(self) -> None:
        with self.store.lease("r", "first owner"):
            with pytest.raises(LeaseHeld, match="first owner"), self.store.lease("r", "second"):
                pass
            with self.store.lease("another run", "second"):
                pass
        with self.store.lease("r", "second"):
            pass

    def test_empty_content_is_a_blob_too(self) -> None:
        digest = self.store.put(b"")

        assert self.store.get(digest) == b""
        assert self.store.has_blob(digest)

    def test_unknown_blob_raises_blob_not_found(self) -> None:
        missing = "0" * 64

        assert not self.store.has_blob(missing)
        with pytest.raises(BlobNotFound, match=missing):
            self.store.get(missing)

    # -- integrity -------------------------------------------------------------------------------------

    def test_verify_accepts_an_untouched_run(self) -> None:
        self.store.append("run-1", [START, task(1)], 0)
        self.store.append("run-2", [START], 0)
        self.store.append("run-1", [RunFinished(status="completed")], 2)

        report = self.store.verify("run-1")

        assert report.ok
        assert report.checked == 3
        assert report.first_bad_position is None

    def test_verify_recomputes_the_chain_from_the_rows(self) -> None:
        self.store.append("run-1", [START, task(1)], 0)
        rows = list(self.store.read_raw("run-1"))

        assert rows[1].hash == chain_hash(
            rows[0].hash,
            run_id=rows[1].run_id,
            version=rows[1].version,
            type=rows[1].type,
            schema_version=rows[1].schema_version,
            recorded_at=rows[1].recorded_at,
            causation=rows[1].causation,
            data=rows[1].data,
        )

    # -- copying runs between logs ------------------------------------------------------------

    def test_an_imported_run_keeps_its_rows_and_chain_at_new_positions(self) -> None:
        source = MemoryEventStore(clock=self.make_clock())
        source.append("r", [START, task(1)], 0)
        source.append("r", [ToolRequested(call_id="c", tool="t")], 2, causation=2)
        self.store.append("mine", [START], 0)

        self.store.import_run("r", list(source.read_raw("r")))

        copied = list(self.store.read_raw("r"))
        strip = [msgspec.structs.replace(row, position=0) for row in copied]
        assert strip == [msgspec.structs.replace(row, position=0) for row in source.read_raw("r")]
        assert [row.position for row in copied] == [2, 3, 4]
        assert self.store.verify("r").ok and self.store.last_version("r") == 3
        self.store.append("r", [task(2)], 3)
        assert self.store.verify("r").ok

    def test_an_import_refuses_a_broken_chain_and_a_run_the_log_has(self) -> None:
        source = MemoryEventStore(clock=self.make_clock())
        source.append("r", [START, task(1)], 0)
        rows = list(source.read_raw("r"))
        self.store.append("mine", [START], 0)

        tampered = [rows[0], msgspec.structs.replace(rows[1], data=rows[1].data.replace("1", "2"))]
        with pytest.raises(StoreCorrupted, match="version 2"):
            self.store.import_run("r", tampered)
        with pytest.raises(StoreCorrupted, match="version 1"):
            self.store.import_run("renamed", rows)  # the chain covers the run id
        self.store.import_run("r", rows)
        with pytest.raises(ConcurrencyError):
            self.store.import_run("r", rows)

        assert [(r.run_id, r.version) for r in self.store.runs()] == [("mine", 1), ("r", 2)]

    def test_a_wait_for_an_append_answers_at_once_or_after_its_timeout(self) -> None:
        self.store.append("r", [START, task(1)], 0)

        assert self.store.wait_for_append("r", 1, timeout=30)
        assert not self.store.wait_for_append("r", 2, timeout=0.01)
        assert not self.store.wait_for_append("other", 0, timeout=0)

    def test_payloads_with_nested_values_survive_the_store(self) -> None:
        executed = ToolExecuted(
            call_id="c7",
            tool="write_file",
            ok=True,
            result="wrote 2 files",
            files_changed=(
                FileChange(path="src/app.py", before=None, after="ab" * 32, size=120),
                FileChange(path="README.md", before="cd" * 32, after="ef" * 32, size=980),
            ),
        )
        self.store.append("run-1", [START, executed], 0)

        assert [r.data for r in self.store.read("run-1")] == [START, executed]

    # -- the run summaries' table (a derived table the store keeps, never reads) ----------

    def test_runs_after_a_position_describe_only_the_later_events(self) -> None:
        self.store.append("run-a", [START, task(1)], 0)
        self.store.append("run-b", [START], 0)
        self.store.append("run-a", [task(2)], 2)

        later = self.store.runs_after(2)

        assert [(i.run_id, i.version, i.first_position, i.last_position) for i in later] == [
            ("run-b", 1, 3, 3),
            ("run-a", 3, 4, 4),
        ]
        assert self.store.runs_after(4) == []
        assert self.store.runs_after(0) == self.store.runs()

    def test_summaries_move_only_from_the_position_expected(self) -> None:
        assert self.store.summary_position() == 0
        assert self.store.save_summaries(0, 5, [("a", 3, 5, "{}"), ("b", 1, 2, "[]")])

        # another writer caught up first: nothing is written
        assert not self.store.save_summaries(0, 9, [("a", 9, 9, "stale")])
        assert self.store.summary_position() == 5
        assert sorted(self.store.summary_rows()) == [("a", 3, 5, "{}"), ("b", 1, 2, "[]")]

        assert self.store.save_summaries(5, 7, [("a", 4, 7, '{"x": 1}')])
        assert self.store.summary_rows(["a"]) == [("a", 4, 7, '{"x": 1}')]
        assert self.store.summary_rows(["nobody"]) == []

    def test_a_rebuild_of_the_summaries_replaces_every_row_whatever_the_position(self) -> None:
        self.store.save_summaries(0, 5, [("a", 3, 5, "{}"), ("gone", 1, 2, "{}")])

        assert self.store.save_summaries(0, 4, [("a", 2, 4, "new")], replace=True)

        assert self.store.summary_position() == 4
        assert self.store.summary_rows() == [("a", 2, 4, "new")]


class TestMemoryStore(StoreContract):
    def open_store(self, clock: Clock) -> EventStore:
        return MemoryEventStore(clock=clock)


def test_a_scratch_memory_store_numbers_checks_and_reads_back_without_a_chain() -> None:
    store = MemoryEventStore(chained=False)
    store.append("run-1", [START, task(1)], 0)
    store.append("run-1", [task(2)], 2, causation=2)

    read = list(store.read("run-1"))

    assert [r.data for r in read] == [START, task(1), task(2)]
    assert versions(read) == [1, 2, 3] and read[2].causation == 2
    assert {r.hash for r in read} == {""}
    with pytest.raises(ConcurrencyError):
        store.append("run-1", [task(3)], 2)


@settings(max_examples=50, deadline=None)
@given(st.lists(any_event(), min_size=1, max_size=6), st.one_of(st.none(), st.integers(1, 9)))
def test_a_scratch_log_reads_back_the_rows_a_database_would_hold(
    batch: list[Event], causation: int | None
) -> None:
    scratch, chained = MemoryEventStore(chained=False), MemoryEventStore()
    appended = scratch.append("run-1", batch, 0, causation=causation)
    chained.append("run-1", batch, 0, causation=causation)

    def without_hashes(rows: Iterator[Any]) -> list[Any]:
        return [msgspec.structs.replace(r, hash="", recorded_at="") for r in rows]

    assert list(scratch.read("run-1")) == appended
    assert [r.data for r in scratch.read_all()] == batch
    assert without_hashes(scratch.read_raw("run-1")) == without_hashes(chained.read_raw("run-1"))
    assert list(scratch.read_payloads("run-1")) == list(chained.read_payloads("run-1"))


def test_a_scratch_log_encodes_each_event_once_when_it_is_first_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[Event] = []
    monkeypatch.setattr(events.memory, "encode", lambda e: encoded.append(e) or encode(e))
    store = MemoryEventStore(chained=False)
    store.append("run-1", [START, task(1), task(2)], 0)
    assert encoded == []

    list(store.read("run-1", upto=2))
    list(store.read("run-1"))
    list(store.read_all())

    assert encoded == [START, task(1), task(2)]


def test_an_event_a_scratch_log_cannot_encode_is_a_schema_error_naming_it_when_read() -> None:
    store = MemoryEventStore(chained=False)
    bad = ToolRequested(call_id="c1", tool="read_file", arguments={"path": Path("a.py")})
    store.append("run-1", [START, bad, task(3)], 0)

    assert [r.data for r in store.read("run-1", upto=1)] == [START]
    with pytest.raises(SchemaError) as caught:
        list(store.read("run-1"))

    assert (caught.value.position, caught.value.type) == (2, "tool.requested")
    assert "cannot be encoded as JSON: Encoding objects of type PosixPath" in str(caught.value)
    with pytest.raises(TypeError):  # which a database store refuses at append
        MemoryEventStore().append("run-1", [START, bad], 0)


class TestSQLiteInMemory(StoreContract):
    def open_store(self, clock: Clock) -> EventStore:
        return SQLiteEventStore(":memory:", clock=clock)


class TestSQLiteFile(StoreContract):
    def open_store(self, clock: Clock) -> EventStore:
        return SQLiteEventStore(self.tmp_path / "events.db", clock=clock)


@pytest.mark.usefixtures("pg_server")
class TestPostgres(StoreContract):
    """On the session's server (``tests/pg.py``), each store in a fresh schema."""

    def open_store(self, clock: Clock) -> EventStore:
        return PostgresEventStore(self.request.getfixturevalue("pg_server").new_url(), clock=clock)
