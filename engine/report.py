"""One self-contained HTML page about a run, for a person to read.

Everything comes from the SQL views (``projections.views``), the same source as
``autonomy audit``, so the page and the audit queries cannot disagree. The page has
inline CSS only: no scripts, no fonts, no external assets. Every value from the
log is escaped with ``html.escape``; the log holds model output, which is text
written by a program we do not control.

Sections (each a ``<section id=...>``): ``summary`` (goal, final status, reason),
``phases`` (a timeline), ``decisions`` (fallbacks marked), ``tasks``,
``tool-calls`` (failures marked with the class ``failed`` and their error),
``model-failures`` (every failed attempt of a model call: role, model, endpoint,
kind, attempt, detail; the summary's reason says why the run ended) and ``tokens``
(per model and per role).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from engine.audit import AuditError, AuditResult, run_query

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: .25em .6em; border-bottom: 1px solid #eee; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 12px/1.35 ui-monospace, monospace; white-space: pre-wrap; word-break: break-word; margin: 0; }
tr.failed td { background: #fde8e8; } tr.failed .error { color: #b00020; font-weight: 600; }
tr.fallback td { background: #fff4d6; } .badge { border-radius: 3px; padding: 0 .4em; font-size: .85em; }
.badge.failed { background: #b00020; color: #fff; } .badge.fallback { background: #e0a800; color: #000; }
.status-completed { color: #107c10; } .status-failed, .status-aborted { color: #b00020; }
ol.timeline { list-style: none; padding-left: 0; border-left: 3px solid #4a78c2; margin-left: .5em; }
ol.timeline li { margin: 0 0 .5em 0; padding-left: 1em; position: relative; }
ol.timeline li::before { content: ""; position: absolute; left: -.5em; top: .45em; width: .7em; height: .7em;
  border-radius: 50%; background: #4a78c2; }
.muted { color: #777; }
"""


def render_html(connection: sqlite3.Connection, run_id: str) -> str:
    """The page for ``run_id`` as a string."""
    runs = connection.execute(
        "SELECT goal, status, reason, events, started_at, last_event_at, workspace"
        " FROM runs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if runs is None:
        raise AuditError(f"no run {run_id!r} in this log")
    goal, status, reason, events, started, last, workspace = runs
    tokens = connection.execute(
        "SELECT coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0)"
        " FROM model_calls WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>autonomy run {escape(run_id)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Run <code>{escape(run_id)}</code></h1>",
        '<section id="summary"><h2>Summary</h2><dl>',
        _dd("Goal", f"<pre>{_e(goal)}</pre>"),
        _dd("Status", f'<strong class="status-{_e(status)}">{_e(status)}</strong>'),
        _dd("Reason", _e(reason)),
        _dd("Workspace", f"<code>{_e(workspace)}</code>"),
        _dd("Events", _e(events)),
        _dd("Recorded", f"{_e(started)} → {_e(last)}"),
        _dd("Tokens", f"{tokens[0]} prompt + {tokens[1]} completion"),
        "</dl></section>",
        _phases(connection, run_id),
        _decisions(connection, run_id),
        _tasks(connection, run_id),
        _tool_calls(connection, run_id),
        _model_failures(connection, run_id),
        _tokens(connection, run_id),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(connection: sqlite3.Connection, run_id: str, path: Path) -> None:
    """Render the page for ``run_id`` and write it to ``path`` (UTF-8)."""
    Path(path).write_text(render_html(connection, run_id), encoding="utf-8")


def _phases(connection: sqlite3.Connection, run_id: str) -> str:
    rows = run_query(connection, "phase-timeline", run_id).as_dicts()
    items = [
        f"<li><strong>{_e(r['to_phase'])}</strong> "
        f'<span class="muted">from {_e(r["from_phase"])} · v{_e(r["version"])} · '
        f"{_e(r['recorded_at'])} · {_e(r['trigger'])} by {_e(r['decided_by'])}</span>"
        + (f"<br>{_e(r['reason'])}" if r["reason"] else "")
        + "</li>"
        for r in rows
    ]
    body = f'<ol class="timeline">{"".join(items)}</ol>' if items else _none()
    return f'<section id="phases"><h2>Phase timeline</h2>{body}</section>'


def _decisions(connection: sqlite3.Connection, run_id: str) -> str:
    result = run_query(connection, "decisions", run_id)
    rows = []
    for r in result.as_dicts():
        fallback = bool(r["fallback_used"])
        mark = (
            f' <span class="badge fallback">fallback</span> {_e(r["fallback_reason"])}'
            if fallback
            else ""
        )
        rows.append(
            _row(
                [
                    _e(r["version"]),
                    f"<code>{_e(r['action'])}</code>",
                    f"<code>{_e(r['parameters'])}</code>",
                    _e(r["decided_by"]) + mark,
                    _e(r["reasoning"]),
                ],
                css="fallback" if fallback else "",
            )
        )
    return _section(
        "decisions",
        "Decisions",
        ["v", "action", "parameters", "decided by", "reasoning"],
        rows,
    )


def _tasks(connection: sqlite3.Connection, run_id: str) -> str:
    rows = [
        _row(
            [
                f"<code>{_e(r['task_id'])}</code>",
                _e(r["title"]),
                f"<code>{_e(r['target_file'])}</code>",
                f'<span class="status-{_e(r["status"])}">{_e(r["status"])}</span>',
                _e(r["attempts"]),
                f'<span class="error">{_e(r["last_error"])}</span>',
            ],
            css="failed" if r["status"] in ("failed", "skipped") else "",
        )
        for r in run_query(connection, "tasks", run_id).as_dicts()
    ]
    return _section(
        "tasks", "Tasks", ["task", "title", "file", "status", "attempts", "last error"], rows
    )


def _tool_calls(connection: sqlite3.Connection, run_id: str) -> str:
    cursor = connection.execute(
        "SELECT requested_version, call_id, tool, arguments, ok, error, result"
        " FROM tool_calls WHERE run_id = ? ORDER BY requested_version",
        (run_id,),
    )
    rows = []
    for version, call_id, tool, arguments, ok, error, result in cursor:
        failed = ok != 1
        outcome = (
            f'<span class="badge failed">{"failed" if ok == 0 else "never executed"}</span>'
            f' <span class="error">{_e(error)}</span>'
            if failed
            else f"<pre>{_e(_clip(result, 300))}</pre>"
        )
        rows.append(
            _row(
                [
                    _e(version),
                    f"<code>{_e(call_id)}</code>",
                    f"<code>{_e(tool)}</code>",
                    f"<pre>{_e(_clip(arguments, 300))}</pre>",
                    outcome,
                ],
                css="failed" if failed else "",
            )
        )
    return _section("tool-calls", "Tool calls", ["v", "call", "tool", "arguments", "outcome"], rows)


def _model_failures(connection: sqlite3.Connection, run_id: str) -> str:
    rows = [
        _row(
            [
                _e(r["version"]),
                f"<code>{_e(r['call_id'])}</code>",
                _e(r["role"]),
                f"<code>{_e(r['model'])}</code>",
                f"<code>{_e(r['endpoint'])}</code>",
                f'<span class="badge failed">{_e(r["kind"])}</span>',
                _e(r["attempt"]),
                f'<span class="error">{_e(_clip(r["detail"], 500))}</span>',
            ],
            css="failed",
        )
        for r in run_query(connection, "model-failures", run_id).as_dicts()
    ]
    return _section(
        "model-failures",
        "Model failures",
        ["v", "call", "role", "model", "endpoint", "kind", "attempt", "detail"],
        rows,
    )


def _tokens(connection: sqlite3.Connection, run_id: str) -> str:
    usage = run_query(connection, "model-usage", run_id)
    by_model = _group(usage, "model")
    by_role = _group(usage, "role")
    headers = ["calls", "failed calls", "prompt tokens", "completion tokens", "seconds"]
    model_rows = [_row([f"<code>{_e(k)}</code>", *_nums(v)]) for k, v in by_model.items()]
    role_rows = [_row([_e(k), *_nums(v)]) for k, v in by_role.items()]
    return (
        '<section id="tokens"><h2>Tokens</h2>'
        + _table(["model", *headers], model_rows, "tokens-by-model")
        + _table(["role", *headers], role_rows, "tokens-by-role")
        + "</section>"
    )


def _group(usage: AuditResult, key: str) -> dict[str, list[float]]:
    sums: dict[str, list[float]] = {}
    for r in usage.as_dicts():
        total = sums.setdefault(str(r[key]), [0, 0, 0, 0, 0.0])
        for i, column in enumerate(
            ("calls", "failed_calls", "prompt_tokens", "completion_tokens", "seconds")
        ):
            total[i] += r[column] or 0
    return sums


def _nums(values: Sequence[float]) -> list[str]:
    *counts, seconds = values
    return [f"{int(v)}" for v in counts] + [f"{seconds:.3f}"]


def _section(anchor: str, title: str, headers: list[str], rows: list[str]) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{_table(headers, rows)}</section>'


def _table(headers: list[str], rows: list[str], table_id: str = "") -> str:
    if not rows:
        return _none()
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: list[str], css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _dd(term: str, value: str) -> str:
    return f"<dt>{escape(term)}</dt><dd>{value}</dd>"


def _none() -> str:
    return '<p class="muted">none</p>'


def _e(value: Any) -> str:
    return "" if value is None else escape(str(value))


def _clip(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
