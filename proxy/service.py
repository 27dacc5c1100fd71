"""One proxied call: the connection's credential added last, renew-and-retry on a 401 (OAuth
2.0), one retry of an idempotent call after a short 429/503, and an audit entry for every call
made for a connection that exists."""

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from connections import errors
from connections.errors import ApiError
from connections.model import API_TOKEN, Connection, format_time
from connections.service import Services
from proxy.audit import CallEntry, CallLog
from proxy.paths import check_path
from proxy.relay import (
    Credential,
    api_token_credential,
    bearer_credential,
    filtered_query,
    outbound_headers,
    outbound_url,
    redacted_query,
    relayed_headers,
    retry_after_seconds,
)
from proxy.settings import ProxySettings
from renewal.on_demand import check_rejected, renew_rejected, token_usable, unusable_reason
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
class _Trace:
    retries: int = 0
    renewed: bool = False


@dataclass
class _Call:
    proxy: Proxy
    request: ProxyRequest
    connection: Connection
    trace: _Trace = field(default_factory=_Trace)

    @property
    def services(self) -> Services:
        return self.proxy.services


def call(proxy: Proxy, tenant_id: str, connection_id: str, request: ProxyRequest) -> ProxyAnswer:
    """The instance's answer to relay; raises ApiError for an answer the service makes itself."""
    connection = proxy.services.store.get(tenant_id, connection_id)
    started, started_at = proxy.monotonic(), proxy.services.clock()
    current = _Call(proxy, request, connection)
    try:
        answer = _call(current)
    except ApiError as exc:
        _audit(current, started, started_at, exc.status, 0, exc.code)
        raise
    _audit(current, started, started_at, answer.status, len(answer.body), None)
    return answer


def _call(current: _Call) -> ProxyAnswer:
    settings, request = current.proxy.settings, current.request
    check_path(request.path, settings.allowed_paths)
    reason = unusable_reason(current.connection, current.services.clock())
    if reason:
        raise errors.connection_unusable(reason)
    if current.connection.method == API_TOKEN:
        response, credential = _call_with_api_token(current)
    else:
        response, credential = _call_with_oauth(current)
    return _relay(current, response, credential)


def _call_with_api_token(current: _Call) -> tuple[OutboundResponse, Credential]:
    connection = current.connection
    token = current.services.secrets.get(
        connection.id, "api_token", connection.secret_versions.get("api_token")
    )
    auth = connection.auth
    credential = api_token_credential(token, auth["parameter_name"], auth["parameter_type"])
    response = _send(current, credential)
    if response.status_code == 401:
        check_rejected(current.services, connection)
    return response, credential


def _call_with_oauth(current: _Call) -> tuple[OutboundResponse, Credential]:
    services, connection = current.services, current.connection
    if not token_usable(connection, services.clock()):
        connection = _renew(current, connection.secret_versions.get("access_token"))
        if not token_usable(connection, services.clock()):
            raise _not_renewed(connection, services.clock())
    version = connection.secret_versions["access_token"]
    credential = bearer_credential(services.secrets.get(connection.id, "access_token", version))
    response = _send(current, credential)
    if response.status_code != 401:
        return response, credential
    renewed = _renew(current, version, refused=True)
    new_version = renewed.secret_versions.get("access_token")
    if new_version == version or not token_usable(renewed, services.clock()):
        reason = unusable_reason(renewed, services.clock())
        if reason:
            raise errors.connection_unusable(reason)
        return response, credential
    credential = bearer_credential(services.secrets.get(renewed.id, "access_token", new_version))
    current.trace.retries += 1
    response = _send(current, credential)
    if response.status_code == 401:
        check_rejected(services, renewed)
    return response, credential


def _renew(current: _Call, rejected_version: str | None, *, refused: bool = False) -> Connection:
    connection = current.connection
    renewed = renew_rejected(
        current.services, connection.tenant_id, connection.id, rejected_version, refused=refused
    )
    if renewed.secret_versions.get("access_token") != rejected_version:
        current.trace.renewed = True
    current.connection = renewed
    return renewed


def _not_renewed(connection: Connection, now: datetime) -> ApiError:
    reason = unusable_reason(connection, now)
    if reason:
        return errors.connection_unusable(reason)
    return errors.instance_unreachable(
        "The connection's access token has expired and could not be renewed just now "
        f"({connection.status_detail}). Try again shortly."
    )


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
    current.trace.retries += 1
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
        at=_millis(started_at),
        method=request.method,
        path="/" + _UNPRINTABLE.sub("", request.path)[:MAX_AUDIT_PATH],
        query=redacted_query(request.query, dropped),
        status=status,
        duration_ms=int((current.proxy.monotonic() - started) * 1000),
        bytes_in=len(request.body),
        bytes_out=bytes_out,
        retries=current.trace.retries,
        renewed=current.trace.renewed,
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


def _millis(moment: datetime) -> str:
    text = format_time(moment) or ""
    return text[:-1] + f".{moment.microsecond // 1000:03d}Z"
