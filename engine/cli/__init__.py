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
        sys.exit(_main(args))
    finally:
        sys.stdout, sys.stderr = stdout, stderr


def _main(args: list[str]) -> int:
    """click's own handling, but for Ctrl-C: click printed "Aborted!" and exited 1, where
    a shell expects 130 (128 + SIGINT) and nothing more (a run says for itself how it
    stopped, ``engine.cli.running.interrupts``)."""
    import signal

    import click

    from engine.cli.running import ENDED, STOPPING
    from engine.stops import Signalled, raise_signalled

    ENDED.clear()  # (this process's command only)
    # SIGTERM and SIGHUP stop any command as a Ctrl-C does (one that runs a run
    # records them in its own words: ``engine.cli.running.interrupts``)
    previous = {signum: signal.signal(signum, raise_signalled) for signum in STOPPING}
    try:
        returned = cli.main(args=args, prog_name="autonomy", standalone_mode=False)
    except click.exceptions.Abort as e:  # KeyboardInterrupt, or EOF at a prompt
        # a stop signal that came as the command was ending a stopped run (its handlers
        # put back): the exit status stays the one the run's end said
        if ENDED:
            return ENDED[-1]
        cause = e.__cause__ or e.__context__
        return 128 + cause.signum if isinstance(cause, Signalled) else 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except OSError as e:  # a closed pipe (``| head``): as click's own handling
        import errno
        import sys

        from click.utils import PacifyFlushWrapper

        if e.errno != errno.EPIPE:
            raise
        sys.stdout = PacifyFlushWrapper(sys.stdout)  # type: ignore[operator]
        sys.stderr = PacifyFlushWrapper(sys.stderr)  # type: ignore[operator]
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return returned if isinstance(returned, int) else 0
