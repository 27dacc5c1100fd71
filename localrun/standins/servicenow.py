"""A ServiceNow instance stand-in: `/oauth_token.do`, REST API keys and the Table API.

It speaks the instance's wire formats so the production client runs unchanged against it, and a
control API under `/_control/` (and the same operations as methods of `ServiceNowState`) lets
tests and the demo add or revoke OAuth clients and API keys, inject latency and failures, create
and change records (late commits included), and read what was called. Time comes from an
injectable clock so tests can expire tokens at will. This module holds the HTTP routing, auth,
ACLs, rate limits and the control API; the records are in `servicenow_tables`, the Table API's
answers in `servicenow_table_api`, encoded queries in `encoded_query` and the request log in
`servicenow_requests`. Nothing here ever logs a secret, a token or a query string, and the
request log masks every credential the instance knows.
"""

import json
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from localrun.server import BackgroundServer, json_reply
from localrun.standins import servicenow_table_api as table_api
from localrun.standins.servicenow_requests import RequestLog
from localrun.standins.servicenow_table_api import TableAnswer, TableRequest, error_envelope
from localrun.standins.servicenow_tables import (
    SYSTEM_USER,
    StoredRecord,
    Table,
    Tables,
    Write,
    stored_time,
    sys_id_for,
)

log = logging.getLogger(__name__)

CLIENT_CREDENTIALS_PROPERTY = "glide.oauth.inbound.client.credential.grant_type.enabled"
DEFAULT_ACCESS_TOKEN_LIFETIME = 1799
DEFAULT_REFRESH_TOKEN_LIFETIME = 8_640_000  # 100 days, the instance default
DEFAULT_API_KEY_PARAMETER = "x-sn-apikey"
SCOPES = ("all", "token", "table")
FAILURE_MODES = ("status", "hibernate", "garbage", "redirect")
PARAMETER_TYPES = ("header", "query")
MAX_LOGGED_CALLS = 1000
TOKEN_PATH = "/oauth_token.do"
RECORDS = "/_control/tables/<table>/records"
TABLE_PATHS = ("/api/now/table", "/api/now/<any(v1, v2):version>/table")
ACCESS = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "write", "PATCH": "write"}
RATE_LIMIT_RULE = sys_id_for("sys_rate_limit_rules", 0)  # the rule a 429 names
INJECTED_RATE_LIMIT = 100  # the limit an injected 429 states when no rate limit is set
API_KEY_SETTINGS = frozenset(
    {"value", "parameter_name", "parameter_type", "denied_tables", "expires_at", "active"}
)
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

    def public_view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parameter_name": self.parameter_name,
            "parameter_type": self.parameter_type,
            "denied_tables": sorted(self.denied_tables),
            "expires_at": self.expires_at,
            "active": self.active,
        }


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


def _rate_headers(limit: int, reset_at: float) -> dict[str, str]:
    """What an instance's rate limit rule adds to the answers it counts."""
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Reset": str(math.ceil(reset_at)),
        "X-RateLimit-Rule": RATE_LIMIT_RULE,
    }


def _per(window: float) -> str:
    return "hour" if window == 3600 else f"{int(window)} seconds"


def _commit_at(visible: bool, visible_after: float | None) -> float | None:
    """When a control write becomes visible: at once, at a stand-in time, or when told."""
    if visible_after is not None:
        return float(visible_after)
    return None if visible else math.inf


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
            self._retired: dict[str, str] = {}  # credentials no longer valid -> their owner
            self._api_keys: dict[str, ApiKey] = {}
            self._access_tokens: dict[str, _Token] = {}
            self._refresh_tokens: dict[str, _Token] = {}
            self._tables = Tables(self.now())
            self._properties: dict[str, Any] = {CLIENT_CREDENTIALS_PROPERTY: True}
            self._latency = {"all": 0.0, "token": 0.0, "table": 0.0}
            self._failures: list[_Failure] = []
            self._rate_limit: tuple[int, float, int | None] | None = None
            self._rate_windows: dict[str, _RateWindow] = {}
            self._token_exchanges: dict[str, dict[str, int]] = {}
            self._token_rejections: dict[str, dict[str, int]] = {}
            self._table_calls: dict[str, int] = {}
            self._calls: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_CALLS)
            self._requests = RequestLog()

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
            if client.client_id in self._clients:
                self._retire(self._clients[client.client_id].client_secret, client.client_id)
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
                if name == "client_secret":
                    self._retire(client.client_secret, client_id)
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
            if key_name in self._api_keys:
                self._retire(self._api_keys[key_name].value, key_name)
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

    def update_api_key(self, name: str, **changes: Any) -> dict[str, Any]:
        """Changes any of the key's settings (the add_api_key keywords, `value` or `active`);
        `denied_tables` changes which tables answer 403 from the next call on."""
        with self._lock:
            key = self._api_keys[name]
            for setting, value in changes.items():
                if setting not in API_KEY_SETTINGS:
                    raise ValueError(f"unknown API key setting: {setting}")
                if setting == "parameter_type" and value not in PARAMETER_TYPES:
                    raise ValueError(f"parameter_type must be one of {PARAMETER_TYPES}")
                if setting == "denied_tables":
                    value = set(value)
                if setting == "value":
                    self._retire(key.value, name)
                setattr(key, setting, value)
            return key.public_view()

    def api_key(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._api_keys[name].public_view()

    def revoke_access_tokens(self, client_id: str, refresh_tokens: bool = False) -> dict[str, int]:
        """Invalidates the client's current access tokens (and refresh tokens, if asked) while
        the client stays active: the next call with an old token is 401, a new grant works."""
        with self._lock:
            if client_id not in self._clients:
                raise KeyError(client_id)
            revoked = {"access_tokens": self._drop(self._access_tokens, client_id)}
            if refresh_tokens:
                revoked["refresh_tokens"] = self._drop(self._refresh_tokens, client_id)
            return revoked

    def add_table(self, name: str, records: list[dict[str, Any]] | None = None) -> None:
        """A table holding the given records as they are (default: a few sample records)."""
        with self._lock:
            self._tables.add_table(name, records, self.now())

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
        """The next `count` calls in scope fail: with `status` (and `Retry-After`; a 429 with
        `retry_after` also carries a rate limit rule's `X-RateLimit-*` headers, one without is
        the semaphore kind, with none), with the hibernating-instance page (mode "hibernate"),
        non-JSON bytes ("garbage"), or a redirect to `location` ("redirect", status 302 unless
        a 3xx is given)."""
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
        """At most `max_calls` Table API calls per user per window; None lifts the limit.
        A 429 says `Retry-After: retry_after`, or the seconds until the window ends."""
        with self._lock:
            self._rate_windows = {}
            if max_calls is None:
                self._rate_limit = None
                return
            wait = int(retry_after) if retry_after is not None else None
            self._rate_limit = (int(max_calls), float(window_seconds), wait)

    # ---- records --------------------------------------------------------------------------

    def create_records(
        self,
        table: str,
        fields: dict[str, Any] | None = None,
        *,
        count: int = 1,
        sys_created_on: str | float | None = None,
        sys_updated_on: str | float | None = None,
        visible: bool = True,
        visible_after: float | None = None,
    ) -> list[str]:
        """Creates `count` records sharing the given fields (fields the table lacks are added to
        it; `variables` is a name -> value object); returns their sys_ids. Times are stored text
        or epoch seconds (default: now). `visible=False` holds them back until `make_visible`,
        `visible_after` until that stand-in time: a late commit."""
        if int(count) < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            target = self._tables.table(table)
            write = self._control_write(fields, sys_updated_on, visible, visible_after)
            if sys_created_on is not None:
                write.created_on = stored_time(sys_created_on)
            inserted = [self._tables.insert(target, write, extend=True) for _ in range(int(count))]
            return [record.sys_id for record in inserted]

    def update_records(
        self,
        table: str,
        fields: dict[str, Any] | None = None,
        *,
        sys_ids: list[str] | None = None,
        query: str | None = None,
        sys_updated_on: str | float | None = None,
        visible: bool = True,
        visible_after: float | None = None,
    ) -> list[str]:
        """Sets fields on the records named, or matching the encoded query, as a script would:
        each gets `sys_mod_count` + 1 and `sys_updated_on` = now (or the time given), even when
        no value changes. Held back like `create_records`; readers see the old version until
        then. Returns the sys_ids updated."""
        with self._lock:
            target = self._tables.table(table)
            chosen = self._chosen(target, sys_ids, query)
            write = self._control_write(fields, sys_updated_on, visible, visible_after)
            write.force = True
            for record in chosen:
                self._tables.update(record, target, write, extend=True)
            return [record.sys_id for record in chosen]

    def make_visible(self, table: str, sys_ids: list[str] | None = None) -> list[str]:
        """Commits the held-back writes of the records named (default: all of the table's)."""
        with self._lock:
            records = self._tables.table(table).records
            chosen = (
                [records[sys_id] for sys_id in sys_ids] if sys_ids is not None else records.values()
            )
            held = [record for record in chosen if record.pending is not None]
            for record in held:
                record.commit()
            return [record.sys_id for record in held]

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

    def record(self, table: str, sys_id: str) -> dict[str, Any]:
        """A record as readers see it now (`fields`, None if not yet visible), its held-back
        version (`pending`, visible from `visible_after`; null: when told) and its journal."""
        with self._lock:
            stored = self._tables.table(table).records[sys_id]
            return _record_view(stored, self.now())

    def list_records(self, table: str, query: str = "", limit: int | None = None) -> dict[str, Any]:
        """The visible records matching the encoded query: their count and (the first `limit`
        of) them, as `record()` shows them."""
        with self._lock:
            target = self._tables.table(table)
            rows = self._tables.select(target, query, self.now())
            shown = rows if limit is None else rows[: int(limit)]
            views = [_record_view(target.records[row["sys_id"]], self.now()) for row in shown]
            return {"count": len(rows), "records": views}

    def count_records(self, table: str, query: str = "") -> int:
        with self._lock:
            return len(self._tables.select(self._tables.table(table), query, self.now()))

    def requests(self) -> list[dict[str, Any]]:
        """Every request the instance received (control calls aside), oldest first."""
        with self._lock:
            return self._requests.entries()

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

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

    def failure_headers(self, failure: _Failure) -> dict[str, str]:
        """`Retry-After` if given; for a 429 with it, also the rate limit rule's headers."""
        if failure.retry_after is None:
            return {}
        headers = {"Retry-After": str(failure.retry_after)}
        if failure.status == 429:
            with self._lock:
                limit = self._rate_limit[0] if self._rate_limit else INJECTED_RATE_LIMIT
                headers.update(_rate_headers(limit, self.now() + failure.retry_after))
        return headers

    def record_call(self, method: str, path: str, status: int, principal: str | None) -> None:
        entry = {"method": method, "path": path, "status": status, "principal": principal}
        with self._lock:
            self._calls.append(entry)
        log.info("servicenow %s %s -> %d (%s)", method, path, status, principal or "-")

    def log_request(
        self, request: Request, status: int, principal: str | None, body_size: int
    ) -> None:
        """Adds the request to the request log, every credential in it masked."""
        with self._lock:
            self._requests.record(
                request,
                at=self.now(),
                status=status,
                principal=principal,
                body_size=body_size,
                credentials=self._credentials(),
            )

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

    def table_call(self, principal: _Principal, request: TableRequest) -> TableAnswer:
        """One Table API call: rate limit, then table, then ACL, then the Table API itself."""
        with self._lock:
            limited, rate_headers = self._rate_check(principal.name)
            if limited is not None:
                return limited
            self._table_calls[request.table] = self._table_calls.get(request.table, 0) + 1
            answer = self._authorised_answer(principal, request)
            answer.headers.update(rate_headers)
            return answer

    # ---- internals (callers hold the lock) ----------------------------------------------

    def _authorised_answer(self, principal: _Principal, request: TableRequest) -> TableAnswer:
        if not self._tables.has(request.table):
            return TableAnswer(400, error_envelope(f"Invalid table {request.table}", None))
        if request.table in principal.denied_tables:
            access = ACCESS.get(request.method, "delete")
            detail = (
                f"ACL restricts the record retrieval: {access} access to {request.table} denied"
            )
            return TableAnswer(403, error_envelope("User Not Authorized", detail))
        return table_api.answer(self._tables, request, self.now())

    def _control_write(
        self,
        fields: dict[str, Any] | None,
        updated_on: str | float | None,
        visible: bool,
        visible_after: float | None,
    ) -> Write:
        if fields is not None and not isinstance(fields, dict):
            raise ValueError("fields must be an object")
        return Write(
            values=dict(fields or {}),
            by=SYSTEM_USER,
            now=self.now(),
            updated_on=stored_time(updated_on) if updated_on is not None else None,
            commit_at=_commit_at(visible, visible_after),
        )

    def _chosen(
        self, table: Table, sys_ids: list[str] | None, query: str | None
    ) -> list[StoredRecord]:
        if sys_ids is not None:
            return [table.records[sys_id] for sys_id in sys_ids]
        if query is None:
            raise ValueError("name the records: sys_ids or query")
        return [
            table.records[row["sys_id"]] for row in self._tables.select(table, query, self.now())
        ]

    def _credentials(self) -> dict[str, str]:
        """Every credential the instance knows or once knew -> whose it is."""
        known = dict(self._retired)
        known.update({c.client_secret: c.client_id for c in self._clients.values()})
        known.update({k.value: k.name for k in self._api_keys.values()})
        for tokens in (self._access_tokens, self._refresh_tokens):
            known.update({token: stored.client_id for token, stored in tokens.items()})
        known.pop("", None)
        return known

    def _retire(self, credential: str, owner: str) -> None:
        """Remembers a credential that stops working, so the request log still masks it."""
        self._retired[credential] = owner

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
            self._retire(refresh_token, client.client_id)
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
            self._drop(tokens, client_id)

    def _drop(self, tokens: dict[str, _Token], client_id: str) -> int:
        """Forgets (and retires) the client's tokens of one kind; returns how many."""
        dropped = [token for token, stored in tokens.items() if stored.client_id == client_id]
        for token in dropped:
            del tokens[token]
            self._retire(token, client_id)
        return len(dropped)

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

    def _rate_check(self, principal: str) -> tuple[TableAnswer | None, dict[str, str]]:
        """Counts the call; returns the 429 answer when over the limit, and the rule's headers
        every answer under a rate limit carries."""
        if self._rate_limit is None:
            return None, {}
        max_calls, window, retry_after = self._rate_limit
        now = self.now()
        current = self._rate_windows.get(principal)
        if current is None or now - current.started_at >= window:
            current = self._rate_windows[principal] = _RateWindow(started_at=now)
        current.calls += 1
        reset_at = current.started_at + window
        headers = _rate_headers(max_calls, reset_at)
        if current.calls <= max_calls:
            return None, headers
        wait = retry_after if retry_after is not None else math.ceil(reset_at - now)
        detail = f"Rate limit of {max_calls} requests per {_per(window)} for Table API exceeded"
        body = error_envelope("Rate limit exceeded", detail)
        return TableAnswer(429, body, {"Retry-After": str(wait), **headers}), headers


def _record_view(record: StoredRecord, now: float) -> dict[str, Any]:
    return {
        "sys_id": record.sys_id,
        "fields": record.visible(now),
        "pending": record.pending,
        "visible_after": record.commit_at
        if record.pending and record.commit_at < math.inf
        else None,
        "journal": list(record.journal),
    }


# ---- the instance's HTTP side -----------------------------------------------------------


def _unauthenticated() -> Response:
    body = error_envelope("User Not Authenticated", "Required to provide Auth information")
    return json_reply(body, 401)


def _token_reply(body: dict[str, Any], status: int) -> Response:
    return json_reply(body, status, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def _injected_reply(failure: _Failure, headers: dict[str, str]) -> Response:
    if failure.mode == "hibernate":
        return Response(HIBERNATION_PAGE, 200, content_type="text/html; charset=utf-8")
    if failure.mode == "garbage":
        return Response(GARBAGE_BODY, 200, content_type="application/json")
    if failure.mode == "redirect":
        return Response("", failure.status, headers={"Location": failure.location or "/"})
    message = "Rate limit exceeded" if failure.status == 429 else "Injected failure"
    body = error_envelope(message, f"the stand-in was told to answer {failure.status}")
    return json_reply(body, failure.status, headers)


def _table_reply(answer: TableAnswer) -> Response:
    if answer.body is not None:
        return json_reply(answer.body, answer.status, answer.headers)
    response = Response(b"", answer.status, headers=answer.headers)
    del response.headers["Content-Type"]
    return response


def _table_request(request: Request, values: dict[str, Any], principal: str) -> TableRequest:
    """What the Table API needs of the request, its URL as received."""
    instance_url = f"{request.scheme}://{request.host}"
    path = urlsplit(request.environ.get("RAW_URI", "")).path or request.path
    return TableRequest(
        method=request.method,
        table=values["table"],
        sys_id=values.get("sys_id"),
        version=values.get("version"),
        args=request.args.to_dict(),
        raw_query=request.query_string.decode("latin-1"),
        url=instance_url + path,
        instance_url=instance_url,
        body=request.get_data(),
        principal=principal,
        no_response_body=request.headers.get("X-no-response-body", "").lower() == "true",
    )


def _routes() -> Map:
    rules = [Rule(TOKEN_PATH, endpoint="token", methods=["POST"])]
    for prefix in TABLE_PATHS:
        rules.append(Rule(f"{prefix}/<table>", endpoint="table", methods=["GET", "POST"]))
        rules.append(
            Rule(
                f"{prefix}/<table>/<sys_id>",
                endpoint="table",
                methods=["GET", "PUT", "PATCH", "DELETE"],
            )
        )
    return Map(rules)


class _InstanceApp:
    """The WSGI app: `/oauth_token.do`, `/api/now/table/<table>` and `/_control/...`."""

    def __init__(self, state: ServiceNowState) -> None:
        self.state = state
        self.control = _ControlApi(state)
        self.routes = _routes()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith("/_control/"):
            return self.control.handle(request)(environ, start_response)
        return self.serve(request)(environ, start_response)

    def serve(self, request: Request) -> Response:
        body_size = len(request.get_data(cache=True))  # kept: the form is parsed from it
        latency = self.state.latency_for(request.path)
        if latency > 0:
            time.sleep(latency)
        principal: str | None = None
        failure = self.state.take_failure(request.path)
        if failure is not None:
            response = _injected_reply(failure, self.state.failure_headers(failure))
        else:
            response, principal = self.dispatch(request)
        self.state.record_call(request.method, request.path, response.status_code, principal)
        self.state.log_request(request, response.status_code, principal, body_size)
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
            return json_reply(error_envelope(message, None), code), None
        if endpoint == "token":
            return self.token(request)
        return self.table(request, values)

    def token(self, request: Request) -> tuple[Response, str | None]:
        form = {name: request.form.get(name, "") for name in request.form}
        if request.authorization and request.authorization.type == "basic":
            form["client_id"] = request.authorization.username or ""
            form["client_secret"] = request.authorization.password or ""
        status, body, client_id = self.state.exchange(form)
        return _token_reply(body, status), client_id

    def table(self, request: Request, values: dict[str, Any]) -> tuple[Response, str | None]:
        principal = self.state.principal_for(request)
        if principal is None:
            return _unauthenticated(), None
        answer = self.state.table_call(principal, _table_request(request, values, principal.name))
        return _table_reply(answer), principal.name


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
                Rule(
                    "/_control/clients/<client_id>/revoke-tokens",
                    endpoint="revoke_tokens",
                    methods=["POST"],
                ),
                Rule("/_control/properties", endpoint="properties", methods=["POST"]),
                Rule("/_control/api-keys", endpoint="add_key", methods=["POST"]),
                Rule("/_control/api-keys/<name>/revoke", endpoint="revoke_key", methods=["POST"]),
                Rule("/_control/api-keys/<name>/enable", endpoint="enable_key", methods=["POST"]),
                Rule("/_control/api-keys/<name>", endpoint="get_key", methods=["GET"]),
                Rule("/_control/api-keys/<name>", endpoint="update_key", methods=["PATCH"]),
                Rule("/_control/tables", endpoint="add_table", methods=["POST"]),
                Rule(f"{RECORDS}", endpoint="create_records", methods=["POST"]),
                Rule(f"{RECORDS}", endpoint="list_records", methods=["GET"]),
                Rule(f"{RECORDS}/update", endpoint="update_records", methods=["POST"]),
                Rule(f"{RECORDS}/make-visible", endpoint="make_visible", methods=["POST"]),
                Rule(f"{RECORDS}/<sys_id>", endpoint="get_record", methods=["GET"]),
                Rule("/_control/requests", endpoint="requests", methods=["GET"]),
                Rule("/_control/requests/clear", endpoint="clear_requests", methods=["POST"]),
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
        if request.method == "GET":
            body = {**request.args.to_dict(), **body}
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

    def _revoke_tokens(self, body: dict[str, Any], client_id: str) -> tuple[Any, int]:
        return self.state.revoke_access_tokens(client_id, **body), 200

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

    def _get_key(self, body: dict[str, Any], name: str) -> tuple[Any, int]:
        return self.state.api_key(name), 200

    def _update_key(self, body: dict[str, Any], name: str) -> tuple[Any, int]:
        return self.state.update_api_key(name, **body), 200

    def _create_records(self, body: dict[str, Any], table: str) -> tuple[Any, int]:
        return {"sys_ids": self.state.create_records(table, **body)}, 201

    def _list_records(self, body: dict[str, Any], table: str) -> tuple[Any, int]:
        return self.state.list_records(table, **body), 200

    def _update_records(self, body: dict[str, Any], table: str) -> tuple[Any, int]:
        return {"sys_ids": self.state.update_records(table, **body)}, 200

    def _make_visible(self, body: dict[str, Any], table: str) -> tuple[Any, int]:
        return {"sys_ids": self.state.make_visible(table, **body)}, 200

    def _get_record(self, body: dict[str, Any], table: str, sys_id: str) -> tuple[Any, int]:
        return self.state.record(table, sys_id), 200

    def _requests(self, body: dict[str, Any]) -> tuple[Any, int]:
        return {"requests": self.state.requests()}, 200

    def _clear_requests(self, body: dict[str, Any]) -> tuple[Any, int]:
        self.state.clear_requests()
        return {}, 200

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
