"""The chain's key: where it lives, how it is created, and what a keyed chain proves."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.keys import KEY_FILE_ENV, key_file, load_key
from events import EventStore, MemoryEventStore, RunStarted, SQLiteEventStore, TaskAdded
from events.codec import ChainKey, chain_hash, hash_key_id, key_id
from events.errors import WrongKey

KEY = b"k" * 32
OTHER = b"o" * 32


def start(store: EventStore, run_id: str = "run-1") -> None:
    store.append(run_id, [RunStarted(goal="g", workspace="/w", key_id=store.key_id)], 0)
    store.append(run_id, [TaskAdded(task_id="t1", title="one")], 1)


# -- where the key lives ------------------------------------------------------------------


def test_the_key_file_is_named_by_the_environment_first() -> None:
    env = {KEY_FILE_ENV: "/keys/k", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}
    assert key_file(env) == Path("/keys/k")


def test_the_key_file_is_in_the_xdg_config_directory_else_in_home() -> None:
    assert key_file({"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}) == Path("/xdg/autonomy/key")
    assert key_file({"HOME": "/home/u"}) == Path("/home/u/.config/autonomy/key")


def test_tests_never_use_the_users_key_file(_key_file_in_tmp: Path) -> None:
    assert key_file() == _key_file_in_tmp
    assert str(_key_file_in_tmp).startswith(os.environ.get("TMPDIR", "/tmp"))


def test_the_key_is_created_on_first_use_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "config" / "autonomy" / "key"
    env = {KEY_FILE_ENV: str(path)}
    assert load_key(env, create=False) is None
    assert not path.exists(), "a reader never creates the key"

    key = load_key(env, create=True)

    assert key is not None and len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_key(env, create=True) == key == load_key(env, create=False)


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(KEY)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key({KEY_FILE_ENV: str(path)}, create=True)


def test_a_key_file_that_cannot_be_read_or_made_is_named_with_what_it_is_for(
    tmp_path: Path,
) -> None:
    """A directory, or a place no file can be made, was a bare "[Errno 21] Is a
    directory" naming neither the file's use nor the variable that names it."""
    (tmp_path / "keydir").mkdir()
    nowhere = Path("/proc/autonomy-no-such-directory/key")  # no directory can be made there
    for path, said in ((tmp_path / "keydir", "cannot read"), (nowhere, "cannot make")):
        with pytest.raises(ConfigError, match=f"{said} the key file .*{KEY_FILE_ENV} names"):
            load_key({KEY_FILE_ENV: str(path)}, create=True)


# -- the keyed chain ----------------------------------------------------------------------


def test_chain_key_is_hmac_sha256() -> None:
    for key in (KEY, b"x", b"long" * 40):
        message = b"previous" + b"canonical bytes"
        assert ChainKey(key).mac(message) == hmac.new(key, message, hashlib.sha256).hexdigest()


def test_a_keyed_hash_names_its_key_and_differs_from_the_plain_one() -> None:
    fields = dict(
        run_id="r", version=1, type="t", schema_version=1, recorded_at="x", causation=None,
        data="{}",
    )  # fmt: skip
    plain = chain_hash("", **fields)  # type: ignore[arg-type]
    keyed = chain_hash("", key=ChainKey(KEY), **fields)  # type: ignore[arg-type]
    assert hash_key_id(plain) == "" and len(plain) == 64
    assert hash_key_id(keyed) == key_id(KEY) and keyed.split(":")[1] != plain
    assert KEY.hex() not in keyed and repr(ChainKey(KEY)) == f"ChainKey(id={key_id(KEY)!r})"


def test_a_keyed_run_verifies_only_with_its_key(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path, key=KEY) as store:
        start(store)
        report = store.verify("run-1")
        assert report.ok and report.authentication == "keyed"
    with SQLiteEventStore(path) as keyless:
        report = keyless.verify("run-1")
        assert report.ok, "without the key the structure is still checked"
        assert report.authentication == f"not authenticated (key {key_id(KEY)})"
    with SQLiteEventStore(path, key=OTHER) as wrong:
        report = wrong.verify("run-1")
        assert not report.ok and "wrong key" in report.problem


@pytest.mark.parametrize("key", [None, OTHER])
def test_a_keyed_run_takes_no_append_without_its_key(tmp_path: Path, key: bytes | None) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path, key=KEY) as store:
        start(store)
    with SQLiteEventStore(path, key=key) as other:
        with pytest.raises(WrongKey, match="would break its chain"):
            other.append("run-1", [TaskAdded(task_id="t2", title="two")], 2)
        assert other.last_version("run-1") == 2


def test_an_unkeyed_run_stays_unkeyed_when_a_key_appears(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with SQLiteEventStore(path) as old:
        start(old)
    with SQLiteEventStore(path, key=KEY) as store:
        store.append("run-1", [TaskAdded(task_id="t2", title="two")], 2)
        start(store, "run-2")
        assert store.verify("run-1").authentication == "unkeyed"
        assert store.verify("run-1").ok
        assert store.verify("run-2").authentication == "keyed"
        assert store.keyed_marker() is not None


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_store_without_a_key_starts_no_run_in_a_keyed_log(tmp_path: Path, backend: str) -> None:
    if backend == "memory":
        store: EventStore = MemoryEventStore(key=KEY)
        start(store)
        store.key = None  # the same log, opened without the key
        keyless = store
    else:
        with SQLiteEventStore(tmp_path / "events.db", key=KEY) as keyed:
            start(keyed)
        keyless = SQLiteEventStore(tmp_path / "events.db")

    with keyless:
        with pytest.raises(WrongKey, match="runs are keyed from position 1 on"):
            keyless.append("run-2", [RunStarted(goal="g", workspace="/w")], 0)
        assert [info.run_id for info in keyless.runs()] == ["run-1"]


def test_a_key_file_that_could_not_be_written_whole_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the key was first written left an empty key file, and every
    command after failed on it ("the key file ... is empty") once there was room."""
    import errno

    path = tmp_path / "config" / "key"

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", full)
        with pytest.raises(ConfigError, match=r"No space left on device .*; nothing was written"):
            load_key({KEY_FILE_ENV: str(path)}, create=True)
    assert not path.exists() and list(path.parent.iterdir()) == []
    key = load_key({KEY_FILE_ENV: str(path)}, create=True)  # room again: made
    assert key and path.read_bytes() == key


def test_a_key_file_that_is_a_directory_is_said_so_naming_it(tmp_path: Path) -> None:
    """The error's cause named the descriptor the file was opened as ("Is a
    directory: 6"), not the file."""
    from engine.model.credentials import load_server_keys

    for load in (
        lambda: load_key({KEY_FILE_ENV: str(tmp_path)}, create=False),
        lambda: load_server_keys({"AUTONOMY_SERVER_KEYS": str(tmp_path)}),
    ):
        with pytest.raises(ConfigError, match=f"{tmp_path}: not a regular file") as raised:
            load()
        assert "Is a directory" not in str(raised.value.__cause__), raised.value.__cause__


def test_a_fifo_in_a_secret_files_place_is_refused_without_waiting(tmp_path: Path) -> None:
    """Opened to be read, a FIFO waited for a writer for ever."""
    import threading

    from engine.model.credentials import load_server_keys

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    said: list[str] = []

    def read_both() -> None:
        for load in (
            lambda: load_key({KEY_FILE_ENV: str(fifo)}, create=False),
            lambda: load_server_keys({"AUTONOMY_SERVER_KEYS": str(fifo)}),
        ):
            try:
                load()
            except ConfigError as e:
                said.append(str(e))

    reader = threading.Thread(target=read_both, daemon=True)
    reader.start()
    reader.join(30)
    assert not reader.is_alive(), "it waited on the FIFO"
    assert len(said) == 2 and all("not a regular file" in s for s in said), said
