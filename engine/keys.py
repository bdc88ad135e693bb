"""The secrets autonomy keeps outside the log: the key of its hash chain, and the keys
of model servers that ask for one (``ServerKeys``, below the chain key's functions).

The key lives outside the log and outside any workspace, in the user's config
directory: ``$XDG_CONFIG_HOME/autonomy/key`` (``~/.config/autonomy/key`` when
``XDG_CONFIG_HOME`` is unset), or wherever ``AUTONOMY_KEY_FILE`` names. It is 32
random bytes, created on first use in a directory only its owner may enter (0700)
and a file only its owner may read (0600). ``key_file`` is the one place that
says where it is: the command sandbox asks it which path to hide from the
commands the agent runs.

Anyone who can write the log but not read this file cannot forge a keyed chain;
who can read it can. ``events`` never reads it: the engine reads it here and
passes the bytes to the store's constructor.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tomllib
from collections.abc import Generator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from engine.errors import ConfigError

KEY_FILE_ENV = "AUTONOMY_KEY_FILE"
"""The environment variable that places the key file."""

KEY_BYTES = 32


def key_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the key is: ``$AUTONOMY_KEY_FILE``, else ``$XDG_CONFIG_HOME/autonomy/key``,
    else ``~/.config/autonomy/key`` (``env`` defaults to ``os.environ``)."""
    return _secret_file(KEY_FILE_ENV, "key", env)


def _secret_file(variable: str, name: str, env: Mapping[str, str] | None) -> Path:
    """``$variable`` if set, else ``name`` in autonomy's config directory."""
    env = os.environ if env is None else env
    named = env.get(variable, "").strip()
    if named:
        return Path(named).expanduser()
    config_home = env.get("XDG_CONFIG_HOME", "").strip()
    base = Path(config_home) if config_home else Path(env.get("HOME", "~")) / ".config"
    return (base / "autonomy" / name).expanduser()


def load_key(env: Mapping[str, str] | None = None, *, create: bool) -> bytes | None:
    """The key's bytes; None when there is no key file and ``create`` is False.

    With ``create`` a missing key is made (0600, in a 0700 directory). A key file
    that others may read, or that is empty, is a ``ConfigError``: a key anyone
    can read authenticates nothing.
    """
    path = key_file(env)
    try:
        return _read(path)
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read(path)  # another process created it first: use theirs
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


def _read(path: Path, what: str = "the key file", *, empty_ok: bool = False) -> bytes:
    with path.open("rb") as source:
        mode = os.fstat(source.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{what} {path} may be read by others (mode {stat.filemode(mode)}); "
                f"make it owner-only: chmod 600 {path}"
            )
        key = source.read()
    if not key and not empty_ok:
        raise ConfigError(f"{what} {path} is empty")
    return key


# -- the model servers' keys ------------------------------------------------------------

SERVER_KEYS_ENV = "AUTONOMY_SERVER_KEYS"
"""The environment variable that places the server keys file."""

_TOKEN = re.compile(r"[\x21-\x7e]{1,4096}")
"""What a key may be: visible ASCII, no space or line break (a header's value)."""


def server_keys_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the model servers' keys are: ``$AUTONOMY_SERVER_KEYS``, else
    ``servers.toml`` beside the chain's key (``~/.config/autonomy/servers.toml``)."""
    return _secret_file(SERVER_KEYS_ENV, "servers.toml", env)


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
        self._keys = {origin(url): key for url, key in keys.items()}

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
        raw = _read(path, "the server keys file", empty_ok=True)  # no server has a key
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the server keys file {path}: {e.strerror or e}") from e
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"the server keys file {path} is not valid TOML: {e}") from None
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
