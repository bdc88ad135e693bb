"""The HTTP server the service runs in: uvicorn's, with a deadline for each request
to arrive (``DeadlineProtocol``) and told to end the app's live streams as it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FrameType

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_SECONDS = 10.0
"""How long a client has to send a whole request (its line, headers and body) once
it connects, or once the previous answer on its connection is sent."""


class DeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, which closes a connection whose request has not
    fully arrived ``REQUEST_SECONDS`` after it could start: uvicorn waits for ever on
    a connection that sends nothing, or half a request, or one byte a second (its
    keep-alive timeout starts only after an answer, and any byte resets it), so a
    few hundred such connections (a slow loris) held the service's every file
    descriptor. A request that has arrived is never timed: a live stream goes on."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the request has arrived (or the connection ends)

    def on_response_complete(self) -> None:
        self._arm()  # for the next request (a pipelined one already here disarms it)
        super().on_response_complete()
        if self.transport.is_closing():
            self._disarm()

    def shutdown(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:
            # a request half sent as the service stops: it would only be cancelled
            self.transport.close()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(REQUEST_SECONDS, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server, which also ends the app's live streams (``stop_streams``,
    the app's ``state.stop_streams``: ``engine.web.app.create_app``) when it is told
    to stop (Ctrl-C, SIGTERM): they never end by themselves, so the grace period ran
    out and each one was cancelled and logged as a traceback."""

    def __init__(self, config: uvicorn.Config, stop_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.stop_streams = stop_streams

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.stop_streams()
        super().handle_exit(sig, frame)
