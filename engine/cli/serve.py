r"""CLI command: ``serve``, the JSON API and web run browser over a log. Registered on
the group (``engine.cli.base.cli``) when this module is imported."""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

import click

from engine.cli.base import cli, db_option, try_audit_indexes
from engine.errors import ConfigError

TOKEN_ENV = "AUTONOMY_TOKEN"
MIN_TOKEN_CHARS = 16
"""The shortest token taken: anyone who can reach the service may guess at it."""


def is_loopback(host: str) -> bool:
    """``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host``:``port`` (0: any free port) for the service."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # the accepted sockets inherit it: without, a response written in two parts (head,
    # body) waits for the client's delayed ACK, some 40 ms per request on loopback
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        listener.bind((host.strip("[]"), port))
        listener.listen(128)  # connections made from now on wait for uvicorn to accept
    except OSError as e:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return listener


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to bind.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="The port."
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    show_envvar=True,
    metavar="T",
    help="Require this token on every request (Authorization: Bearer T, or ?token=T "
    "in the page's address). Needed to bind anything but loopback.",
)
@db_option
def serve(host: str, port: int, token: str | None, db: Path | None) -> None:
    """Serve the log's runs: a JSON API, a live event stream and a web run browser.

    The run list, and for each run a trace (decisions, specialists, model calls
    with their prompts and answers, tool calls with their files and diffs), its
    phases, tasks, state at any version, audit tables, a live tail while it runs
    and the answer box when it waits for input. Reads the log per request, so a
    run going on in another process shows up as it goes (a PostgreSQL log through
    one store, its few connections shared by every page and live stream).
    Loopback by default; any other address needs --token. Ctrl-C stops it.

    Example:

    \b
        autonomy serve --db ./calc/.autonomy/events.db
        autonomy serve --host 0.0.0.0 --port 8080 --token "$(openssl rand -hex 16)"
    """
    import uvicorn

    from engine.storage import is_postgres_url, open_store, resolve_db
    from engine.web.app import LOOPBACK_HOSTS, ServiceSettings, create_app
    from engine.web.server import DeadlineProtocol, Server

    path = resolve_db(db)
    loopback = is_loopback(host)
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        # " " (or a short word) was taken, and ?token=%20 then read the whole log
        raise ConfigError(
            f"the token is {len(token.strip())} characters without its blanks; give one of "
            f"at least {MIN_TOKEN_CHARS} (openssl rand -hex 16 makes one)"
        )
    if not loopback and not token:
        raise ConfigError(
            f"--host {host} exposes the log beyond this machine: give --token T "
            f"(or set {TOKEN_ENV}), or bind 127.0.0.1"
        )
    # a missing, foreign or unreachable log: one clear error now, before listening. A
    # PostgreSQL log stays open: it is the store the service shares (nothing is left
    # to fail as it starts); an SQLite log is opened by each request.
    shared = open_store(path, must_exist=True, read_only=True) if is_postgres_url(path) else None
    if shared is None:
        open_store(path, must_exist=True).close()
    try_audit_indexes(path, getattr(shared, "connection", None))
    settings = ServiceSettings(
        db=path,
        token=token or "",
        # the address it listens on too: 127.0.0.2 is loopback as much as 127.0.0.1
        allowed_hosts=(*LOOPBACK_HOSTS, host) if loopback and not token else ("*",),
    )
    try:
        # bound here rather than by uvicorn: --port 0 then prints the port it got
        listener = listen(host, port)
    except BaseException:
        if shared is not None:
            shared.close()
        raise
    bound = listener.getsockname()[1]
    shown = f"[{host.strip('[]')}]" if listener.family == socket.AF_INET6 else host
    # Ctrl-C is how the service is stopped, gracefully, with no "Aborted!" and no
    # failure status, however soon after the line below it comes: uvicorn handles it
    # once it runs; before (or as its event loop is made) it was a KeyboardInterrupt,
    # exit 130 or asyncio's tracebacks, so it is this handler's until then
    server: Server | None = None
    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)
        if server is not None:
            server.should_exit = True

    previous = signal.signal(signal.SIGINT, stop)
    try:
        click.echo(f"serving {path} on http://{shown}:{bound}/" + ("?token=…" if token else ""))
        app = create_app(settings, shared)
        config = uvicorn.Config(
            app, http=DeadlineProtocol, log_level="warning", timeout_graceful_shutdown=1
        )
        server = Server(config, app.state.stop_streams)
        server.should_exit = bool(stopped)
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass  # a second Ctrl-C while it stopped
    finally:
        signal.signal(signal.SIGINT, previous)
        if shared is not None:
            shared.close()  # the app closes it as it stops; not when it never started
