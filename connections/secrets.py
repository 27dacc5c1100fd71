"""Secrets in Key Vault, named from ids only: one secret per kind of a connection
(`conn-<connection id>-<kind>`), and a trigger's push secret (`trig-<trigger id>-push-secret`)."""

import contextlib
import logging
import threading
from collections import OrderedDict
from datetime import datetime

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "api_token": "application/vnd.servicenow.api-key",
    "client_secret": "application/vnd.servicenow.oauth-client-secret",
    "access_token": "application/vnd.servicenow.oauth-access-token",
    "refresh_token": "application/vnd.servicenow.oauth-refresh-token",
}

PUSH_SECRET_CONTENT_TYPE = "application/vnd.automate365.trigger-push-secret"  # noqa: S105


def secret_name(connection_id: str, kind: str) -> str:
    return f"conn-{connection_id}-{kind.replace('_', '-')}"


def push_secret_name(trigger_id: str) -> str:
    return f"trig-{trigger_id}-push-secret"


class _VersionCache:
    """Values of exact secret versions, which Key Vault never changes; bounded, in memory only."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._values: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> str | None:
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: str) -> None:
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self._size:
                self._values.popitem(last=False)

    def forget(self, name: str) -> None:
        with self._lock:
            for key in [key for key in self._values if key[0] == name]:
                del self._values[key]


class SecretStore:
    def __init__(self, client: SecretClient, cache_size: int = 20_000) -> None:
        self._client = client
        self._cache = _VersionCache(cache_size)

    def put(
        self,
        tenant_id: str,
        connection_id: str,
        kind: str,
        value: str,
        expires_on: datetime | None = None,
    ) -> str:
        """Stores a new version and returns its version id."""
        name = secret_name(connection_id, kind)
        tags = {"tenant": tenant_id, "connection": connection_id, "kind": kind}
        return self._put(name, value, CONTENT_TYPES[kind], tags, expires_on)

    def get(self, connection_id: str, kind: str, version: str | None) -> str:
        """The given version (from memory once seen), or the latest when `version` is None."""
        return self._get(secret_name(connection_id, kind), version)

    def purge(self, connection_id: str, kinds: list[str]) -> None:
        """Deletes and purges the given kinds, so their names can never be met again.

        A vault with purge protection refuses the purge: the deleted secret then stays
        recoverable until its retention ends, and no record refers to it any more."""
        for kind in kinds:
            self._purge(secret_name(connection_id, kind))

    # -- a trigger's push secret --------------------------------------------------------------

    def put_push_secret(
        self, tenant_id: str, connection_id: str, trigger_id: str, value: str
    ) -> str:
        """Stores a new version of the trigger's push secret and returns its version id."""
        tags = {"tenant": tenant_id, "connection": connection_id, "trigger": trigger_id}
        return self._put(push_secret_name(trigger_id), value, PUSH_SECRET_CONTENT_TYPE, tags)

    def get_push_secret(self, trigger_id: str, version: str) -> str:
        """That exact version (from memory once seen, so a warm worker does not call the vault)."""
        return self._get(push_secret_name(trigger_id), version)

    def purge_push_secret(self, trigger_id: str) -> None:
        self._purge(push_secret_name(trigger_id))

    # -- by name ------------------------------------------------------------------------------

    def _put(
        self,
        name: str,
        value: str,
        content_type: str,
        tags: dict[str, str],
        expires_on: datetime | None = None,
    ) -> str:
        secret = self._client.set_secret(
            name, value, content_type=content_type, tags=tags, expires_on=expires_on
        )
        version = secret.properties.version or ""
        if version:
            self._cache.put((name, version), value)
        return version

    def _get(self, name: str, version: str | None) -> str:
        if version:
            cached = self._cache.get((name, version))
            if cached is not None:
                return cached
        secret = self._client.get_secret(name, version or None)
        value = secret.value or ""
        if secret.properties.version:
            self._cache.put((name, secret.properties.version), value)
        return value

    def _purge(self, name: str) -> None:
        self._cache.forget(name)
        with contextlib.suppress(ResourceNotFoundError):
            self._client.begin_delete_secret(name).wait()
        try:
            self._client.purge_deleted_secret(name)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 403:
                raise
            log.info("secret %s deleted; the vault keeps it until retention ends", name)
            return
        log.info("secret %s deleted and purged", name)
