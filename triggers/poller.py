"""One poll of a trigger: read the changes since its cursor, queue one event per new version,
record them, and only then move the cursor.

Reading: keyset pages on `(sys_updated_on, sys_id)`, never offsets. A scan starts at
`min(cursor, previous read - TRIGGER_LOOKBACK_SECONDS)`, so a change that becomes visible late
(ServiceNow commits are not in timestamp order) is still read; the versions already emitted are
dropped by their `sn-` entities (`EventLog.seen_since`). Within a scan, a page that ends inside a
second continues in that second (`sys_updated_on=T^sys_id>S`) before going on
(`sys_updated_on>T`), so thousands of records sharing one second are read once each.

Writing: events are queued first, then recorded, then the trigger's cursor moves (a conditional
merge on its ETag, under its lease). A failure anywhere before that leaves the cursor where it
was: the next poll reads the same versions again and, having not recorded them, queues them
again with the same `event_id` (delivery drops a copy it has already delivered).

Cost: a poll that finds nothing new makes one instance call and, on a worker that wrote the
trigger last, two table requests (the connection's record, and the trigger's new position);
the lease is taken, and events older than EVENT_RETENTION_DAYS are pruned, only when there is
something to emit.
"""

import hashlib
import json
import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError

from connections.errors import ApiError
from connections.model import Connection, format_time
from renewal.on_demand import Usage, call_with, unusable_reason
from servicenow.outbound import OutboundError, OutboundResponse
from servicenow.table_api import error_text, json_or_none, table_reader
from triggers.events import Emitted, list_key, seen_key
from triggers.model import ACTIVE, FAILING, WAITING, Trigger
from triggers.services import TriggerServices

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
MAX_PAGES = 10  # per invocation; more waiting: the next invocation is queued at once
LEASE = timedelta(minutes=5)
DEFAULT_DEFER = timedelta(seconds=60)  # a 429 without Retry-After
BUSY_RETRY_SECONDS = 2  # a poll over the connection's limit is queued again this much later
TIMEOUT = (5.0, 30.0)
ALWAYS_READ = ("sys_id", "number", "sys_created_on", "sys_updated_on", "sys_mod_count")
MAX_EVENT_BYTES = 45_000  # a queue message holds 64 KiB once base64-encoded
PRUNE_SLACK = 1000  # entities a poll that emitted prunes beyond the two per event it added


def sn_time(moment: datetime) -> str:
    """A moment as ServiceNow stores date-times: `2026-12-01 10:00:01` (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def rfc3339(value: str) -> str:
    """ServiceNow's `2026-12-01 10:00:01` as `2026-12-01T10:00:01Z`."""
    return value.replace(" ", "T") + "Z"


def event_id(trigger_id: str, sys_id: str, sys_mod_count: int) -> str:
    return hashlib.sha256(f"{trigger_id}|{sys_id}|{sys_mod_count}".encode()).hexdigest()[:32]


# -- what this process wrote last (its ETag proves it is still current) ---------------------------


class _Known:
    """The trigger as this process last wrote it; a write conditional on its ETag fails (and the
    record is read again) when anyone else wrote since, so a stale copy is never acted on."""

    def __init__(self, size: int = 10_000) -> None:
        self._items: OrderedDict[str, Trigger] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, trigger_id: str) -> Trigger | None:
        with self._lock:
            trigger = self._items.get(trigger_id)
            return None if trigger is None else _copy(trigger)

    def put(self, trigger: Trigger) -> None:
        with self._lock:
            self._items[trigger.id] = _copy(trigger)
            self._items.move_to_end(trigger.id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def forget(self, trigger_id: str) -> None:
        with self._lock:
            self._items.pop(trigger_id, None)


def _copy(trigger: Trigger) -> Trigger:
    return Trigger(
        **{
            **trigger.__dict__,
            "fields": list(trigger.fields),
            "pending_notices": list(trigger.pending_notices),
        }
    )


KNOWN = _Known()
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(connection_id: str, size: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        if connection_id not in _slots:
            _slots[connection_id] = threading.BoundedSemaphore(size)
        return _slots[connection_id]


# -- one poll ----------------------------------------------------------------------------------


class _Busy(Exception):
    """Another poll of the trigger wrote it since it was read (and so polls it)."""


class _Stop(Exception):
    """The scan ends early: `status`/`detail` say why (None: a transient fault, status kept)."""

    def __init__(self, status: str | None, detail: str, defer: timedelta | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.defer = status, detail, defer


AT, PAST = "", "~"  # positions' sys_id: from the second on, or past the whole second


@dataclass
class _Scan:
    """Where a scan is: `position` = (sys_updated_on T, S). S = AT reads from second T on
    (`>=T`), PAST reads past it (`>T`), a sys_id reads the rest of second T after that record."""

    trigger: Trigger
    connection: Connection
    started: datetime
    position: tuple[str, str]
    last_updated_on: str = ""  # the latest `sys_updated_on` read
    seen: set[tuple[str, int]] | None = None
    emitted: int = 0
    pages: int = 0
    complete: bool = False
    leased: bool = False


def poll(
    ts: TriggerServices,
    tenant_id: str,
    trigger_id: str,
    *,
    fresh: bool = False,
    interval: int | None = None,
) -> str:
    """Polls the trigger once (up to MAX_PAGES pages); returns what happened, for the log.

    A scheduled poll starts from this process's own last write of the trigger when it has one
    (`fresh` reads the record first: a hint or "poll now" follows a write made elsewhere).
    A scheduled poll made with another `interval` than the trigger's is "stale": its schedule
    was replaced by one with the new interval."""
    trigger = None if fresh else KNOWN.get(trigger_id)
    trigger = trigger or _read(ts, tenant_id, trigger_id)
    if trigger is None:
        return "gone"
    if interval is not None and interval != trigger.interval_seconds:
        return "stale"
    now = ts.services.clock()
    if not trigger.enabled:
        return "paused"
    if trigger.deferred_until and trigger.deferred_until > now:
        return "deferred"
    if trigger.lease_owner and trigger.lease_until and trigger.lease_until > now:
        return "busy"
    slot = _slot(trigger.connection_id, ts.settings.max_polls_per_connection)
    if not slot.acquire(blocking=False):
        ts.polls.send(poll_message(trigger, "connection busy"), BUSY_RETRY_SECONDS)
        return "requeued"
    try:
        return _poll(ts, trigger, now)
    finally:
        slot.release()


def poll_message(trigger: Trigger, reason: str) -> dict[str, Any]:
    return {"tenant_id": trigger.tenant_id, "trigger_id": trigger.id, "reason": reason}


def _read(ts: TriggerServices, tenant_id: str, trigger_id: str) -> Trigger | None:
    try:
        return ts.triggers.get(tenant_id, trigger_id)
    except ApiError as exc:
        if exc.status == 404:
            KNOWN.forget(trigger_id)
            return None
        raise


def _poll(ts: TriggerServices, trigger: Trigger, now: datetime) -> str:
    try:
        connection = ts.services.store.get(trigger.tenant_id, trigger.connection_id)
    except ApiError as exc:
        if exc.status != 404:
            raise
        _remove_orphan(ts, trigger)
        return "gone"
    reason = unusable_reason(connection, now)
    if reason:
        return _wait(ts, trigger, connection, now, reason)
    scan = _start(ts, trigger, connection, now)
    stop: _Stop | None = None
    try:
        # Asked to stop (the host shutting down): the scan goes on in the next invocation.
        while not scan.complete and scan.pages < MAX_PAGES and not ts.services.stopping():
            _page(ts, scan)
    except _Stop as stopped:
        stop = stopped
    except _Busy:
        return "busy"
    return _finish(ts, scan, stop)


def _start(ts: TriggerServices, trigger: Trigger, connection: Connection, now: datetime) -> _Scan:
    if trigger.scan_from:  # a scan that ran out of pages goes on where it stopped
        position = (trigger.cursor_updated_on, trigger.cursor_sys_id)
        return _Scan(trigger, connection, now, position)
    start = trigger.cursor_updated_on or sn_time(trigger.start_at)
    if trigger.read_at is not None:
        lookback = timedelta(seconds=ts.settings.lookback_seconds)
        start = min(start, sn_time(trigger.read_at - lookback))
    trigger.scan_from, trigger.read_at = start, now
    return _Scan(trigger, connection, now, (start, AT))


def _page(ts: TriggerServices, scan: _Scan) -> None:
    records = _read_page(ts, scan)
    scan.pages += 1
    within_second = scan.position[1] not in (AT, PAST)
    if records:
        new = _new_versions(ts, scan, records)
        if new:
            _emit(ts, scan, new)
        last = records[-1]
        scan.last_updated_on = max(scan.last_updated_on, last["sys_updated_on"])
    if len(records) == PAGE_SIZE:  # more may follow, in the last record's second first
        scan.position = (records[-1]["sys_updated_on"], records[-1]["sys_id"])
    elif within_second:  # that second is done: go past it
        scan.position = (scan.position[0], PAST)
    else:
        scan.complete = True


def _query(scan: _Scan) -> str:
    updated_on, after = scan.position
    if after == AT:
        keyset = f"sys_updated_on>={updated_on}^ORDERBYsys_updated_on^ORDERBYsys_id"
    elif after == PAST:
        keyset = f"sys_updated_on>{updated_on}^ORDERBYsys_updated_on^ORDERBYsys_id"
    else:
        keyset = f"sys_updated_on={updated_on}^sys_id>{after}^ORDERBYsys_id"
    return f"{scan.trigger.query}^{keyset}" if scan.trigger.query else keyset


def _read_page(ts: TriggerServices, scan: _Scan) -> list[dict[str, Any]]:
    trigger = scan.trigger
    fields = list(dict.fromkeys([*ALWAYS_READ, *trigger.fields]))
    params = {
        "sysparm_query": _query(scan),
        "sysparm_fields": ",".join(fields),
        "sysparm_limit": str(PAGE_SIZE),
        "sysparm_display_value": "false",
        "sysparm_exclude_reference_link": "true",
        "sysparm_no_count": "true",
    }
    send = table_reader(
        ts.services.policy, scan.connection.instance_url, trigger.table, params, TIMEOUT
    )
    usage = Usage(scan.connection)
    try:
        response, _ = call_with(ts.services, usage, send)
    except ApiError as exc:
        if exc.code == "connection_unusable":
            raise _Stop(WAITING, exc.message) from None
        raise _Stop(None, exc.message) from None
    except OutboundError as exc:
        raise _Stop(None, exc.message) from None
    finally:
        scan.connection = usage.connection  # as it is after a renewal or a check
    return _records(ts, scan, response)


def _records(ts: TriggerServices, scan: _Scan, response: OutboundResponse) -> list[dict[str, Any]]:
    status = response.status_code
    body = json_or_none(response)
    message = error_text(body)
    table = scan.trigger.table
    if status == 200 and isinstance(body, dict) and isinstance(body.get("result"), list):
        return [record for record in body["result"] if _usable(record)]
    if status == 401:
        reason = unusable_reason(scan.connection, ts.services.clock())
        raise _Stop(WAITING if reason else None, reason or "The instance refused the credentials.")
    if status == 403:
        raise _Stop(
            FAILING,
            f"The instance refused to let the connection's user read {table} ({message}). Give "
            f"the integration user read access to {table} (an ACL or role), or change the table.",
        )
    if status == 429:
        seconds = response.headers.get("Retry-After", "")
        wait = timedelta(seconds=int(seconds)) if seconds.isdigit() else DEFAULT_DEFER
        raise _Stop(None, f"The instance is rate limiting (429); polls wait {wait}.", wait)
    if status in (400, 404) and message:
        raise _Stop(
            FAILING,
            f"The instance refused the trigger's table or query ({message}). Check the table "
            "name and the encoded query (try it in a list view of that table).",
        )
    raise _Stop(None, f"The instance answered {status} to a poll; trying again later.")


def _usable(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("sys_id"), str)
        and isinstance(record.get("sys_updated_on"), str)
        and str(record.get("sys_mod_count", "0")).isdigit()
    )


def _new_versions(
    ts: TriggerServices, scan: _Scan, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if scan.seen is None:
        scan.seen = ts.events.seen_since(scan.trigger.id, scan.trigger.scan_from)
    new, in_page = [], set()
    for record in records:
        version = (record["sys_id"], int(record.get("sys_mod_count") or 0))
        if version not in scan.seen and version not in in_page:
            in_page.add(version)
            new.append(record)
    return new


def _emit(ts: TriggerServices, scan: _Scan, records: list[dict[str, Any]]) -> None:
    if not scan.leased:
        _take_lease(ts, scan)
    now = ts.services.clock()
    emitted = []
    for index, record in enumerate(records):
        event = build_event(scan.trigger, scan.connection, record, now)
        listed = list_key(now, scan.emitted + index, event["event_id"])
        seen = seen_key(record["sys_updated_on"], record["sys_id"], event["sys_mod_count"])
        emitted.append(Emitted(event, seen, listed))
    messages = [{"event": item.event, "seen": item.seen} for item in emitted]
    try:
        ts.deliveries.send_all(messages)
        ts.events.record(scan.trigger.id, emitted)
    except AzureError as exc:
        raise _Stop(None, f"Storage is unavailable ({type(exc).__name__}); trying again.") from None
    assert scan.seen is not None
    scan.seen |= {(item.event["sys_id"], item.event["sys_mod_count"]) for item in emitted}
    scan.emitted += len(emitted)
    scan.trigger.last_event_at = now


def _take_lease(ts: TriggerServices, scan: _Scan) -> None:
    trigger = scan.trigger
    trigger.lease_owner = uuid.uuid4().hex
    trigger.lease_until = ts.services.clock() + LEASE
    try:
        ts.triggers.merge(trigger, ["lease_owner", "lease_until"])
    except ApiError:  # someone wrote the trigger since it was read: they poll, or it changed
        KNOWN.forget(trigger.id)
        raise _Busy from None
    scan.leased = True


def build_event(
    trigger: Trigger, connection: Connection, record: dict[str, Any], now: datetime
) -> dict[str, Any]:
    mod_count = int(record.get("sys_mod_count") or 0)
    values = {name: _value(record.get(name)) for name in ["number", *trigger.fields]}
    if "sys_mod_count" in values:
        values["sys_mod_count"] = mod_count  # a number, in `record` as at the top
    event = {
        "event_id": event_id(trigger.id, record["sys_id"], mod_count),
        "change": "created" if mod_count == 0 else "updated",
        "tenant_id": trigger.tenant_id,
        "connection_id": connection.id,
        "trigger_id": trigger.id,
        "trigger_name": trigger.name,
        "table": trigger.table,
        "sys_id": record["sys_id"],
        "number": str(record.get("number") or ""),
        "sys_mod_count": mod_count,
        "sys_updated_on": rfc3339(record["sys_updated_on"]),
        "record": values,
        "emitted_at": format_time(now),
    }
    return _bounded(event)


def _value(value: Any) -> Any:
    if isinstance(value, dict) and "value" in value:  # a reference with its link
        value = value["value"]
    if isinstance(value, str) and len(value) == 19 and value[4] == "-" and value[10] == " ":
        try:
            datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return value
        return rfc3339(value)
    return value


def _bounded(event: dict[str, Any]) -> dict[str, Any]:
    """Long record values are cut so the event fits one queue message."""
    if len(json.dumps(event, ensure_ascii=False).encode()) <= MAX_EVENT_BYTES:
        return event
    share = max(200, MAX_EVENT_BYTES // max(1, 2 * len(event["record"])))
    event["record"] = {
        name: value[:share] if isinstance(value, str) else value
        for name, value in event["record"].items()
    }
    return event


# -- ending a poll ------------------------------------------------------------------------------


def _finish(ts: TriggerServices, scan: _Scan, stop: _Stop | None) -> str:
    trigger, now = scan.trigger, ts.services.clock()
    if not scan.complete:  # the scan goes on from there in the next invocation
        trigger.cursor_updated_on, trigger.cursor_sys_id = scan.position
    elif scan.last_updated_on > trigger.cursor_updated_on:
        trigger.cursor_updated_on, trigger.cursor_sys_id = scan.last_updated_on, PAST
    trigger.events_emitted += scan.emitted
    trigger.last_polled_at = now
    outcome = "ok"
    if stop is None and scan.complete:
        trigger.scan_from = ""
        lookback = timedelta(seconds=ts.settings.lookback_seconds)
        caught_up = max(trigger.start_at, (trigger.read_at or scan.started) - lookback)
        if trigger.caught_up_to is None or caught_up > trigger.caught_up_to:
            trigger.caught_up_to = caught_up
        _set_status(trigger, scan.connection, ACTIVE, "", now)
    elif stop is not None:
        outcome = _stopped(ts, scan, stop, now)
    more = stop is None and not scan.complete
    _save(ts, trigger, scan.leased)
    if scan.emitted:
        _prune(ts, trigger, now, scan.emitted)
    if more:
        ts.polls.send(poll_message(trigger, "more"))
        outcome = "more"
    if stop is not None and stop.defer is not None:
        _defer_connection(ts, trigger, now + stop.defer)
    return f"{outcome} ({scan.emitted} events)"


def _prune(ts: TriggerServices, trigger: Trigger, now: datetime, emitted: int) -> None:
    """Drops what is older than EVENT_RETENTION_DAYS: events emitted before then, and versions
    seen with a `sys_updated_on` before then that no scan can read again (before where the next
    scan starts). At most two entities per event this poll added, plus PRUNE_SLACK, so pruning
    keeps pace with emitting at a bounded cost. Best effort: the next poll that emits goes on."""
    kept_from = now - timedelta(days=ts.settings.retention_days)
    next_scan = trigger.scan_from or trigger.cursor_updated_on
    if trigger.read_at is not None:
        lookback = timedelta(seconds=ts.settings.lookback_seconds)
        next_scan = min(next_scan, sn_time(trigger.read_at - lookback))
    try:
        ts.events.prune(
            trigger.id, kept_from, min(sn_time(kept_from), next_scan), 2 * emitted + PRUNE_SLACK
        )
    except AzureError as exc:
        log.warning("trigger %s: old events not pruned (%s)", trigger.id, type(exc).__name__)


def _stopped(ts: TriggerServices, scan: _Scan, stop: _Stop, now: datetime) -> str:
    trigger = scan.trigger
    if stop.status is not None:
        _set_status(trigger, scan.connection, stop.status, stop.detail, now)
        return stop.status
    log.info("trigger %s: poll stopped: %s", trigger.id, stop.detail)
    return "deferred" if stop.defer else "retry"


def _save(ts: TriggerServices, trigger: Trigger, leased: bool) -> None:
    trigger.lease_owner, trigger.lease_until = "", None
    names = [
        "cursor_updated_on",
        "cursor_sys_id",
        "scan_from",
        "read_at",
        "caught_up_to",
        "last_polled_at",
        "last_event_at",
        "events_emitted",
        "status",
        "status_detail",
        "status_changed_at",
        "pending_notices",
        "failing_noticed",
        "lease_owner",
        "lease_until",
    ]
    try:
        ts.triggers.merge(trigger, names)
    except ApiError as exc:
        KNOWN.forget(trigger.id)
        if leased or exc.status not in (404, 412):
            raise
        return  # an idle poll raced a change: the next poll reads it and covers the same ground
    KNOWN.put(trigger)
    _flush_notices(ts, trigger)


def _set_status(
    trigger: Trigger, connection: Connection, status: str, detail: str, now: datetime
) -> None:
    previous = trigger.status
    trigger.status, trigger.status_detail = status, detail
    if status == previous:
        return
    trigger.status_changed_at = now
    event = None
    if status == FAILING and not trigger.failing_noticed:
        event, trigger.failing_noticed = "trigger_failing", True
    elif status == ACTIVE and trigger.failing_noticed:  # not while merely waiting
        event, trigger.failing_noticed = "trigger_restored", False
    if event:
        trigger.pending_notices.append(trigger_notice(trigger, connection, event, now))


def trigger_notice(
    trigger: Trigger, connection: Connection, event: str, now: datetime
) -> dict[str, Any]:
    moment = format_time(trigger.status_changed_at or now) or ""
    key = f"{trigger.id}|{event}|{moment}"
    notice = {
        "notice_id": hashlib.sha256(key.encode()).hexdigest()[:32],
        "event": event,
        "tenant_id": trigger.tenant_id,
        "connection_id": connection.id,
        "connection_name": connection.name,
        "instance_url": connection.instance_url,
        "trigger_id": trigger.id,
        "trigger_name": trigger.name,
        "status": trigger.status,
        "detail": trigger.status_detail or "The trigger polls again.",
        "occurred_at": format_time(now),
    }
    return {"notice": notice, "recipients": list(connection.notify_emails)}


def _flush_notices(ts: TriggerServices, trigger: Trigger) -> None:
    """Sends the notices the record holds, then clears them (a resend keeps their ids)."""
    if not trigger.pending_notices:
        return
    try:
        for message in trigger.pending_notices:
            ts.services.notices.send(message)
        trigger.pending_notices = []
        ts.triggers.merge(trigger, ["pending_notices"])
        KNOWN.put(trigger)
    except (AzureError, ApiError) as exc:
        KNOWN.forget(trigger.id)
        log.warning("trigger %s: notices kept for the next poll (%s)", trigger.id, exc)


def _wait(
    ts: TriggerServices, trigger: Trigger, connection: Connection, now: datetime, reason: str
) -> str:
    """The connection does not work: the trigger waits (no notice of its own), cursor kept."""
    detail = f"Waiting for the connection: {reason}"
    if trigger.status == WAITING and trigger.status_detail == detail:
        return "waiting"
    _set_status(trigger, connection, WAITING, detail, now)
    _save(ts, trigger, leased=False)
    return "waiting"


def _defer_connection(ts: TriggerServices, trigger: Trigger, until: datetime) -> None:
    """A 429: every trigger of the connection waits until `until` before its next poll."""
    for other in ts.triggers.all_for(trigger.tenant_id, trigger.connection_id):
        other.deferred_until = until
        try:
            ts.triggers.merge(other, ["deferred_until"])
        except ApiError:
            continue
        KNOWN.forget(other.id)


def _remove_orphan(ts: TriggerServices, trigger: Trigger) -> None:
    """The connection was deleted: its trigger, events and schedule go too."""
    log.info("trigger %s: its connection is gone; removing it", trigger.id)
    KNOWN.forget(trigger.id)
    try:
        ts.triggers.delete(trigger)
    except ApiError:
        return
    ts.events.delete_all(trigger.id)
