"""HTTP functions of the Connections API: thin handlers that parse, call and map to HTTP."""

import azure.functions as func

from connections.catalogue import CONNECTION_TYPES
from connections.http import json_response

bp = func.Blueprint()


@bp.function_name("health")
@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"status": "ok"})


@bp.function_name("connection_types")
@bp.route(route="connection-types", methods=["GET"])
def connection_types(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"items": CONNECTION_TYPES})
