"""Checks a response (status, body, headers) against the app's OpenAPI document."""

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, relevance

from connections.openapi import openapi_document

API_PREFIX = "/api"
METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
FORMATS = FormatChecker()


@FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # formats only constrain strings; `type` says whether null is allowed
    if not RFC3339.match(value):
        return False
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def resolve(node: Any, document: Mapping[str, Any] | None = None) -> Any:
    """Follows a local `$ref` (`#/components/...`) to what it points at; other nodes as they are."""
    document = document if document is not None else openapi_document()
    while isinstance(node, Mapping) and "$ref" in node:
        reference = node["$ref"]
        if not reference.startswith("#/"):
            raise AssertionError(f"not a local reference: {reference}")
        node = document
        for part in reference[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise AssertionError(f"unresolvable reference: {reference}")
            node = node[key]
    return node


def find_operation(method: str, path_template: str) -> dict[str, Any]:
    paths = openapi_document()["paths"]
    path = path_template.removeprefix(API_PREFIX) or "/"
    operation = paths.get(path, {}).get(method.lower())
    if operation is None:
        documented = sorted(
            f"{verb.upper()} {key}"
            for key, item in paths.items()
            for verb in item
            if verb in METHODS
        )
        raise AssertionError(
            f"{method.upper()} {path} is not in the OpenAPI document: {documented}"
        )
    return operation


def response_schema(response: Mapping[str, Any]) -> dict[str, Any] | None:
    content = response.get("content")
    if not content:
        return None
    return content["application/json"]["schema"]


def validator_for(schema: Mapping[str, Any]) -> Draft202012Validator:
    """A 2020-12 validator whose `#/components/...` references resolve (components embedded)."""
    root = {**schema, "components": openapi_document()["components"]}
    return Draft202012Validator(root, format_checker=FORMATS)


def _explain(error: ValidationError, indent: str = "") -> list[str]:
    """The error and, for `oneOf` and the like, why each alternative failed."""
    lines = [f"{indent}{error.json_path}: {error.message}"]
    for sub_error in sorted(error.context or [], key=relevance):
        lines += _explain(sub_error, indent + "  ")
    return lines


def validation_errors(schema: Mapping[str, Any], body: Any) -> list[str]:
    found = sorted(validator_for(schema).iter_errors(body), key=relevance)
    return [line for error in found for line in _explain(error)]


def _check_headers(response: Mapping[str, Any], headers: Mapping[str, str], where: str) -> None:
    present = {name.lower(): value for name, value in headers.items()}
    for name, header in response.get("headers", {}).items():
        if resolve(header).get("required") and not present.get(name.lower()):
            raise AssertionError(f"{where}: required header {name} is missing or empty")


def assert_matches_openapi(
    method: str,
    path_template: str,
    status: int,
    body: Any | None,
    headers: Mapping[str, str] | None = None,
) -> None:
    """`path_template` is a document path such as `/tenants/{tenant_id}/connections`."""
    where = f"{method.upper()} {path_template} -> {status}"
    responses = find_operation(method, path_template)["responses"]
    key = str(status) if str(status) in responses else "default"
    if key not in responses:
        raise AssertionError(f"{where}: status not documented (documented: {sorted(responses)})")
    response = resolve(responses[key])
    schema = response_schema(response)
    if schema is None:
        if body not in (None, b"", ""):
            raise AssertionError(f"{where}: documented without a body, got {body!r}")
    else:
        if body is None:
            raise AssertionError(f"{where}: documented with a JSON body, got none")
        problems = validation_errors(schema, body)
        if problems:
            shown = "\n  ".join(problems[:20])
            raise AssertionError(f"{where}: body does not match the document:\n  {shown}")
    _check_headers(response, headers or {}, where)
