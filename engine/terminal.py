"""Text for a terminal: what a model or a log says is shown, never obeyed.

A model writes task titles, reasons, tool names and answers; a log (edited, or
someone else's) holds any text. Printed as they are, an escape sequence in them is
read by the terminal as a command: clear the screen or rewrite a line (a failed run
shown as completed), set the window title, or, where the terminal allows OSC 52, put
text on the clipboard. ``printable`` writes every control character (C0 but tab and
newline, DEL, C1), every bidirectional override and every character drawn as nothing
(a zero-width space: a file name that looks like another) as a visible escape
(``\\x1b``, ``\\u202e``, ``\\u200b``), and ``PrintableStream`` does so for everything
the command line prints (``engine.cli.main`` puts one on stdout and stderr); the
service's pages show text so too. The live display draws its own
escape sequences on the stream underneath (``raw``) and passes its text through
``printable``. JSON output stays JSON: its encoder escapes C0 itself, and the rest is
escaped as JSON writes it (``\\u200b``, a surrogate pair past U+FFFF). CSV
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
_INVISIBLE = [
    # the format characters (Unicode's Cf) drawn as nothing, but the joiners that shape
    # scripts and emoji (U+200C, U+200D) and the bidirectional ones above: a zero-width
    # space, a soft hyphen, an invisible plus, a word joiner, a byte order mark... (the
    # tags: by ``_IN_CONTEXT``; the marks drawn over the digits after them, U+0600 and
    # its kin, are drawn)
    *(0xAD, 0x180E, 0x200B, *range(0x2060, 0x2065), *range(0x206A, 0x2070), 0xFEFF),
    *(*range(0xFFF9, 0xFFFC), *range(0x13430, 0x13440), *range(0x1BCA0, 0x1BCA4)),
    *(*range(0x1D173, 0x1D17B), 0xE0001),
    # and what is drawn as nothing: a grapheme joiner, the Hangul fillers
    *(0x34F, 0x115F, 0x1160, 0x3164, 0xFFA0),
]


def _escape(code: int) -> str:
    """``\\uXXXX``, as JSON writes a character (two, a surrogate pair, past U+FFFF)."""
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


# DEL, C1 and the rest as \u escapes: JSON and TOML encoders leave them raw in strings,
# and "\x7f" in a --json answer or a printed config is invalid there, where "\u007f" is
# the same character escaped (C0 they escape themselves)
_ESCAPES = {c: f"\\x{c:02x}" for c in _C0} | {
    c: _escape(c) for c in (*_DEL_C1, *_BIDI, *_INVISIBLE)
}
_SELECTORS = "\ufe00-\ufe0f\U000e0100-\U000e01ef"
_IN_CONTEXT = re.compile(
    "(\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f|[0-9#*]\ufe0f\u20e3)"
    f"|(?<![^\\x00-\\x7f{_SELECTORS}])[{_SELECTORS}]|[\U000e0020-\U000e007f]"
)
"""What is invisible or not by what stands around it. Kept: a subdivision flag (a
black flag, tags, a cancel tag: Scotland's) and a keycap (``1\\ufe0f\\u20e3``).
Escaped: a variation selector that follows no character it could vary (the start,
ASCII, another selector: "calc\\ufe0f.py" looked like "calc.py"; after an emoji or a
CJK character it chooses how that is drawn), and a tag anywhere else (the "ASCII
smuggling" of U+E0041 for an invisible "A")."""


def _in_context(found: re.Match[str]) -> str:
    return found.group() if found.group(1) else _escape(ord(found.group()))


def printable(text: str) -> str:
    """``text`` with each control character, bidirectional override and invisible
    character escaped: a name with a zero-width space looked like the name without."""
    text = unicode_text(text).translate(_ESCAPES)
    if text.isascii():
        return text
    return _IN_CONTEXT.sub(_in_context, text)


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
