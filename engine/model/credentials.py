"""The keys of model servers that ask for one (vLLM or llama.cpp started with
``--api-key``, a proxy in front of Ollama): kept on this machine, by server, in
``servers.toml`` beside the chain's key (``engine.keys``), never in the settings or
the log, and sent to that server alone (``ServerKeys``, an ``httpx.Auth``).

A module of its own, apart from ``engine.keys``: it needs httpx, whose import would
add 50 ms to every command that only opens a log.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Generator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from engine.errors import ConfigError
from engine.keys import read_secret, secret_file

SERVER_KEYS_ENV = "AUTONOMY_SERVER_KEYS"
"""The environment variable that places the server keys file."""

_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
"""What a key may be: visible ASCII, no space or line break (a header's value)."""


def server_keys_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the model servers' keys are: ``$AUTONOMY_SERVER_KEYS``, else
    ``servers.toml`` beside the chain's key (``~/.config/autonomy/servers.toml``)."""
    return secret_file(SERVER_KEYS_ENV, "servers.toml", env)


def origin(url: str) -> str:
    """``url``'s server: scheme, host and port, as one comparable text
    (``http://host:80``); ``ValueError`` for what is no http(s) server's URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a server's URL (http://HOST:PORT or https://HOST)")
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


class ServerKeys(httpx.Auth):
    """Sends each model server its own key, as ``Authorization: Bearer KEY``, and no
    other server any. Keys are kept by server, on this machine only: the settings
    and the log name servers, never a key, so a log or a workspace's config that
    names another server (edited, or written by the model) is sent nothing."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        self._keys = dict(keys)
        """Each key by its server's ``origin``."""

    def has_key_for(self, url: str) -> bool:
        return origin(url) in self._keys

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        key = self._keys.get(origin(str(request.url)))
        if key is not None:
            request.headers["Authorization"] = f"Bearer {key}"
        yield request


def load_server_keys(env: Mapping[str, str] | None = None) -> ServerKeys | None:
    """The keys in ``server_keys_file``: a TOML table of server URL = key, owner-only
    (0600) as the chain's key is. None when there is no such file. A wrong entry is
    a ``ConfigError`` that names the server, never the key."""
    path = server_keys_file(env)
    try:
        raw = read_secret(path, "the server keys file", empty_ok=True)  # no server has a key
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the server keys file {path}: {e.strerror or e}") from e
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"the server keys file {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"the server keys file {path} is nested too deeply") from None
    keys: dict[str, str] = {}
    for url, key in table.items():
        try:
            server = origin(url)
        except ValueError as e:
            raise ConfigError(f"the server keys file {path}: {e}") from None
        if not isinstance(key, str) or not _TOKEN.fullmatch(key):
            raise ConfigError(
                f"the server keys file {path}: the key for {server} must be a string of "
                "visible characters, with no space or line break"
            )
        keys[server] = key
    return ServerKeys(keys)


def redacted(text: str, request: httpx.Request) -> str:
    """``text`` (what a server answered) with the key ``request`` carried, if any, as
    ``***``: a server that repeats a wrong key in its error must not put it in a log."""
    sent = request.headers.get("Authorization", "")
    key = sent.removeprefix("Bearer ")
    return text.replace(key, "***") if sent.startswith("Bearer ") and key else text
