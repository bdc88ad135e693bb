"""How long the command line takes to start, against ``python -c "import click"``.

    python benchmarks/bench_cli_start.py              # --repeat 15
    python benchmarks/bench_cli_start.py --repeat 31

Three commands, each a fresh process, run in turns (so a busy moment of the
machine falls on all of them alike), ``--repeat`` times each, bytecode cached
(one warm-up round first):

* ``python -c "import click"`` — the baseline: an interpreter and the CLI library;
* ``autonomy --help``;
* ``autonomy runs --db LOG`` on a small log (one demo run, made first).

Printed: the median wall time and CPU time (user + system, from ``getrusage``) of
each and their ratios to the baseline. On a loaded machine the wall time counts the
waits for a core; the CPU time is what the process itself spent. Target (issue 17):
both ``autonomy`` commands under 150 ms.

This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def autonomy() -> list[str]:
    """The installed console script beside this interpreter, else the same entry point."""
    script = Path(sys.executable).with_name("autonomy")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from engine.console import main; main()"]


def wall(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        subprocess.run(
            [*autonomy(), "demo", "--workdir", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log = str(Path(tmp) / "events.db")
        commands = {
            'python -c "import click"': [sys.executable, "-c", "import click"],
            "autonomy --help": [*autonomy(), "--help"],
            "autonomy runs (1 run)": [*autonomy(), "runs", "--db", log],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm-up: bytecode written, files cached
            wall(argv)
        for _ in range(args.repeat):
            for name, argv in commands.items():
                elapsed, used = wall(argv)
                times[name].append(elapsed)
                cpu[name].append(used)
    baseline = 'python -c "import click"'
    base, base_cpu = statistics.median(times[baseline]), statistics.median(cpu[baseline])
    print(f"median of {args.repeat} fresh processes each (bytecode cached)")
    print(f"{'command':<28} {'wall ms':>8} {'ratio':>7} {'CPU ms':>8} {'ratio':>7}")
    for name in commands:
        w, c = statistics.median(times[name]), statistics.median(cpu[name])
        print(
            f"{name:<28} {w * 1000:>8.1f} {w / base:>6.2f}x {c * 1000:>8.1f} {c / base_cpu:>6.2f}x"
        )
    print("target: autonomy --help and autonomy runs under 150 ms")


if __name__ == "__main__":
    main()
