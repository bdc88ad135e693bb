"""``engine.stops``: what a signal's handler notes belongs to the main thread."""

from __future__ import annotations

import threading

import pytest

from engine import stops


def test_another_threads_run_neither_takes_nor_raises_a_stop_the_main_thread_noted() -> None:
    """A worker runs runs in threads of its own. One of them ending its run (its
    ``interrupt``) took the stop a SIGTERM had noted for the main thread, whose run,
    its stop swallowed, then went on; another raised the main thread's stop as its
    own, recorded in the signal's words."""
    stop = KeyboardInterrupt("noted")
    stops.asked(stop)
    seen: list[BaseException] = []

    def other() -> None:
        try:
            stops.check()
            stops.taken()
            with stops.deferred():
                assert not stops.deferring(), "a thread's block does not defer the handler"
        except BaseException as e:  # what it must not raise
            seen.append(e)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=60)
    try:
        assert seen == []
        with pytest.raises(KeyboardInterrupt) as raised:
            stops.check()
        assert raised.value is stop
    finally:
        stops.taken()
    stops.check()  # taken: nothing left
