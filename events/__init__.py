"""What happened: the event schema, its codec and upcasters, and the append-only store.

This package imports neither ``projections`` nor ``engine``.
"""

from events.codec import Codec, encode
from events.errors import (
    AutonomyError,
    BlobNotFound,
    ConcurrencyError,
    EventStoreError,
    RunNotFound,
    SchemaError,
    StoreCorrupted,
)
from events.memory import MemoryEventStore
from events.schema import (
    EVENT_TYPES,
    AnyEvent,
    ArbiterDecided,
    Event,
    FileChange,
    Message,
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
