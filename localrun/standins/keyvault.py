"""Stand-in for the Key Vault secrets REST API, served over HTTPS on loopback.

The production `SecretClient(vault_url, credential=DefaultAzureCredential())` talks to it unchanged:
set, get (latest or a version), update properties, list secrets and versions (with `nextLink`
paging), delete with soft delete, get and list deleted, purge and recover.

Purge protection is on by default, as in the vaults `infra/` deploys: a purge is refused with the
service's 403, a deleted secret stays recoverable (recovery level `Recoverable`), and its name
cannot be written again until it is recovered (409 `ObjectIsDeletedButRecoverable`). Tests that
need the purgeable kind set `store.purge_protection = False`.

Given a journal file, every change is appended to it (owner-only permissions) and replayed on the
next start, so the local run keeps its secrets across restarts, as a real vault would.

Challenge authentication. A real vault at https://x.vault.azure.net answers a request without a
valid bearer token with 401 and `WWW-Authenticate: Bearer authorization=
"https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"`. The SDK asks its
credential for a token for that resource, but only when the vault's host ends with "." plus the
resource's host, so that a rogue vault cannot collect tokens for another service. This stand-in is
served at https://127.0.0.1:PORT and names the resource https://0.0.1:PORT: a proper dotted suffix
of 127.0.0.1:PORT, just as vault.azure.net is of x.vault.azure.net. So reach it by 127.0.0.1, not
by "localhost". Tokens come from the identity stand-in and are checked with its `TokenIssuer`.

Fault injection and call counts for tests live in `VaultControl` (`KeyVaultStandIn.control`), also
over HTTP without authentication:
    POST /_control/throttle {"count": N, "retry_after": seconds}  next N calls answer 429
    POST /_control/fail {"count": N, "status": 503}                next N calls answer that 5xx
    GET  /_control/stats                                           calls per operation
    POST /_control/reset {"secrets": false}                        faults and counts (and secrets)
"""

import collections
import dataclasses
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from localrun.clock import Clock, SystemClock
from localrun.server import BackgroundServer, ServedStandIn, json_reply
from localrun.standins.identity import TokenIssuer
from localrun.tls import server_context

log = logging.getLogger(__name__)

RECOVERY_LEVELS = {True: "Recoverable", False: "Recoverable+Purgeable"}  # by purge protection
PAGE_SIZE = 25  # the service's default and largest page
_NAME = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
_API_VERSION = re.compile(r"^(7\.\d+(-preview(\.\d+)?)?|\d{4}-\d{2}-\d{2}(-preview)?)$")
_LIST_OPERATIONS = {"list", "list_deleted"}


class VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner_code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code


def error_reply(
    status: int,
    code: str,
    message: str,
    inner_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner_code:
        error["innererror"] = {"code": inner_code}
    return json_reply({"error": error}, status, headers)


def _bad_parameter(message: str) -> VaultError:
    return VaultError(400, "BadParameter", message)


def _secret_not_found(name: str, version: str = "") -> VaultError:
    ident = f"{name}/{version}" if version else name
    return VaultError(
        404,
        "SecretNotFound",
        f"A secret with (name/id) {ident} was not found in this key vault. If you recently "
        "deleted this secret you may be able to recover it using the correct recovery command.",
    )


def _deleted_not_found(name: str) -> VaultError:
    return VaultError(404, "SecretNotFound", f"Deleted Secret not found: {name}")


@dataclass
class SecretVersion:
    version: str
    value: str = field(repr=False)
    content_type: str | None
    tags: dict[str, str] | None
    enabled: bool
    not_before: int | None
    expires: int | None
    created: int
    updated: int


@dataclass
class Secret:
    name: str  # as first written; look-ups ignore case, like the service
    versions: list[SecretVersion]
    deleted_date: int = 0
    scheduled_purge_date: int = 0

    @property
    def latest(self) -> SecretVersion:
        return self.versions[-1]


def _optional_int(attributes: dict[str, Any], key: str) -> int | None:
    value = attributes.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_parameter(f"attributes.{key} must be a Unix time in seconds")
    return value


def _parse_attributes(body: dict[str, Any]) -> dict[str, Any]:
    """The attributes the request sets: enabled, nbf, exp (absent or null ones are left out)."""
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise _bad_parameter("attributes must be an object")
    parsed: dict[str, Any] = {}
    if attributes.get("enabled") is not None:
        if not isinstance(attributes["enabled"], bool):
            raise _bad_parameter("attributes.enabled must be a boolean")
        parsed["enabled"] = attributes["enabled"]
    for key in ("nbf", "exp"):
        value = _optional_int(attributes, key)
        if value is not None:
            parsed[key] = value
    return parsed


def _parse_tags(body: dict[str, Any]) -> dict[str, str] | None:
    tags = body.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise _bad_parameter("tags must be an object of strings")
    if len(tags) > 15:
        raise _bad_parameter("A secret can have at most 15 tags")
    return dict(tags)


def _parse_content_type(body: dict[str, Any]) -> str | None:
    content_type = body.get("contentType")
    if content_type is not None and not isinstance(content_type, str):
        raise _bad_parameter("contentType must be a string")
    return content_type


class SecretStore:
    """The vault's secrets, with versions and soft delete. Thread-safe."""

    def __init__(
        self,
        vault_url: str,
        clock: Clock,
        retention_days: int = 90,
        folder: Path | None = None,
        purge_protection: bool = True,
    ) -> None:
        self.vault_url = vault_url
        self.retention_days = retention_days
        self.purge_protection = purge_protection
        self._clock = clock
        self._lock = threading.Lock()
        self._files = SecretFiles(folder) if folder else None
        self._live: dict[str, Secret] = {}
        self._deleted: dict[str, Secret] = {}
        if self._files:
            self._live, self._deleted = self._files.load()

    def _keep(self, secret: Secret, deleted: bool = False) -> None:
        if self._files:
            self._files.save(secret, deleted)

    def _drop(self, name: str) -> None:
        if self._files:
            self._files.remove(name)

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    def _live_secret(self, name: str) -> Secret:
        secret = self._live.get(name.lower())
        if secret is None:
            raise _secret_not_found(name)
        return secret

    def _find_version(self, name: str, version: str) -> tuple[Secret, SecretVersion]:
        secret = self._live_secret(name)
        if not version:
            return secret, secret.latest
        for candidate in secret.versions:
            if candidate.version == version.lower():
                return secret, candidate
        raise _secret_not_found(name, version)

    def _attributes(self, version: SecretVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {"enabled": version.enabled}
        if version.not_before is not None:
            attributes["nbf"] = version.not_before
        if version.expires is not None:
            attributes["exp"] = version.expires
        attributes.update(
            created=version.created,
            updated=version.updated,
            recoveryLevel=RECOVERY_LEVELS[self.purge_protection],
            recoverableDays=self.retention_days,
        )
        return attributes

    def _item(self, version: SecretVersion, ident: str) -> dict[str, Any]:
        item: dict[str, Any] = {"id": ident, "attributes": self._attributes(version)}
        if version.content_type is not None:
            item["contentType"] = version.content_type
        if version.tags is not None:
            item["tags"] = version.tags
        return item

    def _bundle(
        self, secret: Secret, version: SecretVersion, with_value: bool = True
    ) -> dict[str, Any]:
        ident = f"{self.vault_url}/secrets/{secret.name}/{version.version}"
        bundle = self._item(version, ident)
        if with_value:
            bundle["value"] = version.value
        return bundle

    def _deleted_bundle(self, secret: Secret) -> dict[str, Any]:
        bundle = self._bundle(secret, secret.latest, with_value=False)
        bundle.update(self._deletion(secret))
        return bundle

    def _deletion(self, secret: Secret) -> dict[str, Any]:
        return {
            "recoveryId": f"{self.vault_url}/deletedsecrets/{secret.name}",
            "deletedDate": secret.deleted_date,
            "scheduledPurgeDate": secret.scheduled_purge_date,
        }

    def set(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        value = body.get("value")
        if not isinstance(value, str):
            raise _bad_parameter("The parameter value is required and must be a string")
        attributes = _parse_attributes(body)
        now = self._now()
        version = SecretVersion(
            version=uuid.uuid4().hex,
            value=value,
            content_type=_parse_content_type(body),
            tags=_parse_tags(body),
            enabled=attributes.get("enabled", True),
            not_before=attributes.get("nbf"),
            expires=attributes.get("exp"),
            created=now,
            updated=now,
        )
        with self._lock:
            if name.lower() in self._deleted:
                raise VaultError(
                    409,
                    "Conflict",
                    f"Secret {name} is currently in a deleted but recoverable state, and its "
                    "name cannot be reused; in this state, the secret can only be recovered "
                    "or purged.",
                    inner_code="ObjectIsDeletedButRecoverable",
                )
            secret = self._live.setdefault(name.lower(), Secret(name=name, versions=[]))
            secret.versions.append(version)
            self._keep(secret)
            return self._bundle(secret, version)

    def get(self, name: str, version: str = "") -> dict[str, Any]:
        with self._lock:
            secret, found = self._find_version(name, version)
            if not found.enabled:
                raise VaultError(
                    403,
                    "Forbidden",
                    "Operation get is not allowed on a disabled secret.",
                    inner_code="SecretDisabled",
                )
            return self._bundle(secret, found)

    def update(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        attributes = _parse_attributes(body)
        content_type = _parse_content_type(body)
        tags = _parse_tags(body)
        with self._lock:
            secret, found = self._find_version(name, version)
            if content_type is not None:
                found.content_type = content_type
            if tags is not None:
                found.tags = tags
            found.enabled = attributes.get("enabled", found.enabled)
            found.not_before = attributes.get("nbf", found.not_before)
            found.expires = attributes.get("exp", found.expires)
            found.updated = self._now()
            self._keep(secret)
            return self._bundle(secret, found, with_value=False)

    def list_secrets(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                self._item(s.latest, f"{self.vault_url}/secrets/{s.name}")
                for _, s in sorted(self._live.items())
            ]

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            secret = self._live.get(name.lower())
            if secret is None:
                return []
            return [
                self._item(v, f"{self.vault_url}/secrets/{secret.name}/{v.version}")
                for v in secret.versions
            ]

    def delete(self, name: str) -> dict[str, Any]:
        with self._lock:
            secret = self._live.pop(name.lower(), None)
            if secret is None:
                raise _secret_not_found(name)
            secret.deleted_date = self._now()
            secret.scheduled_purge_date = secret.deleted_date + self.retention_days * 86400
            self._deleted[name.lower()] = secret
            self._keep(secret, deleted=True)
            return self._deleted_bundle(secret)

    def get_deleted(self, name: str) -> dict[str, Any]:
        with self._lock:
            secret = self._deleted.get(name.lower())
            if secret is None:
                raise _deleted_not_found(name)
            return self._deleted_bundle(secret)

    def list_deleted(self) -> list[dict[str, Any]]:
        with self._lock:
            items = []
            for _, secret in sorted(self._deleted.items()):
                ident = f"{self.vault_url}/secrets/{secret.name}"
                item = self._item(secret.latest, ident)
                item.update(self._deletion(secret))
                items.append(item)
            return items

    def purge(self, name: str) -> None:
        with self._lock:
            if name.lower() not in self._deleted:
                raise _deleted_not_found(name)
            if self.purge_protection:
                raise VaultError(
                    403,
                    "Forbidden",
                    'Operation "purge" is not allowed because purge protection is enabled for '
                    "this vault. Key Vault service will automatically purge it after the "
                    "retention period has passed.",
                )
            del self._deleted[name.lower()]
            self._drop(name)

    def recover(self, name: str) -> dict[str, Any]:
        with self._lock:
            secret = self._deleted.get(name.lower())
            if secret is None:
                raise _deleted_not_found(name)
            if name.lower() in self._live:
                raise VaultError(409, "Conflict", f"Secret {name} already exists")
            del self._deleted[name.lower()]
            secret.deleted_date = secret.scheduled_purge_date = 0
            self._live[name.lower()] = secret
            self._keep(secret)
            return self._bundle(secret, secret.latest, with_value=False)

    def clear(self) -> None:
        with self._lock:
            for name in [*self._live, *self._deleted]:
                self._drop(name)
            self._live.clear()
            self._deleted.clear()


class SecretFiles:
    """One JSON file per secret (its versions, and whether it is deleted) in a folder only the
    owner can read; written whole on each change, atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.chmod(0o700)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.lower()}.json"  # names are [0-9a-zA-Z-] only

    def save(self, secret: Secret, deleted: bool) -> None:
        record = {"deleted": deleted, **dataclasses.asdict(secret)}
        path = self._path(secret.name)
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(record, file)
        os.replace(temporary, path)

    def remove(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, Secret], dict[str, Secret]]:
        """(live, deleted) secrets by lower-case name."""
        live: dict[str, Secret] = {}
        deleted: dict[str, Secret] = {}
        for path in sorted(self.folder.glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            versions = [SecretVersion(**version) for version in record.pop("versions")]
            is_deleted = record.pop("deleted")
            secret = Secret(versions=versions, **record)
            (deleted if is_deleted else live)[secret.name.lower()] = secret
        return live, deleted


@dataclass(frozen=True)
class Fault:
    status: int
    retry_after: int | None = None


class VaultControl:
    """Fault injection and per-operation call counts. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._calls: collections.Counter[str] = collections.Counter()

    def throttle(self, count: int, retry_after: int = 0) -> None:
        """The next `count` secret calls answer 429 Throttled with `Retry-After: retry_after`."""
        if count < 0 or retry_after < 0:
            raise ValueError("count and retry_after must not be negative")
        with self._lock:
            self._faults.extend([Fault(429, retry_after)] * count)

    def fail(self, count: int, status: int = 503) -> None:
        """The next `count` secret calls answer `status` (a 5xx)."""
        if count < 0 or not 500 <= status <= 599:
            raise ValueError("count must not be negative and status must be a 5xx")
        with self._lock:
            self._faults.extend([Fault(status)] * count)

    def take_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def record(self, operation: str) -> None:
        with self._lock:
            self._calls[operation] += 1

    def calls(self, operation: str | None = None) -> int:
        """Calls of one operation, or of all; requests refused with the challenge count as
        "unauthorized", not as their operation."""
        with self._lock:
            if operation is None:
                return sum(self._calls.values())
            return self._calls[operation]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": dict(self._calls), "pending_faults": len(self._faults)}

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._calls.clear()


def _route(method: str, path: str) -> tuple[str, str, str] | None:
    """(operation, secret name, version) of a secrets API request; the version may be ""."""
    match method, path[1:].split("/"):
        case "GET", ["secrets"]:
            return "list", "", ""
        case "PUT", ["secrets", name]:
            return "set", name, ""
        case "GET", ["secrets", name]:
            return "get", name, ""
        case "DELETE", ["secrets", name]:
            return "delete", name, ""
        case "GET", ["secrets", name, "versions"]:
            return "list_versions", name, ""
        case "GET", ["secrets", name, version]:
            return "get", name, version
        case "PATCH", ["secrets", name, version]:
            return "update", name, version
        case "GET", ["deletedsecrets"]:
            return "list_deleted", "", ""
        case "GET", ["deletedsecrets", name]:
            return "get_deleted", name, ""
        case "DELETE", ["deletedsecrets", name]:
            return "purge", name, ""
        case "POST", ["deletedsecrets", name, "recover"]:
            return "recover", name, ""
    return None


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data(as_text=True) or "null")
    except ValueError:
        raise _bad_parameter("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad_parameter("The request body must be a JSON object")
    return body


def _query_int(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_parameter(f"{key} must be an integer") from None
    if not low <= value <= high:
        raise _bad_parameter(f"{key} must be between {low} and {high}")
    return value


def _fault_reply(fault: Fault) -> Response:
    if fault.status == 429:
        return error_reply(
            429,
            "Throttled",
            "Request was not processed because too many requests were received.",
            headers={"Retry-After": str(fault.retry_after or 0)},
        )
    try:
        code = HTTPStatus(fault.status).phrase.replace(" ", "")
    except ValueError:
        code = "ServerError"
    return error_reply(fault.status, code, "Injected failure")


class KeyVaultStandIn(ServedStandIn):
    """Serves a vault at `url` (https://127.0.0.1:PORT); tokens must be for `resource`."""

    label = "key vault stand-in"

    def __init__(
        self,
        cert_folder: Path,
        issuer: TokenIssuer,
        tenant_id: str | None = None,
        port: int = 0,
        clock: Clock | None = None,
        retention_days: int = 90,
        folder: Path | None = None,
    ) -> None:
        """`folder`: where the secrets are kept across restarts (none: in memory only)."""
        self.issuer = issuer
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.control = VaultControl()
        self._server = BackgroundServer(
            self._app, port=port, ssl_context=server_context(cert_folder), name="keyvault-standin"
        )
        self.url = self._server.url
        self.resource = f"https://0.0.1:{self._server.port}"
        self.store = SecretStore(self.url, clock or SystemClock(), retention_days, folder)

    def challenge_header(self) -> str:
        authority = f"https://login.microsoftonline.com/{self.tenant_id}"
        return f'Bearer authorization="{authority}", resource="{self.resource}"'

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/_control/"):
            response = self._control_endpoint(request)
        else:
            response = self._secrets_endpoint(request)
        return response(environ, start_response)

    def _secrets_endpoint(self, request: Request) -> Response:
        route = _route(request.method, request.path)
        operation, name, _ = route or ("unknown", "", "")
        token = _bearer_token(request)
        if token is None or not self.issuer.verify(token, self.resource, time.time()):
            self.control.record("unauthorized")
            message = "AKV10000: Request is missing a Bearer or PoP token."
            if token is not None:
                message = "AKV10022: Invalid audience, signature or expired token."
            response = error_reply(
                401, "Unauthorized", message, headers={"WWW-Authenticate": self.challenge_header()}
            )
        else:
            self.control.record(operation)
            fault = self.control.take_fault()
            response = _fault_reply(fault) if fault else self._dispatch(request, route)
        log.info("keyvault %s %s -> %d", operation, name or "-", response.status_code)
        return response

    def _dispatch(self, request: Request, route: tuple[str, str, str] | None) -> Response:
        if route is None:
            return error_reply(404, "NotFound", f"{request.method} {request.path} is not supported")
        operation, name, version = route
        try:
            if not _API_VERSION.match(request.args.get("api-version", "")):
                raise _bad_parameter("The request URI contains an invalid or missing api-version")
            if operation not in _LIST_OPERATIONS and not _NAME.match(name):
                raise _bad_parameter(f"The request URI contains an invalid name: {name}")
            return self._operation(request, operation, name, version)
        except VaultError as error:
            return error_reply(error.status, error.code, error.message, error.inner_code)

    def _operation(self, request: Request, operation: str, name: str, version: str) -> Response:
        store = self.store
        match operation:
            case "set":
                return json_reply(store.set(name, _json_body(request)))
            case "get":
                return json_reply(store.get(name, version))
            case "update":
                return json_reply(store.update(name, version, _json_body(request)))
            case "delete":
                return json_reply(store.delete(name))
            case "list":
                return self._page(request, store.list_secrets())
            case "list_versions":
                return self._page(request, store.list_versions(name))
            case "list_deleted":
                return self._page(request, store.list_deleted())
            case "get_deleted":
                return json_reply(store.get_deleted(name))
            case "purge":
                store.purge(name)
                return Response(status=204)
            case "recover":
                return json_reply(store.recover(name))
        raise AssertionError(f"unrouted operation {operation}")

    def _page(self, request: Request, items: list[dict[str, Any]]) -> Response:
        """A page of `items` (sorted by id); `$skiptoken` names the last id already sent, so
        items removed or added meanwhile do not shift the next pages."""
        size = _query_int(request, "maxresults", PAGE_SIZE, 1, PAGE_SIZE)
        after = request.args.get("$skiptoken", "")
        items = sorted(items, key=lambda item: item["id"].lower())
        remaining = [item for item in items if item["id"].lower() > after.lower()]
        page = remaining[:size]
        next_link = None
        if len(remaining) > size:
            query = {
                "api-version": request.args["api-version"],
                "$skiptoken": page[-1]["id"],
                "maxresults": size,
            }
            next_link = f"{self.url}{request.path}?{urlencode(query)}"
        return json_reply({"value": page, "nextLink": next_link})

    def _control_endpoint(self, request: Request) -> Response:
        action = request.path.removeprefix("/_control/").rstrip("/")
        try:
            match request.method, action:
                case "GET", "stats":
                    return json_reply(self.control.stats())
                case "POST", "throttle":
                    body = _json_body(request)
                    self.control.throttle(int(body["count"]), int(body.get("retry_after", 0)))
                case "POST", "fail":
                    body = _json_body(request)
                    self.control.fail(int(body["count"]), int(body.get("status", 503)))
                case "POST", "reset":
                    body = _json_body(request) if request.get_data() else {}
                    self.control.reset()
                    if body.get("secrets"):
                        self.store.clear()
                case _:
                    return error_reply(404, "NotFound", f"No control action {action}")
        except VaultError as error:
            return error_reply(error.status, error.code, error.message)
        except (KeyError, TypeError, ValueError) as error:
            return error_reply(400, "BadParameter", f"Invalid control request: {error}")
        log.info("keyvault control %s", action)
        return json_reply(self.control.stats())
