"""The connection's secrets in Key Vault: one secret per kind, named from the connection id only."""

import contextlib
import logging
from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "api_token": "application/vnd.servicenow.api-key",
    "client_secret": "application/vnd.servicenow.oauth-client-secret",
    "access_token": "application/vnd.servicenow.oauth-access-token",
    "refresh_token": "application/vnd.servicenow.oauth-refresh-token",
}


def secret_name(connection_id: str, kind: str) -> str:
    return f"conn-{connection_id}-{kind.replace('_', '-')}"


class SecretStore:
    def __init__(self, client: SecretClient) -> None:
        self._client = client

    def put(
        self,
        tenant_id: str,
        connection_id: str,
        kind: str,
        value: str,
        expires_on: datetime | None = None,
    ) -> str:
        """Stores a new version and returns its version id."""
        secret = self._client.set_secret(
            secret_name(connection_id, kind),
            value,
            content_type=CONTENT_TYPES[kind],
            tags={"tenant": tenant_id, "connection": connection_id, "kind": kind},
            expires_on=expires_on,
        )
        return secret.properties.version or ""

    def get(self, connection_id: str, kind: str, version: str | None) -> str:
        secret = self._client.get_secret(secret_name(connection_id, kind), version or None)
        return secret.value or ""

    def purge(self, connection_id: str, kinds: list[str]) -> None:
        """Deletes and purges the given kinds, so their names can never be met again."""
        for kind in kinds:
            name = secret_name(connection_id, kind)
            with contextlib.suppress(ResourceNotFoundError):
                self._client.begin_delete_secret(name).wait()
            with contextlib.suppress(ResourceNotFoundError):
                self._client.purge_deleted_secret(name)
            log.info("secret %s deleted and purged", name)
