"""``run_command``: an allowlisted argv, run without a shell, confined
(``engine.tools.confine``), bounded in time and output, its file changes recorded
(``engine.tools.snapshot``).

The argv is matched against the allowlist as the model wrote it, then a leading
``python`` is replaced by ``sys.executable`` so that ``python -m pytest`` runs with
the interpreter (and virtualenv) the engine runs in. There is no shell anywhere: an
argument like ``; rm -rf /`` reaches the program as that literal string.

Output goes to a temporary file rather than a pipe: a runaway command cannot fill
the engine's memory, a grandchild that keeps the descriptor open cannot make us wait
past the timeout, and we can keep the head and the tail (where pytest puts its
summary) and elide the middle.

A ``.git`` the command made anywhere in the workspace is removed before its changes
are recorded, and the result says so (``engine.tools.confine.REPOSITORY``): git would
take that repository's config, and run the commands it names, outside any sandbox.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Annotated, Any, NamedTuple

import msgspec

from engine import stops
from engine.errors import ToolError
from engine.tools.argv_policy import check_argv
from engine.tools.confine import REPOSITORY, Confinement, choose
from engine.tools.registry import Args, BlobSink, Tool, ToolContext, ToolOutcome
from engine.tools.sandbox import clear_set_id, printable_name, remove_tree
from engine.tools.snapshot import MAX_CHANGES, TOO_MANY, WorkspaceDigests, changes, is_config
from events.schema import FileChange

_PYTHON_NAMES = frozenset({"python", "python3"})


class RunCommandArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``run_command``."""

    argv: Annotated[
        list[str] | str,
        msgspec.Meta(
            description=(
                "The command as a list of arguments, e.g. "
                '["python", "-m", "pytest", "-q"]; it runs in the workspace root '
                "without a shell, and only allowed commands run"
            ),
            examples=[["python", "-m", "pytest", "-q"]],
        ),
    ]
    timeout_seconds: Annotated[
        float,
        msgspec.Meta(ge=0, description="Stop the command after this many seconds (0: the default)"),
    ] = 0


def allowed(argv: list[str], allowlist: tuple[tuple[str, ...], ...]) -> bool:
    """Whether ``argv`` starts with one of the allowlist's prefixes (``python3``
    counts as ``python``)."""
    if not argv:
        return False
    head = ["python" if argv[0] in _PYTHON_NAMES else argv[0], *argv[1:]]
    return any(head[: len(prefix)] == list(prefix) for prefix in allowlist)


MAX_COMMAND_CHARS = 32_768
"""The longest command line ``run_command`` splits (``shlex`` takes quadratic time
on a long word: 1 MB took 22 s of the engine's time)."""


def _argv(value: list[str] | str) -> list[str]:
    if isinstance(value, list):
        return value
    if len(value) > MAX_COMMAND_CHARS:
        raise ToolError(
            f"the command line is {len(value):,} characters; at most {MAX_COMMAND_CHARS:,} "
            "are split. Give argv as a list"
        )
    # A model that writes a command line gets it split like a shell would split it,
    # but it is still never given to a shell.
    try:
        return shlex.split(value)
    except ValueError as e:
        raise ToolError(f"cannot split command {value!r}: {e}; give argv as a list") from e


def _capped(out: IO[bytes], cap: int) -> str:
    """The output, or its head and tail with a marker saying how much is elided."""
    size = out.seek(0, os.SEEK_END)
    out.seek(0)
    if size <= cap:
        return out.read().decode("utf-8", errors="replace")
    half = max(cap // 2, 1)
    head = out.read(half)
    out.seek(size - half)
    tail = out.read()
    return (
        head.decode("utf-8", errors="replace")
        + f"\n[... {size - 2 * half} bytes of output omitted ...]\n"
        + tail.decode("utf-8", errors="replace")
    )


def run_command(args: RunCommandArgs, ctx: ToolContext) -> ToolOutcome:
    """Run an allowed command in the workspace, confined; a non-zero exit or a
    timeout is a failed outcome that still carries the output. The files the
    command created, changed or deleted are recorded like a file tool's writes."""
    argv = _argv(args.argv)
    shown = shlex.join(argv)
    if not allowed(argv, ctx.allowlist):
        permitted = "; ".join(" ".join(p) for p in ctx.allowlist) or "none"
        raise ToolError(f"command not allowed: {shown}. Allowed commands start with: {permitted}")
    if any("\x00" in a for a in argv):
        raise ToolError("an argument contains a NUL byte")
    sandbox = ctx.sandbox()
    check_argv(argv, sandbox, skip=_prefix_length(argv, ctx.allowlist))
    executable = [sys.executable, *argv[1:]] if argv[0] in _PYTHON_NAMES else argv
    timeout = ctx.command_timeout
    if args.timeout_seconds > 0:
        timeout = min(args.timeout_seconds, ctx.command_timeout)
    confinement = ctx.confinement or default_confinement()
    digests = ctx.digests or WorkspaceDigests()
    root = sandbox.root
    before = digests.snapshot(root, ctx.blobs)
    repositories = digests.repositories
    theirs = {name: found for name in repositories if (found := _identity(root / name))}
    left_out = digests.left_out
    started = time.monotonic()
    undone = False
    try:
        with tempfile.TemporaryFile() as out:
            try:
                finished = confinement.run(
                    executable,
                    workspace=root,
                    out=out,
                    timeout=timeout,
                    # read-only too: what their configs make git read or run
                    repositories=[root / r for r in repositories] + _obeyed(root, repositories),
                    logs=[root / name for name in digests.logs],
                )
            except OSError as e:
                raise ToolError(f"cannot start {shown}: {e.strerror or e}") from e
            output = _capped(out, ctx.output_cap)
        elapsed = time.monotonic() - started
        set_id = clear_set_id(root)
        after = digests.snapshot(root, ctx.blobs)  # and the repositories there now
        done = _undo_repositories(root, digests.repositories, theirs)
        if done.made or done.relinked:
            after = digests.snapshot(root, ctx.blobs)
        made, left = done.made, done.left
        undone = True
    finally:
        if not undone:
            # a stop (Ctrl-C, SIGTERM) cut it, or what came after it: a set-user-id
            # file it made, and a repository whose config git would run, stay unless
            # undone here, where it is known which repositories are the user's; a
            # second stop meanwhile waits until it is done (engine.stops)
            with stops.deferred():
                with contextlib.suppress(OSError):
                    clear_set_id(root)
                with contextlib.suppress(OSError):
                    digests.snapshot(root, ctx.blobs)
                    _undo_repositories(root, digests.repositories, theirs)
    left_out = {**left_out, **digests.left_out}
    changed = changes(before, after, left_out)
    if len(changed) > MAX_CHANGES:
        # a config file autonomy reads from a workspace is recorded whatever the cut:
        # whose it is must stay known (``refuse_a_config_a_model_wrote``); the
        # shallowest first: 10,000 of them a level down cut the workspace's own
        changed = tuple(sorted(changed, key=lambda c: (not is_config(c.path), c.path.count("/"))))
        left_out |= {c.path: TOO_MANY for c in changed[MAX_CHANGES:]}
        changed = changed[:MAX_CHANGES]
    result = f"$ {shown}\n{output}".rstrip("\n")
    if removed := [name for name in made if name not in left]:
        result += f"\n[removed {', '.join(map(printable_name, removed))}: {REPOSITORY}]"
    if done.relinked:
        result += (
            f"\n[put back {', '.join(map(printable_name, done.relinked))}: the link to a "
            "repository of the workspace, which a command may not take away]"
        )
    if done.kept:
        return ToolOutcome(
            ok=False,
            error=f"{', '.join(map(printable_name, done.kept))}: a command moved one of the "
            "workspace's repositories (or the link to one) where it cannot be set right: "
            "into a .git it made, which was kept so as to lose nothing (without its HEAD: "
            "git takes it for no repository), or from a directory it made a link; the "
            "person running autonomy must move theirs back",
            result=result,
            files_changed=changed,
        )
    if left:
        return ToolOutcome(
            ok=False,
            error=f"{', '.join(map(printable_name, left))} could not be removed: {REPOSITORY}; "
            "the person running autonomy must remove it before running git there",
            result=result,
            files_changed=changed,
        )
    if changed:
        result += "\n[files changed: " + _listed([c.path for c in changed]) + "]"
    if set_id:
        result += f"\n[set-user-id and set-group-id bits removed from {set_id} file(s)]"
    if left_out:
        why: dict[str, list[str]] = {}
        for path, reason in left_out.items():
            why.setdefault(reason, []).append(path)
        result += (
            "\n[not recorded, so a rewind leaves them as they are: "
            + "; ".join(f"{reason}: {_listed(paths)}" for reason, paths in why.items())
            + "]"
        )
    if finished.timed_out:
        return ToolOutcome(
            ok=False,
            error=f"timed out after {timeout:g}s and was stopped",
            result=result,
            files_changed=changed,
        )
    if finished.code != 0:
        return ToolOutcome(
            ok=False,
            error=f"exit code {finished.code} after {elapsed:.1f}s",
            result=result,
            files_changed=changed,
        )
    return ToolOutcome(
        ok=True, result=f"{result}\n[exit code 0 after {elapsed:.1f}s]", files_changed=changed
    )


CLOCK_SLACK = 0.1
"""Seconds before a cut command's request that a file's change still counts as its:
the log's clock and the file system's are this machine's, but the kernel stamps
files with a coarser clock (a tick late, up to 10 ms)."""


def changes_of_a_cut_command(
    root: Path, requested_at: float, known: dict[str, tuple[str, int]], blobs: BlobSink
) -> tuple[FileChange, ...]:
    """What a command left in the workspace when a stop cut it off (the engine
    killed, or stopped, while it ran: its own snapshot after it never came), as far
    as can be told now: each file the log knows (``known``: path -> digest, size)
    that is different or gone, and each file it does not know that was created or
    changed since the command was requested (``requested_at``, seconds since the
    epoch: a file's ctime, which a command cannot set back). Their contents go into
    ``blobs``, so that a rewind removes or restores them as any tool's writes."""
    digests = WorkspaceDigests()
    now = digests.snapshot(root, blobs)
    since = requested_at - CLOCK_SLACK

    def recent(name: str) -> bool:
        try:
            return os.lstat(root / name).st_ctime >= since
        except OSError:
            return False

    after = {path: found for path, found in now.items() if path in known or recent(path)}
    return changes(known, after, digests.left_out)


LISTED = 100
"""The most paths a result names in one list: a command that made 300,000 files
made a result of 48 million characters."""


def _listed(paths: Sequence[str]) -> str:
    listed = ", ".join(map(printable_name, paths[:LISTED]))
    return listed if len(paths) <= LISTED else f"{listed} and {len(paths) - LISTED:,} more"


class Undone(NamedTuple):
    """What ``_undo_repositories`` did, and could not do."""

    made: list[str]
    """What of the repositories the command made was to be removed."""
    left: list[str]
    """Of those, what could not be removed."""
    relinked: list[str]
    """The user's links put back at their names."""
    kept: list[str]
    """What could not be set right: a ``.git`` the command made around one of the
    user's repositories (moved into it), only its ``HEAD`` removed; a link of the
    user's whose name something else holds."""


def _undo_repositories(
    root: Path, repositories: Sequence[str], theirs: dict[str, Identity]
) -> Undone:
    """Remove what of each repository in the workspace a command made (``_made``):
    those that are not the very directories (or files) that were there before
    (``theirs``, by name), wherever they are now. By path, a command that renamed the
    directory holding a repository (its read-only mount goes with it) and made a .git
    at the old path had its own kept, and the user's (at its new path) removed. Then
    put back each of the user's that was a link and is not at its name: a link (a
    ``.git`` kept elsewhere) is no mount, and a command removed it, moved it (into a
    ``.git`` it made, as its ``HEAD``, over another of the user's), or put its own in
    its place, and the workspace was no longer the user's repository's. A link of the
    user's at another name is removed: removing a link loses nothing."""
    known = set(theirs.values())
    found = {name: _identity(root / name) for name in set(repositories)}
    made = _made(root, sorted(name for name, i in found.items() if i not in known))
    # what removing would lose: the user's repositories that are directories or files
    made, around = _sparing(root, made, {i for i in known if i[2] != stat.S_IFLNK})
    strays = sorted(
        name
        for name, i in found.items()
        if i is not None and i[2] == stat.S_IFLNK and i in known and theirs.get(name) != i
    )
    left = _remove(root, made + strays) if made or strays else []
    relinked, kept = [], list(around)
    for name, (_, _, kind, target) in theirs.items():
        if kind == stat.S_IFLNK and _identity(root / name) != theirs[name]:
            place = root / name
            try:
                # only where the workspace's own directories lead: a directory on the
                # way the command replaced by a link (to /etc) would put it there
                if os.path.realpath(place.parent) != str(place.parent):
                    raise NotADirectoryError(name)
                os.symlink(target, place)
                relinked.append(name)
            except OSError:  # something else there: a .git the command made around one
                kept.append(name)
    kept = list(dict.fromkeys(kept))
    return Undone(made, [n for n in left if n not in strays], relinked, kept)


def _remove(root: Path, names: Sequence[str]) -> list[str]:
    """Undo each repository a command made (``REPOSITORY``), links not followed: a
    ``.git`` is removed, a directory made a bare repository loses its ``HEAD``,
    without which git takes it for none (``_made``); the names still there."""
    for name in names:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return [name for name in names if os.path.lexists(root / name)]


def _obeyed(root: Path, repositories: Sequence[str]) -> list[Path]:
    """The files and directories of the workspace that the configs of its
    ``repositories`` make the host's git read or run: a file one includes
    (``include.path = ../.gitconfig``, a config shared in the project), the hooks'
    directory (``core.hooksPath``), a program named by its path (``core.fsmonitor =
    scripts/watch.sh``). A command wrote ``core.fsmonitor`` into an included file, and
    the host's ``git status`` ran it. As git itself lists them (``git config --list
    --show-origin --includes``, which reads and runs nothing else); none without git."""
    git = shutil.which("git")
    if git is None or not repositories:
        return []
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    found: set[Path] = set()
    for name in repositories:
        place = root / name
        worktree = place.parent if place.name.casefold() == ".git" else place
        try:
            listed = subprocess.run(
                [git, "-C", str(worktree), "config", "--list", "--show-origin", "--includes", "-z"],
                capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=30, check=False,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        fields = listed.split(b"\0")
        for origin, entry in zip(fields[0::2], fields[1::2], strict=False):
            key, _, value = os.fsdecode(entry).partition("\n")
            # a file only (a value naming a directory, core.worktree say, is no program)
            named = [(os.fsdecode(origin).removeprefix("file:"), False)]
            if key.lower() == "core.hookspath":
                named.append((value, True))
            elif value.split():
                named.append((value.split()[0].lstrip("!"), False))
            for text, directory in named:
                path = Path(os.path.normpath(worktree / os.path.expanduser(text)))
                if (
                    path.is_relative_to(root)
                    and path != root
                    and (path.is_dir() if directory else path.is_file())
                ):
                    found.add(path)
    return sorted(found)


Identity = tuple[int, int, int, str]


def _identity(path: Path) -> Identity | None:
    """The file system's identity of what is at ``path``, which a rename keeps: its
    device and inode, its kind, and for a link where it leads. None if nothing can be
    found there. (A ``.git`` that is a link is not mounted read-only, its target is:
    a command removed it and made a directory, which took the freed inode number at
    once on ext4, and passed for the user's repository.)"""
    try:
        found = os.lstat(path)
        target = os.readlink(path) if stat.S_ISLNK(found.st_mode) else ""
    except OSError:
        return None
    return found.st_dev, found.st_ino, stat.S_IFMT(found.st_mode), target


def _sparing(root: Path, made: Sequence[str], theirs: set[Identity]) -> tuple[list[str], list[str]]:
    """``made``, but for a ``.git`` the command made that holds a repository that was
    there before (the user's, moved into it: the directory holding its read-only
    mount may be renamed), its ``HEAD`` files only, without which git takes it for no
    repository: removed whole, it took the user's history with it. And the names of
    those ``.git``s."""
    spared: list[str] = []
    around: list[str] = []
    for name in made:
        path = root / name
        if path.name.casefold() == ".git" and _holds(path, theirs):
            around.append(name)
            with contextlib.suppress(OSError):
                spared += sorted(
                    f"{name}/{entry.name}"
                    for entry in os.scandir(path)
                    if entry.name.casefold() == "head" and not entry.is_dir(follow_symlinks=False)
                )
        else:
            spared.append(name)
    return spared, around


def _holds(directory: Path, theirs: set[Identity]) -> bool:
    """Whether ``directory`` (a directory, not a link) holds one of ``theirs``, at any
    depth a path can be opened at; links are not followed."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    stack = [str(directory)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as entries:
            for entry in entries:
                if _identity(Path(entry.path)) in theirs:
                    return True
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return False


def _made(root: Path, repositories: Sequence[str]) -> list[str]:
    """What to remove of each repository a command made: the ``.git``, or every
    ``HEAD`` of a directory it made a bare repository (each spelling: one, ``hEAD``,
    was removed, and git's own ``HEAD`` beside it kept)."""
    made = []
    for name in repositories:
        if Path(name).name.casefold() == ".git":
            made.append(name)
            continue
        with contextlib.suppress(OSError):
            heads = sorted(e.name for e in os.scandir(root / name) if e.name.casefold() == "head")
            made += [f"{name}/{head}" if name else head for head in heads]
    return made


def _prefix_length(argv: list[str], allowlist: tuple[tuple[str, ...], ...]) -> int:
    head = ["python" if argv[0] in _PYTHON_NAMES else argv[0], *argv[1:]]
    return max(len(p) for p in allowlist if head[: len(p)] == list(p))


@functools.cache
def default_confinement() -> Confinement:
    """``tools.sandbox = "auto"`` for callers that give none (the engine always
    gives the run's own, chosen once when the run starts)."""
    return choose("auto")


COMMAND_TOOLS: tuple[Tool[Any], ...] = (
    Tool(
        "run_command",
        "Run an allowed command (such as python -m pytest) in the workspace and return "
        "its exit code and output.",
        RunCommandArgs,
        run_command,
    ),
)
