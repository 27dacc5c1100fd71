"""The proxy's part of the OpenAPI document: the relayed route and the audit of calls."""

from typing import Any

from connections import errors
from connections.errors import FieldError
from connections.openapi import (
    EXAMPLE_CONNECTION_ID,
    EXAMPLE_TENANT,
    JSON,
    _any_body,
    _array,
    _error_examples,
    _error_schema,
    _example,
    _media,
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
INSTANCE = "contoso.service-now.com"

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

`{{path}}` holds slashes, which OpenAPI cannot say of a path parameter: a generated client
percent-encodes them (`%2F`), and such a path is refused (400). Send the request with the path
as it is and the instance's query string after it, e.g. through the generated client's own HTTP
client (`client.get_httpx_client()`), which carries the base URL and the function key.
"""

# -- examples (from the contract and the README's quick start) --------------------------------

REQUEST = {
    "sys_id": "2c80e8eb1b2f4410a8e5d1f3f3961a01",
    "number": "RITM0010001",
    "short_description": "New team for Marketing",
    "requested_for": "6816f79cc0a8016401c5a33be04be441",
    "variables.team_name": "Marketing",
}
WORK_NOTE = {"work_notes": "Microsoft 365 team created: Marketing"}
# What ServiceNow itself answers with these statuses (relayed as they are).
INSTANCE_ERRORS = {
    "401": ("User Not Authenticated", "Required to provide Auth information"),
    "403": ("Operation Failed", "ACL Exception Insert Failed due to security constraints"),
    "404": ("No Record found", "Record doesn't exist or ACL restricts the record retrieval"),
}
CALL = {
    "at": "2026-12-01T10:00:31.250Z",
    "method": "GET",
    "path": "/api/now/table/sc_req_item",
    "query": "sysparm_query=variables.team_name%3DMarketing&sysparm_fields=sys_id,number",
    "status": 200,
    "duration_ms": 184,
    "bytes_in": 0,
    "bytes_out": 1342,
    "retries": 0,
    "renewed": False,
    "relayed": True,
    "automation_id": "new-team-for-marketing",
    "error_code": None,
}
REFUSED_CALL = {
    **CALL,
    "at": "2026-12-01T10:00:30.125Z",
    "path": "/api/now/ui/meta/sc_req_item",
    "query": "",
    "status": 403,
    "duration_ms": 3,
    "bytes_out": 241,
    "relayed": False,
    "error_code": "path_not_allowed",
}

CALLS_EXAMPLES = {
    "page": _example(
        "A read, and a path the proxy refused",
        {
            "items": [CALL, REFUSED_CALL],
            "next": f"/api/tenants/{EXAMPLE_TENANT}/connections/{EXAMPLE_CONNECTION_ID}/calls"
            "?limit=2&cursor=MjAyNjEyMDE",
        },
    )
}


def _instance_error(status: str) -> Schema:
    message, detail = INSTANCE_ERRORS[status]
    body = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return _example(f"The instance's own {status}, relayed", body)


RELAYED = {
    "description": "The instance's answer, relayed with its status (any status) and body; "
    "`X-Relayed-From: servicenow` says so.",
    "headers": {"X-Relayed-From": {"$ref": "#/components/headers/RelayedFrom"}},
    "content": {
        JSON: _media(
            _ref("RelayedAnswer"),
            {"records": _example("A Table API read, relayed", {"result": [REQUEST]})},
        ),
        "*/*": {"schema": {}},
    },
}


def tag() -> Schema:
    return {
        "name": TAG,
        "description": "Calls to the connection's ServiceNow instance with its credential, and "
        "the record of those calls.",
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
            "automation_id": _nullable(
                {"type": "string", "description": "The caller's `X-Automation-Id`, if sent."}
            ),
            "error_code": _nullable(_ref("ErrorCode")),
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


# status -> (what the service answers itself, what it means); the instance's own answer with
# the same status is relayed too, with `X-Relayed-From: servicenow`.
_OWN_ERRORS: dict[str, tuple[list[errors.ApiError], str]] = {
    "400": (
        [
            errors.validation_error(
                [FieldError("path", "Holds an empty segment ('//' or a leading '/').")]
            )
        ],
        "The path (field `path`), tenant or connection id is not valid.",
    ),
    "401": ([], "No or wrong function key (the host answers, no body)."),
    "403": (
        [errors.path_not_allowed("api/now/ui/meta/sc_req_item")],
        "The path is outside `PROXY_ALLOWED_PATHS`.",
    ),
    "404": ([errors.not_found()], "No such connection for this tenant."),
    "409": (
        [
            errors.connection_unusable(
                "The connection's status is invalid_credentials: ServiceNow did not accept the "
                "API token. Edit the connection with a valid API token (PATCH the connection), "
                "then call again."
            )
        ],
        "The connection's credentials are known not to work (`invalid_credentials`, `expired`, "
        "or `renewal_failed` with no unexpired token); the instance was not called. The message "
        "names the status and what to do.",
    ),
    "413": (
        [errors.payload_too_large(MAX_REQUEST_BYTES)],
        f"Body over {MAX_REQUEST_BYTES // 1048576} MiB.",
    ),
    "502": (
        [
            errors.instance_unreachable(f"The connection to {INSTANCE} failed."),
            errors.response_too_large(f"The answer from {INSTANCE} is larger than 20971520 bytes."),
        ],
        "The instance could not be reached, or its answer is over `PROXY_MAX_RESPONSE_BYTES`.",
    ),
    "503": (
        [
            errors.service_unavailable(
                "Storage or Key Vault is unavailable; nothing was changed. Try again shortly."
            )
        ],
        "Table Storage or Key Vault is unavailable.",
    ),
    "504": (
        [errors.instance_timeout(f"{INSTANCE} did not answer in time.")],
        "No answer within `PROXY_TIMEOUT_SECONDS`.",
    ),
}


def _own_or_relayed(own: list[errors.ApiError], meaning: str, status: str) -> Schema:
    """The service's error with this status, or the instance's answer with it, relayed: `anyOf`,
    as an error of the service is also a body the instance could send."""
    codes, examples = _error_examples(*own)
    relayed = _ref("RelayedAnswer")
    schema = {"anyOf": [_error_schema(codes), relayed]} if own else relayed
    if status in INSTANCE_ERRORS:
        examples["relayed"] = _instance_error(status)
    return {
        "description": f"{meaning} Or the instance's own answer with this status, relayed "
        "(then with `X-Relayed-From: servicenow`).",
        "content": {JSON: _media(schema, examples), "*/*": {"schema": {}}},
    }


def _proxy_operation(method: str, with_body: bool) -> Schema:
    request = None
    if with_body:
        request = _any_body(
            "Passed on as it is, with its `Content-Type` (JSON, or any other media type: "
            "`application/octet-stream` stands for those).",
            {"workNote": _example("A work note on the request", WORK_NOTE)},
        )
    operation = _operation(
        f"proxy{method.capitalize()}",
        f"{method.upper()} on the instance through the connection",
        {"default": RELAYED},
        [],
        tag=TAG,
        description=PROXY_DESCRIPTION,
        parameters=_parameter_refs("AutomationId"),
        request=request,
    )
    for status, (own, meaning) in _OWN_ERRORS.items():
        operation["responses"][status] = _own_or_relayed(own, meaning, status)
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
                {"200": _response("One page.", _ref("ProxyCallList"), CALLS_EXAMPLES)},
                ["400", "404", "503"],
                tag=TAG,
                description="Kept `PROXY_AUDIT_DAYS` days (default 30).",
                parameters=_parameter_refs("Limit", "Cursor"),
            ),
        },
    }


__all__ = ["headers", "parameters", "paths", "schemas", "tag"]
