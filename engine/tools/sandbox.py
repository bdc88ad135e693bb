"""Resolving a model-given path inside the workspace, or refusing it.

A path is accepted only if, after normalising ``..`` and following every symlink
that exists along the way (intermediate directories included), it is the workspace
or inside it, and no part of it is ``.autonomy`` (the run's own log) or ``.git``.
The check is done twice — on the path as written and on the path as resolved — so
neither ``sub/../../x`` nor a link ``inside -> /etc`` nor a link ``notes -> .git``
gets through.

This guards against a model's mistakes, not an adversary: ``run_command`` runs test
code the model wrote, which could do anything the user can. The refusal messages
are written for the model, since they go back to it as the tool result.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from engine.errors import PathOutsideWorkspace, ToolError

PROTECTED: frozenset[str] = frozenset({".autonomy", ".git"})
"""Directory names no tool may read or write, at any depth."""

NOT_THE_PROJECT: frozenset[str] = frozenset(
    {
        *("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"),
        *(".venv", "venv", "node_modules", ".tox", ".nox"),
    }
)
"""Directory names that hold the tooling's caches and installed packages, not the
project's files: a recursive listing or a search does not enter them (matches there
bury the project's own code), and a snapshot does not record them (a virtualenv in
the workspace put its thousands of files, hundreds of MB, into the log at a run's
first command, and was walked again at each command)."""

MAX_PATH_CHARS = 1024
MAX_PATH_DEPTH = 64
"""Longer or deeper paths are refused before anything touches them: no project needs
them, and the OS and ``Path.mkdir`` fail on them in ways that are no answer (a
``RecursionError`` for ``"d/" * 1500``)."""


class Sandbox:
    """One workspace: ``resolve`` turns model paths into safe absolute paths and
    ``relative`` turns them back into the workspace-relative form events record."""

    def __init__(self, workspace: Path | str, *, known_as: Path | str = "") -> None:
        # Resolve once: on systems where the temp dir is itself a symlink
        # (/tmp -> /private/tmp) every comparison below uses the real location.
        self.root = Path(workspace).resolve(strict=True)
        names = [self.root, Path(os.path.abspath(workspace))]
        if known_as:
            # the path the log records for the workspace, where the tools work in a
            # copy of it (a replay's scratch): an absolute path the model gave under
            # it named the workspace's file then, and names the copy's now
            names.append(Path(os.path.abspath(known_as)))
        self._names = tuple(dict.fromkeys(names))

    def lexical(self, raw: str) -> Path:
        """``raw`` inside the workspace by its text alone, links not followed: what a
        restore writes, replacing whatever stands where the path's directories were
        (``engine.runs.workspace``). The same refusals as ``resolve`` for the text:
        empty, too long or too deep, out by ``..`` or an absolute path, protected."""
        return self.root.joinpath(*self._checked(raw).parts)

    def _checked(self, raw: str) -> PurePosixPath:
        """``raw`` relative to the workspace, lexically, after every check of its text."""
        if not raw or not raw.strip():
            raise PathOutsideWorkspace("empty path: give a path relative to the workspace")
        if "\x00" in raw:
            raise PathOutsideWorkspace(f"path {raw!r} contains a NUL byte")
        levels = raw.count(os.sep) + 1
        if len(raw) > MAX_PATH_CHARS or levels > MAX_PATH_DEPTH:
            raise ToolError(
                f"path {raw[:40]!r}... is too long or too deep ({len(raw)} characters, "
                f"{levels} levels); a path may have at most {MAX_PATH_CHARS} characters "
                f"and {MAX_PATH_DEPTH} levels"
            )
        relative = self._lexical_relative(raw)
        self._refuse_protected(raw, relative.parts)
        return relative

    def resolve(self, raw: str) -> Path:
        """The absolute, symlink-free path for ``raw``; raises ``PathOutsideWorkspace``
        (or ``ToolError`` for a path too long or too deep to be a project's).

        The file need not exist (``create_file``). Relative paths are taken from the
        workspace; an absolute path is accepted only if it lies inside it."""
        # a backslash is a character of a name here, as for the commands and the
        # snapshots: read as "/", "src\\app.py" (a file a command made) was src/app.py,
        # and a rewind that restored or removed it removed src/app.py instead
        relative = self._checked(raw)
        resolved = Path(os.path.realpath(self.root.joinpath(*relative.parts)))
        # The kernel applies '..' after following the link before it ('link/..' is
        # the link target's parent), where normpath drops both: check the path as
        # the kernel would read it too, since a command is given the raw text. (Without
        # '..' the two readings are the same path.)
        candidates = [resolved]
        if ".." in raw.split("/"):
            candidates.append(Path(os.path.realpath(self.root / self._below_name(raw))))
        for candidate in candidates:
            if not candidate.is_relative_to(self.root):
                raise PathOutsideWorkspace(
                    f"path {raw!r} leads outside the workspace through a symbolic link; "
                    "only files inside the workspace can be used"
                )
            self._refuse_protected(raw, candidate.relative_to(self.root).parts)
        return resolved

    def _below_name(self, raw: str) -> str:
        """``raw`` as the kernel would walk it from the workspace: an absolute path
        written under one of the workspace's names, from there (unnormalised)."""
        for name in self._names:
            prefix = f"{name}/"
            if raw.startswith(prefix):
                return raw[len(prefix) :]
        return raw

    def relative(self, path: Path) -> str:
        """``path`` (as returned by ``resolve``) relative to the workspace, in POSIX
        form; ``.`` for the workspace itself."""
        return PurePosixPath(*path.relative_to(self.root).parts).as_posix() or "."

    def _lexical_relative(self, raw: str) -> PurePosixPath:
        candidate = Path(raw)
        if candidate.is_absolute():
            normal = Path(os.path.normpath(candidate))
            for base in self._names:
                if normal.is_relative_to(base):
                    return PurePosixPath(*normal.relative_to(base).parts)
            raise PathOutsideWorkspace(
                f"absolute path {raw!r} is outside the workspace; "
                "use a path relative to the workspace root"
            )
        normal_text = os.path.normpath(raw)
        if normal_text == ".." or normal_text.startswith("../"):
            raise PathOutsideWorkspace(
                f"path {raw!r} climbs out of the workspace with '..'; "
                "use a path relative to the workspace root"
            )
        return PurePosixPath(normal_text) if normal_text != "." else PurePosixPath()

    @staticmethod
    def _refuse_protected(raw: str, parts: tuple[str, ...]) -> None:
        # casefold: on case-insensitive file systems .GIT is .git.
        hit = next((p for p in parts if p.casefold() in PROTECTED), None)
        if hit is not None:
            raise PathOutsideWorkspace(
                f"path {raw!r} is inside {hit}/, which belongs to the tooling, "
                "not the project; it cannot be read or changed"
            )


def printable_name(name: str) -> str:
    """A file name as a tool's result lists it: each control character (a newline, a
    tab) escaped as Python writes it, so that a name a command made cannot fake a line
    of the listing. A byte that is not UTF-8 (a lone surrogate) stays for the log's
    own escape (``\\xff``, ``engine.terminal.unicode_text``)."""
    if name.isprintable():
        return name
    return "".join(
        c if c.isprintable() or "\ud800" <= c <= "\udfff" else repr(c)[1:-1] for c in name
    )


def is_protected_name(name: str) -> bool:
    """Whether a directory entry is one listings and searches must skip."""
    return name.casefold() in PROTECTED


SYSTEM_DIRECTORIES = frozenset(
    Path(p)
    for p in (
        "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
        "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys",
        "/tmp", "/usr", "/var",
    )
)  # fmt: skip
"""Directories no project is: a run confined to one of them could write the system."""

VIRTUAL = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/run"))
"""The kernel's and the running system's own trees: nothing under them is a project
(a log naming ``/proc/self`` had a copy of the process's environment made)."""

SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/etc", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr",
        "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/mail", "/var/backups",
    )
)  # fmt: skip
"""The system's own files, in which no directory is a project either: a log naming
``/etc/ssh`` (edited, unkeyed) had a fork copy the host's keys into its workspace,
and a resume would have let commands write ``/usr/local/bin``. ``SOURCES`` aside."""

SOURCES = (Path("/usr/src"), Path("/usr/local/src"))
"""Where sources are built under ``/usr``: projects may be there."""


def not_a_project(directory: Path) -> str:
    """Why ``directory`` cannot be a run's workspace ("" when it can): the file
    system's root, a system directory or one in the system's own trees, or a home
    directory, one above it or one of its settings (``~/.config``, ``~/.ssh``: a
    directory of a home whose name starts with a dot). A workspace is what commands
    may write; a log or a queue naming one of these (edited, or written by someone
    else) would hand the agent the machine."""
    resolved = directory.resolve()
    home = Path.home().resolve()
    in_home = resolved.relative_to(home).parts if resolved.is_relative_to(home) else ()
    if (
        resolved in SYSTEM_DIRECTORIES
        or any(resolved.is_relative_to(tree) for tree in VIRTUAL)
        or (
            any(resolved.is_relative_to(tree) for tree in SYSTEM_TREES)
            and not any(resolved.is_relative_to(src) for src in SOURCES)
        )
        or resolved == home
        or resolved in home.parents
        or (in_home and in_home[0].startswith("."))
    ):
        return "the file system's root, a system directory or a home directory, no project's"
    return ""


def workspace_problem(run_id: str, workspace: Path, version: int, done: str) -> str:
    """Why the workspace the log names for ``run_id`` may not be written now ("" when
    it may): a home or system directory (the log edited, or the workspace replaced by
    a link), or no directory there, with how to go on elsewhere (a fork at
    ``version``). ``done``: what was (not) done about it. Resume, rewind, and the
    engine before each tool call, ask."""
    if problem := not_a_project(workspace):
        return (
            f"run {run_id}'s log names {workspace} as its workspace, which is {problem}; "
            f"{done} (was the log edited, or the workspace replaced by a link?)"
        )
    if workspace.is_dir():
        if read_only(workspace):
            return (
                f"run {run_id}'s workspace {workspace} is read-only; {done}. Make it writable "
                "again (every tool that writes would fail in it)"
            )
        return ""
    gone = "not a directory" if workspace.exists() else "gone (deleted or moved?)"
    return (
        f"run {run_id}'s workspace {workspace} is {gone}; {done}. Put it back, or go on in "
        f"a new workspace made from the log's files: autonomy fork {run_id} --at {version} "
        "--workspace NEW_DIR"
    )


def read_only(directory: Path) -> bool:
    """Whether nothing can be written in ``directory`` (a read-only mount, for root
    too: ``access`` answers EROFS whoever asks)."""
    return not os.access(directory, os.W_OK | os.X_OK)


SET_ID = stat.S_ISUID | stat.S_ISGID


def clear_set_id(root: Path) -> int:
    """Take the set-user-id and set-group-id bits off every file under ``root`` (no
    link followed); returns how many files had them. A command runs confined, but
    the files it leaves are on the host, where a set-id file it made (a copy of a
    shell given ``chmod u+s``: owned by root when autonomy runs as root) would run
    with its owner's rights for whoever can reach the workspace. Called once the
    command's processes are gone, so nothing can set the bit again behind it."""
    try:
        found = subprocess.run(
            ["find", str(root), "-type", "f", "(", "-perm", "-4000", "-o", "-perm", "-2000", ")",
             "-print0"],
            stdin=subprocess.DEVNULL, capture_output=True, check=False,
        ).stdout  # fmt: skip
        paths = [os.fsdecode(p) for p in found.split(b"\0") if p]
    except OSError:  # no find here: the same walk, slower
        paths = [os.path.join(d, name) for d, _, names in os.walk(root) for name in names]
    return sum(drop_set_id(path) for path in paths)


def drop_set_id(path: str) -> bool:
    """Take the set-id bits off the regular file at ``path`` (a link is not followed);
    whether it had them. A file gone, or not ours to change, is left."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode) and mode & SET_ID:
            os.chmod(path, stat.S_IMODE(mode) & ~SET_ID)
            return True
    except OSError:
        pass
    return False


def remove_tree(path: Path) -> None:
    """Remove ``path`` and all under it, following no link, however deep.
    ``shutil.rmtree`` first (a process of its own cost a replay 1 ms); it recurses in
    Python, so what it cannot remove (a tree a command made a few thousand levels
    deep raised ``RecursionError``) is left to ``rm -rf``."""
    try:
        shutil.rmtree(path)
        return
    except (OSError, RecursionError):
        if not os.path.lexists(path):
            return
    with contextlib.suppress(OSError):  # no rm on this PATH: what Python left stays
        subprocess.run(
            ["rm", "-rf", "--", str(path)], stdin=subprocess.DEVNULL, capture_output=True
        )


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """``tempfile.TemporaryDirectory``, removed by ``remove_tree``: what a command
    left in it (a tree thousands of levels deep) made its cleanup a ``RecursionError``
    and left it behind. Its name holds this process's id (``PREFIX<pid>-XXXXXXXX``),
    and those of processes that are gone (killed before they could remove theirs: a
    run killed during each of its commands left one each) go when the next is made."""
    _remove_abandoned(prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield path
    finally:
        remove_tree(path)


def _remove_abandoned(prefix: str) -> None:
    """Remove the temporary directories named ``prefix`` that processes now gone made:
    directories only (a link of that name is not followed), and this user's only."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[a-z0-9_]{8}")
    uid = os.getuid()
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            found = pattern.fullmatch(entry.name)
            if found is None:
                continue
            with contextlib.suppress(OSError):
                if (
                    entry.is_dir(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_uid == uid
                    and process_gone(found.group(1))
                ):
                    remove_tree(Path(entry.path))


def process_gone(pid: str) -> bool:
    """Whether no process ``pid`` runs here (one of another user's, or a text that is
    no process id, is not known to be gone): whose marks, leftovers or cgroups may go."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        pass
    return False
