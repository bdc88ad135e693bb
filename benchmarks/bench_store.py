"""Event store throughput and memory, each measured against raw sqlite3 + msgspec
doing the same work in the same run on the same machine.

    python benchmarks/bench_store.py                      # --events 10000 --repeat 5
    python benchmarks/bench_store.py --events 2000 --repeat 3 --rebuild-events 20000
    python benchmarks/bench_store.py --profile rebuild    # where does our time go?

Three measurements, each as events/s for ours and for raw (medians over ``--repeat``
runs), and the ratio ours/raw: the median of the ratios of ``--repeat`` pairs, ours
and raw run back to back (alternating which goes first), with the lowest and
highest pair in brackets:

1. single appends: one event per transaction with the expected-version check, on a
   file database with WAL and synchronous=NORMAL;
2. batched appends: 100 events per transaction, same check;
3. a full rebuild of one run (``--rebuild-events``, 100k by default): read, typed
   decode and fold, ``projections.project(store, run_id)`` against a raw SELECT, the
   same msgspec typed decode and a minimal fold (task statuses, files, phase,
   tokens). Also the peak memory of the rebuild: tracemalloc's peak (Python
   allocations during the rebuild) and ru_maxrss of a process doing only that.

Raw does what a careful hand-written event log would: BEGIN IMMEDIATE, select the
run's last version and hash, compare with the expected version, chain sha256 over
the same canonical bytes, insert, COMMIT. Its tables are created by our store so
that indexes and triggers are the same.

Targets (issue 2): single >= 0.8x raw, batched >= 0.7x raw, rebuild >= 0.6x raw.
This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import pstats
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from events import SQLiteEventStore  # noqa: E402
from events.schema import (  # noqa: E402
    AnyEvent,
    ArbiterDecided,
    Event,
    FileChange,
    Message,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunStarted,
    SpecialistConsulted,
    TaskAdded,
    TaskUpdated,
    ToolCall,
    ToolExecuted,
    ToolRequested,
    Usage,
)

TARGETS = {"single append": 0.8, "batched append": 0.7, "rebuild": 0.6}
BATCH = 100
RUN_ID = "bench-run"

# -- a realistic run -----------------------------------------------------------------------

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
    "before",
    "the",
    "run",
    "starts",
    "so",
    "that",
    "a",
    "typo",
    "is",
    "reported",
    "with",
    "its",
    "line",
    "number",
    "instead",
    "of",
    "a",
    "traceback",
    "write",
    "tests",
    "for",
    "the",
    "storage",
    "module",
    "including",
    "the",
    "empty",
    "file",
    "and",
    "a",
    "corrupt",
    "file",
    "the",
    "command",
    "exits",
    "non-zero",
    "when",
    "the",
    "todo",
    "does",
    "not",
    "exist",
    "and",
    "prints",
    "a",
    "clear",
    "error",
]
_PHASES = ("coding", "qa", "debugging", "coding", "documentation")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _digest(rng: random.Random) -> str:
    return hashlib.sha256(rng.randbytes(16)).hexdigest()


def realistic_events(count: int, seed: int = 7) -> list[Event]:
    """``count`` events of one run in the shape an engine appends: per task a few
    tool-loop turns (model request with the new messages only, model response with
    a tool call, tool request, tool execution with file changes), task updates,
    arbiter decisions, a review now and then, and phase changes."""
    rng = random.Random(seed)
    events: list[Event] = [
        RunStarted(
            goal="Build a command-line todo app with tests and documentation",
            workspace="/home/dev/todo",
            config={"model": "qwen2.5-coder:7b", "max_steps": 100_000, "temperature": 0.2},
            engine_version="0.1.0",
        ),
        PhaseChanged(trigger="start", from_phase="start", to_phase="planning", reason="new run"),
    ]
    files = [f"todo/module_{n}.py" for n in range(120)]
    contents: dict[str, str | None] = {}
    phase = "planning"
    task_no = call_no = 0
    while len(events) < count:
        task_no += 1
        task_id = f"t{task_no}"
        target = rng.choice(files)
        events.append(
            ArbiterDecided(
                action="work_on_task",
                parameters={"task_id": task_id},
                reasoning=_text(rng, 12),
                decided_by="arbiter",
            )
        )
        events.append(
            TaskAdded(
                task_id=task_id,
                title=_text(rng, 6),
                description=_text(rng, 25),
                target_file=target,
                priority=rng.randint(1, 9),
                dependencies=(f"t{task_no - 1}",) if task_no > 1 else (),
            )
        )
        events.append(TaskUpdated(task_id=task_id, status="in_progress", attempt=1))
        if rng.random() < 0.2:
            to_phase = _PHASES[task_no % len(_PHASES)]
            if to_phase != phase:
                events.append(
                    PhaseChanged(
                        trigger="next", from_phase=phase, to_phase=to_phase, reason=_text(rng, 8)
                    )
                )
                phase = to_phase
        for turn in range(rng.randint(4, 12)):
            call_no += 1
            call_id, tool_call = f"m{call_no}", f"c{call_no}"
            delta = (
                (Message(role="user", content=_text(rng, 60)),)
                if turn == 0
                else (Message(role="tool", content=_text(rng, 30), tool_call_id=f"c{call_no - 1}"),)
            )
            events.append(
                ModelRequested(
                    call_id=call_id,
                    role="coder",
                    model="qwen2.5-coder:7b",
                    endpoint="http://127.0.0.1:11434",
                    conversation=f"coder:{task_id}",
                    request_digest=_digest(rng),
                    message_offset=turn * 2,
                    messages=delta,
                    tool_names=("read_file", "write_file", "run_command", "finish"),
                    options={"temperature": 0.2, "num_ctx": 8192},
                )
            )
            events.append(
                ModelResponded(
                    call_id=call_id,
                    content=_text(rng, 40),
                    tool_calls=(
                        ToolCall(id=tool_call, name="write_file", arguments={"path": target}),
                    ),
                    usage=Usage(
                        prompt_tokens=rng.randint(800, 6000), completion_tokens=rng.randint(50, 800)
                    ),
                    done_reason="stop",
                    duration_ms=rng.uniform(500, 20_000),
                    model_identity="sha256:2b0496514337",
                )
            )
            events.append(
                ToolRequested(
                    call_id=tool_call,
                    tool="write_file",
                    arguments={
                        "path": target,
                        "content_ref": _digest(rng),
                        "preview": _text(rng, 15),
                    },
                )
            )
            after = _digest(rng)
            events.append(
                ToolExecuted(
                    call_id=tool_call,
                    tool="write_file",
                    ok=True,
                    result=f"wrote {target}",
                    files_changed=(
                        FileChange(
                            path=target,
                            before=contents.get(target),
                            after=after,
                            size=rng.randint(200, 9000),
                        ),
                    ),
                )
            )
            contents[target] = after
        if rng.random() < 0.3:
            events.append(
                SpecialistConsulted(
                    specialist="reviewer",
                    task_id=task_id,
                    outcome="approved",
                    summary=_text(rng, 20),
                )
            )
        ok = rng.random() < 0.9
        events.append(
            TaskUpdated(
                task_id=task_id,
                status="completed" if ok else "failed",
                attempt=1,
                error="" if ok else _text(rng, 10),
            )
        )
    events = events[: count - 1]
    events.append(RunFinished(status="completed", reason="all tasks done"))
    return events


# -- raw sqlite3 + msgspec ----------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AnyEvent)
_LAST = "SELECT version, hash FROM events WHERE run_id = ? ORDER BY version DESC LIMIT 1"
_INSERT = (
    "INSERT INTO events (run_id, version, type, schema_version, recorded_at, causation, hash, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class RawLog:
    """The baseline: the same work as ``SQLiteEventStore.append``, written by hand."""

    def __init__(self, path: Path) -> None:
        SQLiteEventStore(path).close()  # identical tables, indexes and triggers
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def append(self, run_id: str, events: Sequence[Event], expected: int) -> None:
        payloads = encoded(events)
        recorded_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        last = conn.execute(_LAST, (run_id,)).fetchone()
        version, previous = last if last else (0, "")
        if version != expected:
            conn.execute("ROLLBACK")
            raise RuntimeError(f"expected {expected}, the log is at {version}")
        conn.executemany(_INSERT, hand_chained(run_id, payloads, version, previous, recorded_at))
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def encoded(events: Sequence[Event]) -> list[tuple[str, int, str]]:
    """(type, schema version, JSON text) of each event, as raw code would write them."""
    encode = _ENCODER.encode
    return [(e.__struct_config__.tag, e.schema_version, encode(e).decode()) for e in events]


def hand_chained(
    run_id: str,
    payloads: Sequence[tuple[str, int, str]],
    version: int,
    previous: str,
    recorded_at: str,
) -> list[tuple[Any, ...]]:
    """Rows (run_id, version, type, schema_version, recorded_at, causation, hash, data)
    after ``version``, sha256-chained from ``previous`` by hand."""
    encode = _ENCODER.encode
    rows = []
    for type_, schema_version, data in payloads:
        version += 1
        canonical = encode([run_id, version, type_, schema_version, recorded_at, None, data])
        previous = hashlib.sha256(previous.encode() + canonical).hexdigest()
        rows.append((run_id, version, type_, schema_version, recorded_at, None, previous, data))
    return rows


def raw_rebuild(path: Path, run_id: str) -> dict[str, Any]:
    """SELECT, typed decode, and a minimal fold into plain dicts."""
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT data FROM events WHERE run_id = ? ORDER BY version", (run_id,))
    try:
        return minimal_fold(data for (data,) in rows)
    finally:
        conn.close()


def minimal_fold(payloads: Iterable[str]) -> dict[str, Any]:
    """Typed decode of each payload and a minimal fold into plain dicts."""
    decode = _DECODER.decode
    tasks: dict[str, str] = {}
    files: dict[str, str | None] = {}
    phase = "start"
    tokens = 0
    count = 0
    for data in payloads:
        event = decode(data)
        count += 1
        if isinstance(event, TaskAdded):
            tasks[event.task_id] = "new"
        elif isinstance(event, TaskUpdated):
            tasks[event.task_id] = event.status
        elif isinstance(event, ToolExecuted):
            for change in event.files_changed:
                files[change.path] = change.after
        elif isinstance(event, PhaseChanged):
            phase = event.to_phase
        elif isinstance(event, ModelResponded):
            tokens += event.usage.prompt_tokens + event.usage.completion_tokens
    return {
        "events": count,
        "tasks": len(tasks),
        "files": len(files),
        "phase": phase,
        "tokens": tokens,
    }


def our_rebuild(path: Path, run_id: str) -> Any:
    from projections import project

    with SQLiteEventStore(path) as store:
        return project(store, run_id)


# -- measurements -----------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def single_appends(events: list[Event], workdir: Path, ours: bool) -> Callable[[], None]:
    path = workdir / f"{'ours' if ours else 'raw'}-{time.monotonic_ns()}.db"
    if ours:
        store = SQLiteEventStore(path, synchronous="NORMAL")

        def run() -> None:
            for version, event in enumerate(events):
                store.append(RUN_ID, [event], version)
            store.close()

        return run
    raw = RawLog(path)

    def run_raw() -> None:
        for version, event in enumerate(events):
            raw.append(RUN_ID, [event], version)
        raw.close()

    return run_raw


def batched_appends(events: list[Event], workdir: Path, ours: bool) -> Callable[[], None]:
    path = workdir / f"{'ours' if ours else 'raw'}-batch-{time.monotonic_ns()}.db"
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    target: SQLiteEventStore | RawLog = SQLiteEventStore(path) if ours else RawLog(path)

    def run() -> None:
        version = 0
        for batch in batches:
            target.append(RUN_ID, batch, version)
            version += len(batch)
        target.close()

    return run


def compare(
    name: str, count: int, repeat: int, make: Callable[[bool], Callable[[], object]]
) -> dict[str, float]:
    """Run ours and raw ``repeat`` times each, back to back in alternating order, and
    take the median of the ratios of each pair: a pair runs within a second or two,
    so a slow spell of this shared machine slows both sides of the pair alike."""
    ours: list[float] = []
    raw: list[float] = []
    for i in range(repeat):
        order = (True, False) if i % 2 == 0 else (False, True)
        for is_ours in order:
            seconds = timed(make(is_ours))
            (ours if is_ours else raw).append(count / seconds)
    ratios = [o / r for o, r in zip(ours, raw, strict=True)]
    result = {
        "ours": statistics.median(ours),
        "raw": statistics.median(raw),
        "ratio": statistics.median(ratios),
    }
    target = TARGETS[name]
    verdict = "ok" if result["ratio"] >= target else f"MISSES the {target}x target"
    print(
        f"{name:<15} ours {result['ours']:>10,.0f} ev/s   raw {result['raw']:>10,.0f} ev/s"
        f"   ours/raw {result['ratio']:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        f"  (target >= {target})  {verdict}",
        flush=True,
    )
    return result


def traced_peak(fn: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_rss_kib() -> int:
    """This process image's peak RSS in KiB.

    ru_maxrss is inherited across fork and exec on Linux, so a child started from
    this (large) benchmark process would report the parent's peak; VmHWM is reset
    by exec, so it is used where /proc exists."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1])


def child_peak_rss(kind: str, path: Path) -> tuple[int, int]:
    """Peak RSS (KiB) of a fresh process after its imports and after the rebuild."""
    out = subprocess.run(
        [sys.executable, __file__, "--child-rebuild", kind, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    answer = json.loads(out)
    return answer["before"], answer["after"]


def child_rebuild(kind: str, path: Path) -> None:
    import projections  # noqa: F401  (imports count in "before", not in the rebuild)

    before = peak_rss_kib()
    (our_rebuild if kind == "ours" else raw_rebuild)(path, RUN_ID)
    print(json.dumps({"before": before, "after": peak_rss_kib()}))


def profile(which: str, events: list[Event], rebuild_db: Path | None, workdir: Path) -> None:
    if which == "single":
        fn: Callable[[], object] = single_appends(events, workdir, ours=True)
    elif which == "batch":
        fn = batched_appends(events, workdir, ours=True)
    else:
        assert rebuild_db is not None
        fn = lambda: our_rebuild(rebuild_db, RUN_ID)  # noqa: E731
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).strip_dirs().sort_stats("tottime")
    stats.print_stats(18)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per append benchmark")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement; medians")
    parser.add_argument(
        "--rebuild-events", type=int, default=100_000, help="events in the rebuilt run"
    )
    parser.add_argument(
        "--profile", choices=("single", "batch", "rebuild"), help="cProfile ours instead"
    )
    parser.add_argument("--child-rebuild", nargs=2, metavar=("KIND", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_rebuild:
        child_rebuild(args.child_rebuild[0], Path(args.child_rebuild[1]))
        return 0

    print(
        f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, msgspec {msgspec.__version__};"
        f" {args.events:,} appended events, {args.rebuild_events:,} rebuilt, median of {args.repeat}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        workdir = Path(tmp)
        events = realistic_events(args.events)
        rebuild_db = None
        if args.profile in (None, "rebuild"):
            rebuild_db = workdir / "rebuild.db"
            with SQLiteEventStore(rebuild_db) as store:
                everything = realistic_events(args.rebuild_events, seed=11)
                for i in range(0, len(everything), 1000):
                    store.append(RUN_ID, everything[i : i + 1000], i)
                del everything
        if args.profile:
            profile(args.profile, events, rebuild_db, workdir)
            return 0

        compare(
            "single append",
            len(events),
            args.repeat,
            lambda ours: single_appends(events, workdir, ours),
        )
        compare(
            "batched append",
            len(events),
            args.repeat,
            lambda ours: batched_appends(events, workdir, ours),
        )

        assert rebuild_db is not None
        state = our_rebuild(rebuild_db, RUN_ID)
        check = raw_rebuild(rebuild_db, RUN_ID)
        assert (len(state.pipeline.tasks), len(state.pipeline.files), state.pipeline.phase) == (
            check["tasks"],
            check["files"],
            check["phase"],
        ), "ours and raw disagree about the run"
        del state
        db = rebuild_db

        def rebuild(ours: bool) -> Callable[[], object]:
            return lambda: (our_rebuild if ours else raw_rebuild)(db, RUN_ID)

        compare("rebuild", args.rebuild_events, args.repeat, rebuild)

        ours_peak = traced_peak(lambda: our_rebuild(db, RUN_ID))
        raw_peak = traced_peak(lambda: raw_rebuild(db, RUN_ID))
        ours_rss = child_peak_rss("ours", db)
        raw_rss = child_peak_rss("raw", db)
        mib = 1024 * 1024
        print(
            f"rebuild memory  tracemalloc peak: ours {ours_peak / mib:.1f} MiB, raw {raw_peak / mib:.1f} MiB;"
            f"\n                peak RSS of a process doing only the rebuild: ours {ours_rss[1] / 1024:.1f} MiB"
            f" ({ours_rss[0] / 1024:.1f} after imports), raw {raw_rss[1] / 1024:.1f} MiB"
            f" ({raw_rss[0] / 1024:.1f} after imports)"
        )
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"                ru_maxrss of this whole benchmark process: {maxrss / 1024:.1f} MiB")
        size = db.stat().st_size
        print(
            f"rebuild db      {size / mib:.1f} MiB for {args.rebuild_events:,} events ({size / args.rebuild_events:.0f} B/event)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
