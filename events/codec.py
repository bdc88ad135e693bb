"""Encoding and decoding of event payloads, and the per-run hash chain.

One Encoder and one Decoder are built once at import (they hold no state besides
the compiled schema). Stored events are always read back through the typed
decoder, so anything in the log that does not match its schema is found.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from events.errors import SchemaError
from events.schema import EVENT_TYPES, AnyEvent, Event
from events.upcasters import UpcasterRegistry, project_upcasters

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AnyEvent)
_RAW_DECODER = msgspec.json.Decoder(dict[str, Any])
_CANONICAL = msgspec.json.Encoder()


def encode(event: Event) -> str:
    """The JSON text stored in the ``data`` column."""
    return _ENCODER.encode(event).decode()


def current_version(type: str) -> int:
    cls = EVENT_TYPES.get(type)
    if cls is None:
        raise SchemaError(f"unknown event type {type!r}", type=type)
    return cls.schema_version


CURRENT: msgspec.json.Decoder[AnyEvent] = _DECODER
"""Decodes a payload written at its type's current schema version, its tag picking
the type: the common case of ``Codec.decode`` without its checks, for a hot loop
(``projections.project``). The caller must check that the class decoded is the
row's type (``EVENT_TYPES``) at the row's schema version, and send any other row,
and any that fails here, through ``Codec.decode`` for the upcast or the
``SchemaError`` naming the row."""


class Codec:
    """Decodes stored payloads, upcasting old schema versions first."""

    def __init__(self, upcasters: UpcasterRegistry | None = None) -> None:
        self.upcasters = upcasters if upcasters is not None else project_upcasters()

    def decode(
        self, type: str, schema_version: int, data: str | bytes, *, position: int | None = None
    ) -> Event:
        cls = EVENT_TYPES.get(type)
        if cls is None:
            raise SchemaError(f"unknown event type {type!r}", position=position, type=type)
        try:
            if schema_version == cls.schema_version:
                event = _DECODER.decode(data)
            else:
                raw = self._upcast(type, schema_version, cls.schema_version, data, position)
                event = msgspec.convert(raw, AnyEvent)
        except msgspec.ValidationError as e:
            raise SchemaError(
                f"data does not match the schema: {e}", position=position, type=type
            ) from e
        except msgspec.DecodeError as e:
            raise SchemaError(f"data is not valid JSON: {e}", position=position, type=type) from e
        if not isinstance(event, cls):
            raise SchemaError(
                f"data is tagged {event.type_name()!r}, the row says {type!r}",
                position=position,
                type=type,
            )
        return event

    def _upcast(
        self, type: str, version: int, target: int, data: str | bytes, position: int | None
    ) -> dict[str, Any]:
        if version > target:
            raise SchemaError(
                f"schema version {version} is newer than this code knows ({target}); upgrade autonomy",
                position=position,
                type=type,
            )
        raw = _RAW_DECODER.decode(data)
        while version < target:
            step = self.upcasters.step(type, version)
            if step is None:
                raise SchemaError(
                    f"no upcaster from schema version {version}", position=position, type=type
                )
            try:
                raw = step(dict(raw))
            except Exception as e:
                raise SchemaError(
                    f"upcaster from version {version} failed: {e!r}", position=position, type=type
                ) from e
            version += 1
        raw["type"] = type
        return raw


def chain_hash(
    previous: str,
    *,
    run_id: str,
    version: int,
    type: str,
    schema_version: int,
    recorded_at: str,
    causation: int | None,
    data: str,
) -> str:
    """sha256 over the previous event's hash and this event's canonical bytes.

    Everything in the row except ``position`` (assigned by the store) is covered, so
    a changed payload, type, time or causation breaks the chain from that event on.
    """
    canonical = _CANONICAL.encode(
        [run_id, version, type, schema_version, recorded_at, causation, data]
    )
    return hashlib.sha256(previous.encode() + canonical).hexdigest()
