"""The poller against the adversarial cases: the session's Azurite stopped and restarted mid-poll,
429 storms across the triggers of one connection, late commits at the edge of the lookback, bulk
updates in one second landing between the invocations of a long scan, and an OAuth token revoked
mid-burst. Each test asserts the exact list of event ids queued (none missing, none twice, or,
where the contract says so, the same id and `seen` key twice); time is the driven clock.
"""

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest
from azure.core.exceptions import AzureError, ServiceRequestError

from tests.api_client import Api
from tests.renewal_support import DrivenClock, create, drive_services
from tests.run_support import accepts
from tests.trigger_support import TriggerWorld, assert_exactly
from triggers import poller
from triggers.delivery import deliver
from triggers.poller import sn_time

API_TOKEN = "trigger-faults-token-" + uuid.uuid4().hex
CLIENT_ID = "trigger-faults-client"
CLIENT_SECRET = "trigger-faults-secret-" + uuid.uuid4().hex
TABLE = "incident"
TABLE_PATH = f"/api/now/table/{TABLE}"


@pytest.fixture
def clock(stack) -> DrivenClock:
    return DrivenClock(stack)


def _connection(app_host, stack, tenant: str, auth: dict) -> dict:
    return create(Api(app_host.url, app_host.keys.function_key), stack, tenant, auth)


@pytest.fixture
def world(app_host, stack, clock, monkeypatch, caplog) -> Iterator[TriggerWorld]:
    caplog.set_level(logging.INFO)
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name="faults-key")
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    drive_services(clock, monkeypatch)
    poller.KNOWN._items.clear()
    auth = {"method": "api_token", "api_token": API_TOKEN}
    try:
        yield TriggerWorld(
            stack, clock, _connection(app_host, stack, f"t{uuid.uuid4().hex[:10]}", auth)
        )
    finally:
        if not accepts(stack.azurite.table_port):
            stack.azurite.start()  # a test that failed while it was stopped
    assert API_TOKEN not in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.fixture
def oauth_world(world, app_host, stack) -> TriggerWorld:
    auth = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    tenant = world.connection["tenant_id"]
    return TriggerWorld(stack, world.clock, _connection(app_host, stack, tenant, auth))


def all_ids(world: TriggerWorld, sys_ids: list[str], mod_count: int = 0) -> set[str]:
    return world.expected_ids([(sys_id, mod_count) for sys_id in sys_ids])


# -- Azurite stopped and restarted mid-poll ------------------------------------------------------


def test_azurite_stopped_between_pages_then_restarted_loses_and_doubles_nothing(world, monkeypatch):
    """Storage stops after two pages were queued and recorded: the third page cannot be queued,
    the poll fails without moving the cursor, and once storage is back (and the stopped poll's
    lease has run out) the next polls queue the rest; each event once."""
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    world.use_fast_storage()
    state = world.stack.servicenow.state
    trigger = world.create()
    world.advance(1)
    created = state.create_records(TABLE, count=300, sys_updated_on=sn_time(world.clock.now()))
    world.advance(2)
    real_read = poller._read_page
    pages: list[int] = []

    def storage_stops_before_the_third_page(ts, scan):
        pages.append(scan.pages)
        if len(pages) == 3:
            world.stack.azurite.stop()
        return real_read(ts, scan)

    monkeypatch.setattr(poller, "_read_page", storage_stops_before_the_third_page)
    try:
        with pytest.raises(AzureError):
            world.poll()
    finally:
        world.stack.azurite.start()
    monkeypatch.setattr(poller, "_read_page", real_read)
    stored = world.read()
    assert (stored.cursor_updated_on, stored.cursor_sys_id) == (sn_time(trigger.start_at), "")
    assert stored.scan_from == "" and stored.caught_up_to is None
    assert len(world.event_ids()) == 200  # the two pages queued before the stop
    world.advance(30)
    assert world.poll() == "busy"  # the stopped poll's lease holds until it runs out
    world.advance(poller.LEASE.total_seconds())
    world.poll_until_caught_up()
    assert_exactly(world, all_ids(world, created))
    assert len({message["seen"] for message in world.messages}) == 300
    assert world.read().caught_up_to is not None


def test_azurite_stopped_after_queueing_requeues_the_same_ids_and_delivery_drops_the_copies(
    world, monkeypatch, caplog
):
    """Storage stops after the second page was queued and before it was recorded: the next poll
    queues that page again with the same event ids and the same `seen` keys, so delivery sends
    each event once and skips the copies."""
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    world.use_fast_storage()
    state = world.stack.servicenow.state
    trigger = world.create()
    world.advance(1)
    created = state.create_records(TABLE, count=300, sys_updated_on=sn_time(world.clock.now()))
    world.advance(2)
    real_record = world.ts.events.record
    recorded: list[int] = []

    def storage_stops_before_the_second_record(trigger_id, emitted):
        recorded.append(len(emitted))
        if len(recorded) == 2:
            world.stack.azurite.stop()
        return real_record(trigger_id, emitted)

    monkeypatch.setattr(world.ts.events, "record", storage_stops_before_the_second_record)
    try:
        with pytest.raises(AzureError):
            world.poll()
    finally:
        world.stack.azurite.start()
    monkeypatch.setattr(world.ts.events, "record", real_record)
    first_copies = world.event_ids()
    assert len(first_copies) == 200 and len(set(first_copies)) == 200
    assert world.read().events_emitted == 0
    world.advance(30 + poller.LEASE.total_seconds())
    world.poll_until_caught_up()

    queued = world.event_ids()
    assert set(queued) == all_ids(world, created)
    counts = Counter(queued)
    twice = {event_id for event_id, count in counts.items() if count == 2}
    assert len(twice) == 100 and set(counts.values()) == {1, 2}
    second_page = sorted(created)[100:200]  # one second: pages in sys_id order
    assert twice == all_ids(world, second_page)  # queued but not recorded, and only that page
    seen_of: dict[str, set[str]] = {}
    for message in world.messages:
        seen_of.setdefault(message["event"]["event_id"], set()).add(message["seen"])
    assert all(len(keys) == 1 for keys in seen_of.values())  # a copy names the same version

    caplog.clear()
    receiver = world.stack.event_webhook
    for message in world.messages:  # in queue order: each copy after its first
        deliver(world.ts, message, 1)
    accepted = [d for d in receiver.delivered if d.body["trigger_id"] == trigger.id]
    assert sorted(d.event_id for d in accepted) == sorted(all_ids(world, created))
    assert not [d for d in accepted if d.duplicate]
    skipped = [r for r in caplog.records if "skipped (already delivered)" in r.getMessage()]
    assert len(skipped) == 100
    assert all(world.ts.events.delivered(trigger.id, m["seen"]) for m in world.messages)


def test_a_copy_delivered_before_the_version_is_recorded_is_not_delivered_twice(world, monkeypatch):
    state = world.stack.servicenow.state
    trigger = world.create()
    world.advance(1)
    created = state.create_records(TABLE, count=3)
    world.advance(2)

    def storage_down(*args, **kwargs):
        raise ServiceRequestError("storage is down")

    real_record = world.ts.events.record
    monkeypatch.setattr(world.ts.events, "record", storage_down)
    assert world.poll().startswith("retry")
    monkeypatch.setattr(world.ts.events, "record", real_record)
    world.received()
    first = list(world.messages)
    for message in first:  # delivered at once, before the next poll records the versions
        deliver(world.ts, message, 1)
    world.advance(30)
    world.poll()
    world.received()
    for message in world.messages[len(first) :]:  # the copies that poll queued
        deliver(world.ts, message, 1)
    receiver = world.stack.event_webhook
    accepted = [d for d in receiver.delivered if d.body["trigger_id"] == trigger.id]
    assert sorted(d.event_id for d in accepted) == sorted(all_ids(world, created))


# -- 429 storms ---------------------------------------------------------------------------------


def _table_calls(world: TriggerWorld) -> list[dict]:
    return [r for r in world.stack.servicenow.state.requests() if r["path"] == TABLE_PATH]


def _poll_round(worlds: list[TriggerWorld], waits: list[float]) -> None:
    """Polls each trigger once. A trigger that is deferred makes no instance call; a poll that
    meets a 429 defers every trigger of the connection to the same moment (noted in `waits`)."""
    state = worlds[0].stack.servicenow.state
    for polled in worlds:
        deferred_until = polled.read().deferred_until
        state.clear_requests()
        outcome = polled.poll()
        calls, now = _table_calls(polled), polled.clock.now()
        if deferred_until is not None and deferred_until > now:
            assert outcome == "deferred" and calls == [], "a deferred trigger called the instance"
            continue
        assert len(calls) == 1, outcome
        if calls[0]["status"] == 429:
            assert outcome.startswith("deferred"), outcome
            moments = {other.read().deferred_until for other in worlds}
            assert len(moments) == 1, "a 429 deferred only some of the connection's triggers"
            (moment,) = moments
            assert moment is not None
            waits.append((moment - now).total_seconds())
        else:
            assert outcome.startswith("ok"), outcome


def _storm(worlds: list[TriggerWorld], expected: list[set[str]], most_rounds: int) -> list[float]:
    """Rounds of polls 30 s apart until every trigger has queued what it should."""
    waits: list[float] = []
    for _ in range(most_rounds):
        _poll_round(worlds, waits)
        if all(set(w.event_ids()) >= ids for w, ids in zip(worlds, expected, strict=True)):
            return waits
        worlds[0].advance(30)
    raise AssertionError(f"not caught up after {most_rounds} rounds (waits {waits})")


def test_429_storms_defer_both_triggers_of_the_connection_and_lose_nothing(world):
    state = world.stack.servicenow.state
    second = TriggerWorld(world.stack, world.clock, world.connection)
    worlds = [world, second]
    world.create(name="First")
    second.create(name="Second", interval_seconds=30)
    world.advance(1)
    created = state.create_records(TABLE, count=4)
    world.advance(2)
    # Five 429s with Retry-After: 90, then three without (the default wait, 60 s).
    state.fail_next(5, status=429, retry_after=90, scope="table")
    state.fail_next(3, status=429, scope="table")
    waits = _storm(worlds, [all_ids(w, created) for w in worlds], most_rounds=40)
    assert waits == [90] * 5 + [poller.DEFAULT_DEFER.total_seconds()] * 3
    for polled in worlds:
        assert_exactly(polled, all_ids(polled, created))

    # A rate limit rule: two calls per ten minutes, then 429s saying Retry-After: 120.
    world.advance(30)
    state.set_rate_limit(2, window_seconds=600, retry_after=120)
    more = state.create_records(TABLE, count=3)
    world.advance(2)
    _poll_round(worlds, [])  # the window's two calls
    later = state.create_records(TABLE, count=2)
    world.advance(30)
    waits = _storm(worlds, [all_ids(w, created + more + later) for w in worlds], most_rounds=40)
    assert len(waits) >= 3 and set(waits) == {120}
    for polled in worlds:
        assert_exactly(polled, all_ids(polled, created + more + later))
        assert polled.read().events_emitted == 9


# -- late commits at the edge of the lookback ------------------------------------------------------


def _a_change_held_back(world: TriggerWorld) -> tuple[datetime, str]:
    """A trigger polled every 30 s, just polled; then a record changed now whose change is not
    yet visible (a late commit). Returns the moment of the change and the record's sys_id."""
    world.create(interval_seconds=30)
    world.advance(1)
    world.poll()
    written = world.clock.now()
    (late,) = world.stack.servicenow.state.create_records(
        TABLE, sys_updated_on=sn_time(written), visible=False
    )
    return written, late


def test_a_commit_visible_lookback_minus_one_seconds_late_is_caught(world):
    """A change that becomes visible TRIGGER_LOOKBACK_SECONDS - 1 s after its `sys_updated_on`,
    right after a poll has read (the worst moment), is read by the next poll, 30 s later."""
    state = world.stack.servicenow.state
    lookback = world.ts.settings.lookback_seconds
    written, late = _a_change_held_back(world)
    on_time = []
    # polls every 30 s, the last of them exactly lookback - 1 s after the late record's time
    first = (lookback - 1) % 30 or 30
    world.advance(first)
    while True:
        on_time += state.create_records(TABLE, sys_updated_on=sn_time(world.clock.now()))
        world.poll()
        if (world.clock.now() - written).total_seconds() >= lookback - 1:
            break
        world.advance(30)
    assert (world.clock.now() - written).total_seconds() == lookback - 1
    assert world.read().cursor_updated_on > sn_time(written)  # the cursor has moved past it
    assert late not in {event["sys_id"] for event in world.received()}
    state.make_visible(TABLE, [late])  # committed just after that poll read
    world.advance(30)
    world.poll()
    assert_exactly(world, all_ids(world, [late, *on_time]))
    assert world.read().caught_up_to > written  # ... and caught_up_to says so


def test_a_commit_visible_later_than_the_lookback_is_missed_until_the_record_changes(world):
    """The contract promises late commits up to TRIGGER_LOOKBACK_SECONDS. With polls every 30 s,
    a change visible more than the lookback + 30 s after its `sys_updated_on` is never read (each
    scan starts at most the lookback before the previous read): it becomes no event. The
    record's next change is read as usual and becomes one event, `updated`."""
    state = world.stack.servicenow.state
    lookback = world.ts.settings.lookback_seconds
    written, late = _a_change_held_back(world)
    on_time = []
    while (world.clock.now() - written).total_seconds() < lookback + 30:
        world.advance(30)
        on_time += state.create_records(TABLE, sys_updated_on=sn_time(world.clock.now()))
        world.poll()
    state.make_visible(TABLE, [late])  # more than lookback + 30 s late
    assert (world.clock.now() - written).total_seconds() == lookback + 30
    for _ in range(3):
        world.advance(30)
        world.poll()
    assert_exactly(world, all_ids(world, on_time))  # the late version: no event
    assert world.read().caught_up_to > written  # which caught_up_to does not show
    world.advance(1)
    state.update_records(
        TABLE, {"state": "2"}, sys_ids=[late], sys_updated_on=sn_time(world.clock.now())
    )
    world.advance(30)
    world.poll()
    assert_exactly(world, all_ids(world, on_time) | world.expected_ids([(late, 1)]))
    (event,) = [event for event in world.received() if event["sys_id"] == late]
    assert event["change"] == "updated" and event["sys_mod_count"] == 1


# -- bulk updates between the invocations of a long scan -----------------------------------------


def test_bulk_updates_in_one_second_across_pages_and_invocations_lose_nothing(world, monkeypatch):
    """2,500 records changed in one second are read in pages of 250, four pages per invocation
    (the 10,000-record burst itself is in test_trigger_poller); between the first and the second
    invocation a second bulk update changes 625 of them in one later second (250 already read,
    375 not yet; its second spans page boundaries too). Records read before it changed become
    two events (both versions were the latest when read); those not yet read become one, the
    latest; none is lost."""
    monkeypatch.setattr(poller, "MAX_PAGES", 4)
    monkeypatch.setattr(poller, "PAGE_SIZE", 250)
    state = world.stack.servicenow.state
    before = state.create_records(TABLE, count=2_500, sys_updated_on="2020-01-01 00:00:00")
    world.create()
    world.advance(1)
    state.update_records(
        TABLE, {"state": "2"}, sys_ids=before, sys_updated_on=sn_time(world.clock.now())
    )
    world.advance(2)
    order = sorted(before)  # one second: read in sys_id order
    assert world.poll().startswith("more (1000 events)")
    assert set(world.event_ids()) == all_ids(world, order[:1000], 1)
    world.advance(1)
    second_bulk = order[750:1375]
    state.update_records(
        TABLE, {"state": "3"}, sys_ids=second_bulk, sys_updated_on=sn_time(world.clock.now())
    )
    world.advance(1)
    outcomes = world.poll_until_caught_up()
    assert outcomes[-1].startswith("ok") and len(outcomes) >= 2
    expected = all_ids(world, order[:1000] + order[1375:], 1) | all_ids(world, second_bulk, 2)
    assert_exactly(world, expected)
    assert world.read().events_emitted == 2_750
    world.advance(30)  # the next polls read the lookback again: nothing new, nothing twice
    assert all(outcome.endswith("(0 events)") for outcome in world.poll_until_caught_up())
    assert_exactly(world, expected)


# -- an OAuth token revoked mid-burst ------------------------------------------------------------


def test_a_token_revoked_between_pages_is_renewed_once_and_the_poll_goes_on(
    oauth_world, monkeypatch
):
    world = oauth_world
    monkeypatch.setattr(poller, "PAGE_SIZE", 100)
    state = world.stack.servicenow.state
    world.create()
    world.advance(1)
    created = state.create_records(TABLE, count=350, sys_updated_on=sn_time(world.clock.now()))
    world.advance(2)
    real_read = poller._read_page
    grants: list[int] = []

    def revoked_after_the_first_page(ts, scan):
        records = real_read(ts, scan)
        if scan.pages == 0:
            state.revoke_access_tokens(CLIENT_ID)
            grants.append(state.token_exchanges(CLIENT_ID))
        return records

    monkeypatch.setattr(poller, "_read_page", revoked_after_the_first_page)
    assert world.poll() == "ok (350 events)"
    assert state.token_exchanges(CLIENT_ID) == grants[0] + 1  # one renewal for the whole burst
    refused = [r for r in _table_calls(world) if r["status"] == 401]
    assert len(refused) == 1
    assert_exactly(world, all_ids(world, created))
    assert world.read().status == "active"
