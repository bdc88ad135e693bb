"""ScriptedModelServer speaks both wire formats as the real servers do, over real sockets."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import engine.testing
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest

USER = [{"role": "user", "content": "please create the app file"}]


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module: building one costs an SSL context, ~30 ms."""
    with httpx.Client(timeout=httpx.Timeout(5.0)) as client:
        yield client


def ollama(server: ScriptedModelServer, http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(
        f"{server.url}/api/chat", json={"model": "qwen2.5:14b", "messages": USER, **body}
    )


def openai(server: ScriptedModelServer, http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "qwen2.5-coder:32b", "messages": USER, **body},
    )


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


# -- Ollama --------------------------------------------------------------------------------


def test_ollama_streams_ndjson_by_default_ending_with_a_done_chunk_that_has_the_stats(
    http: httpx.Client,
) -> None:
    with ScriptedModelServer([Reply.text("The sky is blue.")]) as server:
        response = ollama(server, http)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    chunks = lines(response)
    assert len(chunks) > 2
    assert all(c["done"] is False for c in chunks[:-1])
    assert "".join(c["message"]["content"] for c in chunks) == "The sky is blue."
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["prompt_eval_count"] == 5 and final["eval_count"] == 4
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0  # nanoseconds
    assert final["model"] == "qwen2.5:14b" and final["created_at"].endswith("Z")


def test_ollama_without_streaming_answers_one_object_with_arguments_as_an_object(
    http: httpx.Client,
) -> None:
    with ScriptedModelServer([Reply.tool("create_file", path="app.py", content="x")]) as server:
        body = ollama(server, http, stream=False).json()
    assert body["done"] is True and body["done_reason"] == "stop"
    (call,) = body["message"]["tool_calls"]
    assert call["function"]["name"] == "create_file"
    assert call["function"]["arguments"] == {"path": "app.py", "content": "x"}
    assert "id" not in call  # as Ollama: the client must make ids up, deterministically
    assert body["total_duration"] == (
        body["load_duration"] + body["prompt_eval_duration"] + body["eval_duration"]
    )


def test_ollama_streams_tool_calls_in_a_chunk_before_the_done_chunk(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.tool("read_file", path="a.py")]) as server:
        chunks = lines(ollama(server, http))
    with_calls = [c for c in chunks if c["message"].get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["done"] is False
    assert with_calls[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"path": "a.py"}
    assert chunks[-1]["done"] is True


def test_scripted_token_counts_are_sent_as_given(http: httpx.Client) -> None:
    script = [Reply.text("hi", prompt_tokens=321, completion_tokens=12)]
    with ScriptedModelServer(script) as server:
        body = ollama(server, http, stream=False).json()
    assert (body["prompt_eval_count"], body["eval_count"]) == (321, 12)


# -- OpenAI --------------------------------------------------------------------------------


def test_openai_answers_with_string_arguments_call_ids_finish_reason_and_usage(
    http: httpx.Client,
) -> None:
    with ScriptedModelServer([Reply.tool("create_file", path="app.py")]) as server:
        body = openai(server, http).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"path": "app.py"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["system_fingerprint"] == "fp_scripted"
    assert body["object"] == "chat.completion" and body["model"] == "qwen2.5-coder:32b"


def test_openai_text_answer_finishes_with_stop(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.text("done")]) as server:
        choice = openai(server, http).json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "done"}
    assert choice["finish_reason"] == "stop"


def events_of(response: httpx.Response) -> list[Any]:
    """The data of each server-sent event, parsed ("[DONE]" kept as text)."""
    assert response.headers["content-type"] == "text/event-stream"
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


def test_openai_streams_server_sent_events_ending_with_usage_then_done(
    http: httpx.Client,
) -> None:
    reply = Reply.calls(("read_file", {"path": "app.py"}), content="Let me look.")
    with ScriptedModelServer([reply, reply]) as server:
        usage = openai(server, http, stream=True, stream_options={"include_usage": True})
        bare = openai(server, http, stream=True)
    *chunks, last, done = events_of(usage)
    assert done == "[DONE]"
    assert last["choices"] == [] and last["usage"]["completion_tokens"] > 0
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."
    arguments = "".join(
        call["function"].get("arguments", "") for d in deltas for call in d.get("tool_calls", [])
    )
    assert json.loads(arguments) == {"path": "app.py"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # without include_usage there is no usage chunk, as OpenAI's own servers do
    assert all("usage" not in e for e in events_of(bare)[:-1])


def test_the_official_openai_client_streams_from_the_scripted_server() -> None:
    import openai as sdk

    reply = Reply.calls(("create_file", {"path": "a.py", "content": "x = 1"}), content="Here.")
    with ScriptedModelServer([reply]) as server:
        client = sdk.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with client.chat.completions.stream(
            model="qwen2.5-coder:32b",
            messages=[{"role": "user", "content": "make a.py"}],
            stream_options={"include_usage": True},
        ) as stream:
            final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Here."
    (call,) = message.tool_calls or []
    assert call.function.name == "create_file"
    assert json.loads(call.function.arguments) == {"path": "a.py", "content": "x = 1"}
    assert final.usage is not None and final.usage.completion_tokens > 0


# -- discovery, recording, scripts ---------------------------------------------------------


def test_discovery_lists_the_configured_models_in_both_formats(http: httpx.Client) -> None:
    with ScriptedModelServer(models=["qwen2.5:14b", "llama3.2:latest"]) as server:
        tags = http.get(f"{server.url}/api/tags").json()
        models = http.get(f"{server.url}/v1/models").json()
    assert [m["name"] for m in tags["models"]] == ["qwen2.5:14b", "llama3.2:latest"]
    assert all(len(m["digest"]) == 64 for m in tags["models"])
    assert [m["id"] for m in models["data"]] == ["qwen2.5:14b", "llama3.2:latest"]


def test_every_request_is_recorded_with_its_path_and_parsed_body(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.text("a"), Reply.text("b")]) as server:
        ollama(server, http, stream=False, options={"temperature": 0})
        http.get(f"{server.url}/api/tags")
        openai(server, http)
    assert [r.path for r in server.requests] == ["/api/chat", "/api/tags", "/v1/chat/completions"]
    assert server.requests[0].body["options"] == {"temperature": 0}
    assert server.requests[1].method == "GET" and server.requests[1].body is None
    assert [r.path for r in server.chat_requests] == ["/api/chat", "/v1/chat/completions"]
    assert server.served == 2


def test_an_exhausted_script_answers_500_saying_so_instead_of_hanging(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.text("only one")]) as server:
        assert ollama(server, http, stream=False).status_code == 200
        started = time.monotonic()
        response = ollama(server, http, stream=False)
        second = openai(server, http)
    assert time.monotonic() - started < 2
    assert response.status_code == 500
    assert "script exhausted" in response.json()["error"]
    assert "request #2" in response.json()["error"]
    assert "script exhausted" in second.json()["error"]["message"]


def test_a_function_script_sees_each_request(http: httpx.Client) -> None:
    seen: list[ScriptedRequest] = []

    def answer(request: ScriptedRequest) -> Reply:
        seen.append(request)
        return Reply.text(f"you said: {request.body['messages'][-1]['content']}")

    with ScriptedModelServer(answer) as server:
        body = ollama(server, http, stream=False).json()
        with pytest.raises(TypeError):
            server.add(Reply.text("x"))
    assert body["message"]["content"] == "you said: please create the app file"
    assert seen[0].path == "/api/chat"


def test_a_failing_script_function_is_reported_as_a_500(http: httpx.Client) -> None:
    def broken(request: ScriptedRequest) -> Reply:
        raise RuntimeError("oops")

    with ScriptedModelServer(broken) as server:
        response = ollama(server, http, stream=False)
    assert response.status_code == 500 and "oops" in response.json()["error"]


def test_replies_can_be_added_while_serving(http: httpx.Client) -> None:
    with ScriptedModelServer() as server:
        server.add(Reply.text("late"), Reply.text("later"))
        assert server.remaining == 2
        assert ollama(server, http, stream=False).json()["message"]["content"] == "late"
        assert server.remaining == 1


def test_unknown_paths_are_404(http: httpx.Client) -> None:
    with ScriptedModelServer() as server:
        assert http.post(f"{server.url}/api/generate", json={}).status_code == 404
        assert http.get(f"{server.url}/nope").status_code == 404


# -- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 404, 400])
def test_http_errors_carry_each_format_s_error_body(http: httpx.Client, status: int) -> None:
    script = [Reply.http_error(status, "boom"), Reply.http_error(status, "boom")]
    with ScriptedModelServer(script) as server:
        o = ollama(server, http, stream=False)
        a = openai(server, http)
    assert o.status_code == a.status_code == status
    assert o.json() == {"error": "boom"}
    assert a.json()["error"]["message"] == "boom"


def test_rate_limiting_can_say_when_to_retry(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.rate_limited(retry_after=1.5)]) as server:
        response = ollama(server, http)
    assert response.status_code == 429 and response.headers["retry-after"] == "1.5"


@pytest.mark.parametrize("stream", [True, False])
def test_malformed_replies_are_not_json(http: httpx.Client, stream: bool) -> None:
    with ScriptedModelServer([Reply.malformed(), Reply.malformed()]) as server:
        o = ollama(server, http, stream=stream)
        a = openai(server, http)
    assert o.status_code == a.status_code == 200
    with pytest.raises(ValueError):
        lines(o) if stream else o.json()
    with pytest.raises(ValueError):
        a.json()


def test_a_reset_connection_gets_no_answer(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.reset(), Reply.text("after")]) as server:
        with pytest.raises(httpx.TransportError):
            ollama(server, http, stream=False)
        assert ollama(server, http, stream=False).json()["message"]["content"] == "after"


def test_a_timeout_outlasts_the_client_and_closing_the_server_ends_it() -> None:
    server = ScriptedModelServer([Reply.timeout(30)])
    with (
        httpx.Client(timeout=httpx.Timeout(5.0, read=0.1)) as http,
        pytest.raises(httpx.ReadTimeout),
    ):
        ollama(server, http)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 2


def test_a_delay_is_waited_before_answering(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.delayed(0.2, Reply.text("slow"))]) as server:
        started = time.monotonic()
        body = ollama(server, http, stream=False).json()
    assert time.monotonic() - started >= 0.2
    assert body["message"]["content"] == "slow"


def test_fault_replies_for_tool_calls_send_what_they_say(http: httpx.Client) -> None:
    script = [Reply.empty_tool_name(path="a.py"), Reply.invalid_arguments("create_file")]
    with ScriptedModelServer(script) as server:
        empty = ollama(server, http, stream=False).json()["message"]["tool_calls"][0]
        invalid = openai(server, http).json()["choices"][0]["message"]["tool_calls"][0]
    assert empty["function"]["name"] == ""
    with pytest.raises(ValueError):
        json.loads(invalid["function"]["arguments"])


def test_the_documented_example_runs() -> None:
    doc = engine.testing.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\nThe script is", 1)[0]
    exec(compile(textwrap.dedent(block), "engine.testing docstring", "exec"), {})
