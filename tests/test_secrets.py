"""The Key Vault adapter's own rules: names from ids only, cached exact versions, purge refusal."""

from types import SimpleNamespace

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from connections.secrets import RECOVERY_WAITS, SecretMissing, SecretStore, secret_name


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


class ConflictingVault(FakeVault):
    """Sets answer these 409s (by inner code) first; recoveries are counted."""

    def __init__(self, conflicts: list[str]) -> None:
        super().__init__()
        self.conflicts = conflicts
        self.recovered: list[str] = []

    def set_secret(self, name, value, **kwargs):
        if self.conflicts:
            error = ResourceExistsError(message="Conflict")
            error.status_code = 409
            error.error = SimpleNamespace(innererror={"code": self.conflicts.pop(0)})
            raise error
        return super().set_secret(name, value, **kwargs)

    def begin_recover_deleted_secret(self, name):
        self.recovered.append(name)
        return SimpleNamespace(wait=lambda: None)


def test_a_deleted_but_recoverable_name_is_recovered_then_written():
    vault = ConflictingVault(["ObjectIsDeletedButRecoverable", "ObjectIsBeingRecovered"])
    waits: list[float] = []
    store = SecretStore(vault, sleep=waits.append)
    version = store.put("contoso", "c1", "api_token", "new-token")
    assert vault.recovered == [secret_name("c1", "api_token")]
    assert waits == [RECOVERY_WAITS[1]], "waited once while the recovery completed"
    assert vault.values[(secret_name("c1", "api_token"), version)] == "new-token"


def test_a_conflict_that_does_not_clear_is_raised():
    vault = ConflictingVault(["ObjectIsBeingRecovered"] * (len(RECOVERY_WAITS) + 1))
    with pytest.raises(ResourceExistsError):
        SecretStore(vault, sleep=lambda seconds: None).put("contoso", "c1", "api_token", "t")
    other = ConflictingVault(["SomethingElse"])
    with pytest.raises(ResourceExistsError):
        SecretStore(other, sleep=lambda seconds: None).put("contoso", "c1", "api_token", "t")
    assert other.recovered == []


def test_a_secret_the_vault_no_longer_has_is_missing_not_a_fault():
    class EmptyVault(FakeVault):
        def get_secret(self, name, version=None):
            raise ResourceNotFoundError(message="SecretNotFound")

    with pytest.raises(SecretMissing) as missing:
        SecretStore(EmptyVault()).get("c1", "client_secret", "v1")
    assert missing.value.kind == "client_secret"
    assert "missing from Key Vault" in str(missing.value)
