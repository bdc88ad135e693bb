"""The ``autonomy`` command line (see ``engine.cli.base`` for how a command is made).

The group and the shared options live in ``engine.cli.base``; each command module
imports them and registers its commands; importing this package imports them all.
No module here imports back up, and the heavy libraries are imported inside the
commands that use them, so ``autonomy --help`` starts quickly.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.cli import (  # noqa: F401  (importing a command module registers its commands)
    audit,
    history,
    integrity,
    orchestration,
    postgres,
    running,
    serve,
    show,
    workers,
)
from engine.cli.base import cli

__all__ = ["cli", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """The ``autonomy`` console script. What it prints goes through
    ``engine.terminal.PrintableStream``: text from a model or a log is shown, and an
    escape sequence in it never reaches the terminal as one."""
    import sys

    from engine.terminal import PrintableStream, printable, unicode_text

    args = list(argv) if argv is not None else sys.argv[1:]
    for i, arg in enumerate(args, 1):
        if unicode_text(arg) is not arg:
            # a log holds Unicode text only: a goal, a path or a run id that is not
            # UTF-8 could be neither recorded nor looked up
            print(
                f"Error: argument {i} ('{printable(arg)}') is not UTF-8 text",
                file=sys.stderr,
            )
            sys.exit(2)
    stdout, stderr = sys.stdout, sys.stderr
    # None when the stream was closed (``>&-``): click then prints nothing, as before
    sys.stdout = PrintableStream(stdout) if stdout is not None else stdout
    sys.stderr = PrintableStream(stderr) if stderr is not None else stderr
    try:
        cli.main(args=args, prog_name="autonomy")
    finally:
        sys.stdout, sys.stderr = stdout, stderr
