"""`autonomy rewind` and `autonomy fork`: back to any version, byte for byte, and on again."""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from waiting import reaped, wait_until

from engine.agent import runner
from engine.cli import cli
from engine.runs.demo import CALC_V1, GOAL, DemoModels
from engine.runs.workspace import (
    SKIPPED,
    HistoryError,
    Restored,
    files_at,
    finish_rewind,
    restore,
)
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import MemoryEventStore, ModelRequested, RunForked, RunRewound, RunStarted
from events.schema import FileChange, ToolExecuted, ToolRequested
from events.store import EventStore
from projections import project

UNTOUCHED = b"notes the run never touches\n"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (the log and caches aside), path -> bytes."""
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not SKIPPED.intersection(relative.parts):
            files[relative.as_posix()] = path.read_bytes()
    return files


class Snapshots(DemoModels):
    """The demo models, photographing the workspace whenever a request arrives: the
    request's model.requested is then the log's last event."""

    def __init__(self, workspace: Path) -> None:
        super().__init__()
        self.workspace = workspace
        self.seen: list[dict[str, bytes]] = []

    def __call__(self, request: ScriptedRequest) -> Reply:
        self.seen.append(snapshot(self.workspace))
        return super().__call__(request)


def flags(server: ScriptedModelServer) -> list[str]:
    return ["--model-url", server.url, "--api", "ollama", "--model", "m"]


def record(tmp_path: Path) -> tuple[Path, Path, Snapshots]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "NOTES.txt").write_bytes(UNTOUCHED)
    db = tmp_path / "events.db"
    models = Snapshots(workspace)
    with ScriptedModelServer(models, models=["m"]) as server:
        code, out = invoke(
            "run", GOAL, "--workspace", str(workspace), "--db", str(db), "--run-id", "r",
            "--mode", "rules", *flags(server),
        )  # fmt: skip
    assert code == 0, out
    return db, workspace, models


def request_versions(db: Path, run_id: str) -> list[int]:
    with open_store(db) as store:
        return [e.version for e in store.read(run_id) if isinstance(e.data, ModelRequested)]


def rows(db: Path, run_id: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(
            "SELECT position, version, type, hash, data FROM events WHERE run_id = ? "
            "ORDER BY position",
            (run_id,),
        ).fetchall()


@pytest.fixture
def first_review(tmp_path: Path) -> tuple[Path, Path, int, dict[str, bytes]]:
    """A completed run, the version of its first review request, and the workspace
    as it was at that version."""
    db, workspace, models = record(tmp_path)
    versions = request_versions(db, "r")
    with open_store(db) as store:
        conversations = [
            e.data.conversation for e in store.read("r") if isinstance(e.data, ModelRequested)
        ]
    index = conversations.index("qa:t1")
    return db, workspace, versions[index], models.seen[index]


def test_files_at_a_version_are_the_files_the_workspace_had(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
) -> None:
    db, _, version, then = first_review
    with open_store(db) as store:
        digests = files_at(store, "r", version)
        contents = {p: store.get(d) for p, d in digests.items() if d is not None}

    assert contents == {k: v for k, v in then.items() if k != "NOTES.txt"}
    assert contents == {"calc.py": CALC_V1.encode()}
    assert digests["test_calc.py"] is None, "created later: absent at that version"


def test_rewind_restores_the_workspace_byte_for_byte_and_resume_completes(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
) -> None:
    db, workspace, version, then = first_review
    before = rows(db, "r")
    assert snapshot(workspace) != then, "the run changed the workspace after that version"

    code, out = invoke("rewind", "r", "--to", str(version), "--reason", "again", "--db", str(db))

    assert code == 0, out
    assert snapshot(workspace) == then
    assert (workspace / "NOTES.txt").read_bytes() == UNTOUCHED
    after = rows(db, "r")
    assert after[: len(before)] == before, "nothing is deleted or changed"
    assert after[len(before)][2] == "run.rewound"
    with open_store(db) as store:
        state = project(store, "r")
        rewound = next(e.data for e in store.read("r") if isinstance(e.data, RunRewound))
    assert rewound == RunRewound(to_version=version, reason="again")
    assert state.pipeline.status == "running"
    assert state.pipeline.files.keys() == {"calc.py"}

    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke("resume", "r", "--db", str(db), *flags(server))

    assert code == 0, out
    with open_store(db) as store:
        final = project(store, "r").pipeline
    assert final.status == "completed"
    assert {t.status for t in final.tasks.values()} == {"completed"}
    assert (workspace / "test_calc.py").is_file()
    assert '"""Return the sum of a and b."""' in (workspace / "calc.py").read_text()

    code, out = invoke("replay", "r", "--db", str(db))

    assert code == 0, out
    assert out.startswith("identical ("), "the rewind and the resume replay too"


def test_a_rewind_killed_before_its_files_were_restored_is_finished_by_resume(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
) -> None:
    """``rewind`` appends ``run.rewound``, then restores the files: a kill in between
    left a log at version V over a workspace still at the end. ``resume`` finishes
    the restore first when nothing has happened since the rewind (the rewind
    promised those files), so the run goes on from the files it decided on, and
    replays with its tools run again."""
    db, workspace, version, then = first_review
    with open_store(db) as store:  # the rewind's append, and then the kill
        store.append("r", [RunRewound(to_version=version)], store.last_version("r"))
    assert snapshot(workspace) != then
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke("resume", "r", "--db", str(db), *flags(server))
    assert code == 0, out
    assert "restored the workspace to version" in out
    code, out = invoke("replay", "r", "--tools", "live", "--db", str(db))
    assert code == 0 and out.startswith("identical ("), out


def test_an_empty_run_id_for_a_fork_or_a_live_branch_is_refused_not_made_up(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """``fork --as ''`` forked under a time-based id, exit 0, as if no id were given."""
    db = first_review[0]
    code, out = invoke(
        "fork", "r", "--at", "3", "--workspace", str(tmp_path / "f"), "--as", "", "--db", str(db)
    )
    assert code == 1 and "run id '' is not allowed" in out, out
    code, out = invoke("replay", "r", "--as", "", "--db", str(db))
    assert code == 1 and "--as" in out, out
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("when", ["restoring", "before the event"])
def test_a_rewind_stopped_by_ctrl_c_says_whether_it_is_recorded(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A Ctrl-C as the rewind wrote the files (it had appended ``run.rewound``) ended it
    with nothing said: the log at version V, the workspace still partly at the end,
    and no word of how to finish it. Before the event, nothing is said: nothing was
    done."""
    db, workspace, version, then = first_review
    import engine.runs.workspace as workspace_module

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    target = "_write" if when == "restoring" else "workspace_lock"
    kept = getattr(workspace_module, target)
    monkeypatch.setattr(workspace_module, target, ctrl_c)
    before = rows(db, "r")
    code, out = invoke("rewind", "r", "--to", str(version), "--db", str(db))
    assert code == 1 and "Aborted!" in out  # click's, under CliRunner; 130 from a shell
    recorded = len(rows(db, "r")) > len(before)
    assert recorded == (when == "restoring")
    said = (
        f"stopped: the rewind to version {version} is recorded, but its files may not all "
        f"be restored; give the same command again (or autonomy resume r) to finish it"
    )
    assert (said in out) == recorded, out
    if recorded:
        monkeypatch.setattr(workspace_module, target, kept)
        code, out = invoke("rewind", "r", "--to", str(version), "--db", str(db))
        assert code == 0 and snapshot(workspace) == then, out


@pytest.mark.parametrize(
    ("found", "after", "written", "left"),
    [
        (b"two\n", b"one\n", ("a.txt",), ()),  # still as before the rewind: cut off
        (b"by hand\n", b"by hand\n", (), ("a.txt",)),  # edited since: left alone
        (b"one\n", b"one\n", (), ()),  # the rewind finished
    ],
)
def test_finishing_a_rewind_restores_only_files_still_as_before_it(
    tmp_path: Path, found: bytes, after: bytes, written: tuple[str, ...], left: tuple[str, ...]
) -> None:
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    v2 = append(store, changed(store, "a.txt", None, b"one\n"))
    append(store, changed(store, "a.txt", b"one\n", b"two\n"))
    v4 = append(store, RunRewound(to_version=v2))
    (tmp_path / "a.txt").write_bytes(found)
    done = finish_rewind(store, "h", v4, tmp_path)
    assert (done.written, done.edited) == (written, left)
    assert (tmp_path / "a.txt").read_bytes() == after


def test_rewind_to_a_version_that_does_not_exist_changes_nothing(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
) -> None:
    db, workspace, _, _ = first_review
    before, files = rows(db, "r"), snapshot(workspace)

    code, out = invoke("rewind", "r", "--to", "100000", "--db", str(db))

    assert code == 1 and "100000" in out
    assert rows(db, "r") == before and snapshot(workspace) == files


def test_what_killed_writes_left_is_neither_kept_by_a_rewind_nor_copied_by_a_fork(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """A rewind killed before a restored file's rename, given again as its error says,
    left .calc.py.XXXXXXXX.autonomy-restoring behind, and a fork copied it (and the
    .tmp of a file tool's write killed so)."""
    db, workspace, version, _ = first_review
    left = [workspace / ".calc.py.ou30h586.autonomy-restoring", workspace / ".calc.py.g8ds9f4y.tmp"]
    for path in left:
        path.write_text("half")
    code, out = invoke(
        "fork", "r", "--at", str(version), "--workspace", str(tmp_path / "f"), "--db", str(db)
    )
    assert code == 0, out
    assert not [p.name for p in (tmp_path / "f").iterdir() if p.name.startswith(".calc.py.")]
    code, out = invoke("rewind", "r", "--to", str(version), "--db", str(db))
    assert code == 0, out
    assert not left[0].exists()


def test_a_version_inside_the_step_that_ended_the_run_is_refused(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """The last phase change and run.finished are written together: a rewind (or a
    fork) between them made a run running in a terminal phase, and its resume failed
    the completed run ("no move from 'completed' to 'documentation'")."""
    db, workspace, _, _ = first_review
    with open_store(db) as store:
        events = list(store.read("r"))
    (inside,) = [
        e.version
        for e, after in itertools.pairwise(events)
        if e.type == "phase.changed" and after.type == "run.finished"
    ]
    before, files = rows(db, "r"), snapshot(workspace)
    for command in (
        ["rewind", "r", "--to"],
        ["fork", "r", "--workspace", str(tmp_path / "f"), "--at"],
    ):
        code, out = invoke(*command, str(inside), "--db", str(db))
        assert code == 1 and "is inside the step that ended it" in " ".join(out.split()), out
    assert rows(db, "r") == before and snapshot(workspace) == files
    assert not (tmp_path / "f").exists()
    code, out = invoke("rewind", "r", "--to", str(inside - 1), "--db", str(db))
    assert code == 0, out


def test_fork_leaves_the_parent_untouched_and_resumes_to_completion(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    db, workspace, version, then = first_review
    parent_rows, parent_files = rows(db, "r"), snapshot(workspace)
    new = tmp_path / "fork-ws"

    code, out = invoke(
        "fork", "r", "--at", str(version), "--workspace", str(new), "--as", "f", "--db", str(db)
    )

    assert code == 0, out
    assert "autonomy resume f" in out
    assert snapshot(new) == then, "the fork's workspace is the parent's at that version"
    with open_store(db) as store:
        first = next(store.read("f")).data
        forked = project(store, "f")
    assert first == RunForked(parent_run="r", at_version=version, workspace=str(new.resolve()))
    assert forked.pipeline.status == "running"
    assert forked.pipeline.workspace == str(new.resolve())

    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke("resume", "f", "--db", str(db), *flags(server))

    assert code == 0, out
    with open_store(db) as store:
        assert project(store, "f").pipeline.status == "completed"
    assert (new / "test_calc.py").is_file()
    assert rows(db, "r") == parent_rows, "the parent's events are untouched"
    assert snapshot(workspace) == parent_files, "the parent's workspace is untouched"


def test_a_fork_at_a_command_it_has_not_the_result_of_resumes_and_replays(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """A fork (or a counterfactual branch) cut just after a ``run_command`` request
    settles it as interrupted when resumed, as a run stopped there does; it read the
    request at the parent's version in the fork's own events: a ``StopIteration``
    traceback from every resume, and a run that could never go on."""
    db = first_review[0]
    with open_store(db) as store:
        at = next(
            e.version
            for e in store.read("r")
            if isinstance(e.data, ToolRequested) and e.data.tool == "run_command"
        )
    new = tmp_path / "fork-ws"
    code, out = invoke(
        "fork", "r", "--at", str(at), "--workspace", str(new), "--as", "f", "--db", str(db)
    )
    assert code == 0, out
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        code, out = invoke("resume", "f", "--db", str(db), *flags(server))
    assert code == 0, out
    with open_store(db) as store:
        settled = next(e.data for e in store.read("f") if isinstance(e.data, ToolExecuted))
        assert project(store, "f").pipeline.status == "completed"
    assert settled.tool == "run_command" and not settled.ok and "interrupted" in settled.error
    assert settled.files_changed == ()
    code, out = invoke("replay", "f", "--db", str(db))
    assert code == 0 and out.startswith("identical ("), out


def test_fork_into_a_non_empty_directory_is_refused(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    db, _, version, _ = first_review
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")

    code, out = invoke(
        "fork", "r", "--at", str(version), "--workspace", str(busy), "--as", "f", "--db", str(db)
    )

    assert code == 1 and "not an empty directory" in out
    with open_store(db) as store:
        assert store.last_version("f") == 0


STOPPED_FORK = """
import os, sys
import engine.runs.workspace as workspace
from engine.cli import main

real = workspace._write


def stopped(targets, contents):
    real(dict(list(targets.items())[:1]), contents)  # the copy half done
    os.kill(os.getpid(), int(sys.argv[1]))


workspace._write = stopped
main(sys.argv[2:])
"""


def stop_a_fork(script: str, sig: int, db: Path, version: int, new: Path) -> list[str]:
    """``autonomy fork r --at version --workspace new --as f`` run by ``script``, which
    stops it with ``sig``: it ends without a traceback and no run ``f``. Returns the
    command's arguments, to give it again."""
    args = ["fork", "r", "--at", str(version), "--workspace", str(new), "--as", "f"]
    args += ["--db", str(db)]
    stopped = subprocess.run(
        [sys.executable, "-c", script, str(int(sig)), *args], capture_output=True, timeout=120
    )
    assert stopped.returncode != 0 and b"Traceback" not in stopped.stderr, stopped.stderr
    with open_store(db) as store:
        assert store.last_version("f") == 0
    return args


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_fork_stopped_during_its_copy_leaves_no_workspace_and_can_be_given_again(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path, sig: int
) -> None:
    """The copy is made beside the new workspace and moved into place whole: a fork
    stopped half-way (Ctrl-C, or killed) leaves the workspace free, no run, and the
    same command given again makes the fork (and removes a killed fork's part copy)."""
    db, _, version, then = first_review
    new = tmp_path / "fork-ws"
    args = stop_a_fork(STOPPED_FORK, sig, db, version, new)
    assert not new.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".fork-ws.forking-")]
    assert len(partial) == (1 if sig == signal.SIGKILL else 0), "Ctrl-C removes the part copied"

    code, out = invoke(*args)

    assert code == 0, out
    assert snapshot(new) == then
    assert not [p for p in tmp_path.iterdir() if ".forking-" in p.name], "the killed one's too"


STOPPED_BEFORE_ITS_EVENT = """
import os, sys
from engine.cli import main
from events import RunForked
from events.sqlite import SQLiteEventStore

real = SQLiteEventStore.append


def stopped(self, run_id, events, *args, **kwargs):
    if isinstance(events[0], RunForked):  # the copy in place, its event not yet written
        os.kill(os.getpid(), int(sys.argv[1]))
    return real(self, run_id, events, *args, **kwargs)


SQLiteEventStore.append = stopped
main(sys.argv[2:])
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_fork_stopped_before_its_event_leaves_no_run_and_can_be_given_again(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path, sig: int
) -> None:
    """Stopped between moving its copy into place and writing ``run.forked`` (a Ctrl-C
    while another writer held the log), a fork left a filled workspace no run had,
    which the same command then refused as not empty."""
    db, _, version, then = first_review
    new = tmp_path / "fork-ws"
    args = stop_a_fork(STOPPED_BEFORE_ITS_EVENT, sig, db, version, new)
    assert new.exists() == (sig == signal.SIGKILL), "Ctrl-C removes the workspace it made"

    code, out = invoke(*args)

    assert code == 0, out
    assert snapshot(new) == then
    assert not (new / ".autonomy").exists()


STOPPED_AFTER_ITS_EVENT = STOPPED_BEFORE_ITS_EVENT.replace(
    """        os.kill(os.getpid(), int(sys.argv[1]))
    return real(self, run_id, events, *args, **kwargs)""",
    """        written = real(self, run_id, events, *args, **kwargs)
        os.kill(os.getpid(), int(sys.argv[1]))
    return real(self, run_id, events, *args, **kwargs)""",
)


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill"]
)
def test_a_fork_stopped_once_its_event_is_written_keeps_its_workspace(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path, sig: int
) -> None:
    """A Ctrl-C just after ``run.forked`` was committed (while the run summaries were
    brought up to date) removed the workspace of a run the log now had: it could not
    be resumed. The same command given again was refused ("there is already a run"),
    and the fork's mark stayed in its workspace for good; a SIGTERM ended the
    command at once, and a Ctrl-C said nothing of whether the fork was made."""
    db, _, version, then = first_review
    new = tmp_path / "fork-ws"
    args = ["fork", "r", "--at", str(version), "--workspace", str(new), "--as", "f"]
    args += ["--db", str(db)]
    stopped = subprocess.run(
        [sys.executable, "-c", STOPPED_AFTER_ITS_EVENT, str(int(sig)), *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stopped.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    if sig != signal.SIGKILL:
        assert "stopped: the fork f was made; continue it with: autonomy resume f" in (
            stopped.stderr
        )
    with open_store(db) as store:
        assert store.last_version("f") == 1
    assert {k: v for k, v in snapshot(new).items() if not k.startswith(".autonomy")} == then

    code, out = invoke(*args)  # the same command, given again

    assert code == 0, out
    assert "workspace: made before, by the same command (given again)" in out
    assert snapshot(new) == then, "the fork's mark is gone"
    with open_store(db) as store:
        assert store.last_version("f") == 1
    for emptied in (False, True):  # its workspace gone, or emptied: not made "before"
        shutil.rmtree(new, ignore_errors=True)
        if emptied:
            new.mkdir()
        code, out = invoke(*args)
        assert code == 1 and "there is already a run 'f' in this log" in out, out


def test_a_fork_inside_its_parents_workspace_is_refused(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
) -> None:
    """A fork (or a counterfactual branch) given a directory inside the recorded
    run's workspace wrote its files there, copied its own half-made copy into itself,
    and the recorded run no longer replayed."""
    db, workspace, version, _ = first_review
    before = snapshot(workspace)
    for inside in (workspace / "sub", workspace / "a" / "b"):
        code, out = invoke(
            "fork", "r", "--at", str(version), "--workspace", str(inside), "--as", "f",
            "--db", str(db),
        )  # fmt: skip
        assert code == 1 and "not its parent's nor inside it" in out, out
    assert snapshot(workspace) == before and not (workspace / "sub").exists()
    with open_store(db) as store:
        assert store.last_version("f") == 0


PAUSED_BEFORE_ITS_EVENT = STOPPED_BEFORE_ITS_EVENT.replace(
    "        os.kill(os.getpid(), int(sys.argv[1]))",
    "        while not os.path.exists(sys.argv[1]):\n            time.sleep(0.01)",
).replace("import os, sys", "import os, sys, time")


def test_a_fork_about_to_write_its_event_is_not_taken_for_an_abandoned_one(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """A second fork into the same workspace found the first one's mark while the
    first was about to write its event, took its workspace for abandoned, removed it,
    and both forks were made, sharing one workspace. A mark whose process runs is
    not abandoned."""
    db, _, version, then = first_review
    new, go = tmp_path / "fork-ws", tmp_path / "go"
    args = ["fork", "r", "--at", str(version), "--workspace", str(new), "--db", str(db)]
    first = subprocess.Popen(
        [sys.executable, "-c", PAUSED_BEFORE_ITS_EVENT, str(go), *args, "--as", "f1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    with reaped(first):
        wait_until(lambda: (new / ".autonomy" / "forking").exists(), "the first fork is paused")
        code, out = invoke(*args, "--as", "f2")
        assert code == 1 and "not an empty directory" in out, out
        go.write_text("")
        assert first.wait(timeout=120) == 0
    assert snapshot(new) == then
    with open_store(db) as store:
        assert store.last_version("f1") == 1 and store.last_version("f2") == 0


def test_two_forks_into_one_workspace_at_once_make_one_fork_and_one_clear_error(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """Two processes fork into the same new workspace at once: one fork is made; the
    other is refused with a clear error (before its copy, or when moving it into a
    workspace filled meanwhile), and leaves no part copy behind."""
    db, _, version, then = first_review
    new = tmp_path / "fork-ws"
    autonomy = str(Path(sys.executable).parent / "autonomy")
    args = ["fork", "r", "--at", str(version), "--workspace", str(new), "--db", str(db)]
    forks = [
        subprocess.Popen(
            [autonomy, *args, "--as", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for name in ("f1", "f2")
    ]
    outputs = [fork.communicate(timeout=120)[0].decode() for fork in forks]
    codes = [fork.returncode for fork in forks]
    assert sorted(codes) == [0, 1], outputs
    refused = outputs[codes.index(1)]
    assert "Traceback" not in refused, refused
    assert "nothing was forked" in refused or "not an empty directory" in refused, refused
    with open_store(db) as store:
        assert sorted(r for r in ("f1", "f2") if store.last_version(r)) in (["f1"], ["f2"])
    assert snapshot(new) == then
    assert not [p for p in tmp_path.iterdir() if ".forking-" in p.name]


def test_a_fork_whose_workspace_is_filled_during_its_copy_is_refused_and_leaves_nothing(
    first_review: tuple[Path, Path, int, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import engine.runs.workspace as workspace

    db, _, version, _ = first_review
    new = tmp_path / "fork-ws"
    real = workspace.restore

    def and_someone_else(*args: Any, **kwargs: Any) -> Restored:
        restored = real(*args, **kwargs)
        new.mkdir()
        (new / "theirs.txt").write_text("another fork's")
        return restored

    monkeypatch.setattr(workspace, "restore", and_someone_else)
    with open_store(db) as store, pytest.raises(workspace.HistoryError, match="nothing was forked"):
        workspace.fork(store, "r", version, new, new_run_id="f")
    with open_store(db) as store:
        assert store.last_version("f") == 0
    assert snapshot(new) == {"theirs.txt": b"another fork's"}
    assert not [p for p in tmp_path.iterdir() if ".forking-" in p.name]


def test_a_fork_rewound_returns_to_its_own_files(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    db, _, version, then = first_review
    new = tmp_path / "fork-ws"
    assert (
        invoke(
            "fork", "r", "--at", str(version), "--workspace", str(new), "--as", "f", "--db", str(db)
        )[0]
        == 0
    )
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        assert invoke("resume", "f", "--db", str(db), *flags(server))[0] == 0

    code, out = invoke("rewind", "f", "--to", "1", "--db", str(db))

    assert code == 0, out
    assert snapshot(new) == then


# -- restoring from the blobs, on a log written by hand -----------------------------------


def changed(store: MemoryEventStore, path: str, before: bytes | None, after: bytes | None) -> Any:
    return ToolExecuted(
        call_id=f"c{store.last_version('h') + 1}",
        tool="modify_file",
        ok=True,
        files_changed=(
            FileChange(
                path=path,
                before=store.put(before) if before is not None else None,
                after=store.put(after) if after is not None else None,
                size=len(after or b""),
            ),
        ),
    )


def append(store: MemoryEventStore, event: Any) -> int:
    return store.append("h", [event], store.last_version("h"))[0].version


def test_a_rewind_leaves_what_the_log_never_recorded_for_a_file_as_it_is(
    tmp_path: Path,
) -> None:
    """A rewind wrote over a file edited by hand since the run wrote it, and removed
    one the run had made and a person had edited since; an edited log naming a
    person's project (which verifies: a plain chain is anyone's to recompute) had
    their files rewritten or removed; a person's file standing where the run's
    directory was was removed to make the directory. A file is restored only from a
    content the log recorded for it, through directories; any other is left as it is,
    and said."""
    from engine.runs.workspace import rewind

    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    append(store, changed(store, "src/mod.py", None, b"the run's\n"))
    v2 = append(store, changed(store, "a.txt", None, b"one\n"))
    append(store, changed(store, "a.txt", b"one\n", b"two\n"))
    append(store, changed(store, "src/mod.py", b"the run's\n", None))
    append(store, changed(store, "made.txt", None, b"the run's\n"))
    append(store, changed(store, "kept.txt", None, b"the run's\n"))
    append(store, changed(store, "theirs.txt", None, b"what the log says\n"))
    (tmp_path / "a.txt").write_bytes(b"two\n")  # as the run left it
    (tmp_path / "made.txt").write_bytes(b"the run's\n")
    (tmp_path / "kept.txt").write_bytes(b"edited by hand\n")
    (tmp_path / "theirs.txt").write_bytes(b"a person's file\n")  # never the run's
    (tmp_path / "src").write_bytes(b"a person's notes, where the run's directory was\n")

    done = rewind(store, "h", v2)

    assert (tmp_path / "a.txt").read_bytes() == b"one\n"
    assert not (tmp_path / "made.txt").exists()
    assert (tmp_path / "kept.txt").read_bytes() == b"edited by hand\n"
    assert (tmp_path / "theirs.txt").read_bytes() == b"a person's file\n"
    assert (tmp_path / "src").read_bytes().startswith(b"a person's notes")
    assert (done.written, done.removed, done.edited) == (
        ("a.txt",),
        ("made.txt",),
        ("kept.txt", "src/mod.py", "theirs.txt"),
    )
    assert "left as they are, holding what the log never recorded for them" in done.summary()


def test_a_file_that_existed_before_the_run_gets_its_original_content_back(
    tmp_path: Path,
) -> None:
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    append(store, changed(store, "old.txt", b"original\n", b"edited\n"))
    v3 = append(store, changed(store, "new.txt", None, b"created\n"))
    append(store, changed(store, "old.txt", b"edited\n", None))  # then deleted

    (tmp_path / "old.txt").write_bytes(b"whatever is there now")
    restore(store, "h", 1, tmp_path)
    assert snapshot(tmp_path) == {"old.txt": b"original\n"}

    restore(store, "h", v3, tmp_path)
    assert snapshot(tmp_path) == {"old.txt": b"edited\n", "new.txt": b"created\n"}

    restore(store, "h", store.last_version("h"), tmp_path)
    assert snapshot(tmp_path) == {"new.txt": b"created\n"}


def test_a_restore_replaces_what_a_command_left_in_a_files_place(tmp_path: Path) -> None:
    """A FIFO (or a link) where the log has a file is replaced, not written through:
    writing to a FIFO would wait for a reader for ever (a rewind hung on one); where
    the log has no file, it is removed."""
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    v2 = append(store, changed(store, "a.txt", None, b"one\n"))
    append(store, changed(store, "b.txt", None, b"b\n"))
    os.mkfifo(tmp_path / "a.txt")
    os.mkfifo(tmp_path / "b.txt")
    restored = run_with_bound(lambda: restore(store, "h", v2, tmp_path))
    assert restored.written == ("a.txt",) and restored.removed == ("b.txt",)
    assert snapshot(tmp_path) == {"a.txt": b"one\n"}
    assert stat.S_ISREG((tmp_path / "a.txt").lstat().st_mode)


def test_a_fork_copies_the_parents_files_but_no_fifo_a_command_left(tmp_path: Path) -> None:
    """Copying a FIFO fails (shutil names it a named pipe, and the whole fork failed
    with that list); no project holds one, so the copy leaves it out."""
    parent, child = tmp_path / "parent", tmp_path / "child"
    parent.mkdir()
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(parent), mode="rules"))
    v2 = append(store, changed(store, "a.txt", None, b"one\n"))
    (parent / "a.txt").write_bytes(b"one\n")
    (parent / "notes.md").write_bytes(b"never touched by the run\n")
    os.mkfifo(parent / "pipe")
    restored = run_with_bound(lambda: restore(store, "h", v2, child, copy_from=parent))
    assert restored.unchanged == ("a.txt",)
    assert snapshot(child) == {"a.txt": b"one\n", "notes.md": b"never touched by the run\n"}
    assert not (child / "pipe").exists() and (parent / "pipe").exists()


def test_a_copy_leaves_out_what_commands_may_not_see(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log naming the directory of the chain's key (or of credentials, or of the log
    itself) as its workspace had them copied into a live replay's scratch directory
    and a fork's workspace, where the recorded commands could read them: what is
    hidden from commands is never copied, and a directory inside it is no workspace
    to copy."""
    secrets = tmp_path / "secrets"
    (secrets / "ssh").mkdir(parents=True)
    (secrets / "key").write_bytes(b"the chain's key")
    (secrets / "servers.toml").write_bytes(b"[servers]\n")
    (secrets / "ssh" / "id").write_bytes(b"a credential")
    (secrets / "notes.md").write_bytes(b"never touched by the run\n")
    monkeypatch.setenv("AUTONOMY_KEY_FILE", str(secrets / "key"))
    monkeypatch.setenv("AUTONOMY_SERVER_KEYS", str(secrets / "servers.toml"))
    monkeypatch.setattr(runner, "credentials", lambda: [secrets / "ssh"])
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(secrets), mode="rules"))
    v2 = append(store, changed(store, "a.txt", None, b"one\n"))
    restore(store, "h", v2, tmp_path / "child", copy_from=secrets)
    assert snapshot(tmp_path / "child") == {
        "a.txt": b"one\n",
        "notes.md": b"never touched by the run\n",
    }
    with pytest.raises(HistoryError, match="hidden from commands"):
        restore(store, "h", v2, tmp_path / "other", copy_from=secrets / "ssh")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_a_log_naming_a_directory_of_the_kernels_is_refused_before_anything_is_copied(
    tmp_path: Path,
) -> None:
    """``/proc/self`` named as the workspace had the process's own entries (its
    environment among them) copied, then failed with kilobytes of tuples."""
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace="/proc/self", mode="rules"))
    for named in ("/proc/self", "/sys/kernel", "/dev/shm"):
        with pytest.raises(HistoryError, match="system directory"):
            restore(store, "h", 1, tmp_path / "child", copy_from=Path(named))
    assert not any((tmp_path / "child").iterdir())


@pytest.mark.parametrize(
    "named", ["/etc/ssl", "/usr/local/bin", "/usr/share", "/var/lib", "home/.config/app"]
)
def test_a_log_naming_a_directory_in_the_systems_own_trees_is_refused(
    tmp_path: Path, named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the system directories themselves were refused: an edited log naming
    ``/etc/ssh`` had a fork copy the host's keys into its workspace, and a resume of
    one naming ``/usr/local/bin`` would have let commands write there. A home's
    settings (``~/.config``) are no project either; ``/usr/src`` may hold one."""
    from engine.tools.sandbox import not_a_project

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if named.startswith("home/"):
        (tmp_path / named).mkdir(parents=True)
        named = str(tmp_path / named)
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=named, mode="rules"))
    with pytest.raises(HistoryError, match="system directory"):
        restore(store, "h", 1, tmp_path / "child", copy_from=Path(named))
    assert not (tmp_path / "child").exists() or not any((tmp_path / "child").iterdir())
    for never in ("/etc/ssh", "/boot/efi", "/usr/lib/x", "/var/log/app", "home/.ssh/keys"):
        assert not_a_project(tmp_path / never if never.startswith("home/") else Path(never))
    for place in ("/usr/src/linux", "/usr/local/src/app", "/srv/www/site", "/opt/app"):
        assert not_a_project(Path(place)) == "", place
    assert not_a_project(tmp_path / "home" / "code" / ".hidden-but-a-project") == ""


def run_with_bound(work: Callable[[], Restored]) -> Restored:
    """``work()`` in a thread, failing the test (not hanging it) if it waits on a FIFO."""
    done: list[Restored] = []
    worker = threading.Thread(target=lambda: done.append(work()), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        pytest.fail("the restore waited on a FIFO")
    return done[0]


def test_files_at_follows_rewinds_like_the_projection(tmp_path: Path) -> None:
    store = MemoryEventStore()
    append(store, RunStarted(goal="g", workspace=str(tmp_path), mode="rules"))
    append(store, changed(store, "a.txt", None, b"one\n"))  # 2
    append(store, changed(store, "a.txt", b"one\n", b"two\n"))  # 3
    append(store, RunRewound(to_version=2))  # 4: a.txt is "one" again
    append(store, changed(store, "b.txt", None, b"b\n"))  # 5
    append(store, RunRewound(to_version=3))  # 6: back to "two", and no b.txt

    with_digests = {version: files_at(store, "h", version) for version in range(1, 7)}

    assert store.get(with_digests[4]["a.txt"] or "") == b"one\n"
    assert with_digests[4]["b.txt"] is None
    assert store.get(with_digests[5]["b.txt"] or "") == b"b\n"
    assert store.get(with_digests[6]["a.txt"] or "") == b"two\n"
    assert with_digests[6]["b.txt"] is None
    for version in range(1, 7):
        projected = project(store, "h", upto=version).pipeline.files
        present = {p: d for p, d in with_digests[version].items() if d is not None}
        assert present == {p: f.digest for p, f in projected.items()}


def test_rewind_and_fork_undo_what_a_command_did(tmp_path: Path) -> None:
    """run_command records the files it created, changed and deleted, so a rewind
    puts them back and a fork starts from them, like a file tool's writes."""
    from engine.agent.runlog import RunLog
    from engine.runs.workspace import fork, rewind
    from engine.tools import ToolContext, default_registry, execute

    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "data.txt").write_text("original\n")
    (workspace / "old.txt").write_text("to be deleted\n")
    store = open_store(tmp_path / "events.db")
    log = RunLog.create(store, "r", RunStarted(goal="g", workspace=str(workspace), mode="rules"))
    code = (
        "import os, pathlib; pathlib.Path('data.txt').write_text('changed by a test\\n'); "
        "pathlib.Path('made/by').mkdir(parents=True); "
        "pathlib.Path('made/by/script.txt').write_text('new\\n'); os.remove('old.txt')"
    )
    ctx = ToolContext(workspace=workspace, blobs=store, allowlist=(("python", "-c"),))
    outcome = execute(default_registry(), "run_command", {"argv": ["python", "-c", code]}, ctx)
    assert outcome.ok, outcome.text
    log.append(
        ToolRequested(call_id="r/t2", tool="run_command", arguments={"argv": ["python"]}),
        ToolExecuted(
            call_id="r/t2", tool="run_command", ok=True, files_changed=outcome.files_changed
        ),
    )
    history = ("audit", "r", "file-history", "data.txt", "--db", str(tmp_path / "events.db"))
    code, out = invoke(*history)
    assert code == 0 and "run_command" in out
    forked = fork(store, "r", 3, tmp_path / "fork", new_run_id="f")
    assert (tmp_path / "fork" / "made" / "by" / "script.txt").read_text() == "new\n"
    assert not (tmp_path / "fork" / "old.txt").exists() and forked.unchanged
    restored = rewind(store, "r", 1)
    assert (workspace / "data.txt").read_text() == "original\n"
    assert (workspace / "old.txt").read_text() == "to be deleted\n"
    assert not (workspace / "made" / "by" / "script.txt").exists()
    assert sorted(restored.removed) == ["made/by/script.txt"]
    code, out = invoke(*history)
    assert code == 0 and "run_command" not in out, "the rewind undid the change: not in effect"


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_file_a_tool_wrote_is_found_in_the_log_by_its_content(
    tmp_path: Path, backend: str
) -> None:
    from engine.runs.workspace import written_by_a_tool

    store = MemoryEventStore() if backend == "memory" else open_store(tmp_path / "e.db")
    content = b"[models.coding]\n"
    digest = hashlib.sha256(content).hexdigest()
    change = FileChange(path="autonomy.toml", after=digest, size=len(content))
    store.append(
        "r",
        [
            RunStarted(goal="g", workspace=str(tmp_path)),
            ToolRequested(call_id="r/t2", tool="run_command", arguments={}),
            ToolExecuted(call_id="r/t2", tool="run_command", ok=True, files_changed=(change,)),
        ],
        0,
    )
    assert written_by_a_tool(store, "autonomy.toml", content) == ("r", 3)
    assert written_by_a_tool(store, "autonomy.toml", b"the user's own") is None
    assert written_by_a_tool(store, "src/autonomy.toml", content) is None
    # written in a directory of the run's workspace: the next run's workspace may be it
    deeper = b"[models.arbiter]\n"
    nested = FileChange(path="sub/autonomy.toml", after=hashlib.sha256(deeper).hexdigest())
    store.append(
        "r",
        [
            ToolRequested(call_id="r/t4", tool="run_command", arguments={}),
            ToolExecuted(call_id="r/t4", tool="run_command", ok=True, files_changed=(nested,)),
        ],
        3,
    )
    assert written_by_a_tool(store, "autonomy.toml", deeper) == ("r", 5)


class ToolLog:
    """A run's log written by calling the tools directly, as its engine would."""

    def __init__(self, tmp_path: Path, store: EventStore | None = None) -> None:
        from engine.agent.runlog import RunLog
        from engine.tools import ToolContext
        from engine.tools.confine import choose
        from engine.tools.snapshot import WorkspaceDigests

        self.workspace = tmp_path / "ws"
        self.workspace.mkdir()
        self.store = store if store is not None else MemoryEventStore()
        self.log = RunLog.create(
            self.store, "r", RunStarted(goal="g", workspace=str(self.workspace))
        )
        self.ctx = ToolContext(
            workspace=self.workspace,
            blobs=self.store,
            confinement=choose("off"),
            allowlist=(("python",),),
            digests=WorkspaceDigests(),
        )
        self.calls = 0

    def call(self, tool: str, **args: Any) -> ToolExecuted:
        from engine.tools import default_registry, execute

        self.calls += 1
        outcome = execute(default_registry(), tool, args, self.ctx)
        call_id = f"r/t{self.calls}"
        executed = ToolExecuted(
            call_id=call_id,
            tool=tool,
            ok=outcome.ok,
            result=outcome.result,
            error=outcome.error,
            files_changed=outcome.files_changed,
        )
        self.log.append(ToolRequested(call_id=call_id, tool=tool, arguments=args), executed)
        return executed

    def command(self, code: str) -> ToolExecuted:
        (self.workspace / "command.py").write_text(code)
        return self.call("run_command", argv=["python", "command.py"])


REAL = "APP = 'the real app'\n"


def test_a_backslash_is_a_character_of_a_name_to_a_rewind(tmp_path: Path) -> None:
    """A command made ``src\\app.py`` (one name on Linux) beside ``src/app.py``; the
    resolver read the backslash as "/", so a rewind to before the command removed the
    real ``src/app.py``, and one to after it wrote the other file's content there."""
    from engine.tools import default_registry, execute

    run = ToolLog(tmp_path)
    workspace, store = run.workspace, run.store
    assert run.call("create_file", path="src/app.py", content=REAL).ok
    before = run.log.version
    made = run.command("open('src\\\\app.py', 'w').write('another file\\n')\n")
    assert [c.path for c in made.files_changed] == ["src\\app.py"]
    read = execute(default_registry(), "read_file", {"path": "src\\app.py"}, run.ctx)
    assert read.ok and "another file" in read.result

    restore(store, "r", before, workspace)
    assert (workspace / "src" / "app.py").read_text() == REAL
    assert not (workspace / "src\\app.py").exists()
    restore(store, "r", run.log.version, workspace)
    assert (workspace / "src" / "app.py").read_text() == REAL
    assert (workspace / "src\\app.py").read_text() == "another file\n"


@pytest.mark.parametrize(
    "replace", ["os.mkfifo('src')", "os.symlink('tests', 'src')", "os.symlink('src', 'src')"]
)
def test_a_rewind_puts_a_directory_back_whatever_a_command_left_in_its_place(
    tmp_path: Path, replace: str
) -> None:
    """A command replaced ``src/`` with what no snapshot records: with a FIFO the
    rewind stopped half-way (after ``run.rewound``) and so did every resume; through a
    link to ``tests/`` it wrote ``tests/app.py``; a link to itself was a RuntimeError
    (a traceback) in rewind, fork and replay. (A link out of the workspace is
    refused, naming it: ``test_hostile_paths``.)"""
    run = ToolLog(tmp_path)
    workspace = run.workspace
    (workspace / "tests").mkdir()
    assert run.call("create_file", path="src/app.py", content=REAL).ok
    before = run.log.version
    run.command(f"import os, shutil\nshutil.rmtree('src')\n{replace}\n")
    done = restore(run.store, "r", before, workspace)
    assert done.written == ("src/app.py",)
    assert not (workspace / "src").is_symlink() and (workspace / "src").is_dir()
    assert (workspace / "src" / "app.py").read_text() == REAL
    assert list((workspace / "tests").iterdir()) == []


def test_a_tree_deeper_than_a_path_may_be_is_left_out_and_breaks_nothing(tmp_path: Path) -> None:
    """A file 70 levels deep was recorded, and then every rewind and fork of the run
    was refused (the resolver takes 64 levels); directories 1,100 deep made fork and
    search_code end in ``RecursionError``. What is deeper is now named, not recorded,
    not copied, not searched."""
    from engine.runs.workspace import fork, rewind
    from engine.tools import default_registry, execute

    run = ToolLog(tmp_path)
    assert run.call("create_file", path="app.py", content=REAL).ok
    before = run.log.version
    made = run.command(
        "import os\n"
        "os.makedirs('/'.join(['d'] * 70))\n"
        "open('/'.join(['d'] * 70) + '/f.txt', 'w').write('x')\n"
        "for _ in range(1100):\n"
        "    os.mkdir('e'); os.chdir('e')\n"
    )
    assert made.ok, (made.error, made.result)
    assert [c.path for c in made.files_changed] == []
    outcome = execute(default_registry(), "run_command", {"argv": ["python", "-V"]}, run.ctx)
    assert "deeper than 64 levels or longer than 1,024 characters: " in outcome.result
    for tool, args in (("search_code", {"pattern": "x"}), ("list_directory", {"recursive": True})):
        assert execute(default_registry(), tool, {"path": ".", **args}, run.ctx).ok, tool
    try:
        fork(run.store, "r", run.log.version, tmp_path / "fork", new_run_id="f")
        assert (tmp_path / "fork" / "app.py").read_text() == REAL
        rewind(run.store, "r", before)
    finally:  # pytest's own clean-up recurses, and cannot remove such a tree
        subprocess.run(["rm", "-rf", str(run.workspace / "e")], check=True)


def test_a_scratch_directory_is_removed_however_deep_a_command_made_it() -> None:
    """A live replay's scratch copy (and a command's own temporary directory) was
    removed by ``shutil.rmtree``, which recurses: a tree 3,000 levels deep was a
    ``RecursionError``, and the copy stayed in /tmp."""
    from engine.tools.sandbox import temporary_directory

    with temporary_directory("autonomy-test-") as scratch:
        here = os.getcwd()
        try:
            os.chdir(scratch)
            for _ in range(3000):
                os.mkdir("d")
                os.chdir("d")
        finally:
            os.chdir(here)
    assert not scratch.exists()


REWIND_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from engine.runs.workspace import rewind
from engine.storage import open_store
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; by default it kills
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
with open_store(sys.argv[1]) as store:
    rewind(store, "r", int(sys.argv[2]))
"""


def test_a_rewind_killed_mid_write_leaves_no_torn_file_and_resume_finishes_it(
    tmp_path: Path,
) -> None:
    """Written in place, a restored file killed mid-write (here by the file size
    limit's SIGXFSZ, as a kill or a full disk would) was left torn, and the resume
    that finishes the rewind took it for a file edited by hand and kept it."""
    from engine.runs.workspace import finish_cut_rewind

    db = tmp_path / "events.db"
    run = ToolLog(tmp_path, open_store(db))
    first, second = b"A" * 200_000, b"B" * 200_000
    run.command(f"open('big.txt', 'wb').write(b'A' * {len(first)})\n")
    before = run.log.version
    run.command(f"open('big.txt', 'wb').write(b'B' * {len(second)})\n")
    run.store.close()
    killed = subprocess.run(
        [sys.executable, "-c", REWIND_UNDER_A_FILE_SIZE_LIMIT, str(db), str(before)],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    big = run.workspace / "big.txt"
    assert big.read_bytes() == second  # old or new, never torn
    with open_store(db) as store:
        from engine.agent.runlog import RunLog

        said: list[str] = []
        finish_cut_rewind(RunLog(store, "r"), run.workspace, said.append)
    assert big.read_bytes() == first, said
    # nothing but the files (and .autonomy/, where a rewind locks the workspace)
    assert sorted(p.name for p in run.workspace.iterdir()) == [".autonomy", "big.txt", "command.py"]


@pytest.mark.parametrize("after", ["an answer", "a second rewind"])
def test_a_cut_rewind_is_finished_by_the_resume_whatever_came_after_it_but_a_tool(
    tmp_path: Path, after: str
) -> None:
    """Only a ``run.rewound`` that was the log's last event was finished: an answer
    after it (a rewind to a question), or a second rewind cut the same way, left the
    files as before, which the run then wrote over ("already exists")."""
    from engine.runs.workspace import finish_cut_rewind
    from events import UserAnswered

    run = ToolLog(tmp_path)
    assert run.call("create_file", path="a.py", content="A = 1\n").ok
    first = run.log.version
    assert run.call("create_file", path="b.py", content="B = 1\n").ok
    middle = run.log.version
    assert run.call("create_file", path="a.py", content="A = 2\n", overwrite=True).ok
    # rewinds cut before they wrote anything: their events, the head's files
    if after == "an answer":
        run.log.append(RunRewound(to_version=first), UserAnswered(answer="go on"))
    else:
        run.log.append(RunRewound(to_version=middle), RunRewound(to_version=first))
    said: list[str] = []
    finish_cut_rewind(run.log, run.workspace, said.append)
    assert (run.workspace / "a.py").read_text() == "A = 1\n", said
    assert not (run.workspace / "b.py").exists(), said


def test_a_rewind_writes_no_home_directory_nor_a_workspace_that_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workspace replaced by a link to the home directory: ``rewind`` wrote the
    run's calc.py over the user's own (as root, a link to /etc wrote /etc/calc.py),
    where ``resume`` refuses that workspace. A workspace deleted was made anew with
    only the files the log holds. Both are refused, nothing written."""
    db, workspace, _ = record(tmp_path)
    to = request_versions(db, "r")[3]
    home = tmp_path / "home"
    home.mkdir()
    (home / "calc.py").write_text("my own calc.py\n")
    monkeypatch.setenv("HOME", str(home))
    workspace.rename(tmp_path / "moved")
    workspace.symlink_to(home, target_is_directory=True)
    code, out = invoke("rewind", "r", "--to", str(to), "--db", str(db))
    assert code == 1 and "a system directory or a home directory" in out, out
    assert (home / "calc.py").read_text() == "my own calc.py\n"
    workspace.unlink()
    code, out = invoke("rewind", "r", "--to", str(to), "--db", str(db))
    assert code == 1 and "is gone (deleted or moved?); nothing was rewound" in out, out
    assert f"autonomy fork r --at {to} --workspace NEW_DIR" in out
    assert not workspace.exists()
    with open_store(db) as store:
        assert not any(isinstance(e.data, RunRewound) for e in store.read("r"))


def test_a_restored_file_keeps_its_permissions(tmp_path: Path) -> None:
    """A restore writes beside a file and renames over it (a killed rewind left torn
    files): the temporary file's 0600 became the restored file's, and a rewound
    script was no longer executable, nor readable by anyone else."""
    from engine.runs.workspace import rewind

    run = ToolLog(tmp_path)
    script = run.workspace / "run.sh"
    run.command("open('run.sh', 'w').write('echo one\\n')\n")
    script.chmod(0o755)
    before = run.log.version
    run.command("open('run.sh', 'w').write('echo two\\n')\n")
    rewind(run.store, "r", before)
    assert script.read_text() == "echo one\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_a_scratch_directory_is_removed_without_rm_on_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no rm on PATH a live replay ended "Error: No such file or directory: 'rm'"
    from its clean-up, instead of its result."""
    from engine.tools.sandbox import temporary_directory

    monkeypatch.setenv("PATH", "/nonexistent")
    with temporary_directory("autonomy-test-") as scratch:
        (scratch / "a" / "b").mkdir(parents=True)
    assert not scratch.exists()


def test_a_version_inside_one_write_is_refused_by_rewind_and_fork(
    first_review: tuple[Path, Path, int, dict[str, bytes]], tmp_path: Path
) -> None:
    """A plan's tasks are written with the tool result that made them, a review's
    verdict with its task's new state: a fork between them (replay --live-from 9)
    ran a branch that had only the plan's first task, and completed without the
    second. Refused, naming the write; its last version is taken."""
    from events.schema import TaskAdded

    db, _, _, _ = first_review
    with open_store(db) as store:
        events = list(store.read("r"))
    added = [e.version for e in events if isinstance(e.data, TaskAdded)]
    plan = events[added[0] - 2]  # the tool.executed the tasks were written with
    assert plan.type == "tool.executed" and len(added) >= 2
    inside, end = plan.version, added[-1]
    for command in (
        ["fork", "r", "--at", str(inside), "--workspace", str(tmp_path / "f"), "--as", "f"],
        ["rewind", "r", "--to", str(inside)],
    ):
        code, out = invoke(*command, "--db", str(db))
        assert code == 1, out
        assert f"inside one write: versions {inside} to {end} were written together" in out
        assert f"give {inside - 1} or {end}" in out
    code, out = invoke(
        "fork", "r", "--at", str(end), "--workspace", str(tmp_path / "g"), "--as", "g",
        "--db", str(db),
    )  # fmt: skip
    assert code == 0, out


def test_a_resume_takes_off_the_mark_a_fork_cut_once_its_event_was_written_left(
    tmp_path: Path,
) -> None:
    """The fork's mark (``.autonomy/forking``, which says a workspace is a fork's not
    yet in the log) stayed in its workspace for good once the fork was resumed."""
    from engine.agent.runlog import RunLog
    from engine.runs.workspace import FORKING, finish_cut_rewind
    from events import MemoryEventStore, RunForked, RunStarted

    store = MemoryEventStore()
    store.append("r", [RunStarted(goal="g", workspace=str(tmp_path / "p"))], 0)
    store.append("f", [RunForked(parent_run="r", at_version=1, workspace=str(tmp_path))], 0)
    (tmp_path / FORKING).parent.mkdir()
    (tmp_path / FORKING).write_text("f 999999")
    finish_cut_rewind(RunLog(store, "r"), tmp_path, None)  # another run's: kept
    assert (tmp_path / FORKING).exists()
    finish_cut_rewind(RunLog(store, "f"), tmp_path, None)
    assert not (tmp_path / ".autonomy").exists()
