"""Which connections are due for renewal or a check, without scanning them all.

One small entity per connection in the `connectiondue` table, keyed by its due time, so the
sweep's query reads only what is due. The record's `next_due_at` is the truth: an entry whose
time no longer matches its record is stale and is dropped when met. Entries are written before
the record that refers to them and removed after, so a record is never without its entry.
"""

import contextlib
from dataclasses import dataclass
from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient

from connections.model import format_time

PARTITION = "due"


@dataclass(frozen=True)
class DueEntry:
    due_at: str
    tenant_id: str
    connection_id: str
    exact: bool = False

    @property
    def row_key(self) -> str:
        return f"{self.due_at}|{self.tenant_id}|{self.connection_id}"


def entry_for(tenant_id: str, connection_id: str, due_at: datetime, exact: bool) -> DueEntry:
    return DueEntry(format_time(due_at) or "", tenant_id, connection_id, exact)


class DueIndex:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def put(self, entry: DueEntry) -> None:
        self._table.upsert_entity(
            {"PartitionKey": PARTITION, "RowKey": entry.row_key, "Exact": entry.exact}
        )

    def remove(self, entry: DueEntry) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(PARTITION, entry.row_key)

    def due(self, until: datetime, limit: int) -> list[DueEntry]:
        """Entries due at or before `until`, earliest first."""
        query = "PartitionKey eq @partition and RowKey le @until"
        parameters = {"partition": PARTITION, "until": f"{format_time(until)}|~"}
        entries = []
        for entity in self._table.query_entities(
            query, parameters=parameters, results_per_page=min(limit, 1000)
        ):
            due_at, tenant_id, connection_id = entity["RowKey"].split("|")
            entries.append(DueEntry(due_at, tenant_id, connection_id, bool(entity.get("Exact"))))
            if len(entries) >= limit:
                break
        return entries
