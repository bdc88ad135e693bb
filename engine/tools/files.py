"""File tools: read, list, search, create, modify, delete — all inside the sandbox.

Every write goes through one path (``_commit``): a ``.py`` file is compiled first
and refused, untouched, if it does not parse; the old and the new content are put in
the blob store; the file is replaced atomically (a temporary file renamed over it),
so a crash leaves either the old or the new content — which ``resume`` can tell
apart by hash — never half a file.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import glob
import os
import re
import stat
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from engine.errors import ToolError
from engine.tools.confine import REPOSITORY
from engine.tools.registry import Args, Tool, ToolContext, ToolOutcome
from engine.tools.sandbox import (
    MAX_PATH_DEPTH,
    NOT_THE_PROJECT,
    Sandbox,
    is_protected_name,
    printable_name,
)
from engine.tools.snapshot import MAX_RECORDED_BYTES, TOO_LARGE, is_bare_repository
from events.schema import FileChange

Meta = msgspec.Meta

MAX_LIST_ENTRIES = 500
MAX_SEARCH_FILE_BYTES = 2_000_000
MAX_TEXT_FILE_BYTES = 8_000_000
"""The largest file ``read_file`` and ``modify_file`` take: a project's source, not
a data file a command wrote (up to ``[tools.limits] file_size_mb``), whose lines as
Python strings would take gigabytes of the engine's memory."""
MAX_PATTERN_CHARS = 1_000
"""The longest pattern ``search_code`` takes: compiling is not bounded by its time
budget (200,000 alternatives took 20 s)."""
MAX_PATTERN_SIZE = 100_000
"""How large a pattern may grow once its counted repeats are unrolled
(``_unrolled_size``): the ``regex`` module writes ``(?:a{1000}){1000}``, 17
characters, out as a million items at compile time (280 MB of the engine's memory)."""
SHOWN_LINES = 10
"""How many line numbers an error names where a text occurs many times."""
SEARCH_SECONDS = 2.0
"""The longest one search may spend matching, over every file it reads. A pattern
whose repetition is nested, such as ``(a|aa)+$``, backtracks for longer than any run
lasts on a short line, and matching runs in the engine itself: Python's ``re`` has
no way to stop it, the ``regex`` module (same syntax) stops at a timeout."""
_BINARY_PROBE = 8192


class ReadFileArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``read_file``."""

    path: Annotated[
        str,
        Meta(
            min_length=1,
            description="File to read, relative to the workspace root",
            examples=["src/app.py"],
        ),
    ]
    start_line: Annotated[
        int,
        Meta(ge=1, description="First line to show (1-based); use it to continue a truncated read"),
    ] = 1


class ListDirectoryArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``list_directory``."""

    path: Annotated[
        str,
        Meta(
            description="Directory relative to the workspace root; '.' is the root", examples=["."]
        ),
    ] = "."
    recursive: Annotated[bool, Meta(description="Also list subdirectories")] = False


class SearchCodeArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``search_code``."""

    pattern: Annotated[
        str,
        Meta(
            min_length=1,
            description="Text to find (a Python regular expression if regex is true)",
            examples=["def "],
        ),
    ]
    path: Annotated[
        str, Meta(description="File or directory to search; '.' is the whole workspace")
    ] = "."
    regex: Annotated[bool, Meta(description="Treat pattern as a regular expression")] = False
    glob: Annotated[str, Meta(description="Only files whose name matches this glob, e.g. *.py")] = (
        ""
    )
    max_results: Annotated[int, Meta(ge=1, description="Stop after this many matching lines")] = 50


class CreateFileArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``create_file``."""

    path: Annotated[
        str,
        Meta(
            min_length=1,
            description="File to create, relative to the workspace root; missing directories are created",
            examples=["src/calc.py"],
        ),
    ]
    content: Annotated[
        str,
        Meta(
            description="The complete content of the file",
            examples=["def add(a, b):\n    return a + b\n"],
        ),
    ]
    overwrite: Annotated[bool, Meta(description="Replace the file if it already exists")] = False


class ModifyFileArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``modify_file``."""

    path: Annotated[
        str,
        Meta(
            min_length=1,
            description="File to change, relative to the workspace root",
            examples=["src/app.py"],
        ),
    ]
    old_text: Annotated[
        str,
        Meta(
            min_length=1,
            description="Text currently in the file, copied exactly, with enough lines to be unique",
            examples=["return 1"],
        ),
    ]
    new_text: Annotated[str, Meta(description="Text to put in its place", examples=["return 2"])]
    replace_all: Annotated[
        bool, Meta(description="Replace every exact occurrence instead of requiring exactly one")
    ] = False


class DeleteFileArgs(Args, frozen=True, kw_only=True):
    """Arguments of ``delete_file``."""

    path: Annotated[
        str,
        Meta(
            min_length=1,
            description="File to delete, relative to the workspace root",
            examples=["src/obsolete.py"],
        ),
    ]


# -- reading ---------------------------------------------------------------------------


def _read_bytes(sandbox: Sandbox, raw: str, limit: int | None = None) -> tuple[Path, str, bytes]:
    path = sandbox.resolve(raw)
    rel = sandbox.relative(path)
    if path.is_dir():
        raise ToolError(f"{rel} is a directory; use list_directory to see what it holds")
    return path, rel, _content(path, rel, limit)


def _content(path: Path, rel: str, limit: int | None = None) -> bytes:
    """The content of the regular file at ``path``, the one way the file tools read.

    Opened without following a link or blocking, and checked on the open file: a
    FIFO, socket or device (which a command may leave in the workspace; reading a
    FIFO would wait for ever) is refused, as is a file over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ToolError(
            f"{rel} does not exist; use list_directory or search_code to find files"
        ) from None
    except OSError as e:
        raise ToolError(f"cannot read {rel}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(handle.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ToolError(
                f"{rel} is not a regular file (a FIFO, socket or device); "
                "the file tools work on regular files only"
            )
        if limit is not None and status.st_size > limit:
            raise ToolError(
                f"{rel} is {status.st_size:,} bytes; this tool takes files of at most "
                f"{limit:,} bytes"
            )
        try:
            return handle.read()
        except OSError as e:
            raise ToolError(f"cannot read {rel}: {e.strerror}") from e


def _is_binary(data: bytes) -> bool:
    return b"\x00" in data[:_BINARY_PROBE]


def read_file(args: ReadFileArgs, ctx: ToolContext) -> ToolOutcome:
    """Return a text file's content, from ``start_line``, up to ``max_read_bytes``."""
    _, rel, data = _read_bytes(ctx.sandbox(), args.path, MAX_TEXT_FILE_BYTES)
    if _is_binary(data):
        raise ToolError(f"{rel} is a binary file ({len(data)} bytes); only text files can be read")
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if args.start_line > max(len(lines), 1):
        raise ToolError(
            f"{rel} has {len(lines)} lines; start_line {args.start_line} is past the end"
        )
    start = end = args.start_line - 1
    size = 0
    while end < len(lines):
        size += len(lines[end].encode("utf-8"))
        if size > ctx.max_read_bytes and end > start:
            break  # always show at least one line, however long
        end += 1
    text = "".join(lines[start:end])
    if len(text) > ctx.max_read_bytes:  # one line longer than a whole answer may be
        text = text[: ctx.max_read_bytes] + (
            f"\n[truncated: line {start + 1} is {len(text):,} characters; "
            f"showing the first {ctx.max_read_bytes:,}]"
        )
    if end < len(lines):
        text += (
            f"\n[truncated: showing lines {start + 1}-{end} of {len(lines)}; "
            f"call read_file with start_line={end + 1} to continue]"
        )
    return ToolOutcome(ok=True, result=text)


def _walk(top: Path, sandbox: Sandbox, recursive: bool) -> Iterator[Path]:
    """Entries under ``top``, sorted, depth first, never entering protected or noise
    directories nor following symbolic links out, nor going deeper than a path may
    be (``MAX_PATH_DEPTH``). A loop, not a recursion: a tree a command made 1,100
    levels deep was a ``RecursionError``."""
    depth = len(top.relative_to(sandbox.root).parts)
    stack = [iter(_entries(top, sandbox))]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if is_protected_name(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(sandbox.root):
            continue
        yield path
        if (
            recursive
            and entry.is_dir(follow_symlinks=False)
            and entry.name not in NOT_THE_PROJECT
            and depth + len(stack) < MAX_PATH_DEPTH
        ):
            stack.append(iter(_entries(path, sandbox)))


def _entries(directory: Path, sandbox: Sandbox) -> list[os.DirEntry[str]]:
    try:
        return sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as e:
        raise ToolError(f"cannot list {sandbox.relative(directory)}: {e.strerror}") from e


def list_directory(args: ListDirectoryArgs, ctx: ToolContext) -> ToolOutcome:
    """List a directory: one entry per line, directories with a trailing ``/``."""
    sandbox = ctx.sandbox()
    top = sandbox.resolve(args.path)
    rel = sandbox.relative(top)
    if not top.exists():
        raise ToolError(f"{rel} does not exist")
    if not top.is_dir():
        raise ToolError(f"{rel} is a file, not a directory; use read_file to read it")
    lines: list[str] = []
    for path in _walk(top, sandbox, args.recursive):
        if len(lines) == MAX_LIST_ENTRIES:
            lines.append(f"[truncated at {MAX_LIST_ENTRIES} entries; list a subdirectory]")
            break
        name = printable_name(os.path.relpath(path, sandbox.root).replace(os.sep, "/"))
        if path.is_dir():
            lines.append(f"{name}/")
        else:
            lines.append(f"{name}  ({path.lstat().st_size} bytes)")
    return ToolOutcome(ok=True, result="\n".join(lines) if lines else f"{rel} is empty")


def search_code(args: SearchCodeArgs, ctx: ToolContext) -> ToolOutcome:
    """Find lines matching a substring or regex in the workspace's text files."""
    sandbox = ctx.sandbox()
    top = sandbox.resolve(args.path)
    import regex  # here, not at the top: importing it takes 14 ms of every command's start

    # checked here, not in the schema: a schema is part of every recorded request,
    # and a changed one makes every run recorded before it diverge on replay
    if len(args.pattern) > MAX_PATTERN_CHARS:
        raise ToolError(
            f"the pattern is {len(args.pattern):,} characters; a search takes at most "
            f"{MAX_PATTERN_CHARS:,}"
        )
    if args.regex and _unrolled_size(args.pattern) > MAX_PATTERN_SIZE:
        raise ToolError(
            f"the pattern {args.pattern!r} is too large once its counted repeats (x{{n}}) "
            f"are written out (more than {MAX_PATTERN_SIZE:,} items); simplify it"
        )
    try:
        # not cached: the module's cache would keep every compiled pattern for the run
        matcher = regex.compile(
            args.pattern if args.regex else regex.escape(args.pattern), cache_pattern=False
        )
    except (regex.error, RecursionError, OverflowError, ValueError) as e:
        raise ToolError(f"invalid regular expression {args.pattern!r}: {e}") from e
    deadline = time.monotonic() + SEARCH_SECONDS
    limit = min(args.max_results, ctx.max_search_results)
    if top.is_file():
        files: Iterator[Path] = iter([top])
    elif top.is_dir():
        files = _walk(top, sandbox, recursive=True)
    else:
        raise ToolError(f"{sandbox.relative(top)} does not exist")
    hits: list[str] = []
    searched = 0
    for path in files:
        # walking and reading count too: 20,000 large files took 30 s, 200,000 empty
        # directories 5 s
        if time.monotonic() > deadline:
            hits.append(
                f"[stopped after {SEARCH_SECONDS:g}s, {searched:,} files searched; "
                "narrow the path or the glob]"
            )
            return ToolOutcome(ok=True, result="\n".join(hits))
        if args.glob and not fnmatch.fnmatch(path.name, args.glob):
            continue
        if not path.is_file():
            continue
        try:
            data = _content(path, "", MAX_SEARCH_FILE_BYTES)
        except ToolError:
            continue  # vanished, unreadable, too large or not a file: a search is best effort
        searched += 1
        if _is_binary(data):
            continue
        rel = os.path.relpath(path, sandbox.root).replace(os.sep, "/")
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if _matches(matcher, line, deadline, args.pattern):
                hits.append(f"{rel}:{number}: {line.strip()[:200]}")
                if len(hits) == limit:
                    hits.append(f"[stopped after {limit} matches; narrow the pattern or path]")
                    return ToolOutcome(ok=True, result="\n".join(hits))
    return ToolOutcome(ok=True, result="\n".join(hits) if hits else "no matches")


def _unrolled_size(pattern: str) -> int:
    """About how many items ``pattern`` has once every counted repeat (``x{m,n}``) is
    written out, as the ``regex`` module compiles it: an upper bound (alternatives
    add up, a repeat counts its largest bound), read from the text alone, which need
    not be a valid pattern (compiling says what is wrong with it)."""
    frames = [[0, 0]]  # per open group: [size of its finished items, size of the last]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        frame = frames[-1]
        if c == "(":
            frames.append([0, 0])
        elif c == ")" and len(frames) > 1:
            frames.pop()
            parent = frames[-1]
            parent[0] += parent[1]
            parent[1] = frame[0] + frame[1]
        elif c == "{" and (counted := _COUNTED.match(pattern, i)):
            low, high = counted.group(1), counted.group(2)
            frame[1] *= max(int(low or 0), int(high or 0), 1)
            i = counted.end()
            continue
        else:
            if c == "[":  # a class is one item
                i = _class_end(pattern, i)
            elif c == "\\":
                i += 1
            frame[0] += frame[1]
            frame[1] = 0 if c in "*+?|" else 1
        i += 1
    while len(frames) > 1:  # unclosed groups: as if closed at the end
        last = frames.pop()
        frames[-1][0] += frames[-1][1]
        frames[-1][1] = last[0] + last[1]
    return frames[0][0] + frames[0][1]


_COUNTED = re.compile(r"\{(\d{0,9})(?:,(\d{0,9}))?\}")


def _class_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing the class opened at ``start`` (or the end)."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return min(i, len(pattern) - 1)


def _matches(matcher: Any, line: str, deadline: float, pattern: str) -> bool:
    """Whether ``matcher`` finds ``line``; ``ToolError`` once matching has taken the
    search past its ``SEARCH_SECONDS`` (the time is the pattern's: the search checks
    its deadline before each file)."""
    try:
        return matcher.search(line, timeout=max(deadline - time.monotonic(), 0.0)) is not None
    except TimeoutError:
        raise ToolError(
            f"the search for {pattern!r} was stopped after {SEARCH_SECONDS:g}s of matching: "
            "a pattern with nested repetition, such as (a|aa)+, can take for ever on a short "
            "line; simplify it"
        ) from None


# -- writing ---------------------------------------------------------------------------


def check_python(rel: str, text: str) -> None:
    """Refuse Python source that does not compile, saying where and why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escapes: not our concern here
            compile(text, rel, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        shown = f": {e.text.rstrip()}" if e.text else ""
        raise ToolError(
            f"{rel} was not written: Python syntax error at {where}: {e.msg}{shown}. "
            "The file is unchanged; fix the code and try again."
        ) from e
    except ValueError as e:  # e.g. NUL bytes in the source
        raise ToolError(f"{rel} was not written: {e}. The file is unchanged.") from e


PARTIAL = re.compile(r"\..+\.[a-z0-9_]{8}(?:\.tmp|\.autonomy-restoring)")
"""The name of a file ``write_atomically`` left when it was killed before its rename
(``.NAME.XXXXXXXX`` + its suffix): no project's file, so a fork does not copy it."""


def remove_partials(path: Path, *, suffix: str = ".tmp") -> None:
    """Remove what a ``write_atomically`` of ``path`` killed before its rename left
    beside it: before the write is made again, or settled after a crash."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}{suffix}"):
        with contextlib.suppress(OSError):
            stale.unlink()


def write_atomically(path: Path, data: bytes, *, suffix: str = ".tmp") -> None:
    """``data`` at ``path`` whole or not at all, with the file's own permissions (0644
    for a new one) but never a set-id bit (``clear_set_id``): written beside it
    (``.NAME.XXXX`` + ``suffix``), then renamed over it; the file beside it is removed
    when anything fails. The one way autonomy replaces a file: a tool's write, a
    rewind's restore, a report."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    partial = Path(name)
    try:
        partial.write_bytes(data)
        os.chmod(partial, mode)  # mkstemp makes 0600; keep the file's own permissions
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _check_size(rel: str, size: int, verb: str = "would be") -> None:
    """Refuse to write more than the file tools read (``MAX_TEXT_FILE_BYTES``)."""
    if size > MAX_TEXT_FILE_BYTES:
        raise ToolError(
            f"{rel} {verb} {size:,} bytes; the file tools write files of at most "
            f"{MAX_TEXT_FILE_BYTES:,} bytes. The file is unchanged."
        )


_REPOSITORY_NAMES = frozenset({"head", "objects", "refs", "commondir"})
"""The names whose entries make a directory a bare repository (``is_bare_repository``)."""


def _refuse_a_repository(root: Path, path: Path, rel: str) -> None:
    """``ToolError`` when writing ``path`` would make a directory of the workspace
    (its top included) a bare git repository: ``HEAD`` with ``objects/`` and
    ``refs/`` (or ``commondir``), which the host's git takes for one and whose config
    it obeys (``engine.tools.confine.REPOSITORY``). Written with the file tools, such
    a repository was not the command's to remove, and passed for the user's."""
    directory, parts = root, path.relative_to(root).parts
    if not {part.casefold() for part in parts} & _REPOSITORY_NAMES:
        return  # no name that makes one: the common write lists no directory
    for part in parts:
        try:
            names = [entry.name for entry in os.scandir(directory)]
        except OSError:  # not there yet: it holds only what this write makes
            names = []
        if not is_bare_repository(names) and is_bare_repository([*names, part]):
            where = directory.relative_to(root).as_posix()
            raise ToolError(
                f"writing {rel} would make {'the workspace' if where == '.' else where} a "
                f"git repository: {REPOSITORY}"
            )
        directory = directory / part


def _commit(ctx: ToolContext, path: Path, rel: str, before: bytes | None, text: str) -> FileChange:
    """Check, store and write ``text`` to ``path``; the single way tools write."""
    _refuse_a_repository(ctx.sandbox().root, path, rel)
    _check_size(rel, len(text))  # characters: a first check before encoding them
    if path.suffix == ".py":
        check_python(rel, text)
    data = text.encode("utf-8")
    _check_size(rel, len(data))
    # The old content is stored too, so a rewind can restore files the run found.
    before_digest = ctx.blobs.put(before) if before is not None else None
    after_digest = ctx.blobs.put(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as e:
        raise ToolError(f"cannot write {rel}: {e.strerror}") from e
    return FileChange(path=rel, before=before_digest, after=after_digest, size=len(data))


def create_file(args: CreateFileArgs, ctx: ToolContext) -> ToolOutcome:
    """Create a file with the given content (or replace it, with ``overwrite``)."""
    sandbox = ctx.sandbox()
    path = sandbox.resolve(args.path)
    rel = sandbox.relative(path)
    if path.is_dir():
        raise ToolError(f"{rel} is a directory")
    before: bytes | None = None
    if path.exists():
        if not args.overwrite:
            raise ToolError(
                f"{rel} already exists ({path.stat().st_size} bytes); use modify_file to "
                "change part of it, or create_file with overwrite=true to replace it"
            )
        before = _kept(path, rel, "replaced")
    change = _commit(ctx, path, rel, before, args.content)
    verb = "replaced" if before is not None else "created"
    return ToolOutcome(
        ok=True, result=f"{verb} {rel} ({change.size} bytes)", files_changed=(change,)
    )


def _lines_of(text: str, old: str, count: int) -> str:
    """The lines where ``old`` starts in ``text`` (it occurs ``count`` times), the
    first ``SHOWN_LINES`` of them: one pass over the text, however many there are."""
    shown: list[str] = []
    line, at, start = 1, 0, text.find(old)
    while start != -1 and len(shown) < SHOWN_LINES:
        line += text.count("\n", at, start)
        shown.append(str(line))
        at, start = start, text.find(old, start + 1)
    more = count - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")


def _normal(line: str) -> str:
    return " ".join(line.split())


def _tolerant_spans(lines: list[str], old: str) -> list[tuple[int, int]]:
    """Line spans (first, last) whose non-blank lines equal ``old``'s non-blank lines
    once runs of whitespace are collapsed: indentation, trailing spaces and blank
    lines may differ, the words may not. Found in one pass (Knuth-Morris-Pratt over
    the lines): comparing at every line was lines × old's lines (15 s for a file of
    40,000 lines)."""
    want = [_normal(line) for line in old.splitlines() if line.strip()]
    have = [(i, _normal(line)) for i, line in enumerate(lines) if line.strip()]
    k = len(want)
    if not k:
        return []
    fallback = [0] * k  # the longest proper prefix of want[:j+1] that is also its suffix
    j = 0
    for i in range(1, k):
        while j and want[i] != want[j]:
            j = fallback[j - 1]
        if want[i] == want[j]:
            j += 1
        fallback[i] = j
    spans: list[tuple[int, int]] = []
    j = 0
    for end, (_, normal) in enumerate(have):
        while j and normal != want[j]:
            j = fallback[j - 1]
        if normal == want[j]:
            j += 1
        if j == k:
            spans.append((have[end - k + 1][0], have[end][0]))
            j = fallback[j - 1]
    return spans


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(new: str, old: str, file_line: str) -> str:
    """Shift ``new`` by the indentation difference between the file and ``old`` (a
    model that quoted a method without its class indentation writes it the same way)."""
    old_first = next((line for line in old.splitlines() if line.strip()), "")
    have, said = _indent(file_line), _indent(old_first)
    if have == said:
        return new
    out = []
    for line in new.splitlines(keepends=True):
        if not line.strip():
            out.append(line)
        elif have.startswith(said):
            out.append(have[len(said) :] + line)
        elif said.startswith(have) and line.startswith(said[len(have) :]):
            out.append(line[len(said) - len(have) :])
        else:
            out.append(line)
    return "".join(out)


HINT_LINES = 2_000
HINT_CHARS = 200
"""The closest-line hint compares old_text's first line with at most this many of
the file's lines, each cut to this many characters: difflib's cost grows with their
product and the square of the length (one line of 48,000 characters took 16 s)."""


def _not_found_hint(lines: list[str], old: str) -> str:
    first = next((line.strip() for line in old.splitlines() if line.strip()), "")
    stripped = [line.strip()[:HINT_CHARS] for line in lines[:HINT_LINES]]
    close = difflib.get_close_matches(first[:HINT_CHARS], stripped, n=1, cutoff=0.6)
    if not close:
        return "read the file again and copy the text exactly"
    return f"the closest line is {stripped.index(close[0]) + 1}: {close[0]!r}"


def apply_edit(
    text: str, old: str, new: str, *, replace_all: bool = False, rel: str = "file"
) -> tuple[str, str]:
    """``text`` with ``old`` replaced by ``new``, and how it matched ("exact" or
    "ignoring whitespace"). ``ToolError`` when there is no match or more than one."""
    if not old.strip():
        raise ToolError("old_text is empty; quote the text to replace")
    if old == new:
        raise ToolError("old_text and new_text are the same; nothing to change")
    count = text.count(old)
    if count == 1 or (count > 1 and replace_all):
        _check_size(rel, len(text) + count * (len(new) - len(old)), "would be")
        return text.replace(old, new), "exact"
    if count > 1:
        raise ToolError(
            f"old_text occurs {count:,} times in {rel} (lines {_lines_of(text, old, count)}); "
            "include more surrounding lines to make it unique, or set replace_all=true"
        )
    lines = text.splitlines(keepends=True)
    spans = _tolerant_spans(lines, old)
    if not spans:
        raise ToolError(
            f"old_text was not found in {rel}, exactly or ignoring whitespace; "
            f"{_not_found_hint(lines, old)}. The file is unchanged."
        )
    if len(spans) > 1:
        starts = ", ".join(str(a + 1) for a, _ in spans)
        raise ToolError(
            f"old_text matches {len(spans)} places in {rel} when whitespace is ignored "
            f"(lines {starts}) and none exactly; quote it exactly or with more context. "
            "The file is unchanged."
        )
    first, last = spans[0]
    block = _reindent(new, old, lines[first])
    ending = lines[last][len(lines[last].rstrip("\r\n")) :]
    if block and ending and not block.endswith("\n"):
        block += ending
    return "".join(lines[:first]) + block + "".join(lines[last + 1 :]), "ignoring whitespace"


def modify_file(args: ModifyFileArgs, ctx: ToolContext) -> ToolOutcome:
    """Replace one unique piece of a file (exactly, or ignoring whitespace if that
    match is unique); the file is untouched when the edit cannot be placed."""
    sandbox = ctx.sandbox()
    path, rel, before = _read_bytes(sandbox, args.path, MAX_TEXT_FILE_BYTES)
    try:
        text = before.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ToolError(f"{rel} is not UTF-8 text and cannot be edited") from e
    updated, how = apply_edit(
        text, args.old_text, args.new_text, replace_all=args.replace_all, rel=rel
    )
    change = _commit(ctx, path, rel, before, updated)
    return ToolOutcome(
        ok=True,
        result=f"modified {rel} (matched {how}; now {change.size} bytes)",
        files_changed=(change,),
    )


def written_by(tool: str, arguments: Mapping[str, Any], before: bytes | None) -> bytes | None:
    """What a call of file tool ``tool`` with ``arguments`` leaves at its path, where
    ``before`` was (None: no file): the content, or None when it deletes the file.
    ``ToolError`` when the call could not have written it (an edit that does not
    apply, arguments the tool does not take). How a crash's recovery tells the call's
    write from someone else's."""
    try:
        if tool == "delete_file":
            return None
        if tool == "create_file":
            return msgspec.convert(arguments, CreateFileArgs).content.encode("utf-8")
        if tool == "modify_file" and before is not None:
            edit = msgspec.convert(arguments, ModifyFileArgs)
            text, _ = apply_edit(
                before.decode("utf-8"), edit.old_text, edit.new_text, replace_all=edit.replace_all
            )
            return text.encode("utf-8")
    except (msgspec.ValidationError, UnicodeError) as e:
        raise ToolError(f"{tool} could not have written it: {e}") from e
    raise ToolError(f"{tool} could not have written it")


def _kept(path: Path, rel: str, verb: str) -> bytes:
    """The content of a file a tool is about to replace or delete, which the log keeps
    so that a rewind can put it back: at most what a command's snapshot records
    (``MAX_RECORDED_BYTES``); a larger file is refused rather than read whole."""
    try:
        return _content(path, rel, MAX_RECORDED_BYTES)
    except ToolError as e:
        if path.is_file() and path.stat().st_size > MAX_RECORDED_BYTES:
            raise ToolError(
                f"{rel} is {TOO_LARGE}, too large for the log to keep a copy, so it cannot "
                f"be {verb} by this tool (a rewind could not put it back)"
            ) from e
        raise


def delete_file(args: DeleteFileArgs, ctx: ToolContext) -> ToolOutcome:
    """Delete one file (never a directory); its content stays in the blob store."""
    sandbox = ctx.sandbox()
    path = sandbox.resolve(args.path)
    rel = sandbox.relative(path)
    if path.is_dir():
        raise ToolError(f"{rel} is a directory; delete_file deletes files only")
    digest = ctx.blobs.put(_kept(path, rel, "deleted"))
    try:
        path.unlink()
    except OSError as e:
        raise ToolError(f"cannot delete {rel}: {e.strerror}") from e
    change = FileChange(path=rel, before=digest, after=None, size=0)
    return ToolOutcome(ok=True, result=f"deleted {rel}", files_changed=(change,))


FILE_TOOLS: tuple[Tool[Any], ...] = (
    Tool("read_file", "Read a text file of the workspace.", ReadFileArgs, read_file),
    Tool(
        "list_directory",
        "List the files and directories at a path of the workspace.",
        ListDirectoryArgs,
        list_directory,
    ),
    Tool(
        "search_code",
        "Search the workspace's text files for a string or regular expression; "
        "returns path:line: text for each match.",
        SearchCodeArgs,
        search_code,
    ),
    Tool(
        "create_file",
        "Create a file with the given content. Python files must compile.",
        CreateFileArgs,
        create_file,
    ),
    Tool(
        "modify_file",
        "Replace a unique piece of text in a file with new text. Quote old_text exactly "
        "as it is in the file. Python files must still compile.",
        ModifyFileArgs,
        modify_file,
    ),
    Tool("delete_file", "Delete a file of the workspace.", DeleteFileArgs, delete_file),
)
"""The file tools, in the order they are offered."""
