"""The proxy's part of the OpenAPI document: the relayed route and the audit of calls."""

from typing import Any

from connections.openapi import (
    _array,
    _nullable,
    _object,
    _operation,
    _parameter,
    _parameter_refs,
    _ref,
    _response,
    _timestamp,
)
from proxy.relay import FORWARDED_REQUEST_HEADERS, RELAYED_RESPONSE_HEADERS
from proxy.settings import DEFAULT_ALLOWED_PATHS, MAX_REQUEST_BYTES

Schema = dict[str, Any]
TAG = "proxy"

PROXY_DESCRIPTION = f"""\
Calls the connection's instance at `/{{path}}` (the query string is passed on) with the
connection's credential, added last; the caller never holds it.

- Only paths under `PROXY_ALLOWED_PATHS` (default `{DEFAULT_ALLOWED_PATHS}`) are called, each also
  with a version segment after its namespace (`api/now/v2/table/`); prefixes match whole segments.
  A path with `.` or `..` segments, `//`, a backslash, a control character or a percent-encoded
  `/`, `\\` or `.` is 400 (field `path`), never normalised.
- Forwarded request headers: {", ".join(f"`{h}`" for h in FORWARDED_REQUEST_HEADERS)}. The
  caller's `Authorization`, `Cookie`, the connection's parameter name (header or query),
  `x-functions-key` and `code` are dropped. Body at most {MAX_REQUEST_BYTES // 1048576} MiB.
- The answer relays the instance's status and body with the headers
  {", ".join(f"`{h}`" for h in RELAYED_RESPONSE_HEADERS)} and `Link` (rewritten to point at this
  route), and always `X-Relayed-From: servicenow`. An answer the service makes itself never has
  that header and carries the error body below, so a 404 of the instance and of the service are
  told apart.
- OAuth 2.0: a 401 renews the token (one exchange per connection, however many calls failed) and
  retries once. API token, or a second 401: the 401 is relayed and the connection is checked.
- 429 or 503: `GET`, `PUT` and `DELETE` are retried once when `Retry-After` is at most
  `PROXY_MAX_RETRY_WAIT_SECONDS`; otherwise relayed with `Retry-After`. `POST` and `PATCH` never.
- Every call is recorded (see `listProxyCalls`), bodies never.
"""

RELAYED = {
    "description": "The instance's answer, relayed with its status (any status) and body; "
    "`X-Relayed-From: servicenow` says so.",
    "headers": {"X-Relayed-From": {"$ref": "#/components/headers/RelayedFrom"}},
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/RelayedAnswer"}},
        "*/*": {"schema": {}},
    },
}


def parameters() -> dict[str, Schema]:
    return {
        "ProxyPath": _parameter(
            "path",
            "path",
            {"type": "string"},
            "The instance's REST path without the leading slash, e.g. `api/now/table/incident` "
            "(its slashes are part of the value).",
            True,
        ),
        "AutomationId": _parameter(
            "X-Automation-Id",
            "header",
            {"type": "string"},
            "Optional: the calling automation, recorded with the call (its first 200 "
            "characters, control characters removed).",
            False,
        ),
    }


def headers() -> dict[str, Schema]:
    return {
        "RelayedFrom": {
            "description": "`servicenow` on every answer relayed from the instance; absent on "
            "answers the service makes itself.",
            "required": True,
            "schema": {"type": "string", "const": "servicenow"},
        }
    }


def schemas() -> dict[str, Schema]:
    call = _object(
        {
            "at": _timestamp("When the call came in (UTC, milliseconds)."),
            "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
            "path": {"type": "string", "description": "The instance path, as called."},
            "query": {
                "type": "string",
                "description": "The query string as forwarded; credentials never appear.",
            },
            "status": {"type": "integer", "description": "The status the caller got."},
            "duration_ms": {"type": "integer", "minimum": 0},
            "bytes_in": {"type": "integer", "minimum": 0, "description": "Request body bytes."},
            "bytes_out": {"type": "integer", "minimum": 0, "description": "Answer body bytes."},
            "retries": {"type": "integer", "minimum": 0},
            "renewed": {"type": "boolean", "description": "An OAuth token renewal happened."},
            "relayed": {
                "type": "boolean",
                "description": "The instance's answer was relayed (false: the service answered).",
            },
            "automation_id": _nullable({"type": "string"}),
            "error_code": _nullable({"type": "string"}),
        },
        description="One proxied call. Bodies are never recorded.",
    )
    return {
        "RelayedAnswer": {
            "description": "The instance's body as it sent it (ServiceNow's `{\"result\": ...}` "
            'or `{"error": {...}, "status": "failure"}`, or anything else it sent).',
        },
        "ProxyCall": call,
        "ProxyCallList": _object(
            {
                "items": _array(_ref("ProxyCall"), "Newest first."),
                "next": _nullable({"type": "string", "description": "The next page's URL."}),
            }
        ),
    }


# status -> (codes the service answers with itself, what they mean); the instance's own answer
# with the same status is relayed too, with `X-Relayed-From: servicenow`.
_OWN_ERRORS = {
    "400": (["validation_error"], "The path (field `path`), tenant or connection id is not valid."),
    "401": ([], "No or wrong function key (the host answers, no body)."),
    "403": (["path_not_allowed"], "The path is outside `PROXY_ALLOWED_PATHS`."),
    "404": (["not_found"], "No such connection for this tenant."),
    "409": (
        ["connection_unusable"],
        "The connection's credentials are known not to work (`invalid_credentials`, `expired`, "
        "or `renewal_failed` with no unexpired token); the instance was not called. The message "
        "names the status and what to do.",
    ),
    "413": (["payload_too_large"], f"Body over {MAX_REQUEST_BYTES // 1048576} MiB."),
    "502": (
        ["instance_unreachable", "response_too_large"],
        "The instance could not be reached, or its answer is over `PROXY_MAX_RESPONSE_BYTES`.",
    ),
    "503": (["service_unavailable"], "Table Storage or Key Vault is unavailable."),
    "504": (["instance_timeout"], "No answer within `PROXY_TIMEOUT_SECONDS`."),
}


def _own_or_relayed(codes: list[str], meaning: str) -> Schema:
    """The service's error with this status, or the instance's answer with it, relayed."""
    relayed = {"$ref": "#/components/schemas/RelayedAnswer"}
    if codes:
        narrowed = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
        schema = {"anyOf": [{"allOf": [_ref("Error"), narrowed]}, relayed]}
    else:
        schema = relayed
    return {
        "description": f"{meaning} Or the instance's own answer with this status, relayed "
        "(then with `X-Relayed-From: servicenow`).",
        "content": {"application/json": {"schema": schema}, "*/*": {"schema": {}}},
    }


def _proxy_operation(method: str, with_body: bool) -> Schema:
    request = None
    if with_body:
        request = {
            "required": False,
            "content": {"application/json": {"schema": {}}, "*/*": {"schema": {}}},
        }
    operation = _operation(
        f"proxy{method.capitalize()}",
        f"{method.upper()} on the instance through the connection",
        {"default": RELAYED},
        [],
        description=PROXY_DESCRIPTION,
        parameters=_parameter_refs("AutomationId"),
        request=request,
        tags=[TAG],
    )
    for status, (codes, meaning) in _OWN_ERRORS.items():
        operation["responses"][status] = _own_or_relayed(codes, meaning)
    return operation


def paths() -> dict[str, Schema]:
    proxied = {"parameters": _parameter_refs("TenantId", "ConnectionId", "ProxyPath")}
    for method in ("get", "post", "put", "patch", "delete"):
        proxied[method] = _proxy_operation(method, method in ("post", "put", "patch"))
    return {
        "/tenants/{tenant_id}/connections/{connection_id}/servicenow/{path}": proxied,
        "/tenants/{tenant_id}/connections/{connection_id}/calls": {
            "parameters": _parameter_refs("TenantId", "ConnectionId"),
            "get": _operation(
                "listProxyCalls",
                "The calls made through the connection, newest first",
                {"200": _response("One page.", _ref("ProxyCallList"))},
                ["400", "404", "503"],
                description="Kept `PROXY_AUDIT_DAYS` days (default 30).",
                parameters=_parameter_refs("Limit", "Cursor"),
                tags=[TAG],
            ),
        },
    }


__all__ = ["headers", "parameters", "paths", "schemas"]
