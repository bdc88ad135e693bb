"""The CPU the arbiter's own work costs a recorded replay of the long run:
``engine.agent.arbiter.decide`` less its model call (the rules' step, the prompt, the
validation of the answer), with what it works out once per task, per remembered
decision and per version of the tasks kept from step to step, against the same
replay with each step's state handed over in collections of its own (so that
nothing worked out at an earlier step is found again), measured in turn in one run.

    python benchmarks/bench_arbiter.py                  # long run of 30 tasks
    python benchmarks/bench_arbiter.py --repeat 41

The long run is ``bench_replay_audit``'s, recorded against a scripted server into a
temporary log. Medians of ``--repeat``; CPU time (``time.process_time``); the fresh
collections are made outside the timed part. This is a script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_replay_audit import record_long_run  # noqa: E402
from engine.agent import arbiter  # noqa: E402
from engine.model import ModelReply, RecordingModel  # noqa: E402
from engine.runs.replay import replay  # noqa: E402
from engine.storage import open_store  # noqa: E402
from projections import RunState  # noqa: E402
from projections.sequence import Appended, PersistentMap  # noqa: E402

clock = time.process_time
replace = msgspec.structs.replace


def fresh(state: RunState) -> RunState:
    """``state`` over collections of its own: nothing worked out for it yet."""
    p, o = state.pipeline, state.orchestration
    return replace(
        state,
        pipeline=replace(
            p, tasks=PersistentMap(p.tasks.items()), files=PersistentMap(p.files.items())
        ),
        orchestration=replace(
            o, decisions=Appended(o.decisions), consultations=Appended(o.consultations)
        ),
    )


class Meter:
    """CPU time inside ``arbiter.decide``, less the time inside its model call."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.decisions = 0
        self.fresh = False

    @contextmanager
    def installed(self) -> Iterator[Meter]:
        decide, chat = arbiter.decide, RecordingModel.chat
        meter = self

        def timed_decide(state: RunState, *args: Any, **kwargs: Any) -> arbiter.Verdict:
            if meter.fresh:
                state = fresh(state)
            start = clock()
            try:
                return decide(state, *args, **kwargs)
            finally:
                meter.spent += clock() - start
                meter.decisions += 1

        def timed_chat(self: RecordingModel, role: str, *args: Any, **kwargs: Any) -> ModelReply:
            start = clock()
            try:
                return chat(self, role, *args, **kwargs)
            finally:
                if role == arbiter.ROLE:
                    meter.spent -= clock() - start

        arbiter.decide = timed_decide  # type: ignore[assignment]
        RecordingModel.chat = timed_chat  # type: ignore[method-assign]
        try:
            yield self
        finally:
            arbiter.decide = decide  # type: ignore[assignment]
            RecordingModel.chat = chat  # type: ignore[method-assign]


def arbiter_work(db: Path, run_id: str, repeat: int) -> None:
    kept: list[float] = []
    unkept: list[float] = []
    with closing(open_store(db)) as store, Meter().installed() as meter:
        for _ in range(3):  # warm
            replay(store, run_id, tools="recorded")
        for _ in range(repeat):
            for fresh_states, into in ((False, kept), (True, unkept)):
                meter.fresh, meter.spent, meter.decisions = fresh_states, 0.0, 0
                assert replay(store, run_id, tools="recorded").identical
                into.append(meter.spent)
    steps = meter.decisions
    mine, baseline = statistics.median(kept), statistics.median(unkept)
    print(
        f"the arbiter's own work in a replay of {run_id} ({steps} steps): "
        f"{mine * 1e3:.2f} ms ({mine / steps * 1e6:.0f} us a step); on fresh states "
        f"{baseline * 1e3:.2f} ms; ratio {mine / baseline:.2f}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30, help="tasks in the long run")
    parser.add_argument("--repeat", type=int, default=21, help="replays of each kind")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-arbiter-") as tmp:
        db = Path(tmp) / "long.db"
        run_id = record_long_run(db, Path(tmp) / "ws", args.tasks, b"")
        arbiter_work(db, run_id, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
