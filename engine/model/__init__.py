"""The model layer: one client for Ollama and OpenAI-compatible servers, the role
configuration, the prose tool-call fallback, the recorder that turns every call
into events, the sizes of a request and its answer (``sizing``), and asking a server
for its context window (``discovery``).

    client = ModelClient(httpx.Client(), stream=True)  # both formats stream
    reply = client.chat(Roles().coding.endpoints(), messages, tools, Roles().coding.options())
    recorder = RecordingModel(client, runlog, Roles())
    reply = recorder.chat("coding", messages, tools, conversation="task:T1")

``engine.testing.ScriptedModelServer`` is a real HTTP server that speaks both formats,
for tests.
"""

from engine.model.bounds import (
    DEFAULT_BOUNDS,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Bounds,
    RetryPolicy,
    Timeouts,
)
from engine.model.client import FailedAttempt, ModelClient, OnFailure, OnStream, tool_names
from engine.model.discovery import Learned, discover, learn_contexts
from engine.model.recording import (
    INLINE_LIMIT,
    RecordingModel,
    RunLog,
    common_prefix,
    request_digest,
    stored_form,
)
from engine.model.roles import (
    DEFAULT_CONTEXT,
    ROLE_NAMES,
    Endpoint,
    RoleConfig,
    Roles,
    roles_from_mapping,
)
from engine.model.sizing import Sizing, answer_cap, sizing
from engine.model.textcalls import extract_tool_call
from engine.model.wire import (
    NO_OPTIONS,
    Api,
    ChatOptions,
    ModelInfo,
    ModelReply,
    chat_body,
    parse_chat,
    parse_models,
    parse_ollama,
    parse_ollama_stream,
    parse_openai,
    parse_openai_stream,
    parse_stream,
)

__all__ = [
    "DEFAULT_BOUNDS",
    "DEFAULT_CONTEXT",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUTS",
    "INLINE_LIMIT",
    "NO_OPTIONS",
    "ROLE_NAMES",
    "Api",
    "Bounds",
    "ChatOptions",
    "Endpoint",
    "FailedAttempt",
    "Learned",
    "ModelClient",
    "ModelInfo",
    "ModelReply",
    "OnFailure",
    "OnStream",
    "RecordingModel",
    "RetryPolicy",
    "RoleConfig",
    "Roles",
    "RunLog",
    "Sizing",
    "Timeouts",
    "answer_cap",
    "chat_body",
    "common_prefix",
    "discover",
    "extract_tool_call",
    "learn_contexts",
    "parse_chat",
    "parse_models",
    "parse_ollama",
    "parse_ollama_stream",
    "parse_openai",
    "parse_openai_stream",
    "parse_stream",
    "request_digest",
    "roles_from_mapping",
    "sizing",
    "stored_form",
    "tool_names",
]
