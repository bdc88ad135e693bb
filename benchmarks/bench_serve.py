"""The service's costs, each against a baseline measured in the same run.

    python benchmarks/bench_serve.py                        # 200k events over 200 runs
    python benchmarks/bench_serve.py --events 1000000 --runs 1000 --db /tmp/serve-1m.db

1. The run list: ``GET /api/runs`` (through Starlette's test client) and what
   ``autonomy runs`` does (a read-only open and ``run_summaries``), both reading the
   stored run summaries, against what ``autonomy runs`` did before them, a
   ``projections.project`` of every run. Medians over ``--repeat``; the ratios are
   fold/list. Also the one-time build of the summaries when a writer first opens a
   log from before them (``--db`` of an older log), and the list while one run has
   ``MAINTAIN_EVERY`` events its rows do not hold yet (a live run between two
   catch-ups: read-only readers fold those in memory).
3. The cost of keeping the summaries as events are appended: single appends to one
   run through ``open_store`` with the maintainer (``EventStore.after_append``)
   against the same appends without it. Medians of ``--repeat`` batches.
2. The live stream: a real ``autonomy serve`` process, and this process appending one
   event at a time to a run; the seconds from each append's commit until its ``data:``
   line arrives on ``/api/runs/RUN/stream``, against the seconds until a new reader
   (``open_store`` + ``read``) sees it. Medians over ``--appends``; the stream polls
   every 0.2 s, so with appends at random moments its median should be about half that.

The log of part 1 holds ``--runs`` runs of ``bench_store.realistic_events``, appended
through the store (so every run folds). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(path))

from bench_replay_audit import log_size, median_seconds  # noqa: E402
from bench_store import realistic_events  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from engine.storage import open_store  # noqa: E402
from engine.web.app import ServiceSettings, create_app  # noqa: E402
from events.schema import PhaseChanged, RunStarted  # noqa: E402
from projections import project  # noqa: E402
from projections.summaries import MAINTAIN_EVERY, run_summaries  # noqa: E402

AUTONOMY = str(Path(sys.executable).parent / "autonomy")


def build_log(db: Path, events: int, runs: int) -> None:
    per_run = realistic_events(events // runs)
    with open_store(db, synchronous="OFF") as store:
        for r in range(runs):
            store.append(f"run-{r:04d}", per_run, 0)


def run_list(db: Path, repeat: int) -> None:
    with open_store(db, read_only=True) as store:
        position = store.summary_position() or 0
        later = store.runs_after(position)
        behind = max((i.last_position for i in later), default=position) - position
    started = time.perf_counter()
    open_store(db).close()  # a writer's open builds or catches up the summaries
    built = time.perf_counter() - started
    client = TestClient(create_app(ServiceSettings(db=db)), base_url="http://127.0.0.1")

    def served() -> object:
        response = client.get("/api/runs")
        assert response.status_code == 200, response.text
        return response.json()

    def listed() -> object:
        with open_store(db, read_only=True) as store:
            return run_summaries(store)

    def folded() -> object:
        with open_store(db, read_only=True) as store:
            return [project(store, info.run_id).pipeline.status for info in store.runs()]

    runs = len(served())
    api = median_seconds(served, repeat)
    cli = median_seconds(listed, repeat)
    fold = median_seconds(folded, max(1, repeat // 2))
    with open_store(db) as store:  # a live run: MAINTAIN_EVERY events past its row
        store.after_append = None  # (named so that log_size does not count it)
        version = store.last_version("live")
        batch = realistic_events(MAINTAIN_EVERY + 1)
        store.append("live", batch[1:] if version else batch[:-1], version)
    behind_live = median_seconds(listed, repeat)
    print(f"run list of {runs} runs, {log_size(db)} events (median of {repeat}):")
    if behind:
        print(f"  a writer's open catching up {behind} events    {built * 1000:9.1f} ms")
    print(f"  GET /api/runs (run summaries)    {api * 1000:9.1f} ms")
    print(f"  autonomy runs (run summaries)    {cli * 1000:9.1f} ms")
    print(f"  a fold per run (autonomy runs before the summaries) {fold * 1000:9.1f} ms")
    print(f"  ratio fold/GET /api/runs         {fold / api:9.1f}x")
    print(f"  ratio fold/autonomy runs         {fold / cli:9.1f}x")
    print(
        f"  autonomy runs, one run {MAINTAIN_EVERY} events ahead of its row {behind_live * 1000:9.1f} ms"
    )


def append_cost(workdir: Path, repeat: int, appends: int = 400) -> None:
    """Single appends with and without the maintainer, alternating batches."""
    times: dict[bool, list[float]] = {True: [], False: []}
    events = realistic_events(appends)
    for attempt in range(repeat):
        for maintained in (True, False):
            db = workdir / f"append-{attempt}-{maintained}.db"
            with open_store(db) as store:
                if not maintained:
                    store.after_append = None
                started = time.perf_counter()
                for version, event in enumerate(events):
                    store.append("r", [event], version)
                times[maintained].append((time.perf_counter() - started) / appends)
    kept, bare = statistics.median(times[True]), statistics.median(times[False])
    print(f"single appends of {appends} events to one run (median of {repeat} batches):")
    print(f"  with the summaries kept          {kept * 1e6:9.1f} us/append")
    print(f"  without (after_append = None)    {bare * 1e6:9.1f} us/append")
    print(f"  ratio kept/without               {kept / bare:9.2f}x")


def stream_latency(workdir: Path, appends: int) -> None:
    db = workdir / "live.db"
    with open_store(db) as store:
        store.append("live", [RunStarted(goal="bench", workspace=str(workdir))], 0)
    server = subprocess.Popen(
        [AUTONOMY, "serve", "--db", str(db), "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" on ", 1)[1].strip().rstrip("/")
        rng = random.Random(7)
        streamed: list[float] = []
        read: list[float] = []
        with (
            open_store(db) as writer,
            httpx.stream("GET", f"{url}/api/runs/live/stream", timeout=30) as response,
        ):
            lines = response.iter_lines()
            next(line for line in lines if line.startswith("data: "))  # run.started
            for version in range(2, appends + 2):
                # at a random moment of the stream's poll cycle, as another process would
                time.sleep(rng.uniform(0, 0.2))
                change = PhaseChanged(trigger="t", from_phase="a", to_phase="b")
                writer.append("live", [change], version - 1)
                appended = time.perf_counter()
                with open_store(db) as reader:
                    assert [e.version for e in reader.read("live", after=version - 1)]
                read.append(time.perf_counter() - appended)
                next(line for line in lines if line.startswith("data: "))
                streamed.append(time.perf_counter() - appended)
    finally:
        server.terminate()
        server.wait(timeout=10)
    s, r = statistics.median(streamed), statistics.median(read)
    print(f"stream latency over {appends} appends by another process (median):")
    print(
        f"  SSE data line after the commit   {s * 1000:9.1f} ms  (max {max(streamed) * 1000:.0f})"
    )
    print(f"  a new reader sees it             {r * 1000:9.1f} ms")
    print(f"  ratio stream/reader              {s / r:9.1f}x")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--appends", type=int, default=40)
    parser.add_argument("--db", type=Path, help="Reuse (or build) the run-list log here.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        db = args.db or workdir / "list.db"
        if log_size(db) != args.events:
            db.unlink(missing_ok=True)
            build_log(db, args.events, args.runs)
        run_list(db, args.repeat)
        stream_latency(workdir, args.appends)
        append_cost(workdir, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
