"""The OpenAPI 3.1 document of the Connections API, served at GET /api/openapi.json.

It describes what the app does; the tests validate the app's responses against it, generate a
typed client from it (openapi-python-client, with no warning) and validate every example in it
against its own schema. Schemas are ones a generator can type: arrays have `items`, objects say
`additionalProperties`, null is allowed in JSON Schema's form (a `type` list, or `oneOf` with
`{"type": "null"}` for a reference), and enums shared by several schemas are components.
"""

import functools
from typing import Any

from connections import errors
from connections.catalogue import (
    CONNECTION_TYPES,
    DEFAULT_PARAMETER_NAME,
    MAX_NOTIFY_EMAILS,
    PARAMETER_TYPES,
)
from connections.errors import ApiError, FieldError
from connections.model import (
    CONNECTED,
    EXPIRED,
    EXPIRING,
    INVALID_CREDENTIALS,
    RENEWAL_FAILED,
    UNREACHABLE,
)
from connections.validation import (
    MAX_BODY_BYTES,
    MAX_CLIENT_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SECRET_LENGTH,
)
from servicenow.client import CLIENT_REJECTED

Schema = dict[str, Any]

# Kept in step with connections.api and connections.validation (the tests compare them).
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
CONNECTION_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_INSTANCE_URL_LENGTH = 2048

JSON = "application/json"
TAG = "connections"
SERVICE_TAG = "service"

STATUS_MEANINGS = {
    CONNECTED: "the last check or renewal succeeded",
    EXPIRING: "works, but the API token's `expires_at` is within the reminder window",
    EXPIRED: "the API token's `expires_at` has passed",
    INVALID_CREDENTIALS: "the instance rejected the API token (or the OAuth client)",
    RENEWAL_FAILED: "an OAuth token could not be renewed (revoked client, changed secret)",
    UNREACHABLE: "the instance did not answer properly (network, 5xx) on repeated tries",
}

ERROR_CODES = [
    "invalid_json",
    "validation_error",
    "not_found",
    "name_taken",
    "precondition_failed",
    "payload_too_large",
    "unsupported_media_type",
    "credentials_rejected",
    "instance_unreachable",
    "service_unavailable",
    "internal_error",
    "path_not_allowed",
    "connection_unusable",
    "response_too_large",
    "instance_timeout",
    "query_rejected",
    "unauthorized",
    "trigger_paused",
]

SECURITY_SCHEMES = {
    "functionKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "x-functions-key",
        "description": "The Function App's function key.",
    },
    "functionKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "code",
        "description": "The Function App's function key, as a query parameter.",
    },
}
FUNCTION_KEY = [{name: []} for name in SECURITY_SCHEMES]

API_DESCRIPTION = f"""\
ServiceNow connections of the BindTuning App's tenants.

- Every route except `GET /health` needs a function key (`x-functions-key` header or `code` query
  parameter); without a valid one the Functions host answers 401 with no body.
- Credentials are proven against the instance (an authenticated Table API read; for OAuth 2.0 the
  `client_credentials` grant first) **before** anything is stored or changed.
- Secrets (API token, client secret, access and refresh tokens) live in Key Vault and are never
  returned: fields marked `writeOnly` appear only in requests.
- Tenants are isolated: a connection of another tenant is 404 `not_found`, never 403.
- Names are unique per tenant, compared case-insensitively (409 `name_taken`).
- Reads return an `ETag`; `PATCH` and `DELETE` honour an optional `If-Match` (412 on mismatch).
- Bodies are JSON, at most {MAX_BODY_BYTES // 1024} KiB; unknown fields are 400 `validation_error`
  with one `details` entry per bad field.
- Outbound safety: `instance_url` must be `https://` with a DNS host name (no IP literal, user
  info, query, fragment or path beyond `/`) and is stored as `https://host`. Every outbound call
  refuses hosts resolving to loopback, private, link-local, multicast or reserved addresses and
  never follows redirects. When the app setting `ALLOWED_INSTANCE_SUFFIXES` is set (e.g.
  `.service-now.com,.servicenowservices.com`) the host must end in one of them as whole labels;
  otherwise any public host (a custom domain too) is accepted. `ALLOW_LOCAL_INSTANCES=true`
  (local run and tests only) also admits loopback hosts with a port over `http://`.
"""


# -- examples (from the contract) -----------------------------------------------------------

EXAMPLE_TENANT = "contoso"
EXAMPLE_CONNECTION_ID = "8a1f0c5e2b9d4f6a8c3e1b7d9f2a4c6e"
EXAMPLE_TIME = "2026-11-28T10:00:00Z"

API_TOKEN_CREATE = {
    "type": "servicenow",
    "name": "Contoso ITSM",
    "instance_url": "https://contoso.service-now.com",
    "auth": {
        "method": "api_token",
        "api_token": "<secret>",
        "parameter_name": "x-sn-apikey",
        "parameter_type": "header",
        "expires_at": "2027-03-01T00:00:00Z",
    },
    "notify_emails": ["it-admins@contoso.com"],
}
OAUTH2_CREATE = {
    **API_TOKEN_CREATE,
    "auth": {"method": "oauth2", "client_id": "<id>", "client_secret": "<secret>"},
}
API_TOKEN_CONNECTION = {
    "id": EXAMPLE_CONNECTION_ID,
    "tenant_id": EXAMPLE_TENANT,
    "type": "servicenow",
    "name": "Contoso ITSM",
    "instance_url": "https://contoso.service-now.com",
    "auth": {
        "method": "api_token",
        "parameter_name": "x-sn-apikey",
        "parameter_type": "header",
        "expires_at": "2027-03-01T00:00:00Z",
    },
    "status": CONNECTED,
    "status_detail": "Authenticated as the integration user",
    "capabilities": {"incident": True, "sc_req_item": True, "change_request": False},
    "last_checked_at": EXAMPLE_TIME,
    "created_at": EXAMPLE_TIME,
    "updated_at": EXAMPLE_TIME,
    "notify_emails": ["it-admins@contoso.com"],
}
OAUTH2_CONNECTION = {
    **API_TOKEN_CONNECTION,
    "id": "3b7e9d2c4a6f8e1d0c2b4a6f8e1d3c5b",
    "name": "Contoso ITSM (OAuth 2.0)",
    "auth": {"method": "oauth2", "client_id": "<id>", "token_expires_at": "2026-11-28T10:30:00Z"},
    "status_detail": "Authenticated with an OAuth 2.0 access token.",
}


def _example(summary: str, value: Any) -> Schema:
    return {"summary": summary, "value": value}


def _error_example(error: ApiError) -> Schema:
    details = [detail.to_dict() for detail in error.details]
    body = {"error": {"code": error.code, "message": error.message, "details": details}}
    return _example(f"{error.status} {error.code}", body)


HEALTH_EXAMPLES = {"ok": _example("Alive", {"status": "ok"})}
DOCUMENT_EXAMPLES = {
    "start": _example(
        "The start of this document",
        {
            "openapi": "3.1.0",
            "info": {"title": "Automate365 Connections", "version": "1.0.0"},
            "paths": {"/health": {"get": {"operationId": "health"}}},
        },
    )
}
CATALOGUE_EXAMPLES = {"catalogue": _example("The catalogue", {"items": CONNECTION_TYPES})}
CREATE_EXAMPLES = {
    "apiToken": _example("With an API token", API_TOKEN_CREATE),
    "oauth2": _example("With OAuth 2.0 client credentials", OAUTH2_CREATE),
}
PATCH_EXAMPLES = {
    "rotateToken": _example(
        "Rotate the API token (the other fields keep their values)",
        {"auth": {"method": "api_token", "api_token": "<new>"}},
    ),
    "renameAndEmails": _example(
        "Rename, and change who is told",
        {
            "name": "Contoso ITSM (production)",
            "notify_emails": ["it-admins@contoso.com", "noc@contoso.com"],
        },
    ),
    "toOAuth2": _example(
        "Switch to OAuth 2.0 (a new method needs its secrets)", {"auth": OAUTH2_CREATE["auth"]}
    ),
}
CONNECTION_EXAMPLES = {
    "apiToken": _example("An API-token connection", API_TOKEN_CONNECTION),
    "oauth2": _example("An OAuth 2.0 connection", OAUTH2_CONNECTION),
}
CHECK_EXAMPLES = {
    "connected": _example("The check succeeded", API_TOKEN_CONNECTION),
    "rejected": _example(
        "The instance refused the OAuth client",
        {**OAUTH2_CONNECTION, "status": INVALID_CREDENTIALS, "status_detail": CLIENT_REJECTED},
    ),
}
LIST_EXAMPLES = {
    "page": _example(
        "A page with a next one",
        {
            "items": [API_TOKEN_CONNECTION, OAUTH2_CONNECTION],
            "next": f"/api/tenants/{EXAMPLE_TENANT}/connections?limit=2&cursor=MSE0MjEhY29udG9zbw",
        },
    )
}


# -- schema helpers -----------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(description: str, max_length: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1, "description": description}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {**schema, **extra}


def _nullable(schema: Schema) -> Schema:
    """`schema` or null: a `type` list for a plain type, `oneOf` with `{"type": "null"}` for a
    reference, an enum or a constant (so generators type both as "that or None")."""
    if "$ref" in schema or "enum" in schema or "const" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _patchable(schema: Schema) -> Schema:
    """A field of a merge patch: null removes it (its default applies again). It has no default
    of its own, or a generated client would send the default and undo an earlier change."""
    return _nullable({key: value for key, value in schema.items() if key != "default"})


def _timestamp(description: str) -> Schema:
    return {"type": "string", "format": "date-time", "description": description}


def _const(value: str, description: str = "") -> Schema:
    schema: Schema = {"type": "string", "const": value}
    if description:
        schema["description"] = description
    return schema


def _array(items: Schema, description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "array", "items": items, **extra}
    if description:
        schema["description"] = description
    return schema


def _object(properties: Schema, required: list[str] | None = None, description: str = "") -> Schema:
    """A closed object; `required` defaults to every property (the shape of a response)."""
    schema: Schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if description:
        schema["description"] = description
    return schema


def _one_of_methods(api_token: str, oauth2: str) -> Schema:
    return {
        "oneOf": [_ref(api_token), _ref(oauth2)],
        "discriminator": {
            "propertyName": "method",
            "mapping": {
                "api_token": f"#/components/schemas/{api_token}",
                "oauth2": f"#/components/schemas/{oauth2}",
            },
        },
    }


def _error_schema(codes: list[str]) -> Schema:
    """`Error` with `error.code` narrowed to `codes`: a reference with sibling keywords (as
    OpenAPI 3.1 allows), so a generator types it as `Error` and a validator checks the codes."""
    return {**_ref("Error"), "properties": {"error": {"properties": {"code": {"enum": codes}}}}}


def _emails() -> Schema:
    return _array(
        {"type": "string", "format": "email", "maxLength": 254},
        f"Who is told when the connection stops working (at most {MAX_NOTIFY_EMAILS}).",
        maxItems=MAX_NOTIFY_EMAILS,
    )


def _name() -> Schema:
    return _text("Unique per tenant, compared case-insensitively.", MAX_NAME_LENGTH)


def _instance_url() -> Schema:
    return _text(
        "The ServiceNow instance, e.g. `https://contoso.service-now.com`; stored as "
        "`https://host`. See the outbound safety rules in the API description.",
        MAX_INSTANCE_URL_LENGTH,
        format="uri",
    )


def _secret(description: str) -> Schema:
    return _text(description, MAX_SECRET_LENGTH, writeOnly=True)


def _api_token_fields() -> Schema:
    return {
        "method": _const("api_token"),
        "api_token": _secret("The API token (REST API key). Stored in Key Vault, never returned."),
        "parameter_name": _text(
            "Header or query parameter that carries the token.", 64, default=DEFAULT_PARAMETER_NAME
        ),
        "parameter_type": {**_ref("ParameterType"), "default": "header"},
        "expires_at": _timestamp(
            "The token's expiry as the customer knows it: reminders before it, `expired` after it. "
            "Must not be in the past."
        ),
    }


def _oauth2_fields() -> Schema:
    return {
        "method": _const("oauth2"),
        "client_id": _text("Client ID of the OAuth application.", MAX_CLIENT_ID_LENGTH),
        "client_secret": _secret("Client secret. Stored in Key Vault, never returned."),
    }


# -- components ---------------------------------------------------------------------------


def _enum(values: list[str], description: str) -> Schema:
    return {"type": "string", "enum": values, "description": description}


def _enum_schemas() -> dict[str, Schema]:
    status_lines = "; ".join(
        f"`{status}`: {meaning}" for status, meaning in STATUS_MEANINGS.items()
    )
    return {
        "ConnectionStatus": _enum(list(STATUS_MEANINGS), status_lines),
        "AuthMethodName": _enum(
            ["api_token", "oauth2"], "How the service signs in to the instance."
        ),
        "ParameterType": _enum(
            list(PARAMETER_TYPES),
            "Where the API token goes: a request header or a query parameter.",
        ),
        "ErrorCode": _enum(
            ERROR_CODES, "What went wrong, for programs; each response lists the codes it has."
        ),
    }


def _connection_schemas() -> dict[str, Schema]:
    api_token, oauth2 = _api_token_fields(), _oauth2_fields()
    return {
        "ApiTokenAuthPublic": _object(
            {
                "method": api_token["method"],
                "parameter_name": api_token["parameter_name"],
                "parameter_type": api_token["parameter_type"],
                "expires_at": _nullable(_timestamp("The token's expiry, if one was given.")),
            }
        ),
        "OAuth2AuthPublic": _object(
            {
                "method": oauth2["method"],
                "client_id": oauth2["client_id"],
                "token_expires_at": _nullable(
                    _timestamp("When the current access token expires (renewed before it).")
                ),
            }
        ),
        "Connection": _object(
            {
                "id": _text("The connection's id.", pattern=CONNECTION_ID_PATTERN),
                "tenant_id": _text("The tenant it belongs to.", pattern=TENANT_ID_PATTERN),
                "type": _const("servicenow"),
                "name": _name(),
                "instance_url": _instance_url(),
                "auth": _one_of_methods("ApiTokenAuthPublic", "OAuth2AuthPublic"),
                "status": _ref("ConnectionStatus"),
                "status_detail": {"type": "string", "description": "What the last check found."},
                "capabilities": {
                    "type": "object",
                    "additionalProperties": {"type": "boolean"},
                    "description": "From the last check: which tables the automations need "
                    "(`incident`, `sc_req_item`, `change_request`) the credentials could read "
                    "(a 403 is `false`).",
                },
                "last_checked_at": _nullable(_timestamp("The last check, null before any.")),
                "created_at": _timestamp("When the connection was created."),
                "updated_at": _timestamp("When the connection was last changed."),
                "notify_emails": _emails(),
            },
            description="A connection as returned: never a secret.",
        ),
        "ApiTokenAuth": _object(api_token, ["method", "api_token"]),
        "OAuth2Auth": _object(oauth2, ["method", "client_id", "client_secret"]),
        "CreateConnection": _object(
            {
                "type": _const("servicenow"),
                "name": _name(),
                "instance_url": _instance_url(),
                "auth": _one_of_methods("ApiTokenAuth", "OAuth2Auth"),
                "notify_emails": _emails(),
            },
            ["type", "name", "instance_url", "auth"],
        ),
        "AuthPatch": _object(
            {
                "method": _ref("AuthMethodName"),
                "api_token": api_token["api_token"],
                "parameter_name": _patchable(api_token["parameter_name"]),
                "parameter_type": _patchable(api_token["parameter_type"]),
                "expires_at": _patchable(api_token["expires_at"]),
                "client_id": oauth2["client_id"],
                "client_secret": oauth2["client_secret"],
            },
            [],
            "Fields of the connection's current method; fields not named keep their values, "
            "null puts a field's default back. A different `method` replaces the whole `auth` "
            "and needs its secrets.",
        ),
        "ConnectionPatch": _object(
            {
                "type": _const("servicenow", "The type cannot change."),
                "name": _name(),
                "instance_url": _instance_url(),
                "auth": _ref("AuthPatch"),
                "notify_emails": _patchable(_emails()),
            },
            [],
            "A JSON merge patch (RFC 7396) of the create body. A new URL or secret is proven "
            "against the instance before anything changes.",
        ),
        "ConnectionList": _object(
            {
                "items": _array(_ref("Connection")),
                "next": _nullable(_text("URL of the next page; null on the last page.")),
            }
        ),
    }


def _catalogue_schemas() -> dict[str, Schema]:
    return {
        "CatalogueField": _object(
            {
                "name": _text("The body field it fills."),
                "label": _text("Label in the pop-up."),
                "description": _text("Help text in the pop-up."),
                "type": {"type": "string", "enum": ["string", "array", "date-time"]},
                "required": {"type": "boolean"},
                "secret": {"type": "boolean", "description": "Write-only; never shown again."},
                "default": {
                    "oneOf": [{"type": "string"}, _array({"type": "string"}), {"type": "null"}],
                    "description": "The value taken when the field is left out; null: none.",
                },
                "allowed_values": _nullable(
                    _array({"type": "string"}, "The only values allowed; null: any.")
                ),
            }
        ),
        "AuthMethod": _object(
            {
                "method": _ref("AuthMethodName"),
                "label": _text("Label in the pop-up."),
                "description": _text("Help text in the pop-up."),
                "fields": _array(_ref("CatalogueField"), "Fields inside `auth`."),
            }
        ),
        "ConnectionType": _object(
            {
                "type": _const("servicenow"),
                "label": _text("Label in the pop-up."),
                "description": _text("Help text in the pop-up."),
                "fields": _array(_ref("CatalogueField"), "Top-level fields of the create body."),
                "auth_methods": _array(_ref("AuthMethod")),
            }
        ),
        "ConnectionTypes": _object({"items": _array(_ref("ConnectionType"))}),
    }


def _other_schemas() -> dict[str, Schema]:
    return {
        "ErrorDetail": _object(
            {"field": {"type": "string"}, "message": {"type": "string"}},
            description="One bad field, e.g. `auth.api_token` or `notify_emails[2]`.",
        ),
        "ErrorInfo": _object(
            {
                "code": _ref("ErrorCode"),
                "message": {"type": "string", "description": "For people; may change."},
                "details": _array(_ref("ErrorDetail")),
            }
        ),
        "Error": _object(
            {"error": _ref("ErrorInfo")}, description="An error the service answers itself."
        ),
        "Health": _object({"status": _const("ok")}),
        "OpenApiDocument": {
            "type": "object",
            "additionalProperties": True,
            "properties": {
                "openapi": {"type": "string"},
                "info": {"type": "object", "additionalProperties": True},
                "paths": {"type": "object", "additionalProperties": True},
            },
            "required": ["openapi", "info", "paths"],
            "description": "This document.",
        },
    }


def _media(schema: Schema, examples: dict[str, Schema]) -> Schema:
    return {"schema": schema, "examples": examples}


def _json(schema: Schema, examples: dict[str, Schema]) -> Schema:
    return {JSON: _media(schema, examples)}


def _response(
    description: str,
    schema: Schema | None = None,
    examples: dict[str, Schema] | None = None,
    **headers: str,
) -> Schema:
    response: Schema = {"description": description}
    if headers:
        response["headers"] = {
            name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()
        }
    if schema is not None:
        response["content"] = _json(schema, examples or {})
    return response


def _error_examples(*examples: ApiError) -> tuple[list[str], dict[str, Schema]]:
    """The codes of these errors, and the errors as examples named by their codes."""
    codes = list(dict.fromkeys(error.code for error in examples))
    return codes, {error.code: _error_example(error) for error in examples}


def _error_response(description: str, *examples: ApiError, **headers: str) -> Schema:
    """The error response with these examples; its codes are theirs."""
    codes, named = _error_examples(*examples)
    return _response(description, _error_schema(codes), named, **headers)


def _any_body(description: str, examples: dict[str, Schema]) -> Schema:
    """An optional body of any JSON value, or of any bytes (`application/octet-stream`)."""
    return {
        "required": False,
        "description": description,
        "content": {
            **_json({"description": "Any JSON value."}, examples),
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }


# status -> (component name, response)
ERROR_RESPONSES: dict[str, tuple[str, Schema]] = {
    "400": (
        "BadRequest",
        _error_response(
            "Malformed JSON, or a field (or `tenant_id`, `limit`, `cursor`) missing, of the wrong "
            "type, out of range or unknown: one `details` entry per bad field.",
            errors.invalid_json("The body is not valid JSON (Expecting value)."),
            errors.validation_error(
                [
                    FieldError("auth.api_token", "This field is required."),
                    FieldError("notify_emails[1]", "Must be an e-mail address."),
                ]
            ),
        ),
    ),
    "401": ("Unauthorized", _response("No or wrong function key; the host answers, no body.")),
    "404": (
        "NotFound",
        _error_response(
            "No such connection for this tenant (also when it belongs to another tenant).",
            errors.not_found(),
        ),
    ),
    "409": (
        "NameTaken",
        _error_response(
            "Another connection of the tenant has that name (case-insensitive).",
            errors.name_taken("Contoso ITSM"),
        ),
    ),
    "412": (
        "PreconditionFailed",
        _error_response(
            "`If-Match` does not match the current `ETag`, or the connection changed meanwhile.",
            errors.precondition_failed(),
        ),
    ),
    "413": (
        "PayloadTooLarge",
        _error_response(
            f"Body over {MAX_BODY_BYTES // 1024} KiB.", errors.payload_too_large(MAX_BODY_BYTES)
        ),
    ),
    "415": (
        "UnsupportedMediaType",
        _error_response("The body is not JSON.", errors.unsupported_media_type()),
    ),
    "422": (
        "CredentialsRejected",
        _error_response(
            "The instance rejected the credentials; the message says what to check. Nothing was "
            "stored or changed.",
            errors.credentials_rejected(CLIENT_REJECTED, "auth.client_secret"),
        ),
    ),
    "502": (
        "InstanceUnreachable",
        _error_response(
            "The instance could not be reached or did not answer with JSON (e.g. a hibernating "
            "developer instance). Nothing was stored or changed.",
            errors.instance_unreachable(
                "The instance answered with an HTML page instead of ServiceNow's JSON. A "
                "developer instance that is hibernating does that: wake it at "
                "developer.servicenow.com, or check the instance URL."
            ),
        ),
    ),
    "503": (
        "ServiceUnavailable",
        _error_response(
            "Table Storage or Key Vault is unavailable; nothing was changed. Retry later.",
            errors.service_unavailable(
                "Storage or Key Vault is unavailable; nothing was changed. Try again shortly."
            ),
            **{"Retry-After": "RetryAfter"},
        ),
    ),
}

HEADERS = {
    "ETag": {
        "description": "Version of the connection, for `If-Match`.",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "Location": {
        "description": "URL of the new connection (`/api/tenants/{tenant_id}/connections/{id}`).",
        "required": True,
        "schema": {"type": "string", "minLength": 1},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying.",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
}


def _parameter(name: str, where: str, schema: Schema, description: str, required: bool) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": required,
        "description": description,
        "schema": schema,
    }


PARAMETERS = {
    "TenantId": _parameter(
        "tenant_id",
        "path",
        {"type": "string", "pattern": TENANT_ID_PATTERN},
        "The BindTuning tenant. Anything else than 1 to 128 letters, digits, '.', '_' or '-' "
        "(starting with a letter or digit) is 400.",
        True,
    ),
    "ConnectionId": _parameter(
        "connection_id",
        "path",
        {"type": "string"},
        "The connection's id (32 lowercase hex digits); any other value is 404.",
        True,
    ),
    "IfMatch": _parameter(
        "If-Match",
        "header",
        {"type": "string"},
        "Optional: the `ETag` from a read (or `*`); when it differs from the current one, 412.",
        False,
    ),
    "Limit": _parameter(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
        "Page size.",
        False,
    ),
    "Cursor": _parameter(
        "cursor",
        "query",
        {"type": "string"},
        "Continuation from a previous page's `next`; anything else is 400.",
        False,
    ),
}


def _parameter_refs(*names: str) -> list[Schema]:
    return [{"$ref": f"#/components/parameters/{name}"} for name in names]


# -- operations ---------------------------------------------------------------------------


def _operation(
    operation_id: str,
    summary: str,
    success: dict[str, Schema],
    error_statuses: list[str],
    *,
    tag: str,
    description: str = "",
    secured: bool = True,
    parameters: list[Schema] | None = None,
    request: Schema | None = None,
) -> Schema:
    """`error_statuses` name the usual error responses (`ERROR_RESPONSES`, components);
    `tag` groups the operation (a generated client has a module per tag)."""
    responses = dict(success)
    for status in sorted([*error_statuses, "401"] if secured else error_statuses):
        name = ERROR_RESPONSES[status][0]
        responses[status] = {"$ref": f"#/components/responses/{name}"}
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "security": FUNCTION_KEY if secured else [],
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if request is not None:
        operation["requestBody"] = request
    return operation


def _request(schema_name: str, examples: dict[str, Schema], *media_types: str) -> Schema:
    content = {media_type: _media(_ref(schema_name), examples) for media_type in media_types}
    return {"required": True, "content": content}


def _connection_ok(
    description: str,
    status: str = "200",
    examples: dict[str, Schema] = CONNECTION_EXAMPLES,
    **headers: str,
) -> dict[str, Schema]:
    return {status: _response(description, _ref("Connection"), examples, ETag="ETag", **headers)}


_WRITE_ERRORS = ["400", "409", "413", "415", "422", "502", "503"]


def _service_paths() -> Schema:
    return {
        "/health": {
            "get": _operation(
                "health",
                "Liveness",
                {
                    "200": _response(
                        "Alive; reveals no configuration.", _ref("Health"), HEALTH_EXAMPLES
                    )
                },
                [],
                tag=SERVICE_TAG,
                secured=False,
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenApiDocument",
                "This document",
                {
                    "200": _response(
                        "The OpenAPI document.", _ref("OpenApiDocument"), DOCUMENT_EXAMPLES
                    )
                },
                [],
                tag=SERVICE_TAG,
            )
        },
    }


def _connection_paths() -> Schema:
    tenant = _parameter_refs("TenantId")
    connection = _parameter_refs("TenantId", "ConnectionId")
    catalogue = _response(
        "Each type, its auth methods and fields.", _ref("ConnectionTypes"), CATALOGUE_EXAMPLES
    )
    page = _response("One page; never reads Key Vault.", _ref("ConnectionList"), LIST_EXAMPLES)
    return {
        "/connection-types": {
            "get": _operation(
                "listConnectionTypes",
                "The catalogue the 'Create connection +' pop-up is drawn from",
                {"200": catalogue},
                [],
                tag=TAG,
            )
        },
        "/tenants/{tenant_id}/connections": {
            "parameters": tenant,
            "post": _operation(
                "createConnection",
                "Create a connection",
                _connection_ok("Created, `connected` (or `expiring`).", "201", Location="Location"),
                _WRITE_ERRORS,
                tag=TAG,
                description="Validates the body, proves the credentials against the instance, "
                "then stores the secrets in Key Vault and the record in Table Storage.",
                request=_request("CreateConnection", CREATE_EXAMPLES, JSON),
            ),
            "get": _operation(
                "listConnections",
                "List the tenant's connections",
                {"200": page},
                ["400", "503"],
                tag=TAG,
                parameters=_parameter_refs("Limit", "Cursor"),
            ),
        },
        "/tenants/{tenant_id}/connections/{connection_id}": {
            "parameters": connection,
            "get": _operation(
                "getConnection",
                "Read a connection",
                _connection_ok("The connection; never reads Key Vault."),
                ["400", "404", "503"],
                tag=TAG,
            ),
            "patch": _operation(
                "updateConnection",
                "Rename, change the URL, rotate a secret or change the e-mails",
                _connection_ok("The updated connection."),
                [*_WRITE_ERRORS, "404", "412"],
                tag=TAG,
                description="A new URL or secret is proven first; the stored secret is swapped "
                "only then. Honours `If-Match`.",
                parameters=_parameter_refs("IfMatch"),
                request=_request(
                    "ConnectionPatch", PATCH_EXAMPLES, JSON, "application/merge-patch+json"
                ),
            ),
            "delete": _operation(
                "deleteConnection",
                "Delete a connection and purge its secrets",
                {"204": _response("Deleted; the connection is 404 from now on.")},
                ["400", "404", "412", "503"],
                tag=TAG,
                parameters=_parameter_refs("IfMatch"),
            ),
        },
        "/tenants/{tenant_id}/connections/{connection_id}/check": {
            "parameters": connection,
            "post": _operation(
                "checkConnection",
                "Check (API token) or renew (OAuth 2.0) now",
                _connection_ok(
                    "The connection with its new status; a failed check is reported in `status` "
                    "and `status_detail`, not as an error.",
                    examples=CHECK_EXAMPLES,
                ),
                ["400", "404", "412", "503"],
                tag=TAG,
            ),
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    from proxy import openapi as proxy_openapi
    from triggers import openapi as triggers_openapi

    schemas = {
        **_enum_schemas(),
        **_connection_schemas(),
        **_catalogue_schemas(),
        **_other_schemas(),
        **proxy_openapi.schemas(),
        **triggers_openapi.schemas(),
    }
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Automate365 Connections",
            "version": "1.0.0",
            "description": API_DESCRIPTION,
        },
        "servers": [{"url": "/api"}],
        "tags": [
            {
                "name": TAG,
                "description": "A tenant's ServiceNow connections, and the catalogue "
                "the 'Create connection +' pop-up is drawn from.",
            },
            proxy_openapi.tag(),
            triggers_openapi.tag(),
            {"name": SERVICE_TAG, "description": "Liveness and this document."},
        ],
        "paths": {
            **_service_paths(),
            **_connection_paths(),
            **proxy_openapi.paths(),
            **triggers_openapi.paths(),
        },
        "components": {
            "schemas": schemas,
            "responses": dict(ERROR_RESPONSES.values()),
            "parameters": {
                **PARAMETERS,
                **proxy_openapi.parameters(),
                **triggers_openapi.parameters(),
            },
            "headers": {**HEADERS, **proxy_openapi.headers(), **triggers_openapi.headers()},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
