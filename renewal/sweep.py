"""The renewal sweep: works the connections that are due, with bounded concurrency.

Its cost grows with what is due, not with all connections: it reads the due index up to now
(plus a look-ahead for renewals that must happen at an exact moment), then each due record.
Its changes to the due index go out in transactions of up to 100 (see `DueIndexBatch`).
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
from connections.service import Services, current_entry
from renewal.worker import Busy, work

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepSettings:
    concurrency: int = 32
    limit: int = 5000
    lookahead: timedelta = timedelta(minutes=4)

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
        due = connection.next_due_at
        if due is None or due > services.clock():
            return "stale"
    try:
        return work(services, connection, probe=False).status
    except Busy:
        return "busy"


def _work_safely(services: Services, entry: DueEntry) -> str:
    try:
        return _work_entry(services, entry)
    except (ApiError, AzureError) as exc:
        log.warning("sweep: connection %s not worked: %s", entry.connection_id, type(exc).__name__)
        return "error"


def _sleep_until(services: Services, moment: datetime) -> None:
    seconds = (moment - services.clock()).total_seconds()
    if seconds > 0:
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


def _sweep(services: Services, settings: SweepSettings) -> Counter:
    started = services.clock()
    entries = services.due.due(started + settings.lookahead, settings.limit)
    now_text = format_time(started) or ""
    due_now = [entry for entry in entries if entry.due_at <= now_text]
    exact_later = [entry for entry in entries if entry.due_at > now_text and entry.exact]
    counts: Counter = Counter()
    failures: list[Exception] = []
    lock = threading.Lock()
    # At most twice the concurrency submitted and not finished: the sweep's memory stays the
    # same however many are due (no future per due connection waiting in a queue).
    slots = threading.Semaphore(2 * settings.concurrency)

    def finished(future: Future) -> None:
        try:
            outcome = future.result()
        except Exception as exc:  # a bug, not a storage fault: raised once all are done
            failures.append(exc)
            outcome = "error"
        with lock:
            counts[outcome] += 1
        slots.release()

    with ThreadPoolExecutor(settings.concurrency, thread_name_prefix="sweep") as pool:
        for entry in due_now + exact_later:
            if entry.due_at > now_text:
                _sleep_until(services, parse_time(entry.due_at) or started)
            slots.acquire()
            pool.submit(_work_safely, services, entry).add_done_callback(finished)
    if failures:
        raise failures[0]
    log.info(
        "renewal sweep: %d due, %d exact renewals ahead; %s",
        len(due_now),
        len(exact_later),
        ", ".join(f"{key}={value}" for key, value in sorted(counts.items())) or "nothing to do",
    )
    return counts
