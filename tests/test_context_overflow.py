"""Context overflow: a request too long for the server's context window is its own
failure kind, recognised in every server's wording, and answered by shrinking the
history to the size the server said — never by sending the same request again."""

from __future__ import annotations

import json

import pytest

from engine.model.wire import Overflow, context_overflow

LLAMA_SERVER = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 5000,
        "n_ctx": 4096,
    }
}
OPENAI = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your "
        "messages resulted in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
VLLM = {
    "object": "error",
    "message": "This model's maximum context length is 4096 tokens. However, you requested "
    "5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length "
    "of the messages or completion.",
    "type": "BadRequestError",
    "code": 400,
}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (LLAMA_SERVER, Overflow(context=4096, prompt_tokens=5000)),
        (OPENAI, Overflow(context=8192, prompt_tokens=9000)),
        ({"error": VLLM["message"]}, Overflow(context=4096, prompt_tokens=4000)),
        ({"error": "the input length exceeds the context length"}, Overflow()),
        ({"error": {"message": "context length exceeded"}}, Overflow()),
    ],
)
def test_an_overflow_is_recognised_in_each_server_s_words(body: object, said: Overflow) -> None:
    assert context_overflow(json.dumps(body).encode()) == said


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": "model \'m\' not found, try pulling it first"}',
        b'{"error": {"message": "invalid tool schema", "type": "invalid_request_error"}}',
        b"Bad Request",
        b"\xff\xfe",
    ],
)
def test_other_errors_are_not_overflows(body: bytes) -> None:
    assert context_overflow(body) is None
