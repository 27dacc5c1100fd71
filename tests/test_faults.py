"""Faults half-way through an operation: storage stopped and restarted, Key Vault throttling and
failing, Table Storage errors, and instances that time out, reset, fail, send garbage or too much.

For each: the API answers with the contract's error, the stored state stays consistent (no record
without its secrets, no secret left by a failed create once Key Vault answers its clean-up, no
refresh token lost, no duplicate notice), and the next sweep or check repairs what it can.

This module runs its own Azurite (own ports, own data folder) that it stops and restarts, and
its own `Services` built from the connections classes with short retries, so a fault costs
milliseconds; the app served by the local host is pointed at them for each test. Key Vault and
ServiceNow are the session's stand-ins; nothing here talks to anything but loopback.
"""

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError
from azure.data.tables import TableServiceClient
from azure.keyvault.secrets import SecretClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from connections import clients
from connections import services as services_module
from connections.due_index import DueIndex
from connections.lifecycle import LifecycleSettings
from connections.model import parse_time
from connections.notices import NoticeQueue
from connections.secrets import SecretStore, secret_name
from connections.service import Services, current_entry
from connections.store import ConnectionStore
from localrun.azurite import Azurite, free_ports
from proxy import api as proxy_api
from renewal.sweep import SweepSettings, run_sweep
from renewal.worker import take_lease
from servicenow import client as servicenow
from servicenow.client import ServiceNowClient
from servicenow.outbound import OutboundPolicy, safe_request
from tests import leak_guard
from tests.api_client import Api
from tests.net_support import Reply, RogueInstance, chunked_reply, http_reply
from tests.renewal_support import DrivenClock
from tests.run_support import accepts

CLIENT_ID = "faults-client"
CLIENT_SECRET = "faults-client-secret-" + uuid.uuid4().hex
API_TOKEN = "faults-api-token-" + uuid.uuid4().hex
SWEEP = SweepSettings(concurrency=4, limit=100)
FAST = {
    "retry_total": 1,
    "retry_backoff_factor": 0.01,
    "retry_backoff_max": 0.05,
    "connection_timeout": 2,
    "read_timeout": 5,
}
OAUTH = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
INCIDENTS = "api/now/table/incident?sysparm_limit=1"
TOKEN = {"method": "api_token", "api_token": API_TOKEN}


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory) -> Iterator[Azurite]:
    server = Azurite(tmp_path_factory.mktemp("faults-azurite"), *free_ports(3))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class World:
    services: Services
    api: Api
    stack: Any
    azurite: Azurite
    clock: DrivenClock
    tenant: str
    queue: QueueClient

    def path(self, connection_id: str = "") -> str:
        base = f"/api/tenants/{self.tenant}/connections"
        return f"{base}/{connection_id}" if connection_id else base

    def create(self, auth: dict, instance_url: str | None = None) -> dict:
        body = {
            "type": "servicenow",
            "name": "Faults " + uuid.uuid4().hex[:8],
            "instance_url": instance_url or self.stack.servicenow.url,
            "auth": auth,
            "notify_emails": ["it@contoso.example"],
        }
        response = self.api.call("POST", self.path(), body)
        assert response.status_code == 201, response.text
        return response.json()

    def body(self, auth: dict, instance_url: str) -> dict:
        return {"type": "servicenow", "name": "F", "instance_url": instance_url, "auth": auth}

    def record(self, connection_id: str):
        return self.services.store.get(self.tenant, connection_id)

    def listed(self) -> list[dict]:
        return self.api.call("GET", self.path()).json()["items"]

    def vault_secrets(self) -> list[str]:
        """The names (never the values) of this tenant's readable secrets in the vault (a
        deleted one stays recoverable, unreadable, while purge protection keeps it)."""
        store = self.stack.keyvault.store
        with store._lock:
            found = list(store._live.values())
        return sorted(s.name for s in found if (s.latest.tags or {}).get("tenant") == self.tenant)

    def notices(self) -> list[dict]:
        messages = self.queue.peek_messages(max_messages=32)
        return [json.loads(message.content)["notice"] for message in messages]

    def sweep(self) -> dict:
        return dict(run_sweep(self.services, SWEEP))

    def storage_stops_at_the_next_notice(self, monkeypatch) -> Callable[[dict], None]:
        """Azurite stops just as the next notice is sent (which then fails); returns the real
        send, to put back."""
        real_send = self.services.notices.send

        def storage_stops_then_send(message: dict) -> None:
            self.azurite.stop()
            real_send(message)

        monkeypatch.setattr(self.services.notices, "send", storage_stops_then_send)
        return real_send


def _services(azurite: Azurite, stack: Any, clock: DrivenClock, suffix: str) -> Services:
    connection_string = azurite.connection_string
    tables = TableServiceClient.from_connection_string(connection_string, **FAST)
    records, due = (tables.create_table_if_not_exists(f"{name}{suffix}") for name in ("c", "d"))
    queue = QueueClient.from_connection_string(
        connection_string,
        f"notices-{suffix}",
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
        initial_backoff=0.01,
        increment_base=0.01,
        random_jitter_range=0.01,
        **FAST,
    )
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()
    vault = SecretClient(stack.keyvault.url, clients.credential(), **FAST)
    policy = OutboundPolicy(allow_local=True)
    return Services(
        store=ConnectionStore(records),
        secrets=SecretStore(vault),
        servicenow=ServiceNowClient(policy, sleep=lambda seconds: None),
        policy=policy,
        due=DueIndex(due),
        notices=NoticeQueue(queue),
        settings=LifecycleSettings(),
        clock=clock.now,
        sleep=clock.sleep,
    )


@pytest.fixture
def world(own_azurite, app_host, stack, monkeypatch) -> Iterator[World]:
    state = stack.servicenow.state
    state.reset()
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    state.add_api_key(API_TOKEN, name="faults-key")
    stack.keyvault.control.reset()
    for value, label in ((CLIENT_SECRET, "faults client secret"), (API_TOKEN, "faults token")):
        leak_guard.register_secret(value, label)
    clock = DrivenClock(stack)
    suffix = uuid.uuid4().hex[:12]
    services = _services(own_azurite, stack, clock, suffix)
    monkeypatch.setattr(services_module, "services", lambda: services)
    queue = services.notices._queue
    yield World(
        services,
        Api(app_host.url, app_host.keys.function_key),
        stack,
        own_azurite,
        clock,
        "faults-" + suffix,
        queue,
    )
    if not accepts(own_azurite.table_port):
        own_azurite.start()


def assert_service_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.headers["Retry-After"]


# -- Azurite stopped and restarted mid-operation -------------------------------------------------


@pytest.mark.parametrize("auth", [TOKEN, OAUTH], ids=["api_token", "oauth2"])
def test_storage_stopping_after_the_proof_leaves_no_secret_and_no_record(world, monkeypatch, auth):
    """The instance accepted the credentials, then storage went away: 503, the secrets already
    written are purged, and once storage is back the same create succeeds (no half record holds
    the name)."""
    client = world.services.servicenow
    for name in ("prove_api_token", "prove_oauth"):
        real = getattr(client, name)

        def proved_then_storage_stops(*args, _real=real, **kwargs):
            proof = _real(*args, **kwargs)
            world.azurite.stop()
            return proof

        monkeypatch.setattr(client, name, proved_then_storage_stops)
    response = world.api.call("POST", world.path(), world.body(auth, world.stack.servicenow.url))
    assert_service_unavailable(response)
    assert world.vault_secrets() == [], "a secret outlived its failed create"
    world.azurite.start()
    monkeypatch.undo()
    monkeypatch.setattr(services_module, "services", lambda: world.services)
    assert world.listed() == []
    response = world.api.call("POST", world.path(), world.body(auth, world.stack.servicenow.url))
    assert response.status_code == 201, response.text


def test_storage_stopping_after_a_renewal_loses_no_refresh_token(world, monkeypatch):
    """The instance rotated the refresh token and storage stopped before the record was saved:
    the new refresh token is already in Key Vault, so once storage is back (and the dead worker's
    lease has run out) the next sweep refreshes with it, without falling back to the client."""
    state = world.stack.servicenow.state
    state.update_client(CLIENT_ID, issue_refresh_token=True, rotate_refresh_token=True)
    created = world.create(OAUTH)
    secrets = world.services.secrets
    real_put = secrets.put

    def put_then_storage_stops(tenant_id, connection_id, kind, value, expires_on=None):
        version = real_put(tenant_id, connection_id, kind, value, expires_on)
        if kind == "refresh_token":
            world.azurite.stop()
        return version

    monkeypatch.setattr(secrets, "put", put_then_storage_stops)
    world.clock.advance(25 * 60)
    assert world.sweep() == {"error": 1}
    assert state.token_exchanges(CLIENT_ID, "refresh_token") == 1
    monkeypatch.setattr(secrets, "put", real_put)
    world.azurite.start()
    assert world.sweep() == {"busy": 1}, "the lost worker's lease holds for its two minutes"
    world.clock.advance(3 * 60)
    assert world.sweep() == {"connected": 1}
    assert state.token_exchanges(CLIENT_ID, "refresh_token") == 2
    assert state.token_exchanges(CLIENT_ID, "client_credentials") == 1, "no fallback: none lost"
    record = world.record(created["id"])
    assert record.lease_owner == "" and record.status == "connected"
    assert world.notices() == []


def test_storage_stopping_before_a_notice_is_queued_sends_it_once_later(world, monkeypatch):
    """The status changed and was saved, then storage stopped before the notice was queued: the
    notice stays in the record, goes out on the next visit with its id, and only once."""
    created = world.create(TOKEN)
    real_send = world.storage_stops_at_the_next_notice(monkeypatch)
    world.stack.servicenow.state.revoke_api_key("faults-key")
    world.clock.advance(6 * 3600 + 1)
    assert world.sweep() == {"invalid_credentials": 1}
    monkeypatch.setattr(world.services.notices, "send", real_send)
    world.azurite.start()
    record = world.record(created["id"])
    assert record.status == "invalid_credentials"
    assert [message["notice"]["event"] for message in record.pending_notices] == [
        "invalid_credentials"
    ]
    assert world.notices() == []
    checked = world.api.call("POST", world.path(created["id"]) + "/check").json()
    assert checked["status"] == "invalid_credentials"
    for _ in range(3):
        world.clock.advance(6 * 3600 + 1)
        world.sweep()
    sent = world.notices()
    assert [notice["event"] for notice in sent] == ["invalid_credentials"]
    assert sent[0]["notice_id"] == record.pending_notices[0]["notice"]["notice_id"]
    assert world.record(created["id"]).pending_notices == []


def test_a_notice_queued_neither_at_once_nor_later_is_retried_with_backoff(world, monkeypatch):
    """Storage stopped at the status change, so neither the notice nor the sweep's due-index
    changes were written. Once it is back the next sweep sends the notice; while the queue still
    refuses, the tries back off (1, 2, then 4 minutes after the change), and it goes out once."""
    created = world.create(TOKEN)
    tries: list[float] = []
    changed_at = world.clock.now() + timedelta(seconds=6 * 3600 + 1)

    def refused_twice_then_send(message):
        tries.append((world.clock.now() - changed_at).total_seconds() / 60)
        if len(tries) <= 2:
            raise ServiceRequestError("the queue is still refusing")
        return real_send(message)

    real_send = world.storage_stops_at_the_next_notice(monkeypatch)
    world.stack.servicenow.state.revoke_api_key("faults-key")
    world.clock.advance(6 * 3600 + 1)
    assert world.sweep() == {"invalid_credentials": 1}
    world.azurite.start()
    monkeypatch.setattr(world.services.notices, "send", refused_twice_then_send)
    for _ in range(30):
        world.clock.advance(60)
        world.sweep()
    assert tries == [1, 2, 4]
    assert [notice["event"] for notice in world.notices()] == ["invalid_credentials"]
    assert world.record(created["id"]).pending_notices == []


def test_a_check_whose_notice_storage_refused_sends_it_a_minute_later(world, monkeypatch):
    created = world.create(TOKEN)
    real_send = world.storage_stops_at_the_next_notice(monkeypatch)
    world.stack.servicenow.state.revoke_api_key("faults-key")
    checked = world.api.call("POST", world.path(created["id"]) + "/check")
    assert checked.json()["status"] == "invalid_credentials"
    world.azurite.start()
    monkeypatch.setattr(world.services.notices, "send", real_send)
    world.clock.advance(61)
    world.sweep()
    assert [notice["event"] for notice in world.notices()] == ["invalid_credentials"]
    for _ in range(5):
        world.clock.advance(3600)
        world.sweep()
    assert len(world.notices()) == 1


# -- Key Vault -----------------------------------------------------------------------------------


def test_key_vault_throttling_and_failing_on_create(world):
    control = world.stack.keyvault.control
    control.throttle(1, retry_after=0)
    assert world.create(TOKEN)["status"] == "connected", "one 429 is retried"
    control.fail(4, status=503)
    response = world.api.call("POST", world.path(), world.body(OAUTH, world.stack.servicenow.url))
    assert_service_unavailable(response)
    control.reset()
    assert len(world.listed()) == 1
    names = world.vault_secrets()
    assert len(names) == 1 and all("api-token" in name for name in names), names


def test_key_vault_failing_half_way_through_an_oauth_create_purges_what_was_written(
    world, monkeypatch
):
    secrets = world.services.secrets
    real_put = secrets.put

    def vault_fails_after_the_first(*args, **kwargs):
        version = real_put(*args, **kwargs)
        world.stack.keyvault.control.fail(2, status=503)  # the next put, and its one retry
        return version

    monkeypatch.setattr(secrets, "put", vault_fails_after_the_first)
    response = world.api.call("POST", world.path(), world.body(OAUTH, world.stack.servicenow.url))
    world.stack.keyvault.control.reset()
    assert_service_unavailable(response)
    assert world.listed() == []
    assert world.vault_secrets() == []


def test_key_vault_failing_during_a_renewal_is_repaired_by_the_next_sweep(world, monkeypatch):
    """A 429 from Key Vault is retried within the call. A 503 just after the instance rotated the
    refresh token loses that token (it was never stored): the lease is released, the connection
    comes back a minute later, and that sweep falls back to the client credentials. The status
    never changed, so no notice."""
    state = world.stack.servicenow.state
    state.update_client(CLIENT_ID, issue_refresh_token=True, rotate_refresh_token=True)
    created = world.create(OAUTH)
    control = world.stack.keyvault.control
    control.throttle(1, retry_after=0)
    world.clock.advance(25 * 60)
    assert world.sweep() == {"connected": 1}
    secrets = world.services.secrets
    real_put = secrets.put

    def vault_fails_on_the_refresh_token(tenant_id, connection_id, kind, *args):
        if kind == "refresh_token":
            control.fail(4, status=503)
        return real_put(tenant_id, connection_id, kind, *args)

    monkeypatch.setattr(secrets, "put", vault_fails_on_the_refresh_token)
    world.clock.advance(25 * 60)
    assert world.sweep() == {"error": 1}
    monkeypatch.setattr(secrets, "put", real_put)
    control.reset()
    assert state.token_exchanges(CLIENT_ID, "refresh_token") == 2
    record = world.record(created["id"])
    assert record.lease_owner == "" and record.status == "connected"
    assert record.next_due_at <= world.clock.now() + timedelta(minutes=1)
    world.clock.advance(61)
    assert world.sweep() == {"connected": 1}
    assert state.token_exchanges(CLIENT_ID, "client_credentials") == 2
    assert world.notices() == []


def test_key_vault_down_during_a_check_is_503_and_the_next_check_works(world):
    world.stack.servicenow.state.update_client(CLIENT_ID, issue_refresh_token=True)
    created = world.create(OAUTH)
    world.stack.keyvault.control.fail(4, status=503)
    response = world.api.call("POST", world.path(created["id"]) + "/check")
    world.stack.keyvault.control.reset()
    assert_service_unavailable(response)
    assert world.record(created["id"]).lease_owner == "", "the lease was let go"
    checked = world.api.call("POST", world.path(created["id"]) + "/check")
    assert checked.json()["status"] == "connected"


# -- secrets gone from Key Vault behind the service's back ---------------------------------------


@pytest.fixture
def proxied(world) -> Iterator[Callable[[str], Any]]:
    """GETs an incident list through the proxy with a connection (the proxy made anew on this
    world's services)."""
    proxy_api._proxy.cache_clear()

    def get(connection_id: str):
        return world.api.call("GET", world.path(connection_id) + "/servicenow/" + INCIDENTS)

    yield get
    proxy_api._proxy.cache_clear()


def vanish(world: World, connection_id: str, kinds: tuple[str, ...], purge: bool) -> None:
    """Deletes (and purges) the connection's secrets directly in the vault, as an operator
    might; the app's workers start afresh (a restart), so none holds a value read before."""
    store = world.stack.keyvault.store
    for kind in kinds:
        name = secret_name(connection_id, kind)
        store.delete(name)
        if purge:
            store.purge_protection = False
            try:
                store.purge(name)
            finally:
                store.purge_protection = True
    world.services.secrets = SecretStore(world.services.secrets._client)


def sweeps_leave_the_vault_alone(world: World, minutes: int) -> None:
    """A sweep a minute for `minutes`: nothing is due and nothing asks Key Vault again."""
    gets = world.stack.keyvault.control.calls("get")
    for _ in range(minutes):
        world.clock.advance(60)
        assert world.sweep() == {}
    assert world.stack.keyvault.control.calls("get") == gets


def test_oauth_secrets_purged_behind_the_service_s_back(world, proxied):
    created = world.create(OAUTH)
    vanish(world, created["id"], ("client_secret", "access_token"), purge=True)
    world.clock.advance(25 * 60)
    assert world.sweep() == {"renewal_failed": 1}
    record = world.record(created["id"])
    assert "client secret is missing from Key Vault" in record.status_detail
    assert "PATCH" in record.status_detail
    assert record.next_due_at >= world.clock.now() + timedelta(hours=1)
    sweeps_leave_the_vault_alone(world, 60)
    checked = world.api.call("POST", world.path(created["id"]) + "/check")
    assert checked.status_code == 200
    assert checked.json()["status"] == "renewal_failed"
    refused = proxied(created["id"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "connection_unusable"
    assert "missing from Key Vault" in refused.json()["error"]["message"]
    assert [notice["event"] for notice in world.notices()] == ["renewal_failed"]
    patch = {"auth": {"client_secret": CLIENT_SECRET}}
    restored = world.api.call("PATCH", world.path(created["id"]), patch)
    assert restored.status_code == 200, restored.text
    assert restored.json()["status"] == "connected"
    assert proxied(created["id"]).status_code == 200
    assert [notice["event"] for notice in world.notices()] == ["renewal_failed", "restored"]


def test_an_api_token_deleted_behind_the_service_s_back(world, proxied):
    """Deleted in a purge-protected vault: recoverable, but not readable. An update that needs
    the token says so; one that gives it recovers the name and writes the new version."""
    created = world.create(TOKEN)
    vanish(world, created["id"], ("api_token",), purge=False)
    elsewhere = world.stack.servicenow.url.replace("127.0.0.1", "localhost")
    moved = world.api.call("PATCH", world.path(created["id"]), {"instance_url": elsewhere})
    assert moved.status_code == 400, moved.text
    assert moved.json()["error"]["details"][0]["field"] == "auth.api_token"
    world.clock.advance(6 * 3600 + 1)
    assert world.sweep() == {"invalid_credentials": 1}
    assert "API token is missing from Key Vault" in world.record(created["id"]).status_detail
    sweeps_leave_the_vault_alone(world, 60)
    checked = world.api.call("POST", world.path(created["id"]) + "/check")
    assert checked.json()["status"] == "invalid_credentials"
    assert proxied(created["id"]).json()["error"]["code"] == "connection_unusable"
    assert [notice["event"] for notice in world.notices()] == ["invalid_credentials"]
    patch = {"auth": {"api_token": API_TOKEN}}
    restored = world.api.call("PATCH", world.path(created["id"]), patch)
    assert restored.json()["status"] == "connected"
    assert world.stack.keyvault.store.get(secret_name(created["id"], "api_token"))["value"] == (
        API_TOKEN
    )
    assert proxied(created["id"]).status_code == 200
    assert [notice["event"] for notice in world.notices()] == ["invalid_credentials", "restored"]


def test_the_proxy_is_first_to_find_the_api_token_gone(world, proxied):
    created = world.create(TOKEN)
    vanish(world, created["id"], ("api_token",), purge=True)
    table_calls = world.stack.servicenow.state.stats()["table_calls"]
    refused = proxied(created["id"])
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "connection_unusable"
    assert world.record(created["id"]).status == "invalid_credentials"
    assert [notice["event"] for notice in world.notices()] == ["invalid_credentials"]
    assert world.stack.servicenow.state.stats()["table_calls"] == table_calls, "nothing sent"


def test_key_vault_unavailable_during_a_sweep_stays_a_passing_fault(world):
    created = world.create(TOKEN)
    world.services.secrets = SecretStore(world.services.secrets._client)
    world.stack.keyvault.control.fail(50, status=503)
    world.clock.advance(6 * 3600 + 1)
    assert world.sweep() == {"error": 1}
    world.stack.keyvault.control.reset()
    record = world.record(created["id"])
    assert record.status == "connected"
    assert record.next_due_at <= world.clock.now() + timedelta(minutes=1)
    world.clock.advance(61)
    assert world.sweep() == {"connected": 1}
    assert world.notices() == []


# -- Table Storage 500 and 412 -------------------------------------------------------------------


def _server_error(*args: Any, **kwargs: Any) -> None:
    raise HttpResponseError(message="Internal Server Error (injected)")


def test_table_500_on_an_update_changes_nothing(world, monkeypatch):
    created = world.create(TOKEN)
    monkeypatch.setattr(world.services.store._table, "submit_transaction", _server_error)
    monkeypatch.setattr(world.services.store._table, "update_entity", _server_error)
    response = world.api.call("PATCH", world.path(created["id"]), {"name": "Renamed"})
    assert_service_unavailable(response)
    monkeypatch.undo()
    monkeypatch.setattr(services_module, "services", lambda: world.services)
    assert world.api.call("GET", world.path(created["id"])).json()["name"] == created["name"]
    renamed = world.api.call("PATCH", world.path(created["id"]), {"name": "Renamed"})
    assert renamed.json()["name"] == "Renamed"


def _entries_of(world: World, connection_id: str) -> list:
    every = world.services.due.due(world.clock.now() + timedelta(days=400), 1000)
    return [entry for entry in every if entry.connection_id == connection_id]


def test_table_500_on_a_record_in_a_sweep_is_repaired_by_a_later_sweep(world, monkeypatch):
    created = world.create(TOKEN)
    world.clock.advance(6 * 3600 + 1)
    monkeypatch.setattr(world.services.store._table, "update_entity", _server_error)
    assert world.sweep() == {"error": 1}
    monkeypatch.undo()
    world.clock.advance(3 * 60)
    assert world.sweep() == {"connected": 1}
    record = world.record(created["id"])
    assert record.lease_owner == "" and record.next_due_at > world.clock.now() + timedelta(hours=5)
    assert _entries_of(world, created["id"]) == [current_entry(record)]


def test_due_index_unwritable_after_a_sweep_is_repaired_by_the_next(world, monkeypatch, caplog):
    """The renewal is stored, but its due-index changes are not: the old (earlier) entry stays,
    so the next sweep meets it, finds the record not due, and writes the record's own entry."""
    created = world.create(TOKEN)
    world.clock.advance(6 * 3600 + 1)
    monkeypatch.setattr(world.services.due._table, "submit_transaction", _server_error)
    assert world.sweep() == {"connected": 1}
    assert "due-index changes not written" in caplog.text
    monkeypatch.undo()
    record = world.record(created["id"])
    stale = _entries_of(world, created["id"])
    assert len(stale) == 1 and stale[0] != current_entry(record)
    world.clock.advance(3 * 60)
    assert world.sweep() == {"stale": 1}
    assert _entries_of(world, created["id"]) == [current_entry(record)]
    assert world.record(created["id"]).etag == record.etag, "the record itself was not touched"


def test_an_update_racing_a_renewal_is_412_and_keeps_the_token_in_use(world, monkeypatch):
    """A token rotation was proven, then a sweep took the record (its ETag changed): the update
    is 412, the record still pins the token it had, and a retry goes through."""
    created = world.create(TOKEN)
    world.stack.servicenow.state.add_api_key("faults-rotated-token-1", name="rotated")
    leak_guard.register_secret("faults-rotated-token-1", "rotated token")
    client = world.services.servicenow
    real = client.prove_api_token

    def proved_then_a_sweep_takes_it(*args, **kwargs):
        proof = real(*args, **kwargs)
        take_lease(world.services, world.record(created["id"]), "racing-sweep")
        return proof

    monkeypatch.setattr(client, "prove_api_token", proved_then_a_sweep_takes_it)
    patch = {"auth": {"method": "api_token", "api_token": "faults-rotated-token-1"}}
    response = world.api.call("PATCH", world.path(created["id"]), patch)
    assert response.status_code == 412
    assert response.json()["error"]["code"] == "precondition_failed"
    monkeypatch.setattr(client, "prove_api_token", real)
    record = world.record(created["id"])
    pinned = world.services.secrets.get(record.id, "api_token", record.secret_versions["api_token"])
    assert pinned == API_TOKEN
    world.clock.advance(3 * 60)  # the racing sweep's lease runs out
    assert world.api.call("PATCH", world.path(created["id"]), patch).status_code == 200
    record = world.record(created["id"])
    pinned = world.services.secrets.get(record.id, "api_token", record.secret_versions["api_token"])
    assert pinned == "faults-rotated-token-1"


# -- instances that misbehave --------------------------------------------------------------------

ROGUE_TOKEN = "rogue-access-" + "x" * 20


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


ROGUE_CREATES = [
    # (id, path prefix, reply, expected status, words in the message)
    ("reset", "/oauth_token.do", lambda: _reply("reset"), 502, "failed"),
    ("closed without an answer", "/oauth_token.do", lambda: _reply("close"), 502, "failed"),
    ("no answer in time", "/oauth_token.do", lambda: _reply("hang", 3), 502, "in time"),
    ("500", "/oauth_token.do", lambda: http_reply(500, {"error": "boom"}), 502, "server error"),
    ("garbage", "/oauth_token.do", lambda: http_reply(200, b"\x00\xff<<>>"), 502, "not JSON"),
    (
        "JSON nested 100,000 deep",
        "/oauth_token.do",
        lambda: http_reply(200, _deep(100_000)),
        502,
        "not JSON",
    ),
    (
        "2 MB answer",
        "/oauth_token.do",
        lambda: http_reply(200, b" " * (2 * 1024 * 1024)),
        502,
        "larger",
    ),
    (
        "2 MB chunked answer",
        "/oauth_token.do",
        lambda: chunked_reply(200, b" " * 65536, 32),
        502,
        "larger",
    ),
    (
        "token without access_token",
        "/oauth_token.do",
        lambda: http_reply(200, {"expires_in": 60}),
        502,
        "no access token",
    ),
    ("Table API reset", "/api/now/table/", lambda: _reply("reset"), 502, "failed"),
    (
        "Table API 2 MB",
        "/api/now/table/",
        lambda: http_reply(200, b"{}" + b" " * (2 * 1024 * 1024)),
        502,
        "larger",
    ),
    (
        "Table API nested",
        "/api/now/table/",
        lambda: http_reply(200, _deep(100_000)),
        502,
        "not JSON",
    ),
]


def _reply(action: str, seconds: float = 0.0) -> Reply:
    return Reply(action, hang_seconds=seconds)


@pytest.fixture
def rogue(world, monkeypatch) -> Iterator[RogueInstance]:
    """A misbehaving instance, and outbound timeouts short enough to wait for."""
    monkeypatch.setattr(
        servicenow, "safe_request", functools.partial(safe_request, timeout=(1, 0.5))
    )
    leak_guard.register_secret(ROGUE_TOKEN, "rogue access token")
    with RogueInstance() as instance:
        yield instance


@pytest.mark.parametrize(
    ("prefix", "reply", "status", "words"),
    [row[1:] for row in ROGUE_CREATES],
    ids=[row[0] for row in ROGUE_CREATES],
)
def test_misbehaving_instances_on_create_store_nothing(world, rogue, prefix, reply, status, words):
    rogue.then(prefix, reply())
    started = time.monotonic()
    response = world.api.call("POST", world.path(), world.body(OAUTH, rogue.url))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == "instance_unreachable"
    assert words in error["message"], error["message"]
    assert time.monotonic() - started < 5
    assert world.listed() == []
    assert world.vault_secrets() == []


@pytest.mark.parametrize(
    ("expires_in", "lifetime"),
    [(None, 1799), ("\u00b2", 1799), ("soon", 1799), (-5, 1799), (10**20, 366 * 24 * 3600)],
    ids=["missing", "superscript digit", "text", "negative", "10^20 seconds"],
)
def test_token_answers_with_odd_expiries_are_taken_safely(world, rogue, expires_in, lifetime):
    answer: dict[str, Any] = {"access_token": ROGUE_TOKEN}
    if expires_in is not None:
        answer["expires_in"] = expires_in
    rogue.then("/oauth_token.do", http_reply(200, answer))
    created = world.create(OAUTH, rogue.url)
    expires = parse_time(created["auth"]["token_expires_at"]) - world.clock.now()
    assert abs(expires.total_seconds() - lifetime) <= 2


SWEEP_FAULTS = [
    # (id, reply, how many the client consumes: a 429 is tried three times)
    ("reset", lambda: _reply("reset"), 1),
    ("no answer in time", lambda: _reply("hang", 3), 1),
    ("503", lambda: http_reply(503, {"error": "busy"}, {"Retry-After": "1"}), 1),
    ("429", lambda: http_reply(429, {"error": "slow down"}, {"Retry-After": "1"}), 3),
    ("garbage", lambda: http_reply(200, b"<<garbage>>"), 1),
    (
        "hibernation page",
        lambda: http_reply(200, b"<html>zzz</html>", {"Content-Type": "text/html"}),
        1,
    ),
    ("2 MB answer", lambda: http_reply(200, b" " * (2 * 1024 * 1024)), 1),
]


@pytest.mark.parametrize(
    ("reply", "count"), [row[1:] for row in SWEEP_FAULTS], ids=[row[0] for row in SWEEP_FAULTS]
)
def test_a_renewal_that_meets_a_fault_is_retried_and_repaired(world, rogue, reply, count):
    """A transient fault during a scheduled renewal: the status stays (the token still works),
    the renewal is retried two minutes later and succeeds; no notice either way."""
    created = world.create(OAUTH, rogue.url)
    rogue.then("/oauth_token.do", *[reply() for _ in range(count)])
    world.clock.advance(25 * 60)
    assert world.sweep() == {"connected": 1}
    record = world.record(created["id"])
    assert "Retrying" in record.status_detail
    assert record.auth["token_expires_at"] == created["auth"]["token_expires_at"]
    world.clock.advance(2 * 60)
    assert world.sweep() == {"connected": 1}
    record = world.record(created["id"])
    assert "Retrying" not in record.status_detail
    assert record.auth["token_expires_at"] > created["auth"]["token_expires_at"]
    assert world.notices() == []


def test_a_send_to_an_unavailable_queue_gives_up_within_seconds(monkeypatch):
    """The app's queue client backs off like its other clients (a check or a sweep that must send
    a notice while the queue is down waits seconds, not the queue SDK's default 80 s)."""
    from azure.storage.queue._shared.policies import ExponentialRetry

    monkeypatch.setenv("AzureWebJobsStorage", Azurite(".", *free_ports(3)).connection_string)
    monkeypatch.setattr(QueueClient, "create_queue", lambda self, **kwargs: None)
    client = clients.queue_client.__wrapped__("connection-notices")
    retry = next(p for p in client._pipeline._impl_policies if isinstance(p, ExponentialRetry))
    worst = sum(
        retry.initial_backoff + retry.increment_base**count + retry.random_jitter_range
        for count in range(1, retry.total_retries + 1)
    )
    assert worst <= 20, f"{retry.total_retries} retries may wait {worst:.0f} s"
