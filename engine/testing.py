"""Test helpers for users of autonomy: a scripted model server that speaks both wire formats.

``ScriptedModelServer`` is a real HTTP server on ``127.0.0.1`` (a free port) in a
daemon thread. It answers ``POST /api/chat`` the way Ollama does (streamed NDJSON by
default, or one JSON object with ``"stream": false``; tool-call arguments as
objects; ``done_reason``, ``prompt_eval_count``, ``eval_count`` and durations in
nanoseconds) and ``POST /v1/chat/completions`` the way OpenAI-compatible servers do
(arguments as JSON strings, ``call_...`` ids, ``finish_reason``, ``usage``,
``system_fingerprint``; with ``"stream": true`` as server-sent events: word by word,
tool calls in deltas by index, the usage in a last ``choices: []`` chunk when
``stream_options.include_usage`` asks for it, then ``data: [DONE]``, so the
official ``openai`` client works against it with ``stream=True``), plus the
discovery calls ``GET /api/tags``,
``GET /v1/models``, ``POST /api/show`` and ``GET /props``. What it says comes from a script, and it can misbehave on cue::

    import httpx
    from engine.model import Endpoint, ModelClient, RetryPolicy
    from engine.testing import Reply, ScriptedModelServer
    from events import Message

    script = [
        Reply.rate_limited(),  # HTTP 429 first: the client retries
        Reply.tool("create_file", path="app.py", content="print('hi')"),
    ]
    with ScriptedModelServer(script) as server, httpx.Client() as http:
        client = ModelClient(http, retry=RetryPolicy(base_delay=0.001))
        endpoint = Endpoint(base_url=server.url, model="qwen2.5-coder:32b")
        reply = client.chat(endpoint, [Message(role="user", content="make app.py")])
    assert reply.tool_calls[0].arguments == {"path": "app.py", "content": "print('hi')"}
    assert len(server.chat_requests) == 2
    assert server.chat_requests[-1].body["messages"][0]["content"] == "make app.py"

The script is a list of ``Reply`` consumed in order (``server.add`` appends more)
or a function ``(ScriptedRequest) -> Reply`` asked for every chat request. Each
``Reply`` may carry a fault instead of an answer: ``Reply.delayed``, ``Reply.timeout``
(hangs past the client's read timeout, bounded by ``max_hang``),
``Reply.http_error`` / ``Reply.server_error`` / ``Reply.rate_limited``,
``Reply.malformed`` (a body that is not JSON), ``Reply.invalid_utf8`` (in an answer
or an error body), ``Reply.huge`` (a very long answer), ``Reply.trickled`` (one byte
at a time), ``Reply.hanging`` (headers, then silence), ``Reply.reset`` (the socket is
reset, no answer), ``Reply.cut`` (ended by the length cap), ``Reply.empty_tool_name``
and ``Reply.invalid_arguments``. When a list
script runs out, the server answers HTTP 500 with a body that says so — it never
hangs. Every request is kept in ``server.requests`` (method, path, parsed body).

Token counts are deterministic: unless a ``Reply`` sets them, prompt tokens are the
words in the request's message contents and completion tokens the words of the
reply (content plus each call's name and encoded arguments). The answer cap a
request carries (``options.num_predict``, ``max_tokens``) is honoured as a real
server does: a longer reply is cut to that many words of its raw text (the calls
written out as JSON, so a call is cut mid-argument) and ends with finish reason
``length``; ``Reply.cut`` scripts such an answer whatever the cap
(``honour_caps=False`` sends every reply whole). ``refuse_over=N`` makes it refuse
a request of more than N prompt tokens before taking a reply, as llama-server does
(HTTP 400, ``exceed_context_size_error`` with ``n_prompt_tokens`` and ``n_ctx``; on
``/api/chat`` an Ollama-style message without the sizes).

It says its context window where the real servers do (``engine.model.discovery``):
``POST /api/show`` (``model_info`` ``qwen2.context_length`` = ``trained``, and
``num_ctx`` among the ``parameters`` when ``context`` is set), ``GET /props``
(``default_generation_settings.n_ctx``, only when ``context`` is set: 404 otherwise,
as on servers that are not llama-server) and ``GET /v1/models`` (``meta.n_ctx_train``,
and ``meta.n_ctx`` when ``context`` is set). ``missing`` names paths it answers 404. Durations follow from
the counts (0.1 ms per prompt token, 10 ms per completion token, 1 ms load, plus any
scripted delay), so a test can assert on them.

It lists the ``models`` it is asked to serve (``GET /api/tags``, ``GET /v1/models``),
which is what a run's preflight checks: give it the names your settings use
(``ScriptedModelServer(script, models=["m"])``). ``apis=("openai",)`` makes it
speak only the OpenAI format, as llama-server does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from engine.model.wire import token_count

Fault = Literal["timeout", "malformed", "reset", "hang", "invalid_utf8"]

_MALFORMED = b'{"model": "scripted", "message": {"role": "assistant", "content": "unterminated'
_NOT_UTF8 = "\u2063not-utf-8\u2063"
"""Stands in a reply's text for bytes that are not UTF-8; swapped on the way out."""
_NOT_UTF8_BYTES = b"\xff\xfe not UTF-8 \xc3\x28"


@dataclass(frozen=True)
class Reply:
    """One scripted answer (or fault). Build them with the class methods.

    ``tool_calls`` holds ``(name, arguments)`` pairs; arguments are a dict, or a
    string sent verbatim (to script arguments that are not valid JSON).
    """

    content: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any] | str], ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done_reason: str | None = None
    delay: float = 0.0
    fault: Fault | None = None
    status: int = 200
    error: str = ""
    retry_after: float | None = None
    hang: float = 0.0
    trickle: float = 0.0

    # -- answers ---------------------------------------------------------------------------

    @classmethod
    def text(cls, content: str, **fields: Any) -> Reply:
        """A prose answer (also for prose that embeds a tool call as text)."""
        return cls(content=content, **fields)

    @classmethod
    def tool(cls, name: str, /, **arguments: Any) -> Reply:
        """An answer that calls one tool through the API."""
        return cls(tool_calls=((name, arguments),))

    @classmethod
    def calls(cls, *calls: tuple[str, dict[str, Any] | str], content: str = "") -> Reply:
        """An answer with several tool calls, in order."""
        return cls(content=content, tool_calls=tuple(calls))

    # -- faults ----------------------------------------------------------------------------

    @classmethod
    def delayed(cls, seconds: float, reply: Reply | None = None) -> Reply:
        """``reply`` (default: a short text) after waiting ``seconds``."""
        return dataclasses.replace(reply if reply is not None else cls.text("ok"), delay=seconds)

    @classmethod
    def timeout(cls, seconds: float = 2.0) -> Reply:
        """Say nothing for ``seconds`` (longer than the client's read timeout), then
        hang up. The wait ends early when the server closes."""
        return cls(fault="timeout", hang=seconds)

    @classmethod
    def http_error(
        cls, status: int, message: str = "", *, retry_after: float | None = None
    ) -> Reply:
        """An error status with the error body the real server would send."""
        return cls(
            status=status,
            error=message or f"scripted HTTP {status}",
            retry_after=retry_after,
        )

    @classmethod
    def server_error(cls, message: str = "scripted internal server error") -> Reply:
        return cls.http_error(500, message)

    @classmethod
    def rate_limited(cls, *, retry_after: float | None = None) -> Reply:
        return cls.http_error(429, "scripted: too many requests", retry_after=retry_after)

    @classmethod
    def hanging(cls, seconds: float = 2.0) -> Reply:
        """Send the status line and headers of an answer, then nothing for ``seconds``
        (the body never comes), then hang up. Ends early when the server closes."""
        return cls(fault="hang", hang=seconds)

    @classmethod
    def trickled(cls, interval: float, reply: Reply | None = None) -> Reply:
        """``reply`` (default: a short text) sent one byte every ``interval`` seconds:
        each byte comes well within a read timeout, the whole never does."""
        return dataclasses.replace(reply if reply is not None else cls.text("ok"), trickle=interval)

    @classmethod
    def invalid_utf8(cls, status: int = 200) -> Reply:
        """Bytes that are not UTF-8 inside a JSON string: in the content of an
        answer, or in the error message of an error ``status``."""
        if status >= 400:
            return cls(status=status, error=_NOT_UTF8, fault="invalid_utf8")
        return cls(content=_NOT_UTF8, fault="invalid_utf8")

    @classmethod
    def huge(cls, size: int, reply: Reply | None = None) -> Reply:
        """An answer whose content is ``size`` characters (of ``reply``'s, repeated)."""
        base = reply if reply is not None else cls.text("0123456789abcdef\n")
        text = base.content or "x"
        return dataclasses.replace(base, content=(text * (size // len(text) + 1))[:size])

    @classmethod
    def malformed(cls) -> Reply:
        """HTTP 200 whose body (or stream line) is not valid JSON."""
        return cls(fault="malformed")

    @classmethod
    def reset(cls) -> Reply:
        """Reset the connection (TCP RST) without answering."""
        return cls(fault="reset")

    @classmethod
    def cut(cls, reply: Reply | str, tokens: int | None = None) -> Reply:
        """An answer the length cap ended (finish ``length``), whatever the request's
        cap: ``reply``'s text, its tool calls written out as the model's raw text,
        cut after ``tokens`` words (default: in the middle)."""
        base = cls.text(reply) if isinstance(reply, str) else reply
        words = _raw_text(base).split()
        keep = len(words) // 2 if tokens is None else tokens
        return cls(
            content=" ".join(words[:keep]),
            completion_tokens=keep,
            prompt_tokens=base.prompt_tokens,
            done_reason="length",
            delay=base.delay,
        )

    @classmethod
    def empty_tool_name(cls, **arguments: Any) -> Reply:
        """A tool call whose function name is empty."""
        return cls(tool_calls=(("", arguments),))

    @classmethod
    def invalid_arguments(cls, name: str, raw: str = '{"path": "app.py", "content": ') -> Reply:
        """A tool call whose arguments are a string that is not valid JSON."""
        return cls(tool_calls=((name, raw),))


@dataclass(frozen=True)
class ScriptedRequest:
    """A request the server received: the parsed JSON body (None for GET)."""

    method: str
    path: str
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Script = Iterable[Reply] | Callable[[ScriptedRequest], Reply]

_CHAT_PATHS = ("/api/chat", "/v1/chat/completions")


class ScriptedModelServer:
    """A loopback model server that answers from a script. See the module docstring."""

    def __init__(
        self,
        script: Script = (),
        *,
        models: Sequence[str] = ("qwen2.5:14b", "qwen2.5-coder:32b", "qwen2.5:32b"),
        fingerprint: str = "fp_scripted",
        max_hang: float = 10.0,
        honour_caps: bool = True,
        refuse_over: int | None = None,
        context: int | None = None,
        trained: int = 32768,
        missing: Collection[str] = (),
        apis: Sequence[str] = ("ollama", "openai"),
        key: str | None = None,
    ) -> None:
        self.models = tuple(models)
        self.key = key
        """The key it asks for, as a server started with ``--api-key`` does: a request
        without ``Authorization: Bearer KEY`` is answered 401, ``Unauthorized``."""
        self.honour_caps = honour_caps
        self.refuse_over = refuse_over
        self.context = context
        self.trained = trained
        self.missing = frozenset(missing)
        self.apis = frozenset(apis)
        """The wire formats it speaks: ``("openai",)`` plays llama-server, whose
        Ollama routes (``/api/...``) are 404."""
        self.fingerprint = fingerprint
        self.max_hang = max_hang
        self.requests: list[ScriptedRequest] = []
        self.served = 0
        self._function = script if callable(script) else None
        self._queue: list[Reply] = [] if callable(script) else list(script)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.scripted = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},  # shutdown() waits up to one interval
            name="ScriptedModelServer",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:53211``."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def chat_requests(self) -> list[ScriptedRequest]:
        """The chat requests only (discovery GETs left out)."""
        with self._lock:
            return [r for r in self.requests if r.path in _CHAT_PATHS]

    @property
    def remaining(self) -> int:
        """Replies left in a list script."""
        with self._lock:
            return len(self._queue)

    def add(self, *replies: Reply) -> None:
        """Append replies to a list script."""
        if self._function is not None:
            raise TypeError("this server answers from a function; there is no list to add to")
        with self._lock:
            self._queue.extend(replies)

    def close(self) -> None:
        """Stop serving; wakes any scripted delay or hang so that nothing lingers."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler ---------------------------------------------------------------

    def _record(self, request: ScriptedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _next(self, request: ScriptedRequest) -> tuple[Reply | None, int]:
        """The reply for a chat request and the request's 1-based number among chat
        requests; None when a list script is exhausted."""
        with self._lock:
            number = sum(1 for r in self.requests if r.path in _CHAT_PATHS)
            if self._function is None:
                if not self._queue:
                    return None, number
                self.served += 1
                return self._queue.pop(0), number
        reply = self._function(request)
        with self._lock:
            self.served += 1
        return reply, number

    def _wait(self, seconds: float) -> None:
        self._closing.wait(min(max(seconds, 0.0), self.max_hang))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    scripted: ScriptedModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that gave up mid-answer is expected here, not worth a traceback
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedModelServer/1"
    timeout = 10  # idle keep-alive connections end instead of holding a thread
    # headers and body go out in separate writes; with Nagle on, delayed ACKs add ~40 ms
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    # -- routing ---------------------------------------------------------------------------

    def _spoken(self) -> bool:
        """Whether the path belongs to an API the server speaks (else a 404 is sent),
        asked with the server's key if it has one (else a 401 is sent)."""
        key = self.server.scripted.key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._json(401, {"error": "Unauthorized"})
            return False
        api = "ollama" if self.path.startswith("/api/") else "openai"
        if api in self.server.scripted.apis:
            return True
        self._json(404, {"error": f"no route for {self.command} {self.path}"})
        return False

    def do_GET(self) -> None:
        scripted = self.server.scripted
        scripted._record(ScriptedRequest("GET", self.path, None, dict(self.headers)))
        if not self._spoken():
            return
        if self.path in scripted.missing:
            self._json(404, {"error": f"no route for GET {self.path}"})
        elif self.path == "/props" and scripted.context is not None:
            settings = {"n_ctx": scripted.context, "temperature": 0.8}
            self._json(200, {"default_generation_settings": settings, "total_slots": 1})
        elif self.path == "/api/tags":
            models = [_ollama_tag(name) for name in scripted.models]
            self._json(200, {"models": models})
        elif self.path == "/v1/models":
            meta = {"n_ctx_train": scripted.trained, "n_vocab": 151936}
            if scripted.context is not None:
                meta["n_ctx"] = scripted.context
            data = [
                {"id": n, "object": "model", "created": 0, "owned_by": "library", "meta": meta}
                for n in scripted.models
            ]
            self._json(200, {"object": "list", "data": data})
        else:
            self._json(404, {"error": f"no route for GET {self.path}"})

    def do_POST(self) -> None:
        scripted = self.server.scripted
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        request = ScriptedRequest("POST", self.path, body, dict(self.headers))
        scripted._record(request)
        if not self._spoken():
            return
        if self.path == "/api/show" and self.path not in scripted.missing:
            self._show(body)
            return
        ollama = self.path == "/api/chat"
        if not ollama and self.path != "/v1/chat/completions":
            self._json(404, {"error": f"no route for POST {self.path}"})
            return
        if not isinstance(body, dict):
            self._error(400, "request body is not a JSON object", ollama)
            return
        limit = scripted.refuse_over
        if limit is not None and _prompt_tokens(body) > limit:
            self._overflow(_prompt_tokens(body), limit, ollama)
            return
        try:
            reply, number = scripted._next(request)
        except Exception as e:  # a broken script function: say so, do not hang
            self._error(500, f"ScriptedModelServer: the script function raised {e!r}", ollama)
            return
        if reply is None:
            self._error(
                500,
                f"ScriptedModelServer: script exhausted: all {scripted.served} scripted "
                f"replies were used; none left for chat request #{number} (POST {self.path})",
                ollama,
            )
            return
        self._answer(reply, body, number, ollama)

    # -- answering -------------------------------------------------------------------------

    def _answer(self, reply: Reply, body: dict[str, Any], number: int, ollama: bool) -> None:
        scripted = self.server.scripted
        self._reply = reply  # how the body is written: trickled, with bytes that are not UTF-8
        if reply.delay:
            scripted._wait(reply.delay)
        if reply.fault == "timeout":
            scripted._wait(reply.hang)
            self.close_connection = True
            return
        if reply.fault == "reset":
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if reply.status >= 400:
            self._error(reply.status, reply.error, ollama, retry_after=reply.retry_after)
            return
        model = str(body.get("model", ""))
        prompt, completion = _token_counts(reply, body)
        cap = _answer_cap(body, ollama) if scripted.honour_caps else None
        if cap is not None and completion > cap and reply.done_reason is None:
            reply, completion = Reply.cut(reply, cap), cap
        if not ollama and body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            whole = _openai(reply, model, number, prompt, completion, scripted.fingerprint)
            self._stream(_openai_events(reply, whole, usage), "text/event-stream")
            return
        if not ollama:
            if reply.fault == "malformed":
                self._raw(200, _MALFORMED, "application/json")
            else:
                self._json(
                    200, _openai(reply, model, number, prompt, completion, scripted.fingerprint)
                )
            return
        final = _ollama_final(reply, model, prompt, completion)
        if body.get("stream", True) is False:
            if reply.fault == "malformed":
                self._raw(200, _MALFORMED, "application/json")
            else:
                self._json(200, {**final, "message": _ollama_message(reply)})
            return
        self._stream(_ollama_chunks(reply, model, final))

    def _error(
        self, status: int, message: str, ollama: bool, *, retry_after: float | None = None
    ) -> None:
        if ollama:
            payload: dict[str, Any] = {"error": message}
        else:
            kind = {429: "rate_limit_error"}.get(status, "server_error")
            if status < 500 and status != 429:
                kind = "invalid_request_error"
            payload = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self._json(status, payload, headers)

    def _show(self, body: Any) -> None:
        """Ollama's model description: the trained window in ``model_info``, and
        ``num_ctx`` among the parameters when the server has a context set."""
        scripted = self.server.scripted
        name = body.get("model") or body.get("name") if isinstance(body, dict) else None
        if name not in scripted.models and f"{name}:latest" not in scripted.models:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        parameters = 'stop "<|im_end|>"'
        if scripted.context is not None:
            parameters = f"num_ctx {scripted.context}\n{parameters}"
        info = {"general.architecture": "qwen2", "qwen2.context_length": scripted.trained}
        self._json(200, {"parameters": parameters, "model_info": info, "template": "{{ .Prompt }}"})

    def _overflow(self, prompt: int, limit: int, ollama: bool) -> None:
        """A prompt longer than the context, refused as llama-server refuses it (and
        in Ollama's words on its path), before any scripted reply is taken."""
        if ollama:
            self._json(400, {"error": "input length exceeds the context length"})
            return
        error = {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt,
            "n_ctx": limit,
        }
        self._json(400, {"error": error})

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        data = self._encoded(data)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self._hung():
            return
        self._write(data)

    def _hung(self) -> bool:
        """For ``Reply.hanging``: the headers are out; wait, then hang up."""
        reply: Reply | None = getattr(self, "_reply", None)
        if reply is None or reply.fault != "hang":
            return False
        self.wfile.flush()
        self.server.scripted._wait(reply.hang)
        self.close_connection = True
        return True

    def _stream(self, lines: Iterable[bytes], content_type: str = "application/x-ndjson") -> None:
        # chunked, one chunk per line, as Ollama sends NDJSON (and servers send SSE)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self._hung():
            return
        for line in lines:
            data = self._encoded(line) + b"\n"
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        self._write(b"0\r\n\r\n")

    def _encoded(self, data: bytes) -> bytes:
        reply: Reply | None = getattr(self, "_reply", None)
        if reply is not None and reply.fault == "invalid_utf8":
            return data.replace(json.dumps(_NOT_UTF8)[1:-1].encode(), _NOT_UTF8_BYTES)
        return data

    def _write(self, data: bytes) -> None:
        reply: Reply | None = getattr(self, "_reply", None)
        if reply is None or not reply.trickle:
            self.wfile.write(data)
            return
        scripted = self.server.scripted
        for i in range(len(data)):
            if scripted._closing.is_set():
                self.close_connection = True
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            scripted._wait(reply.trickle)


# -- the two formats ---------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages") or []
    return sum(_words(str(m.get("content") or "")) for m in messages if isinstance(m, dict))


def _token_counts(reply: Reply, body: dict[str, Any]) -> tuple[int, int]:
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = _prompt_tokens(body)
    completion = reply.completion_tokens
    if completion is None:
        completion = _words(reply.content) + sum(
            1 + _words(args if isinstance(args, str) else json.dumps(args))
            for _, args in reply.tool_calls
        )
    return prompt, completion


def _raw_text(reply: Reply) -> str:
    """What the model generated, as text: its content, then each call as JSON."""
    calls = [json.dumps({"name": name, "arguments": args}) for name, args in reply.tool_calls]
    return " ".join([reply.content, *calls]).strip()


def _answer_cap(body: dict[str, Any], ollama: bool) -> int | None:
    """The request's cap on the answer: ``options.num_predict`` or ``max_tokens``."""
    if ollama:
        options = body.get("options")
        cap = options.get("num_predict") if isinstance(options, dict) else None
    else:
        cap = body.get("max_tokens", body.get("max_completion_tokens"))
    # Ollama's -1 (and anything not a positive count) means no cap
    return token_count(cap) or None


def _ollama_tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 9_000_000_000,
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {"format": "gguf", "family": "qwen2", "quantization_level": "Q4_K_M"},
    }


def _ollama_message(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"function": {"index": i, "name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
    return message


def _ollama_final(reply: Reply, model: str, prompt: int, completion: int) -> dict[str, Any]:
    load, prompt_eval, evaluation = 1_000_000, prompt * 100_000, completion * 10_000_000
    return {
        "model": model,
        "created_at": _now(),
        "done": True,
        "done_reason": reply.done_reason or "stop",
        "total_duration": load + prompt_eval + evaluation + int(reply.delay * 1e9),
        "load_duration": load,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": prompt_eval,
        "eval_count": completion,
        "eval_duration": evaluation,
    }


def _ollama_chunks(reply: Reply, model: str, final: dict[str, Any]) -> Iterable[bytes]:
    # word by word, whitespace kept, so that the pieces join back to the content
    for piece in re.findall(r"\S+\s*|\s+", reply.content):
        message = {"role": "assistant", "content": piece}
        yield json.dumps(
            {"model": model, "created_at": _now(), "message": message, "done": False}
        ).encode()
    if reply.fault == "malformed":
        yield _MALFORMED
        return
    if reply.tool_calls:
        calls = {**_ollama_message(reply), "content": ""}
        yield json.dumps(
            {"model": model, "created_at": _now(), "message": calls, "done": False}
        ).encode()
    last = {**final, "message": {"role": "assistant", "content": ""}}
    yield json.dumps(last).encode()


def _openai(
    reply: Reply, model: str, number: int, prompt: int, completion: int, fingerprint: str
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["content"] = reply.content or None
        message["tool_calls"] = [
            {
                "id": f"call_{number}_{i}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                },
            }
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
    finish = reply.done_reason or ("tool_calls" if reply.tool_calls else "stop")
    return {
        "id": f"chatcmpl-{number}",
        "object": "chat.completion",
        "created": int(datetime.now(UTC).timestamp()),
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _openai_events(reply: Reply, whole: dict[str, Any], usage: bool) -> Iterable[bytes]:
    """``whole`` (a chat completion) as the server-sent events of a streamed one."""
    head = {k: whole[k] for k in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n"

    yield event({"role": "assistant", "content": ""})
    for piece in re.findall(r"\S+\s*|\s+", reply.content):
        yield event({"content": piece})
    if reply.fault == "malformed":
        yield b"data: " + _MALFORMED + b"\n"
        return
    message = whole["choices"][0]["message"]
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call["function"]
        start = {"index": index, "id": call["id"], "type": "function"}
        yield event({"tool_calls": [{**start, "function": {"name": function["name"]}}]})
        text = function["arguments"]
        middle = len(text) // 2  # in two pieces, as servers cut them anywhere
        for part in (text[:middle], text[middle:]):
            yield event({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    yield event({}, whole["choices"][0]["finish_reason"])
    if usage:
        last = {**head, "choices": [], "usage": whole["usage"]}
        yield b"data: " + json.dumps(last).encode() + b"\n"
    yield b"data: [DONE]\n"
