"""Property tests that try to fool `verify`, and a crash at every write of a real run.

Tampering: hypothesis draws a keyed log of plausible runs (``events.strategies``)
whose blobs are real, takes a checkpoint of it, then one change made behind the
store's back: any field of any row, a row or a run's tail deleted, two rows'
contents swapped, one byte of a blob flipped, triggers dropped. ``verify_log``
must find every one. ``position`` is the one column the chain does not cover (the
store assigns it; it orders runs against each other, not a run's events), so it
is not among the fields changed; moving a run below position 1 is. Nor are rows
only ever changed: a row is added where no read of its run goes (a version below 1
or past 2**62, a second row at one version), and the keyed mark made to name
another key.

Crashes: a real run (the demo, against the scripted model server) is recorded
once to count its writes (appends and blobs); then for each of a spread of
prefixes the same run is started with a store that dies at that write, the log is
reopened, and it must hold whole events only, verify, and resume to completion.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.agent.runner import resume_run, start_run
from engine.config import load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.runs.verification import verify_log
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import SQLiteEventStore
from events.checkpoints import take
from events.schema import AnyEvent, Event, RunStarted, UserAnswered
from events.store import READ_CHUNK, Draft, Row
from events.strategies import run_events
from projections import project

KEY = b"tamper-test-key-" * 2
COLUMNS = (
    "run_id",
    "version",
    "type",
    "schema_version",
    "recorded_at",
    "causation",
    "hash",
    "data",
)
CONTENT = ("type", "schema_version", "recorded_at", "causation", "hash", "data")
BLOB_KEYS = {"before", "after", "result_ref", "content_ref", "tools_ref"}


def with_real_blobs(store: SQLiteEventStore, event: Event) -> Event:
    """``event`` with each blob digest it holds replaced by a stored blob's."""

    def real(digest: str) -> str:
        return store.put(f"content {digest}".encode())

    def swap(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: real(v) if k in BLOB_KEYS and v
                else {name: real(d) for name, d in v.items()} if k == "argument_refs"
                else swap(v)
                for k, v in value.items()
            }  # fmt: skip
        if isinstance(value, list | tuple):
            return [swap(v) for v in value]
        return value

    return msgspec.convert(swap(msgspec.to_builtins(event)), AnyEvent)  # type: ignore[arg-type]


@st.composite
def logs(draw: st.DrawFn) -> SQLiteEventStore:
    store = SQLiteEventStore(":memory:", key=KEY)
    for n in range(draw(st.integers(1, 3))):
        events = draw(run_events(max_steps=6))
        first = events[0]
        assert isinstance(first, RunStarted)
        events[0] = msgspec.structs.replace(first, key_id=store.key_id)
        store.append(f"run-{n}", [with_real_blobs(store, e) for e in events], 0)
    return store


def unguard(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")


def hide_from_the_summaries(conn: sqlite3.Connection) -> None:
    """What a forger does next: the run summaries (derived, not append-only) are
    compared with the log only up to their position, so it goes back to 0."""
    conn.execute("UPDATE projection_positions SET position = 0")


def changed(value: Any, draw: st.DrawFn) -> Any:
    """A value of the column's kind that differs from ``value``."""
    if isinstance(value, int):
        new: Any = draw(st.integers(-3, 2**40))
    elif value is None:
        new = draw(st.integers(0, 50))
    else:
        new = draw(st.one_of(st.text(max_size=8), st.just(value[:-1]), st.just(value + " ")))
    assume(new != value)
    return new


@st.composite
def tamperings(draw: st.DrawFn, conn: sqlite3.Connection) -> str:
    """Apply one drawn tampering to ``conn``; say what it was."""
    rows = conn.execute("SELECT position, run_id, version FROM events ORDER BY position").fetchall()
    kinds = [
        "field", "delete", "suffix", "swap", "blob", "blob-gone", "triggers", "add", "move", "mark",
    ]  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    if kind == "triggers":
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
        for name in draw(st.lists(st.sampled_from(names), min_size=1, unique=True)):
            conn.execute(f"DROP TRIGGER {name}")
        return kind
    unguard(conn)
    if kind == "field":
        position, _, _ = draw(st.sampled_from(rows))
        column = draw(st.sampled_from(COLUMNS))
        (old,) = conn.execute(
            f"SELECT {column} FROM events WHERE position = ?", (position,)
        ).fetchone()
        new = changed(old, draw)
        try:
            conn.execute(f"UPDATE events SET {column} = ? WHERE position = ?", (new, position))
        except sqlite3.IntegrityError:
            assume(False)  # (run_id, version) taken: the database itself refuses it
        return f"{column} of position {position}: {old!r} -> {new!r}"
    if kind == "add":  # a row where no read of its run goes
        position, run_id, version = draw(st.sampled_from(rows))
        at = draw(
            st.one_of(st.integers(-(2**63), 0), st.integers(2**62 + 1, 2**63 - 1), st.just(version))
        )
        if at == version:  # a second row at a version: without the unique index
            conn.execute("DROP INDEX idx_events_run_id_version")
            conn.execute("CREATE INDEX idx_events_run_id_version ON events (run_id, version)")
        conn.execute(
            f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT run_id, ?, "
            f"{', '.join(CONTENT)} FROM events WHERE position = ?",
            (at, position),
        )
        hide_from_the_summaries(conn)
        return f"a copy of position {position} at version {at}"
    if kind == "move":  # a run's rows before the keyed mark's position
        _, run_id, _ = draw(st.sampled_from(rows))
        conn.execute("UPDATE events SET position = -position WHERE run_id = ?", (run_id,))
        hide_from_the_summaries(conn)
        return f"{run_id} moved to positions below 1"
    if kind == "mark":
        (mark,) = conn.execute("SELECT value FROM store_meta WHERE name = 'keyed_from'").fetchone()
        position, key_id, mac, *runs = mark.split(" ", 3)
        other = draw(st.text("0123456789abcdef", min_size=16, max_size=16))
        assume(other != key_id)
        moved = draw(st.sampled_from([position, "999999999"]))
        conn.execute(
            "UPDATE store_meta SET value = ? WHERE name = 'keyed_from'",
            (" ".join([moved, other, mac, *runs]),),
        )
        return f"the keyed mark names key {other}"
    if kind == "delete":
        position, _, _ = draw(st.sampled_from(rows))
        conn.execute("DELETE FROM events WHERE position = ?", (position,))
        return f"delete position {position}"
    if kind == "suffix":
        _, run_id, version = draw(st.sampled_from(rows))
        conn.execute("DELETE FROM events WHERE run_id = ? AND version >= ?", (run_id, version))
        return f"delete {run_id} from version {version}"
    if kind == "swap":
        assume(len(rows) > 1)
        first, second = draw(st.lists(st.sampled_from(rows), min_size=2, max_size=2, unique=True))
        a = conn.execute(
            f"SELECT {', '.join(CONTENT)} FROM events WHERE position = ?", (first[0],)
        ).fetchone()
        b = conn.execute(
            f"SELECT {', '.join(CONTENT)} FROM events WHERE position = ?", (second[0],)
        ).fetchone()
        update = f"UPDATE events SET {', '.join(c + ' = ?' for c in CONTENT)} WHERE position = ?"
        conn.execute(update, (*b, first[0]))
        conn.execute(update, (*a, second[0]))
        return f"swap positions {first[0]} and {second[0]}"
    if kind == "blob-gone":  # every blob is some event's: a request's tools, an argument's
        digests = [d for (d,) in conn.execute("SELECT digest FROM blobs ORDER BY digest")]
        assume(digests)
        digest = draw(st.sampled_from(digests))
        conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
        return f"delete blob {digest}"
    blobs = conn.execute("SELECT digest, content FROM blobs WHERE length(content) > 0").fetchall()
    assume(blobs)
    digest, content = draw(st.sampled_from(blobs))
    index = draw(st.integers(0, len(content) - 1))
    bit = draw(st.integers(0, 7))
    flipped = bytearray(content)
    flipped[index] ^= 1 << bit
    conn.execute("UPDATE blobs SET content = ? WHERE digest = ?", (bytes(flipped), digest))
    return f"flip bit {bit} of byte {index} of blob {digest}"


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_verify_finds_every_tampering(data: st.DataObject) -> None:
    store = data.draw(logs())
    try:
        checkpoints = take(store)
        before = verify_log(store, checkpoints=checkpoints)
        assert before.ok, before

        what = data.draw(tamperings(store.connection))

        after = verify_log(store, checkpoints=checkpoints)
        assert not after.ok, f"not found: {what}"
    finally:
        store.close()


# -- a crash at every write ------------------------------------------------------------------


class NoCommands(DemoModels):
    """The demo's models, reading a file where they would run a command: the same
    run, with no subprocess per command, so that many prefixes fit in seconds."""

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        if reply.tool_calls and reply.tool_calls[0][0] == "run_command":
            return Reply.tool("read_file", path="calc.py")
        return reply


class Crash(BaseException):
    """The process dying: nothing in the engine catches it."""


class DyingStore(SQLiteEventStore):
    """Counts its writes (appends and blob puts) and dies before write ``die_at``."""

    def __init__(self, path: Path, *, die_at: int, key: bytes) -> None:
        super().__init__(path, key=key)
        self.writes = 0
        self.die_at = die_at

    def _write(self) -> None:
        self.writes += 1
        if self.writes == self.die_at:
            raise Crash

    def _append_rows(
        self, run_id: str, drafts: list[Draft], expected_version: int, recorded_at: str
    ) -> list[Row]:
        self._write()
        return super()._append_rows(run_id, drafts, expected_version, recorded_at)

    def _put_blob(self, digest: str, content: bytes) -> None:
        self._write()
        super()._put_blob(digest, content)


def demo_run(tmp_path: Path, server: ScriptedModelServer, die_at: int) -> tuple[Path, Path, int]:
    workspace, db = tmp_path / f"ws-{die_at}", tmp_path / f"events-{die_at}.db"
    settings = load_settings(
        env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m"}
    )
    store = DyingStore(db, die_at=die_at, key=KEY)
    try:
        with httpx.Client() as http:
            start_run(
                store, goal=GOAL, workspace=workspace, settings=settings, http=http, run_id="r"
            )
    except Crash:
        pass
    finally:
        store.close()
    return workspace, db, store.writes


def spread(total: int, samples: int) -> list[int]:
    """The first and last writes, and an even spread between them."""
    step = max(1, total // samples)
    return sorted({1, 2, 3, *range(1, total + 1, step), total - 1, total})


def test_a_crash_at_any_write_leaves_whole_events_that_verify_and_resume(tmp_path: Path) -> None:
    with ScriptedModelServer(NoCommands(), models=["m"]) as server:
        _, _, total = demo_run(tmp_path, server, die_at=0)  # never dies: counts the writes
    assert total > 20

    for die_at in spread(total, 10):
        with ScriptedModelServer(NoCommands(), models=["m"]) as server:
            _, db, _ = demo_run(tmp_path, server, die_at)
            with SQLiteEventStore(db, key=KEY) as store:
                versions = [r.version for r in store.read_raw("r")]
                assert versions == list(range(1, len(versions) + 1)), die_at
                found = verify_log(store)
                assert found.ok, (die_at, found)
                if not versions:
                    continue  # died before run.started: there is no run
                settings = load_settings(
                    env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m"}
                )
                with httpx.Client() as http:
                    resume_run(store, "r", settings=settings, http=http)
                pipeline = project(store, "r").pipeline
                assert pipeline.status == "completed", (die_at, total, pipeline.reason)
                assert verify_log(store).ok


# -- rows where no read goes, and a mark naming another key -----------------------------------


def keyed_log() -> SQLiteEventStore:
    store = SQLiteEventStore(":memory:", key=KEY)
    events = [RunStarted(goal="g", workspace="/w", key_id=store.key_id)]
    for n in range(3):
        store.append(f"run-{n}", events, 0)
    return store


@pytest.mark.parametrize("version", [0, -1, -(2**63), 2**62 + 1, 2**63 - 1, "one", 1.5], ids=repr)
def test_verify_finds_a_row_added_where_no_read_of_its_run_goes(version: object) -> None:
    """Every read of a run asks for versions 1 to 2**62 and pages by version: a row at
    0, past 2**62, or a text or real version, was never read, and verify said ok
    while the audit views showed the forged row."""
    store = keyed_log()
    conn = store.connection
    unguard(conn)
    conn.execute(
        f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT run_id, ?, "
        f"{', '.join(CONTENT)} FROM events WHERE run_id = 'run-1'",
        (version,),
    )
    hide_from_the_summaries(conn)
    verdict = verify_log(store)
    assert not verdict.ok
    (failed,) = [run for run in verdict.runs if not run.ok]
    assert failed.run_id == "run-1"
    assert "rows were added where no read of the run goes" in failed.problems[-1].problem


def test_verify_finds_a_second_row_at_a_version_a_read_pages_past() -> None:
    """A read goes in chunks of ``READ_CHUNK`` rows, each after the last version seen:
    with the unique index gone, a second row at a chunk's last version was skipped."""
    store = SQLiteEventStore(":memory:", key=KEY)
    first = RunStarted(goal="g", workspace="/w", key_id=store.key_id)
    store.append("long", [first, *[UserAnswered(answer=str(n)) for n in range(READ_CHUNK)]], 0)
    conn = store.connection
    unguard(conn)
    conn.execute("DROP INDEX idx_events_run_id_version")
    conn.execute("CREATE INDEX idx_events_run_id_version ON events (run_id, version)")
    conn.execute(
        f"INSERT INTO events ({', '.join(COLUMNS)}) SELECT run_id, version, "
        f"{', '.join(CONTENT)} FROM events WHERE version = ?",
        (READ_CHUNK,),
    )
    hide_from_the_summaries(conn)
    (run,) = verify_log(store).runs
    assert not run.ok and "rows were added" in run.problems[-1].problem


def test_verify_finds_a_run_moved_below_the_keyed_mark() -> None:
    """Positions are not in the chain: a run rewritten without the key (so unkeyed)
    and moved to positions below 1 sat before the keyed mark, where unkeyed runs
    are allowed."""
    store = keyed_log()
    conn = store.connection
    unguard(conn)
    conn.execute("UPDATE events SET position = -position WHERE run_id = 'run-2'")
    hide_from_the_summaries(conn)
    verdict = verify_log(store)
    assert [run.run_id for run in verdict.runs if not run.ok] == ["run-2"]


def test_verify_fails_a_keyed_mark_naming_another_key() -> None:
    """The mark's MAC was checked only when it named verify's key: a forger who named
    any other key id kept the mark, and with it rewrote a keyed run unkeyed."""
    store = keyed_log()
    conn = store.connection
    unguard(conn)
    (mark,) = conn.execute("SELECT value FROM store_meta WHERE name = 'keyed_from'").fetchone()
    _position, _key, mac, runs = mark.split(" ", 3)
    conn.execute(
        "UPDATE store_meta SET value = ? WHERE name = 'keyed_from'",
        (f"999999999 0000000000000000 {mac} {runs}",),
    )
    verdict = verify_log(store)
    assert not verdict.ok
    assert any("names key 0000000000000000, not this key" in p for p in verdict.database)


def _rewritten_unkeyed(conn: sqlite3.Connection, run_id: str) -> None:
    """A forger without the key: ``run_id``'s chain recomputed with plain sha256, its
    ``run.started`` naming no key."""
    import json

    from events.codec import chain_hash

    previous = ""
    rows = conn.execute(
        "SELECT position, version, type, schema_version, recorded_at, causation, data"
        " FROM events WHERE run_id = ? ORDER BY version",
        (run_id,),
    ).fetchall()
    for position, version, kind, schema, at, causation, data in rows:
        if kind == "run.started":
            data = json.dumps({**json.loads(data), "key_id": ""})
        previous = chain_hash(
            previous,
            run_id=run_id,
            version=version,
            type=kind,
            schema_version=schema,
            recorded_at=at,
            causation=causation,
            data=data,
        )
        conn.execute(
            "UPDATE events SET hash = ?, data = ? WHERE position = ?", (previous, data, position)
        )


def test_verify_finds_a_keyed_run_rewritten_unkeyed_and_renumbered_before_the_mark() -> None:
    """Positions are not in the chain: in a log that held unkeyed runs before keys, a
    keyed run rewritten without the key and renumbered so that it starts below the
    mark's position passed as one from before keys. The mark names those runs now."""
    store = SQLiteEventStore(":memory:")
    events = [RunStarted(goal="g", workspace="/w")]
    store.append("old", [*events, *events], 0)  # from before keys: positions 1 and 2
    store.key = keyed = SQLiteEventStore(":memory:", key=KEY).key
    store.append("new", [RunStarted(goal="g", workspace="/w", key_id=keyed.id if keyed else "")], 0)
    assert verify_log(store).ok
    conn = store.connection
    unguard(conn)
    _rewritten_unkeyed(conn, "new")
    # every row one place on, and the rewritten run's first at 1: each run's positions
    # still rise with its versions
    conn.execute("UPDATE events SET position = position + 10")
    conn.execute("UPDATE events SET position = 1 WHERE run_id = 'new'")
    conn.execute("UPDATE events SET position = position - 8 WHERE run_id = 'old'")
    hide_from_the_summaries(conn)
    verdict = verify_log(store)
    assert [run.run_id for run in verdict.runs if not run.ok] == ["new"]
    (problem,) = next(run for run in verdict.runs if run.run_id == "new").problems
    assert "this run's chain is unkeyed: it was rewritten without the key" in problem.problem


def test_a_mark_from_before_marks_named_their_runs_still_verifies() -> None:
    """A log keyed by an earlier autonomy: its mark (position, key id, MAC) is checked
    as it was written, by position."""
    store = keyed_log()
    conn = store.connection
    unguard(conn)
    assert store.key is not None
    old_mark = f"1 {store.key.id} {store.key.mac(b'keyed from 1')}"
    conn.execute("UPDATE store_meta SET value = ? WHERE name = 'keyed_from'", (old_mark,))
    verdict = verify_log(store)
    assert all(run.ok for run in verdict.runs)
    assert not [p for p in verdict.database if "mark" in p]
    _rewritten_unkeyed(conn, "run-2")
    hide_from_the_summaries(conn)
    verdict = verify_log(store)
    assert [run.run_id for run in verdict.runs if not run.ok] == ["run-2"]
    conn.execute("UPDATE store_meta SET value = ? WHERE name = 'keyed_from'", (old_mark + " []",))
    assert "does not match its MAC" in " ".join(verify_log(store).database)


def test_an_unkeyed_run_is_not_copied_into_a_keyed_log() -> None:
    """verify takes an unkeyed run the mark does not name for one rewritten without the
    key: copying one in is refused, as starting one without the key is."""
    from events.errors import WrongKey

    source = SQLiteEventStore(":memory:")
    source.append("plain", [RunStarted(goal="g", workspace="/w")], 0)
    target = keyed_log()
    with pytest.raises(WrongKey, match="cannot copy run 'plain' here: it is unkeyed"):
        target.import_run("plain", list(source.read_raw("plain")))
    assert target.last_version("plain") == 0 and verify_log(target).ok


def test_a_run_forged_unkeyed_in_a_keyed_log_is_neither_replayed_nor_forked(
    tmp_path: Path,
) -> None:
    """A run written with a plain sha256 chain into a keyed log (by someone without
    the key) failed ``verify``, but ``replay`` said "identical" and ``fork`` made a
    keyed run of it, which then verified on its own. The commands that act on a run
    check the keyed mark as verify does."""
    from engine.agent.runlog import refuse_tampered
    from engine.runs.workspace import fork
    from events.errors import StoreCorrupted

    store = keyed_log()
    conn = store.connection
    unguard(conn)
    _rewritten_unkeyed(conn, "run-2")
    assert store.verify("run-2").ok  # its plain chain holds: only the mark tells
    with pytest.raises(
        StoreCorrupted,
        match=r"run run-2: the log is written keyed .* it was rewritten without the key",
    ):
        refuse_tampered(store, "run-2", None, "nothing was replayed")
    with pytest.raises(StoreCorrupted, match="without the key; nothing was forked"):
        fork(store, "run-2", 1, tmp_path / "ws", new_run_id="laundered")
    assert store.last_version("laundered") == 0
    refuse_tampered(store, "run-1", None, "nothing was replayed")  # a keyed run: fine


def test_verify_of_a_fork_checks_the_history_it_was_forked_from() -> None:
    """``verify FORK`` checked the fork's own chain only: a parent edited before the
    fork point (which the fork's state shows) left the fork "ok"."""
    from events.schema import RunForked, TaskAdded

    store = SQLiteEventStore(":memory:", key=KEY)
    started = RunStarted(goal="g", workspace="/w", key_id=store.key_id)
    store.append("parent", [started, TaskAdded(task_id="t1", title="write it")], 0)
    store.append("fork", [RunForked(parent_run="parent", at_version=2, workspace="/f")], 0)
    assert verify_log(store, ["fork"]).ok
    conn = store.connection
    unguard(conn)
    conn.execute(
        "UPDATE events SET data = replace(data, 'write it', 'rm -rf it')"
        " WHERE run_id = 'parent' AND version = 2"
    )
    hide_from_the_summaries(conn)
    (fork_verdict,) = verify_log(store, ["fork"]).runs
    assert [p.problem for p in fork_verdict.problems] == [
        "the history it was forked from fails: run parent fails verification at version 2: "
        + store.verify("parent").problem
    ]
    whole = verify_log(store)
    assert not any(run.ok for run in whole.runs)
