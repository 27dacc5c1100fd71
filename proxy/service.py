"""One proxied call: the connection's credential added last, renew-and-retry on a 401 (OAuth
2.0), one retry of an idempotent call after a short 429/503, and an audit entry for every call
made for a connection that exists."""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from connections import errors
from connections.errors import ApiError
from connections.model import API_TOKEN, Connection, format_millis
from connections.service import Services
from proxy.audit import CallEntry, CallLog
from proxy.paths import check_path
from proxy.relay import (
    filtered_query,
    outbound_headers,
    outbound_url,
    redacted_query,
    relayed_headers,
    retry_after_seconds,
)
from proxy.settings import ProxySettings
from renewal.on_demand import Usage, call_with
from servicenow.credentials import Credential
from servicenow.outbound import OutboundError, OutboundResponse, safe_request

IDEMPOTENT = frozenset({"GET", "PUT", "DELETE"})
RETRIED_STATUSES = frozenset({429, 503})
MAX_AUTOMATION_ID = 200
MAX_AUDIT_PATH = 2048
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Proxy:
    services: Services
    settings: ProxySettings
    calls: CallLog
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class ProxyRequest:
    method: str
    path: str  # the instance path as received (percent-encoding kept), no leading slash
    query: str  # the raw query string
    headers: Mapping[str, str]
    body: bytes
    proxy_base: str  # absolute URL of `.../servicenow/`, for `Link`
    automation_id: str | None = None


@dataclass
class ProxyAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Call:
    proxy: Proxy
    request: ProxyRequest
    usage: Usage
    retries: int = 0  # after a 429 or 503

    @property
    def services(self) -> Services:
        return self.proxy.services

    @property
    def connection(self) -> Connection:
        return self.usage.connection


def call(proxy: Proxy, tenant_id: str, connection_id: str, request: ProxyRequest) -> ProxyAnswer:
    """The instance's answer to relay; raises ApiError for an answer the service makes itself."""
    connection = proxy.services.store.get(tenant_id, connection_id)
    started, started_at = proxy.monotonic(), proxy.services.clock()
    current = _Call(proxy, request, Usage(connection))
    try:
        answer = _call(current)
    except ApiError as exc:
        _audit(current, started, started_at, exc.status, 0, exc.code)
        raise
    _audit(current, started, started_at, answer.status, len(answer.body), None)
    return answer


def _call(current: _Call) -> ProxyAnswer:
    check_path(current.request.path, current.proxy.settings.allowed_paths)
    response, credential = call_with(
        current.services, current.usage, lambda credential: _send(current, credential)
    )
    return _relay(current, response, credential)


def _send(current: _Call, credential: Credential) -> OutboundResponse:
    """One call, and one more for an idempotent method after a 429/503 with a short Retry-After."""
    response = _send_once(current, credential)
    request, settings = current.request, current.proxy.settings
    if request.method not in IDEMPOTENT or response.status_code not in RETRIED_STATUSES:
        return response
    wait = retry_after_seconds(response.headers.get("Retry-After"), current.services.clock())
    if wait is None or wait > settings.max_retry_wait:
        return response
    current.services.sleep(wait)
    current.retries += 1
    return _send_once(current, credential)


def _send_once(current: _Call, credential: Credential) -> OutboundResponse:
    request, settings, connection = current.request, current.proxy.settings, current.connection
    query = filtered_query(request.query, credential.dropped_parameters())
    url = outbound_url(connection.instance_url, request.path, query, credential)
    connect = min(5.0, settings.timeout / 2)
    try:
        return safe_request(
            request.method,
            url,
            policy=current.services.policy,
            headers=outbound_headers(request.headers, credential),
            data=request.body or None,
            timeout=(connect, settings.timeout - connect),
            max_bytes=settings.max_response_bytes,
        )
    except OutboundError as exc:
        raise _outbound_failure(exc) from None


def _outbound_failure(exc: OutboundError) -> ApiError:
    if exc.kind == "timeout":
        return errors.instance_timeout(exc.message)
    if exc.kind == "too_large":
        return errors.response_too_large(exc.message)
    return errors.instance_unreachable(exc.message)


def _relay(current: _Call, response: OutboundResponse, credential: Credential) -> ProxyAnswer:
    headers = relayed_headers(
        response.headers,
        current.connection.instance_url,
        current.request.proxy_base,
        credential.dropped_parameters(),
    )
    return ProxyAnswer(response.status_code, headers, response.content)


def _audit(
    current: _Call,
    started: float,
    started_at: datetime,
    status: int,
    bytes_out: int,
    error_code: str | None,
) -> None:
    request, connection = current.request, current.connection
    dropped = api_token_dropped(connection)
    entry = CallEntry(
        at=format_millis(started_at),
        method=request.method,
        path="/" + _UNPRINTABLE.sub("", request.path)[:MAX_AUDIT_PATH],
        query=redacted_query(request.query, dropped),
        status=status,
        duration_ms=int((current.proxy.monotonic() - started) * 1000),
        bytes_in=len(request.body),
        bytes_out=bytes_out,
        retries=current.retries + current.usage.retries,
        renewed=current.usage.renewed,
        relayed=error_code is None,
        automation_id=clean_automation_id(request.automation_id),
        error_code=error_code,
    )
    current.proxy.calls.record(connection.tenant_id, connection.id, entry)


def api_token_dropped(connection: Connection) -> set[str]:
    name = connection.auth.get("parameter_name", "") if connection.method == API_TOKEN else ""
    return Credential(parameter_name=name).dropped_parameters()


def clean_automation_id(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = _UNPRINTABLE.sub("", value).strip()[:MAX_AUTOMATION_ID]
    return cleaned or None
