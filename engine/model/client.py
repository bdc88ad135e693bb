"""``ModelClient``: chat with a model over HTTP, with finite timeouts, bounded retries
and fallback endpoints.

The predecessor waited forever, returned errors as dicts that were then counted as
answers, and could not say which attempt failed. Here:

* every request carries finite connect/read/write/pool timeouts (``Timeouts``);
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
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from engine.errors import (
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelTimeout,
    ModelUnavailable,
)
from engine.model.roles import Endpoint
from engine.model.textcalls import extract_tool_call
from engine.model.wire import (
    CHAT_PATHS,
    MODELS_PATHS,
    NO_OPTIONS,
    Api,
    ChatOptions,
    ModelInfo,
    ModelReply,
    chat_body,
    error_text,
    parse_chat,
    parse_models,
    parse_ollama_stream,
)
from events.schema import Message

T = TypeVar("T")


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds to wait, per phase of a request (httpx's four timeouts).

    ``read`` bounds the wait for each piece of the answer, not the whole answer: a
    non-streamed request waits for the entire generation before its first byte, so
    it must cover the slowest generation you accept; a streamed one only the gap
    between tokens (plus loading the model).
    """

    connect: float = 5.0
    read: float = 300.0
    write: float = 30.0
    pool: float = 10.0

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how patiently to retry, per endpoint.

    The wait after the n-th failure is ``min(max_delay, base_delay * 2**(n-1))``,
    spread by ±``jitter`` (a fraction) so that many clients do not retry in step;
    a ``Retry-After`` from the server replaces it, capped at ``max_delay``.
    """

    attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25

    def delay(self, failures: int, random: Callable[[], float]) -> float:
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        spread = 1.0 + self.jitter * (2.0 * random() - 1.0)
        return max(0.0, backoff * spread)


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class FailedAttempt:
    """One attempt that failed: where, which (1-based, counted over the whole call,
    across endpoints), why, and whether the client goes on trying."""

    attempt: int
    endpoint: Endpoint
    error: ModelError
    will_retry: bool


OnFailure = Callable[[FailedAttempt], None]


class ModelClient:
    """Chat completions from Ollama or OpenAI-compatible servers.

    ``stream`` selects Ollama's NDJSON streaming (Ollama's own default) instead of
    one JSON answer; OpenAI-compatible endpoints are always asked without streaming.
    ``text_fallback`` extracts a tool call a model wrote as prose (see
    ``engine.model.textcalls``). ``identify_models`` looks up an Ollama model's
    digest once per server and model (``GET /api/tags``) so that replies name the
    exact weights; a failed lookup only leaves the identity at the model name.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        retry: RetryPolicy = DEFAULT_RETRY,
        stream: bool = False,
        text_fallback: bool = True,
        identify_models: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if retry.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        self.http = http
        self.timeouts = timeouts
        self.retry = retry
        self.stream = stream
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
    ) -> ModelReply:
        """Ask the first endpoint that answers; retry and fall back as documented above.

        Raises the last attempt's ``ModelTimeout``, ``ModelUnavailable``,
        ``ModelHTTPError`` or ``ModelResponseInvalid`` when no attempt succeeds.
        """
        return self._attempts(
            endpoints,
            lambda endpoint: self.chat_once(endpoint, messages, tools, options),
            on_failure,
        )

    def chat_once(
        self,
        endpoint: Endpoint,
        messages: Sequence[Message],
        tools: Sequence[dict[str, Any]] = (),
        options: ChatOptions = NO_OPTIONS,
    ) -> ModelReply:
        """One attempt, no retry: the reply, or a typed ``ModelError``."""
        stream = self.stream and endpoint.api == "ollama"
        body = chat_body(endpoint.api, endpoint.model, messages, tools, options, stream=stream)
        url = endpoint.label + CHAT_PATHS[endpoint.api]
        started = self._clock()
        with _mapped_errors(endpoint):
            request = self.http.build_request(
                "POST",
                url,
                content=msgspec.json.encode(body),
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self.timeouts.for_httpx(),
            )
            response = self.http.send(request, stream=True)
            try:
                _check_status(response, endpoint)
                if stream:
                    reply = parse_ollama_stream(response.iter_lines())
                else:
                    reply = parse_chat(endpoint.api, response.read())
            finally:
                response.close()
        elapsed_ms = (self._clock() - started) * 1000.0
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
        if self.text_fallback and tools and not reply.tool_calls:
            call = extract_tool_call(reply.content, tool_names(tools))
            if call is not None:
                changes["tool_calls"] = (call,)
                changes["extracted_from_text"] = True
        if self.identify_models and endpoint.api == "ollama" and "@" not in reply.model_identity:
            digest = self._digest(endpoint, reply.model_identity or endpoint.model)
            if digest:
                changes["model_identity"] = f"{reply.model_identity or endpoint.model}@{digest}"
        return msgspec.structs.replace(reply, **changes)

    # -- discovery -----------------------------------------------------------------------

    def list_models(
        self, base_url: str, api: Api = "ollama", *, on_failure: OnFailure | None = None
    ) -> tuple[ModelInfo, ...]:
        """The models a server offers (``GET /api/tags`` or ``GET /v1/models``),
        with the same retries as a chat."""
        endpoint = Endpoint(base_url=base_url, model="", api=api)
        return self._attempts(endpoint, self._list_once, on_failure)

    def has_model(self, endpoint: Endpoint) -> bool:
        """Whether the endpoint's server lists its model (one attempt; False if down)."""
        try:
            models = self._list_once(endpoint)
        except ModelError:
            return False
        return any(_same_model(m.name, endpoint.model) for m in models)

    def _list_once(self, endpoint: Endpoint) -> tuple[ModelInfo, ...]:
        with _mapped_errors(endpoint):
            response = self.http.get(
                endpoint.label + MODELS_PATHS[endpoint.api], timeout=self.timeouts.for_httpx()
            )
            _check_status(response, endpoint)
            return parse_models(endpoint.api, response.content)

    def _digest(self, endpoint: Endpoint, model: str) -> str:
        key = (endpoint.label, model)
        if key not in self._digests:
            try:
                models = self._list_once(endpoint)
            except ModelError:
                models = ()
            self._digests[key] = next(
                (m.digest for m in models if m.digest and _same_model(m.name, model)), ""
            )
        return self._digests[key]

    # -- the retry loop ------------------------------------------------------------------

    def _attempts(
        self,
        endpoints: Endpoint | Sequence[Endpoint],
        operation: Callable[[Endpoint], T],
        on_failure: OnFailure | None,
    ) -> T:
        targets = (endpoints,) if isinstance(endpoints, Endpoint) else tuple(endpoints)
        if not targets:
            raise ValueError("no endpoint to ask")
        attempt = 0
        last: ModelError | None = None
        for position, endpoint in enumerate(targets):
            for tries in range(1, self.retry.attempts + 1):
                attempt += 1
                try:
                    return operation(endpoint)
                except ModelError as error:
                    last = error
                    again_here = error.retryable and tries < self.retry.attempts
                    elsewhere = error.retryable and position + 1 < len(targets)
                    if on_failure is not None:
                        on_failure(FailedAttempt(attempt, endpoint, error, again_here or elsewhere))
                    if not error.retryable:
                        raise
                    if again_here:
                        self._sleep(self._delay(tries, error))
        assert last is not None
        last.add_note(f"gave up after {attempt} attempts on {', '.join(t.label for t in targets)}")
        raise last

    def _delay(self, failures: int, error: ModelError) -> float:
        if isinstance(error, ModelHTTPError) and error.retry_after is not None:
            return min(self.retry.max_delay, max(0.0, error.retry_after))
        return self.retry.delay(failures, self._random)


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


def _check_status(response: httpx.Response, endpoint: Endpoint) -> None:
    if response.is_success:
        return
    body = response.read()
    status = response.status_code
    raise ModelHTTPError(
        f"{endpoint.label} answered HTTP {status} {response.reason_phrase}: {error_text(body)}",
        status=status,
        retry_after=_retry_after(response.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    # only the delta-seconds form; an HTTP date would need the wall clock we don't read
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _same_model(listed: str, wanted: str) -> bool:
    # Ollama lists "llama3.2:latest" for a request that said "llama3.2"
    return listed == wanted or listed == f"{wanted}:latest"


def tool_names(tools: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The names of tools given in the ``{"type": "function", "function": {...}}`` shape."""
    names = []
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.append(function["name"])
    return tuple(names)
