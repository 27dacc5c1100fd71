import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from jsonschema import Draft202012Validator

import function_app
from connections import api, errors, validation
from connections.catalogue import CONNECTION_TYPES
from connections.http import error_response
from connections.model import STATUSES, Connection
from connections.openapi import (
    API_TOKEN_CREATE,
    ERROR_CODES,
    MAX_PAGE_SIZE,
    STATUS_MEANINGS,
    TENANT_ID_PATTERN,
    openapi_document,
)
from localrun.host import indexed_functions
from tests.openapi_check import (
    METHODS,
    assert_matches_openapi,
    find_operation,
    resolve,
    validation_errors,
)

DOC = openapi_document()
ONE = "/tenants/{tenant_id}/connections/{connection_id}"
MANY = "/tenants/{tenant_id}/connections"
CHECK = ONE + "/check"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOC["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def http_routes() -> dict[tuple[str, str], func.AuthLevel | None]:
    routes = {}
    for function in indexed_functions(function_app.app):
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                for method in binding.methods:
                    route = "/" + binding.route.replace("{*", "{")  # a catch-all is a path value
                    routes[(str(method.value).lower(), route)] = binding.auth_level
    return routes


def sample(method: str, **overrides: Any) -> Connection:
    if method == "api_token":
        auth = {
            "method": "api_token",
            "parameter_name": "x-sn-apikey",
            "parameter_type": "header",
            "expires_at": "2027-03-01T00:00:00Z",
        }
    else:
        auth = {"method": "oauth2", "client_id": "abc", "token_expires_at": "2026-11-28T10:30:00Z"}
    values: dict[str, Any] = {
        "id": "8a1f" * 8,
        "tenant_id": "contoso",
        "name": "Contoso ITSM",
        "instance_url": "https://contoso.service-now.com",
        "auth": auth,
        "created_at": NOW,
        "updated_at": NOW,
        "status_detail": "Authenticated as the integration user",
        "capabilities": {"incident": True, "sc_req_item": True, "change_request": False},
        "last_checked_at": NOW,
        "notify_emails": ["it-admins@contoso.com"],
        "etag": "W/\"datetime'2026-11-28T10%3A00%3A00Z'\"",
    }
    values.update(overrides)
    return Connection(**values)


def headers_of(connection: Connection) -> dict[str, str]:
    return {"ETag": connection.etag or "", "Location": f"/api{MANY}/{connection.id}"}


# -- the document itself ------------------------------------------------------------------


def test_document_is_openapi_31_json():
    assert DOC["openapi"] == "3.1.0"
    assert DOC["servers"] == [{"url": "/api"}]
    assert json.loads(json.dumps(DOC)) == DOC


def test_every_ref_resolves():
    refs = [node["$ref"] for node in walk(DOC) if "$ref" in node]
    assert refs
    for ref in refs:
        assert resolve({"$ref": ref}) is not None


def test_component_schemas_are_valid_2020_12():
    for schema in DOC["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_every_operation_has_an_id_and_responses():
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for method, path, operation in operations():
        assert operation["responses"], f"{method} {path}"
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5][0-9][0-9]|default", status)
            assert resolve(response)["description"]


def test_every_path_parameter_is_declared():
    for method, path, operation in operations():
        declared = DOC["paths"][path].get("parameters", []) + operation.get("parameters", [])
        in_path = {resolve(p)["name"] for p in declared if resolve(p)["in"] == "path"}
        assert in_path == set(re.findall(r"{(\w+)}", path)), f"{method} {path}"
        assert all(resolve(p)["required"] for p in declared if resolve(p)["in"] == "path")


def test_routes_of_the_app_and_the_document_agree():
    documented = {(method, path) for method, path, _ in operations()}
    assert set(http_routes()) == documented


def test_only_anonymous_routes_are_documented_without_security():
    schemes = DOC["components"]["securitySchemes"]
    assert {(s["in"], s["name"]) for s in schemes.values()} == {
        ("header", "x-functions-key"),
        ("query", "code"),
    }
    for (method, path), auth_level in http_routes().items():
        operation = find_operation(method, path)
        if auth_level == func.AuthLevel.ANONYMOUS:  # no key: no host 401 (an own 401 has a body)
            assert operation["security"] == []
            unauthorized = operation["responses"].get("401", {})
            assert unauthorized.get("$ref") != "#/components/responses/Unauthorized"
        else:
            assert operation["security"] == [{name: []} for name in schemes]
            assert "401" in operation["responses"]


def test_document_follows_the_code_constants():
    assert list(STATUS_MEANINGS) == list(STATUSES)
    assert MAX_PAGE_SIZE == api.MAX_PAGE_SIZE
    assert validation._TENANT_ID.pattern == TENANT_ID_PATTERN
    limit = resolve({"$ref": "#/components/parameters/Limit"})["schema"]
    assert (limit["maximum"], limit["default"]) == (api.MAX_PAGE_SIZE, api.DEFAULT_PAGE_SIZE)


def test_secrets_are_write_only_and_never_in_public_schemas():
    schemas = DOC["components"]["schemas"]
    for node in walk(schemas):
        for secret in ("api_token", "client_secret"):
            if isinstance(node.get("properties"), dict) and secret in node["properties"]:
                assert node["properties"][secret]["writeOnly"] is True
    for name in ("Connection", "ApiTokenAuthPublic", "OAuth2AuthPublic"):
        assert not any(node.get("writeOnly") for node in walk(schemas[name]))


def test_the_served_document_matches_itself():
    handler = next(
        f.get_user_function()
        for f in indexed_functions(function_app.app)
        if f.get_function_name() == "openapi"
    )
    request = func.HttpRequest("GET", "/api/openapi.json", body=b"")
    body = json.loads(handler(request).get_body())
    assert body == DOC
    assert_matches_openapi("GET", "/openapi.json", 200, body)


# -- bodies the app returns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "connection",
    [
        sample("api_token"),
        sample("api_token", auth={**sample("api_token").auth, "expires_at": None}),
        sample("oauth2"),
        sample("oauth2", auth={"method": "oauth2", "client_id": "abc", "token_expires_at": None}),
        sample("oauth2", last_checked_at=None, capabilities={}, notify_emails=[], status="expired"),
    ],
)
def test_connections_validate(connection: Connection):
    body, headers = connection.to_public(), headers_of(connection)
    assert_matches_openapi("POST", MANY, 201, body, headers)
    assert_matches_openapi("GET", f"/api{ONE}", 200, body, headers)
    assert_matches_openapi("PATCH", ONE, 200, body, headers)
    assert_matches_openapi("POST", CHECK, 200, body, headers)


@pytest.mark.parametrize("next_url", [None, f"/api{MANY.format(tenant_id='contoso')}?cursor=x"])
def test_list_validates(next_url: str | None):
    items = [sample("api_token").to_public(), sample("oauth2").to_public()]
    assert_matches_openapi("GET", MANY, 200, {"items": items, "next": next_url})
    assert_matches_openapi("GET", MANY, 200, {"items": [], "next": None})


def test_catalogue_health_and_delete_validate():
    assert_matches_openapi("GET", "/connection-types", 200, {"items": CONNECTION_TYPES})
    assert_matches_openapi("GET", "/health", 200, {"status": "ok"})
    assert_matches_openapi("DELETE", ONE, 204, None)
    assert_matches_openapi("GET", ONE, 401, None)


ERRORS = [
    errors.invalid_json("The body is not valid JSON."),
    errors.validation_error([errors.FieldError("name", "This field is required.")]),
    errors.not_found(),
    errors.name_taken("Contoso ITSM"),
    errors.precondition_failed(),
    errors.payload_too_large(validation.MAX_BODY_BYTES),
    errors.unsupported_media_type(),
    errors.credentials_rejected("Check the token.", "auth.api_token"),
    errors.instance_unreachable("The instance did not answer."),
    errors.service_unavailable("Try again shortly."),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.code)
def test_error_bodies_validate(error: errors.ApiError):
    assert error.code in ERROR_CODES
    details = [detail.to_dict() for detail in error.details]
    response = error_response(error.status, error.code, error.message, details)
    body = json.loads(response.get_body())
    assert_matches_openapi("PATCH", ONE, response.status_code, body, dict(response.headers))


# -- what must not validate ---------------------------------------------------------------


def rejected(method: str, path: str, status: int, body: Any, headers: Any = None) -> str:
    with pytest.raises(AssertionError) as caught:
        assert_matches_openapi(method, path, status, body, headers)
    return str(caught.value)


def test_stray_and_secret_fields_do_not_validate():
    connection = sample("api_token")
    headers = headers_of(connection)
    stray = {**connection.to_public(), "secret_versions": {}}
    assert "secret_versions" in rejected("GET", ONE, 200, stray, headers)
    leaked = connection.to_public()
    leaked["auth"]["api_token"] = "tok-123"
    rejected("GET", ONE, 200, leaked, headers)
    oauth = sample("oauth2").to_public()
    oauth["auth"]["client_secret"] = "shh"
    rejected("POST", CHECK, 200, oauth, headers)
    listed = {"items": [leaked], "next": None}
    rejected("GET", MANY, 200, listed)


def test_wrong_values_do_not_validate():
    headers = headers_of(sample("api_token"))
    rejected("GET", ONE, 200, sample("api_token", status="broken").to_public(), headers)
    rejected("GET", ONE, 200, {**sample("oauth2").to_public(), "created_at": None}, headers)
    rejected("GET", ONE, 200, {**sample("oauth2").to_public(), "updated_at": "2026-11-28"}, headers)
    not_found = {"error": {"code": "name_taken", "message": "x", "details": []}}
    rejected("GET", ONE, 404, not_found)
    rejected("GET", "/connection-types", 200, {"items": [{"type": "servicenow"}]})


def test_undocumented_status_route_header_or_body_do_not_validate():
    connection = sample("oauth2")
    body = connection.to_public()
    assert "not documented" in rejected("GET", ONE, 409, body, headers_of(connection))
    assert "not in the OpenAPI document" in rejected("PUT", ONE, 200, body)
    assert "ETag" in rejected("GET", ONE, 200, body, {"Location": "/x"})
    assert "Location" in rejected("POST", MANY, 201, body, {"ETag": "e"})
    rejected("DELETE", ONE, 204, {"unexpected": True})
    rejected("GET", ONE, 404, None)


# -- request bodies -----------------------------------------------------------------------


def request_schema(method: str, path: str, media_type: str = "application/json") -> Any:
    return find_operation(method, path)["requestBody"]["content"][media_type]["schema"]


def test_contract_request_bodies_validate():
    create = API_TOKEN_CREATE  # the contract's create, as the document's example shows it
    oauth = {**create, "auth": {"method": "oauth2", "client_id": "id", "client_secret": "s"}}
    rotate = {"auth": {"method": "api_token", "api_token": "<new>"}}
    assert validation_errors(request_schema("POST", MANY), create) == []
    assert validation_errors(request_schema("POST", MANY), oauth) == []
    patch_schema = request_schema("PATCH", ONE, "application/merge-patch+json")
    assert validation_errors(patch_schema, rotate) == []
    assert validation_errors(patch_schema, {"notify_emails": None, "name": "New"}) == []
    assert validation_errors(request_schema("POST", MANY), {**create, "extra": 1})
    assert validation_errors(
        request_schema("POST", MANY), {**create, "notify_emails": ["a@b.c"] * 21}
    )
    assert validation_errors(patch_schema, {"auth": {"refresh_token": "x"}})


# -- what generators and API explorers read ---------------------------------------------------

OPERATION_IDS = {
    ("get", "/health"): "health",
    ("get", "/openapi.json"): "getOpenApiDocument",
    ("get", "/connection-types"): "listConnectionTypes",
    ("post", MANY): "createConnection",
    ("get", MANY): "listConnections",
    ("get", ONE): "getConnection",
    ("patch", ONE): "updateConnection",
    ("delete", ONE): "deleteConnection",
    ("post", CHECK): "checkConnection",
    ("get", ONE + "/servicenow/{path}"): "proxyGet",
    ("post", ONE + "/servicenow/{path}"): "proxyPost",
    ("put", ONE + "/servicenow/{path}"): "proxyPut",
    ("patch", ONE + "/servicenow/{path}"): "proxyPatch",
    ("delete", ONE + "/servicenow/{path}"): "proxyDelete",
    ("get", ONE + "/calls"): "listProxyCalls",
    ("post", ONE + "/triggers"): "createTrigger",
    ("get", ONE + "/triggers"): "listTriggers",
    ("get", ONE + "/triggers/{trigger_id}"): "getTrigger",
    ("patch", ONE + "/triggers/{trigger_id}"): "updateTrigger",
    ("delete", ONE + "/triggers/{trigger_id}"): "deleteTrigger",
    ("post", ONE + "/triggers/{trigger_id}/poll"): "pollTrigger",
    ("get", ONE + "/triggers/{trigger_id}/events"): "listTriggerEvents",
    ("post", ONE + "/triggers/{trigger_id}/events/{event_id}/redeliver"): "redeliverTriggerEvent",
    ("post", ONE + "/triggers/{trigger_id}/push-secret"): "rotateTriggerPushSecret",
    ("post", "/hooks/triggers/{trigger_id}"): "triggerPushHint",
}
JSON_MEDIA_TYPES = {"application/json", "application/merge-patch+json"}


def test_operation_ids_stay_as_published():
    """Generated clients name their functions after them: a change breaks every caller."""
    published = {
        (method, path): operation["operationId"] for method, path, operation in operations()
    }
    assert published == OPERATION_IDS


def test_every_operation_has_one_declared_tag():
    declared = [tag["name"] for tag in DOC["tags"]]
    assert declared == ["connections", "proxy", "triggers", "service"]
    assert all(tag["description"] for tag in DOC["tags"])
    for method, path, operation in operations():
        assert len(operation["tags"]) == 1 and operation["tags"][0] in declared, f"{method} {path}"


def media_types() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, media type, media type object) of every request body and response, once each."""
    seen = set()
    for method, path, operation in operations():
        bodies = [("request", operation.get("requestBody", {}))]
        bodies += [
            (status, resolve(response)) for status, response in operation["responses"].items()
        ]
        for name, body in bodies:
            for media_type, media in body.get("content", {}).items():
                if id(media) not in seen:
                    seen.add(id(media))
                    yield f"{method.upper()} {path} {name} {media_type}", media_type, media


def test_every_json_body_and_answer_has_an_example():
    missing = [
        where
        for where, media_type, media in media_types()
        if media_type in JSON_MEDIA_TYPES and not media.get("examples")
    ]
    assert missing == []


def test_every_example_matches_its_own_schema():
    checked, problems = 0, []
    for where, _, media in media_types():
        for name, example in media.get("examples", {}).items():
            assert set(example) == {"summary", "value"}, f"{where} {name}"
            checked += 1
            problems += [
                f"{where} {name}: {line}"
                for line in validation_errors(media["schema"], example["value"])
            ]
    for name, schema in DOC["components"]["schemas"].items():
        for node in walk(schema):
            examples = node.get("examples")  # JSON Schema's own: a list of values
            for value in examples if isinstance(examples, list) else []:
                checked += 1
                problems += [f"schema {name}: {line}" for line in validation_errors(node, value)]
    assert problems == []
    assert checked


def subschemas(schema: Any) -> Iterator[dict[str, Any]]:
    """`schema` and every schema inside it (properties, items, alternatives)."""
    if not isinstance(schema, dict):
        return
    yield schema
    nested = [
        *schema.get("properties", {}).values(),
        schema.get("items"),
        schema.get("additionalProperties"),
    ]
    nested += schema.get("oneOf", []) + schema.get("anyOf", [])
    for child in nested:
        yield from subschemas(child)


def every_schema() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, schema in DOC["components"]["schemas"].items():
        yield f"schema {name}", schema
    for where, _, media in media_types():
        yield where, media["schema"]
    for kind in ("parameters", "headers"):
        for name, item in DOC["components"][kind].items():
            yield f"{kind} {name}", item["schema"]


def typing_problems(schema: dict[str, Any]) -> list[str]:
    """What keeps a generator from typing the schema (openapi-python-client drops such models)."""
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    problems = []
    if "nullable" in schema or "allOf" in schema:
        problems.append("nullable or allOf: use a `type` list or `oneOf` with a null schema")
    if len(kinds) > 1 and (len(kinds) != 2 or "null" not in kinds):
        problems.append(f"type {kinds}: a union of types belongs in `oneOf`")
    if "array" in kinds and "items" not in schema:
        problems.append("an array without `items`")
    if "object" in kinds and "additionalProperties" not in schema:
        problems.append("an object without `additionalProperties`")
    for alternative in schema.get("oneOf", []) + schema.get("anyOf", []):
        if "$ref" not in alternative and "type" not in alternative:
            problems.append(f"an alternative that is no complete schema: {alternative}")
    return problems


def test_every_schema_is_one_a_generator_can_type():
    problems = [
        f"{where}: {problem}"
        for where, schema in every_schema()
        for node in subschemas(schema)
        for problem in typing_problems(node)
    ]
    assert problems == []
    assert typing_problems({"type": ["string", "array", "null"]})  # the catalogue's old default
    assert typing_problems({"type": "array"})


def test_a_narrowed_error_is_typed_as_error_and_validated_with_its_codes():
    response = resolve(find_operation("GET", ONE)["responses"]["404"])
    schema = response["content"]["application/json"]["schema"]
    assert schema["$ref"] == "#/components/schemas/Error"
    body = {"error": {"code": "not_found", "message": "x", "details": []}}
    assert validation_errors(schema, body) == []
    body["error"]["code"] = "name_taken"
    assert validation_errors(schema, body)
