"""HTTP functions of the triggers: thin handlers that parse, call `triggers.service` and map to
HTTP, and the anonymous push route ServiceNow calls with the trigger's secret."""

from datetime import datetime
from urllib.parse import urlencode

import azure.functions as func

from connections import errors
from connections.api import api_errors, connection_id_of, page_size, tenant_of
from connections.errors import FieldError
from connections.http import json_response
from connections.validation import parse_json_body

# The SDKs, and what stands on them, are imported on first use inside the handlers, so
# importing the app (a cold start) stays cheap.

bp = func.Blueprint()

TRIGGERS = "tenants/{tenant_id}/connections/{connection_id}/triggers"
ONE = TRIGGERS + "/{trigger_id}"


def _service():
    from triggers import service

    return service


def _ts():
    from triggers.services import trigger_services

    return trigger_services()


def _ids(req: func.HttpRequest) -> tuple[str, str, str]:
    """Tenant, connection and trigger ids of the route (a trigger id of another shape is 404)."""
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    trigger_id = req.route_params.get("trigger_id", "")
    if not _service().is_id(trigger_id):
        raise _service().trigger_not_found()
    return tenant_id, connection_id, trigger_id


def _url(tenant_id: str, connection_id: str, trigger_id: str = "", tail: str = "") -> str:
    url = f"/api/tenants/{tenant_id}/connections/{connection_id}/triggers"
    return url + (f"/{trigger_id}" if trigger_id else "") + tail


def _trigger_response(trigger, status_code: int = 200, **headers: str) -> func.HttpResponse:
    return json_response(trigger.to_public(), status_code, {"ETag": trigger.etag or "", **headers})


def _since(req: func.HttpRequest) -> datetime | None:
    from triggers.body import parse_moment

    raw = req.params.get("since")
    if raw is None:
        return None
    moment = parse_moment(raw)
    if moment is None:
        hint = "Must be an RFC 3339 date-time with a time zone, e.g. 2026-12-01T00:00:00Z."
        raise errors.validation_error([FieldError("since", hint)])
    return moment


@bp.function_name("create_trigger")
@bp.route(route=TRIGGERS, methods=["POST"])
@api_errors
def create_trigger(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    doc = parse_json_body(req.get_body(), req.headers.get("Content-Type"))
    created = _service().create_trigger(_ts(), tenant_id, connection_id, doc)
    trigger = created.trigger
    answer = {**trigger.to_public(), "push_secret": created.push_secret}
    headers = {"ETag": trigger.etag or "", "Location": _url(tenant_id, connection_id, trigger.id)}
    return json_response(answer, 201, headers)


@bp.function_name("list_triggers")
@bp.route(route=TRIGGERS, methods=["GET"])
@api_errors
def list_triggers(req: func.HttpRequest) -> func.HttpResponse:
    tenant_id, connection_id = tenant_of(req), connection_id_of(req)
    limit = page_size(req)
    items, cursor = _service().list_triggers(
        _ts(), tenant_id, connection_id, limit, req.params.get("cursor")
    )
    next_url = None
    if cursor:
        query = urlencode({"limit": limit, "cursor": cursor})
        next_url = _url(tenant_id, connection_id, tail=f"?{query}")
    return json_response({"items": [item.to_public() for item in items], "next": next_url})


@bp.function_name("get_trigger")
@bp.route(route=ONE, methods=["GET"])
@api_errors
def get_trigger(req: func.HttpRequest) -> func.HttpResponse:
    return _trigger_response(_service().get_trigger(_ts(), *_ids(req)))


@bp.function_name("update_trigger")
@bp.route(route=ONE, methods=["PATCH"])
@api_errors
def update_trigger(req: func.HttpRequest) -> func.HttpResponse:
    ids = _ids(req)
    patch = parse_json_body(req.get_body(), req.headers.get("Content-Type"))
    trigger = _service().update_trigger(_ts(), *ids, patch, req.headers.get("If-Match"))
    return _trigger_response(trigger)


@bp.function_name("delete_trigger")
@bp.route(route=ONE, methods=["DELETE"])
@api_errors
def delete_trigger(req: func.HttpRequest) -> func.HttpResponse:
    _service().delete_trigger(_ts(), *_ids(req), req.headers.get("If-Match"))
    return func.HttpResponse(status_code=204)


@bp.function_name("poll_trigger_now")
@bp.route(route=ONE + "/poll", methods=["POST"])
@api_errors
def poll_trigger_now(req: func.HttpRequest) -> func.HttpResponse:
    _service().poll_now(_ts(), *_ids(req))
    return json_response({"status": "queued"}, 202)


@bp.function_name("list_trigger_events")
@bp.route(route=ONE + "/events", methods=["GET"])
@api_errors
def list_trigger_events(req: func.HttpRequest) -> func.HttpResponse:
    ids = _ids(req)
    since, limit = _since(req), page_size(req)
    items, cursor = _service().list_events(_ts(), *ids, since, limit, req.params.get("cursor"))
    next_url = None
    if cursor:
        query = {"limit": limit, "cursor": cursor}
        if req.params.get("since") is not None:
            query["since"] = req.params["since"]
        next_url = _url(*ids, tail=f"/events?{urlencode(query)}")
    return json_response({"items": items, "next": next_url})


@bp.function_name("redeliver_trigger_event")
@bp.route(route=ONE + "/events/{event_id}/redeliver", methods=["POST"])
@api_errors
def redeliver_trigger_event(req: func.HttpRequest) -> func.HttpResponse:
    event_id = req.route_params.get("event_id", "")
    _service().redeliver(_ts(), *_ids(req), event_id)
    return json_response({"status": "queued", "event_id": event_id}, 202)


@bp.function_name("rotate_trigger_push_secret")
@bp.route(route=ONE + "/push-secret", methods=["POST"])
@api_errors
def rotate_trigger_push_secret(req: func.HttpRequest) -> func.HttpResponse:
    push_secret = _service().rotate_push_secret(_ts(), *_ids(req))
    return json_response({"push_secret": push_secret})


@bp.function_name("trigger_push_hint")
@bp.route(
    route="hooks/triggers/{trigger_id}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
@api_errors
def trigger_push_hint(req: func.HttpRequest) -> func.HttpResponse:
    """ServiceNow's "something changed": the body is never read."""
    trigger_id = req.route_params.get("trigger_id", "")
    _service().accept_hint(_ts(), trigger_id, req.headers.get("X-Trigger-Secret"))
    return json_response({"status": "accepted"}, 202)
