"""A run's projected state as plain JSON types, for every face that shows it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from projections import RunState
from projections.sequence import Appended


def _builtins(obj: Any) -> Any:
    # the projections' persistent containers: a Mapping or a sequence to JSON
    if isinstance(obj, Mapping):
        return dict(obj.items())
    if isinstance(obj, Appended):
        return list(obj)
    raise NotImplementedError(f"cannot show {type(obj).__name__}")


def state_document(projected: RunState) -> dict[str, Any]:
    """The state as plain JSON types: run id, version, pipeline, orchestration."""
    document = {
        "run_id": projected.run_id,
        "version": projected.version,
        "pipeline": projected.pipeline,
        "orchestration": projected.orchestration,
    }
    result: dict[str, Any] = msgspec.to_builtins(document, enc_hook=_builtins)
    result["orchestration"]["total_tokens"] = projected.orchestration.total_tokens
    return result
