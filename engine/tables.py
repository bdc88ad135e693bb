"""Plain-text tables for the command line and the reports: a header, a rule of
dashes, and aligned columns two spaces apart (the layout of ``tabulate``'s "simple"
format, which this replaced: importing that library cost the command line ~15 ms of
start-up for a job of twenty lines)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any, Literal

from engine.terminal import one_line

Align = Literal["left", "right", "numbers"]

WIDEST = 100
"""The widest a column is padded to: a longer cell overflows its column, in its row
alone. Every row was padded to the longest cell: a model's task title of 3 MB made
``audit tasks`` of 49 tasks print 153 MB (and take 660 MB of memory)."""


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], align: Align = "left") -> str:
    """``rows`` under ``headers``. ``None`` shows as nothing. ``align="numbers"``
    right-aligns the columns whose values are all numbers; ``"right"`` every column."""
    body = [list(row) for row in rows]
    columns = len(headers)
    right = [align == "right"] * columns
    if align == "numbers":
        right = [
            all(_is_number(row[i]) for row in body if i < len(row) and row[i] is not None)
            and any(i < len(row) and row[i] is not None for row in body)
            for i in range(columns)
        ]
    text = [[_cell(row[i]) if i < len(row) else "" for i in range(columns)] for row in body]
    # a column is at least two wider than its header, as tabulate made it, and at
    # most WIDEST wide
    widths = [
        max([len(headers[i]) + 2] + [min(len(row[i]), WIDEST) for row in text])
        for i in range(columns)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if flush else cell.ljust(width)
            for cell, width, flush in zip(cells, widths, right, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in text])


def _cell(value: Any) -> str:
    # one row a line: a value's line break (a model's task title, a command's output)
    # would start a row of its own, one that could read as any other; and escaped
    # here, as the terminal is shown it, so that its width is the width printed (an
    # escape sequence measured raw was four characters wider once shown)
    return "" if value is None else one_line(str(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)
