"""The orphaned-secret cleanup: secrets whose tags name a connection that has no record.

A create that failed while Key Vault or storage was down can leave a secret behind that no
record refers to (its clean-up is best effort). An unattended pass removes such secrets once
they are over an hour old (so a create still in progress keeps its own). Each run reads a
bounded number of the vault's pages and remembers where it stopped, in a small table entity:
the next run carries on from there, and a new pass starts once the last page is read.
"""

import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode
from azure.keyvault.secrets import SecretProperties

from connections.errors import ApiError
from connections.model import format_time
from connections.service import Services
from connections.validation import is_connection_id, is_tenant_id

log = logging.getLogger(__name__)

MAINTENANCE_TABLE = "maintenance"
CURSOR_PARTITION, CURSOR_ROW = "secret-cleanup", "cursor"
MIN_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class CleanupSettings:
    pages: int = 20  # per run
    page_size: int = 25  # Key Vault's largest

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "CleanupSettings":
        value = environ.get("SECRET_CLEANUP_PAGES") or ""
        return cls(pages=max(1, int(value)) if value.isdigit() else cls.pages)


class _Owners:
    """Whether a connection record exists, asked once per connection in a run."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._known: dict[tuple[str, str], bool] = {}

    def exists(self, tenant_id: str, connection_id: str) -> bool:
        key = (tenant_id, connection_id)
        if key not in self._known:
            try:
                self._services.store.get(tenant_id, connection_id)
                self._known[key] = True
            except ApiError as exc:
                if exc.status != 404:
                    raise
                self._known[key] = False
        return self._known[key]


def _orphaned(secret: SecretProperties, owners: _Owners, now: datetime) -> bool:
    tags = secret.tags or {}
    tenant_id, connection_id = tags.get("tenant", ""), tags.get("connection", "")
    if not (is_tenant_id(tenant_id) and is_connection_id(connection_id)):
        return False  # not one of ours (the notice webhook secret, an operator's)
    if not (secret.name or "").startswith(("conn-", "trig-")):
        return False
    if secret.created_on is None or now - secret.created_on < MIN_AGE:
        return False
    return not owners.exists(tenant_id, connection_id)


def _read_cursor(table: TableClient) -> str | None:
    try:
        return table.get_entity(CURSOR_PARTITION, CURSOR_ROW).get("Continuation") or None
    except ResourceNotFoundError:
        return None


def _write_cursor(table: TableClient, continuation: str | None, now: datetime) -> None:
    entity = {
        "PartitionKey": CURSOR_PARTITION,
        "RowKey": CURSOR_ROW,
        "Continuation": continuation or "",
        "SavedAt": format_time(now),
    }
    table.upsert_entity(entity, mode=UpdateMode.REPLACE)


def run_cleanup(services: Services, table: TableClient, settings: CleanupSettings) -> Counter:
    """Reads up to `settings.pages` pages from where the last run stopped; removes the orphans
    among them. Counts: looked_at, removed, passes_finished."""
    counts: Counter = Counter()
    owners = _Owners(services)
    continuation = _read_cursor(table)
    for _ in range(settings.pages):
        if services.stopping():
            break
        try:
            secrets, following = services.secrets.page(continuation, settings.page_size)
        except HttpResponseError as exc:
            if continuation is None or exc.status_code != 400:
                raise
            log.warning("secret cleanup: the saved place was refused; starting a new pass")
            secrets, following = services.secrets.page(None, settings.page_size)
        now = services.clock()
        for secret in secrets:
            counts["looked_at"] += 1
            if _orphaned(secret, owners, now):
                services.secrets.discard(secret.name or "")
                counts["removed"] += 1
        continuation = following
        _write_cursor(table, continuation, now)
        if continuation is None:
            counts["passes_finished"] += 1
            break
    log.info(
        "secret cleanup: %d secrets looked at, %d orphaned removed, %s",
        counts["looked_at"],
        counts["removed"],
        "pass finished" if counts["passes_finished"] else "carrying on next run",
    )
    return counts


def run_cleanup_safely(services: Services, table: TableClient, settings: CleanupSettings) -> None:
    """The timer's entry: a storage or vault fault ends this run; the next one carries on."""
    try:
        run_cleanup(services, table, settings)
    except (ApiError, AzureError) as exc:
        log.warning("secret cleanup: stopped by %s; the next run carries on", type(exc).__name__)
