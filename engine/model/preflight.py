"""The preflight: before a run writes its first event, can each role's model be asked?

For every role, its primary endpoint is asked for its model list (``GET /api/tags``
for Ollama, ``GET /v1/models`` for OpenAI-compatible servers), once per server, one
attempt each with short timeouts. A role whose primary fails falls back to its
fallbacks in order, as a run would. Three outcomes per endpoint:

* usable: the server answers and lists the model;
* usable with a **warning**: the server will answer under another model's name
  (llama-server lists its one model and answers every request with it, whatever
  name is asked for), or the primary is unusable and a fallback serves the role;
* **unusable**, with the likely fix: the server is down (is it running?), the URL
  ends in ``/v1`` (drop it: the client adds the API's paths), an OpenAI-compatible
  server is addressed as Ollama (``--api openai``), the model is not pulled
  (``ollama pull NAME``) or not served (the names it serves are listed).

A role with no usable endpoint fails the run before it starts:
``PreflightFailed``, one line per problem, naming the URL and the model. Warnings
are returned; the runner prints them and records them in ``run.started`` (or
``run.resumed``). The preflight decides nothing in the run: a replay never runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from engine.errors import (
    ModelError,
    ModelHTTPError,
    ModelResponseInvalid,
    ModelTimeout,
    PreflightFailed,
)
from engine.model.bounds import Bounds, RetryPolicy, Timeouts
from engine.model.client import ModelClient, same_model
from engine.model.credentials import ServerKeys, origin, server_keys_file
from engine.model.roles import ROLE_NAMES, Endpoint, Roles
from engine.model.wire import MODELS_PATHS, Api, ModelInfo
from engine.terminal import clipped, one_line

READ_TIMEOUT = 30.0
"""Seconds a server may take to list its models (a loaded Ollama answers at once)."""

SKIP_HINT = "(--no-preflight skips this check)"


@dataclass(frozen=True)
class _Verdict:
    """What the preflight found about one endpoint: a problem (unusable), a warning
    (usable), or neither."""

    problem: str = ""
    warning: str = ""
    of_server: bool = False
    """The problem is the server's (down, wrong URL or API): every model asked of it
    shares it, and is named in one line with it."""


def preflight(client: ModelClient, roles: Roles) -> list[str]:
    """Check every role's model (see the module docstring). Returns the warnings;
    raises ``PreflightFailed`` listing each unusable role's problems."""
    listings: dict[tuple[str, Api], tuple[ModelInfo, ...] | str] = {}
    verdicts: dict[tuple[str, str, Api], _Verdict] = {}
    problems: dict[_Verdict, list[tuple[str, str]]] = {}  # -> (role, model) pairs
    warnings: dict[str, list[str]] = {}

    def judge(endpoint: Endpoint, connect: float) -> _Verdict:
        key = (endpoint.label, endpoint.model, endpoint.api)
        if key not in verdicts:
            server = (endpoint.label, endpoint.api)
            if server not in listings:
                listings[server] = _listing(client, endpoint, connect)
            verdicts[key] = _verdict(endpoint, listings[server])
        return verdicts[key]

    for role in ROLE_NAMES:
        config = roles.get(role)
        tried: list[tuple[Endpoint, _Verdict]] = []
        for endpoint in config.endpoints():
            verdict = judge(endpoint, config.connect_timeout)
            tried.append((endpoint, verdict))
            if not verdict.problem:
                break
        usable, last = tried[-1]
        if last.problem:
            for endpoint, verdict in tried:
                problems.setdefault(verdict, []).append((role, endpoint.model))
            continue
        if last.warning:
            warnings.setdefault(last.warning, []).append(role)
        for endpoint, verdict in tried[:-1]:
            note = (
                f"{_said(verdict, endpoint.model)}; "
                f"the fallback {usable.label} ({usable.model}) serves instead"
            )
            warnings.setdefault(note, []).append(role)
    if problems:
        lines = [_problem_line(v, asked) for v, asked in problems.items()]
        if len(lines) == 1:
            raise PreflightFailed(f"preflight: {lines[0]} {SKIP_HINT}")
        raise PreflightFailed(
            "preflight: the models cannot be asked "
            + SKIP_HINT
            + "\n"
            + "\n".join(f"  {line}" for line in lines)
        )
    return [f"{_who(r)}{w}" for w, r in warnings.items()]


def _problem_line(verdict: _Verdict, asked: Sequence[tuple[str, str]]) -> str:
    if not verdict.of_server:
        return _who([role for role, _model in asked]) + verdict.problem
    by_model: dict[str, list[str]] = {}
    for role, model in asked:
        by_model.setdefault(model, []).append(role)
    if len(by_model) == 1:
        ((model, roles),) = by_model.items()
        return _who(roles) + _said(verdict, model)
    models = ", ".join(f"{model} ({', '.join(roles)})" for model, roles in by_model.items())
    return f"models {models} at {verdict.problem}"


def _said(verdict: _Verdict, model: str) -> str:
    """The problem, naming the model asked for."""
    return f"model {model} at {verdict.problem}" if verdict.of_server else verdict.problem


def _who(roles: Sequence[str]) -> str:
    if len(roles) == len(ROLE_NAMES):
        return ""
    return f"{', '.join(roles)}: "


def _listing(
    client: ModelClient, endpoint: Endpoint, connect: float
) -> tuple[ModelInfo, ...] | str:
    """The models the endpoint's server lists, or what is wrong with the server (and
    the fix), said of the server alone: every model asked of it shares the finding."""
    try:
        return _list(client, endpoint.label, endpoint.api, connect)
    except ModelError as error:
        return _diagnosis(client, endpoint, error, connect)


def _list(client: ModelClient, base_url: str, api: Api, connect: float) -> tuple[ModelInfo, ...]:
    bounds = Bounds(
        timeouts=Timeouts(connect=connect, read=READ_TIMEOUT),
        retry=RetryPolicy(attempts=1),
        deadline=connect + READ_TIMEOUT,
    )
    return client.list_models(base_url, api, bounds=bounds)


def _diagnosis(client: ModelClient, endpoint: Endpoint, error: ModelError, connect: float) -> str:
    url, api, path = endpoint.label, endpoint.api, MODELS_PATHS[endpoint.api]
    if isinstance(error.__cause__, httpx.ConnectError):
        start = " (start it with: ollama serve)" if api == "ollama" else ""
        return f"cannot connect (connection refused); is the server running?{start}"
    if isinstance(error, ModelTimeout):
        return f"GET {path} got no answer in time; is the server overloaded?"
    if urlsplit(url).path.rstrip("/").endswith("/v1"):
        fixed = url.rstrip("/")[: -len("/v1")]
        return (
            f"GET {url}{path} failed ({_short(error)}); the URL ends in /v1, "
            f"but the API's paths are added to it: drop the trailing /v1 (--model-url {fixed})"
        )
    not_found = isinstance(error, ModelHTTPError) and error.status == 404
    wrong_api = not_found or isinstance(error, ModelResponseInvalid)
    if wrong_api and api == "ollama" and _answers(client, url, "openai", connect):
        return (
            f"GET {path} failed ({_short(error)}) but GET /v1/models answers: "
            "this is an OpenAI-compatible server, not Ollama; use --api openai "
            '(or api = "openai" in autonomy.toml)'
        )
    if not_found:
        return f"GET {path} is not found (HTTP 404); is {url} the model server's base URL?"
    if isinstance(error, ModelHTTPError) and error.status in (401, 403):
        sent = "the key sent was refused" if _keyed(client, url) else "no key was sent"
        return (
            f"GET {path} failed ({_short(error)}): the server asks for a key, and {sent}; "
            f'put it in {server_keys_file()}: "{origin(url)}" = "KEY" (see the README)'
        )
    return f"GET {path} failed: {_short(error)}"


def _keyed(client: ModelClient, url: str) -> bool:
    """Whether the client sends ``url``'s server a key."""
    auth = client.http.auth
    return isinstance(auth, ServerKeys) and auth.has_key_for(url)


def _answers(client: ModelClient, url: str, api: Api, connect: float) -> bool:
    try:
        _list(client, url, api, connect)
    except ModelError:
        return False
    return True


def _short(error: ModelError) -> str:
    return one_line(clipped(str(error), 200))


def _verdict(endpoint: Endpoint, listing: tuple[ModelInfo, ...] | str) -> _Verdict:
    if isinstance(listing, str):
        return _Verdict(problem=f"{endpoint.label}: {listing}", of_server=True)
    where = f"model {endpoint.model} at {endpoint.label}"
    names = [m.name for m in listing]
    if any(same_model(name, endpoint.model) for name in names):
        return _Verdict()
    # each name as long as a model's name can be read: ten of 300 KB each made a
    # 3 MB error line; and on its line: a name with line breaks printed lines of
    # autonomy's own ("run …: completed" under a run that failed)
    shown = [one_line(clipped(name, 100)) for name in names[:10]]
    served = ", ".join(shown) + (", …" if len(names) > 10 else "") if names else "none"
    if endpoint.api == "ollama":
        return _Verdict(
            problem=f"{where}: not on this server (it has: {served}); "
            f"fetch it with: ollama pull {endpoint.model}"
        )
    if len(names) == 1:
        # llama-server and its kin serve one model and answer to any name
        return _Verdict(
            warning=f"{where}: the server lists only {shown[0]}; it will answer in its "
            f"place (servers such as llama-server ignore the name asked for)"
        )
    return _Verdict(
        problem=f"{where}: not served here (it serves: {served}); use one of those names"
    )
