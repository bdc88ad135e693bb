"""Which model plays which role, where it runs, and where to go when that host is down.

Four roles use a model: the **arbiter** (picks the next step in orchestrated mode),
**coding** (writes files through tools), **reasoning** (plans and debugs) and
**analysis** (reviews and summarises). Each role names one model on one server and
an ordered list of fallbacks, tried in turn when the one before is unreachable.

The defaults reproduce the predecessor's real set-up: ``qwen2.5:14b`` for the arbiter
and analysis, ``qwen2.5-coder:32b`` for coding, ``qwen2.5:32b`` for reasoning, on two
Ollama hosts. Here the first host is ``http://localhost:11434`` (Ollama's default
port) and the second, the fallback for every role, ``http://localhost:11435``
(a second ``ollama serve`` with ``OLLAMA_HOST=127.0.0.1:11435``, or a tunnel to
another machine). The temperatures are this project's choices: low because the
engine wants repeatable decisions.

A role's context window (``num_ctx``) is left unset by default: the run asks the
server (``engine.model.discovery``) and takes the window it says; a server that says
only its model's trained maximum gets ``DEFAULT_CONTEXT`` for the role (8192 for the
arbiter and analysis, 16384 for coding and reasoning) or that maximum if smaller,
and one that says nothing gets ``DEFAULT_CONTEXT``. A ``num_ctx`` set in the config
wins over what the server says (Ollama is then asked for that window).

In ``autonomy.toml`` a role is a table; keys left out keep their default::

    [models.coding]
    model = "qwen2.5-coder:32b"
    base_url = "http://gpu-box:11434"
    num_ctx = 32768                 # unset: learned from the server
    fallbacks = [
        { base_url = "http://localhost:11434", model = "qwen2.5-coder:14b" },
        { base_url = "http://localhost:8000", api = "openai", model = "Qwen2.5-Coder-32B" },
    ]

Each role also bounds its calls (``engine.model.bounds``); the defaults suit a slow
local model::

    [models.coding]
    connect_timeout = 10.0          # seconds to connect
    read_timeout = 600.0            # seconds to wait for each piece of the answer
    deadline = 1800.0               # seconds for the whole call, retries and waits included
    retries = 2                     # further attempts per endpoint after the first
    max_response_bytes = 4000000    # a longer answer is cut off and fails the call
    stream = true                   # answers in pieces (NDJSON / server-sent events)

Streaming changes no event: a streamed answer is recorded as the whole one would be.
It lets the read timeout bound the gap between tokens rather than the whole answer,
and lets a face show the answer growing (``autonomy run`` on a terminal).

and the length of one answer, in tokens (``engine.model.sizing``)::

    [models.coding]
    max_answer_tokens = 2048        # unset: a quarter of the context; 0: no cap

``roles_from_mapping(data["models"])`` turns that into ``Roles``; a wrong key or type
is a ``ConfigError`` that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from engine.errors import ConfigError
from engine.model.bounds import (
    DEFAULT_BOUNDS,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES,
    Bounds,
)
from engine.model.wire import Api, ChatOptions

PRIMARY_HOST = "http://localhost:11434"
SECOND_HOST = "http://localhost:11435"
ROLE_NAMES = ("arbiter", "coding", "reasoning", "analysis")

WEEK = 7 * 24 * 3600.0
TOKENS = 2**24
"""More tokens than any model's context window (16,777,216): a bound on sizes in tokens."""
Seconds = Annotated[float, msgspec.Meta(gt=0, le=WEEK)]
"""A wait: above zero and at most a week (finite: an infinite socket timeout is an
``OverflowError`` deep in the client, not "wait for ever")."""


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One place a model can be asked: a server, the API it speaks, a model on it."""

    base_url: str
    model: str
    api: Api = "ollama"

    @property
    def label(self) -> str:
        """How the endpoint is named in events and messages."""
        return self.base_url.rstrip("/")


class RoleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The model for one role, its sampling options and its fallbacks, in order."""

    model: str
    base_url: str = PRIMARY_HOST
    api: Api = "ollama"
    num_ctx: Annotated[int, msgspec.Meta(ge=1, le=TOKENS)] | None = None
    """The context window, in tokens; None: learned from the server (see above)."""
    temperature: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.2
    """Finite and not negative (NaN, which JSON has no word for, is refused)."""
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    fallbacks: tuple[Endpoint, ...] = ()
    connect_timeout: Seconds = DEFAULT_CONNECT_TIMEOUT
    read_timeout: Seconds = DEFAULT_READ_TIMEOUT
    deadline: Seconds = DEFAULT_DEADLINE
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = DEFAULT_RETRIES
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1, le=2**30)] = DEFAULT_MAX_RESPONSE_BYTES
    max_answer_tokens: Annotated[int, msgspec.Meta(ge=0, le=TOKENS)] | None = None
    """The cap on one answer's tokens; None: a quarter of the context; 0: no cap
    (see ``engine.model.sizing``)."""
    stream: bool = True

    @property
    def primary(self) -> Endpoint:
        return Endpoint(base_url=self.base_url, model=self.model, api=self.api)

    def endpoints(self) -> tuple[Endpoint, ...]:
        """The primary endpoint, then each fallback: the order the client tries them."""
        return (self.primary, *self.fallbacks)

    def options(self, *, num_ctx: int | None = None, num_predict: int | None = None) -> ChatOptions:
        """The sampling options of a request in a window of ``num_ctx`` tokens (the
        role's own by default) with ``num_predict`` as its answer cap."""
        return ChatOptions(
            temperature=self.temperature,
            num_ctx=self.num_ctx if num_ctx is None else num_ctx,
            seed=self.seed,
            num_predict=num_predict,
        )

    def bounds(self, base: Bounds = DEFAULT_BOUNDS) -> Bounds:
        """How long and how much this role's calls may take: the role's five
        settings laid over ``base`` (a client's, which keeps its backoff and its
        write and pool timeouts)."""
        replace = msgspec.structs.replace
        return Bounds(
            timeouts=replace(base.timeouts, connect=self.connect_timeout, read=self.read_timeout),
            retry=replace(base.retry, attempts=self.retries + 1),
            deadline=self.deadline,
            max_response_bytes=self.max_response_bytes,
        )


DEFAULT_CONTEXT: dict[str, int] = {
    "arbiter": 8192,
    "coding": 16384,
    "reasoning": 16384,
    "analysis": 8192,
}
"""The window a role assumes, and asks Ollama for, when neither its config nor its
server says one (before context discovery, these were the roles' ``num_ctx``)."""


def _on_both_hosts(model: str, *, temperature: float) -> RoleConfig:
    return RoleConfig(
        model=model,
        base_url=PRIMARY_HOST,
        temperature=temperature,
        fallbacks=(Endpoint(base_url=SECOND_HOST, model=model),),
    )


def _default_arbiter() -> RoleConfig:
    return _on_both_hosts("qwen2.5:14b", temperature=0.1)


def _default_coding() -> RoleConfig:
    return _on_both_hosts("qwen2.5-coder:32b", temperature=0.2)


def _default_reasoning() -> RoleConfig:
    return _on_both_hosts("qwen2.5:32b", temperature=0.3)


def _default_analysis() -> RoleConfig:
    return _on_both_hosts("qwen2.5:14b", temperature=0.2)


class Roles(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The four roles. ``Roles()`` is the documented default set-up."""

    arbiter: RoleConfig = msgspec.field(default_factory=_default_arbiter)
    coding: RoleConfig = msgspec.field(default_factory=_default_coding)
    reasoning: RoleConfig = msgspec.field(default_factory=_default_reasoning)
    analysis: RoleConfig = msgspec.field(default_factory=_default_analysis)

    def get(self, role: str) -> RoleConfig:
        """The config of ``role``; an unknown role is a ``ConfigError``."""
        if role not in ROLE_NAMES:
            raise ConfigError(f"unknown model role {role!r}; the roles are {', '.join(ROLE_NAMES)}")
        config: RoleConfig = getattr(self, role)
        return config


def roles_from_mapping(data: Mapping[str, Any]) -> Roles:
    """``Roles`` from a config table such as ``[models]`` in ``autonomy.toml``.

    Each role's keys are laid over that role's defaults, so ``{"coding": {"base_url":
    ...}}`` moves coding to another host and keeps its model and fallbacks.
    """
    defaults = msgspec.to_builtins(Roles())
    merged: dict[str, Any] = {}
    for role, table in data.items():
        if role not in ROLE_NAMES:
            raise ConfigError(
                f"models.{role}: unknown model role; the roles are {', '.join(ROLE_NAMES)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"models.{role}: expected a table, got {type(table).__name__}")
        merged[role] = {**defaults[role], **table}
    try:
        return msgspec.convert(merged, Roles)
    except msgspec.ValidationError as e:
        # msgspec names the path as `$.coding.num_ctx`; say it the way the file does
        raise ConfigError(f"models: {str(e).replace('$.', 'models.')}") from e
