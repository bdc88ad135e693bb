"""Audit query latency with and without the audit indexes, replay throughput
against the rebuild-only rate, and verify's time per event keyed against the
plain sha256 chain, each baseline measured in the same run.

    python benchmarks/bench_replay_audit.py                       # 1M events, 200 runs
    python benchmarks/bench_replay_audit.py --events 200000 --repeat 5
    python benchmarks/bench_replay_audit.py --db /tmp/audit-1m.db  # reuse a built log
    python benchmarks/bench_replay_audit.py --skip-replay --replay-tasks 40

0. The log: ``--events`` realistic events over ``--runs`` runs (model, tool,
   decision, phase and task events; some tool failures and sandbox refusals),
   appended through the store in one batch per run, so that every row is valid:
   it decodes, its hash chain holds, the file contents it refers to are blobs.
   The first half of the runs is written without a key (as every log before
   keys), the second half keyed (the key in ``<db>.key``); then the long run of
   part 2 is recorded into the same log. Built once into ``--db``, reused when it
   already holds that many events.
1. Audit: each named query of ``engine.runs.audit``
   runs for one run id, first with the
   store's own indexes only (``(run_id, version)`` and ``type``: the audit
   indexes dropped, so the views' json_extract joins scan the run), then after
   ``ensure_indexes``. Medians over ``--repeat``; the ratio is scan/indexed.
2. Replay: a long run recorded by the engine against a scripted model server
   (``--replay-tasks`` tasks) in the same log, replayed with ``engine.runs.replay.replay``
   with tool results from the log (``tools="recorded"``) and with tools really run in
   a scratch workspace (``"live"``), against ``projections.project`` of the same run.
   All as events/s (medians of ``--repeat``); the ratio is replay/rebuild.
3. Verify: ``EventStore.verify`` (the chain) over ``--verify-runs`` keyed runs and
   as many unkeyed ones, as microseconds per event; the ratio is keyed/unkeyed
   (issue 12's budget: 1.5). Then ``engine.runs.verification.verify_log`` over the
   whole log (database, blobs, every run decoded and rebuilt) and a projection of
   every run (what ``autonomy runs`` does), once each.

This is a script, not a test.
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from engine.runs.audit import INDEXES, QUERIES, ensure_indexes, run_query  # noqa: E402
from events import RunStarted, SQLiteEventStore  # noqa: E402
from projections.views import install_views  # noqa: E402

_encode = msgspec.json.Encoder().encode
LONG_RUN = "long-run"
_WORDS = [
    "parse",
    "the",
    "config",
    "file",
    "and",
    "validate",
    "every",
    "key",
    "against",
    "the",
    "schema",
    "so",
    "a",
    "typo",
    "fails",
]
_ROLES = ("coding", "analysis", "reasoning")
_MODELS = ("qwen2.5-coder:7b", "qwen2.5:14b", "qwen2.5:32b")
_PHASES = ("planning", "coding", "qa", "debugging", "documentation")
_REFUSALS = (
    "path '../{0}' climbs out of the workspace with '..'; use a path relative to the workspace root",
    "path '.git/{0}' is inside .git/, which belongs to the tooling, not the project; "
    "it cannot be read or changed",
)
BENCH_PATH = "src/module_3.py"  # every run writes it, so file-history has rows


# -- a realistic log -----------------------------------------------------------------------


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _digest(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def run_payloads(
    run_id: str, count: int, rng: random.Random, put: Callable[[bytes], str]
) -> Iterator[tuple[str, bytes]]:
    """``count`` (type, JSON data) pairs shaped like one engine run; file contents
    are stored with ``put``, which gives their digest."""
    emitted = 0

    def event(type_: str, data: dict[str, Any]) -> tuple[str, bytes]:
        nonlocal emitted
        emitted += 1
        return type_, _encode({"type": type_, **data})

    yield event("run.started", {"goal": _text(rng, 20), "workspace": f"/w/{run_id}"})
    phase, task_no, call_no = "start", 0, 0
    contents: dict[str, str] = {}
    while emitted < count - 1:
        task_no += 1
        task_id, target = f"t{task_no}", f"src/module_{task_no % 12}.py"
        to_phase = _PHASES[task_no % len(_PHASES)]
        fallback = rng.random() < 0.05
        yield event(
            "arbiter.decided",
            {
                "action": "code",
                "parameters": {"task_id": task_id},
                "reasoning": _text(rng, 10),
                "decided_by": "arbiter",
                "fallback_used": fallback,
                "fallback_reason": "arbiter reply was not a valid decision" if fallback else "",
            },
        )
        yield event(
            "phase.changed",
            {"trigger": "next", "from_phase": phase, "to_phase": to_phase, "reason": _text(rng, 6)},
        )
        phase = to_phase
        yield event(
            "task.added", {"task_id": task_id, "title": _text(rng, 6), "target_file": target}
        )
        for _turn in range(rng.randint(3, 8)):
            call_no += 1
            call_id, tool_call = f"{run_id}/m{call_no}", f"{run_id}/t{call_no}"
            role = rng.choice(_ROLES)
            yield event(
                "model.requested",
                {
                    "call_id": call_id,
                    "role": role,
                    "model": _MODELS[_ROLES.index(role)],
                    "endpoint": "http://127.0.0.1:11434",
                    "conversation": f"{role}:{task_id}",
                    "request_digest": _digest(rng),
                    "messages": [{"role": "tool", "content": _text(rng, 30)}],
                },
            )
            if rng.random() < 0.03:
                yield event(
                    "model.failed",
                    {
                        "call_id": call_id,
                        "kind": "timeout",
                        "detail": "read timed out",
                        "attempt": 1,
                    },
                )
            yield event(
                "model.responded",
                {
                    "call_id": call_id,
                    "content": _text(rng, 20),
                    "usage": {
                        "prompt_tokens": rng.randint(800, 6000),
                        "completion_tokens": rng.randint(50, 800),
                    },
                    "duration_ms": rng.uniform(500, 20_000),
                },
            )
            refused = rng.random() < 0.02
            failed = refused or rng.random() < 0.05
            path = target if not refused else rng.choice(("../etc/passwd", ".git/config"))
            yield event(
                "tool.requested",
                {"call_id": tool_call, "tool": "create_file", "arguments": {"path": path}},
            )
            if failed:
                error = (
                    rng.choice(_REFUSALS).format(path.split("/")[-1])
                    if refused
                    else "SyntaxError: invalid syntax (line 3)"
                )
                yield event(
                    "tool.executed",
                    {"call_id": tool_call, "tool": "create_file", "ok": False, "error": error},
                )
            else:
                content = f"# {target}, {call_id}\n{_text(rng, 12)}\n".encode()
                after = put(content)
                change = {"path": target, "before": contents.get(target), "after": after}
                contents[target] = after
                yield event(
                    "tool.executed",
                    {
                        "call_id": tool_call,
                        "tool": "create_file",
                        "ok": True,
                        "result": f"wrote {target}",
                        "files_changed": [{**change, "size": len(content)}],
                    },
                )
        yield event(
            "task.updated",
            {"task_id": task_id, "status": "completed", "attempt": 1, "error": ""},
        )
    yield event("run.finished", {"status": "completed", "reason": "all tasks done"})


def build_log(path: Path, events: int, runs: int, key: bytes) -> None:
    """Append ``events`` events over ``runs`` runs to a new log at ``path``: the
    first half of the runs unkeyed, the rest keyed with ``key``."""
    from events.codec import CURRENT

    rng = random.Random(7)
    per_run = events // runs
    clock = iter(range(10**9))

    def now() -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=next(clock))

    for r in range(runs):
        with SQLiteEventStore(
            path, synchronous="OFF", clock=now, key=key if r >= runs // 2 else None
        ) as store:
            run_id = f"run-{r:04d}"
            count = per_run if r < runs - 1 else events - per_run * (runs - 1)
            payloads = list(run_payloads(run_id, count, rng, store.put))[:count]
            decoded = [CURRENT.decode(data) for _, data in payloads]
            if isinstance(decoded[0], RunStarted):
                decoded[0] = msgspec.structs.replace(decoded[0], key_id=store.key_id)
            store.append(run_id, decoded, 0)
    with closing(sqlite3.connect(path)) as conn:
        install_views(conn)


def log_size(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute("SELECT count(*) FROM events WHERE run_id LIKE 'run-%'").fetchone()[0]
        )
    except sqlite3.DatabaseError:
        return 0
    finally:
        conn.close()


# -- measurements ------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _query(
    conn: sqlite3.Connection, name: str, run_id: str, args: tuple[str, ...]
) -> Callable[[], object]:
    return lambda: run_query(conn, name, run_id, args)


def audit_latency(path: Path, repeat: int, run_id: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for name in INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    conn.execute("ANALYZE")
    cases: list[tuple[str, tuple[str, ...]]] = [
        (name, (BENCH_PATH,) if query.parameters else ()) for name, query in QUERIES.items()
    ]
    scan: dict[str, tuple[float, int]] = {}
    for name, args in cases:
        rows = len(run_query(conn, name, run_id, args).rows)
        scan[name] = (
            median_seconds(_query(conn, name, run_id, args), repeat),
            rows,
        )
    start = time.perf_counter()
    ensure_indexes(conn)
    conn.execute("ANALYZE")
    built = time.perf_counter() - start
    print(f"ensure_indexes on this log: {built:.1f} s (once)", flush=True)
    print(
        f"{'query (one run)':<16} {'rows':>6} {'scan ms':>10} {'indexed ms':>11} {'scan/indexed':>13}"
    )
    for name, args in cases:
        rows = len(run_query(conn, name, run_id, args).rows)
        assert rows == scan[name][1], f"{name}: the indexes changed the answer"
        indexed = median_seconds(_query(conn, name, run_id, args), repeat)
        full = scan[name][0]
        print(
            f"{name:<16} {rows:>6} {full * 1000:>10.1f} {indexed * 1000:>11.2f} {full / indexed:>12.0f}x",
            flush=True,
        )
    conn.close()


# -- replay ---------------------------------------------------------------------------------


class LongRun:
    """Scripted models for a long run: ``tasks`` tasks, each written, compiled,
    completed and approved, so every model and tool event type appears. The arbiter
    (orchestrated mode) answers as the demo's does: the move its prompt suggests."""

    def __init__(self, tasks: int) -> None:
        from engine.runs.demo import DemoModels

        self.tasks = tasks
        self.demo = DemoModels()

    def __call__(self, request: Any) -> Any:
        import re

        from engine.testing import Reply

        body = request.body or {}
        offered = {t["function"]["name"] for t in body.get("tools", [])}
        messages = body.get("messages", [])
        done = sum(1 for m in messages if m.get("role") == "tool")
        opening = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        found = re.search(r"Task (t\d+)", opening)
        task = found.group(1) if found else "t1"
        if "consult_coding_specialist" in offered:
            return self.demo.arbiter(messages)
        if "create_task_plan" in offered:
            plan = [
                {"title": f"Write module m{i}", "target_file": f"m{i}.py", "priority": 1}
                for i in range(1, self.tasks + 1)
            ]
            return Reply.tool("create_task_plan", tasks=plan)
        target = f"m{task[1:]}.py"
        if "approve_code" in offered:
            if done == 0:
                return Reply.tool("read_file", path=target)
            return Reply.tool("approve_code", task_id=task, summary="fine")
        steps = [
            Reply.tool("create_file", path=target, content=f"def f{task[1:]}():\n    return 1\n"),
            Reply.tool("read_file", path=target),
            Reply.tool("complete_task", task_id=task, summary="written"),
        ]
        return steps[min(done, len(steps) - 1)]


def record_long_run(path: Path, workspace: Path, tasks: int, key: bytes) -> str:
    import httpx

    from engine.agent.runner import start_run
    from engine.config import load_settings
    from engine.storage import open_store
    from engine.testing import ScriptedModelServer

    with ScriptedModelServer(LongRun(tasks), models=["qwen2.5-coder:7b"]) as server:
        settings = load_settings(
            env={},
            overrides={
                "model_url": server.url,
                "api": "ollama",
                "model": "qwen2.5-coder:7b",
                "max_steps": tasks * 6 + 20,
            },
        )
        with open_store(path, key=key) as store, httpx.Client() as http:
            log = start_run(
                store,
                goal="many modules",
                workspace=workspace,
                settings=settings,
                http=http,
                run_id=LONG_RUN,
            )
            return log.run_id


def replay_throughput(db: Path, workdir: Path, tasks: int, repeat: int, key: bytes) -> None:
    from engine.runs.replay import replay
    from engine.storage import open_store
    from projections import project

    start = time.perf_counter()
    run_id = record_long_run(db, workdir / "ws", tasks, key)
    recorded = time.perf_counter() - start
    with closing(open_store(db, key=key)) as store:
        events = store.last_version(run_id)
        status = project(store, run_id).pipeline.status
        fallbacks = store.connection.execute(
            "SELECT count(*) FROM decisions WHERE run_id = ? AND fallback_used", (run_id,)
        ).fetchone()[0]
        print(
            f"long run: {events:,} events, {tasks} tasks, status {status}, {fallbacks} fallbacks,"
            f" recorded in {recorded:.1f} s",
            flush=True,
        )
        cases: dict[str, Callable[[], object]] = {"rebuild": lambda: project(store, run_id)}
        for tools in ("recorded", "live"):
            result = replay(store, run_id, tools=tools)  # and a first run, untimed
            if result.identical:
                cases[tools] = functools.partial(replay, store, run_id, tools=tools)
            else:
                print(f"replay --tools {tools} is not identical, not measured:\n{result.report()}")
        # interleaved, so that a machine that speeds up or slows down in the meantime
        # does so for the replays and their baseline alike
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeat):
            for name, fn in cases.items():
                times[name].append(median_seconds(fn, 1))
        seconds = {name: statistics.median(t) for name, t in times.items()}
        rebuilt = seconds.pop("rebuild")
        print(f"rebuild-only        {events / rebuilt:>10,.0f} ev/s", flush=True)
        for tools, replayed in seconds.items():
            print(
                f"replay --tools {tools:<8} {events / replayed:>10,.0f} ev/s"
                f"   replay/rebuild {rebuilt / replayed:.3f}",
                flush=True,
            )
            if tools == "recorded":
                replay_floor(store, run_id, repeat, replayed)


def replay_floor(store: Any, run_id: str, repeat: int, replayed: float) -> None:
    """What a replay costs before its engine decides anything: reading the recorded
    run, writing as many events to a scratch log (and folding each into the state the
    engine reads), comparing them with the recording. The rest is the engine's."""
    from engine.agent.runlog import RunLog
    from engine.runs.divergence import Normaliser, compare
    from engine.runs.replay import scratch_store
    from engine.runs.replay_sources import Recording
    from projections.fold import RunState

    recorded = Recording(store, run_id).events

    def write() -> list[Any]:
        log = RunLog(scratch_store(), run_id, RunState())
        return [log.append(e.data, causation=e.causation)[0] for e in recorded]

    written = write()
    parts = {
        "reading the run": median_seconds(lambda: Recording(store, run_id), repeat),
        "scratch log + fold": median_seconds(write, repeat),
        "comparing": median_seconds(lambda: compare(recorded, written, Normaliser()), repeat),
    }
    floor = sum(parts.values())
    shares = ", ".join(f"{name} {seconds * 1000:.1f}" for name, seconds in parts.items())
    print(
        f"  of its {replayed * 1000:.1f} ms: {shares}; the engine the other"
        f" {(replayed - floor) * 1000:.1f} ms (no engine at all: {len(recorded) / floor:,.0f} ev/s)",
        flush=True,
    )


# -- verify ---------------------------------------------------------------------------------


def verify_before_keys(store: SQLiteEventStore, run_id: str) -> bool:
    """``EventStore.verify`` as it was before keys (plain sha256, first problem
    only): the baseline the keyed chain is held to."""
    from events.codec import chain_hash

    previous = ""
    for checked, row in enumerate(store.read_raw(run_id), start=1):
        expected = chain_hash(
            previous,
            run_id=row.run_id,
            version=row.version,
            type=row.type,
            schema_version=row.schema_version,
            recorded_at=row.recorded_at,
            causation=row.causation,
            data=row.data,
        )
        if row.version != checked or expected != row.hash:
            return False
        previous = row.hash
    return True


def verify_timing(db: Path, key: bytes, runs: int, repeat: int) -> None:
    from engine.runs.verification import verify_log
    from projections import project

    with SQLiteEventStore(db, key=key) as store:
        infos = [i for i in store.runs() if i.run_id.startswith("run-")]
        half = len(infos) // 2
        unkeyed, keyed = infos[: min(runs, half)], infos[half : half + runs]
        for name, group in (("unkeyed", unkeyed), ("keyed", keyed)):
            expected = "unkeyed" if name == "unkeyed" else "keyed"
            assert all(store.verify(i.run_id).authentication == expected for i in group[:1])
        count = sum(i.version for i in unkeyed), sum(i.version for i in keyed)

        def chain(group: list[Any], check: Callable[[str], bool]) -> Callable[[], None]:
            def run() -> None:
                for info in group:
                    assert check(info.run_id)

            return run

        cases = {
            "unkeyed": (chain(unkeyed, lambda r: store.verify(r).ok), count[0]),
            "keyed": (chain(keyed, lambda r: store.verify(r).ok), count[1]),
            "before keys": (chain(unkeyed, lambda r: verify_before_keys(store, r)), count[0]),
        }
        # interleaved, so that a busy machine slows every case alike
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeat):
            for name, (fn, events) in cases.items():
                times[name].append(median_seconds(fn, 1) / events * 1e6)
        per_event = {name: statistics.median(t) for name, t in times.items()}
        for name in cases:
            print(f"verify chain, {name:<12} {per_event[name]:>6.2f} us/event (median of {repeat})")
        print(
            f"verify chain keyed/unkeyed {per_event['keyed'] / per_event['unkeyed']:.2f}, "
            f"keyed/before-keys {per_event['keyed'] / per_event['before keys']:.2f}"
            "  (budget 1.5)",
            flush=True,
        )
        total = sum(i.version for i in store.runs())
        start = time.perf_counter()
        verdict = verify_log(store)
        took = time.perf_counter() - start
        bad = [r.run_id for r in verdict.runs if not r.ok]
        print(
            f"verify_log, whole log: {total:,} events in {took:.1f} s ({took / total * 1e6:.1f}"
            f" us/event), ok={verdict.ok} {verdict.database or ''}{bad[:3] or ''}",
            flush=True,
        )
        start = time.perf_counter()
        for info in store.runs():
            project(store, info.run_id)
        took = time.perf_counter() - start
        print(f"runs (project every run): {took:.1f} s ({took / total * 1e6:.1f} us/event)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the audit log")
    parser.add_argument("--runs", type=int, default=200, help="runs in the audit log")
    parser.add_argument("--db", type=Path, help="the audit log: built if missing, else reused")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians")
    parser.add_argument("--replay-tasks", type=int, default=30, help="tasks in the replayed run")
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-verify", action="store_true")
    parser.add_argument(
        "--verify-runs", type=int, default=20, help="keyed (and unkeyed) runs timed by verify"
    )
    args = parser.parse_args(argv)
    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}; median of {args.repeat}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-replay-audit-") as tmp:
        workdir = Path(tmp)
        db = args.db or Path(tempfile.gettempdir()) / f"bench-audit-{args.events}.db"
        key_path = Path(f"{db}.key")
        if log_size(db) != args.events or not key_path.exists():
            for suffix in ("", "-wal", "-shm", ".key"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            key_path.write_bytes(secrets.token_bytes(32))
            start = time.perf_counter()
            build_log(db, args.events, args.runs, key_path.read_bytes())
            print(
                f"built {db}: {args.events:,} events over {args.runs} runs through the store in "
                f"{time.perf_counter() - start:.1f} s, {db.stat().st_size / 2**20:.0f} MiB",
                flush=True,
            )
        else:
            print(f"reusing {db} ({args.events:,} events)", flush=True)
        key = key_path.read_bytes()
        if not args.skip_replay:
            with closing(sqlite3.connect(db)) as conn:
                recorded = conn.execute(
                    "SELECT count(*) FROM events WHERE run_id = ?", (LONG_RUN,)
                ).fetchone()[0]
            if recorded:
                print(f"{LONG_RUN} is in the log already: replay not measured (build a new log)")
            else:
                replay_throughput(db, workdir, args.replay_tasks, args.repeat, key)
        if not args.skip_audit:
            audit_latency(db, args.repeat, f"run-{args.runs // 2:04d}")
        if not args.skip_verify:
            verify_timing(db, key, args.verify_runs, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
