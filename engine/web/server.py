"""The HTTP server the service runs in: uvicorn's, which ends the app's live streams."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn


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
