"""Context discovery: ask a model server how large a model's context window is.

The engine fits every request to a window and caps every answer to a share of it
(``engine.model.sizing``). A window assumed too large is what made llama-server
refuse requests (``exceed_context_size_error``); the servers say their window, each
in its own way:

==========================  ===================================================
Ollama                      ``POST /api/show {"model": NAME}``: ``parameters``
                            holds the model's ``num_ctx`` when its Modelfile sets
                            one (the window), ``model_info`` the trained maximum
                            as ``<architecture>.context_length``
llama-server                ``GET /props``: ``default_generation_settings.n_ctx``
                            (the window of one slot)
OpenAI-compatible           ``GET /v1/models``: llama.cpp's ``meta.n_ctx`` and
                            ``meta.n_ctx_train``, vLLM's ``max_model_len``
==========================  ===================================================

``discover(http, endpoint)`` asks once, with short timeouts and a small size cap,
and returns what it learned (``Learned``) or why it learned nothing; it never
raises for a server that is down, says 404 or answers something else. It writes
nothing, so a preflight can call it as well as a run.

``learn_contexts(log, roles, http)`` asks for each role whose ``num_ctx`` is unset
(a ``num_ctx`` in the config wins) and records what each server said as
``model.context_learned``, once per server and model. A run does this when it
starts and when it resumes; a replay takes the events from the log and asks no
server.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from engine.model.client import Watchdog, as_sent, compression
from engine.model.recording import RunLog
from engine.model.roles import ROLE_NAMES, Endpoint, Roles
from engine.model.wire import token_count
from events.schema import ModelContextLearned

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
DEADLINE = 15.0
"""The longest one discovery request may take once its answer has begun."""
"""Discovery is a courtesy: a server slow to say its window is not waited for."""

MAX_BYTES = 4_000_000
"""A model description larger than this is not read (Ollama's carries the template
and licence; the tokenizer's arrays only when asked for, which we never do)."""


class Learned(msgspec.Struct, frozen=True, kw_only=True):
    """What a server said of one model's window; 0 for what it did not say."""

    context: int = 0
    trained: int = 0
    source: str = ""


MIN_WINDOW = 256
"""The smallest window a server may say: one of 1 token fitted every prompt to
nothing."""


MAX_WINDOW = 2**27
"""The largest window a server may say (134 million tokens; the largest models offer
ten): 2^53 tokens was learned, printed and sent back as ``num_ctx``."""


def _window(tokens: int) -> int:
    return tokens if MIN_WINDOW <= tokens <= MAX_WINDOW else 0


def _num_ctx(parameters: str) -> int:
    """The number of the first ``num_ctx N`` line of Ollama's parameters text, 0 if
    none. Read line by line: the regular expression it was (``^\\s*num_ctx...`` with
    MULTILINE) took quadratic time in the blank lines before it, and 400,000 of them
    held a run before its first model call for longer than any bound."""
    for line in parameters.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "num_ctx":
            number = words[1]
            # ASCII digits, in the range a window can be (10,000 digits were a
            # ValueError, a window of 10**23 tokens was learned and sent back)
            if number.isascii() and number.isdigit() and len(number) <= 16:
                return token_count(int(number))
    return 0


class _Unanswered(Exception):
    """One discovery request got no usable answer (its message says why)."""


def discover(http: httpx.Client, endpoint: Endpoint) -> Learned | str:
    """What ``endpoint``'s server says of its model's window, or why it said nothing."""
    if endpoint.api == "ollama":
        asks: list[Callable[[], Learned]] = [lambda: _ollama_show(http, endpoint)]
    else:
        asks = [lambda: _props(http, endpoint), lambda: _models(http, endpoint)]
    reasons = []
    learned = Learned()
    for ask in asks:
        try:
            found = ask()
        except _Unanswered as e:
            reasons.append(str(e))
            continue
        learned = Learned(  # a window too small for a system prompt is no window
            context=learned.context or _window(found.context),
            trained=learned.trained or _window(found.trained),
            source=learned.source or found.source,
        )
        if learned.context:
            break
    if learned.context or learned.trained:
        return learned
    return "; ".join(reasons) or "the server did not say"


def learn_contexts(
    log: RunLog,
    roles: Roles,
    http: httpx.Client,
    *,
    causation: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Ask each role's server for its window (roles whose ``num_ctx`` is unset) and
    append ``model.context_learned`` for each answer to ``log`` (an
    ``engine.agent.runlog.RunLog``), once per server and model."""
    asked: set[tuple[str, str]] = set()
    for role in ROLE_NAMES:
        config = roles.get(role)
        endpoint = config.primary
        key = (endpoint.label, endpoint.model)
        if config.num_ctx is not None or key in asked:
            continue
        asked.add(key)
        learned = discover(http, endpoint)
        where = f"context window of {endpoint.model} at {endpoint.label}"
        if isinstance(learned, str):
            if progress is not None:
                progress(f"{where} not learned: {learned}")
            continue
        if progress is not None:
            progress(f"{where}: {_described(learned)} (from {learned.source})")
        log.append(
            ModelContextLearned(
                endpoint=endpoint.label,
                model=endpoint.model,
                context=learned.context,
                trained=learned.trained,
                source=learned.source,
            ),
            causation=causation,
        )


def _described(learned: Learned) -> str:
    """What was learned, and what the run does with it (``engine.model.sizing``)."""
    if learned.context:
        return f"{learned.context} tokens"
    if learned.trained:
        return (
            f"not said by the server (the model was trained for {learned.trained} tokens); "
            "each role keeps its default window, or that one if smaller (num_ctx sets it)"
        )
    return "not said by the server; each role keeps its default window (num_ctx sets it)"


# -- the three APIs ----------------------------------------------------------------------


def _ollama_show(http: httpx.Client, endpoint: Endpoint) -> Learned:
    # "name" is what Ollama before 0.5 read; later ones read "model" and accept both
    show = _ask(
        http, endpoint, "POST", "/api/show", {"model": endpoint.model, "name": endpoint.model}
    )
    parameters = show.get("parameters")
    info = show.get("model_info")
    trained = 0
    if isinstance(info, dict):
        trained = next(
            (token_count(v) for k, v in info.items() if str(k).endswith(".context_length")), 0
        )
    context = _num_ctx(parameters) if isinstance(parameters, str) else 0
    return Learned(context=context, trained=trained, source="/api/show")


def _props(http: httpx.Client, endpoint: Endpoint) -> Learned:
    props = _ask(http, endpoint, "GET", "/props")
    settings = props.get("default_generation_settings")
    context = token_count(settings.get("n_ctx")) if isinstance(settings, dict) else 0
    if not context:
        raise _Unanswered("/props: no default_generation_settings.n_ctx")
    return Learned(context=context, source="/props")


def _models(http: httpx.Client, endpoint: Endpoint) -> Learned:
    listing = _ask(http, endpoint, "GET", "/v1/models")
    data = listing.get("data")
    models = [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []
    # llama-server serves one model whatever the name asked for; others list many
    chosen = next((m for m in models if m.get("id") == endpoint.model), None)
    if chosen is None and len(models) == 1:
        chosen = models[0]
    if chosen is None:
        raise _Unanswered(f"/v1/models does not list {endpoint.model!r}")
    meta = chosen.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    context = token_count(meta.get("n_ctx")) or token_count(chosen.get("max_model_len"))
    trained = token_count(meta.get("n_ctx_train"))
    if not context and not trained:
        raise _Unanswered(f"/v1/models says no window for {chosen.get('id')!r}")
    return Learned(context=context, trained=trained, source="/v1/models")


def _ask(
    http: httpx.Client, endpoint: Endpoint, method: str, path: str, body: Any = None
) -> dict[str, Any]:
    url = endpoint.label + path
    try:
        headers = {"Accept-Encoding": "identity"}  # and only what arrives is counted
        ends_at = time.monotonic() + DEADLINE
        request = http.build_request(method, url, json=body, timeout=TIMEOUT, headers=headers)
        with Watchdog(request, DEADLINE) as watchdog:
            try:
                response = http.send(request, stream=True)
            except httpx.HTTPError as e:
                said = "no answer in time" if watchdog.fired else f"{type(e).__name__}: {e}"
                raise _Unanswered(f"{path}: {said}") from e
        with contextlib.closing(response):
            if not response.is_success:
                raise _Unanswered(f"{path}: HTTP {response.status_code}")
            if compression(response):
                raise _Unanswered(f"{path}: the answer is compressed, though asked not to be")
            content = bytearray()
            for piece in as_sent(response):
                content += piece
                if len(content) > MAX_BYTES:
                    raise _Unanswered(f"{path}: the answer is larger than {MAX_BYTES} bytes")
                if time.monotonic() > ends_at:  # a trickle: discovery is a courtesy
                    raise _Unanswered(f"{path}: no whole answer within {DEADLINE:g} s")
    except httpx.HTTPError as e:
        raise _Unanswered(f"{path}: {type(e).__name__}: {e}") from e
    try:
        answer = msgspec.json.decode(bytes(content))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _Unanswered(f"{path}: not JSON") from e
    if not isinstance(answer, dict):
        raise _Unanswered(f"{path}: not a JSON object")
    return answer


__all__ = ["Learned", "discover", "learn_contexts"]
