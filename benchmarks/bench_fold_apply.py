"""The fold of one event (``projections.fold.apply``) against the batch fold.

    python benchmarks/bench_fold_apply.py                      # 1,000 realistic events
    python benchmarks/bench_fold_apply.py --db /tmp/p14fold.db --run long-run --repeat 31

A live run and a replay fold every event they append with ``apply``: one persistent
update per event, a new ``RunState`` kept next to the old one. A rebuild folds a
whole run into one transient builder (``fold``). Both run the same steps; this
measures what the persistent path costs on top, in CPU time (``time.process_time``,
medians of ``--repeat``, the two taken in turns), as microseconds per event and
as the ratio apply/fold. The events are ``bench_store.realistic_events`` or, with
``--db``, a run read from a log (``bench_replay_audit.py --db`` records its long
run there). The per-type rows say where ``apply``'s time goes.

This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for where in (ROOT, ROOT / "benchmarks"):
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))

from bench_store import realistic_events  # noqa: E402
from msgspec.structs import replace  # noqa: E402

from events import MemoryEventStore  # noqa: E402
from events.store import RecordedEvent  # noqa: E402
from projections.fold import RunState, apply, fold  # noqa: E402
from projections.sequence import Appended  # noqa: E402


def recorded_events(db: str | None, run_id: str, count: int) -> list[RecordedEvent]:
    if db is None:
        store = MemoryEventStore()
        store.append(run_id, realistic_events(count), expected_version=0)
        return list(store.read(run_id))
    from engine.storage import open_store

    with open_store(db) as log:
        return list(log.read(run_id))


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000, help="realistic events to fold")
    parser.add_argument("--db", help="fold a run of this log instead")
    parser.add_argument("--run", default="r", help="the run's id (with --db)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    events = recorded_events(args.db, args.run, args.events)
    start = RunState(run_id=args.run)

    def one_by_one() -> RunState:
        state = start
        for event in events:
            state = apply(state, event)
        return state

    def at_once() -> RunState:
        return fold(events, start)

    if one_by_one() != at_once():
        raise SystemExit("apply and fold disagree: not measured")
    applied, folded = [], []
    for _ in range(args.repeat):  # in turns, so a busy moment falls on both alike
        applied.append(cpu_seconds(one_by_one))
        folded.append(cpu_seconds(at_once))
    per_apply = statistics.median(applied) / len(events) * 1e6
    per_fold = statistics.median(folded) / len(events) * 1e6
    print(f"{len(events):,} events, CPU time, median of {args.repeat}")
    print(f"apply (one event, persistent) {per_apply:6.2f} us/event")
    print(
        f"fold (batch, transient)       {per_fold:6.2f} us/event   apply/fold {per_apply / per_fold:.2f}"
    )

    # Where apply's time goes: each event applied to the state before it, by type
    # (wall clock per event, the cost of reading the clock taken off).
    states = [start]
    for event in events:
        states.append(apply(states[-1], event))
    pairs = [
        # each state with a history of its own, so that appending to it is the
        # newest version's append (an older one copies its prefix)
        (replace(before, history=Appended()), event)
        for before, event in zip(states, events, strict=False)
    ]
    clock = time.perf_counter_ns
    kinds = Counter(type(e.data).__name__ for e in events)
    spent: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        reading = min(-clock() + clock() for _ in range(1000))
        totals: Counter[str] = Counter()
        for state, event in pairs:
            began = clock()
            apply(state, event)
            totals[type(event.data).__name__] += clock() - began - reading
        for kind, nanoseconds in totals.items():
            spent[kind].append(nanoseconds)
    shares = {kind: statistics.median(spent[kind]) for kind in kinds}
    whole = sum(shares.values())
    print(f"\n{'event type':<22}{'events':>8}{'us/event':>10}{'share':>8}")
    for kind, count in kinds.most_common():
        share = shares[kind]
        print(f"{kind:<22}{count:>8}{share / count / 1000:>10.2f}{share / whole:>8.0%}")


if __name__ == "__main__":
    main()
