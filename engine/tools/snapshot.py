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
from collections.abc import Iterator
from pathlib import Path

from engine.terminal import unicode_text
from engine.tools.registry import BlobSink
from engine.tools.sandbox import NOT_THE_PROJECT, PROTECTED
from events.schema import FileChange

SKIPPED_DIRS = PROTECTED | NOT_THE_PROJECT
"""Directory names a snapshot never enters: the tooling's own, its caches and
installed packages."""

Signature = tuple[int, int, int, int]

_BATCH_BYTES = 16 * 1024 * 1024


def _files(
    root: Path, unnamed: list[str], repositories: list[str]
) -> Iterator[tuple[str, Signature]]:
    """Every regular file under ``root`` with its stat signature; a file or directory
    whose name is not UTF-8 is left out (a log holds Unicode text only, and no restore
    could write that name back from an escaped one) and named in ``unnamed``; every
    ``.git`` met (a directory, a worktree's file, a link) is named in ``repositories``."""
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            name = prefix + entry.name
            if not entry.name.isascii() and unicode_text(entry.name) is not entry.name:
                unnamed.append(unicode_text(name))
                continue
            if entry.name.casefold() == ".git":
                repositories.append(name)
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.casefold() not in SKIPPED_DIRS:
                        stack.append((Path(entry.path), name + "/"))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield name, (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            except OSError:
                continue


class WorkspaceDigests:
    """The workspace's files -> content digests, rehashing only what changed."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Signature, str]] = {}
        self.unnamed: tuple[str, ...] = ()
        """What the last snapshot left out: names that are not UTF-8, shown escaped."""
        self.repositories: tuple[str, ...] = ()
        """Every ``.git`` the last snapshot met, by path (see ``engine.tools.confine``)."""

    def snapshot(self, root: Path, blobs: BlobSink) -> dict[str, tuple[str, int]]:
        """Every regular file under ``root`` -> (sha256 of its content, size), each
        new content stored in ``blobs``."""
        found: dict[str, tuple[str, int]] = {}
        known: dict[str, tuple[Signature, str]] = {}
        pending: list[bytes] = []
        pending_bytes = 0
        unnamed: list[str] = []
        repositories: list[str] = []
        for name, signature in _files(root, unnamed, repositories):
            seen = self._known.get(name)
            if seen is not None and seen[0] == signature:
                digest = seen[1]
            else:
                try:
                    content = (root / name).read_bytes()
                except OSError:
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
        self.unnamed = tuple(sorted(unnamed))
        self.repositories = tuple(sorted(repositories))
        return found


def changes(
    before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]
) -> tuple[FileChange, ...]:
    """The files created, changed or deleted between two snapshots, by path."""
    found = []
    for path in sorted(before.keys() | after.keys()):
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
