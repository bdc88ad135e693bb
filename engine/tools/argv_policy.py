"""What a command line may say, checked before it runs.

The confinement (``engine.tools.confine``) is the defence: a command that writes
outside the workspace fails on a read-only file system. This policy is in front of
it so that the model learns *why* a command was refused, in words it can act on,
instead of reading a ``Read-only file system`` traceback:

- every argument that names a path — positional (``tests/test_a.py::test_x``) or an
  option's value (``--opt=PATH``) — goes through the one path resolver, so ``..``,
  absolute paths, ``~`` and symbolic links that lead out are refused, as in the
  file tools;
- pytest options that load code or put files elsewhere are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.errors import PathOutsideWorkspace, ToolError
from engine.tools.sandbox import Sandbox

PYTEST_REFUSED: Mapping[str, str] = {
    "-p": "loads a plugin module, which can be any code",
    "--basetemp": "puts pytest's temporary directory somewhere else",
    "--rootdir": "moves pytest's root directory",
    "-c": "reads another configuration file",
    "--config-file": "reads another configuration file",
    "--confcutdir": "moves where conftest.py files are looked for",
    "-o": "overrides the configuration (cache_dir and others can point outside)",
    "--override-ini": "overrides the configuration (cache_dir and others can point outside)",
    "--junitxml": "writes a report file",
    "--junit-xml": "writes a report file",
    "--debug": "writes a debug log file",
    "--resultlog": "writes a report file",
    "--result-log": "writes a report file",
    "--report-log": "writes a report file",
    "--log-file": "writes a log file",
    "--pastebin": "sends the results over the network",
    "--pdb": "starts an interactive debugger",
    "--pdbcls": "loads a debugger class, which can be any code",
    "--trace": "starts an interactive debugger",
}
"""pytest options the model may not use, and why (the text goes back to the model)."""

# Short pytest options that take a value: in a cluster like ``-xkfoo`` the value
# starts after them, so the rest of the cluster is not more options.
_SHORT_WITH_VALUE = frozenset("kmrWn")


def _pytest_option(arg: str) -> str | None:
    """The refused pytest option ``arg`` uses, if any (``--basetemp=x``, ``-pfoo``,
    ``-xp foo`` included)."""
    if arg.startswith("--"):
        name = arg.split("=", 1)[0]
        return name if name in PYTEST_REFUSED else None
    if arg.startswith("-") and len(arg) > 1:
        for char in arg[1:]:
            if f"-{char}" in PYTEST_REFUSED:
                return f"-{char}"
            if char in _SHORT_WITH_VALUE or not char.isalpha():
                return None
    return None


def _is_pytest(argv: Sequence[str]) -> bool:
    return len(argv) >= 3 and argv[1] == "-m" and argv[2] == "pytest"


def _path_candidates(arg: str) -> list[str]:
    """The parts of ``arg`` that may be paths: the argument itself, or an option's
    value after ``=``; a pytest node id's test name (``::test_x``) is dropped."""
    if arg.startswith("-"):
        if "=" not in arg:
            return []
        arg = arg.split("=", 1)[1]
    return [arg.split("::", 1)[0]] if arg else []


def _looks_like_path(text: str, root: Path) -> bool:
    if text.startswith(("/", "~", ".")) or "/" in text or "\\" in text:
        return True
    candidate = root / text
    try:
        return candidate.exists() or candidate.is_symlink()
    except (OSError, ValueError):  # a name too long to be a file is not one
        return False


def check_argv(argv: Sequence[str], sandbox: Sandbox, *, skip: int) -> None:
    """Refuse ``argv`` (``ToolError``, for the model) if an argument after the first
    ``skip`` (the allowlisted program) names a path outside the workspace, or if a
    pytest command uses an option that loads code or writes elsewhere."""
    pytest = _is_pytest(argv)
    for arg in argv[skip:]:
        if pytest:
            option = _pytest_option(arg)
            if option is not None:
                raise ToolError(
                    f"pytest option {option} is not allowed here: it {PYTEST_REFUSED[option]}. "
                    "Run the tests without it; put test settings in the project's own "
                    "pyproject.toml or conftest.py if you need them"
                )
        for text in _path_candidates(arg):
            if text.startswith("~"):
                raise ToolError(
                    f"argument {arg!r} points into a home directory; "
                    "only paths inside the workspace can be used"
                )
            if _looks_like_path(text, sandbox.root):
                try:
                    sandbox.resolve(text)
                except PathOutsideWorkspace as e:
                    raise ToolError(f"argument {arg!r}: {e}") from e
