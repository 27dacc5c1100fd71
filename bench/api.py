"""Figures 4 and 5: API latency through the local runner, and Key Vault calls per operation.

The app is served by `LocalHost` over HTTP on loopback, exactly as `scripts/run-local` serves it;
its storage is Azurite and its Key Vault and ServiceNow are the stand-ins in their own process.
"""

import http.client
import json
import os
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.data.tables import TableClient

from bench import measure, seed
from bench.env import CLIENT_ID, CLIENT_SECRET, BenchEnv
from connections.clients import CONNECTIONS_TABLE
from localrun.host import LocalHost, load_function_app
from localrun.hostconfig import HostConfig
from localrun.keys import Keys
from localrun.settings import PROJECT_ROOT
from renewal.sweep import SweepSettings, run_sweep

FUNCTION_KEY = "bench-function-key"
API_TOKEN = "bench-api-token-" + uuid.uuid4().hex
LIST_QUERY = "PartitionKey eq @tenant and RowKey ge @low and RowKey lt @high"


class Client:
    """A plain `http.client` caller, so the harness adds as little as it can to what is
    measured (the local runner closes each connection, as werkzeug's server does)."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        headers = {"x-functions-key": FUNCTION_KEY}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            content = response.read()
        finally:
            connection.close()
        if response.status != expect:
            raise RuntimeError(f"{method} {path}: {response.status} {content[:300]!r}")
        return json.loads(content) if content else None


class HandlerTimer:
    """Times the local runner's handling of each request (routing, the function, building the
    response) without the HTTP hop around it, by wrapping the host's `handle`."""

    def __init__(self, host: LocalHost) -> None:
        self.last = 0.0
        inner = host.handle

        def handle(request: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(request)
            finally:
                self.last = time.perf_counter() - started

        host.handle = handle  # type: ignore[method-assign]


def _oauth_body(env: BenchEnv, name: str) -> dict[str, Any]:
    return {
        "type": "servicenow",
        "name": name,
        "instance_url": env.servicenow_url,
        "auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        "notify_emails": ["it-admins@contoso.example"],
    }


def _api_token_body(env: BenchEnv, name: str) -> dict[str, Any]:
    return {
        "type": "servicenow",
        "name": name,
        "instance_url": env.servicenow_url,
        "auth": {"method": "api_token", "api_token": API_TOKEN},
    }


def start_host() -> LocalHost:
    """The app served as `scripts/run-local` serves it (host.json's settings), without its
    timers and queue listeners running: figure 8 starts the listeners it needs."""
    keys = Keys(function_key=FUNCTION_KEY, master_key="bench-master-key-" + uuid.uuid4().hex)
    config = HostConfig.load(PROJECT_ROOT)
    app = load_function_app()
    return LocalHost(app, dict(os.environ), keys, config=config).start(port=0, triggers=False)


def latency(
    env: BenchEnv, client: Client, timer: HandlerTimer, listed: int, calls: int, writes: int
) -> dict[str, Any]:
    tenant, list_tenant = "api-crud", "api-list"
    seed.write_records(seed.make_connections([list_tenant], listed, env.servicenow_url, _later()))
    base = f"/api/tenants/{tenant}/connections"
    list_path = f"/api/tenants/{list_tenant}/connections?limit={listed}"
    bare = TableClient.from_connection_string(
        env.environment["AzureWebJobsStorage"], CONNECTIONS_TABLE
    )
    list_parameters = {"tenant": list_tenant, "low": "conn-", "high": "conn."}

    times: dict[str, list[float]] = {name: [] for name in ("create", "read", "list", "update")}
    times |= {"delete": [], "bare read": [], "bare list": [], "read in app": [], "list in app": []}
    ids: list[str] = []
    for index in range(writes):
        body = _oauth_body(env, f"Latency {index:04d}")
        times["create"].append(
            measure.timed(lambda body=body: ids.append(client.call("POST", base, body, 201)["id"]))
        )
    for connection_id in ids[:10]:  # warm both paths: connections, caches, code
        client.call("GET", f"{base}/{connection_id}")
        bare.get_entity(tenant, "conn-" + connection_id)
    env.reset_vault_counts()
    for index in range(calls):
        connection_id = ids[index % len(ids)]
        times["read"].append(
            measure.timed(lambda i=connection_id: client.call("GET", f"{base}/{i}"))
        )
        times["read in app"].append(timer.last)
        times["bare read"].append(
            measure.timed(lambda i=connection_id: bare.get_entity(tenant, "conn-" + i))
        )
    list_calls = max(10, calls // 5)

    def api_list() -> None:
        items = client.call("GET", list_path)["items"]
        if len(items) != listed:
            raise RuntimeError(f"list gave {len(items)} connections, not {listed}")

    def bare_list() -> None:
        query = bare.query_entities(LIST_QUERY, parameters=list_parameters, results_per_page=listed)
        if len(list(query)) != listed:
            raise RuntimeError("the bare query did not give every connection")

    api_list()
    bare_list()
    for _ in range(list_calls):
        times["list"].append(measure.timed(api_list))
        times["list in app"].append(timer.last)
        times["bare list"].append(measure.timed(bare_list))
    vault_during_reads = sum(env.vault_calls().values())
    for index, connection_id in enumerate(ids):
        patch = {"name": f"Latency renamed {index:04d}"}
        times["update"].append(
            measure.timed(lambda i=connection_id, p=patch: client.call("PATCH", f"{base}/{i}", p))
        )
    for connection_id in ids:
        times["delete"].append(
            measure.timed(lambda i=connection_id: client.call("DELETE", f"{base}/{i}", None, 204))
        )
    bare.close()
    return {
        "listed": listed,
        "summary": {name: measure.summary_ms(values) for name, values in times.items()},
        "vault_calls_during_read_and_list": vault_during_reads,
    }


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=2)


def vault_calls_per_operation(env: BenchEnv, client: Client, services: Any) -> list[dict[str, Any]]:
    """Key Vault calls (per stand-in operation) of one of each operation, in a warm process."""
    env.servicenow("POST", "/_control/api-keys", value=API_TOKEN, name="bench-key")
    tenant = "vault-ops"
    base = f"/api/tenants/{tenant}/connections"
    rows = []

    def count(operation: str, call: Any) -> Any:
        env.reset_vault_counts()
        result = call()
        calls = env.vault_calls()
        rows.append({"operation": operation, "calls": calls, "total": sum(calls.values())})
        return result

    oauth = count(
        "create (OAuth 2.0)", lambda: client.call("POST", base, _oauth_body(env, "KV OAuth"), 201)
    )
    token = count(
        "create (API token)",
        lambda: client.call("POST", base, _api_token_body(env, "KV token"), 201),
    )
    oauth_path, token_path = f"{base}/{oauth['id']}", f"{base}/{token['id']}"
    count("read", lambda: client.call("GET", oauth_path))
    count("list", lambda: client.call("GET", base))
    count("update: rename", lambda: client.call("PATCH", oauth_path, {"name": "KV OAuth 2"}))
    rotated = {"auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}
    count(
        "update: new client secret (OAuth 2.0)", lambda: client.call("PATCH", oauth_path, rotated)
    )
    new_token = {"auth": {"method": "api_token", "api_token": API_TOKEN}}
    count("update: new API token", lambda: client.call("PATCH", token_path, new_token))

    seed.seed(
        services, [tenant + "-due"], 1, env.servicenow_url, datetime.now(UTC) - timedelta(minutes=1)
    )
    count("renewal (sweep, OAuth 2.0)", lambda: run_sweep(services, SweepSettings.from_environ()))
    count("check (OAuth 2.0: renews)", lambda: client.call("POST", f"{oauth_path}/check"))
    count("check (API token)", lambda: client.call("POST", f"{token_path}/check"))
    count("delete (OAuth 2.0)", lambda: client.call("DELETE", oauth_path, None, 204))
    count("delete (API token)", lambda: client.call("DELETE", token_path, None, 204))
    return rows
