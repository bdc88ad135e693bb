"""A hypothesis state machine drives a store (SQLite, then PostgreSQL) and the memory
store with the same operations; the memory store is the oracle. Both read one fixed
clock, so every answer must be identical, hashes and recorded times included.

The PostgreSQL machine opens a fresh schema per example on the session's server and
takes fewer, shorter examples: each step is a few round trips, and the suite must
stay fast."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from events import (
    EVENT_TYPES,
    BlobNotFound,
    ConcurrencyError,
    EventStore,
    MemoryEventStore,
    SQLiteEventStore,
)
from events.postgres import PostgresEventStore
from events.schema import Event
from events.strategies import any_event

MOMENT = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)
RUN_IDS = st.sampled_from(["run-a", "run-b", "run-c"])
BATCHES = st.lists(any_event(), min_size=1, max_size=4)
BOUNDS = st.integers(-1, 14)


def fixed_clock() -> datetime:
    return MOMENT


class StoreAgainstOracle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.subject = self.open_subject()
        self.oracle: EventStore = MemoryEventStore(clock=fixed_clock)
        self.blobs: list[str] = []

    def open_subject(self) -> EventStore:
        """The store under test, on ``fixed_clock``."""
        return SQLiteEventStore(":memory:", clock=fixed_clock)

    def both(self) -> tuple[EventStore, EventStore]:
        return self.subject, self.oracle

    # -- writes ----------------------------------------------------------------------------

    @rule(run_id=RUN_IDS, batch=BATCHES, causation=st.one_of(st.none(), st.integers(1, 9)))
    def append_at_the_right_version(
        self, run_id: str, batch: list[Event], causation: int | None
    ) -> None:
        expected = self.oracle.last_version(run_id)
        assert self.subject.last_version(run_id) == expected

        ours = self.subject.append(run_id, batch, expected, causation=causation)
        theirs = self.oracle.append(run_id, batch, expected, causation=causation)

        assert ours == theirs
        assert [r.version for r in ours] == list(range(expected + 1, expected + 1 + len(batch)))
        assert [r.data for r in ours] == batch

    @rule(run_id=RUN_IDS, batch=BATCHES, offset=st.integers(-3, 3).filter(bool))
    def append_at_a_stale_version(self, run_id: str, batch: list[Event], offset: int) -> None:
        actual = self.oracle.last_version(run_id)
        wrong = max(actual + offset, 0)
        if wrong == actual:
            wrong = actual + 1
        for store in self.both():
            before = store.last_version(run_id)
            try:
                store.append(run_id, batch, wrong)
            except ConcurrencyError as e:
                assert (e.expected, e.actual) == (wrong, actual)
            else:
                raise AssertionError(f"{type(store).__name__} accepted a stale version")
            assert store.last_version(run_id) == before

    @rule(content=st.binary(max_size=64))
    def put_a_blob(self, content: bytes) -> None:
        digests = {store.put(content) for store in self.both()}
        assert len(digests) == 1
        digest = digests.pop()
        self.blobs.append(digest)
        assert self.subject.get(digest) == self.oracle.get(digest) == content

    # -- reads ---------------------------------------------------------------------------

    @rule(run_id=RUN_IDS, after=BOUNDS, upto=st.one_of(st.none(), BOUNDS))
    def read_a_run(self, run_id: str, after: int, upto: int | None) -> None:
        ours = list(self.subject.read(run_id, after=after, upto=upto))
        theirs = list(self.oracle.read(run_id, after=after, upto=upto))
        assert ours == theirs

    @rule(
        after_position=st.integers(-1, 40),
        types=st.one_of(st.none(), st.sets(st.sampled_from(sorted(EVENT_TYPES)), max_size=4)),
        limit=st.one_of(st.none(), st.integers(0, 10)),
    )
    def read_the_log(self, after_position: int, types: set[str] | None, limit: int | None) -> None:
        ours = list(self.subject.read_all(after_position=after_position, types=types, limit=limit))
        theirs = list(self.oracle.read_all(after_position=after_position, types=types, limit=limit))
        assert ours == theirs
        if limit is not None:
            assert len(ours) <= limit
        if types is not None:
            assert {r.type for r in ours} <= types

    @rule(content=st.binary(max_size=64))
    def get_a_blob_by_digest(self, content: bytes) -> None:
        digest = hashlib.sha256(content).hexdigest()
        if digest in self.blobs:
            assert self.subject.get(digest) == self.oracle.get(digest) == content
            return
        for store in self.both():
            assert not store.has_blob(digest)
            try:
                store.get(digest)
            except BlobNotFound:
                pass
            else:
                raise AssertionError(f"{type(store).__name__} returned a blob never stored")

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def positions_strictly_increase(self) -> None:
        positions = [r.position for r in self.subject.read_all()]
        assert all(a < b for a, b in itertools.pairwise(positions))

    @invariant()
    def versions_have_no_gaps(self) -> None:
        for info in self.subject.runs():
            versions = [r.version for r in self.subject.read(info.run_id)]
            assert versions == list(range(1, info.version + 1))

    @invariant()
    def both_stores_hold_the_same_log(self) -> None:
        assert list(self.subject.read_all()) == list(self.oracle.read_all())
        assert self.subject.runs() == self.oracle.runs()

    @invariant()
    def every_chain_verifies(self) -> None:
        for info in self.oracle.runs():
            for store in self.both():
                report = store.verify(info.run_id)
                assert report.ok, report

    @invariant()
    def stored_blobs_are_there(self) -> None:
        for digest in self.blobs:
            assert self.subject.has_blob(digest) and self.oracle.has_blob(digest)

    def teardown(self) -> None:
        for store in self.both():
            store.close()


TestStoreAgainstOracle = StoreAgainstOracle.TestCase


def test_the_postgres_store_against_the_oracle(pg_server: Any) -> None:
    new_url: Callable[[], str] = pg_server.new_url

    class PostgresAgainstOracle(StoreAgainstOracle):
        def open_subject(self) -> EventStore:
            return PostgresEventStore(new_url(), clock=fixed_clock, pool_size=1)

    run_state_machine_as_test(
        PostgresAgainstOracle,
        settings=settings(settings.default, max_examples=10, stateful_step_count=15),
    )
