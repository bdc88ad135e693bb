"""Live progress: on a terminal, a live model line (role, tokens so far, seconds) and a
bar of steps above which the progress lines scroll; piped, the plain lines only."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

from rich.console import Console
from test_engine_run import OneFile, PlansOneTask, settings_for
from waiting import Gate, reaped
from web_runs import AUTONOMY

from engine.agent.progress import LiveDisplay, run_display
from engine.agent.runner import start_run
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import MemoryEventStore
from events.schema import (
    ArbiterDecided,
    Event,
    ModelFailed,
    ModelRequested,
    ModelResponded,
)
from events.store import RecordedEvent


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorded(event: Event, version: int = 1) -> RecordedEvent:
    return RecordedEvent(version, "r", version, "", 1, "", None, "", event)


def rendered(display: LiveDisplay) -> str:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(display)
    return out.getvalue()


def test_the_model_line_follows_a_call_its_streamed_pieces_and_its_attempts() -> None:
    clock = Clock()
    display = LiveDisplay(Console(file=io.StringIO()), max_steps=60, clock=clock)
    assert display.model_line() == ""
    display.event(
        recorded(ModelRequested(call_id="r/m1", role="coding", model="q:7b", request_digest=""))
    )
    assert display.model_line() == "coding (q:7b) · 0 tokens · 0.0 s"
    display.streamed(7)
    clock.now += 2.5
    assert display.model_line() == "coding (q:7b) · 7 tokens · 2.5 s"
    assert "coding (q:7b) · 7 tokens · 2.5 s" in rendered(display)
    display.event(recorded(ModelFailed(call_id="r/m1", kind="timeout", attempt=1)))
    assert display.model_line() == "coding (q:7b) · 0 tokens · 2.5 s"  # the next attempt
    display.event(recorded(ModelResponded(call_id="r/m1")))
    assert display.model_line() == ""
    display.streamed(3)  # a piece after the answer changes nothing
    assert display.model_line() == ""


def test_the_bar_counts_steps_from_where_the_run_is() -> None:
    display = LiveDisplay(Console(file=io.StringIO()), max_steps=60, steps=5)
    for _ in range(3):
        display.event(recorded(ArbiterDecided(action="plan")))
    assert re.search(r"steps .* 8/60", rendered(display))


def test_the_bar_never_counts_past_its_end() -> None:
    """A run resumed under a lower step limit than it has taken, or the step that
    stops a run at its limit, showed "steps ... 4/3"."""
    display = LiveDisplay(Console(file=io.StringIO()), max_steps=3, steps=2)
    for _ in range(2):
        display.event(recorded(ArbiterDecided(action="plan")))
    assert re.search(r"steps .* 4/4", rendered(display))
    resumed = LiveDisplay(Console(file=io.StringIO()), max_steps=5, steps=10)
    assert re.search(r"steps .* 10/10", rendered(resumed))


def test_piped_output_is_plain_lines() -> None:
    lines: list[str] = []
    with run_display(60, plain=lines.append, stream=io.StringIO()) as show:
        show("step   1 | planning")
    assert lines == ["step   1 | planning"]


def read_until(fd: int, seen: bytearray, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """Read the terminal until ``pattern`` shows in its text (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(pattern, seen.decode("utf-8", "replace"))
        if found:
            return found
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {pattern!r} in:\n{seen.decode()!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                chunk = b""
            assert chunk, f"the terminal closed before {pattern!r}:\n{seen.decode()!r}"
            seen += chunk


def test_a_real_run_on_a_terminal_shows_the_live_line_and_the_bar(tmp_path: Path) -> None:
    gate = Gate()
    gate.models = OneFile()
    with ScriptedModelServer(gate, models=["m"]) as server:
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            [
                *(AUTONOMY, "run", "build it", "--workspace", str(tmp_path / "ws")),
                *("--db", str(tmp_path / "e.db"), "--run-id", "r", "--max-steps", "20"),
                *("--model-url", server.url, "--model", "m"),
            ],
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"},
        )
        os.close(terminal)
        seen = bytearray()
        with reaped(process):
            try:
                # the first model call is held: the live line counts its seconds
                read_until(controller, seen, r"\((m)\) · 0 tokens · \d+\.\d s")
                read_until(controller, seen, r"steps .*\d+/20")
                gate.opened.set()
                read_until(controller, seen, r"run r: completed")
                assert process.wait(timeout=60) == 0
            finally:
                gate.opened.set()
                os.close(controller)
    text = seen.decode("utf-8", "replace")
    assert "step   1 |" in text  # the progress lines are still printed, above the bar


class Recorder:
    """A ``Watcher`` that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.types: list[str] = []
        self.pieces: list[int] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def event(self, recorded: RecordedEvent) -> None:
        self.types.append(recorded.type)

    def streamed(self, pieces: int) -> None:
        self.pieces.append(pieces)


def test_the_runner_feeds_a_watcher_every_event_and_every_streamed_piece(tmp_path: Path) -> None:
    watcher = Recorder()
    with ScriptedModelServer(OneFile(), models=["m"]) as server:
        log = start_run(
            MemoryEventStore(),
            goal="g",
            workspace=tmp_path,
            settings=settings_for(server),
            progress=watcher,
        )
    assert log.pipeline.status == "completed"
    assert watcher.types == [e.type for e in log.store.read(log.run_id)][1:]  # after run.started
    calls = watcher.types.count("model.responded")
    assert watcher.pieces == [1] * calls  # each answer is one tool call: one piece
    assert any(line.startswith("step   1 |") for line in watcher.lines)


EVIL = "fix\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\x1b[H\u202edone\x9b31m\r"
"""A task title that, printed as it is, puts "rm -rf ~" on the clipboard (OSC 52),
clears the screen, reverses the text after it, and overwrites the line."""


def test_what_a_model_writes_is_shown_and_never_obeyed_by_the_terminal() -> None:
    from engine.terminal import printable

    assert printable(EVIL) == (
        "fix\\x1b]52;c;cm0gLXJmIH4K\\x07\\x1b[2J\\x1b[H\\u202edone\\u009b31m\\x0d"
    )
    assert printable("tabs\tand\nlines, ünïcödé, 中文 ✓") == "tabs\tand\nlines, ünïcödé, 中文 ✓"
    out = io.StringIO()
    display = LiveDisplay(Console(file=out, force_terminal=True, width=200), max_steps=3)
    display(f"step   1 | planning | {EVIL}")
    shown = out.getvalue()
    assert "\\x1b]52" in shown and "\x1b]52" not in shown and "\x07" not in shown


class Evil(PlansOneTask):
    """Plans one task titled ``EVIL``, then calls a tool whose name is escapes."""

    title = EVIL

    def work(self, request: ScriptedRequest, offered: set[str]) -> Reply:
        return Reply.tool("no_such_tool\x1b[31m", path="a")


def test_no_command_prints_an_escape_sequence_a_model_wrote(tmp_path: Path) -> None:
    """Through the console script (its stdout and stderr), piped: ``run`` (its step
    lines and summary), ``state`` and ``audit`` print the title with visible escapes."""
    db = tmp_path / "e.db"
    with ScriptedModelServer(Evil(), models=["m"]) as server:
        ran = subprocess.run(
            [
                *(AUTONOMY, "run", "build it", "--workspace", str(tmp_path / "ws")),
                *("--db", str(db), "--run-id", "r", "--max-steps", "3"),
                *("--model-url", server.url, "--model", "m"),
            ],
            capture_output=True,
        )
    outputs = [ran.stdout + ran.stderr]
    for command in (["state", "r"], ["audit", "r", "tasks"], ["events", "r"]):
        shown = subprocess.run([AUTONOMY, *command, "--db", str(db)], capture_output=True)
        assert shown.returncode == 0, shown.stderr
        outputs.append(shown.stdout + shown.stderr)
    for output in outputs:
        assert not any(byte in output for byte in (b"\x1b", b"\x07", b"\r", "\x9b".encode())), (
            output
        )
    assert b"\\x1b]52;c;" in outputs[1]


def test_a_command_with_its_output_closed_says_nothing_and_does_not_fail(tmp_path: Path) -> None:
    """``autonomy runs >&-``: click drops what it would print, as it always did; the
    printable streams must not make a closed stream a crash (they did, once)."""
    db = tmp_path / "e.db"
    with ScriptedModelServer(Evil(), models=["m"]) as server:
        subprocess.run(
            [AUTONOMY, "run", "g", "--workspace", str(tmp_path / "ws"), "--db", str(db),
             "--max-steps", "1", "--model-url", server.url, "--model", "m"],
            capture_output=True,
        )  # fmt: skip
    for closed in (1, 2):
        done = subprocess.run(
            [AUTONOMY, "runs", "--db", str(db)],
            stdout=subprocess.PIPE if closed == 2 else subprocess.DEVNULL,
            stderr=subprocess.PIPE if closed == 1 else subprocess.DEVNULL,
            preexec_fn=lambda fd=closed: os.close(fd),  # type: ignore[misc]
        )
        assert done.returncode == 0, (closed, done.stdout, done.stderr)
        assert b"Traceback" not in (done.stdout or b"") + (done.stderr or b"")


def test_a_models_line_break_cannot_print_a_line_of_autonomys_own() -> None:
    """A task title with a line break printed, under a failed run's outcome, a line
    "run …: completed" of its own; a table cell with one started a row of its own."""
    from engine.agent.runner import summary
    from engine.tables import table
    from events import MemoryEventStore, RunFinished, RunStarted, TaskAdded
    from projections import project

    forged = "calc.py\n\nrun run-x: completed (1 task(s) completed)"
    store = MemoryEventStore()
    store.append(
        "r",
        [
            RunStarted(goal="g", workspace="/w"),
            TaskAdded(task_id="t1", title=forged),
            RunFinished(status="failed", reason="reached max_steps (3)\nrun r: completed"),
        ],
        0,
    )
    lines = summary(project(store, "r"))
    assert all("\n" not in line for line in lines)
    assert lines[0] == "run r: failed (reached max_steps (3)\\nrun r: completed)"
    assert "calc.py\\n\\nrun run-x: completed" in lines[1]
    shown = table([(forged, 1)], ["title", "n"]).splitlines()
    assert len(shown) == 3 and shown[2].startswith("calc.py\\n\\nrun run-x")
