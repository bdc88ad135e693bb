"""A workspace as it was at any version of a run, restored byte for byte from the blobs;
and the two history operations built on that: rewinding a run and forking it.

Every file a tool writes is in the blob table, before and after
(``tool.executed.files_changed``), so the content of any path the run touched is
known at every version:

- if an event that is part of the state at V changed the path, its content is
  that change's ``after`` (``None``: the file did not exist);
- otherwise the run had not touched it yet at V, so its content is the ``before``
  of the first change the run ever made to it (``None``: created later).

"Part of the state at V" follows rewinds and forks the way the projection does:
after ``run.rewound(to=W)`` the changes in effect are those in effect at W, and a
fork starts from its parent's changes in effect at the fork point. Paths the run
never touched are not the log's business and are left alone.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.agent.runlog import RunLog, check_run_id, refuse_tampered
from engine.agent.runner import hidden_from_commands, workspace_lock
from engine.errors import ToolError
from engine.machines.phases import TERMINAL
from engine.terminal import one_line
from engine.tools.files import PARTIAL, remove_partials, write_atomically
from engine.tools.sandbox import (
    MAX_PATH_DEPTH,
    Sandbox,
    drop_set_id,
    not_a_project,
    process_gone,
    remove_tree,
    workspace_problem,
)
from events.errors import AutonomyError, RunNotFound
from events.lease import describe_owner
from events.schema import FileChange, RunForked, RunRewound, ToolExecuted
from events.store import EventStore, RecordedEvent
from projections.fold import fork_lineage, project

SKIPPED = frozenset({".autonomy", ".git", "__pycache__", ".pytest_cache", ".mypy_cache"})
"""Directories never copied between workspaces: the log itself and caches."""


class HistoryError(AutonomyError):
    """That rewind or fork cannot be done."""


@dataclass(frozen=True)
class _Changes:
    """An immutable linked list of file changes, newest first: a version's changes
    in effect share their tail with the earlier version's, so keeping one per
    version costs O(1) each."""

    change: FileChange
    older: _Changes | None


@dataclass(frozen=True)
class Restored:
    """What a restore did to a directory."""

    written: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
    before: bool = False
    """Done before: the same fork given again (after a stop cut it once its run was
    written, say)."""
    edited: tuple[str, ...] = ()
    """Left as they are: each holds what the log never recorded for it (edited by
    hand since, or a file that was never the run's)."""

    def summary(self) -> str:
        if self.before:
            return "made before, by the same command (given again)"
        text = (
            f"{len(self.written)} file(s) restored, {len(self.removed)} removed, "
            f"{len(self.unchanged)} already as they were"
        )
        if self.edited:
            shown = ", ".join(one_line(path) for path in self.edited[:10])
            more = f" and {len(self.edited) - 10} more" if len(self.edited) > 10 else ""
            text += (
                f"; left as they are, holding what the log never recorded for them (edited "
                f"since?): {shown}{more}"
            )
        return text


def _in_effect(store: EventStore, run_id: str, upto: int) -> _Changes | None:
    """The file changes in effect at version ``upto`` of ``run_id``, newest first."""
    head: _Changes | None = None
    for run, until in fork_lineage(store, run_id, upto):
        # a fork starts from its parent's changes at the fork point; rewinding it to 0
        # returns to them, as the fold does
        heads: dict[int, _Changes | None] = {0: head}
        for recorded in store.read(run, upto=until):
            data = recorded.data
            if isinstance(data, RunRewound):
                head = heads.get(min(data.to_version, recorded.version - 1))
            elif isinstance(data, ToolExecuted):
                for change in data.files_changed:
                    head = _Changes(change, head)
            heads[recorded.version] = head
    return head


def _first_befores(store: EventStore, run_id: str, into: dict[str, str | None]) -> None:
    """For every path the run (or a run it was forked from) ever changed: its
    content before the first change, in the order the changes happened."""
    for run, _ in fork_lineage(store, run_id):
        for recorded in store.read(run):  # a parent's every change, after the fork point too
            if isinstance(recorded.data, ToolExecuted):
                for change in recorded.data.files_changed:
                    into.setdefault(change.path, change.before)


def files_at(store: EventStore, run_id: str, version: int) -> dict[str, str | None]:
    """Every path the run ever touched -> the sha256 of its content at ``version``
    (``None``: the file did not exist then)."""
    contents: dict[str, str | None] = {}
    _first_befores(store, run_id, contents)
    seen: set[str] = set()
    node = _in_effect(store, run_id, version)
    while node is not None:
        path = node.change.path
        if path not in seen:  # newest first: the first one seen is the last change
            seen.add(path)
            contents[path] = node.change.after
        node = node.older
    return contents


def restore(
    store: EventStore,
    run_id: str,
    version: int,
    directory: Path,
    *,
    copy_from: Path | None = None,
) -> Restored:
    """Make ``directory`` hold every file the run touched as it was at ``version``.

    With ``copy_from``, the files there are first copied in (the log and caches
    excepted): that brings along files the run never touched. Every blob is read and
    every path checked before anything is written, so a missing blob
    (``BlobNotFound``) or a path that leaves ``directory`` changes nothing.
    """
    wanted = files_at(store, run_id, version)
    contents = {path: store.get(digest) for path, digest in wanted.items() if digest is not None}
    directory.mkdir(parents=True, exist_ok=True)
    targets = _targets(directory, wanted)
    if copy_from is not None and _a_workspace_to_copy(copy_from):
        copy_workspace(copy_from, directory, hidden_from_commands(store))
        targets = _targets(directory, wanted)  # the copy may have brought symlinks
    return _write(targets, contents)


def _a_workspace_to_copy(path: Path) -> bool:
    """Whether the workspace a log names is there to copy; ``HistoryError`` when it
    is, but this user may not read it (it was a ``PermissionError``, raw)."""
    try:
        return path.is_dir()
    except OSError as e:
        raise HistoryError(
            f"{path} was named as the run's workspace to copy, but it cannot be read "
            f"({e.strerror}); nothing was copied"
        ) from e


def copy_workspace(source: Path, target: Path, hidden: Iterable[Path]) -> None:
    """Copy the workspace ``source`` names into ``target`` (links as links; the log,
    caches and special files left out), once ``source`` is checked to be a
    project's directory: a log or a queue that names it is not trusted.

    ``hidden``: what commands may not see (``hidden_from_commands``: the chain key,
    the log, credentials). None of it is copied: in the copy, a command would see it
    wherever the copy is (a log naming the key's directory as its workspace had the
    key copied into a replay's scratch directory, and into a fork's workspace)."""
    left_out = frozenset(os.path.realpath(p) for p in hidden)
    _check_copyable(source, left_out)
    ignore = functools.partial(_not_copied, len(source.resolve().parts), left_out)
    try:
        shutil.copytree(
            source.resolve(),
            target,
            dirs_exist_ok=True,
            symlinks=True,
            ignore=ignore,
            copy_function=_copy_file,
        )
    except shutil.Error as e:  # every file that failed, as a list of tuples: say one
        failed = e.args[0] if e.args and isinstance(e.args[0], list) else []
        first = f"{failed[0][0]}: {failed[0][2]}" if failed else str(e)
        raise HistoryError(
            f"copying {source} into {target} failed for {len(failed) or 'some'} file(s), "
            f"first {first}"
        ) from None  # its text is the whole list again
    except OSError as e:
        raise HistoryError(f"copying {source} into {target} failed: {e}") from e


def _copy_file(source: str, target: str) -> None:
    """A file as ``copy2`` copies it, but never with a set-id bit (``clear_set_id``)."""
    shutil.copy2(source, target)
    drop_set_id(target)


def _not_copied(top: int, hidden: frozenset[str], directory: str, names: list[str]) -> list[str]:
    """What a copy leaves out: the log and caches (``SKIPPED``), what commands may not
    see (``hidden``, real paths), what is neither a file, a directory nor a link (a
    FIFO, socket or device a command left, which no project holds and which copying
    would wait on or fail at), and what is deeper than a path may be
    (``MAX_PATH_DEPTH``; the copy recurses, and a tree a command made 1,100 levels
    deep was a ``RecursionError``). ``top``: the number of parts of the copied
    directory's path."""
    if len(Path(directory).parts) - top + 1 > MAX_PATH_DEPTH:
        return names
    left = []
    for name in names:
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except OSError:
            continue  # vanished meanwhile: the copy says so if it matters
        if (
            name in SKIPPED
            or os.path.join(directory, name) in hidden  # the copy walks real paths
            or PARTIAL.fullmatch(name)  # what a killed write left: no project's file
            or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))
        ):
            left.append(name)
    return left


COPIED_FILES = 20_000
COPIED_BYTES = 2 << 30
"""The most a restore copies from the workspace a log names (files, bytes): a
project's files, never a home directory or a disk."""


def _check_copyable(source: Path, hidden: frozenset[str]) -> None:
    """``source`` is the workspace a log names: the log is not trusted, so it must
    not be the root, a home directory, inside what commands may not see (``hidden``)
    or anything larger than a project (``COPIED_*``) before a restore copies it;
    else ``HistoryError`` and nothing is copied."""
    resolved = source.resolve()
    problem = not_a_project(resolved)
    if not problem and any(resolved.is_relative_to(h) for h in hidden):
        problem = "hidden from commands (the chain key, the log or credentials)"
    if problem:
        raise HistoryError(
            f"{source} was named as a run's workspace to copy, but it is {problem}; "
            "nothing was copied (was the log or the queue edited?)"
        )
    files = size = 0
    top = len(resolved.parts)
    for folder, names, filenames in os.walk(resolved):
        deep = len(Path(folder).parts) - top + 1 > MAX_PATH_DEPTH  # as the copy (_not_copied)
        names[:] = [] if deep else [n for n in names if n not in SKIPPED]
        if deep:
            continue
        for name in filenames:
            files += 1
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(folder, name)).st_size
            if files > COPIED_FILES or size > COPIED_BYTES:
                raise HistoryError(
                    f"{source} was named as a run's workspace to copy, but it holds more "
                    f"than {COPIED_FILES:,} files or {COPIED_BYTES >> 30} GiB, more than a "
                    "project's; nothing was copied. If a command made them (a build, a "
                    "data set), remove them there and give the command again; if that is "
                    "no project of yours, the log or the queue was edited"
                )


def _targets(directory: Path, paths: Iterable[str]) -> dict[str, Path]:
    """Each recorded path -> where it is inside ``directory``, by its text through
    the one path resolver the tools use (``Sandbox.lexical``): the log is not trusted,
    so a path that was edited to climb out, or to enter ``.autonomy/`` or ``.git/``,
    is refused, and then nothing at all is written. No link on the way is followed:
    a snapshot never records a path through one, so whatever stands where a recorded
    path's directory was (a link a command left to another directory, a FIFO, a
    file) is replaced by the directory (``_directories``); a link that leads out of
    the workspace is refused, naming it (a person's, perhaps)."""
    sandbox = Sandbox(directory)
    targets = {}
    for path in sorted(paths):
        try:
            targets[path] = sandbox.lexical(path)
        except ToolError as e:  # outside the workspace, or too long or deep to be a path
            raise HistoryError(
                f"the log names a file outside the workspace {sandbox.root}: {e}; "
                "nothing was restored (was the log edited?)"
            ) from e
        for parent in targets[path].relative_to(sandbox.root).parents:
            link = sandbox.root / parent
            # realpath, not resolve: a loop of links (src -> src) is no error, only a
            # link to replace (resolve raised RuntimeError, a traceback)
            leads = Path(os.path.realpath(link))
            if link.is_symlink() and not leads.is_relative_to(sandbox.root):
                raise HistoryError(
                    f"the log names {path!r}, but {parent} is now a symbolic link leading "
                    f"outside the workspace {sandbox.root}, to {leads}; nothing was "
                    "restored (remove the link, or was the log edited?)"
                )
        mode = _mode_of(targets[path])
        if mode is not None and stat.S_ISDIR(mode):  # (_mode_of follows no link)
            raise HistoryError(
                f"the log names {path!r} as a file, but it is a directory in {sandbox.root}; "
                "nothing was restored"
            )
    return targets


def _write(targets: Mapping[str, Path], contents: Mapping[str, bytes]) -> Restored:
    written: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    for path, target in targets.items():
        content = contents.get(path)
        mode = _mode_of(target)
        regular = mode is not None and stat.S_ISREG(mode)
        if content is None:
            if mode is not None:
                target.unlink()
                removed.append(path)
            continue
        if regular and target.read_bytes() == content:
            unchanged.append(path)
            continue
        if mode is not None and not regular:
            # a link, or a FIFO, socket or device a command left: never written through
            # (writing to a FIFO would wait for a reader for ever)
            target.unlink()
        _directories(target)
        # whole or not at all: written in place, a rewind killed mid-write (or out of
        # disk) left a torn file, which the resume that finishes it took for one edited;
        # what a killed one left beside it goes (the same rewind given again)
        remove_partials(target, suffix=RESTORING)
        write_atomically(target, content, suffix=RESTORING)
        written.append(path)
    return Restored(tuple(written), tuple(removed), tuple(unchanged))


RESTORING = ".autonomy-restoring"
"""The suffix of a restored file's content on its way in (``write_atomically``)."""


def _directories(target: Path) -> None:
    """Make each directory on the way to ``target`` a directory: created where
    missing, and in place of anything else (a link is removed, never followed)."""
    mode = _mode_of(target.parent)
    if mode is not None and stat.S_ISDIR(mode):
        return
    for parent in reversed(target.parents):  # from the top: each one's own entry
        try:
            mode = parent.lstat().st_mode
        except FileNotFoundError:
            parent.mkdir()
            continue
        if not stat.S_ISDIR(mode):
            parent.unlink()
            parent.mkdir()


# -- rewind and fork ---------------------------------------------------------------


def written_by_a_tool(store: EventStore, path: str, content: bytes) -> tuple[str, int] | None:
    """The run and version of a tool (a file tool, or a command) that left a file
    ``path`` (in its workspace, or a directory of it: the next run's workspace may be
    one) holding ``content``, as the log records; None when no tool of any run in the
    log wrote that content so. A file a run's model wrote is the model's, whoever
    finds it later."""
    digest = hashlib.sha256(content).hexdigest()
    connection = getattr(store, "connection", None)
    if connection is not None:  # a SQL log: the rows that hold the digest at all
        sql = (
            "SELECT run_id, version FROM events WHERE type = 'tool.executed'"
            " AND CAST(data AS TEXT) LIKE ? ORDER BY position"
        )
        found = connection.execute(sql, (f"%{digest}%",)).fetchall()
        events = [
            e
            for run_id, version in found
            for e in store.read(run_id, after=version - 1, upto=version)
        ]
    else:
        events = list(store.read_all(types=("tool.executed",)))
    for event in events:
        data = event.data
        if isinstance(data, ToolExecuted) and any(
            change.after == digest and (change.path == path or change.path.endswith(f"/{path}"))
            for change in data.files_changed
        ):
            return event.run_id, event.version
    return None


def _remove_abandoned_copies(workspace: Path) -> None:
    """Remove the part copies that forks into ``workspace`` left when killed: those of
    a process that is no longer alive (``.NAME.forking-PID-XXXXXXXX`` beside it)."""
    pattern = re.compile(re.escape(f".{workspace.name}.forking-") + r"(\d+)-[0-9a-f]{8}")
    for candidate in workspace.parent.iterdir():
        found = pattern.fullmatch(candidate.name)
        if found is None or not candidate.is_dir() or candidate.is_symlink():
            continue
        if process_gone(found.group(1)):
            remove_tree(candidate)


def _check_version(store: EventStore, run_id: str, version: int) -> int:
    last = store.last_version(run_id)
    if last == 0:
        raise RunNotFound(run_id)
    if not 1 <= version <= last:
        raise HistoryError(f"run {run_id} has versions 1 to {last}; {version} is not one of them")
    pipeline = project(store, run_id, upto=version).pipeline
    if pipeline.status == "running" and pipeline.phase in TERMINAL:
        # the last phase change and run.finished are appended together: between them
        # the run is running in a phase with no way out, and a resume failed it
        raise HistoryError(
            f"version {version} of run {run_id} is inside the step that ended it (its "
            f"phase {pipeline.phase} and its end are written together); give {version - 1} "
            f"or {version + 1}"
        )
    if batch := _written_with(store, run_id, version):
        first, end = batch
        # a tool's result and what it did (the tasks a plan added, a review's verdict
        # on its task) are appended together: between them is a state the run was
        # never in (a branch from inside a plan had only its first task)
        raise HistoryError(
            f"version {version} of run {run_id} is inside one write: versions {first} to "
            f"{end} were written together; give {first - 1} or {end}"
        )
    return last


def _written_with(store: EventStore, run_id: str, version: int) -> tuple[int, int] | None:
    """The versions written in one append with ``version`` and the one after it, when
    there is one (an append writes its events with one time and, for what one tool
    did, one cause); None when ``version`` ends its append."""
    events = list(store.read(run_id, after=max(version - 1000, 0), upto=version + 1000))
    by_version = {e.version: e for e in events}

    def together(a: int) -> bool:
        one, other = by_version.get(a), by_version.get(a + 1)
        return (
            one is not None
            and other is not None
            and one.recorded_at == other.recorded_at
            and one.causation == other.causation
        )

    if not together(version):
        return None
    first = version
    while together(first - 1):
        first -= 1
    end = version + 1
    while together(end):
        end += 1
    return first, end


def rewind(store: EventStore, run_id: str, to: int, *, reason: str = "") -> Restored:
    """Append ``run.rewound(to)`` and restore the run's workspace to version ``to``.

    Nothing is deleted from the log: the rewound events stay, the projection
    continues from the state at ``to``, and ``resume`` carries on from there.
    """
    with store.lease(run_id, describe_owner()):
        return _rewind(store, run_id, to, reason)


def finish_rewind(store: EventStore, run_id: str, version: int, workspace: Path) -> Restored:
    """Finish the restore of a rewind (``run.rewound`` at ``version``) that was cut off.

    ``rewind`` appends ``run.rewound`` and then writes the files: a process killed in
    between leaves files as they were before it (or before an earlier rewind cut the
    same way). A file holding any content the log records for it is restored; one
    with any other content (edited by hand since) is left alone, and listed in
    ``edited``, as ``_restore_known`` does for every rewind."""
    wanted = files_at(store, run_id, version)
    return _restore_known(store, run_id, version, wanted, workspace, _targets(workspace, wanted))


def _restore_known(
    store: EventStore,
    run_id: str,
    version: int,
    wanted: Mapping[str, str | None],
    workspace: Path,
    targets: Mapping[str, Path],
    contents: Mapping[str, bytes] | None = None,
) -> Restored:
    """Each of ``targets`` brought to its ``wanted`` content (``contents``, read from
    the blobs when not given) where it holds a content the log recorded for it up to
    ``version`` (absence included): the run's own. Any other is left as it is and
    named in ``edited``: a file edited by hand since (a rewind wrote over it), or one
    that was never the run's (an edited log naming a person's project); and so is a
    file whose directory is something else now (a person's file, a link: a snapshot
    records neither), which a restore would remove to make the directory."""
    recorded = _recorded_contents(store, run_id, version)
    cut: dict[str, Path] = {}
    same: list[str] = []
    edited: list[str] = []
    for path, target in targets.items():
        remove_partials(target, suffix=RESTORING)  # a restore killed before its rename
        now = _digest_of(target)
        if now == wanted[path]:
            same.append(path)
        elif now in recorded.get(path, ()) and not _in_the_way(target, workspace):
            cut[path] = target
        else:
            edited.append(path)
    if contents is None:
        contents = {p: store.get(d) for p in cut if (d := wanted[p]) is not None}
    done = _write(cut, contents)
    return Restored(done.written, done.removed, tuple(same), edited=tuple(edited))


def _recorded_contents(store: EventStore, run_id: str, upto: int) -> dict[str, set[str | None]]:
    """Every content the run (and the runs it was forked from) recorded for each path
    up to ``upto``, before and after each change, absence (None) included."""
    found: dict[str, set[str | None]] = {}
    for run, until in fork_lineage(store, run_id, upto):
        for event in store.read(run, upto=until):
            if isinstance(event.data, ToolExecuted):
                for change in event.data.files_changed:
                    found.setdefault(change.path, set()).update((change.before, change.after))
    return found


def finish_cut_rewind(log: RunLog, workspace: Path, progress: Callable[[str], None] | None) -> None:
    """Before a resume (``resume_run(prepare=...)``): when no tool has run since the
    run's latest ``run.rewound`` (an answer may have come since), the files it
    promised, for a rewind killed before it had written them all
    (``finish_rewind``); said through ``progress``. And the ``FORKING`` mark of a
    fork cut once its run was written, which stayed in its workspace for good."""
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        if (workspace / FORKING).read_text().split()[0] == log.run_id:
            _unmark_fork(workspace)
    last: RecordedEvent | None = None
    for event in log.store.read(log.run_id):
        if isinstance(event.data, RunRewound):
            last = event
        elif isinstance(event.data, ToolExecuted):
            last = None
    if last is None:
        return
    assert isinstance(last.data, RunRewound)
    done = finish_rewind(log.store, log.run_id, last.version, workspace)
    if progress and (done.written or done.removed):
        progress(
            f"restored the workspace to version {last.data.to_version}, which the rewind "
            f"had not finished: {len(done.written)} file(s) written, {len(done.removed)} removed"
        )
    if progress and done.edited:
        progress(
            f"note: {', '.join(map(one_line, done.edited))} changed since the rewind to "
            f"version {last.data.to_version}; left as they are"
        )


def _in_the_way(target: Path, workspace: Path) -> bool:
    """Whether something that is no directory (a file, a link, a FIFO) stands where a
    directory on the way from ``workspace`` to ``target`` is."""
    for parent in reversed(target.relative_to(workspace).parents[:-1]):
        try:
            mode = (workspace / parent).lstat().st_mode
        except FileNotFoundError:
            return False  # nor is anything further down
        if not stat.S_ISDIR(mode):
            return True
    return False


def _digest_of(target: Path) -> str | None:
    """The sha256 of the regular file at ``target``; None when nothing is there, ""
    for anything else (a link, a FIFO: never a rewind's content)."""
    mode = _mode_of(target)
    if mode is None or not stat.S_ISREG(mode):
        return None if mode is None else ""
    return hashlib.sha256(target.read_bytes()).hexdigest()


def _mode_of(target: Path) -> int | None:
    """``target``'s own file type and mode (a link's, not its target's); None when
    nothing is there: also when a directory on the way is none, or is a link (what
    is there is another path's)."""
    if any(p.is_symlink() for p in target.parents):
        return None  # (one may be a loop of links, which lstat of target fails on)
    try:
        return target.lstat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _rewind(store: EventStore, run_id: str, to: int, reason: str) -> Restored:
    last = _check_version(store, run_id, to)
    refuse_tampered(store, run_id, None, "nothing was rewound")
    workspace = Path(project(store, run_id).pipeline.workspace)
    # the checks resume makes: a workspace that leads to a home or system directory
    # (replaced by a link, or named so in an edited log) is not written, nor is a
    # missing one made anew with only the files the log holds
    if problem := workspace_problem(run_id, workspace, to, "nothing was rewound"):
        raise HistoryError(problem)
    wanted = files_at(store, run_id, to)
    contents = {path: store.get(digest) for path, digest in wanted.items() if digest is not None}
    targets = _targets(workspace, wanted)
    with workspace_lock(workspace, run_id):  # no other run is working in it
        store.append(run_id, [RunRewound(to_version=to, reason=reason)], last)
        try:
            return _restore_known(store, run_id, last + 1, wanted, workspace, targets, contents)
        except OSError as e:  # out of disk, say: the log says rewound, the files are not yet
            raise HistoryError(
                rewind_unfinished(
                    run_id,
                    to,
                    f"could not all be restored: {e.strerror or e}; once that is put right,",
                )
            ) from e


def rewind_unfinished(run_id: str, to: int, why: str) -> str:
    """What to say of a rewind whose ``run.rewound`` is written and whose files are not
    (``why``: what stopped them, then what to do first): the same command given again,
    or a resume, finishes it."""
    return (
        f"the rewind to version {to} is recorded, but its files {why} give the same command "
        f"again (or autonomy resume {run_id}) to finish it"
    )


def fork(store: EventStore, run_id: str, at: int, workspace: Path, *, new_run_id: str) -> Restored:
    """Start ``new_run_id`` from ``run_id``'s state at version ``at`` in ``workspace``.

    The new run's first event is ``run.forked(parent, at, workspace)``; its
    workspace gets the parent's files (those the parent never touched are copied
    from the parent's workspace, if it still exists) as they were at ``at``. The
    parent's events and workspace are not touched. Stopped before its event is
    written, a fork leaves no workspace.
    """
    _check_version(store, run_id, at)
    refuse_tampered(store, run_id, at, "nothing was forked")
    check_run_id(new_run_id)
    workspace = workspace.resolve()
    if store.last_version(new_run_id) != 0:
        if _forked_into(store, new_run_id, workspace, (run_id, at)) and _holds_its_files(
            store, new_run_id, workspace
        ):
            # the same fork given again (after a stop cut it once its event was written)
            _unmark_fork(workspace)
            return Restored((), (), (), before=True)
        raise HistoryError(f"there is already a run {new_run_id!r} in this log")
    if _abandoned_fork(store, workspace):
        remove_tree(workspace)
    if workspace.exists() and (not workspace.is_dir() or any(workspace.iterdir())):
        raise HistoryError(f"{workspace} is not an empty directory; a fork needs a new workspace")
    parent_workspace = Path(project(store, run_id, upto=at).pipeline.workspace)
    parent = parent_workspace.resolve()
    # (one holding it is not empty; a parent that is no project's, the root or a home
    # in an edited log, is refused by the copy, as such)
    if workspace.is_relative_to(parent) and not not_a_project(parent):
        # inside it, the fork's files were the parent's (its replay then diverged), and
        # the copy took the fork's own half-made copy into itself
        raise HistoryError(
            f"a fork needs a workspace of its own, not its parent's nor inside it ({parent})"
        )
    # made beside it and moved into place whole: a fork stopped during the copy leaves
    # no half workspace that the same command, given again, would refuse as not empty
    workspace.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_copies(workspace)
    partial = workspace.parent / f".{workspace.name}.forking-{os.getpid()}-{os.urandom(4).hex()}"
    partial.mkdir()
    try:
        restored = restore(store, run_id, at, partial, copy_from=parent_workspace)
        (partial / FORKING).parent.mkdir(exist_ok=True)
        (partial / FORKING).write_text(f"{new_run_id} {os.getpid()}")
        try:
            partial.rename(workspace)  # onto an empty directory too
        except OSError as e:  # filled meanwhile (another fork into it), or made a file
            raise HistoryError(
                f"{workspace} was filled while the fork copied its files; nothing was forked"
            ) from e
    except BaseException:
        remove_tree(partial)
        raise
    try:
        store.append(
            new_run_id,
            [RunForked(parent_run=run_id, at_version=at, workspace=str(workspace))],
            0,
        )
    except BaseException:  # Ctrl-C while the log was busy, another fork as that run...
        # a Ctrl-C can come once the event is written (its commit, then the summaries):
        # the run then keeps its workspace. Not known: kept, with its FORKING mark,
        # which the same command given again takes for an abandoned fork's
        with contextlib.suppress(Exception):
            if not _forked_into(store, new_run_id, workspace):
                remove_tree(workspace)
        raise
    _unmark_fork(workspace)
    return restored


def _holds_its_files(store: EventStore, run_id: str, workspace: Path) -> bool:
    """Whether ``workspace`` is a directory holding every file the log says run
    ``run_id`` had at its first event (a fork's: its parent's at the fork point)."""
    return workspace.is_dir() and all(
        (workspace / path).is_file()
        for path, digest in files_at(store, run_id, 1).items()
        if digest is not None
    )


def _unmark_fork(workspace: Path) -> None:
    """Take off the ``FORKING`` mark: the fork's run is in the log."""
    with contextlib.suppress(FileNotFoundError):
        (workspace / FORKING).unlink()
    with contextlib.suppress(OSError):
        (workspace / FORKING).parent.rmdir()


def _forked_into(
    store: EventStore, run_id: str, workspace: Path, source: tuple[str, int] | None = None
) -> bool:
    """Whether the log holds ``run_id`` as a fork into ``workspace`` (of ``source``,
    a run and a version, when given)."""
    first = next(iter(store.read(run_id, upto=1)), None)
    return (
        first is not None
        and isinstance(first.data, RunForked)
        and first.data.workspace == str(workspace)
        and (source is None or (first.data.parent_run, first.data.at_version) == source)
    )


FORKING = Path(".autonomy") / "forking"
"""In a fork's workspace from its copy until its ``run.forked`` is written: the run it
is for, and the forking process's id. Killed in between, the fork leaves a workspace
that no run has; the same command given again finds this and starts over
(``_abandoned_fork``). Under ``.autonomy/``, which no snapshot records and no
command sees."""


def _abandoned_fork(store: EventStore, workspace: Path) -> bool:
    """Whether ``workspace`` is a fork's that was killed before its event was written:
    its run is not in the log and its process is gone (one still running is about to
    write the event: another fork into the same workspace took its workspace away)."""
    try:
        run_id, pid = (workspace / FORKING).read_text().split()
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return store.last_version(run_id) == 0 and process_gone(pid)
