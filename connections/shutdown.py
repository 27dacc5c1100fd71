"""Shutdown requested: the one process-wide signal that the app is asked to stop.

The Functions host asks the worker process to stop with SIGTERM and gives it a grace period
before it kills it. The app installs a SIGTERM handler (`install`, called by function_app.py)
that requests shutdown: the app's waits (`sleep`) end at once, and long work checks `requested()`
between its steps and leaves what it has not started for the next run. The code never asks which
host runs it; the local host delivers shutdown the same way.

The request is a byte written to a pipe that every wait watches: a signal handler may interrupt
a thread holding a lock, so it takes none (an `Event.set` there could deadlock that thread).
"""

import os
import select
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]

_watched, _written = os.pipe()  # readable, and so waking every wait, once shutdown is requested
os.set_blocking(_written, False)
_requested = False
_installed: Handler | None = None


def request() -> None:
    """Asks the app to stop. Safe in a signal handler: it takes no lock."""
    global _requested
    if not _requested:
        _requested = True
        os.write(_written, b"!")


def requested() -> bool:
    """Whether the process has been asked to stop."""
    return _requested


def sleep(seconds: float) -> bool:
    """Waits `seconds`, ending early when shutdown is requested; True if it was."""
    watch = select.poll()
    watch.register(_watched, select.POLLIN)
    return bool(watch.poll(max(seconds, 0.0) * 1000))


def _requesting_shutdown(previous: Any) -> Handler:
    """A SIGTERM handler that requests shutdown, then does what `previous` would have done."""

    def handler(signum: int, frame: FrameType | None) -> None:
        request()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # SIGTERM used to end the process: it still does, the way Ctrl-C ends a Python
            # program (`finally` blocks run, and the work in flight, told to stop, ends first).
            raise KeyboardInterrupt

    return handler


def install() -> bool:
    """Installs the SIGTERM handler that requests shutdown, chaining the handler before it.

    Only the main thread may install signal handlers; elsewhere this does nothing. Installing
    twice installs once. Returns whether the handler is in place."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if _installed is None or current is not _installed:
        _installed = _requesting_shutdown(current)
        signal.signal(signal.SIGTERM, _installed)
    return True
