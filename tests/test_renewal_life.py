"""Renewal and notices through a whole life, on a clock the test drives (no wall-clock waits)."""

import hashlib
import hmac
import json
import threading
import uuid
from datetime import timedelta

import pytest
from azure.core.exceptions import ServiceRequestError

from connections.model import parse_time
from renewal.sweep import SweepSettings, run_sweep
from tests.renewal_support import (
    DrivenClock,
    assert_not_seen,
    create,
    deliver_notices,
    events,
    read,
    start_life,
)

CLIENT_ID = "renewal-client"
CLIENT_SECRET = "renewal-secret-" + uuid.uuid4().hex
API_TOKEN = "renewal-token-" + uuid.uuid4().hex
SWEEP = SweepSettings(concurrency=8, limit=1000)


@pytest.fixture
def clock(stack) -> DrivenClock:
    return DrivenClock(stack)


@pytest.fixture
def life(app_host, stack, clock, monkeypatch, caplog):
    """The app wired to the driven clock, a fresh ServiceNow stand-in and empty receivers."""
    caplog.set_level("INFO")
    services, api = start_life(app_host, stack, clock, monkeypatch, (CLIENT_ID, CLIENT_SECRET))
    stack.servicenow.state.add_api_key(API_TOKEN, name="renewal-key")
    yield services, api
    assert_not_seen(api, stack, caplog, CLIENT_SECRET, API_TOKEN)


def seconds_between(first: str, second: str) -> float:
    return abs((parse_time(first) - parse_time(second)).total_seconds())


def assert_signed(stack, delivery) -> None:
    raw = json.dumps(delivery.body, separators=(",", ":"), ensure_ascii=False).encode()
    expected = hmac.new(stack.webhook_secret.encode(), raw, hashlib.sha256).hexdigest()
    assert delivery.signature_valid
    assert delivery.headers["X-Signature"] == f"sha256={expected}"
    assert delivery.headers["X-Notice-Id"] == delivery.body["notice_id"]


OAUTH = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


def test_oauth_life(life, stack, app_host, clock):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    state = stack.servicenow.state
    created = create(api, stack, tenant, OAUTH)
    assert state.token_exchanges(CLIENT_ID) == 1

    clock.advance(5 * 60)
    run_sweep(services, SWEEP)
    assert state.token_exchanges(CLIENT_ID) == 1, "not due yet"

    clock.advance(17 * 60)  # 22 minutes into a 30-minute token: inside the renewal margin
    run_sweep(services, SWEEP)
    assert state.token_exchanges(CLIENT_ID) == 2
    renewed = read(api, tenant, created["id"])
    assert renewed["status"] == "connected"
    assert renewed["auth"]["token_expires_at"] > created["auth"]["token_expires_at"]

    state.revoke_client(CLIENT_ID)
    clock.advance(25 * 60)
    run_sweep(services, SWEEP)
    failed = read(api, tenant, created["id"])
    assert failed["status"] == "renewal_failed"
    assert "glide.oauth.inbound.client.credential.grant_type.enabled" in failed["status_detail"]
    clock.advance(60 * 60)
    run_sweep(services, SWEEP)  # still failing: no second notice
    assert deliver_notices(app_host) == 1
    assert events(stack) == ["renewal_failed"]
    assert_signed(stack, stack.webhook.received[0])
    assert len(stack.graph.mails) == 1
    mail = stack.graph.mails[0]
    assert mail.to == ["it-admins@contoso.example"]
    assert created["name"] in mail.subject

    state.enable_client(CLIENT_ID)
    check = api.call("POST", f"/api/tenants/{tenant}/connections/{created['id']}/check")
    assert check.json()["status"] == "connected"
    assert deliver_notices(app_host) == 1
    assert events(stack) == ["renewal_failed", "restored"]
    assert len(stack.graph.mails) == 2


def test_api_token_revoked_and_restored(life, stack, app_host, clock):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    created = create(api, stack, tenant, {"method": "api_token", "api_token": API_TOKEN})
    stack.servicenow.state.revoke_api_key("renewal-key")
    clock.advance(6 * 3600 + 1)
    run_sweep(services, SWEEP)
    assert read(api, tenant, created["id"])["status"] == "invalid_credentials"
    stack.servicenow.state.enable_api_key("renewal-key")
    clock.advance(6 * 3600 + 1)
    run_sweep(services, SWEEP)
    assert read(api, tenant, created["id"])["status"] == "connected"
    assert deliver_notices(app_host) == 2
    assert events(stack) == ["invalid_credentials", "restored"]


def test_api_token_expiry_walks_through_expiring_and_expired(life, stack, app_host, clock):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    expiry = clock.now() + timedelta(days=20)
    auth = {
        "method": "api_token",
        "api_token": API_TOKEN,
        "expires_at": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    created = create(api, stack, tenant, auth)
    assert created["status"] == "connected"
    statuses = []
    for _ in range(200):  # every sweep over 22 days, six hours apart
        clock.advance(6 * 3600)
        run_sweep(services, SWEEP)
        statuses.append(read(api, tenant, created["id"])["status"])
        if clock.now() > expiry + timedelta(days=1):
            break
    assert "expiring" in statuses
    assert statuses[-1] == "expired"
    deliver_notices(app_host)
    assert events(stack) == ["expiring", "expiring", "expiring", "expired"]
    reminders = [d.body["detail"] for d in stack.webhook.received[:3]]
    assert all("expires on" in detail for detail in reminders)


def test_transient_failures_become_unreachable_after_the_threshold(life, stack, app_host, clock):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    created = create(api, stack, tenant, {"method": "api_token", "api_token": API_TOKEN})
    stack.servicenow.state.fail_next(1000, status=503)
    clock.advance(6 * 3600 + 1)
    run_sweep(services, SWEEP)
    first = read(api, tenant, created["id"])
    assert first["status"] == "connected", "one failure is not yet unreachable"
    assert "Retrying" in first["status_detail"]
    for _ in range(10):
        clock.advance(15 * 60)
        run_sweep(services, SWEEP)
    assert read(api, tenant, created["id"])["status"] == "unreachable"
    stack.servicenow.state.reset()
    stack.servicenow.state.add_api_key(API_TOKEN, name="renewal-key")
    clock.advance(15 * 60)
    run_sweep(services, SWEEP)
    assert read(api, tenant, created["id"])["status"] == "connected"
    deliver_notices(app_host)
    assert events(stack) == ["unreachable", "restored"]


def test_short_remaining_lifetime_is_renewed_exactly_as_it_expires(life, stack, clock):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    state = stack.servicenow.state
    state.update_client(CLIENT_ID, reuse_token=True)
    created = create(api, stack, tenant, OAUTH)
    first_token_expiry = created["auth"]["token_expires_at"]
    # At the renewal margin the instance hands back the same token with ~10 minutes left.
    clock.advance(21 * 60)
    run_sweep(services, SWEEP)
    again = read(api, tenant, created["id"])
    assert seconds_between(again["auth"]["token_expires_at"], first_token_expiry) <= 2
    # The next renewal is due exactly at expiry; the sweep that sees it coming waits for it.
    clock.advance(8 * 60)
    run_sweep(services, SWEEP)
    renewed = read(api, tenant, created["id"])
    assert seconds_between(renewed["auth"]["token_expires_at"], first_token_expiry) > 1700
    assert renewed["status"] == "connected"
    assert stack.servicenow.state.token_exchanges(CLIENT_ID) == 3


def test_refresh_tokens_are_used_and_never_lost_under_concurrency(life, stack, clock):
    services, api = life
    state = stack.servicenow.state
    state.update_client(CLIENT_ID, issue_refresh_token=True, rotate_refresh_token=True)
    tenant = "life" + uuid.uuid4().hex[:8]
    ids = [create(api, stack, tenant, OAUTH)["id"] for _ in range(4)]
    assert state.token_exchanges(CLIENT_ID, "client_credentials") == 4
    clock.advance(25 * 60)
    threads = [threading.Thread(target=run_sweep, args=(services, SWEEP)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state.token_exchanges(CLIENT_ID, "refresh_token") == 4, "one exchange per renewal"
    results = []
    path = f"/api/tenants/{tenant}/connections/{ids[0]}/check"
    checks = [
        threading.Thread(target=lambda: results.append(api.call("POST", path).json()))
        for _ in range(3)
    ]
    for thread in checks:
        thread.start()
    for thread in checks:
        thread.join()
    assert [result["status"] for result in results] == ["connected"] * 3
    # Checks at once share one exchange, made with the newest refresh token: none fell back.
    assert 5 <= state.token_exchanges(CLIENT_ID, "refresh_token") <= 7
    assert state.token_exchanges(CLIENT_ID, "client_credentials") == 4
    api.call("POST", path)
    assert state.token_exchanges(CLIENT_ID, "client_credentials") == 4
    for connection_id in ids:
        assert read(api, tenant, connection_id)["status"] == "connected"


def test_the_life_runs_end_to_end_through_the_admin_call(life, stack, app_host, clock):
    _, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    created = create(api, stack, tenant, OAUTH)
    stack.servicenow.state.revoke_client(CLIENT_ID)
    clock.advance(25 * 60)
    master = {"x-functions-key": app_host.keys.master_key}
    admin = api.call(
        "POST",
        "/admin/functions/renewal_sweep",
        {"input": ""},
        key=None,
        headers=master,
        check=False,
    )
    assert admin.status_code == 202
    app_host.wait_for_admin_runs()
    assert read(api, tenant, created["id"])["status"] == "renewal_failed"
    assert deliver_notices(app_host) == 1
    stack.webhook.wait_for(1)
    stack.graph.wait_for(1)
    assert events(stack) == ["renewal_failed"]


def test_a_notice_the_queue_refused_goes_out_on_the_next_sweep(
    life, stack, app_host, clock, monkeypatch
):
    services, api = life
    tenant = "life" + uuid.uuid4().hex[:8]
    created = create(api, stack, tenant, {"method": "api_token", "api_token": API_TOKEN})
    real_send = services.notices.send

    def queue_down(message):
        raise ServiceRequestError("queue storage is down")

    monkeypatch.setattr(services.notices, "send", queue_down)
    stack.servicenow.state.revoke_api_key("renewal-key")
    clock.advance(6 * 3600 + 1)
    run_sweep(services, SWEEP)
    assert read(api, tenant, created["id"])["status"] == "invalid_credentials"
    assert deliver_notices(app_host) == 0
    monkeypatch.setattr(services.notices, "send", real_send)
    clock.advance(60)
    run_sweep(services, SWEEP)
    clock.advance(3600)
    run_sweep(services, SWEEP)
    assert deliver_notices(app_host) == 1
    assert events(stack) == ["invalid_credentials"]


def test_notice_that_cannot_be_delivered_ends_in_the_poison_queue(life, stack, app_host):
    listener = app_host.queues["send_notice"]
    poison = listener._poison
    poison.create_queue() if not _exists(poison) else poison.clear_messages()
    stack.webhook.fail_next(5, status=500)
    message = {
        "notice": {
            "notice_id": uuid.uuid4().hex,
            "event": "unreachable",
            "tenant_id": "contoso",
            "connection_id": uuid.uuid4().hex,
            "connection_name": "Poisoned",
            "instance_url": "https://contoso.service-now.com",
            "status": "unreachable",
            "detail": "The instance answered with a server error (503).",
            "occurred_at": "2026-11-28T10:05:00Z",
        },
        "recipients": ["it@contoso.example"],
    }
    services = life[0]
    services.notices.send(message)
    for _ in range(5):
        listener.process_once()
        _make_visible(listener)
    poisoned = list(poison.receive_messages())
    assert len(poisoned) == 1
    import base64

    assert json.loads(base64.b64decode(poisoned[0].content)) == message
    assert listener._queue.peek_messages() == []


def _exists(queue) -> bool:
    try:
        queue.get_queue_properties()
    except Exception:
        return False
    return True


def _make_visible(listener) -> None:
    for message in listener._queue.receive_messages(visibility_timeout=1, max_messages=32):
        listener._queue.update_message(message, visibility_timeout=0)
