"""A ServiceNow instance stand-in: `/oauth_token.do`, REST API keys and the Table API.

It speaks the instance's wire formats so the production client runs unchanged against it, and a
control API under `/_control/` (and the same operations as methods of `ServiceNowState`) lets
tests and the demo add or revoke OAuth clients and API keys, inject latency and failures, and
read what was called. Time comes from an injectable clock so tests can expire tokens at will.
Nothing here ever logs or records a secret, a token or a query string.
"""

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from localrun.server import BackgroundServer, json_reply

log = logging.getLogger(__name__)

CLIENT_CREDENTIALS_PROPERTY = "glide.oauth.inbound.client.credential.grant_type.enabled"
DEFAULT_ACCESS_TOKEN_LIFETIME = 1799
DEFAULT_REFRESH_TOKEN_LIFETIME = 8_640_000  # 100 days, the instance default
DEFAULT_API_KEY_PARAMETER = "x-sn-apikey"
DEFAULT_TABLES = ("incident", "sc_req_item", "change_request", "sys_user")
DEFAULT_LIMIT = 10_000
RECORDS_PER_TABLE = 3
SCOPES = ("all", "token", "table")
FAILURE_MODES = ("status", "hibernate", "garbage", "redirect")
PARAMETER_TYPES = ("header", "query")
MAX_LOGGED_CALLS = 1000
TOKEN_PATH = "/oauth_token.do"
UNKNOWN_CLIENT = "<unknown>"

HIBERNATION_PAGE = """<!DOCTYPE html>
<html><head><title>Instance Hibernating page</title></head>
<body><h1>Your instance is hibernating</h1>
<p>Developer instances hibernate when not in use. Sign in to the developer site to wake it up.</p>
</body></html>
"""
GARBAGE_BODY = b"\x00\xff<<not json>> ]]}"


@dataclass
class OAuthClient:
    client_id: str
    client_secret: str
    access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME
    refresh_token_lifetime: int = DEFAULT_REFRESH_TOKEN_LIFETIME
    issue_refresh_token: bool = False
    reuse_token: bool = False
    rotate_refresh_token: bool = False
    denied_tables: set[str] = field(default_factory=set)
    active: bool = True

    def public_view(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "access_token_lifetime": self.access_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
            "issue_refresh_token": self.issue_refresh_token,
            "reuse_token": self.reuse_token,
            "rotate_refresh_token": self.rotate_refresh_token,
            "denied_tables": sorted(self.denied_tables),
            "active": self.active,
        }


@dataclass
class ApiKey:
    name: str
    value: str
    parameter_name: str = DEFAULT_API_KEY_PARAMETER
    parameter_type: str = "header"
    denied_tables: set[str] = field(default_factory=set)
    expires_at: float | None = None
    active: bool = True


@dataclass
class _Token:
    client_id: str
    expires_at: float


@dataclass
class _Failure:
    remaining: int
    mode: str
    status: int
    scope: str
    retry_after: int | None
    location: str | None


@dataclass
class _Principal:
    name: str
    denied_tables: set[str]


@dataclass
class _RateWindow:
    started_at: float
    calls: int = 0


def _scope_of(path: str) -> str:
    return "token" if path == TOKEN_PATH else "table"


def _in_scope(scope: str, path: str) -> bool:
    return scope in ("all", _scope_of(path))


def _sample_records(table: str) -> list[dict[str, str]]:
    prefix = {"incident": "INC", "sc_req_item": "RITM", "change_request": "CHG"}.get(
        table, table[:3].upper()
    )
    records = []
    for index in range(RECORDS_PER_TABLE):
        sys_id = hashlib.sha256(f"{table}:{index}".encode()).hexdigest()[:32]
        records.append(
            {
                "sys_id": sys_id,
                "number": f"{prefix}{1_000_001 + index:07d}",
                "short_description": f"Sample {table} record {index + 1}",
            }
        )
    return records


class ServiceNowState:
    """Everything the instance knows, guarded by one lock; all methods are thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.reset()

    # ---- control operations -------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self._clock_offset = 0.0
            self._clients: dict[str, OAuthClient] = {}
            self._api_keys: dict[str, ApiKey] = {}
            self._access_tokens: dict[str, _Token] = {}
            self._refresh_tokens: dict[str, _Token] = {}
            self._tables = {name: _sample_records(name) for name in DEFAULT_TABLES}
            self._properties: dict[str, Any] = {CLIENT_CREDENTIALS_PROPERTY: True}
            self._latency = {"all": 0.0, "token": 0.0, "table": 0.0}
            self._failures: list[_Failure] = []
            self._rate_limit: tuple[int, float, int] | None = None
            self._rate_windows: dict[str, _RateWindow] = {}
            self._token_exchanges: dict[str, dict[str, int]] = {}
            self._token_rejections: dict[str, dict[str, int]] = {}
            self._table_calls: dict[str, int] = {}
            self._calls: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_CALLS)

    def now(self) -> float:
        with self._lock:
            return self._clock() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Moves the stand-in's own time forward (for runs where the clock is the real one)."""
        with self._lock:
            self._clock_offset += seconds

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        *,
        access_token_lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
        refresh_token_lifetime: int = DEFAULT_REFRESH_TOKEN_LIFETIME,
        issue_refresh_token: bool = False,
        reuse_token: bool = False,
        rotate_refresh_token: bool = False,
        denied_tables: Iterable[str] = (),
    ) -> None:
        client = OAuthClient(
            client_id=str(client_id),
            client_secret=str(client_secret),
            access_token_lifetime=int(access_token_lifetime),
            refresh_token_lifetime=int(refresh_token_lifetime),
            issue_refresh_token=bool(issue_refresh_token),
            reuse_token=bool(reuse_token),
            rotate_refresh_token=bool(rotate_refresh_token),
            denied_tables=set(denied_tables),
        )
        with self._lock:
            self._clients[client.client_id] = client

    def update_client(self, client_id: str, **changes: Any) -> dict[str, Any]:
        """Changes any of the client's settings (the add_client keywords, or `active`)."""
        with self._lock:
            client = self._clients[client_id]
            for name, value in changes.items():
                if name == "client_id" or not hasattr(client, name):
                    raise ValueError(f"unknown client setting: {name}")
                if name == "denied_tables":
                    value = set(value)
                setattr(client, name, value)
            if not client.active:
                self._drop_tokens(client_id)
            return client.public_view()

    def revoke_client(self, client_id: str) -> None:
        """Deactivates the client and invalidates every token it was given."""
        self.update_client(client_id, active=False)

    def enable_client(self, client_id: str) -> None:
        self.update_client(client_id, active=True)

    def set_client_secret(self, client_id: str, client_secret: str) -> None:
        self.update_client(client_id, client_secret=client_secret)

    def set_token_lifetimes(
        self, client_id: str, access: int | None = None, refresh: int | None = None
    ) -> None:
        changes: dict[str, Any] = {}
        if access is not None:
            changes["access_token_lifetime"] = int(access)
        if refresh is not None:
            changes["refresh_token_lifetime"] = int(refresh)
        self.update_client(client_id, **changes)

    def set_property(self, name: str, value: Any) -> None:
        if name != CLIENT_CREDENTIALS_PROPERTY:
            raise ValueError(f"unknown property: {name}")
        with self._lock:
            self._properties[name] = value in (True, "true")

    def set_client_credentials_grant(self, enabled: bool) -> None:
        self.set_property(CLIENT_CREDENTIALS_PROPERTY, enabled)

    def add_api_key(
        self,
        value: str,
        *,
        name: str | None = None,
        parameter_name: str = DEFAULT_API_KEY_PARAMETER,
        parameter_type: str = "header",
        denied_tables: Iterable[str] = (),
        expires_at: float | None = None,
    ) -> str:
        """Registers a REST API key; returns its name (what the log and stats show)."""
        if parameter_type not in PARAMETER_TYPES:
            raise ValueError(f"parameter_type must be one of {PARAMETER_TYPES}")
        with self._lock:
            key_name = name or f"api-key-{len(self._api_keys) + 1}"
            self._api_keys[key_name] = ApiKey(
                name=key_name,
                value=str(value),
                parameter_name=str(parameter_name),
                parameter_type=parameter_type,
                denied_tables=set(denied_tables),
                expires_at=expires_at,
            )
            return key_name

    def revoke_api_key(self, name: str) -> None:
        with self._lock:
            self._api_keys[name].active = False

    def enable_api_key(self, name: str) -> None:
        with self._lock:
            self._api_keys[name].active = True

    def add_table(self, name: str, records: list[dict[str, Any]] | None = None) -> None:
        with self._lock:
            self._tables[name] = list(records) if records is not None else _sample_records(name)

    def set_latency(self, seconds: float, scope: str = "all") -> None:
        """Seconds added to every call in scope: "all", "token" or "table"."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        with self._lock:
            self._latency[scope] = float(seconds)

    def fail_next(
        self,
        count: int,
        *,
        status: int = 500,
        mode: str = "status",
        retry_after: int | None = None,
        location: str | None = None,
        scope: str = "all",
    ) -> None:
        """The next `count` calls in scope fail: with `status` (and `Retry-After`), with the
        hibernating-instance page (mode "hibernate"), non-JSON bytes ("garbage"), or a redirect
        to `location` ("redirect", status 302 unless a 3xx is given)."""
        if int(count) < 1:
            raise ValueError("count must be at least 1")
        if mode not in FAILURE_MODES:
            raise ValueError(f"mode must be one of {FAILURE_MODES}")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}")
        if mode == "redirect":
            if not location:
                raise ValueError("a redirect needs a location")
            status = status if 300 <= status < 400 else 302
        with self._lock:
            self._failures.append(
                _Failure(int(count), mode, int(status), scope, retry_after, location)
            )

    def set_rate_limit(
        self, max_calls: int | None, window_seconds: float = 3600, retry_after: int | None = None
    ) -> None:
        """At most `max_calls` Table API calls per user per window; None lifts the limit."""
        with self._lock:
            self._rate_windows = {}
            if max_calls is None:
                self._rate_limit = None
                return
            wait = retry_after if retry_after is not None else int(window_seconds)
            self._rate_limit = (int(max_calls), float(window_seconds), wait)

    # ---- what tests read ----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "token_exchanges": {k: dict(v) for k, v in self._token_exchanges.items()},
                "token_rejections": {k: dict(v) for k, v in self._token_rejections.items()},
                "table_calls": dict(self._table_calls),
                "calls": list(self._calls),
            }

    def token_exchanges(self, client_id: str, grant: str | None = None) -> int:
        """Successful token grants for the client (of one grant type, or all)."""
        with self._lock:
            counts = self._token_exchanges.get(client_id, {})
            return counts.get(grant, 0) if grant else sum(counts.values())

    def client(self, client_id: str) -> dict[str, Any]:
        with self._lock:
            return self._clients[client_id].public_view()

    # ---- used by the WSGI app -----------------------------------------------------------

    def latency_for(self, path: str) -> float:
        with self._lock:
            return self._latency["all"] + self._latency[_scope_of(path)]

    def take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for failure in self._failures:
                if _in_scope(failure.scope, path):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
            return None

    def record_call(self, method: str, path: str, status: int, principal: str | None) -> None:
        entry = {"method": method, "path": path, "status": status, "principal": principal}
        with self._lock:
            self._calls.append(entry)
        log.info("servicenow %s %s -> %d (%s)", method, path, status, principal or "-")

    def exchange(self, form: dict[str, str]) -> tuple[int, dict[str, Any], str | None]:
        """Runs one `/oauth_token.do` grant; returns status, body and the client id for the log."""
        grant = form.get("grant_type", "")
        if grant not in ("client_credentials", "refresh_token"):
            return 400, {"error": "unsupported_grant_type"}, None
        with self._lock:
            client = self._authenticated_client(form)
            if client is None or (
                grant == "client_credentials" and not self._properties[CLIENT_CREDENTIALS_PROPERTY]
            ):
                known = form.get("client_id") if form.get("client_id") in self._clients else None
                self._count(self._token_rejections, known, grant)
                return 401, {"error": "server_error", "error_description": "access_denied"}, known
            if grant == "client_credentials":
                return 200, self._client_credentials(client), client.client_id
            return self._refresh(client, form.get("refresh_token", ""))

    def principal_for(self, request: Request) -> _Principal | None:
        with self._lock:
            bearer = self._bearer_principal(request.headers.get("Authorization", ""))
            return bearer or self._api_key_principal(request)

    def table_read(
        self, principal: _Principal, table: str, args: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            limited = self._rate_limited(principal.name)
            if limited is not None:
                return limited
            self._table_calls[table] = self._table_calls.get(table, 0) + 1
            if table not in self._tables:
                detail = f"Invalid table {table}"
                return 404, _error_envelope("No Record found", detail), {}
            if table in principal.denied_tables:
                detail = f"ACL restricts the record retrieval: read access to {table} denied"
                return 403, _error_envelope("User Not Authorized", detail), {}
            records = self._tables[table]
        return 200, *_page(records, args)

    # ---- internals (callers hold the lock) ----------------------------------------------

    def _authenticated_client(self, form: dict[str, str]) -> OAuthClient | None:
        client = self._clients.get(form.get("client_id", ""))
        if client is None or not client.active:
            return None
        given = form.get("client_secret", "").encode()
        if not secrets.compare_digest(given, client.client_secret.encode()):
            return None
        return client

    def _client_credentials(self, client: OAuthClient) -> dict[str, Any]:
        body = self._access_token_body(client)
        if client.issue_refresh_token:
            body["refresh_token"] = self._new_refresh_token(client)
        self._count(self._token_exchanges, client.client_id, "client_credentials")
        return body

    def _refresh(
        self, client: OAuthClient, refresh_token: str
    ) -> tuple[int, dict[str, Any], str | None]:
        stored = self._refresh_tokens.get(refresh_token)
        if (
            stored is None
            or stored.client_id != client.client_id
            or stored.expires_at <= self.now()
        ):
            self._count(self._token_rejections, client.client_id, "refresh_token")
            body = {"error": "invalid_grant", "error_description": "invalid refresh token"}
            return 400, body, client.client_id
        body = self._access_token_body(client)
        if client.rotate_refresh_token:
            del self._refresh_tokens[refresh_token]
            refresh_token = self._new_refresh_token(client)
        body["refresh_token"] = refresh_token
        self._count(self._token_exchanges, client.client_id, "refresh_token")
        return 200, body, client.client_id

    def _access_token_body(self, client: OAuthClient) -> dict[str, Any]:
        now = self.now()
        token, expires_in = None, client.access_token_lifetime
        if client.reuse_token:
            token = self._current_access_token(client.client_id, now)
            if token is not None:
                expires_in = int(self._access_tokens[token].expires_at - now)
        if token is None:
            token = secrets.token_urlsafe(48)
            self._access_tokens[token] = _Token(client.client_id, now + expires_in)
        return {
            "access_token": token,
            "scope": "useraccount",
            "token_type": "Bearer",
            "expires_in": expires_in,
        }

    def _current_access_token(self, client_id: str, now: float) -> str | None:
        valid = [
            (stored.expires_at, token)
            for token, stored in self._access_tokens.items()
            if stored.client_id == client_id and stored.expires_at > now
        ]
        return max(valid)[1] if valid else None

    def _new_refresh_token(self, client: OAuthClient) -> str:
        token = secrets.token_urlsafe(48)
        expires_at = self.now() + client.refresh_token_lifetime
        self._refresh_tokens[token] = _Token(client.client_id, expires_at)
        return token

    def _drop_tokens(self, client_id: str) -> None:
        for tokens in (self._access_tokens, self._refresh_tokens):
            for token in [t for t, stored in tokens.items() if stored.client_id == client_id]:
                del tokens[token]

    def _count(self, counter: dict[str, dict[str, int]], client_id: str | None, grant: str) -> None:
        per_grant = counter.setdefault(client_id or UNKNOWN_CLIENT, {})
        per_grant[grant] = per_grant.get(grant, 0) + 1

    def _bearer_principal(self, authorization: str) -> _Principal | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        stored = self._access_tokens.get(token.strip())
        if stored is None or stored.expires_at <= self.now():
            return None
        client = self._clients.get(stored.client_id)
        if client is None or not client.active:
            return None
        return _Principal(client.client_id, set(client.denied_tables))

    def _api_key_principal(self, request: Request) -> _Principal | None:
        now = self.now()
        for key in self._api_keys.values():
            if key.parameter_type == "header":
                given = request.headers.get(key.parameter_name)
            else:
                given = request.args.get(key.parameter_name)
            if given is None or not secrets.compare_digest(given.encode(), key.value.encode()):
                continue
            if not key.active or (key.expires_at is not None and key.expires_at <= now):
                return None
            return _Principal(key.name, set(key.denied_tables))
        return None

    def _rate_limited(self, principal: str) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        if self._rate_limit is None:
            return None
        max_calls, window, retry_after = self._rate_limit
        now = self.now()
        current = self._rate_windows.get(principal)
        if current is None or now - current.started_at >= window:
            current = self._rate_windows[principal] = _RateWindow(started_at=now)
        current.calls += 1
        if current.calls <= max_calls:
            return None
        detail = f"Rate limit of {max_calls} requests per {int(window)} seconds exceeded"
        headers = {"Retry-After": str(retry_after), "X-RateLimit-Limit": str(max_calls)}
        return 429, _error_envelope("Too Many Requests", detail), headers


def _error_envelope(message: str, detail: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def _int_arg(args: dict[str, str], name: str, default: int) -> int:
    try:
        return max(0, int(args.get(name, default)))
    except ValueError:
        return default


def _page(
    records: list[dict[str, Any]], args: dict[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    offset = _int_arg(args, "sysparm_offset", 0)
    limit = _int_arg(args, "sysparm_limit", DEFAULT_LIMIT)
    chosen = records[offset : offset + limit]
    fields = [name for name in args.get("sysparm_fields", "").split(",") if name.strip()]
    if fields:
        chosen = [{f.strip(): r[f.strip()] for f in fields if f.strip() in r} for r in chosen]
    headers = {}
    if args.get("sysparm_no_count", "false").lower() != "true":
        headers["X-Total-Count"] = str(len(records))
    return {"result": chosen}, headers


# ---- the instance's HTTP side -----------------------------------------------------------


def _unauthenticated() -> Response:
    body = _error_envelope("User Not Authenticated", "Required to provide Auth information")
    return json_reply(body, 401)


def _token_reply(body: dict[str, Any], status: int) -> Response:
    return json_reply(body, status, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def _injected_reply(failure: _Failure) -> Response:
    if failure.mode == "hibernate":
        return Response(HIBERNATION_PAGE, 200, content_type="text/html; charset=utf-8")
    if failure.mode == "garbage":
        return Response(GARBAGE_BODY, 200, content_type="application/json")
    if failure.mode == "redirect":
        return Response("", failure.status, headers={"Location": failure.location or "/"})
    headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
    message = "Too Many Requests" if failure.status == 429 else "Injected failure"
    body = _error_envelope(message, f"the stand-in was told to answer {failure.status}")
    return json_reply(body, failure.status, headers)


class _InstanceApp:
    """The WSGI app: `/oauth_token.do`, `/api/now/table/<table>` and `/_control/...`."""

    def __init__(self, state: ServiceNowState) -> None:
        self.state = state
        self.control = _ControlApi(state)
        self.routes = Map(
            [
                Rule(TOKEN_PATH, endpoint="token", methods=["POST"]),
                Rule("/api/now/table/<table>", endpoint="table", methods=["GET"]),
            ]
        )

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith("/_control/"):
            return self.control.handle(request)(environ, start_response)
        return self.serve(request)(environ, start_response)

    def serve(self, request: Request) -> Response:
        latency = self.state.latency_for(request.path)
        if latency > 0:
            time.sleep(latency)
        principal: str | None = None
        failure = self.state.take_failure(request.path)
        if failure is not None:
            response = _injected_reply(failure)
        else:
            response, principal = self.dispatch(request)
        self.state.record_call(request.method, request.path, response.status_code, principal)
        return response

    def dispatch(self, request: Request) -> tuple[Response, str | None]:
        try:
            endpoint, values = self.routes.bind_to_environ(request.environ).match()
        except HTTPException as error:
            code = error.code or 404
            message = (
                "Method not Supported"
                if code == 405
                else "Requested URI does not represent any resource"
            )
            return json_reply(_error_envelope(message, None), code), None
        if endpoint == "token":
            return self.token(request)
        return self.table(request, values["table"])

    def token(self, request: Request) -> tuple[Response, str | None]:
        form = {name: request.form.get(name, "") for name in request.form}
        if request.authorization and request.authorization.type == "basic":
            form["client_id"] = request.authorization.username or ""
            form["client_secret"] = request.authorization.password or ""
        status, body, client_id = self.state.exchange(form)
        return _token_reply(body, status), client_id

    def table(self, request: Request, table: str) -> tuple[Response, str | None]:
        principal = self.state.principal_for(request)
        if principal is None:
            return _unauthenticated(), None
        status, body, headers = self.state.table_read(principal, table, request.args.to_dict())
        return json_reply(body, status, headers), principal.name


class _ControlApi:
    """JSON, no auth: the same operations as `ServiceNowState`'s methods."""

    def __init__(self, state: ServiceNowState) -> None:
        self.state = state
        self.routes = Map(
            [
                Rule("/_control/clients", endpoint="add_client", methods=["POST"]),
                Rule("/_control/clients/<client_id>", endpoint="get_client", methods=["GET"]),
                Rule("/_control/clients/<client_id>", endpoint="update_client", methods=["PATCH"]),
                Rule("/_control/clients/<client_id>/revoke", endpoint="revoke", methods=["POST"]),
                Rule("/_control/clients/<client_id>/enable", endpoint="enable", methods=["POST"]),
                Rule("/_control/properties", endpoint="properties", methods=["POST"]),
                Rule("/_control/api-keys", endpoint="add_key", methods=["POST"]),
                Rule("/_control/api-keys/<name>/revoke", endpoint="revoke_key", methods=["POST"]),
                Rule("/_control/api-keys/<name>/enable", endpoint="enable_key", methods=["POST"]),
                Rule("/_control/tables", endpoint="add_table", methods=["POST"]),
                Rule("/_control/latency", endpoint="latency", methods=["POST"]),
                Rule("/_control/fail-next", endpoint="fail_next", methods=["POST"]),
                Rule("/_control/rate-limit", endpoint="rate_limit", methods=["POST"]),
                Rule("/_control/clock/advance", endpoint="advance", methods=["POST"]),
                Rule("/_control/reset", endpoint="reset", methods=["POST"]),
                Rule("/_control/stats", endpoint="stats", methods=["GET"]),
            ]
        )

    def handle(self, request: Request) -> Response:
        try:
            endpoint, values = self.routes.bind_to_environ(request.environ).match()
        except HTTPException as error:
            return json_reply({"error": error.name}, error.code or 404)
        try:
            body = json.loads(request.get_data() or b"{}")
        except ValueError:
            return json_reply({"error": "body is not JSON"}, 400)
        if not isinstance(body, dict):
            return json_reply({"error": "body must be a JSON object"}, 400)
        try:
            result, status = getattr(self, f"_{endpoint}")(body, **values)
        except KeyError as error:
            return json_reply({"error": f"not found: {error.args[0]}"}, 404)
        except (TypeError, ValueError) as error:
            return json_reply({"error": str(error)}, 400)
        log.debug("servicenow control %s %s -> %d", request.method, request.path, status)
        return json_reply(result, status)

    def _add_client(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.add_client(**body)
        return self.state.client(body["client_id"]), 201

    def _get_client(self, body: dict[str, Any], client_id: str) -> tuple[Any, int]:
        return self.state.client(client_id), 200

    def _update_client(self, body: dict[str, Any], client_id: str) -> tuple[Any, int]:
        return self.state.update_client(client_id, **body), 200

    def _revoke(self, body: dict[str, Any], client_id: str) -> tuple[Any, int]:
        self.state.revoke_client(client_id)
        return self.state.client(client_id), 200

    def _enable(self, body: dict[str, Any], client_id: str) -> tuple[Any, int]:
        self.state.enable_client(client_id)
        return self.state.client(client_id), 200

    def _properties(self, body: dict[str, Any]) -> tuple[Any, int]:
        for name, value in body.items():
            self.state.set_property(name, value)
        return body, 200

    def _add_key(self, body: dict[str, Any]) -> tuple[Any, int]:
        return {"name": self.state.add_api_key(**body)}, 201

    def _revoke_key(self, body: dict[str, Any], name: str) -> tuple[Any, int]:
        self.state.revoke_api_key(name)
        return {"name": name, "active": False}, 200

    def _enable_key(self, body: dict[str, Any], name: str) -> tuple[Any, int]:
        self.state.enable_api_key(name)
        return {"name": name, "active": True}, 200

    def _add_table(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.add_table(**body)
        return {"name": body["name"]}, 201

    def _latency(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.set_latency(**body)
        return body, 200

    def _fail_next(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.fail_next(**body)
        return body, 200

    def _rate_limit(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.set_rate_limit(**body)
        return body, 200

    def _advance(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.advance_clock(float(body.get("seconds")))
        return {"now": self.state.now()}, 200

    def _reset(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.reset()
        return {}, 200

    def _stats(self, body: dict[str, Any]) -> tuple[Any, int]:
        return self.state.stats(), 200


class ServiceNowStandIn:
    """Serves a `ServiceNowState` over HTTP on a loopback port."""

    def __init__(self, clock: Callable[[], float] = time.time, host: str = "127.0.0.1") -> None:
        self.state = ServiceNowState(clock)
        self.app = _InstanceApp(self.state)
        self._host = host
        self._server: BackgroundServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the ServiceNow stand-in is not started")
        return self._server.url

    def start(self, port: int = 0) -> "ServiceNowStandIn":
        self._server = BackgroundServer(self.app, self._host, port, name="servicenow")
        self._server.start()
        log.info("ServiceNow stand-in on %s", self._server.url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> "ServiceNowStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
