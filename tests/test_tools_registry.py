"""The registry: one definition per tool, schemas generated from it, arguments
validated against it, and execute() that turns model mistakes into outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
import pytest

from engine.errors import ToolError
from engine.tools import (
    TOOLSETS,
    Args,
    Tool,
    ToolContext,
    ToolOutcome,
    ToolRegistry,
    default_registry,
    execute,
)
from events import MemoryEventStore

REGISTRY = default_registry()
TOOL_NAMES = REGISTRY.names

# The issue's list of tools that must exist.
REQUIRED_TOOLS = {
    "read_file",
    "list_directory",
    "search_code",
    "create_file",
    "modify_file",
    "delete_file",
    "run_command",
    "create_task_plan",
    "approve_code",
    "report_issue",
    "complete_task",
}
FINISHING = {"create_task_plan", "complete_task", "approve_code", "report_issue"}
JSON_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


def walk(node: Any) -> list[dict[str, Any]]:
    """Every schema object nested in ``node``."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for key in ("properties",):
            for sub in node.get(key, {}).values():
                found += walk(sub)
        for key in ("items",):
            if key in node:
                found += walk(node[key])
        for sub in node.get("anyOf", []):
            found += walk(sub)
    return found


def test_the_default_registry_has_every_tool_of_the_issue() -> None:
    assert set(TOOL_NAMES) >= REQUIRED_TOOLS
    assert {t.name for t in REGISTRY if t.finishes} == FINISHING


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_every_generated_schema_is_a_valid_function_schema(name: str) -> None:
    schema = REGISTRY.get(name).schema()
    json.dumps(schema)  # serialisable as sent
    assert set(schema) == {"type", "function"} and schema["type"] == "function"
    function = schema["function"]
    assert set(function) == {"name", "description", "parameters"}
    assert function["name"] == name
    assert function["description"].strip()
    params = function["parameters"]
    assert params["type"] == "object"
    assert params["additionalProperties"] is False
    assert set(params.get("required", [])) <= set(params["properties"])
    assert "$ref" not in json.dumps(params) and "$defs" not in params
    for prop_name, prop in params["properties"].items():
        assert prop.get("description", "").strip(), f"{name}.{prop_name} is undocumented"
    for node in walk(params):
        assert "anyOf" in node or node.get("type") in JSON_TYPES, node


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_omitting_a_required_argument_names_it(name: str) -> None:
    tool = REGISTRY.get(name)
    example = tool.example()
    for field in tool.parameters().get("required", []):
        partial = {k: v for k, v in example.items() if k != field}
        with pytest.raises(ToolError, match=f"missing required field `{field}`"):
            tool.convert(partial)


# What each tool's example needs to find in the workspace and among the tasks.
STATUS_FOR = {
    "complete_task": "in_progress",
    "approve_code": "qa_pending",
    "report_issue": "qa_pending",
}


@pytest.fixture
def example_workspace(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def f():\n    return 1\n")
    (tmp_path / "src" / "obsolete.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    return tmp_path


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_every_handler_accepts_its_schema_example(name: str, example_workspace: Path) -> None:
    tool = REGISTRY.get(name)
    example = tool.example()
    assert set(tool.parameters().get("required", [])) <= set(example), "example misses a field"
    ctx = ToolContext(
        workspace=example_workspace,
        blobs=MemoryEventStore(),
        tasks={"t1": STATUS_FOR.get(name, "in_progress")},
        task_id="t1" if name in STATUS_FOR else "",
    )
    outcome = execute(REGISTRY, name, example, ctx)
    assert outcome.ok, outcome.error
    assert outcome.finishes is tool.finishes


def test_an_unknown_tool_is_an_outcome_listing_the_available_ones(tmp_path: Path) -> None:
    outcome = execute(
        REGISTRY, "rm_rf", {}, ToolContext(workspace=tmp_path, blobs=MemoryEventStore())
    )
    assert not outcome.ok
    assert "unknown tool 'rm_rf'" in outcome.error
    assert all(name in outcome.error for name in TOOL_NAMES)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "missing required field `path`"),
        ({"path": 3}, "Expected `str`, got `int` - at `$.path`"),
        ({"path": "a", "mode": "fast"}, "unknown field `mode`"),
        ({"path": ""}, "length >= 1 - at `$.path`"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_arguments_are_an_outcome_naming_the_field(
    tmp_path: Path, arguments: Any, error: str
) -> None:
    outcome = execute(
        REGISTRY, "read_file", arguments, ToolContext(workspace=tmp_path, blobs=MemoryEventStore())
    )
    assert not outcome.ok and error in outcome.error
    if isinstance(arguments, dict) and arguments:
        assert "Expected: path (string, required), start_line (integer)" in outcome.error


def test_arguments_may_come_as_a_json_string_and_loosely_typed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    ctx = ToolContext(workspace=tmp_path, blobs=MemoryEventStore())
    outcome = execute(REGISTRY, "read_file", '{"path": "a.txt", "start_line": "2"}', ctx)
    assert outcome.ok and outcome.result == "two\n"


def test_subset_gives_a_role_only_its_tools() -> None:
    qa = REGISTRY.subset(TOOLSETS["qa"])
    assert qa.names == TOOLSETS["qa"]
    assert "create_file" not in qa and "approve_code" in qa
    assert [s["function"]["name"] for s in qa.schemas()] == list(TOOLSETS["qa"])
    with pytest.raises(ValueError, match="no such tools: fly"):
        REGISTRY.subset(["read_file", "fly"])


def test_a_subset_sends_its_parent_s_schema_objects() -> None:
    # the recorder encodes each set of schema objects once, so a role's requests
    # must send the same objects every time
    parent = {s["function"]["name"]: s for s in REGISTRY.schemas()}
    first, second = REGISTRY.subset(TOOLSETS["qa"]), REGISTRY.subset(TOOLSETS["qa"])
    for one, other in zip(first.schemas(), second.schemas(), strict=True):
        assert one is other is parent[one["function"]["name"]]


def test_every_toolset_names_registered_tools_and_finishing_roles_can_finish() -> None:
    for role, names in TOOLSETS.items():
        assert set(names) <= set(TOOL_NAMES), role
    for role in ("planning", "coding", "qa", "debugging"):
        assert FINISHING & set(TOOLSETS[role]), role


# -- execute with tools of the test's own ---------------------------------------------------


class Nothing(Args, frozen=True, kw_only=True):
    pass


class Shout(Args, frozen=True, kw_only=True):
    word: Annotated[str, msgspec.Meta(description="what to shout", examples=["hey"])]


def _bug(args: Nothing, ctx: ToolContext) -> ToolOutcome:
    raise ZeroDivisionError("a genuine bug")


def _disk(args: Nothing, ctx: ToolContext) -> ToolOutcome:
    raise PermissionError(13, "Permission denied", "x.txt")


def _shout(args: Shout, ctx: ToolContext) -> ToolOutcome:
    if args.word == "no":
        raise ToolError("will not shout no")
    return ToolOutcome(ok=True, result=args.word.upper())


CUSTOM = ToolRegistry(
    [
        Tool("bug", "raises", Nothing, _bug),
        Tool("disk", "OS error", Nothing, _disk),
        Tool("shout", "shouts", Shout, _shout, finishes=True),
    ]
)


def test_a_handler_that_raises_is_a_failed_outcome_naming_the_exception(tmp_path: Path) -> None:
    # a bug, or an input nobody foresaw: the call fails, the run goes on
    outcome = execute(CUSTOM, "bug", {}, ToolContext(workspace=tmp_path, blobs=MemoryEventStore()))
    assert not outcome.ok
    assert outcome.error == "bug failed unexpectedly: ZeroDivisionError: a genuine bug"


def test_an_os_error_is_an_outcome(tmp_path: Path) -> None:
    outcome = execute(CUSTOM, "disk", {}, ToolContext(workspace=tmp_path, blobs=MemoryEventStore()))
    assert not outcome.ok and "Permission denied" in outcome.error and "x.txt" in outcome.error


def test_a_finishing_tool_finishes_only_when_it_succeeds(tmp_path: Path) -> None:
    ctx = ToolContext(workspace=tmp_path, blobs=MemoryEventStore())
    assert execute(CUSTOM, "shout", {"word": "hey"}, ctx) == ToolOutcome(
        ok=True, result="HEY", finishes=True
    )
    refused = execute(CUSTOM, "shout", {"word": "no"}, ctx)
    assert refused == ToolOutcome(ok=False, error="will not shout no", finishes=False)
    assert refused.text == "error: will not shout no"


def test_a_tool_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        ToolRegistry([Tool("x", "a", Nothing, _bug), Tool("x", "b", Nothing, _bug)])
