"""One self-contained HTML page about a run, for a person to read: ``autonomy report``.

It is the service's run page (``engine.web.pages.run_page``, the Jinja2 templates in
``engine/web/templates`` with autoescape: the log holds model output, text written by
a program we do not control) rendered static: the service's stylesheet inlined, no
scripts, no fonts, no external assets, every link an anchor in the page, so the file
can be mailed or attached as is and opened without a server.

Sections (each a ``<section id=...>``): ``summary`` (goal, final status, reason,
steps, tokens, duration), ``phases`` (a timeline), ``trace`` (each step's decision,
specialist, model calls with their prompts and answers, and tool calls, folded
``<details>`` that open without a script), ``tasks``, ``decisions`` (fallbacks
marked with the class ``fallback``), ``tool-calls`` (failures marked with the class
``failed`` and their error), ``model-failures`` (every failed attempt of a model
call: role, model, endpoint, kind, attempt, detail; the summary's reason says why the
run ended) and ``tokens`` (per model and per role). A run waiting
for input adds ``answer`` with its question.
"""

from __future__ import annotations

from pathlib import Path

from engine.tools.files import write_atomically
from engine.web.pages import run_page
from events.store import EventStore


def render_html(store: EventStore, run_id: str) -> str:
    """The page for ``run_id`` as a string (``RunNotFound`` for a run the log lacks)."""
    return run_page(store, run_id, static=True)


def write_report(store: EventStore, run_id: str, path: Path) -> None:
    """Render the page for ``run_id`` and write it to ``path`` (UTF-8)."""
    page = render_html(store, run_id).encode("utf-8")
    path = Path(path)
    try:
        # a write that fails (a full disk) leaves the report that was there, not a
        # truncated page
        write_atomically(path, page)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
