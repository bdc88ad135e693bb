"""The prose fallback: exactly one JSON call to an offered tool is extracted; nothing else is."""

from __future__ import annotations

import time

import pytest

from engine.model.textcalls import MAX_ATTEMPTS, MAX_TEXT, as_call, extract_tool_call, json_objects
from events.schema import ToolCall

OFFERED = ("create_file", "read_file", "run_command", "finish_task")

EXTRACTED = [
    (
        "fenced-json",
        "I'll create the entry point now.\n\n```json\n"
        '{"name": "create_file", "arguments": {"path": "app.py", "content": "print(\'hi\')\\n"}}\n'
        "```\n\nThis prints a greeting.",
        "create_file",
        {"path": "app.py", "content": "print('hi')\n"},
    ),
    (
        "fenced-no-language",
        'Let me look first.\n```\n{"name": "read_file", "arguments": {"path": "setup.py"}}\n```',
        "read_file",
        {"path": "setup.py"},
    ),
    (
        "bare-line",
        'To run the tests:\n{"name": "run_command", "arguments": {"command": ["pytest", "-q"]}}',
        "run_command",
        {"command": ["pytest", "-q"]},
    ),
    (
        "qwen-tool-call-tags",
        "<tool_call>\n"
        '{"name": "finish_task", "arguments": {"summary": "All tests pass."}}\n'
        "</tool_call>",
        "finish_task",
        {"summary": "All tests pass."},
    ),
    (
        "llama-parameters-spelling",
        '{"name": "read_file", "parameters": {"path": "README.md"}}',
        "read_file",
        {"path": "README.md"},
    ),
    (
        "braces-inside-strings",
        "Here is the module:\n"
        '{"name": "create_file", "arguments": {"path": "cfg.py", '
        '"content": "DEFAULTS = {\\"a\\": {\\"b\\": 1}}\\nprint(f\\"{DEFAULTS}\\")\\n"}}',
        "create_file",
        {"path": "cfg.py", "content": 'DEFAULTS = {"a": {"b": 1}}\nprint(f"{DEFAULTS}")\n'},
    ),
    (
        "other-json-beside-one-call",
        'The config will be {"debug": true, "port": 8080}. Writing it:\n'
        '{"name": "create_file", "arguments": {"path": "config.json", "content": "{}"}}',
        "create_file",
        {"path": "config.json", "content": "{}"},
    ),
    (
        "stray-brace-before-call",
        "The dict literal { is not closed in main.py; let me read it.\n"
        '{"name": "read_file", "arguments": {"path": "main.py"}}',
        "read_file",
        {"path": "main.py"},
    ),
]

NOT_EXTRACTED = [
    ("plain-prose", "I have finished the task. The app prints a greeting."),
    (
        "two-different-calls",
        '{"name": "read_file", "arguments": {"path": "a.py"}}\n'
        '{"name": "read_file", "arguments": {"path": "b.py"}}',
    ),
    (
        "the-same-call-twice",
        'First: {"name": "read_file", "arguments": {"path": "a.py"}}\n'
        'Again: {"name": "read_file", "arguments": {"path": "a.py"}}',
    ),
    (
        "tool-not-offered",
        '```json\n{"name": "delete_everything", "arguments": {"path": "/"}}\n```',
    ),
    (
        "json-that-is-not-a-call",
        'The file should contain:\n```json\n{"path": "app.py", "content": "print(1)"}\n```',
    ),
    ("name-without-arguments", '{"name": "create_file"}'),
    ("arguments-as-a-string", '{"name": "create_file", "arguments": "path=app.py"}'),
    ("extra-keys", '{"name": "read_file", "arguments": {"path": "a.py"}, "confidence": 0.9}'),
    (
        "broken-json-trailing-comma",
        '```json\n{"name": "read_file", "arguments": {"path": "a.py",}}\n```',
    ),
    ("truncated-json", 'Calling now: {"name": "create_file", "arguments": {"path": "app.py", "con'),
    (
        "python-dict-not-json",
        "{'name': 'read_file', 'arguments': {'path': 'a.py'}}",
    ),
    (
        "nested-in-a-wrapper",
        '{"tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}]}',
    ),
    (
        "openai-function-wrapper",
        '{"type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}}',
    ),
    ("package-json-with-a-name", '{"name": "create_file", "version": "1.0.0"}'),
    # Python's parser takes these; no model's JSON holds them (recorded as null, or a
    # ValueError that ended the run in a traceback)
    ("nan", '{"name": "read_file", "arguments": {"path": "a.py", "n": NaN}}'),
    ("infinity", '{"name": "read_file", "arguments": {"path": "a.py", "n": -Infinity}}'),
    ("a-5000-digit-integer", '{"name": "read_file", "arguments": {"n": ' + "1" * 5000 + "}}"),
    (
        "react-with-a-5000-digit-integer",
        'Action: read_file\nAction Input: {"path": "a.py", "n": ' + "1" * 5000 + "}",
    ),
    ("react-with-nan", 'Action: read_file\nAction Input: {"path": "a.py", "n": NaN}'),
]


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [case[1:] for case in EXTRACTED],
    ids=[case[0] for case in EXTRACTED],
)
def test_one_call_to_an_offered_tool_is_extracted(
    text: str, name: str, arguments: dict[str, object]
) -> None:
    assert extract_tool_call(text, OFFERED) == ToolCall(id="call_0", name=name, arguments=arguments)


@pytest.mark.parametrize(
    "text", [case[1] for case in NOT_EXTRACTED], ids=[case[0] for case in NOT_EXTRACTED]
)
def test_anything_else_stays_prose(text: str) -> None:
    assert extract_tool_call(text, OFFERED) is None


def test_nothing_is_extracted_when_no_tools_were_offered() -> None:
    assert extract_tool_call('{"name": "read_file", "arguments": {}}', ()) is None


def test_text_longer_than_the_bound_is_not_scanned() -> None:
    call = '{"name": "read_file", "arguments": {"path": "a.py"}}'
    assert extract_tool_call(call + " " * MAX_TEXT, OFFERED) is None


def test_only_a_bounded_number_of_braces_is_tried() -> None:
    call = '{"name": "read_file", "arguments": {"path": "a.py"}}'
    assert extract_tool_call("{ " * (MAX_ATTEMPTS - 1) + call, OFFERED) is not None
    assert extract_tool_call("{ " * MAX_ATTEMPTS + call, OFFERED) is None


def test_a_pathological_answer_costs_little() -> None:
    nasty = '{"a": "' + "x" * (MAX_TEXT // 2) + "{" * (MAX_TEXT // 2 - 10)
    started = time.perf_counter()
    assert extract_tool_call(nasty, OFFERED) is None
    assert time.perf_counter() - started < 2.0


def test_json_objects_skips_objects_nested_in_found_ones() -> None:
    text = 'a {"x": {"y": 1}} b {"z": [1, {"w": 2}]} c {broken'
    assert json_objects(text) == [{"x": {"y": 1}}, {"z": [1, {"w": 2}]}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"name": "ls", "arguments": {}}, ("ls", {})),
        ({"name": "ls", "parameters": {"a": 1}}, ("ls", {"a": 1})),
        ({"name": "", "arguments": {}}, None),
        ({"name": 3, "arguments": {}}, None),
        ({"name": "ls", "arguments": {}, "parameters": {}}, None),
        ({"name": "ls", "arguments": []}, None),
    ],
)
def test_as_call_accepts_exactly_the_call_shape(
    value: dict[str, object], expected: tuple[str, dict[str, object]] | None
) -> None:
    assert as_call(value) == expected


def test_react_action_lines_are_a_call_under_the_same_rule() -> None:
    from engine.model.textcalls import extract_tool_call

    text = 'Thought: write it.\nAction: create_file\nAction Input: {"path": "a.py", "content": "x"}'
    call = extract_tool_call(text, {"create_file"})
    assert call is not None and call.name == "create_file"
    assert call.arguments == {"path": "a.py", "content": "x"}
    assert extract_tool_call(text, {"read_file"}) is None, "a tool that was not offered"
    twice = text + "\n" + text
    assert extract_tool_call(twice, {"create_file"}) is None, "two calls stay prose"
    broken = 'Action: create_file\nAction Input: {"path": "a.py", "content": '
    assert extract_tool_call(broken, {"create_file"}) is None
    not_object = "Action: create_file\nAction Input: [1, 2]"
    assert extract_tool_call(not_object, {"create_file"}) is None
