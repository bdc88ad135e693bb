"""The CPU one model call costs the recorder (``RecordingModel.chat``, less the
log's appends: the fold and the store are measured elsewhere), against the same
calls made by a recorder that works out every request whole, as each did before
``engine.model.canonical.ConversationCache``, measured in the same run.

    python benchmarks/bench_model_calls.py                      # long run of 30 tasks
    python benchmarks/bench_model_calls.py --turns 60 --repeat 31

1. Replay: the long run of ``bench_replay_audit`` (recorded against a scripted
   server into a temporary log) replayed with ``tools="recorded"``: µs per model
   call and the calls' share of the replay's CPU.
2. One long conversation: ``--turns`` turns of a task whose every turn adds an
   answer with a tool call and a tool result of about 2 KB, asked through a
   recorder over an in-memory log with a client that answers at once: µs for the
   last turn's call, where the whole-request recorder encodes, hashes and stores
   the whole conversation again.

Medians of ``--repeat``, the two recorders measured in turn; CPU time (``time.process_time``). This is a script, not
a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.bench_replay_audit import record_long_run  # noqa: E402
from engine.agent.runlog import RunLog  # noqa: E402
from engine.model import ModelClient, ModelReply, RecordingModel, RoleConfig, Roles  # noqa: E402
from engine.model.canonical import ConversationCache  # noqa: E402
from engine.runs.replay import replay  # noqa: E402
from engine.storage import open_store  # noqa: E402
from events import MemoryEventStore, Message, RunStarted, ToolCall  # noqa: E402

clock = time.process_time


class Meter:
    """CPU time inside ``RecordingModel.chat``, less the time inside the log's appends."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.calls = 0
        self._inside = False

    @contextmanager
    def installed(self) -> Iterator[Meter]:
        chat, append = RecordingModel.chat, RunLog.append
        meter = self

        def timed_chat(self: RecordingModel, *args: Any, **kwargs: Any) -> ModelReply:
            start = clock()
            meter._inside = True
            try:
                return chat(self, *args, **kwargs)
            finally:
                meter._inside = False
                meter.spent += clock() - start
                meter.calls += 1

        def timed_append(self: RunLog, *args: Any, **kwargs: Any) -> Any:
            if not meter._inside:
                return append(self, *args, **kwargs)
            start = clock()
            try:
                return append(self, *args, **kwargs)
            finally:
                meter.spent -= clock() - start

        RecordingModel.chat = timed_chat  # type: ignore[method-assign]
        RunLog.append = timed_append  # type: ignore[method-assign]
        try:
            yield self
        finally:
            RecordingModel.chat, RunLog.append = chat, append  # type: ignore[method-assign]

    def reset(self) -> None:
        self.spent, self.calls = 0.0, 0


@contextmanager
def whole_requests() -> Iterator[None]:
    """Recorders that keep nothing of a conversation between its requests."""
    conversation = RecordingModel._conversation

    def fresh(self: RecordingModel, name: str) -> ConversationCache:
        return ConversationCache(limit=self.inline_limit)

    RecordingModel._conversation = fresh  # type: ignore[method-assign]
    try:
        yield
    finally:
        RecordingModel._conversation = conversation  # type: ignore[method-assign]


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


def against_whole(repeat: int, measure: Callable[[], float]) -> str:
    """``measure`` as the recorder is and as a whole-request recorder, medians of
    the two measured in turn (so that a busy spell of the machine hits both)."""
    kept: list[float] = []
    fresh: list[float] = []
    for _ in range(repeat):
        kept.append(measure())
        with whole_requests():
            fresh.append(measure())
    cached, whole = statistics.median(kept), statistics.median(fresh)
    return (
        f"{cached * 1e6:6.1f} us, whole requests {whole * 1e6:6.1f} us, ratio {cached / whole:.2f}"
    )


def replay_calls(db: Path, run_id: str, repeat: int) -> None:
    with closing(open_store(db)) as store, Meter().installed() as meter:
        replay(store, run_id, tools="recorded")  # warm

        def per_call() -> float:
            meter.reset()
            replay(store, run_id, tools="recorded")
            return meter.spent / meter.calls

        def share() -> float:
            meter.reset()
            start = clock()
            replay(store, run_id, tools="recorded")
            return meter.spent / (clock() - start)

        calls = meter.calls
        compared = against_whole(repeat, per_call)
        of_replay = median_of(repeat, share)
    print(
        f"replay of {run_id}, per model call ({calls} calls): {compared};"
        f" the calls take {of_replay:.0%} of the replay's CPU",
        flush=True,
    )


class Answering(ModelClient):
    """Answers every request at once with a tool call."""

    def chat(self, endpoints: Any, messages: Any, *args: Any, **kwargs: Any) -> ModelReply:
        call = ToolCall(id="c", name="read_file", arguments={"path": "src/app.py"})
        return ModelReply(tool_calls=(call,))


def long_conversation(turns: int, repeat: int) -> None:
    result = "def handler(request):\n    return respond(request)\n" * 40  # ~2 KB
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
    roles = Roles(coding=RoleConfig(model="m", num_ctx=1_000_000))
    call = ToolCall(id="c", name="read_file", arguments={"path": "src/app.py"})

    def last_turn() -> float:
        with httpx.Client() as http, Meter().installed() as meter:
            log = RunLog.create(MemoryEventStore(), "r", RunStarted(goal="g", workspace="/w"))
            model = RecordingModel(Answering(http), log, roles)
            history = [
                Message(role="system", content="You are a careful developer."),
                Message(role="user", content="Make every handler respond."),
            ]
            for _ in range(turns):
                meter.reset()
                model.chat("coding", history, tools, conversation="task:t1")
                history += [
                    Message(role="assistant", tool_calls=(call,)),
                    Message(role="tool", content=result, tool_call_id="c", name="read_file"),
                ]
            return meter.spent

    compared = against_whole(repeat, last_turn)
    print(
        f"turn {turns} of one conversation ({2 + 2 * (turns - 1)} messages): {compared}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30, help="tasks in the replayed run")
    parser.add_argument("--turns", type=int, default=40, help="turns of the long conversation")
    parser.add_argument("--repeat", type=int, default=15, help="runs per measurement; medians")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}; median of {args.repeat}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-model-calls-") as tmp:
        db = Path(tmp) / "events.db"
        run_id = record_long_run(db, Path(tmp) / "ws", args.tasks, b"")
        replay_calls(db, run_id, args.repeat)
    long_conversation(args.turns, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
