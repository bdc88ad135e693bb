"""What a page of the service costs on a PostgreSQL log: one store shared by every
request (``ServiceSettings.shared_store``, the default) against a store opened per
request (what the service did before: two connection set-ups per page), in one run.

    python benchmarks/bench_serve_postgres.py              # --runs 20 --gets 30 --rounds 5

A throwaway server (``tests/pg.py``) holds ``--runs`` runs of
``bench_store.realistic_events``, appended by a writer that keeps their summaries; the service runs in this process under uvicorn on
127.0.0.1, once per way, both at once. Each round sends ``--gets`` ``GET /api/runs``
(then ``GET /api/runs/RUN``, a run's state) to one service and then to the other, so that a busy spell of
the machine hits both; the figures are medians over every GET of every round: wall
milliseconds seen by the client, and the CPU time of this process (client and service;
the database server's work, such as starting a session, is not in it). Ratios are
per-request/shared. Also the connections each service holds after its pages (its
``application_name`` in ``pg_stat_activity``). This is a script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import uvicorn

ROOT = Path(__file__).resolve().parents[1]
for entry in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(entry) not in sys.path:  # run as a script from a checkout
        sys.path.insert(0, str(entry))

from bench_store import realistic_events  # noqa: E402
from pg import PgServer  # noqa: E402

from engine.cli.serve import listen  # noqa: E402
from engine.storage import open_store  # noqa: E402
from engine.web.app import ServiceSettings, create_app  # noqa: E402

WAYS = {"shared": True, "per-request": False}


@contextmanager
def served(url: str, shared: bool) -> Iterator[str]:
    """The service on ``url`` under uvicorn in a thread; its base URL."""
    app = create_app(ServiceSettings(db=url, allowed_hosts=("127.0.0.1",), shared_store=shared))
    listener = listen("127.0.0.1", 0)  # as autonomy serve listens
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


def held(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--events", type=int, default=100, help="Events per run.")
    parser.add_argument("--gets", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    server = PgServer().start()
    try:
        url = server.new_url()
        with open_store(url) as store:  # a writer: the run summaries are kept
            events = realistic_events(args.events)
            for r in range(args.runs):
                store.append(f"run-{r:03d}", events, 0)
        urls = {way: f"{url}&application_name=bench_{way}" for way in WAYS}
        paths = {
            "GET /api/runs": "/api/runs",
            "GET /api/runs/RUN": "/api/runs/run-000",
            "GET /runs/RUN": "/runs/run-000",  # the run page: its audit views
        }
        wall: dict[tuple[str, str], list[float]] = {(w, p): [] for w in WAYS for p in paths}
        cpu: dict[tuple[str, str], list[float]] = {(w, p): [] for w in WAYS for p in paths}
        with (
            served(urls["shared"], True) as shared,
            served(urls["per-request"], False) as per_request,
            httpx.Client(timeout=60) as client,
        ):
            bases = {"shared": shared, "per-request": per_request}
            for base in bases.values():  # warm both: the first page installs nothing later
                assert client.get(base + "/api/runs").status_code == 200
            for _ in range(args.rounds):
                for label, path in paths.items():
                    for way, base in bases.items():
                        for _ in range(args.gets):
                            c0, w0 = time.process_time(), time.perf_counter()
                            response = client.get(base + path)
                            w1, c1 = time.perf_counter(), time.process_time()
                            assert response.status_code == 200, response.text
                            wall[way, label].append(w1 - w0)
                            cpu[way, label].append(c1 - c0)
            connections = {way: held(url, f"bench_{way}") for way in WAYS}
        gets = args.gets * args.rounds
        print(f"a page of the service on PostgreSQL, {args.runs} runs of {args.events} events")
        print(f"(median of {gets} GETs per way, {args.rounds} rounds alternating the ways):")
        for label in paths:
            for way in WAYS:
                print(
                    f"  {label:18} {way:12} {statistics.median(wall[way, label]) * 1000:8.2f} ms"
                    f"  cpu {statistics.median(cpu[way, label]) * 1000:8.2f} ms"
                )
            ratio = statistics.median(wall["per-request", label]) / statistics.median(
                wall["shared", label]
            )
            cpu_ratio = statistics.median(cpu["per-request", label]) / statistics.median(
                cpu["shared", label]
            )
            print(f"  {label:18} ratio per-request/shared  {ratio:6.2f}x  cpu {cpu_ratio:6.2f}x")
        print(
            "connections held after the pages: "
            + ", ".join(f"{way} {n}" for way, n in connections.items())
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
