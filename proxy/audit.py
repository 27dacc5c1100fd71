"""The record of proxied calls, in Table Storage: one table per UTC day (`proxycalls20261201`),
one partition per connection, row keys that sort newest first.

Old entries go by dropping whole day tables (`drop_expired`): no scan, whatever the volume.
Entries are written by a background writer in entity-group transactions, so a proxied call
never waits for its audit write; `flush` (called before every listing) waits for what is pending.
Nothing here holds a body, a header value or a credential: the caller gives the entry, already
redacted.
"""

import atexit
import base64
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableServiceClient

from connections import errors
from connections.model import parse_time

log = logging.getLogger(__name__)

TABLE_PREFIX = "proxycalls"
TRANSACTION_LIMIT = 100
FLUSH_INTERVAL = 0.2
WRITE_TRIES = 5
_MAX_ROW = 10**16


@dataclass
class CallEntry:
    at: str  # RFC 3339 with milliseconds
    method: str
    path: str
    query: str
    status: int
    duration_ms: int
    bytes_in: int
    bytes_out: int
    retries: int
    renewed: bool
    relayed: bool
    automation_id: str | None = None
    error_code: str | None = None


def table_name(day: datetime) -> str:
    return TABLE_PREFIX + day.astimezone(UTC).strftime("%Y%m%d")


def _partition(tenant_id: str, connection_id: str) -> str:
    return f"{tenant_id}|{connection_id}"


def _row_key(moment: datetime) -> str:
    micros = int(moment.timestamp() * 1_000_000)
    return f"{_MAX_ROW - micros:017d}-{uuid.uuid4().hex[:12]}"


def _encode_cursor(day: str, token: Any) -> str:
    raw = json.dumps({"day": day, "token": token}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded))
        day, token = document["day"], document["token"]
        if not (isinstance(day, str) and day.isdigit() and len(day) == 8):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        detail = errors.FieldError("cursor", "Not a cursor this service handed out.")
        raise errors.validation_error([detail]) from None
    return day, token


class CallLog:
    def __init__(
        self,
        service: TableServiceClient,
        clock: Callable[[], datetime],
        retention_days: int,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self._service = service
        self._clock = clock
        self._retention_days = retention_days
        self._flush_interval = flush_interval
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition()
        self._tables: set[str] = set()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    # -- writing ------------------------------------------------------------------------------

    def record(self, tenant_id: str, connection_id: str, entry: CallEntry) -> None:
        """Queues the entry for the background writer; never blocks on storage."""
        moment = parse_time(entry.at) or self._clock()
        entity = {
            "PartitionKey": _partition(tenant_id, connection_id),
            "RowKey": _row_key(moment),
            **{key: value for key, value in asdict(entry).items() if value is not None},
        }
        with self._idle:
            self._pending += 1
        self._queue.put((table_name(moment), entity))
        self._ensure_writer()

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued entry is written (or given up on); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _ensure_writer(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="proxy-audit-writer", daemon=True
                )
                self._thread.start()
                atexit.register(self.flush, 5.0)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < 10 * TRANSACTION_LIMIT:
                    batch.append(self._queue.get(timeout=self._flush_interval / 4))
            except queue.Empty:
                pass
            try:
                self._write(batch)
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for table, entity in batch:
            groups[(table, entity["PartitionKey"])].append(entity)
        for (table, _), entities in groups.items():
            for start in range(0, len(entities), TRANSACTION_LIMIT):
                self._write_group(table, entities[start : start + TRANSACTION_LIMIT])

    def _write_group(self, table: str, entities: list[dict[str, Any]]) -> None:
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                self._ensure_table(table)
                operations = [("upsert", entity) for entity in entities]
                self._service.get_table_client(table).submit_transaction(operations)
                return
            except AzureError as exc:  # the table may have been dropped meanwhile: make it again
                self._tables.discard(table)
                log.warning(
                    "proxy audit: %d entries not written yet (%s, try %d)",
                    len(entities),
                    type(exc).__name__,
                    attempt,
                )
                time.sleep(min(2.0**attempt * 0.1, 2.0))
        log.error("proxy audit: %d entries could not be written and are lost", len(entities))

    def _ensure_table(self, table: str) -> None:
        if table in self._tables:
            return
        with contextlib.suppress(ResourceExistsError):
            self._service.create_table(table)
        self._tables.add(table)

    # -- reading ------------------------------------------------------------------------------

    def _kept_days(self) -> list[str]:
        today = self._clock().astimezone(UTC)
        return [
            (today - timedelta(days=offset)).strftime("%Y%m%d")
            for offset in range(self._retention_days)
        ]

    def recent(
        self, tenant_id: str, connection_id: str, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first, and the cursor of the next page (None at the end)."""
        self.flush()
        days, token = self._kept_days(), None
        if cursor:
            first, token = _decode_cursor(cursor)
            days = [day for day in days if day <= first]
        existing = self._existing_tables()
        days = [day for day in days if TABLE_PREFIX + day in existing]
        if cursor and (not days or days[0] != first):
            token = None  # the cursor's day is gone: start at the top of the next one
        items: list[dict[str, Any]] = []
        for index, day in enumerate(days):
            remaining = limit - len(items)
            page, token = self._page(TABLE_PREFIX + day, tenant_id, connection_id, remaining, token)
            items += page
            if token is not None:
                return items, _encode_cursor(day, token)
            if len(items) >= limit:
                later = days[index + 1 :]
                return items, _encode_cursor(later[0], None) if later else None
        return items, None

    def _existing_tables(self) -> set[str]:
        query = "TableName ge @low and TableName lt @high"
        found = self._service.query_tables(
            query, parameters={"low": TABLE_PREFIX, "high": TABLE_PREFIX + "~"}
        )
        return {table.name for table in found}

    def _page(
        self, table: str, tenant_id: str, connection_id: str, limit: int, token: Any
    ) -> tuple[list[dict[str, Any]], Any]:
        client = self._service.get_table_client(table)
        pages = client.query_entities(
            "PartitionKey eq @partition",
            parameters={"partition": _partition(tenant_id, connection_id)},
            results_per_page=limit,
        ).by_page(continuation_token=token)
        try:
            page = list(next(pages, []))
        except ResourceNotFoundError:
            return [], None
        return [_public(entity) for entity in page], pages.continuation_token

    # -- retention ----------------------------------------------------------------------------

    def drop_expired(self) -> list[str]:
        """Deletes the day tables older than the retention; returns their names."""
        oldest_kept = TABLE_PREFIX + self._kept_days()[-1]
        dropped = []
        for table in sorted(self._existing_tables()):
            if table < oldest_kept:
                self._service.delete_table(table)
                self._tables.discard(table)
                dropped.append(table)
        return dropped


def _public(entity: Any) -> dict[str, Any]:
    fields = CallEntry.__dataclass_fields__
    return {name: entity.get(name) for name in fields}
