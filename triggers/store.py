"""Trigger records in Table Storage (`triggers`): one partition per tenant, ETags on every update.

Each trigger is an entity `trig-<id>` in its tenant's partition; beside it, in the partition
`hooks`, an entity per trigger id names its tenant, for the push route, which knows only the id.
"""

from __future__ import annotations

import contextlib
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from connections import errors
from connections.paging import decode_cursor, encode_cursor
from triggers.model import Trigger, from_columns, to_columns

TRIGGERS_TABLE = "triggers"
PREFIX = "trig-"
HOOKS = "hooks"
NOT_FOUND = "No such trigger for this connection."


def _row_key(trigger_id: str) -> str:
    return PREFIX + trigger_id


def _from_entity(entity: Any) -> Trigger:
    trigger_id = entity["RowKey"][len(PREFIX) :]
    return from_columns(entity["PartitionKey"], trigger_id, entity, entity.metadata.get("etag"))


def _entity(trigger: Trigger, names: list[str] | None = None) -> dict[str, Any]:
    keys = {"PartitionKey": trigger.tenant_id, "RowKey": _row_key(trigger.id)}
    return {**keys, **to_columns(trigger, names)}


class TriggerStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def add(self, trigger: Trigger) -> Trigger:
        hook = {"PartitionKey": HOOKS, "RowKey": trigger.id, "TenantId": trigger.tenant_id}
        self._table.upsert_entity(hook)
        metadata = self._table.create_entity(_entity(trigger))
        trigger.etag = metadata.get("etag")
        return trigger

    def get(self, tenant_id: str, trigger_id: str) -> Trigger:
        try:
            return _from_entity(self._table.get_entity(tenant_id, _row_key(trigger_id)))
        except ResourceNotFoundError:
            raise errors.not_found(NOT_FOUND) from None

    def get_for(self, tenant_id: str, connection_id: str, trigger_id: str) -> Trigger:
        """The trigger, if it belongs to that connection (else 404, as for none)."""
        trigger = self.get(tenant_id, trigger_id)
        if trigger.connection_id != connection_id:
            raise errors.not_found(NOT_FOUND)
        return trigger

    def tenant_of(self, trigger_id: str) -> str | None:
        try:
            return self._table.get_entity(HOOKS, trigger_id, select=["TenantId"])["TenantId"]
        except ResourceNotFoundError:
            return None

    def list(
        self, tenant_id: str, connection_id: str, limit: int, cursor: str | None = None
    ) -> tuple[list[Trigger], str | None]:
        pages = self._query(tenant_id, connection_id, limit).by_page(
            continuation_token=decode_cursor(cursor)
        )
        page = [_from_entity(entity) for entity in next(pages, [])]
        return page, encode_cursor(pages.continuation_token)

    def all_for(self, tenant_id: str, connection_id: str) -> list[Trigger]:
        return [_from_entity(entity) for entity in self._query(tenant_id, connection_id, 1000)]

    def _query(self, tenant_id: str, connection_id: str, limit: int) -> Any:
        query = (
            "PartitionKey eq @tenant and RowKey ge @low and RowKey lt @high "
            "and ConnectionId eq @connection"
        )
        parameters = {
            "tenant": tenant_id,
            "low": PREFIX,
            "high": "trig.",
            "connection": connection_id,
        }
        return self._table.query_entities(query, parameters=parameters, results_per_page=limit)

    def replace(self, trigger: Trigger) -> Trigger:
        return self._update(trigger, _entity(trigger), UpdateMode.REPLACE)

    def merge(self, trigger: Trigger, names: list[str]) -> Trigger:
        """Writes only the named attributes' columns, if the ETag still matches."""
        return self._update(trigger, _entity(trigger, names), UpdateMode.MERGE)

    def _update(self, trigger: Trigger, entity: dict[str, Any], mode: UpdateMode) -> Trigger:
        try:
            metadata = self._table.update_entity(
                entity,
                mode=mode,
                etag=trigger.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise errors.precondition_failed() from None
        except ResourceNotFoundError:
            raise errors.not_found(NOT_FOUND) from None
        trigger.etag = metadata.get("etag")
        return trigger

    def delete(self, trigger: Trigger) -> None:
        try:
            self._table.delete_entity(
                trigger.tenant_id,
                _row_key(trigger.id),
                etag=trigger.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise errors.precondition_failed() from None
        with contextlib.suppress(ResourceNotFoundError):
            self._table.delete_entity(HOOKS, trigger.id)
