"""Two runs side by side: where they first went different ways, and what each cost.

``diff_runs(store, a, b)`` compares the effective histories of two runs (rewinds
followed; a fork's history is its parent's up to the fork point, then its own),
step by step on what the engine did, not on when: each decision (action and
parameters), each tool call (tool and arguments) and each file change (path and
content hash). The first pair that differs is the first divergent step. Then, per
phase, each run's steps, model calls, tokens, model seconds, files written and
tests passed (the last pytest count reported in that phase).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.tables import table
from events.errors import RunNotFound
from events.schema import (
    ArbiterDecided,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunForked,
    RunRewound,
    RunStarted,
    ToolExecuted,
    ToolRequested,
)
from events.store import EventStore, RecordedEvent
from projections.fold import fork_lineage

PASSED = re.compile(r"\b(\d+) passed\b")


@dataclass(frozen=True)
class _Node:
    event: RecordedEvent
    older: _Node | None


def effective_events(
    store: EventStore, run_id: str, upto: int | None = None
) -> list[RecordedEvent]:
    """The events in effect at the end of ``run_id`` (or at ``upto``), oldest first:
    a rewind to W takes the run back to what was in effect at W; a fork starts
    from its parent's events in effect at the fork point."""
    head: _Node | None = None
    for run, until in fork_lineage(store, run_id, upto):
        heads: dict[int, _Node | None] = {0: head}  # a fork starts from its parent's
        found = False
        for recorded in store.read(run, upto=until):
            found = True
            data = recorded.data
            if isinstance(data, RunRewound):
                head = heads.get(min(data.to_version, recorded.version - 1))
            elif not isinstance(data, RunForked):
                head = _Node(recorded, head)
            heads[recorded.version] = head
        if not found and store.last_version(run) == 0:  # a fork at 0 takes none of it
            raise RunNotFound(run)
    events: list[RecordedEvent] = []
    while head is not None:
        events.append(head.event)
        head = head.older
    events.reverse()
    return events


@dataclass(frozen=True)
class Step:
    """One thing the engine did, as compared between runs."""

    kind: str
    """``decision``, ``tool`` or ``file``."""
    what: str
    run_id: str
    version: int

    def describe(self) -> str:
        return f"{self.kind} {self.what} (version {self.version} of {self.run_id})"


STEPS = "decisions, tool calls and file changes"
"""What the first difference is looked for among (``steps_of``): not the coordinator's
steps, which the per-phase table counts, so never called steps where people read."""


def steps_of(events: list[RecordedEvent]) -> list[Step]:
    """The decisions, tool calls and file changes of a history, in order."""
    steps: list[Step] = []
    for recorded in events:
        data = recorded.data
        where = (recorded.run_id, recorded.version)
        if isinstance(data, ArbiterDecided):
            steps.append(Step("decision", f"{data.action} {_compact(data.parameters)}", *where))
        elif isinstance(data, ToolRequested):
            steps.append(Step("tool", f"{data.tool} {_compact(data.arguments)}", *where))
        elif isinstance(data, ToolExecuted):
            for change in data.files_changed:
                after = (change.after or "deleted")[:12]
                steps.append(Step("file", f"{change.path} -> {after}", *where))
    return steps


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class PhaseFigures:
    """What one run did in one phase."""

    steps: int = 0
    model_calls: int = 0
    tokens: int = 0
    model_seconds: float = 0.0
    files_written: set[str] = field(default_factory=set)
    tests_passed: int | None = None

    def document(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "model_calls": self.model_calls,
            "tokens": self.tokens,
            "model_seconds": round(self.model_seconds, 3),
            "files_written": len(self.files_written),
            "tests_passed": self.tests_passed,
        }


def figures_by_phase(store: EventStore, events: list[RecordedEvent]) -> dict[str, PhaseFigures]:
    """Per phase (in the order first entered): the run's figures in that phase."""
    phases: dict[str, PhaseFigures] = {}
    phase = "start"
    for recorded in events:
        data = recorded.data
        if isinstance(data, RunStarted):
            phase = "start"
        elif isinstance(data, PhaseChanged):
            phase = data.to_phase
        figures = phases.setdefault(phase, PhaseFigures())
        if isinstance(data, ArbiterDecided):
            figures.steps += 1
        elif isinstance(data, ModelRequested):
            figures.model_calls += 1
        elif isinstance(data, ModelResponded):
            figures.tokens += data.usage.prompt_tokens + data.usage.completion_tokens
            figures.model_seconds += data.duration_ms / 1000
        elif isinstance(data, ToolExecuted):
            figures.files_written |= {c.path for c in data.files_changed if c.after}
            if data.tool == "run_command":
                text = _full_result(store, data)
                counts = PASSED.findall(text)
                if counts:
                    figures.tests_passed = int(counts[-1])
    return phases


def _full_result(store: EventStore, data: ToolExecuted) -> str:
    if data.result_ref:
        return store.get(data.result_ref).decode("utf-8", errors="replace")
    return data.result


@dataclass(frozen=True)
class RunDiff:
    run_a: str
    run_b: str
    first: tuple[Step | None, Step | None] | None
    """The first pair of steps that differ (None in a pair: that run had no more);
    None when every step is the same."""
    same_steps: int
    phases: dict[str, tuple[PhaseFigures, PhaseFigures]]

    def lines(self) -> list[str]:
        """For people."""
        if self.first is None:
            head = f"{self.run_a} and {self.run_b} are the same in all {self.same_steps} {STEPS}"
            lines = [head]
        else:
            old, new = self.first
            lines = [f"first difference, after {self.same_steps} {STEPS} in common:"]
            lines.append(f"  {self.run_a}: {old.describe() if old else '(no more steps)'}")
            lines.append(f"  {self.run_b}: {new.describe() if new else '(no more steps)'}")
        rows = []
        for phase, (a, b) in self.phases.items():
            da, db = a.document(), b.document()
            if not any(da.values()) and not any(db.values()):
                continue  # nothing happened there (start, completed)
            rows.append([phase, *(f"{_cell(da[k])} / {_cell(db[k])}" for k in da)])
        headers = ["phase", "steps", "model calls", "tokens", "model s", "files", "tests passed"]
        lines += ["", f"per phase, {self.run_a} / {self.run_b}:"]
        lines += table(rows, headers, "right").splitlines()
        return lines

    def document(self) -> dict[str, Any]:
        """As plain JSON types, for ``--json``."""
        first = None
        if self.first is not None:
            old, new = self.first
            first = {
                self.run_a: _step_document(old),
                self.run_b: _step_document(new),
            }
        return {
            "runs": [self.run_a, self.run_b],
            "same_steps": self.same_steps,
            "first_divergent_step": first,
            "phases": {
                phase: {self.run_a: a.document(), self.run_b: b.document()}
                for phase, (a, b) in self.phases.items()
            },
        }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _step_document(step: Step | None) -> dict[str, Any] | None:
    if step is None:
        return None
    return {"kind": step.kind, "what": step.what, "version": step.version, "run": step.run_id}


def diff_runs(store: EventStore, run_a: str, run_b: str) -> RunDiff:
    """Compare two runs of the same log (see the module's docstring)."""
    events_a, events_b = effective_events(store, run_a), effective_events(store, run_b)
    steps_a, steps_b = steps_of(events_a), steps_of(events_b)
    same = 0
    first: tuple[Step | None, Step | None] | None = None
    for old, new in _pairs(steps_a, steps_b):
        if old is not None and new is not None and (old.kind, old.what) == (new.kind, new.what):
            same += 1
            continue
        first = (old, new)
        break
    figures_a, figures_b = figures_by_phase(store, events_a), figures_by_phase(store, events_b)
    phases = {
        phase: (figures_a.get(phase, PhaseFigures()), figures_b.get(phase, PhaseFigures()))
        for phase in [*figures_a, *(p for p in figures_b if p not in figures_a)]
    }
    return RunDiff(run_a, run_b, first, same, phases)


def _pairs(a: list[Step], b: list[Step]) -> Iterator[tuple[Step | None, Step | None]]:
    for index in range(max(len(a), len(b))):
        yield (a[index] if index < len(a) else None, b[index] if index < len(b) else None)
