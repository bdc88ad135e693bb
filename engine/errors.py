"""The engine's exceptions, under the one tree rooted in ``events.errors.AutonomyError``.

AutonomyError
├── EventStoreError ...            (events.errors: store, concurrency, corruption)
├── SchemaError                    (events.errors)
├── ConfigError                    a wrong key, type or value in autonomy.toml / flags / env
├── ConfinementUnavailable         tools.sandbox = "required" but no mechanism works here
├── IllegalTransition              the phase or task machine refused a move; nothing applied
├── ModelError                     a model call failed; never counted as a success
│   ├── ModelTimeout               connect or read timeout, after retries
│   │   └── ModelDeadline          the role's deadline for the whole call passed
│   ├── ModelUnavailable           connection refused / reset, after retries and fallbacks
│   ├── ModelHTTPError             a non-retryable or exhausted HTTP error status
│   │   └── ModelContextOverflow   the request did not fit the server's context window
│   └── ModelResponseInvalid       the reply cannot be used (bad JSON or UTF-8, empty tool
│       │                          name); its message is fit to feed back to the model
│       └── ModelResponseTooLarge  the body passed the role's max_response_bytes
│   (every ModelError has .kind, recorded in model.failed, and .retryable, which the
│    client's retry loop reads: timeouts, unreachable hosts, 429 and 5xx are retryable)
├── PreflightFailed                a role's model cannot be asked; the run was not started
├── ToolError                      a tool refused or failed; recorded in tool.executed
│   └── PathOutsideWorkspace       a path that leaves the workspace or enters .autonomy/.git
└── ReplayDivergence               replay asked something the log never answered
"""

from __future__ import annotations

from events.errors import AutonomyError


class ConfigError(AutonomyError):
    """The configuration is invalid."""


class NotWaiting(ConfigError):
    """An answer to a run that is not waiting for one: answered already (by another
    person, perhaps at the same moment), running, or ended. The service says 409."""


class ConfinementUnavailable(AutonomyError):
    """Commands cannot be confined on this machine."""


class IllegalTransition(AutonomyError):
    """That transition is not allowed from the current state."""


class ModelError(AutonomyError):
    """The model call failed."""

    kind = "error"
    retryable = False
    """Whether another attempt (or another endpoint) may succeed; the client's retry
    loop reads this instead of keeping its own list of exception types."""


class ModelTimeout(ModelError):
    """The model server did not answer in time."""

    kind = "timeout"
    retryable = True


class ModelDeadline(ModelTimeout):
    """The call as a whole (every attempt and every wait between) ran out of time."""

    kind = "deadline"
    retryable = False  # the deadline covers the retries: there is no time left for one


class ModelUnavailable(ModelError):
    """The model server could not be reached."""

    kind = "unavailable"
    retryable = True


class ModelHTTPError(ModelError):
    """The model server answered with an error status."""

    kind = "http"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 0,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), if it said."""
        # 429 and 5xx are the server's trouble and may pass; other 4xx are ours and won't.
        self.retryable = (status == 429 or status >= 500) if retryable is None else retryable


class ModelContextOverflow(ModelHTTPError):
    """The request does not fit the model server's context window.

    ``context`` is the window and ``prompt_tokens`` the request's size, in the
    server's tokens, when the server said them (0 when it did not). Asking again
    the same would fail the same: the recorder shrinks the history instead."""

    kind = "context_overflow"

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 400,
        context: int = 0,
        prompt_tokens: int = 0,
    ) -> None:
        super().__init__(message, status=status, retryable=False)
        self.context = context
        self.prompt_tokens = prompt_tokens


class ModelResponseInvalid(ModelError):
    """The model's reply could not be used."""

    kind = "invalid"


class ModelResponseTooLarge(ModelResponseInvalid):
    """The model server sent more bytes than the role accepts; the rest was not read."""

    kind = "too_large"


class PreflightFailed(AutonomyError):
    """A role's model cannot be asked (``engine.model.preflight``): the run was not
    started and nothing was written."""


class WorkspaceGone(AutonomyError):
    """The run's workspace was deleted, moved, replaced by a file or made read-only
    while the run ran: the engine stops before its next tool call, which could only
    fail (and a model told that every tool fails went on to call its tasks done)."""


class ToolError(AutonomyError):
    """The tool could not do what was asked."""


class PathOutsideWorkspace(ToolError):
    """That path is outside the workspace."""


class ReplayDivergence(AutonomyError):
    """The replayed run asked something the recorded run never answered."""
