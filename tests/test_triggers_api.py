"""The triggers' HTTP API through the local host, Azurite and the stand-ins (CONTRACT.md,
"Triggers: ServiceNow records as events"): every route, its answers and its errors. Every
answer is checked against the OpenAPI document by the API client."""

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connections import services as services_module
from connections.clients import queue_client
from connections.model import format_time
from connections.secrets import PUSH_SECRET_CONTENT_TYPE, push_secret_name
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import Api
from triggers import poller
from triggers.body import FIELDS
from triggers.events import Emitted, list_key, seen_key
from triggers.model import Trigger
from triggers.poller import sn_time
from triggers.queues import EVENTS_QUEUE, POLLS_QUEUE, JsonQueue
from triggers.services import TriggerServices, trigger_services

API_TOKEN = "trigger-api-token-" + uuid.uuid4().hex
CLIENT_ID = "trigger-client"
CLIENT_SECRET = "trigger-client-secret-" + uuid.uuid4().hex
KEY_NAME = "trigger-key"
TABLE = "sc_req_item"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def api(app_host, stack, caplog, monkeypatch) -> Iterator[Api]:
    caplog.set_level(logging.DEBUG)
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name=KEY_NAME)
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    leak_guard.register_secret(API_TOKEN, "trigger test API token")
    leak_guard.register_secret(CLIENT_SECRET, "trigger test client secret")
    services = services_module.services()
    monkeypatch.setattr(services, "servicenow", ServiceNowClient(services.policy, sleep=_no_wait))
    client = Api(app_host.url, app_host.keys.function_key)
    yield client
    assert API_TOKEN not in caplog.text and CLIENT_SECRET not in caplog.text


def _no_wait(seconds: float) -> None:
    return None


@dataclasses.dataclass
class Queues:
    polls: Any
    deliveries: Any

    def polled(self) -> list[dict]:
        return drain(self.polls)

    def delivered(self) -> list[dict]:
        return drain(self.deliveries)


@pytest.fixture
def ts(api) -> TriggerServices:
    return trigger_services()


@pytest.fixture
def queues(ts, monkeypatch) -> Queues:
    """The app's trigger queues, each test its own (so nothing else lands there)."""
    assert ts.polls._queue.queue_name == POLLS_QUEUE
    assert ts.deliveries._queue.queue_name == EVENTS_QUEUE
    suffix = uuid.uuid4().hex[:10]
    polls, deliveries = queue_client(f"polls-{suffix}"), queue_client(f"events-{suffix}")
    monkeypatch.setattr(ts, "polls", JsonQueue(polls))
    monkeypatch.setattr(ts, "deliveries", JsonQueue(deliveries))
    return Queues(polls, deliveries)


def drain(queue: Any) -> list[dict]:
    messages = []
    while batch := list(queue.receive_messages(messages_per_page=32, max_messages=32)):
        for message in batch:  # the client decodes the host's base64
            messages.append(json.loads(message.content))
            queue.delete_message(message)
    return messages


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:12]


# -- helpers ---------------------------------------------------------------------------------


def connection(api: Api, stack, tenant: str, auth: dict | None = None, name: str = "ITSM") -> dict:
    body = {
        "type": "servicenow",
        "name": name,
        "instance_url": stack.servicenow.url,
        "auth": auth or {"method": "api_token", "api_token": API_TOKEN},
    }
    response = api.call("POST", f"/api/tenants/{tenant}/connections", body)
    assert response.status_code == 201, response.text
    return response.json()


def triggers_url(conn: dict) -> str:
    return f"/api/tenants/{conn['tenant_id']}/connections/{conn['id']}/triggers"


def trigger_url(conn: dict, trigger: dict, tail: str = "") -> str:
    return f"{triggers_url(conn)}/{trigger['id']}{tail}"


def hook_url(trigger_id: str) -> str:
    return f"/api/hooks/triggers/{trigger_id}"


def body(**values: Any) -> dict:
    return {"name": "New Teams requests", "table": TABLE, **values}


def create(api: Api, conn: dict, **values: Any) -> dict:
    response = api.call("POST", triggers_url(conn), body(**values))
    assert response.status_code == 201, response.text
    return response.json()


def hint(api: Api, trigger_id: str, secret: str | None) -> Any:
    headers = {} if secret is None else {"X-Trigger-Secret": secret}
    return api.call("POST", hook_url(trigger_id), headers=headers, key=None)


def table_requests(stack, table: str = TABLE) -> list[dict]:
    return [
        request
        for request in stack.servicenow.state.requests()
        if f"/api/now/table/{table}" in request["path"]
    ]


def vault_versions(stack, name: str) -> list[dict]:
    store = stack.keyvault.store
    if not any(item["id"].endswith(f"/secrets/{name}") for item in store.list_secrets()):
        return []
    return store.list_versions(name)


def stored(ts: TriggerServices, tenant: str, trigger: dict) -> Trigger:
    return ts.triggers.get(tenant, trigger["id"])


def due_entries(ts: TriggerServices, trigger_id: str) -> list:
    horizon = datetime.now(UTC) + timedelta(hours=3)
    return [entry for entry in ts.due.due(horizon, 100_000) if entry.connection_id == trigger_id]


def seed_events(ts: TriggerServices, trigger: dict, tenant: str, moments: list[datetime]) -> list:
    emitted = []
    for index, moment in enumerate(moments):
        sys_id = uuid.uuid4().hex
        event_id = poller.event_id(trigger["id"], sys_id, 0)
        event = {
            "event_id": event_id,
            "change": "created",
            "tenant_id": tenant,
            "connection_id": trigger["connection_id"],
            "trigger_id": trigger["id"],
            "trigger_name": trigger["name"],
            "table": trigger["table"],
            "sys_id": sys_id,
            "number": f"RITM{index + 1:07d}",
            "sys_mod_count": 0,
            "sys_updated_on": format_time(moment),
            "record": {"number": f"RITM{index + 1:07d}", "short_description": "New team"},
            "emitted_at": format_time(moment),
        }
        seen = seen_key(sn_time(moment), sys_id, 0)
        emitted.append(Emitted(event, seen, list_key(moment, index, event_id)))
    ts.events.record(trigger["id"], emitted)
    return [item.event for item in emitted]


def listed_events(api: Api, url: str) -> list[dict]:
    items = []
    while url:
        response = api.call("GET", url)
        assert response.status_code == 200, response.text
        items += response.json()["items"]
        url = response.json()["next"]
    return items


def error_of(response: Any) -> dict:
    return response.json()["error"]


def fields_of(response: Any) -> list[str]:
    return [detail["field"] for detail in error_of(response)["details"]]


# -- create ----------------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_matching_now_and_the_push_secret_once(
    api, stack, tenant, ts
):
    marker = "Teams " + uuid.uuid4().hex[:8]
    stack.servicenow.state.create_records(TABLE, {"short_description": marker}, count=3)
    conn = connection(api, stack, tenant)
    stack.servicenow.state.clear_requests()
    response = api.call(
        "POST",
        triggers_url(conn),
        body(query=f"short_description={marker}", fields=["number", "variables.team_name"]),
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["Location"] == trigger_url(conn, created)
    assert response.headers["ETag"]
    assert created["matching_now"] == 3
    assert created["push_secret"] and len(created["push_secret"]) >= 40
    assert created["status"] == "active" and created["enabled"] is True
    assert created["interval_seconds"] == 60 and created["connection_id"] == conn["id"]
    assert created["fields"] == ["number", "variables.team_name"]
    assert created["events_emitted"] == 0 and created["caught_up_to"] is None
    started = datetime.fromisoformat(created["start_at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=1)
    # the query was tried once: one record's sys_id, counted, stored values
    (tried,) = table_requests(stack)
    assert tried["method"] == "GET" and tried["status"] == 200
    assert dict(tried["query"]) == {
        "sysparm_query": f"short_description={marker}",
        "sysparm_limit": "1",
        "sysparm_fields": "sys_id",
        "sysparm_display_value": "false",
    }
    # read, list: never the secret again
    read = api.call("GET", response.headers["Location"])
    assert read.status_code == 200
    assert read.headers["ETag"] == response.headers["ETag"]
    public = {key: value for key, value in created.items() if key != "push_secret"}
    assert read.json() == public
    listed = api.call("GET", triggers_url(conn))
    assert listed.json() == {"items": [public], "next": None}
    for answer in (read, listed):
        assert "push_secret" not in answer.text and created["push_secret"] not in answer.text
    # the record: the cursor starts at start_at; the secret is in Key Vault, pinned by version
    record = stored(ts, tenant, created)
    assert record.cursor_updated_on == sn_time(started)
    (version,) = vault_versions(stack, push_secret_name(created["id"]))
    assert version["contentType"] == PUSH_SECRET_CONTENT_TYPE
    assert version["tags"] == {"tenant": tenant, "connection": conn["id"], "trigger": created["id"]}
    assert version["id"].endswith("/" + record.secret_version)
    # due now: the next dispatch polls it
    (entry,) = due_entries(ts, created["id"])
    assert entry.interval == 60 and entry.tenant_id == tenant
    assert entry.due_at <= format_time(datetime.now(UTC))


def test_the_returned_trigger_has_every_field_of_the_record_s_public_view(api, stack, tenant, ts):
    conn = connection(api, stack, tenant)
    created = create(api, conn)
    record = stored(ts, tenant, created)
    assert set(created) == set(record.to_public()) | {"push_secret"}
    assert {field.name for field in FIELDS} <= set(created)


def test_a_disabled_trigger_is_created_paused_with_its_values(api, stack, tenant):
    conn = connection(api, stack, tenant)
    start_at = (datetime.now(UTC) - timedelta(days=6)).replace(microsecond=0)
    created = create(
        api,
        conn,
        table="incident",
        query="active=true",
        enabled=False,
        interval_seconds=3600,
        start_at=format_time(start_at).replace("Z", "+00:00"),
    )
    assert created["status"] == "paused" and created["enabled"] is False
    assert created["interval_seconds"] == 3600 and created["table"] == "incident"
    assert created["start_at"] == format_time(start_at)


def test_an_oauth_connection_tries_the_query_with_its_token(api, stack, tenant):
    auth = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    conn = connection(api, stack, tenant, auth, name="ITSM OAuth")
    created = create(api, conn, table="incident")
    assert created["matching_now"] == stack.servicenow.state.count_records("incident")


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"query": "active=true^NQactive=false"}, "query"),
        ({"query": "active=true^EQ"}, "query"),
        ({"query": "active=true^RQparent=1"}, "query"),
        ({"query": "active=true^ORDERBYnumber"}, "query"),
        ({"query": "ORDERBYDESCsys_created_on"}, "query"),
        ({"query": "short_description=JavaScript:gs.getUserID()"}, "query"),
        ({"query": "active=true\n"}, "query"),
        ({"query": "a" * 2001}, "query"),
        ({"query": 5}, "query"),
        ({"fields": ["Number"]}, "fields[0]"),
        ({"fields": ["number", "a..b"]}, "fields[1]"),
        ({"fields": ["number", "number"]}, "fields[1]"),
        ({"fields": [f"f{i}" for i in range(51)]}, "fields"),
        ({"fields": "number"}, "fields"),
        ({"fields": [7]}, "fields[0]"),
        ({"fields": ["x" * 81]}, "fields[0]"),
        ({"interval_seconds": 29}, "interval_seconds"),
        ({"interval_seconds": 3601}, "interval_seconds"),
        ({"interval_seconds": True}, "interval_seconds"),
        ({"interval_seconds": "60"}, "interval_seconds"),
        ({"interval_seconds": 60.5}, "interval_seconds"),
        ({"start_at": "EIGHT DAYS BACK"}, "start_at"),
        ({"start_at": "FAR AHEAD"}, "start_at"),
        ({"start_at": "yesterday"}, "start_at"),
        ({"start_at": "2026-12-01T00:00:00"}, "start_at"),
        ({"start_at": "2026-12-01"}, "start_at"),
        ({"start_at": 1764547200}, "start_at"),
        ({"table": "sys_user"}, "table"),
        ({"table": None}, "table"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": None}, "enabled"),
        ({"color": "blue"}, "color"),
        ({"status": "active"}, "status"),
        ({"push_secret": "mine"}, "push_secret"),
    ],
)
def test_a_bad_field_is_400_naming_it_and_nothing_is_stored(api, stack, tenant, values, field):
    conn = connection(api, stack, tenant)
    now = datetime.now(UTC)
    moments = {
        "EIGHT DAYS BACK": format_time(now - timedelta(days=8)),
        "FAR AHEAD": format_time(now + timedelta(days=367)),
    }
    values = {
        key: moments.get(value, value) if isinstance(value, str) else value
        for key, value in values.items()
    }
    requests_before = len(table_requests(stack))
    response = api.call("POST", triggers_url(conn), body(**values))
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "validation_error"
    assert fields_of(response) == [field]
    assert api.call("GET", triggers_url(conn)).json()["items"] == []
    assert len(table_requests(stack)) == requests_before, "the instance was not asked"


def test_every_bad_field_is_named_in_one_answer(api, stack, tenant):
    conn = connection(api, stack, tenant)
    wrong = {"table": "nope", "interval_seconds": 5, "fields": ["A"], "extra": 1, "query": "^NQ"}
    response = api.call("POST", triggers_url(conn), {"name": None, **wrong})
    assert response.status_code == 400
    assert sorted(fields_of(response)) == sorted(
        ["extra", "name", "table", "query", "fields[0]", "interval_seconds"]
    )
    missing = api.call("POST", triggers_url(conn), {})
    assert sorted(fields_of(missing)) == ["name", "table"]


def test_bodies_that_are_not_json_objects_are_refused(api, stack, tenant):
    conn = connection(api, stack, tenant)
    url = triggers_url(conn)
    broken = api.call("POST", url, data=b"{", headers={"Content-Type": "application/json"})
    assert (broken.status_code, error_of(broken)["code"]) == (400, "invalid_json")
    array = api.call("POST", url, [body()])
    assert (array.status_code, error_of(array)["code"]) == (400, "invalid_json")
    text = api.call("POST", url, data=b"name=x", headers={"Content-Type": "text/plain"})
    assert (text.status_code, error_of(text)["code"]) == (415, "unsupported_media_type")
    huge = api.call("POST", url, body(query="a" * 70_000))
    assert (huge.status_code, error_of(huge)["code"]) == (413, "payload_too_large")


# -- the instance refuses, or cannot be asked ----------------------------------------------------


def test_a_table_the_user_may_not_read_is_422_query_rejected_and_nothing_is_stored(
    api, stack, tenant
):
    conn = connection(api, stack, tenant)
    stack.servicenow.state.update_api_key(KEY_NAME, denied_tables=[TABLE])
    secrets_before = {item["id"] for item in stack.keyvault.store.list_secrets()}
    response = api.call("POST", triggers_url(conn), body())
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "query_rejected"
    assert "403" in error["message"] and TABLE in error["message"]
    assert "ACL" in error["message"], "the instance's reason is passed on"
    assert "read access" in error["message"]
    assert api.call("GET", triggers_url(conn)).json()["items"] == []
    assert {item["id"] for item in stack.keyvault.store.list_secrets()} == secrets_before


def test_a_table_the_instance_does_not_have_is_422_with_its_reason(
    api, stack, tenant, ts, monkeypatch
):
    tables = (*ts.settings.tables, "u_custom_requests")
    monkeypatch.setattr(ts, "settings", dataclasses.replace(ts.settings, tables=tables))
    conn = connection(api, stack, tenant)
    response = api.call("POST", triggers_url(conn), body(table="u_custom_requests"))
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "query_rejected"
    assert "Invalid table u_custom_requests" in error_of(response)["message"]


def test_an_error_answer_to_the_try_is_422_with_the_instance_s_reason(api, stack, tenant):
    conn = connection(api, stack, tenant)
    stack.servicenow.state.fail_next(1, status=400, scope="table")
    response = api.call("POST", triggers_url(conn), body(query="active=true"))
    assert response.status_code == 422
    assert "Injected failure" in error_of(response)["message"]
    assert api.call("GET", triggers_url(conn)).json()["items"] == []


@pytest.mark.parametrize(
    "failure", [{"status": 503}, {"mode": "hibernate"}, {"status": 429, "retry_after": 30}]
)
def test_an_instance_that_cannot_answer_now_is_502(api, stack, tenant, failure):
    conn = connection(api, stack, tenant)
    stack.servicenow.state.fail_next(1, scope="table", **failure)
    response = api.call("POST", triggers_url(conn), body())
    assert response.status_code == 502, response.text
    assert error_of(response)["code"] == "instance_unreachable"
    assert api.call("GET", triggers_url(conn)).json()["items"] == []


def test_a_connection_known_not_to_work_is_409_connection_unusable(api, stack, tenant):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    stack.servicenow.state.revoke_api_key(KEY_NAME)
    checked = api.call("POST", f"/api/tenants/{tenant}/connections/{conn['id']}/check")
    assert checked.json()["status"] == "invalid_credentials"
    before = len(table_requests(stack))
    for attempt in (body(), body(interval_seconds=1)):
        response = api.call("POST", triggers_url(conn), attempt)
        assert response.status_code == 409
        assert error_of(response)["code"] == "connection_unusable"
        assert "invalid_credentials" in error_of(response)["message"]
    changed = api.call("PATCH", trigger_url(conn, trigger), {"query": "active=true"})
    assert (changed.status_code, error_of(changed)["code"]) == (409, "connection_unusable")
    renamed = api.call("PATCH", trigger_url(conn, trigger), {"name": "Still editable"})
    assert renamed.status_code == 200 and renamed.json()["query"] == ""
    assert len(table_requests(stack)) == before


# -- not found -------------------------------------------------------------------------------


def test_another_tenant_s_or_connection_s_trigger_and_unknown_ids_are_404(api, stack, tenant):
    conn = connection(api, stack, tenant)
    other_conn = connection(api, stack, tenant, name="Other ITSM")
    trigger = create(api, conn)
    strangers = [
        {**conn, "tenant_id": "other-" + tenant},
        other_conn,
    ]
    unknown = [{"id": uuid.uuid4().hex}, {"id": "not-an-id"}, {"id": trigger["id"].upper()}]
    targets = [(c, trigger) for c in strangers] + [(conn, t) for t in unknown]
    routes = [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/poll"),
        ("GET", "/events"),
        ("POST", f"/events/{'0' * 32}/redeliver"),
        ("POST", "/push-secret"),
    ]
    for owner, target in targets:
        for method, tail in routes:
            payload = {"name": "Renamed"} if method == "PATCH" else None
            response = api.call(method, trigger_url(owner, target, tail), payload)
            assert response.status_code == 404, (method, tail, owner["id"], target["id"])
            assert error_of(response)["code"] == "not_found"
    for owner in (strangers[0], {**conn, "id": uuid.uuid4().hex}):
        assert api.call("GET", triggers_url(owner)).status_code == 404
        assert api.call("POST", triggers_url(owner), body()).status_code == 404
    still = api.call("GET", trigger_url(conn, trigger)).json()
    assert still["name"] == trigger["name"]
    assert api.call("GET", triggers_url(other_conn)).json()["items"] == []


# -- list ------------------------------------------------------------------------------------


def test_the_list_pages_through_the_connection_s_triggers(api, stack, tenant):
    conn = connection(api, stack, tenant)
    other = connection(api, stack, tenant, name="Other ITSM")
    made = {create(api, conn, name=f"Trigger {i}")["id"] for i in range(5)}
    create(api, other, name="Not listed")
    url, seen, pages = triggers_url(conn) + "?limit=2", [], 0
    while url:
        response = api.call("GET", url)
        assert response.status_code == 200
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        url, pages = page["next"], pages + 1
        if url:
            assert url.startswith(triggers_url(conn) + "?") and "limit=2" in url
    assert sorted(seen) == sorted(made) and pages >= 3
    bad = api.call("GET", triggers_url(conn) + "?cursor=nonsense")
    assert (bad.status_code, fields_of(bad)) == (400, ["cursor"])
    assert api.call("GET", triggers_url(conn) + "?limit=501").status_code == 400


# -- update ----------------------------------------------------------------------------------


def test_if_match_is_honoured_and_the_etag_moves(api, stack, tenant):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    url = trigger_url(conn, trigger)
    etag = api.call("GET", url).headers["ETag"]
    stale = api.call("PATCH", url, {"name": "Renamed"}, headers={"If-Match": '"stale"'})
    assert (stale.status_code, error_of(stale)["code"]) == (412, "precondition_failed")
    assert api.call("GET", url).json()["name"] == trigger["name"]
    renamed = api.call("PATCH", url, {"name": "Renamed"}, headers={"If-Match": etag})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Renamed"
    assert renamed.headers["ETag"] != etag
    assert renamed.json()["updated_at"] >= trigger["updated_at"]
    gone = api.call("DELETE", url, headers={"If-Match": etag})
    assert gone.status_code == 412
    assert api.call("GET", url).status_code == 200
    same = api.call("PATCH", url, {"name": "Renamed"}, headers={"If-Match": "*"})
    assert same.status_code == 200 and same.headers["ETag"] == renamed.headers["ETag"]


def test_a_changed_query_is_tried_again_and_refreshes_matching_now(api, stack, tenant, ts):
    marker = "Teams " + uuid.uuid4().hex[:8]
    stack.servicenow.state.create_records(TABLE, {"short_description": marker}, count=2)
    conn = connection(api, stack, tenant)
    trigger = create(api, conn, query="short_description=nothing-matches")
    assert trigger["matching_now"] == 0
    cursor = stored(ts, tenant, trigger).cursor_updated_on
    before = len(table_requests(stack))
    url = trigger_url(conn, trigger)
    response = api.call("PATCH", url, {"query": f"short_description={marker}"})
    assert response.status_code == 200, response.text
    assert response.json()["matching_now"] == 2
    assert len(table_requests(stack)) == before + 1
    assert stored(ts, tenant, trigger).cursor_updated_on == cursor, "a new query keeps its place"
    # a name alone is not tried
    api.call("PATCH", url, {"name": "Only a name"})
    assert len(table_requests(stack)) == before + 1


def test_a_refused_query_or_table_changes_nothing(api, stack, tenant, ts):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn, table="incident")
    url = trigger_url(conn, trigger)
    before = api.call("GET", url)
    stack.servicenow.state.update_api_key(KEY_NAME, denied_tables=[TABLE])
    refused = api.call("PATCH", url, {"table": TABLE, "name": "Moved"})
    assert refused.status_code == 422 and error_of(refused)["code"] == "query_rejected"
    stack.servicenow.state.fail_next(1, status=400, scope="table")
    refused = api.call("PATCH", url, {"query": "broken=query"})
    assert refused.status_code == 422
    after = api.call("GET", url)
    assert after.json() == before.json() and after.headers["ETag"] == before.headers["ETag"]
    invalid = api.call("PATCH", url, {"query": "x^NQy", "interval_seconds": 1, "id": "x"})
    assert sorted(fields_of(invalid)) == ["id", "interval_seconds", "query"]
    removed = api.call("PATCH", url, {"name": None, "table": None})
    assert sorted(fields_of(removed)) == ["name", "table"]


def test_a_changed_table_or_start_at_restarts_the_cursor(api, stack, tenant, ts):
    conn = connection(api, stack, tenant)
    start = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    trigger = create(api, conn, start_at=format_time(start))
    record = stored(ts, tenant, trigger)
    record.cursor_updated_on, record.cursor_sys_id = sn_time(datetime.now(UTC)), "f" * 32
    record.caught_up_to = datetime.now(UTC)
    ts.triggers.replace(record)
    url = trigger_url(conn, trigger)
    moved = api.call("PATCH", url, {"table": "incident"})
    assert moved.status_code == 200
    assert moved.json()["caught_up_to"] is None
    record = stored(ts, tenant, trigger)
    assert (record.cursor_updated_on, record.cursor_sys_id) == (sn_time(start), "")
    later = start + timedelta(days=1)
    api.call("PATCH", url, {"start_at": format_time(later)})
    assert stored(ts, tenant, trigger).cursor_updated_on == sn_time(later)
    reset = api.call("PATCH", url, {"start_at": None, "fields": None, "query": None})
    assert reset.status_code == 200
    now_again = datetime.fromisoformat(reset.json()["start_at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - now_again) < timedelta(minutes=1)
    assert reset.json()["fields"] == [] and reset.json()["query"] == ""


def test_enabled_pauses_and_resumes(api, stack, tenant, ts):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    url = trigger_url(conn, trigger)
    paused = api.call(
        "PATCH", url, {"enabled": False}, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert paused.status_code == 200
    assert (paused.json()["status"], paused.json()["enabled"]) == ("paused", False)
    resumed = api.call("PATCH", url, {"enabled": True})
    assert (resumed.json()["status"], resumed.json()["enabled"]) == ("active", True)


def test_a_changed_interval_schedules_with_the_new_interval(api, stack, tenant, ts):
    """The new entry goes in; the old one is dropped by the poll it brings (test_trigger_dispatch
    shows that), so the record never has to find its entry among all the others."""
    conn = connection(api, stack, tenant)
    trigger = create(api, conn, interval_seconds=120)
    (entry,) = due_entries(ts, trigger["id"])
    response = api.call("PATCH", trigger_url(conn, trigger), {"interval_seconds": 900})
    assert response.status_code == 200 and response.json()["interval_seconds"] == 900
    entries = due_entries(ts, trigger["id"])
    assert entry in entries and len(entries) == 2
    (moved,) = [e for e in entries if e != entry]
    assert moved.interval == 900
    assert moved.due_at <= format_time(datetime.now(UTC) + timedelta(seconds=900))


# -- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_trigger_its_events_due_entry_and_push_secret(
    api, stack, tenant, ts, queues
):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    keep = create(api, conn, name="Kept")
    seed_events(ts, trigger, tenant, [datetime.now(UTC) - timedelta(minutes=5)])
    seed_events(ts, keep, tenant, [datetime.now(UTC) - timedelta(minutes=5)])
    name = push_secret_name(trigger["id"])
    assert vault_versions(stack, name)
    response = api.call("DELETE", trigger_url(conn, trigger))
    assert response.status_code == 204 and response.content == b""
    assert api.call("GET", trigger_url(conn, trigger)).status_code == 404
    assert api.call("DELETE", trigger_url(conn, trigger)).status_code == 404
    assert ts.events.page(trigger["id"], None, 100, None) == ([], None)
    assert vault_versions(stack, name) == []
    assert ts.triggers.tenant_of(trigger["id"]) is None
    hinted = hint(api, trigger["id"], "anything-at-all-long-enough")
    assert hinted.status_code == 401
    # the other trigger keeps everything
    assert len(ts.events.page(keep["id"], None, 100, None)[0]) == 1
    assert len(due_entries(ts, keep["id"])) == 1
    assert [item["id"] for item in api.call("GET", triggers_url(conn)).json()["items"]] == [
        keep["id"]
    ]


# -- poll now --------------------------------------------------------------------------------


def test_poll_now_queues_a_poll_and_a_paused_trigger_is_409(api, stack, tenant, queues):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    response = api.call("POST", trigger_url(conn, trigger, "/poll"))
    assert response.status_code == 202 and response.json() == {"status": "queued"}
    assert queues.polled() == [{"tenant_id": tenant, "trigger_id": trigger["id"], "reason": "now"}]
    api.call("PATCH", trigger_url(conn, trigger), {"enabled": False})
    paused = api.call("POST", trigger_url(conn, trigger, "/poll"))
    assert paused.status_code == 409
    assert error_of(paused)["code"] == "trigger_paused"
    assert "enabled" in error_of(paused)["message"]
    assert queues.polled() == []


# -- events ----------------------------------------------------------------------------------


def test_events_are_listed_oldest_first_with_since_and_paging(api, stack, tenant, ts):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    events = seed_events(ts, trigger, tenant, [base + timedelta(minutes=i) for i in range(5)])
    url = trigger_url(conn, trigger, "/events")
    assert listed_events(api, url) == events
    since = format_time(base + timedelta(minutes=2))
    assert listed_events(api, f"{url}?since={since}") == events[2:]
    first = api.call("GET", f"{url}?limit=2&since={since}")
    assert len(first.json()["items"]) == 2 and "since=" in first.json()["next"]
    assert listed_events(api, f"{url}?limit=2&since={since}") == events[2:]
    offset = (
        (base + timedelta(minutes=3)).astimezone(datetime.now().astimezone().tzinfo).isoformat()
    )
    assert listed_events(api, url + "?since=" + offset.replace("+", "%2B")) == events[3:]
    later = format_time(base + timedelta(hours=2))
    assert api.call("GET", f"{url}?since={later}").json() == {"items": [], "next": None}
    assert listed_events(api, f"{url}?since=1900-01-01T00:00:00Z") == events
    for query, field in (
        ("since=yesterday", "since"),
        ("since=2026-12-01", "since"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("cursor=x", "cursor"),
    ):
        bad = api.call("GET", f"{url}?{query}")
        assert (bad.status_code, fields_of(bad)) == (400, [field]), query


def test_a_kept_event_is_redelivered_and_an_unknown_one_is_404(api, stack, tenant, ts, queues):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    moment = datetime.now(UTC) - timedelta(minutes=1)
    (event,) = seed_events(ts, trigger, tenant, [moment])
    url = trigger_url(conn, trigger, f"/events/{event['event_id']}/redeliver")
    response = api.call("POST", url)
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "event_id": event["event_id"]}
    (message,) = queues.delivered()
    assert message == {
        "event": event,
        "seen": seen_key(sn_time(moment), event["sys_id"], 0),
        "redeliver": True,
    }
    for unknown in (uuid.uuid4().hex, "not-an-event"):
        missing = api.call("POST", trigger_url(conn, trigger, f"/events/{unknown}/redeliver"))
        assert (missing.status_code, error_of(missing)["code"]) == (404, "not_found")
    other = create(api, conn, name="Other")
    elsewhere = trigger_url(conn, other, f"/events/{event['event_id']}/redeliver")
    assert api.call("POST", elsewhere).status_code == 404
    assert queues.delivered() == []


# -- the push secret and the push route ----------------------------------------------------------


def test_a_right_secret_queues_one_poll_per_burst_and_needs_no_function_key(
    api, stack, tenant, queues
):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    secret = trigger["push_secret"]
    first = hint(api, trigger["id"], secret)
    assert first.status_code == 202 and first.json() == {"status": "accepted"}
    second = api.call(
        "POST",
        hook_url(trigger["id"]),
        {"sys_id": "abc", "table": TABLE},
        headers={"X-Trigger-Secret": secret},
        key=None,
    )
    assert second.status_code == 202 and second.json() == first.json()
    assert queues.polled() == [{"tenant_id": tenant, "trigger_id": trigger["id"], "reason": "hint"}]


def test_a_wrong_or_missing_secret_and_an_unknown_trigger_get_the_same_401(
    api, stack, tenant, queues
):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    secret = trigger["push_secret"]
    answers = [
        hint(api, trigger["id"], secret[:-1] + ("A" if secret[-1] != "A" else "B")),
        hint(api, trigger["id"], secret + "x"),
        hint(api, trigger["id"], ""),
        hint(api, trigger["id"], None),
        hint(api, trigger["id"], "é" * 43),
        hint(api, uuid.uuid4().hex, secret),
        hint(api, "not-a-trigger", secret),
        hint(api, trigger["id"].upper(), secret),
    ]
    assert {answer.status_code for answer in answers} == {401}
    assert len({answer.content for answer in answers}) == 1
    error = error_of(answers[0])
    assert error["code"] == "unauthorized" and error["details"] == []
    assert queues.polled() == []
    assert hint(api, trigger["id"], secret).status_code == 202


def test_a_paused_trigger_takes_hints_but_does_not_poll(api, stack, tenant, queues):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn, enabled=False)
    assert hint(api, trigger["id"], trigger["push_secret"]).status_code == 202
    assert queues.polled() == []


def test_hints_on_a_warm_worker_do_not_read_key_vault(api, stack, tenant, queues, ts):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    gets = stack.keyvault.control.calls("get")
    for _ in range(3):
        assert hint(api, trigger["id"], trigger["push_secret"]).status_code == 202
    assert stack.keyvault.control.calls("get") == gets


def test_a_new_push_secret_replaces_the_old_one_at_once(api, stack, tenant, ts, queues):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    old = trigger["push_secret"]
    etag = api.call("GET", trigger_url(conn, trigger)).headers["ETag"]
    response = api.call("POST", trigger_url(conn, trigger, "/push-secret"))
    assert response.status_code == 200, response.text
    new = response.json()["push_secret"]
    assert set(response.json()) == {"push_secret"} and new != old and len(new) >= 40
    assert hint(api, trigger["id"], old).status_code == 401
    assert hint(api, trigger["id"], new).status_code == 202
    versions = vault_versions(stack, push_secret_name(trigger["id"]))
    assert len(versions) == 2
    assert versions[-1]["id"].endswith("/" + stored(ts, tenant, trigger).secret_version)
    read = api.call("GET", trigger_url(conn, trigger))
    assert read.headers["ETag"] != etag and new not in read.text


def test_no_secret_in_any_log_line(api, stack, tenant, caplog, queues):
    conn = connection(api, stack, tenant)
    trigger = create(api, conn)
    rotated = api.call("POST", trigger_url(conn, trigger, "/push-secret")).json()["push_secret"]
    hint(api, trigger["id"], trigger["push_secret"])
    hint(api, trigger["id"], rotated)
    api.call("DELETE", trigger_url(conn, trigger))
    for secret in (trigger["push_secret"], rotated):
        assert secret not in caplog.text
