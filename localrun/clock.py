"""Time for the timer schedulers: the system clock, or a manual one that tests move by hand."""

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol

_LONGEST_WAIT = 30.0  # seconds; re-reads the clock now and then in case the system time jumps


class Clock(Protocol):
    def now(self) -> datetime: ...

    def wait_until(self, moment: datetime, wake: threading.Event) -> None:
        """Returns once `moment` has come or `wake` is set, whichever is first."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def wait_until(self, moment: datetime, wake: threading.Event) -> None:
        while not wake.is_set():
            remaining = (moment - self.now()).total_seconds()
            if remaining <= 0:
                return
            wake.wait(min(remaining, _LONGEST_WAIT))


class ManualClock:
    """Stands still until `advance()` or `set()`; wakes the waiters whose moment has come."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._condition = threading.Condition()
        self._waiters: list[tuple[datetime, threading.Event]] = []

    def now(self) -> datetime:
        with self._condition:
            return self._now

    def wait_until(self, moment: datetime, wake: threading.Event) -> None:
        waiter = (moment, wake)
        with self._condition:
            if self._now >= moment:
                return
            self._waiters.append(waiter)
            self._condition.notify_all()
        try:
            wake.wait()
        finally:
            with self._condition:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                self._condition.notify_all()

    def advance(self, delta: timedelta) -> None:
        self.set(self.now() + delta)

    def set(self, moment: datetime) -> None:
        with self._condition:
            self._now = moment
            for due, wake in self._waiters:
                if due <= moment:
                    wake.set()
            self._waiters = [(due, wake) for due, wake in self._waiters if due > moment]

    def wait_for_waiters(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Blocks until at least `count` threads wait on this clock (a test's sync point)."""
        with self._condition:
            return self._condition.wait_for(lambda: len(self._waiters) >= count, timeout)

    def next_wake(self) -> datetime | None:
        with self._condition:
            return min((due for due, _ in self._waiters), default=None)
