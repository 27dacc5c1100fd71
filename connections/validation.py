"""Strict validation of request bodies and path values: one FieldError per bad field."""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from connections import errors
from connections.catalogue import DEFAULT_PARAMETER_NAME, MAX_NOTIFY_EMAILS, PARAMETER_TYPES
from connections.errors import FieldError
from connections.model import API_TOKEN, OAUTH2, format_time
from servicenow.instance_url import InvalidInstanceUrl, OutboundPolicy, normalise_instance_url

MAX_BODY_BYTES = 64 * 1024
MAX_NAME_LENGTH = 100
MAX_SECRET_LENGTH = 4096
MAX_CLIENT_ID_LENGTH = 256
JSON_MEDIA_TYPES = ("application/json", "application/merge-patch+json")

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CONNECTION_ID = re.compile(r"^[0-9a-f]{32}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_QUERY_NAME = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A lone UTF-16 surrogate (from a JSON \ud800 escape) is not Unicode text: it cannot be encoded.
_SURROGATE = re.compile(r"[\ud800-\udfff]")

_TOP_FIELDS = {"type", "name", "instance_url", "auth", "notify_emails"}
_AUTH_FIELDS = {
    API_TOKEN: {"method", "api_token", "parameter_name", "parameter_type", "expires_at"},
    OAUTH2: {"method", "client_id", "client_secret"},
}
_SECRET_FIELDS = {API_TOKEN: ("api_token",), OAUTH2: ("client_secret",)}


@dataclass
class ConnectionInput:
    """A validated create body, or a connection after a validated patch."""

    name: str
    instance_url: str
    auth: dict[str, Any]
    notify_emails: list[str]
    secrets: dict[str, str] = field(default_factory=dict)


def parse_json_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    if len(body) > MAX_BODY_BYTES:
        raise errors.payload_too_large(MAX_BODY_BYTES)
    media_type = (content_type or "application/json").split(";")[0].strip().lower()
    if media_type not in JSON_MEDIA_TYPES:
        raise errors.unsupported_media_type()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.invalid_json("The body is not valid UTF-8.") from None
    try:
        document = json.loads(text)
    except RecursionError:
        raise errors.invalid_json("The body is nested too deeply.") from None
    except json.JSONDecodeError as exc:
        raise errors.invalid_json(f"The body is not valid JSON ({exc.msg}).") from None
    except ValueError:  # e.g. an integer of more than 4300 digits
        raise errors.invalid_json("The body holds a number too large to read.") from None
    if not isinstance(document, dict):
        raise errors.invalid_json("The body must be a JSON object.")
    if _holds_surrogate(document):
        raise errors.invalid_json("The body holds an unpaired surrogate escape (\\ud800-\\udfff).")
    return document


def _holds_surrogate(document: Any) -> bool:
    """True when any key or string in the parsed document holds a lone surrogate."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            pending += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            pending += value
    return False


def is_tenant_id(tenant_id: str) -> bool:
    return bool(_TENANT_ID.fullmatch(tenant_id or ""))


def check_tenant_id(tenant_id: str) -> str:
    if not is_tenant_id(tenant_id):
        detail = FieldError(
            "tenant_id",
            "Use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
        raise errors.validation_error([detail])
    return tenant_id


def is_connection_id(connection_id: str) -> bool:
    return bool(_CONNECTION_ID.fullmatch(connection_id or ""))


class _Collector:
    """Gathers field errors so one response can name every bad field."""

    def __init__(self) -> None:
        self.details: list[FieldError] = []

    def add(self, name: str, message: str) -> None:
        self.details.append(FieldError(name, message))

    def raise_if_any(self) -> None:
        if self.details:
            raise errors.validation_error(self.details)


def _text(
    doc: dict[str, Any],
    key: str,
    path: str,
    found: _Collector,
    *,
    max_length: int,
    required: bool = True,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            found.add(path, "This field is required.")
        return None
    if not isinstance(value, str):
        found.add(path, "Must be a string.")
        return None
    if not value.strip():
        found.add(path, "Must not be empty.")
        return None
    if len(value) > max_length:
        found.add(path, f"Must be at most {max_length} characters.")
        return None
    if _CONTROL.search(value):
        found.add(path, "Must not contain control characters.")
        return None
    if pattern and not pattern.fullmatch(value):
        found.add(path, hint or "Has an invalid format.")
        return None
    return value


def _unknown_fields(doc: dict[str, Any], allowed: set[str], prefix: str, found: _Collector) -> None:
    for key in sorted(set(doc) - allowed):
        found.add(f"{prefix}{key}", "Unknown field.")


def _name(doc: dict[str, Any], found: _Collector) -> str | None:
    name = _text(doc, "name", "name", found, max_length=MAX_NAME_LENGTH)
    return name.strip() if name else None


def _instance_url(doc: dict[str, Any], found: _Collector, policy: OutboundPolicy) -> str | None:
    raw = _text(doc, "instance_url", "instance_url", found, max_length=2048)
    if raw is None:
        return None
    try:
        return normalise_instance_url(raw, policy)
    except InvalidInstanceUrl as exc:
        found.add("instance_url", exc.message)
        return None


def _notify_emails(doc: dict[str, Any], found: _Collector) -> list[str]:
    value = doc.get("notify_emails")
    if value is None:
        return []
    if not isinstance(value, list):
        found.add("notify_emails", "Must be an array of e-mail addresses.")
        return []
    if len(value) > MAX_NOTIFY_EMAILS:
        found.add("notify_emails", f"At most {MAX_NOTIFY_EMAILS} addresses.")
        return []
    emails: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or len(item) > 254 or not _EMAIL.fullmatch(item):
            found.add(f"notify_emails[{index}]", "Must be an e-mail address.")
        elif item.lower() not in (known.lower() for known in emails):
            emails.append(item)
    return emails


def _expires_at(auth: dict[str, Any], found: _Collector) -> str | None:
    value = auth.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 40:
        found.add("auth.expires_at", "Must be an ISO 8601 date-time string.")
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        found.add("auth.expires_at", "Must be an ISO 8601 date-time, e.g. 2027-03-01T00:00:00Z.")
        return None
    if moment.tzinfo is None:
        found.add("auth.expires_at", "Must include a time zone, e.g. 2027-03-01T00:00:00Z.")
        return None
    try:
        moment = moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        found.add("auth.expires_at", "Is out of range.")
        return None
    if moment.year < 1970:  # long past (and a year below 1000 would not format as ISO 8601)
        found.add("auth.expires_at", "Is in the past: give the token's real expiry.")
        return None
    return format_time(moment)


def _api_token_auth(auth: dict[str, Any], found: _Collector, need_secret: bool) -> dict[str, Any]:
    parameter_type = auth.get("parameter_type", "header")
    if parameter_type not in PARAMETER_TYPES:
        found.add("auth.parameter_type", "Must be 'header' or 'query'.")
        parameter_type = "header"
    name_pattern = _HEADER_NAME if parameter_type == "header" else _QUERY_NAME
    parameter_name = _text(
        auth,
        "parameter_name",
        "auth.parameter_name",
        found,
        max_length=64,
        required=False,
        pattern=name_pattern,
        hint=f"Must be a valid {parameter_type} name (letters, digits and - _ . ~).",
    )
    _text(
        auth,
        "api_token",
        "auth.api_token",
        found,
        max_length=MAX_SECRET_LENGTH,
        required=need_secret,
        pattern=re.compile(r"^\S+$"),
        hint="Must not contain spaces.",
    )
    return {
        "method": API_TOKEN,
        "parameter_name": parameter_name or DEFAULT_PARAMETER_NAME,
        "parameter_type": parameter_type,
        "expires_at": _expires_at(auth, found),
    }


def _oauth2_auth(auth: dict[str, Any], found: _Collector, need_secret: bool) -> dict[str, Any]:
    client_id = _text(auth, "client_id", "auth.client_id", found, max_length=MAX_CLIENT_ID_LENGTH)
    _text(
        auth,
        "client_secret",
        "auth.client_secret",
        found,
        max_length=MAX_SECRET_LENGTH,
        required=need_secret,
    )
    return {"method": OAUTH2, "client_id": client_id, "token_expires_at": None}


_AUTH_PARSERS: dict[str, Callable[[dict[str, Any], _Collector, bool], dict[str, Any]]] = {
    API_TOKEN: _api_token_auth,
    OAUTH2: _oauth2_auth,
}


def _auth(doc: dict[str, Any], found: _Collector, need_secret: bool) -> tuple[dict, dict]:
    auth = doc.get("auth")
    if auth is None:
        found.add("auth", "This field is required.")
        return {}, {}
    if not isinstance(auth, dict):
        found.add("auth", "Must be an object.")
        return {}, {}
    method = auth.get("method")
    if not isinstance(method, str) or method not in _AUTH_PARSERS:
        found.add("auth.method", "Must be 'api_token' or 'oauth2'.")
        return {}, {}
    _unknown_fields(auth, _AUTH_FIELDS[method], "auth.", found)
    public = _AUTH_PARSERS[method](auth, found, need_secret)
    secrets = {key: auth[key] for key in _SECRET_FIELDS[method] if isinstance(auth.get(key), str)}
    return public, secrets


def validate_create(doc: dict[str, Any], policy: OutboundPolicy) -> ConnectionInput:
    return _validate(doc, policy, need_secret=True)


def _validate(doc: dict[str, Any], policy: OutboundPolicy, need_secret: bool) -> ConnectionInput:
    found = _Collector()
    _unknown_fields(doc, _TOP_FIELDS, "", found)
    if doc.get("type") != "servicenow":
        found.add("type", "Must be 'servicenow'.")
    name = _name(doc, found)
    instance_url = _instance_url(doc, found, policy)
    notify_emails = _notify_emails(doc, found)
    auth, secrets = _auth(doc, found, need_secret)
    found.raise_if_any()
    return ConnectionInput(name or "", instance_url or "", auth, notify_emails, secrets)


@dataclass
class PatchResult:
    connection: ConnectionInput
    method_changed: bool
    url_changed: bool

    @property
    def needs_proof(self) -> bool:
        return self.method_changed or self.url_changed or bool(self.connection.secrets)


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _check_patch_shape(patch: dict[str, Any]) -> None:
    found = _Collector()
    _unknown_fields(patch, _TOP_FIELDS, "", found)
    for key in ("type", "name", "instance_url", "auth"):
        if key in patch and patch[key] is None:
            found.add(key, "Cannot be removed.")
    if "type" in patch and patch["type"] not in (None, "servicenow"):
        found.add("type", "The connection type cannot change.")
    if "auth" in patch and patch["auth"] is not None and not isinstance(patch["auth"], dict):
        found.add("auth", "Must be an object.")
    found.raise_if_any()


def validate_patch(
    current: dict[str, Any], patch: dict[str, Any], policy: OutboundPolicy
) -> PatchResult:
    """Applies a merge patch to `current` (the connection as a create body without secrets)."""
    _check_patch_shape(patch)
    auth_patch = patch.get("auth") or {}
    method_changed = "method" in auth_patch and auth_patch["method"] != current["auth"]["method"]
    merged = _merge(current, patch)
    if method_changed:
        merged["auth"] = dict(auth_patch)
    connection = _validate(merged, policy, need_secret=method_changed)
    url_changed = connection.instance_url != current["instance_url"]
    return PatchResult(connection, method_changed, url_changed)
