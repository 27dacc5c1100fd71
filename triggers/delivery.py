"""Delivering one event to the Automate365 engine: a signed JSON POST to `EVENTS_WEBHOOK_URL`.

The queue message (`servicenow-events`, written by the poller or by a redelivery) is
`{"event": <the event body>, "seen": "<the version's sn- row key>", "redeliver": <optional bool>}`.

- A copy of an event already delivered (its `sn-` entity carries `DeliveredAt`) is dropped,
  unless the message asks for a redelivery.
- The body is signed as notices are (`X-Signature: sha256=<hex HMAC-SHA256 of the body with
  EVENTS_WEBHOOK_SECRET>`, `renewal.webhook.post_signed`), with `X-Event-Id` = the body's
  `event_id`; no redirect is followed and both timeouts are bounded.
- A 2xx marks the version delivered. Anything else raises `EventDeliveryError`, so the queue tries
  the message again and, after 5 tries, the host moves it to `servicenow-events-poison` (the
  event stays listed under the trigger's events, for a redelivery).
- A message that is not an event is logged and dropped: retrying cannot make it one.

Neither the URL (it may carry a token of its own) nor the body (record values may be personal
data) is ever logged or put in an exception; one log line per delivery names the event and the
outcome.
"""

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import requests
from azure.core.exceptions import AzureError

from renewal.webhook import WebhookFailure, post_signed
from triggers.events import SEEN
from triggers.services import TriggerServices

log = logging.getLogger(__name__)

URL_SETTING = "EVENTS_WEBHOOK_URL"
SECRET_SETTING = "EVENTS_WEBHOOK_SECRET"  # noqa: S105 -- the setting's name
MAX_TRIES = 5  # host.json `maxDequeueCount`: the try after which the host poisons the message
MAX_ID_LENGTH = 200


class EventDeliveryError(Exception):
    """The event was not taken; the message never holds a secret, the URL or the body."""


class InvalidEventMessage(ValueError):
    """The queue message is not an event to deliver; retrying cannot help."""


def deliver(
    ts: TriggerServices,
    message: Any,
    dequeue_count: int,
    *,
    settings: Mapping[str, str] | None = None,
    http: requests.Session | None = None,
) -> None:
    """Delivers the event of one queue message, or raises so that the queue tries it again."""
    try:
        event, seen, redeliver, body = parse_message(message)
    except InvalidEventMessage as invalid:
        # Dropped, not raised: five more tries would fail the same way and park in the poison
        # queue a message that no replay can deliver. The error line makes it visible.
        log.error("event message dropped (not retried): %s", invalid)
        return
    event_id, trigger_id = event["event_id"], event["trigger_id"]
    if not redeliver and ts.events.delivered(trigger_id, seen):
        _log(event_id, trigger_id, dequeue_count, "skipped (already delivered)")
        return
    environ = os.environ if settings is None else settings
    status = _post(event_id, trigger_id, dequeue_count, body, environ, http)
    try:
        ts.events.mark_delivered(trigger_id, seen, ts.services.clock())
    except AzureError as error:
        # The engine has the event: a retry would only send it again. A later copy of this
        # message may then be delivered once more; the engine drops it by X-Event-Id.
        _log(
            event_id,
            trigger_id,
            dequeue_count,
            f"delivered ({status}), not marked ({type(error).__name__})",
            logging.WARNING,
        )
        return
    outcome = "redelivered" if redeliver else "delivered"
    _log(event_id, trigger_id, dequeue_count, f"{outcome} ({status})")


def parse_message(message: Any) -> tuple[dict[str, Any], str, bool, bytes]:
    """The event, its `sn-` key, whether it is a redelivery and the exact bytes to send; or
    `InvalidEventMessage` saying what is wrong (never quoting a value of the body)."""
    if not isinstance(message, dict):
        raise InvalidEventMessage("the message is not a JSON object")
    event = message.get("event")
    if not isinstance(event, dict):
        raise InvalidEventMessage("the message has no 'event' object")
    for name in ("event_id", "trigger_id"):
        if not _is_id(event.get(name)):
            raise InvalidEventMessage(f"event field '{name}' is missing or not a valid id")
    seen = message.get("seen")
    if not isinstance(seen, str) or not seen.startswith(SEEN) or not _is_id(seen):
        raise InvalidEventMessage(f"event {event['event_id']}: 'seen' is missing or not a key")
    redeliver = message.get("redeliver", False)
    if not isinstance(redeliver, bool):
        raise InvalidEventMessage(f"event {event['event_id']}: 'redeliver' is not true or false")
    try:
        body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    except (UnicodeEncodeError, ValueError):
        raise InvalidEventMessage(f"event {event['event_id']}: not encodable as UTF-8") from None
    return event, seen, redeliver, body


def _is_id(value: Any) -> bool:
    """A non-empty printable ASCII value without spaces: safe as a header and a table key."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and all("!" <= char <= "~" for char in value)
    )


def _post(
    event_id: str,
    trigger_id: str,
    dequeue_count: int,
    body: bytes,
    settings: Mapping[str, str],
    http: requests.Session | None,
) -> int:
    """POSTs the body; returns the 2xx status, else raises `EventDeliveryError`."""

    def fail(reason: str) -> EventDeliveryError:
        last = dequeue_count >= MAX_TRIES
        then = "the host moves it to servicenow-events-poison" if last else "the queue retries"
        level = logging.ERROR if last else logging.WARNING
        _log(event_id, trigger_id, dequeue_count, f"failed ({reason}); {then}", level)
        return EventDeliveryError(f"event {event_id}: delivery failed: {reason}")

    url = (settings.get(URL_SETTING) or "").strip()
    if not url:
        raise fail(f"{URL_SETTING} is not set")
    session = http or requests.Session()
    try:
        secret = settings.get(SECRET_SETTING) or ""
        return post_signed(session, url, secret, SECRET_SETTING, body, ("X-Event-Id", event_id))
    except WebhookFailure as failure:
        raise fail(failure.reason) from None
    finally:
        if http is None:
            session.close()


def _log(
    event_id: str, trigger_id: str, dequeue_count: int, result: str, level: int = logging.INFO
) -> None:
    log.log(
        level, "event %s trigger=%s try=%d result=%s", event_id, trigger_id, dequeue_count, result
    )
