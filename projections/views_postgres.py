"""The audit views of ``projections.views`` for a log in PostgreSQL: the same names
and the same columns, so the same questions (and ``autonomy audit``) work on both.

SQLite's ``json_extract`` returns typed values; ``->>`` returns text, so numbers are
read back (``autonomy_integer``, ``autonomy_real``) and booleans become 0/1 as in
SQLite (``autonomy_flag``); a value of another type is NULL (``TYPED_FUNCTIONS``). JSON
values that are objects or arrays (``arguments``, ``parameters``,
``files_changed``) are their JSON text, as SQLite gives them.

Every payload is read through ``autonomy_clean(data)`` (``nul_safe``): a log keeps
any text, NUL characters included (a command's output, a model's answer), and
PostgreSQL's JSON operators refuse a document holding ``\u0000`` anywhere, so one
such event failed every query that read it (the ``runs`` view, the ``tasks``
query, the service's run page) and, once the audit indexes existed, every append
of it. ``autonomy_clean`` gives the document with each NUL as U+FFFD; the log
itself is untouched.

``install_views`` creates them, or replaces them when this module's text changed
(a comment on each view holds the digest of its SQL and of the functions).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from projections.views import with_effective

VIEWS: dict[str, str] = {
    "effective_spans": """
WITH RECURSIVE spans(run_id, lo, hi) AS (
  SELECT r.run_id,
    (SELECT max(w.version) FROM events w
      WHERE w.run_id = r.run_id AND w.type = 'run.rewound')::bigint,
    r.last::bigint
  FROM (SELECT run_id, max(version) AS last FROM events
         WHERE run_id IN (SELECT run_id FROM events WHERE type = 'run.rewound')
         GROUP BY run_id) r
  UNION ALL
  SELECT s.run_id,
    coalesce((SELECT max(w.version) FROM events w
               WHERE w.run_id = s.run_id AND w.type = 'run.rewound'
                 AND w.version <= least(autonomy_integer(t.data->'to_version'), s.lo - 1)), 0)::bigint,
    least(autonomy_integer(t.data->'to_version'), s.lo - 1)
  FROM spans s JOIN events t ON t.run_id = s.run_id AND t.version = s.lo
  WHERE s.lo > 0
)
SELECT run_id, lo AS after_version, hi AS upto_version FROM spans
""",
    "runs": """
SELECT r.run_id, r.started_at, r.last_event_at, r.events,
  (SELECT s.data->>'goal' FROM events s
     WHERE s.run_id = r.run_id AND s.type = 'run.started' ORDER BY s.version LIMIT 1) AS goal,
  (SELECT s.data->>'workspace' FROM events s
     WHERE s.run_id = r.run_id AND s.type IN ('run.started', 'run.forked')
     ORDER BY s.version LIMIT 1) AS workspace,
  CASE l.type WHEN 'run.finished' THEN l.data->>'status'
              WHEN 'user.asked' THEN 'waiting_for_input'
              ELSE 'running' END AS status,
  CASE l.type WHEN 'run.finished' THEN l.data->>'reason' END AS reason
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
  data->>'trigger' AS trigger,
  data->>'from_phase' AS from_phase,
  data->>'to_phase' AS to_phase,
  data->>'reason' AS reason,
  data->>'decided_by' AS decided_by
FROM events e WHERE type = 'phase.changed' AND EFFECTIVE(e)
""",
    "tasks": """
SELECT a.run_id,
  a.data->>'task_id' AS task_id,
  a.data->>'title' AS title,
  a.data->>'target_file' AS target_file,
  coalesce(
    (SELECT autonomy_integer(u.data->'priority') FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND u.data->>'task_id' = a.data->>'task_id'
         AND u.data->>'priority' IS NOT NULL
         AND EFFECTIVE(u)
       ORDER BY u.version DESC LIMIT 1),
    autonomy_integer(a.data->'priority')) AS priority,
  coalesce(
    (SELECT u.data->>'status' FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND u.data->>'task_id' = a.data->>'task_id'
         AND EFFECTIVE(u)
       ORDER BY u.version DESC LIMIT 1),
    'new') AS status,
  coalesce(
    (SELECT max(autonomy_integer(u.data->'attempt')) FROM events u
       WHERE u.run_id = a.run_id AND u.type = 'task.updated'
         AND u.data->>'task_id' = a.data->>'task_id'
         AND EFFECTIVE(u)),
    0) AS attempts,
  (SELECT u.data->>'error' FROM events u
     WHERE u.run_id = a.run_id AND u.type = 'task.updated'
       AND u.data->>'task_id' = a.data->>'task_id'
       AND u.data->>'error' != ''
       AND EFFECTIVE(u)
     ORDER BY u.version DESC LIMIT 1) AS last_error,
  a.version AS added_version
FROM events a WHERE a.type = 'task.added'
  AND EFFECTIVE(a)
""",
    "model_calls": """
SELECT q.run_id,
  q.data->>'call_id' AS call_id,
  q.version,
  q.recorded_at AS requested_at,
  q.data->>'role' AS role,
  q.data->>'model' AS model,
  q.data->>'endpoint' AS endpoint,
  q.data->>'conversation' AS conversation,
  q.data->>'request_digest' AS request_digest,
  CASE WHEN r.position IS NOT NULL THEN 'ok'
       WHEN f.failures > 0 THEN 'failed'
       -- an answer follows its request at once: anything else after it means the
       -- call was cut off (a kill, a crash) and will never be answered
       WHEN q.version < (SELECT max(z.version) FROM events z WHERE z.run_id = q.run_id)
         THEN 'interrupted'
       ELSE 'pending' END AS status,
  coalesce(f.failures, 0) AS failures,
  f.last_failure,
  autonomy_integer(r.data#>'{usage,prompt_tokens}') AS prompt_tokens,
  autonomy_integer(r.data#>'{usage,completion_tokens}') AS completion_tokens,
  autonomy_real(r.data->'duration_ms') AS duration_ms,
  r.data->>'done_reason' AS done_reason,
  r.data->>'model_identity' AS model_identity,
  CASE WHEN json_typeof(r.data->'tool_calls') = 'array'
       THEN json_array_length(r.data->'tool_calls')
       WHEN r.data->'tool_calls' IS NOT NULL THEN 0 END AS tool_calls,
  autonomy_flag(r.data->'extracted_from_text') AS extracted_from_text,
  r.data->>'cached_from' AS cached_from
FROM events q
LEFT JOIN events r
  ON r.run_id = q.run_id AND r.type = 'model.responded'
 AND r.data->>'call_id' = q.data->>'call_id' AND EFFECTIVE(r)
LEFT JOIN LATERAL (
  SELECT count(*) OVER () AS failures,
         CASE m.data->>'detail' WHEN '' THEN m.data->>'kind'
              ELSE (m.data->>'kind') || ': ' || (m.data->>'detail') END AS last_failure
  FROM events m
  WHERE m.run_id = q.run_id AND m.type = 'model.failed'
    AND m.data->>'call_id' = q.data->>'call_id' AND EFFECTIVE(m)
  ORDER BY m.version DESC LIMIT 1
) f ON true
WHERE q.type = 'model.requested' AND EFFECTIVE(q)
""",
    "tool_calls": """
SELECT q.run_id,
  q.data->>'call_id' AS call_id,
  q.version AS requested_version,
  x.version AS executed_version,
  q.recorded_at AS requested_at,
  q.data->>'tool' AS tool,
  (q.data->'arguments')::text AS arguments,
  autonomy_flag(x.data->'ok') AS ok,
  x.data->>'error' AS error,
  x.data->>'result' AS result,
  (x.data->'files_changed')::text AS files_changed
FROM events q
LEFT JOIN events x
  ON x.run_id = q.run_id AND x.type = 'tool.executed'
 AND x.data->>'call_id' = q.data->>'call_id' AND EFFECTIVE(x)
WHERE q.type = 'tool.requested' AND EFFECTIVE(q)
""",
    "decisions": """
SELECT run_id, version, recorded_at,
  data->>'action' AS action,
  (data->'parameters')::text AS parameters,
  data->>'reasoning' AS reasoning,
  data->>'decided_by' AS decided_by,
  autonomy_flag(data->'fallback_used') AS fallback_used,
  data->>'fallback_reason' AS fallback_reason
FROM events e WHERE type = 'arbiter.decided' AND EFFECTIVE(e)
""",
}


def _in_effect(e: str) -> str:
    # as in SQLite, but a run never rewound is answered by one index probe first:
    # asked of the spans view alone, PostgreSQL works the recursive view out again for
    # every event a query looks at (a task list of 20 runs took 430 ms, now 9 ms)
    return f"""(NOT EXISTS (SELECT 1 FROM events w WHERE w.run_id = {e}.run_id
                   AND w.type = 'run.rewound')
       OR EXISTS (SELECT 1 FROM effective_spans s WHERE s.run_id = {e}.run_id
                   AND {e}.version > s.after_version AND {e}.version <= s.upto_version))"""


CLEAN_FUNCTION = r"""
CREATE OR REPLACE FUNCTION autonomy_clean(doc json) RETURNS json
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN strpos(doc::text, '\u0000') = 0 THEN doc
    ELSE regexp_replace(doc::text, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\ufffd', 'g')::json
  END
$$"""
"""``doc``, or when its text holds an escaped NUL (a ``\u0000`` not itself escaped),
``doc`` with each one as U+FFFD: a document the JSON operators can read."""

TYPED_FUNCTIONS = (
    r"""
CREATE OR REPLACE FUNCTION autonomy_integer(value json) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT substring(value::text from '^-?[0-9]{1,15}$')::bigint
$$""",
    r"""
CREATE OR REPLACE FUNCTION autonomy_real(value json) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT substring(value::text from '^-?[0-9]{1,20}(?:[.][0-9]{1,20})?(?:[eE][-+]?[0-9]{1,2})?$')::float8
$$""",
    r"""
CREATE OR REPLACE FUNCTION autonomy_flag(value json) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE value::text WHEN 'true' THEN 1 WHEN 'false' THEN 0 END
$$""",
)
"""A payload value (``->``, the JSON text of it) as a view's column: an integer of
at most 15 digits (a count, a version), a number as msgspec writes one, or a boolean
as 1/0; anything else (a string where a number was, even ``"5"``; ``1e30`` for an
integer; ``"maybe"``) is NULL, as SQLite's queries take only an integer for a count.
Each reads its argument once, so that PostgreSQL inlines it (a pattern that matches
or NULL, then the cast): a check and a cast apart cost a third more. A cast (``::bigint``) failed on such a value, and with
it every query that looked at the event: with a view, the whole view for every run
(one run's ``"to_version": "abc"`` and the ``runs`` view failed). Fifteen digits: no
count reaches them, and sums of them do not overflow."""

FUNCTIONS = (CLEAN_FUNCTION, *TYPED_FUNCTIONS)
"""What the views read payloads through, made before them."""

_DOCUMENT = re.compile(r"\b((?:\w+\.)?data)(?=->|#>)")


def nul_safe(sql: str) -> str:
    """``sql`` reading each payload (``data->...``, ``data#>...``) through
    ``autonomy_clean``: a path (``#>``) was read from the bare document, and a model's
    answer holding a NUL failed ``model_calls`` (its token counts) and so
    ``audit model-usage``."""
    return _DOCUMENT.sub(r"autonomy_clean(\1)", sql)


VIEWS = {name: nul_safe(with_effective(sql, _in_effect)) for name, sql in VIEWS.items()}

_VIEWS_LOCK = (0x6175746F, 3)


def _digest(sql: str) -> str:
    # the functions too: a view reads through them, and one changed alone was kept
    made = "\n".join((*FUNCTIONS, sql.strip()))
    return "autonomy " + hashlib.sha256(made.encode()).hexdigest()[:16]


def view_statements() -> tuple[str, ...]:
    """The statements that make the audit views (and the functions they read payloads
    through) in an empty schema: what ``verify`` compares the log's with."""
    return (*FUNCTIONS, *(f"CREATE VIEW {name} AS {sql.strip()}" for name, sql in VIEWS.items()))


def install_views(connection: Any) -> None:
    """Create (or replace) every audit view on an autonomy database (a psycopg
    connection in autocommit mode); no write when they are all current."""
    wanted = {name: _digest(sql) for name, sql in VIEWS.items()}
    current = dict(
        connection.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c"
            " WHERE c.relkind = 'v' AND c.relnamespace = to_regnamespace(quote_ident(current_schema()))"
        ).fetchall()
    )
    if all(current.get(name) == digest for name, digest in wanted.items()):
        return
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s, %s)", _VIEWS_LOCK)
        # views read each other (effective_spans): all go, then come back in order
        for name in reversed(VIEWS):
            connection.execute(f"DROP VIEW IF EXISTS {name} CASCADE")
        functions = ("",) * len(FUNCTIONS)
        for name, statement in zip((*functions, *VIEWS), view_statements(), strict=True):
            connection.execute(statement)
            if name:
                connection.execute(f"COMMENT ON VIEW {name} IS '{wanted[name]}'")
