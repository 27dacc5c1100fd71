"""The poller's guarantees on Azurite and the ServiceNow stand-in: every version of a matching
record changed after `start_at` that is the latest when a poll reads it becomes exactly one event,
whatever the timestamps, the paging, the late commits or the faults. Each test asserts the exact
list of event ids queued: none missing, none twice."""

import dataclasses
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from localrun.standins.servicenow_tables import INTEGRATION_USER
from tests.api_client import Api
from tests.renewal_support import DrivenClock, create, drive_services
from tests.trigger_support import TriggerWorld, assert_exactly
from triggers import poller
from triggers.model import ACTIVE, FAILING, WAITING

API_TOKEN = "trigger-poll-token-" + uuid.uuid4().hex
CLIENT_ID = "trigger-poll-client"
CLIENT_SECRET = "trigger-poll-secret-" + uuid.uuid4().hex
TABLE = "incident"


@pytest.fixture
def clock(stack) -> DrivenClock:
    return DrivenClock(stack)


@pytest.fixture
def world(app_host, stack, clock, monkeypatch, caplog) -> Iterator[TriggerWorld]:
    caplog.set_level(logging.INFO)
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name="poll-key")
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    drive_services(clock, monkeypatch)
    poller.KNOWN._items.clear()
    api = Api(app_host.url, app_host.keys.function_key)
    auth = {"method": "api_token", "api_token": API_TOKEN}
    yield TriggerWorld(stack, clock, create(api, stack, f"t{uuid.uuid4().hex[:10]}", auth))
    assert API_TOKEN not in caplog.text


def test_new_and_changed_records_become_one_event_each(world):
    state = world.stack.servicenow.state
    world.create(fields=["number", "short_description", "priority"])
    assert world.poll().startswith("ok (0 events)")
    created = state.create_records(TABLE, {"short_description": "Printer on fire"}, count=3)
    world.advance(5)
    state.update_records(TABLE, {"priority": "1"}, sys_ids=created[:1])
    world.advance(5)
    world.poll()
    expected = world.expected_ids([(created[0], 1), (created[1], 0), (created[2], 0)])
    assert_exactly(world, expected)
    events = {event["sys_id"]: event for event in world.received()}
    first = events[created[0]]
    assert first["change"] == "updated" and first["sys_mod_count"] == 1
    assert first["record"]["priority"] == "1"
    assert first["record"]["short_description"] == "Printer on fire"
    assert first["sys_updated_on"].endswith("Z") and "T" in first["sys_updated_on"]
    assert events[created[1]]["change"] == "created"
    assert set(first) >= {"event_id", "tenant_id", "connection_id", "trigger_id", "emitted_at"}
    trigger = world.read()
    assert trigger.events_emitted == 3 and trigger.status == ACTIVE
    assert trigger.caught_up_to is not None and trigger.last_event_at is not None
    world.advance(60)
    world.poll()
    assert_exactly(world, expected)  # nothing new: nothing more


def test_records_before_start_at_and_not_matching_are_left_out(world):
    state = world.stack.servicenow.state
    before = state.create_records(TABLE, {"short_description": "old"})
    world.advance(10)
    world.create(query="priority=1")
    world.advance(2)
    matching = state.create_records(TABLE, {"priority": "1"}, count=2)
    state.create_records(TABLE, {"priority": "3"}, count=2)
    world.advance(5)
    world.poll()
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in matching]))
    assert before[0] not in {event["sys_id"] for event in world.received()}


def test_a_thousand_records_sharing_one_second_page_without_loss(world, monkeypatch):
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    state = world.stack.servicenow.state
    world.create()
    world.advance(1)
    second = poller.sn_time(world.clock.now())
    created = state.create_records(TABLE, count=1000, sys_updated_on=second)
    world.advance(5)
    outcomes = world.poll_until_caught_up()
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))
    assert len(outcomes) == 2  # 10 pages, then the rest of the scan in a second invocation


def test_ten_thousand_records_in_one_bulk_update(world):
    state = world.stack.servicenow.state
    before = state.create_records(TABLE, count=10_000, sys_updated_on="2020-01-01 00:00:00")
    world.create()
    world.advance(1)
    state.update_records(TABLE, {"state": "2"}, sys_ids=before)
    world.advance(2)
    world.poll_until_caught_up()
    assert_exactly(world, world.expected_ids([(sys_id, 1) for sys_id in before]))
    assert world.read().events_emitted == 10_000


def test_records_changed_while_a_poll_pages_lose_nothing(world, monkeypatch):
    monkeypatch.setattr(poller, "PAGE_SIZE", 50)
    state = world.stack.servicenow.state
    created = world.records_after_start(200)  # all in one second, read in sys_id order
    real_read = poller._read_page
    read: list[str] = []
    changed: dict[str, list[str]] = {}

    def read_and_change(ts, scan):
        records = real_read(ts, scan)
        read.extend(record["sys_id"] for record in records)
        if len(read) == 100:  # between pages: records already read and not yet read change
            unread = [sys_id for sys_id in created if sys_id not in read]
            changed["read"], changed["unread"] = read[10:20], unread[:10]
            world.advance(1)
            state.update_records(TABLE, {"state": "7"}, sys_ids=read[10:20] + unread[:10])
        return records

    monkeypatch.setattr(poller, "_read_page", read_and_change)
    world.poll_until_caught_up()
    world.advance(30)
    world.poll_until_caught_up()
    # a record changed before the poll reached it counts once, in its latest version
    first = [(sys_id, 0) for sys_id in created if sys_id not in changed["unread"]]
    latest = [(sys_id, 1) for sys_id in changed["read"] + changed["unread"]]
    assert_exactly(world, world.expected_ids(first + latest))


def test_late_commits_inside_the_lookback_are_caught(world):
    state = world.stack.servicenow.state
    world.create()
    world.advance(1)
    early = poller.sn_time(world.clock.now())
    late = state.create_records(
        TABLE, {"short_description": "late"}, sys_updated_on=early, visible=False
    )
    world.advance(10)
    on_time = state.create_records(TABLE, {"short_description": "on time"})
    world.advance(5)
    world.poll()  # reads past the late record's second, which it cannot see yet
    state.make_visible(TABLE, late)
    world.advance(60)
    world.poll()
    assert_exactly(world, world.expected_ids([(late[0], 0), (on_time[0], 0)]))


def test_a_poll_killed_mid_page_loses_and_doubles_nothing(world, monkeypatch):
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    created = world.records_after_start(350)
    real_read = poller._read_page
    calls = []

    def dies_on_the_third_page(ts, scan):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the worker died")
        return real_read(ts, scan)

    monkeypatch.setattr(poller, "_read_page", dies_on_the_third_page)
    with pytest.raises(RuntimeError):
        world.poll()
    monkeypatch.setattr(poller, "_read_page", real_read)
    poller.KNOWN._items.clear()  # a new worker
    world.advance(30)
    assert world.poll() == "busy"  # the dead poll's lease holds until it expires
    world.advance(poller.LEASE.total_seconds())
    world.poll_until_caught_up()
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_a_poll_asked_to_stop_between_pages_goes_on_in_the_next_invocation(world, monkeypatch):
    """The host shutting down: the poll reads no further page, keeps what it emitted, and the
    next invocation carries on from there (none lost, none twice)."""
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    created = world.records_after_start(250)
    pages = []
    real_read = poller._read_page

    def counted(ts, scan):
        pages.append(1)
        return real_read(ts, scan)

    monkeypatch.setattr(poller, "_read_page", counted)
    services = dataclasses.replace(world.ts.services, stopping=lambda: len(pages) >= 1)
    stopping_ts = dataclasses.replace(world.ts, services=services)
    outcome = poller.poll(stopping_ts, world.trigger.tenant_id, world.trigger.id)
    assert outcome == "more (100 events)"
    assert len(pages) == 1
    world.poll_until_caught_up()
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_two_polls_started_at_once_emit_each_version_once(world, monkeypatch):
    created = world.records_after_start(300)
    barrier = threading.Barrier(2)
    real_read = poller._read_page

    def together(ts, scan):
        if scan.pages == 0:
            barrier.wait(10)
        return real_read(ts, scan)

    monkeypatch.setattr(poller, "_read_page", together)
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda _: world.poll(fresh=True), range(2)))
    monkeypatch.setattr(poller, "_read_page", real_read)
    assert sorted(outcome.split(" ")[0] for outcome in outcomes) == ["busy", "ok"]
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_a_429_defers_the_connection_s_polls_and_loses_nothing(world):
    state = world.stack.servicenow.state
    created = world.records_after_start(5)
    state.fail_next(3, status=429, retry_after=90, scope="table")
    calls = len(state.requests())
    assert world.poll().startswith("deferred")
    assert world.poll() == "deferred"  # within the Retry-After: the instance is not called
    assert len(state.requests()) == calls + 1
    outcomes = []
    while not (outcomes and outcomes[-1].startswith("ok")) and len(outcomes) < 5:
        world.advance(91)
        outcomes.append(world.poll())
    assert [outcome.split(" ")[0] for outcome in outcomes] == ["deferred", "deferred", "ok"]
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_an_acl_refusal_fails_the_trigger_once_and_it_recovers(world):
    state = world.stack.servicenow.state
    world.create()
    state.update_api_key("poll-key", denied_tables=[TABLE])
    world.advance(1)
    created = state.create_records(TABLE, count=2)
    world.advance(2)
    notices = []
    real_send = world.ts.services.notices.send
    world.ts.services.notices.send = lambda message: (notices.append(message), real_send(message))
    try:
        world.poll()
        world.advance(60)
        world.poll()
        trigger = world.read()
        assert trigger.status == FAILING and "read access" in trigger.status_detail
        state.update_api_key("poll-key", denied_tables=[])
        world.advance(60)
        world.poll()
    finally:
        world.ts.services.notices.send = real_send
    assert world.read().status == ACTIVE
    assert [m["notice"]["event"] for m in notices] == ["trigger_failing", "trigger_restored"]
    assert notices[0]["notice"]["trigger_id"] == world.trigger.id
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_a_connection_that_stops_working_makes_the_trigger_wait_then_resume(world, app_host):
    state = world.stack.servicenow.state
    first = world.records_after_start(2)
    world.poll()
    state.revoke_api_key("poll-key")
    world.advance(1)
    during = state.create_records(TABLE, count=3)
    world.advance(60)
    world.poll()  # 401: the connection is checked and found invalid
    assert world.read().status == WAITING
    assert world.poll() == "waiting"  # no instance call while the connection does not work
    state.enable_api_key("poll-key")
    api = Api(app_host.url, app_host.keys.function_key)
    connection = world.connection
    path = f"/api/tenants/{connection['tenant_id']}/connections/{connection['id']}/check"
    assert api.call("POST", path).json()["status"] == "connected"
    world.advance(60)
    world.poll()
    assert world.read().status == ACTIVE
    assert_exactly(world, world.expected_ids([(s, 0) for s in first + during]))


def test_an_idle_poll_costs_one_instance_call(world):
    world.create()
    world.advance(1)
    world.poll()
    world.advance(600)
    state = world.stack.servicenow.state
    before = len(state.requests())
    assert world.poll().startswith("ok (0 events)")
    assert len(state.requests()) - before == 1


@pytest.fixture
def oauth_world(world, app_host):
    api = Api(app_host.url, app_host.keys.function_key)
    body = {
        "type": "servicenow",
        "name": "OAuth triggers " + uuid.uuid4().hex[:6],
        "instance_url": world.stack.servicenow.url,
        "auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
    }
    tenant = world.connection["tenant_id"]
    response = api.call("POST", f"/api/tenants/{tenant}/connections", body)
    assert response.status_code == 201, response.text
    other = TriggerWorld(world.stack, world.clock, response.json())
    return other


def test_a_revoked_token_is_renewed_once_and_polling_goes_on(oauth_world):
    world = oauth_world
    state = world.stack.servicenow.state
    created = world.records_after_start(4)
    state.revoke_access_tokens(CLIENT_ID)
    grants = state.token_exchanges(CLIENT_ID)
    world.poll()
    assert state.token_exchanges(CLIENT_ID) == grants + 1
    assert_exactly(world, world.expected_ids([(sys_id, 0) for sys_id in created]))


def test_storage_down_mid_poll_loses_and_doubles_nothing(world, monkeypatch):
    """The events table refuses the write after the events were queued: the cursor stays, the
    next poll queues them again with the same ids, and delivery drops the copies."""
    from azure.core.exceptions import ServiceRequestError

    created = world.records_after_start(5)
    real_record = world.ts.events.record

    def storage_down(*args, **kwargs):
        raise ServiceRequestError("storage is down")

    monkeypatch.setattr(world.ts.events, "record", storage_down)
    assert world.poll().startswith("retry")
    assert world.read().events_emitted == 0
    monkeypatch.setattr(world.ts.events, "record", real_record)
    world.advance(30)
    world.poll()
    queued = world.event_ids()
    expected = world.expected_ids([(sys_id, 0) for sys_id in created])
    assert set(queued) == expected and len(queued) == 2 * len(expected)  # same ids, twice
    assert world.read().events_emitted == 5
    seen = {message["seen"] for message in world.messages}
    assert len(seen) == 5  # the copies name the same recorded versions: delivery drops them


def test_record_values_are_the_stored_values(world):
    """References as sys_ids, date-times RFC 3339 UTC, `sys_mod_count` a number, also inside
    `record` when it is one of the trigger's fields."""
    state = world.stack.servicenow.state
    fields = ["number", "caller_id", "opened_by", "priority", "sys_created_on", "sys_mod_count"]
    world.create(fields=[*fields, "sys_updated_on"])
    world.advance(1)
    (sys_id,) = state.create_records(TABLE, {"caller_id": INTEGRATION_USER, "priority": "2"})
    world.advance(1)
    state.update_records(TABLE, {"priority": "1"}, sys_ids=[sys_id])
    world.advance(2)
    world.poll()
    (event,) = world.received()
    record = event["record"]
    assert event["change"] == "updated" and event["sys_mod_count"] == 1
    assert record["sys_mod_count"] == 1
    assert record["caller_id"] == record["opened_by"] == INTEGRATION_USER
    assert record["priority"] == "1"
    for moment in (record["sys_created_on"], record["sys_updated_on"], event["sys_updated_on"]):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", moment), moment
    assert record["sys_updated_on"] == event["sys_updated_on"]


def test_events_older_than_the_retention_are_pruned_by_a_poll_that_emits(world):
    state = world.stack.servicenow.state
    trigger = world.create()
    world.advance(1)
    old = state.create_records(TABLE, count=3, sys_updated_on=poller.sn_time(world.clock.now()))
    world.advance(2)
    world.poll()
    events = world.ts.events
    assert len(events.page(trigger.id, None, 100, None)[0]) == 3
    world.advance(world.ts.settings.retention_days * 86_400 + 60)
    assert world.poll().startswith("ok (0 events)")
    assert len(events.page(trigger.id, None, 100, None)[0]) == 3  # an idle poll prunes nothing
    new = state.create_records(TABLE, count=2, sys_updated_on=poller.sn_time(world.clock.now()))
    world.advance(2)
    assert world.poll().startswith("ok (2 events)")
    listed = events.page(trigger.id, None, 100, None)[0]
    assert {event["event_id"] for event in listed} == world.expected_ids([(s, 0) for s in new])
    assert events.seen_since(trigger.id, "2000-01-01 00:00:00") == {(s, 0) for s in new}
    (gone,) = world.expected_ids([(old[0], 0)])
    assert events.find(trigger.id, gone) is None
    world.advance(30)
    world.poll()
    assert_exactly(world, world.expected_ids([(s, 0) for s in old + new]))


def test_a_prune_that_meets_a_storage_fault_does_not_fail_the_poll(world, monkeypatch):
    from azure.core.exceptions import ServiceRequestError

    created = world.records_after_start(2)

    def storage_down(*args, **kwargs):
        raise ServiceRequestError("storage is down")

    monkeypatch.setattr(world.ts.events, "prune", storage_down)
    assert world.poll().startswith("ok (2 events)")
    assert world.read().events_emitted == 2
    assert_exactly(world, world.expected_ids([(s, 0) for s in created]))
