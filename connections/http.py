"""JSON responses in the contract's shape."""

import json
from typing import Any

import azure.functions as func

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> func.HttpResponse:
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, "Cache-Control": "no-store"}
    all_headers.update(headers or {})
    return func.HttpResponse(
        json.dumps(body, ensure_ascii=False), status_code=status_code, headers=all_headers
    )


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    error = {"code": code, "message": message, "details": details or []}
    return json_response({"error": error}, status_code, headers)
