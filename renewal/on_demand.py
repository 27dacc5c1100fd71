"""Calling an instance with a connection's credentials, and renewing or checking the connection
because a call just failed with it (the proxy, the trigger polls).

Renewals and checks go through the same lease as the sweep and the API's check, and first look
whether someone already did the work since the failing call read the record, so a burst of
failing calls (in this process or in others) makes one exchange and one check, not one per call.
"""

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from azure.core.exceptions import AzureError

from connections import errors
from connections.errors import ApiError
from connections.model import (
    API_TOKEN,
    EXPIRED,
    INVALID_CREDENTIALS,
    RENEWAL_FAILED,
    Connection,
    format_time,
    parse_time,
)
from connections.secrets import SecretMissing
from connections.service import Services, current_entry, save
from renewal.worker import Busy, wait_for_release, work
from servicenow.credentials import Credential, api_token_credential, bearer_credential
from servicenow.outbound import OutboundResponse

log = logging.getLogger(__name__)

# A token this close to its expiry is renewed before use rather than sent and refused.
EXPIRY_SKEW = timedelta(seconds=5)
_STRIPES = [threading.Lock() for _ in range(64)]


def _stripe(connection_id: str) -> threading.Lock:
    """One in-process lock per connection (striped, so the set stays bounded)."""
    return _STRIPES[zlib.crc32(connection_id.encode()) % len(_STRIPES)]


def token_usable(connection: Connection, now: datetime) -> bool:
    expires_at = parse_time(connection.auth.get("token_expires_at"))
    has_token = "access_token" in connection.secret_versions
    return has_token and expires_at is not None and expires_at > now + EXPIRY_SKEW


def unusable_reason(connection: Connection, now: datetime) -> str | None:
    """Why calls through the connection cannot work now (its credentials are known bad), or None."""
    fix = (
        "Edit the connection with a valid API token (PATCH the connection), then call again."
        if connection.method == API_TOKEN
        else "Edit the connection with a valid client secret (PATCH the connection), or fix the "
        "OAuth client in ServiceNow and run a check (POST .../check), then call again."
    )
    if connection.status == INVALID_CREDENTIALS:
        return f"The connection's status is invalid_credentials: {connection.status_detail} {fix}"
    if connection.status == EXPIRED:
        return f"The connection's status is expired: {connection.status_detail} {fix}"
    if connection.status == RENEWAL_FAILED and not token_usable(connection, now):
        return (
            "The connection's status is renewal_failed and it holds no unexpired access token: "
            f"{connection.status_detail} {fix}"
        )
    return None


def renew_rejected(
    services: Services,
    tenant_id: str,
    connection_id: str,
    rejected_version: str | None,
    *,
    refused: bool = False,
) -> Connection:
    """Renews the access token that `rejected_version` names (`refused` by the instance, or
    about to expire), unless someone already has; returns the connection as it then is.

    A refused token that could not be replaced is recorded as expired, so later calls answer
    409 at once instead of trying it (and the token endpoint) again."""
    with _stripe(connection_id):
        connection = services.store.get(tenant_id, connection_id)
        current = connection.secret_versions.get("access_token")
        if current != rejected_version and token_usable(connection, services.clock()):
            return connection
        try:
            renewed = work(services, connection, probe=False)
        except Busy:
            return wait_for_release(services, tenant_id, connection_id)
        if refused and renewed.secret_versions.get("access_token") == rejected_version:
            return _expire_token(services, renewed)
        return renewed


def _expire_token(services: Services, connection: Connection) -> Connection:
    connection.auth["token_expires_at"] = format_time(services.clock())
    try:
        return save(services, connection, current_entry(connection))
    except (ApiError, AzureError) as exc:
        log.warning(
            "connection %s: refused token not marked: %s", connection.id, type(exc).__name__
        )
        return connection


def check_rejected(services: Services, seen: Connection) -> Connection | None:
    """Checks the connection after the instance refused its credentials, unless the record has
    changed since `seen` was read (a check or renewal already happened); the status then moves
    with the usual single notice. None when the check could not run (storage down)."""
    with _stripe(seen.id):
        try:
            connection = services.store.get(seen.tenant_id, seen.id)
            if connection.etag != seen.etag:
                return connection
            return work(services, connection, probe=True)
        except Busy:
            return None
        except (ApiError, AzureError) as exc:
            log.warning("connection %s: check after a 401 failed: %s", seen.id, type(exc).__name__)
            return None


# -- calling with the connection's credentials ------------------------------------------------

Send = Callable[[Credential], OutboundResponse]


@dataclass
class Usage:
    """What a call with the connection took: the connection as it then is, whether its token
    was renewed, and how many times the request was sent again after a 401."""

    connection: Connection
    renewed: bool = False
    retries: int = 0


def call_with(services: Services, usage: Usage, send: Send) -> tuple[OutboundResponse, Credential]:
    """`send(credential)` with the connection's credential. OAuth 2.0: an expiring token is
    renewed first, and a 401 renews it and sends once more. A 401 that stays (or an API token's)
    is returned, after a check of the connection. ApiError 409 `connection_unusable` when the
    credentials are known not to work, without calling `send`. `usage` tells what it took, also
    when it raises."""
    reason = unusable_reason(usage.connection, services.clock())
    if reason:
        raise errors.connection_unusable(reason)
    if usage.connection.method == API_TOKEN:
        return _with_api_token(services, usage, send)
    return _with_oauth(services, usage, send)


def _with_api_token(
    services: Services, usage: Usage, send: Send
) -> tuple[OutboundResponse, Credential]:
    connection = usage.connection
    version = connection.secret_versions.get("api_token")
    try:
        token = services.secrets.get(connection.id, "api_token", version)
    except SecretMissing as missing:  # the check records it (status and notice), then say why
        usage.connection = check_rejected(services, connection) or connection
        reason = unusable_reason(usage.connection, services.clock())
        raise errors.connection_unusable(reason or f"{missing}.") from None
    auth = connection.auth
    credential = api_token_credential(token, auth["parameter_name"], auth["parameter_type"])
    response = send(credential)
    if response.status_code == 401:
        usage.connection = check_rejected(services, connection) or connection
    return response, credential


def _with_oauth(
    services: Services, usage: Usage, send: Send
) -> tuple[OutboundResponse, Credential]:
    connection = usage.connection
    if not token_usable(connection, services.clock()):
        connection = _renew(services, usage, connection.secret_versions.get("access_token"))
        if not token_usable(connection, services.clock()):
            raise _not_renewed(connection, services.clock())
    version = connection.secret_versions["access_token"]
    credential = _bearer(services, connection.id, version)
    response = send(credential) if credential else None  # a token gone from the vault: renew
    if response is not None and response.status_code != 401:
        return response, credential
    renewed = _renew(services, usage, version, refused=True)
    new_version = renewed.secret_versions.get("access_token")
    if new_version == version or not token_usable(renewed, services.clock()):
        reason = unusable_reason(renewed, services.clock())
        if reason:
            raise errors.connection_unusable(reason)
        if response is None:
            raise _not_renewed(renewed, services.clock())
        return response, credential
    credential = bearer_credential(services.secrets.get(renewed.id, "access_token", new_version))
    if response is not None:
        usage.retries += 1  # sent again after a 401
    response = send(credential)
    if response.status_code == 401:
        usage.connection = check_rejected(services, renewed) or renewed
    return response, credential


def _bearer(services: Services, connection_id: str, version: str) -> Credential | None:
    try:
        return bearer_credential(services.secrets.get(connection_id, "access_token", version))
    except SecretMissing:
        log.warning("connection %s: access token missing from Key Vault", connection_id)
        return None


def _renew(
    services: Services, usage: Usage, rejected_version: str | None, *, refused: bool = False
) -> Connection:
    connection = usage.connection
    renewed = renew_rejected(
        services, connection.tenant_id, connection.id, rejected_version, refused=refused
    )
    if renewed.secret_versions.get("access_token") != rejected_version:
        usage.renewed = True
    usage.connection = renewed
    return renewed


def _not_renewed(connection: Connection, now: datetime) -> ApiError:
    reason = unusable_reason(connection, now)
    if reason:
        return errors.connection_unusable(reason)
    return errors.instance_unreachable(
        "The connection's access token has expired and could not be renewed just now "
        f"({connection.status_detail}). Try again shortly."
    )
