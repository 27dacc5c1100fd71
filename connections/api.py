"""HTTP functions of the Connections API: thin handlers that parse, call and map to HTTP."""

import functools
import logging
from collections.abc import Callable
from urllib.parse import urlencode

import azure.functions as func

from connections import errors
from connections.catalogue import CONNECTION_TYPES
from connections.errors import ApiError, FieldError
from connections.http import error_response, json_response
from connections.model import Connection
from connections.validation import check_tenant_id, is_connection_id, parse_json_body

# The Azure SDKs, and what stands on them, are imported on first use inside the handlers, so
# importing the app (a cold start) stays as cheap as importing azure.functions.

bp = func.Blueprint()
log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
Handler = Callable[[func.HttpRequest], func.HttpResponse]


def api_errors(handler: Handler) -> Handler:
    """Maps errors to the contract's error body; never a stack trace."""

    @functools.wraps(handler)
    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return handler(req)
        except ApiError as exc:
            details = [detail.to_dict() for detail in exc.details]
            return error_response(exc.status, exc.code, exc.message, details)
        except Exception as exc:
            from azure.core.exceptions import AzureError

            if not isinstance(exc, AzureError):
                raise
            log.warning("storage or vault unavailable: %s", type(exc).__name__)
            unavailable = errors.service_unavailable(
                "Storage or Key Vault is unavailable; nothing was changed. Try again shortly."
            )
            return error_response(
                unavailable.status,
                unavailable.code,
                unavailable.message,
                headers={"Retry-After": "5"},
            )

    return wrapper


def _service():
    from connections import service

    return service


def _services():
    from connections.services import services

    return services()


def _connection_response(connection: Connection, status_code: int = 200, **headers: str):
    all_headers = {"ETag": connection.etag or ""}
    all_headers.update(headers)
    return json_response(connection.to_public(), status_code, all_headers)


def tenant_of(req: func.HttpRequest) -> str:
    return check_tenant_id(req.route_params.get("tenant_id", ""))


def connection_id_of(req: func.HttpRequest) -> str:
    connection_id = req.route_params.get("connection_id", "")
    if not is_connection_id(connection_id):
        raise errors.not_found()
    return connection_id


def _connection_url(connection: Connection) -> str:
    return f"/api/tenants/{connection.tenant_id}/connections/{connection.id}"


def page_size(req: func.HttpRequest) -> int:
    raw = req.params.get("limit")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        detail = FieldError("limit", f"Must be a whole number from 1 to {MAX_PAGE_SIZE}.")
        raise errors.validation_error([detail])
    return int(raw)


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"status": "ok"})


@bp.function_name("connection_types")
@bp.route(route="connection-types", methods=["GET"])
def connection_types(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"items": CONNECTION_TYPES})


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=["GET"])
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    from connections.openapi import openapi_document

    return json_response(openapi_document())


@bp.function_name("create_connection")
@bp.route(route="tenants/{tenant_id}/connections", methods=["POST"])
@api_errors
def create_connection(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id = tenant_of(req)
    body = parse_json_body(req.get_body(), req.headers.get("Content-Type"))
    connection = _service().create_connection(_services(), tenant_id, body)
    return _connection_response(connection, 201, Location=_connection_url(connection))


@bp.function_name("list_connections")
@bp.route(route="tenants/{tenant_id}/connections", methods=["GET"])
@api_errors
def list_connections(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id = tenant_of(req)
    limit = page_size(req)
    items, cursor = _service().list_connections(
        _services(), tenant_id, limit, req.params.get("cursor")
    )
    next_url = None
    if cursor:
        next_url = f"/api/tenants/{tenant_id}/connections?" + urlencode(
            {"limit": limit, "cursor": cursor}
        )
    return json_response({"items": [item.to_public() for item in items], "next": next_url})


@bp.function_name("get_connection")
@bp.route(route="tenants/{tenant_id}/connections/{connection_id}", methods=["GET"])
@api_errors
def get_connection(req: func.HttpRequest) -> func.HttpResponse:
    connection = _service().get_connection(_services(), tenant_of(req), connection_id_of(req))
    return _connection_response(connection)


@bp.function_name("update_connection")
@bp.route(route="tenants/{tenant_id}/connections/{connection_id}", methods=["PATCH"])
@api_errors
def update_connection(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    patch = parse_json_body(req.get_body(), req.headers.get("Content-Type"))
    connection = _service().update_connection(
        _services(), tenant_id, connection_id, patch, req.headers.get("If-Match")
    )
    return _connection_response(connection)


@bp.function_name("delete_connection")
@bp.route(route="tenants/{tenant_id}/connections/{connection_id}", methods=["DELETE"])
@api_errors
def delete_connection(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    _service().delete_connection(_services(), tenant_id, connection_id, req.headers.get("If-Match"))
    return func.HttpResponse(status_code=204)


@bp.function_name("check_connection")
@bp.route(route="tenants/{tenant_id}/connections/{connection_id}/check", methods=["POST"])
@api_errors
def check_connection(req: func.HttpRequest) -> func.HttpResponse:
    from renewal.worker import check_now

    connection = check_now(_services(), tenant_of(req), connection_id_of(req))
    return _connection_response(connection)
