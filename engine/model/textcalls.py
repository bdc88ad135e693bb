"""The prose fallback: a tool call a model wrote as text instead of through the API.

Local models often answer a tool-calling request in prose that contains the call,
fenced or bare, sometimes wrapped in ``<tool_call>`` tags::

    I'll create the file now.
    ```json
    {"name": "create_file", "arguments": {"path": "app.py", "content": "print(1)"}}
    ```

The predecessor had seven untested heuristics for this. Here there is one rule,
small enough to state and test in full:

* the text contains **exactly one** JSON object whose keys are ``name`` (a string)
  and ``arguments`` (an object), or ``name`` and ``parameters`` (the spelling
  Llama models use), and no other keys;
* that name is one of the tools offered in the request.

The ReAct spelling some models were trained on is the one other form accepted,
under the same conditions (exactly one, a tool that was offered, a JSON object)::

    Action: create_file
    Action Input: {"path": "app.py", "content": "print(1)"}

Anything else — two calls, a call to a tool that was not offered, JSON that is not
a call, broken JSON, nested wrappers — stays prose. Work is bounded: texts longer
than ``MAX_TEXT`` characters are not scanned and at most ``MAX_ATTEMPTS`` opening
braces are tried, so a pathological answer costs little.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

import msgspec

from engine.model.wire import MAX_ARGUMENT_DEPTH, deeper_than
from events.schema import ToolCall

MAX_TEXT = 100_000
"""Longer answers are left as prose without scanning."""

MAX_ATTEMPTS = 200
"""Opening braces tried before giving up; each try is one C-speed JSON parse."""

_ARGUMENT_KEYS = ("arguments", "parameters")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
"""Python's parser as a model's JSON is read: ``NaN`` and ``Infinity`` are no JSON
(taken, they were recorded as ``null``: another call than the model wrote), and an
integer of more than 4,300 digits a ``ValueError`` (it ended the run in a traceback)
like any other text that is no JSON."""


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object embedded in ``text``, in order (bounded).

    An object found is skipped over whole, so objects nested inside it are not
    reported separately; a brace that does not start valid JSON is stepped past.
    """
    found: list[dict[str, Any]] = []
    if len(text) > MAX_TEXT:
        return found
    position = text.find("{")
    attempts = 0
    while position != -1 and attempts < MAX_ATTEMPTS:
        attempts += 1
        try:
            value, end = _DECODER.raw_decode(text, position)
        except (ValueError, RecursionError):  # JSONDecodeError is one
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict) and _well_formed(value):
            found.append(value)
        position = text.find("{", end)
    return found


def _well_formed(value: dict[str, Any]) -> bool:
    """Whether ``value`` is what a model's JSON may hold: nested no deeper than
    arguments may, and only Unicode text (a lone surrogate escape, ``"\\udcff"``,
    which Python's parser takes and a model answer's parser refuses, has no place in
    a log)."""
    if deeper_than(value, MAX_ARGUMENT_DEPTH):
        return False
    try:
        msgspec.json.encode(value)
    except UnicodeEncodeError:
        return False
    return True


def as_call(value: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(name, arguments)`` if ``value`` has exactly the shape of a call, else None."""
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    keys = set(value) - {"name"}
    if len(keys) != 1:
        return None
    (key,) = keys
    arguments = value[key]
    if key not in _ARGUMENT_KEYS or not isinstance(arguments, dict):
        return None
    return name, arguments


_ACTION = re.compile(
    r"^[ \t]*Action:[ \t]*([A-Za-z_][\w.-]*)[ \t]*\r?\n[ \t]*Action Input:[ \t]*", re.M
)


def _action_lines(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``Action: NAME`` / ``Action Input: {...}`` pairs whose input is an object."""
    if len(text) > MAX_TEXT:
        return []
    calls = []
    for found in _ACTION.finditer(text):
        try:
            value, _end = _DECODER.raw_decode(text, found.end())
        except (ValueError, RecursionError):  # JSONDecodeError is one
            return []  # a broken call is not a call
        if not isinstance(value, dict) or not _well_formed(value):
            return []
        calls.append((found.group(1), value))
    return calls


def extract_tool_call(text: str, offered: Collection[str]) -> ToolCall | None:
    """The one tool call written in ``text``, if the rule above finds exactly one.

    ``offered`` is the names of the tools sent with the request. The returned call
    has id ``call_0``, like the first API call of a reply without ids, so replays
    see the same id.
    """
    if not offered or "{" not in text:
        return None
    calls = [call for value in json_objects(text) if (call := as_call(value)) is not None]
    if not calls:
        calls = _action_lines(text)
    if len(calls) != 1:
        return None
    name, arguments = calls[0]
    if name not in offered:
        return None
    return ToolCall(id="call_0", name=name, arguments=arguments)
