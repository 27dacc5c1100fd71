"""The events of each trigger in Table Storage (`triggerevents`), one partition per trigger.

Two entities per event, written together in one entity-group transaction:

- `sn-<sys_updated_on>-<sys_id>-<sys_mod_count>`: the version was emitted. Its key is derived from
  the version alone, so a poll finds what it already emitted with one range query from where its
  scan starts, and delivery marks it (`DeliveredAt`) to drop a second copy of a queued event.
- `ev-<emitted_at>-<sequence>-<event_id>`: the event as sent (its body), for `GET .../events`
  (oldest first, `?since=` a range on the key) and for redelivery.

Old events go by range deletes in the trigger's own partition (`prune`), never a table scan.
"""

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from connections.model import format_millis
from connections.paging import decode_cursor, encode_cursor

log = logging.getLogger(__name__)

EVENTS_TABLE = "triggerevents"
TRANSACTION_LIMIT = 100
BODY_CHUNK = 30_000  # characters per string property (the service allows 32K UTF-16)
SEEN, LISTED = "sn-", "ev-"


def compact_updated_on(value: str) -> str:
    """ServiceNow's `2026-12-01 10:00:01` as `20261201100001` (sorts the same)."""
    return "".join(char for char in value if char.isdigit())[:14]


def seen_key(sys_updated_on: str, sys_id: str, sys_mod_count: int) -> str:
    return f"{SEEN}{compact_updated_on(sys_updated_on)}-{sys_id}-{sys_mod_count:010d}"


def _compact_moment(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


def list_key(emitted_at: datetime, sequence: int, event_id: str) -> str:
    return f"{LISTED}{_compact_moment(emitted_at)}-{sequence:06d}-{event_id}"


@dataclass(frozen=True)
class Emitted:
    """One new version, as queued and as recorded."""

    event: dict[str, Any]  # the webhook body
    seen: str  # its `sn-` key
    listed: str  # its `ev-` key


def _body_columns(event: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    chunks = [text[i : i + BODY_CHUNK] for i in range(0, len(text), BODY_CHUNK)] or [""]
    return {"Parts": len(chunks), **{f"Body{index}": chunk for index, chunk in enumerate(chunks)}}


def _body(entity: Any) -> dict[str, Any]:
    parts = int(entity.get("Parts") or 0)
    return json.loads("".join(entity.get(f"Body{index}", "") for index in range(parts)))


class EventLog:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def seen_since(self, trigger_id: str, sys_updated_on: str) -> set[tuple[str, int]]:
        """(sys_id, sys_mod_count) of every version recorded with `sys_updated_on` at or after
        (a version only marked delivered, before its poll recorded it, is not recorded yet)."""
        low = SEEN + compact_updated_on(sys_updated_on)
        query = "PartitionKey eq @trigger and RowKey ge @low and RowKey lt @high"
        parameters = {"trigger": trigger_id, "low": low, "high": "sn."}
        found = set()
        for entity in self._table.query_entities(
            query, parameters=parameters, select=["RowKey", "Listed"], results_per_page=1000
        ):
            if not entity.get("Listed"):
                continue
            _, _, sys_id, mod_count = entity["RowKey"].split("-")
            found.add((sys_id, int(mod_count)))
        return found

    def record(self, trigger_id: str, emitted: list[Emitted]) -> None:
        """Writes both entities of each event; a repeat of a version merges into what is there."""
        operations: list[Any] = []
        for item in emitted:
            event_id = item.event["event_id"]
            seen = {
                "PartitionKey": trigger_id,
                "RowKey": item.seen,
                "EventId": event_id,
                "Listed": item.listed,
            }
            listed = {
                "PartitionKey": trigger_id,
                "RowKey": item.listed,
                "EventId": event_id,
                "Seen": item.seen,
                **_body_columns(item.event),
            }
            operations += [("upsert", seen, {"mode": UpdateMode.MERGE}), ("upsert", listed)]
        for start in range(0, len(operations), TRANSACTION_LIMIT):
            self._table.submit_transaction(operations[start : start + TRANSACTION_LIMIT])

    def page(
        self, trigger_id: str, since: datetime | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events emitted at or after `since`, oldest first; one page and the next cursor."""
        low = LISTED + (_compact_moment(since) if since else "")
        query = "PartitionKey eq @trigger and RowKey ge @low and RowKey lt @high"
        parameters = {"trigger": trigger_id, "low": low, "high": "ev."}
        pages = self._table.query_entities(
            query, parameters=parameters, results_per_page=limit
        ).by_page(continuation_token=decode_cursor(cursor))
        items = [_body(entity) for entity in next(pages, [])]
        return items, encode_cursor(pages.continuation_token)

    def find(self, trigger_id: str, event_id: str) -> Emitted | None:
        """The kept event with that id (a scan of the trigger's events: redelivery is rare)."""
        query = "PartitionKey eq @trigger and RowKey ge @low and RowKey lt @high and EventId eq @id"
        parameters = {"trigger": trigger_id, "low": LISTED, "high": "ev.", "id": event_id}
        for entity in self._table.query_entities(query, parameters=parameters):
            return Emitted(_body(entity), entity["Seen"], entity["RowKey"])
        return None

    def delivered(self, trigger_id: str, seen: str) -> bool:
        try:
            entity = self._table.get_entity(trigger_id, seen, select=["DeliveredAt"])
        except ResourceNotFoundError:
            return False
        return bool(entity.get("DeliveredAt"))

    def mark_delivered(self, trigger_id: str, seen: str, moment: datetime) -> None:
        """Marks the version delivered, recorded or not yet: a delivery can come before the
        poll records what it queued (or the poll may fail to), and the copy a later poll queues
        must still be dropped. The poll's record merges into the mark."""
        entity = {"PartitionKey": trigger_id, "RowKey": seen, "DeliveredAt": format_millis(moment)}
        self._table.upsert_entity(entity, mode=UpdateMode.MERGE)

    def prune(
        self, trigger_id: str, emitted_before: datetime, seen_before: str, limit: int = 1000
    ) -> int:
        """Deletes at most `limit` events emitted before `emitted_before` and versions seen with
        `sys_updated_on` before `seen_before`; returns how many entities went."""
        ranges = [
            (LISTED, LISTED + _compact_moment(emitted_before)),
            (SEEN, SEEN + compact_updated_on(seen_before)),
        ]
        keys: list[str] = []
        for low, high in ranges:
            keys += self._keys(trigger_id, low, high, limit - len(keys))
        self._delete(trigger_id, keys)
        return len(keys)

    def delete_all(self, trigger_id: str) -> None:
        while keys := self._keys(trigger_id, "", "~", 1000):
            self._delete(trigger_id, keys)

    def _keys(self, trigger_id: str, low: str, high: str, limit: int) -> list[str]:
        if limit <= 0:
            return []
        query = "PartitionKey eq @trigger and RowKey ge @low and RowKey lt @high"
        parameters = {"trigger": trigger_id, "low": low, "high": high}
        found = self._table.query_entities(
            query, parameters=parameters, select=["RowKey"], results_per_page=min(limit, 1000)
        )
        return [entity["RowKey"] for entity in _first(found, limit)]

    def _delete(self, trigger_id: str, keys: list[str]) -> None:
        for start in range(0, len(keys), TRANSACTION_LIMIT):
            chunk = keys[start : start + TRANSACTION_LIMIT]
            operations: list[Any] = [
                ("delete", {"PartitionKey": trigger_id, "RowKey": key}) for key in chunk
            ]
            self._table.submit_transaction(operations)


def _first(items: Any, limit: int) -> Iterator[Any]:
    for index, item in enumerate(items):
        if index >= limit:
            return
        yield item
