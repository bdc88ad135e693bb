"""Encoding, decoding and upcasting of event payloads.

Every event type round-trips through every store (property tests on the shipped
strategies). Anything in the log that cannot become a typed event raises a
``SchemaError`` naming the position and the type, whatever the reason.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    EVENT_TYPES,
    Codec,
    EventStore,
    RunStarted,
    SchemaError,
    SQLiteEventStore,
    TaskAdded,
    TaskUpdated,
    UpcasterRegistry,
    encode,
)
from events.codec import chain_hash, current_version
from events.strategies import any_event, event_of_type
from projections import project

START = RunStarted(goal="write a todo app", workspace="/work/todo")


def insert_row(
    store: SQLiteEventStore,
    run_id: str,
    type: str,
    data: str,
    *,
    schema_version: int = 1,
) -> int:
    """Write a row the way an older (or broken) program would have: behind the store's
    back, but with a correct hash chain. Returns the row's position."""
    conn = store.connection
    last = conn.execute(
        "SELECT version, hash FROM events WHERE run_id = ? ORDER BY version DESC LIMIT 1",
        (run_id,),
    ).fetchone()
    version, previous = (last[0] + 1, last[1]) if last else (1, "")
    position = (conn.execute("SELECT max(position) FROM events").fetchone()[0] or 0) + 1
    recorded_at = "2024-06-01T12:00:00.000000Z"
    digest = chain_hash(
        previous,
        run_id=run_id,
        version=version,
        type=type,
        schema_version=schema_version,
        recorded_at=recorded_at,
        causation=None,
        data=data,
    )
    conn.execute(
        "INSERT INTO events (position, run_id, version, type, schema_version, recorded_at,"
        " causation, hash, data) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
        (position, run_id, version, type, schema_version, recorded_at, digest, data),
    )
    return position


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_every_event_type_round_trips_through_the_codec(type_name: str) -> None:
    codec = Codec()
    cls = EVENT_TYPES[type_name]

    @given(event_of_type(type_name))
    def round_trip(event: Any) -> None:
        data = encode(event)
        assert json.loads(data)["type"] == type_name  # the explicit tag, in the JSON text
        assert codec.decode(type_name, cls.schema_version, data) == event

    round_trip()


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_every_event_type_round_trips_through_every_store(
    store: EventStore, type_name: str
) -> None:
    run_ids = (f"run-{n}" for n in itertools.count())

    @given(st.lists(event_of_type(type_name), min_size=1, max_size=3))
    def round_trip(batch: list[Any]) -> None:
        run_id = next(run_ids)
        store.append(run_id, [START, *batch], 0)
        read = list(store.read(run_id))
        assert [r.data for r in read] == [START, *batch]
        assert {r.type for r in read[1:]} == {type_name}

    round_trip()


def test_mixed_batches_round_trip_through_every_store(store: EventStore) -> None:
    run_ids = (f"run-{n}" for n in itertools.count())

    @given(st.lists(any_event(), min_size=1, max_size=8))
    def round_trip(batch: list[Any]) -> None:
        run_id = next(run_ids)
        recorded = store.append(run_id, batch, 0)
        assert list(store.read(run_id)) == recorded
        assert [r.data for r in recorded] == batch

    round_trip()


def test_encoding_is_deterministic() -> None:
    @given(any_event())
    def same_bytes(event: Any) -> None:
        assert encode(event) == encode(msgspec.json.decode(encode(event), type=type(event)))

    same_bytes()


# -- what cannot be decoded ------------------------------------------------------------------


@pytest.fixture
def log(sqlite_store: SQLiteEventStore) -> SQLiteEventStore:
    """An SQLite store whose run already has a good first event, so that a bad row
    sits at a position other than 1."""
    sqlite_store.append("run-1", [START], 0)
    sqlite_store.append("run-0", [START], 0)
    return sqlite_store


READERS = {
    "read": lambda store, run_id: list(store.read(run_id)),
    # the rebuild's own fast path (read_payloads, one C-level decode per row) must
    # refuse exactly what the full decode refuses, with the same error
    "project": project,
    # a replay's read: fewer columns, the same decode and the same refusals
    "read_brief": lambda store, run_id: list(store.read_brief(run_id)),
}


@pytest.fixture(params=sorted(READERS))
def reader(request: pytest.FixtureRequest) -> Callable[[EventStore, str], object]:
    return READERS[request.param]


@pytest.fixture
def read_error(
    reader: Callable[[EventStore, str], object],
) -> Callable[..., SchemaError]:
    def error(store: EventStore, run_id: str = "run-1") -> SchemaError:
        with pytest.raises(SchemaError) as caught:
            reader(store, run_id)
        return caught.value

    return error


def assert_names_the_row(error: SchemaError, position: int, type: str) -> None:
    assert (error.position, error.type) == (position, type)
    assert f"position {position}" in str(error)
    assert repr(type) in str(error)


def test_an_unknown_type_is_a_schema_error(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError]
) -> None:
    position = insert_row(log, "run-1", "task.teleported", '{"type":"task.teleported"}')

    error = read_error(log)

    assert_names_the_row(error, position, "task.teleported")
    assert "unknown event type" in str(error)


def test_undecodable_json_is_a_schema_error(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError]
) -> None:
    position = insert_row(log, "run-1", "task.added", '{"type": "task.added", "task_id": ')

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "not valid JSON" in str(error)
    assert isinstance(error.__cause__, msgspec.DecodeError)


@pytest.mark.parametrize(
    "data",
    [
        '{"type": "task.added", "task_id": 7, "title": "x"}',  # wrong field type
        '{"type": "task.added", "title": "x"}',  # missing required field
        '["task.added"]',  # not an object
    ],
)
def test_data_not_matching_its_schema_is_a_schema_error(
    log: SQLiteEventStore, data: str, read_error: Callable[..., SchemaError]
) -> None:
    position = insert_row(log, "run-1", "task.added", data)

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "does not match the schema" in str(error)


def test_data_tagged_with_another_type_is_a_schema_error(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError]
) -> None:
    position = insert_row(
        log,
        "run-1",
        "task.added",
        encode(RunStarted(goal="g", workspace="/w")),
        schema_version=TaskAdded.schema_version,
    )

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "run.started" in str(error)


def test_data_tagged_with_another_type_of_the_same_schema_version_is_a_schema_error(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError]
) -> None:
    # Both at schema version 1: only the row's type tells that the tag is wrong.
    assert TaskUpdated.schema_version == RunStarted.schema_version
    position = insert_row(
        log, "run-1", "task.updated", encode(RunStarted(goal="g", workspace="/w"))
    )

    error = read_error(log)

    assert_names_the_row(error, position, "task.updated")
    assert "run.started" in str(error)


def test_a_schema_version_newer_than_the_code_is_a_schema_error(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError]
) -> None:
    data = encode(TaskAdded(task_id="t1", title="x"))
    position = insert_row(
        log, "run-1", "task.added", data, schema_version=TaskAdded.schema_version + 1
    )

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "newer" in str(error)


@pytest.mark.parametrize(
    ("type", "data"),
    [
        ("task.teleported", '{"type":"task.teleported"}'),
        ("task.added", '{"type": "task.added", "task_id": '),
        ("task.updated", encode(RunStarted(goal="g", workspace="/w"))),
    ],
)
def test_a_bad_first_row_is_a_schema_error_too(
    log: SQLiteEventStore, read_error: Callable[..., SchemaError], type: str, data: str
) -> None:
    position = insert_row(log, "run-2", type, data)

    assert_names_the_row(read_error(log, "run-2"), position, type)


def test_read_all_names_the_bad_row_too(log: SQLiteEventStore) -> None:
    position = insert_row(log, "run-0", "no.such.type", "{}")

    with pytest.raises(SchemaError) as caught:
        list(log.read_all())

    assert_names_the_row(caught.value, position, "no.such.type")


def test_current_version_of_an_unknown_type_is_a_schema_error() -> None:
    assert current_version("task.added") == TaskAdded.schema_version
    with pytest.raises(SchemaError, match="unknown event type 'nope'"):
        current_version("nope")


# -- upcasting ----------------------------------------------------------------------------------
#
# These tests play "a log written by older code, read by newer code" with made-up
# versions of task.added and a registry of their own: they raise TaskAdded's
# ``schema_version`` ClassVar to 3 for their duration (monkeypatch restores it). The
# project's real upcaster (task.added 1 -> 2) is tested in ``test_migration.py``.

# What task.added looked like in its (pretend) first two versions:
#   v1: {"id", "name", "priority": "high" | "normal" | "low"}
#   v2: {"task_id", "title", "priority": "high" | "normal" | "low"}   (renamed fields)
#   v3: {"task_id", "title", "priority": int}                         (today's TaskAdded)
V1_DATA = '{"type": "task.added", "id": "t1", "name": "write the parser", "priority": "high"}'


def chain_registry(calls: list[int]) -> UpcasterRegistry:
    registry = UpcasterRegistry()

    @registry.register("task.added", 1)
    def rename_fields(raw: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        raw["task_id"] = raw.pop("id")
        raw["title"] = raw.pop("name")
        return raw

    @registry.register("task.added", 2)
    def numeric_priority(raw: dict[str, Any]) -> dict[str, Any]:
        calls.append(2)
        raw["priority"] = {"high": 1, "normal": 5, "low": 9}[raw["priority"]]
        return raw

    return registry


def test_upcasters_run_in_order_from_the_stored_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskAdded, "schema_version", 3)
    calls: list[int] = []
    codec = Codec(chain_registry(calls))

    event = codec.decode("task.added", 1, V1_DATA, position=12)

    assert event == TaskAdded(task_id="t1", title="write the parser", priority=1)
    assert calls == [1, 2]


def test_an_event_stored_at_the_middle_version_runs_only_the_later_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TaskAdded, "schema_version", 3)
    calls: list[int] = []
    v2 = '{"type": "task.added", "task_id": "t2", "title": "docs", "priority": "low"}'

    event = Codec(chain_registry(calls)).decode("task.added", 2, v2)

    assert event == TaskAdded(task_id="t2", title="docs", priority=9)
    assert calls == [2]


def test_a_store_reads_old_rows_through_its_codecs_upcasters(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as old:  # the older program wrote version-1 rows
        old.append("run-1", [START], 0)
        insert_row(old, "run-1", "task.added", V1_DATA, schema_version=1)
    monkeypatch.setattr(TaskAdded, "schema_version", 3)

    with SQLiteEventStore(path, codec=Codec(chain_registry([]))) as new:
        read = list(new.read("run-1"))
        new.append("run-1", [TaskAdded(task_id="t9", title="new")], 2)
        stored = [(r.type, r.schema_version) for r in new.read_raw("run-1")]
        assert new.verify("run-1").ok  # upcasting never rewrites the log

    assert read[1].data == TaskAdded(task_id="t1", title="write the parser", priority=1)
    assert read[1].schema_version == 1  # the envelope says what was stored
    assert stored == [("run.started", 1), ("task.added", 1), ("task.added", 3)]


def test_an_old_row_that_decodes_as_today_is_upcast_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
    log: SQLiteEventStore,
    reader: Callable[[EventStore, str], object],
) -> None:
    # a pretend version 3 keeps version 2's shape and changes what priority means:
    # only the row's schema version tells the fast decode (``CURRENT``) to step aside
    old = '{"type": "task.added", "task_id": "t1", "title": "x", "priority": 3}'
    insert_row(log, "run-1", "task.added", old, schema_version=2)
    monkeypatch.setattr(TaskAdded, "schema_version", 3)
    registry = UpcasterRegistry()
    registry.register("task.added", 2)(lambda raw: {**raw, "priority": raw["priority"] * 10})
    log.codec = Codec(registry)

    read = reader(log, "run-1")

    if isinstance(read, list):
        assert read[1].data == TaskAdded(task_id="t1", title="x", priority=30)
    else:
        assert read.pipeline.tasks["t1"].priority == 30  # type: ignore[attr-defined]


def test_a_missing_upcaster_is_a_schema_error(
    monkeypatch: pytest.MonkeyPatch,
    log: SQLiteEventStore,
    read_error: Callable[..., SchemaError],
) -> None:
    position = insert_row(log, "run-1", "task.added", V1_DATA, schema_version=1)
    monkeypatch.setattr(TaskAdded, "schema_version", 3)
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(lambda raw: raw)  # 1 -> 2 exists, 2 -> 3 does not
    log.codec = Codec(registry)

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "no upcaster from schema version 2" in str(error)


def test_the_project_registry_has_no_upcaster_for_an_unknown_old_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the project's own upcasters take task.added from 1 to 2; from 2 to 3 there is none
    monkeypatch.setattr(TaskAdded, "schema_version", 3)

    with pytest.raises(SchemaError, match="no upcaster from schema version 2"):
        Codec().decode("task.added", 1, V1_DATA, position=3)


def test_a_failing_upcaster_is_a_schema_error(
    monkeypatch: pytest.MonkeyPatch,
    log: SQLiteEventStore,
    read_error: Callable[..., SchemaError],
) -> None:
    bad = '{"type": "task.added", "id": "t1", "name": "x", "priority": "urgent"}'
    position = insert_row(log, "run-1", "task.added", bad, schema_version=1)
    monkeypatch.setattr(TaskAdded, "schema_version", 3)
    log.codec = Codec(chain_registry([]))

    error = read_error(log)

    assert_names_the_row(error, position, "task.added")
    assert "upcaster from version 2 failed" in str(error)
    assert isinstance(error.__cause__, KeyError)


def test_an_upcaster_producing_the_wrong_shape_is_a_schema_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(TaskAdded, "schema_version", 2)
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(lambda raw: {"task_id": 1})

    with pytest.raises(SchemaError, match="does not match the schema") as caught:
        Codec(registry).decode("task.added", 1, V1_DATA, position=5)

    assert (caught.value.position, caught.value.type) == (5, "task.added")


def test_an_upcaster_need_not_keep_the_type_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskAdded, "schema_version", 2)
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(lambda raw: {"task_id": raw["id"], "title": raw["name"]})

    assert Codec(registry).decode("task.added", 1, V1_DATA) == TaskAdded(
        task_id="t1", title="write the parser"
    )


def test_upcasting_undecodable_json_is_a_schema_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskAdded, "schema_version", 2)
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(lambda raw: raw)

    with pytest.raises(SchemaError, match="not valid JSON") as caught:
        Codec(registry).decode("task.added", 1, "{oops", position=8)

    assert caught.value.position == 8


def test_an_upcaster_is_registered_once_per_step() -> None:
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(lambda raw: raw)

    with pytest.raises(ValueError, match="already registered"):
        registry.register("task.added", 1)(lambda raw: raw)
    assert ("task.added", 1) in registry
    assert ("task.added", 2) not in registry
