"""Azure SDK clients, created on first use from the app settings and cached for the process."""

import contextlib
import functools
import os

from azure.core.credentials import TokenCredential
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient, TableServiceClient
from azure.keyvault.secrets import SecretClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

CONNECTIONS_TABLE = "connections"
DUE_TABLE = "connectiondue"
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


def storage_connection(kind: str) -> tuple[str | None, str | None]:
    """(connection string, None) locally; (None, service URI) with identity-based settings."""
    connection_string = os.environ.get(STORAGE_SETTING)
    if connection_string:
        return connection_string, None
    endpoint = _storage_service_uri(kind)
    if not endpoint:
        raise RuntimeError(f"Set {STORAGE_SETTING} (or {STORAGE_SETTING}__{kind}ServiceUri).")
    return None, endpoint


@functools.cache
def _table_service() -> TableServiceClient:
    connection_string, endpoint = storage_connection("table")
    options = {**RETRY_SETTINGS, **TIMEOUT_SETTINGS}
    if connection_string:
        return TableServiceClient.from_connection_string(connection_string, **options)
    return TableServiceClient(endpoint, credential=credential(), **options)


@functools.cache
def table_client(name: str = CONNECTIONS_TABLE) -> TableClient:
    service = _table_service()
    service.create_table_if_not_exists(name)
    return service.get_table_client(name)


@functools.cache
def queue_client(name: str) -> QueueClient:
    connection_string, endpoint = storage_connection("queue")
    options = {
        **RETRY_SETTINGS,
        **TIMEOUT_SETTINGS,
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
    }
    if connection_string:
        client = QueueClient.from_connection_string(connection_string, name, **options)
    else:
        client = QueueClient(endpoint, name, credential=credential(), **options)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


@functools.cache
def secret_client() -> SecretClient:
    vault_url = os.environ.get("KEY_VAULT_URL")
    if not vault_url:
        raise RuntimeError("Set KEY_VAULT_URL to the vault that holds the connection secrets.")
    return SecretClient(vault_url, credential(), **RETRY_SETTINGS, **TIMEOUT_SETTINGS)
