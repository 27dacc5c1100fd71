"""Writes connections straight into storage, through the app's own entity layout and classes.

Records and their name entries go in entity-group transactions of 100 entities (one tenant
partition each), due-index entries in transactions of 100, and each connection's client secret
through the app's `SecretStore` (which also remembers that exact version, as after a create).
Nothing is proven against ServiceNow: this is set-up, not what is measured.
"""

import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.env import CLIENT_ID, CLIENT_SECRET
from connections.clients import DUE_TABLE, table_client
from connections.due_index import TRANSACTION_LIMIT, entry_for, to_entity
from connections.model import Connection, format_time
from connections.service import Services
from connections.store import _entity, _name_entity

BATCH = TRANSACTION_LIMIT


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def oauth_connection(tenant_id: str, index: int, instance_url: str, due_at: datetime) -> Connection:
    now = datetime.now(UTC)
    return Connection(
        id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        name=f"Bench connection {index:05d}",
        instance_url=instance_url,
        auth={
            "method": "oauth2",
            "client_id": CLIENT_ID,
            "token_expires_at": format_time(due_at + timedelta(minutes=10)),
        },
        created_at=now,
        updated_at=now,
        status_detail="Authenticated with an OAuth 2.0 access token.",
        capabilities={"incident": True, "sc_req_item": True, "change_request": True},
        last_checked_at=now,
        notify_emails=["it-admins@contoso.example"],
        next_due_at=due_at,
    )


def make_connections(
    tenants: Iterable[str], per_tenant: int, instance_url: str, due_at: datetime
) -> list[Connection]:
    return [
        oauth_connection(tenant, index, instance_url, due_at)
        for tenant in tenants
        for index in range(per_tenant)
    ]


def _submit_all(table: Any, batches: list[list[Any]], workers: int = 8) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(table.submit_transaction, batches))


def write_secrets(services: Services, connections: list[Connection], workers: int = 16) -> None:
    """One client secret per connection, in Key Vault; its version goes into the record."""

    def put(connection: Connection) -> None:
        version = services.secrets.put(
            connection.tenant_id, connection.id, "client_secret", CLIENT_SECRET
        )
        connection.secret_versions["client_secret"] = version

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, connections))


def write_records(connections: list[Connection]) -> None:
    """Records and name entries, 50 connections (100 entities) per transaction and tenant."""
    by_tenant: dict[str, list[Connection]] = {}
    for connection in connections:
        by_tenant.setdefault(connection.tenant_id, []).append(connection)
    batches = []
    for group in by_tenant.values():
        for chunk in _chunks(group, BATCH // 2):
            operations = []
            for connection in chunk:
                operations.append(("upsert", _entity(connection)))
                operations.append(("upsert", _name_entity(connection)))
            batches.append(operations)
    _submit_all(table_client(), batches)


def write_due_entries(connections: list[Connection]) -> None:
    operations = []
    for connection in connections:
        assert connection.next_due_at is not None
        entry = entry_for(connection.tenant_id, connection.id, connection.next_due_at, False)
        operations.append(("upsert", to_entity(entry)))
    _submit_all(table_client(DUE_TABLE), list(_chunks(operations, BATCH)))


def seed(
    services: Services,
    tenants: Iterable[str],
    per_tenant: int,
    instance_url: str,
    due_at: datetime,
) -> list[Connection]:
    connections = make_connections(tenants, per_tenant, instance_url, due_at)
    write_secrets(services, connections)
    write_records(connections)
    write_due_entries(connections)
    return connections
