"""Commands the model runs are confined: what its code may see, write, reach and leave
behind, and the limits it runs under.

These tests run real commands in real sandboxes. On Linux they need bubblewrap,
which the README's test command installs (``.ci/system-packages``); they fail
rather than skip without it, so that CI cannot pass on the unconfined path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from waiting import lock_is_free, reaped, wait_until

from engine.agent.runner import confine_commands
from engine.config import load_settings
from engine.errors import ConfinementUnavailable
from engine.tools import ToolContext, ToolOutcome, default_registry, execute
from engine.tools.confine import CommandLimits, Confinement, choose
from events import MemoryEventStore

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap is Linux-only")

PYTHON_C = (("python", "-c"),)
PYTHON = (("python",),)


def bubblewrap(**kwargs: object) -> Confinement:
    assert shutil.which("bwrap"), (
        "bubblewrap is not installed: the README's test command installs it "
        "(bash .ci/system-packages)"
    )
    confinement = choose("required", **kwargs)  # type: ignore[arg-type]
    assert confinement.mechanism == "bubblewrap"
    return confinement


def run(workspace: Path, argv: list[str], confinement: Confinement, **ctx: object) -> ToolOutcome:
    context = ToolContext(
        workspace=workspace, blobs=MemoryEventStore(), confinement=confinement, **ctx
    )  # type: ignore[arg-type]
    return execute(default_registry(), "run_command", {"argv": argv}, context)


DETACHED = textwrap.dedent(
    """
    import fcntl, os, pathlib, time
    lock = open("holder.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    pathlib.Path("alive.txt").write_text(str(os.getpid()))
    while not pathlib.Path("go").exists():
        time.sleep(0.05)
    pathlib.Path("late.txt").write_text("written after the command ended")
    """
)


def hostile_test(outside: Path, system: Path, port: int) -> str:
    """A test file as a model could write it: it tries to get out in every way."""
    return textwrap.dedent(
        f"""
        import os, pathlib, socket, subprocess, sys, time

        def test_write_outside():
            for target in ({str(outside / "escaped.txt")!r}, {str(system)!r}):
                try:
                    pathlib.Path(target).write_text("escaped")
                except OSError as e:
                    print("write refused:", e)

        def test_connect_to_loopback():
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
                print("CONNECTED")
            except OSError as e:
                print("connect refused:", e)

        def test_read_the_log_and_change_git():
            for name in (".autonomy/events.db", "mylog.db"):
                try:
                    print("LOG:", pathlib.Path(name).read_text())
                except OSError as e:
                    print("log hidden:", e)
            try:
                pathlib.Path(".git/config").write_text("[core]\\n\\thooksPath = /tmp\\n")
            except OSError as e:
                print("git refused:", e)

        def test_environment():
            print("ENV:", sorted(os.environ))

        def test_leave_a_detached_process():
            subprocess.Popen([sys.executable, "-c", {DETACHED!r}], start_new_session=True)
            while not pathlib.Path("alive.txt").exists():
                time.sleep(0.02)
        """
    )


def test_a_model_written_test_cannot_get_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / ".autonomy").mkdir()
    (workspace / ".autonomy" / "events.db").write_text("SECRET-LOG-1")
    (workspace / "mylog.db").write_text("SECRET-LOG-2")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    monkeypatch.setenv("AUTONOMY_TEST_SECRET", "SECRET-ENV")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    system = Path("/etc") / f"autonomy-escaped-{uuid.uuid4().hex}.txt"  # outside /tmp too
    (workspace / "test_escape.py").write_text(hostile_test(outside, system, port))
    confinement = bubblewrap(hidden=[workspace / "mylog.db"])

    try:
        outcome = run(workspace, ["python", "-m", "pytest", "-q", "-s"], confinement)
        assert not system.exists()
    finally:
        system.unlink(missing_ok=True)

    assert "5 passed" in outcome.result, outcome.result
    assert not (outside / "escaped.txt").exists()
    assert "CONNECTED" not in outcome.result
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert "SECRET-LOG" not in outcome.result and "log hidden" in outcome.result
    assert (workspace / ".git" / "config").read_text() == "[core]\n"
    assert "SECRET-ENV" not in outcome.result and "AUTONOMY_TEST_SECRET" not in outcome.result
    # the detached process started (it wrote alive.txt) and is gone with the command
    assert (workspace / "alive.txt").exists()
    wait_until(lambda: lock_is_free(workspace / "holder.lock"), "the detached process is gone")
    (workspace / "go").write_text("")
    assert not (workspace / "late.txt").exists()
    # what the command wrote in the workspace is recorded
    changed = {c.path for c in outcome.files_changed}
    assert {"alive.txt", "holder.lock"} <= changed


def test_the_network_is_reachable_only_when_allowed(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    refused = run(tmp_path, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert not refused.ok and "ConnectionRefusedError" in refused.result
    allowed = run(tmp_path, ["python", "-c", code], bubblewrap(network=True), allowlist=PYTHON_C)
    assert allowed.ok, allowed.result
    listener.accept()[0].close()
    listener.close()


def test_the_command_ends_when_the_engine_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the engine mid-command: nothing of the command survives it."""
    engine = textwrap.dedent(
        f"""
        from pathlib import Path
        from engine.tools import ToolContext, default_registry, execute
        from engine.tools.confine import choose
        from events import MemoryEventStore
        ctx = ToolContext(workspace=Path({str(tmp_path)!r}), blobs=MemoryEventStore(),
                          confinement=choose("required"), allowlist=(("python", "-c"),),
                          command_timeout=600)
        execute(default_registry(), "run_command", {{"argv": ["python", "-c", {DETACHED!r}]}}, ctx)
        """
    )
    bubblewrap()
    scratch = tmp_path / "tmp"  # where the killed engine leaves its command's directory
    scratch.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", engine],
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    with reaped(process):
        wait_until(lambda: (tmp_path / "alive.txt").exists(), "the command has started")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        wait_until(lambda: lock_is_free(tmp_path / "holder.lock"), "the command is gone")
        (tmp_path / "go").write_text("")
        assert not (tmp_path / "late.txt").exists()


CUT = textwrap.dedent(
    """
    import os, pathlib, sys, time
    git = pathlib.Path("sub/.git")
    for part in ("objects", "refs/heads"):
        (git / part).mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\\n")
    (git / "config").write_text(f"[core]\\n\\tfsmonitor = touch {MARKER}\\n")
    pathlib.Path("tool").write_text("#!/bin/sh\\n")
    os.chmod("tool", 0o4755)
    pathlib.Path("made.txt").write_text("")
    time.sleep(float(sys.argv[1]))
    """
)


CUT_ENGINE = textwrap.dedent(
    """
    import os, signal, sys, click
    from pathlib import Path
    import engine.cli.running
    import engine.tools.commands as commands
    from engine.cli.running import interrupts
    from engine.tools import ToolContext, default_registry, execute
    from engine.tools.confine import choose
    from events import MemoryEventStore

    workspace, when, seconds = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    real_clear, real_undo = commands.clear_set_id, commands._undo_repositories

    def clear_set_id(root):  # the command has ended: a stop lands just after
        if when == "after" and not getattr(clear_set_id, "done", False):
            clear_set_id.done = True
            os.kill(os.getpid(), signal.SIGTERM)
        return real_clear(root)

    def undo(*args):  # a second stop, as a slow undo runs
        if when == "twice" and not getattr(undo, "done", False):
            undo.done = True
            os.kill(os.getpid(), signal.SIGTERM)
        return real_undo(*args)

    commands.clear_set_id, commands._undo_repositories = clear_set_id, undo
    engine.cli.running.STOP_GRACE = 0.0  # the second is not taken for the first's
    ctx = ToolContext(workspace=workspace, blobs=MemoryEventStore(),
                      confinement=choose("required"), allowlist=(("python",),),
                      command_timeout=600)
    try:
        with interrupts(None, None):
            execute(default_registry(), "run_command", {"argv": ["python", "cut.py", seconds]}, ctx)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code)
    """
)


@pytest.mark.parametrize(
    ("stop", "when"),
    [
        (signal.SIGINT, "during"),
        (signal.SIGTERM, "during"),
        (signal.SIGTERM, "after"),
        (signal.SIGTERM, "twice"),
    ],
    ids=["ctrl-c", "sigterm", "just-after-it-ended", "a-second-stop-during-the-undo"],
)
def test_a_command_a_stop_cut_leaves_no_repository_and_no_set_id_file(
    tmp_path: Path, stop: signal.Signals, when: str
) -> None:
    """A Ctrl-C, or a service manager's SIGTERM, while a command runs: the command is
    ended, and what it made that git would run (a ``.git`` in a directory of the
    workspace) or that would run as its owner (a set-user-id file) is undone as when
    it ends by itself. Left, the host's next ``git status`` there ran its code. So
    for a stop that lands once the command has ended, before its undo, and for a
    second stop while a stop's undo runs: each left the repository."""
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    marker = tmp_path / "ran-outside-the-sandbox"
    (workspace / "cut.py").write_text(f"MARKER = {str(marker)!r}\n{CUT}")
    bubblewrap()
    seconds = "0" if when == "after" else "600"
    process = subprocess.Popen(
        [sys.executable, "-c", CUT_ENGINE, str(workspace), when, seconds],
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    with reaped(process):
        if when != "after":
            wait_until(
                lambda: (workspace / "made.txt").exists(), "the command has made its repository"
            )
            process.send_signal(stop)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + stop, err
    assert "Traceback" not in err
    assert not os.path.lexists(workspace / "sub" / ".git")
    assert git_status_runs_nothing(workspace / "sub", marker)
    assert (workspace / "tool").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize(
    ("limits", "code", "sign"),
    [
        (
            CommandLimits(memory_mb=200),
            "b = bytearray(1024 * 1024 * 1024)",
            "MemoryError",
        ),
        (
            CommandLimits(file_size_mb=1),
            "open('big', 'wb').write(b'x' * (3 * 1024 * 1024))",
            "",
        ),
        (
            CommandLimits(cpu_seconds=1),
            "while True: pass",
            "",
        ),
        (
            CommandLimits(processes=20),
            "import os, time\nfor i in range(200):\n    if os.fork() == 0:\n        time.sleep(5); os._exit(0)",
            "BlockingIOError",
        ),
    ],
    ids=["memory", "file-size", "cpu", "processes"],
)
def test_resource_limits_stop_a_command(
    tmp_path: Path, limits: CommandLimits, code: str, sign: str
) -> None:
    outcome = run(
        tmp_path,
        ["python", "-c", code],
        bubblewrap(limits=limits),
        allowlist=PYTHON_C,
        command_timeout=120,
    )
    assert not outcome.ok, outcome.result
    assert "timed out" not in outcome.error, "the limit, not the timeout, must stop it"
    assert sign in outcome.result


HOLD_TOGETHER = textwrap.dedent(
    """
    import os, pathlib, time
    children = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            held = b"x" * (120 * 1024 * 1024)  # written: resident, not only reserved
            pathlib.Path(f"held-{n}").write_text("")
            ends = time.monotonic() + 60  # until all four hold theirs, or one died
            while time.monotonic() < ends and not pathlib.Path("stop").exists():
                if len(list(pathlib.Path().glob("held-*"))) == 4:
                    os._exit(0)
                time.sleep(0.05)
            os._exit(3)
        children.append(pid)
    codes = []
    for _ in children:
        code = os.waitstatus_to_exitcode(os.wait()[1])
        if code != 0:
            pathlib.Path("stop").write_text("")
        codes.append(code)
    print("codes", sorted(codes))
    """
)


def test_a_commands_processes_together_hold_no_more_than_its_memory_limit(
    tmp_path: Path,
) -> None:
    """``memory_mb`` bounded each process's address space only: a command of five
    processes of 3 GiB each took 18 GB of the host's memory. Its processes now share
    one memory cgroup of that size (root, which the engine runs as here): four of
    120 MiB cannot all hold theirs under 200 MiB."""
    outcome = run(
        tmp_path,
        ["python", "-c", HOLD_TOGETHER],
        bubblewrap(limits=CommandLimits(memory_mb=200)),
        allowlist=PYTHON_C,
        command_timeout=120,
    )
    assert "codes" in outcome.result, outcome.text
    assert "codes [0, 0, 0, 0]" not in outcome.result
    assert "-9" in outcome.result  # killed by the cgroup's bound, not refused an allocation
    (tmp_path / "roomy").mkdir()
    together = run(
        tmp_path / "roomy",
        ["python", "-c", HOLD_TOGETHER],
        bubblewrap(limits=CommandLimits(memory_mb=2048)),
        allowlist=PYTHON_C,
        command_timeout=120,
    )
    assert "codes [0, 0, 0, 0]" in together.result, together.text


def test_a_command_runs_under_the_largest_limits_the_settings_accept(tmp_path: Path) -> None:
    """Each limit at its ceiling is one ``setrlimit`` takes: the command runs (a cpu
    limit of 10**20 s, before it had a ceiling, failed every command "in preexec_fn")."""
    fields = msgspec.structs.fields(CommandLimits)
    largest = CommandLimits(**{f.name: _ceiling(f.type) for f in fields})
    for confinement in (bubblewrap(limits=largest), choose("off", limits=largest)):
        outcome = run(tmp_path, ["python", "-c", "print('ran')"], confinement, allowlist=PYTHON_C)
        assert outcome.ok and "ran" in outcome.result, outcome.error


def _ceiling(annotated: Any) -> int:
    """The ``le`` of an ``Annotated[int, msgspec.Meta(...)]``."""
    return int(next(m.le for m in annotated.__metadata__ if m.le is not None))


def test_a_command_cannot_read_the_users_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's code could print ~/.ssh/id_rsa or cloud tokens into a tool result,
    which the next request sends to the model server: under bubblewrap the usual
    places are hidden, and the rest of home (a toolchain, say) is still there."""
    workspace = tmp_path / "ws"
    home = workspace / "home"  # in the sandbox, the workspace is bound over its /tmp
    files = {
        ".ssh/id_rsa": "PRIVATE KEY", ".aws/credentials": "AWS SECRET",
        ".netrc": "machine x password NETRC", "tools/ok.txt": "visible",
        ".pgpass": "db:5432:autonomy:autonomy:PGPASS",
        "elsewhere/pgpass": "db:5432:autonomy:autonomy:MOVED",
        # found missing by a probe of the confinement
        ".cargo/credentials.toml": "CARGO TOKEN", ".my.cnf": "MYSQL PASSWORD",
        ".cache/huggingface/token": "HF TOKEN", ".ollama/id_ed25519": "OLLAMA KEY",
        ".vault-token": "VAULT TOKEN", ".bash_history": "HISTORY PASSWORD",
        "xdg/gh/hosts.yml": "GH TOKEN", "k/one": "KUBE ONE", "k/two": "KUBE TWO",
        "cargo/credentials.toml": "MOVED CARGO",
        ".mozilla/firefox/x.default/cookies.sqlite": "FIREFOX COOKIE",
        ".local/share/fish/fish_history": "FISH HISTORY", ".viminfo": "VIM REGISTER",
    }  # fmt: skip
    for name, content in files.items():
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        (home / name).write_text(content)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PGPASSFILE", str(home / "elsewhere/pgpass"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    monkeypatch.setenv("KUBECONFIG", f"{home / 'k/one'}{os.pathsep}{home / 'k/two'}")
    monkeypatch.setenv("CARGO_HOME", str(home / "cargo"))
    store = MemoryEventStore()
    hidden = confine_commands(load_settings(env={}), store).hidden
    assert {home / ".ssh", home / ".aws", home / ".netrc"} <= set(hidden)
    code = textwrap.dedent(
        f"""
        import pathlib
        for name in {list(files)!r}:
            path = pathlib.Path({str(home)!r}) / name
            print(name, path.read_text() if path.is_file() else "(none)")
        """
    )
    outcome = run(workspace, ["python", "-c", code], bubblewrap(hidden=hidden), allowlist=PYTHON_C)
    assert outcome.ok, outcome.error
    for name, secret in files.items():
        assert name == "tools/ok.txt" or secret not in outcome.result, name
    assert "tools/ok.txt visible" in outcome.result
    unhidden = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert all(secret in unhidden.result for secret in files.values()), "a leak must show"


def test_required_without_a_mechanism_refuses_and_auto_warns() -> None:
    with pytest.raises(ConfinementUnavailable, match="apt-get install bubblewrap"):
        choose("required", which=lambda _name: None)
    auto = choose("auto", which=lambda _name: None)
    assert auto.mechanism == "none" and "NOT confined" in auto.warning
    off = choose("off")
    assert off.mechanism == "none" and not off.warning


def test_without_bubblewrap_the_limits_and_environment_still_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTONOMY_TEST_SECRET", "SECRET-ENV")
    code = "import os; print(sorted(os.environ)); bytearray(1024 * 1024 * 1024)"
    outcome = run(
        tmp_path,
        ["python", "-c", code],
        choose("off", limits=CommandLimits(memory_mb=200)),
        allowlist=PYTHON_C,
    )
    assert "MemoryError" in outcome.result and "AUTONOMY_TEST_SECRET" not in outcome.result


def test_the_mechanism_is_recorded_in_run_started_and_printed(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from engine.cli import cli
    from engine.runs.demo import GOAL, DemoModels
    from engine.storage import open_store
    from engine.testing import ScriptedModelServer
    from events import RunStarted

    bubblewrap()
    db = tmp_path / "events.db"
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", GOAL, "--workspace", str(tmp_path / "ws"), "--db", str(db), "--run-id", "r",
             "--model-url", server.url, "--api", "ollama", "--model", "m"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "commands run confined by bubblewrap (no network, resource limits)" in result.output
    started = next(open_store(db).read("r")).data
    assert isinstance(started, RunStarted)
    assert started.confinement == "bubblewrap (no network, resource limits)"


def test_required_refuses_to_start_a_run_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from engine.cli import cli

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap to be found
    db = tmp_path / "events.db"
    result = CliRunner().invoke(
        cli, ["run", "goal", "--workspace", str(tmp_path / "ws"), "--db", str(db),
              "--sandbox", "required"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "Error: tools.sandbox is 'required' but commands cannot be confined" in result.output
    assert "Traceback" not in result.output
    assert not db.exists() or not open_store_runs(db)


def open_store_runs(db: Path) -> list[object]:
    from engine.storage import open_store

    with open_store(db) as store:
        return list(store.runs())


def test_the_interpreter_and_autonomy_stay_importable_wherever_they_are_installed(
    tmp_path: Path,
) -> None:
    """The private /tmp must not hide a virtualenv or a checkout that lives under /tmp
    (CI clones there): pytest loads autonomy's plugin in every command."""
    code = "import engine, events, projections, pytest, sys; print('prefix', sys.prefix)"
    outcome = run(tmp_path, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert outcome.ok, outcome.result
    assert f"prefix {sys.prefix}" in outcome.result


@pytest.mark.parametrize("variable", ["AUTONOMY_KEY_FILE", "AUTONOMY_SERVER_KEYS"])
def test_the_chain_key_and_the_servers_keys_are_hidden_from_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    from engine.agent.runner import hidden_from_commands

    key = tmp_path / "key"  # in the workspace itself, so that only hiding can keep it
    monkeypatch.setenv(variable, str(key))
    secret = os.urandom(32)
    key.write_bytes(secret)
    confinement = bubblewrap(hidden=hidden_from_commands(MemoryEventStore()))
    code = "import pathlib; print('KEY', pathlib.Path('key').read_bytes().hex())"
    outcome = run(tmp_path, ["python", "-c", code], confinement, allowlist=PYTHON_C)
    assert outcome.result.startswith("$ python"), outcome.text  # it ran
    assert secret.hex() not in outcome.result
    unhidden = run(tmp_path, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert secret.hex() in unhidden.result, "the test must be able to see a leak"


def test_a_log_opened_through_a_link_is_hidden_with_its_wal(tmp_path: Path) -> None:
    """SQLite names the WAL after the file a link leads to: with ``--db`` a link, the
    link's ``-wal`` was hidden (and is nothing) while the real one, holding the run's
    events and the files they stored, was readable by the model's commands. (The
    real log is in the workspace here: only hiding can keep it, as /tmp is hidden.)"""
    from engine.agent.runner import hidden_from_commands
    from events import SQLiteEventStore, TaskAdded

    workspace = tmp_path / "ws"
    (workspace / "data").mkdir(parents=True)
    link = tmp_path / "link.db"
    link.symlink_to(workspace / "data" / "events.db")
    code = (
        "import pathlib\n"
        "for name in ('data/events.db-wal', 'data/events.db'):\n"
        "    try: print(name, pathlib.Path(name).read_bytes().count(b'SECRET-IN-THE-LOG'))\n"
        "    except OSError as e: print(name, 'refused', e.strerror)\n"
    )
    with SQLiteEventStore(str(link)) as store:
        store.append("r", [TaskAdded(task_id="t1", title="SECRET-IN-THE-LOG")], 0)
        assert (workspace / "data" / "events.db-wal").stat().st_size > 0  # not checkpointed
        confinement = bubblewrap(hidden=hidden_from_commands(store))
        seen = run(workspace, ["python", "-c", code], confinement, allowlist=PYTHON_C)
        unhidden = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert seen.result.startswith("$ python"), seen.text  # it ran
    assert "data/events.db-wal 0" in seen.result or "wal refused" in seen.result, seen.result
    assert "data/events.db-wal 1" in unhidden.result, "the test must be able to see a leak"


def test_a_command_runs_with_the_log_in_its_default_place_and_cannot_see_it(
    tmp_path: Path,
) -> None:
    """The log's files (in ``.autonomy/``, hidden whole by an empty read-only
    directory) were hidden again one by one, over files bubblewrap could not make
    in that directory: with the log in its default place, every command failed
    ("Can't create file at .../.autonomy/events.db: Read-only file system")."""
    from engine.agent.runner import hidden_from_commands
    from events import SQLiteEventStore, TaskAdded

    workspace = tmp_path / "ws"
    (workspace / ".autonomy").mkdir(parents=True)
    code = "import os; print('seen:', sorted(os.listdir('.autonomy')))"
    with SQLiteEventStore(str(workspace / ".autonomy" / "events.db")) as store:
        store.append("r", [TaskAdded(task_id="t1", title="SECRET-IN-THE-LOG")], 0)
        confinement = bubblewrap(hidden=hidden_from_commands(store))
        outcome = run(workspace, ["python", "-c", code], confinement, allowlist=PYTHON_C)
    assert outcome.ok, outcome.result
    assert "seen: []" in outcome.result, outcome.result


KEYRING_READER = textwrap.dedent(
    """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    keyctl = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
    buf = ctypes.create_string_buffer(4096)

    def read(key):
        m = libc.syscall(keyctl, 11, ctypes.c_long(key), buf, 4096)  # KEYCTL_READ
        return buf.raw[:m] if m >= 0 else b""

    n = libc.syscall(keyctl, 11, -3, buf, 4096)  # the session keyring's keys
    for i in range(0, max(n, 0), 4):
        print("KEY", read(int.from_bytes(buf.raw[i:i + 4], "little")))
    print("read", max(n, 0) // 4, "keys")
    try:  # every keyring /proc/keys shows, linked into its own, then searched
        listed = open("/proc/keys").read()
        print("LISTED" if "autonomy-test" in listed else "listed nothing of the engine's")
        for line in listed.splitlines():
            if line.split()[7] == "keyring":
                libc.syscall(keyctl, 8, ctypes.c_long(int(line.split()[0], 16)), ctypes.c_long(-3))
    except OSError as e:
        print("no /proc/keys", e)
    found = libc.syscall(keyctl, 10, ctypes.c_long(-3), b"user", b"autonomy-test", 0)
    print("SEARCHED", read(found) if found > 0 else b"")
    """
)


def test_a_command_has_a_session_keyring_of_its_own(tmp_path: Path) -> None:
    """The engine's session keyring (a login's: Kerberos tickets, fscrypt keys) was
    the command's to read and to add to; given one of its own, the command still
    linked the engine's into it by the id ``/proc/keys`` shows, and read it. An
    engine with a secret in its session keyring runs a command that tries both: no
    key management call works."""
    engine = textwrap.dedent(
        f"""
        import ctypes, os, sys
        from pathlib import Path
        sys.path[:0] = {sys.path!r}
        from engine.tools.confine import CommandLimits, choose
        from engine.tools import ToolContext, default_registry, execute
        from events import MemoryEventStore
        libc = ctypes.CDLL(None, use_errno=True)
        keyctl, add_key = {{"x86_64": (250, 248), "aarch64": (219, 217)}}[os.uname().machine]
        assert libc.syscall(keyctl, 1, b"autonomy-test-session") > 0  # JOIN_SESSION_KEYRING
        secret = b"SECRET-IN-THE-SESSION-KEYRING"
        assert libc.syscall(add_key, b"user", b"autonomy-test", secret, len(secret), -3) > 0
        argv = ["python", "reader.py"]
        context = ToolContext(workspace=Path({str(tmp_path)!r}), blobs=MemoryEventStore(),
                              confinement=choose("required"),
                              allowlist=(("python",),))
        done = execute(default_registry(), "run_command", {{"argv": argv}}, context)
        print(done.result or done.error)
        """
    )
    (tmp_path / "reader.py").write_text(KEYRING_READER)
    done = subprocess.run(
        [sys.executable, "-c", engine], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "read 0 keys" in done.stdout and "SEARCHED b''" in done.stdout, done.stdout
    assert "LISTED" not in done.stdout  # /proc/keys is /dev/null's stand-in, unreadable
    assert "SECRET-IN-THE-SESSION-KEYRING" not in done.stdout


I386 = """
.globl _start
_start:
  mov $4, %eax; mov $1, %ebx; mov $hello, %ecx; mov $6, %edx; int $0x80
  mov $288, %eax; mov $0, %ebx; mov $-3, %ecx; mov $0, %edx; int $0x80
  mov $allowed, %ecx
  test %eax, %eax
  jns say
  mov $refused, %ecx
say:
  mov $4, %eax; mov $1, %ebx; mov $8, %edx; int $0x80
  mov $1, %eax; mov $0, %ebx; int $0x80
.data
hello: .ascii "hi32!\\n"
allowed: .ascii "allowed\\n"
refused: .ascii "refused\\n"
"""


def test_a_32_bit_program_runs_but_gets_no_key_management_call_either(tmp_path: Path) -> None:
    """The filter refused every call of another architecture than the machine's: a
    32-bit program (an i386 toolchain's, a test binary) could not even write. Its
    calls pass now but for the key management ones, under their i386 numbers."""
    assert os.uname().machine == "x86_64", "this test's program is i386 assembly"
    (tmp_path / "hello.s").write_text(I386)
    for step in (
        ["as", "--32", "-o", "hello.o", "hello.s"],
        ["ld", "-m", "elf_i386", "-o", "hello32", "hello.o"],
    ):
        subprocess.run(step, cwd=tmp_path, check=True, timeout=60)
    outcome = run(tmp_path, ["./hello32"], bubblewrap(), allowlist=(("./hello32",),))
    assert outcome.ok, outcome.text
    assert "hi32!\nrefused" in outcome.result, outcome.result


def test_bubblewrap_is_probed_once_per_binary_and_again_when_it_changes(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = tmp_path / "bwrap"
    fake.write_text(f"#!/bin/sh\necho probed >> {calls}\n")
    fake.chmod(0o755)

    def probes() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    for _ in range(3):
        assert choose("auto", which=lambda _name: str(fake)).mechanism == "bubblewrap"
    assert probes() == 1
    fake.write_text(f"#!/bin/sh\necho probed >> {calls}\necho 'no namespaces' >&2\nexit 1\n")
    refused = choose("auto", which=lambda _name: str(fake))
    assert probes() == 2
    assert refused.mechanism == "none" and "no namespaces" in refused.warning


ESCAPE = """

def test_escape():
    try:
        open({target!r}, "w").write("escaped")
    except OSError:
        pass
"""


def test_a_replayed_log_cannot_turn_confinement_off(tmp_path: Path) -> None:
    """What if the log says otherwise: a run recorded with ``tools.sandbox = "off"``
    and the network allowed (or a log edited to say so) whose model wrote a test that
    writes outside its workspace. Replaying it with live tools on this machine runs
    that test again: confined by bubblewrap, without the network, whatever the log's
    settings say; the file outside is not written again."""
    from click.testing import CliRunner

    from engine.cli import cli
    from engine.runs.demo import GOAL, DemoModels
    from engine.runs.replay import replay
    from engine.storage import open_store
    from engine.testing import ScriptedModelServer

    bubblewrap()
    outside = tmp_path / "outside"
    outside.mkdir()
    escaped = outside / "escaped.txt"

    class Hostile(DemoModels):
        def __call__(self, request: Any) -> Any:
            reply = super().__call__(request)
            for name, arguments in reply.tool_calls:
                if (
                    name == "create_file"
                    and isinstance(arguments, dict)
                    and (arguments["path"] == "test_calc.py")
                ):
                    arguments["content"] += ESCAPE.format(target=str(escaped))
            return reply

    db = tmp_path / "events.db"
    with ScriptedModelServer(Hostile(), models=["m"]) as server:
        result = CliRunner().invoke(
            cli,
            ["run", GOAL, "--workspace", str(tmp_path / "ws"), "--db", str(db), "--run-id", "r",
             "--model-url", server.url, "--api", "ollama", "--model", "m", "--sandbox", "off"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert escaped.read_text() == "escaped", "unconfined, as its owner chose, it got out"
    escaped.unlink()
    with open_store(db) as store:
        replayed = replay(store, "r", tools="live")
    assert not escaped.exists(), "the replay ran the model's code unconfined"
    assert replayed.compared > 0


UNCONFINED_TOML = '[tools]\nsandbox = "off"\nnetwork = true\n\n[tools.limits]\nprocesses = 0\n'
REDIRECTING_TOML = '[models.coding]\nbase_url = "http://127.0.0.1:9"\n'


def after_a_model_wrote(
    tmp_path: Path, call: tuple[str, dict[str, Any]], toml: str, *runs: list[str]
) -> tuple[Path, Any, list[Any]]:
    """A demo run whose model also makes ``call`` (which leaves ``toml`` as the
    workspace's ``autonomy.toml``), then ``autonomy run`` with each of ``runs`` (the
    arguments after the goal) in the same workspace and log: the workspace, the log's
    path and the results."""
    from dataclasses import replace

    from click.testing import CliRunner

    from engine.cli import cli
    from engine.runs.demo import GOAL, DemoModels
    from engine.testing import ScriptedModelServer

    class LeavesAConfig(DemoModels):
        def __call__(self, request: Any) -> Any:
            reply = super().__call__(request)
            if any(name == "create_file" for name, _ in reply.tool_calls):
                reply = replace(reply, tool_calls=(*reply.tool_calls, call))
            return reply

    workspace, db = tmp_path / "ws", tmp_path / "events.db"
    with ScriptedModelServer(LeavesAConfig(), models=["m"]) as server:
        flags = ["--workspace", str(workspace), "--db", str(db), "--model-url", server.url,
                 "--api", "ollama", "--model", "m"]  # fmt: skip
        first = CliRunner().invoke(cli, ["run", GOAL, "--run-id", "first", *flags])
        assert first.exit_code == 0, first.output
        assert (workspace / "autonomy.toml").read_text() == toml, "the model wrote it"
        results = [CliRunner().invoke(cli, ["run", "next goal", *args, *flags]) for args in runs]
    for result in results:
        assert "Traceback" not in result.output, result.output
    return workspace, db, results


def test_an_autonomy_toml_the_model_left_in_its_workspace_cannot_unconfine_the_next_run(
    tmp_path: Path,
) -> None:
    """A model writes ``autonomy.toml`` into its workspace saying no sandbox, the
    network, no process limit. The next ``autonomy run`` there finds that file: it is
    refused, naming each key, and nothing runs. Named with ``--config`` (the user's
    own choice), the same file is taken; a workspace file that tightens is taken."""
    from click.testing import CliRunner

    from engine.cli import cli
    from engine.storage import open_store

    call = ("create_file", {"path": "autonomy.toml", "content": UNCONFINED_TOML})
    workspace, db, (second,) = after_a_model_wrote(
        tmp_path, call, UNCONFINED_TOML, ["--run-id", "second"]
    )
    assert second.exit_code == 1
    message = " ".join(second.output.split())
    for key in ('tools.sandbox = "off"', "tools.network = true", "tools.limits.processes = 0"):
        assert key in message, message
    assert "may tighten how commands are confined, never loosen it" in message
    with open_store(db) as store:
        assert store.last_version("second") == 0, "nothing ran"

    named = CliRunner().invoke(cli, ["config", "--config", str(workspace / "autonomy.toml")])
    assert named.exit_code == 0 and 'sandbox = "off"' in named.output, named.output
    (workspace / "autonomy.toml").write_text(
        '[tools]\nsandbox = "required"\n\n[tools.limits]\nprocesses = 64\n'
    )
    tighter = CliRunner().invoke(cli, ["config", "--workspace", str(workspace)])
    assert tighter.exit_code == 0 and 'sandbox = "required"' in tighter.output, tighter.output
    assert "processes = 64" in tighter.output


@pytest.mark.parametrize("how", ["create_file", "a command"])
def test_an_autonomy_toml_a_model_wrote_is_not_taken_by_the_next_run_unless_named(
    tmp_path: Path, how: str
) -> None:
    """A model (told to by a file it read, say) writes ``autonomy.toml`` pointing a
    role at another server: the next run there would send that server its prompts and
    the project's code, and take its answers. The log records every file a tool
    wrote, commands' too: the next run finds this file there and refuses it, naming
    the run; named with --config it is the user's choice."""
    from engine.storage import open_store

    test = f"def test_it():\n    open('autonomy.toml', 'w').write({REDIRECTING_TOML!r})\n"
    path, content = ("autonomy.toml", REDIRECTING_TOML) if how == "create_file" else (
        "test_config.py", test
    )  # fmt: skip
    workspace, db, (second, _named) = after_a_model_wrote(
        tmp_path,
        ("create_file", {"path": path, "content": content}),
        REDIRECTING_TOML,
        ["--run-id", "second"],
        ["--run-id", "named", "--no-preflight", "--max-steps", "1",
         "--config", str(tmp_path / "ws" / "autonomy.toml")],
    )  # fmt: skip
    assert second.exit_code == 1
    message = " ".join(second.output.split())
    assert f"{workspace / 'autonomy.toml'} is the file a tool of run first wrote" in message
    assert "name it with --config if you mean to use it" in message
    with open_store(db) as store:
        assert store.last_version("second") == 0, "nothing ran"
        assert store.last_version("named") > 0, "named, it is taken"


def test_an_autonomy_toml_that_links_to_a_file_no_snapshot_records_is_refused(
    tmp_path: Path,
) -> None:
    """Snapshots record neither links nor installed packages: a command that writes the
    config into .venv and links autonomy.toml to it would hide its writer from the
    log. A link to another file of the workspace is refused."""
    test = (
        "import os\n"
        "def test_it():\n"
        "    os.makedirs('.venv', exist_ok=True)\n"
        f"    open('.venv/settings.toml', 'w').write({REDIRECTING_TOML!r})\n"
        "    os.symlink('.venv/settings.toml', 'autonomy.toml')\n"
    )
    call = ("create_file", {"path": "test_link.py", "content": test})
    workspace, _, (second,) = after_a_model_wrote(
        tmp_path, call, REDIRECTING_TOML, ["--run-id", "second"]
    )
    assert (workspace / "autonomy.toml").is_symlink()
    assert second.exit_code == 1
    message = " ".join(second.output.split())
    assert "is a link to" in message and "a file of the workspace itself" in message, message


def test_a_log_never_grants_its_confinement_to_a_resume_or_a_worker() -> None:
    """The settings taken up from a log keep everything that makes the run's requests
    and decisions, and none of what protects the machine."""
    from engine.config import recorded_settings

    logged = {
        "limits": {"max_steps": 7},
        "tools": {
            "sandbox": "off",
            "network": True,
            "limits": {"processes": 0, "cpu_seconds": 0},
            "command_timeout": 30.0,
        },
    }
    settings = recorded_settings(logged)
    assert settings.tools.sandbox == "auto" and settings.tools.network is False
    assert settings.tools.limits == CommandLimits()
    assert settings.tools.command_timeout == 30.0 and settings.limits.max_steps == 7


def test_a_log_keeps_what_of_its_confinement_is_tighter_than_the_defaults() -> None:
    """A live replay of a run recorded under a 2-second CPU limit ran its commands under
    the default 600 s: a test the limit had killed passed, and the replay diverged in a
    run nobody changed. A log may tighten, never loosen."""
    from engine.config import recorded_settings

    logged = {
        "tools": {
            "sandbox": "required",
            "network": True,
            "limits": {"cpu_seconds": 2, "memory_mb": 0, "processes": 100_000, "file_size_mb": "x"},
        }
    }
    tools = recorded_settings(logged).tools
    assert tools.sandbox == "required" and tools.network is False
    assert tools.limits == CommandLimits(cpu_seconds=2)


def test_a_replay_keeps_the_tighter_of_the_logs_confinement_and_the_one_given_here() -> None:
    """`autonomy replay --config mine.toml --sandbox required` took the flags and used
    the log's confinement alone: a log someone made ran its commands under none of
    the limits given. The tighter of the two holds, key by key."""
    from engine.config import ToolSettings, recorded_settings

    logged = {"tools": {"sandbox": "auto", "network": True, "limits": {"cpu_seconds": 2}}}
    here = ToolSettings(
        sandbox="required", network=False, limits=CommandLimits(cpu_seconds=60, processes=8)
    )
    tools = recorded_settings(logged, here).tools
    assert (tools.sandbox, tools.network) == ("required", False)
    assert tools.limits == CommandLimits(cpu_seconds=2, processes=8)
    # where the log is the tighter, it holds; where given here allows more, not more
    open_here = ToolSettings(sandbox="off", network=True, limits=CommandLimits(processes=0))
    tools = recorded_settings({"tools": {"sandbox": "auto", "network": False}}, open_here).tools
    assert (tools.sandbox, tools.network, tools.limits) == ("auto", False, open_here.limits)
    assert recorded_settings({}, here).tools.limits == here.limits  # a log that says nothing


# -- a repository's config runs commands outside any sandbox ------------------------------

PLANT = textwrap.dedent(
    """
    import os, pathlib, sys
    def plant(where, marker):
        git = pathlib.Path(where) / ".git"
        for part in ("objects", "refs/heads"):
            try:
                (git / part).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                print("refused:", where, e)
                return
        (git / "HEAD").write_text("ref: refs/heads/main\\n")
        (git / "config").write_text(f"[core]\\n\\tfsmonitor = touch {marker}\\n")
        print("planted:", git)
    for where in sys.argv[1:]:
        plant(where, MARKER)
    try:  # a log where autonomy looks for one by default
        pathlib.Path(".autonomy").mkdir()
        pathlib.Path(".autonomy/events.db").write_text("planted")
    except OSError as e:
        print("refused: the log", e)
    """
)


def git_status_runs_nothing(directory: Path, marker: Path) -> bool:
    """Run ``git status`` where a person would, outside any sandbox: whether the
    repository's config made git run a command (it touches ``marker``)."""
    assert shutil.which("git"), "git is not installed: bash .ci/system-packages installs it"
    subprocess.run(["git", "status"], cwd=directory, capture_output=True, timeout=60)
    return not marker.exists()


def planted(tmp_path: Path, mechanism: str, script: str) -> tuple[Path, Path, ToolOutcome]:
    """A command running ``script`` (given ``MARKER``) on a workspace's top and its
    directory ``sub``, confined by ``mechanism``: the workspace, the marker a
    repository's config would touch, and the command's outcome."""
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    marker = tmp_path / "ran-outside-the-sandbox"
    confinement = bubblewrap() if mechanism == "bubblewrap" else choose("off")
    (workspace / "plant.py").write_text(f"MARKER = {str(marker)!r}\n{script}")
    outcome = run(workspace, ["python", "plant.py", ".", "sub"], confinement, allowlist=PYTHON)
    return workspace, marker, outcome


@pytest.mark.parametrize("mechanism", ["bubblewrap", "none"])
def test_a_command_cannot_make_a_repository_whose_config_git_would_run(
    tmp_path: Path, mechanism: str
) -> None:
    """git runs ``core.fsmonitor`` (and hooks, a pager...) from a repository's config
    on a plain ``git status``: a ``.git`` a command leaves in the workspace, at its
    top or in a directory of it, would run the model's code outside the sandbox the
    next time someone (or their shell's prompt) runs git there."""
    workspace, marker, outcome = planted(tmp_path, mechanism, PLANT)
    assert not os.path.lexists(workspace / ".git")
    assert not os.path.lexists(workspace / "sub" / ".git")
    assert git_status_runs_nothing(workspace, marker)
    assert git_status_runs_nothing(workspace / "sub", marker)
    if mechanism == "bubblewrap":  # the top ones cannot even be made
        assert "refused: ." in outcome.result, outcome.result
        assert not os.path.lexists(workspace / ".autonomy")
        assert "[removed sub/.git: a command may not make a git repository" in outcome.result
    else:  # nothing confines it: it is made, and removed after
        assert "[removed .git, sub/.git: a command may not make" in outcome.result
    assert not {c.path for c in outcome.files_changed} & {".git/config", "sub/.git/config"}


BARE = textwrap.dedent(
    """
    import pathlib, sys
    for where in sys.argv[1:]:  # git init --bare, by hand
        repository = pathlib.Path(where)
        for part in ("objects", "refs/heads"):
            (repository / part).mkdir(parents=True, exist_ok=True)
        (repository / "HEAD").write_text("ref: refs/heads/main\\n")
        (repository / "config").write_text(f"[core]\\n\\tbare = true\\n\\tfsmonitor = touch {MARKER}\\n")
        print("planted:", where)
    """
)


@pytest.mark.parametrize("mechanism", ["bubblewrap", "none"])
def test_a_command_cannot_make_a_directory_a_bare_repository(
    tmp_path: Path, mechanism: str
) -> None:
    """No ``.git`` is needed: git takes a directory holding ``HEAD``, ``objects/`` and
    ``refs/`` for a (bare) repository, and ran its config's fsmonitor on the host.
    Such a directory a command made, the workspace itself included, loses its HEAD."""
    workspace, marker, outcome = planted(tmp_path, mechanism, BARE)
    assert "planted: sub" in outcome.result, outcome.result
    assert "[removed HEAD, sub/HEAD: a command may not make a git repository" in outcome.result
    assert not os.path.lexists(workspace / "HEAD") and not os.path.lexists(workspace / "sub/HEAD")
    assert git_status_runs_nothing(workspace, marker)
    assert git_status_runs_nothing(workspace / "sub", marker)


SPELLINGS = textwrap.dedent(
    """
    import pathlib, sys
    for where in sys.argv[1:]:  # git init --bare, with HEAD under other spellings beside
        repository = pathlib.Path(where)
        for part in ("objects", "refs/heads"):
            (repository / part).mkdir(parents=True, exist_ok=True)
        for head in ("hEAD", "HEAD", "HeAD", "head"):
            (repository / head).write_text("ref: refs/heads/main\\n")
        (repository / "config").write_text(
            f"[core]\\n\\tbare = false\\n\\tworktree = .\\n\\tfsmonitor = touch {MARKER}\\n"
        )
        print("planted:", where)
    """
)


def test_a_bare_repository_loses_every_spelling_of_its_head(tmp_path: Path) -> None:
    """One entry spelt ``head`` in any case was removed, the first listed: ``hEAD``
    went and git's own ``HEAD`` beside it stayed, and the host's ``git status`` ran
    the repository's fsmonitor, at the top of the workspace too."""
    workspace, marker, outcome = planted(tmp_path, "bubblewrap", SPELLINGS)
    assert "planted: sub" in outcome.result, outcome.result
    for where in (workspace, workspace / "sub"):
        assert not [e for e in os.listdir(where) if e.casefold() == "head"]
        assert git_status_runs_nothing(where, marker)


def users_repository(directory: Path) -> None:
    """A repository of the user's in ``directory``, with one commit ("the user's history")."""
    directory.mkdir(parents=True)
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=directory, check=True)
    (directory / "a.txt").write_text("mine\n")
    subprocess.run([*git, "add", "a.txt"], cwd=directory, check=True)
    subprocess.run([*git, "commit", "-qm", "the user's history"], cwd=directory, check=True)


def history_of(directory: Path) -> str:
    """The subjects of the commits of the repository in ``directory``."""
    log = subprocess.run(
        ["git", "log", "--format=%s"], cwd=directory, capture_output=True, text=True, check=False
    )
    return log.stdout.strip() or log.stderr


def planting(workspace: Path, marker: Path, then: str) -> ToolOutcome:
    """A command (``PLANT``'s ``plant`` at hand, given ``MARKER``) that runs ``then``,
    confined in ``workspace``."""
    (workspace / "plant.py").write_text(f"import os\nMARKER = {str(marker)!r}\n{PLANT}\n{then}\n")
    return run(workspace, ["python", "plant.py"], bubblewrap(), allowlist=PYTHON)


def test_a_repository_moved_by_a_command_is_kept_and_one_made_in_its_place_removed(
    tmp_path: Path,
) -> None:
    """Repositories were told apart by path: a command renamed the directory holding
    the user's repository (its read-only mount goes with it) and made a ``.git`` at
    the old path. Its own was kept, and the host's ``git status`` there ran its
    fsmonitor; the user's, at a path new to the engine, was removed with its history.
    They are told apart by the directory itself now (device and inode)."""
    workspace = tmp_path / "ws"
    users_repository(workspace / "sub")
    marker = tmp_path / "ran-outside-the-sandbox"
    outcome = planting(workspace, marker, "os.rename('sub', 'moved')\nplant('sub', MARKER)")
    assert "planted: sub/.git" in outcome.result, outcome.result
    assert "[removed sub/.git: a command may not make" in outcome.result
    assert "moved/.git" not in outcome.result
    assert not os.path.lexists(workspace / "sub" / ".git")
    assert history_of(workspace / "moved") == "the user's history"
    (workspace / "sub").mkdir(exist_ok=True)
    assert git_status_runs_nothing(workspace / "sub", marker)


def test_a_repository_a_command_made_around_the_users_loses_its_head_not_their_history(
    tmp_path: Path,
) -> None:
    """A command moved the user's repository (``vendor/lib/.git``) into a ``.git`` it
    made (``evil/.git/vendor``): the walk never enters a ``.git``, so the user's was
    not seen, and the made one was removed whole, the user's history with it. It
    loses its ``HEAD`` only now: no repository to git, and nothing of the user's lost."""
    workspace = tmp_path / "ws"
    users_repository(workspace / "vendor" / "lib")
    marker = tmp_path / "ran-outside-the-sandbox"
    outcome = planting(
        workspace, marker, "plant('evil', MARKER)\nos.rename('vendor', 'evil/.git/vendor')"
    )
    assert "planted: evil/.git" in outcome.result, outcome.result
    assert "[removed evil/.git/HEAD: a command may not make" in outcome.result
    assert history_of(workspace / "evil" / ".git" / "vendor" / "lib") == "the user's history"
    assert git_status_runs_nothing(workspace / "evil", marker)


@pytest.mark.parametrize("where", ["", "evil/"])
def test_the_file_tools_cannot_make_a_bare_repository(tmp_path: Path, where: str) -> None:
    """``create_file`` of ``HEAD``, ``objects/keep``, ``refs/keep`` and a ``config``
    naming an fsmonitor made a bare repository, at the workspace's top too; the next
    command's snapshot took it for the user's, kept it, and the host's ``git status``
    ran the fsmonitor. The write that would complete one is refused."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    marker = tmp_path / "ran-outside-the-sandbox"
    context = ToolContext(
        workspace=workspace, blobs=MemoryEventStore(), confinement=bubblewrap(), allowlist=PYTHON
    )
    files = {
        "config": f"[core]\n\tbare = false\n\tworktree = .\n\tfsmonitor = touch {marker}\n",
        "objects/keep": "",
        "refs/keep": "",
        "HEAD": "ref: refs/heads/main\n",
    }
    outcomes = [
        execute(default_registry(), "create_file", {"path": where + name, "content": text}, context)
        for name, text in files.items()
    ]
    assert [o.ok for o in outcomes] == [True, True, True, False], outcomes
    assert "a git repository" in outcomes[-1].error
    (workspace / "run.py").write_text("print('ran')\n")
    ran = execute(default_registry(), "run_command", {"argv": ["python", "run.py"]}, context)
    assert ran.ok, ran.text
    assert git_status_runs_nothing(workspace / where, marker)


def test_what_a_repositorys_config_makes_git_read_or_run_is_read_only(tmp_path: Path) -> None:
    """A repository's config may include a file of the project (``include.path``), name
    a hooks directory of the working tree (``core.hooksPath``), or a program by its
    path (``core.fsmonitor = scripts/watch.sh``): a command wrote an fsmonitor into
    the included file, and the host's ``git status`` ran it as the user. Each is
    read-only for commands now, as the repository itself is."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=workspace, check=True)
    for key, value in (("include.path", "../.gitconfig"), ("core.hooksPath", ".githooks")):
        subprocess.run(["git", "config", key, value], cwd=workspace, check=True)
    (workspace / ".gitconfig").write_text("[core]\n\tfsmonitor = scripts/watch.sh\n")
    (workspace / ".githooks").mkdir()
    (workspace / "scripts").mkdir()
    (workspace / "scripts" / "watch.sh").write_text("#!/bin/sh\nexit 1\n")
    (workspace / "scripts" / "watch.sh").chmod(0o755)
    marker = tmp_path / "ran-outside-the-sandbox"
    code = tries_to_write(
        ".gitconfig", ".githooks/pre-commit", "scripts/watch.sh", "scripts/other.sh",
        text=f"#!/bin/sh\ntouch {marker}\n",
    )  # fmt: skip
    outcome = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    for target in (".gitconfig", ".githooks/pre-commit", "scripts/watch.sh"):
        assert f"refused {target}" in outcome.result, outcome.result
    assert "wrote scripts/other.sh" in outcome.result  # the rest of the project is the command's
    assert git_status_runs_nothing(workspace, marker)


def test_a_directory_that_took_the_users_git_links_inode_is_not_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identity of a repository was its device and inode: a ``.git`` that is a
    link (to a git directory kept elsewhere) is writable, its target only is mounted
    read-only. A red team's command removed the link, made directories until one had
    the freed inode number (ext4 hands one out again at once, but not always: here the
    reuse is made certain), made it a repository and renamed it ``.git``: it passed
    for the user's, and the host's ``git status`` ran its fsmonitor."""
    from engine.tools import commands

    link = tmp_path / ".git"
    link.symlink_to(tmp_path / "elsewhere.git")
    users = commands._identity(link)
    link.unlink()
    link.mkdir()
    real_lstat = os.lstat

    def reused(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        found = real_lstat(path, *args, **kwargs)
        if Path(path) != link:
            return found
        fields = list(found)
        fields[stat.ST_INO] = users[1] if users else 0
        return os.stat_result(fields)

    monkeypatch.setattr(commands.os, "lstat", reused)
    made = commands._identity(link)
    assert made is not None and users is not None and made[:2] == users[:2]  # same number
    assert made != users


def planted_in(tmp_path: Path, where: str) -> tuple[Path, Path, ToolOutcome]:
    """A command that makes a repository (``PLANT``) in the workspace's directory
    ``where``, named in its code (no argument may name a path in ``.autonomy/``): the
    directory, the marker its config would touch, and the command's outcome."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    marker = tmp_path / "ran-outside-the-sandbox"
    (workspace / "plant.py").write_text(
        f"MARKER = {str(marker)!r}\n{PLANT}\nplant({where!r}, MARKER)\n"
    )
    outcome = run(workspace, ["python", "plant.py"], bubblewrap(), allowlist=PYTHON)
    assert f"planted: {where}/.git" in outcome.result, outcome.result
    return workspace / where, marker, outcome


@pytest.mark.parametrize(
    "where", ["node_modules/left-pad", ".venv", "__pycache__", ".tox/py", "sub/.autonomy/evil"]
)
def test_a_repository_made_where_no_file_is_recorded_is_removed_too(
    tmp_path: Path, where: str
) -> None:
    """A snapshot does not record the directories of installed packages and caches,
    nor a log's: a ``.git`` a command made in one was never seen, so never removed
    (``sub/.autonomy/evil/.git`` too: no ``.autonomy`` was walked)."""
    place, marker, outcome = planted_in(tmp_path, where)
    assert f"[removed {where}/.git: a command may not make a git repository" in outcome.result
    assert not os.path.lexists(place / ".git")
    assert git_status_runs_nothing(place, marker)


UNRECORDED_PLACES = {
    "not-utf8": os.fsdecode(b"bad\xff"),
    "70-deep": "/".join(["d"] * 70),
    "1100-chars": "/".join(["n" * 100] * 11),
}


@pytest.mark.parametrize("where", list(UNRECORDED_PLACES), ids=list(UNRECORDED_PLACES))
def test_a_repository_made_where_a_snapshot_records_nothing_is_removed_too(
    tmp_path: Path, where: str
) -> None:
    """A snapshot leaves out a directory whose name is not UTF-8, or that is too deep
    or too long to restore: a ``.git`` a command made in one was never looked for,
    stayed, and the host's ``git status`` there ran its config."""
    workspace = tmp_path / "ws"
    place = workspace / UNRECORDED_PLACES[where]
    place.mkdir(parents=True)
    marker = tmp_path / "ran-outside-the-sandbox"
    (workspace / "plant.py").write_text(
        f"MARKER = {str(marker)!r}\n{PLANT}\n"
        f"plant(os.fsdecode({os.fsencode(UNRECORDED_PLACES[where])!r}), MARKER)\n"
    )
    outcome = run(workspace, ["python", "plant.py"], bubblewrap(), allowlist=PYTHON)
    assert "planted:" in outcome.result, outcome.result
    assert "[removed " in outcome.result and "/.git: a command may not make" in outcome.result
    assert not os.path.lexists(place / ".git")
    assert git_status_runs_nothing(place, marker)


def test_a_command_cannot_read_or_change_another_runs_log_in_the_workspace(
    tmp_path: Path,
) -> None:
    """A run whose workspace is a directory of this one keeps its log in that
    directory's ``.autonomy``: a command read it into its output (to the model) and
    overwrote it, and no file change said so. It is hidden as the workspace's own."""
    workspace = tmp_path / "ws"
    log = workspace / "other" / ".autonomy" / "events.db"
    log.parent.mkdir(parents=True)
    log.write_text("ANOTHER RUN'S LOG")
    code = textwrap.dedent(
        """
        import pathlib
        path = pathlib.Path("other/.autonomy/events.db")
        print("read:", path.read_text() if path.exists() else "(none)")
        try:
            path.write_text("gone")
        except OSError as e:
            print("refused:", e.strerror)
        """
    )
    (workspace / "peek.py").write_text(code)  # (an argument naming .autonomy is refused)
    outcome = run(workspace, ["python", "peek.py"], bubblewrap(), allowlist=PYTHON)
    assert "read: (none)" in outcome.result and "ANOTHER RUN" not in outcome.result
    assert "refused: Read-only file system" in outcome.result, outcome.result
    assert log.read_text() == "ANOTHER RUN'S LOG"


def test_the_engines_own_packages_in_the_workspace_are_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """autonomy's virtualenv in the workspace (``.venv``, where tools put one): a
    command wrote a ``.pth`` file into its site-packages, which the next start of
    autonomy ran on the host. The interpreter's directories inside the workspace are
    as read-only as those outside it."""
    from engine.tools import confine

    workspace = tmp_path / "ws"
    site = workspace / ".venv" / "lib" / "site-packages"
    site.mkdir(parents=True)
    real = confine._python_paths()
    monkeypatch.setattr(confine, "_python_paths", lambda: [*real, site])
    code = tries_to_write(".venv/lib/site-packages/zz.pth", "mine.txt", text="import os")
    outcome = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert "refused .venv/lib/site-packages/zz.pth Read-only file system" in outcome.result
    assert "wrote mine.txt" in outcome.result, outcome.result
    assert not (site / "zz.pth").exists()


def test_a_commands_cgroup_is_removed_once_empty_and_gone_engines_ones_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command's pids cgroup was removed at once, while the kernel still counted the
    killed process in it (busy): most were left behind, hundreds on a machine running
    tests. It is removed once empty, and so is a group of an engine that is gone;
    a live engine's, or one whose name holds no process id, stays. (Directories
    stand in for the cgroup file system: a test cannot count on root and cgroup v1.)"""
    from engine.tools import confine

    mine = tmp_path / f"autonomy-{os.getpid()}-aa"
    (mine / "busy").mkdir(parents=True)  # rmdir fails, as on a group not yet empty
    live = tmp_path / f"autonomy-{os.getpid()}-bb"
    gone = tmp_path / "autonomy-999999999-cc"  # past any pid_max: no such process
    odd = tmp_path / f"autonomy-{'9' * 30}-dd"  # no process id at all
    for group in (live, gone, odd):
        group.mkdir()
    waits: list[float] = []

    def emptied(seconds: float) -> None:  # the kernel takes the last process out
        waits.append(seconds)
        (mine / "busy").rmdir()

    monkeypatch.setattr(confine.time, "sleep", emptied)
    confine._release(mine)
    assert len(waits) == 1 and not mine.exists() and not gone.exists()
    assert live.exists() and odd.exists()


@pytest.mark.parametrize("hierarchy", ["v1", "v2"])
def test_a_commands_cgroups_are_made_in_the_engines_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hierarchy: str
) -> None:
    """A command's groups were made at the root of the hierarchy: out of the limits
    of the engine's own group (a container's, a service's MemoryMax). They are made
    in it; under v2, where it does not hand its controllers down, none is made.
    (A stand-in for the cgroup file system, in which every limit file takes a write:
    this machine has one hierarchy or the other.)"""
    from engine.tools import confine

    root = tmp_path / "cgroup"
    proc = tmp_path / "cgroup-of-self"
    monkeypatch.setattr(confine, "CGROUPS", root)
    monkeypatch.setattr(confine, "PROC_CGROUP", proc)
    if hierarchy == "v1":
        proc.write_text("9:pids:/\n4:memory:/service/engine\n0::/\n")
        for own in ("pids", "memory/service/engine"):
            (root / own).mkdir(parents=True)
            (root / own / "cgroup.procs").write_text("")
    else:
        proc.write_text("0::/service/engine\n")
        (root / "service" / "engine").mkdir(parents=True)
        (root / "cgroup.controllers").write_text("memory pids")
        (root / "service" / "engine" / "cgroup.procs").write_text("")
    made = confine._command_cgroups(CommandLimits(memory_mb=100, processes=10))
    try:
        if hierarchy == "v1":
            pids, memory = made
            assert pids.parent == root / "pids"
            assert memory.parent == root / "memory" / "service" / "engine"
            assert (memory / "memory.limit_in_bytes").read_text() == str(100 * 2**20)
        else:
            (group,) = made
            assert group.parent == root / "service" / "engine"
            assert (group / "pids.max").read_text() == "10"
    finally:
        for group in made:
            shutil.rmtree(group)


def test_a_command_cannot_change_a_repository_of_the_workspace(tmp_path: Path) -> None:
    """The repositories already there, the workspace's own and any inside it (a
    ``.git`` directory or a worktree's ``.git`` file, one among installed packages
    as ``pip install -e git+...`` makes, a bare one), stay as they are."""
    workspace = tmp_path / "ws"
    kept = ("vendor/lib/.git/config", ".venv/src/pkg/.git/config", "mirror.git/config")
    for name in kept:
        (workspace / name).parent.mkdir(parents=True)
        (workspace / name).write_text("[core]\n")
    for part in ("objects", "refs"):
        (workspace / "mirror.git" / part).mkdir()
    (workspace / "mirror.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (workspace / ".git").write_text("gitdir: /nowhere/.git/worktrees/ws\n")
    code = textwrap.dedent(
        f"""
        import pathlib, shutil
        for name, text in ((".git", "gitdir: planted\\n"),
                           *((name, "[core]\\n\\tfsmonitor = touch x\\n") for name in {kept!r})):
            try:
                pathlib.Path(name).write_text(text)
            except OSError as e:
                print("refused:", name, type(e).__name__)
        for name in (".git", "vendor/lib/.git"):
            try:
                (shutil.rmtree if pathlib.Path(name).is_dir() else pathlib.Path(name).unlink)(name)
            except (OSError, TypeError) as e:
                print("not removed:", name, type(e).__name__)
        """
    )
    (workspace / "change.py").write_text(code)
    outcome = run(workspace, ["python", "change.py"], bubblewrap(), allowlist=PYTHON)
    assert outcome.result.count("refused:") == 4, outcome.result
    assert outcome.result.count("not removed:") == 2, outcome.result
    assert (workspace / ".git").read_text() == "gitdir: /nowhere/.git/worktrees/ws\n"
    assert all((workspace / name).read_text() == "[core]\n" for name in kept)


@pytest.mark.parametrize("where", ["inside", "outside"])
def test_a_git_or_a_log_directory_that_is_a_link_is_kept_read_only_or_hidden(
    tmp_path: Path, where: str
) -> None:
    """bubblewrap mounts on a path, not through a link: a workspace whose ``.git`` or
    ``.autonomy`` is a link to a directory outside it (a repository or the logs kept
    elsewhere) made every command fail with bubblewrap's "Can't bind mount", the
    model told its command failed, the user nothing. What the link leads to is
    read-only or hidden, wherever it is."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    base = workspace if where == "inside" else tmp_path
    (base / "repo").mkdir()
    (base / "repo" / "config").write_text("[core]\n")
    (base / "logs").mkdir()
    (base / "logs" / "events.db").write_text("the log")
    (workspace / ".git").symlink_to(base / "repo", target_is_directory=True)
    (workspace / ".autonomy").symlink_to(base / "logs", target_is_directory=True)
    code = textwrap.dedent(
        """
        import pathlib
        try:
            pathlib.Path(".git/config").write_text("[core]\\n\\tfsmonitor = touch x\\n")
        except OSError as e:
            print("refused:", type(e).__name__)
        print("seen" if pathlib.Path(".autonomy/events.db").exists() else "hidden")
        """
    )
    (workspace / "look.py").write_text(code)
    outcome = run(workspace, ["python", "look.py"], bubblewrap(), allowlist=PYTHON)
    assert outcome.ok, outcome.result + outcome.error
    assert "refused:" in outcome.result and "hidden" in outcome.result, outcome.result
    assert (base / "repo" / "config").read_text() == "[core]\n"


@pytest.mark.parametrize(
    "code",
    [
        "os.remove('.git')",
        "os.remove('.git'); os.symlink('/tmp', '.git')",
        "os.remove('.git'); os.makedirs('.git/objects'); open('.git/HEAD', 'w').write('x')",
        "os.rename('.git', 'moved')",
        "os.remove('sub/.git')",
        "os.rename('.git', 't'); os.makedirs('.git'); os.rename('t', '.git/link');"
        " open('.git/config', 'w').write('[core]')",
        "os.rename('.git', 't'); os.makedirs('.git'); os.rename('t', '.git/HEAD')",
        "os.rename('.git', 't'); os.rename('sub/.git', '.git'); os.rename('t', 'sub/.git')",
        "os.link('.git', 'sub/t', follow_symlinks=False); os.rename('sub/t', 'sub/.git')",
        "os.makedirs('x/a'); os.rename('.git', 'x/a/.git')",
    ],
    ids=[
        "removed", "another-link", "own-repository", "moved", "nested", "moved-in", "as-head",
        "swapped", "hard-linked-over", "moved-deeper",
    ],
)  # fmt: skip
def test_a_command_cannot_take_away_a_repository_kept_through_a_link(
    tmp_path: Path, code: str
) -> None:
    """A ``.git`` that is a link (the repository kept elsewhere) is no mount point: a
    command removed it, moved it, put its own in its place or another of the user's
    links (swapped, hard-linked over it), and the workspace was no longer the user's
    repository's ("not a git repository"), or another's. Each link is put back at its
    own name, and none is left at another."""
    repositories = {".git": tmp_path / "top", "sub/.git": tmp_path / "sub"}
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    for name, repository in repositories.items():
        subprocess.run(["git", "init", "-q", str(repository)], check=True, timeout=60)
        (workspace / name).symlink_to(repository / ".git")
    outcome = run(
        workspace, ["python", "-c", f"import os; {code}"], bubblewrap(), allowlist=PYTHON_C
    )
    assert outcome.ok, outcome.result + outcome.error
    assert "[put back " in outcome.result and "the link to a repository" in outcome.result
    for name, repository in repositories.items():
        assert os.readlink(workspace / name) == str(repository / ".git"), name
        found = subprocess.run(
            ["git", "rev-parse", "--absolute-git-dir"],
            cwd=(workspace / name).parent,
            capture_output=True,
            text=True,
        )
        assert found.stdout.strip() == str(repository / ".git"), (name, found)
    assert not os.path.lexists(workspace / "x" / "a" / ".git"), "a link left at another name"


def test_a_link_is_never_put_back_through_a_directory_a_command_made_a_link(
    tmp_path: Path,
) -> None:
    """The engine (root, outside the sandbox) put the user's ``sub/.git`` link back at
    ``sub/.git`` whatever ``sub`` was: a command that made ``sub`` a link to a
    directory outside the workspace had the engine make a ``.git`` there."""
    repository, outside = tmp_path / "elsewhere", tmp_path / "outside"
    subprocess.run(["git", "init", "-q", str(repository)], check=True, timeout=60)
    outside.mkdir()
    workspace = tmp_path / "ws"
    (workspace / "sub").mkdir(parents=True)
    (workspace / "sub" / ".git").symlink_to(repository / ".git")
    code = f"import os, shutil; shutil.rmtree('sub'); os.symlink({str(outside)!r}, 'sub')"
    outcome = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert not os.path.lexists(outside / ".git"), "put back outside the workspace"
    assert not outcome.ok and outcome.error.startswith("sub/.git: "), outcome.error


def test_a_repository_moved_into_a_git_a_command_made_is_kept_and_said(tmp_path: Path) -> None:
    """The user's repository (a directory) and the link to another, moved into a .git
    the command made: the .git is kept (removed whole, it took the user's history
    with it), only its HEAD removed, and the command said nothing of it; the link
    could not be put back. The outcome now fails, saying what to move back."""
    linked = tmp_path / "elsewhere"
    subprocess.run(["git", "init", "-q", str(linked)], check=True, timeout=60)
    workspace = tmp_path / "ws"
    subprocess.run(["git", "init", "-q", str(workspace / "real")], check=True, timeout=60)
    (workspace / ".git").symlink_to(linked / ".git")
    code = (
        "import os; os.rename('.git', 'L'); os.makedirs('.git'); os.rename('L', '.git/L');"
        " os.rename('real', '.git/real'); open('.git/HEAD', 'w').write('ref: refs/heads/x')"
    )
    outcome = run(workspace, ["python", "-c", code], bubblewrap(), allowlist=PYTHON_C)
    assert not outcome.ok
    assert outcome.error.startswith(".git: a command moved one of the workspace's repositories")
    assert "must move theirs back" in outcome.error
    assert (workspace / ".git" / "real" / ".git" / "HEAD").is_file(), "the user's history kept"
    assert not (workspace / ".git" / "HEAD").exists()


def test_a_stand_in_a_killed_engine_left_is_removed_by_the_next_command(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()  # as an engine killed during a command leaves it
    outcome = run(tmp_path, ["python", "-c", "print('ran')"], bubblewrap(), allowlist=PYTHON_C)
    assert outcome.ok and "ran" in outcome.result
    assert not os.path.lexists(tmp_path / ".git")


UNHIDE = textwrap.dedent(
    """
    import ctypes, os, pathlib
    print([line for line in pathlib.Path("/proc/self/status").read_text().splitlines()
           if line.startswith("CapEff")])
    libc = ctypes.CDLL(None, use_errno=True)
    for target in (os.path.abspath(".autonomy"), "/"):
        if libc.umount2(target.encode(), 2) != 0:  # MNT_DETACH
            print("umount refused:", target, os.strerror(ctypes.get_errno()))
    if libc.mount(b"none", b"/", None, 32 | 4096 | 16384, None) != 0:  # MS_REMOUNT|BIND
        print("remount refused:", os.strerror(ctypes.get_errno()))
    try:
        print("LOG:", pathlib.Path(".autonomy/events.db").read_text())
    except OSError as e:
        print("log hidden:", type(e).__name__)
    """
)


def test_a_command_has_no_capabilities_even_when_the_engine_runs_as_root(tmp_path: Path) -> None:
    """bubblewrap run by root keeps root's capabilities in the sandbox unless told to
    drop them: a command could unmount what hides the log and the keys, or remount
    ``/`` writable, and write anywhere on the host."""
    (tmp_path / ".autonomy").mkdir()
    (tmp_path / ".autonomy" / "events.db").write_text("SECRET-LOG")
    (tmp_path / "unhide.py").write_text(UNHIDE)
    outcome = run(tmp_path, ["python", "unhide.py"], bubblewrap(), allowlist=PYTHON)
    assert "['CapEff:\\t0000000000000000']" in outcome.result, outcome.result
    assert "SECRET-LOG" not in outcome.result and "log hidden" in outcome.result
    assert outcome.result.count("refused") == 3, outcome.result


KERNEL_SETTINGS = textwrap.dedent(
    """
    import errno, os
    for name in ("sys/kernel/printk_ratelimit", "sys/vm/overcommit_ratio", "sysrq-trigger"):
        path = "/proc/" + name
        if not os.path.exists(path):
            continue
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            print(name, "refused:", errno.errorcode[e.errno])
            continue
        try:  # no value the kernel takes: nothing changes even when the open succeeds
            os.write(fd, b"not-a-number")
        except OSError as e:
            print(name, "OPENED, then", errno.errorcode[e.errno])
        finally:
            os.close(fd)
    """
)


def test_a_command_cannot_change_the_kernels_settings_even_when_the_engine_runs_as_root(
    tmp_path: Path,
) -> None:
    """Without capabilities a command run by root is still uid 0, and the kernel lets
    uid 0 write ``/proc/sys``: bubblewrap covers it read-only only when it finds it
    writable by ``access()``, which says no to root without capabilities, so it was
    left writable (``kernel.core_pattern`` runs a program as root on the host at the
    next crash; ``sysrq-trigger`` reboots it). Found by a probe: each open for writing
    succeeded, the kernel refusing only the value."""
    (tmp_path / "settings.py").write_text(KERNEL_SETTINGS)
    outcome = run(tmp_path, ["python", "settings.py"], bubblewrap(), allowlist=PYTHON)
    assert "OPENED" not in outcome.result, outcome.result
    assert "sys/kernel/printk_ratelimit refused: " in outcome.result, outcome.result
    if os.geteuid() == 0:  # as root, refused by the read-only mount, not by the mode
        assert outcome.result.count("refused: EROFS") >= 2, outcome.result


DEEP = textwrap.dedent(
    """
    import os, pathlib
    pathlib.Path("app.py").write_text("changed = True\\n")
    git = pathlib.Path("sub") / ("." + "git")
    for part in ("objects", "refs"):
        (git / part).mkdir(parents=True, exist_ok=True)
    (git / "HEAD").write_text("ref: refs/heads/main\\n")
    os.chdir(git)
    for _ in range(3000):  # deeper than Python's recursion limit
        os.mkdir("d")
        os.chdir("d")
    """
)


def test_a_repository_too_deep_for_python_to_remove_is_removed_and_the_changes_kept(
    tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "app.py").write_text("changed = False\n")
    (tmp_path / "deep.py").write_text(DEEP)
    try:
        outcome = run(tmp_path, ["python", "deep.py"], bubblewrap(), allowlist=PYTHON)
    finally:  # whatever happened: pytest's own clean-up cannot remove such a tree
        subprocess.run(["rm", "-rf", str(tmp_path / "sub" / ".git")], check=True)
    assert outcome.ok, (outcome.error, outcome.result)
    assert "[removed sub/.git: a command may not make" in outcome.result
    assert [c.path for c in outcome.files_changed] == ["app.py"]


FILL = textwrap.dedent(
    """
    import os
    chunk = b"x" * (1024 * 1024)
    for where, mib in (("/dev/shm/fill", 80), ("/dev/fill", 1), ("/run/fill", 80),
                       (".autonomy/fill", 1), ("sub/.autonomy/fill", 1), ("/tmp/fill", 300)):
        try:
            with open(where, "wb") as f:
                for _ in range(mib):
                    f.write(chunk)
                    f.flush()
            print("filled", where, flush=True)
        except OSError as e:
            print("refused", where, e.strerror, flush=True)
        finally:
            if os.path.exists(where):
                os.unlink(where)
    """
)


def test_a_command_cannot_fill_the_machines_memory_through_its_tmpfs(tmp_path: Path) -> None:
    """/tmp, /dev/shm and /run are in memory that no rlimit of the command counts: they
    hold at most its memory limit (/dev/shm and /run 64 MiB), and /dev takes no files;
    nor does what stands in for a log (a tmpfs over it, which took gigabytes), the
    workspace's or another run's in a directory of it. Where the command has a memory
    cgroup (root), it counts /tmp's pages too, and ends the command (SIGKILL) before
    /tmp is full: either way, no more than the limit."""
    confinement = bubblewrap(limits=CommandLimits(memory_mb=200))
    assert confinement.sizes, "this bubblewrap cannot bound a tmpfs (--size: 0.7 and later)"
    (tmp_path / "fill.py").write_text(FILL)
    (tmp_path / "sub" / ".autonomy").mkdir(parents=True)
    outcome = run(tmp_path, ["python", "fill.py"], confinement, allowlist=PYTHON)
    assert "filled /tmp/fill" not in outcome.result, outcome.result
    assert (
        "refused /tmp/fill No space left on device" in outcome.result
        or "exit code 137" in outcome.error
    ), outcome.text
    assert "refused /dev/shm/fill No space left on device" in outcome.result
    assert "refused /dev/fill Read-only file system" in outcome.result
    assert "refused /run/fill No space left on device" in outcome.result
    assert "refused .autonomy/fill Read-only file system" in outcome.result
    assert "refused sub/.autonomy/fill Read-only file system" in outcome.result


def tries_to_write(*targets: str, text: str = "overwritten") -> str:
    """A command's code that writes ``text`` to each of ``targets``, saying for each
    whether it "wrote" it or was "refused" (and why)."""
    return textwrap.dedent(
        f"""
        import pathlib
        for target in {targets!r}:
            try:
                pathlib.Path(target).write_text({text!r})
                print("wrote", target)
            except OSError as e:
                print("refused", target, e.strerror)
        """
    )


SEEN_ELSEWHERE = textwrap.dedent(
    """
    import os, pathlib
    print("cwd", os.getcwd())
    print("listed", sorted(os.listdir(".")))
    pathlib.Path("made.txt").write_text("by the command")
    """
) + tries_to_write(".git/config", "original.txt")


def test_a_workspace_seen_elsewhere_is_written_there_and_hides_what_is_there(
    tmp_path: Path,
) -> None:
    """A live replay's commands see the scratch copy where the recorded workspace was
    (``Confinement.seen_at``): what they write lands in the copy, the directory at
    that place (the user's project) is neither seen nor changed, and the copy's
    ``.git`` stays read-only there."""
    copy, place = tmp_path / "copy", Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        (copy / ".git").mkdir(parents=True)
        (copy / ".git" / "config").write_text("[core]\n")
        (copy / "seen.py").write_text(SEEN_ELSEWHERE)
        (place / "original.txt").write_text("the user's")
        confinement = bubblewrap().seen_at(str(place))
        assert confinement.seen_as == place
        outcome = run(copy, ["python", "seen.py"], confinement, allowlist=PYTHON)
        assert outcome.ok, (outcome.error, outcome.result)
        assert f"cwd {place}\n" in outcome.result
        assert "'original.txt'" not in outcome.result and "'seen.py'" in outcome.result
        assert "refused .git/config Read-only file system" in outcome.result
        assert "wrote original.txt" in outcome.result
        assert (copy / "made.txt").read_text() == "by the command"
        assert (copy / "original.txt").read_text() == "overwritten"
        assert (place / "original.txt").read_text() == "the user's"
        assert sorted(p.name for p in place.iterdir()) == ["original.txt"]
        assert (copy / ".git" / "config").read_text() == "[core]\n"
    finally:
        shutil.rmtree(place)


def test_a_workspace_is_seen_elsewhere_only_where_bubblewrap_can_mount_it() -> None:
    """A directory as it is, or a path under the command's own /tmp (a fresh one,
    where bubblewrap makes it): nowhere else can it mount (a read-only root, a
    link), and a log may name anything."""
    confinement = bubblewrap()
    place = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        link = place / "link"
        link.symlink_to(place)
        odd = ("relative/path", "/", f"{place}/../x", f"{place}/", "/var/tmp/a\0b", "/tmp/a\0b")
        for kept in (*odd, str(link), "/nonexistent/ws"):
            assert confinement.seen_at(kept).seen_as is None, kept
        assert confinement.seen_at(str(place)).seen_as == place
        assert confinement.seen_at("/tmp/gone/ws").seen_as == Path("/tmp/gone/ws")
        assert choose("off").seen_at(str(place)).seen_as is None  # no mounts without it
    finally:
        shutil.rmtree(place)


def test_commands_see_no_more_of_tmp_than_the_interpreter_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine started from a script in /tmp (or by ``python -m`` there) has /tmp
    first on its import path: it was bound into every command's fresh /tmp, which
    then saw all of the host's."""
    from engine.tools import confine

    monkeypatch.setattr(sys, "path", ["/tmp", *sys.path[1:]])
    assert Path("/tmp") not in confine._python_paths()
    monkeypatch.setattr(sys, "path", ["", "/tmp", *sys.path[1:]])
    assert Path("/tmp") not in confine._python_paths()
