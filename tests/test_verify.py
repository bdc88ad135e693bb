"""`autonomy verify` against someone with write access to the database file.

Each test plays one attack of issue 12 on a real log: a rewritten row with the
chain recomputed, a keyed run downgraded to plain sha256, a changed blob, a
deleted tail, dropped triggers, a damaged index, an unreadable run. Library-level
tests call ``engine.runs.verification.verify_log``; the CLI tests run the commands.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.keys import load_key
from engine.runs.verification import verify_log
from events import RunStarted, SQLiteEventStore, TaskAdded, ToolExecuted
from events.codec import ChainKey, chain_hash
from events.errors import BlobCorrupt, StoreCorrupted
from events.schema import FileChange
from events.store import Row

KEY = b"s" * 32


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def build(path: Path, key: bytes | None = KEY, runs: tuple[str, ...] = ("a", "b")) -> Path:
    """A log with ``runs``, each: run.started, a task, a tool that wrote a file."""
    with SQLiteEventStore(path, key=key) as store:
        for run_id in runs:
            before = store.put(f"old {run_id}\n".encode())
            after = store.put(f"new {run_id}\n".encode())
            store.append(
                run_id,
                [
                    RunStarted(goal="g", workspace="/w", key_id=store.key_id),
                    TaskAdded(task_id="t1", title="write the module"),
                    ToolExecuted(
                        call_id="c1",
                        tool="modify_file",
                        ok=True,
                        files_changed=(
                            FileChange(path="m.py", before=before, after=after, size=6),
                        ),
                    ),
                ],
                0,
            )
    return path


def tamper(path: Path, *sql: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    for trigger in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {trigger[0]}")
    for statement in sql:
        conn.execute(statement, params if "?" in statement else ())
    conn.commit()
    conn.close()


def rewrite_chain(path: Path, run_id: str, key: ChainKey | None, edit: dict[int, str]) -> None:
    """What a forger does: change some payloads and recompute the run's chain."""
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT position, version, type, schema_version, recorded_at, causation, data "
        "FROM events WHERE run_id = ? ORDER BY version",
        (run_id,),
    ).fetchall()
    previous = ""
    updates = []
    for position, version, type_, schema_version, recorded_at, causation, data in rows:
        data = edit.get(version, data)
        previous = chain_hash(
            previous, run_id=run_id, version=version, type=type_, schema_version=schema_version,
            recorded_at=recorded_at, causation=causation, data=data, key=key,
        )  # fmt: skip
        updates.append((data, previous, position))
    conn.close()
    tamper(path, "SELECT 1")
    conn = sqlite3.connect(path)
    conn.executemany("UPDATE events SET data = ?, hash = ? WHERE position = ?", updates)
    conn.commit()
    conn.close()


def verdict(path: Path, key: bytes | None = KEY, **kwargs: object):  # type: ignore[no-untyped-def]
    with SQLiteEventStore(path, key=key) as store:
        return verify_log(store, **kwargs)  # type: ignore[arg-type]


def problems(path: Path, key: bytes | None = KEY) -> dict[str, list[str]]:
    found = verdict(path, key)
    out = {run.run_id: [p.problem for p in run.problems] for run in found.runs}
    # the tampering dropped the triggers: that repair is reported too, and tested apart
    out["database"] = [p for p in found.database if "triggers were missing" not in p]
    return out


# -- the chain -------------------------------------------------------------------------


def test_an_intact_keyed_log_verifies(tmp_path: Path) -> None:
    found = verdict(build(tmp_path / "e.db"))
    assert found.ok, found
    assert [r.authentication for r in found.runs] == ["keyed", "keyed"]


def test_a_row_rewritten_with_the_public_formula_is_found(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    task = '{"type":"task.added","task_id":"t1","title":"Create backdoor.py"}'
    rewrite_chain(db, "a", None, {2: task})  # no key: plain sha256, run.started untouched

    found = problems(db)

    assert any("run.started names key" in p for p in found["a"]), found
    assert any("unkeyed: it was rewritten without the key" in p for p in found["a"]), found
    assert found["b"] == []


def test_a_keyed_run_downgraded_whole_is_found_by_the_keyed_mark(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    started = '{"type":"run.started","goal":"g","workspace":"/w"}'  # key_id deleted too
    rewrite_chain(db, "b", None, {1: started})

    found = problems(db)

    assert found["b"] == [
        "the log is written keyed from position 1, but this run's chain is unkeyed: it was "
        "rewritten without the key"
    ]
    assert found["a"] == [] and found["database"] == []


def test_the_keyed_mark_cannot_be_moved_without_the_key(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    conn = sqlite3.connect(db)
    (value,) = conn.execute("SELECT value FROM store_meta").fetchone()
    conn.close()
    tamper(db, "UPDATE store_meta SET value = ?", params=("9" + value,))

    assert "does not match its MAC" in " ".join(problems(db)["database"])


def test_a_deleted_keyed_mark_is_found_while_a_keyed_run_remains(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    tamper(db, "DELETE FROM store_meta")
    assert problems(db)["database"] == [
        "runs are keyed, but the log's keyed mark is missing: it was deleted"
    ]


def test_without_the_key_a_keyed_log_is_checked_but_not_authenticated(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    found = verdict(db, key=None)
    assert found.ok
    assert {r.authentication for r in found.runs} == {
        "not authenticated (key " + ChainKey(KEY).id + ")"
    }
    assert not verdict(db, key=b"another key").ok, "the wrong key fails"


# -- blobs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("content = CAST('print(''pwned'')' AS BLOB)", "hashes to"),
        ("size = size + 1", "were stored"),
    ],
)
def test_get_refuses_a_blob_that_changed(tmp_path: Path, change: str, message: str) -> None:
    db = build(tmp_path / "e.db")
    with SQLiteEventStore(db) as store:
        digest = store.put(b"print('hello')")
    tamper(db, f"UPDATE blobs SET {change} WHERE digest = ?", params=(digest,))
    with SQLiteEventStore(db) as store, pytest.raises(BlobCorrupt, match=message):
        store.get(digest)


def test_verify_names_the_event_whose_blob_changed_and_every_stray_blob(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    with SQLiteEventStore(db) as store:
        stray = store.put(b"nobody refers to me")
    tamper(
        db,
        "UPDATE blobs SET content = CAST('new A' || char(10) AS BLOB) WHERE content = CAST('new a' || char(10) AS BLOB)",
        f"UPDATE blobs SET content = CAST('changed' AS BLOB) WHERE digest = '{stray}'",
    )

    found = verdict(db)

    run_a = found.runs[0]
    assert [(p.version, p.type) for p in run_a.problems] == [(3, "tool.executed")]
    assert "is corrupt" in run_a.problems[0].problem
    assert found.runs[1].ok
    assert [p for p in found.database if stray in p], found.database


def test_verify_names_a_blob_that_is_missing(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    tamper(db, "DELETE FROM blobs WHERE content = CAST('old b' || char(10) AS BLOB)")
    assert [p.split(" in this")[0][:7] for p in problems(db)["b"]] == ["no blob"]


@pytest.mark.parametrize(
    "holder",
    ["a request's tools", "a request's message", "an answer", "an answer's argument",
     "a tool's argument"],
)  # fmt: skip
@pytest.mark.parametrize("change", ["delete", "rewrite"])
def test_verify_checks_every_blob_an_event_names(tmp_path: Path, holder: str, change: str) -> None:
    """A request's tools (``tools_ref``), a long answer (``content_ref``) and a long
    tool-call argument (``argument_refs``) were no blob verify checked: deleted, the
    run still verified (and a replay blamed the engine); changed, ``verify RUN`` said
    ok. Each is its run's problem now, named at its event."""
    from events.schema import Message, ModelRequested, ModelResponded, ToolCall, ToolRequested

    db = tmp_path / "e.db"
    contents = {name: f"{name}: the whole of it\n".encode() for name in (
        "a request's tools", "a request's message", "an answer", "an answer's argument",
        "a tool's argument")}  # fmt: skip
    with SQLiteEventStore(db, key=KEY) as store:
        ref = {name: store.put(content) for name, content in contents.items()}
        store.append(
            "a",
            [
                RunStarted(goal="g", workspace="/w", key_id=store.key_id),
                ModelRequested(
                    call_id="m1",
                    role="coding",
                    model="m",
                    request_digest="0" * 64,
                    tools_ref=ref["a request's tools"],
                    messages=(
                        Message(role="user", content="pre", content_ref=ref["a request's message"]),
                    ),
                ),
                ModelResponded(
                    call_id="m1",
                    content="pre",
                    content_ref=ref["an answer"],
                    tool_calls=(
                        ToolCall(
                            id="c1",
                            name="create_file",
                            argument_refs={"content": ref["an answer's argument"]},
                        ),
                    ),
                ),
                ToolRequested(
                    call_id="c1",
                    tool="create_file",
                    argument_refs={"content": ref["a tool's argument"]},
                ),
            ],
            0,
        )
        assert verify_log(store).ok
    sql = (
        "DELETE FROM blobs WHERE digest = ?"
        if change == "delete"
        else "UPDATE blobs SET content = CAST('other' AS BLOB) WHERE digest = ?"
    )
    tamper(db, sql, params=(ref[holder],))

    for runs in (None, ["a"]):  # the whole log, and `autonomy verify a`
        found = verdict(db, run_ids=runs)
        (run,) = found.runs
        assert not run.ok, (holder, change, runs)
        assert [p.type for p in run.problems] == [
            {"a request's tools": "model.requested", "a request's message": "model.requested",
             "an answer": "model.responded", "an answer's argument": "model.responded",
             "a tool's argument": "tool.requested"}[holder]
        ]  # fmt: skip
        assert ref[holder] in run.problems[0].problem


# -- the database --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("DROP INDEX idx_events_type", "index idx_events_type on events is missing"),
        (
            "DROP INDEX idx_events_run_id_version;"
            " CREATE UNIQUE INDEX idx_events_run_id_version ON events (run_id, version)"
            " WHERE version < 3",
            "index idx_events_run_id_version on events is not as autonomy makes it",
        ),
        ("CREATE INDEX mine ON blobs (size)", "index mine on blobs is not autonomy's"),
        (
            "CREATE UNIQUE INDEX events_type_run ON events (type, run_id, version)",
            "index events_type_run on events is not as autonomy makes it",
        ),
        ("NOT NULL", "table events is not as autonomy makes it"),
        ("CHECK", "table events is not as autonomy makes it"),
        ("REFERENCES", "table events is not as autonomy makes it"),
        ("GENERATED", "table events is not as autonomy makes it"),
        ("ON CONFLICT", "table events is not as autonomy makes it"),
        ("COLLATE", "table events is not as autonomy makes it"),
        ("DROP TABLE repairs", "table repairs is missing"),
    ],
    ids=["index-dropped", "unique-index-made-partial", "foreign-index",
         "audit-index-made-unique", "not-null-taken-off",
         "check-added", "reference-added", "generated-column", "replace-on-conflict",
         "collation", "repairs-dropped"],
)  # fmt: skip
def test_verify_compares_the_tables_and_indexes_with_autonomys(
    tmp_path: Path, change: str, said: str
) -> None:
    """A dropped index, a unique index made partial under its name (a second row at
    a version then went in), a NOT NULL taken off (a row without a run id): verify
    said ok of each, and of what they let in until it was there."""
    db = build(tmp_path / "e.db")
    conn = sqlite3.connect(db)
    rewritten = {  # the events table's CREATE, as writable_schema lets one rewrite it
        "NOT NULL": '"run_id" TEXT',
        "CHECK": '"run_id" TEXT NOT NULL CHECK ("run_id" != \'x\')',
        "REFERENCES": '"run_id" TEXT NOT NULL REFERENCES store_meta (name)',
        "GENERATED": '"run_id" TEXT NOT NULL, "v" AS (1)',
        # a row without a run id is then dropped in silence, not refused
        "ON CONFLICT": '"run_id" TEXT NOT NULL ON CONFLICT IGNORE',
        "COLLATE": '"run_id" TEXT NOT NULL COLLATE NOCASE',
    }
    if change in rewritten:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = replace(sql, '\"run_id\" TEXT NOT NULL', ?)"
            " WHERE name = 'events'",
            (rewritten[change],),
        )
    else:
        conn.executescript(change)
    conn.commit()
    conn.close()
    found = problems(db)
    assert [p for p in found["database"] if said in p], found["database"]
    assert all(not runs for name, runs in found.items() if name != "database")
    intact = problems(build(tmp_path / "intact.db"))
    assert intact["database"] == []


def test_the_audit_indexes_are_autonomys_own_whichever_autonomy_made_them(
    tmp_path: Path,
) -> None:
    """``audit`` and ``serve`` make the audit views' indexes: verify then said
    "FAILED index events_type_run on events is not autonomy's (made since)" of an
    intact log, as of an index an intruder made. So for the index an earlier
    autonomy made, which the next audit drops."""
    from click.testing import CliRunner

    from engine.cli import cli
    from events.sqlite import REPLACED_AUDIT_INDEXES

    db = build(tmp_path / "e.db")
    audited = CliRunner().invoke(cli, ["audit", "tasks", "--db", str(db)])
    assert audited.exit_code == 0, audited.output
    with sqlite3.connect(db) as conn:
        made = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"events_type_run", "events_task_version", "events_call_id"} <= made
        for ddl in REPLACED_AUDIT_INDEXES.values():
            conn.execute(ddl)
    assert problems(db)["database"] == []


def test_dropped_triggers_are_put_back_by_a_writer_and_reported(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    tamper(db, "SELECT 1")  # drops every trigger

    with SQLiteEventStore(db) as store:  # a writer opens it
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.connection.execute("DELETE FROM events")
        found = verify_log(store)

    assert [p.split(":")[0] for p in found.database] == [
        "append-only triggers were missing or changed and were reinstalled"
    ]
    assert "events_append_only_delete" in found.database[0]


def test_triggers_that_keep_their_names_but_not_their_text_and_foreign_ones_are_found(
    tmp_path: Path,
) -> None:
    """Triggers were checked by name: ones that never fire (``WHEN 0``) passed, and a
    trigger of someone else's that deletes every tool result a writer appends went
    unnoticed by the writer."""
    db = build(tmp_path / "e.db")
    never = [
        f"CREATE TRIGGER {table}_append_only_{verb} BEFORE {verb} ON {table} WHEN 0 BEGIN "
        "SELECT 1; END"
        for table in ("events", "blobs", "store_meta", "repairs")
        for verb in ("update", "delete")
    ]
    forger = (
        "CREATE TRIGGER quietly AFTER INSERT ON events WHEN new.type = 'tool.executed' "
        "BEGIN DELETE FROM events WHERE position = new.position; END"
    )
    tamper(db, *never, forger)
    with SQLiteEventStore(db, read_only=True) as reader:
        problems = reader.database_problems()
    assert problems[0].startswith("append-only triggers are missing or changed: events_")
    assert problems[1] == "triggers that are not autonomy's: quietly"

    with SQLiteEventStore(db, key=KEY) as store:  # a writer opens it: puts them right
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store.connection.execute("DELETE FROM events")
        store.append("a", [ToolExecuted(call_id="c2", tool="read_file", ok=True)], 3)
        assert store.last_version("a") == 4
        found = verify_log(store)
    assert "append-only triggers were missing or changed and were reinstalled" in found.database[0]
    assert "triggers that were not autonomy's were removed: quietly" in found.database[0]


def test_a_view_in_the_place_of_the_events_table_is_refused(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    tamper(db, "ALTER TABLE events RENAME TO kept", "CREATE VIEW events AS SELECT * FROM kept")
    for read_only in (True, False):
        with pytest.raises(StoreCorrupted, match="events is a view where an autonomy log"):
            SQLiteEventStore(db, read_only=read_only)


def test_an_index_missing_rows_fails_integrity_check(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db")
    conn = sqlite3.connect(db)
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_events_type'").fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    (rootpage,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'idx_events_type'"
    ).fetchone()
    conn.execute("DELETE FROM sqlite_master WHERE name = 'idx_events_type'")
    conn.commit()
    conn.close()
    with SQLiteEventStore(db, key=KEY) as store:  # rows the index never sees
        store.append("c", [RunStarted(goal="g", workspace="/w", key_id=store.key_id)], 0)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "INSERT INTO sqlite_master VALUES ('index', 'idx_events_type', 'events', ?, ?)",
        (rootpage, sql),
    )
    conn.commit()
    conn.close()

    code, out = invoke("verify", "--db", db)

    assert code == 1
    assert "database: FAILED integrity_check: " in out and "idx_events_type" in out


# -- every run -------------------------------------------------------------------------------


def test_one_bad_run_does_not_stop_the_others_and_json_says_the_same(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db", key=load_key(create=True), runs=("a", "b", "c"))
    tamper(db, "UPDATE events SET data = '{not json' WHERE run_id = 'b' AND version = 2")

    code, out = invoke("verify", "--db", db)

    assert code == 1
    lines = out.splitlines()
    assert lines[1] == "a: ok (3 events, keyed)"
    assert lines[2].startswith("b: FAILED at position 5 (version 2, task.added): hash does not")
    assert "b: FAILED event at position 5, type 'task.added': data is not valid JSON" in out
    assert "c: ok (3 events, keyed)" in lines
    code, out = invoke("verify", "--db", db, "--json")
    document = json.loads(out.splitlines()[0])
    assert code == 1 and document["ok"] is False
    assert [(r["run_id"], r["ok"], len(r["problems"])) for r in document["runs"]] == [
        ("a", True, 0),
        ("b", False, 2),
        ("c", True, 0),
    ]


class OneRunUnreadable(SQLiteEventStore):
    """A store whose run ``b`` cannot be read, as a damaged page makes one run."""

    def _rows(self, run_id: str, after: int, upto: int | None) -> Iterator[Row]:
        if run_id == "b":
            raise StoreCorrupted(f"reading run {run_id!r}: database disk image is malformed")
        return super()._rows(run_id, after, upto)


def test_an_unreadable_run_is_reported_and_the_runs_after_it_are_checked(tmp_path: Path) -> None:
    db = build(tmp_path / "e.db", runs=("a", "b", "c"))

    with OneRunUnreadable(db, key=KEY) as store:
        found = verify_log(store)

    assert [(r.run_id, r.ok, r.authentication) for r in found.runs] == [
        ("a", True, "keyed"),
        ("b", False, "unreadable"),
        ("c", True, "keyed"),
    ]
    assert "database disk image is malformed" in found.runs[1].problems[0].problem


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("hash", b"blob"),
        ("hash", None),
        ("type", b"model.requested"),
        ("type", None),
        ("schema_version", "x"),
        ("schema_version", None),
        ("data", None),
        ("recorded_at", None),
        ("causation", "x"),
        ("causation", b"x"),
        ("recorded_at", "q"),
        ("version", "x"),
        ("version", 1.5),
    ],
    ids=repr,
)
def test_a_cell_of_another_type_is_a_finding_never_a_traceback(
    tmp_path: Path, column: str, value: object
) -> None:
    """SQLite keeps any type in any column of a file someone edited (NOT NULL too,
    once the schema is rewritten): each such cell made verify, events, state or
    checkpoint end in a TypeError or ValueError (a replay, the run page's trace: a
    causation of bytes, a time that is no time)."""
    from engine.runs.replay import replay
    from engine.runs.verification import verify_log
    from engine.web.trace import build_trace
    from events.checkpoints import take
    from events.errors import AutonomyError
    from projections import project

    db = build(tmp_path / "e.db")
    tamper(
        db,
        "PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = replace(sql, 'NOT NULL', '') WHERE name = 'events'",
        "PRAGMA writable_schema = OFF",
    )
    tamper(
        db, f"UPDATE events SET {column} = ? WHERE run_id = 'a' AND version = 2", params=(value,)
    )
    with SQLiteEventStore(db, read_only=True, key=KEY) as store:
        verdict = verify_log(store)
        assert not verdict.ok
        assert [run.run_id for run in verdict.runs if not run.ok] == ["a"]
        for read in (
            lambda: list(store.read("a")),
            lambda: project(store, "a"),
            lambda: take(store),
            lambda: replay(store, "a", tools="recorded"),
            lambda: build_trace(list(store.read("a"))).seconds,
        ):
            with contextlib.suppress(AutonomyError):  # a clear error, or no read reaches it
                read()
    blob = tmp_path / "b.db"
    build(blob)
    for content in (None, "text"):
        tamper(blob, "DELETE FROM blobs", "INSERT INTO blobs VALUES ('d', 4, ?)", params=(content,))
        with SQLiteEventStore(blob, read_only=True, key=KEY) as store, pytest.raises(BlobCorrupt):
            store.get("d")


@pytest.mark.parametrize("keyed", [True, False])
def test_runs_appended_to_while_verify_reads_are_no_finding(tmp_path: Path, keyed: bool) -> None:
    """verify counted each run's rows, then walked its chain: a run that appended in
    between had "rows where no read goes", and a log's first keyed run started in
    between "a deleted keyed mark" (verify while runs go on exited 1)."""
    db = tmp_path / "e.db"
    key = KEY if keyed else None
    with SQLiteEventStore(db, key=None) as old:
        old.append("old", [RunStarted(goal="g", workspace="/w")], 0)  # from before keys
    with SQLiteEventStore(db, key=key) as reader, SQLiteEventStore(db, key=key) as writer:
        counted = reader.row_extents

        marked = reader.keyed_marker

        def meanwhile() -> list[object]:
            extents = counted()  # then another process appends, as a run does
            writer.append("old", [TaskAdded(task_id="t", title="x")], 1)
            return extents  # type: ignore[return-value]

        def first_keyed_run_meanwhile() -> str | None:
            marker = marked()  # then the log's first keyed run starts: it writes the mark
            if writer.last_version("b") == 0:
                started = RunStarted(goal="g", workspace="/w", key_id=writer.key_id)
                writer.append("b", [started], 0)
            return marker

        reader.row_extents = meanwhile  # type: ignore[method-assign]
        if keyed:
            reader.keyed_marker = first_keyed_run_meanwhile  # type: ignore[method-assign]
        verdict = verify_log(reader)
        assert verdict.ok, (verdict.database, [(r.run_id, r.problems) for r in verdict.runs])
        assert verify_log(SQLiteEventStore(db, key=key, read_only=True)).ok


@pytest.mark.parametrize("run_id", ["NULL", "x'72756e'"], ids=["null", "blob"])
def test_a_run_id_that_is_not_text_is_the_databases_problem_not_a_traceback(
    tmp_path: Path, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row whose run id is NULL (the NOT NULL taken off the table) or a BLOB ended
    ``verify`` in a traceback, and ``checkpoint`` wrote a checkpoint of a "run" named
    by the blob's base64, sealing the forgery in."""
    db = build(tmp_path / "e.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "UPDATE sqlite_master SET sql = replace(sql, '\"run_id\" TEXT NOT NULL', '\"run_id\" TEXT')"
        " WHERE name = 'events'"
    )
    conn.commit()
    conn.close()
    tamper(
        db,
        f"INSERT INTO events (run_id, version, type, schema_version, recorded_at, hash, data)"
        f" SELECT {run_id}, version, type, schema_version, recorded_at, hash, data"
        " FROM events WHERE run_id = 'a'",
    )
    monkeypatch.setenv("AUTONOMY_KEY_FILE", str(tmp_path / "key"))
    (tmp_path / "key").write_bytes(KEY)
    (tmp_path / "key").chmod(0o600)
    code, out = invoke("verify", "--db", db)
    assert code == 1
    assert "run id that is not text" in out
    assert "a: ok" in out and "b: ok" in out
    code, out = invoke("checkpoint", "--db", db)
    assert code == 0
    assert [json.loads(line)["run_id"] for line in out.splitlines()] == ["a", "b"]
