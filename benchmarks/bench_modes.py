"""Orchestrated against rules, side by side: what the arbiter costs and what it buys.

    python benchmarks/bench_modes.py                 # every goal, both modes, 3 repetitions
    python benchmarks/bench_modes.py --repeat 5 --goal demo

The same goals run in ``orchestrated`` and in ``rules`` mode against
``ScriptedModelServer`` in this process: the demo's goal (``engine.demo``), the calc and
the two-file goals (``engine.misbehaving.GoalModels``), and the calc goal with three
misbehaving-model policies. One row per goal and mode:

- completed: runs that completed, of ``--repeat``;
- seconds: median wall time of a run; peak MiB: tracemalloc's peak during a run;
- arbiter / specialist calls: model requests that offered the arbiter's tools, and the
  others; cached: answers taken from the log instead of the server;
- prompt / completion tokens (from the projection);
- engine ms/call: (wall time - time inside ``ModelClient.chat`` - time inside command
  subprocesses) / model calls, measured by timing those two seams in this process.

Then the orchestrated/rules ratio of each column, per goal. The scripted arbiter takes the
move the rules suggest, so both modes reach the same files: the ratio is the arbiter's
cost in calls, tokens and engine time. Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.config import load_settings  # noqa: E402
from engine.demo import GOAL as DEMO_GOAL  # noqa: E402
from engine.demo import DemoModels  # noqa: E402
from engine.misbehaving import CALC, TWO_FILES, GoalModels, Misbehaving  # noqa: E402
from engine.model.client import ModelClient  # noqa: E402
from engine.runner import start_run  # noqa: E402
from engine.testing import ScriptedModelServer, ScriptedRequest  # noqa: E402
from engine.tools.confine import Confinement  # noqa: E402
from events import MemoryEventStore  # noqa: E402
from projections import project  # noqa: E402

GOALS: dict[str, tuple[str, Callable[[], Any]]] = {
    "demo": (DEMO_GOAL, DemoModels),
    "calc": (CALC.goal, lambda: GoalModels(CALC)),
    "two-files": (TWO_FILES.goal, lambda: GoalModels(TWO_FILES)),
    "calc+prose_only": (CALC.goal, lambda: Misbehaving("prose_only", CALC)),
    "calc+hallucinated_tool": (CALC.goal, lambda: Misbehaving("hallucinated_tool", CALC)),
    "calc+truncated_json": (CALC.goal, lambda: Misbehaving("truncated_json", CALC)),
}


class Seams:
    """Seconds spent inside the model client and inside command subprocesses."""

    def __init__(self) -> None:
        self.model = 0.0
        self.tools = 0.0
        chat, run = ModelClient.chat, Confinement.run

        def timed_chat(client: ModelClient, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return chat(client, *args, **kwargs)
            finally:
                self.model += time.perf_counter() - started

        def timed_run(confinement: Confinement, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return run(confinement, *args, **kwargs)
            finally:
                self.tools += time.perf_counter() - started

        ModelClient.chat = timed_chat  # type: ignore[method-assign]
        Confinement.run = timed_run  # type: ignore[method-assign]

    def reset(self) -> None:
        self.model = self.tools = 0.0


@dataclass
class Row:
    completed: int = 0
    seconds: list[float] | None = None
    peak_mib: list[float] | None = None
    arbiter_calls: int = 0
    specialist_calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_ms: list[float] | None = None


def one_run(goal: str, script: Any, mode: str, seams: Seams) -> dict[str, float]:
    arbiter_calls = 0

    def counting(request: ScriptedRequest) -> Any:
        nonlocal arbiter_calls
        offered = {t["function"]["name"] for t in (request.body or {}).get("tools", [])}
        arbiter_calls += "consult_coding_specialist" in offered
        return script(request)

    store = MemoryEventStore()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedModelServer(counting, models=["m"]) as server,
        httpx.Client() as http,
    ):
        settings = load_settings(
            env={},
            overrides={"model_url": server.url, "api": "ollama", "model": "m", "mode": mode},
        )
        seams.reset()
        tracemalloc.start()
        started = time.perf_counter()
        log = start_run(store, goal=goal, workspace=Path(tmp), settings=settings, http=http)
        wall = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        served = len(server.chat_requests)
    state = project(store, log.run_id)
    usage = state.orchestration.usage_by_role.values()
    calls = served + sum(u.cached for u in usage)
    return {
        "completed": float(state.pipeline.status == "completed"),
        "seconds": wall,
        "peak_mib": peak / 2**20,
        "arbiter_calls": arbiter_calls,
        "specialist_calls": served - arbiter_calls,
        "cached": sum(u.cached for u in usage),
        "prompt_tokens": sum(u.prompt_tokens for u in usage),
        "completion_tokens": sum(u.completion_tokens for u in usage),
        "engine_ms": (wall - seams.model - seams.tools) * 1000 / max(calls, 1),
    }


COLUMNS = (
    ("completed", "{:>4.0f}"),
    ("seconds", "{:>7.2f}"),
    ("peak_mib", "{:>7.1f}"),
    ("arbiter_calls", "{:>7.0f}"),
    ("specialist_calls", "{:>10.0f}"),
    ("cached", "{:>6.0f}"),
    ("prompt_tokens", "{:>8.0f}"),
    ("completion_tokens", "{:>10.0f}"),
    ("engine_ms", "{:>9.2f}"),
)
HEADERS = ("done", "seconds", "peakMiB", "arbiter", "specialist", "cached", "prompt",
           "completion", "engine ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per goal and mode")
    parser.add_argument("--goal", action="append", choices=list(GOALS), help="only this goal")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # rules mode says it is deprecated
    seams = Seams()
    widths = [4, 7, 7, 7, 10, 6, 8, 10, 9]
    print(
        f"{'goal':<23} {'mode':<12} "
        + " ".join(f"{h:>{w}}" for h, w in zip(HEADERS, widths, strict=True))
    )
    for name in args.goal or list(GOALS):
        goal, make = GOALS[name]
        medians: dict[str, dict[str, float]] = {}
        for mode in ("orchestrated", "rules"):
            runs = [one_run(goal, make(), mode, seams) for _ in range(args.repeat)]
            medians[mode] = {
                key: (sum(r[key] for r in runs) if key == "completed" else
                      statistics.median(r[key] for r in runs))
                for key, _ in COLUMNS
            }  # fmt: skip
            cells = " ".join(fmt.format(medians[mode][key]) for key, fmt in COLUMNS)
            print(f"{name:<23} {mode:<12} {cells}")
        ratio = " ".join(
            f"{medians['orchestrated'][k] / medians['rules'][k]:>{w}.2f}"
            if medians["rules"][k]
            else f"{'-':>{w}}"
            for (k, _), w in zip(COLUMNS, widths, strict=True)
        )
        print(f"{name:<23} {'orch/rules':<12} {ratio}")


if __name__ == "__main__":
    main()
