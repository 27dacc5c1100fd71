"""Connection records in Table Storage: one partition per tenant, ETags on every update.

Each connection is an entity `conn-<id>`; beside it, an entity `name-<hash>` per connection
holds the case-insensitive name, so a tenant's names stay unique through entity-group
transactions.
"""

import hashlib
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from connections import errors
from connections.model import Connection, format_time, from_entity_columns, to_entity_columns
from connections.paging import decode_cursor, encode_cursor

CONNECTION_PREFIX = "conn-"
NAME_PREFIX = "name-"


def _row_key(connection_id: str) -> str:
    return CONNECTION_PREFIX + connection_id


def _name_key(name: str) -> str:
    return NAME_PREFIX + hashlib.sha256(name.casefold().encode()).hexdigest()


def _entity(connection: Connection) -> dict[str, Any]:
    entity = {"PartitionKey": connection.tenant_id, "RowKey": _row_key(connection.id)}
    entity.update(to_entity_columns(connection))
    return entity


def _name_entity(connection: Connection) -> dict[str, Any]:
    return {
        "PartitionKey": connection.tenant_id,
        "RowKey": _name_key(connection.name),
        "ConnectionId": connection.id,
    }


def _from_entity(entity: Any) -> Connection:
    connection_id = entity["RowKey"][len(CONNECTION_PREFIX) :]
    return from_entity_columns(
        entity["PartitionKey"], connection_id, entity, entity.metadata.get("etag")
    )


def _transaction_error(exc: TableTransactionError) -> errors.ApiError | None:
    code = str(getattr(exc, "error_code", "") or "")
    if code == "EntityAlreadyExists":
        return None
    if code == "UpdateConditionNotSatisfied":
        return errors.precondition_failed()
    if code == "ResourceNotFound":
        return errors.not_found()
    raise exc


def _if_unchanged(connection: Connection, mode: UpdateMode) -> dict[str, Any]:
    return {"mode": mode, "etag": connection.etag, "match_condition": MatchConditions.IfNotModified}


class ConnectionStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def add(self, connection: Connection) -> Connection:
        operations = [("create", _entity(connection)), ("create", _name_entity(connection))]
        return self._write(connection, operations)

    def _write(self, connection: Connection, operations: list[Any]) -> Connection:
        """Submits one entity-group transaction whose first operation writes the connection."""
        try:
            results = self._table.submit_transaction(operations)
        except TableTransactionError as exc:
            raise _transaction_error(exc) or errors.name_taken(connection.name) from None
        connection.etag = results[0].get("etag")
        return connection

    def ensure_name_free(self, tenant_id: str, name: str) -> None:
        """A cheap early answer; the transaction in `add` is what guarantees uniqueness."""
        try:
            self._table.get_entity(tenant_id, _name_key(name), select=["ConnectionId"])
        except ResourceNotFoundError:
            return
        raise errors.name_taken(name)

    def get(self, tenant_id: str, connection_id: str) -> Connection:
        try:
            entity = self._table.get_entity(tenant_id, _row_key(connection_id))
        except ResourceNotFoundError:
            raise errors.not_found() from None
        return _from_entity(entity)

    def list(
        self, tenant_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[Connection], str | None]:
        query = "PartitionKey eq @tenant and RowKey ge @low and RowKey lt @high"
        parameters = {"tenant": tenant_id, "low": CONNECTION_PREFIX, "high": "conn."}
        pages = self._table.query_entities(
            query, parameters=parameters, results_per_page=limit
        ).by_page(continuation_token=decode_cursor(cursor))
        page = next(pages, [])
        connections = [_from_entity(entity) for entity in page]
        return connections, encode_cursor(pages.continuation_token)

    def replace(self, connection: Connection, previous_name: str) -> Connection:
        """Writes the connection if its ETag still matches; moves its name entry on a rename."""
        condition = _if_unchanged(connection, UpdateMode.REPLACE)
        if _name_key(previous_name) == _name_key(connection.name):
            return self._update(connection, condition)
        update = ("update", _entity(connection), condition)
        old = {"PartitionKey": connection.tenant_id, "RowKey": _name_key(previous_name)}
        operations: list[Any] = [update, ("delete", old), ("create", _name_entity(connection))]
        return self._write(connection, operations)

    def write_lease(self, connection: Connection) -> Connection:
        """Writes only the lease columns (a merge), if the ETag still matches."""
        lease = {
            "PartitionKey": connection.tenant_id,
            "RowKey": _row_key(connection.id),
            "LeaseOwner": connection.lease_owner,
            "LeaseUntil": format_time(connection.lease_until),
        }
        return self._update(connection, _if_unchanged(connection, UpdateMode.MERGE), lease)

    def _update(
        self, connection: Connection, condition: dict[str, Any], entity: dict | None = None
    ) -> Connection:
        """One entity: a plain conditional update, far cheaper than a one-entity transaction
        (no multipart body to build and parse); every lease and renewal write goes here."""
        try:
            metadata = self._table.update_entity(entity or _entity(connection), **condition)
        except ResourceModifiedError:
            raise errors.precondition_failed() from None
        except ResourceNotFoundError:
            raise errors.not_found() from None
        connection.etag = metadata.get("etag")
        return connection

    def delete(self, connection: Connection) -> None:
        name = {"PartitionKey": connection.tenant_id, "RowKey": _name_key(connection.name)}
        operations = [("delete", _entity(connection)), ("delete", name)]
        try:
            self._table.submit_transaction(operations)
        except TableTransactionError as exc:
            raise _transaction_error(exc) or errors.not_found() from None
