"""A throwaway PostgreSQL server for the tests: one cluster per test session.

``PgServer.start()`` runs ``initdb`` and then ``postgres`` itself in a temporary
directory, listening only on a unix socket in that directory (no TCP port at all),
and ``stop()`` removes it. ``initdb`` refuses to run as root, so under root the
server runs as the ``postgres`` system user (created by the distribution's
package), in a directory it owns. The server is a child of the test process with a
parent-death signal (``setpriv --pdeathsig``): a test session killed outright
takes its server with it instead of leaving it running on a shared machine.
Durability is off (``fsync``, ``synchronous_commit``): the cluster dies with the
session anyway.

Each test gets a schema of its own (``new_url``): creating one costs a few
milliseconds where a database costs a template copy. ``.ci/system-packages``
installs the server; when it cannot start, the tests fail and say why: they never
skip.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

DATABASE = "autonomy"


def _bindir() -> Path:
    """The server's binaries: Debian keeps them off PATH, under /usr/lib/postgresql."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(
            "PostgreSQL is not installed (no initdb): run .ci/system-packages, "
            "or install the postgresql package"
        )
    return Path(initdb).parent


class PgServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.directory = Path(tempfile.mkdtemp(prefix="autonomy-pg-"))
        self.data = self.directory / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres" if self._as else None
        self._schemas = itertools.count(1)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as, *argv], capture_output=True, text=True, cwd=self.directory, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}"
            )

    def start(self, timeout: float = 60, *, durable: bool = False) -> PgServer:
        """Run the server; ``durable`` keeps fsync and synchronous commits on (for a
        benchmark that should pay what a real server pays per commit)."""
        self._run(
            str(self.bindir / "initdb"),
            *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"),
        )
        user = ["--reuid=postgres", "--regid=postgres", "--init-groups"] if self._as else []
        settings = {
            "listen_addresses": "",
            "unix_socket_directories": str(self.directory),
        }
        if not durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        log = open(self.directory / "server.log", "wb")  # noqa: SIM115 - the server's, kept open
        self.process = subprocess.Popen(
            ["setpriv", "--pdeathsig", "SIGQUIT", *user, "--", str(self.bindir / "postgres")]
            + ["-D", str(self.data)]
            + [f"-c{name}={value}" for name, value in settings.items()],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:  # ready when it accepts a connection
            try:
                with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                return self
            except psycopg.OperationalError as e:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    server_log = (self.directory / "server.log").read_text(errors="replace")
                    raise RuntimeError(f"the server did not start: {e}\n{server_log}") from e
                time.sleep(0.05)

    def url(self, database: str = DATABASE, schema: str | None = None) -> str:
        """A ``postgresql://`` URL to the server's socket (and ``schema`` first on the
        search path)."""
        url = f"postgresql://postgres@/{database}?host={self.directory}"
        if schema is not None:
            url += f"&options=-csearch_path%3D{schema}"
        return url

    def new_url(self) -> str:
        """The URL of a fresh, empty schema."""
        schema = f"t{next(self._schemas)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema=schema)

    @contextlib.contextmanager
    def refusing(self, application_name: str | None = None) -> Iterator[None]:
        """The log's database refuses every new connection and has lost its sessions
        (all of them, or those of ``application_name``): a server gone, as its
        clients see it. It takes connections again when the context ends."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS false")
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()"
                    " AND (%s::text IS NULL OR application_name = %s)",
                    (DATABASE, application_name, application_name),
                )
                yield
            finally:
                admin.execute(f"ALTER DATABASE {DATABASE} ALLOW_CONNECTIONS true")

    def stop(self) -> None:
        process = getattr(self, "process", None)
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
