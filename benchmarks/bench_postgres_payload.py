"""How to store payloads in PostgreSQL: ``json`` (the text as written, what
``events.postgres`` uses) against ``text`` plus a generated ``jsonb`` column, and
against ``jsonb`` alone, each through ``PostgresEventStore`` in the same run on a
throwaway server (``tests/pg.py``, durability off, a unix socket).

    python benchmarks/bench_postgres_payload.py               # 2000 appends, 20k rebuild
    python benchmarks/bench_postgres_payload.py --events 5000 --rebuild-events 100000

Four figures per layout, medians of ``--repeat`` runs, and the ratio to ``json``:
single appends (one event per transaction), batched appends (100 per
transaction), a full rebuild of one run (``projections.project``) and a
``tool_calls`` view scan. ``jsonb`` alone cannot keep the hash chain (it reorders
keys and drops spaces, so ``verify`` fails on every row): it is measured only to
show what parsing on write costs. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "tests", ROOT / "benchmarks"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from bench_store import BATCH, realistic_events  # noqa: E402
from pg import PgServer  # noqa: E402

import events.postgres as pg_store  # noqa: E402
from events.postgres import PostgresEventStore  # noqa: E402
from events.schema import Event  # noqa: E402
from projections import project  # noqa: E402

LAYOUTS = {
    "json": "data json NOT NULL",
    "text+jsonb": "data text NOT NULL, doc jsonb GENERATED ALWAYS AS (data::jsonb) STORED",
    "jsonb": "data jsonb NOT NULL",
}
ORIGINAL = pg_store.MIGRATIONS


def fresh(server: PgServer, layout: str) -> PostgresEventStore:
    first = ORIGINAL[0].replace("data json NOT NULL", LAYOUTS[layout])
    pg_store.MIGRATIONS = (first, *ORIGINAL[1:])
    try:
        return PostgresEventStore(server.new_url())
    finally:
        pg_store.MIGRATIONS = ORIGINAL


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    server: PgServer, layout: str, events: list[Event], rebuild: list[Event]
) -> list[float]:
    """events/s: single, batched, rebuild; tool_calls rows/s."""
    with fresh(server, layout) as store:
        single = timed(lambda: [store.append("single", [e], v) for v, e in enumerate(events)])
    with fresh(server, layout) as store:

        def batched() -> None:
            for v in range(0, len(events), BATCH):
                store.append("batched", events[v : v + BATCH], v)

        batch = timed(batched)
    with fresh(server, layout) as store:
        for v in range(0, len(rebuild), 1000):
            store.append("rebuild", rebuild[v : v + 1000], v)
        fold = timed(lambda: project(store, "rebuild"))
        view = ""
        if layout != "jsonb":
            view = "q.data->>'call_id'" if layout == "json" else "q.doc->>'call_id'"
        expr = view or "q.data->>'call_id'"
        other = expr.replace("q.", "x.")
        conn = store.connection.raw
        rows: list[object] = []

        def scan() -> None:
            rows[:] = conn.execute(
                "SELECT count(*) FROM events q LEFT JOIN events x ON x.run_id = q.run_id"
                f" AND x.type = 'tool.executed' AND {other} = {expr}"
                " WHERE q.type = 'tool.requested'"
            ).fetchall()

        scan_time = timed(scan)
    return [
        len(events) / single,
        len(events) / batch,
        len(rebuild) / fold,
        len(rebuild) / scan_time,
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rebuild-events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    events = realistic_events(args.events)
    rebuild = realistic_events(args.rebuild_events, seed=11)
    server = PgServer().start()
    try:
        results: dict[str, list[list[float]]] = {name: [] for name in LAYOUTS}
        for _ in range(args.repeat):
            for name in LAYOUTS:  # interleaved, so load on the machine hits all alike
                results[name].append(measure(server, name, events, rebuild))
    finally:
        server.stop()
    medians = {
        n: [statistics.median(col) for col in zip(*r, strict=True)] for n, r in results.items()
    }
    labels = ["single append", "batched append", "rebuild", "view join"]
    print(f"{'layout':<12}" + "".join(f"{label:>24}" for label in labels))
    for name, values in medians.items():
        cells = [f"{v:>12,.0f}/s ({v / medians['json'][i]:.2f}x)" for i, v in enumerate(values)]
        print(f"{name:<12}" + "".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
