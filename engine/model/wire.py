"""The two wire formats: request bodies out, one normalised ``ModelReply`` in.

Ollama (``POST /api/chat``) and OpenAI-compatible servers (``POST /v1/chat/completions``)
disagree on small things that matter:

==========================  ==============================  ===============================
                            Ollama                          OpenAI-compatible
==========================  ==============================  ===============================
tool-call arguments         a JSON object                   a JSON *string*
tool-call ids               usually absent                  ``"call_..."``
tool result message         ``tool_name``                   ``tool_call_id``
options                     under ``"options"``             top level (no ``num_ctx``)
answer cap                  ``options.num_predict``         ``max_tokens``
finish                      ``done_reason``                 ``finish_reason``
usage                       ``prompt_eval_count``,          ``usage.prompt_tokens``,
                            ``eval_count``                  ``usage.completion_tokens``
duration                    ``total_duration`` (ns)         not sent (the client measures)
identity                    ``model`` (+ digest from tags)  ``model`` + ``system_fingerprint``
streaming                   NDJSON, the default             SSE ``data:`` lines on request,
                                                            ``data: [DONE]`` at the end;
                                                            usage in a last ``choices: []``
                                                            chunk (``include_usage``)
==========================  ==============================  ===============================

An answer that ran into the cap ends with ``"length"``. Its text stops wherever the
cap fell, so a tool call in it may be cut mid-JSON: such a call is dropped (the
reply keeps ``done_reason="length"`` and its text), never refused as a bad answer nor
repaired; what to tell the model is the caller's business (``engine.agent.conversation``).

Streaming is a transport detail: a streamed answer parses to the same ``ModelReply``
as the whole one, so the log (and a replay's request digests) cannot tell them apart.

This module does no I/O. Parsing never guesses: a body that is not JSON or not UTF-8, a
tool call with an empty name or with arguments that are not a JSON object raises
``ModelResponseInvalid`` whose message is written to be fed back to the model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec

from engine.errors import ModelHTTPError, ModelResponseInvalid, ModelUnavailable
from events.schema import Message, ToolCall, Usage

Api = Literal["ollama", "openai"]
"""The API flavour a server speaks."""

CHAT_PATHS: dict[str, str] = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
MODELS_PATHS: dict[str, str] = {"ollama": "/api/tags", "openai": "/v1/models"}

_NS_PER_MS = 1_000_000

_MOST = 2**53
"""The largest count or duration (in ns) a server's answer is taken at: beyond it
(a float's exact integers; 104 days in ns) or below 0, the number is not one."""


def _usage(prompt: object, completion: object) -> Usage:
    """The token counts a server reported; one out of range (negative, or too large
    for a log's 64-bit integers and every sum of them) is recorded as 0, unknown,
    and the answer kept."""
    return Usage(prompt_tokens=token_count(prompt), completion_tokens=token_count(completion))


def _milliseconds(nanoseconds: object) -> float:
    """A duration the server reported, in ms; 0.0 (unknown) when out of range or no
    whole number."""
    return token_count(nanoseconds) / _NS_PER_MS


class ChatOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Sampling options. ``None`` means "the server's default" and is not sent."""

    temperature: float | None = None
    num_ctx: int | None = None
    seed: int | None = None
    num_predict: int | None = None
    """The answer cap, in tokens (Ollama's name; ``max_tokens`` on OpenAI's wire)."""

    def as_dict(self) -> dict[str, Any]:
        """The options that are set, as recorded in ``model.requested``."""
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


NO_OPTIONS = ChatOptions()
"""Every option left to the server (options are frozen, so one instance serves all)."""


class ModelReply(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer, the same whatever server or format produced it.

    ``duration_ms`` is the server's own ``total_duration`` when it reports one
    (Ollama), else the wall time the client measured. ``model_identity`` names the
    weights that answered as precisely as the server allows: ``model@digest`` for
    Ollama when the digest is known, ``model@system_fingerprint`` for OpenAI servers
    that send one, else the model name alone. ``endpoint`` is the base URL that
    answered (a fallback's, if the first was unreachable).
    """

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    done_reason: str = ""
    usage: Usage = Usage()
    duration_ms: float = 0.0
    model_identity: str = ""
    extracted_from_text: bool = False
    endpoint: str = ""


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One model a server offers (from ``/api/tags`` or ``/v1/models``)."""

    name: str
    digest: str = ""


# -- requests ----------------------------------------------------------------------------


def ollama_message(message: Message) -> dict[str, Any]:
    """One message in Ollama's shape: tool-call arguments as objects, results by name."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": dict(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.role == "tool" and message.name:
        out["tool_name"] = message.name
    return out


def openai_message(message: Message) -> dict[str, Any]:
    """One message in OpenAI's shape: arguments as JSON strings, results by call id."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        # OpenAI's own servers answer tool-call turns with null content; some
        # compatible servers reject "" there, none reject null.
        if not message.content:
            out["content"] = None
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _json_text(c.arguments)},
            }
            for c in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
    return out


def chat_body(
    api: Api,
    model: str,
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] = (),
    options: ChatOptions = NO_OPTIONS,
    *,
    stream: bool = False,
) -> dict[str, Any]:
    """The JSON body of a chat request. ``stream`` asks for the answer in pieces
    (Ollama's NDJSON, OpenAI's server-sent events with the usage in a last chunk)."""
    if api == "ollama":
        body: dict[str, Any] = {
            "model": model,
            "messages": [ollama_message(m) for m in messages],
            # always explicit: Ollama streams when "stream" is absent
            "stream": stream,
        }
        if tools:
            body["tools"] = list(tools)
        opts = options.as_dict()
        if opts:
            body["options"] = opts
        return body
    body = {"model": model, "messages": [openai_message(m) for m in messages]}
    if tools:
        body["tools"] = list(tools)
    if stream:
        # without include_usage a streamed answer carries no token counts
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    # num_ctx is an Ollama notion; OpenAI servers size the context themselves
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.seed is not None:
        body["seed"] = options.seed
    if options.num_predict is not None:
        body["max_tokens"] = options.num_predict
    return body


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


# -- responses: typed views of what the servers send ------------------------------------


class _Function(msgspec.Struct):
    name: str = ""
    # Ollama sends an object, OpenAI a string; some proxies mix them up, so accept both
    arguments: dict[str, Any] | str | None = None


class _WireToolCall(msgspec.Struct):
    function: _Function
    id: str = ""


class _WireMessage(msgspec.Struct):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[_WireToolCall] | None = None


class _OllamaChat(msgspec.Struct):
    # a count or duration as the server sent it (null, 1.5, "12" too): ``token_count``
    # and ``_milliseconds`` take what is one and record the rest as unknown, where the
    # type refused the whole answer over a statistic; a text may be null
    model: str | None = ""
    message: _WireMessage | None = None
    done: bool = False
    done_reason: str | None = ""
    total_duration: Any = 0
    prompt_eval_count: Any = 0
    eval_count: Any = 0
    digest: str | None = ""
    error: Any = ""


class _OpenAIChoice(msgspec.Struct):
    message: _WireMessage
    finish_reason: str | None = None


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: Any = 0  # as _OllamaChat's counts
    completion_tokens: Any = 0


class _OpenAIChat(msgspec.Struct):
    model: str | None = ""
    choices: list[_OpenAIChoice] = []
    usage: _OpenAIUsage | None = None
    system_fingerprint: str | None = None


class _OllamaTag(msgspec.Struct):
    name: str = ""
    model: str = ""
    digest: str = ""


class _OllamaTags(msgspec.Struct):
    models: list[_OllamaTag] = []


class _OpenAIModel(msgspec.Struct):
    id: str


class _OpenAIModels(msgspec.Struct):
    data: list[_OpenAIModel] = []


_OLLAMA = msgspec.json.Decoder(_OllamaChat)
_OPENAI = msgspec.json.Decoder(_OpenAIChat)
_TAGS = msgspec.json.Decoder(_OllamaTags)
_MODELS = msgspec.json.Decoder(_OpenAIModels)
_ANY = msgspec.json.Decoder()

LENGTH = "length"
"""The finish reason of an answer the cap ended, in both formats."""


MAX_ARGUMENT_DEPTH = 32
"""How deep a tool call's arguments may nest: a project's arguments are a few levels;
an answer nesting thousands (within ``max_response_bytes``) ran every recursive
decoder and encoder out of stack."""


def deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` (JSON as Python values) nests more than ``limit`` levels
    of objects and arrays; found without recursion."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _decode(decoder: msgspec.json.Decoder[Any], data: bytes | str, what: str) -> Any:
    try:
        return decoder.decode(data)
    except RecursionError:
        raise ModelResponseInvalid(
            f"the server's {what} nests too deeply to be read: {_excerpt(data)}"
        ) from None
    except msgspec.DecodeError as e:
        # ValidationError is a DecodeError: wrong shapes and broken JSON alike
        raise ModelResponseInvalid(
            f"the server's {what} is not the expected JSON ({e}): {_excerpt(data)}"
        ) from e
    except UnicodeDecodeError as e:
        # msgspec checks UTF-8 inside strings and raises this, not a DecodeError
        raise ModelResponseInvalid(
            f"the server's {what} is not valid UTF-8 ({e.reason}): {_excerpt(data)}"
        ) from e


def _excerpt(data: bytes | str, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


# -- tool calls ---------------------------------------------------------------------------


def tool_call(index: int, call_id: str, name: str, arguments: object) -> ToolCall:
    """Normalise one tool call; refuse (never repair) an unusable one.

    ``index`` is the call's position in the reply: it makes the id ``call_{index}``
    when the server sent none, so that a replayed run sees the same ids.
    """
    number = index + 1
    if not name or not name.strip():
        raise ModelResponseInvalid(
            f"Your tool call #{number} has an empty function name. Call a tool by its "
            "exact name with its arguments as a JSON object."
        )
    deep = False
    if arguments is None:
        parsed: object = {}
    elif isinstance(arguments, str):
        if not arguments.strip():
            parsed = {}  # an empty string is how some servers spell "no arguments"
        else:
            try:
                parsed = _ANY.decode(arguments)
            except RecursionError:  # refused below
                parsed, deep = {}, True
            except msgspec.DecodeError as e:
                raise ModelResponseInvalid(
                    f"The arguments of your call to {name!r} are not valid JSON ({e}). "
                    "Send the arguments as one JSON object, e.g. "
                    '{"path": "main.py"}.'
                ) from e
    else:
        parsed = arguments
    if deep or deeper_than(parsed, MAX_ARGUMENT_DEPTH):
        raise ModelResponseInvalid(
            f"The arguments of your call to {name!r} nest more than {MAX_ARGUMENT_DEPTH} "
            "levels deep. Send the arguments as one flat JSON object, e.g. "
            '{"path": "main.py"}.'
        )
    if not isinstance(parsed, dict):
        raise ModelResponseInvalid(
            f"The arguments of your call to {name!r} must be a JSON object, "
            f"not {type(parsed).__name__}: {_excerpt(_json_text(parsed))}."
        )
    return ToolCall(
        id=call_id if _usable_id(call_id) else f"call_{index}", name=name, arguments=parsed
    )


MAX_ID_CHARS = 128
"""The longest tool call id a server's is kept at (theirs are tens of characters):
an id of a megabyte of NULs went into the answer's event and into every request
after it, the conversation echoing it back (a 71 MB log in nine answers)."""


def _usable_id(call_id: str) -> bool:
    """Whether a server's tool call id is one to keep; else it is made as for none."""
    return 0 < len(call_id) <= MAX_ID_CHARS and call_id.isprintable()


def _tool_calls(calls: Iterable[_WireToolCall], *, cut: bool = False) -> tuple[ToolCall, ...]:
    """The calls, normalised (see ``_parsed_calls``)."""
    return _parsed_calls(((c.id, c.function.name, c.function.arguments) for c in calls), cut)


def _parsed_calls(calls: Iterable[tuple[str, str, Any]], cut: bool) -> tuple[ToolCall, ...]:
    """``(id, name, arguments)`` as tool calls; in an answer the cap ended (``cut``),
    the calls that do not parse are dropped instead of refusing the answer (see the
    module doc)."""
    parsed = []
    for i, (call_id, name, arguments) in enumerate(calls):
        try:
            parsed.append(tool_call(i, call_id, name, arguments))
        except ModelResponseInvalid:
            if not cut:
                raise
    return tuple(parsed)


def _identity(model: str | None, detail: str | None) -> str:
    return f"{model or ''}@{detail}" if detail else model or ""


# -- parsing -----------------------------------------------------------------------------


def parse_ollama(body: bytes | str) -> ModelReply:
    """A non-streamed ``/api/chat`` answer."""
    chat: _OllamaChat = _decode(_OLLAMA, body, "chat reply")
    if chat.error:
        raise ModelHTTPError(f"the server reported an error: {said(chat.error)}", status=200)
    if chat.message is None:
        raise ModelResponseInvalid(f"the server's chat reply has no message: {_excerpt(body)}")
    return ModelReply(
        content=chat.message.content or "",
        tool_calls=_tool_calls(chat.message.tool_calls or (), cut=chat.done_reason == LENGTH),
        done_reason=chat.done_reason or "",
        usage=_usage(chat.prompt_eval_count, chat.eval_count),
        duration_ms=_milliseconds(chat.total_duration),
        model_identity=_identity(chat.model, chat.digest),
    )


OnPiece = Callable[[str], None]
"""Told each piece of a streamed answer as it is parsed (content, or a tool call's
name and arguments): how a face shows an answer growing."""


def parse_ollama_stream(
    lines: Iterable[bytes | str], on_piece: OnPiece | None = None
) -> ModelReply:
    """Assemble a streamed ``/api/chat`` answer from its NDJSON lines.

    Content arrives in pieces; tool calls arrive whole, in any chunk; the final
    ``"done": true`` chunk carries the statistics. A stream that stops before that
    chunk is a dropped connection, not an answer.
    """
    content: list[str] = []
    wire_calls: list[_WireToolCall] = []  # parsed at the end, when the finish is known
    for line in lines:
        if not line.strip():
            continue
        chunk: _OllamaChat = _decode(_OLLAMA, line, "stream chunk")
        if chunk.error:
            # Ollama reports a failure after the 200 status line this way; the
            # model runner crashing is the server's trouble, so another try may work
            raise ModelHTTPError(
                f"the server reported an error mid-stream: {said(chunk.error)}",
                status=200,
                retryable=True,
            )
        if chunk.message is not None:
            content.append(chunk.message.content or "")
            new = chunk.message.tool_calls or ()
            wire_calls.extend(new)
            if on_piece is not None:
                for piece in (chunk.message.content, *(c.function.name for c in new)):
                    if piece:
                        on_piece(piece)
        if chunk.done:
            return ModelReply(
                content="".join(content),
                tool_calls=_tool_calls(wire_calls, cut=chunk.done_reason == LENGTH),
                done_reason=chunk.done_reason or "",
                usage=_usage(chunk.prompt_eval_count, chunk.eval_count),
                duration_ms=_milliseconds(chunk.total_duration),
                model_identity=_identity(chunk.model, chunk.digest),
            )
    raise ModelUnavailable('the stream ended before its final chunk ("done": true)')


def parse_openai(body: bytes | str) -> ModelReply:
    """A ``/v1/chat/completions`` answer (first choice)."""
    chat: _OpenAIChat = _decode(_OPENAI, body, "chat completion")
    if not chat.choices:
        raise ModelResponseInvalid(f"the server's chat completion has no choices: {_excerpt(body)}")
    choice = chat.choices[0]
    usage = chat.usage or _OpenAIUsage()
    return ModelReply(
        content=choice.message.content or "",
        tool_calls=_tool_calls(choice.message.tool_calls or (), cut=choice.finish_reason == LENGTH),
        done_reason=choice.finish_reason or "",
        usage=_usage(usage.prompt_tokens, usage.completion_tokens),
        model_identity=_identity(chat.model, chat.system_fingerprint),
    )


class _DeltaFunction(msgspec.Struct):
    name: str | None = None
    arguments: dict[str, Any] | str | None = None


class _DeltaCall(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _DeltaFunction | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_DeltaCall] | None = None


class _StreamChoice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _OpenAIChunk(msgspec.Struct):
    model: str | None = ""
    choices: list[_StreamChoice] = []
    usage: _OpenAIUsage | None = None
    system_fingerprint: str | None = None
    error: Any = None


_CHUNK = msgspec.json.Decoder(_OpenAIChunk)


class _CallParts:
    """One tool call as its deltas arrive: the id once, name and arguments in pieces."""

    def __init__(self) -> None:
        self.id = ""
        self.name: list[str] = []
        self.arguments: list[str] = []
        self.whole: dict[str, Any] | None = None  # a proxy that sends an object at once

    def add(self, delta: _DeltaCall) -> list[str]:
        pieces: list[str] = []
        self.id = delta.id or self.id
        function = delta.function
        if function is None:
            return pieces
        if function.name:
            self.name.append(function.name)
            pieces.append(function.name)
        if isinstance(function.arguments, dict):
            self.whole = function.arguments
        elif function.arguments:
            self.arguments.append(function.arguments)
            pieces.append(function.arguments)
        return pieces


def server_sent_data(lines: Iterable[bytes | str]) -> Iterable[bytes]:
    """The ``data`` of each server-sent event in ``lines``: ``data:`` lines joined
    by newlines up to a blank line; comments (``:``) and other fields ignored. A line
    ends in LF, CRLF or, as the format allows, CR alone (a stream of those was one
    line of trailing characters, an invalid answer)."""
    data: list[bytes] = []
    for raw in lines:
        for line in (raw.encode() if isinstance(raw, str) else raw).rstrip(b"\r").split(b"\r"):
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def parse_openai_stream(
    lines: Iterable[bytes | str], on_piece: OnPiece | None = None
) -> ModelReply:
    """Assemble a streamed ``/v1/chat/completions`` answer from its SSE lines.

    Content arrives in deltas; a tool call arrives in deltas too, keyed by its
    ``index`` (its id and name first, its arguments in pieces of a JSON string);
    ``finish_reason`` closes the choice; with ``include_usage`` a last chunk with
    ``choices: []`` carries the usage; ``data: [DONE]`` ends the stream. A stream
    that stops before ``[DONE]`` is a dropped connection, not an answer.
    """
    content: list[str] = []
    calls: dict[int, _CallParts] = {}
    by_id: dict[str, int] = {}
    top: int | None = None
    finish = ""
    model = fingerprint = ""
    usage = _OpenAIUsage()
    for data in server_sent_data(lines):
        if data.strip() == b"[DONE]":
            tool_calls = _parsed_calls(
                (
                    (
                        parts.id,
                        "".join(parts.name),
                        parts.whole if parts.whole is not None else "".join(parts.arguments),
                    )
                    for parts in (calls[k] for k in sorted(calls))
                ),
                cut=finish == LENGTH,
            )
            return ModelReply(
                content="".join(content),
                tool_calls=tool_calls,
                done_reason=finish,
                usage=_usage(usage.prompt_tokens, usage.completion_tokens),
                model_identity=_identity(model, fingerprint),
            )
        chunk: _OpenAIChunk = _decode(_CHUNK, data, "stream chunk")
        if chunk.error is not None:
            raise ModelHTTPError(
                f"the server reported an error mid-stream: {said(chunk.error)}",
                status=200,
                retryable=True,
            )
        model = chunk.model or model
        fingerprint = chunk.system_fingerprint or fingerprint
        usage = chunk.usage or usage
        for choice in chunk.choices[:1]:  # the first choice, as parse_openai reads
            finish = choice.finish_reason or finish
            delta = choice.delta
            if delta is None:
                continue
            pieces = [delta.content] if delta.content else []
            content.append(delta.content or "")
            for call in delta.tool_calls or ():
                index = call.index if call.index is not None else _unindexed(by_id, top, call.id)
                parts = calls.setdefault(index, _CallParts())
                pieces += parts.add(call)
                top = index if top is None else max(top, index)
                if parts.id:
                    by_id.setdefault(parts.id, index)
            if on_piece is not None:
                for piece in pieces:
                    on_piece(piece)
    raise ModelUnavailable("the stream ended before its last event (data: [DONE])")


def _unindexed(by_id: dict[str, int], top: int | None, call_id: str | None) -> int:
    """Where a delta without an ``index`` (some servers) goes: the call with its id,
    a new call for a new id, else the last call (``top``, the highest index so far;
    None before any). Looked up, not searched: a search per delta made an answer of
    20,000 such calls take 22 s."""
    if call_id and call_id in by_id:
        return by_id[call_id]
    if top is None:
        return 0
    return top + 1 if call_id else top


def parse_stream(
    api: Api, lines: Iterable[bytes | str], on_piece: OnPiece | None = None
) -> ModelReply:
    """A streamed chat answer in either format, from its lines."""
    if api == "ollama":
        return parse_ollama_stream(lines, on_piece)
    return parse_openai_stream(lines, on_piece)


def parse_chat(api: Api, body: bytes | str) -> ModelReply:
    """A non-streamed chat answer in either format."""
    return parse_ollama(body) if api == "ollama" else parse_openai(body)


def parse_models(api: Api, body: bytes | str) -> tuple[ModelInfo, ...]:
    """The answer of ``GET /api/tags`` or ``GET /v1/models``."""
    if api == "ollama":
        tags: _OllamaTags = _decode(_TAGS, body, "model list")
        return tuple(ModelInfo(name=t.name or t.model, digest=t.digest) for t in tags.models)
    models: _OpenAIModels = _decode(_MODELS, body, "model list")
    return tuple(ModelInfo(name=m.id) for m in models.data)


class Overflow(msgspec.Struct, frozen=True, kw_only=True):
    """What an error body says of a request too long for the context window."""

    context: int = 0
    """The window, in tokens (0: not said)."""
    prompt_tokens: int = 0
    """The request's prompt, in the server's tokens (0: not said)."""


_OVERFLOW_TYPES = {"exceed_context_size_error", "context_length_exceeded"}
"""llama-server's error ``type``; OpenAI's error ``code``."""

_OVERFLOW_TEXT = re.compile(
    r"context[ _](length|size|window)[ _]exceeded"
    r"|exceeds? (the )?(maximum |available )?context"
    r"|maximum context length"
    r"|input length exceeds",
    re.IGNORECASE,
)
_CONTEXT_SAID = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_PROMPT_SAID = re.compile(
    r"(?:resulted in|requested) (\d+) tokens(?: \((\d+) in the messages)?", re.IGNORECASE
)


def context_overflow(body: bytes) -> Overflow | None:
    """The overflow an error body reports, or None if it reports another error.

    Recognised: llama-server's ``{"error": {"type": "exceed_context_size_error",
    "n_prompt_tokens": ..., "n_ctx": ...}}``, OpenAI's ``code``
    ``context_length_exceeded`` ("This model's maximum context length is 8192
    tokens. However, your messages resulted in 9000 tokens"), vLLM's wording of
    the same, and Ollama-style "input length exceeds the context length"."""
    data = _json_or_none(body.decode("utf-8", "replace"))
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and (
        error.get("type") in _OVERFLOW_TYPES or error.get("code") in _OVERFLOW_TYPES
    ):
        context, prompt = token_count(error.get("n_ctx")), token_count(error.get("n_prompt_tokens"))
        if context or prompt:
            return Overflow(context=context, prompt_tokens=prompt)
        return _overflow_in(str(error.get("message", ""))) or Overflow()
    return _overflow_in(error_text(body))


def _overflow_in(message: str) -> Overflow | None:
    if not _OVERFLOW_TEXT.search(message):
        return None
    context = _CONTEXT_SAID.search(message)
    prompt = _PROMPT_SAID.search(message)
    return Overflow(
        context=_said(context.group(1)) if context else 0,
        # vLLM counts the answer's cap in "requested"; its messages alone are in brackets
        prompt_tokens=_said(prompt.group(2) or prompt.group(1)) if prompt else 0,
    )


def _said(digits: str) -> int:
    """A count written in a server's message, 0 when it is no count (more digits than
    any count has: ``int`` refuses 4,300 of them outright)."""
    return token_count(int(digits)) if len(digits) <= 16 else 0


def token_count(value: object) -> int:
    """A count a server sent in JSON: a positive int no larger than a count can be
    (``_MOST``), else 0 (absent, null, -1, a bool, 10**400)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MOST:
        return value
    return 0


ERROR_CHARS = 500
"""How much of a server's error message is kept: a line to read, where a 3.5 MB
``error`` in a 200 answer was 3.5 MB in each failure event and each line saying it."""


def error_text(body: bytes, limit: int = ERROR_CHARS) -> str:
    """The human part of an error body: Ollama's ``{"error": "..."}``, OpenAI's
    ``{"error": {"message": ...}}``, or the raw text."""
    text = body.decode("utf-8", "replace")  # a broken error body still says something
    data = _json_or_none(text)
    if isinstance(data, dict) and "error" in data:
        return said(data["error"], limit)
    return text.strip()[:limit]


def said(error: object, limit: int = ERROR_CHARS) -> str:
    """What a server's ``error`` value says, at most ``limit`` characters: its text,
    OpenAI's ``{"message": ...}``, or else its JSON."""
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        error = error["message"]
    if not isinstance(error, str):
        error = _json_text(error)
    return error[:limit]


def _json_or_none(text: str) -> object:
    """``text`` as JSON values, or None when it is not JSON, or nests too deeply for
    the decoder (an error body of 50,000 brackets crashed a run with RecursionError)."""
    try:
        return _ANY.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None
