"""Delivers one notice: a signed webhook POST, then an e-mail through Microsoft Graph.

Notices are about a connection (`invalid_credentials`, ..., `restored`) or about one of its
triggers (`trigger_failing`, `trigger_restored`: the body also carries `trigger_id` and
`trigger_name`, and `status` is the trigger's). Both go through the same channels; the webhook
body is the notice as queued, extra fields included.

A channel that is not configured is skipped with one log line. A configured channel that fails
raises `DeliveryError`, so the queue retries the message (and poisons it after 5 tries).
"""

import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msal
import requests

from renewal.webhook import (
    TIMEOUT,
    UNRESOLVED_REFERENCE,
    WebhookFailure,
    post_signed,
)

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_API_URL = "https://graph.microsoft.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_SETTINGS = ("GRAPH_TENANT_ID", "GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET", "GRAPH_SENDER")
APP_PATH = "the BindTuning App > Automate365 > Connections"

NOTICE_FIELDS = (
    "notice_id",
    "event",
    "tenant_id",
    "connection_id",
    "connection_name",
    "instance_url",
    "status",
    "detail",
    "occurred_at",
)
REQUIRED_NON_EMPTY = ("notice_id", "event", "tenant_id", "connection_id")
TRIGGER_EVENTS = ("trigger_failing", "trigger_restored")
TRIGGER_FIELDS = ("trigger_id", "trigger_name")


class DeliveryError(Exception):
    """A configured channel did not take the notice; the message never holds a secret."""


class InvalidNotice(ValueError):
    """The queue message is not a notice; retrying cannot help."""


@dataclass(frozen=True)
class EventText:
    title: str
    what_to_do: str


EVENT_TEXTS: dict[str, EventText] = {
    "invalid_credentials": EventText(
        "credentials rejected",
        "ServiceNow rejected the connection's credentials.\n"
        "- API token: create a new API token in ServiceNow and replace it on the connection in "
        f"{APP_PATH} (Edit).\n"
        "- OAuth 2.0: check that the OAuth client (System OAuth > Application Registry) still "
        f"exists and is active, and that the client secret on the connection in {APP_PATH} "
        "matches it.",
    ),
    "renewal_failed": EventText(
        "OAuth token renewal failed",
        "The OAuth access token could not be renewed. In ServiceNow, check:\n"
        "- the OAuth client (System OAuth > Application Registry) is active and its client "
        "secret matches the one on the connection;\n"
        "- the client credentials grant is enabled (system property "
        "glide.oauth.inbound.client.credential.grant_type.enabled = true);\n"
        "- the client's OAuth Application User exists, is active and has the roles it needs.\n"
        f"Then edit the connection in {APP_PATH} (for example with a new client secret) or run a "
        "check on it.",
    ),
    "unreachable": EventText(
        "instance unreachable",
        "Check that the ServiceNow instance is up and not hibernating (developer instances "
        "hibernate when idle) and that its URL is still right. The service keeps retrying on "
        "its own and sends a 'restored' notice when the connection works again.",
    ),
    "expiring": EventText(
        "API token expiring soon",
        "Create a new API token in ServiceNow and, before the current one expires, edit the "
        f"connection in {APP_PATH} to use it.",
    ),
    "expired": EventText(
        "API token expired",
        "The API token has expired: automations using this connection fail until it is replaced. "
        f"Create a new API token in ServiceNow now and edit the connection in {APP_PATH} to use "
        "it.",
    ),
    "restored": EventText(
        "connection restored",
        "Nothing to do: the connection works again.",
    ),
    "trigger_failing": EventText(
        "trigger failing",
        "The trigger stopped turning ServiceNow records into events: the instance refuses its "
        "table or query. Fix what the detail above says: in ServiceNow (for example the "
        "integration user's read access to the table: an ACL or a role), or by editing the "
        f"trigger's table or query in {APP_PATH} (try the query in a list view of the table "
        "first). The trigger keeps polling, resumes where it stopped once the instance accepts "
        "it, and sends a 'trigger restored' notice then.",
    ),
    "trigger_restored": EventText(
        "trigger restored",
        "Nothing to do: the trigger polls again and resumes where it stopped.",
    ),
}


def deliver_notice(
    message: dict[str, Any],
    settings: Mapping[str, str] = os.environ,
    *,
    http: requests.Session | None = None,
) -> None:
    notice, recipients = parse_message(message)
    session = http or requests.Session()
    try:
        _webhook_channel(notice, settings, session)
        _mail_channel(notice, recipients, settings, session)
    finally:
        if http is None:
            session.close()


def parse_message(message: Any) -> tuple[dict[str, Any], list[str]]:
    """The notice and its recipients, or `InvalidNotice` saying what is wrong."""
    if not isinstance(message, dict):
        raise InvalidNotice("the message is not a JSON object")
    notice = message.get("notice")
    if not isinstance(notice, dict):
        raise InvalidNotice("the message has no 'notice' object")
    for name in NOTICE_FIELDS:
        value = notice.get(name)
        if name == "detail" and value is None:
            continue
        if not isinstance(value, str):
            raise InvalidNotice(f"notice field '{name}' is missing or not a string")
        if name in REQUIRED_NON_EMPTY and not value.strip():
            raise InvalidNotice(f"notice field '{name}' is empty")
    if notice["event"] not in EVENT_TEXTS:
        raise InvalidNotice(f"unknown notice event {notice['event']!r}")
    if is_trigger_notice(notice):
        for name in TRIGGER_FIELDS:
            if not isinstance(notice.get(name), str):
                raise InvalidNotice(f"notice field '{name}' is missing or not a string")
        if not notice["trigger_id"].strip():
            raise InvalidNotice("notice field 'trigger_id' is empty")
    return notice, _recipients(message.get("recipients"))


def is_trigger_notice(notice: dict[str, Any]) -> bool:
    return notice["event"] in TRIGGER_EVENTS


def _recipients(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidNotice("'recipients' is not a list")
    recipients: list[str] = []
    for item in value:
        if not isinstance(item, str) or "@" not in item or any(c.isspace() for c in item):
            raise InvalidNotice("'recipients' holds something that is not an e-mail address")
        if item.lower() not in (r.lower() for r in recipients):
            recipients.append(item)
    return recipients


def _setting(settings: Mapping[str, str], name: str) -> str:
    return (settings.get(name) or "").strip()


def _log_outcome(notice: dict[str, Any], channel: str, result: str) -> None:
    log.info(
        "notice %s event=%s channel=%s result=%s",
        notice["notice_id"],
        notice["event"],
        channel,
        result,
    )


def _fail(notice: dict[str, Any], channel: str, reason: str) -> DeliveryError:
    log.warning(
        "notice %s event=%s channel=%s result=failed (%s)",
        notice["notice_id"],
        notice["event"],
        channel,
        reason,
    )
    return DeliveryError(f"notice {notice['notice_id']}: {channel} delivery failed: {reason}")


# --- Webhook ----------------------------------------------------------------------------------


def webhook_body(notice: dict[str, Any]) -> bytes:
    return json.dumps(notice, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _webhook_channel(
    notice: dict[str, Any], settings: Mapping[str, str], session: requests.Session
) -> None:
    url = _setting(settings, "NOTIFY_WEBHOOK_URL")
    if not url:
        _log_outcome(notice, "webhook", "skipped (NOTIFY_WEBHOOK_URL is not set)")
        return
    secret = settings.get("NOTIFY_WEBHOOK_SECRET") or ""
    try:
        # The URL is not logged nor put in errors: a webhook URL may carry a token of its own.
        status = post_signed(
            session,
            url,
            secret,
            "NOTIFY_WEBHOOK_SECRET",
            webhook_body(notice),
            ("X-Notice-Id", notice["notice_id"]),
        )
    except WebhookFailure as failure:
        raise _fail(notice, "webhook", failure.reason) from None
    _log_outcome(notice, "webhook", f"delivered ({status})")


# --- E-mail through Microsoft Graph ---------------------------------------------------------


_apps: dict[tuple[str, str, str], msal.ConfidentialClientApplication] = {}
_apps_lock = threading.Lock()


def _msal_app(
    authority: str, client_id: str, secret: str, discovery: bool
) -> msal.ConfidentialClientApplication:
    """One app per process and registration, so MSAL's token cache outlives an invocation."""
    key = _app_key(authority, client_id, secret)
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            options: dict[str, Any] = {} if discovery else {"instance_discovery": False}
            app = msal.ConfidentialClientApplication(
                client_id,
                client_credential=secret,
                authority=authority,
                timeout=TIMEOUT,
                **options,
            )
            _apps[key] = app
        return app


def _forget_msal_app(authority: str, client_id: str, secret: str) -> None:
    with _apps_lock:
        _apps.pop(_app_key(authority, client_id, secret), None)


def _app_key(authority: str, client_id: str, secret: str) -> tuple[str, str, str]:
    """The secret itself is never kept as a key: a digest of it tells rotations apart."""
    return authority, client_id, hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _mail_channel(
    notice: dict[str, Any],
    recipients: list[str],
    settings: Mapping[str, str],
    session: requests.Session,
) -> None:
    missing = [name for name in GRAPH_SETTINGS if not _setting(settings, name)]
    if missing:
        _log_outcome(notice, "email", f"skipped ({', '.join(missing)} not set)")
        return
    if not recipients:
        _log_outcome(notice, "email", "skipped (no recipients)")
        return
    authority_host = _setting(settings, "GRAPH_AUTHORITY_HOST").rstrip("/")
    authority = (
        f"{authority_host or DEFAULT_AUTHORITY_HOST}/{_setting(settings, 'GRAPH_TENANT_ID')}"
    )
    client_id = _setting(settings, "GRAPH_CLIENT_ID")
    secret = _setting(settings, "GRAPH_CLIENT_SECRET")
    if secret.startswith(UNRESOLVED_REFERENCE):
        raise _fail(notice, "email", "GRAPH_CLIENT_SECRET is an unresolved Key Vault reference")
    token = _graph_token(notice, authority, client_id, secret, discovery=not authority_host)
    api_url = (_setting(settings, "GRAPH_API_URL") or DEFAULT_GRAPH_API_URL).rstrip("/")
    sender = quote(_setting(settings, "GRAPH_SENDER"), safe="@")
    try:
        response = session.post(
            f"{api_url}/v1.0/users/{sender}/sendMail",
            json=mail_payload(notice, recipients),
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            allow_redirects=False,
        )
    except requests.RequestException as error:
        raise _fail(notice, "email", f"sendMail: {type(error).__name__}") from None
    if response.status_code == 401:
        _forget_msal_app(authority, client_id, secret)  # the next try starts with a fresh token
    if response.status_code != 202:
        reason = f"sendMail answered {response.status_code} {_graph_error_code(response)}"
        raise _fail(notice, "email", reason.strip())
    _log_outcome(notice, "email", f"sent to {len(recipients)} recipient(s)")


def _graph_token(
    notice: dict[str, Any], authority: str, client_id: str, secret: str, *, discovery: bool
) -> str:
    try:
        app = _msal_app(authority, client_id, secret, discovery)
        result = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    except msal.exceptions.MsalError as error:
        raise _fail(notice, "email", _without(secret, f"token: {error}")) from None
    except (ValueError, requests.RequestException) as error:
        # MSAL raises ValueError when it cannot read the authority's configuration.
        raise _fail(notice, "email", f"token: {type(error).__name__}") from None
    if "access_token" not in result:
        codes = " ".join(f"AADSTS{code}" for code in result.get("error_codes") or [])
        reason = f"token: {result.get('error', 'no access token')} {codes}".strip()
        raise _fail(notice, "email", _without(secret, reason))
    return str(result["access_token"])


def _without(secret: str, text: str) -> str:
    return text.replace(secret, "***") if secret else text


def _graph_error_code(response: requests.Response) -> str:
    try:
        error = response.json().get("error")
    except ValueError:
        return ""
    code = error.get("code") if isinstance(error, dict) else None
    return f"({code})" if isinstance(code, str) else ""


# --- The e-mail itself ------------------------------------------------------------------------


def mail_payload(notice: dict[str, Any], recipients: list[str]) -> dict[str, Any]:
    return {
        "message": {
            "subject": mail_subject(notice),
            "body": {"contentType": "Text", "content": mail_text(notice)},
            "toRecipients": [{"emailAddress": {"address": r}} for r in recipients],
        },
        "saveToSentItems": False,
    }


def mail_subject(notice: dict[str, Any]) -> str:
    name = " ".join(notice["connection_name"].split()) or notice["connection_id"]
    title = EVENT_TEXTS[notice["event"]].title
    if is_trigger_notice(notice):
        return f"Automate365 trigger '{_trigger_name(notice)}' of connection '{name}': {title}"
    return f"Automate365 connection '{name}': {title}"


def _trigger_name(notice: dict[str, Any]) -> str:
    return " ".join(notice["trigger_name"].split()) or notice["trigger_id"]


def mail_text(notice: dict[str, Any]) -> str:
    text = EVENT_TEXTS[notice["event"]]
    about = f"connection '{notice['connection_name']}'"
    status = notice["status"]
    trigger_rows: list[str] = []
    if is_trigger_notice(notice):
        about = f"trigger '{_trigger_name(notice)}' of {about}"
        trigger_rows = [
            f"Trigger:       {notice['trigger_name']}",
            f"Trigger ID:    {notice['trigger_id']}",
        ]
        status += " (the trigger's)"
    return "\n".join(
        [
            f"Automate365 {about}: {text.title}.",
            "",
            *trigger_rows,
            f"Connection:    {notice['connection_name']}",
            f"Instance:      {notice['instance_url']}",
            f"Tenant:        {notice['tenant_id']}",
            f"Connection ID: {notice['connection_id']}",
            f"Event:         {notice['event']}",
            f"Status:        {status}",
            f"Detail:        {notice.get('detail') or '-'}",
            f"When:          {notice['occurred_at']}",
            "",
            "What to do:",
            text.what_to_do,
            "",
            f"Notice ID: {notice['notice_id']}",
        ]
    )
