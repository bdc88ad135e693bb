"""What a command changed in the workspace: a content-hash snapshot before and after.

``run_command`` runs the model's code, which may create, change or delete any file
in the workspace. To keep the promise that ``rewind`` and ``fork`` restore the
workspace byte for byte, the command's ``tool.executed`` lists those files as
``FileChange`` entries, with the content before and after in the blobs, exactly as
the file tools record their writes.

A snapshot stats every regular file (symbolic links, and the directories of the
tooling, of installed packages and of caches, are not the project's files) and
hashes only those whose stat signature (size, mtime, ctime, inode) differs from the
one seen last time:
``WorkspaceDigests`` remembers the signatures between commands. It is a cache, not
state: dropping it costs one full hashing pass and changes no result. A file's
content goes into the blobs when it is first hashed, so the content *before* a
command changes it is already stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.terminal import unicode_text
from engine.tools.registry import BlobSink
from engine.tools.sandbox import MAX_PATH_CHARS, MAX_PATH_DEPTH, NOT_THE_PROJECT, PROTECTED
from events.schema import FileChange

Signature = tuple[int, int, int, int]

_BATCH_BYTES = 16 * 1024 * 1024

MAX_RECORDED_BYTES = 64 * 1024 * 1024
"""A file larger than this is not recorded (named, not stored): a command made a
hundred sparse files of 255 MB in a hundredth of a second, which the snapshot then
read whole, for minutes, into gigabytes of log."""

SNAPSHOT_BYTES = 512 * 1024 * 1024
"""The most content one snapshot reads anew (to hash it and keep it): a command
that made eight sparse files of 63 MiB, each under ``MAX_RECORDED_BYTES``, put
568 MB into the log, and as much again at each command that touched them. What is
past it is left out, named, and read by a later snapshot within its own."""

MAX_CHANGES = 10_000
"""The most file changes one command records: a command that made 100,000 small
files wrote one ``tool.executed`` of 26 MB. The rest are named, not recorded."""

MAX_FILES = 200_000
"""The most files one snapshot records: a command that made 300,000 empty files
made each snapshot take 3 to 6 s and the engine (not the command: its memory limit
is the command's) 300 MB; three million, 3 GB. Past it, the directories left are
named, not recorded, and still searched for repositories."""

NOT_UTF8 = "names that are not UTF-8"
TOO_LARGE = f"larger than {MAX_RECORDED_BYTES // (1024 * 1024)} MiB"
UNREADABLE = "unreadable"
TOO_DEEP = f"deeper than {MAX_PATH_DEPTH} levels or longer than {MAX_PATH_CHARS:,} characters"
OVER_BUDGET = f"past the {SNAPSHOT_BYTES // (1024 * 1024)} MiB one snapshot reads"
TOO_MANY = f"past the {MAX_CHANGES:,} changes one command records"
TOO_MANY_FILES = f"past the {MAX_FILES:,} files one snapshot records"
"""Why a path is left out of a snapshot (``WorkspaceDigests.left_out``)."""


def _files(root: Path, left_out: dict[str, str], found: Found) -> Iterator[tuple[str, Signature]]:
    """Every regular file under ``root`` with its stat signature. What cannot be
    recorded is left out and named in ``left_out`` with why: a name that is not
    UTF-8 (a log holds Unicode text only, and no restore could write that name back
    from an escaped one), a file too large, a file or a directory (``NAME/``) that
    cannot be read. Every repository met is named in ``found.repositories``, and
    every ``.autonomy`` in ``found.logs``, also in the directories of installed
    packages and caches, which are walked for them only: git takes one there for a
    repository too (a ``.git`` a command left in ``node_modules/x`` ran its config)."""
    stack = [(root, "", True)]
    room = MAX_FILES
    while stack:
        directory, prefix, recorded = stack.pop()
        if recorded and room <= 0 and not _under(prefix, left_out):
            left_out[prefix or "./"] = TOO_MANY_FILES
        if not recorded or room <= 0:
            _walk_unrecorded(directory, prefix, found)
            continue
        try:
            # by name: what a budget leaves out is the same in every run and replay
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            left_out[prefix or "./"] = UNREADABLE
            continue
        if is_bare_repository(entry.name for entry in entries):
            found.repositories.append(prefix.removesuffix("/"))
        for entry in entries:
            name = prefix + entry.name
            if not entry.name.isascii() and unicode_text(entry.name) is not entry.name:
                left_out[unicode_text(name)] = NOT_UTF8
                # not recorded, but searched: a .git a command made in bad\xff/ (or
                # too deep, below) was never looked for, and ran in the host's git
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        _walk_unrecorded(entry.path, name + "/", found)
                continue
            folded = entry.name.casefold()
            if folded == ".git":
                found.repositories.append(name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if folded == ".autonomy":
                        found.logs.append(name)
                        # not recorded, but searched: a command that made one (a
                        # directory of the workspace's) made a repository in it
                        _walk_unrecorded(entry.path, name + "/", found)
                    if folded in PROTECTED:
                        continue
                    if name.count("/") + 2 > MAX_PATH_DEPTH or len(name) >= MAX_PATH_CHARS:
                        left_out[name + "/"] = TOO_DEEP  # no restore could write it back
                        _walk_unrecorded(entry.path, name + "/", found)
                        continue
                    stack.append((Path(entry.path), name + "/", folded not in NOT_THE_PROJECT))
                elif entry.is_file(follow_symlinks=False):
                    if room <= 0:  # the rest of this directory: searched, not recorded
                        left_out[prefix or "./"] = TOO_MANY_FILES
                        continue
                    if len(name) > MAX_PATH_CHARS:
                        left_out[name] = TOO_DEEP
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_size > MAX_RECORDED_BYTES:
                        left_out[name] = TOO_LARGE
                        continue
                    room -= 1
                    yield name, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            except OSError:
                left_out[name] = UNREADABLE


def _under(prefix: str, left_out: dict[str, str]) -> bool:
    """Whether directory ``prefix`` (``a/b/``) is in one ``left_out`` names whole."""
    if "./" in left_out:
        return True
    end = prefix.find("/")
    while end != -1:
        if prefix[: end + 1] in left_out:
            return True
        end = prefix.find("/", end + 1)
    return False


def _walk_unrecorded(directory: Path | str, prefix: str, found: Found) -> None:
    """The repositories and logs under a directory whose files are not recorded
    (installed packages, caches, what a snapshot leaves out): names only, links not
    followed, as deep as a path can be opened (no depth of its own: past one, a
    ``.git`` was never found)."""
    stack: list[tuple[Path | str, str]] = [(directory, prefix)]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError:
            continue
        if is_bare_repository(entry.name for entry in entries):
            found.repositories.append(prefix.removesuffix("/"))
        for entry in entries:
            folded = entry.name.casefold()
            if folded == ".git":
                found.repositories.append(prefix + entry.name)
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            if folded == ".autonomy":
                found.logs.append(prefix + entry.name)
            if folded != ".git":  # a log's directory too: a repository in it is one
                stack.append((entry.path, f"{prefix}{entry.name}/"))


def is_config(name: str) -> bool:
    """Whether ``name`` is a config file autonomy reads from a workspace (a run's
    next one may be any directory of it): read whatever the budget, so that whose it
    is stays known (``refuse_a_config_a_model_wrote``). A command that first made
    eight files of 64 MiB, the whole budget, then wrote one, left it unrecorded, and
    the next run took it for the user's. ``engine.config.CONFIG_FILE``, spelt out:
    the tools are a layer below the config (``engine.config.MAX_CONFIG_BYTES`` keeps
    one too large to record from being read at all)."""
    return name.rpartition("/")[2] == "autonomy.toml"


def is_bare_repository(names: Iterable[str]) -> bool:
    """Whether a directory holding entries of these names is a repository to git
    without a ``.git`` (``git init --bare``: ``HEAD`` with ``objects/`` and ``refs/``,
    or a worktree's ``HEAD`` with ``commondir``)."""
    folded = {name.casefold() for name in names}
    return "head" in folded and ({"objects", "refs"} <= folded or "commondir" in folded)


@dataclass
class Found:
    """What a walk of the workspace met besides its files (``_files``)."""

    repositories: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


class WorkspaceDigests:
    """The workspace's files -> content digests, rehashing only what changed."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, str]] = {}
        self.left_out: dict[str, str] = {}
        """What the last snapshot could not record, by path (a directory's ending in
        ``/``), with why; a name that is not UTF-8 shown escaped."""
        self.repositories: tuple[str, ...] = ()
        """Every repository the last snapshot met, by path: a ``.git``, or a directory
        that is a bare one ("" for the workspace itself; see ``engine.tools.confine``)."""
        self.logs: tuple[str, ...] = ()
        """Every ``.autonomy`` directory the last snapshot met, by path."""

    def snapshot(self, root: Path, blobs: BlobSink) -> dict[str, tuple[str, int]]:
        """Every regular file under ``root`` -> (sha256 of its content, size), each
        new content stored in ``blobs``."""
        found: dict[str, tuple[str, int]] = {}
        known: dict[str, tuple[Signature, str]] = {}
        pending: list[bytes] = []
        pending_bytes = 0
        left_out: dict[str, str] = {}
        met = Found()
        budget = SNAPSHOT_BYTES
        for name, signature in _files(root, left_out, met):
            seen = self._known.get(name)
            if seen is not None and seen[0] == signature:
                digest = seen[1]
            elif signature[0] > budget and not is_config(name):
                left_out[name] = OVER_BUDGET
                continue
            else:
                budget -= signature[0]
                try:
                    content = (root / name).read_bytes()
                except OSError:
                    left_out[name] = UNREADABLE
                    continue
                digest = hashlib.sha256(content).hexdigest()
                if seen is None or seen[1] != digest:
                    pending.append(content)  # stored in batches: one transaction each
                    pending_bytes += len(content)
                    if pending_bytes > _BATCH_BYTES:
                        blobs.put_many(pending)
                        pending, pending_bytes = [], 0
            known[name] = (signature, digest)
            found[name] = (digest, signature[0])
        if pending:
            blobs.put_many(pending)
        self._known = known
        self.left_out = dict(sorted(left_out.items()))
        self.repositories = tuple(sorted(met.repositories))
        self.logs = tuple(sorted(met.logs))
        return found


def changes(
    before: dict[str, tuple[str, int]],
    after: dict[str, tuple[str, int]],
    left_out: Iterable[str] = (),
) -> tuple[FileChange, ...]:
    """The files created, changed or deleted between two snapshots, by path; none
    under ``left_out`` (paths, and directories ending in ``/``): a file either
    snapshot could not record is not known to have changed, nor to be gone."""
    paths = set(left_out)
    directories = tuple("" if d == "./" else d for d in paths if d.endswith("/"))
    found = []
    for path in sorted(before.keys() | after.keys()):
        if path in paths or path.startswith(directories):
            continue
        old, new = before.get(path), after.get(path)
        if (old and old[0]) != (new and new[0]):
            found.append(
                FileChange(
                    path=path,
                    before=old[0] if old else None,
                    after=new[0] if new else None,
                    size=new[1] if new else 0,
                )
            )
    return tuple(found)
