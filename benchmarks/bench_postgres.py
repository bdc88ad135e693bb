"""The PostgreSQL event store against raw psycopg doing the same inserts, in the same
run, on a throwaway server (``tests/pg.py``: a unix socket, durability off unless
``--durable``).

    python benchmarks/bench_postgres.py             # 2000 single, 10k batched, 100k rebuild
    python benchmarks/bench_postgres.py --quick     # a minute: smaller counts, median of 3
    python benchmarks/bench_postgres.py --durable   # fsync and synchronous commits on

Each figure is events/s for ours and for raw (medians over ``--repeat``), and the
ratio ours/raw: the median of the ratios of pairs run back to back (alternating
which goes first), lowest and highest pair in brackets.

1. single appends: one event per transaction, with the expected-version check;
2. batched appends: 100 events per transaction;
3. a rebuild of one run of ``--rebuild-events`` events: ``projections.project``
   against a raw SELECT, the same msgspec typed decode and a minimal fold;
4. 4, 8 and 16 writers at once, each a process appending single events to a run of
   its own: the aggregate events/s (all events over the span from the first start to
   the last end), and how it grows with writers.

Raw does what a careful hand-written log on PostgreSQL would: in one transaction,
select the run's last version and hash, compare, chain sha256 over the same
canonical bytes, insert with positions from a sequence (no lock: the unique
``(run_id, version)`` refuses a racing writer), commit. Its tables are created by our
store, so indexes and triggers are the same. Ours takes a global advisory lock per
append (positions without gaps, committed in order, so a reader following
``position`` never skips a late commit) and announces the append (``NOTIFY``).

Targets (issue 16): appends and rebuild >= 0.7x raw; aggregate throughput that grows
with writers up to the server's cores. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

import psycopg  # noqa: E402
from bench_store import (  # noqa: E402
    BATCH,
    encoded,
    hand_chained,
    minimal_fold,
    realistic_events,
    timed,
)
from pg import PgServer  # noqa: E402

from events.postgres import PostgresEventStore  # noqa: E402
from events.schema import Event  # noqa: E402
from projections import project  # noqa: E402

RUN_ID = "bench"
TARGET = 0.7
_LAST = "SELECT version, hash FROM events WHERE run_id = %s ORDER BY version DESC LIMIT 1"
_INSERT = (
    "INSERT INTO events (position, run_id, version, type, schema_version, recorded_at,"
    " causation, hash, data) VALUES (nextval('raw_positions'), %s, %s, %s, %s, %s, %s, %s, %s)"
)


class RawLog:
    """The baseline: the same rows as ``PostgresEventStore.append``, written by hand."""

    def __init__(self, url: str) -> None:
        PostgresEventStore(url).close()  # identical tables, indexes and triggers...
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("CREATE SEQUENCE IF NOT EXISTS raw_positions")
        # ...but the one that sets each row's position under the log's lock (migration
        # 7): a hand-written log takes its positions from its sequence, as said above
        self.conn.execute("DROP TRIGGER IF EXISTS events_position ON events")

    def append(self, run_id: str, events: Sequence[Event], expected: int) -> None:
        payloads = encoded(events)
        recorded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        conn = self.conn
        with conn.transaction():
            last = conn.execute(_LAST, (run_id,)).fetchone()
            version, previous = last if last else (0, "")
            if version != expected:
                raise RuntimeError(f"expected {expected}, the log is at {version}")
            rows = hand_chained(run_id, payloads, version, previous, recorded_at)
            with conn.cursor() as cursor:
                cursor.executemany(_INSERT, rows)

    def close(self) -> None:
        self.conn.close()


def open_log(url: str, ours: bool) -> PostgresEventStore | RawLog:
    return PostgresEventStore(url, pool_size=1) if ours else RawLog(url)


def raw_rebuild(url: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn, conn.cursor(name="rebuild") as cursor:
        cursor.itersize = 1000
        cursor.execute(
            "SELECT data::text FROM events WHERE run_id = %s ORDER BY version", (run_id,)
        )
        return minimal_fold(data for (data,) in cursor)


def our_rebuild(url: str, run_id: str) -> Any:
    with PostgresEventStore(url, pool_size=1) as store:
        return project(store, run_id)


# -- measurements -----------------------------------------------------------------------------


def appends(
    server: PgServer, events: list[Event], size: int
) -> Callable[[bool], Callable[[], None]]:
    """Appending ``events`` to one run in batches of ``size``, on a fresh schema."""

    def make(ours: bool) -> Callable[[], None]:
        log = open_log(server.new_url(), ours)
        batches = [events[i : i + size] for i in range(0, len(events), size)]

        def run() -> None:
            version = 0
            for batch in batches:
                log.append(RUN_ID, batch, version)
                version += len(batch)
            log.close()

        return run

    return make


def _writer(url: str, ours: bool, run_id: str, events: list[Event], start: Any, out: Any) -> None:
    log = open_log(url, ours)
    start.wait()
    began = time.perf_counter()
    for version, event in enumerate(events):
        log.append(run_id, [event], version)
    out.put((began, time.perf_counter()))
    log.close()


def concurrent(server: PgServer, events: list[Event], writers: int) -> Callable[[bool], float]:
    """The aggregate events/s of ``writers`` processes, each appending ``events`` one
    by one to a run of its own, all on one fresh schema."""
    context = multiprocessing.get_context("fork")

    def measure(ours: bool) -> float:
        url = server.new_url()
        open_log(url, ours).close()  # the schema (and raw's sequence) before the writers
        start = context.Barrier(writers)
        out = context.Queue()
        processes = [
            context.Process(target=_writer, args=(url, ours, f"w{i}", events, start, out))
            for i in range(writers)
        ]
        for process in processes:
            process.start()
        spans = [out.get(timeout=600) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        return writers * len(events) / (max(e for _, e in spans) - min(b for b, _ in spans))

    return measure


def compare(name: str, repeat: int, rate: Callable[[bool], float]) -> dict[str, float]:
    """``rate(ours)`` in pairs back to back, alternating which goes first; medians."""
    ours: list[float] = []
    raw: list[float] = []
    for i in range(repeat):
        for is_ours in (True, False) if i % 2 == 0 else (False, True):
            (ours if is_ours else raw).append(rate(is_ours))
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    result = {
        "ours": statistics.median(ours),
        "raw": statistics.median(raw),
        "ratio": statistics.median(ratios),
    }
    print(
        f"{name:<20} ours {result['ours']:>9,.0f} ev/s   raw {result['raw']:>9,.0f} ev/s"
        f"   ours/raw {result['ratio']:.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="single appends")
    parser.add_argument("--batched-events", type=int, default=10_000, help="batched appends")
    parser.add_argument("--rebuild-events", type=int, default=100_000)
    parser.add_argument("--writer-events", type=int, default=300, help="per concurrent writer")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--durable", action="store_true", help="fsync and synchronous commit on")
    parser.add_argument("--quick", action="store_true", help="small counts, median of 3")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.batched_events, args.rebuild_events = 300, 2000, 20_000
        args.writer_events, args.writers, args.repeat = 100, [1, 4, 8], 3
    server = PgServer().start(durable=args.durable)
    try:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        print(
            f"PostgreSQL {version[0] if version else '?'} ({'durable' if args.durable else 'fsync off'}),"
            f" {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; median of {args.repeat}",
            flush=True,
        )
        results = {}
        single = realistic_events(args.events)
        results["single"] = compare(
            f"single x{args.events}",
            args.repeat,
            lambda o: args.events / timed(appends(server, single, 1)(o)),
        )
        batched = realistic_events(args.batched_events)
        results["batched"] = compare(
            f"batched x{args.batched_events}",
            args.repeat,
            lambda o: args.batched_events / timed(appends(server, batched, BATCH)(o)),
        )
        url = server.new_url()
        with PostgresEventStore(url) as store:
            everything = realistic_events(args.rebuild_events, seed=11)
            for i in range(0, len(everything), 1000):
                store.append(RUN_ID, everything[i : i + 1000], i)
            del everything
        state, check = our_rebuild(url, RUN_ID), raw_rebuild(url, RUN_ID)
        assert (len(state.pipeline.tasks), len(state.pipeline.files), state.pipeline.phase) == (
            check["tasks"],
            check["files"],
            check["phase"],
        ), "ours and raw disagree about the run"
        results["rebuild"] = compare(
            f"rebuild x{args.rebuild_events}",
            args.repeat,
            lambda o: (
                args.rebuild_events
                / timed(lambda: (our_rebuild if o else raw_rebuild)(url, RUN_ID))
            ),
        )
        per_writer = realistic_events(args.writer_events)
        growth: dict[int, dict[str, float]] = {}
        for writers in args.writers:
            growth[writers] = compare(
                f"{writers:>2} writers x{args.writer_events}",
                args.repeat,
                concurrent(server, per_writer, writers),
            )
    finally:
        server.stop()
    base = growth[min(growth)]
    print(
        "growth vs the fewest writers: "
        + ", ".join(
            f"{w}: ours {g['ours'] / base['ours']:.2f}x raw {g['raw'] / base['raw']:.2f}x"
            for w, g in growth.items()
        )
    )
    missed = [name for name, r in results.items() if r["ratio"] < TARGET]
    print(
        f"target >= {TARGET}x raw for appends and rebuild: "
        + (f"MISSED by {', '.join(missed)}" if missed else "met")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
