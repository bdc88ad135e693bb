"""Model servers that ask for a key: each key is kept on this machine by server
(``engine.model.credentials.ServerKeys``), sent to that server only, and never written to a log,
an output or an error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from engine.cli import cli
from engine.runs.demo import GOAL, DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import ModelFailed
from projections import project

KEY = "sk-test-4f9a0c2e7d"
WRONG = "sk-wrong-81b2aa"


def header(request: ScriptedRequest, name: str) -> str | None:
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), None)


class Locked:
    """The demo's models behind ``KEY``: a chat without it is refused with a 401 whose
    body repeats what was sent, as some servers do."""

    def __init__(self) -> None:
        self.models = DemoModels()

    def __call__(self, request: ScriptedRequest) -> Reply:
        sent = header(request, "Authorization")
        if sent != f"Bearer {KEY}":
            return Reply.http_error(401, f"invalid API key: {sent!r}")
        return self.models(request)


def keys_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "servers.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def run(tmp_path: Path, server: ScriptedModelServer, keys: Path, *more: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["run", GOAL, "--workspace", str(tmp_path / "ws"), "--db", str(tmp_path / "e.db"),
         "--run-id", "r", "--model-url", server.url, "--api", "ollama", "--model", "m", *more],
        env={"AUTONOMY_SERVER_KEYS": str(keys)},
    )  # fmt: skip


def everything_in(db: Path) -> str:
    """Every value of every row of every table of the log, as text."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(
            repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
        )


def test_the_key_goes_to_its_server_on_every_request_and_nowhere_else(tmp_path: Path) -> None:
    with ScriptedModelServer(Locked(), models=["m"]) as server:
        keys = keys_file(tmp_path, f'"{server.url}" = "{KEY}"\n')
        result = run(tmp_path, server, keys)
        requests = list(server.requests)
    assert result.exit_code == 0, result.output
    assert {r.method for r in requests} == {"GET", "POST"}, "the preflight and the chats"
    assert all(header(r, "Authorization") == f"Bearer {KEY}" for r in requests)
    assert KEY not in result.output
    assert KEY not in everything_in(tmp_path / "e.db")
    with open_store(tmp_path / "e.db") as store:
        assert project(store, "r").pipeline.status == "completed"


def test_a_server_the_file_does_not_name_is_sent_no_key(tmp_path: Path) -> None:
    """The key is for one server: a run pointed at another (by a flag here; by an
    edited log or a workspace's config file alike) sends that one nothing."""
    seen: list[str | None] = []

    def open_server(request: ScriptedRequest) -> Reply:
        seen.append(header(request, "Authorization"))
        return DemoModels()(request)

    with ScriptedModelServer(open_server, models=["m"]) as server:
        keys = keys_file(tmp_path, f'"http://127.0.0.1:1" = "{KEY}"\n')
        result = run(tmp_path, server, keys, "--max-steps", "2")
        assert all(header(r, "Authorization") is None for r in server.requests)
    assert seen and seen == [None] * len(seen)
    assert result.exit_code in (0, 1, 2) and "Traceback" not in result.output


def test_a_server_repeating_a_wrong_key_in_its_error_has_it_kept_as_stars(tmp_path: Path) -> None:
    with ScriptedModelServer(Locked(), models=["m"]) as server:
        keys = keys_file(tmp_path, f'"{server.url}" = "{WRONG}"\n')
        result = run(tmp_path, server, keys, "--no-preflight", "--max-steps", "1")
    assert "Traceback" not in result.output
    assert WRONG not in result.output
    assert WRONG not in everything_in(tmp_path / "e.db")
    with open_store(tmp_path / "e.db") as store:
        failures = [e.data for e in store.read("r") if isinstance(e.data, ModelFailed)]
    assert failures and "HTTP 401" in failures[0].detail
    assert "invalid API key: 'Bearer ***'" in failures[0].detail


@pytest.mark.parametrize(
    ("text", "mode", "said"),
    [
        ('"{url}" = "{key}"\n', 0o644, "may be read by others (mode -rw-r--r--); make it owner-only: chmod 600"),
        ('"ftp://host" = "{key}"\n', 0o600, "'ftp://host' is not a server's URL"),
        ('"{url}" = "{key} with a space"\n', 0o600, "the key for http://127.0.0.1:"),
        ('"{url}" = 42\n', 0o600, "must be a string of visible characters"),
        ('"{url}" = "{key}\n', 0o600, "is not valid TOML"),
    ],
    ids=["readable-by-others", "not-a-server", "a-space", "not-a-string", "not-toml"],
)  # fmt: skip
def test_a_keys_file_that_is_wrong_is_one_clear_error_that_never_shows_a_key(
    tmp_path: Path, text: str, mode: int, said: str
) -> None:
    with ScriptedModelServer(Locked(), models=["m"]) as server:
        keys = keys_file(tmp_path, text.format(url=server.url, key=KEY), mode)
        result = run(tmp_path, server, keys)
        assert not server.requests, "nothing was sent"
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert said in message and str(keys) in message, message
    assert KEY not in result.output


def test_no_keys_file_sends_no_key(tmp_path: Path) -> None:
    with ScriptedModelServer(Locked(), models=["m"]) as server:
        result = run(tmp_path, server, tmp_path / "none.toml", "--no-preflight", "--max-steps", "1")
        assert all(header(r, "Authorization") is None for r in server.requests)
    assert "HTTP 401" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("given", ["none", "wrong"])
def test_a_server_that_asks_for_a_key_is_named_by_the_preflight_with_the_fix(
    tmp_path: Path, given: str
) -> None:
    """A server started with --api-key refuses the preflight's listing: the error says
    it asks for a key, whether one was sent, and where this machine keeps it."""
    with ScriptedModelServer(DemoModels(), models=["m"], key=KEY) as server:
        keys = keys_file(tmp_path, f'"{server.url}" = "{WRONG}"\n' if given == "wrong" else "")
        result = run(tmp_path, server, keys)
        port = server.url.rsplit(":", 1)[1]
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "the server asks for a key, and " in message
    sent = "the key sent was refused" if given == "wrong" else "no key was sent"
    assert sent in message, message
    assert f'put it in {keys}: "http://127.0.0.1:{port}" = "KEY"' in message
    assert WRONG not in result.output


def test_the_scripted_server_with_a_key_answers_only_requests_that_carry_it(
    tmp_path: Path,
) -> None:
    with ScriptedModelServer(DemoModels(), models=["m"], key=KEY) as server:
        keys = keys_file(tmp_path, f'"{server.url}" = "{KEY}"\n')
        result = run(tmp_path, server, keys)
    assert result.exit_code == 0, result.output


def test_a_keys_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    keys = keys_file(tmp_path, "x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with ScriptedModelServer(DemoModels(), models=["m"]) as server:
        result = run(tmp_path, server, keys)
    assert result.exit_code == 1 and "is nested too deeply" in result.output, result.output
    assert "Traceback" not in result.output
