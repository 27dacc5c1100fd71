"""Short-lived OAuth tokens: renewed before they expire whatever their lifetime, and at expiry
only when the instance hands back the token it already gave.

The margin rules are checked on `oauth_due` alone; the lives run the real sweep, the app's
services and the ServiceNow stand-in on a clock the test drives, with the timer fired as the
host fires it (every 5 minutes; an occurrence that passes while a run is going is skipped).
"""

import hashlib
import itertools
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connections.clients import DUE_TABLE, table_client
from connections.lifecycle import (
    EXACT_GRACE,
    MIN_RENEWAL_INTERVAL,
    OK,
    LifecycleSettings,
    Outcome,
    oauth_due,
    record_outcome,
)
from connections.model import OAUTH2, Connection, parse_time
from localrun.ncrontab import next_occurrence
from renewal.sweep import WINDOW_HEADROOM, SweepSettings, run_sweep
from renewal.worker import wait_for_release
from tests.api_client import Api
from tests.renewal_support import DrivenClock, drive_services

SCHEDULE = "0 */5 * * * *"  # RENEWAL_SCHEDULE's default
SWEEP = SweepSettings.from_environ({})  # the defaults: the window is the schedule's interval
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
SETTINGS = LifecycleSettings()
LIFETIMES = (60, 120, 300, 1800)
# lifetime: (margin, timed); jitter takes at most a quarter of the margin (2 minutes at most)
MARGINS = {60: (15.0, True), 120: (30.0, True), 300: (75.0, True), 1800: (600.0, False)}
CLIENT_SECRET = "short-secret-" + uuid.uuid4().hex


class Edge(random.Random):
    """Jitter at one end of its range: 0 (`high=False`) or its bound."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


def _seconds_before_expiry(expires_in: int, high: bool, **kwargs) -> tuple[float, bool]:
    due, timed = oauth_due(NOW, expires_in, SETTINGS, Edge(high), **kwargs)
    return (NOW + timedelta(seconds=expires_in) - due).total_seconds(), timed


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", LIFETIMES)
def test_every_lifetime_is_renewed_a_margin_before_expiry(lifetime):
    margin, timed = MARGINS[lifetime]
    jitter = min(120.0, margin / 4)
    assert _seconds_before_expiry(lifetime, high=False) == (margin, timed)
    assert _seconds_before_expiry(lifetime, high=True) == (margin + jitter, timed)
    for seed in range(50):
        due, _ = oauth_due(NOW, lifetime, SETTINGS, random.Random(seed))
        assert NOW < due < NOW + timedelta(seconds=lifetime - margin + 1)


def test_the_long_margin_holds_down_to_twice_the_minimum_margin():
    assert _seconds_before_expiry(1200, high=False) == (600.0, False)
    assert _seconds_before_expiry(1199, high=False) == (1199 / 4, True)
    assert _seconds_before_expiry(3 * 3600, high=False) == (3 * 3600 / 5, False)
    # A smaller minimum margin keeps more lifetimes on the long rule.
    settings = LifecycleSettings(min_margin=timedelta(minutes=1))
    due, timed = oauth_due(NOW, 300, settings, Edge(False))
    assert (due, timed) == (NOW + timedelta(seconds=240), False)


@pytest.mark.parametrize("lifetime", [0, 1, 15, 60, 120, 300, 1199])
def test_a_handed_back_short_token_is_renewed_as_it_expires(lifetime):
    due, timed = oauth_due(NOW, lifetime, SETTINGS, Edge(True), reused=True)
    assert timed
    assert due == NOW + max(timedelta(seconds=lifetime) + EXACT_GRACE, MIN_RENEWAL_INTERVAL)


def test_a_handed_back_token_with_a_long_life_left_keeps_the_margin():
    """Two renewals a second apart both look handed back; with most of a 30-minute life left
    the token is still renewed 10 minutes before it expires, never after."""
    assert _seconds_before_expiry(1800, high=False, reused=True) == (600.0, False)


def test_no_lifetime_makes_renewals_follow_each_other_without_pause():
    for expires_in in (0, 1, 4):
        due, timed = oauth_due(NOW, expires_in, SETTINGS, Edge(True))
        assert timed
        assert due == NOW + MIN_RENEWAL_INTERVAL


def _oauth_connection(expires_at: datetime | None) -> Connection:
    auth = {"method": OAUTH2, "client_id": "c"}
    if expires_at is not None:
        auth["token_expires_at"] = expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Connection("x", "t", "n", "https://i", auth, created_at=NOW, updated_at=NOW)


def test_record_outcome_passes_on_whether_the_token_was_handed_back():
    connection = _oauth_connection(NOW + timedelta(seconds=20))
    outcome = Outcome(OK, "Token renewed.")
    record_outcome(connection, outcome, NOW, SETTINGS, expires_in=20, reused=True, rng=Edge(True))
    assert (connection.next_due_at, connection.due_exact) == (NOW + timedelta(seconds=22), True)
    record_outcome(connection, outcome, NOW, SETTINGS, expires_in=60, rng=Edge(False))
    assert (connection.next_due_at, connection.due_exact) == (NOW + timedelta(seconds=45), True)


# -- lives on the driven clock -------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    at: datetime
    expires_at: datetime
    token: str  # a fingerprint, never the token


@dataclass
class Life:
    services: Any
    api: Api
    clock: DrivenClock
    state: Any  # the ServiceNow stand-in's
    instance_url: str
    client_id: str
    grants: list[Grant]  # every client-credentials grant, in order
    tenant: str = ""
    connection_id: str = ""
    exchange_seconds: float = 0.0  # driven time each token exchange takes

    def stored_expiry(self) -> datetime:
        record = self.services.store.get(self.tenant, self.connection_id)
        return parse_time(record.auth["token_expires_at"])

    def create(self) -> dict:
        self.tenant = "short" + uuid.uuid4().hex[:8]
        body = {
            "type": "servicenow",
            "name": f"Short {uuid.uuid4().hex[:6]}",
            "instance_url": self.instance_url,
            "auth": {
                "method": "oauth2",
                "client_id": self.client_id,
                "client_secret": CLIENT_SECRET,
            },
        }
        response = self.api.call("POST", f"/api/tenants/{self.tenant}/connections", body)
        assert response.status_code == 201, response.text
        created = response.json()
        self.connection_id = created["id"]
        return created


@pytest.fixture
def life(app_host, stack, monkeypatch, caplog):
    caplog.set_level("INFO")
    clock = DrivenClock(stack)
    services = drive_services(clock, monkeypatch)
    state = stack.servicenow.state
    state.reset()
    _empty_due_index()
    grants: list[Grant] = []
    client = services.servicenow
    real = client.client_credentials

    def recording(instance_url, client_id, secret):
        clock.advance(current.exchange_seconds)
        grant = real(instance_url, client_id, secret)
        moment = clock.now()
        fingerprint = hashlib.sha256(grant.access_token.encode()).hexdigest()[:16]
        grants.append(Grant(moment, moment + timedelta(seconds=grant.expires_in), fingerprint))
        return grant

    monkeypatch.setattr(client, "client_credentials", recording)
    client_id = "short-" + uuid.uuid4().hex[:8]
    api = Api(app_host.url, app_host.keys.function_key)
    current = Life(services, api, clock, state, stack.servicenow.url, client_id, grants)
    yield current
    assert CLIENT_SECRET not in api.seen_text() + caplog.text


def _empty_due_index() -> None:
    """Other tests' connections stay out of these sweeps."""
    table = table_client(DUE_TABLE)
    for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def _to_occurrence(clock: DrivenClock) -> None:
    clock.advance((next_occurrence(SCHEDULE, clock.now()) - clock.now()).total_seconds())


def drive_timer(life: Life, duration: timedelta, *, watch_expiry: bool) -> list[datetime]:
    """Fires the sweep as the host does for `duration` of driven time, from now (an occurrence):
    the next occurrence is the first after the run ended. With `watch_expiry`, the stored token
    must be unexpired at every moment a sweep looks: its start and each time it wakes."""
    clock, services = life.clock, life.services
    driven_sleep = services.sleep

    def watching_sleep(seconds: float) -> None:
        driven_sleep(seconds)
        if watch_expiry:
            assert life.stored_expiry() > clock.now(), f"token lapsed at {clock.now()}"

    services.sleep = watching_sleep
    end = clock.now() + duration
    starts = []
    try:
        while clock.now() < end:
            starts.append(clock.now())
            if watch_expiry:
                assert life.stored_expiry() > clock.now(), f"token lapsed at {clock.now()}"
            run_sweep(services, SWEEP)
            clock.advance((next_occurrence(SCHEDULE, clock.now()) - clock.now()).total_seconds())
    finally:
        services.sleep = driven_sleep
    return starts


@pytest.mark.parametrize("lifetime", LIFETIMES)
def test_tokens_of_any_lifetime_are_renewed_before_they_expire(life, lifetime):
    life.state.add_client(life.client_id, CLIENT_SECRET, access_token_lifetime=lifetime)
    _to_occurrence(life.clock)
    life.create()  # just as a sweep starts
    hour = timedelta(hours=1)
    starts = drive_timer(life, hour, watch_expiry=True)

    # Every occurrence ran: no run outlasted its window (the host would have skipped the next).
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [300.0] * 11
    grants = life.grants
    assert life.state.token_exchanges(life.client_id) == len(grants)
    assert life.stored_expiry() == grants[-1].expires_at > life.clock.now()
    margin, _ = MARGINS[lifetime]
    earliest = lifetime - margin - min(120.0, margin / 4) - 1  # due times are whole seconds
    for previous, renewal in itertools.pairwise(grants):
        assert renewal.at < previous.expires_at, "renewed after the token expired"
        assert (renewal.at - previous.at).total_seconds() >= earliest, "renewed too early"
    # One grant per cycle: as many as the hour needs, no more.
    assert hour.total_seconds() / lifetime <= len(grants) - 1 <= hour.total_seconds() / earliest


def test_a_sweep_renews_a_short_token_again_within_its_window(life):
    life.state.add_client(life.client_id, CLIENT_SECRET, access_token_lifetime=60)
    _to_occurrence(life.clock)
    life.create()
    started = life.clock.now()
    counts = run_sweep(life.services, SWEEP)
    renewals = life.grants[1:]
    # Every 41 to 45 s (the margin is 15 s, less jitter) through the window, up to its last
    # 10 s (left to the next run, which starts as this window ends).
    last = started + SWEEP.lookahead - WINDOW_HEADROOM
    waited = (last - started).total_seconds()
    assert waited // 45 <= len(renewals) <= waited // 41
    assert counts == {"connected": len(renewals)}
    assert all(started < grant.at <= last for grant in renewals)
    assert life.clock.now() <= last
    assert life.stored_expiry() > last


def test_a_run_leaves_the_end_of_its_window_so_no_occurrence_is_skipped(life, monkeypatch):
    """A timed renewal due 5 s before the next occurrence, whose exchange takes 8 s: waited
    for, the run would still be going when the occurrence came, and the host would skip it."""
    life.state.add_client(life.client_id, CLIENT_SECRET, access_token_lifetime=394)
    monkeypatch.setattr(life.services, "rng", Edge(False))  # no jitter: due at 394 - 98.5 s
    _to_occurrence(life.clock)
    created = life.create()
    first_due = parse_time(created["auth"]["token_expires_at"]) - timedelta(seconds=99)
    assert first_due == life.clock.now() + timedelta(seconds=295)
    life.exchange_seconds = 8
    starts = drive_timer(life, timedelta(minutes=30), watch_expiry=True)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(starts)] == [300.0] * 5
    assert life.grants[1].at == starts[1] + timedelta(seconds=8), "left to the next run"
    for previous, renewal in itertools.pairwise(life.grants):
        assert renewal.at < previous.expires_at


@pytest.mark.parametrize("lifetime", [60, 120])
def test_a_handed_back_token_is_renewed_as_it_expires_not_in_a_loop(life, lifetime):
    life.state.add_client(
        life.client_id, CLIENT_SECRET, access_token_lifetime=lifetime, reuse_token=True
    )
    _to_occurrence(life.clock)
    life.create()
    starts = drive_timer(life, timedelta(hours=1), watch_expiry=False)
    grants = life.grants
    assert life.state.token_exchanges(life.client_id) == len(grants)
    # Never a loop of identical tokens: each token is granted once, and handed back once.
    assert max(Counter(grant.token for grant in grants).values()) == 2
    grace = EXACT_GRACE.total_seconds()
    handed_back = 0
    for index in range(1, len(grants) - 1):
        previous, renewal, after = grants[index - 1 : index + 2]
        if renewal.token != previous.token:
            assert renewal.expires_at > previous.expires_at
            continue
        # The early renewal got the same token back: the next one waits for its expiry.
        handed_back += 1
        assert renewal.expires_at <= previous.expires_at + timedelta(seconds=1)
        assert after.token != renewal.token
        late = (after.at - renewal.expires_at).total_seconds()
        assert late > 0, "renewed before the handed-back token expired"
        # At expiry, within the grace; or, when that falls in the last seconds of a window,
        # by the next run, which starts then.
        headroom = WINDOW_HEADROOM.total_seconds()
        assert late <= grace or (after.at in starts and late <= grace + headroom), late
    slowest_cycle = lifetime + grace + WINDOW_HEADROOM.total_seconds()
    assert handed_back >= 3600 // slowest_cycle - 1


def test_an_entry_that_ends_busy_is_not_retried_in_the_same_run(life, monkeypatch):
    life.state.add_client(life.client_id, CLIENT_SECRET, access_token_lifetime=60)
    _to_occurrence(life.clock)
    life.create()
    services = life.services
    record = services.store.get(life.tenant, life.connection_id)
    record.lease_owner, record.lease_until = "another-worker", life.clock.now() + timedelta(hours=1)
    services.store.write_lease(record)
    life.clock.advance(50)  # the timed renewal is due; another worker holds the lease
    started = life.clock.now()
    reads = []
    real_due = services.due.due

    def counting_due(until, limit):
        reads.append(until)
        return real_due(until, limit)

    monkeypatch.setattr(services.due, "due", counting_due)
    counts = run_sweep(services, SWEEP)
    assert counts == {"busy": 1}
    assert len(reads) <= 2, "read the index again and again"
    assert life.clock.now() == started, "waited for an entry it had already taken"
    assert len(life.grants) == 1


def test_wait_for_release_returns_once_the_lease_is_gone_or_has_run_out(life, monkeypatch):
    life.state.add_client(life.client_id, CLIENT_SECRET, access_token_lifetime=1800)
    life.create()
    services = life.services
    reads = []
    real_get = services.store.get

    def counting_get(tenant_id, connection_id):
        reads.append(connection_id)
        return real_get(tenant_id, connection_id)

    monkeypatch.setattr(services.store, "get", counting_get)
    free = wait_for_release(services, life.tenant, life.connection_id)
    assert (free.lease_owner, len(reads)) == ("", 1)
    record = real_get(life.tenant, life.connection_id)
    record.lease_owner, record.lease_until = "another-worker", life.clock.now() + timedelta(60)
    services.store.write_lease(record)
    held = wait_for_release(services, life.tenant, life.connection_id, timeout=0)
    assert (held.lease_owner, len(reads)) == ("another-worker", 2)
    life.clock.advance(61 * 86400)  # the holder died; its lease has run out: no polling
    ran_out = wait_for_release(services, life.tenant, life.connection_id)
    assert (ran_out.lease_owner, len(reads)) == ("another-worker", 3)
