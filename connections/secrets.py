"""Secrets in Key Vault, named from ids only: one secret per kind of a connection
(`conn-<connection id>-<kind>`), and a trigger's push secret (`trig-<trigger id>-push-secret`)."""

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.secrets import SecretClient, SecretProperties

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    "api_token": "application/vnd.servicenow.api-key",
    "client_secret": "application/vnd.servicenow.oauth-client-secret",
    "access_token": "application/vnd.servicenow.oauth-access-token",
    "refresh_token": "application/vnd.servicenow.oauth-refresh-token",
}

PUSH_SECRET_CONTENT_TYPE = "application/vnd.automate365.trigger-push-secret"  # noqa: S105
PUSH_SECRET = "push_secret"  # noqa: S105 -- the kind named in SecretMissing

# Setting a name whose secret is deleted but recoverable (purge protection keeps it for its
# retention period); and setting one whose recovery has not quite finished.
DELETED_BUT_RECOVERABLE = "ObjectIsDeletedButRecoverable"
BEING_RECOVERED = "ObjectIsBeingRecovered"
RECOVERY_WAITS = (0.5, 1.0, 2.0, 4.0)  # seconds between tries while a recovery completes


class SecretMissing(Exception):
    """Key Vault has no such secret or version: deleted or purged outside the service. Not a
    passing fault: only writing the credential again brings it back."""

    def __init__(self, kind: str) -> None:
        what = "API token" if kind == "api_token" else kind.replace("_", " ")
        super().__init__(f"The stored {what} is missing from Key Vault")
        self.kind, self.what = kind, what


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
    def __init__(
        self,
        client: SecretClient,
        cache_size: int = 20_000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._cache = _VersionCache(cache_size)
        self._sleep = sleep

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
        """The given version (from memory once seen), or the latest when `version` is None.
        SecretMissing when the vault has neither."""
        return self._get(secret_name(connection_id, kind), version, kind)

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
        """That exact version (from memory once seen, so a warm worker does not call the vault).
        SecretMissing when the vault does not have it."""
        return self._get(push_secret_name(trigger_id), version, PUSH_SECRET)

    def purge_push_secret(self, trigger_id: str) -> None:
        self._purge(push_secret_name(trigger_id))

    # -- the whole vault, a page at a time (the orphaned-secret cleanup) -----------------------

    def page(
        self, continuation: str | None, size: int = 25
    ) -> tuple[list[SecretProperties], str | None]:
        """One page of the vault's secrets (properties and tags only, never values), from
        `continuation` (None: the first page); and where the next page starts (None: done)."""
        listing = self._client.list_properties_of_secrets(max_page_size=size)
        pages = listing.by_page(continuation_token=continuation)
        items = list(next(pages, []))
        return items, pages.continuation_token

    def discard(self, name: str) -> None:
        """Deletes (and purges, where the vault allows) a secret no record refers to."""
        self._purge(name)

    # -- by name ------------------------------------------------------------------------------

    def _put(
        self,
        name: str,
        value: str,
        content_type: str,
        tags: dict[str, str],
        expires_on: datetime | None = None,
    ) -> str:
        """Sets a new version. A name deleted but kept recoverable (purge protection) is
        recovered first: the name stays the connection's, and the new version is the one used."""
        waits = iter(RECOVERY_WAITS)
        while True:
            try:
                secret = self._client.set_secret(
                    name, value, content_type=content_type, tags=tags, expires_on=expires_on
                )
                break
            except HttpResponseError as exc:
                wait = next(waits, None)
                if exc.status_code != 409 or wait is None:
                    raise
                self._after_conflict(name, _inner_code(exc), wait)
        version = secret.properties.version or ""
        if version:
            self._cache.put((name, version), value)
        return version

    def _after_conflict(self, name: str, code: str, wait: float) -> None:
        if code == DELETED_BUT_RECOVERABLE:
            log.info("secret %s was deleted but is recoverable; recovering it", name)
            # Purged, or recovered by another worker, since: set again all the same.
            with contextlib.suppress(ResourceNotFoundError, ResourceExistsError):
                self._client.begin_recover_deleted_secret(name).wait()
        elif code == BEING_RECOVERED:
            self._sleep(wait)
        else:
            raise ResourceExistsError(f"Key Vault refused to set {name}: conflict {code}")

    def _get(self, name: str, version: str | None, kind: str) -> str:
        if version:
            cached = self._cache.get((name, version))
            if cached is not None:
                return cached
        try:
            secret = self._client.get_secret(name, version or None)
        except ResourceNotFoundError:
            raise SecretMissing(kind) from None
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


def _inner_code(exc: HttpResponseError) -> str:
    """Key Vault's `error.innererror.code`, which tells one 409 from another."""
    inner = getattr(exc.error, "innererror", None) or {}
    return str(inner.get("code", "")) if isinstance(inner, dict) else ""
