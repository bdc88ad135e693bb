"""What differs between a recorded run and its replay, said for people.

``compare`` walks two event lists version by version and returns the first
``Divergence``, ignoring what cannot repeat: times, positions, hashes and
digests, durations, and the timings and workspace path inside texts
(``Normaliser``). ``message_diff`` says which messages of a model request
changed and how.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from engine.terminal import without_timings
from events.schema import Message
from events.store import RecordedEvent

IGNORED_FIELDS = frozenset(
    {"duration_ms", "request_digest", "tools_ref", "result_ref", "content_ref", "endpoint"}
)
"""Payload fields that cannot repeat: measured durations, digests of texts that
hold timings (the texts themselves are compared, normalised; a request, tools
included, is checked whole before it is answered), and the address of the model
server (a resume may point at another; the model's name is compared)."""

class Normaliser:
    """Makes a text comparable across runs: the scratch workspace's path becomes the
    recorded one, and timings become ``<time>``."""

    def __init__(self, scratch: Path | None = None, recorded_workspace: str = "") -> None:
        self.paths = (
            [str(scratch.resolve()), str(scratch)]
            if scratch is not None and recorded_workspace
            else []
        )
        self.recorded_workspace = recorded_workspace

    def __call__(self, text: str) -> str:
        for path in self.paths:
            text = text.replace(path, self.recorded_workspace)
        return without_timings(text)


def message_diff(
    recorded: Sequence[Message], replayed: Sequence[Message], normalise: Normaliser
) -> list[str]:
    """One block per message that differs: which one, and how (a unified diff of its
    content, or the other fields that changed). Empty when they are the same."""
    lines: list[str] = []
    for index in range(max(len(recorded), len(replayed))):
        old = recorded[index] if index < len(recorded) else None
        new = replayed[index] if index < len(replayed) else None
        label = f"message {index + 1}"
        if old is None and new is not None:
            lines.append(f"  {label} ({new.role}) is new in the replay:")
            lines.append(indent(excerpt(new.content), 4))
            continue
        if new is None and old is not None:
            lines.append(f"  {label} ({old.role}) of the recorded request is missing")
            continue
        assert old is not None and new is not None
        fields = _fields(old, normalise)
        changed = {k for k, v in _fields(new, normalise).items() if fields.get(k) != v}
        changed |= {k for k in fields if k not in _fields(new, normalise)}
        if not changed:
            continue
        lines.append(f"  {label} ({old.role}) changed:")
        for key in sorted(changed - {"content"}):
            lines.append(
                f"    {key}: recorded {fields.get(key)!r}, "
                f"replayed {_fields(new, normalise).get(key)!r}"
            )
        if "content" in changed:
            # as compared: a line that differs only in a timing (or the workspace's
            # path) is no change, and was shown as one beside the change that counts
            was, now = normalise(old.content), normalise(new.content)
            diff = difflib.unified_diff(
                was.splitlines(),
                now.splitlines(),
                fromfile=f"recorded {label}",
                tofile=f"replayed {label}",
                lineterm="",
            )
            lines.append(indent("\n".join(diff), 4))
            if max(len(line) for line in (*was.splitlines(), *now.splitlines(), "")) > LONG:
                lines.append("    in words: " + word_diff(was, now))
    return lines


def _fields(message: Message, normalise: Normaliser) -> dict[str, Any]:
    fields = msgspec.to_builtins(message)
    assert isinstance(fields, dict)
    fields.pop("content_ref", None)
    cleaned: dict[str, Any] = _clean(fields, normalise)
    return cleaned


def excerpt(text: str, lines: int = 12) -> str:
    kept = text.splitlines()
    more = f"\n[... {len(kept) - lines} more lines]" if len(kept) > lines else ""
    return "\n".join(kept[:lines]) + more


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.splitlines())


class FieldChange(msgspec.Struct, frozen=True):
    """One field that differs between a recorded and a replayed event."""

    field: str
    """Where, dotted (``data.reasoning``, ``data.tool_calls.0.arguments.path``)."""
    recorded: Any
    replayed: Any


@dataclass(frozen=True)
class Divergence:
    """The first place where the replay and the recording differ."""

    version: int
    expected: str
    """The recorded event's type ("(none)" past the recorded run's end)."""
    actual: str
    """The replayed event's type ("(none)" when the replay stopped short)."""
    diff: str
    headline: str = ""
    """One line saying what differs; ``title`` falls back to the two types."""
    changes: tuple[FieldChange, ...] = ()

    @property
    def title(self) -> str:
        if self.headline:
            return self.headline
        return f"expected {self.expected}, got {self.actual}"

    def document(self) -> dict[str, Any]:
        """As plain JSON types, for ``--json``."""
        return {
            "version": self.version,
            "expected": self.expected,
            "actual": self.actual,
            "headline": self.title,
            "changes": [msgspec.to_builtins(c) for c in self.changes],
            "diff": self.diff,
        }


def _clean(value: Any, normalise: Normaliser) -> Any:
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, dict):
        return {k: _clean(v, normalise) for k, v in value.items() if k not in IGNORED_FIELDS}
    if isinstance(value, list | tuple):
        return [_clean(v, normalise) for v in value]
    return value


def comparable(event: RecordedEvent, normalise: Normaliser) -> dict[str, Any]:
    """What must be equal between a recorded and a replayed event. A payload nested
    deeper than Python recurses (a model's arguments, 900 lists deep: the decoder
    takes them) is compared as its JSON text: it was a RecursionError."""
    try:
        data = _clean(msgspec.to_builtins(event.data), normalise)
    except RecursionError:
        data = normalise(msgspec.json.encode(event.data).decode())
    return {"type": event.type, "causation": event.causation, "data": data}


def compare(
    recorded: Sequence[RecordedEvent],
    replayed: Sequence[RecordedEvent],
    normalise: Normaliser,
) -> Divergence | None:
    """The first version at which the two differ, or None. Versions are the recorded
    events' own (a log with a gap in its versions, which verify reports, is not
    numbered by position)."""
    for old, new in zip(recorded, replayed, strict=False):
        if old.data == new.data and old.type == new.type and old.causation == new.causation:
            continue  # equal as they are (the common case): nothing to normalise
        divergence = _difference(old.version, old, new, normalise)
        if divergence is not None:
            return divergence
    common = min(len(recorded), len(replayed))
    if len(replayed) > len(recorded):
        after = recorded[-1].version if recorded else 0
        return _difference(after + 1, None, replayed[common], normalise)
    if len(recorded) > len(replayed):
        return _difference(recorded[common].version, recorded[common], None, normalise)
    return None


def _difference(
    version: int, old: RecordedEvent | None, new: RecordedEvent | None, normalise: Normaliser
) -> Divergence | None:
    """What differs between a recorded and a replayed event (either may be missing).

    A replayed event that no store could encode (a replay's scratch log encodes
    only what is read back) is such a difference."""
    try:
        if old is None and new is not None:
            return Divergence(
                version,
                "(none)",
                new.type,
                _fields_text(comparable(new, normalise)["data"], "replayed"),
                headline=f"the replay wrote {new.type} after the recorded run's last event",
            )
        assert old is not None
        if new is None:
            return Divergence(
                version,
                old.type,
                "(none)",
                _fields_text(comparable(old, normalise)["data"], "recorded"),
                headline=f"the replay stopped before the recorded run's {old.type}",
            )
        expected, actual = comparable(old, normalise), comparable(new, normalise)
    except TypeError as e:  # from msgspec.to_builtins: what was read from a log never fails
        assert new is not None
        return Divergence(
            version,
            old.type if old is not None else "(none)",
            new.type,
            f"  {e}",
            headline=f"the replay wrote a {new.type} that cannot be encoded: {e}",
        )
    if expected != actual:
        return _divergence(version, old.type, new.type, expected, actual)
    return None


def _divergence(
    version: int, old_type: str, new_type: str, expected: dict[str, Any], actual: dict[str, Any]
) -> Divergence:
    if old_type != new_type:
        text = "\n".join(
            [
                _fields_text(expected["data"], f"recorded {old_type}"),
                _fields_text(actual["data"], f"replayed {new_type}"),
            ]
        )
        return Divergence(version, old_type, new_type, text)
    changes = tuple(
        FieldChange(".".join(path), before, after)
        for path, before, after in _leaf_changes(expected, actual, ())
    )
    names = ", ".join(c.field.removeprefix("data.") for c in changes)
    return Divergence(
        version,
        old_type,
        new_type,
        "\n".join(_change_text(c) for c in changes),
        headline=f"{old_type}: {names} changed",
        changes=changes,
    )


def _leaf_changes(
    old: Any, new: Any, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[tuple[tuple[str, ...], Any, Any]] = []
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                found += _leaf_changes(old.get(key), new.get(key), (*path, str(key)))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                found += _leaf_changes(a, b, (*path, str(i)))
        return found
    return [(path, old, new)]


LONG = 60
"""Strings longer than this (in characters) get a word-level diff."""


def _change_text(change: FieldChange) -> str:
    lines = [f"  {change.field.removeprefix('data.')}:"]
    before, after = change.recorded, change.replayed
    lines.append(f"    recorded: {_show(before)}")
    lines.append(f"    replayed: {_show(after)}")
    if isinstance(before, str) and isinstance(after, str) and max(len(before), len(after)) > LONG:
        lines.append(f"    in words: {word_diff(before, after)}")
    return "\n".join(lines)


def _fields_text(data: Any, label: str) -> str:
    if not isinstance(data, dict):
        return f"  {label}: {_show(data)}"
    lines = [f"  {label}:"]
    lines += [f"    {key}: {_show(value)}" for key, value in data.items() if key != "type"]
    return "\n".join(lines)


def _show(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def word_diff(old: str, new: str, context: int = 6) -> str:
    """``old`` and ``new`` as one line of words with those that differ marked
    ``[-removed-]{+added+}``, and ``context`` words kept around each change
    (whitespace shown as single spaces: the unified diff above has it exactly)."""
    a, b = old.split(), new.split()
    opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    parts: list[str] = []
    for n, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        if tag == "equal":
            chunk = a[i1:i2]
            first, last = n == 0, n == len(opcodes) - 1
            if first and len(chunk) > context:
                chunk = ["…", *chunk[-context:]]
            elif last and len(chunk) > context:
                chunk = [*chunk[:context], "…"]
            elif not first and not last and len(chunk) > 2 * context:
                chunk = [*chunk[:context], "…", *chunk[-context:]]
            parts += chunk
            continue
        if i2 > i1:
            parts.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            parts.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(parts)


def payload_diff(expected: Any, actual: Any) -> str:
    """A unified diff of two payloads as indented, key-sorted JSON."""
    old = json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    new = json.dumps(actual, indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    return "\n".join(difflib.unified_diff(old, new, "recorded", "replayed", lineterm=""))
