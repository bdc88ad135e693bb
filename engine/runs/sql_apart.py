"""``run_sql`` in a process of its own, which is ended when the query outlives its
time limit: what ``POST /api/sql`` runs.

SQLite looks at a query's deadline (its progress handler) only between the steps of
its program, and one step can run for minutes: ``printf('%.*c', 2000000000, 'x')``
ran 15 s past a 10 s limit (its value too big to keep, SQLite went on making it)
and answered a null; 64 of them in one row, many minutes; 45 such requests at once
held every thread of the service. ``instr`` of two long strings and a ``LIKE`` that
backtracks are such steps too. The process is a new interpreter (``python -m
engine.runs.sql_apart``), not a fork of the service's threads; it costs about
0.15 s a query.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.runs.audit import AuditError, AuditResult, Limits, run_sql
from events.errors import StoreUnavailable

OVERRUN_GRACE = 5.0
"""How long past its limit the process may take before it is ended: its own deadline
stops the query in time whenever SQLite looks at it (and the process starts first)."""

ERRORS: dict[str, type[Exception]] = {
    "AuditError": AuditError,
    "StoreUnavailable": StoreUnavailable,
}
"""The errors that come back as themselves: the query's, and a log out of reach."""


def run_sql_apart(db: Path | str, sql: str, params: dict[str, Any], limits: Limits) -> AuditResult:
    """``run_sql(db, sql, params, limits)`` in a process of its own; an ``AuditError``
    saying the query was stopped when the process outlives ``limits.seconds``."""
    child = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait = None if limits.seconds is None else limits.seconds + OVERRUN_GRACE
    try:
        out, err = child.communicate(pickle.dumps((str(db), sql, params, limits)), timeout=wait)
    except subprocess.TimeoutExpired:
        raise AuditError(
            f"the SQL query (read-only) was stopped after {limits.seconds:g} s, this "
            "service's limit"
        ) from None
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    if child.returncode != 0 or not out:
        said = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise AuditError(
            f"the SQL query (read-only) ended its process without an answer (exit status "
            f"{child.returncode}) {said[0]}".rstrip()
        )
    kind, value = pickle.loads(out)  # our own child's, made from plain values
    if kind == "result":
        assert isinstance(value, AuditResult)
        return value
    error, text = value
    raise ERRORS.get(error, RuntimeError)(text)


def _main() -> None:
    """The process: the query from stdin, the result (or the error's class and
    text) to stdout, pickled."""
    db, sql, params, limits = pickle.loads(sys.stdin.buffer.read())
    try:
        answer: tuple[str, Any] = ("result", run_sql(db, sql, params, limits))
    except Exception as e:  # said to the service, which answers with it
        answer = ("error", (type(e).__name__, str(e)))
    sys.stdout.buffer.write(pickle.dumps(answer))


if __name__ == "__main__":
    _main()
