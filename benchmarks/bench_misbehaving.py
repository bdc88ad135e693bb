"""How the engine copes with the known failure modes of local models.

    python benchmarks/bench_misbehaving.py                  # every policy, both goals
    python benchmarks/bench_misbehaving.py --goal calc --policy prose_only

For each policy of ``engine.misbehaving`` (a scripted model that misbehaves once per
conversation, then does the right thing) and each goal, one run against the scripted
model server: whether it completed, the coordinator steps, the model calls, how many
answers misbehaved, and the seconds. The baseline is the first row of each goal: the
same competent model that never misbehaves (``well_behaved``); the ``calls`` ratio is
what the misbehaviour cost in model calls. Not part of the test run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.agent.runner import start_run  # noqa: E402
from engine.config import load_settings  # noqa: E402
from engine.misbehaving import GOALS, POLICIES, GoalModels, Misbehaving  # noqa: E402
from engine.testing import ScriptedModelServer  # noqa: E402
from events import MemoryEventStore  # noqa: E402
from projections import project  # noqa: E402


def one_run(model: GoalModels | Misbehaving, goal_text: str) -> tuple[str, int, int, float]:
    store = MemoryEventStore()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ScriptedModelServer(model, models=["m"]) as server,
        httpx.Client() as http,
    ):
        settings = load_settings(
            env={}, overrides={"model_url": server.url, "api": "ollama", "model": "m"}
        )
        started = time.perf_counter()
        log = start_run(store, goal=goal_text, workspace=Path(tmp), settings=settings, http=http)
        seconds = time.perf_counter() - started
        calls = len(server.chat_requests)
    state = project(store, log.run_id).pipeline
    return state.status, state.steps, calls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--goal", action="append", help="only this goal (repeatable)")
    parser.add_argument("--policy", action="append", help="only this policy (repeatable)")
    args = parser.parse_args()
    goals = [g for g in GOALS if not args.goal or g.name in args.goal]
    policies = [p for p in POLICIES if not args.policy or p in args.policy]
    print(f"{'goal':<10} {'policy':<26} {'status':<10} {'steps':>5} {'calls':>5} "
          f"{'x base':>6} {'misbehaved':>10} {'seconds':>7}")  # fmt: skip
    for goal in goals:
        status, steps, base, seconds = one_run(GoalModels(goal), goal.goal)
        print(f"{goal.name:<10} {'well_behaved':<26} {status:<10} {steps:>5} {base:>5} "
              f"{1.0:>6.2f} {0:>10} {seconds:>7.1f}")  # fmt: skip
        for policy in policies:
            model = Misbehaving(policy, goal)
            status, steps, calls, seconds = one_run(model, goal.goal)
            print(f"{goal.name:<10} {policy:<26} {status:<10} {steps:>5} {calls:>5} "
                  f"{calls / base:>6.2f} {model.count:>10} {seconds:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
