"""Azure SDK clients, created on first use from the app settings and cached for the process."""

import contextlib
import functools
import os
import urllib.request

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
QUEUE_BACKOFF_SETTINGS = {"initial_backoff": 0.5, "increment_base": 1.5, "random_jitter_range": 0.5}
TIMEOUT_SETTINGS = {"connection_timeout": 5, "read_timeout": 20}


def _transport_options() -> dict:
    """A connection pool as large as the sweep's concurrency: with the default (10), concurrent
    calls beyond it open a connection (and a TLS handshake) each and then discard it."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    from servicenow.outbound import ca_bundle

    concurrency = os.environ.get("RENEWAL_CONCURRENCY") or "32"
    size = max(10, (int(concurrency) if concurrency.isdigit() else 32) + 4)
    retries = Retry(total=False, redirect=False, raise_on_status=False)  # the SDK retries
    adapter = HTTPAdapter(pool_maxsize=size, max_retries=retries)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The environment is read once here rather than on every request (requests scans all of
    # os.environ for proxies per call): its CA bundle, and its proxies if it names any.
    session.trust_env = bool(urllib.request.getproxies())
    transport = RequestsTransport(
        session=session, connection_verify=ca_bundle(), **TIMEOUT_SETTINGS
    )
    return {"transport": transport}


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
def table_service() -> TableServiceClient:
    connection_string, endpoint = storage_connection("table")
    options = {**RETRY_SETTINGS, **TIMEOUT_SETTINGS, **_transport_options()}
    if connection_string:
        return TableServiceClient.from_connection_string(connection_string, **options)
    return TableServiceClient(endpoint, credential=credential(), **options)


@functools.cache
def table_client(name: str = CONNECTIONS_TABLE) -> TableClient:
    service = table_service()
    service.create_table_if_not_exists(name)
    return service.get_table_client(name)


@functools.cache
def queue_client(name: str) -> QueueClient:
    connection_string, endpoint = storage_connection("queue")
    options = {
        **RETRY_SETTINGS,
        **TIMEOUT_SETTINGS,
        # The queue SDK's own retry policy ignores retry_backoff_*: without these its backoff
        # starts at 15 s (about 80 s before a send to an unavailable queue gives up).
        **QUEUE_BACKOFF_SETTINGS,
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
    options = {**RETRY_SETTINGS, **TIMEOUT_SETTINGS, **_transport_options()}
    return SecretClient(vault_url, credential(), **options)
