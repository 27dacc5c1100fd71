"""The Key Vault and managed-identity stand-ins, driven by the real SecretClient and
DefaultAzureCredential exactly as production builds them."""

import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential
from azure.keyvault.secrets import SecretClient

from localrun.standins.identity import IdentityStandIn
from localrun.standins.keyvault import KeyVaultStandIn
from localrun.tls import ca_bundle

# Settings that would make DefaultAzureCredential pick something other than managed identity.
_OTHER_CREDENTIAL_SETTINGS = [
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
]
API = "api-version=7.5"


@pytest.fixture(scope="module")
def identity() -> Iterator[IdentityStandIn]:
    with IdentityStandIn() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def vault(cert_folder: Path, identity: IdentityStandIn) -> Iterator[KeyVaultStandIn]:
    with KeyVaultStandIn(cert_folder, identity.issuer) as stand_in:
        yield stand_in


@pytest.fixture
def bundle(cert_folder: Path, identity: IdentityStandIn, monkeypatch: pytest.MonkeyPatch) -> str:
    for name in _OTHER_CREDENTIAL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in identity.environment().items():
        monkeypatch.setenv(name, value)
    path = str(ca_bundle(cert_folder))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", path)
    return path


@pytest.fixture
def client(vault: KeyVaultStandIn, bundle: str) -> Iterator[SecretClient]:
    vault.control.reset()
    vault.store.clear()
    credential = DefaultAzureCredential()
    with SecretClient(vault.url, credential=credential) as secret_client:
        yield secret_client
    credential.close()


def _token(vault: KeyVaultStandIn, identity: IdentityStandIn) -> str:
    return identity.issuer.issue(vault.resource, identity.client_id)[0]


def test_identity_endpoint_issues_tokens_the_issuer_verifies(identity: IdentityStandIn) -> None:
    reply = requests.get(
        identity.url,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": identity.header_secret},
        timeout=5,
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["resource"] == "https://vault.azure.net"
    assert body["client_id"] == identity.client_id
    expires_on = int(body["expires_on"])
    assert expires_on > time.time() + 3600
    token = body["access_token"]
    issuer = identity.issuer
    assert issuer.verify(token, "https://vault.azure.net", now=expires_on - 1)
    assert not issuer.verify(token, "https://storage.azure.com", now=expires_on - 1)
    assert not issuer.verify(token, "https://vault.azure.net", now=expires_on)
    assert not issuer.verify(token[:-2] + "xx", "https://vault.azure.net", now=expires_on - 1)


def test_identity_endpoint_refuses_a_wrong_or_missing_header(identity: IdentityStandIn) -> None:
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}
    wrong = requests.get(
        identity.url, params=params, headers={"X-IDENTITY-HEADER": "guess"}, timeout=5
    )
    missing = requests.get(identity.url, params=params, timeout=5)
    assert wrong.status_code == 401
    assert missing.status_code == 400
    assert "access_token" not in wrong.json()


def test_request_without_a_valid_token_gets_the_challenge(
    vault: KeyVaultStandIn, identity: IdentityStandIn, bundle: str
) -> None:
    url = f"{vault.url}/secrets/anything?{API}"
    anonymous = requests.get(url, verify=bundle, timeout=5)
    foreign = identity.issuer.issue("https://vault.azure.net", identity.client_id)[0]
    wrong_audience = requests.get(
        url, headers={"Authorization": f"Bearer {foreign}"}, verify=bundle, timeout=5
    )
    for reply in (anonymous, wrong_audience):
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "Unauthorized"
        challenge = reply.headers["WWW-Authenticate"]
        assert re.fullmatch(
            r'Bearer authorization="https://login\.microsoftonline\.com/[0-9a-f-]{36}", '
            r'resource="https://0\.0\.1:\d+"',
            challenge,
        )
        assert f'resource="{vault.resource}"' in challenge


def test_set_get_and_versions(client: SecretClient, vault: KeyVaultStandIn) -> None:
    first = client.set_secret("conn-1-token", "one")
    second = client.set_secret("conn-1-token", "two")
    assert re.fullmatch(r"[0-9a-f]{32}", first.properties.version or "")
    assert second.id == f"{vault.url}/secrets/conn-1-token/{second.properties.version}"
    assert client.get_secret("conn-1-token").value == "two"
    assert client.get_secret("CONN-1-TOKEN", first.properties.version).value == "one"
    versions = {p.version for p in client.list_properties_of_secret_versions("conn-1-token")}
    assert versions == {first.properties.version, second.properties.version}
    assert vault.control.calls("set") == 2


def test_update_properties_with_tags_content_type_and_expiry(client: SecretClient) -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    client.set_secret("conn-2", "v", content_type="text/plain", tags={"tenant": "contoso"})
    updated = client.update_secret_properties(
        "conn-2", content_type="application/json", tags={"kind": "oauth"}, expires_on=expires
    )
    assert updated.tags == {"kind": "oauth"}
    secret = client.get_secret("conn-2")
    assert secret.value == "v"
    assert secret.properties.content_type == "application/json"
    assert secret.properties.expires_on == expires
    assert secret.properties.enabled is True
    client.update_secret_properties("conn-2", enabled=False)
    with pytest.raises(HttpResponseError) as refused:
        client.get_secret("conn-2")
    assert refused.value.status_code == 403


def test_list_pages_through_next_link(client: SecretClient, vault: KeyVaultStandIn) -> None:
    for name in ("a-1", "b-2", "c-3"):
        client.set_secret(name, "x")
    names = [p.name for p in client.list_properties_of_secrets(max_page_size=2)]
    assert names == ["a-1", "b-2", "c-3"]
    assert vault.control.calls("list") == 2


def test_get_missing_secret_is_secret_not_found(client: SecretClient) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        client.get_secret("never-set")
    assert missing.value.error is not None
    assert missing.value.error.code == "SecretNotFound"


def test_invalid_name_is_bad_parameter(client: SecretClient) -> None:
    with pytest.raises(HttpResponseError) as refused:
        client.set_secret("not_allowed", "x")
    assert refused.value.status_code == 400
    assert refused.value.error is not None
    assert refused.value.error.code == "BadParameter"


def test_deleted_name_conflicts_until_purged(
    client: SecretClient, vault: KeyVaultStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vault.store, "purge_protection", False)
    client.set_secret("conn-3", "old")
    poller = client.begin_delete_secret("conn-3")
    deleted = poller.result()
    poller.wait()
    assert deleted.recovery_id == f"{vault.url}/deletedsecrets/conn-3"
    assert deleted.scheduled_purge_date is not None and deleted.deleted_date is not None
    assert deleted.scheduled_purge_date - deleted.deleted_date == timedelta(days=90)
    assert client.get_deleted_secret("conn-3").name == "conn-3"
    assert [d.name for d in client.list_deleted_secrets()] == ["conn-3"]
    with pytest.raises(ResourceNotFoundError):
        client.get_secret("conn-3")
    with pytest.raises(ResourceExistsError) as conflict:
        client.set_secret("conn-3", "new")
    assert conflict.value.status_code == 409
    client.purge_deleted_secret("conn-3")
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_secret("conn-3")
    client.set_secret("conn-3", "new")
    assert client.get_secret("conn-3").value == "new"
    assert len(list(client.list_properties_of_secret_versions("conn-3"))) == 1
    assert vault.control.calls("purge") == 1


def test_purge_protection_keeps_a_deleted_secret_until_it_is_recovered(
    client: SecretClient, vault: KeyVaultStandIn
) -> None:
    """The default, as `infra/` deploys it: the purge is refused with the service's 403, and a
    set on the name is 409 ObjectIsDeletedButRecoverable until the secret is recovered."""
    first = client.set_secret("conn-7", "first")
    assert first.properties.recovery_level == "Recoverable"
    client.begin_delete_secret("conn-7").wait()
    with pytest.raises(HttpResponseError) as refused:
        client.purge_deleted_secret("conn-7")
    assert refused.value.status_code == 403
    assert "purge protection is enabled" in str(refused.value.message)
    with pytest.raises(ResourceExistsError) as conflict:
        client.set_secret("conn-7", "second")
    assert conflict.value.error.innererror == {"code": "ObjectIsDeletedButRecoverable"}
    client.begin_recover_deleted_secret("conn-7").wait()
    second = client.set_secret("conn-7", "second")
    assert client.get_secret("conn-7").value == "second"
    assert client.get_secret("conn-7", first.properties.version).value == "first"
    assert second.properties.version != first.properties.version


def test_secrets_kept_in_a_folder_survive_a_restart(
    cert_folder: Path, identity: IdentityStandIn, bundle: str, tmp_path: Path
) -> None:
    folder = tmp_path / "keyvault"
    with (
        KeyVaultStandIn(cert_folder, identity.issuer, folder=folder) as first,
        SecretClient(first.url, credential=DefaultAzureCredential()) as writer,
    ):
        kept = writer.set_secret("conn-8", "kept", tags={"connection": "8"})
        writer.set_secret("conn-9", "deleted")
        writer.begin_delete_secret("conn-9").wait()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in folder.iterdir()} == {0o600}
    with (
        KeyVaultStandIn(cert_folder, identity.issuer, folder=folder) as second,
        SecretClient(second.url, credential=DefaultAzureCredential()) as reader,
    ):
        again = reader.get_secret("conn-8", kept.properties.version)
        assert (again.value, again.properties.tags) == ("kept", {"connection": "8"})
        assert [d.name for d in reader.list_deleted_secrets()] == ["conn-9"]
        reader.begin_recover_deleted_secret("conn-9").wait()
        assert reader.get_secret("conn-9").value == "deleted"


def test_recover_deleted_secret(client: SecretClient) -> None:
    client.set_secret("conn-4", "kept")
    client.begin_delete_secret("conn-4").wait()
    client.begin_recover_deleted_secret("conn-4").wait()
    assert client.get_secret("conn-4").value == "kept"
    assert list(client.list_deleted_secrets()) == []


def test_throttled_call_is_retried_by_the_sdk(client: SecretClient, vault: KeyVaultStandIn) -> None:
    client.set_secret("conn-5", "v")
    vault.control.throttle(1, retry_after=0)
    assert client.get_secret("conn-5").value == "v"
    assert vault.control.calls("get") == 2
    assert vault.control.stats()["pending_faults"] == 0


def test_control_endpoint_injects_failures_and_reports_stats(
    client: SecretClient, vault: KeyVaultStandIn, bundle: str
) -> None:
    client.set_secret("conn-6", "v")
    fail = requests.post(
        f"{vault.url}/_control/fail", json={"count": 1, "status": 503}, verify=bundle, timeout=5
    )
    assert fail.status_code == 200
    assert client.get_secret("conn-6").value == "v"
    stats = requests.get(f"{vault.url}/_control/stats", verify=bundle, timeout=5).json()
    assert stats["calls"]["get"] == 2
    assert stats["calls"]["set"] == 1
    reset = requests.post(f"{vault.url}/_control/reset", verify=bundle, timeout=5)
    assert reset.json() == {"calls": {}, "pending_faults": 0}


def test_throttle_answers_429_with_retry_after(
    vault: KeyVaultStandIn, identity: IdentityStandIn, bundle: str
) -> None:
    vault.control.reset()
    throttle = requests.post(
        f"{vault.url}/_control/throttle",
        json={"count": 1, "retry_after": 7},
        verify=bundle,
        timeout=5,
    )
    assert throttle.status_code == 200
    headers = {"Authorization": f"Bearer {_token(vault, identity)}"}
    url = f"{vault.url}/secrets/conn-7?{API}"
    throttled = requests.get(url, headers=headers, verify=bundle, timeout=5)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == "Throttled"
    after = requests.get(url, headers=headers, verify=bundle, timeout=5)
    assert after.status_code == 404


def test_log_lines_name_the_call_but_never_the_value(
    client: SecretClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="localrun.standins"):
        client.set_secret("conn-8", "s3cr3t-value-xyz")
        client.get_secret("conn-8")
    assert "keyvault set conn-8 -> 200" in caplog.text
    assert "keyvault get conn-8 -> 200" in caplog.text
    assert "s3cr3t-value-xyz" not in caplog.text
