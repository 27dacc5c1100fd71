"""Event delivery (`deliver_event`) against the stack's event receiver, on Azurite: signed like
notices, marked delivered on a 2xx, a copy dropped, a redelivery sent again, a failure raised (and,
through the local host's queue listener, poisoned after 5 tries). No wall-clock waits: `deliver`
returns after the receiver has recorded the POST, and the queue is driven with `process_once`."""

import base64
import contextlib
import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from werkzeug.wrappers import Response

from connections.services import services
from localrun.server import BackgroundServer
from localrun.standins.receivers import EventReceiver, sign
from renewal import webhook
from renewal.webhook import signature
from triggers.delivery import EventDeliveryError, deliver
from triggers.events import Emitted, list_key, seen_key
from triggers.poller import event_id
from triggers.services import TriggerServices, trigger_services

NOW = datetime(2026, 12, 1, 10, 0, 31, tzinfo=UTC)
# Record values stand for personal data: they must never reach a log line.
PERSON = "Jane Roe-" + uuid.uuid4().hex[:8]
URL_TOKEN = "url-held-token-" + uuid.uuid4().hex[:8]


@pytest.fixture
def receiver(stack) -> EventReceiver:
    stack.event_webhook.reset()
    return stack.event_webhook


@pytest.fixture
def ts(stack) -> TriggerServices:
    """The app's trigger services (Azurite), with a fixed clock."""
    fixed = dataclasses.replace(services(), clock=lambda: NOW)
    return dataclasses.replace(trigger_services(), services=fixed)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def record_event(ts: TriggerServices, trigger_id: str | None = None) -> dict[str, Any]:
    """An event as the poller builds it, recorded under its trigger; returns its queue message."""
    trigger_id = trigger_id or uuid.uuid4().hex
    sys_id = uuid.uuid4().hex
    event = {
        "event_id": event_id(trigger_id, sys_id, 0),
        "change": "created",
        "tenant_id": "contoso",
        "connection_id": uuid.uuid4().hex,
        "trigger_id": trigger_id,
        "trigger_name": "New Teams requests",
        "table": "sc_req_item",
        "sys_id": sys_id,
        "number": "RITM0010001",
        "sys_mod_count": 0,
        "sys_updated_on": "2026-12-01T10:00:01Z",
        "record": {
            "number": "RITM0010001",
            "short_description": f"New team for Marketing, asked by {PERSON} — Åsa",
            "requested_for": PERSON,
            "variables.team_name": "Marketing",
        },
        "emitted_at": "2026-12-01T10:00:31Z",
    }
    seen = seen_key("2026-12-01 10:00:01", sys_id, 0)
    ts.events.record(trigger_id, [Emitted(event, seen, list_key(NOW, 0, event["event_id"]))])
    return {"event": event, "seen": seen}


def delivered(ts: TriggerServices, message: dict[str, Any]) -> bool:
    return ts.events.delivered(message["event"]["trigger_id"], message["seen"])


def lines(caplog: pytest.LogCaptureFixture, logger: str = "triggers.delivery") -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def assert_nothing_leaked(stack, *texts: str) -> None:
    for text in texts:
        assert stack.event_webhook_secret not in text
        assert PERSON not in text
        assert URL_TOKEN not in text


# --- deliver() ---------------------------------------------------------------------------------


def test_an_event_is_signed_sent_and_marked_delivered(stack, ts, receiver, logs) -> None:
    message = record_event(ts)
    event = message["event"]

    deliver(ts, message, 1)

    [received] = receiver.received
    assert received.accepted and received.signature_valid and not received.duplicate
    assert received.event_id == event["event_id"]
    assert received.headers["X-Event-Id"] == event["event_id"]
    assert received.headers["Content-Type"] == "application/json; charset=utf-8"
    assert received.body == event
    raw = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    assert received.headers["X-Signature"] == sign(stack.event_webhook_secret, raw)
    assert received.headers["X-Signature"] == signature(stack.event_webhook_secret, raw)
    assert delivered(ts, message)
    assert lines(logs) == [
        f"event {event['event_id']} trigger={event['trigger_id']} try=1 result=delivered (204)"
    ]
    assert_nothing_leaked(stack, logs.text)
    assert receiver.url not in "\n".join(lines(logs))


def test_a_second_copy_is_not_sent_again(ts, receiver, logs) -> None:
    message = record_event(ts)

    deliver(ts, message, 1)
    deliver(ts, message, 1)  # the poller queued it again after a crash

    assert len(receiver.received) == 1
    assert lines(logs)[-1].endswith("try=1 result=skipped (already delivered)")


def test_a_redelivery_is_sent_again(ts, receiver, logs) -> None:
    message = record_event(ts)
    deliver(ts, message, 1)

    deliver(ts, message | {"redeliver": True}, 1)

    first, second = receiver.received
    assert second.accepted and second.duplicate and second.body == first.body
    assert second.headers["X-Event-Id"] == first.headers["X-Event-Id"]
    assert lines(logs)[-1].endswith("try=1 result=redelivered (204)")
    assert delivered(ts, message)


def test_a_redelivery_of_an_event_never_delivered_marks_it(ts, receiver) -> None:
    message = record_event(ts)

    deliver(ts, message | {"redeliver": True}, 1)

    assert [d.duplicate for d in receiver.received] == [False]
    assert delivered(ts, message)


def test_an_event_not_recorded_yet_is_delivered_and_marked(ts, receiver, logs) -> None:
    """The poller queues before it records: a fast delivery marks the version anyway, so the
    copy a later poll queues (if the record failed) is dropped."""
    message = record_event(ts)
    message = message | {"event": message["event"] | {"trigger_id": uuid.uuid4().hex}}

    deliver(ts, message, 1)
    deliver(ts, message, 1)

    assert len(receiver.delivered) == 1
    assert delivered(ts, message)


def test_a_receiver_answering_500_raises_and_nothing_is_marked(stack, ts, receiver, logs) -> None:
    message = record_event(ts)
    receiver.fail_next(1, status=500)

    with pytest.raises(EventDeliveryError, match="the receiver answered 500") as raised:
        deliver(ts, message, 2)

    assert [d.status for d in receiver.received] == [500]
    assert not delivered(ts, message)
    [line] = lines(logs)
    assert line.endswith("try=2 result=failed (the receiver answered 500); the queue retries")
    assert [r.levelname for r in logs.records if r.name == "triggers.delivery"] == ["WARNING"]
    assert_nothing_leaked(stack, str(raised.value), logs.text)
    assert receiver.url not in str(raised.value)


def test_the_last_try_says_the_message_goes_to_the_poison_queue(ts, receiver, logs) -> None:
    receiver.fail_next(1, status=503)

    with pytest.raises(EventDeliveryError, match="503"):
        deliver(ts, record_event(ts), 5)

    [record] = [r for r in logs.records if r.name == "triggers.delivery"]
    assert record.levelname == "ERROR"
    assert "moves it to servicenow-events-poison" in record.getMessage()


def test_a_wrong_secret_is_refused_and_raises(ts, receiver) -> None:
    message = record_event(ts)
    settings = {"EVENTS_WEBHOOK_URL": receiver.url, "EVENTS_WEBHOOK_SECRET": "not-the-secret"}

    with pytest.raises(EventDeliveryError, match="401"):
        deliver(ts, message, 1, settings=settings)

    assert [d.signature_valid for d in receiver.received] == [False]
    assert not delivered(ts, message)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({}, "EVENTS_WEBHOOK_URL is not set"),
        ({"EVENTS_WEBHOOK_URL": "  "}, "EVENTS_WEBHOOK_URL is not set"),
        ({"EVENTS_WEBHOOK_URL": "RECEIVER"}, "EVENTS_WEBHOOK_SECRET is not set"),
        (
            {"EVENTS_WEBHOOK_URL": "RECEIVER", "EVENTS_WEBHOOK_SECRET": ""},
            "EVENTS_WEBHOOK_SECRET is not set",
        ),
        (
            {
                "EVENTS_WEBHOOK_URL": "RECEIVER",
                "EVENTS_WEBHOOK_SECRET": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure"
                ".net/secrets/app-events-webhook-secret/)",
            },
            "EVENTS_WEBHOOK_SECRET is an unresolved Key Vault reference",
        ),
    ],
)
def test_missing_settings_raise_with_a_clear_message(
    ts, receiver, logs, settings: dict[str, str], reason: str
) -> None:
    message = record_event(ts)
    settings = {k: receiver.url if v == "RECEIVER" else v for k, v in settings.items()}

    with pytest.raises(EventDeliveryError) as raised:
        deliver(ts, message, 1, settings=settings)

    assert str(raised.value) == f"event {message['event']['event_id']}: delivery failed: {reason}"
    assert receiver.received == []
    assert not delivered(ts, message)
    assert reason in lines(logs)[0]


def test_an_unreachable_receiver_raises_without_the_url(stack, ts, logs) -> None:
    settings = {
        "EVENTS_WEBHOOK_URL": f"http://127.0.0.1:9/events?token={URL_TOKEN}",
        "EVENTS_WEBHOOK_SECRET": stack.event_webhook_secret,
    }

    with pytest.raises(EventDeliveryError, match="ConnectionError") as raised:
        deliver(ts, record_event(ts), 1, settings=settings)

    assert_nothing_leaked(stack, str(raised.value), "\n".join(lines(logs)))


def test_a_redirect_is_not_followed(stack, ts, receiver) -> None:
    def redirect(environ: dict[str, Any], start_response: Any) -> Any:
        return Response(status=307, headers={"Location": receiver.url})(environ, start_response)

    message = record_event(ts)
    with BackgroundServer(redirect, "127.0.0.1", 0, name="redirector") as server:
        settings = {
            "EVENTS_WEBHOOK_URL": server.url,
            "EVENTS_WEBHOOK_SECRET": stack.event_webhook_secret,
        }
        with pytest.raises(EventDeliveryError, match="307"):
            deliver(ts, message, 1, settings=settings)

    assert receiver.received == []
    assert not delivered(ts, message)


def test_the_timeouts_are_bounded() -> None:
    connect, read = webhook.TIMEOUT  # what every signed POST (notices, events) waits at most
    assert 0 < connect <= 10 and 0 < read <= 30


GOOD_EVENT = {"event_id": "e" * 32, "trigger_id": "t" * 32, "record": {"name": PERSON}}
GOOD_SEEN = "sn-20261201100001-abc-0000000000"


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "an event",
        {"seen": GOOD_SEEN},
        {"event": "e-1", "seen": GOOD_SEEN},
        {"event": {k: v for k, v in GOOD_EVENT.items() if k != "event_id"}, "seen": GOOD_SEEN},
        {"event": GOOD_EVENT | {"event_id": ""}, "seen": GOOD_SEEN},
        {"event": GOOD_EVENT | {"event_id": 7}, "seen": GOOD_SEEN},
        {"event": GOOD_EVENT | {"event_id": "e-1\r\nX-Evil: 1"}, "seen": GOOD_SEEN},
        {"event": {k: v for k, v in GOOD_EVENT.items() if k != "trigger_id"}, "seen": GOOD_SEEN},
        {"event": GOOD_EVENT},
        {"event": GOOD_EVENT, "seen": "ev-20261201"},
        {"event": GOOD_EVENT, "seen": GOOD_SEEN, "redeliver": "yes"},
        {"event": GOOD_EVENT | {"record": {"name": "\ud800"}}, "seen": GOOD_SEEN},
    ],
)
def test_an_invalid_message_is_logged_and_dropped(stack, ts, receiver, logs, bad: Any) -> None:
    assert deliver(ts, bad, 1) is None  # no exception: the host deletes the message

    assert receiver.received == []
    [record] = [r for r in logs.records if r.name == "triggers.delivery"]
    assert record.levelname == "ERROR"
    assert record.getMessage().startswith("event message dropped (not retried): ")
    assert_nothing_leaked(stack, logs.text)


# --- through the local host's queue listener -------------------------------------------------


@pytest.fixture
def listener(app_host, stack) -> Iterator[Any]:
    """The host's `deliver_event` listener, its queue and poison queue empty."""
    found = app_host.queues["deliver_event"]
    for queue in (found._queue, found._poison):
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.clear_messages()
    yield found
    found._queue.clear_messages()


def test_the_host_delivers_a_queued_event_once(ts, receiver, listener, logs) -> None:
    message = record_event(ts)
    ts.deliveries.send(message)
    ts.deliveries.send(message)  # a copy, as after a poller crash

    assert listener.process_once() == 2

    [received] = receiver.received
    assert received.accepted and received.body == message["event"]
    assert delivered(ts, message)
    assert listener._queue.peek_messages() == []
    assert "Executed 'Functions.deliver_event' (Succeeded" in logs.text


def test_an_event_that_cannot_be_delivered_ends_in_the_poison_queue(
    ts, receiver, listener, logs
) -> None:
    message = record_event(ts)
    receiver.fail_next(5, status=500)
    ts.deliveries.send(message)

    # The test host's visibility timeout is 0: a failed message is visible again at once.
    assert listener.options.visibility_timeout.total_seconds() == 0
    for _ in range(5):
        assert listener.process_once() == 1
    assert listener.process_once() == 0

    assert [d.status for d in receiver.received] == [500] * 5
    [poisoned] = list(listener._poison.receive_messages())
    assert json.loads(base64.b64decode(poisoned.content)) == message
    assert listener._queue.peek_messages() == []
    assert not delivered(ts, message)
    trigger_id = message["event"]["trigger_id"]
    listed, _ = ts.events.page(trigger_id, None, 10, None)
    assert listed == [message["event"]]  # still listed, for a redelivery
    assert [line.split(" ", 3)[3] for line in lines(logs)] == [
        *[
            f"try={n} result=failed (the receiver answered 500); the queue retries"
            for n in range(1, 5)
        ],
        "try=5 result=failed (the receiver answered 500); the host moves it to "
        "servicenow-events-poison",
    ]


def test_the_receivers_control_api_lists_the_events(ts, receiver) -> None:
    message = record_event(ts)
    deliver(ts, message, 1)

    listed = requests.get(receiver.url + "/_control/received", timeout=5).json()["received"]

    assert [(d["event_id"], d["signature_valid"], d["status"]) for d in listed] == [
        (message["event"]["event_id"], True, 204)
    ]
