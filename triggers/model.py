"""The trigger record: what Table Storage holds and what the API returns (never the push secret).

The poll's position is `cursor_updated_on` / `cursor_sys_id` (the last record, in
`(sys_updated_on, sys_id)` order, whose change has become an event) plus `scan_from` (where the
scan in progress started) and `read_at` (when the last complete scan began reading).
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connections.model import format_time, parse_time

ACTIVE = "active"
PAUSED = "paused"
WAITING = "waiting"
FAILING = "failing"
STATUSES = (ACTIVE, PAUSED, WAITING, FAILING)


@dataclass
class Trigger:
    id: str
    tenant_id: str
    connection_id: str
    name: str
    table: str
    query: str
    fields: list[str]
    start_at: datetime
    interval_seconds: int
    enabled: bool
    created_at: datetime
    updated_at: datetime
    status: str = ACTIVE
    status_detail: str = ""
    matching_now: int | None = None
    caught_up_to: datetime | None = None
    last_polled_at: datetime | None = None
    last_event_at: datetime | None = None
    events_emitted: int = 0
    # The poll's state, never returned by the API.
    cursor_updated_on: str = ""  # ServiceNow's "YYYY-MM-DD HH:MM:SS" (UTC)
    cursor_sys_id: str = ""
    scan_from: str = ""  # where the scan in progress started; "" when none is in progress
    read_at: datetime | None = None
    deferred_until: datetime | None = None
    hinted_at: datetime | None = None
    status_changed_at: datetime | None = None
    lease_owner: str = ""
    lease_until: datetime | None = None
    secret_version: str = ""
    failing_noticed: bool = False  # a trigger_failing notice went out; trigger_restored is owed
    pending_notices: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "connection_id": self.connection_id,
            "name": self.name,
            "table": self.table,
            "query": self.query,
            "fields": list(self.fields),
            "start_at": format_time(self.start_at),
            "interval_seconds": self.interval_seconds,
            "enabled": self.enabled,
            "status": self.status,
            "status_detail": self.status_detail,
            "matching_now": self.matching_now,
            "caught_up_to": format_time(self.caught_up_to),
            "last_polled_at": format_time(self.last_polled_at),
            "last_event_at": format_time(self.last_event_at),
            "events_emitted": self.events_emitted,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
        }


_TEXT = {
    "connection_id": "ConnectionId",
    "name": "Name",
    "table": "TableName",
    "query": "Query",
    "status": "Status",
    "status_detail": "StatusDetail",
    "cursor_updated_on": "CursorUpdatedOn",
    "cursor_sys_id": "CursorSysId",
    "scan_from": "ScanFrom",
    "lease_owner": "LeaseOwner",
    "secret_version": "SecretVersion",
}
_TIMES = {
    "start_at": "StartAt",
    "created_at": "CreatedAt",
    "updated_at": "UpdatedAt",
    "caught_up_to": "CaughtUpTo",
    "last_polled_at": "LastPolledAt",
    "last_event_at": "LastEventAt",
    "read_at": "ReadAt",
    "deferred_until": "DeferredUntil",
    "hinted_at": "HintedAt",
    "status_changed_at": "StatusChangedAt",
    "lease_until": "LeaseUntil",
}
_NUMBERS = {"interval_seconds": "IntervalSeconds", "events_emitted": "EventsEmitted"}
_JSON = {"fields": ("Fields", list), "pending_notices": ("PendingNotices", list)}


def to_columns(trigger: Trigger, names: list[str] | None = None) -> dict[str, Any]:
    """The entity's columns (all, or those of the named attributes), without its keys."""
    columns: dict[str, Any] = {}
    wanted = set(names) if names is not None else None

    def want(attr: str) -> bool:
        return wanted is None or attr in wanted

    for attr, column in _TEXT.items():
        if want(attr):
            columns[column] = getattr(trigger, attr)
    for attr, column in _TIMES.items():
        if want(attr):
            columns[column] = format_time(getattr(trigger, attr))
    for attr, column in _NUMBERS.items():
        if want(attr):
            columns[column] = int(getattr(trigger, attr))
    for attr, (column, _) in _JSON.items():
        if want(attr):
            columns[column] = json.dumps(getattr(trigger, attr), separators=(",", ":"))
    if want("enabled"):
        columns["Enabled"] = bool(trigger.enabled)
    if want("failing_noticed"):
        columns["FailingNoticed"] = bool(trigger.failing_noticed)
    if want("matching_now"):
        columns["MatchingNow"] = -1 if trigger.matching_now is None else int(trigger.matching_now)
    return columns


def from_columns(tenant_id: str, trigger_id: str, entity: Any, etag: str | None) -> Trigger:
    values: dict[str, Any] = {"id": trigger_id, "tenant_id": tenant_id, "etag": etag}
    for attr, column in _TEXT.items():
        values[attr] = entity.get(column) or ""
    for attr, column in _TIMES.items():
        values[attr] = parse_time(entity.get(column))
    for attr, column in _NUMBERS.items():
        values[attr] = int(entity.get(column) or 0)
    for attr, (column, empty) in _JSON.items():
        values[attr] = json.loads(entity.get(column) or "null") or empty()
    values["enabled"] = bool(entity.get("Enabled"))
    values["failing_noticed"] = bool(entity.get("FailingNoticed"))
    matching = entity.get("MatchingNow")
    values["matching_now"] = None if matching is None or int(matching) < 0 else int(matching)
    return Trigger(**values)
