"""One ``LISTEN`` connection per PostgreSQL store, shared by all its waiters.

``Announcements`` owns the connection and a thread that reads it: each
notification's payload (a run id) is counted, and every waiter sleeps on one
``threading.Condition`` until the count of the run it waits for moves, the
connection is lost (a notification may have gone with it: the waiter looks at
the run again, and the next subscription connects again), or the store closes.
So N live tails cost one connection and wake together on one append, instead of
taking turns on the connection for N x their timeout.

Only the runs somebody waits for are counted, and their counts are dropped when
the last of their waiters leaves: a long-lived service over a busy log keeps no
state per run it is not showing.

The reading thread waits on the connection's socket and on a socket pair of its
own at once, so ``close`` wakes it at once and the connection is closed before
``close`` returns.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from events.errors import EventStoreError

_JOIN_SECONDS = 10.0
"""How long ``close`` waits for the reading thread (it ends at once when woken)."""


class Subscription:
    """One waiter's view of the announcements of one key (see ``Announcements.subscribed``)."""

    def __init__(self, owner: Announcements, key: str, generation: int) -> None:
        self._owner = owner
        self._key = key
        self._seen = owner._heard[key]
        self._generation = generation

    def wait(self, deadline: float) -> bool:
        """Sleep until the key is announced again or the connection was lost (then
        listen again: psycopg's errors propagate), whichever comes first; False
        when ``deadline`` (``time.monotonic``) passes or the store closes first.
        True means: look again."""
        owner = self._owner
        with owner._changed:
            owner._asleep[self._key] += 1
            try:
                while not owner._closed:
                    if owner._heard[self._key] != self._seen:
                        self._seen = owner._heard[self._key]
                        return True
                    if owner._generation != self._generation:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    owner._changed.wait(left)
                else:
                    return False
            finally:
                owner._asleep[self._key] -= 1
        self._generation = owner._listen()  # the connection was lost: listen again
        return True


class Announcements:
    """The notifications of one channel, fanned out to every waiter of a store.

    ``connect`` opens a connection that listens on the channel already."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]) -> None:
        self._connect = connect
        self._changed = threading.Condition()
        self._heard: Counter[str] = Counter()
        """Announcements heard per key waited for, since its first waiter came."""
        self._waiters: Counter[str] = Counter()
        self._asleep: Counter[str] = Counter()
        self._generation = 0
        """Moves each time a connection is lost."""
        self._conn: psycopg.Connection[Any] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._connecting = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()

    @contextlib.contextmanager
    def subscribed(self, key: str) -> Iterator[Subscription]:
        """Listen (connecting first if no connection listens; psycopg's errors
        propagate) and count the announcements of ``key`` until the context ends.
        An append the caller looks for *after* entering is either seen by that
        look or announced to the subscription."""
        with self._changed:
            self._waiters[key] += 1
        try:
            generation = self._listen()
            with self._changed:
                subscription = Subscription(self, key, generation)
            yield subscription
        finally:
            with self._changed:
                self._waiters[key] -= 1
                if not self._waiters[key]:
                    del self._waiters[key], self._heard[key], self._asleep[key]

    def asleep(self, key: str) -> int:
        """How many waiters of ``key`` are waiting for an announcement now."""
        with self._changed:
            return self._asleep.get(key, 0)

    def _listen(self) -> int:
        """Make sure a connection listens; the generation it belongs to."""
        with self._connecting:
            with self._changed:
                if self._closed:
                    raise EventStoreError("the store is closed")
                if self._conn is not None:
                    return self._generation
            conn = self._connect()
            with self._changed:
                if self._closed:
                    conn.close()
                    raise EventStoreError("the store is closed")
                self._conn = conn
                self._thread = threading.Thread(
                    target=self._read, args=(conn,), name="autonomy-listener", daemon=True
                )
                self._thread.start()
                return self._generation

    def _read(self, conn: psycopg.Connection[Any]) -> None:
        """The reading thread of one connection: count what is heard until the
        connection fails or ``close`` wakes it."""
        with selectors.DefaultSelector() as selector:
            try:
                selector.register(conn.fileno(), selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while True:
                    # timeout=0: only what has arrived (and what arrived with LISTEN)
                    heard = [n.payload for n in conn.notifies(timeout=0)]
                    with self._changed:
                        if self._closed:
                            return
                        counted = [key for key in heard if key in self._waiters]
                        for key in counted:
                            self._heard[key] += 1
                        if counted:
                            self._changed.notify_all()
                    ready = selector.select()
                    if any(key.fileobj is self._wake_r for key, _ in ready):
                        return
            except (psycopg.Error, OSError):
                pass  # lost: the waiters are told below, and the next one connects again
            finally:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
                with self._changed:
                    if self._conn is conn:
                        self._conn = None
                    self._generation += 1
                    self._changed.notify_all()

    def close(self) -> None:
        """Wake and end every waiter, stop the thread and close the connection."""
        with self._connecting, self._changed:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._changed.notify_all()
        self._wake_w.send(b"x")
        if thread is not None:
            thread.join(_JOIN_SECONDS)
        self._wake_r.close()
        self._wake_w.close()
