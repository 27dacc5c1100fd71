"""HTTP functions of the proxy: call the instance through a connection, list the calls made,
and a daily timer that drops audit tables past their retention."""

import functools
import logging
import re
import urllib.parse
from urllib.parse import urlencode

import azure.functions as func

from connections.api import api_errors, connection_id_of, page_size, tenant_of
from connections.errors import payload_too_large
from connections.http import json_response

# The SDKs are imported on first use, so importing the app (a cold start) stays cheap.

bp = func.Blueprint()
log = logging.getLogger(__name__)

PROXY_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
AUDIT_CLEANUP_SCHEDULE = "0 17 3 * * *"  # daily, 03:17 UTC
# The proxied path as received: the host may decode the route value, the raw URL keeps it.
_PROXIED = re.compile(r"/tenants/[^/]*/connections/[^/]*/servicenow(?:/(.*))?$", re.IGNORECASE)


@functools.cache
def _proxy():
    from connections.clients import table_service
    from connections.services import services
    from proxy.audit import CallLog
    from proxy.service import Proxy
    from proxy.settings import proxy_settings

    settings, assembled = proxy_settings(), services()
    calls = CallLog(table_service(), assembled.clock, settings.audit_days)
    return Proxy(assembled, settings, calls)


def _proxy_request(req: func.HttpRequest):
    from proxy.service import ProxyRequest

    url = urllib.parse.urlsplit(req.url)
    found = _PROXIED.search(url.path)
    if found:
        path = found.group(1) or ""
        base = f"{url.scheme}://{url.netloc}{url.path[: found.start(1) if path else found.end()]}"
    else:  # a host that gives no raw URL: the route value, as the host decoded it
        path = req.route_params.get("path", "")
        base = f"{url.scheme}://{url.netloc}{url.path[: len(url.path) - len(path)]}"
    return ProxyRequest(
        method=req.method.upper(),
        path=path,
        query=url.query,
        headers=dict(req.headers.items()),
        body=req.get_body() or b"",
        proxy_base=base if base.endswith("/") else base + "/",
        automation_id=req.headers.get("X-Automation-Id"),
    )


@bp.function_name("proxy_servicenow")
@bp.route(
    route="tenants/{tenant_id}/connections/{connection_id}/servicenow/{*path}",
    methods=PROXY_METHODS,
)
@api_errors
def proxy_servicenow(req: func.HttpRequest) -> func.HttpResponse:
    from proxy.service import call
    from proxy.settings import MAX_REQUEST_BYTES

    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    if len(req.get_body() or b"") > MAX_REQUEST_BYTES:
        raise payload_too_large(MAX_REQUEST_BYTES)
    answer = call(_proxy(), tenant_id, connection_id, _proxy_request(req))
    return func.HttpResponse(answer.body, status_code=answer.status, headers=answer.headers)


@bp.function_name("list_proxy_calls")
@bp.route(route="tenants/{tenant_id}/connections/{connection_id}/calls", methods=["GET"])
@api_errors
def list_proxy_calls(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    limit = page_size(req)
    proxy = _proxy()
    proxy.services.store.get(tenant_id, connection_id)  # 404 for another tenant's or none
    items, cursor = proxy.calls.recent(tenant_id, connection_id, limit, req.params.get("cursor"))
    next_url = None
    if cursor:
        query = urlencode({"limit": limit, "cursor": cursor})
        next_url = f"/api/tenants/{tenant_id}/connections/{connection_id}/calls?{query}"
    return json_response({"items": items, "next": next_url})


@bp.function_name("proxy_audit_cleanup")
@bp.timer_trigger(arg_name="timer", schedule=AUDIT_CLEANUP_SCHEDULE, use_monitor=True)
def proxy_audit_cleanup(timer: func.TimerRequest) -> None:
    dropped = _proxy().calls.drop_expired()
    log.info("proxy audit: %d day tables past retention dropped", len(dropped))
