"""The connection record: what Table Storage holds and what the API returns (never a secret)."""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

API_TOKEN = "api_token"  # noqa: S105 (a method name, not a secret)
OAUTH2 = "oauth2"

# Secret kinds: each is one Key Vault secret of the connection, named from its id only.
SECRET_KINDS = {
    API_TOKEN: ("api_token",),
    OAUTH2: ("client_secret", "access_token", "refresh_token"),
}
# The kind the admin gives (the others are the tokens the instance issues).
CREDENTIAL_KINDS = {API_TOKEN: "api_token", OAUTH2: "client_secret"}

CONNECTED = "connected"
EXPIRING = "expiring"
EXPIRED = "expired"
INVALID_CREDENTIALS = "invalid_credentials"
RENEWAL_FAILED = "renewal_failed"
UNREACHABLE = "unreachable"
STATUSES = (CONNECTED, EXPIRING, EXPIRED, INVALID_CREDENTIALS, RENEWAL_FAILED, UNREACHABLE)


def format_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_millis(value: datetime) -> str:
    """RFC 3339 UTC with milliseconds: `2026-12-01T10:00:01.250Z`."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Connection:
    id: str
    tenant_id: str
    name: str
    instance_url: str
    auth: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    type: str = "servicenow"
    status: str = CONNECTED
    status_detail: str = ""
    capabilities: dict[str, bool] = field(default_factory=dict)
    last_checked_at: datetime | None = None
    notify_emails: list[str] = field(default_factory=list)
    secret_versions: dict[str, str] = field(default_factory=dict)
    # Renewal bookkeeping, never returned by the API.
    next_due_at: datetime | None = None
    due_exact: bool = False
    status_changed_at: datetime | None = None
    failing_since: datetime | None = None
    failure_count: int = 0
    reminder_sent_days: int = 0
    lease_owner: str = ""
    lease_until: datetime | None = None
    pending_notices: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None

    @property
    def method(self) -> str:
        return self.auth["method"]

    def to_public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "type": self.type,
            "name": self.name,
            "instance_url": self.instance_url,
            "auth": public_auth(self.auth),
            "status": self.status,
            "status_detail": self.status_detail,
            "capabilities": dict(self.capabilities),
            "last_checked_at": format_time(self.last_checked_at),
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "notify_emails": list(self.notify_emails),
        }


def public_auth(auth: dict[str, Any]) -> dict[str, Any]:
    if auth["method"] == API_TOKEN:
        keys = ("method", "parameter_name", "parameter_type", "expires_at")
    else:
        keys = ("method", "client_id", "token_expires_at")
    return {key: auth.get(key) for key in keys}


_JSON_COLUMNS = {
    "auth": ("Auth", dict),
    "capabilities": ("Capabilities", dict),
    "notify_emails": ("NotifyEmails", list),
    "secret_versions": ("SecretVersions", dict),
    "pending_notices": ("PendingNotices", list),
}
_TEXT_COLUMNS = {
    "type": "Type",
    "name": "Name",
    "instance_url": "InstanceUrl",
    "status": "Status",
    "status_detail": "StatusDetail",
    "lease_owner": "LeaseOwner",
}
_TIME_COLUMNS = {
    "created_at": "CreatedAt",
    "updated_at": "UpdatedAt",
    "last_checked_at": "LastCheckedAt",
    "next_due_at": "NextDueAt",
    "status_changed_at": "StatusChangedAt",
    "failing_since": "FailingSince",
    "lease_until": "LeaseUntil",
}
_NUMBER_COLUMNS = {
    "failure_count": "FailureCount",
    "reminder_sent_days": "ReminderSentDays",
    "due_exact": "DueExact",
}


def to_entity_columns(connection: Connection) -> dict[str, Any]:
    """The entity's columns other than its keys (the store adds PartitionKey and RowKey)."""
    columns: dict[str, Any] = {"AuthMethod": connection.method}
    for attr, column in _TEXT_COLUMNS.items():
        columns[column] = getattr(connection, attr)
    for attr, (column, _) in _JSON_COLUMNS.items():
        columns[column] = json.dumps(getattr(connection, attr), separators=(",", ":"))
    for attr, column in _TIME_COLUMNS.items():
        columns[column] = format_time(getattr(connection, attr))
    for attr, column in _NUMBER_COLUMNS.items():
        columns[column] = int(getattr(connection, attr))
    return columns


def from_entity_columns(
    tenant_id: str, connection_id: str, entity: dict[str, Any], etag: str | None
) -> Connection:
    values: dict[str, Any] = {"id": connection_id, "tenant_id": tenant_id, "etag": etag}
    for attr, column in _TEXT_COLUMNS.items():
        values[attr] = entity.get(column) or ""
    for attr, (column, empty) in _JSON_COLUMNS.items():
        values[attr] = json.loads(entity.get(column) or "null") or empty()
    for attr, column in _TIME_COLUMNS.items():
        values[attr] = parse_time(entity.get(column))
    for attr, column in _NUMBER_COLUMNS.items():
        values[attr] = int(entity.get(column) or 0)
    values["due_exact"] = bool(values["due_exact"])
    return Connection(**values)
