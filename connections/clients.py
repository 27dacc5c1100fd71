"""Azure SDK clients, created on first use from the app settings and cached for the process."""

import functools
import os

from azure.core.credentials import TokenCredential
from azure.data.tables import TableClient, TableServiceClient
from azure.keyvault.secrets import SecretClient

CONNECTIONS_TABLE = "connections"
STORAGE_SETTING = "AzureWebJobsStorage"

# Retries that honour Retry-After (429, 503) and give up within a bounded time.
RETRY_SETTINGS = {"retry_total": 4, "retry_backoff_factor": 0.5, "retry_backoff_max": 8}
TIMEOUT_SETTINGS = {"connection_timeout": 5, "read_timeout": 20}


@functools.cache
def credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _storage_service_uri(kind: str) -> str | None:
    uri = os.environ.get(f"{STORAGE_SETTING}__{kind}ServiceUri")
    if uri:
        return uri
    account = os.environ.get(f"{STORAGE_SETTING}__accountName")
    return f"https://{account}.{kind}.core.windows.net" if account else None


def storage_connection() -> tuple[str | None, str | None]:
    """(connection string, None) locally; (None, service URI) with identity-based settings."""
    connection_string = os.environ.get(STORAGE_SETTING)
    if connection_string:
        return connection_string, None
    return None, _storage_service_uri("table")


@functools.cache
def table_client() -> TableClient:
    connection_string, endpoint = storage_connection()
    options = {**RETRY_SETTINGS, **TIMEOUT_SETTINGS}
    if connection_string:
        service = TableServiceClient.from_connection_string(connection_string, **options)
    elif endpoint:
        service = TableServiceClient(endpoint, credential=credential(), **options)
    else:
        raise RuntimeError(f"Set {STORAGE_SETTING} (or {STORAGE_SETTING}__tableServiceUri).")
    service.create_table_if_not_exists(CONNECTIONS_TABLE)
    return service.get_table_client(CONNECTIONS_TABLE)


@functools.cache
def secret_client() -> SecretClient:
    vault_url = os.environ.get("KEY_VAULT_URL")
    if not vault_url:
        raise RuntimeError("Set KEY_VAULT_URL to the vault that holds the connection secrets.")
    return SecretClient(vault_url, credential(), **RETRY_SETTINGS, **TIMEOUT_SETTINGS)
