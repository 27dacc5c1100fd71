"""Scheduling polls: the timer's dispatch of due triggers, and polls asked for now (the API's
"poll now", a push hint from ServiceNow).

The dispatcher reads the due index (`triggerdue`) up to now, so its cost follows what is due, puts
one message per due trigger on `trigger-polls` and moves each entry one interval on, in
entity-group transactions. It reads no trigger: the entries hold the intervals.
"""

import logging
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError

from connections.due_index import DueEntry, DueIndexBatch
from connections.errors import ApiError
from connections.model import format_time
from triggers.model import Trigger
from triggers.poller import poll_message
from triggers.services import TriggerServices

log = logging.getLogger(__name__)

DISPATCH_LIMIT = 5000
HINT_SPACING = timedelta(seconds=5)  # at most one poll per trigger this often from push hints


def due_entry(trigger: Trigger, due_at: datetime) -> DueEntry:
    return DueEntry(
        format_time(due_at) or "", trigger.tenant_id, trigger.id, interval=trigger.interval_seconds
    )


def scheduled_message(entry: DueEntry) -> dict[str, Any]:
    """A scheduled poll names the entry that brings the next one, and the interval it was made
    with, so a poll that finds the trigger gone (or its interval changed) drops that entry."""
    return {
        "tenant_id": entry.tenant_id,
        "trigger_id": entry.connection_id,
        "reason": "schedule",
        "due": entry.row_key,
        "interval": entry.interval,
    }


def drop_entry(ts: TriggerServices, message: dict[str, Any]) -> None:
    """Removes the due entry a scheduled poll names (its trigger is gone, or polls on another
    interval now: a new entry was made with it)."""
    row_key = message.get("due")
    if isinstance(row_key, str) and row_key.count("|") == 2:
        due_at, tenant_id, trigger_id = row_key.split("|")
        ts.due.remove(DueEntry(due_at, tenant_id, trigger_id))


def dispatch(ts: TriggerServices, limit: int = DISPATCH_LIMIT) -> int:
    """Queues a poll for every due trigger; returns how many."""
    now = ts.services.clock()
    entries = ts.due.due(now, limit)
    moved = [
        DueEntry(
            format_time(now + timedelta(seconds=entry.interval or 60)) or "",
            entry.tenant_id,
            entry.connection_id,
            interval=entry.interval,
        )
        for entry in entries
    ]
    ts.polls.send_all([scheduled_message(entry) for entry in moved])
    batch = DueIndexBatch(ts.due)
    for old, new in zip(entries, moved, strict=True):
        batch.put(new)
        batch.remove(old)
    batch.flush()
    if entries:
        log.info("trigger dispatch: %d polls queued", len(entries))
    return len(entries)


def request_poll(ts: TriggerServices, trigger: Trigger, reason: str) -> bool:
    """Queues a poll now; for a push hint, at most one per HINT_SPACING (the first of a burst
    wins a conditional write of `hinted_at`). False when a recent hint already queued one."""
    if reason == "hint":
        now = ts.services.clock()
        if trigger.hinted_at and now - trigger.hinted_at < HINT_SPACING:
            return False
        trigger.hinted_at = now
        try:
            ts.triggers.merge(trigger, ["hinted_at"])
        except ApiError:
            return False  # another hint (or a change) got there first
    try:
        ts.polls.send(poll_message(trigger, reason))
    except AzureError:
        log.warning("trigger %s: poll not queued (%s); the timer polls it", trigger.id, reason)
        raise
    return True
