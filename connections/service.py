"""What the Connections API does: plain functions that take their clients as parameters."""

import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError

from connections import errors, shutdown
from connections.due_index import DueEntry, DueIndex, DueIndexBatch, entry_for
from connections.errors import ApiError, FieldError
from connections.lifecycle import OK, LifecycleSettings, Outcome, record_outcome
from connections.model import (
    API_TOKEN,
    CONNECTED,
    CREDENTIAL_KINDS,
    EXPIRED,
    EXPIRING,
    SECRET_KINDS,
    Connection,
    format_time,
    parse_time,
)
from connections.notices import NoticeQueue
from connections.secrets import SecretMissing, SecretStore
from connections.store import ConnectionStore
from connections.validation import ConnectionInput, validate_create, validate_patch
from servicenow.client import (
    ApiTokenCredentials,
    Proof,
    Rejected,
    ServiceNowClient,
    TokenGrant,
    Unreachable,
)
from servicenow.outbound import OutboundPolicy

log = logging.getLogger(__name__)

NOTICE_RETRY = timedelta(minutes=1)
MAX_NOTICE_RETRY = timedelta(minutes=15)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    store: ConnectionStore
    secrets: SecretStore
    servicenow: ServiceNowClient
    policy: OutboundPolicy
    due: DueIndex | DueIndexBatch  # the sweep batches its changes
    notices: NoticeQueue
    settings: LifecycleSettings = field(default_factory=LifecycleSettings)
    clock: Callable[[], datetime] = utc_now
    # Waits end, and long work stops between steps, once the host asks the app to stop.
    sleep: Callable[[float], object] = shutdown.sleep
    stopping: Callable[[], bool] = shutdown.requested
    rng: random.Random = field(default_factory=random.Random)


# -- proofs -------------------------------------------------------------------------------


def _prove(services: Services, instance_url: str, auth: dict[str, Any], secrets: dict) -> Proof:
    client = services.servicenow
    if auth["method"] == API_TOKEN:
        credentials = ApiTokenCredentials(
            secrets["api_token"], auth["parameter_name"], auth["parameter_type"]
        )
        return client.prove_api_token(instance_url, credentials)
    return client.prove_oauth(instance_url, auth["client_id"], secrets["client_secret"])


def _prove_or_raise(
    services: Services, instance_url: str, auth: dict[str, Any], secrets: dict
) -> Proof:
    secret_field = "auth.api_token" if auth["method"] == API_TOKEN else "auth.client_secret"
    try:
        return _prove(services, instance_url, auth, secrets)
    except Rejected as exc:
        raise errors.credentials_rejected(exc.message, secret_field) from None
    except Unreachable as exc:
        raise errors.instance_unreachable(exc.message) from None


def _reject_past_expiry(spec: ConnectionInput, now: datetime) -> None:
    expires_at = parse_time(spec.auth.get("expires_at"))
    if expires_at is not None and expires_at <= now:
        detail = FieldError("auth.expires_at", "Is in the past: give the token's real expiry.")
        raise errors.validation_error([detail])


def _apply_proof(connection: Connection, proof: Proof, services: Services, now: datetime) -> None:
    connection.capabilities = proof.capabilities
    expires_in = None
    if proof.grant is not None:
        expires_in = proof.grant.expires_in
        connection.auth["token_expires_at"] = format_time(now + timedelta(seconds=expires_in))
    outcome = Outcome(OK, proof.detail)
    record_outcome(
        connection, outcome, now, services.settings, expires_in=expires_in, rng=services.rng
    )


# -- saving --------------------------------------------------------------------------------


def current_entry(connection: Connection) -> DueEntry | None:
    if connection.next_due_at is None:
        return None
    return entry_for(
        connection.tenant_id, connection.id, connection.next_due_at, connection.due_exact
    )


def save(
    services: Services,
    connection: Connection,
    previous_entry: DueEntry | None,
    previous_name: str | None = None,
    *,
    create: bool = False,
) -> Connection:
    """Writes the record with its due-index entry, then sends the notices the record holds.

    A record that holds notices gets a second due entry first, a minute on: if the queue
    refuses them (and storage then fails too), that visit sends them (`revisit_notices`)."""
    notice_entry = _notice_entry(services, connection)
    if notice_entry is not None:
        services.due.put(notice_entry)
    _write_record(services, connection, previous_entry, previous_name, create=create)
    if flush_notices(services, connection) and notice_entry is not None:
        with contextlib.suppress(AzureError):  # if it stays, its visit finds nothing to do
            services.due.remove(notice_entry)
    return connection


def _write_record(
    services: Services,
    connection: Connection,
    previous_entry: DueEntry | None,
    previous_name: str | None = None,
    *,
    create: bool = False,
) -> None:
    """The record and its due-index entry: the new entry first, the old one after."""
    entry = current_entry(connection)
    if entry is not None and entry != previous_entry:
        services.due.put(entry)
    if create:
        services.store.add(connection)
    else:
        services.store.replace(connection, previous_name or connection.name)
    if previous_entry is not None and previous_entry != entry:
        services.due.remove(previous_entry)


def _notice_entry(services: Services, connection: Connection) -> DueEntry | None:
    """When to try again the notices the record holds: a minute on, then as long again as they
    have waited (1, 2, 4, 8 minutes...), at most every 15 minutes; None when it holds none."""
    if not connection.pending_notices:
        return None
    now = services.clock()
    oldest = min(
        (parse_time(message["notice"].get("occurred_at")) or now)
        for message in connection.pending_notices
    )
    wait = min(max(now - oldest, NOTICE_RETRY), MAX_NOTICE_RETRY)
    return entry_for(connection.tenant_id, connection.id, now + wait, False)


def revisit_notices(services: Services, connection: Connection) -> None:
    """A visit to a record that still holds notices: sends them, or (the queue still refusing)
    sets the next try."""
    if not flush_notices(services, connection):
        retry = _notice_entry(services, connection)
        if retry is not None:
            services.due.put(retry)


def flush_notices(services: Services, connection: Connection) -> bool:
    """Enqueues the notices the record holds, then clears them; False if the queue refused.

    A notice that could not be enqueued stays in the record and goes out on a later visit, with
    the same id."""
    if not connection.pending_notices:
        return True
    try:
        for message in connection.pending_notices:
            services.notices.send(message)
    except AzureError:
        log.warning("notices of connection %s not enqueued yet; kept for retry", connection.id)
        return False
    connection.pending_notices = []
    try:
        services.store.replace(connection, connection.name)
    except (ApiError, AzureError):
        log.warning(
            "connection %s: sent notices not cleared; a resend keeps their ids", connection.id
        )
    return True


# -- secrets ------------------------------------------------------------------------------


def _write_secrets(
    services: Services, connection: Connection, given: dict[str, str], grant: TokenGrant | None
) -> dict[str, str]:
    """Writes new versions of the given secrets (and the grant's tokens); returns their versions."""
    values = dict(given)
    token_expiry = parse_time(connection.auth.get("token_expires_at"))
    if grant is not None:
        values["access_token"] = grant.access_token
        if grant.refresh_token:
            values["refresh_token"] = grant.refresh_token
    versions = {}
    for kind, value in values.items():
        expires_on = token_expiry if kind == "access_token" else None
        if kind == "api_token":
            expires_on = parse_time(connection.auth.get("expires_at"))
        versions[kind] = services.secrets.put(
            connection.tenant_id, connection.id, kind, value, expires_on
        )
    return versions


def _discard_secrets(services: Services, connection_id: str, kinds: list[str]) -> None:
    """Best effort: secrets no record refers to are unreachable, and purging them tidies up."""
    try:
        services.secrets.purge(connection_id, kinds)
    except AzureError:
        log.warning(
            "could not purge secrets of connection %s; no record refers to them", connection_id
        )


def _stored_credential(services: Services, connection: Connection) -> dict[str, str]:
    """The stored credential an update is proved with when it gives none. 400 on its field when
    the vault no longer has it: the update must give it."""
    kind = CREDENTIAL_KINDS[connection.method]
    try:
        return {kind: services.secrets.get(connection.id, kind, connection.secret_versions[kind])}
    except SecretMissing as missing:
        detail = f"{missing}: give it in this update to restore it."
        raise errors.validation_error([FieldError(f"auth.{kind}", detail)]) from None


# -- operations ---------------------------------------------------------------------------


def create_connection(services: Services, tenant_id: str, body: dict[str, Any]) -> Connection:
    spec = validate_create(body, services.policy)
    now = services.clock()
    _reject_past_expiry(spec, now)
    services.store.ensure_name_free(tenant_id, spec.name)
    proof = _prove_or_raise(services, spec.instance_url, spec.auth, spec.secrets)
    connection = Connection(
        id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        name=spec.name,
        instance_url=spec.instance_url,
        auth=spec.auth,
        created_at=now,
        updated_at=now,
        notify_emails=spec.notify_emails,
    )
    _apply_proof(connection, proof, services, now)
    try:
        connection.secret_versions = _write_secrets(services, connection, spec.secrets, proof.grant)
        return save(services, connection, None, create=True)
    except (ApiError, AzureError):
        _discard_secrets(services, connection.id, list(SECRET_KINDS[connection.method]))
        raise


def get_connection(services: Services, tenant_id: str, connection_id: str) -> Connection:
    return services.store.get(tenant_id, connection_id)


def list_connections(
    services: Services, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[Connection], str | None]:
    return services.store.list(tenant_id, limit, cursor)


def _check_if_match(connection: Connection, if_match: str | None) -> None:
    if if_match and if_match.strip() != "*" and if_match.strip() != connection.etag:
        raise errors.precondition_failed()


def _as_create_body(connection: Connection) -> dict[str, Any]:
    auth = {"method": connection.method}
    if connection.method == API_TOKEN:
        auth["parameter_name"] = connection.auth["parameter_name"]
        auth["parameter_type"] = connection.auth["parameter_type"]
        if connection.auth.get("expires_at"):
            auth["expires_at"] = connection.auth["expires_at"]
    else:
        auth["client_id"] = connection.auth["client_id"]
    return {
        "type": connection.type,
        "name": connection.name,
        "instance_url": connection.instance_url,
        "auth": auth,
        "notify_emails": list(connection.notify_emails),
    }


def update_connection(
    services: Services,
    tenant_id: str,
    connection_id: str,
    patch: dict[str, Any],
    if_match: str | None = None,
) -> Connection:
    connection = services.store.get(tenant_id, connection_id)
    _check_if_match(connection, if_match)
    result = validate_patch(_as_create_body(connection), patch, services.policy)
    spec = result.connection
    now = services.clock()
    _reject_past_expiry(spec, now)
    previous_name, previous_method = connection.name, connection.method
    proof = None
    if result.needs_proof:
        given = result.method_changed or CREDENTIAL_KINDS[connection.method] in spec.secrets
        secrets = spec.secrets if given else _stored_credential(services, connection)
        proof = _prove_or_raise(services, spec.instance_url, spec.auth, secrets)
    token_expires_at = connection.auth.get("token_expires_at")
    expiry_changed = spec.auth.get("expires_at") != connection.auth.get("expires_at")
    connection.name, connection.instance_url = spec.name, spec.instance_url
    connection.auth, connection.notify_emails = spec.auth, spec.notify_emails
    if not result.method_changed and token_expires_at:
        connection.auth["token_expires_at"] = token_expires_at
    connection.updated_at = now
    previous_entry = current_entry(connection)
    if proof is not None:
        new_versions = _write_secrets(services, connection, spec.secrets, proof.grant)
        base = {} if result.method_changed else connection.secret_versions
        connection.secret_versions = {**base, **new_versions}
        _apply_proof(connection, proof, services, now)
    elif expiry_changed and connection.status in (CONNECTED, EXPIRING, EXPIRED):
        _reassess_expiry(services, connection, now)
    save(services, connection, previous_entry, previous_name)
    if result.method_changed:
        _discard_secrets(services, connection.id, list(SECRET_KINDS[previous_method]))
    return connection


def _reassess_expiry(services: Services, connection: Connection, now: datetime) -> None:
    """A new `expires_at` without a new token: the status and schedule follow the new date."""
    last_checked_at = connection.last_checked_at
    outcome = Outcome(OK, "The API token's expiry date was changed.")
    record_outcome(connection, outcome, now, services.settings, rng=services.rng)
    connection.last_checked_at = last_checked_at


def delete_connection(
    services: Services, tenant_id: str, connection_id: str, if_match: str | None = None
) -> None:
    connection = services.store.get(tenant_id, connection_id)
    _check_if_match(connection, if_match)
    services.store.delete(connection)
    entry = current_entry(connection)
    if entry is not None:
        services.due.remove(entry)
    _discard_secrets(services, connection.id, list(SECRET_KINDS[connection.method]))
