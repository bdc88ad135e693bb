"""SQL views over the events table: audit questions answered without any Python.

The payload is JSON text, so each view is ``json_extract`` over ``data``. Install
them with ``install_views(store)`` (the engine does it whenever it opens a log);
afterwards ``sqlite3 events.db "SELECT * FROM tool_calls WHERE ok = 0"`` works.

    runs           one row per run: goal, status, reason, events, start and end; the
                   status and reason are those of the run's effective history (a
                   rewound run has the status it had at the version it was rewound
                   to; ``projections.project`` gives the exact state at any version)
    phase_changes  every phase change with its trigger, reason and decider
    tasks          every task in effect at the end of its run (rewinds followed), with
                   its latest status, attempts and last error
    effective_spans  for each rewound run, the version ranges in effect at its end
                   (``after_version < version <= upto_version``)
    model_calls    every model request joined to its response or failures; status
                   ok, failed, interrupted (cut off by a stop) or pending
    tool_calls     every tool request joined to its execution
    decisions      every coordinator decision, with fallbacks and why

Every view but ``runs``' size and times lists the effective history only: after a
``run.rewound``, what the rewind undid is gone from ``phase_changes``, ``tasks``,
``model_calls``, ``tool_calls`` and ``decisions``, as from the projection (the
events themselves stay in the log: ``SELECT * FROM events``).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable


def with_effective(sql: str, in_effect: Callable[[str], str] | None = None) -> str:
    """``sql`` with each ``EFFECTIVE(alias)`` written out as the condition "the event
    ``alias`` is in effect at the end of its run": its run was never rewound, or its
    version lies in one of the run's ``effective_spans`` (``in_effect(alias)``: the
    condition's text, the same in SQLite and PostgreSQL unless one is given)."""
    expand = in_effect or _in_effect
    return _EFFECTIVE.sub(lambda m: expand(m[1]), sql)


def _in_effect(e: str) -> str:
    return f"""(NOT EXISTS (SELECT 1 FROM effective_spans s WHERE s.run_id = {e}.run_id)
       OR EXISTS (SELECT 1 FROM effective_spans s WHERE s.run_id = {e}.run_id
                   AND {e}.version > s.after_version AND {e}.version <= s.upto_version))"""


_EFFECTIVE = re.compile(r"EFFECTIVE\((\w+)\)")


VIEWS: dict[str, str] = {
    "effective_spans": """
WITH RECURSIVE spans(run_id, lo, hi) AS (
  SELECT r.run_id,
    (SELECT max(w.version) FROM events w WHERE w.run_id = r.run_id AND w.type = 'run.rewound'),
    r.last
  FROM (SELECT run_id, max(version) AS last FROM events
         WHERE run_id IN (SELECT run_id FROM events WHERE type = 'run.rewound')
         GROUP BY run_id) r
  UNION ALL
  SELECT s.run_id,
    coalesce((SELECT max(w.version) FROM events w
               WHERE w.run_id = s.run_id AND w.type = 'run.rewound'
                 AND w.version <= min(json_extract(t.data, '$.to_version'), s.lo - 1)), 0),
    min(json_extract(t.data, '$.to_version'), s.lo - 1)
  FROM spans s JOIN events t ON t.run_id = s.run_id AND t.version = s.lo
  WHERE s.lo > 0
)
SELECT run_id, lo AS after_version, hi AS upto_version FROM spans
""",
    "runs": """
SELECT r.run_id, r.started_at, r.last_event_at, r.events,
  (SELECT json_extract(s.data, '$.goal') FROM events s
     WHERE s.run_id = r.run_id AND s.type = 'run.started' ORDER BY s.version LIMIT 1) AS goal,
  (SELECT json_extract(s.data, '$.workspace') FROM events s
     WHERE s.run_id = r.run_id AND s.type IN ('run.started', 'run.forked')
     ORDER BY s.version LIMIT 1) AS workspace,
  CASE l.type WHEN 'run.finished' THEN json_extract(l.data, '$.status')
              WHEN 'user.asked' THEN 'waiting_for_input'
              ELSE 'running' END AS status,
  CASE l.type WHEN 'run.finished' THEN json_extract(l.data, '$.reason') END AS reason
FROM (SELECT run_id, min(recorded_at) AS started_at, max(recorded_at) AS last_event_at,
             max(version) AS events
        FROM events GROUP BY run_id) r
LEFT JOIN events l ON l.position = (
  SELECT x.position FROM events x
   WHERE x.run_id = r.run_id
     AND x.type IN ('run.started', 'run.forked', 'run.finished', 'run.resumed',
                    'user.asked', 'user.answered')
     AND EFFECTIVE(x)
   ORDER BY x.version DESC LIMIT 1)
""",
    "phase_changes": """
SELECT run_id, version, recorded_at,
  json_extract(data, '$.trigger') AS trigger,
  json_extract(data, '$.from_phase') AS from_phase,
  json_extract(data, '$.to_phase') AS to_phase,
  json_extract(data, '$.reason') AS reason,
  json_extract(data, '$.decided_by') AS decided_by
FROM events e WHERE type = 'phase.changed' AND EFFECTIVE(e)
""",
    "tasks": """
SELECT a.run_id,
  json_extract(a.data, '$.task_id') AS task_id,
  json_extract(a.data, '$.title') AS title,
  json_extract(a.data, '$.target_file') AS target_file,
  coalesce(
    (SELECT json_extract(u.data, '$.priority') FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND json_extract(u.data, '$.task_id') = json_extract(a.data, '$.task_id')
         AND json_extract(u.data, '$.priority') IS NOT NULL
         AND EFFECTIVE(u)
       ORDER BY u.version DESC LIMIT 1),
    json_extract(a.data, '$.priority')) AS priority,
  coalesce(
    (SELECT json_extract(u.data, '$.status') FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND json_extract(u.data, '$.task_id') = json_extract(a.data, '$.task_id')
         AND EFFECTIVE(u)
       ORDER BY u.version DESC LIMIT 1),
    'new') AS status,
  coalesce(
    (SELECT max(json_extract(u.data, '$.attempt')) FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND json_extract(u.data, '$.task_id') = json_extract(a.data, '$.task_id')
         AND EFFECTIVE(u)),
    0) AS attempts,
  (SELECT json_extract(u.data, '$.error') FROM events u
     WHERE u.run_id = a.run_id AND u.type = 'task.updated'
       AND json_extract(u.data, '$.task_id') = json_extract(a.data, '$.task_id')
       AND json_extract(u.data, '$.error') != ''
       AND EFFECTIVE(u)
     ORDER BY u.version DESC LIMIT 1) AS last_error,
  a.version AS added_version
FROM events a WHERE a.type = 'task.added'
  AND EFFECTIVE(a)
""",
    "model_calls": """
SELECT q.run_id,
  json_extract(q.data, '$.call_id') AS call_id,
  q.version,
  q.recorded_at AS requested_at,
  json_extract(q.data, '$.role') AS role,
  json_extract(q.data, '$.model') AS model,
  json_extract(q.data, '$.endpoint') AS endpoint,
  json_extract(q.data, '$.conversation') AS conversation,
  json_extract(q.data, '$.request_digest') AS request_digest,
  CASE WHEN r.position IS NOT NULL THEN 'ok'
       WHEN f.failures > 0 THEN 'failed'
       -- an answer follows its request at once: anything else after it means the
       -- call was cut off (a kill, a crash) and will never be answered
       WHEN q.version < (SELECT max(z.version) FROM events z WHERE z.run_id = q.run_id)
         THEN 'interrupted'
       ELSE 'pending' END AS status,
  coalesce(f.failures, 0) AS failures,
  f.last_failure,
  json_extract(r.data, '$.usage.prompt_tokens') AS prompt_tokens,
  json_extract(r.data, '$.usage.completion_tokens') AS completion_tokens,
  json_extract(r.data, '$.duration_ms') AS duration_ms,
  json_extract(r.data, '$.done_reason') AS done_reason,
  json_extract(r.data, '$.model_identity') AS model_identity,
  json_array_length(r.data, '$.tool_calls') AS tool_calls,
  json_extract(r.data, '$.extracted_from_text') AS extracted_from_text,
  json_extract(r.data, '$.cached_from') AS cached_from
FROM events q
LEFT JOIN events r
  ON r.run_id = q.run_id AND r.type = 'model.responded'
 AND json_extract(r.data, '$.call_id') = json_extract(q.data, '$.call_id') AND EFFECTIVE(r)
LEFT JOIN (
  -- with one max() aggregate, SQLite takes the bare columns from the row holding
  -- the maximum: last_failure describes the latest failure
  SELECT run_id, json_extract(data, '$.call_id') AS call_id, count(*) AS failures,
         max(version) AS last_failed_version,
         CASE json_extract(data, '$.detail') WHEN '' THEN json_extract(data, '$.kind')
              ELSE json_extract(data, '$.kind') || ': ' || json_extract(data, '$.detail')
         END AS last_failure
  FROM events m WHERE type = 'model.failed' AND EFFECTIVE(m)
  GROUP BY run_id, call_id
) f ON f.run_id = q.run_id AND f.call_id = json_extract(q.data, '$.call_id')
WHERE q.type = 'model.requested' AND EFFECTIVE(q)
""",
    "tool_calls": """
SELECT q.run_id,
  json_extract(q.data, '$.call_id') AS call_id,
  q.version AS requested_version,
  x.version AS executed_version,
  q.recorded_at AS requested_at,
  json_extract(q.data, '$.tool') AS tool,
  json_extract(q.data, '$.arguments') AS arguments,
  json_extract(x.data, '$.ok') AS ok,
  json_extract(x.data, '$.error') AS error,
  json_extract(x.data, '$.result') AS result,
  json_extract(x.data, '$.files_changed') AS files_changed
FROM events q
LEFT JOIN events x
  ON x.run_id = q.run_id AND x.type = 'tool.executed'
 AND json_extract(x.data, '$.call_id') = json_extract(q.data, '$.call_id') AND EFFECTIVE(x)
WHERE q.type = 'tool.requested' AND EFFECTIVE(q)
""",
    "decisions": """
SELECT run_id, version, recorded_at,
  json_extract(data, '$.action') AS action,
  json_extract(data, '$.parameters') AS parameters,
  json_extract(data, '$.reasoning') AS reasoning,
  json_extract(data, '$.decided_by') AS decided_by,
  json_extract(data, '$.fallback_used') AS fallback_used,
  json_extract(data, '$.fallback_reason') AS fallback_reason
FROM events e WHERE type = 'arbiter.decided' AND EFFECTIVE(e)
""",
}
VIEWS = {name: with_effective(sql) for name, sql in VIEWS.items()}

MADE_BY_AUTONOMY: dict[str, frozenset[str]] = {
    "decisions": frozenset(
        {
            "86076a6564a254eef7f9f9afb7b19c4171e8430bdbdac48b866c9ace3b5dfc4b",
            "f82ef184910fb87c78a873199a27b20a483de11ef0a4700786e68ba8a181e680",
        }
    ),
    "effective_spans": frozenset(
        {
            "785a17f6fe0565057afa8cf0c6c7af59511dd99ab911c7a16e018f07e561357c",
            "d513b3760fd0f3279de2f5c5e05fd3950b1e665c698c9522268fc542e21f6d5b",
        }
    ),
    "model_calls": frozenset(
        {
            "ba8f4e5f53f5e64a51b674708bc6f5cffd7cac9f22fda3e600773b406f92ad89",
            "bb3440ed4fc6632dbf1410b2baa0729c6d5674e5c4ad83f05c7f2158ab5c4952",
            "cf6d0f576156a0643cdf25f431bcd6d848abb46c1bfef7d4663ff57a9a0f7a44",
            "f42371bf0dff46a61c641ecbbc21045dec8e075820c1628d5a80c8cda4e71c4f",
        }
    ),
    "phase_changes": frozenset(
        {
            "08dff8e9d4e8d23e474c8ceef5bbda0a298e7bb0609f7b17ef565c2401ee09ca",
            "42c495b4349a6724c1807ac9b62d14cd5e45114bcef190db35884050c7b41feb",
        }
    ),
    "runs": frozenset(
        {
            "410b6703bb279a0d6e38e0ac8b074e6ab9a9caeafa523919c7e437b74013399a",
            "7fca9c3b6df33de872d03d9afb886d3bbd8c60d9cbbe24ce470465c477521318",
            "d8bd722cfb0d24e4621c06e78cc358934bb06780db51030e7ec7e4c8ec7df137",
        }
    ),
    "tasks": frozenset(
        {
            "809a0257079c372cf484c313c45a7b80eb41fe7186e2b140dec96f1b05509096",
            "888e12d25fd250b9521161fd0b6c6ce3da42e5972f34bf4a15ca9fd0ea6a91b6",
            "a59bcce1ea74b0b1ac10925174a52a7d64180f375460fa6fcfdb8339690303f4",
        }
    ),
    "tool_calls": frozenset(
        {
            "30c6f034ab7aa3fb8ad9760adfcfe9f7d16d12f4cbcd1aba3af8d9cb977b34a5",
            "ff6c8d74573ea183fb14730d3c3dc6c27bdaaad39a9164339f326ff051ef2d61",
        }
    ),
}
"""The sha256 of each audit view's SQL as some autonomy installed it, this one's
included (``tests/test_views.py`` says so when a view changes): a view of a log
with any other SQL was made by someone else (``foreign_views``). Frozen, as the
upcasters are: a log keeps the views it was given until a writer replaces them."""

_CREATE_VIEW = re.compile(
    r"CREATE\s+VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:\"(?:[^\"]|\"\")*\"|\[[^\]]*\]|\S+)\s+AS\s+(.*)",
    re.S | re.I,
)


def view_digest(text: str) -> str:
    """The sha256 of the SQL a view's ``CREATE VIEW`` statement (as ``sqlite_master``
    keeps it) gives it."""
    body = _CREATE_VIEW.fullmatch(text.strip())
    return hashlib.sha256((body[1] if body else text).strip().encode("utf-8")).hexdigest()


def foreign_views(connection: sqlite3.Connection) -> list[str]:
    """The audit views of the file (its own schema, not the TEMP views a read-only
    opening adds) whose SQL no autonomy made: someone replaced them, and whoever
    reads the file with another program (``sqlite3``, Datasette) reads what they
    were made to show. Views of other names are the user's own."""
    names = ", ".join("?" * len(MADE_BY_AUTONOMY))
    rows = connection.execute(
        "SELECT name, sql FROM main.sqlite_master"
        f" WHERE type = 'view' AND lower(name) IN ({names})",  # "Tool_Calls" is tool_calls
        tuple(MADE_BY_AUTONOMY),
    )
    return sorted(
        name
        for name, text in rows
        if name not in MADE_BY_AUTONOMY
        or not isinstance(text, str)
        or view_digest(text) not in MADE_BY_AUTONOMY[name]
    )


def install_views(
    connection: sqlite3.Connection,
    *,
    temp: bool = False,
    repaired: Callable[[str], None] | None = None,
) -> None:
    """Create (or replace) every audit view on an autonomy database.

    ``temp=True`` is for a connection that must not write the file (a read-only
    log): the views the file lacks, or holds in an older form, are created as TEMP
    views, which live in the connection and shadow the file's own.

    Otherwise the views are replaced in one write transaction, after looking at them
    again inside it: writers that open a log at once (workers, after an upgrade)
    change it once, and none fails (each replaced a view another had just made: "view
    effective_spans already exists", 69 of 90 openings in rounds of six processes).
    ``repaired`` is called in that transaction with what was wrong, when views no
    autonomy made are replaced (``foreign_views``): said once, by the writer that
    put them back, where ``verify`` tells of it."""
    if not (stale := _stale(connection)):
        return  # opening a log must not need a write transaction every time
    if temp:
        for name, sql in stale:
            connection.execute(f"CREATE TEMP VIEW IF NOT EXISTS [{name}] AS {sql}")
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        stale = _stale(connection)  # another writer may have put them right meanwhile
        if stale and repaired is not None and (foreign := foreign_views(connection)):
            repaired(
                "audit views that no autonomy made were replaced by autonomy's: "
                + ", ".join(foreign)
            )
        for name, sql in stale:
            # SQLite's drop ignores case: a "Tool_Calls" goes too
            connection.execute(f'DROP VIEW IF EXISTS "{name}"')
            connection.execute(f'CREATE VIEW "{name}" AS {sql}')
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _stale(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    """The views (name, SQL) that the file lacks, or holds in another form than this
    autonomy's. Another form means any other text: a view that wraps this one (a
    filter around it) reads other rows. A table in a view's place is refused."""
    names = ", ".join("?" * len(VIEWS))
    existing = {  # by SQLite's names, which ignore case: "Tool_Calls" is tool_calls
        name.lower(): (kind, text)
        for name, kind, text in connection.execute(
            f"SELECT name, type, sql FROM sqlite_master WHERE lower(name) IN ({names})",
            tuple(VIEWS),
        )
    }
    stale = []
    for name, sql in VIEWS.items():
        kind, text = existing.get(name, ("view", ""))
        if kind != "view":  # a table of forged rows in the view's place
            raise sqlite3.DatabaseError(
                f"the log has a {kind} named {name} where autonomy keeps an audit view: "
                "it was changed, and audits of it would read what was put there"
            )
        if text != f'CREATE VIEW "{name}" AS {sql.strip()}':
            stale.append((name, sql.strip()))
    return stale
