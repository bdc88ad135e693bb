"""The sandbox: paths that leave the workspace or enter .autonomy/.git are refused,
both when resolving and through every file tool, and nothing outside is touched."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import PathOutsideWorkspace, ToolError
from engine.tools import Sandbox, ToolContext, default_registry, execute
from events import MemoryEventStore


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A workspace and, next to it, a directory with a sentinel the tools must not
    reach. Yields (workspace, outside)."""
    workspace = tmp_path / "ws"
    outside = tmp_path / "outside"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "app.py").write_text("x = 1\n")
    (workspace / ".autonomy").mkdir()
    (workspace / ".autonomy" / "events.db").write_bytes(b"log")
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    outside.mkdir()
    (outside / "secret.txt").write_text("sentinel\n")
    (workspace / "leak.txt").symlink_to(outside / "secret.txt")
    (workspace / "escape").symlink_to(outside, target_is_directory=True)
    (workspace / "dangling.py").symlink_to(outside / "not_yet.py")
    (workspace / "alias.py").symlink_to(workspace / "src" / "app.py")
    (workspace / "gitdir").symlink_to(workspace / ".git", target_is_directory=True)
    before = snapshot(outside)
    yield workspace, outside
    assert snapshot(outside) == before, "something outside the workspace changed"
    assert (workspace / ".autonomy" / "events.db").read_bytes() == b"log"
    assert (workspace / ".git" / "config").read_text() == "[core]\n"


class RecordingBlobs:
    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}

    def put(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        self.stored[digest] = content
        return digest


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


REFUSED = [
    "../../etc/passwd",
    "../outside/secret.txt",
    "src/../../outside/secret.txt",
    "..",
    "/etc/passwd",
    "leak.txt",
    "escape/secret.txt",
    "escape/new.txt",
    "dangling.py",
    ".autonomy/events.db",
    ".autonomy",
    ".git/config",
    "src/../.git/config",
    ".GIT/config",
    "gitdir/config",
    "src/.git/HEAD",
    "",
    "bad\x00name",
]


@pytest.mark.parametrize("raw", REFUSED)
def test_paths_leaving_the_workspace_or_entering_tooling_are_refused(
    world: tuple[Path, Path], raw: str
) -> None:
    workspace, _ = world
    with pytest.raises(PathOutsideWorkspace):
        Sandbox(workspace).resolve(raw)


def test_absolute_paths_outside_are_refused_even_via_the_outside_dir(
    world: tuple[Path, Path],
) -> None:
    workspace, outside = world
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        Sandbox(workspace).resolve(str(outside / "secret.txt"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("src/app.py", "src/app.py"),
        ("./src/./app.py", "src/app.py"),
        ("src/../src/app.py", "src/app.py"),
        ("src/new/deeper.py", "src/new/deeper.py"),
        ("alias.py", "src/app.py"),  # a link that stays inside is fine
        (".", "."),
        ("src\\app.py", "src\\app.py"),  # one name, as a command sees it
        (".gitignore", ".gitignore"),  # only the directories themselves are protected
    ],
)
def test_paths_inside_resolve_to_the_workspace(
    world: tuple[Path, Path], raw: str, expected: str
) -> None:
    workspace, _ = world
    sandbox = Sandbox(workspace)
    resolved = sandbox.resolve(raw)
    assert resolved.is_relative_to(workspace.resolve())
    assert sandbox.relative(resolved) == expected


def test_an_absolute_path_inside_the_workspace_is_allowed(world: tuple[Path, Path]) -> None:
    workspace, _ = world
    sandbox = Sandbox(workspace)
    assert sandbox.relative(sandbox.resolve(str(workspace / "src" / "app.py"))) == "src/app.py"
    # also when the workspace is named through a path that is not yet resolved
    roundabout = str(workspace / "src" / ".." / "src" / "app.py")
    assert sandbox.relative(sandbox.resolve(roundabout)) == "src/app.py"


def test_the_messages_speak_to_the_model(world: tuple[Path, Path]) -> None:
    workspace, _ = world
    sandbox = Sandbox(workspace)
    with pytest.raises(PathOutsideWorkspace, match=r"climbs out of the workspace with '\.\.'"):
        sandbox.resolve("../x")
    with pytest.raises(PathOutsideWorkspace, match="symbolic link"):
        sandbox.resolve("escape/secret.txt")
    with pytest.raises(PathOutsideWorkspace, match=r"inside \.git/"):
        sandbox.resolve(".git/config")


class _Calls:
    """The file tools, with the arguments each takes for one path."""

    @staticmethod
    def cases(path: str) -> list[tuple[str, dict[str, object]]]:
        return [
            ("read_file", {"path": path}),
            ("list_directory", {"path": path}),
            ("search_code", {"pattern": "sentinel", "path": path}),
            ("create_file", {"path": path, "content": "pwned\n", "overwrite": True}),
            ("modify_file", {"path": path, "old_text": "sentinel", "new_text": "pwned"}),
            ("delete_file", {"path": path}),
        ]


ATTACKS = ["../../etc/passwd", "../outside/secret.txt", "/etc/passwd", "leak.txt"]
ATTACKS += ["escape/secret.txt", "dangling.py", ".autonomy/events.db", ".git/config"]


@pytest.mark.parametrize("raw", ATTACKS)
def test_every_file_tool_refuses_and_touches_nothing_outside(
    world: tuple[Path, Path], raw: str
) -> None:
    workspace, outside = world
    blobs = RecordingBlobs()
    ctx = ToolContext(workspace=workspace, blobs=blobs)
    registry = default_registry()
    for name, arguments in _Calls.cases(raw):
        outcome = execute(registry, name, arguments, ctx)
        assert not outcome.ok, (name, raw, outcome)
        assert outcome.files_changed == ()
        assert "workspace" in outcome.error or "belongs to the tooling" in outcome.error
        assert "sentinel" not in outcome.result
    assert not (outside / "not_yet.py").exists()
    assert blobs.stored == {}


def test_listing_and_searching_never_show_tooling_or_outside_files(
    world: tuple[Path, Path],
) -> None:
    workspace, _ = world
    ctx = ToolContext(workspace=workspace, blobs=MemoryEventStore())
    registry = default_registry()
    listing = execute(registry, "list_directory", {"path": ".", "recursive": True}, ctx)
    assert listing.ok
    assert ".autonomy" not in listing.result and ".git/" not in listing.result
    assert "escape" not in listing.result and "leak.txt" not in listing.result
    assert "alias.py" in listing.result  # the link that stays inside is listed
    for pattern in ("sentinel", "core", "log"):
        found = execute(registry, "search_code", {"pattern": pattern}, ctx)
        assert found.ok and found.result == "no matches", pattern


def test_the_workspace_itself_may_be_reached_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "a").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    sandbox = Sandbox(link)
    assert sandbox.resolve("a") == real.resolve() / "a"
    assert sandbox.relative(sandbox.resolve(os.path.join(str(link), "a"))) == "a"


@pytest.mark.parametrize(
    "path",
    ["d/" * 1500 + "x.txt", "a" * 1025, "/".join(["d"] * 65)],
    ids=["1500-levels", "1025-chars", "65-levels"],
)
def test_a_path_too_long_or_too_deep_is_refused_before_it_is_used(
    world: tuple[Path, Path], path: str
) -> None:
    workspace, _ = world
    with pytest.raises(ToolError, match="too long or too deep"):
        Sandbox(workspace).resolve(path)
    # through a tool, it is a failed call (it used to be a RecursionError in mkdir)
    ctx = ToolContext(workspace=workspace, blobs=MemoryEventStore())
    outcome = execute(default_registry(), "create_file", {"path": path, "content": "x"}, ctx)
    assert not outcome.ok and "too long or too deep" in outcome.error
    assert not (workspace / "d").exists()


def test_the_longest_and_deepest_accepted_paths_resolve(world: tuple[Path, Path]) -> None:
    workspace, _ = world
    deep = "/".join(["d"] * 64)
    assert Sandbox(workspace).resolve(deep) == workspace.resolve().joinpath(*["d"] * 64)
    assert Sandbox(workspace).resolve("a" * 255).name == "a" * 255


def test_dot_dot_after_a_link_is_read_as_the_kernel_reads_it(tmp_path: Path) -> None:
    """``link/..`` is the parent of the link's target for the kernel, but ``.`` for
    normpath; a command is given the raw text, so the resolver reads it both ways."""
    workspace, elsewhere = tmp_path / "ws", tmp_path / "elsewhere" / "deep"
    workspace.mkdir()
    elsewhere.mkdir(parents=True)
    (workspace / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PathOutsideWorkspace, match="symbolic link"):
        Sandbox(workspace).resolve("link/..")
    (workspace / "sub").mkdir()
    assert Sandbox(workspace).resolve("sub/..") == workspace.resolve()


def test_the_workspace_known_as_the_logs_path_takes_absolute_paths_under_it(
    tmp_path: Path,
) -> None:
    """A replay's tools work in a scratch copy of the workspace; an absolute path the
    model gave under the recorded workspace names the copy's file, and is read as
    the kernel would read it there (a link before ``..`` is followed in the copy)."""
    recorded, copy = tmp_path / "recorded", tmp_path / "copy"
    (recorded / "src").mkdir(parents=True)
    (copy / "src").mkdir(parents=True)
    (copy / "out").symlink_to(tmp_path, target_is_directory=True)
    sandbox = Sandbox(copy, known_as=recorded)
    assert sandbox.resolve(str(recorded / "src" / "app.py")) == copy.resolve() / "src" / "app.py"
    assert sandbox.relative(sandbox.resolve(str(recorded / "src" / ".." / "a.py"))) == "a.py"
    with pytest.raises(PathOutsideWorkspace, match="symbolic link"):
        sandbox.resolve(f"{recorded}/out/../x")
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        sandbox.resolve(str(tmp_path / "elsewhere.py"))
    # without the name, the recorded path is outside, as for any run
    with pytest.raises(PathOutsideWorkspace, match="outside the workspace"):
        Sandbox(copy).resolve(str(recorded / "src" / "app.py"))


def test_removing_a_tree_follows_no_link_out_of_it(tmp_path: Path) -> None:
    """``remove_tree`` (a replay's scratch copy, a command's temporary directory, an
    abandoned fork) removes links, never what they point at, whichever remover does
    it; and a link given as the tree is removed itself."""
    from engine.tools.sandbox import remove_tree

    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "file").write_text("kept")
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "to-dir").symlink_to(outside)
    (tree / "to-file").symlink_to(outside / "keep" / "file")
    remove_tree(tree)
    assert not tree.exists()
    link = tmp_path / "link"
    link.symlink_to(outside)
    remove_tree(link)
    assert not os.path.lexists(link)
    assert (outside / "keep" / "file").read_text() == "kept"
    remove_tree(tmp_path / "never-was")  # nothing there: nothing to do


def test_a_temporary_directory_a_killed_process_left_goes_when_the_next_is_made(
    tmp_path: Path,
) -> None:
    """A process killed inside ``temporary_directory`` (a run SIGKILLed during a
    command) left it for good: hundreds piled up in /tmp. The next one made with the
    same prefix removes those of processes that are gone; never a live process's,
    another name's, nor what a link of that name points at."""
    import secrets
    import signal
    import subprocess
    import sys
    import tempfile

    from engine.tools.sandbox import temporary_directory

    prefix = f"autonomy-test-{secrets.token_hex(4)}-"
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\n"
         "from engine.tools.sandbox import temporary_directory\n"
         "with temporary_directory(sys.argv[1]) as tmp:\n"
         "    (tmp / 'left').write_text('by a killed process')\n"
         "    print(tmp, flush=True)\n"
         "    os.kill(os.getpid(), signal.SIGKILL)\n",
         prefix],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.name.startswith(prefix) and (left / "left").exists()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("kept")
    no_such_pid = 2**22 + 1  # above any pid_max: gone
    link = Path(tempfile.gettempdir()) / f"{prefix}{no_such_pid}-abcdefgh"
    link.symlink_to(outside)
    live = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        with temporary_directory(prefix) as made:
            assert made.is_dir() and made.name.startswith(f"{prefix}{os.getpid()}-")
            assert not os.path.lexists(left)
            assert live.is_dir() and os.path.lexists(link)
        assert not os.path.lexists(made)
        assert (outside / "file").read_text() == "kept"
    finally:
        link.unlink()
        live.rmdir()
