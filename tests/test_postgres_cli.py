"""Every command that opens a log takes a ``postgresql://`` URL: a run recorded into
PostgreSQL through ``autonomy run``, then read, audited, replayed and rewound."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from waiting import Gate, reaped

from engine.cli import cli
from engine.runs.audit import QUERIES
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store, resolve_db
from engine.testing import ScriptedModelServer
from events import RunFinished


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def record(db: str, workspace: Path) -> None:
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke(
            "run",
            GOAL,
            "--workspace",
            str(workspace),
            "--db",
            db,
            *("--model-url", server.url, "--api", "ollama", "--model", "m"),
            *("--run-id", "r1"),
        )
    assert code == 0, out
    assert "run r1: completed" in out


@pytest.fixture(scope="module")
def logs(pg_server: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A demo run recorded into PostgreSQL, and its events appended again, one by
    one, to an SQLite file (the same log but for the times)."""
    url = pg_server.new_url()  # type: ignore[attr-defined]
    tmp = tmp_path_factory.mktemp("pg-cli")
    with pytest.MonkeyPatch.context() as env:  # the module's key: see _module_key
        env.setenv("AUTONOMY_KEY_FILE", str(tmp / "key"))
        record(url, tmp / "ws")
        sqlite = tmp / "events.db"
        with open_store(url) as source, open_store(sqlite) as target:
            for event in source.read("r1"):
                target.append("r1", [event.data], event.version - 1, causation=event.causation)
    return url, str(sqlite)


@pytest.fixture(autouse=True)
def _module_key(
    _key_file_in_tmp: Path, logs: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests write into the module's logs (fork, rewind): with the key they were
    recorded with, as their user would."""
    monkeypatch.setenv("AUTONOMY_KEY_FILE", str(Path(logs[1]).parent / "key"))


def test_a_url_is_kept_whole_not_folded_into_a_path() -> None:
    url = "postgresql://u@host:5432/db?sslmode=disable"
    assert resolve_db(url) == url
    assert resolve_db(None, env={"AUTONOMY_DB": url}) == url


def test_reading_commands_work_on_a_postgres_log(logs: tuple[str, str], tmp_path: Path) -> None:
    url, _ = logs
    code, out = invoke("report", "r1", "--html", str(tmp_path / "r1.html"), "--db", url)
    assert code == 0 and "completed" in (tmp_path / "r1.html").read_text(), out
    code, out = invoke(
        "fork", "r1", "--at", "20", "--workspace", str(tmp_path / "fork"), "--as", "f1", "--db", url
    )
    assert code == 0, out
    code, out = invoke("verify", "f1", "--db", url)
    assert code == 0, out
    code, out = invoke("runs", "--db", url)
    assert code == 0 and "r1" in out and "completed" in out, out
    code, out = invoke("events", "r1", "--db", url)
    assert code == 0 and "run.started" in out and "run.finished" in out, out
    code, out = invoke("verify", "--db", url)
    assert code == 0, out
    code, out = invoke("replay", "r1", "--until", "30", "--db", url)  # the whole run: 8 s
    assert code == 0 and "identical (30 events)" in out, out
    code, out = invoke("state", "r1", "--json", "--db", url)
    assert code == 0 and json.loads(out)["pipeline"]["status"] == "completed", out


@pytest.mark.parametrize("name", [n for n, q in QUERIES.items() if not q.parameters])
def test_named_audit_queries_answer_alike_on_both_stores(logs: tuple[str, str], name: str) -> None:
    url, sqlite = logs
    code, pg_out = invoke("audit", "r1", name, "--format", "json", "--db", url)
    assert code == 0, pg_out
    code, sqlite_out = invoke("audit", "r1", name, "--format", "json", "--db", sqlite)
    assert code == 0, sqlite_out
    timeless = {"recorded_at", "seconds", "reasoning"}
    pg_rows = [{k: v for k, v in r.items() if k not in timeless} for r in json.loads(pg_out)]
    sqlite_rows = [
        {k: v for k, v in r.items() if k not in timeless} for r in json.loads(sqlite_out)
    ]
    assert pg_rows == sqlite_rows


def test_file_history_and_views_on_postgres(logs: tuple[str, str]) -> None:
    url, sqlite = logs
    outputs = [
        invoke("audit", "r1", "file-history", "calc.py", "--format", "json", "--db", db)
        for db in (url, sqlite)
    ]
    assert outputs[0][0] == 0 and json.loads(outputs[0][1]), outputs[0]
    assert json.loads(outputs[0][1]) == json.loads(outputs[1][1])
    code, out = invoke(
        "audit", "r1", "--sql", "SELECT status FROM runs WHERE run_id = :run_id", "--db", url
    )
    assert code == 0 and "completed" in out, out


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM leases",
        "CREATE TABLE x (a int)",
        "SET TRANSACTION READ WRITE",
        "COMMIT; CREATE TABLE y (a int)",
        "SELECT 1; DELETE FROM leases",
    ],
)
def test_audit_sql_is_read_only_on_postgres(logs: tuple[str, str], sql: str) -> None:
    url, _ = logs
    code, out = invoke("audit", "--sql", sql, "--db", url)
    assert code == 1 and out.startswith("Error:"), out
    assert "Traceback" not in out
    code, out = invoke(
        "audit",
        "--sql",
        "SELECT count(*) AS n FROM pg_tables WHERE tablename IN ('x', 'y')",
        "--format",
        "csv",
        "--db",
        url,
    )
    assert out.splitlines()[-1] == "0", out


def test_copy_sqlite_to_postgres_to_sqlite_is_identical(
    logs: tuple[str, str], pg_server: object, tmp_path: Path
) -> None:
    url, _ = logs
    first, back = tmp_path / "first.db", tmp_path / "back.db"
    middle = pg_server.new_url()  # type: ignore[attr-defined]
    code, out = invoke("copy", "--from", url, "--to", str(first), "r1")
    assert code == 0 and "copied r1: " in out and "verified" in out, out
    assert int(out.split(" events, ")[1].split(" blobs")[0]) > 0, "the run's files came along"
    for source, target in ((str(first), middle), (middle, str(back))):
        code, out = invoke("copy", "--from", source, "--to", target)
        assert code == 0, out

    with open_store(first) as a, open_store(back) as b:
        assert list(a.read_all_raw()) == list(b.read_all_raw())
        digests = set(re.findall(r'"([0-9a-f]{64})"', "".join(r.data for r in a.read_raw("r1"))))
        stored = [d for d in digests if a.has_blob(d)]
        assert stored and all(a.get(d) == b.get(d) for d in stored)
    code, out = invoke("copy", "--from", str(first), "--to", str(back))
    assert code == 0 and "r1: already in the target, the same" in out and "skipped" in out, out
    with open_store(back) as b:  # the target's r1 goes on: it is another run now
        b.append("r1", [RunFinished(status="failed", reason="x")], b.last_version("r1"))
    code, out = invoke("copy", "--from", str(first), "--to", str(back))
    assert code == 1 and "already has run(s) r1, with other events" in out, out
    code, out = invoke("verify", "--db", middle)
    assert code == 0, out


def test_rewind_on_a_postgres_log(logs: tuple[str, str]) -> None:
    url, _ = logs
    code, out = invoke("rewind", "r1", "--to", "3", "--db", url)
    assert code == 0, out
    code, out = invoke("state", "r1", "--json", "--db", url)
    state = json.loads(out)
    assert code == 0 and state["pipeline"]["status"] != "completed", out
    assert len(state["orchestration"]["decisions"]) == 1, "back to before the second decision"
    code, out = invoke("events", "r1", "--db", url)
    assert "run.rewound" in out.splitlines()[-1], out
    code, out = invoke("verify", "r1", "--db", url)
    assert code == 0, out


def test_an_unreachable_server_is_one_error_line() -> None:
    code, out = invoke("runs", "--db", "postgresql://nobody@/x?host=/nonexistent-dir")
    assert code == 1 and out.startswith("Error:") and "Traceback" not in out, out


@pytest.mark.slow
def test_a_run_whose_log_goes_away_stops_with_one_error_and_how_to_resume_it(
    pg_server: Any, tmp_path: Path
) -> None:
    """The server ends every session and refuses every connection while the run
    waits on its model: the run stops at its next append with one error line that
    says why (its lease went with its session), and the command
    that continues it (exit 1; no traceback, no library warnings). Once the server
    takes connections again, that command completes the run."""
    url = pg_server.new_url() + "&connect_timeout=2"  # the URL's timeout is the store's
    autonomy = Path(sys.executable).parent / "autonomy"
    gate = Gate(when=lambda request: "review" in json.dumps(request.body).lower())
    with ScriptedModelServer(gate, models=["m"]) as server:
        model = ("--model-url", server.url, "--api", "ollama", "--model", "m")
        run = subprocess.Popen(
            [
                *(str(autonomy), "run", GOAL, "--workspace", str(tmp_path / "ws")),
                *("--db", url, *model, "--run-id", "cut"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with reaped(run):
            try:
                assert gate.arrived.wait(timeout=60), "the run never reached its review"
                with pg_server.refusing():
                    gate.opened.set()
                    _, err = run.communicate(timeout=120)
            finally:
                gate.opened.set()
        assert run.returncode == 1, err
        error, hint = err.strip().splitlines()
        assert error.startswith("Error: run cut stopped: appending to run 'cut': "), err
        # the server ended every session, the one holding the run's lease among them:
        # the engine writes no more, since another may take the run now
        assert "the database session holding this engine's lease of the run ended" in error
        assert "terminating connection" in error, "the server's own reason"
        assert (
            hint
            == f"once the log can be written again, continue it with: autonomy resume cut --db {url}"
        )
        code, out = invoke(*shlex.split(hint.split(": ", 1)[1])[1:], *model)
    assert code == 0 and "run cut: completed" in out, out


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://me:s3cr%40t@db:5432/log", "postgresql://me:***@db:5432/log"),
        (
            "postgresql://me@/log?host=/run&password=x&sslmode=require",
            "postgresql://me@/log?host=/run&password=***&sslmode=require",
        ),
        ("postgresql://db/log", "postgresql://db/log"),
    ],
)
def test_the_resume_hint_never_shows_a_password(given: str, shown: str) -> None:
    from engine.cli.running import _resume_command

    assert _resume_command("r", given, None) == f"autonomy resume r --db {shown}"


def test_reading_a_schema_that_holds_no_log_creates_none(pg_url: str) -> None:
    """``runs`` and ``verify`` pointed at another application's schema created
    autonomy's tables in it (and said "no runs"); a writer met a table of its own
    named ``events`` with "relation already exists". Both are refused, saying why."""
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE customers (id integer)")
    for command in ("runs", "verify"):
        code, out = invoke(command, "--db", pg_url)
        assert code == 1 and "holds no autonomy event log; a command that writes" in out, out
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id integer)")
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() ORDER BY 1"
        ).fetchall()
    assert tables == [("customers",), ("events",)], "nothing was created"
    code, out = invoke("answer", "r", "yes", "--db", pg_url)  # a command that writes
    assert code == 1 and "tables of the same names (events)" in out, out
    assert "search_path" in out


def test_a_schema_that_does_not_exist_is_said_to_be_missing(pg_url: str) -> None:
    """Every command said PostgreSQL's "null values cannot be formatted as an SQL
    identifier" for a search path naming no schema there (or one the role may not
    use)."""
    missing = re.sub(r"search_path%3D[^&]+", "search_path%3Dnosuch", pg_url)
    for command in (["runs"], ["verify"], ["answer", "r", "yes"]):
        code, out = invoke(*command, "--db", missing)
        assert code == 1 and "no schema of the search path (nosuch) exists" in out, out
        assert "null values" not in out


@pytest.mark.parametrize("schema", ["u", "e", "t", "events", "runs", "Team", "team-a"])
def test_verify_holds_in_a_schema_named_like_an_alias_or_a_table(
    pg_server: Any, schema: str
) -> None:
    """The definitions were compared with every "<schema>." replaced: in a schema
    named "u", "e" or "events" that also rewrote aliases and table names inside
    views and functions, and verify said the log was tampered with. A schema whose
    name needs quoting ("Team") could hold no log at all: its name was read unquoted
    ('schema "team" does not exist')."""
    import psycopg

    from events import RunStarted

    with psycopg.connect(pg_server.url(), autocommit=True) as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = pg_server.url() + f"&options=-csearch_path%3D%22{schema}%22"  # quoted: its case
    with open_store(url) as store:
        store.append("r1", [RunStarted(goal="g", workspace="/tmp/ws")], 0)
        assert store.connection.execute("SELECT current_schema()").fetchone()[0] == schema
    result = CliRunner().invoke(cli, ["verify", "--db", url])
    assert result.exit_code == 0 and "FAILED" not in result.output, result.output
