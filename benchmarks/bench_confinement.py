"""What confinement costs per command, and what recording a command's file changes costs.

    python benchmarks/bench_confinement.py                 # --pairs 15 --files 1000
    python benchmarks/bench_confinement.py --pairs 5 --files 5000

1. **Per command**: ``run_command`` of the same argv, confined by bubblewrap and with
   ``tools.sandbox = "off"`` (resource limits and the environment only), in the same
   process: ``--pairs`` pairs run back to back, alternating which goes first. Two
   commands: ``python -c pass`` (the fixed cost, where confinement weighs most) and
   ``python -m pytest -q`` on a small test file (what the agent really runs). Printed:
   the median of each, and the median of the per-pair ratios confined/unconfined
   (lowest and highest pair in brackets). The snapshot is taken in both, so the ratio
   is confinement alone.
2. **Snapshot** of a workspace of ``--files`` files (4 KiB each, in 50 directories),
   before and after a command: cold (first command of a run: every file hashed and
   stored in an SQLite log's blobs) and warm (a later command: stat only), against a
   bare ``os.scandir`` walk that stats the same files (the least any change detection
   must do). Target (issue 10): warm snapshot under 50 ms for 1,000 files.

This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from engine.tools import ToolContext, default_registry, execute  # noqa: E402
from engine.tools.confine import Confinement, choose  # noqa: E402
from engine.tools.snapshot import WorkspaceDigests  # noqa: E402
from events import SQLiteEventStore  # noqa: E402

PYTHON_C = (("python", "-c"), ("python", "-m", "pytest"))


def timed_command(workspace: Path, argv: list[str], confinement: Confinement) -> float:
    ctx = ToolContext(
        workspace=workspace,
        blobs=SQLiteEventStore(":memory:"),
        allowlist=PYTHON_C,
        confinement=confinement,
        digests=WorkspaceDigests(),
    )
    started = time.perf_counter()
    outcome = execute(default_registry(), "run_command", {"argv": argv}, ctx)
    elapsed = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(f"{argv} failed: {outcome.text}")
    return elapsed


def commands(pairs: int) -> None:
    confined = choose("required")
    unconfined = choose("off")
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "test_calc.py").write_text(
            "def add(a, b):\n    return a + b\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
        )
        print(f"per-command cost, {pairs} pairs (confined by {confined.describe()})")
        print(f"{'command':<24} {'confined ms':>12} {'unconfined ms':>14} {'ratio (min-max)':>22}")
        for name, argv in [
            ("python -c pass", ["python", "-c", "pass"]),
            ("python -m pytest -q", ["python", "-m", "pytest", "-q"]),
        ]:
            timed_command(workspace, argv, confined)  # warm the page cache
            ours, theirs, ratios = [], [], []
            for i in range(pairs):
                if i % 2:
                    b = timed_command(workspace, argv, unconfined)
                    a = timed_command(workspace, argv, confined)
                else:
                    a = timed_command(workspace, argv, confined)
                    b = timed_command(workspace, argv, unconfined)
                ours.append(a)
                theirs.append(b)
                ratios.append(a / b)
            print(
                f"{name:<24} {statistics.median(ours) * 1000:>12.1f} "
                f"{statistics.median(theirs) * 1000:>14.1f} "
                f"{statistics.median(ratios):>9.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            )


def walk(root: Path) -> int:
    count, stack = 0, [root]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                entry.stat(follow_symlinks=False)
                count += 1
    return count


def snapshots(files: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        for i in range(files):
            directory = workspace / f"pkg{i % 50}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"mod{i}.py").write_bytes(os.urandom(2048).hex().encode())
        cold, warm, bare = [], [], []
        for n in range(repeat):
            store = SQLiteEventStore(Path(tmp) / f"events{n}.db")
            digests = WorkspaceDigests()
            started = time.perf_counter()
            found = digests.snapshot(workspace, store)
            cold.append(time.perf_counter() - started)
            assert len(found) == files
            for _ in range(3):
                started = time.perf_counter()
                digests.snapshot(workspace, store)
                warm.append(time.perf_counter() - started)
                started = time.perf_counter()
                walk(workspace)
                bare.append(time.perf_counter() - started)
            store.close()
        cold_ms, warm_ms, bare_ms = (statistics.median(x) * 1000 for x in (cold, warm, bare))
        print(f"\nsnapshot of {files} files of 4 KiB ({repeat} repetitions, medians)")
        print(f"  cold (hash and store every file):  {cold_ms:8.1f} ms")
        print(f"  warm (stat only, nothing changed): {warm_ms:8.1f} ms   target < 50 ms")
        print(
            f"  bare os.scandir walk with stat:    {bare_ms:8.1f} ms   warm/bare {warm_ms / bare_ms:.2f}x"
        )
        print(f"  a command costs two snapshots: {2 * warm_ms:.1f} ms warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=15, help="confined/unconfined pairs")
    parser.add_argument("--files", type=int, default=1000, help="files in the snapshot workspace")
    parser.add_argument("--repeat", type=int, default=5, help="snapshot repetitions")
    args = parser.parse_args()
    commands(args.pairs)
    snapshots(args.files, args.repeat)


if __name__ == "__main__":
    main()
