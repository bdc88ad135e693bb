"""The service: a JSON API over an event log and the web run browser, as a Starlette app.

    GET  /                                  the run list (HTML)
    GET  /runs/{run_id}                     a run's page: trace, phases, tasks, state, audit
    GET  /runs/{run_id}/diff?before=&after= a file's change as a unified diff
    GET  /api/runs                          one summary per run (``projections.summaries``)
    GET  /api/runs/{run_id}?at=V            the pipeline and orchestration state at V
    GET  /api/runs/{run_id}/events?after=V&type=T&limit=N   a page; Link rel=next
    GET  /api/runs/{run_id}/stream          Server-Sent Events while the run is live
    GET  /api/runs/{run_id}/blobs/{digest}  a stored file content
    GET  /api/audit/{query}?run_id=&arg=    a named audit query (``engine.runs.audit``)
    POST /api/sql                           {"sql": ..., "run_id": ...}, read-only (SQLite)
    POST /api/runs/{run_id}/answer          {"answer": ...} for a run waiting for input

On an SQLite log every request opens the log for itself (``open_store``) and closes
it: the writer is another process (``autonomy run``), and SQLite's WAL lets any
number of readers see its commits. On a PostgreSQL log the service opens one store
when it starts (``_Web.lifespan``) and every request shares it: its pool is the
service's connections, its one ``LISTEN`` connection wakes every live stream
(``events.postgres``), and a page costs no connection set-up. Either way the
service holds no state of its own; each answer comes from the library the CLI
calls (``projections.project``, ``engine.runs.audit``, the store).

Errors are answered with what happened, never a traceback: 404 for an unknown run or
blob, 400 for a bad query or answer, 503 with ``Retry-After`` while the log cannot
be reached (``StoreUnavailable``: a PostgreSQL server down or refusing, an SQLite
log locked), 500 for anything else.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

import anyio.to_thread
import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from engine.agent.runlog import answer_question
from engine.errors import ConfigError, NotWaiting
from engine.runs.audit import (
    QUERIES,
    AuditError,
    AuditResult,
    Limits,
    audited,
    json_value,
    run_query,
)
from engine.runs.diff import diff_runs
from engine.runs.sql_apart import run_sql_apart
from engine.runs.state import state_document
from engine.storage import is_postgres_url, open_store
from engine.web.pages import NoSuchPage, compact, is_live, render, run_page
from events.errors import (
    AutonomyError,
    BlobNotFound,
    ConcurrencyError,
    RunNotFound,
    StoreUnavailable,
)
from events.store import EventStore, RecordedEvent
from projections import project
from projections.summaries import RunSummary, status_at_end, summaries_and_problems

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_COOKIE = "autonomy_token"
DIFF_BYTES = 1024 * 1024
"""The largest content a diff page compares: a larger file's versions are linked."""
DIFF_LINES = 2_000
"""The most lines either side of a diff page may have, as well: difflib's time grows
with the square of the lines, and holds the GIL. Two files far under ``DIFF_BYTES``,
a line inserted after each of 10,000, took 30 s a request while every other request
waited; at 2,000 lines the worst pair measured takes about half a second."""
AUDIT_ROWS = 200
"""The most rows each audit table of a run page shows, as its trace shows 200 steps
(``TRACE_PAGE``): a link leads to the rest."""
RETRY_AFTER = 2
"""Seconds a client is told to wait (``Retry-After``) when the log cannot be reached."""


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What ``autonomy serve`` was given."""

    db: Path | str
    token: str = ""
    """Required on every request when not empty."""
    wait_seconds: float = 1.0
    """The longest a live stream waits for new events at once (``EventStore.wait_for_append``)
    before it looks again: what a lost notification can delay it by, and how soon
    a stream whose client left lets its thread go."""
    keepalive_seconds: float = 15.0
    stream_threads: int = 64
    """Threads the live streams wait in, all together (requests keep the rest): as
    many as ``max_streams``, so that no stream waits for another's wait to end (with
    16, 200 idle streams made a busy run's tail 12 s late)."""
    max_streams: int = 64
    """Live streams open at once; one more is a 503 with ``Retry-After`` (the run
    page's tail connects again after it). Each holds a connection to the log and a
    page of events: 200 streams nobody read took the service to 1.5 GB."""
    stream_page: int = 100
    """The most events a live stream reads, and holds, at once."""
    allowed_hosts: tuple[str, ...] = ("*",)
    """Host headers accepted; loopback names only when serving without a token, so a
    page elsewhere cannot reach the service by rebinding a DNS name to 127.0.0.1."""
    busy_seconds: float = 2.0
    """The longest a request waits for an SQLite log another process holds locked
    before the answer is 503 (``Retry-After``): with the 30 s a command waits, 45 page
    requests took the 40 threads, and nothing else was answered until the lock went."""
    sql_seconds: float = 10.0
    """The longest a ``POST /api/sql`` query, or an ``/api/audit`` one on an SQLite
    log, may run: a query that would never end (a recursive one without a stop)
    keeps neither a thread nor a core."""
    sql_rows: int = 10_000
    """The most rows a ``POST /api/sql`` or ``/api/audit`` answer holds (``"truncated":
    true`` when more matched): ``SELECT * FROM events`` of a large log is not read
    into memory whole."""
    sql_bytes: int = 16 * 1024 * 1024
    """The most text and bytes a ``POST /api/sql`` answer's rows hold together
    (``"truncated": true`` past it), and the longest value a query may make."""
    events_page: int = 1_000
    """The most events one ``GET /api/runs/RUN/events`` answer holds (and the most a
    ``limit`` may ask for; a ``Link: <...>; rel="next"`` header points at the rest),
    and the most a live stream reads at once."""
    shared_store: bool = True
    """On a PostgreSQL log, one store for the service's life, shared by every
    request; False opens one per request, as for an SQLite log (the baseline of
    ``benchmarks/bench_serve_postgres.py``)."""


def create_app(settings: ServiceSettings, store: EventStore | None = None) -> Starlette:
    """The ASGI app serving the log at ``settings.db``. ``store``: that log, already
    open, for the app to share and close when it stops (``autonomy serve`` opens a
    PostgreSQL log before it listens, so that an unreachable server is one clear
    error); None: the app opens what it needs."""
    web = _Web(settings, store)
    routes: list[BaseRoute] = [
        Route("/", web.run_list),
        Route("/runs/{run_id}/diff", web.diff_page),
        Route("/runs/{run_id}", web.run_page),
        Route("/api/runs", web.api_runs),
        Route("/api/runs/{run_id}/events", web.api_events),
        Route("/api/runs/{run_id}/stream", web.api_stream),
        Route("/api/runs/{run_id}/blobs/{digest}", web.api_blob),
        Route("/api/runs/{run_a}/diff/{run_b}", web.api_diff),
        Route("/api/runs/{run_id}/answer", web.api_answer, methods=["POST"]),
        Route("/api/runs/{run_id}", web.api_state),
        Route("/api/audit/{query}", web.api_audit),
        Route("/api/sql", web.api_sql, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("engine.web", "static")]), name="static"),
    ]
    middleware = [  # the first is the outermost: every answer gets the headers
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts)),
        Middleware(SameOriginWrites, accepted=_methods(routes)),
        Middleware(NoNulInTheUrl),
    ]
    if settings.token:
        middleware.append(Middleware(TokenMiddleware, token=settings.token))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={Exception: _error, HTTPException: _error, AutonomyError: _error},
        lifespan=web.lifespan,
    )
    app.state.stop_streams = web.stop_streams  # for the server, as it is told to stop
    return app


def _json_of_python(data: bytes) -> bool:
    """Whether Python's own ``json`` reads ``data`` (it takes lone surrogates)."""
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True


def _methods(routes: list[BaseRoute]) -> frozenset[str]:
    """Every method a route of ``routes`` takes (a mount's files: GET and HEAD)."""
    return frozenset(
        {"GET", "HEAD"}.union(
            *(route.methods or () for route in routes if isinstance(route, Route))
        )
    )


SQL_ON_POSTGRES = (
    "POST /api/sql is not offered on a PostgreSQL log: a query would run with the "
    "service's database role, which can do more than read even in a read-only "
    "transaction (COPY ... TO PROGRAM, pg_read_file, pg_terminate_backend of the "
    "writers' sessions); use the audit queries (/api/audit/NAME), or `autonomy audit "
    "--sql` with your own credentials"
)
"""Why: SQLite's authorizer lets a query read and nothing else (``engine.runs.audit``);
PostgreSQL has no such hook, and ``SET ROLE`` is no bound (``set_config('role', ...)``
in the query undoes it for a session user who may)."""


class NoNulInTheUrl:
    """A URL holding a NUL character (``/api/runs/a%00b``, ``?run_id=%00``) names
    nothing a log holds (a run id or a digest never has one): 400, before any log is
    read. A PostgreSQL log could not even be asked (its text never holds NUL), and
    answered 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if scope["type"] == "http" and (
            "\x00" in scope["path"] or b"%00" in query or b"\x00" in query
        ):
            answer = JSONResponse({"error": "a NUL character in the URL names nothing"}, 400)
            await answer(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SameOriginWrites:
    """Refuse a request that changes something (any method but GET, HEAD, OPTIONS)
    from a page of another site: cross-site request forgery against a service on the
    user's loopback, which a browser lets any page attempt. Such a request must carry
    a JSON body (``Content-Type: application/json``: a browser asks the service before
    sending that across sites, and this one never says yes; a form can only send
    ``text/plain``, ``multipart/form-data`` or urlencoded bodies) and, when it says
    where it comes from (``Origin``, which browsers send), come from this very host
    (``Host``, or ``X-Forwarded-Host`` behind a reverse proxy).
    A client that is no browser sends no ``Origin``: it is not refused for that."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, accepted: frozenset[str]) -> None:
        self.app = app
        self.changing = accepted - self.SAFE
        """The methods some route takes that may change something: a request by any
        other changes nothing, and is answered by the routes (405), not refused as
        one that would (a DELETE was told "send the body as application/json")."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.changing:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        origin = request.headers.get("origin")
        refused: tuple[int, str] | None = None
        # behind a reverse proxy the Host may be the proxy's upstream; the host the
        # browser asked is then X-Forwarded-Host, which a page of another site cannot
        # set (a form sends no header of its own; a script's would need the preflight)
        hosts = {
            request.headers.get(name, "").split(",")[0].strip().lower()
            for name in ("host", "x-forwarded-host")
        }
        if origin is not None and _netloc(origin) not in hosts - {""}:
            refused = (403, f"a page of another site ({origin}) cannot change this service's runs")
        elif request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            refused = (415, "send the body as application/json")
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, message = refused
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


class SecurityHeaders:
    """What every answer tells the browser, so that text from the log (which a model
    wrote) can never act as part of the service even if a page failed to escape it:
    scripts only from the service's own files (``app.js``: no inline script, no
    ``eval``), no plugins, not framed by another site, no sniffing a stored file's
    ``text/plain`` into HTML. Styles may be inline (the trace's waterfall bars)."""

    HEADERS = (
        (
            b"content-security-policy",
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; object-src 'none'; base-uri 'none'; "
            b"form-action 'self'; frame-ancestors 'none'",
        ),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _netloc(origin: str) -> str:
    """``host[:port]`` of an ``Origin`` header ("" for ``null`` or anything else)."""
    scheme, _, rest = origin.lower().partition("://")
    return rest if scheme in ("http", "https") and rest and "/" not in rest else ""


class TokenMiddleware:
    """Refuse every request without the token: ``Authorization: Bearer T``, ``?token=T``
    (which also sets a same-site cookie, so the pages' own requests carry it), or that
    cookie."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()
        self.cookie = hmac.new(self.token, b"autonomy service cookie", "sha256").hexdigest()
        """What the cookie holds: not the token itself, since a browser sends a host's
        cookies to every port of it (another service there would read it), and the
        token may open more than this one service."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token", "")
        header = request.headers.get("authorization", "")
        candidates = [given, header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""]
        name = _cookie_name(scope)
        cookie = request.cookies.get(name, "")
        if not (
            any(c and hmac.compare_digest(c.encode(), self.token) for c in candidates)
            or (cookie and hmac.compare_digest(cookie.encode(), self.cookie.encode()))
        ):
            refused = JSONResponse(
                {"error": "this service needs its token: Authorization: Bearer T, or ?token=T"},
                status_code=401,
            )
            await refused(scope, receive, send)
            return
        if not given:
            await self.app(scope, receive, send)
            return

        async def with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                secure = "; Secure" if request.url.scheme == "https" else ""
                cookie = f"{name}={self.cookie}; Path=/; HttpOnly; SameSite=Strict{secure}"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, with_cookie)


def _cookie_name(scope: Scope) -> str:
    """The cookie's name, by the port the service listens on: a host's cookies go to
    all its ports, so two services on one host keep theirs apart."""
    server = scope.get("server") or ("", None)
    return f"{TOKEN_COOKIE}_{server[1]}" if server[1] else TOKEN_COOKIE


async def _error(request: Request, error: Exception) -> Response:
    """Errors as JSON with a clear message (HTML for a page), never a traceback."""
    headers: dict[str, str] = {}
    if isinstance(error, HTTPException):
        status, message = error.status_code, str(error.detail)
        headers.update(error.headers or {})
    elif isinstance(error, RunNotFound | BlobNotFound | NoSuchPage):
        status, message = 404, str(error)
    elif isinstance(error, NotWaiting):  # answered already: a race lost, or late
        status, message = 409, str(error)
    elif isinstance(error, AuditError | ConfigError):
        status, message = 400, str(error)
    elif isinstance(error, ConcurrencyError):
        status, message = 409, f"{error} (someone else wrote to the run meanwhile: look again)"
    elif isinstance(error, StoreUnavailable):
        status, message = 503, f"the log cannot be reached now; try again: {error}"
    elif isinstance(error, AutonomyError):
        status, message = 500, str(error)
    else:
        status, message = 500, f"internal error: {type(error).__name__}: {error}"
    # a log that cannot be reached now is not a failure of this request: ask again
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return HTMLResponse(
        render("error.html", status=status, message=message),
        status_code=status,
        headers=headers,
    )


class _Web:
    """The endpoints; each takes the log (``store``), calls the library and shapes
    the answer."""

    def __init__(self, settings: ServiceSettings, shared: EventStore | None = None) -> None:
        self.settings = settings
        self.shared = shared
        """The PostgreSQL log's one store, while the service runs (or from its start,
        when the app was handed it)."""
        self._stream_threads: anyio.CapacityLimiter | None = None
        """Where live streams wait (``_waiting``); made in the event loop."""
        self._loop: asyncio.AbstractEventLoop | None = None
        """The event loop live streams run in, once one has opened."""
        self._waits: set[anyio.CancelScope] = set()
        """The live streams' waits for new events, now."""
        self._streams = 0
        """The live streams running now (in the event loop: no lock)."""
        self.stopping = False
        """The service is stopping (``stop_streams``): live streams end."""
        self._sql_slots = threading.BoundedSemaphore(SQL_AT_ONCE)
        """``POST /api/sql`` queries running now, each in a process of its own
        (``run_sql_apart``): more at once are a 503, never a thread waiting."""

    def stop_streams(self) -> None:
        """End every live stream now, and each one opened from now on after its past
        events: the service is stopping. A live stream never ends by itself, and the
        server's grace period (``autonomy serve``'s, 1 s) ran out while they waited;
        it then cancelled each one, which logged a traceback per open page. Safe to
        call from a signal handler."""
        self.stopping = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._end_waits)

    def _end_waits(self) -> None:
        for waiting in list(self._waits):
            waiting.cancel()

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """On a PostgreSQL log, open the store every request shares (its errors end
        the start-up) unless the app was given it, and close it at shutdown; it is
        ``app.state.store``."""
        db = self.settings.db
        if self.shared is None and is_postgres_url(db) and self.settings.shared_store:
            # read_only: summaries are caught up in memory, so a page never writes;
            # an answer still appends
            self.shared = await anyio.to_thread.run_sync(
                lambda: open_store(db, must_exist=True, read_only=True)
            )
        app.state.store = self.shared
        try:
            yield
        finally:
            store, self.shared = self.shared, None
            if store is not None:
                await anyio.to_thread.run_sync(store.close)

    @contextmanager
    def store(self, *, write: bool = False) -> Iterator[EventStore]:
        """The log for one request: the shared store of a PostgreSQL log, else one
        opened for it, read-only (it may be on read-only storage, and a reader
        never writes) unless the request writes (an answer)."""
        if self.shared is not None:
            yield self.shared
            return
        store = open_store(
            self.settings.db,
            must_exist=True,
            read_only=not write,
            busy_timeout=self.settings.busy_seconds,
        )
        try:
            yield store
        finally:
            store.close()

    def _render(self, template: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(render(template, **context))

    # -- pages -------------------------------------------------------------------------

    def run_list(self, request: Request) -> HTMLResponse:
        return self._render("runs.html", runs=self._summaries(), db=str(self.settings.db))

    def run_page(self, request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        with self.store() as store:
            if store.last_version(run_id) == 0:
                raise RunNotFound(run_id)
            audit = {
                name: audited(cast(Any, store).connection, name, run_id, AUDIT_ROWS)
                for name, query in QUERIES.items()
                if not query.parameters
            }
            page = _int_param(request, "page", "a page number", least=1)
            return HTMLResponse(run_page(store, run_id, audit=audit, page=page))

    def diff_page(self, request: Request) -> HTMLResponse:
        run_id = request.path_params["run_id"]
        path = request.query_params.get("path", "")
        before, after = (request.query_params.get(k, "") for k in ("before", "after"))
        with self.store() as store:
            if store.last_version(run_id) == 0:
                raise RunNotFound(run_id)
            old_bytes = store.get(before) if before else b""
            new_bytes = store.get(after) if after else b""
        # a model's 9 MB file made a 73 MB page and 35 s of the service's CPU
        too_large = (
            f"{DIFF_BYTES / 1048576:g} MiB" if DIFF_BYTES >= 1048576 else f"{DIFF_BYTES:,} bytes"
        )
        old_lines: list[str] = []
        new_lines: list[str] = []
        if max(len(old_bytes), len(new_bytes)) <= DIFF_BYTES:
            old_lines = old_bytes.decode(errors="replace").splitlines(keepends=True)
            new_lines = new_bytes.decode(errors="replace").splitlines(keepends=True)
            # counted as difflib sees them: a file of \r (or \f) has lines without \n
            too_large = (
                f"{DIFF_LINES:,} lines" if max(len(old_lines), len(new_lines)) > DIFF_LINES else ""
            )
        if too_large:
            return self._render(
                "diff.html",
                run_id=run_id,
                path=path,
                lines=[],
                new="",
                too_large=too_large,
                blobs=[
                    (name, digest)
                    for name, digest in (("before", before), ("after", after))
                    if digest
                ],
            )
        lines = list(
            difflib.unified_diff(
                old_lines,
                new_lines,
                f"a/{path}" if before else "/dev/null",
                f"b/{path}" if after else "/dev/null",
            )
        )
        return self._render(
            "diff.html",
            run_id=run_id,
            path=path,
            lines=lines,
            new="".join(new_lines),
            too_large="",
            blobs=[],
        )

    # -- the API -----------------------------------------------------------------------

    def api_runs(self, request: Request) -> JSONResponse:
        return JSONResponse(self._summaries())

    def _summaries(self) -> list[dict[str, Any]]:
        """Every run's summary (``projections.summaries``: one stored row per run,
        caught up in memory), newest first; a run that cannot be folded is listed as
        unreadable, its error as the reason."""
        with self.store() as store:
            summaries, problems = summaries_and_problems(store)
        rows: list[dict[str, Any]] = [msgspec.to_builtins(s) for s in summaries]
        rows += [
            {
                **dict.fromkeys(RunSummary.__struct_fields__, ""),
                "run_id": run_id,
                "status": "unreadable",
                "reason": str(error),
            }
            for run_id, error in problems.items()
        ]
        rows.sort(key=lambda row: row["run_id"])
        rows.sort(key=lambda row: row["started_at"], reverse=True)
        return rows

    def api_state(self, request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        at = _int_param(request, "at")
        with self.store() as store:
            if at is not None and at > store.last_version(run_id) > 0:
                raise HTTPException(400, f"run {run_id} has no version {at}")
            return JSONResponse(state_document(project(store, run_id, upto=at)))

    def api_events(self, request: Request) -> JSONResponse:
        """One page of a run's events: at most ``limit`` (``events_page`` at most and by
        default), read no further than the page needs; a ``Link`` header with
        ``rel="next"`` when the run has more after it."""
        run_id = request.path_params["run_id"]
        after = _int_param(request, "after") or 0
        page = self.settings.events_page
        limit = min(_int_param(request, "limit", "a number of events", least=1) or page, page)
        wanted = set(request.query_params.getlist("type"))
        events: list[dict[str, Any]] = []
        more = False
        with self.store() as store:
            if store.last_version(run_id) == 0:
                raise RunNotFound(run_id)
            for event in store.read(run_id, after=after):
                if wanted and event.type not in wanted:
                    continue
                if len(events) == limit:
                    more = True
                    break
                events.append(event_document(event))
        headers = {}
        if more:
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
            query.append(("after", str(events[-1]["version"])))
            headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
        return JSONResponse(events, headers=headers)

    def _waiting(self) -> anyio.CapacityLimiter:
        """The threads live streams wait for new events in: a pool of their own
        (``stream_threads``), so that however many streams are open, a page or an API
        request still gets a thread at once (in the shared pool of 40 they took every
        one, and each request waited for a stream's wait to end)."""
        if self._stream_threads is None:  # made in the event loop, on first use
            self._stream_threads = anyio.CapacityLimiter(self.settings.stream_threads)
        return self._stream_threads

    async def api_stream(self, request: Request) -> StreamingResponse:
        run_id = request.path_params["run_id"]
        if self._streams >= self.settings.max_streams:
            raise HTTPException(
                503,
                f"this service has {self.settings.max_streams} live streams open, as many as "
                "it serves at once; try again",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        # taken before the first wait: streams asked for at once were all let in (150
        # of 64), each seeing the count before any had begun
        self._streams += 1
        release = self._release_once()
        opened = ExitStack()
        try:
            after = _int_param(request, "after")
            if after is None:
                last_id = request.headers.get("last-event-id", "0")
                after = _whole(last_id) or 0
            store = await anyio.to_thread.run_sync(opened.enter_context, self.store())
            last = await anyio.to_thread.run_sync(store.last_version, run_id)
            if last == 0:
                raise RunNotFound(run_id)
        except BaseException:
            opened.close()
            release()
            raise
        # past the run's end, a stream never saw the events that ended it (a client's
        # stale Last-Event-ID): it starts at the end
        stream = self._stream(opened, store, run_id, min(after, last), release)
        weakref.finalize(stream, release)  # a stream whose client left before it began
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    def _release_once(self) -> Callable[[], None]:
        """What gives back the place of one stream: once, whoever calls it first (the
        stream as it ends, or the collector of a stream that never began)."""
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._streams -= 1

        return release

    async def _stream(
        self,
        opened: ExitStack,
        store: EventStore,
        run_id: str,
        after: int,
        release: Callable[[], None],
    ) -> AsyncIterator[str]:
        """The run's events after ``after``, then new ones as they are appended, until
        the run is no longer live (finished, or waiting for an answer: its status as
        the projection folds it, so a run resumed or rewound is live again). A log that
        fails meanwhile (a server gone) ends it with a ``failed`` event naming why (the
        page's EventSource then connects again, from the last event it got);
        ``opened`` (holding ``store()``'s context) is closed, and ``release`` called, at
        the end."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        looked = -1  # the version up to which the run's status was looked at
        try:
            page = self.settings.stream_page
            while True:
                events = await anyio.to_thread.run_sync(_read_after, store, run_id, after, page)
                for event in events:
                    yield f"id: {event.version}\ndata: {compact(event_document(event))}\n\n"
                    after = event.version
                if events:
                    quiet_since = loop.time()
                if len(events) == page:
                    continue  # more already written: the next page, before any end or wait
                if looked != after:  # only an event changes the status
                    looked = after
                    version, status = await anyio.to_thread.run_sync(status_at_end, store, run_id)
                    # the status holds at ``version``: an end only once all is sent
                    if version <= after and not is_live(status):
                        yield f"event: end\ndata: {compact({'status': status})}\n\n"
                        return
                quiet = loop.time() - quiet_since
                if quiet > self.settings.keepalive_seconds:
                    quiet_since, quiet = loop.time(), 0.0
                    yield ": keepalive\n\n"
                wait = min(self.settings.wait_seconds, self.settings.keepalive_seconds - quiet)
                if not await self._wait(store, run_id, after, wait):
                    return  # the service stops: the page's EventSource connects again
        except AutonomyError as e:  # a log gone, or an event it cannot decode
            # not "error": an EventSource takes that name for its own connection errors
            yield f"event: failed\ndata: {compact({'error': str(e)})}\n\n"
        finally:
            release()
            opened.close()

    async def _wait(self, store: EventStore, run_id: str, after: int, wait: float) -> bool:
        """Wait up to ``wait`` seconds for an event of ``run_id`` past ``after``; False
        when the service stops (the wait is then left to end in its thread, which a
        store that closes ends at once)."""
        self._loop = asyncio.get_running_loop()
        with anyio.CancelScope() as waiting:
            if self.stopping:
                return False
            self._waits.add(waiting)
            try:
                await anyio.to_thread.run_sync(
                    store.wait_for_append,
                    run_id,
                    after,
                    wait,
                    limiter=self._waiting(),
                    abandon_on_cancel=True,
                )
            finally:
                self._waits.discard(waiting)
        return not self.stopping

    def api_blob(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        with self.store() as store:
            if store.last_version(run_id) == 0:  # as every route of a run: 404
                raise RunNotFound(run_id)
            content = store.get(request.path_params["digest"])
        return Response(content, media_type="text/plain; charset=utf-8")

    def api_diff(self, request: Request) -> JSONResponse:
        """``autonomy diff A B --json``: the first divergent step, then per phase."""
        run_a, run_b = request.path_params["run_a"], request.path_params["run_b"]
        with self.store() as store:
            for run_id in (run_a, run_b):
                if store.last_version(run_id) == 0:
                    raise RunNotFound(run_id)
            return JSONResponse(diff_runs(store, run_a, run_b).document())

    def api_audit(self, request: Request) -> JSONResponse:
        name = request.path_params["query"]
        run_id = request.query_params.get("run_id") or None
        arguments = tuple(request.query_params.getlist("arg"))
        with self.store() as store:
            if run_id is not None and store.last_version(run_id) == 0:
                raise RunNotFound(run_id)
            connection = cast(Any, store).connection
            result = run_query(
                connection,
                name,
                run_id,
                arguments,
                self.settings.sql_rows,
                self.settings.sql_seconds,
            )
        return JSONResponse({**_rows(result), "truncated": result.truncated})

    async def api_sql(self, request: Request) -> JSONResponse:
        if is_postgres_url(self.settings.db):
            raise HTTPException(403, SQL_ON_POSTGRES)
        body = await _json_body(request)
        sql = body.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise HTTPException(400, 'give {"sql": "SELECT ..."} (and optionally "run_id")')
        run_id = body.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise HTTPException(400, '"run_id" is a run\'s id, a string')
        params = {"run_id": run_id} if run_id else {}
        limits = Limits(
            seconds=self.settings.sql_seconds,
            max_rows=self.settings.sql_rows,
            max_bytes=self.settings.sql_bytes,
        )
        if not self._sql_slots.acquire(blocking=False):
            raise HTTPException(
                503,
                f"this service runs {SQL_AT_ONCE} SQL queries at a time, and is running as "
                "many now; try again",
            )
        try:
            result = await anyio.to_thread.run_sync(
                run_sql_apart, self.settings.db, sql, params, limits
            )
        finally:
            self._sql_slots.release()
        return JSONResponse({**_rows(result), "truncated": result.truncated})

    async def api_answer(self, request: Request) -> JSONResponse:
        run_id = request.path_params["run_id"]
        body = await _json_body(request)
        text = body.get("answer")
        if not isinstance(text, str):
            raise HTTPException(400, 'give {"answer": "..."}')

        def answer() -> str:
            with self.store(write=True) as store:
                return answer_question(store, run_id, text)

        question = await anyio.to_thread.run_sync(answer)
        return JSONResponse(
            {"run_id": run_id, "question": question, "next": f"autonomy resume {run_id}"}
        )


def event_document(event: RecordedEvent) -> dict[str, Any]:
    """An event as JSON: the envelope and its data."""
    document: dict[str, Any] = msgspec.to_builtins(event)
    return document


def _read_after(store: EventStore, run_id: str, after: int, limit: int) -> list[RecordedEvent]:
    """At most ``limit`` events after ``after``: a stream holds one page at a time,
    however long the run (a client starting at 0 of a million events took them all).
    An event that cannot be read ends the page before it: the next read raises."""
    events: list[RecordedEvent] = []
    try:
        # read no further than the page: a read of the rest, cut here, fetched and
        # decoded a thousand rows a page of a hundred
        events.extend(store.read(run_id, after=after, upto=after + limit))
    except AutonomyError:
        if not events:
            raise
    return events


def _query(store: EventStore, sql: str) -> list[dict[str, Any]]:
    cursor = cast(Any, store).connection.execute(sql)  # SQLite's, or SQLiteStyle
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _rows(result: AuditResult) -> dict[str, Any]:
    rows = [{k: json_value(v) for k, v in row.items()} for row in result.as_dicts()]
    return {"columns": list(result.names), "rows": rows}  # the rows' keys, in order


SQL_AT_ONCE = 2
"""The most ``POST /api/sql`` queries the service runs at once: each may take a core
for its whole time limit (``ServiceSettings.sql_seconds``); 45 at once held every
request thread for minutes."""

MAX_NUMBER = 2**63 - 1
"""The largest version or count a request may name: the log's integers are 64-bit."""


def _whole(text: str) -> int | None:
    """``text`` as a whole number the log can hold (ASCII digits only), or None."""
    if text.isascii() and text.isdigit() and int(text) <= MAX_NUMBER:
        return int(text)
    return None


def _int_param(
    request: Request, name: str, what: str = "a version number", least: int = 0
) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    number = _whole(value)
    if number is None or number < least:
        raise HTTPException(400, f"{name} must be {what}, not {value!r}")
    return number


MAX_BODY = 1 << 20
"""The largest request body read (1 MiB): an answer or a query, never a log's worth."""


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object, read up to ``MAX_BODY`` bytes (413 beyond: at once,
    unread, when its ``Content-Length`` says so; the server refuses a malformed one)."""
    too_large = HTTPException(
        413,
        f"the request body is larger than {MAX_BODY:,} bytes",
        headers={"Connection": "close"},  # not read to its end for the next request
    )
    announced = request.headers.get("content-length", "")
    # any number of digits: one past what the log holds (2**63) was no number to
    # _whole, the check was skipped, and its body waited for to the deadline
    if announced.isascii() and announced.isdigit() and int(announced[:20]) > MAX_BODY:
        raise too_large  # it was waited for: the connection's whole deadline, if it never came
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as e:  # gone, or cut by the server's deadline: a traceback
        raise HTTPException(400, "the request body did not arrive whole") from e
    data = b"".join(chunks)
    try:
        # msgspec, not json: it refuses a lone surrogate ("\\udcff"), which no log holds
        body = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as e:
        # (a byte that is not UTF-8 in a string: msgspec's UnicodeDecodeError was a 500)
        said = str(e)
        if said == "Input data was truncated" and _json_of_python(data):
            # msgspec's words for a high surrogate with no low one after it ("\\ud800")
            said = "a text holds a lone surrogate (\\ud800 to \\udfff), which is no character"
        raise HTTPException(400, f"the request body is not JSON: {said}") from e
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body
