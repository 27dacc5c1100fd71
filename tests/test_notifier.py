"""The notice notifier against the webhook receiver and the Graph stand-in (real MSAL)."""

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.wrappers import Response

from localrun.server import BackgroundServer
from localrun.standins.receivers import GraphStandIn, WebhookReceiver, sign
from renewal import notifier, webhook
from renewal.notifier import DeliveryError, InvalidNotice, deliver_notice
from tests.receiver_fixtures import (
    CLIENT_ID,
    CLIENT_SECRET,
    SENDER,
    TENANT,
    WEBHOOK_SECRET,
    notice,
)

ADMINS = ["it-admins@contoso.example", "ops@contoso.example"]


def message(notice_id: str = "n-1", event: str = "renewal_failed") -> dict[str, Any]:
    return {"notice": notice(notice_id, event), "recipients": list(ADMINS)}


@pytest.fixture(autouse=True)
def fresh_msal_apps() -> Iterator[None]:
    notifier._apps.clear()
    yield
    notifier._apps.clear()


@pytest.fixture
def settings(
    webhook: WebhookReceiver, graph: GraphStandIn, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        "NOTIFY_WEBHOOK_URL": webhook.url + "/notices",
        "NOTIFY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GRAPH_TENANT_ID": TENANT,
        "GRAPH_CLIENT_ID": CLIENT_ID,
        "GRAPH_CLIENT_SECRET": CLIENT_SECRET,
        "GRAPH_SENDER": SENDER,
        "GRAPH_AUTHORITY_HOST": graph.authority_host,
        "GRAPH_API_URL": graph.api_url,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        assert WEBHOOK_SECRET not in text
        assert CLIENT_SECRET not in text


def test_webhook_gets_the_signed_notice_and_the_mail_is_sent(
    settings: dict[str, str],
    webhook: WebhookReceiver,
    graph: GraphStandIn,
    logs: pytest.LogCaptureFixture,
) -> None:
    deliver_notice(message())  # settings from the environment

    [delivery] = webhook.wait_for(1)
    assert delivery.accepted and delivery.signature_valid and not delivery.duplicate
    assert delivery.notice_id == "n-1"
    assert delivery.body == notice()
    assert delivery.headers["Content-Type"] == "application/json; charset=utf-8"
    assert delivery.path == "/notices"

    [mail] = graph.wait_for(1)
    assert mail.accepted and mail.sender == SENDER
    assert mail.to == ADMINS
    assert "Contoso ITSM" in mail.subject and "renewal failed" in mail.subject
    assert mail.content_type == "Text"
    for expected in (
        "https://contoso.service-now.com",
        "contoso",
        "renewal_failed",
        "invalid_client from /oauth_token.do",
        "2026-11-28T10:05:00Z",
        "glide.oauth.inbound.client.credential.grant_type.enabled",
        "OAuth Application User",
        "Automate365 > Connections",
    ):
        assert expected in mail.body
    assert not mail.save_to_sent_items

    assert "notice n-1 event=renewal_failed channel=webhook result=delivered" in logs.text
    assert "notice n-1 event=renewal_failed channel=email result=sent" in logs.text
    assert_no_secrets(logs.text)


def test_the_signature_covers_exactly_the_bytes_sent() -> None:
    body = notifier.webhook_body(notice() | {"connection_name": "Contoso ÅS"})

    assert body == json.dumps(
        notice() | {"connection_name": "Contoso ÅS"}, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert webhook.signature(WEBHOOK_SECRET, body) == sign(WEBHOOK_SECRET, body)


def test_each_event_mail_says_what_to_do(settings: dict[str, str], graph: GraphStandIn) -> None:
    expected = {
        "invalid_credentials": "replace it on the connection",
        "renewal_failed": "client credentials grant",
        "unreachable": "hibernating",
        "expiring": "before the current one expires",
        "expired": "now",
        "restored": "Nothing to do",
    }
    for number, event in enumerate(expected):
        deliver_notice(message(f"n-{number}", event), settings)

    mails = graph.wait_for(len(expected))
    for mail, (event, advice) in zip(mails, expected.items(), strict=True):
        assert notifier.EVENT_TEXTS[event].title in mail.subject
        assert advice in mail.body


def test_two_notices_need_one_token_request(
    settings: dict[str, str], webhook: WebhookReceiver, graph: GraphStandIn
) -> None:
    deliver_notice(message("n-1"), settings)
    deliver_notice(message("n-2", "restored"), settings)

    assert len(graph.wait_for(2, accepted_only=True)) == 2
    assert graph.token_requests == 1
    assert [d.notice_id for d in webhook.wait_for(2, accepted_only=True)] == ["n-1", "n-2"]


def test_a_webhook_failure_raises_before_the_mail_is_sent(
    settings: dict[str, str],
    webhook: WebhookReceiver,
    graph: GraphStandIn,
    logs: pytest.LogCaptureFixture,
) -> None:
    webhook.fail_next(1, status=500)

    with pytest.raises(DeliveryError, match="500") as raised:
        deliver_notice(message(), settings)

    assert [d.status for d in webhook.wait_for(1)] == [500]
    assert graph.mails == [] and graph.token_requests == 0
    assert "channel=webhook result=failed (the receiver answered 500)" in logs.text
    assert_no_secrets(str(raised.value), logs.text)


def test_a_webhook_client_error_still_raises(
    settings: dict[str, str], webhook: WebhookReceiver
) -> None:
    with pytest.raises(DeliveryError, match="401"):
        deliver_notice(message(), settings | {"NOTIFY_WEBHOOK_SECRET": "not-the-secret"})

    assert [d.signature_valid for d in webhook.wait_for(1)] == [False]


def test_a_redirect_is_not_followed(settings: dict[str, str], webhook: WebhookReceiver) -> None:
    def redirect(environ: dict[str, Any], start_response: Any) -> Any:
        return Response(status=307, headers={"Location": webhook.url})(environ, start_response)

    redirector = BackgroundServer(redirect, "127.0.0.1", 0, name="redirector")
    with redirector as server, pytest.raises(DeliveryError, match="307"):
        deliver_notice(message(), settings | {"NOTIFY_WEBHOOK_URL": server.url})

    assert webhook.received == []


def test_an_unreachable_webhook_raises_without_the_url(settings: dict[str, str]) -> None:
    url = "http://127.0.0.1:9/hook?token=url-held-token"

    with pytest.raises(DeliveryError, match="ConnectionError") as raised:
        deliver_notice(message(), settings | {"NOTIFY_WEBHOOK_URL": url})

    assert "url-held-token" not in str(raised.value)


def test_graph_503_raises(
    settings: dict[str, str], graph: GraphStandIn, logs: pytest.LogCaptureFixture
) -> None:
    graph.fail_next(1, status=503)

    with pytest.raises(DeliveryError, match="503") as raised:
        deliver_notice(message(), settings)

    assert [m.status for m in graph.wait_for(1)] == [503]
    assert "channel=email result=failed (sendMail answered 503" in logs.text
    assert_no_secrets(str(raised.value), logs.text)


def test_a_token_endpoint_failure_raises(settings: dict[str, str], graph: GraphStandIn) -> None:
    graph.fail_next_token_requests(1, status=503)

    with pytest.raises(DeliveryError, match="token"):
        deliver_notice(message(), settings)

    assert graph.mails == []


def test_a_wrong_graph_secret_raises_without_the_secret(
    settings: dict[str, str], graph: GraphStandIn, logs: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-graph-secret-value"

    with pytest.raises(DeliveryError, match="invalid_client") as raised:
        deliver_notice(message(), settings | {"GRAPH_CLIENT_SECRET": wrong})

    assert graph.mails == []
    for text in (str(raised.value), logs.text):
        assert wrong not in text
    assert_no_secrets(str(raised.value), logs.text)


def test_an_unconfigured_webhook_is_skipped_with_one_line(
    settings: dict[str, str],
    webhook: WebhookReceiver,
    graph: GraphStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="renewal.notifier")

    deliver_notice(message(), settings | {"NOTIFY_WEBHOOK_URL": ""})

    skipped = [r.getMessage() for r in caplog.records if "channel=webhook" in r.getMessage()]
    assert skipped == [
        "notice n-1 event=renewal_failed channel=webhook result=skipped "
        "(NOTIFY_WEBHOOK_URL is not set)"
    ]
    assert webhook.received == []
    assert len(graph.wait_for(1, accepted_only=True)) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"GRAPH_SENDER": ""}, "GRAPH_SENDER not set"),
        (
            {"GRAPH_TENANT_ID": "", "GRAPH_CLIENT_SECRET": " "},
            "GRAPH_TENANT_ID, GRAPH_CLIENT_SECRET",
        ),
    ],
)
def test_an_unconfigured_graph_is_skipped_with_one_line(
    settings: dict[str, str],
    webhook: WebhookReceiver,
    graph: GraphStandIn,
    caplog: pytest.LogCaptureFixture,
    change: dict[str, str],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, logger="renewal.notifier")

    deliver_notice(message(), settings | change)

    [line] = [r.getMessage() for r in caplog.records if "channel=email" in r.getMessage()]
    assert "result=skipped" in line and reason in line
    assert len(webhook.wait_for(1, accepted_only=True)) == 1
    assert graph.token_requests == 0 and graph.mails == []


def test_no_recipients_skips_the_mail(
    settings: dict[str, str], graph: GraphStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="renewal.notifier")

    deliver_notice({"notice": notice(), "recipients": []}, settings)

    assert "channel=email result=skipped (no recipients)" in caplog.text
    assert graph.token_requests == 0 and graph.mails == []


def test_nothing_configured_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="renewal.notifier")

    deliver_notice(message(), {})

    assert [r.levelname for r in caplog.records if r.name == "renewal.notifier"] == ["INFO"] * 2


def test_a_webhook_url_without_a_secret_raises(settings: dict[str, str]) -> None:
    with pytest.raises(DeliveryError, match="NOTIFY_WEBHOOK_SECRET is not set"):
        deliver_notice(message(), settings | {"NOTIFY_WEBHOOK_SECRET": ""})


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"recipients": ADMINS},
        {"notice": "n-1", "recipients": ADMINS},
        {"notice": {k: v for k, v in notice().items() if k != "notice_id"}, "recipients": []},
        {"notice": notice() | {"notice_id": " "}, "recipients": []},
        {"notice": notice() | {"event": "exploded"}, "recipients": []},
        {"notice": notice() | {"occurred_at": 5}, "recipients": []},
        {"notice": notice(), "recipients": "it-admins@contoso.example"},
        {"notice": notice(), "recipients": ["not an address"]},
    ],
)
def test_an_invalid_message_is_invalid_notice(bad: Any, webhook: WebhookReceiver) -> None:
    with pytest.raises(InvalidNotice):
        deliver_notice(bad, {"NOTIFY_WEBHOOK_URL": webhook.url, "NOTIFY_WEBHOOK_SECRET": "x"})

    assert webhook.received == []
    assert issubclass(InvalidNotice, ValueError)


@pytest.mark.parametrize("name", ["NOTIFY_WEBHOOK_SECRET", "GRAPH_CLIENT_SECRET"])
def test_an_unresolved_key_vault_reference_is_a_delivery_error(
    name: str, settings: dict[str, str]
) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/x/)"
    with pytest.raises(DeliveryError, match="unresolved Key Vault reference"):
        deliver_notice(message(), settings | {name: reference})


# --- Trigger notices ---------------------------------------------------------------------------

TRIGGER_DETAIL = (
    "The instance refused to let the connection's user read sc_req_item (ACL denied). Give the "
    "integration user read access to sc_req_item (an ACL or role), or change the table."
)


def trigger_notice(notice_id: str = "t-1", event: str = "trigger_failing") -> dict[str, Any]:
    """A trigger notice as the poller builds it: a connection notice plus the trigger."""
    failing = event == "trigger_failing"
    return notice(notice_id, event) | {
        "trigger_id": "5d2c0a7e",
        "trigger_name": "New Teams requests",
        "status": "failing" if failing else "active",
        "detail": TRIGGER_DETAIL if failing else "The trigger polls again.",
    }


def test_trigger_notices_go_out_by_webhook_and_mail(
    settings: dict[str, str],
    webhook: WebhookReceiver,
    graph: GraphStandIn,
    logs: pytest.LogCaptureFixture,
) -> None:
    failing, restored = trigger_notice("t-1"), trigger_notice("t-2", "trigger_restored")

    deliver_notice({"notice": failing, "recipients": ADMINS}, settings)
    deliver_notice({"notice": restored, "recipients": ADMINS}, settings)

    first, second = webhook.wait_for(2, accepted_only=True)
    assert first.signature_valid and first.notice_id == "t-1"
    assert first.body == failing  # trigger_id and trigger_name kept
    assert second.body == restored
    assert first.headers["X-Signature"] == sign(WEBHOOK_SECRET, notifier.webhook_body(failing))

    failing_mail, restored_mail = graph.wait_for(2, accepted_only=True)
    assert failing_mail.to == ADMINS
    assert failing_mail.subject == (
        "Automate365 trigger 'New Teams requests' of connection 'Contoso ITSM': trigger failing"
    )
    for expected in (
        "Trigger:       New Teams requests",
        "Trigger ID:    5d2c0a7e",
        "Connection:    Contoso ITSM",
        "Status:        failing (the trigger's)",
        f"Detail:        {TRIGGER_DETAIL}",
        "Fix what the detail above says",
        "Automate365 > Connections",
        "'trigger restored' notice",
    ):
        assert expected in failing_mail.body
    assert restored_mail.subject.endswith("of connection 'Contoso ITSM': trigger restored")
    assert "Nothing to do: the trigger polls again" in restored_mail.body
    assert "Status:        active (the trigger's)" in restored_mail.body
    assert "notice t-1 event=trigger_failing channel=webhook result=delivered" in logs.text
    assert "notice t-2 event=trigger_restored channel=email result=sent" in logs.text
    assert_no_secrets(logs.text)


def test_the_pollers_trigger_notice_is_accepted(
    settings: dict[str, str], graph: GraphStandIn
) -> None:
    """What `triggers.poller.trigger_notice` queues is what the notifier takes."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from triggers.poller import trigger_notice as poller_notice

    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    trigger = SimpleNamespace(
        id="5d2c0a7e",
        tenant_id="contoso",
        name="New Teams requests",
        status="failing",
        status_detail=TRIGGER_DETAIL,
        status_changed_at=now,
    )
    connection = SimpleNamespace(
        id="8a1f",
        name="Contoso ITSM",
        instance_url="https://contoso.service-now.com",
        notify_emails=ADMINS,
    )
    message_ = poller_notice(trigger, connection, "trigger_failing", now)  # type: ignore[arg-type]

    parsed, recipients = notifier.parse_message(message_)
    assert parsed["trigger_name"] == "New Teams requests" and recipients == ADMINS
    deliver_notice(message_, settings)
    [mail] = graph.wait_for(1, accepted_only=True)
    assert "trigger 'New Teams requests'" in mail.subject and TRIGGER_DETAIL in mail.body


def test_connection_notices_keep_their_texts() -> None:
    assert notifier.mail_subject(notice()) == (
        "Automate365 connection 'Contoso ITSM': OAuth token renewal failed"
    )
    text = notifier.mail_text(notice())
    assert text.startswith("Automate365 connection 'Contoso ITSM': OAuth token renewal failed.")
    assert "Trigger" not in text and "Status:        renewal_failed\n" in text


@pytest.mark.parametrize(
    "change",
    [
        {"trigger_id": None},
        {"trigger_id": " "},
        {"trigger_name": None},
        {"trigger_name": 7},
    ],
)
def test_a_trigger_notice_without_its_trigger_is_invalid(
    change: dict[str, Any], webhook: WebhookReceiver
) -> None:
    body = {k: v for k, v in (trigger_notice() | change).items() if v is not None}

    with pytest.raises(InvalidNotice, match="trigger_"):
        deliver_notice(
            {"notice": body, "recipients": []},
            {"NOTIFY_WEBHOOK_URL": webhook.url, "NOTIFY_WEBHOOK_SECRET": "x"},
        )

    assert webhook.received == []
