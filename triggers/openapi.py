"""The triggers' part of the OpenAPI document: their routes, the push route, and the schemas,
derived from the one declaration of the create body (`triggers.body.FIELDS`)."""

from typing import Any

from connections import errors
from connections.openapi import (
    EXAMPLE_CONNECTION_ID,
    EXAMPLE_TENANT,
    JSON,
    _any_body,
    _array,
    _const,
    _error_response,
    _example,
    _nullable,
    _object,
    _operation,
    _parameter,
    _parameter_refs,
    _ref,
    _request,
    _response,
    _timestamp,
)
from connections.validation import MAX_BODY_BYTES
from proxy.openapi import REQUEST
from triggers import body
from triggers.model import ACTIVE, FAILING, PAUSED, STATUSES, WAITING
from triggers.service import HOOK_REFUSED, trigger_not_found, trigger_paused
from triggers.settings import TriggerSettings, trigger_settings

Schema = dict[str, Any]
TAG = "triggers"
ID_PATTERN = r"^[0-9a-f]{32}$"

STATUS_MEANINGS = {
    ACTIVE: "polling",
    PAUSED: "`enabled` is false: not polling; resumes where it stopped",
    WAITING: "the connection is not usable; resumes where it stopped, losing nothing, once it is",
    FAILING: "the instance refuses the query or the table; `status_detail` says what to fix",
}

TRIGGERS_DESCRIPTION = f"""\
A trigger watches one table of the connection's instance for records matching an encoded query
and turns each new or changed matching record into one event, POSTed (signed) to the Automate365
engine's webhook. Its table and query are tried on the instance (one `sysparm_limit=1` read)
before anything is stored or changed: a refusal is 422 `query_rejected` with the instance's
reason. Reads return an `ETag`; `PATCH` and `DELETE` honour an optional `If-Match` (412). Bodies
are JSON, at most {MAX_BODY_BYTES // 1024} KiB; unknown fields are 400 `validation_error` with one
`details` entry per bad field. A trigger of another connection or tenant is 404, as is an id that
is not 32 lowercase hex digits.
"""


# -- examples (from the contract) ---------------------------------------------------------------

EXAMPLE_TRIGGER_ID = "5d2c7a9e1f3b4d6a8c0e2f4a6b8d0c1e"
TRIGGER = {
    "id": EXAMPLE_TRIGGER_ID,
    "connection_id": EXAMPLE_CONNECTION_ID,
    **body.create_example(),
    "status": ACTIVE,
    "status_detail": "",
    "matching_now": 3,
    "caught_up_to": "2026-12-01T10:00:01Z",
    "last_polled_at": "2026-12-01T10:00:31Z",
    "last_event_at": "2026-12-01T10:00:31Z",
    "events_emitted": 1,
    "created_at": "2026-11-30T09:00:00Z",
    "updated_at": "2026-12-01T10:00:31Z",
}
CREATED_TRIGGER = {
    **TRIGGER,
    "caught_up_to": None,
    "last_polled_at": None,
    "last_event_at": None,
    "events_emitted": 0,
    "updated_at": TRIGGER["created_at"],
    "push_secret": "<push secret>",
}
EVENT = {
    "event_id": "422a2f72fc66e2bf8fef7f21ae7fb89a",
    "change": "created",
    "tenant_id": EXAMPLE_TENANT,
    "connection_id": EXAMPLE_CONNECTION_ID,
    "trigger_id": EXAMPLE_TRIGGER_ID,
    "trigger_name": TRIGGER["name"],
    "table": TRIGGER["table"],
    "sys_id": REQUEST["sys_id"],
    "number": REQUEST["number"],
    "sys_mod_count": 0,
    "sys_updated_on": "2026-12-01T10:00:01Z",
    "record": {name: value for name, value in REQUEST.items() if name != "sys_id"},
    "emitted_at": "2026-12-01T10:00:31Z",
}
CREATE_EXAMPLES = {"newTeamsRequests": _example("New Teams requests", body.create_example())}
CREATED_EXAMPLES = {"created": _example("A new trigger, before its first poll", CREATED_TRIGGER)}
ACTIVE_EXAMPLES = {"active": _example("Active", TRIGGER)}
PAUSED_EXAMPLES = {"paused": _example("Paused", {**TRIGGER, "enabled": False, "status": PAUSED})}
PATCH_EXAMPLES = {
    "pause": _example("Pause (true resumes where it stopped)", {"enabled": False}),
    "narrow": _example(
        "Only high-priority requests, polled every 2 minutes",
        {"query": f"{TRIGGER['query']}^priority=1", "interval_seconds": 120},
    ),
}
QUEUED_EXAMPLES = {"queued": _example("Queued", {"status": "queued"})}
REDELIVERY_EXAMPLES = {
    "queued": _example("Queued", {"status": "queued", "event_id": EVENT["event_id"]})
}
PUSH_SECRET_EXAMPLES = {"rotated": _example("A new secret", {"push_secret": "<push secret>"})}
HINT_EXAMPLES = {"accepted": _example("Accepted", {"status": "accepted"})}
HINT_BODY_EXAMPLES = {
    "record": _example(
        "What a Business Rule might send",
        {"table": TRIGGER["table"], "sys_id": REQUEST["sys_id"]},
    )
}


def tag() -> Schema:
    return {
        "name": TAG,
        "description": "ServiceNow records as events: triggers, their events, and the push hint.",
    }


def parameters() -> dict[str, Schema]:
    return {
        "TriggerId": _parameter(
            "trigger_id",
            "path",
            {"type": "string"},
            "The trigger's id (32 lowercase hex digits); any other value is 404.",
            True,
        ),
        "HookTriggerId": _parameter(
            "trigger_id",
            "path",
            {"type": "string"},
            "The trigger's id; an unknown one gets the same 401 as a wrong secret.",
            True,
        ),
        "EventId": _parameter(
            "event_id",
            "path",
            {"type": "string"},
            "The event's `event_id`; an unknown one (or one past retention) is 404.",
            True,
        ),
        "Since": _parameter(
            "since",
            "query",
            {"type": "string", "format": "date-time"},
            "Only events emitted at or after this RFC 3339 moment; anything else is 400.",
            False,
        ),
        "TriggerSecret": _parameter(
            "X-Trigger-Secret",
            "header",
            {"type": "string"},
            "The trigger's push secret (from its create answer, or `rotateTriggerPushSecret`).",
            True,
        ),
    }


def headers() -> dict[str, Schema]:
    return {
        "TriggerETag": {
            "description": "Version of the trigger, for `If-Match`. It changes with every poll "
            "(the poll state is part of the trigger).",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
        },
        "TriggerLocation": {
            "description": "URL of the new trigger "
            "(`/api/tenants/{tenant_id}/connections/{connection_id}/triggers/{id}`).",
            "required": True,
            "schema": {"type": "string", "minLength": 1},
        },
    }


def _trigger_properties(settings: TriggerSettings) -> Schema:
    return {
        "id": {"type": "string", "pattern": ID_PATTERN, "description": "The trigger's id."},
        "connection_id": {"type": "string", "pattern": ID_PATTERN},
        **body.returned_properties(settings),
        "status": _ref("TriggerStatus"),
        "status_detail": {"type": "string", "description": "What to fix, when not `active`."},
        "matching_now": _nullable(
            {
                "type": "integer",
                "minimum": 0,
                "description": "How many records matched the query when it was last tried "
                "(the instance's `X-Total-Count`).",
            }
        ),
        "caught_up_to": _nullable(
            _timestamp("Every matching change up to this moment has become an event.")
        ),
        "last_polled_at": _nullable(_timestamp("The last poll; null before the first.")),
        "last_event_at": _nullable(_timestamp("The last event emitted; null before any.")),
        "events_emitted": {"type": "integer", "minimum": 0},
        "created_at": _timestamp("When the trigger was created."),
        "updated_at": _timestamp("When the trigger was last changed."),
    }


def schemas(settings: TriggerSettings | None = None) -> dict[str, Schema]:
    settings = settings or trigger_settings()
    properties = _trigger_properties(settings)
    push_secret = {
        "type": "string",
        "minLength": 1,
        "readOnly": True,
        "description": "Send it as `X-Trigger-Secret` to `POST /hooks/triggers/{trigger_id}`. "
        "Shown only here; `rotateTriggerPushSecret` makes a new one.",
    }
    event = _object(
        {
            "event_id": {
                "type": "string",
                "description": "Derived from trigger, `sys_id` and `sys_mod_count`: a copy "
                "carries the same id.",
            },
            "change": {"type": "string", "enum": ["created", "updated"]},
            "tenant_id": {"type": "string"},
            "connection_id": {"type": "string"},
            "trigger_id": {"type": "string"},
            "trigger_name": {"type": "string"},
            "table": {"type": "string"},
            "sys_id": {"type": "string"},
            "number": {"type": "string"},
            "sys_mod_count": {"type": "integer", "minimum": 0},
            "sys_updated_on": _timestamp("The version's `sys_updated_on`."),
            "record": {
                "type": "object",
                "additionalProperties": True,
                "description": "The instance's stored values of the trigger's fields (and "
                "`number`), by field name: a reference is the referenced `sys_id`, a date-time "
                "RFC 3339 UTC, `sys_mod_count` a number; a field the record lacks is null.",
            },
            "emitted_at": _timestamp("When the event was emitted."),
        },
        description="One event, as POSTed to `EVENTS_WEBHOOK_URL`.",
    )
    status_lines = "; ".join(
        f"`{status}`: {meaning}" for status, meaning in STATUS_MEANINGS.items()
    )
    return {
        "TriggerStatus": {"type": "string", "enum": list(STATUSES), "description": status_lines},
        "CreateTrigger": body.create_schema(settings),
        "TriggerPatch": body.patch_schema(settings, _nullable),
        "Trigger": _object(properties, description="A trigger as returned (never its secret)."),
        "CreatedTrigger": _object(
            {**properties, "push_secret": push_secret},
            description="The new trigger, with its push secret (shown only this once).",
        ),
        "TriggerList": _object(
            {
                "items": _array(_ref("Trigger")),
                "next": _nullable({"type": "string", "description": "The next page's URL."}),
            }
        ),
        "TriggerEvent": event,
        "TriggerEventList": _object(
            {
                "items": _array(_ref("TriggerEvent"), "Oldest first."),
                "next": _nullable({"type": "string", "description": "The next page's URL."}),
            }
        ),
        "PushSecret": _object({"push_secret": push_secret}),
        "PollQueued": _object({"status": _const("queued")}),
        "RedeliveryQueued": _object({"status": _const("queued"), "event_id": {"type": "string"}}),
        "HintAccepted": _object({"status": _const("accepted")}),
    }


# -- operations ---------------------------------------------------------------------------------

_NOT_FOUND = _error_response(
    "No such trigger for this connection (also when it belongs to another connection or "
    "tenant), or no such connection for this tenant.",
    trigger_not_found(),
)
_QUERY_REJECTED = _error_response(
    "The instance refused the table or query (a 401 or 403 there, or an error answer); the "
    "message carries the instance's reason and what to fix. Nothing was stored or changed.",
    errors.query_rejected(
        "The instance refused to let the connection's integration user read sc_req_item (403: "
        "ACL Exception). Give that user read access to sc_req_item (a role or an ACL), or choose "
        "another table."
    ),
)
_CONNECTION_UNUSABLE = _error_response(
    "The connection's credentials are known not to work, so the query could not be tried; the "
    "message names the status and what to do. Nothing was stored or changed.",
    errors.connection_unusable(
        "The connection's status is expired: The API token expired on 2027-03-01. Edit the "
        "connection with a valid API token (PATCH the connection), then call again."
    ),
)
_PAUSED = _error_response(
    "The trigger is paused (`enabled` is false); set `enabled` to true first.", trigger_paused()
)
_HOOK_REFUSED = _error_response(
    f'401 `unauthorized` (message: "{HOOK_REFUSED}"): the `X-Trigger-Secret` header is '
    "missing or wrong, or there is no such trigger: the same answer for each.",
    errors.unauthorized(HOOK_REFUSED),
)


def _trigger_operation(
    operation_id: str,
    summary: str,
    success: dict[str, Schema],
    shared: list[str],
    own: dict[str, Schema],
    **options: Any,
) -> Schema:
    """`shared` names the usual error responses (components); `own` adds the triggers' own."""
    operation = _operation(operation_id, summary, success, shared, tag=TAG, **options)
    operation["responses"].update(own)
    return dict(operation, responses=dict(sorted(operation["responses"].items())))


def _trigger_ok(description: str, examples: dict[str, Schema]) -> dict[str, Schema]:
    return {"200": _response(description, _ref("Trigger"), examples, ETag="TriggerETag")}


def _page(schema_name: str, summary: str, item: Schema) -> Schema:
    """A one-page answer with an example of one item and no next page."""
    example = {"items": [item], "next": None}
    return _response("One page.", _ref(schema_name), {"page": _example(summary, example)})


def paths() -> dict[str, Schema]:
    connection = _parameter_refs("TenantId", "ConnectionId")
    one = _parameter_refs("TenantId", "ConnectionId", "TriggerId")
    collection = "/tenants/{tenant_id}/connections/{connection_id}/triggers"
    item = collection + "/{trigger_id}"
    writes = {"404": _NOT_FOUND, "409": _CONNECTION_UNUSABLE, "422": _QUERY_REJECTED}
    return {
        collection: {
            "parameters": connection,
            "post": _trigger_operation(
                "createTrigger",
                "Create a trigger",
                {
                    "201": _response(
                        "Created; `push_secret` is shown only here.",
                        _ref("CreatedTrigger"),
                        CREATED_EXAMPLES,
                        ETag="TriggerETag",
                        Location="TriggerLocation",
                    )
                },
                ["400", "413", "415", "502", "503"],
                writes,
                description=TRIGGERS_DESCRIPTION
                + "\nValidates the body, tries the query on the instance (its count of matches "
                "becomes `matching_now`), then writes the push secret to Key Vault and the "
                "trigger to Table Storage. The first poll comes at the next dispatch; changes "
                "from `start_at` on become events.",
                request=_request("CreateTrigger", CREATE_EXAMPLES, JSON),
            ),
            "get": _trigger_operation(
                "listTriggers",
                "List the connection's triggers",
                {"200": _page("TriggerList", "One trigger", TRIGGER)},
                ["400", "503"],
                {"404": _NOT_FOUND},
                parameters=_parameter_refs("Limit", "Cursor"),
            ),
        },
        item: {
            "parameters": one,
            "get": _trigger_operation(
                "getTrigger",
                "Read a trigger",
                _trigger_ok("The trigger.", ACTIVE_EXAMPLES),
                ["400", "503"],
                {"404": _NOT_FOUND},
            ),
            "patch": _trigger_operation(
                "updateTrigger",
                "Change a trigger (JSON merge patch of the create body)",
                _trigger_ok("The changed trigger.", PAUSED_EXAMPLES),
                ["400", "412", "413", "415", "502", "503"],
                writes,
                description="A changed `table` or `query` is tried on the instance first (422 "
                "`query_rejected` changes nothing) and refreshes `matching_now`. A changed "
                "`table` or `start_at` restarts the trigger at the new `start_at` (null: now). "
                "`enabled` false pauses it (status `paused`), true resumes it (`active`) where "
                "it stopped. A changed `interval_seconds` takes effect at once. Honours "
                "`If-Match`.",
                parameters=_parameter_refs("IfMatch"),
                request=_request(
                    "TriggerPatch", PATCH_EXAMPLES, JSON, "application/merge-patch+json"
                ),
            ),
            "delete": _trigger_operation(
                "deleteTrigger",
                "Delete a trigger, its events and its push secret",
                {"204": _response("Deleted; the trigger is 404 from now on.")},
                ["400", "412", "503"],
                {"404": _NOT_FOUND},
                parameters=_parameter_refs("IfMatch"),
            ),
        },
        item + "/poll": {
            "parameters": one,
            "post": _trigger_operation(
                "pollTrigger",
                "Poll now",
                {"202": _response("A poll is queued.", _ref("PollQueued"), QUEUED_EXAMPLES)},
                ["400", "503"],
                {"404": _NOT_FOUND, "409": _PAUSED},
            ),
        },
        item + "/events": {
            "parameters": one,
            "get": _trigger_operation(
                "listTriggerEvents",
                "The trigger's recent events, oldest first",
                {"200": _page("TriggerEventList", "One event", EVENT)},
                ["400", "503"],
                {"404": _NOT_FOUND},
                description="Kept `EVENT_RETENTION_DAYS` days (default 7), also those whose "
                "delivery failed.",
                parameters=_parameter_refs("Since", "Limit", "Cursor"),
            ),
        },
        item + "/events/{event_id}/redeliver": {
            "parameters": [*one, *_parameter_refs("EventId")],
            "post": _trigger_operation(
                "redeliverTriggerEvent",
                "Send a kept event to the webhook again",
                {
                    "202": _response(
                        "The event is queued for delivery.",
                        _ref("RedeliveryQueued"),
                        REDELIVERY_EXAMPLES,
                    )
                },
                ["400", "503"],
                {"404": _NOT_FOUND},
            ),
        },
        item + "/push-secret": {
            "parameters": one,
            "post": _trigger_operation(
                "rotateTriggerPushSecret",
                "Make a new push secret",
                {
                    "200": _response(
                        "The new secret; the old one stops working at once.",
                        _ref("PushSecret"),
                        PUSH_SECRET_EXAMPLES,
                    )
                },
                ["400", "412", "503"],
                {"404": _NOT_FOUND},
            ),
        },
        "/hooks/triggers/{trigger_id}": {
            "parameters": _parameter_refs("HookTriggerId"),
            "post": _trigger_operation(
                "triggerPushHint",
                "Push hint from ServiceNow: poll soon",
                {
                    "202": _response(
                        "Accepted: a poll follows soon (at most one per 5 s per trigger; none "
                        "while the trigger is paused).",
                        _ref("HintAccepted"),
                        HINT_EXAMPLES,
                    ),
                    "401": _HOOK_REFUSED,
                },
                ["503"],
                {},
                secured=False,
                description="Anonymous (no function key): ServiceNow calls it from a Business "
                "Rule or a Flow REST step with the trigger's push secret in `X-Trigger-Secret`. "
                "The body is ignored.",
                parameters=_parameter_refs("TriggerSecret"),
                request=_any_body(
                    "Ignored: send what the Business Rule has at hand, or nothing.",
                    HINT_BODY_EXAMPLES,
                ),
            ),
        },
    }


__all__ = ["headers", "parameters", "paths", "schemas", "tag"]
