"""``ModelClient``: chat with a model over HTTP, with finite timeouts, bounded retries
and fallback endpoints.

The predecessor waited forever, returned errors as dicts that were then counted as
answers, and could not say which attempt failed. Here:

* every request carries finite connect/read/write/pool timeouts (``Timeouts``), and
  the call as a whole a deadline: attempts, fallbacks and backoff included, it ends
  by then (``ModelDeadline``), even against a server that trickles a byte at a time;
* an answer is read in pieces and counted: past ``max_response_bytes`` the
  connection is closed and the call fails (``ModelResponseTooLarge``), and error
  bodies are read only as far as their first ``ERROR_BODY_LIMIT`` bytes;
* connection errors, timeouts, 429 and 5xx are retried with exponential backoff and
  jitter, at most ``RetryPolicy.attempts`` times per endpoint; other 4xx and unusable
  replies are not retried (asking again would not help, telling the model might);
* when an endpoint stays unreachable (its last attempt failed with a retryable error)
  the next endpoint in the list is tried, in order;
* every failed attempt is reported to an ``on_failure`` callback *before* the next
  one starts, so a recorder can append one ``model.failed`` per attempt; when all
  attempts fail the last typed ``ModelError`` is raised — never returned.

The ``httpx.Client``, the sleep function, the clock and the random source are
injected, so tests run real sockets with millisecond backoff and no real waiting.
"""

from __future__ import annotations

import contextlib
import random as _random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from engine.errors import (
    ModelContextOverflow,
    ModelDeadline,
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelResponseTooLarge,
    ModelTimeout,
    ModelUnavailable,
)
from engine.model.bounds import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUTS,
    Bounds,
    RetryPolicy,
    Timeouts,
)
from engine.model.credentials import redacted
from engine.model.roles import Endpoint
from engine.model.textcalls import extract_tool_call
from engine.model.wire import (
    CHAT_PATHS,
    LENGTH,
    MODELS_PATHS,
    NO_OPTIONS,
    Api,
    ChatOptions,
    ModelInfo,
    ModelReply,
    Overflow,
    chat_body,
    context_overflow,
    error_text,
    parse_chat,
    parse_models,
    parse_stream,
)
from engine.terminal import printable
from events.schema import Message

T = TypeVar("T")

ERROR_BODY_LIMIT = 65_536
MAX_TOOL_CALLS = 1_000
"""The most tool calls an answer may hold: past ``limits.max_calls_per_answer`` each
is refused, and recorded (two events), so an answer of 45,000 calls wrote 90,000
events (44 MB) in one step."""
LOOKUP_SECONDS = 10.0
"""The longest the lookup of a model's digest after an answer may take (a courtesy:
it waited up to the client's default read timeout, ten minutes, on a silent server)."""
"""Bytes of an error body read for its message; the rest is not read."""


@dataclass(frozen=True)
class FailedAttempt:
    """One attempt that failed: where, which (1-based, counted over the whole call,
    across endpoints), why, and whether the client goes on trying."""

    attempt: int
    endpoint: Endpoint
    error: ModelError
    will_retry: bool


OnFailure = Callable[[FailedAttempt], None]

OnStream = Callable[[int], None]
"""Told, as a streamed answer arrives, how many pieces (about one token each) the
current attempt has received so far."""


class ModelClient:
    """Chat completions from Ollama or OpenAI-compatible servers.

    ``stream`` asks for answers in pieces (Ollama's NDJSON, OpenAI's server-sent
    events) instead of one JSON body; ``chat(..., stream=...)`` overrides it per call.
    Each piece is counted to ``on_stream``. The bounds hold the same: the read
    timeout for each piece, the deadline and ``max_response_bytes`` for the whole.
    ``text_fallback`` extracts a tool call a model wrote as prose (see
    ``engine.model.textcalls``). ``identify_models`` looks up an Ollama model's
    digest once per server and model (``GET /api/tags``) so that replies name the
    exact weights; a failed lookup only leaves the identity at the model name.

    ``timeouts``, ``retry``, ``deadline`` and ``max_response_bytes`` are the bounds of
    a call that gives none; ``chat(..., bounds=...)`` gives a role's own.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        deadline: float | None = DEFAULT_DEADLINE,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        stream: bool = False,
        on_stream: OnStream | None = None,
        text_fallback: bool = True,
        identify_models: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.http = http
        self.bounds = _checked(
            Bounds(
                timeouts=timeouts,
                retry=retry,
                deadline=deadline,
                max_response_bytes=max_response_bytes,
            )
        )
        self.stream = stream
        self.on_stream = on_stream
        self.text_fallback = text_fallback
        self.identify_models = identify_models
        self._sleep = sleep
        self._clock = clock
        self._random = random
        # a cache of facts the servers told us, not engine state: it only makes
        # model_identity more precise and is rebuilt by asking again
        self._digests: dict[tuple[str, str], str] = {}

    # -- chat ----------------------------------------------------------------------------

    def chat(
        self,
        endpoints: Endpoint | Sequence[Endpoint],
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        options: ChatOptions = NO_OPTIONS,
        *,
        on_failure: OnFailure | None = None,
        bounds: Bounds | None = None,
        stream: bool | None = None,
    ) -> ModelReply:
        """Ask the first endpoint that answers; retry and fall back as documented above.

        Raises the last attempt's ``ModelTimeout`` (``ModelDeadline`` when the call's
        deadline ended it), ``ModelUnavailable``, ``ModelHTTPError`` or
        ``ModelResponseInvalid`` (``ModelResponseTooLarge``) when no attempt succeeds.
        """
        call = self._call(bounds)
        return self._attempts(
            endpoints,
            lambda endpoint: self._chat_once(call, endpoint, messages, tools, options, stream),
            on_failure,
            call,
        )

    def chat_once(
        self,
        endpoint: Endpoint,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        options: ChatOptions = NO_OPTIONS,
        *,
        bounds: Bounds | None = None,
        stream: bool | None = None,
    ) -> ModelReply:
        """One attempt, no retry: the reply, or a typed ``ModelError``."""
        return self._chat_once(self._call(bounds), endpoint, messages, tools, options, stream)

    def _chat_once(
        self,
        call: _Call,
        endpoint: Endpoint,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]],
        options: ChatOptions,
        stream: bool | None = None,
    ) -> ModelReply:
        stream = self.stream if stream is None else stream
        body = chat_body(endpoint.api, endpoint.model, messages, tools, options, stream=stream)
        started = self._clock()
        with self._exchange(
            call,
            endpoint,
            "POST",
            CHAT_PATHS[endpoint.api],
            content=msgspec.json.encode(body),
            headers={
                "Content-Type": "application/json",
                "Accept": _ACCEPT[endpoint.api] if stream else "application/json",
            },
        ) as chunks:
            if stream:
                reply = parse_stream(endpoint.api, _lines(chunks), self._counter())
            else:
                reply = parse_chat(endpoint.api, b"".join(chunks))
        elapsed_ms = (self._clock() - started) * 1000.0
        if len(reply.tool_calls) > MAX_TOOL_CALLS:
            raise ModelResponseInvalid(
                f"{endpoint.label}: the answer holds {len(reply.tool_calls):,} tool calls; "
                f"no answer is taken with more than {MAX_TOOL_CALLS:,}"
            )
        return self._finish(reply, endpoint, tools, elapsed_ms)

    def _finish(
        self,
        reply: ModelReply,
        endpoint: Endpoint,
        tools: Sequence[dict[str, Any]],
        elapsed_ms: float,
    ) -> ModelReply:
        changes: dict[str, Any] = {"endpoint": endpoint.label}
        if not reply.duration_ms:
            changes["duration_ms"] = elapsed_ms
        # a cut answer's text ends where the cap fell: a call in it is not to be trusted
        if self.text_fallback and tools and not reply.tool_calls and reply.done_reason != LENGTH:
            call = extract_tool_call(reply.content, tool_names(tools))
            if call is not None:
                changes["tool_calls"] = (call,)
                changes["extracted_from_text"] = True
        if self.identify_models and endpoint.api == "ollama" and "@" not in reply.model_identity:
            digest = self._digest(endpoint, reply.model_identity or endpoint.model)
            if digest:
                changes["model_identity"] = f"{reply.model_identity or endpoint.model}@{digest}"
        return msgspec.structs.replace(reply, **changes)

    def _counter(self) -> Callable[[str], None] | None:
        """A fresh count of one attempt's pieces, told to ``on_stream``."""
        on_stream = self.on_stream
        if on_stream is None:
            return None
        count = 0

        def counted(_piece: str) -> None:
            nonlocal count
            count += 1
            on_stream(count)

        return counted

    # -- discovery -----------------------------------------------------------------------

    def list_models(
        self,
        base_url: str,
        api: Api = "ollama",
        *,
        on_failure: OnFailure | None = None,
        bounds: Bounds | None = None,
    ) -> tuple[ModelInfo, ...]:
        """The models a server offers (``GET /api/tags`` or ``GET /v1/models``),
        with the same retries as a chat (or as ``bounds`` say)."""
        endpoint = Endpoint(base_url=base_url, model="", api=api)
        call = self._call(bounds)
        return self._attempts(
            endpoint, lambda target: self._list_once(call, target), on_failure, call
        )

    def has_model(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's server lists its model (one attempt; False if down)."""
        try:
            models = self._list_once(self._call(None), endpoint)
        except ModelError:
            return False
        return any(same_model(m.name, endpoint.model) for m in models)

    def _list_once(self, call: _Call, endpoint: Endpoint) -> tuple[ModelInfo, ...]:
        with self._exchange(call, endpoint, "GET", MODELS_PATHS[endpoint.api]) as chunks:
            return parse_models(endpoint.api, b"".join(chunks))

    def _digest(self, endpoint: Endpoint, model: str) -> str:
        key = (endpoint.label, model)
        if key not in self._digests:
            lookup = _Call(bounds=self.bounds, ends_at=None, budget=LOOKUP_SECONDS)
            try:
                models = self._list_once(lookup, endpoint)
            except ModelError:
                models = ()
            self._digests[key] = next(
                (m.digest for m in models if m.digest and same_model(m.name, model)), ""
            )
        return self._digests[key]

    # -- one HTTP exchange, bounded in time and size ---------------------------------------

    def _call(self, bounds: Bounds | None) -> _Call:
        chosen = self.bounds if bounds is None else _checked(bounds)
        ends_at = None if chosen.deadline is None else self._clock() + chosen.deadline
        return _Call(bounds=chosen, ends_at=ends_at)

    def _remaining(self, call: _Call) -> float | None:
        return None if call.ends_at is None else call.ends_at - self._clock()

    @contextlib.contextmanager
    def _exchange(
        self,
        call: _Call,
        endpoint: Endpoint,
        method: str,
        path: str,
        **request: Any,
    ) -> Iterator[Iterator[bytes]]:
        """Send one request and hand over its body as counted pieces; an error
        status becomes ``ModelHTTPError``, httpx's errors ours, and the connection
        is closed on the way out whatever happened (the rest of a body unread).
        A timeout whose wait the deadline had shortened is the deadline's."""
        remaining = self._remaining(call)
        if remaining is not None and remaining <= 0:
            raise _deadline_passed(call, endpoint)
        try:
            with _mapped_errors(endpoint):
                sent = self.http.build_request(
                    method,
                    endpoint.label + path,
                    timeout=call.bounds.timeouts.for_httpx(remaining),
                    **request,
                )
                sent.headers["Accept-Encoding"] = "identity"  # see _pieces
                with Watchdog(
                    sent, remaining if remaining is not None else call.budget
                ) as watchdog:
                    try:
                        response = self.http.send(sent, stream=True)
                        try:
                            chunks = self._pieces(response, call, endpoint)
                            if not response.is_success:
                                head = _head(chunks, ERROR_BODY_LIMIT)
                                raise _status_error(response, endpoint, head)
                            yield chunks
                        finally:
                            response.close()
                    except (httpx.HTTPError, OSError, ModelError) as error:
                        # the socket shut at the deadline: a body with no length then
                        # just ends, and what was read of it is no JSON ("invalid", the
                        # model blamed) or a stream without its end ("unavailable")
                        if watchdog.fired and not isinstance(error, ModelDeadline):
                            raise _deadline_passed(call, endpoint) from error
                        raise
        except ModelTimeout as error:
            cause = error.__cause__
            phase = _TIMEOUT_PHASES.get(type(cause)) if cause is not None else None
            if remaining is not None and phase and remaining < getattr(call.bounds.timeouts, phase):
                raise _deadline_passed(call, endpoint, ended=error) from error
            raise

    def _pieces(self, response: httpx.Response, call: _Call, endpoint: Endpoint) -> Iterator[bytes]:
        """The body as it arrives, counted: past the cap or the deadline it stops
        with the matching error (checked per piece, so a trickle is cut too). The
        bytes as sent: a body compressed although the request asked for none is
        refused, since its cap would count what arrived, not what it unpacks to (a
        gzip of 1,827 bytes unpacked to 1 GiB, and the engine to 7 GB)."""
        limit = call.bounds.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if response.is_success and declared.isdigit() and int(declared) > limit:
            raise _too_large(endpoint, limit, f"it announced {int(declared)} bytes")
        encoding = compression(response)
        if response.is_success and encoding:
            raise ModelResponseInvalid(
                f"{endpoint.label}: the answer is compressed ({printable(encoding)[:40]}) "
                "though autonomy asks for none (Accept-Encoding: identity)"
            )
        received = 0
        for piece in as_sent(response):
            received += len(piece)
            if received > limit and response.is_success:
                raise _too_large(endpoint, limit, f"more than {limit} bytes arrived")
            remaining = self._remaining(call)
            if remaining is not None and remaining <= 0:
                raise _deadline_passed(call, endpoint, received)
            yield piece

    # -- the retry loop ------------------------------------------------------------------

    def _attempts(
        self,
        endpoints: Endpoint | Sequence[Endpoint],
        operation: Callable[[Endpoint], T],
        on_failure: OnFailure | None,
        call: _Call,
    ) -> T:
        targets = (endpoints,) if isinstance(endpoints, Endpoint) else tuple(endpoints)
        if not targets:
            raise ValueError("no endpoint to ask")
        retry = call.bounds.retry
        attempt = 0
        last: ModelError | None = None
        for position, endpoint in enumerate(targets):
            for tries in range(1, retry.attempts + 1):
                attempt += 1
                try:
                    return operation(endpoint)
                except ModelError as error:
                    last = error
                    again_here = error.retryable and tries < retry.attempts
                    elsewhere = error.retryable and position + 1 < len(targets)
                    delay = self._delay(tries, error, retry) if again_here else 0.0
                    remaining = self._remaining(call)
                    if (again_here or elsewhere) and remaining is not None and remaining <= delay:
                        # no time left for another attempt: the deadline ends the call
                        last = _deadline_passed(call, endpoint, before_retry=error)
                        again_here = elsewhere = False
                    if on_failure is not None:
                        on_failure(FailedAttempt(attempt, endpoint, last, again_here or elsewhere))
                    if last is not error:
                        raise last from error
                    if not error.retryable:
                        raise
                    if again_here:
                        self._sleep(delay)
        assert last is not None
        last.add_note(f"gave up after {attempt} attempts on {', '.join(t.label for t in targets)}")
        raise last

    def _delay(self, failures: int, error: ModelError, retry: RetryPolicy) -> float:
        if isinstance(error, ModelHTTPError) and error.retry_after is not None:
            return min(retry.max_delay, max(0.0, error.retry_after))
        return retry.delay(failures, self._random)


def compression(response: httpx.Response) -> str:
    """The compression an answer says it has ("" for none): autonomy asks for none
    (``Accept-Encoding: identity``), and counts the bytes as sent (``as_sent``)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    return "" if encoding in ("", "identity") else encoding


def as_sent(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive, never unpacked (a response already read, as
    an in-process transport gives, is only in memory)."""
    return response.iter_bytes() if response.is_stream_consumed else response.iter_raw()


class Watchdog:
    """Ends an exchange at its deadline, whatever it is waiting for. httpx bounds each
    read, not the whole: a server that sends ``102 Processing`` every second, or its
    headers a byte at a time, kept a call (and the run) waiting for ever. The
    connection is made for this request alone (``Connection: close``), so that its
    socket is known (httpcore's trace), and shut down when the time is up."""

    def __init__(self, request: httpx.Request, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._streams: list[Any] = []
        self._timer: threading.Timer | None = None
        if seconds is not None:
            request.headers["Connection"] = "close"
            request.extensions["trace"] = self._trace

    def _trace(self, name: str, info: dict[str, Any]) -> None:
        if name in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            self._streams.append(info.get("return_value"))

    def __enter__(self) -> Watchdog:
        if self.seconds is not None:
            self._timer = threading.Timer(max(self.seconds, 0.0), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        self.fired = True
        for stream in self._streams:
            with contextlib.suppress(OSError, AttributeError):
                stream.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # wakes its read


@dataclass(frozen=True)
class _Call:
    """One call's bounds and the clock time its deadline falls at (None: none)."""

    bounds: Bounds
    ends_at: float | None
    budget: float | None = None
    """Seconds the exchange may take when there is no deadline (``LOOKUP_SECONDS``)."""


def _checked(bounds: Bounds) -> Bounds:
    if bounds.retry.attempts < 1:
        raise ValueError("RetryPolicy.attempts must be at least 1")
    if bounds.max_response_bytes < 1:
        raise ValueError("max_response_bytes must be at least 1")
    return bounds


def _deadline_passed(
    call: _Call,
    endpoint: Endpoint,
    received: int | None = None,
    *,
    ended: ModelError | None = None,
    before_retry: ModelError | None = None,
) -> ModelDeadline:
    deadline = call.bounds.deadline
    what = f"the call's deadline of {deadline:g} s (every attempt and wait included) passed"
    if received is not None:
        what += f" with {received} bytes of the answer received"
    if ended is not None:
        what += f" ({ended})"
    if before_retry is not None:
        what += f" before another attempt could be made; the last one failed: {before_retry}"
    return ModelDeadline(f"{endpoint.label}: {what}")


_TIMEOUT_PHASES: dict[type[BaseException], str] = {
    httpx.ConnectTimeout: "connect",
    httpx.ReadTimeout: "read",
    httpx.WriteTimeout: "write",
    httpx.PoolTimeout: "pool",
}


def _too_large(endpoint: Endpoint, limit: int, how: str) -> ModelResponseTooLarge:
    return ModelResponseTooLarge(
        f"{endpoint.label}: the answer is larger than max_response_bytes ({limit}): {how}; "
        "the connection was closed and the rest not read"
    )


def _head(chunks: Iterator[bytes], limit: int) -> bytes:
    """At most ``limit`` bytes from the start of a body."""
    head = bytearray()
    for piece in chunks:
        head += piece
        if len(head) >= limit:
            break
    return bytes(head[:limit])


_ACCEPT = {"ollama": "application/x-ndjson", "openai": "text/event-stream"}


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (NDJSON, or server-sent events) from body pieces, as bytes: decoding
    stays with the JSON parser, which reports bad UTF-8 as a bad answer instead of
    raising."""
    pending = bytearray()
    for piece in chunks:
        pending += piece
        if b"\n" in piece:  # else no new line: nothing to split (a line of 1-byte pieces
            *complete, rest = pending.split(b"\n")  # was split again at each, quadratic)
            yield from map(bytes, complete)
            pending = bytearray(rest)
    if pending:
        yield bytes(pending)


@contextlib.contextmanager
def _mapped_errors(endpoint: Endpoint) -> Iterator[None]:
    """The one place where httpx's exceptions become ours (``raise ... from``)."""
    try:
        yield
    except ModelError:
        raise
    except Exception as error:
        mapped = _map_error(endpoint, error)
        if mapped is None:
            raise
        raise mapped from error


def _map_error(endpoint: Endpoint, error: BaseException) -> ModelError | None:
    where = endpoint.label
    if isinstance(error, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for the answer",
            httpx.WriteTimeout: "sending the request",
            httpx.PoolTimeout: "waiting for a free connection",
        }.get(type(error), "talking to the server")
        return ModelTimeout(f"{where}: timed out {phase}")
    if isinstance(error, httpx.UnsupportedProtocol | httpx.InvalidURL):
        unusable = ModelUnavailable(f"{where}: not a usable server URL ({error})")
        unusable.retryable = False  # a typo in the config does not heal by waiting
        return unusable
    if isinstance(error, httpx.ConnectError):
        return ModelUnavailable(f"{where}: cannot connect ({error})")
    if isinstance(error, httpx.TransportError):
        # a reset or a server that hung up mid-answer: the host is there but failing
        return ModelUnavailable(f"{where}: connection lost ({type(error).__name__}: {error})")
    if isinstance(error, httpx.DecodingError):
        return ModelResponseInvalid(f"{where}: the answer could not be decoded ({error})")
    return None


def _status_error(response: httpx.Response, endpoint: Endpoint, body: bytes) -> ModelHTTPError:
    """The error for an answer with an error status; what the server said is kept in
    the log, less the key the request carried (``redacted``)."""
    status = response.status_code
    said = redacted(error_text(body), response.request)
    overflow = context_overflow(body) if 400 <= status < 500 or status == 500 else None
    if overflow is not None:
        return ModelContextOverflow(
            f"{endpoint.label} answered HTTP {status} {response.reason_phrase}: the request "
            f"does not fit the context window{_overflow_sizes(overflow)}: {said}",
            status=status,
            context=overflow.context,
            prompt_tokens=overflow.prompt_tokens,
        )
    return ModelHTTPError(
        f"{endpoint.label} answered HTTP {status} {response.reason_phrase}: {said}",
        status=status,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _overflow_sizes(overflow: Overflow) -> str:
    sizes = []
    if overflow.prompt_tokens:
        sizes.append(f"{overflow.prompt_tokens} prompt tokens")
    if overflow.context:
        sizes.append(f"a window of {overflow.context}")
    return f" ({' for '.join(sizes)})" if sizes else ""


def _retry_after(value: str | None) -> float | None:
    # only the delta-seconds form; an HTTP date would need the wall clock we don't read
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def same_model(listed: str, wanted: str) -> bool:
    """Whether a listed model is the one wanted: Ollama lists "llama3.2:latest" for
    a request that said "llama3.2"."""
    return listed == wanted or listed == f"{wanted}:latest"


def tool_names(tools: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The names of tools given in the ``{"type": "function", "function": {...}}`` shape."""
    names = []
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return tuple(names)
