"""``run_command``: an allowlisted argv, run without a shell, bounded in time and
output.

The argv is matched against the allowlist as the model wrote it, then a leading
``python`` is replaced by ``sys.executable`` so that ``python -m pytest`` runs with
the interpreter (and virtualenv) the engine runs in. There is no shell anywhere: an
argument like ``; rm -rf /`` reaches the program as that literal string.

Output goes to a temporary file rather than a pipe: a runaway command cannot fill
the engine's memory, a grandchild that keeps the descriptor open cannot make us wait
past the timeout, and we can keep the head and the tail (where pytest puts its
summary) and elide the middle.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import IO, Annotated, Any

import msgspec

from engine.errors import ToolError
from engine.tools.registry import Args, Tool, ToolContext, ToolOutcome
from engine.tools.sandbox import Sandbox

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


def _argv(value: list[str] | str) -> list[str]:
    if isinstance(value, list):
        return value
    # A model that writes a command line gets it split like a shell would split it,
    # but it is still never given to a shell.
    try:
        return shlex.split(value)
    except ValueError as e:
        raise ToolError(f"cannot split command {value!r}: {e}; give argv as a list") from e


def _kill(process: subprocess.Popen[bytes]) -> None:
    # The command runs in its own session, so killing the group also ends what it
    # started (pytest-xdist workers, servers a test forgot to stop).
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:  # pragma: no cover - Windows
            process.kill()
    except ProcessLookupError:
        pass


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
    """Run an allowed command in the workspace; a non-zero exit or a timeout is a
    failed outcome that still carries the output."""
    argv = _argv(args.argv)
    shown = shlex.join(argv)
    if not allowed(argv, ctx.allowlist):
        permitted = "; ".join(" ".join(p) for p in ctx.allowlist) or "none"
        raise ToolError(f"command not allowed: {shown}. Allowed commands start with: {permitted}")
    if any("\x00" in a for a in argv):
        raise ToolError("an argument contains a NUL byte")
    executable = [sys.executable, *argv[1:]] if argv[0] in _PYTHON_NAMES else argv
    timeout = ctx.command_timeout
    if args.timeout_seconds > 0:
        timeout = min(args.timeout_seconds, ctx.command_timeout)
    root = Sandbox(ctx.workspace).root
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            process = subprocess.Popen(
                executable,
                cwd=root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                shell=False,
                start_new_session=True,
            )
        except OSError as e:
            raise ToolError(f"cannot start {shown}: {e.strerror or e}") from e
        try:
            code = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill(process)
            code = process.wait()
            timed_out = True
        finally:
            if process.poll() is None:  # interrupted while waiting: leave nothing behind
                _kill(process)
                process.wait()
        output = _capped(out, ctx.output_cap)
    elapsed = time.monotonic() - started
    result = f"$ {shown}\n{output}".rstrip("\n")
    if timed_out:
        return ToolOutcome(
            ok=False, error=f"timed out after {timeout:g}s and was stopped", result=result
        )
    if code != 0:
        return ToolOutcome(ok=False, error=f"exit code {code} after {elapsed:.1f}s", result=result)
    return ToolOutcome(ok=True, result=f"{result}\n[exit code 0 after {elapsed:.1f}s]")


COMMAND_TOOLS: tuple[Tool[Any], ...] = (
    Tool(
        "run_command",
        "Run an allowed command (such as python -m pytest) in the workspace and return "
        "its exit code and output.",
        RunCommandArgs,
        run_command,
    ),
)
