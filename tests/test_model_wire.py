"""The wire formats: request bodies for Ollama and OpenAI, and replies parsed into one shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.errors import ModelHTTPError, ModelResponseInvalid, ModelUnavailable
from engine.model.wire import (
    ChatOptions,
    ModelInfo,
    Overflow,
    chat_body,
    error_text,
    ollama_message,
    openai_message,
    parse_chat,
    parse_models,
    parse_ollama,
    parse_ollama_stream,
    parse_openai,
    parse_openai_stream,
    server_sent_data,
)
from events.schema import Message, ToolCall, Usage

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "create_file",
            "description": "Create a file in the workspace.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    }
]

CALL = ToolCall(id="call_7", name="create_file", arguments={"path": "app.py", "content": "x = 1"})

CONVERSATION = [
    Message(role="system", content="You write Python."),
    Message(role="user", content="Create app.py"),
    Message(role="assistant", tool_calls=(CALL,)),
    Message(role="tool", content="created app.py", tool_call_id="call_7", name="create_file"),
]


def ollama_reply(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "model": "qwen2.5:14b",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": {"role": "assistant", "content": "Hello"},
        "done_reason": "stop",
        "done": True,
        "total_duration": 885095291,
        "load_duration": 3753500,
        "prompt_eval_count": 122,
        "prompt_eval_duration": 328493000,
        "eval_count": 33,
        "eval_duration": 552222000,
    }
    body.update(overrides)
    return json.dumps(body).encode()


def openai_reply(message: dict[str, Any], **overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1721680408,
        "model": "qwen2.5-coder:32b",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 57, "completion_tokens": 17, "total_tokens": 74},
    }
    body.update(overrides)
    return json.dumps(body).encode()


# -- requests -------------------------------------------------------------------------------


def test_ollama_messages_carry_arguments_as_objects_and_results_by_tool_name() -> None:
    assistant, tool = (ollama_message(m) for m in CONVERSATION[2:])
    assert assistant == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "function": {
                    "name": "create_file",
                    "arguments": {"path": "app.py", "content": "x = 1"},
                }
            }
        ],
    }
    assert tool == {"role": "tool", "content": "created app.py", "tool_name": "create_file"}


def test_openai_messages_carry_arguments_as_json_strings_and_results_by_call_id() -> None:
    assistant, tool = (openai_message(m) for m in CONVERSATION[2:])
    assert assistant["content"] is None
    (call,) = assistant["tool_calls"]
    assert call["id"] == "call_7" and call["type"] == "function"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"path": "app.py", "content": "x = 1"}
    assert tool == {"role": "tool", "content": "created app.py", "tool_call_id": "call_7"}


def test_system_and_user_messages_are_the_same_in_both_formats() -> None:
    for message in CONVERSATION[:2]:
        expected = {"role": message.role, "content": message.content}
        assert ollama_message(message) == expected == openai_message(message)


def test_ollama_body_puts_options_under_options_and_always_says_whether_to_stream() -> None:
    options = ChatOptions(temperature=0.1, num_ctx=8192, seed=42)
    body = chat_body("ollama", "qwen2.5:14b", CONVERSATION, TOOLS, options)
    assert body["stream"] is False
    assert body["options"] == {"temperature": 0.1, "num_ctx": 8192, "seed": 42}
    assert body["tools"] == TOOLS
    assert len(body["messages"]) == 4
    assert chat_body("ollama", "m", CONVERSATION, stream=True)["stream"] is True


def test_openai_body_puts_temperature_and_seed_at_top_level_and_drops_num_ctx() -> None:
    options = ChatOptions(temperature=0.1, num_ctx=8192, seed=42)
    body = chat_body("openai", "qwen2.5-coder:32b", CONVERSATION, TOOLS, options)
    assert body["temperature"] == 0.1 and body["seed"] == 42
    assert "num_ctx" not in json.dumps(body) and "options" not in body
    assert "stream" not in body


def test_a_streamed_openai_body_asks_for_the_usage_in_the_last_chunk() -> None:
    body = chat_body("openai", "m", CONVERSATION, stream=True)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_unset_options_and_absent_tools_are_not_sent() -> None:
    for api in ("ollama", "openai"):
        body = chat_body(api, "m", CONVERSATION[:2])
        assert set(body) <= {"model", "messages", "stream"}


# -- non-streamed replies ---------------------------------------------------------------------


def test_ollama_reply_gives_usage_from_eval_counts_and_duration_from_nanoseconds() -> None:
    reply = parse_ollama(ollama_reply())
    assert reply.content == "Hello"
    assert reply.usage == Usage(prompt_tokens=122, completion_tokens=33)
    assert reply.duration_ms == pytest.approx(885.095291)
    assert reply.done_reason == "stop"
    assert reply.model_identity == "qwen2.5:14b"
    assert reply.tool_calls == () and not reply.extracted_from_text


def test_ollama_tool_calls_get_deterministic_ids_when_the_server_sends_none() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"function": {"index": 0, "name": "read_file", "arguments": {"path": "a.py"}}},
            {"function": {"index": 1, "name": "read_file", "arguments": {"path": "b.py"}}},
        ],
    }
    first = parse_ollama(ollama_reply(message=message))
    assert [c.id for c in first.tool_calls] == ["call_0", "call_1"]
    assert first.tool_calls[1].arguments == {"path": "b.py"}
    assert parse_ollama(ollama_reply(message=message)) == first


def test_ollama_tool_call_ids_from_the_server_are_kept() -> None:
    message = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_abc", "function": {"name": "ls", "arguments": {}}}],
    }
    assert parse_ollama(ollama_reply(message=message)).tool_calls[0].id == "call_abc"


@pytest.mark.parametrize("garbage", ["\x00" * 1_000_000, "x" * 129, "a\nb", "\u202e"])
def test_a_tool_call_id_no_server_means_is_made_as_for_none(garbage: str) -> None:
    """A megabyte-long id went into the answer's event and into every request after
    it (the conversation echoes it back): a 71 MB log in nine answers."""
    call = {"id": garbage, "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    assert parse_openai(openai_reply(message)).tool_calls[0].id == "call_0"
    kept = {**call, "id": "x" * 128}
    kept_message = {**message, "tool_calls": [kept]}
    assert parse_openai(openai_reply(kept_message)).tool_calls[0].id == "x" * 128


def test_openai_reply_decodes_string_arguments_and_reads_usage() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_Xy1",
                "type": "function",
                "function": {
                    "name": "create_file",
                    "arguments": '{"path": "app.py", "content": "x"}',
                },
            }
        ],
    }
    reply = parse_openai(
        openai_reply(message, choices=[{"message": message, "finish_reason": "tool_calls"}])
    )
    assert reply.tool_calls == (
        ToolCall(id="call_Xy1", name="create_file", arguments={"path": "app.py", "content": "x"}),
    )
    assert reply.content == ""
    assert reply.done_reason == "tool_calls"
    assert reply.usage == Usage(prompt_tokens=57, completion_tokens=17)
    assert reply.model_identity == "qwen2.5-coder:32b@fp_44709d6fcb"
    assert reply.duration_ms == 0.0  # not sent by OpenAI servers: the client measures it


def test_openai_reply_without_usage_or_fingerprint_has_zero_usage_and_bare_identity() -> None:
    body = openai_reply({"role": "assistant", "content": "hi"}, usage=None, system_fingerprint=None)
    reply = parse_openai(body)
    assert reply.usage == Usage()
    assert reply.model_identity == "qwen2.5-coder:32b"


def test_both_argument_shapes_normalise_to_the_same_call() -> None:
    args = {"path": "app.py", "content": "print('{}')"}
    ollama = parse_ollama(
        ollama_reply(
            message={
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "create_file", "arguments": args}}],
            }
        )
    )
    openai = parse_openai(
        openai_reply(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_0",
                        "type": "function",
                        "function": {"name": "create_file", "arguments": json.dumps(args)},
                    }
                ],
            }
        )
    )
    assert ollama.tool_calls == openai.tool_calls


def test_empty_string_arguments_mean_no_arguments() -> None:
    message = {
        "role": "assistant",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "ls", "arguments": ""}}
        ],
    }
    assert parse_openai(openai_reply(message)).tool_calls[0].arguments == {}


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("", '{"path": "a.py"}', "empty function name"),
        ("   ", "{}", "empty function name"),
        ("create_file", '{"path": "a.py", "content": ', "not valid JSON"),
        ("create_file", "{'path': 'a.py'}", "not valid JSON"),
        ("create_file", '["a.py"]', "must be a JSON object"),
        ("create_file", '"a.py"', "must be a JSON object"),
    ],
    ids=["empty", "blank", "truncated", "python-quotes", "array", "string"],
)
def test_unusable_tool_calls_are_refused_with_a_message_for_the_model(
    name: str, arguments: str, says: str
) -> None:
    message = {
        "role": "assistant",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}
        ],
    }
    with pytest.raises(ModelResponseInvalid, match=says) as caught:
        parse_openai(openai_reply(message))
    if name.strip():
        assert repr(name) in str(caught.value)  # the model is told which call was wrong


def test_ollama_refuses_an_empty_tool_name_too() -> None:
    message = {"role": "assistant", "tool_calls": [{"function": {"name": "", "arguments": {}}}]}
    with pytest.raises(ModelResponseInvalid, match="empty function name"):
        parse_ollama(ollama_reply(message=message))


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"model": "x", "message": {"content": "trunc', b"[1, 2]"],
    ids=["empty", "text", "truncated", "array"],
)
def test_a_body_that_is_not_a_chat_reply_is_invalid(body: bytes) -> None:
    for api in ("ollama", "openai"):
        with pytest.raises(ModelResponseInvalid):
            parse_chat(api, body)


def test_an_openai_reply_without_choices_is_invalid() -> None:
    with pytest.raises(ModelResponseInvalid, match="no choices"):
        parse_openai(openai_reply({}, choices=[]))


def test_an_ollama_reply_without_message_is_invalid_and_an_error_body_is_an_http_error() -> None:
    with pytest.raises(ModelResponseInvalid, match="no message"):
        parse_ollama(ollama_reply(message=None))
    with pytest.raises(ModelHTTPError, match="model runner"):
        parse_ollama(json.dumps({"error": "model runner has unexpectedly stopped"}).encode())


# -- streamed replies -------------------------------------------------------------------------


def chunk(content: str = "", done: bool = False, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "model": "qwen2.5:14b",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": {"role": "assistant", "content": content},
        "done": done,
    }
    body.update(extra)
    return json.dumps(body).encode()


FINAL = {
    "done_reason": "stop",
    "total_duration": 4883583458,
    "prompt_eval_count": 26,
    "eval_count": 282,
}


def test_a_stream_is_assembled_and_its_last_chunk_gives_the_statistics() -> None:
    lines = [chunk("The"), chunk(" sky"), b"", chunk(" is blue."), chunk("", True, **FINAL)]
    reply = parse_ollama_stream(lines)
    assert reply.content == "The sky is blue."
    assert reply.usage == Usage(prompt_tokens=26, completion_tokens=282)
    assert reply.duration_ms == pytest.approx(4883.583458)
    assert reply.done_reason == "stop"


def test_tool_calls_in_a_stream_arrive_whole_and_are_numbered_across_chunks() -> None:
    calls_a = [{"function": {"name": "read_file", "arguments": {"path": "a.py"}}}]
    calls_b = [{"function": {"name": "read_file", "arguments": {"path": "b.py"}}}]
    lines = [
        chunk("", message={"role": "assistant", "content": "", "tool_calls": calls_a}),
        chunk("", message={"role": "assistant", "content": "", "tool_calls": calls_b}),
        chunk("", True, **FINAL),
    ]
    reply = parse_ollama_stream(lines)
    assert [(c.id, c.arguments["path"]) for c in reply.tool_calls] == [
        ("call_0", "a.py"),
        ("call_1", "b.py"),
    ]


def test_a_stream_that_stops_before_done_is_a_lost_connection_not_an_answer() -> None:
    with pytest.raises(ModelUnavailable, match="before its final chunk"):
        parse_ollama_stream([chunk("The"), chunk(" sky")])


def test_an_error_line_in_a_stream_is_a_retryable_http_error() -> None:
    lines = [chunk("The"), json.dumps({"error": "out of memory"}).encode()]
    with pytest.raises(ModelHTTPError, match="out of memory") as caught:
        parse_ollama_stream(lines)
    assert caught.value.retryable


def test_a_malformed_line_in_a_stream_is_invalid() -> None:
    with pytest.raises(ModelResponseInvalid):
        parse_ollama_stream([chunk("The"), b'{"model": "x", "mess'])


def test_streamed_and_whole_replies_parse_to_the_same_reply() -> None:
    whole = parse_ollama(
        ollama_reply(message={"role": "assistant", "content": "Hi there"}, **FINAL)
    )
    streamed = parse_ollama_stream([chunk("Hi"), chunk(" there"), chunk("", True, **FINAL)])
    assert whole == streamed


# -- discovery and errors --------------------------------------------------------------------


def test_model_lists_from_both_servers() -> None:
    tags = {"models": [{"name": "qwen2.5:14b", "model": "qwen2.5:14b", "digest": "abc"}]}
    assert parse_models("ollama", json.dumps(tags)) == (
        ModelInfo(name="qwen2.5:14b", digest="abc"),
    )
    models = {"object": "list", "data": [{"id": "gpt-x", "object": "model"}]}
    assert parse_models("openai", json.dumps(models)) == (ModelInfo(name="gpt-x"),)
    with pytest.raises(ModelResponseInvalid):
        parse_models("openai", b"<html>")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b'{"error": "model \\"x\\" not found, try pulling it first"}', 'model "x" not found'),
        (
            b'{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}',
            "Rate limit reached",
        ),
        (b"Bad Gateway\n", "Bad Gateway"),
    ],
    ids=["ollama", "openai", "plain"],
)
def test_error_text_finds_the_message_in_each_server_s_error_body(body: bytes, text: str) -> None:
    assert error_text(body).startswith(text)


# -- streamed OpenAI replies (server-sent events) ----------------------------------------------


def sse(*payloads: dict[str, Any] | str) -> list[bytes]:
    """Each payload as one server-sent event: a ``data:`` line, then a blank line."""
    lines: list[bytes] = []
    for payload in payloads:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        lines += [f"data: {text}".encode(), b""]
    return lines


def delta(finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "qwen2.5-coder:32b",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


USAGE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "model": "qwen2.5-coder:32b",
    "choices": [],
    "usage": {"prompt_tokens": 57, "completion_tokens": 17, "total_tokens": 74},
}


def test_an_openai_stream_is_assembled_and_its_usage_chunk_gives_the_counts() -> None:
    lines = sse(
        delta(role="assistant", content=""),
        delta(content="The"),
        delta(content=" sky"),
        delta(content=" is blue."),
        delta("stop"),
        USAGE_CHUNK,
        "[DONE]",
    )
    reply = parse_openai_stream([b": keep-alive", b"", *lines])
    assert reply.content == "The sky is blue."
    assert reply.usage == Usage(prompt_tokens=57, completion_tokens=17)
    assert reply.done_reason == "stop"
    assert reply.model_identity == "qwen2.5-coder:32b@fp_44709d6fcb"


def test_openai_tool_call_deltas_are_assembled_by_index_even_interleaved() -> None:
    def call(index: int, **function: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": index, "function": function}
        if "name" in function:
            entry.update(id=f"call_{index}x", type="function")
        return delta(tool_calls=[entry])

    lines = sse(
        call(0, name="create_file", arguments=""),
        call(1, name="read_file", arguments='{"pa'),
        call(0, arguments='{"path": "a.py", '),
        call(1, arguments='th": "b.py"}'),
        call(0, arguments='"content": "x = 1\\n"}'),
        delta("tool_calls"),
        "[DONE]",
    )
    reply = parse_openai_stream(lines)
    assert [(c.id, c.name, c.arguments) for c in reply.tool_calls] == [
        ("call_0x", "create_file", {"path": "a.py", "content": "x = 1\n"}),
        ("call_1x", "read_file", {"path": "b.py"}),
    ]
    assert reply.done_reason == "tool_calls"


def test_each_piece_of_a_stream_is_told_as_it_is_parsed() -> None:
    pieces: list[str] = []
    parse_openai_stream(
        sse(delta(content="a"), delta(content="b "), delta("stop"), "[DONE]"), pieces.append
    )
    parse_ollama_stream([chunk("c"), chunk("", True, **FINAL)], pieces.append)
    assert pieces == ["a", "b ", "c"]


def test_an_openai_stream_that_stops_before_done_is_a_lost_connection() -> None:
    with pytest.raises(ModelUnavailable, match=r"\[DONE\]"):
        parse_openai_stream(sse(delta(content="The"), delta("stop"), USAGE_CHUNK))


def test_an_error_event_in_an_openai_stream_is_a_retryable_http_error() -> None:
    lines = sse(delta(content="The"), {"error": {"message": "out of memory", "code": 500}})
    with pytest.raises(ModelHTTPError, match="out of memory") as caught:
        parse_openai_stream(lines)
    assert caught.value.retryable


def test_a_malformed_event_in_an_openai_stream_is_invalid() -> None:
    with pytest.raises(ModelResponseInvalid):
        parse_openai_stream([b'data: {"choices": [', b""])


def test_server_sent_data_joins_multi_line_events_and_skips_other_fields() -> None:
    lines = [b"event: message", b"data: one", b"data:two", b"", b"id: 7", b"data: three\r"]
    assert list(server_sent_data(lines)) == [b"one\ntwo", b"three"]


def test_server_sent_events_may_end_their_lines_in_cr_alone() -> None:
    """The format allows CR, LF or CRLF; a stream of CR-ended lines arrives as one
    "line" (the client splits at LF) and was an invalid answer."""
    assert list(server_sent_data([b"data: one\r\rdata: two\rdata: 2\r\r"])) == [
        b"one",
        b"two\n2",
    ]
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    stream = "".join(f"data: {json.dumps(e)}\r\r" for e in events) + "data: [DONE]\r\r"
    reply = parse_openai_stream([stream.encode()])
    assert (reply.content, reply.done_reason) == ("Hello", "stop")


def test_streamed_and_whole_openai_replies_parse_to_the_same_reply() -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
        }
    ]
    whole = parse_openai(
        openai_reply({"role": "assistant", "content": "Hi there", "tool_calls": calls})
    )
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "read_file"}}
    rest = {"index": 0, "function": {"arguments": '{"path": "a.py"}'}}
    streamed = parse_openai_stream(
        sse(
            delta(role="assistant", content="Hi"),
            delta(content=" there"),
            delta(tool_calls=[first]),
            delta(tool_calls=[rest]),
            delta("stop"),
            USAGE_CHUNK,
            "[DONE]",
        )
    )
    assert whole == streamed


def _nested(depth: int) -> str:
    return "[" * depth + '"x"' + "]" * depth


def _ollama_call(arguments: str) -> str:
    return (
        '{"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": '
        '[{"function": {"name": "create_file", "arguments": ' + arguments + '}}]}, "done": true}'
    )


def _openai_call(arguments: str) -> str:
    return (
        '{"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": '
        '[{"id": "c1", "type": "function", "function": {"name": "create_file", '
        '"arguments": ' + arguments + '}}]}, "finish_reason": "tool_calls"}]}'
    )


@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # nested past what a recursive decoder can hold: a RecursionError, before
        ('{"path": "a.py", "content": ' + _nested(20_000) + "}", "nests too deeply"),
        (json.dumps('{"content": ' + _nested(20_000) + "}"), "nest more than 32 levels"),
        ('{"content": ' + _nested(32) + "}", "nest more than 32 levels"),
        (json.dumps('{"content": ' + _nested(32) + "}"), "nest more than 32 levels"),
    ],
    ids=["object-20000", "string-20000", "object-33", "string-33"],
)
def test_arguments_nested_too_deeply_are_an_invalid_answer_not_a_crash(
    api: str, arguments: str, message: str
) -> None:
    body = (_ollama_call if api == "ollama" else _openai_call)(arguments)
    with pytest.raises(ModelResponseInvalid, match=message):
        parse_chat(api, body)  # type: ignore[arg-type]


def test_arguments_nested_32_levels_are_taken() -> None:
    reply = parse_chat("ollama", _ollama_call('{"content": ' + _nested(31) + "}"))
    assert reply.tool_calls[0].name == "create_file"


def test_a_call_written_in_text_that_nests_too_deeply_is_no_call() -> None:
    from engine.model.textcalls import extract_tool_call

    for depth in (33, 20_000):
        text = '{"name": "create_file", "arguments": {"content": ' + _nested(depth) + "}}"
        assert extract_tool_call(text, ["create_file"]) is None
        action = "Action: create_file\nAction Input: " + '{"c": ' + _nested(depth) + "}"
        assert extract_tool_call(action, ["create_file"]) is None


NONSENSE = [-5, 10**30, 10**400, None, 1.5, "12", True]
"""Counts and durations no server means: negative, past 64 bits, past a float, and
no whole number (null, a fraction, a string, a boolean: refused as the wrong type,
they made the whole answer invalid)."""


@pytest.mark.parametrize("number", NONSENSE)
def test_a_count_or_duration_that_is_no_number_is_recorded_as_unknown_and_the_answer_kept(
    number: object,
) -> None:
    """A server reporting nonsense statistics: the answer is kept; the numbers are 0
    (dividing 10**400 ns into ms was an OverflowError that ended the run, and a count
    past 64 bits broke the PostgreSQL views' sums)."""
    nonsense = {"total_duration": number, "prompt_eval_count": number, "eval_count": number}
    replies = [
        parse_ollama(ollama_reply(**nonsense)),
        parse_ollama_stream([chunk("Hel"), chunk("lo", True, **nonsense)]),
        parse_openai(
            openai_reply(
                {"role": "assistant", "content": "Hello"},
                usage={"prompt_tokens": number, "completion_tokens": number},
            )
        ),
    ]
    for reply in replies:
        assert reply.content == "Hello"
        assert reply.usage == Usage(prompt_tokens=0, completion_tokens=0)
        assert reply.duration_ms == 0.0


@pytest.mark.parametrize("number", ["9" * 5000, str(10**30)])
def test_a_context_window_said_in_nonsense_numbers_is_no_window(number: str) -> None:
    from engine.model.wire import context_overflow

    said = f'{{"type": "exceed_context_size_error", "n_ctx": {number}, "n_prompt_tokens": 5}}'
    found = context_overflow(f'{{"error": {said}}}'.encode())
    # a number past what the JSON parser takes makes the body no JSON: no overflow said
    assert found is None if len(number) > 4000 else found == Overflow(prompt_tokens=5)
    message = f"This model's maximum context length is {number} tokens, requested 7 tokens"
    said_so = context_overflow(json.dumps({"error": {"message": message}}).encode())
    assert said_so is not None and said_so.context == 0


def test_stream_deltas_without_an_index_join_their_call_by_id_or_the_last_one() -> None:
    """Some servers send tool-call deltas without ``index``: a delta with a known id
    joins that call, a new id starts one, none continues the last. (Found by a search
    per delta, which made 20,000 such calls take 22 s; now looked up.)"""
    from engine.model.wire import parse_openai_stream

    def delta(**call: object) -> str:
        chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        return "data: " + json.dumps(chunk)

    lines = [
        delta(id="a", type="function", function={"name": "read_file", "arguments": '{"pa'}),
        delta(id="b", type="function", function={"name": "list_directory", "arguments": "{}"}),
        delta(id="a", function={"arguments": 'th": "x.py"}'}),
        delta(id="c", type="function", function={"name": "read_file", "arguments": '{"path"'}),
        delta(function={"arguments": ': "y.py"}'}),
        'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}',
        "data: [DONE]",
    ]
    reply = parse_openai_stream(line for event in lines for line in (event, ""))
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("read_file", {"path": "x.py"}),
        ("list_directory", {}),
        ("read_file", {"path": "y.py"}),
    ]


def test_texts_a_server_sends_as_null_are_empty_not_an_invalid_answer() -> None:
    """``"model": null`` or ``"done_reason": null`` made the answer invalid."""
    nulls = {"model": None, "done_reason": None, "digest": None}
    reply = parse_ollama(json.dumps({"message": {"content": "Hello"}, "done": True, **nulls}))
    assert (reply.content, reply.done_reason, reply.model_identity) == ("Hello", "", "")
    streamed = parse_ollama_stream(
        [json.dumps({"message": {"content": "Hello"}, "done": True, **nulls})]
    )
    assert streamed == reply
    openai = parse_openai(
        json.dumps(
            {"model": None, "choices": [{"message": {"role": "assistant", "content": "Hello"}}]}
        )
    )
    assert (openai.content, openai.model_identity) == ("Hello", "")


HUGE = "E" * 3_500_000


@pytest.mark.parametrize(
    "answer",
    [
        lambda: parse_ollama(json.dumps({"error": HUGE})),
        lambda: parse_ollama_stream([json.dumps({"error": HUGE})]),
        lambda: parse_openai_stream(["data: " + json.dumps({"error": {"message": HUGE}})]),
        lambda: parse_openai_stream(["data: " + json.dumps({"error": [HUGE, {"deep": HUGE}]})]),
    ],
)
def test_an_error_a_200_answer_carries_is_cut_to_a_line(answer: Any) -> None:
    """An error body (a 500) was cut to 500 characters; one inside a 200 answer, or a
    stream, was kept whole: 3.5 MB in each failure event and each line saying it (a
    37 MB log, 17 MB of terminal output for one run)."""
    with pytest.raises(ModelHTTPError, match="the server reported an error") as failed:
        answer()
    assert len(str(failed.value)) < 600


def test_an_error_body_nested_past_the_decoders_depth_is_read_as_its_text() -> None:
    from engine.model.wire import context_overflow

    deep = b"[" * 50_000 + b"]" * 50_000
    assert error_text(deep) == deep.decode()[:500]
    assert error_text(b'{"error": ' + deep + b"}").startswith('{"error": [[[')
    assert context_overflow(deep) is None
