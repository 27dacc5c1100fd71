"""The renewal sweep: works the connections that are due, with bounded concurrency.

Its cost grows with what is due, not with all connections: it reads the due index up to now
(plus its window, for the timed renewals of short-lived tokens), then each due record. Its
changes to the due index go out in transactions of up to 100 (see `DueIndexBatch`).

A run covers a window, by default as long as the schedule's interval, so that consecutive runs'
windows touch: it works what is due, reads the index again, and keeps going while something
is due now or a timed renewal comes before the window ends (sleeping until it). A short token
renewed early in the run whose next renewal falls inside the window is so renewed again in the
same run. The last seconds of the window are left to the next run, which starts about then:
the host skips an occurrence that passes while a run of the same timer is still going.

When the host asks the app to stop (`Services.stopping`), a run ends early: its wait for a timed
renewal ends at once, it begins no more renewals, and those under way finish and are written.
What it did not work keeps its entry in the due index, due, for the next run.
"""

import dataclasses
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import AzureError

from connections.due_index import DueEntry, DueIndexBatch
from connections.errors import ApiError
from connections.model import format_time, parse_time
from connections.service import Services, current_entry, revisit_notices
from renewal.worker import Busy, work

log = logging.getLogger(__name__)

# The end of a run's window left to the next run (at most a tenth of the window), so that the
# renewals it waits for end before the next occurrence of the schedule.
WINDOW_HEADROOM = timedelta(seconds=10)


@dataclass(frozen=True)
class SweepSettings:
    concurrency: int = 32
    limit: int = 5000
    lookahead: timedelta = timedelta(minutes=5)  # the window: RENEWAL_SCHEDULE's interval

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "SweepSettings":
        return cls(
            concurrency=max(1, int(environ.get("RENEWAL_CONCURRENCY") or cls.concurrency)),
            limit=max(1, int(environ.get("RENEWAL_BATCH_LIMIT") or cls.limit)),
            lookahead=timedelta(
                seconds=int(
                    environ.get("RENEWAL_LOOKAHEAD_SECONDS") or int(cls.lookahead.total_seconds())
                )
            ),
        )


def _work_entry(services: Services, entry: DueEntry) -> str:
    try:
        connection = services.store.get(entry.tenant_id, entry.connection_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
        services.due.remove(entry)
        return "gone"
    current = current_entry(connection)
    if current != entry:  # stale: make sure the record's own entry exists, then drop this one
        if current is not None:
            services.due.put(current)
        services.due.remove(entry)
        if connection.pending_notices:  # a notice entry, or an old one that stayed
            revisit_notices(services, connection)
        due = connection.next_due_at
        if due is None or due > services.clock():
            return "stale"
    try:
        return work(services, connection, probe=False).status
    except Busy:
        return "busy"


def _work_safely(services: Services, entry: DueEntry) -> str:
    if services.stopping():  # handed over but not begun when the app was asked to stop
        return "stopped"
    try:
        return _work_entry(services, entry)
    except (ApiError, AzureError) as exc:
        log.warning("sweep: connection %s not worked: %s", entry.connection_id, type(exc).__name__)
        return "error"


def _sleep_until(services: Services, moment: datetime) -> None:
    """Waits for a timed renewal; the wait ends early when the app is asked to stop."""
    seconds = (moment - services.clock()).total_seconds()
    if seconds > 0:
        log.info("renewal sweep: waiting %.1f s for a timed renewal", seconds)
        services.sleep(seconds)


def run_sweep(services: Services, settings: SweepSettings) -> Counter:
    """Works every due connection; returns how many ended in each status (or skip reason)."""
    batch = DueIndexBatch(services.due)
    try:
        return _sweep(dataclasses.replace(services, due=batch), settings)
    finally:
        try:
            batch.flush()
        except AzureError:
            log.warning(
                "renewal sweep: %d due-index changes not written; the next sweep repairs them",
                batch.pending,
            )


class _Workers:
    """The pool working due entries: at most twice the concurrency submitted and not finished,
    so the sweep's memory stays the same however many are due (no future per due connection
    waiting in a queue); counts the outcomes."""

    def __init__(self, services: Services, concurrency: int) -> None:
        self._services = services
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="sweep")
        self._most = 2 * concurrency
        self._in_flight = 0
        self._idle = threading.Condition()
        self.counts: Counter = Counter()
        self.failures: list[Exception] = []

    def submit(self, entry: DueEntry) -> bool:
        """Hands the entry to a worker once there is room; False, handing nothing, once the app
        is asked to stop."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight < self._most)
            if self._services.stopping():
                return False
            self._in_flight += 1
        self._pool.submit(_work_safely, self._services, entry).add_done_callback(self._finished)
        return True

    def _finished(self, future: Future) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # a bug, not a storage fault: raised once all are done
            self.failures.append(exc)
            outcome = "error"
        with self._idle:
            self.counts[outcome] += 1
            self._in_flight -= 1
            # The submitter wakes once half the room is free (and at 0, for `wait_idle`), not
            # after every renewal: each wake costs it the GIL the workers need.
            if self._in_flight <= self._most // 2:
                self._idle.notify_all()

    def wait_idle(self) -> None:
        """Returns once everything submitted has finished (and written its due-index changes
        to the batch, which the next read sees)."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _sweep(services: Services, settings: SweepSettings) -> Counter:
    started = now = services.clock()
    headroom = min(WINDOW_HEADROOM, settings.lookahead / 10)
    last = started + settings.lookahead - headroom  # the latest moment this run waits for
    seen: set[str] = set()  # row keys taken this run: none is worked twice (busy, error)
    timed_waits = 0
    workers = _Workers(services, settings.concurrency)
    try:
        while len(seen) < settings.limit and not services.stopping():
            # Read again each time: renewals just made, and records the API wrote meanwhile.
            # At most `limit` entries, the ones taken already (and still there) among them.
            try:
                found = services.due.due(max(now, last), settings.limit)
            except AzureError:
                if not seen and not timed_waits:
                    raise  # the first read: nothing was done, the run failed
                log.warning("renewal sweep: the due index could not be read again; stopping")
                break
            entries = [entry for entry in found if entry.row_key not in seen]
            now_text = format_time(now) or ""
            ready = [entry for entry in entries if entry.due_at <= now_text]
            timed = next((entry for entry in entries if entry.exact), None)
            if ready:
                for entry in ready[: settings.limit - len(seen)]:
                    if not workers.submit(entry):
                        break
                    seen.add(entry.row_key)
                workers.wait_idle()
            elif timed is not None:
                timed_waits += 1
                _sleep_until(services, parse_time(timed.due_at) or now)
            else:
                break
            moment, now = now, services.clock()
            if now > last or (not ready and now <= moment):  # the window is over, or a sleep
                break  # that let no time pass (a clock standing still) would loop for ever
    finally:
        workers.close()
    if workers.failures:
        raise workers.failures[0]
    counts = workers.counts
    log.info(
        "renewal sweep: %d due, %d waits for timed renewals; %s%s",
        len(seen),
        timed_waits,
        ", ".join(f"{key}={value}" for key, value in sorted(counts.items())) or "nothing to do",
        "; asked to stop, the rest stays due for the next run" if services.stopping() else "",
    )
    return counts
