"""The orphaned-secret cleanup: a bounded pass over a vault of its own (the Key Vault stand-in,
driven by the real SecretClient), against connection records in Azurite."""

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from azure.keyvault.secrets import SecretClient

from connections import clients
from connections import services as services_module
from connections.secrets import SecretStore, push_secret_name, secret_name
from localrun.clock import ManualClock
from localrun.standins.keyvault import KeyVaultStandIn
from renewal.secret_cleanup import CleanupSettings, run_cleanup
from tests.api_client import Api
from tests.renewal_support import DrivenClock, create

TOKEN = "cleanup-token-" + uuid.uuid4().hex
ONE_PAGE = CleanupSettings(pages=1, page_size=5)


@pytest.fixture
def vault(stack) -> Iterator[tuple[KeyVaultStandIn, ManualClock]]:
    clock = ManualClock(DrivenClock(stack).now())
    with KeyVaultStandIn(stack.cert_dir, stack.identity.issuer, clock=clock) as stand_in:
        yield stand_in, clock


@pytest.fixture
def cursor_table(stack):
    service = clients.table_service()
    name = "maint" + uuid.uuid4().hex[:12]
    service.create_table_if_not_exists(name)
    yield service.get_table_client(name)
    service.delete_table(name)


def test_orphans_are_removed_a_page_at_a_time(app_host, stack, vault, cursor_table, caplog):
    caplog.set_level("INFO")
    stand_in, vault_clock = vault
    stack.servicenow.state.add_api_key(TOKEN, name="cleanup-key")
    api = Api(app_host.url, app_host.keys.function_key)
    tenant = "cleanup" + uuid.uuid4().hex[:8]
    kept = create(api, stack, tenant, {"method": "api_token", "api_token": TOKEN})["id"]
    secrets = SecretStore(SecretClient(stand_in.url, clients.credential()))
    orphans = [uuid.uuid4().hex for _ in range(5)]
    for connection_id in orphans:
        secrets.put(tenant, connection_id, "api_token", "orphaned-" + connection_id)
    secrets.put(tenant, kept, "api_token", TOKEN)
    gone_trigger = uuid.uuid4().hex
    secrets.put_push_secret(tenant, orphans[0], gone_trigger, "push-" + gone_trigger)
    stand_in.store.set("notices-webhook-secret", {"value": "not ours", "tags": {"a": "b"}})
    vault_clock.advance(timedelta(hours=2))
    young = uuid.uuid4().hex
    secrets.put(tenant, young, "api_token", "young-" + young)  # a create may be under way
    services = dataclasses.replace(
        services_module.services(), secrets=secrets, clock=lambda: vault_clock.now()
    )

    first = run_cleanup(services, cursor_table, ONE_PAGE)
    assert first["looked_at"] == 5 and first["passes_finished"] == 0
    second = run_cleanup(services, cursor_table, ONE_PAGE)
    assert second["looked_at"] == 9 - 5 and second["passes_finished"] == 1
    assert first["removed"] + second["removed"] == 6, "5 connection secrets and a push secret"
    live = {item["id"].rsplit("/", 1)[1] for item in stand_in.store.list_secrets()}
    assert live == {
        secret_name(kept, "api_token"),
        secret_name(young, "api_token"),
        "notices-webhook-secret",
    }
    assert push_secret_name(gone_trigger) not in live
    assert "secret cleanup: 5 secrets looked at" in caplog.text
    assert "pass finished" in caplog.text

    third = run_cleanup(services, cursor_table, ONE_PAGE)
    assert (third["looked_at"], third["removed"], third["passes_finished"]) == (3, 0, 1)
