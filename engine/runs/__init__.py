"""Operations on recorded runs, the library both faces (``engine.cli``, ``engine.web``)
call: replay and counterfactual replay, rewind and fork (``workspace``), diff, audit,
report, verify, copy between logs, workers, and the demo."""

from typing import Literal

ToolSource = Literal["live", "recorded"]
"""Where a replay takes tool results from: running the tools again, or the log."""
TOOL_SOURCES: tuple[ToolSource, ...] = ("live", "recorded")
