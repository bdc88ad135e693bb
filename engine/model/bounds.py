"""How long and how much one model call may take: timeouts, retries, a deadline, a size cap.

A model call is bounded four ways, each set per role in ``autonomy.toml``
(``engine.model.roles.RoleConfig``) and carried to the client as one ``Bounds``:

* ``Timeouts``: how long to wait to connect, and for each piece of the answer;
* ``RetryPolicy``: how many attempts per endpoint, and the backoff between them;
* ``deadline``: the whole call — every attempt, every endpoint, every wait between
  them — ends by then, however the server behaves. A server that trickles one byte
  every few seconds never trips a read timeout; the deadline is what cuts it;
* ``max_response_bytes``: bytes counted as they arrive; at the cap the connection is
  closed and the rest never read, so a runaway or hostile server cannot fill memory
  or the log.

The defaults suit a slow local model: a 32B model on a CPU may take minutes before the
first byte of a non-streamed answer.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import msgspec

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 600.0
DEFAULT_DEADLINE = 1800.0
DEFAULT_RETRIES = 2
DEFAULT_MAX_RESPONSE_BYTES = 4_000_000


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    """Seconds to wait, per phase of a request (httpx's four timeouts).

    ``read`` bounds the wait for each piece of the answer, not the whole answer: a
    non-streamed request waits for the entire generation before its first byte, so
    it must cover the slowest generation you accept; a streamed one only the gap
    between tokens (plus loading the model).
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    read: float = DEFAULT_READ_TIMEOUT
    write: float = 30.0
    pool: float = 10.0

    def for_httpx(self, remaining: float | None = None) -> httpx.Timeout:
        """The timeouts, none longer than ``remaining`` seconds (the deadline's)."""
        cap = remaining if remaining is not None else float("inf")
        return httpx.Timeout(
            connect=min(self.connect, cap),
            read=min(self.read, cap),
            write=min(self.write, cap),
            pool=min(self.pool, cap),
        )


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how patiently to retry, per endpoint.

    The wait after the n-th failure is ``min(max_delay, base_delay * 2**(n-1))``,
    spread by ±``jitter`` (a fraction) so that many clients do not retry in step;
    a ``Retry-After`` from the server replaces it, capped at ``max_delay``.
    """

    attempts: int = DEFAULT_RETRIES + 1
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25

    def delay(self, failures: int, random: Callable[[], float]) -> float:
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (failures - 1))
        spread = 1.0 + self.jitter * (2.0 * random() - 1.0)
        return max(0.0, backoff * spread)


DEFAULT_TIMEOUTS = Timeouts()
DEFAULT_RETRY = RetryPolicy()


class Bounds(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that bounds one call. ``deadline`` None means no overall deadline
    (each attempt is still bounded by its timeouts)."""

    timeouts: Timeouts = DEFAULT_TIMEOUTS
    retry: RetryPolicy = DEFAULT_RETRY
    deadline: float | None = DEFAULT_DEADLINE
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


DEFAULT_BOUNDS = Bounds()
