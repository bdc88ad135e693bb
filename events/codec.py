"""Encoding and decoding of event payloads, and the per-run hash chain.

The chain is keyed when the store holds a key: each hash is then an HMAC-SHA256
under the key, written ``<key id>:<hex>`` so that a reader tells a keyed run from
an unkeyed one (plain sha256 hex, as every log before keys) without the key.

One Encoder and one Decoder are built once at import (they hold no state besides
the compiled schema). Stored events are always read back through the typed
decoder, so anything in the log that does not match its schema is found.
"""

from __future__ import annotations

import builtins
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
    """The JSON text stored in the ``data`` column. Text that is not Unicode (a lone
    surrogate: a file name from the disk that is not UTF-8, say) has no JSON form:
    ``SchemaError``, and nothing is written."""
    try:
        return _ENCODER.encode(event).decode()
    except UnicodeEncodeError as e:
        raise SchemaError(
            f"a {event.type_name()} event holds text that is not valid Unicode "
            f"({e.object[max(e.start - 20, 0) : e.end + 20]!a}); nothing was written",
            type=event.type_name(),
        ) from None


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
        cls = EVENT_TYPES.get(type) if isinstance(type, str) else None
        if cls is None:
            raise SchemaError(f"unknown event type {type!r}", position=position, type=str(type))
        if isinstance(schema_version, bool) or not isinstance(schema_version, int):
            raise SchemaError(
                f"schema version {schema_version!r} is not a whole number: the row was changed",
                position=position,
                type=type,
            )
        if not isinstance(data, str | bytes):
            raise SchemaError(
                f"data is {builtins.type(data).__name__}, not text: the row was changed",
                position=position,
                type=type,
            )
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
        except RecursionError:
            raise SchemaError(
                "data nests too deeply to be read (no event does)", position=position, type=type
            ) from None
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


KEY_ID_SEPARATOR = ":"
_BLOCK = 64  # sha256's block size, the HMAC key length (RFC 2104)


def key_id(key: bytes) -> str:
    """A public name for ``key``: 16 hex digits of a hash of it. Recorded in
    ``run.started`` and in every keyed hash; it tells which key wrote a run and
    reveals nothing of the key."""
    return hashlib.sha256(b"autonomy key id\0" + key).hexdigest()[:16]


def hash_key_id(stored_hash: str) -> str:
    """The key id a stored hash was written under; "" for an unkeyed hash (or for
    what is no hash: a changed row's)."""
    if not isinstance(stored_hash, str):
        return ""
    head, sep, _ = stored_hash.partition(KEY_ID_SEPARATOR)
    return head if sep else ""


class ChainKey:
    """The secret that keys the chain: HMAC-SHA256 with its pads hashed once.

    ``hmac.digest`` re-derives the pads on every call, which made a keyed
    ``verify`` 3x slower than the plain chain; copying two prepared sha256 states
    is the same HMAC (a test checks it against ``hmac``) at under 2x."""

    __slots__ = ("_inner", "_outer", "id")

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an empty key authenticates nothing")
        self.id = key_id(key)
        block = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
        block = block.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message``, as hex."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:  # never the key itself
        return f"ChainKey(id={self.id!r})"


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
    key: ChainKey | None = None,
) -> str:
    """The hash of one event: over the previous event's hash and this event's
    canonical bytes. Plain sha256 hex without a key; with one, ``<key id>:`` and
    the HMAC-SHA256 under it.

    Everything in the row except ``position`` (assigned by the store) is covered, so
    a changed payload, type, time or causation breaks the chain from that event on.
    Anyone can recompute a plain hash, so an unkeyed chain only shows accidents;
    nobody without the key can recompute a keyed one.
    """
    message = previous.encode() + _CANONICAL.encode(
        [run_id, version, type, schema_version, recorded_at, causation, data]
    )
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return key.id + KEY_ID_SEPARATOR + key.mac(message)
