"""Triggers end to end through the local host: the API creates a trigger, the timer dispatches
it, the queue-triggered poll reads the instance, the queue-triggered delivery signs and POSTs
each event to the engine's webhook; and the schedule keeps itself clean."""

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from connections import services as services_module
from connections.due_index import DueEntry
from connections.model import format_time
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import Api
from triggers import poller
from triggers.dispatch import dispatch
from triggers.services import trigger_services

API_TOKEN = "trigger-flow-token-" + uuid.uuid4().hex
CATALOG_ITEM = "0c4fa3e1db2f4410a8e5d1f3f39619a1"
REQUESTER = "88fdbc4e1d1811e30f7d117186b05d79"


@pytest.fixture
def flow(app_host, stack, monkeypatch, caplog) -> Iterator[dict]:
    caplog.set_level(logging.INFO)
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name="flow-key")
    stack.event_webhook.reset()
    services = services_module.services()
    monkeypatch.setattr(services, "servicenow", ServiceNowClient(services.policy, sleep=print))
    poller.KNOWN._items.clear()
    for name in ("poll_trigger", "deliver_event"):
        drain_listener(app_host, name)  # what earlier tests left on the shared queues
    api = Api(app_host.url, app_host.keys.function_key)
    tenant = "flow" + uuid.uuid4().hex[:8]
    body = {
        "type": "servicenow",
        "name": "Flow",
        "instance_url": stack.servicenow.url,
        "auth": {"method": "api_token", "api_token": API_TOKEN},
    }
    created = api.call("POST", f"/api/tenants/{tenant}/connections", body)
    assert created.status_code == 201, created.text
    yield {"api": api, "connection": created.json(), "tenant": tenant}


def drain_listener(app_host, function_name: str) -> int:
    """Runs the queue-triggered function on everything its queue holds now."""
    listener, handled = app_host.queues[function_name], 0
    while count := listener.process_once():
        handled += count
    return handled


def triggers_url(flow: dict) -> str:
    return f"/api/tenants/{flow['tenant']}/connections/{flow['connection']['id']}/triggers"


def create_trigger(flow: dict, **values) -> dict:
    body = {
        "name": "New Teams requests",
        "table": "sc_req_item",
        "query": f"cat_item={CATALOG_ITEM}^active=true",
        "fields": ["number", "short_description", "requested_for", "variables.team_name"],
        **values,
    }
    response = flow["api"].call("POST", triggers_url(flow), body)
    assert response.status_code == 201, response.text
    trigger = response.json()
    leak_guard.register_secret(trigger["push_secret"], "push secret")
    return trigger


def test_a_catalog_request_becomes_one_signed_event_at_the_engine(flow, app_host, stack):
    trigger = create_trigger(flow)
    state = stack.servicenow.state
    (sys_id,) = state.create_records(
        "sc_req_item",
        {
            "cat_item": CATALOG_ITEM,
            "active": "true",
            "short_description": "New team for Finance",
            "requested_for": REQUESTER,
            "variables": {"team_name": "Finance"},
        },
    )
    state.create_records("sc_req_item", {"cat_item": "another-item", "active": "true"})
    admin = requests.post(
        f"{app_host.url}/admin/functions/trigger_dispatch",
        json={"input": ""},
        headers={"x-functions-key": app_host.keys.master_key},
        timeout=10,
    )
    assert admin.status_code == 202
    app_host.wait_for_admin_runs()
    assert drain_listener(app_host, "poll_trigger") >= 1
    drain_listener(app_host, "deliver_event")
    (delivery,) = delivered_for(stack, trigger)
    event = delivery.body
    assert delivery.signature_valid  # HMAC-SHA256 of the body with EVENTS_WEBHOOK_SECRET
    assert (
        delivery.headers["X-Event-Id"]
        == event["event_id"]
        == poller.event_id(trigger["id"], sys_id, 0)
    )
    assert event["change"] == "created" and event["table"] == "sc_req_item"
    assert event["record"]["variables.team_name"] == "Finance"
    assert event["record"]["requested_for"] == REQUESTER  # the sys_id, not a link
    assert event["trigger_name"] == "New Teams requests"
    url = f"{triggers_url(flow)}/{trigger['id']}"
    read = flow["api"].call("GET", url).json()
    assert read["events_emitted"] == 1 and read["last_event_at"] and read["caught_up_to"]
    listed = flow["api"].call("GET", f"{url}/events").json()["items"]
    assert [item["event_id"] for item in listed] == [event["event_id"]]
    # the next scheduled poll comes one interval later
    ts = trigger_services()
    due_now = ts.due.due(datetime.now(UTC), 100_000)
    assert trigger["id"] not in {entry.connection_id for entry in due_now}


def test_a_push_hint_polls_within_seconds_once_however_many_arrive(flow, app_host, stack):
    trigger = create_trigger(flow)
    stack.servicenow.state.create_records(
        "sc_req_item", {"cat_item": CATALOG_ITEM, "active": "true"}
    )
    hook = f"{app_host.url}/api/hooks/triggers/{trigger['id']}"
    answers = [
        requests.post(hook, headers={"X-Trigger-Secret": trigger["push_secret"]}, timeout=10)
        for _ in range(5)
    ]
    assert [answer.status_code for answer in answers] == [202] * 5
    assert drain_listener(app_host, "poll_trigger") == 1
    drain_listener(app_host, "deliver_event")
    assert len(delivered_for(stack, trigger)) == 1


def delivered_for(stack, trigger: dict) -> list:
    """What the engine's webhook accepted of this trigger's events (other tests' triggers watch
    the same stand-in)."""
    return [d for d in stack.event_webhook.delivered if d.body["trigger_id"] == trigger["id"]]


def test_the_webhook_down_for_several_tries_gets_each_event_once(flow, app_host, stack):
    trigger = create_trigger(flow)
    stack.servicenow.state.create_records(
        "sc_req_item", {"cat_item": CATALOG_ITEM, "active": "true"}, count=3
    )
    dispatch(trigger_services())
    drain_listener(app_host, "poll_trigger")
    stack.event_webhook.fail_next(4, status=503)  # down for the first four tries
    drain_listener(app_host, "deliver_event")  # a failed message is tried again at once
    delivered = [delivery.body["event_id"] for delivery in delivered_for(stack, trigger)]
    assert len(delivered) == 3 and len(set(delivered)) == 3
    assert len(stack.event_webhook.received) - len(stack.event_webhook.delivered) == 4


def test_dispatch_moves_each_due_entry_one_interval_on(flow):
    ts = trigger_services()
    trigger = create_trigger(flow, interval_seconds=300)
    assert dispatch(ts) >= 1
    horizon = datetime.now(UTC) + timedelta(hours=2)
    (entry,) = [e for e in ts.due.due(horizon, 100_000) if e.connection_id == trigger["id"]]
    later = datetime.now(UTC) + timedelta(seconds=300)
    assert format_time(later - timedelta(seconds=30)) <= entry.due_at <= format_time(later)
    assert entry.interval == 300


def test_a_deleted_trigger_s_schedule_is_dropped_by_the_poll_it_brings(flow, app_host):
    ts = trigger_services()
    trigger = create_trigger(flow)
    url = f"{triggers_url(flow)}/{trigger['id']}"
    assert flow["api"].call("DELETE", url).status_code == 204
    dispatch(ts)
    drain_listener(app_host, "poll_trigger")
    horizon = datetime.now(UTC) + timedelta(hours=2)
    assert [e for e in ts.due.due(horizon, 100_000) if e.connection_id == trigger["id"]] == []


def test_an_interval_change_leaves_one_schedule(flow, app_host):
    ts = trigger_services()
    trigger = create_trigger(flow, interval_seconds=60)
    url = f"{triggers_url(flow)}/{trigger['id']}"
    assert flow["api"].call("PATCH", url, {"interval_seconds": 30}).status_code == 200
    old = DueEntry(
        format_time(datetime.now(UTC) - timedelta(seconds=1)) or "",
        flow["tenant"],
        trigger["id"],
        interval=60,
    )
    ts.due.put(old)  # as if the old schedule came due before the new one
    dispatch(ts)
    drain_listener(app_host, "poll_trigger")
    horizon = datetime.now(UTC) + timedelta(hours=2)
    entries = [e for e in ts.due.due(horizon, 100_000) if e.connection_id == trigger["id"]]
    assert [entry.interval for entry in entries] == [30]
