"""Figure 1's decomposition: the sweep and the bare loop with every call answered in memory.

The sweep's CPU per renewal beside the bare loop's (bench/sweep.py) says how much more the
product spends, not where. Here both run again with the SDK clients, Key Vault and ServiceNow
replaced by in-memory fakes that answer at once: what is left is each one's own logic (the
sweep's: parsing and building records, `record_outcome`, the lease, the due-index batch, its
thread pool and window; the bare loop's: its thread pool and the few columns it sets), which no
SDK call hides. The one call whose client differs, the token call (the app's outbound policy
around `requests`, the bare loop's plain `HTTPAdapter.send`), is timed apart against the
ServiceNow stand-in, one call at a time. A cProfile of the in-memory sweep names the product
functions that cost the most.
"""

import cProfile
import dataclasses
import functools
import itertools
import pstats
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import requests
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode

from bench import seed
from bench.env import CLIENT_ID, CLIENT_SECRET
from connections.due_index import DueIndex, entry_for, to_entity
from connections.secrets import SecretStore
from connections.service import Services
from connections.store import ConnectionStore, _entity
from renewal.sweep import SweepSettings, run_sweep
from servicenow.client import ServiceNowClient, TokenGrant

TOKEN_LIFETIME = 1799  # the stand-in's default
PRODUCT_CODE = ("/connections/", "/renewal/", "/servicenow/")


class MemoryTable:
    """The part of `TableClient` the sweep and the bare loop use, in memory, with ETags."""

    def __init__(self, name: str) -> None:
        self.table_name = name
        self._rows: dict[tuple[str, str], dict[str, Any]] = {}
        self._etags = itertools.count()
        self._lock = threading.Lock()

    def _stored(self, entity: dict[str, Any]) -> None:
        row = {key: value for key, value in entity.items() if value is not None}
        self._rows[(entity["PartitionKey"], entity["RowKey"])] = {
            **row,
            "_etag": f'W/"{next(self._etags)}"',
        }

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> TableEntity:
        with self._lock:
            row = self._rows.get((partition_key, row_key))
            if row is None:
                raise ResourceNotFoundError("not found")
            entity = TableEntity({key: value for key, value in row.items() if key != "_etag"})
        entity._metadata = {"etag": row["_etag"], "timestamp": None}
        return entity

    def update_entity(
        self, entity: dict[str, Any], mode: UpdateMode = UpdateMode.MERGE, **options: Any
    ) -> dict[str, Any]:
        key = (entity["PartitionKey"], entity["RowKey"])
        with self._lock:
            row = self._rows.get(key)
            if row is None:
                raise ResourceNotFoundError("not found")
            if options.get("etag") not in (None, row["_etag"]):
                raise ResourceModifiedError("modified")
            self._stored({**row, **entity} if mode == UpdateMode.MERGE else dict(entity))
            return {"etag": self._rows[key]["_etag"]}

    def upsert_entity(self, entity: dict[str, Any], **_: Any) -> dict[str, Any]:
        with self._lock:
            self._stored(dict(entity))
        return {}

    def delete_entity(self, partition_key: str, row_key: str, **_: Any) -> None:
        with self._lock:
            self._rows.pop((partition_key, row_key), None)

    def submit_transaction(self, operations: list[Any], **_: Any) -> list[dict[str, Any]]:
        with self._lock:
            for operation in operations:
                action, entity = operation[0], operation[1]
                if action == "delete":
                    self._rows.pop((entity["PartitionKey"], entity["RowKey"]), None)
                else:
                    self._stored(dict(entity))
        return [{} for _ in operations]

    def query_entities(self, query: str, parameters: dict[str, Any], **_: Any) -> list[Any]:
        """Only the due index's query: a partition, row keys up to a bound."""
        with self._lock:
            keys = sorted(
                key
                for key in self._rows
                if key[0] == parameters["partition"] and key[1] <= parameters["until"]
            )
            rows = [self._rows[key] for key in keys]
        return [TableEntity({k: v for k, v in row.items() if k != "_etag"}) for row in rows]


class MemoryVault:
    """`SecretClient.set_secret` and `get_secret`, answering at once."""

    def __init__(self) -> None:
        self._versions = itertools.count()
        self._lock = threading.Lock()

    def set_secret(self, name: str, value: str, **_: Any) -> Any:
        with self._lock:
            version = f"{next(self._versions):032x}"
        return SimpleNamespace(value=value, properties=SimpleNamespace(version=version))

    def get_secret(self, name: str, version: str | None = None) -> Any:
        return SimpleNamespace(value=CLIENT_SECRET, properties=SimpleNamespace(version=version))


class MemoryServiceNow(ServiceNowClient):
    """Grants a token at once: the app's client with no call made."""

    def client_credentials(self, instance_url: str, client_id: str, secret: str) -> TokenGrant:
        return TokenGrant(f"access-{time.perf_counter_ns()}", TOKEN_LIFETIME)


class _Reply:
    status_code = 200

    def raise_for_status(self) -> None:
        return None

    def json(self) -> dict[str, Any]:
        return {"access_token": f"access-{time.perf_counter_ns()}", "expires_in": TOKEN_LIFETIME}


class MemoryAdapter:
    """The bare loop's `HTTPAdapter`, answering the token call at once."""

    def send(self, prepared: Any, **_: Any) -> _Reply:
        return _Reply()


def _world(
    services: Services, count: int
) -> tuple[Services, MemoryTable, MemoryTable, MemoryVault]:
    records, due, vault = MemoryTable("connections"), MemoryTable("connectiondue"), MemoryVault()
    past = datetime.now(UTC) - timedelta(minutes=1)
    connections = seed.make_connections(["mem-t00"], count, "https://bench.example", past)
    for connection in connections:
        connection.secret_versions["client_secret"] = "0" * 32
        records.upsert_entity(_entity(connection))
        due.upsert_entity(to_entity(entry_for(connection.tenant_id, connection.id, past, False)))
    secrets = SecretStore(vault)  # type: ignore[arg-type] -- the two calls the store makes
    for connection in connections:  # in its version cache, as after the seeding's writes
        secrets._cache.put((f"conn-{connection.id}-client-secret", "0" * 32), CLIENT_SECRET)
    fake = dataclasses.replace(
        services,
        store=ConnectionStore(records),  # type: ignore[arg-type]
        due=DueIndex(due),  # type: ignore[arg-type]
        secrets=secrets,
        servicenow=MemoryServiceNow(services.policy),
    )
    return fake, records, due, vault


def _process_cpu(call: Callable[[], Any]) -> float:
    started = time.process_time()
    call()
    return time.process_time() - started


def in_memory(
    services: Services, bare_factory: Callable[..., Any], count: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """CPU per renewal of the sweep and the bare loop with every call answered in memory,
    alternating, `rounds` of `count` each (the least of the rounds: the least disturbed)."""
    settings = dataclasses.replace(SweepSettings.from_environ(), concurrency=concurrency)
    sweep_ms, bare_ms = [], []
    for _ in range(rounds + 1):  # the first round of each warms up and is not counted
        fake, *_ = _world(services, count)
        sweep_ms.append(_process_cpu(functools.partial(run_sweep, fake, settings)) * 1000 / count)
        _, records, due, vault = _world(services, count)
        bare = bare_factory(concurrency, (records, due, vault, MemoryAdapter()))
        bare_ms.append(_process_cpu(bare.run) * 1000 / count)
    return {
        "count": count,
        "rounds": rounds,
        "sweep_ms": min(sweep_ms[1:]),
        "bare_ms": min(bare_ms[1:]),
        "sweep_rounds_ms": sweep_ms[1:],
        "bare_rounds_ms": bare_ms[1:],
    }


def hotspots(services: Services, count: int, top: int = 8) -> dict[str, Any]:
    """cProfile, on each thread's CPU clock, of the in-memory sweep at concurrency 1 (the
    main thread and one worker): the product functions with the most CPU of their own, and
    all product code's."""
    settings = dataclasses.replace(SweepSettings.from_environ(), concurrency=1)
    fake, *_ = _world(services, count)
    profiles: list[cProfile.Profile] = []
    started = threading.Event()

    def profile_thread(*_: Any) -> Any:  # enabled in each thread the pool starts
        if not started.is_set():
            return None
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()
        return None

    main = cProfile.Profile(time.thread_time)
    threading.setprofile(profile_thread)
    started.set()
    main.enable()
    try:
        run_sweep(fake, settings)
    finally:
        main.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(main)
    for profile in profiles:
        stats.add(profile)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values())
    product = {
        key: entry for key, entry in raw.items() if any(part in key[0] for part in PRODUCT_CODE)
    }
    own = sorted(product.items(), key=lambda item: -item[1][2])[:top]
    return {
        "count": count,
        "profiled_ms": total * 1000 / count,
        "product_own_ms": sum(entry[2] for entry in product.values()) * 1000 / count,
        "top": [
            {
                "function": f"{_short(key[0])}:{key[1]} {key[2]}",
                "own_ms": entry[2] * 1000 / count,
                "cumulative_ms": entry[3] * 1000 / count,
                "calls": entry[1] / count,
            }
            for key, entry in own
        ],
    }


def _short(path: str) -> str:
    for part in PRODUCT_CODE:
        if part in path:
            return part.strip("/") + "/" + path.split(part, 1)[1]
    return path


def token_calls(services: Services, instance_url: str, calls: int, rounds: int) -> dict[str, Any]:
    """CPU of one token call, the app's (`ServiceNowClient.client_credentials`: the outbound
    policy around `requests`) against the bare loop's (a prepared request through a kept-alive
    `HTTPAdapter`), one at a time against the stand-in, in alternating rounds of `calls` (the
    least of the rounds)."""
    from requests.adapters import HTTPAdapter

    client = services.servicenow
    adapter = HTTPAdapter(max_retries=0)
    url = instance_url + "/oauth_token.do"
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }

    def app() -> None:
        client.client_credentials(instance_url, CLIENT_ID, CLIENT_SECRET)

    def bare() -> None:
        request = requests.Request("POST", url, data=form, headers={"Accept": "application/json"})
        response = adapter.send(request.prepare(), timeout=(5, 15))
        response.raise_for_status()
        response.json()

    app_ms, bare_ms = [], []
    for _ in range(rounds + 1):  # the first round of each warms up and is not counted
        app_ms.append(_process_cpu(lambda: [app() for _ in range(calls)]) * 1000 / calls)
        bare_ms.append(_process_cpu(lambda: [bare() for _ in range(calls)]) * 1000 / calls)
    return {
        "calls": calls,
        "rounds": rounds,
        "app_ms": min(app_ms[1:]),
        "bare_ms": min(bare_ms[1:]),
    }
