"""Text for a terminal: what a model or a log says is shown, never obeyed.

A model writes task titles, reasons, tool names and answers; a log (edited, or
someone else's) holds any text. Printed as they are, an escape sequence in them is
read by the terminal as a command: clear the screen or rewrite a line (a failed run
shown as completed), set the window title, or, where the terminal allows OSC 52, put
text on the clipboard. ``printable`` writes every control character (C0 but tab and
newline, DEL, C1) and every bidirectional override as a visible escape (``\\x1b``,
``\\u202e``), and ``PrintableStream`` does so for everything the command line prints
(``engine.cli.main`` puts one on stdout and stderr). The live display draws its own
escape sequences on the stream underneath (``raw``) and passes its text through
``printable``. JSON output is untouched: its encoder already escapes them. CSV
written to a file or a pipe is data, and goes there exactly (``data_stream``).

Text that is not Unicode at all (``unicode_text``: a file name that is not UTF-8, read
from the disk or the command line) is shown with its bytes escaped too, so printing it
is never an error; the tools keep it so in what the log records.
"""

from __future__ import annotations

import re
from typing import IO, Any

TIMING = re.compile(
    r"(?P<lead>\bexit code -?\d+ after )\d+(?:\.\d+)?s\b"
    r"|(?P<tests>\b(?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|deselected|"
    r"warnings?|rerun)|(?:\d+/)?\d+ tests? collected|no tests (?:ran|collected))\b[^\n]*? in )"
    r"\d+\.\d+s(?: \(\d+:\d\d:\d\d\))?"
    r"|(?P<ran>\bRan \d+ tests? in )\d+\.\d+s\b"
)
"""The durations that the engine and the test runners a command runs print, which
are never the same twice: ``run_command``'s "exit code 1 after 1.4s", pytest's
summary "2 passed in 0.67s" (and "(0:01:01)" past a minute) and its collection's
"3 tests collected in 0.51s", unittest's "Ran 3 tests in 0.001s". Only these: a pattern of every duration made a file read
holding "timeout: 5s", edited to "500s" since, compare as the same (a replay said
"identical" of a run whose model was shown other text)."""


def without_timings(text: str) -> str:
    """``text`` with each duration of ``TIMING`` as ``<time>``: what two texts that
    say the same thing at different speeds have in common."""
    if "s" not in text:
        return text
    return TIMING.sub(_no_time, text)


def _no_time(found: re.Match[str]) -> str:
    return (found.group("lead") or found.group("tests") or found.group("ran")) + "<time>"


_C0 = [*range(0x00, 0x09), *range(0x0B, 0x20)]
_DEL_C1 = [0x7F, *range(0x80, 0xA0)]
_BIDI = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
# DEL and C1 as \u escapes, as bidirectional overrides: JSON and TOML encoders leave
# them raw in strings, and "\x7f" in a --json answer or a printed config is invalid
# there, where "\u007f" is the same character escaped (C0 they escape themselves)
_ESCAPES = {c: f"\\x{c:02x}" for c in _C0} | {c: f"\\u{c:04x}" for c in (*_DEL_C1, *_BIDI)}


def printable(text: str) -> str:
    """``text`` with each control character and bidirectional override escaped."""
    return unicode_text(text).translate(_ESCAPES)


_INVISIBLE = {c: f"\\u{c:04x}" for c in (0x200B, 0x2060, 0xFEFF)}
"""Characters of no width (a zero-width space, a word joiner, a byte order mark): a
name with one looks like another name. The joiners that shape scripts and emoji
(U+200C, U+200D) are left to do so."""


def visible(text: str) -> str:
    """``printable`` text in which nothing is invisible either: for a page, where a
    bidirectional override in a file name or a task title (``calc\\u202eyp.exe``
    shown as ``calcexe.py``, a title shown as "verified ok") reorders what follows
    it, autonomy's own words included."""
    return printable(text).translate(_INVISIBLE)


def one_line(text: str) -> str:
    """``printable`` text that stays on its line: a line break in it is shown as
    ``\\n``. For what a model or a log says, put into a line of autonomy's own (a
    task title with a line break printed a line "run …: completed" of its own)."""
    return printable(text).replace("\n", "\\n")


def clipped(text: str, limit: int) -> str:
    """``text``, or its first ``limit - 1`` characters and an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PrintableStream:
    """A text stream that writes ``printable`` text to ``raw``."""

    def __init__(self, raw: IO[str]) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(printable(text))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def raw_stream(stream: IO[str]) -> IO[str]:
    """The stream under a ``PrintableStream`` (``stream`` itself otherwise)."""
    return stream.raw if isinstance(stream, PrintableStream) else stream


def data_stream(stream: IO[str]) -> IO[str]:
    """Where to write data (CSV) meant for ``stream``: the stream underneath when it is
    a file or a pipe, whose reader wants every value as it is; ``stream`` itself, which
    escapes, when a terminal would show it."""
    raw = raw_stream(stream)
    try:
        terminal = raw.isatty()
    except (AttributeError, ValueError):  # no such method, or a closed stream
        terminal = False
    return stream if terminal else raw


def unicode_text(text: str) -> str:
    """``text`` as Unicode a log can hold: each lone surrogate (a byte of a file name
    that is not UTF-8, as Python reads one from the disk) shown as ``\\xNN``, or as
    U+FFFD when it stands for no byte. ``text`` itself when it has none (the common
    case, and no copy)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "".join(_SURROGATES.get(ord(c), c) for c in text)
    return text


_SURROGATES = {c: "\ufffd" for c in range(0xD800, 0xE000)} | {
    0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)
}
