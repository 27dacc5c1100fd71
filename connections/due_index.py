"""Which connections are due for renewal or a check, without scanning them all.

One small entity per connection in the `connectiondue` table, keyed by its due time, so the
sweep's query reads only what is due. The record's `next_due_at` is the truth: an entry whose
time no longer matches its record is stale; when met, the record's own entry is written and the
stale one dropped. A record's new entry is written before its old one is removed, so a record
always has an entry at or before its due time.

The API writes entries as it goes. The sweep collects its changes in a `DueIndexBatch` and
writes them in entity-group transactions (one request for up to 100 changes), in the order they
were made; its reads see those changes before they are written. A sweep that stops before
writing them leaves the old, earlier entries in place: the next sweep meets them as stale and
repairs the index.
"""

import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError

from connections.model import format_time

log = logging.getLogger(__name__)

PARTITION = "due"
TRANSACTION_LIMIT = 100  # operations in one entity-group transaction


@dataclass(frozen=True)
class DueEntry:
    """`connection_id` is the id of what is due: a connection, or in `triggerdue` a trigger
    (whose polling `interval` in seconds the entry also holds, so the dispatcher can move it)."""

    due_at: str
    tenant_id: str
    connection_id: str
    exact: bool = False
    interval: int = 0

    @property
    def row_key(self) -> str:
        return f"{self.due_at}|{self.tenant_id}|{self.connection_id}"


def entry_for(tenant_id: str, connection_id: str, due_at: datetime, exact: bool) -> DueEntry:
    return DueEntry(format_time(due_at) or "", tenant_id, connection_id, exact)


Change = tuple[Literal["put", "remove"], DueEntry]


def to_entity(entry: DueEntry) -> dict[str, Any]:
    entity = {"PartitionKey": PARTITION, "RowKey": entry.row_key, "Exact": entry.exact}
    if entry.interval:
        entity["Interval"] = entry.interval
    return entity


class DueIndex:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def put(self, entry: DueEntry) -> None:
        self._table.upsert_entity(to_entity(entry))

    def remove(self, entry: DueEntry) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(PARTITION, entry.row_key)

    def apply(self, changes: list[Change]) -> None:
        """Writes the changes in one transaction (each row key at most once). If the transaction
        is refused (an entry to remove is already gone), writes them one by one, in order."""
        operations: list[Any] = [
            ("upsert" if action == "put" else "delete", to_entity(entry))
            for action, entry in changes
        ]
        try:
            self._table.submit_transaction(operations)
        except TableTransactionError:
            for action, entry in changes:
                self.put(entry) if action == "put" else self.remove(entry)

    def due(self, until: datetime, limit: int) -> list[DueEntry]:
        """Entries due at or before `until`, earliest first."""
        query = "PartitionKey eq @partition and RowKey le @until"
        parameters = {"partition": PARTITION, "until": f"{format_time(until)}|~"}
        entries = []
        for entity in self._table.query_entities(
            query, parameters=parameters, results_per_page=min(limit, 1000)
        ):
            due_at, tenant_id, connection_id = entity["RowKey"].split("|")
            exact, interval = bool(entity.get("Exact")), int(entity.get("Interval") or 0)
            entries.append(DueEntry(due_at, tenant_id, connection_id, exact, interval))
            if len(entries) >= limit:
                break
        return entries


class DueIndexBatch:
    """The sweep's view of the index: reads go straight through; puts and removes are kept and
    written in transactions, in the order they were made, as soon as a transaction is full and
    when the sweep ends (`flush`). Safe to use from many threads."""

    def __init__(self, index: DueIndex, size: int = TRANSACTION_LIMIT) -> None:
        self._index = index
        self._size = size
        self._pending: list[Change] = []
        self._pending_lock = threading.Lock()
        self._writing = threading.Lock()  # one writer at a time keeps the order

    def due(self, until: datetime, limit: int) -> list[DueEntry]:
        """As `DueIndex.due`, with the changes not yet written applied: the sweep, reading the
        index again within a run, sees the entries its own renewals made."""
        with self._writing:  # no chunk half-way between the pending list and the table
            with self._pending_lock:
                changes = list(self._pending)
            removes = sum(1 for action, _ in changes if action == "remove")
            found = {entry.row_key: entry for entry in self._index.due(until, limit + removes)}
        until_text = format_time(until) or ""
        for action, entry in changes:
            if action == "remove":
                found.pop(entry.row_key, None)
            elif entry.due_at <= until_text:
                found[entry.row_key] = entry
        return [found[key] for key in sorted(found)][:limit]

    def put(self, entry: DueEntry) -> None:
        self._add(("put", entry))

    def remove(self, entry: DueEntry) -> None:
        self._add(("remove", entry))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _add(self, change: Change) -> None:
        with self._pending_lock:
            self._pending.append(change)
            full = len(self._pending) >= self._size
        if full and self._writing.acquire(blocking=False):
            try:
                self._write(whole=False)
            except AzureError:  # kept, in order, for the next full transaction or the flush
                log.warning("due index: %d changes wait for storage", len(self._pending))
            finally:
                self._writing.release()

    def flush(self) -> None:
        """Writes every change kept so far; raises AzureError (keeping them) if storage fails."""
        with self._writing:
            self._write(whole=True)

    def _write(self, whole: bool) -> None:
        while chunk := self._next_chunk(whole):
            try:
                self._index.apply(chunk)
            except AzureError:
                with self._pending_lock:  # back in front: later changes must not go first
                    self._pending[:0] = chunk
                raise

    def _next_chunk(self, whole: bool) -> list[Change]:
        """The oldest changes that fit one transaction: at most `size`, each row key once."""
        with self._pending_lock:
            keys: set[str] = set()
            count = 0
            for _, entry in self._pending[: self._size]:
                if entry.row_key in keys:
                    break
                keys.add(entry.row_key)
                count += 1
            if not whole and count == len(self._pending) < self._size:
                return []
            chunk, self._pending[:count] = self._pending[:count], []
            return chunk
