"""What the triggers' HTTP API does: plain functions taking `TriggerServices`.

Writes follow one order, so a fault leaves nothing that works half: the push secret and the
due-index entry are written before the record (and removed again if the record cannot be
written); a record is deleted before what belongs to it (its due entry, events and secret),
which go best effort after it.
"""

import contextlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError

from connections import errors
from connections.errors import ApiError
from connections.model import Connection
from connections.secrets import SecretMissing
from renewal.on_demand import Usage, call_with, unusable_reason
from servicenow.outbound import OutboundError, OutboundResponse
from servicenow.table_api import error_text, json_or_none, table_reader
from triggers import body
from triggers.dispatch import due_entry, request_poll
from triggers.model import ACTIVE, PAUSED, Trigger
from triggers.poller import sn_time
from triggers.services import TriggerServices
from triggers.store import NOT_FOUND

log = logging.getLogger(__name__)

TRY_TIMEOUT = (5.0, 25.0)  # the query try: connect, read (the caller is waiting)
WRITE_ATTEMPTS = 3  # a write without If-Match is tried again when a poll wrote in between
# Answers of an instance that say "not now" rather than "not this query".
TRANSIENT = {429, 502, 503, 504}
EARLIEST_YEAR = 2000
_ID = re.compile(r"^[0-9a-f]{32}$")
# Compared against when the trigger is unknown, so an unknown trigger costs a compare too.
_DUMMY_SECRET = secrets.token_urlsafe(32)
HOOK_REFUSED = "Missing or wrong X-Trigger-Secret, or no such trigger."
CREATE_FIELDS = [field.name for field in body.FIELDS]


def is_id(value: str) -> bool:
    return bool(_ID.fullmatch(value or ""))


def trigger_not_found() -> ApiError:
    return errors.not_found(NOT_FOUND)


def trigger_paused() -> ApiError:
    return ApiError(
        409,
        "trigger_paused",
        "The trigger is paused (enabled is false), so it does not poll. Set enabled to true "
        "(PATCH the trigger) first.",
    )


# -- trying the query on the instance -----------------------------------------------------------


def _instance_reason(document: Any) -> str:
    return error_text(document) or "no reason given"


def try_query(ts: TriggerServices, connection: Connection, table: str, query: str) -> int | None:
    """Reads one record's sys_id with the query; returns the instance's count of matches
    (`X-Total-Count`). 422 `query_rejected` when the instance refuses the table or query, 502
    `instance_unreachable` when it cannot be asked, 409 `connection_unusable` when the
    connection is known not to work."""
    params = {
        "sysparm_query": query,
        "sysparm_limit": "1",
        "sysparm_fields": "sys_id",
        "sysparm_display_value": "false",
    }
    send = table_reader(ts.services.policy, connection.instance_url, table, params, TRY_TIMEOUT)
    try:
        response, _ = call_with(ts.services, Usage(connection), send)
    except OutboundError as exc:
        raise errors.instance_unreachable(
            f"{exc.message} The query could not be tried; nothing was stored or changed."
        ) from None
    return _matching(response, table)


def _matching(response: OutboundResponse, table: str) -> int | None:
    status = response.status_code
    document = json_or_none(response)
    if status == 200:
        if not isinstance(document, dict) or not isinstance(document.get("result"), list):
            raise errors.instance_unreachable(
                "The instance answered without the Table API's JSON (a hibernating developer "
                "instance answers with a web page); wake it and try again."
            )
        total = str(response.headers.get("X-Total-Count", ""))
        return int(total) if total.isascii() and total.isdigit() else None
    reason = _instance_reason(document)
    if status in TRANSIENT or 300 <= status < 400:
        raise errors.instance_unreachable(
            f"The instance answered {status} ({reason}) when the query was tried; nothing was "
            "stored or changed. Try again shortly."
        )
    if status == 401:
        message = (
            f"The instance refused the connection's credentials when the query was tried (401: "
            f"{reason}). Check the connection (POST .../check) and fix its credentials."
        )
    elif status == 403:
        message = (
            f"The instance refused to let the connection's integration user read {table} (403: "
            f"{reason}). Give that user read access to {table} (a role or an ACL), or choose "
            "another table."
        )
    else:
        message = (
            f"The instance refused the trigger's table or query ({status}: {reason}). Check the "
            f"table name and the encoded query (try it in a list view of {table})."
        )
    raise errors.query_rejected(message)


# -- the due index --------------------------------------------------------------------------------


def _best_effort(what: str, trigger_id: str, action: Any, *args: Any) -> None:
    try:
        action(*args)
    except (AzureError, ApiError) as exc:
        log.warning("trigger %s: %s failed (%s); left behind", trigger_id, what, type(exc).__name__)


# -- create, read, list ---------------------------------------------------------------------------


@dataclass
class Created:
    trigger: Trigger
    push_secret: str


def _connection(ts: TriggerServices, tenant_id: str, connection_id: str) -> Connection:
    return ts.services.store.get(tenant_id, connection_id)  # 404 for none or another tenant's


def create_trigger(
    ts: TriggerServices, tenant_id: str, connection_id: str, doc: dict[str, Any]
) -> Created:
    connection = _connection(ts, tenant_id, connection_id)
    now = ts.services.clock()
    reason = unusable_reason(connection, now)
    if reason:
        raise errors.connection_unusable(reason)
    values = body.validate_create(doc, ts.settings, now)
    matching = try_query(ts, connection, values["table"], values["query"])
    start_at: datetime = values["start_at"]
    trigger = Trigger(
        id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        connection_id=connection_id,
        name=values["name"],
        table=values["table"],
        query=values["query"],
        fields=values["fields"],
        start_at=start_at,
        interval_seconds=values["interval_seconds"],
        enabled=values["enabled"],
        created_at=now,
        updated_at=now,
        status=ACTIVE if values["enabled"] else PAUSED,
        matching_now=matching,
        cursor_updated_on=sn_time(start_at),
        status_changed_at=now,
    )
    push_secret = secrets.token_urlsafe(32)
    trigger.secret_version = ts.services.secrets.put_push_secret(
        tenant_id, connection_id, trigger.id, push_secret
    )
    entry = due_entry(trigger, now)  # due now: the next dispatch polls it
    try:
        ts.due.put(entry)
        ts.triggers.add(trigger)
    except (ApiError, AzureError):
        _best_effort("removing the due entry", trigger.id, ts.due.remove, entry)
        _best_effort(
            "purging the push secret", trigger.id, ts.services.secrets.purge_push_secret, trigger.id
        )
        raise
    return Created(trigger, push_secret)


def list_triggers(
    ts: TriggerServices, tenant_id: str, connection_id: str, limit: int, cursor: str | None
) -> tuple[list[Trigger], str | None]:
    _connection(ts, tenant_id, connection_id)
    return ts.triggers.list(tenant_id, connection_id, limit, cursor)


def get_trigger(
    ts: TriggerServices, tenant_id: str, connection_id: str, trigger_id: str
) -> Trigger:
    if not is_id(trigger_id):
        raise trigger_not_found()
    return ts.triggers.get_for(tenant_id, connection_id, trigger_id)


def _check_if_match(trigger: Trigger, if_match: str | None) -> None:
    if if_match and if_match.strip() != "*" and if_match.strip() != trigger.etag:
        raise errors.precondition_failed()


# -- update ---------------------------------------------------------------------------------------


def _as_create_body(trigger: Trigger) -> dict[str, Any]:
    return {name: getattr(trigger, name) for name in CREATE_FIELDS}


def update_trigger(
    ts: TriggerServices,
    tenant_id: str,
    connection_id: str,
    trigger_id: str,
    patch: dict[str, Any],
    if_match: str | None = None,
) -> Trigger:
    """A JSON merge patch of the create body. A changed table or query is tried on the instance
    first; a changed table or start_at restarts the cursor at the new start_at."""
    tried: dict[tuple[str, str], int | None] = {}
    changes: dict[str, Any] | None = None
    for _ in range(WRITE_ATTEMPTS):
        trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
        _check_if_match(trigger, if_match)
        now = ts.services.clock()
        if changes is None:
            changes = body.validate_patch(patch, _as_create_body(trigger), ts.settings, now)
        changed = {
            name: value for name, value in changes.items() if getattr(trigger, name) != value
        }
        if not changed:
            return trigger
        if "table" in changed or "query" in changed:
            key = (changes.get("table", trigger.table), changes.get("query", trigger.query))
            if key not in tried:
                connection = _connection(ts, tenant_id, connection_id)
                tried[key] = try_query(ts, connection, *key)
            trigger.matching_now = tried[key]
        try:
            return _write_update(ts, trigger, changed, now)
        except ApiError as exc:
            if exc.status != 412 or if_match:
                raise
    raise errors.precondition_failed()


def _write_update(
    ts: TriggerServices, trigger: Trigger, changed: dict[str, Any], now: datetime
) -> Trigger:
    names = [*changed, "updated_at"]
    for name, value in changed.items():
        setattr(trigger, name, value)
    trigger.updated_at = now
    if "table" in changed or "query" in changed:
        names.append("matching_now")
    if "table" in changed or "start_at" in changed:
        trigger.cursor_updated_on, trigger.cursor_sys_id = sn_time(trigger.start_at), ""
        trigger.scan_from, trigger.read_at, trigger.caught_up_to = "", None, None
        names += ["cursor_updated_on", "cursor_sys_id", "scan_from", "read_at", "caught_up_to"]
    if "enabled" in changed:
        trigger.status = ACTIVE if trigger.enabled else PAUSED
        trigger.status_detail, trigger.status_changed_at = "", now
        names += ["status", "status_detail", "status_changed_at"]
    new_entry = None
    if "interval_seconds" in changed:
        # The new entry goes in first; the old one (with the old interval) is dropped by the
        # poll it next brings, which sees that the interval no longer matches.
        new_entry = due_entry(trigger, now + timedelta(seconds=trigger.interval_seconds))
        ts.due.put(new_entry)
    try:
        ts.triggers.merge(trigger, names)
    except (ApiError, AzureError):
        if new_entry is not None:
            _best_effort("removing the new due entry", trigger.id, ts.due.remove, new_entry)
        raise
    return trigger


# -- delete ---------------------------------------------------------------------------------------


def delete_trigger(
    ts: TriggerServices,
    tenant_id: str,
    connection_id: str,
    trigger_id: str,
    if_match: str | None = None,
) -> None:
    for _ in range(WRITE_ATTEMPTS):
        trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
        _check_if_match(trigger, if_match)
        try:
            ts.triggers.delete(trigger)
        except ApiError as exc:
            if exc.status != 412 or if_match:
                raise
            continue
        _remove_belongings(ts, trigger)
        return
    raise errors.precondition_failed()


def _remove_belongings(ts: TriggerServices, trigger: Trigger) -> None:
    """Its events and secret; its due entry is dropped by the poll it next brings."""
    _best_effort("deleting the events", trigger.id, ts.events.delete_all, trigger.id)
    _best_effort(
        "purging the push secret", trigger.id, ts.services.secrets.purge_push_secret, trigger.id
    )


# -- poll now, events -----------------------------------------------------------------------------


def poll_now(ts: TriggerServices, tenant_id: str, connection_id: str, trigger_id: str) -> None:
    trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
    if not trigger.enabled:
        raise trigger_paused()
    request_poll(ts, trigger, "now")


def list_events(
    ts: TriggerServices,
    tenant_id: str,
    connection_id: str,
    trigger_id: str,
    since: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
    if since is not None and since.year < EARLIEST_YEAR:
        since = None  # every kept event is later (and event keys hold four-digit years)
    return ts.events.page(trigger.id, since, limit, cursor)


def redeliver(
    ts: TriggerServices, tenant_id: str, connection_id: str, trigger_id: str, event_id: str
) -> dict[str, Any]:
    trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
    found = ts.events.find(trigger.id, event_id) if is_id(event_id) else None
    if found is None:
        days = ts.settings.retention_days
        raise errors.not_found(f"No such event for this trigger (events are kept {days} days).")
    ts.deliveries.send({"event": found.event, "seen": found.seen, "redeliver": True})
    return found.event


# -- the push secret ------------------------------------------------------------------------------


def rotate_push_secret(
    ts: TriggerServices, tenant_id: str, connection_id: str, trigger_id: str
) -> str:
    """A new push secret; the record names its version, so the old one stops working at once."""
    trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
    push_secret = secrets.token_urlsafe(32)
    version = ts.services.secrets.put_push_secret(tenant_id, connection_id, trigger.id, push_secret)
    for attempt in range(WRITE_ATTEMPTS):
        if attempt:
            trigger = get_trigger(ts, tenant_id, connection_id, trigger_id)
        trigger.secret_version, trigger.updated_at = version, ts.services.clock()
        try:
            ts.triggers.merge(trigger, ["secret_version", "updated_at"])
        except ApiError as exc:
            if exc.status != 412:
                raise
            continue
        return push_secret
    raise errors.precondition_failed()


def accept_hint(ts: TriggerServices, trigger_id: str, presented: str | None) -> bool:
    """A push hint: polls the trigger soon when `presented` is its push secret. A missing or
    wrong secret and an unknown trigger are the same 401, after the same compare. True when a
    poll was queued (False: paused, or a recent hint already queued one)."""
    trigger = _hinted(ts, trigger_id)
    expected = _DUMMY_SECRET
    if trigger is not None and trigger.secret_version:
        with contextlib.suppress(SecretMissing):  # gone from the vault: no secret matches
            expected = ts.services.secrets.get_push_secret(trigger.id, trigger.secret_version)
    given = (presented or "").encode("utf-8", "surrogateescape")
    matches = hmac.compare_digest(given, expected.encode("utf-8"))
    if trigger is None or not trigger.secret_version or not matches:
        raise errors.unauthorized(HOOK_REFUSED)
    if not trigger.enabled:
        return False
    return request_poll(ts, trigger, "hint")


def _hinted(ts: TriggerServices, trigger_id: str) -> Trigger | None:
    if not is_id(trigger_id):
        return None
    tenant_id = ts.triggers.tenant_of(trigger_id)
    if tenant_id is None:
        return None
    try:
        return ts.triggers.get(tenant_id, trigger_id)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
