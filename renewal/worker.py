"""Renewing (OAuth 2.0) or checking (API token) one connection, under a lease.

The lease is a conditional update of the record on its ETag: of two workers that read the
same record, only one can take it, so a token is never exchanged twice at once. The secrets
are read after the lease is taken, and a new refresh token is stored before anything else.
"""

import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import NamedTuple

from azure.core.exceptions import AzureError

from connections import shutdown
from connections.errors import ApiError
from connections.lifecycle import OK, REJECTED, TRANSIENT, Outcome, record_outcome
from connections.model import API_TOKEN, Connection, format_time, parse_time
from connections.secrets import SecretMissing
from connections.service import Services, current_entry, flush_notices, save
from servicenow.client import ApiTokenCredentials, Rejected, TokenGrant, Unreachable

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=2)
RETRY_AFTER_STORAGE_FAULT = timedelta(minutes=1)
CHECK_WAIT_SECONDS = 10.0
CHECK_POLL_SECONDS = 0.1
# Expiries are stored to the second: a handed-back token's may come out a second later.
REUSE_TOLERANCE = timedelta(seconds=1)


class Attempt(NamedTuple):
    outcome: Outcome
    expires_in: int | None = None  # of the OAuth token just stored
    reused: bool = False  # the instance handed back the token it had already given


class Busy(Exception):
    """Another worker holds the connection's lease."""


def _leased_by_other(connection: Connection, owner: str, now: datetime) -> bool:
    return bool(
        connection.lease_owner
        and connection.lease_owner != owner
        and connection.lease_until is not None
        and connection.lease_until > now
    )


def take_lease(services: Services, connection: Connection, owner: str) -> Connection:
    now = services.clock()
    if _leased_by_other(connection, owner, now):
        raise Busy
    connection.lease_owner, connection.lease_until = owner, now + LEASE
    try:
        return services.store.write_lease(connection)
    except ApiError as exc:
        if exc.status == 412:
            raise Busy from None
        raise


def _secret(services: Services, connection: Connection, kind: str, pinned: bool = True) -> str:
    version = connection.secret_versions.get(kind) if pinned else None
    return services.secrets.get(connection.id, kind, version)


def _store_tokens(services: Services, connection: Connection, grant: TokenGrant) -> bool:
    """The refresh token first: once the instance issued a new one, the old may be dead.

    Returns whether the instance handed back the token it had already given: one that expires
    no later than the stored one (comparing expiries needs no read of the old token)."""
    now = services.clock()
    expires_at = now + timedelta(seconds=grant.expires_in)
    previous = parse_time(connection.auth.get("token_expires_at"))
    reused = previous is not None and expires_at <= previous + REUSE_TOLERANCE
    put = services.secrets.put
    if grant.refresh_token:
        version = put(connection.tenant_id, connection.id, "refresh_token", grant.refresh_token)
        connection.secret_versions["refresh_token"] = version
    version = put(
        connection.tenant_id, connection.id, "access_token", grant.access_token, expires_at
    )
    connection.secret_versions["access_token"] = version
    connection.auth["token_expires_at"] = format_time(expires_at)
    return reused


def _refresh_token(services: Services, connection: Connection) -> str | None:
    if "refresh_token" not in connection.secret_versions:
        return None
    try:
        return _secret(services, connection, "refresh_token", pinned=False)
    except SecretMissing:
        log.warning("connection %s: refresh token missing from Key Vault", connection.id)
        return None


def _exchange(services: Services, connection: Connection) -> TokenGrant:
    client = services.servicenow
    url, client_id = connection.instance_url, connection.auth["client_id"]
    client_secret = _secret(services, connection, "client_secret")
    refresh_token = _refresh_token(services, connection)
    if refresh_token is not None:
        try:
            return client.refresh(url, client_id, client_secret, refresh_token)
        except Rejected:
            log.info(
                "connection %s: refresh token refused; using client credentials", connection.id
            )
    return client.client_credentials(url, client_id, client_secret)


def _renew_oauth(services: Services, connection: Connection, probe: bool) -> Attempt:
    try:
        grant = _exchange(services, connection)
    except Rejected as exc:
        return Attempt(Outcome(REJECTED, exc.message, exc.stage))
    except Unreachable as exc:
        return Attempt(Outcome(TRANSIENT, exc.message))
    reused = _store_tokens(services, connection, grant)
    if not probe:
        return Attempt(Outcome(OK, "Token renewed."), grant.expires_in, reused)
    try:
        proof = services.servicenow.prove_access_token(connection.instance_url, grant)
    except Rejected as exc:
        return Attempt(Outcome(REJECTED, exc.message, exc.stage), grant.expires_in, reused)
    except Unreachable as exc:
        detail = f"Token renewed; the Table API did not answer properly ({exc.message})"
        return Attempt(Outcome(OK, detail), grant.expires_in, reused)
    connection.capabilities = proof.capabilities
    return Attempt(Outcome(OK, "Token renewed. " + proof.detail), grant.expires_in, reused)


def _check_api_token(services: Services, connection: Connection) -> Outcome:
    auth = connection.auth
    token = _secret(services, connection, "api_token")
    credentials = ApiTokenCredentials(token, auth["parameter_name"], auth["parameter_type"])
    try:
        proof = services.servicenow.prove_api_token(connection.instance_url, credentials)
    except Rejected as exc:
        return Outcome(REJECTED, exc.message, exc.stage)
    except Unreachable as exc:
        return Outcome(TRANSIENT, exc.message)
    connection.capabilities = proof.capabilities
    return Outcome(OK, proof.detail)


def _missing_secret_outcome(connection: Connection, missing: SecretMissing) -> Outcome:
    """A credential the vault no longer has is refused for good: only an edit brings it back."""
    detail = (
        f"{missing} (deleted or purged outside the service). "
        f"Edit the connection with the {missing.what} (PATCH the connection) to restore it."
    )
    return Outcome(REJECTED, detail, "" if connection.method == API_TOKEN else "token")


def _attempt(services: Services, connection: Connection, probe: bool) -> Attempt:
    try:
        if connection.method == API_TOKEN:
            return Attempt(_check_api_token(services, connection))
        return _renew_oauth(services, connection, probe)
    except SecretMissing as missing:
        log.warning("connection %s: %s", connection.id, missing)
        return Attempt(_missing_secret_outcome(connection, missing))


def _release_after_fault(services: Services, connection: Connection, previous) -> None:
    """Storage or Key Vault failed mid-way: let go of the lease and come back soon."""
    connection.lease_owner, connection.lease_until = "", None
    connection.next_due_at = services.clock() + RETRY_AFTER_STORAGE_FAULT
    connection.due_exact = False
    try:
        save(services, connection, previous)
    except (ApiError, AzureError):
        log.warning("connection %s: lease left to expire after a storage fault", connection.id)


def work(services: Services, connection: Connection, *, probe: bool = True) -> Connection:
    """Renews or checks the connection now; raises Busy if another worker holds it.

    With `probe`, a renewed OAuth token is also tried on the Table API (which refreshes the
    capabilities); the sweep's scheduled renewals skip that, an API check does it."""
    previous = current_entry(connection)
    connection = take_lease(services, connection, uuid.uuid4().hex)
    flush_notices(services, connection)
    try:
        attempt = _attempt(services, connection, probe)
    except AzureError:
        _release_after_fault(services, connection, previous)
        raise
    record_outcome(
        connection,
        attempt.outcome,
        services.clock(),
        services.settings,
        expires_in=attempt.expires_in,
        reused=attempt.reused,
        rng=services.rng,
    )
    connection.lease_owner, connection.lease_until = "", None
    return save(services, connection, previous)


def check_now(services: Services, tenant_id: str, connection_id: str) -> Connection:
    """The API's check: work now. If another worker (a sweep, another check) is already on it,
    wait for that one to finish and return its result rather than exchange a second time."""
    connection = services.store.get(tenant_id, connection_id)
    try:
        return work(services, connection)
    except Busy:
        return wait_for_release(services, tenant_id, connection_id)


def wait_for_release(
    services: Services,
    tenant_id: str,
    connection_id: str,
    timeout: float = CHECK_WAIT_SECONDS,
) -> Connection:
    """The record once the worker holding its lease (in this process or another) has let go
    (or the lease has run out), or as it is after `timeout` seconds if it still holds it, or
    at once when the app is asked to stop.

    The lease holder works in real time, elsewhere: this polls on the wall clock, not on
    `services.clock`/`services.sleep` (which a test may drive)."""
    deadline = time.monotonic() + timeout
    connection = services.store.get(tenant_id, connection_id)
    while _leased_by_other(connection, "", services.clock()) and time.monotonic() < deadline:
        if shutdown.sleep(CHECK_POLL_SECONDS):  # another process may hold the lease: poll
            break
        connection = services.store.get(tenant_id, connection_id)
    return connection
