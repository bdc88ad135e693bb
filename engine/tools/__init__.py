"""The tools a model may call, their registry and the sandbox they run in.

``default_registry()`` holds every tool; ``default_registry().subset(TOOLSETS[role])``
gives one role its tools. ``execute(registry, name, arguments, ctx)`` runs a call and
always returns a ``ToolOutcome`` for a model mistake.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.tools.commands import COMMAND_TOOLS
from engine.tools.files import FILE_TOOLS
from engine.tools.registry import (
    DEFAULT_ALLOWLIST,
    Args,
    BlobSink,
    Tool,
    ToolContext,
    ToolOutcome,
    ToolRegistry,
    execute,
)
from engine.tools.sandbox import Sandbox
from engine.tools.workflow import WORKFLOW_TOOLS

_READ = ("read_file", "list_directory", "search_code")
_WRITE = ("create_file", "modify_file", "delete_file")

TOOLSETS: Mapping[str, tuple[str, ...]] = {
    "planning": (*_READ, "create_task_plan"),
    "coding": (*_READ, *_WRITE, "run_command", "complete_task"),
    "qa": (*_READ, "run_command", "approve_code", "report_issue"),
    "debugging": (*_READ, *_WRITE, "run_command", "complete_task"),
    "investigation": (*_READ, "run_command"),
}
"""A suggested tool set per phase role; each finishing role has its finishing tools."""


def default_registry() -> ToolRegistry:
    """A registry of every tool: files, commands and workflow."""
    return ToolRegistry((*FILE_TOOLS, *COMMAND_TOOLS, *WORKFLOW_TOOLS))


__all__ = [
    "DEFAULT_ALLOWLIST",
    "TOOLSETS",
    "Args",
    "BlobSink",
    "Sandbox",
    "Tool",
    "ToolContext",
    "ToolOutcome",
    "ToolRegistry",
    "default_registry",
    "execute",
]
