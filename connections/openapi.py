"""The OpenAPI 3.1 document of the Connections API, served at GET /api/openapi.json.

It describes what the app does; the tests validate the app's responses against it.
"""

import functools
from typing import Any

from connections.catalogue import DEFAULT_PARAMETER_NAME, MAX_NOTIFY_EMAILS, PARAMETER_TYPES
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

Schema = dict[str, Any]

# Kept in step with connections.api and connections.validation (the tests compare them).
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
CONNECTION_ID_PATTERN = r"^[0-9a-f]{32}$"
MAX_INSTANCE_URL_LENGTH = 2048

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


# -- schema helpers -----------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(description: str, max_length: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", "minLength": 1, "description": description}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {**schema, **extra}


def _nullable(schema: Schema) -> Schema:
    nullable = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        nullable["enum"] = [*schema["enum"], None]
    return nullable


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
        "parameter_type": {"type": "string", "enum": list(PARAMETER_TYPES), "default": "header"},
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


def _connection_schemas() -> dict[str, Schema]:
    api_token, oauth2 = _api_token_fields(), _oauth2_fields()
    status_lines = "; ".join(
        f"`{status}`: {meaning}" for status, meaning in STATUS_MEANINGS.items()
    )
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
                "status": {
                    "type": "string",
                    "enum": list(STATUS_MEANINGS),
                    "description": status_lines,
                },
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
                "method": {"type": "string", "enum": ["api_token", "oauth2"]},
                "api_token": api_token["api_token"],
                "parameter_name": _nullable(api_token["parameter_name"]),
                "parameter_type": _nullable(api_token["parameter_type"]),
                "expires_at": _nullable(api_token["expires_at"]),
                "client_id": oauth2["client_id"],
                "client_secret": oauth2["client_secret"],
            },
            [],
            "Fields of the connection's current method; fields not named keep their values. "
            "A different `method` replaces the whole `auth` and needs its secrets.",
        ),
        "ConnectionPatch": _object(
            {
                "type": _const("servicenow", "The type cannot change."),
                "name": _name(),
                "instance_url": _instance_url(),
                "auth": _ref("AuthPatch"),
                "notify_emails": _nullable(_emails()),
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
                "default": {"type": ["string", "array", "null"]},
                "allowed_values": _nullable(_array({"type": "string"})),
            }
        ),
        "AuthMethod": _object(
            {
                "method": {"type": "string", "enum": ["api_token", "oauth2"]},
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
    detail = _object(
        {"field": {"type": "string"}, "message": {"type": "string"}},
        description="One bad field, e.g. `auth.api_token` or `notify_emails[2]`.",
    )
    error = _object(
        {
            "code": {"type": "string", "enum": ERROR_CODES},
            "message": {"type": "string", "description": "For people; may change."},
            "details": _array(detail),
        }
    )
    return {
        "Error": _object({"error": error}),
        "Health": _object({"status": _const("ok")}),
        "OpenApiDocument": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "description": "This document.",
        },
    }


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _response(description: str, schema: Schema | None = None, **headers: str) -> Schema:
    response: Schema = {"description": description}
    if headers:
        response["headers"] = {
            name: {"$ref": f"#/components/headers/{ref}"} for name, ref in headers.items()
        }
    if schema is not None:
        response["content"] = _json(schema)
    return response


def _error_response(description: str, codes: list[str], **headers: str) -> Schema:
    narrowed = {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}
    return _response(description, {"allOf": [_ref("Error"), narrowed]}, **headers)


# status -> (component name, response)
ERROR_RESPONSES: dict[str, tuple[str, Schema]] = {
    "400": (
        "BadRequest",
        _error_response(
            "Malformed JSON, or a field (or `tenant_id`, `limit`, `cursor`) missing, of the wrong "
            "type, out of range or unknown: one `details` entry per bad field.",
            ["invalid_json", "validation_error"],
        ),
    ),
    "401": ("Unauthorized", _response("No or wrong function key; the host answers, no body.")),
    "404": (
        "NotFound",
        _error_response(
            "No such connection for this tenant (also when it belongs to another tenant).",
            ["not_found"],
        ),
    ),
    "409": (
        "NameTaken",
        _error_response(
            "Another connection of the tenant has that name (case-insensitive).", ["name_taken"]
        ),
    ),
    "412": (
        "PreconditionFailed",
        _error_response(
            "`If-Match` does not match the current `ETag`, or the connection changed meanwhile.",
            ["precondition_failed"],
        ),
    ),
    "413": (
        "PayloadTooLarge",
        _error_response(f"Body over {MAX_BODY_BYTES // 1024} KiB.", ["payload_too_large"]),
    ),
    "415": (
        "UnsupportedMediaType",
        _error_response("The body is not JSON.", ["unsupported_media_type"]),
    ),
    "422": (
        "CredentialsRejected",
        _error_response(
            "The instance rejected the credentials; the message says what to check. Nothing was "
            "stored or changed.",
            ["credentials_rejected"],
        ),
    ),
    "502": (
        "InstanceUnreachable",
        _error_response(
            "The instance could not be reached or did not answer with JSON (e.g. a hibernating "
            "developer instance). Nothing was stored or changed.",
            ["instance_unreachable"],
        ),
    ),
    "503": (
        "ServiceUnavailable",
        _error_response(
            "Table Storage or Key Vault is unavailable; nothing was changed. Retry later.",
            ["service_unavailable"],
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
    errors: list[str],
    *,
    description: str = "",
    secured: bool = True,
    parameters: list[Schema] | None = None,
    request: Schema | None = None,
    error_components: dict[str, str] | None = None,
    tags: list[str] | None = None,
) -> Schema:
    """`error_components` names the response component of a status where it is not the
    usual one of `ERROR_RESPONSES` (e.g. the proxy's 409 is `connection_unusable`)."""
    responses = dict(success)
    components = {status: name for status, (name, _) in ERROR_RESPONSES.items()}
    components.update(error_components or {})
    for status in sorted([*errors, "401"] if secured else errors):
        responses[status] = {"$ref": f"#/components/responses/{components[status]}"}
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "security": FUNCTION_KEY if secured else [],
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if request is not None:
        operation["requestBody"] = request
    if tags:
        operation["tags"] = tags
    return operation


def _request(schema_name: str, *media_types: str) -> Schema:
    content = {media_type: {"schema": _ref(schema_name)} for media_type in media_types}
    return {"required": True, "content": content}


def _connection_ok(description: str, status: str = "200", **headers: str) -> dict[str, Schema]:
    return {status: _response(description, _ref("Connection"), ETag="ETag", **headers)}


_WRITE_ERRORS = ["400", "409", "413", "415", "422", "502", "503"]


def _paths() -> Schema:
    tenant = _parameter_refs("TenantId")
    connection = _parameter_refs("TenantId", "ConnectionId")
    return {
        "/health": {
            "get": _operation(
                "health",
                "Liveness",
                {"200": _response("Alive; reveals no configuration.", _ref("Health"))},
                [],
                secured=False,
            )
        },
        "/connection-types": {
            "get": _operation(
                "listConnectionTypes",
                "The catalogue the 'Create connection +' pop-up is drawn from",
                {
                    "200": _response(
                        "Each type, its auth methods and fields.", _ref("ConnectionTypes")
                    )
                },
                [],
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenApiDocument",
                "This document",
                {"200": _response("The OpenAPI document.", _ref("OpenApiDocument"))},
                [],
            )
        },
        "/tenants/{tenant_id}/connections": {
            "parameters": tenant,
            "post": _operation(
                "createConnection",
                "Create a connection",
                _connection_ok("Created, `connected` (or `expiring`).", "201", Location="Location"),
                _WRITE_ERRORS,
                description="Validates the body, proves the credentials against the instance, "
                "then stores the secrets in Key Vault and the record in Table Storage.",
                request=_request("CreateConnection", "application/json"),
            ),
            "get": _operation(
                "listConnections",
                "List the tenant's connections",
                {"200": _response("One page; never reads Key Vault.", _ref("ConnectionList"))},
                ["400", "503"],
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
            ),
            "patch": _operation(
                "updateConnection",
                "Rename, change the URL, rotate a secret or change the e-mails",
                _connection_ok("The updated connection."),
                [*_WRITE_ERRORS, "404", "412"],
                description="A new URL or secret is proven first; the stored secret is swapped "
                "only then. Honours `If-Match`.",
                parameters=_parameter_refs("IfMatch"),
                request=_request(
                    "ConnectionPatch", "application/json", "application/merge-patch+json"
                ),
            ),
            "delete": _operation(
                "deleteConnection",
                "Delete a connection and purge its secrets",
                {"204": _response("Deleted; the connection is 404 from now on.")},
                ["400", "404", "412", "503"],
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
                    "and `status_detail`, not as an error."
                ),
                ["400", "404", "412", "503"],
            ),
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    from proxy import openapi as proxy_openapi
    from triggers import openapi as triggers_openapi

    schemas = {
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
        "paths": {**_paths(), **proxy_openapi.paths(), **triggers_openapi.paths()},
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
