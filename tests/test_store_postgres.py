"""What the PostgreSQL store does beyond the contract: the database itself refuses
changes to the log (triggers, and a role without the privilege), leases die with
their session, concurrent writers, migrations."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from click.testing import CliRunner
from waiting import reaped

from engine.cli import cli
from engine.errors import ConfigError
from engine.runs.workers import submit
from engine.storage import open_store
from events import (
    ConcurrencyError,
    ModelRequested,
    ModelResponded,
    RunFinished,
    RunStarted,
    TaskAdded,
    ToolExecuted,
    ToolRequested,
    Usage,
)
from events.errors import EventStoreError, LeaseHeld, LeaseLost, StoreUnavailable
from events.postgres import SCHEMA_VERSION, PostgresEventStore, redacted

START = RunStarted(goal="g", workspace="/w", config={})
TASK = TaskAdded(task_id="t1", title="a task")


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresEventStore]:
    opened = PostgresEventStore(pg_url)
    yield opened
    opened.close()


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "DROP TRIGGER blobs_no_truncate ON blobs",
    ],
)
def test_verify_says_when_an_append_only_trigger_is_gone(
    store: PostgresEventStore, pg_url: str, statement: str
) -> None:
    store.append("r", [START], 0)
    code = CliRunner().invoke(cli, ["verify", "--db", pg_url])
    assert code.exit_code == 0, code.output
    assert "database: ok (append-only triggers and their definitions, 0 blobs)" in code.output
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the schema's owner can
        conn.execute(statement)
    name = statement.split("TRIGGER ")[1].split()[0]
    assert store.database_problems() == [f"append-only triggers are missing or disabled: {name}"]
    code = CliRunner().invoke(cli, ["verify", "--db", pg_url])
    assert code.exit_code == 1
    assert f"database: FAILED append-only triggers are missing or disabled: {name}" in code.output


OVERLOAD = (  # what a writer called: psycopg sends a small number as a smallint
    "CREATE FUNCTION autonomy_append(run text, first_version smallint, at text, types text[],"
    " schema_versions integer[], causations bigint[], hashes text[], payloads text[])"
    " RETURNS bigint LANGUAGE sql AS $$ SELECT 1::bigint $$"
)


IDS = (
    "replica-only", "no-op function", "when-false", "append dropped", "foreign", "rule",
    "row security", "constraint", "overload",
)  # fmt: skip


@pytest.mark.parametrize(
    ("statements", "said"),
    [
        (
            ["ALTER TABLE events ENABLE REPLICA TRIGGER events_append_only"],
            "append-only triggers are missing or disabled: events_append_only",
        ),
        (
            [
                "CREATE OR REPLACE FUNCTION autonomy_append_only() RETURNS trigger"
                " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$"
            ],
            "function autonomy_append_only() is not as autonomy makes it",
        ),
        (
            [
                "DROP TRIGGER events_append_only ON events",
                "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events"
                " FOR EACH ROW WHEN (false) EXECUTE FUNCTION autonomy_append_only()",
            ],
            "trigger events_append_only on events is not as autonomy makes it",
        ),
        (
            [
                "CREATE OR REPLACE FUNCTION autonomy_append(run text, first_version integer,"
                " at text, types text[], schema_versions integer[], causations bigint[],"
                " hashes text[], payloads text[]) RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$"
            ],
            "function autonomy_append(",
        ),
        (
            [
                "CREATE FUNCTION forget() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
                "CREATE TRIGGER forget BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION forget()",
            ],
            "trigger forget on events is not autonomy's",
        ),
        (
            [
                "CREATE RULE quiet AS ON INSERT TO events WHERE NEW.type = 'run.finished'"
                " DO INSTEAD NOTHING"
            ],
            "rule quiet on events is not autonomy's",
        ),
        (
            [
                "ALTER TABLE events ENABLE ROW LEVEL SECURITY",
                "ALTER TABLE events FORCE ROW LEVEL SECURITY",
                "CREATE POLICY shown ON events FOR SELECT USING (version < 2)",
            ],
            "policy shown on events is not autonomy's",
        ),
        (
            ["ALTER TABLE events DROP CONSTRAINT events_run_id_version_key"],
            "constraint events_run_id_version_key on events is missing",
        ),
        (
            [OVERLOAD],
            "function autonomy_append(run text, first_version smallint, at text, types"
            " text[], schema_versions integer[], causations bigint[], hashes text[], payloads"
            " text[]) is not autonomy's",
        ),
    ],
    ids=IDS,
)
def test_verify_compares_every_trigger_and_function_with_autonomys(
    store: PostgresEventStore, pg_url: str, statements: list[str], said: str
) -> None:
    """verify checked the triggers by name and enabled flag only: a trigger firing on
    replicas only, re-made WHEN (false), its function made a no-op, or autonomy_append
    made to drop what it is given (acknowledged appends lost) all said "ok"."""
    store.append("r", [START], 0)
    assert store.database_problems() == []
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the schema's owner can
        for statement in statements:
            conn.execute(statement)
    problems = store.database_problems()
    assert any(said in problem for problem in problems), problems
    code = CliRunner().invoke(cli, ["verify", "--db", pg_url])
    assert code.exit_code == 1 and "database: FAILED" in code.output, code.output


def test_an_overload_of_autonomy_append_is_never_what_a_writer_calls(
    store: PostgresEventStore, pg_url: str
) -> None:
    """Whoever owns the schema made ``autonomy_append`` taking a ``smallint`` version,
    dropping every ``run.finished``: psycopg sends a small number as one, so every
    writer called it (the run never ended, "exit 1" with nothing said) and verify
    said ok. Each argument is cast now (and verify names the foreign function)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(OVERLOAD)
    store.append("r", [START], 0)
    store.append("r", [TASK, RunFinished(status="completed")], 1)  # through the function
    assert [e.type for e in store.read("r")] == ["run.started", "task.added", "run.finished"]


def test_verify_compares_the_audit_views_with_autonomys(pg_url: str) -> None:
    """A view was checked by the digest in its comment, which its owner may keep: a
    view emptied with its comment kept made ``audit tool-failures`` say "(no rows)"
    on a log with failures, and verify "ok"."""
    with open_store(pg_url) as store:
        store.append("r", [START], 0)
        assert store.database_problems() == []
        with psycopg.connect(pg_url, autocommit=True) as conn:
            (definition,) = conn.execute("SELECT pg_get_viewdef('tool_calls')").fetchone()
            body = definition.strip().rstrip(";")
            conn.execute(
                f"CREATE OR REPLACE VIEW tool_calls AS SELECT * FROM ({body}) x WHERE false"
            )
        assert "view tool_calls is not as autonomy makes it (changed since it was made)" in (
            store.database_problems()
        )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET data = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE blobs SET content = ''",
        "DELETE FROM blobs",
        "TRUNCATE blobs",
    ],
)
def test_the_database_refuses_to_change_the_log(
    store: PostgresEventStore, pg_url: str, statement: str
) -> None:
    store.append("r", [START], 0)
    store.put(b"content")
    with (
        psycopg.connect(pg_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        conn.execute(statement)
    assert store.verify("r").ok and store.get(store.put(b"content")) == b"content"


def test_concurrent_writers_on_one_run_never_fork_it(pg_url: str) -> None:
    stores = [PostgresEventStore(pg_url) for _ in range(4)]
    stores[0].append("r", [START], 0)
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def write(store: PostgresEventStore, n: int) -> None:
        barrier.wait(timeout=30)
        try:
            store.append("r", [TaskAdded(task_id=f"t{n}", title="x")], 1)
            outcomes.append("ok")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
        assert stores[1].last_version("r") == 2 and stores[2].verify("r").ok
        assert [r.position for r in stores[3].read_all()] == [1, 2]
    finally:
        for store in stores:
            store.close()


def test_a_lease_ends_with_its_process_however_it_dies(pg_url: str) -> None:
    holder = textwrap.dedent(
        f"""
        import sys
        from events.postgres import PostgresEventStore
        with PostgresEventStore({pg_url!r}).lease("r", "the holder"):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    store = PostgresEventStore(pg_url)
    with reaped(process), contextlib.closing(store):
        assert process.stdout is not None and process.stdout.readline() == "held\n"
        with pytest.raises(LeaseHeld, match="the holder"), store.lease("r", "me"):
            pass
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        # the server ends the dead client's session as soon as it sees the socket close
        deadline = time.monotonic() + 30
        while True:
            try:
                with store.lease("r", "me"):
                    break
            except LeaseHeld:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def test_a_lease_that_ends_is_free_at_once_however_slowly_the_server_ends_the_session(
    store: PostgresEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease ends with its context, not when the server has noticed its connection
    close: a loaded server did that after the next engine had been refused (seen as a
    flaky contract test). The close is held back here, as such a server holds it."""
    kept: list[psycopg.Connection[Any]] = []
    monkeypatch.setattr(psycopg.Connection, "close", lambda self: kept.append(self))
    try:
        with store.lease("r", "first"):
            pass
        with store.lease("r", "second"):
            pass
        assert len(kept) == 2, "both sessions are still open"
    finally:
        monkeypatch.undo()
        for conn in kept:
            conn.close()


def test_an_engine_whose_lease_session_ended_writes_no_more(
    store: PostgresEventStore, pg_url: str
) -> None:
    """The lease is a lock held by one session; nothing looked at that session again:
    a server restarted, an idle timeout or a cut network ended it, the engine went on
    appending through its pool, and a second engine's resume of the live run was
    accepted. An append of a leased run first checks the session still holds it."""
    store.append("r", [START], 0)
    with store.lease("r", "first engine"):
        store.append("r", [TASK], 1)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d"
                " ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted"
                " AND d.datname = current_database()"
            ).fetchall()
        assert ended == [(True,)]
        with pytest.raises(LeaseLost, match="another engine may run it now"):
            store.append("r", [TASK], 2)
        with store.lease("r", "second engine"):  # free for another
            pass
    assert store.last_version("r") == 2
    store.append("r", [TASK], 2)  # no lease held: nothing to check


def test_a_silent_client_cannot_hold_an_append_transaction_for_ever(
    store: PostgresEventStore,
) -> None:
    """A client gone silent inside a run's first append held the log-wide append
    lock until TCP noticed (hours): every machine's appends waited."""
    with store._conn("checking") as conn:
        (timeout,) = conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
    assert timeout == "1min"


def test_migrations_are_versioned_and_a_newer_schema_is_refused(
    store: PostgresEventStore, pg_url: str
) -> None:
    store.append("r", [START], 0)
    with PostgresEventStore(pg_url) as again:  # opening again migrates nothing
        assert again.last_version("r") == 1
    with psycopg.connect(pg_url, autocommit=True) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM autonomy_schema")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        conn.execute("INSERT INTO autonomy_schema VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(EventStoreError, match="newer than this autonomy knows"):
        PostgresEventStore(pg_url)


def test_an_unreachable_server_is_one_clear_error_without_the_password() -> None:
    url = "postgresql://me:s3cret@/nowhere?host=/nonexistent-socket-dir"
    with pytest.raises(EventStoreError, match="opening") as caught:
        PostgresEventStore(url, connect_timeout=2)
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in redacted(url)


def writer_url(pg_url: str, prefix: str) -> str:
    """``pg_url`` as a new role that ``grant-writer`` made a writer of the log."""
    role = prefix + pg_url.rsplit("%3D", 1)[1]  # one per test schema: roles are global
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    granted = CliRunner().invoke(cli, ["grant-writer", role, "--db", pg_url])
    assert granted.exit_code == 0, granted.output
    return pg_url.replace("postgres@", f"{role}@", 1)


def test_a_writer_role_runs_runs_but_may_not_change_the_log(pg_url: str, tmp_path: Path) -> None:
    as_writer = writer_url(pg_url, "writer_")

    with open_store(as_writer) as store:
        with store.lease("r", "a worker"):
            store.append("r", [START, TaskAdded(task_id="t1", title="x")], 0)
        digest = store.put(b"content")
        submit(store, "another goal", tmp_path, run_id="queued")
        assert store.verify("r").ok and store.get(digest) == b"content"
        # a role that may not make the scratch schema is told, and not failed
        assert store.database_problems() == []
        assert "definitions not compared" in store.database_checks
        runs = cast(Any, store).connection.execute("SELECT run_id, events FROM runs").fetchall()
        assert runs == [("r", 2)]
    with psycopg.connect(as_writer, autocommit=True) as conn:
        for statement in ("UPDATE events SET data = '{}'", "DELETE FROM events",
                          "TRUNCATE events", "UPDATE blobs SET size = 0", "DELETE FROM blobs",
                          "TRUNCATE store_meta", "CREATE TABLE mine (x int)"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_a_row_a_writer_inserts_takes_the_next_position_whatever_it_gives(
    pg_url: str,
) -> None:
    """A writer role may insert rows (a forged one fails verify). One at position
    2^63 - 1 made every later append, by any writer or the owner, fail for good with
    "bigint out of range", and no writer may delete a row. A row's position is the
    log's next now, whatever the insert gives or the inserter's search path holds."""
    as_writer = writer_url(pg_url, "inserter_")
    with open_store(pg_url) as store:
        store.append("r", [START], 0)
    with psycopg.connect(as_writer, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO events VALUES (9223372036854775807, 'x', 1, 'run.started', 1,"
            " '2026-01-01T00:00:00Z', NULL, 'h', '{}')"
        )
        conn.execute("CREATE TEMPORARY TABLE events (position bigint)")  # shadows, for them
        conn.execute("INSERT INTO pg_temp.events VALUES (9223372036854775000)")
        conn.execute(
            'INSERT INTO "' + pg_url.rsplit("%3D", 1)[1] + "\".events VALUES (5, 'y', 1,"
            " 'run.started', 1, '2026-01-01T00:00:00Z', NULL, 'h', '{}')"
        )
    with open_store(pg_url) as store:
        store.append("r", [TASK], 1)  # it was "bigint out of range"
        positions = (
            cast(Any, store)
            .connection.execute("SELECT run_id, position FROM events ORDER BY position")
            .fetchall()
        )
        assert positions == [("r", 1), ("x", 2), ("y", 3), ("r", 4)]
        assert not store.verify("x").ok  # the forged rows are still found out


def test_a_writer_cannot_store_a_blob_under_another_contents_digest(pg_url: str) -> None:
    """A writer role's blob under the digest of a file a run would write later, with
    other bytes, was kept (an append stores blobs ``ON CONFLICT DO NOTHING``): that
    file's real content was never in the log, and verify only said "corrupt"."""
    import hashlib

    later = b"the file a run writes later\n"
    digest = hashlib.sha256(later).hexdigest()
    with psycopg.connect(writer_url(pg_url, "blobber_"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO blobs VALUES (%s, %s, %s)", (digest, len(later), b"other bytes")
            )
        with pytest.raises(psycopg.errors.CheckViolation):  # its size must be its length
            conn.execute("INSERT INTO blobs VALUES (%s, %s, %s)", (digest, 1, later))
    with open_store(pg_url) as store:
        assert store.put(later) == digest and store.get(digest) == later


def test_verify_on_a_server_that_takes_no_write_checks_the_chains_and_says_what_it_left(
    pg_url: str,
) -> None:
    """With read-only transactions (a standby, ``default_transaction_read_only``),
    verify failed outright ("cannot execute CREATE SCHEMA in a read-only
    transaction", from the definitions' scratch schema) and checked no run."""
    with open_store(pg_url) as store:
        store.append("r", [START], 0)
    read_only = pg_url + "%20-cdefault_transaction_read_only%3Don"
    code = CliRunner().invoke(cli, ["verify", "--db", read_only])
    assert code.exit_code == 0, code.output
    assert "definitions not compared, since the server takes no write here" in code.output
    assert "r: ok (1 events" in code.output


def test_a_run_queued_twice_is_refused_in_one_line(pg_url: str, tmp_path: Path) -> None:
    """The second submit of one run id printed the driver's "duplicate key value
    violates unique constraint" with its DETAIL."""
    with open_store(pg_url) as store:
        submit(store, "a goal", tmp_path, run_id="job-1")
    result = CliRunner().invoke(
        cli, ["submit", "a goal", "--workspace-template", str(tmp_path), "--run-id", "job-1",
              "--db", pg_url],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "Error: run job-1 is already queued"


def test_a_run_with_an_empty_goal_is_not_queued(pg_url: str, tmp_path: Path) -> None:
    with open_store(pg_url) as store:
        with pytest.raises(ConfigError, match="the goal is empty"):
            submit(store, "  \n", tmp_path, run_id="blank")
        queued = cast(Any, store).connection.execute("SELECT count(*) FROM queue").fetchone()
        assert queued == (0,)


def test_text_holding_a_nul_is_kept_and_neither_appends_nor_audits_fail(pg_url: str) -> None:
    """A log keeps any text (a command's output, a model's answer may hold a NUL).
    PostgreSQL's JSON operators refuse a document with a ``\\u0000`` in it: once the
    audit indexes existed every such append failed (the run died), and every view or
    query reading such an event failed. Indexes made by an older autonomy, on the bare
    expression, are made again."""
    from engine.runs.audit import QUERIES, ensure_indexes, run_query

    with open_store(pg_url) as store:
        connection = cast(Any, store).connection
        connection.execute(
            "CREATE INDEX events_call_id ON events(run_id, type, (data->>'call_id'))"
        )
        ensure_indexes(connection)
        store.append("r", [RunStarted(goal="g\x00oal", workspace="/w")], 0)
        definition = connection.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'events_call_id'"
        ).fetchone()[0]
        assert "autonomy_clean" in definition
        store.append(
            "r",
            [
                TaskAdded(task_id="t1", title="x\x00\x00y \\u0000 z"),
                ToolRequested(call_id="r/t4", tool="run_command", arguments={"argv": ["\x00"]}),
                ToolExecuted(
                    call_id="r/t4", tool="run_command", ok=False, error="e\x00", result="\x00"
                ),
                ModelRequested(call_id="r/m5", role="coder", model="m", request_digest="d"),
                ModelResponded(call_id="r/m5", content="a\x00b", usage=Usage(prompt_tokens=7)),
            ],
            1,
        )
        assert [e.data for e in store.read("r")][1].title == "x\x00\x00y \\u0000 z"
        assert store.verify("r").ok
        for name in QUERIES:
            run_query(connection, name, "r", ("x",) if name == "file-history" else ())
        title = connection.execute("SELECT title FROM tasks WHERE run_id = 'r'").fetchone()[0]
        assert title == "x\ufffd\ufffdy \\u0000 z", "a NUL reads as U+FFFD, an escaped one as it is"
        assert connection.execute("SELECT goal FROM runs").fetchall() == [("g\ufffdoal",)]
        failed = connection.execute("SELECT error FROM tool_calls WHERE ok = 0").fetchall()
        assert failed == [("e\ufffd",)]
        # a model's answer holding a NUL: its usage is read past it (``#>`` as ``->``)
        usage = run_query(connection, "model-usage", "r")
        assert [row[6] for row in usage.rows] == [7], usage


def test_a_worker_refuses_queue_rows_that_name_paths_and_touches_nothing(
    pg_url: str, tmp_path: Path
) -> None:
    """The queue is written by whoever may write the log, on another machine. A run id
    "../victim" made a worker remove that directory next to its own, then run in it;
    a template "/" would have been copied whole. Both are refused, and each row is
    marked done with the reason (a worker does not take it again)."""
    from engine.config import load_settings
    from engine.runs.workers import Worker

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    workdir = tmp_path / "work"
    workdir.mkdir()
    template = tmp_path / "template"
    template.mkdir()
    with open_store(pg_url) as store:
        with pytest.raises(ConfigError, match=r"run id '\.\./victim' is not allowed"):
            submit(store, "goal", template, run_id="../victim")
        connection = cast(Any, store).connection
        for run_id, named in (("../victim", template), ("rooted", Path("/"))):
            connection.execute(
                "INSERT INTO queue (run_id, goal, template) VALUES (?, ?, ?)",
                (run_id, "goal", str(named)),
            )
        said: list[str] = []
        settings = load_settings(env={}, overrides={"preflight": False})
        ran = Worker(store, workdir, lambda *_: settings, progress=said.append).run(once=True)
        outcomes = dict(connection.execute("SELECT run_id, outcome FROM queue").fetchall())
    assert ran == 2 and (victim / "keep.txt").read_text() == "precious"
    assert "is not allowed" in outcomes["../victim"]
    assert "the file system's root, a system directory" in outcomes["rooted"]
    assert list(workdir.iterdir()) == [], "nothing was copied, nothing made"


def test_a_full_disk_on_the_server_is_an_outage_like_sqlites() -> None:
    """As for a server that is down: the run stops with the resume hint, a worker
    waits, the service answers 503 (a full disk was a plain error before)."""
    from events.postgres import mapped_error

    error = mapped_error(psycopg.errors.DiskFull("could not extend file"), "appending")
    assert isinstance(error, StoreUnavailable) and "could not extend file" in str(error)


def test_grant_writer_names_a_missing_role_in_one_line(pg_url: str) -> None:
    result = CliRunner().invoke(cli, ["grant-writer", "nobody_at_all", "--db", pg_url])
    assert result.exit_code == 1 and result.output.startswith("Error: ")
    assert "nobody_at_all" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("role", ["public", "Public", "", " "])
def test_grant_writer_refuses_every_role_or_none(pg_url: str, role: str) -> None:
    """Quoted, "public" is still PostgreSQL's every role: it said "public may now
    append to and read the log" and let every login write it; "" was a syntax error
    over several lines."""
    result = CliRunner().invoke(cli, ["grant-writer", role, "--db", pg_url])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and "every role (PUBLIC) or none" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    with psycopg.connect(pg_url) as conn:
        granted = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = 'PUBLIC'"
            " AND table_schema = current_schema()"
        ).fetchone()
    assert granted == (0,)


def test_a_log_is_made_in_the_first_schema_of_the_path_even_when_a_later_has_one(
    pg_url: str,
) -> None:
    schema = pg_url.rsplit("%3D", 1)[1]
    with PostgresEventStore(pg_url) as store:
        store.append("r", [START], 0)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}_first")
    both = pg_url.replace(f"%3D{schema}", f"%3D{schema}_first%2C{schema}")
    with PostgresEventStore(both) as first:
        assert first.last_version("r") == 0
        first.append("r", [START, TaskAdded(task_id="t", title="x")], 0)
    with PostgresEventStore(pg_url) as store:
        assert store.last_version("r") == 1


def test_a_server_that_never_answers_is_unavailable_within_the_connect_timeout() -> None:
    """A socket that takes the connection and never says a word (a server hung, or
    a black hole between): opening the log gives up after ``connect_timeout`` as
    ``StoreUnavailable``, a fraction of a second included (libpq counts whole
    seconds, where 0 means waiting for ever)."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever reads
    port = silent.getsockname()[1]
    outcome: dict[str, BaseException] = {}

    def open_it() -> None:
        try:
            PostgresEventStore(f"postgresql://me@127.0.0.1:{port}/log", connect_timeout=0.5)
        except BaseException as e:
            outcome["error"] = e

    opener = threading.Thread(target=open_it, daemon=True)
    try:
        opener.start()
        opener.join(timeout=60)
        assert not opener.is_alive(), "opening waited for ever"
    finally:
        silent.close()
    assert isinstance(outcome.get("error"), StoreUnavailable), outcome


def test_the_urls_connect_timeout_is_the_stores_and_a_wrong_one_is_a_clear_error(
    pg_url: str,
) -> None:
    with PostgresEventStore(pg_url + "&connect_timeout=3") as store:
        assert store.connect_timeout == 3
    with PostgresEventStore(pg_url) as store:
        assert store.connect_timeout == 10
    with pytest.raises(EventStoreError, match=r"connect_timeout='soon': give a number of seconds"):
        PostgresEventStore(pg_url + "&connect_timeout=soon")
    code = CliRunner().invoke(cli, ["runs", "--db", pg_url + "&connect_timeout=soon"])
    assert code.exit_code == 1 and "Traceback" not in code.output, code.output
    assert "give a number of seconds" in code.output


def test_a_file_a_tool_wrote_is_found_in_a_postgres_log(store: PostgresEventStore) -> None:
    """``written_by_a_tool`` asks the log in SQL: the same query on PostgreSQL."""
    from engine.runs.workspace import written_by_a_tool
    from events.schema import FileChange

    content = b"[models.coding]\n"
    digest = hashlib.sha256(content).hexdigest()
    change = FileChange(path="autonomy.toml", after=digest, size=len(content))
    store.append(
        "r",
        [
            RunStarted(goal="g", workspace="/w"),
            ToolRequested(call_id="r/t2", tool="create_file", arguments={}),
            ToolExecuted(call_id="r/t2", tool="create_file", ok=True, files_changed=(change,)),
        ],
        0,
    )
    assert written_by_a_tool(store, "autonomy.toml", content) == ("r", 3)
    assert written_by_a_tool(store, "autonomy.toml", b"the user's own") is None
    assert written_by_a_tool(store, "other.toml", content) is None


def test_a_worker_refuses_a_template_whose_autonomy_toml_a_run_wrote(
    pg_url: str, tmp_path: Path
) -> None:
    """As ``autonomy run`` does (tests/test_confinement.py): a run's model wrote the
    template's ``autonomy.toml`` (a role pointed elsewhere); a worker taking a run of
    that template refuses it, and marks the row done with why."""
    from dataclasses import replace

    from engine.runs.demo import GOAL, DemoModels
    from engine.testing import ScriptedModelServer

    toml = '[models.coding]\nbase_url = "http://127.0.0.1:9"\n'

    class LeavesAConfig(DemoModels):
        def __call__(self, request: Any) -> Any:
            reply = super().__call__(request)
            if any(name == "create_file" for name, _ in reply.tool_calls):
                written = ("create_file", {"path": "autonomy.toml", "content": toml})
                reply = replace(reply, tool_calls=(*reply.tool_calls, written))
            return reply

    template = tmp_path / "template"
    with ScriptedModelServer(LeavesAConfig(), models=["m"]) as server:
        model = ["--model-url", server.url, "--api", "ollama", "--model", "m"]
        first = CliRunner().invoke(
            cli, ["run", GOAL, "--workspace", str(template), "--db", pg_url, "--run-id", "first",
                  *model],
        )  # fmt: skip
        assert first.exit_code == 0, first.output
        assert (template / "autonomy.toml").read_text() == toml
        queued = CliRunner().invoke(
            cli, ["submit", "next goal", "--workspace-template", str(template), "--run-id", "job",
                  "--db", pg_url],
        )  # fmt: skip
        assert queued.exit_code == 0, queued.output
        worked = CliRunner().invoke(
            cli, ["worker", "--once", "--db", pg_url, "--workdir", str(tmp_path / "runs"), *model],
        )  # fmt: skip
    assert worked.exit_code == 0 and "Traceback" not in worked.output, worked.output
    with open_store(pg_url) as store:
        outcome = (
            cast(Any, store)
            .connection.execute("SELECT outcome FROM queue WHERE run_id = 'job'")
            .fetchone()[0]
        )
        assert store.last_version("job") == 0, "nothing ran"
    assert outcome.startswith("error: ") and "is the file a tool of run first wrote" in outcome


APPEND_LOCK = "SELECT pg_advisory_lock(1635087472, hashtext(current_schema()))"
"""The append lock of the log in the connection's schema (``events.postgres``), held
until the session ends."""


def test_an_append_cut_by_a_lock_timeout_is_a_log_not_reachable_now(
    store: PostgresEventStore, pg_url: str
) -> None:
    """A statement cancelled (a lock wait past ``lock_timeout``, a DBA's cancel, a
    deadlock) failed the append as a plain error: a worker marked the queued run
    done with it while the log said running, and no worker took it up again. It
    is the log not taking the append now (``StoreUnavailable``): a run is cut off
    and resumed, a worker keeps it queued. Nothing was written."""
    store.append("r", [RunStarted(goal="g", workspace="/tmp/ws")], 0)
    patience = "options=-clock_timeout%3D200%20"  # and the search path, as before
    impatient = PostgresEventStore(pg_url.replace("options=", patience))
    try:
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute(APPEND_LOCK)
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                impatient.append("r", [TaskAdded(task_id="t1", title="x")], 1)
        assert store.last_version("r") == 1
        impatient.append("r", [TaskAdded(task_id="t1", title="x")], 1)  # free again
        assert store.last_version("r") == 2
    finally:
        impatient.close()


def test_a_lease_is_the_logs_not_every_schemas(pg_server: Any) -> None:
    """Advisory locks are the database's: a lease keyed by the run id alone refused a
    team's run job-1 while another team's job-1, in a schema of its own, ran."""
    from events.errors import LeaseHeld

    with (
        PostgresEventStore(pg_server.new_url()) as team_a,
        PostgresEventStore(pg_server.new_url()) as team_b,
        team_a.lease("job-1", "team a's worker"),
    ):
        with team_b.lease("job-1", "team b's worker"):
            pass
        with pytest.raises(LeaseHeld, match="team a's worker"), team_a.lease("job-1", "again"):
            pass


def test_the_append_lock_is_the_logs_not_every_schemas(pg_server: Any) -> None:
    """The append lock was one for the database: while one team's first append was
    held open (a machine gone silent mid-transaction, for up to a minute), every
    other team's log, in a schema of its own, took no append either."""
    team_a, team_b = pg_server.new_url(), pg_server.new_url()
    patience = "options=-clock_timeout%3D2000%20"  # a wait is an error, not a hang
    with (
        PostgresEventStore(team_a.replace("options=", patience)) as a,
        PostgresEventStore(team_b.replace("options=", patience)) as b,
        psycopg.connect(team_a) as holder,
    ):
        a.append("r", [START], 0)
        # team a's first append of a run, its transaction left open: the lock held
        PostgresEventStore._lock_for_new_run(holder, "held")
        b.append("r", [START], 0)  # a first append: in a transaction under the lock
        b.append("r", [TaskAdded(task_id="t1", title="x")], 1)  # autonomy_append
        assert b.last_version("r") == 2
        with pytest.raises(StoreUnavailable, match="lock timeout"):
            a.append("r", [TaskAdded(task_id="t1", title="x")], 1)
        holder.rollback()
        a.append("r", [TaskAdded(task_id="t1", title="x")], 1)
        assert a.last_version("r") == 2


def test_an_administrators_idle_session_timeout_does_not_take_the_pools_connections(
    pg_url: str,
) -> None:
    """A pooled connection idles between a run's steps by design: ended by the
    server's idle_session_timeout, it left the pool lending none for 10 s, and a
    worker's runs stopped and resumed over and over."""
    from waiting import wait_until

    timed = pg_url + "%20-cidle_session_timeout%3D300"  # 0.3 s, as an administrator sets
    with PostgresEventStore(timed, connect_timeout=3) as store:
        store.append("r", [START], 0)
        other = psycopg.connect(timed, autocommit=True)  # what the timeout does to one
        with psycopg.connect(pg_url, autocommit=True) as admin:

            def ended() -> bool:
                found = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                    (other.info.backend_pid,),
                ).fetchone()
                return found == (0,)

            wait_until(ended, "the server ends an idle session")
        other.close()
        assert store.last_version("r") == 1  # at once: a pooled connection is still there
        store.append("r", [TASK], 1)
