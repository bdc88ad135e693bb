"""Upcasters: how an event stored at an old ``schema_version`` becomes the current one.

An upcaster is a function ``(dict) -> dict`` registered for ``(type, from_version)``;
it turns the raw payload of version N into version N+1. They run on the raw dict,
before the typed decode, one step at a time, so a version-1 event read by code at
version 3 passes through the 1->2 and the 2->3 upcasters in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UpcasterRegistry:
    """A table of upcasters keyed by ``(event type, version it upgrades from)``."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``@registry.register("task.added", 1)`` upgrades v1 to v2."""

        def decorate(fn: Upcaster) -> Upcaster:
            key = (type, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster for {type} v{from_version} is already registered")
            self._steps[key] = fn
            return fn

        return decorate

    def step(self, type: str, from_version: int) -> Upcaster | None:
        return self._steps.get((type, from_version))

    def __contains__(self, key: object) -> bool:
        return key in self._steps


def project_upcasters() -> UpcasterRegistry:
    """The upcasters of this project's own schema changes, one per version step.

    ========================  ==========================================================
    ``task.added`` 1 -> 2     the prerequisites' key ``dependencies`` became
                              ``depends_on`` (the field is still ``dependencies`` in
                              Python; only the stored name changed)
    ========================  ==========================================================
    """
    registry = UpcasterRegistry()
    registry.register("task.added", 1)(_task_added_depends_on)
    return registry


def _task_added_depends_on(raw: dict[str, Any]) -> dict[str, Any]:
    """task.added v1 -> v2: ``dependencies`` is stored as ``depends_on``."""
    if "dependencies" in raw:
        raw["depends_on"] = raw.pop("dependencies")
    return raw
