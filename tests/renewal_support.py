"""A clock the tests drive, shared by the app's services and the ServiceNow stand-in; and the
steps of a connection's life that the renewal tests share."""

import json
import uuid
from datetime import UTC, datetime, timedelta

from connections import services as services_module
from connections.clients import DUE_TABLE, table_client
from connections.service import Services
from servicenow.client import ServiceNowClient
from tests.api_client import Api


class DrivenClock:
    def __init__(self, stack) -> None:
        self.moment = datetime.now(UTC).replace(microsecond=0)
        self._servicenow = stack.servicenow.state

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self._servicenow.advance_clock(seconds)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def drive_services(clock: DrivenClock, monkeypatch):
    """The app's cached services with the driven clock and no real pauses."""
    services = services_module.services()
    monkeypatch.setattr(services, "clock", clock.now)
    monkeypatch.setattr(services, "sleep", clock.sleep)
    client = ServiceNowClient(services.policy, sleep=lambda seconds: None)
    monkeypatch.setattr(services, "servicenow", client)
    return services


def start_life(
    app_host, stack, clock: DrivenClock, monkeypatch, client: tuple[str, str]
) -> tuple[Services, Api]:
    """The app on the driven clock, a fresh ServiceNow stand-in with the OAuth `client`
    (id, secret), empty notice receivers and queue, and an empty due index."""
    services = drive_services(clock, monkeypatch)
    state = stack.servicenow.state
    state.reset()
    state.add_client(*client)
    stack.webhook.reset()
    stack.graph.reset()
    app_host.queues["send_notice"]._queue.clear_messages()
    forget_due_index()
    return services, Api(app_host.url, app_host.keys.function_key)


def assert_not_seen(api: Api, stack, caplog, *secrets: str) -> None:
    """None of `secrets` is in an answer, a log line, a notice or a mail."""
    seen = api.seen_text() + caplog.text + json.dumps([d.body for d in stack.webhook.received])
    seen += json.dumps([mail.body for mail in stack.graph.mails])
    for secret in secrets:
        assert secret not in seen


def forget_due_index() -> None:
    """Empties the due index, so each life's sweeps see only the connections it creates."""
    table = table_client(DUE_TABLE)
    for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def deliver_notices(app_host) -> int:
    """Runs the queue-triggered send_notice on everything queued so far."""
    listener = app_host.queues["send_notice"]
    delivered = 0
    while count := listener.process_once():
        delivered += count
    return delivered


def events(stack) -> list[str]:
    """The events of the notices the webhook receiver got, in order."""
    return [delivery.body["event"] for delivery in stack.webhook.received]


def create(api: Api, stack, tenant: str, auth: dict, **extra) -> dict:
    body = {
        "type": "servicenow",
        "name": f"Life {uuid.uuid4().hex[:6]}",
        "instance_url": stack.servicenow.url,
        "auth": auth,
        "notify_emails": ["it-admins@contoso.example"],
        **extra,
    }
    response = api.call("POST", f"/api/tenants/{tenant}/connections", body)
    assert response.status_code == 201, response.text
    return response.json()


def read(api: Api, tenant: str, connection_id: str) -> dict:
    return api.call("GET", f"/api/tenants/{tenant}/connections/{connection_id}").json()
