"""The secret that keys the log's hash chain: where it lives, reading and creating it.
(``engine.model.credentials`` keeps the model servers' keys beside it, with the same
rules: ``secret_file``, ``read_secret``.)

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

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from engine.errors import ConfigError

KEY_FILE_ENV = "AUTONOMY_KEY_FILE"
"""The environment variable that places the key file."""

KEY_BYTES = 32


def key_file(env: Mapping[str, str] | None = None) -> Path:
    """Where the key is: ``$AUTONOMY_KEY_FILE``, else ``$XDG_CONFIG_HOME/autonomy/key``,
    else ``~/.config/autonomy/key`` (``env`` defaults to ``os.environ``)."""
    return secret_file(KEY_FILE_ENV, "key", env)


def secret_file(variable: str, name: str, env: Mapping[str, str] | None) -> Path:
    """``$variable`` if set, else ``name`` in autonomy's config directory (where the
    chain's key is)."""
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
        return read_secret(path)
    except FileNotFoundError:
        if not create:
            return None
    except OSError as e:  # a directory, unreadable...: say which file, and for what
        raise ConfigError(
            f"cannot read the key file {path}: {e.strerror or e} (the chain's key: "
            f"{KEY_FILE_ENV} names another)"
        ) from None
    key = secrets.token_bytes(KEY_BYTES)
    # written whole beside it, then linked into place (which fails if one is there):
    # a key written in place and cut short (a full disk) left an empty key file that
    # failed every command after, and another process could read it half written
    made: str | None = None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, made = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # 0600
        with os.fdopen(fd, "wb") as out:
            out.write(key)
            out.flush()
            os.fsync(out.fileno())
        os.link(made, path)
    except FileExistsError:
        return read_secret(path)  # another process made it first: use theirs
    except OSError as e:
        raise ConfigError(
            f"cannot make the key file {path}: {e.strerror or e} (the chain's key: "
            f"{KEY_FILE_ENV} names another); nothing was written"
        ) from None
    finally:
        if made is not None:
            with contextlib.suppress(OSError):
                os.unlink(made)
    return key


def read_secret(path: Path, what: str = "the key file", *, empty_ok: bool = False) -> bytes:
    """The content of the secret file ``path``; ``ConfigError`` when others may read
    it, or when it is empty (unless ``empty_ok``)."""
    # not blocking: a FIFO in its place waited for a writer for ever
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):  # said by the caller, with what the file is for
        os.close(descriptor)  # before fdopen, whose error named the descriptor ("6")
        raise OSError(errno.EINVAL, "not a regular file (a directory, FIFO or device)")
    with os.fdopen(descriptor, "rb") as source:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{what} {path} may be read by others (mode {stat.filemode(mode)}); "
                f"make it owner-only: chmod 600 {path}"
            )
        key = source.read()
    if not key and not empty_ok:
        raise ConfigError(f"{what} {path} is empty")
    return key
