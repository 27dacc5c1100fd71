"""Timer triggers: one scheduler thread per timer function, on its NCRONTAB schedule.

Never two runs of one timer at once: every run holds the timer's lock. A run asked for while
another is in progress (the admin call, or an occurrence coming due then) waits for it to finish
and then runs. Occurrences that pass while a scheduled run is in progress are skipped, as the host
does: the next occurrence is computed from the time the run ends.
"""

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from azure.functions.timer import TimerRequest

from localrun.clock import Clock, SystemClock
from localrun.invoker import InvocationFailed, invoke
from localrun.ncrontab import Schedule, next_occurrence

log = logging.getLogger(__name__)


class TimerScheduler:
    def __init__(
        self,
        function_name: str,
        user_function: Callable[..., Any],
        binding_name: str,
        schedule: Schedule,
        *,
        run_on_startup: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self.function_name = function_name
        self.schedule = schedule
        self.run_on_startup = run_on_startup
        self._user_function = user_function
        self._binding_name = binding_name
        self._clock = clock or SystemClock()
        self._run_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.next_due: datetime | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._loop, name=f"timer-{self.function_name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """No further occurrence runs; a run in progress goes on (the host tells the function
        to stop by other means)."""
        self._stopped.set()
        self._wake.set()

    def join(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the scheduler thread (and the run it is in)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_now(self) -> bool:
        """Runs the function once, after any run in progress; True if it succeeded."""
        with self._run_lock:
            request = TimerRequest(past_due=False)
            try:
                invoke(self.function_name, self._user_function, **{self._binding_name: request})
            except InvocationFailed:
                return False
            return True

    def _loop(self) -> None:
        if self.run_on_startup:
            self.run_now()
        self.next_due = next_occurrence(self.schedule, self._clock.now())
        while True:
            self._clock.wait_until(self.next_due, self._wake)
            self._wake.clear()
            if self._stopped.is_set():
                return
            if self._clock.now() < self.next_due:
                continue
            self.run_now()
            self.next_due = next_occurrence(self.schedule, self._clock.now())
