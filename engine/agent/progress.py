"""What ``autonomy run`` shows while a run goes.

Piped or redirected, the output is plain lines: one per step, one per failed model
call, as the runner says them (``engine.agent.runner.Progress``). On a terminal the same
lines scroll above a live area of two lines, redrawn a few times a second:

    ⠙ coding (qwen2.5-coder:32b) · 143 tokens · 12.4 s
    steps ━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━ 14/60

The model line is fed by the run log's events (``model.requested`` starts a call,
``model.responded`` ends it, ``model.failed`` restarts the count for the next
attempt) and by the model client's stream (``ModelClient(on_stream=...)``: pieces
of the answer so far, about one token each); the bar counts ``arbiter.decided``
(one per step) against ``limits.max_steps``. It observes only: nothing it shows
is written anywhere, and a run decides the same with or without it.

``rich`` draws it (a ``Live`` display, as the house style asks for terminals); it
is used only on a terminal, so piped output stays byte for byte what it was.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

from engine.terminal import printable, raw_stream
from events.schema import ArbiterDecided, ModelFailed, ModelRequested, ModelResponded, RunFinished
from events.store import RecordedEvent

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


@runtime_checkable
class Watcher(Protocol):
    """A progress callback that also watches the run: the runner hands it every
    event appended and every piece of a streamed answer."""

    def __call__(self, line: str) -> None: ...

    def event(self, recorded: RecordedEvent) -> None: ...

    def streamed(self, pieces: int) -> None: ...


@dataclass
class _Call:
    role: str
    model: str
    started: float
    pieces: int = 0


class LiveDisplay:
    """Progress lines above a live model line and a bar of steps (a ``Watcher``)."""

    def __init__(
        self,
        console: Console,
        *,
        max_steps: int,
        steps: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # rich is imported here, not with the module: only a terminal needs it, and
        # importing it costs every command (and every piped run) ~90 ms
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.spinner import Spinner

        self.console = console
        self._clock = clock
        self._call: _Call | None = None
        self._steps = Progress(
            TextColumn("steps"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
        )
        self._done, self._total = steps, max_steps
        self._task = self._steps.add_task("steps", total=max(max_steps, steps), completed=steps)
        self._spinner = Spinner("dots")
        self._live = Live(
            self,
            console=console,
            refresh_per_second=4,
            transient=True,  # the live area goes when the run ends; the lines stay
            redirect_stdout=False,
            redirect_stderr=False,
        )

    # -- Watcher ------------------------------------------------------------------------

    def __call__(self, line: str) -> None:
        self.console.print(printable(line), markup=False, highlight=False, soft_wrap=True)

    def event(self, recorded: RecordedEvent) -> None:
        event = recorded.data
        if isinstance(event, ModelRequested):
            self._call = _Call(event.role, event.model, self._clock())
        elif isinstance(event, ModelFailed) and self._call is not None:
            self._call.pieces = 0  # the next attempt's answer starts from nothing
        elif isinstance(event, ModelResponded | RunFinished):
            self._call = None
        elif isinstance(event, ArbiterDecided):
            # past the limit (a resume given a lower one; the step that stops the run)
            # the bar is full, never "4/3"
            self._done += 1
            self._steps.update(self._task, completed=self._done, total=max(self._total, self._done))

    def streamed(self, pieces: int) -> None:
        call = self._call
        if call is not None:
            call.pieces = pieces

    # -- drawing ------------------------------------------------------------------------

    def model_line(self) -> str:
        """The model call in flight, as the live line says it ("" when none)."""
        call = self._call
        if call is None:
            return ""
        seconds = self._clock() - call.started
        return f"{call.role} ({call.model}) · {call.pieces} tokens · {seconds:.1f} s"

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        line = self.model_line()
        if not line:
            return self._steps
        self._spinner.text = Text(printable(line))
        return Group(self._spinner, self._steps)

    def __enter__(self) -> LiveDisplay:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()


@contextmanager
def run_display(
    max_steps: int,
    *,
    steps: int = 0,
    plain: Callable[[str], None] = print,
    stream: IO[str] | None = None,
) -> Iterator[Callable[[str], None]]:
    """The progress callback for a run: a ``LiveDisplay`` while ``stream`` (stdout)
    is a terminal, else ``plain`` (one line each). ``steps`` is where the bar
    starts (a resumed run's steps so far)."""
    out = stream if stream is not None else sys.stdout
    if not out.isatty():
        yield plain
        return
    from rich.console import Console

    # rich draws with escape sequences of its own: on the stream under a
    # PrintableStream, its text made printable first (LiveDisplay)
    console = Console(file=raw_stream(out))
    with LiveDisplay(console, max_steps=max_steps, steps=steps) as display:
        yield display


def watching(progress: Callable[[str], None] | None) -> Watcher | None:
    """``progress`` if it watches the run too (a ``Watcher``), else None."""
    return progress if isinstance(progress, Watcher) else None
