"""``autonomy audit``: every named query on a recorded run, the formats, read-only --sql.

The log is recorded once per module by ``autonomy run`` against the scripted demo
models, with one twist: t1's first coding answer also tries two paths the sandbox
refuses and reads a file that does not exist. A second, hand-appended run holds what
the rules engine never produces on its own (a fallback decision, a failed model call).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import pty
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli import cli
from engine.runs.audit import (
    INDEXES,
    QUERIES,
    AuditError,
    ensure_indexes,
    format_result,
    run_query,
    run_sql,
)
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events.schema import (
    ArbiterDecided,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    RunStarted,
    ToolRequested,
    Usage,
)

RUN = "demo"
AUTONOMY = str(Path(sys.executable).parent / "autonomy")
OTHER = "synthetic"
MARK = "zz-injected"
DEEP = f"{MARK}/" + "d/" * 70 + "x.py"  # too deep for the sandbox


class DemoWithMistakes:
    """The demo's models, except that t1's first coding answer first tries
    ``../MARK.txt``, ``.git/MARK`` and ``DEEP`` (refused) and ``MARK-missing.py`` (absent).

    The tool results of those calls are hidden from ``DemoModels``, which counts tool
    results to know its next move."""

    def __init__(self) -> None:
        self.demo = DemoModels()
        self.injected = False

    def __call__(self, request: ScriptedRequest) -> Reply:
        body = request.body or {}
        messages = [
            m
            for m in body.get("messages", [])
            if not (m.get("role") == "tool" and MARK in str(m.get("content", "")))
        ]
        reply = self.demo(dataclasses.replace(request, body={**body, "messages": messages}))
        if not self.injected and reply.tool_calls and reply.tool_calls[0][0] == "create_file":
            self.injected = True
            return Reply.calls(
                ("read_file", {"path": f"../{MARK}.txt"}),
                ("create_file", {"path": f".git/{MARK}", "content": "x = 1\n"}),
                ("read_file", {"path": DEEP}),
                ("read_file", {"path": f"{MARK}-missing.py"}),
                *reply.tool_calls,
            )
        return reply


def record_synthetic_run(db: Path) -> None:
    with closing(open_store(db)) as store:
        store.append(
            OTHER,
            [
                RunStarted(goal="synthetic", workspace="/nowhere", mode="orchestrated"),
                ArbiterDecided(
                    action="code",
                    parameters={"task_id": "t9"},
                    reasoning="the arbiter answered prose",
                    decided_by="rules",
                    fallback_used=True,
                    fallback_reason="arbiter reply was not a valid decision",
                ),
                ModelRequested(
                    call_id="s/m1", role="arbiter", model="big:70b", request_digest="d1"
                ),
                ModelFailed(call_id="s/m1", kind="timeout", detail="read timed out", attempt=1),
                ModelFailed(call_id="s/m1", kind="timeout", detail="read timed out", attempt=2),
                ModelRequested(
                    call_id="s/m2", role="arbiter", model="big:70b", request_digest="d2"
                ),
                ModelResponded(call_id="s/m2", usage=Usage(prompt_tokens=100, completion_tokens=7)),
                ToolRequested(call_id="s/t1", tool="read_file", arguments={"path": "a.py"}),
            ],
            0,
        )


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("audit")
    db = base / "events.db"
    with ScriptedModelServer(DemoWithMistakes(), models=["qwen2.5-coder:7b"]) as server:
        result = CliRunner().invoke(
            cli,
            [
                "run",
                GOAL,
                "--workspace",
                str(base / "ws"),
                "--db",
                str(db),
                "--model-url",
                server.url,
                "--api",
                "ollama",
                "--model",
                "qwen2.5-coder:7b",
                "--run-id",
                RUN,
            ],
        )
    assert result.exit_code == 0, result.output
    record_synthetic_run(db)
    return db


def audit(db: Path, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["audit", *args, "--db", str(db)])
    assert "Traceback" not in result.output
    return result


def rows(db: Path, *args: str) -> list[dict[str, object]]:
    result = audit(db, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    answer: list[dict[str, object]] = json.loads(result.output)
    return answer


def test_tool_failures_lists_the_refused_and_the_missing_file_with_their_errors(db: Path) -> None:
    failures = rows(db, RUN, "tool-failures")
    assert [(r["tool"], r["outcome"]) for r in failures] == [
        ("read_file", "failed"),
        ("create_file", "failed"),
        ("read_file", "failed"),
        ("read_file", "failed"),
    ]
    assert "climbs out of the workspace" in str(failures[0]["error"])
    assert "too long or too deep" in str(failures[2]["error"])
    assert "does not exist" in str(failures[3]["error"])


def test_tool_failures_over_every_run_includes_a_call_never_executed(db: Path) -> None:
    failures = rows(db, "tool-failures")
    assert {r["run_id"] for r in failures} == {RUN, OTHER}
    never = [r for r in failures if r["run_id"] == OTHER]
    assert [(r["call_id"], r["outcome"]) for r in never] == [("s/t1", "never executed")]


def test_refused_paths_are_the_sandbox_refusals_only(db: Path) -> None:
    refused = rows(db, RUN, "refused-paths")
    assert [r["path"] for r in refused] == [f"../{MARK}.txt", f".git/{MARK}", DEEP]
    assert "belongs to the tooling" in str(refused[1]["error"])


def test_decisions_show_who_decided_and_the_fallback_with_its_reason(db: Path) -> None:
    demo = rows(db, RUN, "decisions")
    assert demo[0]["action"] == "plan" and demo[-1]["action"] == "complete"
    assert {r["decided_by"] for r in demo} <= {"rules", "arbiter"}
    assert not any(r["fallback_used"] for r in demo)
    [fallback] = [r for r in rows(db, "decisions") if r["fallback_used"]]
    assert fallback["run_id"] == OTHER
    assert fallback["fallback_reason"] == "arbiter reply was not a valid decision"


def test_model_usage_sums_calls_and_tokens_per_model_and_role(db: Path) -> None:
    usage = rows(db, RUN, "model-usage")
    assert {r["model"] for r in usage} == {"qwen2.5-coder:7b"}
    with closing(open_store(db)) as store:
        expected = store.connection.execute(
            "SELECT json_extract(q.data, '$.role'), count(*),"
            " sum(json_extract(r.data, '$.usage.prompt_tokens'))"
            " FROM events q JOIN events r ON r.run_id = q.run_id AND r.type = 'model.responded'"
            " AND json_extract(r.data, '$.call_id') = json_extract(q.data, '$.call_id')"
            " WHERE q.run_id = ? AND q.type = 'model.requested' GROUP BY 1",
            (RUN,),
        ).fetchall()
    assert {(r["role"], r["calls"], r["prompt_tokens"]) for r in usage} == set(expected)
    assert all(r["failed_calls"] == 0 for r in usage)
    [arbiter] = rows(db, OTHER, "model-usage")
    assert (arbiter["model"], arbiter["role"], arbiter["calls"]) == ("big:70b", "arbiter", 2)
    assert (arbiter["failed_calls"], arbiter["failed_attempts"]) == (1, 2)
    assert (arbiter["prompt_tokens"], arbiter["completion_tokens"]) == (100, 7)


def test_phase_timeline_goes_through_debugging_to_completed_in_order(db: Path) -> None:
    timeline = rows(db, RUN, "phase-timeline")
    phases = [r["to_phase"] for r in timeline]
    assert phases == [
        "planning",
        "coding",
        "qa",
        "debugging",
        "qa",
        "coding",
        "qa",
        "documentation",
        "completed",
    ]
    versions = [int(str(r["version"])) for r in timeline]
    assert versions == sorted(versions)
    assert timeline[0]["from_phase"] == "start"


def test_tasks_have_their_final_status_and_attempts(db: Path) -> None:
    tasks = rows(db, RUN, "tasks")
    assert [(r["task_id"], r["status"], r["attempts"]) for r in tasks] == [
        ("t1", "completed", 2),
        ("t2", "completed", 1),
    ]


def test_file_history_lists_each_write_with_its_hashes(db: Path) -> None:
    history = rows(db, RUN, "file-history", "calc.py")
    assert [(r["tool"], r["change"]) for r in history] == [
        ("create_file", "create"),
        ("modify_file", "modify"),
    ]
    assert history[0]["before_hash"] is None
    assert history[1]["before_hash"] == history[0]["after_hash"]
    with closing(open_store(db)) as store:
        assert b'"""Return the sum of a and b."""' in (store.get(str(history[1]["after_hash"])))
    assert rows(db, RUN, "file-history", "nothing.py") == []
    assert rows(db, "file-history", "calc.py") == history


def test_file_history_without_a_path_is_a_clean_error(db: Path) -> None:
    result = audit(db, RUN, "file-history")
    assert result.exit_code == 1
    assert "file-history takes PATH" in result.output


def test_table_format_has_a_header_and_one_line_per_row(db: Path) -> None:
    result = audit(db, RUN, "tasks")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["run_id", "task_id", "title"]
    assert set(lines[1]) <= {"-", " "}
    assert len(lines) == 4 and "t1" in lines[2] and "t2" in lines[3]


def test_csv_format_round_trips_through_the_csv_module(db: Path) -> None:
    result = audit(db, RUN, "phase-timeline", "--format", "csv")
    assert result.exit_code == 0, result.output
    parsed = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["to_phase"] for r in parsed] == [
        r["to_phase"] for r in rows(db, RUN, "phase-timeline")
    ]


HOSTILE_VALUE = 'a\rb\x1b]52;c;aGk=\x07 \u202e, "q"\nnext\ttab'


def test_csv_to_a_pipe_holds_every_value_exactly_and_to_a_terminal_shows_escapes(
    db: Path,
) -> None:
    """CSV is data: piped, a value with a carriage return, an escape sequence or a
    newline reads back exactly (click dropped what looked like a colour code, and an
    unquoted carriage return broke the row); on a terminal it is shown, not obeyed."""
    sql = "SELECT :run_id AS run_id, 1 AS n"
    args = [AUTONOMY, "audit", HOSTILE_VALUE, "--sql", sql, "--format", "csv", "--db", str(db)]
    piped = subprocess.run(args, capture_output=True)
    assert piped.returncode == 0, piped.stderr
    text = piped.stdout.decode()
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["run_id", "n"],
        [HOSTILE_VALUE, "1"],
    ]
    primary, secondary = pty.openpty()
    with closing(os.fdopen(primary, "rb", buffering=0)) as terminal:
        done = subprocess.run(args, stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once everything written was read
            while chunk := terminal.read(4096):
                shown += chunk
    assert done.returncode == 0, done.stderr
    assert b"\\x1b]52;c;aGk=\\x07" in shown and b"\\u202e" in shown
    assert b"\x1b" not in shown and b"\x07" not in shown


def test_an_empty_answer_says_so(db: Path) -> None:
    result = audit(db, OTHER, "phase-timeline")
    assert result.exit_code == 0 and result.output.strip() == "(no rows)"


def test_unknown_query_is_a_clean_error_listing_the_queries(db: Path) -> None:
    for args in (("tool-failure",), (RUN, "nope")):
        result = audit(db, *args)
        assert result.exit_code == 1
        assert "unknown audit query" in result.output
        assert all(name in result.output for name in QUERIES)


def test_unknown_run_is_a_clean_error(db: Path) -> None:
    result = audit(db, "no-such-run", "tasks")
    assert result.exit_code == 1 and "no run 'no-such-run'" in result.output


def test_sql_runs_a_select_over_the_views(db: Path) -> None:
    answer = rows(db, "--sql", "SELECT tool, count(*) AS n FROM tool_calls GROUP BY tool")
    counts = {r["tool"]: r["n"] for r in answer}
    assert counts["complete_task"] == 3  # t1, t1 again after debugging, t2
    scoped = rows(db, OTHER, "--sql", "SELECT count(*) AS n FROM events WHERE run_id = :run_id")
    assert scoped == [{"n": 8}]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO blobs (digest, size, content) VALUES ('x', 1, x'00')",
        "CREATE TABLE evil (x)",
        "DROP VIEW tool_calls",
        "CREATE INDEX sneaky ON events(recorded_at)",
    ],
)
def test_sql_is_read_only_and_a_write_is_a_clean_error(db: Path, statement: str) -> None:
    before = db.stat().st_size, _schema(db)
    result = audit(db, "--sql", statement)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert (db.stat().st_size, _schema(db)) == before


def test_run_sql_refuses_insert_even_when_called_directly(db: Path) -> None:
    with pytest.raises(AuditError, match="readonly"):
        run_sql(db, "INSERT INTO blobs (digest, size, content) VALUES ('y', 1, x'00')")


def test_help_lists_every_query_with_an_example() -> None:
    result = CliRunner().invoke(cli, ["audit", "--help"])
    assert result.exit_code == 0
    for name, query in QUERIES.items():
        assert name in result.output
        assert query.example in result.output
    assert "--sql" in result.output


def test_ensure_indexes_creates_them_once_and_the_views_use_them(db: Path) -> None:
    connection = sqlite3.connect(db)
    try:
        ensure_indexes(connection)
        ensure_indexes(connection)  # idempotent
        names = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        assert set(INDEXES) <= names
        plan = " ".join(
            str(r[-1])
            for r in connection.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM tool_calls WHERE run_id = ?", (RUN,)
            )
        )
        assert "events_call_id" in plan
    finally:
        connection.close()


def test_library_queries_and_formats_agree_with_the_cli(db: Path) -> None:
    with closing(open_store(db)) as store:
        result = run_query(store.connection, "tasks", RUN)
    assert json.loads(format_result(result, "json")) == rows(db, RUN, "tasks")
    with pytest.raises(AuditError, match="unknown format"):
        format_result(result, "xml")  # type: ignore[arg-type]


def _schema(db: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        connection.close()


def test_the_postgres_indexes_are_on_the_expressions_the_views_compare() -> None:
    """Written out (importing the views costs every command): kept equal to what
    ``nul_safe`` makes of the bare expressions, or no query would use them."""
    from engine.runs.audit import POSTGRES_INDEXES
    from projections.views_postgres import nul_safe

    bare = "events(run_id, type, (data->>'call_id'))"
    assert POSTGRES_INDEXES["events_call_id"] == nul_safe(bare)
    bare = "events(run_id, type, (data->>'task_id'), version)"
    assert POSTGRES_INDEXES["events_task_version"] == nul_safe(bare)


ENDLESS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"


def test_ctrl_c_stops_a_query_that_would_run_for_ever(db: Path) -> None:
    """Python runs its signal handlers between its own steps: while SQLite ran the
    query, Ctrl-C waited for it to end, for ever for this one."""
    import signal

    from waiting import reaped, wait_until

    autonomy = Path(sys.executable).parent / "autonomy"
    process = subprocess.Popen(
        [str(autonomy), "audit", "--sql", ENDLESS, "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(process):

        def names(fd: Path) -> str:
            try:
                return os.readlink(fd)
            except OSError:  # closed since it was listed (the store's other connections)
                return ""

        def computing() -> bool:  # the log open, and a second of the query's CPU spent
            fds = Path(f"/proc/{process.pid}/fd")
            opened = any(names(fd) == str(db) for fd in fds.iterdir())
            ticks = int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[11])
            return opened and ticks / os.sysconf("SC_CLK_TCK") > 1.5

        wait_until(computing, "the query runs", timeout=60)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 1 and "Traceback" not in err, err
    assert err.strip() == "Error: the SQL query (read-only) failed: interrupted"


def test_each_tasks_latest_update_is_found_by_an_index(tmp_path: Path) -> None:
    """The tasks view asks each task's latest update (ORDER BY version DESC LIMIT 1):
    the index on (run_id, type, task_id) could not give that order, so each task
    scanned every update of its run (audit tasks: 9.6 s for a run of 688 tasks). The
    index made by an earlier autonomy is replaced."""
    from engine.runs.audit import ensure_indexes
    from events import RunStarted, TaskAdded, TaskUpdated

    db = tmp_path / "events.db"
    with open_store(db) as store:
        events: list[object] = [RunStarted(goal="g", workspace="/w")]
        events += [TaskAdded(task_id=f"t{n}", title="x") for n in range(5)]
        events += [TaskUpdated(task_id=f"t{n}", status="completed") for n in range(5)]
        store.append("r", events, 0)  # type: ignore[arg-type]
        connection = store.connection  # type: ignore[attr-defined]
        connection.execute(
            "CREATE INDEX events_task_id ON events(run_id, type, json_extract(data, '$.task_id'))"
        )
        ensure_indexes(connection)
        names = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        assert "events_task_version" in names and "events_task_id" not in names
        plan = " ".join(
            str(row[3])
            for row in connection.execute(
                "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE run_id = 'r'"
            )
        )
        assert "USING INDEX events_task_version (run_id=? AND type=? AND <expr>=?)" in plan


@pytest.mark.parametrize(
    ("query", "given"), [("SELECT ?", "none"), ("SELECT :foo", ":run_id")], ids=["?", "name"]
)
def test_a_parameter_without_a_value_says_which_have_one(db: Path, query: str, given: str) -> None:
    """sqlite3's own words said "you supplied a dictionary (which has only names)"."""
    result = audit(db, *([OTHER] if given != "none" else []), "--sql", query)
    assert result.exit_code == 1, result.output
    assert f"A parameter gets its value by name; those with one: {given} (:run_id is" in (
        result.output
    )
