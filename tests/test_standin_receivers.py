"""The notice and event receivers: the signed webhook receivers and the Graph stand-in, driven by
real MSAL."""

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import msal
import pytest
import requests

from localrun.standins.receivers import (
    GRAPH_SCOPE,
    EventReceiver,
    GraphStandIn,
    WebhookReceiver,
    sign,
)
from tests.receiver_fixtures import (
    CLIENT_ID,
    CLIENT_SECRET,
    SENDER,
    TENANT,
    WEBHOOK_SECRET,
    notice,
)

SECRET = WEBHOOK_SECRET


def post_notice(
    url: str, body: dict[str, str], secret: str = SECRET, notice_id: str | None = None
) -> requests.Response:
    raw = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature": sign(secret, raw),
        "X-Notice-Id": notice_id or body["notice_id"],
    }
    return requests.post(url + "/", data=raw, headers=headers, timeout=5)


# One server per module, reset before each test: stopping a server takes up to half a second.


def test_webhook_accepts_a_valid_signature(
    webhook: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="localrun.standins.receivers")

    response = post_notice(webhook.url, notice())

    assert response.status_code == 204
    [delivery] = webhook.wait_for(1)
    assert delivery.notice_id == "n-1"
    assert delivery.signature_valid and delivery.accepted and not delivery.duplicate
    assert delivery.body["connection_name"] == "Contoso ITSM"
    assert delivery.headers["X-Notice-Id"] == "n-1"
    assert "notice=n-1 event=renewal_failed connection='Contoso ITSM'" in caplog.text
    assert "signature=valid" in caplog.text


def test_webhook_rejects_a_bad_or_missing_signature(webhook: WebhookReceiver) -> None:
    assert post_notice(webhook.url, notice(), secret="wrong").status_code == 401
    missing = requests.post(webhook.url, json=notice(), headers={"X-Notice-Id": "n-1"}, timeout=5)
    assert missing.status_code == 401

    received = webhook.wait_for(2)
    assert [d.signature_valid for d in received] == [False, False]
    assert webhook.delivered == []


def test_webhook_rejects_a_notice_id_that_differs_from_the_body(webhook: WebhookReceiver) -> None:
    assert post_notice(webhook.url, notice("n-1"), notice_id="n-2").status_code == 400


def test_webhook_marks_a_repeated_notice_id_as_duplicate(webhook: WebhookReceiver) -> None:
    post_notice(webhook.url, notice("n-1"))
    post_notice(webhook.url, notice("n-1"))

    assert [d.duplicate for d in webhook.wait_for(2)] == [False, True]


def test_webhook_fails_the_next_deliveries_when_told(webhook: WebhookReceiver) -> None:
    webhook.fail_next(2, status=500)

    statuses = [post_notice(webhook.url, notice()).status_code for _ in range(3)]

    assert statuses == [500, 500, 204]
    assert [d.status for d in webhook.wait_for(3)] == [500, 500, 204]
    assert len(webhook.wait_for(1, accepted_only=True)) == 1


def test_webhook_control_lists_what_was_received(webhook: WebhookReceiver) -> None:
    post_notice(webhook.url, notice())

    listed = requests.get(webhook.url + "/_control/received", timeout=5).json()["received"]

    assert [(d["notice_id"], d["signature_valid"], d["status"]) for d in listed] == [
        ("n-1", True, 204)
    ]
    webhook.reset()
    assert webhook.received == []


def test_webhook_wait_for_times_out_with_what_it_has(webhook: WebhookReceiver) -> None:
    with pytest.raises(TimeoutError, match="got 0"):
        webhook.wait_for(1, timeout=0.05)


# --- Graph -----------------------------------------------------------------------------------


def msal_app(
    graph: GraphStandIn, secret: str = CLIENT_SECRET
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=secret,
        authority=f"{graph.authority_host}/{TENANT}",
        instance_discovery=False,
    )


def mail_body(to: str = "admin@contoso.example") -> dict[str, object]:
    return {
        "message": {
            "subject": "Contoso ITSM: renewal failed",
            "body": {"contentType": "Text", "content": "Re-enable the OAuth client."},
            "toRecipients": [{"emailAddress": {"address": to}}],
        },
        "saveToSentItems": False,
    }


def send_mail(graph: GraphStandIn, token: str | None, body: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(
        f"{graph.api_url}/v1.0/users/{SENDER}/sendMail", json=body, headers=headers, timeout=5
    )


def test_msal_gets_a_token_and_sends_mail_with_one_token_request(graph: GraphStandIn) -> None:
    app = msal_app(graph)

    first = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert first["token_type"] == "Bearer", first
    assert (
        send_mail(graph, first["access_token"], mail_body("a@contoso.example")).status_code == 202
    )

    second = app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert second["token_source"] == "cache"
    assert (
        send_mail(graph, second["access_token"], mail_body("b@contoso.example")).status_code == 202
    )

    assert graph.token_requests == 1
    mails = graph.wait_for(2)
    assert [m.to for m in mails] == [["a@contoso.example"], ["b@contoso.example"]]
    assert mails[0].sender == SENDER
    assert mails[0].subject == "Contoso ITSM: renewal failed"
    assert mails[0].body == "Re-enable the OAuth client."
    assert not mails[0].save_to_sent_items


def test_a_token_from_another_standin_with_the_same_registration_is_accepted(
    graph: GraphStandIn, cert_folder: Path
) -> None:
    token = msal_app(graph).acquire_token_for_client(scopes=[GRAPH_SCOPE])["access_token"]
    with GraphStandIn(TENANT, CLIENT_ID, CLIENT_SECRET, cert_folder) as other:
        assert send_mail(other, token, mail_body()).status_code == 202


def test_wrong_client_secret_is_invalid_client(graph: GraphStandIn) -> None:
    result = msal_app(graph, secret="not-the-secret").acquire_token_for_client(scopes=[GRAPH_SCOPE])

    assert result["error"] == "invalid_client"
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret")
    assert 7000215 in result["error_codes"]
    assert "access_token" not in result


def test_token_endpoint_answers_401_in_the_aad_shape(graph: GraphStandIn) -> None:
    response = requests.post(
        f"{graph.authority_host}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": "nope",
            "scope": GRAPH_SCOPE,
        },
        timeout=5,
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_unknown_tenant_fails_msal_discovery(graph: GraphStandIn) -> None:
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        msal.ConfidentialClientApplication(
            CLIENT_ID,
            client_credential=CLIENT_SECRET,
            authority=f"{graph.authority_host}/someone-else",
            instance_discovery=False,
        )


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "Access token is empty."), ("a.b.c", "Access token validation failure.")],
)
def test_send_mail_without_a_valid_token_is_401(
    graph: GraphStandIn, token: str | None, message: str
) -> None:
    response = send_mail(graph, token, mail_body())

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert response.json()["error"]["message"] == message
    assert graph.mails == []


def test_send_mail_with_a_malformed_body_is_400(graph: GraphStandIn) -> None:
    token = msal_app(graph).acquire_token_for_client(scopes=[GRAPH_SCOPE])["access_token"]

    no_message = send_mail(graph, token, {"subject": "x"})
    no_recipients = send_mail(graph, token, {"message": {"subject": "x", "toRecipients": []}})

    assert no_message.status_code == 400
    assert no_message.json()["error"]["code"] == "ErrorInvalidRequest"
    assert no_recipients.status_code == 400
    assert no_recipients.json()["error"]["code"] == "ErrorInvalidRecipients"
    assert graph.mails == []


def test_send_mail_fails_the_next_calls_when_told(graph: GraphStandIn) -> None:
    token = msal_app(graph).acquire_token_for_client(scopes=[GRAPH_SCOPE])["access_token"]
    graph.fail_next(1, status=429, retry_after=7)

    throttled = send_mail(graph, token, mail_body())
    accepted = send_mail(graph, token, mail_body())

    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert accepted.status_code == 202
    assert [m.status for m in graph.wait_for(2)] == [429, 202]
    assert len(graph.delivered) == 1


def test_token_endpoint_fails_the_next_requests_when_told(graph: GraphStandIn) -> None:
    graph.fail_next_token_requests(1, status=503)

    app = msal_app(graph)

    with pytest.raises(msal.exceptions.MsalServiceError, match="503"):
        app.acquire_token_for_client(scopes=[GRAPH_SCOPE])
    # The same app replays a 5xx from its throttle cache for 5 s; a fresh app asks again.
    assert "access_token" in msal_app(graph).acquire_token_for_client(scopes=[GRAPH_SCOPE])
    assert graph.token_requests == 2


def test_graph_control_lists_mails_and_reset_clears_them(graph: GraphStandIn) -> None:
    token = msal_app(graph).acquire_token_for_client(scopes=[GRAPH_SCOPE])["access_token"]
    send_mail(graph, token, mail_body())

    listed = requests.get(graph.url + "/_control/mails", timeout=5).json()

    assert [m["to"] for m in listed["mails"]] == [["admin@contoso.example"]]
    assert listed["token_requests"] == 1
    graph.reset()
    assert graph.mails == [] and graph.token_requests == 0


# --- Event receiver ----------------------------------------------------------------------------

EVENT_SECRET = "event-webhook-secret-never-logged"
PERSON = "Jane Roe"


def event(event_id: str = "e-1") -> dict[str, object]:
    return {
        "event_id": event_id,
        "change": "created",
        "trigger_id": "t-1",
        "record": {"requested_for": PERSON},
    }


@pytest.fixture(scope="module")
def events_server() -> Iterator[EventReceiver]:
    with EventReceiver(EVENT_SECRET) as receiver:
        yield receiver


@pytest.fixture
def events(events_server: EventReceiver) -> EventReceiver:
    events_server.reset()
    return events_server


def post_event(
    url: str, body: dict[str, object], secret: str = EVENT_SECRET, event_id: str | None = None
) -> requests.Response:
    raw = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Signature": sign(secret, raw),
        "X-Event-Id": event_id or str(body["event_id"]),
    }
    return requests.post(url, data=raw, headers=headers, timeout=5)


def test_event_receiver_accepts_a_signed_event(
    events: EventReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="localrun.standins.receivers")

    assert post_event(events.url, event()).status_code == 204

    [delivery] = events.wait_for(1, accepted_only=True)
    assert delivery.event_id == "e-1" and delivery.notice_id is None
    assert delivery.signature_valid and not delivery.duplicate
    assert delivery.body == event()
    assert delivery.to_json()["event_id"] == "e-1" and "notice_id" not in delivery.to_json()
    assert "event webhook event=e-1 trigger=t-1 change=created signature=valid" in caplog.text
    assert PERSON not in caplog.text  # record values are never logged
    assert EVENT_SECRET not in caplog.text


def test_event_receiver_refuses_a_bad_signature_or_a_mismatched_id(events: EventReceiver) -> None:
    assert post_event(events.url, event(), secret="wrong").status_code == 401
    assert post_event(events.url, event("e-1"), event_id="e-2").status_code == 400
    notice_header = requests.post(
        events.url,
        data=json.dumps(event()).encode(),
        headers={
            "X-Signature": sign(EVENT_SECRET, json.dumps(event()).encode()),
            "X-Notice-Id": "e-1",
        },
        timeout=5,
    )
    assert notice_header.status_code == 400
    assert "X-Event-Id missing" in notice_header.json()["error"]
    assert events.delivered == []


def test_event_receiver_marks_a_repeated_event_and_fails_when_told(events: EventReceiver) -> None:
    events.fail_next(1, status=503)

    statuses = [post_event(events.url, event()).status_code for _ in range(3)]

    assert statuses == [503, 204, 204]
    assert [(d.status, d.duplicate) for d in events.wait_for(3)] == [
        (503, False),
        (204, False),
        (204, True),
    ]


def test_event_receiver_control_lists_what_it_got(events: EventReceiver) -> None:
    post_event(events.url, event("e-7"))

    listed = requests.get(events.url + "/_control/received", timeout=5).json()["received"]

    assert [(d["event_id"], d["signature_valid"], d["status"]) for d in listed] == [
        ("e-7", True, 204)
    ]


def test_the_stack_points_event_delivery_at_its_receiver(stack, tmp_path: Path) -> None:
    from localrun.settings import load_settings

    settings = stack.settings()
    assert settings["EVENTS_WEBHOOK_URL"] == stack.event_webhook.url
    assert settings["EVENTS_WEBHOOK_SECRET"] == stack.event_webhook_secret
    assert stack.event_webhook.secret == stack.event_webhook_secret
    assert stack.event_webhook_secret != stack.webhook_secret
    assert stack.event_webhook.url != stack.webhook.url
    mine = {"EVENTS_WEBHOOK_URL": "https://engine.example/events", "EVENTS_WEBHOOK_SECRET": "s"}
    loaded = load_settings(tmp_path, environ=mine, defaults=settings)
    assert loaded["EVENTS_WEBHOOK_URL"] == "https://engine.example/events"  # the environment wins
    assert loaded["EVENTS_WEBHOOK_SECRET"] == "s"
