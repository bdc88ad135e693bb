"""Tools as single definitions: an argument Struct, a handler, a description.

The JSON schema offered to the model is generated from the argument Struct with
``msgspec.json.schema`` and the model's arguments are converted into that same
Struct with ``msgspec.convert``, so what the model is told and what the handler
receives cannot drift apart.

Handlers never touch the log. They return a :class:`ToolOutcome` — the text for the
model, the files changed (with content hashes) and any follow-up events — and the
engine appends ``tool.executed`` and those events. :func:`execute` turns every
exception of a tool (a ``ToolError`` for a model mistake or a refusal, an OS error, a
bug) into an ``ok=False`` outcome: one bad call never takes the run down.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import msgspec

from engine.errors import ToolError
from engine.terminal import unicode_text
from engine.tools.sandbox import Sandbox
from events.schema import Event, FileChange

if TYPE_CHECKING:
    from engine.tools.confine import Confinement
    from engine.tools.snapshot import WorkspaceDigests


class BlobSink(Protocol):
    """Where tools store file contents: ``put`` returns the sha256 hex digest
    (``events.EventStore.put`` fits)."""

    def put(self, content: bytes) -> str: ...

    def put_many(self, contents: Iterable[bytes]) -> list[str]:
        """``put`` each, in one transaction where the store has them."""
        ...


DEFAULT_ALLOWLIST: tuple[tuple[str, ...], ...] = (
    ("python", "-m", "pytest"),
    ("python", "-m", "py_compile"),
)
"""Commands ``run_command`` accepts unless the configuration says otherwise."""


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Everything a handler may use; built by the engine for each call."""

    workspace: Path
    blobs: BlobSink
    task_id: str = ""
    """The task this conversation is about; "" outside a task (planning)."""
    tasks: Mapping[str, str] = field(default_factory=dict)
    """Existing tasks, id -> status, as projected before this call."""
    allowlist: tuple[tuple[str, ...], ...] = DEFAULT_ALLOWLIST
    command_timeout: float = 120.0
    output_cap: int = 20_000
    """Characters of command output kept (head and tail); the middle is elided."""
    max_read_bytes: int = 200_000
    max_search_results: int = 100
    confinement: Confinement | None = None
    """How commands run; None: ``tools.sandbox = "auto"`` (``engine.tools.confine``)."""
    digests: WorkspaceDigests | None = None
    """The run's cache of file digests, so a command's snapshot rehashes only what
    changed; None: hash every file."""
    known_as: str = ""
    """The workspace's path as the log records it, where it differs from
    ``workspace`` (a replay works in a scratch copy): see ``Sandbox``."""

    def sandbox(self) -> Sandbox:
        """The resolver for every path this call is given."""
        return Sandbox(self.workspace, known_as=self.known_as)


class ToolOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a tool did: ``result`` goes back to the model; ``events`` are appended
    by the engine after ``tool.executed``; ``finishes`` ends the task conversation."""

    ok: bool
    result: str = ""
    error: str = ""
    files_changed: tuple[FileChange, ...] = ()
    events: tuple[Event, ...] = ()
    finishes: bool = False

    @property
    def text(self) -> str:
        """The message for the model: the result, or the error and any output."""
        if self.ok:
            return self.result
        return f"error: {self.error}\n{self.result}" if self.result else f"error: {self.error}"


class Args(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of tool arguments: unknown fields are refused, so a misspelt optional
    argument is reported instead of silently ignored."""


A = TypeVar("A", bound=msgspec.Struct)


@dataclass(frozen=True)
class Tool(Generic[A]):
    """One tool. ``arguments`` is a frozen msgspec Struct whose fields carry their
    documentation (``msgspec.Meta(description=..., examples=[...])``); ``finishes``
    marks tools that end a task conversation when they succeed."""

    name: str
    description: str
    arguments: type[A]
    handler: Callable[[A, ToolContext], ToolOutcome]
    finishes: bool = False

    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments, with every ``$ref`` inlined (local
        model servers handle plain nested objects better than references)."""
        params: dict[str, Any] = msgspec.json.decode(_parameters(self.arguments))
        return params

    def schema(self) -> dict[str, Any]:
        """The function schema offered to the model."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters(),
            },
        }

    def example(self) -> dict[str, Any]:
        """Arguments built from the first example of each field that has one."""
        props = self.parameters().get("properties", {})
        return {name: p["examples"][0] for name, p in props.items() if p.get("examples")}

    def convert(self, arguments: Mapping[str, Any]) -> A:
        """The model's arguments as the Struct; ``ToolError`` naming the field."""
        try:
            return msgspec.convert(dict(arguments), type=self.arguments, strict=False)
        except msgspec.ValidationError as e:
            raise ToolError(
                f"invalid arguments for {self.name}: {e}. Expected: {self._signature()}"
            ) from e

    def _signature(self) -> str:
        params = self.parameters()
        required = set(params.get("required", ()))
        return ", ".join(
            f"{name} ({_type_name(p)}{', required' if name in required else ''})"
            for name, p in params.get("properties", {}).items()
        )


def _inline(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _type_name(prop: Mapping[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_name(p) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"array of {_type_name(prop.get('items', {}))}"
    return str(kind)


@functools.cache
def _parameters(arguments: type[msgspec.Struct]) -> bytes:
    # msgspec.json.schema inspects the Struct's annotations every time (about 0.7 ms
    # a tool, paid by every subset() and so every task); kept encoded, so that each
    # caller still gets dicts of its own
    schema = msgspec.json.schema(arguments)
    defs = schema.get("$defs", {})
    params: dict[str, Any] = _inline(schema, defs)
    params.pop("title", None)
    params.pop("description", None)  # the tool's description says it once
    return msgspec.json.encode(params)


class ToolRegistry:
    """A named set of tools; ``subset`` gives the tools of one role."""

    def __init__(
        self, tools: Iterable[Tool[Any]], schemas: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"tool {tool.name!r} registered twice")
            self._tools[tool.name] = tool
        # Generated once: it is sent with every model request. A subset shares its
        # parent's, so that a role's requests send the very same schema objects
        # (the recorder encodes each set of schemas once).
        known = schemas or {}
        self._schemas = [known.get(name) or tool.schema() for name, tool in self._tools.items()]
        self._subsets: dict[tuple[str, ...], ToolRegistry] = {}
        """The subsets made, by their names: a registry never changes, and the engine
        asks for a role's tools at every consultation."""

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[Any]]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> tuple[str, ...]:
        """Tool names in registration order."""
        return tuple(self._tools)

    def get(self, name: str) -> Tool[Any]:
        """The tool called ``name``; ``ToolError`` listing the available ones."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(
                f"unknown tool {name!r}; available tools: {', '.join(self._tools) or 'none'}"
            )
        return tool

    def schemas(self) -> list[dict[str, Any]]:
        """The function schemas of every tool, for the model request."""
        return list(self._schemas)

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A registry of only ``names`` (a role's tools); ``ValueError`` for a name
        that is not registered, since that is a configuration mistake."""
        wanted = tuple(names)
        made = self._subsets.get(wanted)
        if made is not None:
            return made
        missing = [n for n in wanted if n not in self._tools]
        if missing:
            raise ValueError(
                f"no such tools: {', '.join(missing)}; registered: {', '.join(self._tools)}"
            )
        by_name = dict(zip(self._tools, self._schemas, strict=True))
        made = self._subsets[wanted] = ToolRegistry((self._tools[n] for n in wanted), by_name)
        return made


def execute(
    registry: ToolRegistry,
    name: str,
    arguments: Mapping[str, Any] | str | None,
    ctx: ToolContext,
) -> ToolOutcome:
    """Run one tool call. Model mistakes (unknown tool, bad arguments, refused path,
    failing command), OS errors and any other exception a handler raises come back as
    ``ok=False``, the exception named in ``error``."""
    try:
        tool = registry.get(name)
        args = tool.convert(_as_mapping(arguments))
        outcome = tool.handler(args, ctx)
    except ToolError as e:
        return ToolOutcome(ok=False, error=_capped(str(e)))
    except OSError as e:  # the disk, not the model, but still no reason to crash a run
        return ToolOutcome(
            ok=False, error=_capped(f"{name}: {e.strerror or e} ({e.filename or ''})")
        )
    except Exception as e:
        # A handler bug or an input nobody foresaw: recorded as this call's failure, so
        # the run goes on and a resume does not meet the same crash again.
        return ToolOutcome(
            ok=False, error=_capped(f"{name} failed unexpectedly: {type(e).__name__}: {e}")
        )
    if not isinstance(outcome, ToolOutcome):
        raise TypeError(f"tool {name!r} returned {type(outcome).__name__}, not ToolOutcome")
    finishes = tool.finishes and outcome.ok
    if outcome.finishes != finishes:
        outcome = msgspec.structs.replace(outcome, finishes=finishes)
    result, error = unicode_text(outcome.result), unicode_text(outcome.error)
    if result is not outcome.result or error is not outcome.error:
        outcome = msgspec.structs.replace(outcome, result=result, error=error)
    return outcome


ERROR_CHARS = 2_000
"""The longest error a tool call records: an error goes back to the model and into
the log whole (never moved out to a blob), and many quote the model's own argument
(a 1 MB pattern made a 4 MB error)."""


def _capped(error: str) -> str:
    if len(error) <= ERROR_CHARS:
        return error
    return f"{error[:ERROR_CHARS]}… [{len(error) - ERROR_CHARS:,} more characters cut]"


def _as_mapping(arguments: Mapping[str, Any] | str | None) -> Mapping[str, Any]:
    # Some servers hand arguments over as a JSON string; accept it once here.
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ToolError(f"arguments are not valid JSON: {e}") from e
        arguments = decoded
    if not isinstance(arguments, Mapping):
        raise ToolError(f"arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments
