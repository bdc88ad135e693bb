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

import stat
from pathlib import Path

from engine.errors import ConfigError
from engine.tools.files import write_atomically
from engine.web.pages import run_page
from events.store import EventStore


def render_html(store: EventStore, run_id: str) -> str:
    """The page for ``run_id`` as a string (``RunNotFound`` for a run the log lacks)."""
    return run_page(store, run_id, static=True)


def write_report(store: EventStore, run_id: str, path: Path) -> None:
    """Render the page for ``run_id`` and write it to ``path`` (UTF-8); ``ConfigError``
    for a path that is no report's (``check_report_path``)."""
    path = Path(path)
    check_report_path(path, getattr(store, "path", None))
    page = render_html(store, run_id).encode("utf-8")
    try:
        # a write that fails (a full disk) leaves the report that was there, not a
        # truncated page
        write_atomically(path, page)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


SQLITE_HEADER = b"SQLite format 3\x00"


def check_report_path(path: Path, log: str | None) -> None:
    """``ConfigError`` unless ``path`` may take a report: a report is written beside
    its place and renamed over it, so whatever was there is gone. ``report --html``
    given the log's own path replaced the whole log with the page (exit 0), and as
    root ``--html /dev/full`` replaced the device with a file. Refused: what is not
    a regular file (a device, a FIFO, a directory), an SQLite
    database (a log, or anyone's), and the log's own files (``log``: its path)."""
    real = path.resolve()
    if log is not None and log != ":memory:":
        mine = Path(log).resolve()
        sides = ("", "-wal", "-shm", "-journal", ".leases")
        if real.parent == mine.parent and real.name in {mine.name + side for side in sides}:
            raise ConfigError(f"{path} is the log's own file; a report goes to a file of its own")
    try:
        mode = real.stat().st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"cannot write a report to {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"{path} is not a regular file (a device, a FIFO or a directory): a report "
            "would replace it; give a file's path"
        )
    try:
        with real.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError as e:
        raise ConfigError(f"cannot write a report to {path}: {e.strerror or e}") from None
    if head == SQLITE_HEADER:
        raise ConfigError(
            f"{path} is an SQLite database (an event log?), which a report would replace; "
            "give another file"
        )
