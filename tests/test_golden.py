"""Golden files: one stored payload per event type and schema version, kept forever.

``tests/golden/<type>@<schema_version>.json`` holds ``{"type", "schema_version",
"data"}`` where ``data`` is exactly what the ``data`` column stored. When a type's
schema version is bumped, its old golden files stay and must keep decoding through
the project's upcasters; a new file is added for the new version. Never edit a
golden file to make a test pass: that is the log of a user you just broke.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from events import EVENT_TYPES, Codec, encode

GOLDEN = Path(__file__).parent / "golden"
NAME = re.compile(r"^(?P<type>[a-z_]+\.[a-z_]+)@(?P<version>[1-9][0-9]*)\.json$")
FILES = sorted(GOLDEN.glob("*.json"))


def is_current(path: Path) -> bool:
    match = NAME.match(path.name)
    cls = EVENT_TYPES.get(match["type"]) if match else None
    return cls is not None and match is not None and int(match["version"]) == cls.schema_version


CURRENT = [p for p in FILES if is_current(p)]


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@pytest.mark.parametrize("type_name", sorted(EVENT_TYPES))
def test_every_event_type_has_a_golden_file_at_its_current_version(type_name: str) -> None:
    current = EVENT_TYPES[type_name].schema_version

    assert (GOLDEN / f"{type_name}@{current}.json").is_file()


def test_there_are_golden_files() -> None:
    assert len(FILES) >= len(EVENT_TYPES)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_file_name_matches_its_contents(path: Path) -> None:
    match = NAME.match(path.name)
    doc = load(path)

    assert match is not None, f"{path.name} is not named <type>@<version>.json"
    assert set(doc) == {"type", "schema_version", "data"}
    assert doc["type"] == match["type"] == doc["data"]["type"]
    assert doc["schema_version"] == int(match["version"])


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_file_decodes(path: Path) -> None:
    doc = load(path)

    event = Codec().decode(doc["type"], doc["schema_version"], json.dumps(doc["data"]), position=1)

    assert isinstance(event, EVENT_TYPES[doc["type"]])


@pytest.mark.parametrize("path", CURRENT, ids=[p.name for p in CURRENT])
def test_current_golden_file_loses_no_field(path: Path) -> None:
    """msgspec ignores unknown keys, so a renamed field would decode silently to its
    default; every key of a current-version golden payload must come back. (Old
    versions are the upcasters' business.)"""
    doc = load(path)

    event = Codec().decode(doc["type"], doc["schema_version"], json.dumps(doc["data"]))
    decoded = json.loads(encode(event))

    assert {key: decoded.get(key) for key in doc["data"]} == doc["data"]
