"""The HTML of a run, rendered from the Jinja2 templates in ``engine/web/templates``:
by the service (``engine.web.app``, one page per request) and by ``autonomy report``
(``engine.web.report``, one self-contained file). One environment, one context builder,
so the page and the report cannot show a run differently.

``static=True`` renders the page for a file: the stylesheet inlined, no scripts,
nothing that needs the server (the live tail, the answer box, the filters, the
state slider, links to blobs and diffs), every link an anchor in the page; and, in
place of what the scripts and the audit section give, the decisions, the tool calls
and the tokens as tables.
"""

from __future__ import annotations

import bisect
import json
from importlib import resources
from typing import Any

import jinja2
import markupsafe
import msgspec

from engine.terminal import printable
from engine.web.trace import ToolTrace, build_trace, kind_of
from events.errors import AutonomyError, RunNotFound
from events.store import EventStore, RecordedEvent
from projections import project

LIVE = ("new", "running")
"""The statuses of a run that is going on (its page has a live tail, its stream waits
for more), as the projection folds them: read off the last of a list of lifecycle
event types instead, "live" drifted from the status (a stopped run that was resumed,
``run.resumed``, was running again but taken for over)."""


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _short(value: str, keep: int = 12) -> str:
    return value if len(value) <= keep + 1 else value[:keep] + "…"


PAGE_TEXT = 100_000
"""The most characters of one value a page shows. A model's tool-call arguments
nested in a list stay inline in the log whatever their size: eight of 3 MB made a
run page of 36 MB (225 MB over 25 steps, which froze the tab when expanded)."""


def shown(value: Any) -> Any:
    """What every ``{{ ... }}`` of a page shows (Jinja's ``finalize``): text with its
    control, bidirectional and invisible characters as visible escapes
    (``engine.terminal.printable``), cut at ``PAGE_TEXT`` characters, before it is
    escaped for HTML. Numbers and HTML the templates built themselves are shown as
    they are."""
    if value is None or isinstance(value, bool | int | float | markupsafe.Markup):
        return value
    text = value if isinstance(value, str) else str(value)
    if len(text) > PAGE_TEXT:
        more = len(text) - PAGE_TEXT
        cut = f"\n[… {more:,} more characters not shown: the event holds them all]"
        return printable(text[:PAGE_TEXT]) + cut
    return printable(text)


ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("engine.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    lstrip_blocks=True,
    finalize=shown,
)
ENVIRONMENT.filters["pretty"] = pretty
ENVIRONMENT.filters["compact"] = compact
ENVIRONMENT.filters["kind"] = kind_of
ENVIRONMENT.filters["short"] = _short
ENVIRONMENT.filters["builtins"] = msgspec.to_builtins


def render(template: str, **context: Any) -> str:
    return ENVIRONMENT.get_template(template).render(**context)


def stylesheet() -> str:
    """The service's stylesheet (``static/app.css``), to inline in a static page."""
    return (resources.files("engine.web") / "static" / "app.css").read_text(encoding="utf-8")


LISTED_ROWS = 1_000
"""The most tasks, and phase changes, a run page lists (100,000 tasks made a page of
42 MB); the audit tables hold them all."""

TRACE_PAGE = 200
"""Steps the service's run page shows at once. A long run's whole trace was a page of
megabytes (11 MB for 20,000 events) that a browser took seconds to lay out."""


class NoSuchPage(AutonomyError):
    """The run's trace has no such page."""


def run_page(
    store: EventStore, run_id: str, *, static: bool = False, page: int | None = None, **extra: Any
) -> str:
    """The run page of ``run_id``: the service's (``static=False``; ``extra`` holds
    what only the service shows, the audit tables) or a self-contained file's. The
    service's shows ``TRACE_PAGE`` steps of the trace, page ``page`` (1-based; the
    last, where a run's newest steps are, by default); a file shows them all."""
    events = list(store.read(run_id))
    if not events:
        raise RunNotFound(run_id)
    state = project(store, run_id)
    trace = build_trace(events)
    pages = 1 if static else max(-(-len(trace.steps) // TRACE_PAGE), 1)
    if page is not None and not 1 <= page <= pages:
        raise NoSuchPage(f"the trace of run {run_id} has {pages} page(s), not a page {page}")
    shown = page or pages
    firsts = [step.first.version for step in trace.steps]

    def page_of(version: int) -> int:
        """The page whose steps hold ``version``."""
        step = max(bisect.bisect_right(firsts, version) - 1, 0)
        return 1 if static else step // TRACE_PAGE + 1

    window = slice(None) if static else slice((shown - 1) * TRACE_PAGE, shown * TRACE_PAGE)
    context: dict[str, Any] = {
        "run_id": run_id,
        "state": state,
        "trace": trace,
        "steps": trace.steps[window],
        "page": shown,
        "pages": pages,
        "page_of": page_of,
        "version": events[-1].version,
        "live": is_live(state.pipeline.status) and not static,
        "static": static,
        "rows": LISTED_ROWS,
        "audit": {},
        **extra,
    }
    if static:
        context["css"] = stylesheet()
        context["tool_calls"] = tool_calls(events)
        context["model_failures"] = model_failures(events)
    return render("run.html", **context)


def is_live(status: str) -> bool:
    """Whether a run of this status (``PipelineState.status``) is going on."""
    return status in LIVE


def model_failures(events: list[RecordedEvent]) -> list[dict[str, Any]]:
    """Every failed attempt of a model call, with the role and model it asked."""
    asked: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    for event in events:
        data = event.data
        if event.type == "model.requested":
            asked[getattr(data, "call_id", "")] = data
        elif event.type == "model.failed":
            request = asked.get(getattr(data, "call_id", ""))
            failures.append(
                {
                    "version": event.version,
                    "failed": data,
                    "role": getattr(request, "role", "?"),
                    "model": getattr(request, "model", "?"),
                }
            )
    return failures


def tool_calls(events: list[RecordedEvent]) -> list[ToolTrace]:
    """Every tool call of the run with its execution (if any), in request order."""
    calls: dict[str, ToolTrace] = {}
    for event in events:
        if event.type == "tool.requested":
            calls[getattr(event.data, "call_id", "")] = ToolTrace(requested=event)
        elif event.type == "tool.executed":
            call = calls.get(getattr(event.data, "call_id", ""))
            if call is not None:
                call.executed = event
    return list(calls.values())
