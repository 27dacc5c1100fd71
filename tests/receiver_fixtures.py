"""The webhook receiver and Graph stand-in, shared by the receivers' and the notifier's tests."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localrun.standins.receivers import GraphStandIn, WebhookReceiver
from localrun.tls import ca_bundle

WEBHOOK_SECRET = "webhook-secret-never-logged"
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT_ID = "66666666-7777-8888-9999-000000000000"
CLIENT_SECRET = "graph-secret-never-logged"
SENDER = "notices@contoso.example"


def notice(notice_id: str = "n-1", event: str = "renewal_failed") -> dict[str, Any]:
    """A notice body as the contract describes it."""
    return {
        "notice_id": notice_id,
        "event": event,
        "tenant_id": "contoso",
        "connection_id": "8a1f",
        "connection_name": "Contoso ITSM",
        "instance_url": "https://contoso.service-now.com",
        "status": event,
        "detail": "invalid_client from /oauth_token.do",
        "occurred_at": "2026-11-28T10:05:00Z",
    }


@pytest.fixture(scope="module")
def cert_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def webhook_server() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def graph_server(cert_folder: Path) -> Iterator[GraphStandIn]:
    with GraphStandIn(TENANT, CLIENT_ID, CLIENT_SECRET, cert_folder) as standin:
        yield standin


@pytest.fixture
def webhook(webhook_server: WebhookReceiver) -> WebhookReceiver:
    webhook_server.reset()
    return webhook_server


@pytest.fixture
def graph(
    graph_server: GraphStandIn, cert_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> GraphStandIn:
    """The stand-in, reset, with MSAL's and requests' sessions trusting the local CA."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_bundle(cert_folder)))
    graph_server.reset()
    return graph_server
