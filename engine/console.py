"""The ``autonomy`` console script's entry point: outside ``engine.cli``, whose
import (every command module, click) takes a while, so that a Ctrl-C while it
starts ends it as a Ctrl-C after does (exit 130, nothing printed) rather than with
a traceback of the import."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    try:
        from engine.cli import main as cli_main
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    cli_main(argv)
