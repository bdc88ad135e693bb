"""The integrity commands end to end: `checkpoint`, `verify --checkpoints`, `run
--checkpoint-file`, and `rewind`/`fork`/`replay` refusing a changed blob."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.keys import load_key
from engine.runs.demo import CALC_V1, GOAL, DemoModels
from engine.storage import open_store
from engine.testing import ScriptedModelServer
from events.checkpoints import loads
from events.schema import ArbiterDecided, ModelRequested, RunStarted, ToolExecuted
from events.sqlite import SQLiteEventStore

OLD_DB = Path(__file__).parent / "data" / "pre_v2.db"
LONG_GOAL = GOAL + " Keep it simple." * 300


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT * FROM events ORDER BY position").fetchall()


def unguarded(db: Path) -> sqlite3.Connection:
    """A connection of someone who dropped the append-only triggers."""
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, bytes]:
    """A completed keyed run ``r`` recorded once through `autonomy run
    --checkpoint-file`, with the key it was written with; its goal is long enough
    for the opening message to be stored as a blob."""
    tmp = tmp_path_factory.mktemp("recording")
    workspace, db, checkpoints = tmp / "ws", tmp / "events.db", tmp / "cp.jsonl"
    with (
        pytest.MonkeyPatch.context() as env,
        ScriptedModelServer(DemoModels(), models=["m"]) as server,
    ):
        env.setenv("AUTONOMY_KEY_FILE", str(tmp / "key"))
        code, out = invoke(
            "run", LONG_GOAL, "--workspace", workspace, "--db", db, "--run-id", "r",
            "--mode", "rules", "--model-url", server.url, "--api", "ollama", "--model", "m",
            "--checkpoint-file", checkpoints,
        )  # fmt: skip
        assert code == 0, out
    return db, workspace, checkpoints, (tmp / "key").read_bytes()


@pytest.fixture
def recorded(
    recording: tuple[Path, Path, Path, bytes], tmp_path: Path, _key_file_in_tmp: Path
) -> tuple[Path, Path, Path]:
    """This test's copy of the recording's log and checkpoints, and its key; the
    workspace is shared (the tests only read it, or check it is untouched)."""
    db, workspace, checkpoints, key = recording
    _key_file_in_tmp.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _key_file_in_tmp.write_bytes(key)
    _key_file_in_tmp.chmod(0o600)
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", tmp_path / f"events.db{suffix}")
    shutil.copyfile(checkpoints, tmp_path / "cp.jsonl")
    return tmp_path / "events.db", workspace, tmp_path / "cp.jsonl"


def test_run_appends_its_checkpoint_and_checkpoint_prints_the_same(
    recorded: tuple[Path, Path, Path],
) -> None:
    db, _, checkpoints = recorded
    [written] = loads(checkpoints.read_text())

    code, out = invoke("checkpoint", "--db", db)

    assert code == 0, out
    [printed] = loads(out)
    assert (printed.run_id, printed.version, printed.hash) == (
        written.run_id,
        written.version,
        written.hash,
    )
    assert set(json.loads(out)) == {"run_id", "version", "hash", "at"}
    code, out = invoke("verify", "--db", db, "--checkpoints", checkpoints)
    assert code == 0, out
    assert f"r: ok ({written.version} events, keyed, checkpoint at {written.version})" in out


def test_no_checkpoint_is_taken_of_a_run_that_fails_verification(
    recorded: tuple[Path, Path, Path],
) -> None:
    """``checkpoint`` printed one, exit 0, for a run whose events were edited: kept,
    it made the edited history the one a later ``verify --checkpoints`` checked
    against. It takes none of that run, says why, and exits 1."""
    db, _, _ = recorded
    conn = unguarded(db)
    conn.execute("UPDATE events SET data = replace(data, 'add', 'sub') WHERE version = 5")
    conn.commit()
    conn.close()

    code, out = invoke("checkpoint", "--db", db)

    assert code == 1
    assert "Error: run r: run r fails verification at version 5" in out, out
    assert "no checkpoint was taken" in out and '"run_id"' not in out


def test_a_deleted_tail_fails_against_the_checkpoint_naming_run_and_version(
    recorded: tuple[Path, Path, Path],
) -> None:
    db, _, checkpoints = recorded
    [taken] = loads(checkpoints.read_text())
    conn = unguarded(db)
    conn.execute("DELETE FROM events WHERE run_id = 'r' AND version > ?", (taken.version - 3,))
    conn.commit()
    conn.close()

    code, out = invoke("verify", "--db", db, "--checkpoints", checkpoints)

    assert code == 1
    assert (
        f"r: FAILED at version {taken.version}: the run has {taken.version - 3} events, but "
        f"the checkpoint taken at {taken.at} saw {taken.version}: events were deleted"
    ) in out
    code, out = invoke("verify", "--db", db)
    assert code == 1, "without checkpoints, only the dropped triggers give it away"
    # verify only reads: it reports the dropped triggers and leaves the log as it is
    assert (
        "database: FAILED append-only triggers are missing or changed: events_append_only_update"
        in out
    )
    code, again = invoke("verify", "--db", db)
    assert "append-only triggers are missing or changed" in again, (
        "verify must not have repaired it"
    )


def test_a_run_deleted_whole_fails_against_its_checkpoint(
    recorded: tuple[Path, Path, Path],
) -> None:
    db, _, checkpoints = recorded
    conn = unguarded(db)
    conn.execute("DELETE FROM events")
    conn.commit()
    conn.close()

    code, out = invoke("verify", "--db", db, "--checkpoints", checkpoints)

    # the checkpoint's finding alone: it also said "its state cannot be rebuilt: no run
    # 'r'" and, falsely, that the run was "rewritten without the key"
    [taken] = loads(checkpoints.read_text())
    assert code == 1 and [line for line in out.splitlines() if line.startswith("r:")] == [
        f"r: FAILED at version {taken.version}: the run has 0 events, but the checkpoint "
        f"taken at {taken.at} saw {taken.version}: the run was deleted from the log (or the "
        "checkpoint is another log's)"
    ], out
    assert "1 of 1 runs failed verification" in out


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("", "holds no checkpoint: nothing to check the runs against"),
        ("\n  \n", "holds no checkpoint: nothing to check the runs against"),
        (
            '{"run_id": "r", "version": 0, "hash": "h", "at": "t"}',
            "line 1 is not a checkpoint: version 0",
        ),
        (
            '{"run_id": "r", "version": -1, "hash": "h", "at": "t"}',
            "line 1 is not a checkpoint: version -1",
        ),
    ],
)
def test_a_checkpoint_file_that_checks_nothing_is_refused(
    recorded: tuple[Path, Path, Path], tmp_path: Path, text: str, said: str
) -> None:
    """An empty checkpoint file (or a FIFO no one writes) verified "ok", as if the runs
    had been checked against it; a version below 1 said "events were deleted"."""
    db = recorded[0]
    given = tmp_path / "checkpoints.jsonl"
    given.write_text(text)
    code, out = invoke("verify", "--db", db, "--checkpoints", given)
    assert code == 1 and out.startswith("Error: ") and said in out, out


def test_a_history_rewritten_with_the_key_fails_against_the_checkpoint(
    recorded: tuple[Path, Path, Path],
) -> None:
    db, _, checkpoints = recorded
    [taken] = loads(checkpoints.read_text())
    # whoever holds the key can write a new history of the same length
    db.unlink()
    with open_store(db, key=load_key(create=False)) as store:
        store.append(
            "r",
            [
                RunStarted(goal="something else", workspace="/w", key_id=store.key_id),
                *(ArbiterDecided(action="wait") for _ in range(taken.version - 1)),
            ],
            0,
        )

    code, out = invoke("verify", "--db", db)
    assert code == 0, "a keyed chain alone cannot tell"
    code, out = invoke("verify", "--db", db, "--checkpoints", checkpoints)

    assert code == 1
    assert f"(version {taken.version}, arbiter.decided): hash differs from the checkpoint" in out
    assert "the history up to this version was rewritten" in out


def test_a_checkpoint_file_that_is_not_one_is_a_clean_error(
    recorded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    db, _, _ = recorded
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"run_id": "r"}\n')
    code, out = invoke("verify", "--db", db, "--checkpoints", bad)
    assert code == 1 and f"Error: {bad} line 1 is not a checkpoint" in out
    code, out = invoke("verify", "--db", db, "--checkpoints", tmp_path / "missing.jsonl")
    assert code == 1 and "Error: cannot read the checkpoint file" in out


def test_rewind_fork_and_replay_refuse_a_changed_blob_and_write_nothing(
    recorded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    db, workspace, _ = recorded
    calc = hashlib.sha256(CALC_V1.encode()).hexdigest()
    with open_store(db) as store:
        created = next(
            e.version
            for e in store.read("r")
            if isinstance(e.data, ToolExecuted)
            and any(c.after == calc for c in e.data.files_changed)
        )
        # the opening message, which a replay reads back to check the first request
        opening = next(
            m.content_ref
            for e in store.read("r")
            if isinstance(e.data, ModelRequested)
            for m in e.data.messages
            if m.content_ref
        )
    conn = unguarded(db)
    for digest in (calc, opening):
        conn.execute(
            "UPDATE blobs SET content = CAST(replace(CAST(content AS TEXT), 'a', 'b') AS BLOB)"
            " WHERE digest = ?",
            (digest,),
        )
    conn.commit()
    conn.close()
    before_rows, before_files = rows(db), snapshot(workspace)
    fork_workspace = tmp_path / "fork"

    for command, digest in (
        (("rewind", "r", "--to", str(created)), calc),
        (("fork", "r", "--at", str(created), "--workspace", fork_workspace, "--as", "f"), calc),
        (("replay", "r"), opening),
    ):
        code, out = invoke(*command, "--db", db)

        assert code == 1, (command, out)
        assert f"Error: blob {digest} is corrupt: its content hashes to" in out, (command, out)
        assert rows(db) == before_rows, command
        assert snapshot(workspace) == before_files, command
        assert not fork_workspace.exists() or not any(fork_workspace.iterdir()), command


def test_a_log_from_before_keys_verifies_as_unkeyed_and_stays_so(tmp_path: Path) -> None:
    db = tmp_path / "pre_v2.db"
    shutil.copyfile(OLD_DB, db)

    code, out = invoke("verify", "--db", db)

    assert code == 0, out
    assert "pre-v2: ok (95 events, unkeyed)" in out
    code, out = invoke("checkpoint", "pre-v2", "--db", db)
    assert code == 0 and len(loads(out)[0].hash) == 64, "an unkeyed hash: plain sha256"


def test_a_checkpoint_file_nested_too_deeply_or_endless_is_a_clean_error(
    recorded: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line nested 100,000 levels was a RecursionError; /dev/zero was read for ever."""
    from engine.cli import integrity

    db, _, _ = recorded
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"a":' * 100_000 + "1" + "}" * 100_000 + "\n")
    code, out = invoke("verify", "--db", db, "--checkpoints", deep)
    assert code == 1 and f"Error: {deep} line 1 is not a checkpoint" in out, out
    monkeypatch.setattr(integrity, "CHECKPOINT_FILE_BYTES", 1000)
    code, out = invoke("verify", "--db", db, "--checkpoints", "/dev/zero")
    assert code == 1 and "is larger than 1,000 bytes" in out, out


def test_a_postgresql_url_libpq_cannot_read_is_an_error_without_its_password() -> None:
    code, out = invoke("runs", "--db", "postgresql://user:s3cret@[::1/db")
    assert code == 1 and out.startswith("Error: opening postgresql://"), out
    assert "s3cret" not in out


@pytest.mark.parametrize("cut", ["refused", "half"])
def test_a_checkpoint_the_disk_cannot_take_is_not_left_half_written(
    recorded: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """A full disk cut the appended line short: every later ``verify --checkpoints``
    refused the file, and the next checkpoint went on the torn line. The file is
    left as it was, and the error says the run itself is recorded."""
    import errno
    import os

    from engine.cli import integrity
    from events.errors import CheckpointError

    db, _, checkpoints = recorded
    before = checkpoints.read_bytes()
    real = os.write

    def full(fd: int, data: bytes) -> int:
        if cut == "half":
            return real(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with open_store(db) as store, monkeypatch.context() as patched:
        patched.setattr(integrity.os, "write", full)
        with pytest.raises(CheckpointError, match="run r is recorded in the log, but its"):
            integrity.append_checkpoint(store, "r", checkpoints)
    assert checkpoints.read_bytes() == before
    code, out = invoke("verify", "--db", db, "--checkpoints", checkpoints)
    assert code == 0, out


def test_a_checkpoint_fifo_is_read_without_waiting_for_a_writer(
    recorded: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """``verify --checkpoints FIFO`` waited for a writer for ever; one being written
    (``<(git show ...)``) is read to its end. One no one writes holds no checkpoint."""
    import os
    import subprocess
    import sys

    db, _, checkpoints = recorded
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    verify = [sys.executable, "-c", "from engine.console import main; main()", "verify"]
    verify += ["--db", str(db), "--checkpoints", str(fifo)]
    alone = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 1 and "holds no checkpoint" in alone.stderr, alone.stderr
    reading = subprocess.Popen(verify, stdout=subprocess.PIPE, text=True)
    with open(fifo, "wb") as writer:  # waits for the reader, as a shell's <(...) does
        writer.write(checkpoints.read_bytes())
    out, _ = reading.communicate(timeout=60)
    assert reading.returncode == 0 and "checkpoint at" in out, out


@pytest.mark.parametrize("command", ["fork", "rewind", "replay", "resume"])
def test_a_command_refuses_to_act_on_an_edited_event(
    recorded: tuple[Path, Path, Path], tmp_path: Path, command: str
) -> None:
    """fork and rewind wrote the content an edited event named into a workspace (and
    the fork was a new run that verified); replay said identical of what the edit
    made. Each checks the chain first, and does nothing."""
    db, workspace, _ = recorded
    conn = unguarded(db)
    (edited,) = conn.execute(
        "SELECT min(version) FROM events WHERE run_id = 'r' AND type = 'tool.executed'"
    ).fetchone()
    conn.execute(
        "UPDATE events SET data = json_set(data, '$.result', 'forged')"
        " WHERE run_id = 'r' AND version = ?",
        (edited,),
    )
    if command == "resume":  # a run that stopped after the edit, as if killed
        conn.execute("DELETE FROM events WHERE run_id = 'r' AND version > ?", (edited + 3,))
    conn.commit()
    conn.close()
    before, logged = snapshot(workspace), rows(db)
    args = {
        "fork": ("fork", "r", "--at", str(edited + 2), "--workspace", tmp_path / "forked"),
        "rewind": ("rewind", "r", "--to", str(edited + 2)),
        "replay": ("replay", "r", "--tools", "recorded"),
        "resume": ("resume", "r"),
    }[command]
    code, out = invoke(*args, "--db", db)
    assert code == 1, out
    assert f"run r fails verification at version {edited}: hash does not match" in out, out
    assert "Traceback" not in out
    assert snapshot(workspace) == before and not (tmp_path / "forked").exists()
    assert rows(db) == logged


@pytest.mark.parametrize("name", ["tool_calls", "Tool_Calls"])
def test_verify_finds_an_audit_view_someone_replaced_and_a_writer_says_it_put_it_back(
    recorded: tuple[Path, Path, Path], name: str
) -> None:
    """An audit view replaced in the file (readers of it with sqlite3 see no failed
    tool call) passed verify, and the next writer put it back without a word: the
    evidence gone. Verify names it; a writer records that it put it back. Under
    another case of its name (SQLite's names ignore case) it was not seen at all,
    and no writer could open the log. Views of the user's own are theirs."""
    db, _, _ = recorded
    with sqlite3.connect(db) as raw:
        raw.execute("DROP VIEW tool_calls")
        raw.execute(f"CREATE VIEW {name} AS SELECT * FROM events WHERE 0")
        raw.execute("CREATE VIEW my_report AS SELECT run_id FROM events")
    code, out = invoke("verify", "--db", db)
    assert code != 0, out
    assert f"audit view {name} is not one autonomy made" in out, out
    assert "my_report" not in out
    with open_store(db):  # a writer
        pass
    code, out = invoke("verify", "--db", db)
    assert code != 0, out
    assert "is not one autonomy made" not in out, out
    assert f"audit views that no autonomy made were replaced by autonomy's: {name}" in out
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM tool_calls").fetchone()[0] > 0


def test_an_untouched_log_verifies_with_its_audit_views_checked(
    recorded: tuple[Path, Path, Path],
) -> None:
    db, _, _ = recorded
    code, out = invoke("verify", "--db", db)
    assert code == 0, out
    assert "audit views" in out, out


def test_a_log_with_a_run_forked_from_itself_is_read_run_by_run_without_a_traceback(
    tmp_path: Path,
) -> None:
    """A row someone added (a run forked from itself) made `runs`, `verify`, `replay`
    and `diff` end in a RecursionError's traceback, for the whole log."""
    from events.schema import RunForked

    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("good", [RunStarted(goal="g", workspace=str(tmp_path), config={})], 0)
        store.append("x", [RunForked(parent_run="x", at_version=1)], 0)
    said = "run 'x' is forked from 'x', which is itself a fork of it"
    code, out = invoke("runs", "--db", db)
    assert "good" in out and said in out, out
    code, out = invoke("verify", "--db", db)
    assert (
        code != 0 and "good: ok" in out and f"x: FAILED its state cannot be rebuilt: {said}" in out
    )
    for command in (["replay", "x"], ["diff", "good", "x"], ["rewind", "x", "--to", "1"]):
        code, out = invoke(*command, "--db", db)
        assert code != 0 and said in out, (command, out)


def test_a_fork_point_its_parent_never_had_fails_verify_and_diff_reads_a_fork_at_0(
    tmp_path: Path,
) -> None:
    """A fork at a version its parent never had (a row someone wrote) passed verify,
    its state quietly the parent's last; and `diff` of a fork at 0 (nothing of the
    parent in it) said the parent, which is there, was not in the log."""
    from events.schema import PhaseChanged, RunForked

    db = tmp_path / "events.db"
    with open_store(db) as store:
        store.append("p", [RunStarted(goal="g", workspace=str(tmp_path))], 0)
        store.append(
            "p", [PhaseChanged(trigger="plan", from_phase="start", to_phase="planning")], 1
        )
        for name, at in (("far", 10**15), ("below", -5), ("zero", 0), ("fine", 2)):
            store.append(name, [RunForked(parent_run="p", at_version=at)], 0)
    code, out = invoke("verify", "--db", db)
    assert code != 0, out
    for name, at in (("far", 10**15), ("below", -5), ("zero", 0)):
        assert f"forked from p at version {at}, which it never had (its versions are 1 to 2)" in (
            next(line for line in out.splitlines() if line.startswith(f"{name}:"))
        ), out
    assert "fine: ok" in out and "p: ok" in out, out
    code, out = invoke("diff", "zero", "p", "--db", db)
    assert code == 0 and "no run" not in out, out


def test_a_second_request_under_one_call_id_fails_verify(tmp_path: Path) -> None:
    """Two requests with one call id (rows someone wrote) passed verify, and the
    audits counted each answer twice: `audit model-usage` said 4 calls for 2."""
    from events.schema import ModelRequested, ModelResponded, Usage

    db = tmp_path / "events.db"
    asked = ModelRequested(call_id="r/m2", role="coder", model="m", request_digest="d" * 64)
    with open_store(db) as store:
        store.append("r", [RunStarted(goal="g", workspace=str(tmp_path))], 0)
        for version in (1, 3):
            answered = ModelResponded(call_id="r/m2", usage=Usage(prompt_tokens=10))
            store.append("r", [asked, answered], version)
    code, out = invoke("verify", "--db", db)
    assert code != 0, out
    assert "(version 4, model.requested): a second request with call id 'r/m2'" in out, out


def test_a_rewind_to_a_version_no_rewind_goes_to_fails_verify(tmp_path: Path) -> None:
    """A rewind to 0, below, to itself or past it (rows someone wrote) passed verify,
    though ``autonomy rewind`` takes only 1 to the last version, and the `runs` view
    then disagreed with the projection about the run's status."""
    from events.schema import RunFinished, RunRewound

    db = tmp_path / "events.db"
    with open_store(db) as store:
        for n, to in enumerate((0, -5, 3, 99, 2)):
            run = f"r{n}"
            store.append(run, [RunStarted(goal="g", workspace=str(tmp_path))], 0)
            store.append(run, [RunFinished(status="completed"), RunRewound(to_version=to)], 1)
    code, out = invoke("verify", "--db", db)
    assert code != 0, out
    for n, to in enumerate((0, -5, 3, 99)):
        line = next(line for line in out.splitlines() if line.startswith(f"r{n}:"))
        assert f"rewound to version {to}, which no rewind goes to (it goes to one of 1 to 2)" in (
            line
        ), out
    assert "r4: ok" in out, out


def test_a_damaged_page_of_bytes_that_are_not_text_is_said_so_and_verify_keeps_its_findings(
    tmp_path: Path,
) -> None:
    """A page damaged into bytes that are not UTF-8 (the probe flipped bytes in one of
    ``events``) made ``runs`` say the driver's "Could not decode to UTF-8 column
    'max(recorded_at)' with text '����…'", and ``verify`` print only that: what its
    ``integrity_check`` had found (an index missing rows) was lost."""
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
    with closing(unguarded(db)) as raw:
        raw.execute(
            "INSERT INTO events VALUES (2, 'r', 2, 'run.finished', 1, CAST(x'ff80fe' AS TEXT),"
            " NULL, 'h', '{}')"
        )
        raw.commit()
        page_size, index_page = raw.execute(
            "SELECT page_size, rootpage FROM pragma_page_size, sqlite_master"
            " WHERE name = 'idx_events_type'"
        ).fetchone()
    with db.open("r+b") as file:  # the end of the index's page: its cells
        file.seek(index_page * page_size - 40)
        file.write(bytes(40))
    code, out = invoke("runs", "--db", db)
    assert code == 1 and out.startswith("Error: listing runs: the log holds bytes that are not")
    assert "UTF-8 text in column 'max(recorded_at)'" in out and "\ufffd" not in out
    code, out = invoke("verify", "--db", db)
    assert code == 1 and "Traceback" not in out
    assert "database: FAILED integrity_check: row 1 missing from index idx_events_type" in out
    assert "database: FAILED its runs cannot be read (listing runs: the log holds bytes" in out
    assert "no runs in this log" not in out


def test_a_run_id_with_a_line_break_cannot_print_a_line_of_its_own_in_verify(
    tmp_path: Path,
) -> None:
    """A writer may name a run anything: one named "x: ok (115 events, keyed)\\ny"
    printed a line "x: ok (115 events, keyed)" of its own, for a run the log lacks."""
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("fake: ok (9 events, keyed)\nreal", [RunStarted(goal="g", workspace="/w")], 0)
    code, out = invoke("verify", "--db", db)
    lines = out.splitlines()
    assert code == 0 and "fake: ok (9 events, keyed)" not in lines, out
    assert not any(line.startswith("real") for line in lines), out
    assert "fake: ok (9 events, keyed)\\nreal: ok (1 events, unkeyed)" in lines, out
