"""The due index and the sweep's batch of changes to it, against Azurite.

The batch must write what it is given in the order it was given (a record's new entry before
its old one goes), a transaction at a time, and lose nothing when storage refuses.
"""

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient

from connections.due_index import DueEntry, DueIndex, DueIndexBatch, entry_for

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FAR = START + timedelta(days=30)


class CountingTable:
    """The table client, counting the requests that write entries."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self.transactions: list[int] = []
        self.single_writes = 0
        self.fail_transactions = 0
        self.written: list[tuple[str, str]] = []  # (upsert | delete, row key), in order

    def submit_transaction(self, operations: list[Any]) -> Any:
        if self.fail_transactions:
            self.fail_transactions -= 1
            raise HttpResponseError(message="Service Unavailable (injected)")
        self.transactions.append(len(operations))
        result = self._table.submit_transaction(operations)
        self.written += [(kind, entity["RowKey"]) for kind, entity in operations]
        return result

    def upsert_entity(self, entity: dict[str, Any]) -> Any:
        self.single_writes += 1
        return self._table.upsert_entity(entity)

    def delete_entity(self, partition_key: str, row_key: str) -> None:
        self.single_writes += 1
        self._table.delete_entity(partition_key, row_key)

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        return self._table.query_entities(*args, **kwargs)


@pytest.fixture
def table(azurite) -> Iterator[CountingTable]:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    name = "due" + uuid.uuid4().hex[:12]
    client = service.create_table_if_not_exists(name)
    yield CountingTable(client)
    service.delete_table(name)


def _entry(number: int, at: datetime = START) -> DueEntry:
    return entry_for("tenant-a", f"connection-{number:04d}", at, False)


def _stored(table: CountingTable) -> list[DueEntry]:
    return DueIndex(table).due(FAR, 10_000)  # type: ignore[arg-type]


def _seed(table: CountingTable, count: int) -> list[DueEntry]:
    old = [_entry(number) for number in range(count)]
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    for entry in old:
        batch.put(entry)
    batch.flush()
    table.transactions.clear()
    return old


def test_moves_are_written_in_full_transactions_in_order(table):
    old = _seed(table, 120)
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    new = [_entry(number, START + timedelta(hours=6)) for number in range(120)]
    for before, after in zip(old, new, strict=True):
        batch.put(after)
        batch.remove(before)
    assert table.transactions == [100, 100], "full transactions go out while changes come in"
    assert batch.pending == 40
    batch.flush()
    assert table.transactions == [100, 100, 40]
    assert table.single_writes == 0
    assert _stored(table) == new


def test_an_entry_changed_twice_is_split_across_transactions(table):
    """A transaction may name an entity once: put-then-remove of one entry takes two."""
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    batch.put(_entry(1))
    batch.put(_entry(2))
    batch.remove(_entry(1))
    batch.flush()
    assert table.transactions == [2, 1]
    assert _stored(table) == [_entry(2)]


def test_removing_an_entry_already_gone_falls_back_to_one_by_one(table):
    """The transaction is refused as a whole (404 on the delete): each change is then written
    on its own, in order, and the missing one is simply skipped."""
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    batch.put(_entry(1))
    batch.remove(_entry(7))  # never written
    batch.put(_entry(2))
    batch.flush()
    assert table.single_writes == 3
    assert _stored(table) == [_entry(1), _entry(2)]


def _each_new_entry_went_first(table: CountingTable, old: list, new: list) -> bool:
    order = {change: at for at, change in enumerate(table.written)}
    return all(
        order[("upsert", after.row_key)] < order[("delete", before.row_key)]
        for before, after in zip(old, new, strict=True)
    )


def test_storage_refusing_holds_back_later_changes_and_loses_none(table, caplog):
    old = _seed(table, 60)
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    new = [_entry(number, START + timedelta(hours=6)) for number in range(60)]
    table.fail_transactions = 1
    for before, after in zip(old, new, strict=True):
        batch.put(after)
        batch.remove(before)
    assert "changes wait for storage" in caplog.text
    assert table.transactions == [100], "the refused 100 went out first, with the next change"
    assert batch.pending == 20
    table.fail_transactions = 1
    with pytest.raises(HttpResponseError):
        batch.flush()
    assert batch.pending == 20
    batch.flush()
    assert table.transactions == [100, 20]
    assert _stored(table) == new
    assert _each_new_entry_went_first(table, old, new)


def test_changes_from_many_threads_each_keep_their_order(table):
    old = _seed(table, 200)
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    new = [_entry(number, START + timedelta(hours=6)) for number in range(200)]

    def move(numbers: range) -> None:
        for number in numbers:
            batch.put(new[number])
            batch.remove(old[number])

    threads = [threading.Thread(target=move, args=(range(k, 200, 8),)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batch.flush()
    assert _stored(table) == new
    assert sum(table.transactions) == 400 and max(table.transactions) <= 100
    assert _each_new_entry_went_first(table, old, new)


def test_the_batch_reads_its_own_changes_before_they_are_written(table):
    """The sweep reads the index again within a run: it must see the entries its renewals just
    made (and not the ones they replaced), though they are not written yet."""
    old = _seed(table, 3)
    batch = DueIndexBatch(DueIndex(table))  # type: ignore[arg-type]
    soon = _entry(0, START + timedelta(seconds=45))
    later = _entry(1, START + timedelta(hours=6))
    batch.put(soon)
    batch.remove(old[0])
    batch.put(later)
    batch.remove(old[1])
    assert table.transactions == [] and batch.pending == 4
    assert batch.due(START + timedelta(minutes=5), 10) == [old[2], soon]
    assert batch.due(FAR, 10) == [old[2], soon, later]
    assert batch.due(FAR, 2) == [old[2], soon], "still at most `limit`, earliest first"
    batch.flush()
    assert batch.due(FAR, 10) == _stored(table) == [old[2], soon, later]
