"""Orchestrated against rules, side by side: what the arbiter costs and what it buys.

    python benchmarks/bench_modes.py                 # every goal, both modes, 5 repetitions
    python benchmarks/bench_modes.py --quick         # 2 repetitions: about a minute
    python benchmarks/bench_modes.py --repeat 7 --goal demo
    python benchmarks/bench_modes.py --temperature 0 # the request cache answers repeats

The same goals run in ``orchestrated`` and in ``rules`` mode against
``ScriptedModelServer`` in this process: the demo's goal (``engine.runs.demo``), the calc and
the two-file goals (``engine.misbehaving.GoalModels``), and the calc goal with three
misbehaving-model policies. One row per goal and mode:

- completed: runs that completed, of ``--repeat``;
- seconds: median wall time of a run; peak MiB: tracemalloc's peak during one more run
  of the goal, traced apart from the timed ones (tracing doubles the engine's time);
- arbiter / specialist calls: model requests that offered the arbiter's tools, and the
  others; cached: requests whose canonical digest was already answered in the run and
  that were answered from the log; dup: such requests that reached the server anyway
  (the request cache serves only temperature-0 requests);
- prompt / completion tokens (from the projection);
- engine ms/call: (wall time - time inside ``ModelClient.chat`` and the run's other
  questions to the model server (the preflight, context discovery) - time inside
  command subprocesses) / model calls, measured by timing those seams in this process;
  cpu ms/call: the same with the CPU time of the engine's thread (``time.thread_time``),
  which a loaded machine inflates far less than the wall time (the in-process model
  server's threads are not counted).

Then the orchestrated/rules ratio of each column, per goal, and the median engine ms per
model call (wall and CPU) over every timed run. The scripted arbiter takes the move the
rules suggest, so both modes reach the same files: the ratio is the arbiter's cost in
calls, tokens and engine time. Not part of the test run.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.agent import runner  # noqa: E402
from engine.agent.runner import start_run  # noqa: E402
from engine.config import Settings, load_settings, settings_from_mapping  # noqa: E402
from engine.misbehaving import CALC, TWO_FILES, GoalModels, Misbehaving  # noqa: E402
from engine.model.client import ModelClient  # noqa: E402
from engine.model.roles import ROLE_NAMES  # noqa: E402
from engine.runs.demo import GOAL as DEMO_GOAL  # noqa: E402
from engine.runs.demo import DemoModels  # noqa: E402
from engine.testing import ScriptedModelServer, ScriptedRequest  # noqa: E402
from engine.tools.confine import Confinement  # noqa: E402
from events import MemoryEventStore  # noqa: E402
from events.schema import ModelRequested, ModelResponded  # noqa: E402
from events.store import EventStore  # noqa: E402
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
    """Time spent inside the model client and inside command subprocesses: wall
    seconds, and CPU seconds of the engine's thread (``time.thread_time``)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        chat, run = ModelClient.chat, Confinement.run

        def timed_chat(client: ModelClient, *args: Any, **kwargs: Any) -> Any:
            return self._timed(chat, client, *args, **kwargs)

        def timed_run(confinement: Confinement, *args: Any, **kwargs: Any) -> Any:
            return self._timed(run, confinement, *args, **kwargs)

        ModelClient.chat = timed_chat  # type: ignore[method-assign]
        Confinement.run = timed_run  # type: ignore[method-assign]
        # the other questions a run asks its model server, once per run: the preflight
        # (is the model served?) and context discovery (how large is its window?)
        for name in ("preflight", "learn_contexts"):
            asked = getattr(runner, name)

            def timed_ask(*args: Any, _asked: Any = asked, **kwargs: Any) -> Any:
                return self._timed(_asked, *args, **kwargs)

            setattr(runner, name, timed_ask)

    def _timed(self, seam: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return seam(*args, **kwargs)
        finally:
            self.cpu += time.thread_time() - cpu
            self.wall += time.perf_counter() - wall

    def reset(self) -> None:
        self.wall = self.cpu = 0.0


def duplicates(store: EventStore, run_id: str) -> tuple[int, int]:
    """Requests whose canonical digest was already answered earlier in the run: how
    many were answered from the log (cached) and how many reached the server."""
    answered: dict[str, str] = {}  # request digest -> the call that answered it
    digest_of: dict[str, str] = {}
    repeats: set[str] = set()
    cached = 0
    for recorded in store.read(run_id):
        event = recorded.data
        if isinstance(event, ModelRequested):
            digest_of[event.call_id] = event.request_digest
            if event.request_digest in answered:
                repeats.add(event.call_id)
        elif isinstance(event, ModelResponded):
            cached += bool(event.cached_from)
            answered.setdefault(digest_of[event.call_id], event.call_id)
    return cached, len(repeats) - cached


def one_run(
    goal: str,
    script: Any,
    mode: str,
    seams: Seams,
    *,
    traced: bool = False,
    base: Settings | None = None,
) -> dict[str, float]:
    """One run of ``goal``; with ``traced``, under tracemalloc for its peak memory
    (and then its times are the tracer's as much as the engine's)."""
    arbiter_calls = 0

    def counting(request: ScriptedRequest) -> Any:
        nonlocal arbiter_calls
        offered = {t["function"]["name"] for t in (request.body or {}).get("tools", [])}
        arbiter_calls += "consult_coding_specialist" in offered
        return script(request)

    store = MemoryEventStore()
    peak = 0
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedModelServer(counting, models=["m"]) as server,
        httpx.Client() as http,
    ):
        settings = load_settings(
            env={},
            base=base,
            overrides={"model_url": server.url, "api": "ollama", "model": "m", "mode": mode},
        )
        seams.reset()
        if traced:
            tracemalloc.start()
        started, cpu = time.perf_counter(), time.thread_time()
        log = start_run(store, goal=goal, workspace=Path(tmp), settings=settings, http=http)
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        served = len(server.chat_requests)
    state = project(store, log.run_id)
    usage = state.orchestration.usage_by_role.values()
    cached, dup = duplicates(store, log.run_id)
    calls = served + sum(u.cached for u in usage)
    return {
        "completed": float(state.pipeline.status == "completed"),
        "seconds": wall,
        "peak_mib": peak / 2**20,
        "arbiter_calls": arbiter_calls,
        "specialist_calls": served - arbiter_calls,
        "cached": cached,
        "dup": dup,
        "prompt_tokens": sum(u.prompt_tokens for u in usage),
        "completion_tokens": sum(u.completion_tokens for u in usage),
        "engine_ms": (wall - seams.wall) * 1000 / max(calls, 1),
        "engine_cpu_ms": (cpu - seams.cpu) * 1000 / max(calls, 1),
    }


COLUMNS = (
    ("completed", "{:>4.0f}"),
    ("seconds", "{:>7.2f}"),
    ("peak_mib", "{:>7.1f}"),
    ("arbiter_calls", "{:>7.0f}"),
    ("specialist_calls", "{:>10.0f}"),
    ("cached", "{:>6.0f}"),
    ("dup", "{:>3.0f}"),
    ("prompt_tokens", "{:>8.0f}"),
    ("completion_tokens", "{:>10.0f}"),
    ("engine_ms", "{:>9.2f}"),
    ("engine_cpu_ms", "{:>7.2f}"),
)
HEADERS = ("done", "seconds", "peakMiB", "arbiter", "specialist", "cached", "dup", "prompt",
           "completion", "engine ms", "cpu ms")  # fmt: skip
WIDTHS = (4, 7, 7, 7, 10, 6, 3, 8, 10, 9, 7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per goal and mode")
    parser.add_argument(
        "--quick", action="store_true", help="2 timed runs per goal and mode (under two minutes)"
    )
    parser.add_argument("--goal", action="append", choices=list(GOALS), help="only this goal")
    parser.add_argument(
        "--temperature",
        type=float,
        help="every role's temperature (default: the roles' own, 0.1-0.3); at 0 the "
        "request cache answers a repeated request from the log",
    )
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    base = None
    if args.temperature is not None:
        same = {"temperature": args.temperature}
        base = settings_from_mapping({"models": dict.fromkeys(ROLE_NAMES, same)})
    warnings.simplefilter("ignore", DeprecationWarning)  # rules mode says it is deprecated
    seams = Seams()
    print(
        f"{'goal':<23} {'mode':<12} "
        + " ".join(f"{h:>{w}}" for h, w in zip(HEADERS, WIDTHS, strict=True))
    )
    every_run: list[float] = []
    every_cpu: list[float] = []
    for name in args.goal or list(GOALS):
        goal, make = GOALS[name]
        medians: dict[str, dict[str, float]] = {}
        for mode in ("orchestrated", "rules"):
            traced = one_run(goal, make(), mode, seams, traced=True, base=base)
            runs = [one_run(goal, make(), mode, seams, base=base) for _ in range(repeat)]
            every_run += [r["engine_ms"] for r in runs]
            every_cpu += [r["engine_cpu_ms"] for r in runs]
            medians[mode] = {
                key: (sum(r[key] for r in runs) if key == "completed" else
                      statistics.median(r[key] for r in runs))
                for key, _ in COLUMNS
            }  # fmt: skip
            medians[mode]["peak_mib"] = traced["peak_mib"]
            cells = " ".join(fmt.format(medians[mode][key]) for key, fmt in COLUMNS)
            print(f"{name:<23} {mode:<12} {cells}")
        ratio = " ".join(
            f"{medians['orchestrated'][k] / medians['rules'][k]:>{w}.2f}"
            if medians["rules"][k]
            else f"{'-':>{w}}"
            for (k, _), w in zip(COLUMNS, WIDTHS, strict=True)
        )
        print(f"{name:<23} {'orch/rules':<12} {ratio}")
    for what, values in (("engine ms", every_run), ("engine cpu ms", every_cpu)):
        print(
            f"{what} per model call, median of {len(values)} timed runs: "
            f"{statistics.median(values):.2f} (min {min(values):.2f}, "
            f"max {max(values):.2f}); target < 1"
        )


if __name__ == "__main__":
    main()
