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

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.terminal import unicode_text
from engine.tools.registry import BlobSink
from engine.tools.sandbox import MAX_PATH_CHARS, MAX_PATH_DEPTH, NOT_THE_PROJECT, PROTECTED
from events.schema import FileChange

SKIPPED_DIRS = PROTECTED | NOT_THE_PROJECT
"""Directory names a snapshot never enters: the tooling's own, its caches and
installed packages."""

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

NOT_UTF8 = "names that are not UTF-8"
TOO_LARGE = f"larger than {MAX_RECORDED_BYTES // (1024 * 1024)} MiB"
UNREADABLE = "unreadable"
TOO_DEEP = f"deeper than {MAX_PATH_DEPTH} levels or longer than {MAX_PATH_CHARS:,} characters"
OVER_BUDGET = f"past the {SNAPSHOT_BYTES // (1024 * 1024)} MiB one snapshot reads"
TOO_MANY = f"past the {MAX_CHANGES:,} changes one command records"
"""Why a path is left out of a snapshot (``WorkspaceDigests.left_out``)."""


def _files(
    root: Path, left_out: dict[str, str], repositories: list[str]
) -> Iterator[tuple[str, Signature]]:
    """Every regular file under ``root`` with its stat signature. What cannot be
    recorded is left out and named in ``left_out`` with why: a name that is not
    UTF-8 (a log holds Unicode text only, and no restore could write that name back
    from an escaped one), a file too large, a file or a directory (``NAME/``) that
    cannot be read. Every ``.git`` met (a directory, a worktree's file, a link) is
    named in ``repositories``."""
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            # by name: what a budget leaves out is the same in every run and replay
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            left_out[prefix or "./"] = UNREADABLE
            continue
        for entry in entries:
            name = prefix + entry.name
            if not entry.name.isascii() and unicode_text(entry.name) is not entry.name:
                left_out[unicode_text(name)] = NOT_UTF8
                continue
            if entry.name.casefold() == ".git":
                repositories.append(name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.casefold() in SKIPPED_DIRS:
                        continue
                    if name.count("/") + 2 > MAX_PATH_DEPTH or len(name) >= MAX_PATH_CHARS:
                        left_out[name + "/"] = TOO_DEEP  # no restore could write it back
                        continue
                    stack.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    if len(name) > MAX_PATH_CHARS:
                        left_out[name] = TOO_DEEP
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if st.st_size > MAX_RECORDED_BYTES:
                        left_out[name] = TOO_LARGE
                        continue
                    yield name, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            except OSError:
                left_out[name] = UNREADABLE


class WorkspaceDigests:
    """The workspace's files -> content digests, rehashing only what changed."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, str]] = {}
        self.left_out: dict[str, str] = {}
        """What the last snapshot could not record, by path (a directory's ending in
        ``/``), with why; a name that is not UTF-8 shown escaped."""
        self.repositories: tuple[str, ...] = ()
        """Every ``.git`` the last snapshot met, by path (see ``engine.tools.confine``)."""

    def snapshot(self, root: Path, blobs: BlobSink) -> dict[str, tuple[str, int]]:
        """Every regular file under ``root`` -> (sha256 of its content, size), each
        new content stored in ``blobs``."""
        found: dict[str, tuple[str, int]] = {}
        known: dict[str, tuple[Signature, str]] = {}
        pending: list[bytes] = []
        pending_bytes = 0
        left_out: dict[str, str] = {}
        repositories: list[str] = []
        budget = SNAPSHOT_BYTES
        for name, signature in _files(root, left_out, repositories):
            seen = self._known.get(name)
            if seen is not None and seen[0] == signature:
                digest = seen[1]
            elif signature[0] > budget:
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
        self.repositories = tuple(sorted(repositories))
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
