"""What happened: the event schema, its codec and upcasters, and the append-only store.

This package imports neither ``projections`` nor ``engine``.

The names below are imported on first use (PEP 562), so that importing one
submodule (``events.errors``, say) does not import them all: the command line starts
faster. Type checkers see the imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from events.codec import Codec, encode
    from events.errors import (
        AutonomyError,
        BlobNotFound,
        ConcurrencyError,
        EventStoreError,
        RunNotFound,
        SchemaError,
        StoreCorrupted,
        StoreUnavailable,
    )
    from events.memory import MemoryEventStore
    from events.schema import (
        EVENT_TYPES,
        AnyEvent,
        ArbiterDecided,
        Event,
        FileChange,
        Message,
        ModelContextLearned,
        ModelFailed,
        ModelRequested,
        ModelResponded,
        PhaseChanged,
        RunFinished,
        RunForked,
        RunResumed,
        RunRewound,
        RunStarted,
        SpecialistConsulted,
        TaskAdded,
        TaskUpdated,
        ToolCall,
        ToolExecuted,
        ToolRequested,
        Usage,
        UserAnswered,
        UserAsked,
    )
    from events.sqlite import SQLiteEventStore
    from events.store import EventStore, RecordedEvent, RunInfo, StoredEvent, VerifyReport
    from events.upcasters import UpcasterRegistry

_WHERE = {
    "AnyEvent": "events.schema",
    "ArbiterDecided": "events.schema",
    "AutonomyError": "events.errors",
    "BlobNotFound": "events.errors",
    "Codec": "events.codec",
    "ConcurrencyError": "events.errors",
    "EVENT_TYPES": "events.schema",
    "Event": "events.schema",
    "EventStore": "events.store",
    "EventStoreError": "events.errors",
    "FileChange": "events.schema",
    "MemoryEventStore": "events.memory",
    "Message": "events.schema",
    "ModelContextLearned": "events.schema",
    "ModelFailed": "events.schema",
    "ModelRequested": "events.schema",
    "ModelResponded": "events.schema",
    "PhaseChanged": "events.schema",
    "RecordedEvent": "events.store",
    "RunFinished": "events.schema",
    "RunForked": "events.schema",
    "RunInfo": "events.store",
    "RunNotFound": "events.errors",
    "RunResumed": "events.schema",
    "RunRewound": "events.schema",
    "RunStarted": "events.schema",
    "SQLiteEventStore": "events.sqlite",
    "SchemaError": "events.errors",
    "SpecialistConsulted": "events.schema",
    "StoreCorrupted": "events.errors",
    "StoreUnavailable": "events.errors",
    "StoredEvent": "events.store",
    "TaskAdded": "events.schema",
    "TaskUpdated": "events.schema",
    "ToolCall": "events.schema",
    "ToolExecuted": "events.schema",
    "ToolRequested": "events.schema",
    "UpcasterRegistry": "events.upcasters",
    "Usage": "events.schema",
    "UserAnswered": "events.schema",
    "UserAsked": "events.schema",
    "VerifyReport": "events.store",
    "encode": "events.codec",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "ArbiterDecided",
    "AutonomyError",
    "BlobNotFound",
    "Codec",
    "ConcurrencyError",
    "Event",
    "EventStore",
    "EventStoreError",
    "FileChange",
    "MemoryEventStore",
    "Message",
    "ModelContextLearned",
    "ModelFailed",
    "ModelRequested",
    "ModelResponded",
    "PhaseChanged",
    "RecordedEvent",
    "RunFinished",
    "RunForked",
    "RunInfo",
    "RunNotFound",
    "RunResumed",
    "RunRewound",
    "RunStarted",
    "SQLiteEventStore",
    "SchemaError",
    "SpecialistConsulted",
    "StoreCorrupted",
    "StoreUnavailable",
    "StoredEvent",
    "TaskAdded",
    "TaskUpdated",
    "ToolCall",
    "ToolExecuted",
    "ToolRequested",
    "UpcasterRegistry",
    "Usage",
    "UserAnswered",
    "UserAsked",
    "VerifyReport",
    "encode",
]
