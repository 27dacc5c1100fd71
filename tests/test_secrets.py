"""The Key Vault adapter's own rules: names from ids only, cached exact versions, purge refusal."""

from types import SimpleNamespace

import pytest
from azure.core.exceptions import HttpResponseError

from connections.secrets import SecretStore, secret_name


class FakeVault:
    """Just what SecretStore calls, with a purge that a purge-protected vault refuses."""

    def __init__(self, purge_status: int | None = None) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.gets = 0
        self.deleted: list[str] = []
        self.purge_status = purge_status

    def set_secret(self, name, value, **kwargs):
        version = f"v{len(self.values) + 1}"
        self.values[(name, version)] = value
        return SimpleNamespace(properties=SimpleNamespace(version=version))

    def get_secret(self, name, version=None):
        self.gets += 1
        return SimpleNamespace(
            value=self.values[(name, version)], properties=SimpleNamespace(version=version)
        )

    def begin_delete_secret(self, name):
        self.deleted.append(name)
        return SimpleNamespace(wait=lambda: None)

    def purge_deleted_secret(self, name):
        if self.purge_status:
            error = HttpResponseError(message="Operation purge is not allowed")
            error.status_code = self.purge_status
            raise error


def test_names_come_from_the_connection_id_and_kind_only():
    assert secret_name("0" * 32, "client_secret") == f"conn-{'0' * 32}-client-secret"


def test_exact_versions_are_read_once():
    vault = FakeVault()
    store = SecretStore(vault)
    version = store.put("contoso", "c1", "api_token", "token-value")
    assert store.get("c1", "api_token", version) == "token-value"
    assert vault.gets == 0, "the value written is known"
    fresh = SecretStore(vault)
    assert fresh.get("c1", "api_token", version) == "token-value"
    assert fresh.get("c1", "api_token", version) == "token-value"
    assert vault.gets == 1


def test_a_purge_protected_vault_keeps_the_deleted_secret_without_failing():
    vault = FakeVault(purge_status=403)
    SecretStore(vault).purge("c1", ["client_secret", "access_token"])
    assert vault.deleted == [secret_name("c1", "client_secret"), secret_name("c1", "access_token")]


def test_other_purge_failures_are_raised():
    vault = FakeVault(purge_status=500)
    with pytest.raises(HttpResponseError):
        SecretStore(vault).purge("c1", ["api_token"])
