"""Stops from outside (a signal's ``KeyboardInterrupt``) that Python swallowed.

A signal's handler raises its stop wherever the main thread is. Where that is a
hook Python calls itself (``os.register_at_fork``'s, which ``subprocess.Popen``
runs just after it forks: logging's; a ``__del__``; a weakref's callback), the
exception is printed as "Exception ignored" and dropped: the run went on to its
end, exit 0, its Ctrl-C or SIGTERM lost. So the handler notes each stop here
before raising it; whoever records a stop takes it, and the places a run goes on
from (each step, a command just started) raise one still noted. All of it is the
main thread's, where Python runs signal handlers: a worker's other threads stop
their runs their own way (its ``interrupt``), and neither take nor raise these."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_asked: list[KeyboardInterrupt] = []


def asked(stop: KeyboardInterrupt) -> None:
    """Note ``stop``, about to be raised by a signal's handler."""
    _asked.append(stop)


def _main() -> bool:
    return threading.current_thread() is threading.main_thread()


def taken() -> None:
    """The noted stops have reached whoever ends the run for them."""
    if _main():
        _asked.clear()


def check() -> None:
    """Raise the first noted stop that nobody took (it was swallowed)."""
    if _asked and _main():
        raise _asked[0]


class Signalled(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as a Ctrl-C is, in a command that records no run
    (``fork``, ``rewind``, ``copy``...): what it half did is undone or kept as on a
    Ctrl-C, where the signal's default action ended the process at once (a fork's
    part copy left behind); the exit status is the signal's (128 + its number)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_signalled(signum: int, frame: object) -> None:
    raise Signalled(signum)


_deferring = [0]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block no stop cuts: one that comes meanwhile is noted (``asked``) and not
    raised, and raised at the block's end unless an exception already leaves it
    (then the next ``check`` raises it, unless the stop under way takes it)."""
    main = _main()
    _deferring[0] += main
    try:
        yield
    finally:
        _deferring[0] -= main
    check()


def deferring() -> bool:
    """Whether a stop must only be noted now (``deferred``)."""
    return _deferring[0] > 0
