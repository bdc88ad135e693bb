"""Read-only logs are first-class: every command that only reads works on a log in a
read-only directory or a read-only file, and never writes to it; a log that is not
there, or empty, is a clear error and stays as it was; `run` creates no directory the
user named.

The tests run as root, and root ignores permission bits, so a chmod would prove
nothing. The read-only cases are real: the CLI runs in a private mount namespace
(``unshare -m``) where the log's directory, or the log file itself, is bind-mounted
read-only, so any write fails with EROFS whoever tries it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from waiting import reaped

from engine.agent.runner import start_run
from engine.cli import cli
from engine.config import load_settings
from engine.runs.demo import GOAL, DemoModels
from engine.testing import ScriptedModelServer
from events import RunStarted, SQLiteEventStore
from events.errors import EventStoreError

RUN = "ro-run"

# Runs the CLI on each argument list in one process and prints what each said.
DRIVER = """
import json, sys
from click.testing import CliRunner
from engine.cli import cli
said = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(cli, args)
    crash = result.exception if not isinstance(result.exception, SystemExit) else None
    said.append([result.exit_code, result.output, repr(crash) if crash else ""])
print(json.dumps(said))
"""


def read_commands(db: Path, html: Path) -> list[list[str]]:
    at = ["--db", str(db)]
    return [
        ["runs", *at],
        ["events", RUN, *at],
        ["verify", *at],
        ["audit", RUN, "tool-failures", *at],
        ["audit", RUN, "model-usage", "--format", "json", *at],
        ["audit", "--sql", "SELECT count(*) AS calls FROM model_calls", *at],
        ["report", RUN, "--html", str(html), *at],
        ["state", RUN, *at],
        ["replay", RUN, *at],
    ]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a real log (a short run), closed cleanly (no -wal left).
    Written by the bare store, so the file has no views: readers must bring them."""
    base = tmp_path_factory.mktemp("archive")
    logs = base / "logs"
    logs.mkdir()
    store = SQLiteEventStore(logs / "events.db")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server, httpx.Client() as http:
        overrides = {"model_url": server.url, "api": "ollama", "model": "m", "mode": "rules"}
        settings = load_settings(env={}, overrides={**overrides, "max_steps": 3})
        start_run(store, goal=GOAL, workspace=base / "ws", settings=settings, http=http, run_id=RUN)
    store.close()
    # (the run's lease file stays beside the log: removing a lock file races)
    assert sorted(p.name for p in logs.iterdir()) == ["events.db", "events.db.leases"]
    return logs


def unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind -o ro / / 2>/dev/null || exit 3"],
        capture_output=True,
    )
    return probe.returncode == 0


def cli_under(
    prefix: Sequence[str], commands: Sequence[list[str]], env: dict[str, str] | None = None
) -> list[list[object]]:
    """Run ``commands`` through the CLI in one process started by ``prefix`` (a
    mount namespace, another user); what each said."""
    driver = [sys.executable, "-c", DRIVER, json.dumps(list(commands))]
    done = subprocess.run([*prefix, *driver], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    said: list[list[object]] = json.loads(done.stdout)
    return said


def read_only_cli(mounted: Path, commands: Sequence[list[str]]) -> list[list[object]]:
    """Run ``commands`` through the CLI where ``mounted`` (a directory or a file) is
    read-only: a read-only bind mount in a mount namespace where that works (it
    holds for root too), else permission bits (which hold for everyone but root)."""
    if unshare_works():
        script = 'mount --bind -o ro "$1" "$1" && shift && exec "$@"'
        return cli_under(["unshare", "-m", "sh", "-c", script, "sh", str(mounted)], commands)
    if os.geteuid() != 0:
        mode = mounted.stat().st_mode
        mounted.chmod(0o555 if mounted.is_dir() else 0o444)
        try:
            return cli_under([], commands)
        finally:
            mounted.chmod(mode)
    pytest.fail("root without mount namespaces: nothing here can make a file read-only")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory in /tmp that every user can reach (pytest's own are root's alone)."""
    made = Path(tempfile.mkdtemp(prefix="autonomy-ro-"))
    made.chmod(0o755)
    yield made
    made.chmod(0o755)
    shutil.rmtree(made)


def as_reader_without_write(directory: Path, commands: Sequence[list[str]]) -> list[list[object]]:
    """Run ``commands`` through the CLI as a user who may read ``directory`` and its
    files but not write them: permission bits, not a read-only mount (an archive
    another user made). Root is not held by permission bits, so under root the CLI
    runs as ``nobody``; otherwise the directory is made read-only for its owner."""
    for file in directory.iterdir():
        file.chmod(0o444)
    directory.chmod(0o555)
    env = {  # a user of their own: no key
        **{
            k: v for k, v in os.environ.items() if k not in ("AUTONOMY_KEY_FILE", "XDG_CONFIG_HOME")
        },
        "HOME": str(directory),
    }
    if os.geteuid() == 0:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        return cli_under(nobody, commands, env)
    return cli_under([], commands, env)


def digest_of(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if p.is_file()
    }


@pytest.mark.parametrize("what", ["directory", "file"])
def test_every_read_command_works_on_a_read_only_log(
    log_dir: Path, tmp_path: Path, what: str
) -> None:
    db = log_dir / "events.db"
    before = digest_of(log_dir)
    html = tmp_path / "report.html"
    said = read_only_cli(log_dir if what == "directory" else db, read_commands(db, html))
    for args, (code, output, crash) in zip(read_commands(db, html), said, strict=True):
        assert (code, crash) == (0, ""), f"autonomy {' '.join(args[:3])}: {output}"
        assert "readonly" not in str(output) and "Error" not in str(output)
    runs, events, verify, failures, usage, sql, _, state, replay = (s[1] for s in said)
    assert RUN in str(runs) and "run.started" in str(events) and "phase" in str(state)
    assert str(failures) == "(no rows)\n"  # a query over a view the file lacks
    assert f"{RUN}: ok" in str(verify) and "identical" in str(replay)
    assert json.loads(str(usage))[0]["calls"] >= 1  # a view the file does not have
    assert "calls" in str(sql) and html.is_file()
    assert digest_of(log_dir)["events.db"] == before["events.db"], "the log was written to"
    if what == "directory":
        assert digest_of(log_dir) == before, "a side file was left in a read-only directory"


def test_every_read_command_works_for_a_reader_who_may_not_write_the_logs_directory(
    log_dir: Path, shared_dir: Path
) -> None:
    """SQLite cannot make the WAL's ``-shm`` there, and says "attempt to write a
    readonly database" (``SQLITE_READONLY_DIRECTORY``) where a read-only mount says
    "unable to open": only the second was read with ``immutable=1``, and every read
    command failed on a plain archived log."""
    archive = shared_dir / "logs"
    archive.mkdir()
    db = archive / "events.db"
    shutil.copy(log_dir / "events.db", db)
    before = digest_of(archive)
    commands = read_commands(db, shared_dir / "report.html")
    # the run's workspace is root's (pytest's directory): a live replay cannot copy it
    commands[-1] = ["replay", RUN, "--tools", "recorded", "--db", str(db)]
    live = ["replay", RUN, "--db", str(db)]
    shared_dir.chmod(0o777)  # the report is written beside the archive
    said = as_reader_without_write(archive, [*commands, live])
    for args, (code, output, crash) in zip(commands, said, strict=False):
        assert (code, crash) == (0, ""), f"autonomy {' '.join(args[:3])}: {output}"
    assert f"{RUN}: ok" in str(said[2][1]) and "identical" in str(said[8][1])
    if os.geteuid() == 0:  # it was a PermissionError's "[Errno 13]", and no more
        code, output, crash = said[-1]
        assert (code, crash) == (1, "") and "but it cannot be read (Permission denied)" in str(
            output
        ), output
    assert digest_of(archive) == before


def test_a_wal_holding_writes_is_refused_where_it_cannot_be_read_never_skipped(
    shared_dir: Path,
) -> None:
    """Where the ``-shm`` cannot be made, the log is read with ``immutable=1``, which
    reads the main file alone: the events still in the ``-wal`` (a writer killed, or
    still writing) were left out, and ``verify`` said ok about the rest."""
    archive = shared_dir / "logs"
    archive.mkdir()
    db = archive / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("first", [RunStarted(goal="g", workspace="/w")], 0)
    writer = SQLiteEventStore(db)  # open: what it appends stays in the -wal
    try:
        writer.connection.execute("PRAGMA wal_autocheckpoint = 0")
        writer.append("second", [RunStarted(goal="g", workspace="/w")], 0)
        copy = shared_dir / "copy"
        copy.mkdir()
        for name in ("events.db", "events.db-wal"):
            shutil.copy(archive / name, copy / name)
    finally:
        writer.close()
    assert (copy / "events.db-wal").stat().st_size > 0
    said = as_reader_without_write(
        copy,
        [["runs", "--db", str(copy / "events.db")], ["verify", "--db", str(copy / "events.db")]],
    )
    for code, output, crash in said:
        assert (code, crash) == (1, ""), output
        assert "events.db-wal file holds writes that are not in the main file" in str(output)
    assert sorted(p.name for p in copy.iterdir()) == ["events.db", "events.db-wal"]


def on_full_disk(
    directory: Path, commands: Sequence[list[str]], log: Path | None = None
) -> tuple[list[list[object]], list[str]]:
    """Run ``commands`` through the CLI with a full disk at ``directory``: a 1 MiB
    tmpfs in a mount namespace, filled (after ``log`` is copied onto it as
    ``events.db``). What each said, and what the disk held after (the filler aside)."""
    if not unshare_works():
        pytest.fail("no mount namespaces here: a full disk cannot be made")
    listing = directory.with_name(directory.name + ".after")
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" && { test -z "$2" || cp "$2" "$1"/events.db; }'
        ' && { dd if=/dev/zero of="$1"/filler bs=4k 2>/dev/null; true; }'
        ' && test "$(df --output=avail "$1" | tail -1)" -eq 0 || exit 3'
        ' ; where="$1" after="$3"; shift 3; "$@"; said=$?; ls -A "$where" > "$after"; exit $said'
    )
    directory.mkdir(exist_ok=True)
    copied = str(log) if log is not None else ""
    prefix = ["unshare", "-m", "sh", "-c", script, "sh", str(directory), copied, str(listing)]
    said = cli_under(prefix, commands)
    return said, [n for n in listing.read_text().split() if n != "filler"]


def test_every_read_command_works_on_a_log_on_a_full_disk(log_dir: Path, tmp_path: Path) -> None:
    """A reader makes the ``-shm``, and on a full disk SQLite answered "disk I/O
    error" (``SQLITE_IOERR_SHMSIZE``): even ``verify`` failed."""
    full = tmp_path / "full"
    commands = read_commands(full / "events.db", tmp_path / "report.html")
    said, _ = on_full_disk(full, commands, log=log_dir / "events.db")
    for args, (code, output, crash) in zip(commands, said, strict=True):
        assert (code, crash) == (0, ""), f"autonomy {' '.join(args[:3])}: {output}"
    assert f"{RUN}: ok" in str(said[2][1]) and "identical" in str(said[8][1])


def test_a_fork_or_a_copy_onto_a_full_disk_says_so_and_leaves_nothing(
    log_dir: Path, tmp_path: Path
) -> None:
    """A fork whose files did not fit printed shutil's list of tuples, each failed
    file's paths and errno; a copy to a new log there left an empty file behind."""
    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    workspace.mkdir()
    (workspace / "data.bin").write_bytes(os.urandom(1 << 20))  # not a run's: copied along
    with SQLiteEventStore(db) as store:
        store.append("big", [RunStarted(goal="g", workspace=str(workspace))], 0)
    full = tmp_path / "full"
    said, left = on_full_disk(
        full,
        [
            ["fork", "big", "--at", "1", "--workspace", str(full / "fork"), "--db", str(db)],
            ["copy", "--from", str(log_dir / "events.db"), "--to", str(full / "copy.db")],
            ["run", "g", "--workspace", str(workspace), "--db", str(full / "run.db")],
        ],
    )
    (fork, fork_out, _), (copy, copy_out, _), (run, run_out, _) = said
    assert fork == 1 and str(fork_out).startswith(f"Error: copying {workspace} into "), fork_out
    assert "failed for 1 file(s), first " in str(fork_out) and "No space left" in str(fork_out)
    assert "[(" not in str(fork_out)
    assert copy == 1 and "the disk holding the log is full" in str(copy_out), copy_out
    assert run == 1 and "the disk holding the log is full" in str(run_out), run_out
    assert left == [], "a fork's half copy, or an empty log, was left on the disk"
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT DISTINCT run_id, max(version) FROM events").fetchall() == [
            ("big", 1)
        ]


def test_a_command_that_writes_says_so_clearly_on_a_read_only_log(log_dir: Path) -> None:
    db = log_dir / "events.db"
    [(code, output, crash)] = read_only_cli(log_dir, [["answer", RUN, "yes", "--db", str(db)]])
    assert code == 1 and crash == "" and str(output).startswith("Error:")


@pytest.mark.parametrize("command", [["runs"], ["events", RUN], ["verify"], ["state", RUN]])
def test_a_read_command_on_an_empty_file_is_an_error_and_writes_no_schema(
    tmp_path: Path, command: list[str]
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    result = CliRunner().invoke(cli, [*command, "--db", str(empty)])
    assert result.exit_code == 1 and "empty" in result.output, result.output
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


@pytest.mark.parametrize(
    "command",
    [
        ["answer", RUN, "yes"],
        ["rewind", RUN, "--to", "1"],
        ["resume", RUN, "--no-preflight", "--model-url", "http://127.0.0.1:9"],
        ["serve", "--port", "0"],
    ],
    ids=["answer", "rewind", "resume", "serve"],
)
def test_a_command_that_continues_a_log_never_makes_one_of_a_database_that_is_not_one(
    tmp_path: Path, command: list[str]
) -> None:
    """What is left of a log whose ``-wal`` was lost: an SQLite database in WAL mode
    with no tables. ``runs`` said so, but ``answer``, ``rewind``, ``resume`` and
    ``serve`` opened it as a writer and wrote a new log's schema into it (``serve``
    then served it, empty), which makes putting the lost ``-wal`` back harder."""
    db = tmp_path / "events.db"
    with closing(sqlite3.connect(db)) as raw:
        raw.execute("PRAGMA journal_mode=WAL")
    before = db.read_bytes()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from engine.console import main; main()",
            *command,
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("Error:") and "Traceback" not in done.stderr
    assert "is an empty database, not an autonomy event log" in done.stderr
    assert db.read_bytes() == before


def test_a_read_command_on_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["audit", "--sql", "SELECT 1", "--db", str(tmp_path / "x")])
    assert result.exit_code == 1 and "Error:" in result.output
    result = CliRunner().invoke(cli, ["runs", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1 and "no event log" in result.output
    assert list(tmp_path.iterdir()) == []


def test_run_refuses_a_db_in_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "dir" / "x.db"
    result = CliRunner().invoke(
        cli, ["run", "goal", "--workspace", str(tmp_path / "ws"), "--db", str(db)]
    )
    assert result.exit_code == 1, result.output
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "missing").exists()


def test_a_journal_a_killed_writer_left_is_explained_and_a_writer_rolls_it_back(
    tmp_path: Path,
) -> None:
    """A rollback journal left by a writer killed mid-transaction (a log not in WAL
    mode yet) made every read fail with "attempt to write a readonly database"."""
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA journal_mode=DELETE")
    writer = subprocess.Popen(
        [sys.executable, "-c", HOT_JOURNAL, str(db)], stdout=subprocess.PIPE, text=True
    )
    with reaped(writer):
        assert writer.stdout is not None and writer.stdout.readline() == "mid-write\n"
        writer.kill()
    assert (tmp_path / "events.db-journal").exists()
    with pytest.raises(EventStoreError, match=r"rollback journal .*autonomy runs --rebuild"):
        SQLiteEventStore(db, read_only=True)
    SQLiteEventStore(db).close()  # a writer rolls it back
    with SQLiteEventStore(db, read_only=True) as reader:
        assert reader.last_version("r") == 1


HOT_JOURNAL = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE filler (x)")
conn.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 4096,) for _ in range(2000)])
print("mid-write", flush=True)
time.sleep(600)
"""


def test_a_log_of_a_newer_schema_is_read_but_not_written(tmp_path: Path) -> None:
    """A log whose schema a newer autonomy wrote was taken by writers silently."""
    db = tmp_path / "events.db"
    with SQLiteEventStore(db) as store:
        store.append("r", [RunStarted(goal="g", workspace="/w")], 0)
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(EventStoreError, match=r"written by a newer autonomy \(log schema 99"):
        SQLiteEventStore(db)
    with SQLiteEventStore(db, read_only=True) as reader:
        assert reader.last_version("r") == 1


def test_a_read_only_workspace_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A run in a read-only workspace (or one made so since) went on with every tool
    failing, the model told so; nothing it did could be kept. A run, a resume and a
    rewind are refused, saying so (the engine checks before each tool call too)."""
    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    workspace.mkdir()
    store = SQLiteEventStore(db)
    store.append(RUN, [RunStarted(goal=GOAL, workspace=str(workspace))], 0)
    store.close()
    model = ["--model-url", "http://127.0.0.1:9", "--no-preflight"]
    said = read_only_cli(
        workspace,
        [
            ["run", GOAL, "--workspace", str(workspace), "--db", str(tmp_path / "new.db"), *model],
            ["resume", RUN, "--db", str(db), *model],
            ["rewind", RUN, "--to", "1", "--db", str(db)],
        ],
    )
    (run_code, run_out, crash), (resume_code, resume_out, _), (rewind_code, rewind_out, _) = said
    assert run_code == 1 and "is read-only: a run writes its files there" in str(run_out)
    assert not crash and not (tmp_path / "new.db").exists()
    assert resume_code == 1 and "is read-only; nothing was run" in str(resume_out), resume_out
    assert rewind_code == 1 and "is read-only; nothing was rewound" in str(rewind_out)
    with SQLiteEventStore(db) as store:
        assert store.last_version(RUN) == 1, "no event was written"


def test_a_writer_that_cannot_open_the_log_or_take_its_lease_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume on a log whose directory this user may not write was told "cannot
    take the lease ...: Permission denied" with a Python cause, or only "unable to
    open database file" when SQLite could not make its -shm there."""
    import errno
    import os

    from events.errors import EventStoreError
    from events.lease import FileLeases
    from events.sqlite import _translated

    try:
        sqlite3.connect(tmp_path / "gone" / "events.db")
    except sqlite3.OperationalError as e:
        said = str(_translated(e, "opening events.db"))
    assert said.startswith("opening events.db: unable to open database file: the file, or its")
    assert "cannot be written by this user" in said

    def refused(*args: object, **kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refused)
    leases = FileLeases(tmp_path)
    with pytest.raises(EventStoreError, match="Permission denied: the log's directory cannot be"):
        leases.hold("r", "me").__enter__()
