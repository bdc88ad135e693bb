"""The exception tree of autonomy.

Every error the project raises on purpose derives from ``AutonomyError``; a caller
that wants "any mistake we know how to describe" catches that one class. The CLI
prints ``str(error)`` and its cause chain and exits non-zero, never a traceback.

    AutonomyError                      base; its docstring is the default message
    ├── EventStoreError                anything the event store refuses or cannot do
    │   ├── ConcurrencyError           stale expected_version; nothing was written
    │   ├── StoreCorrupted             the database file is unreadable or not ours
    │   ├── BlobNotFound               no blob stored under that digest
    │   ├── BlobCorrupt                a blob whose content does not match its digest
    │   ├── WrongKey                   a keyed run, and this key is not the one it
    │   │                              was written with (or there is none)
    │   ├── LeaseHeld                  another live engine holds that run's lease
    │   ├── StoreUnavailable           the database cannot be reached or is busy now;
    │   │                              nothing was changed, asking again may work
    │   └── RunNotFound                no events for that run id
    ├── CheckpointError                a checkpoint file that cannot be read
    ├── SchemaError                    an event that cannot be decoded: unknown type,
    │                                  failing upcaster, or data that does not match
    │                                  its schema (names the position and type); or
    │                                  one a scratch log, which encodes only what is
    │                                  read back, cannot encode
    └── (engine.errors adds ConfigError, ModelError, ToolError, ... under AutonomyError)

Driver errors are mapped to this tree in one place per driver:
``events.sqlite._mapped_errors`` (``sqlite3.*``) and ``events.postgres._mapped_errors``
(``psycopg.*``).
"""

from __future__ import annotations


class AutonomyError(Exception):
    """autonomy failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class EventStoreError(AutonomyError):
    """The event store could not complete the operation."""


class ConcurrencyError(EventStoreError):
    """Another writer appended to this run first; nothing was written."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        super().__init__(
            f"run {run_id!r}: expected version {expected} but the log is at {actual}; "
            "nothing was written"
        )
        self.run_id = run_id
        self.expected = expected
        self.actual = actual


class StoreCorrupted(EventStoreError):
    """The event database is unreadable or was not created by autonomy."""


class BlobNotFound(EventStoreError):
    """No blob is stored under that digest."""


class BlobCorrupt(EventStoreError):
    """A blob's content does not match its digest: it was changed after it was stored."""


class WrongKey(EventStoreError):
    """The run was written with another key than this one."""


class LeaseHeld(EventStoreError):
    """Another engine is running that run; nothing was changed."""

    def __init__(self, message: str, owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner
        """Who holds the lease, as it described itself ("" when unknown)."""


class StoreUnavailable(EventStoreError):
    """The database cannot be reached, or is busy, now: nothing was changed, and the
    same request may succeed later (a service answers 503)."""


class LeaseLost(StoreUnavailable):
    """The session holding this engine's lease of a run ended (the database server
    restarted, an administrator's timeout, the network): another engine may take the
    run now, so this one writes no more. Nothing of this append was written."""


class RunNotFound(EventStoreError):
    """No events are recorded for that run."""

    def __init__(self, run_id: str) -> None:
        # an id no run has may be any text: 100,000 characters were said whole
        shown = (
            repr(run_id)
            if len(run_id) <= 200
            else f"{run_id[:199]!r}… ({len(run_id):,} characters)"
        )
        super().__init__(f"no run {shown} in this log")
        self.run_id = run_id


class CheckpointError(AutonomyError):
    """A checkpoint file could not be read."""


class SchemaError(AutonomyError):
    """An event could not be decoded."""

    def __init__(self, message: str, *, position: int | None = None, type: str | None = None):
        where = []
        if position is not None:
            where.append(f"position {position}")
        if type is not None:
            where.append(f"type {type!r}")
        prefix = f"event at {', '.join(where)}: " if where else ""
        super().__init__(prefix + message)
        self.position = position
        self.type = type
