"""Figures 1, 2 and 6: sweep CPU and throughput, sweep cost when little is due, sweep memory.

All run the app's own `run_sweep` on the app's own `services()`, against Azurite and the Key
Vault and ServiceNow stand-ins (in their own process), on seeded, due OAuth connections.

Figure 1's baseline is `BareRenewals`: the calls a sweep makes per renewal, made straight
through the same SDK clients, with no product logic between them.

How the processes are arranged, which decides how CPU is attributed: this process (`bench`)
runs the sweep, or the bare loop, in its own threads and nothing else meanwhile (its idle CPU is
measured before the runs and reported); Azurite is a node process of its own, and the identity,
Key Vault and ServiceNow stand-ins run together in one Python process (`bench.standins`). Each
process's CPU is read from /proc/<pid>/stat (user + system, all threads, its children
included); the CPU other users of the machine took meanwhile is the machine's busy time
(/proc/stat) less ours.
"""

import dataclasses
import gc
import json
import os
import resource
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from azure.core import MatchConditions
from azure.data.tables import UpdateMode
from requests.adapters import HTTPAdapter

from bench import measure, offline, seed
from bench.env import CLIENT_ID, CLIENT_SECRET, BenchEnv
from connections.clients import DUE_TABLE, secret_client, table_client
from connections.due_index import DueIndex
from connections.model import from_entity_columns
from connections.service import Services
from connections.store import ConnectionStore, _entity
from renewal.sweep import SweepSettings, run_sweep

TOKEN_LATENCY = 0.05  # seconds the ServiceNow stand-in adds to each token call
TENANTS = 10
BARE_RUNS = 2  # the bare loop runs before and after the sweep, half the count each
IDLE_SECONDS = 1.0  # how long this process's own idle CPU is measured
OFFLINE_ROUNDS = 3  # rounds of the in-memory runs and of the token calls (bench/offline.py)


def _past() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=1)


def _seed_due(env: BenchEnv, services: Services, label: str, count: int) -> None:
    tenants = [f"{label}-t{index:02d}" for index in range(TENANTS)]
    seed.seed(services, tenants, count // TENANTS, env.servicenow_url, _past())


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class BareRenewals:
    """The baseline of figure 1: what a sweep sends per renewal, with no product logic.

    Per due connection, through the app's own cached SDK clients (`table_client()`,
    `table_client(DUE_TABLE)`, `secret_client()`: the same transports and pools): the record
    read (`get_entity`), the lease write (a merge of the two lease columns, on the ETag), the
    token call (`POST /oauth_token.do`, client credentials, sent as the app sends it: a
    prepared `requests` request through an `HTTPAdapter`'s kept-alive pool, as large as the
    app's, not through `Session.send`'s cookie and redirect handling), the new access token
    written to Key Vault (`set_secret` with the app's content type, tags and expiry) and the
    record written back whole (`update_entity` in replace mode, on the ETag), its changed
    columns set straight in the entity read. The due-index changes, one upsert and one delete
    per renewal, go out in entity-group transactions of 100, and the due index is read twice,
    as the sweep reads it. The threads are as many as the sweep's concurrency.

    Left out, being product logic: the record parsed into a `Connection` and built back into
    an entity, the status and schedule worked out (`record_outcome`), the client secret looked
    up in the secret store's version cache, the outbound policy (URL checks, address pinning,
    bounded streamed read), the lease owner's uuid, the notices check, and the sweep's bounded
    submission and window logic."""

    def __init__(
        self,
        instance_url: str,
        concurrency: int,
        clients: tuple[Any, Any, Any, Any] | None = None,
    ) -> None:
        """`clients`: (records table, due table, vault, adapter) in place of the app's (the
        in-memory ones of bench/offline.py)."""
        self.records, self.due, self.vault, self.adapter = clients or (
            table_client(),
            table_client(DUE_TABLE),
            secret_client(),
            HTTPAdapter(pool_maxsize=concurrency + 4, max_retries=0),
        )
        self.token_url = instance_url + "/oauth_token.do"
        self.concurrency = concurrency
        self._changes: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _due_rows(self) -> list[str]:
        query = "PartitionKey eq @partition and RowKey le @until"
        parameters = {"partition": "due", "until": f"{_stamp(datetime.now(UTC))}|~"}
        rows = self.due.query_entities(query, parameters=parameters, results_per_page=1000)
        return [row["RowKey"] for row in rows]

    def run(self) -> int:
        """Renews every due connection; returns how many."""
        rows = self._due_rows()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="bare") as pool:
            renewed = sum(pool.map(self.renew, rows))
        with self._lock:
            self._submit(whole=True)
        self._due_rows()  # as the sweep reads the index again once what it found is done
        return renewed

    def renew(self, row_key: str) -> int:
        _, tenant_id, connection_id = row_key.split("|")
        records, now = self.records, datetime.now(UTC)
        entity = records.get_entity(tenant_id, "conn-" + connection_id)
        lease = {
            "PartitionKey": tenant_id,
            "RowKey": entity["RowKey"],
            "LeaseOwner": "bare",
            "LeaseUntil": _stamp(now + timedelta(minutes=2)),
        }
        leased = records.update_entity(
            lease,
            mode=UpdateMode.MERGE,
            etag=entity.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        request = requests.Request(
            "POST", self.token_url, data=form, headers={"Accept": "application/json"}
        )
        response = self.adapter.send(request.prepare(), timeout=(5, 15))
        response.raise_for_status()
        grant = response.json()
        expires_at = now + timedelta(seconds=grant["expires_in"])
        secret = self.vault.set_secret(
            f"conn-{connection_id}-access-token",
            grant["access_token"],
            content_type="application/vnd.servicenow.oauth-access-token",
            tags={"tenant": tenant_id, "connection": connection_id, "kind": "access_token"},
            expires_on=expires_at,
        )
        auth = json.loads(entity["Auth"])
        auth["token_expires_at"] = _stamp(expires_at)
        versions = json.loads(entity["SecretVersions"])
        versions["access_token"] = secret.properties.version
        due_at = _stamp(expires_at - timedelta(minutes=10))
        entity.update(
            Auth=json.dumps(auth, separators=(",", ":")),
            SecretVersions=json.dumps(versions, separators=(",", ":")),
            LastCheckedAt=_stamp(now),
            NextDueAt=due_at,
            LeaseOwner="",
            LeaseUntil=None,
        )
        records.update_entity(
            entity,
            mode=UpdateMode.REPLACE,
            etag=leased["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
        new_row = f"{due_at}|{tenant_id}|{connection_id}"
        with self._lock:
            self._changes.append(("upsert", {"PartitionKey": "due", "RowKey": new_row}))
            self._changes.append(("delete", {"PartitionKey": "due", "RowKey": row_key}))
            self._submit(whole=False)
        return 1

    def _submit(self, whole: bool) -> None:
        """Called holding the lock, as the sweep writes its batches one at a time."""
        while len(self._changes) >= 100 or (whole and self._changes):
            chunk, self._changes = self._changes[:100], self._changes[100:]
            self.due.submit_transaction(chunk)


def _switches() -> int:
    """Context switches of this process so far, voluntary (a thread waiting: I/O, a lock, the
    GIL) and not."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _cpu_now(pids: dict[str, int]) -> dict[str, float]:
    cpu = {"bench": time.process_time()}
    cpu.update({name: measure.tree_cpu_seconds(pid) for name, pid in pids.items()})
    cpu["machine"] = measure.machine_busy_seconds()
    return cpu


def measured(env: BenchEnv, work: Callable[[], int]) -> dict[str, Any]:
    """Runs `work` (returning how many it renewed): its wall time, the CPU each process used
    and the CPU others took from the machine meanwhile (`others`), Key Vault and token calls,
    and this process's resident memory before it and at its peak."""
    gc.collect()
    peak_reset = measure.reset_peak_rss()
    rss_before = measure.rss_kb()
    env.reset_vault_counts()
    exchanges_before = env.token_exchanges()
    pids = env.server_pids
    threads = threading.active_count()
    switches = _switches()
    before = _cpu_now(pids)
    started = time.perf_counter()
    result = work()
    elapsed = time.perf_counter() - started
    after = _cpu_now(pids)
    switches = _switches() - switches
    cpu = {name: after[name] - before[name] for name in before}
    machine = cpu.pop("machine")
    return {
        "result": result,
        "seconds": elapsed,
        "cpu": cpu,
        "others_cpu": max(0.0, machine - sum(cpu.values())),
        "switches": switches,
        "threads_before": threads,
        "vault": env.vault_calls(),
        "token_calls": env.token_exchanges() - exchanges_before,
        "rss_before_kb": rss_before,
        "peak_rss_kb": measure.peak_rss_kb() if peak_reset else None,
        "rss_after_kb": measure.rss_kb(),
    }


def measured_sweep(env: BenchEnv, services: Services, settings: SweepSettings) -> dict[str, Any]:
    """One sweep, measured as `measured` measures; `counts` its outcomes."""
    run = measured(env, lambda: run_sweep(services, settings))
    counts = run.pop("result")
    return {"counts": dict(counts), "worked": sum(counts.values()), **run}


def measured_bare(env: BenchEnv, bare: BareRenewals) -> dict[str, Any]:
    run = measured(env, bare.run)
    return {"worked": run.pop("result"), **run}


def _combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs added up: renewals, seconds, CPU per process, calls."""
    cpu: dict[str, float] = {}
    vault: dict[str, int] = {}
    for run in runs:
        for name, seconds in run["cpu"].items():
            cpu[name] = cpu.get(name, 0.0) + seconds
        for name, count in run["vault"].items():
            vault[name] = vault.get(name, 0) + count
    return {
        "worked": sum(run["worked"] for run in runs),
        "seconds": sum(run["seconds"] for run in runs),
        "cpu": cpu,
        "others_cpu": sum(run["others_cpu"] for run in runs),
        "switches": sum(run["switches"] for run in runs),
        "vault": vault,
        "token_calls": sum(run["token_calls"] for run in runs),
        "runs": [{"worked": run["worked"], "seconds": run["seconds"]} for run in runs],
    }


def _per_renewal_ms(run: dict[str, Any]) -> dict[str, float]:
    return {name: seconds * 1000 / run["worked"] for name, seconds in run["cpu"].items()}


def _bound(run: dict[str, Any], cores: int, concurrency: int) -> dict[str, Any]:
    """The most renewals per second this machine allows a run spending the CPU it spent: the
    bench process under one GIL (one core), every process together on all cores, and the
    token call's added latency spread over the concurrency; the least of the three."""
    cpu = _per_renewal_ms(run)
    total = sum(cpu.values())
    limits = {
        "one core (this process)": 1000 / cpu["bench"],
        f"{cores} cores (all processes)": cores * 1000 / total,
        "token latency": concurrency / TOKEN_LATENCY,
    }
    binding = min(limits, key=limits.__getitem__)
    rate = run["worked"] / run["seconds"]
    return {
        "cpu_per_renewal_ms": cpu,
        "total_ms": total,
        "limits": limits,
        "binding": binding,
        "bound_per_s": limits[binding],
        "per_s": rate,
        "ratio": rate / limits[binding],
        "others_cores": run["others_cpu"] / run["seconds"],
    }


def _idle_cpu_ms_per_s() -> float:
    """This process's CPU while it does nothing (its other threads, if any): milliseconds per
    second, to set beside what the runs measure."""
    before = time.process_time()
    time.sleep(IDLE_SECONDS)
    return (time.process_time() - before) * 1000 / IDLE_SECONDS


def throughput_and_memory(
    env: BenchEnv,
    services: Services,
    connections: int,
    sample: int,
    small: int,
    in_memory: int = 1000,
    token_calls: int = 200,
) -> dict[str, Any]:
    """Figure 1 (and the runs figure 6 reads): the bare loop on half the count, the sweep on
    the whole count, the bare loop on the other half, so the baseline brackets the sweep;
    then the bare loop and the sweep one after another on `sample` each; then the
    decomposition of bench/offline.py (`in_memory` renewals a round, `token_calls` calls a
    round)."""
    settings = SweepSettings.from_environ()
    cores = os.cpu_count() or 1
    env.set_token_latency(TOKEN_LATENCY)
    bare = BareRenewals(env.servicenow_url, settings.concurrency)
    # Threads, pools and connections exist after this, for both.
    _seed_due(env, services, "warmbare", 40)
    bare.run()
    _seed_due(env, services, "warmup", 40)
    run_sweep(services, settings)
    idle_ms_per_s = _idle_cpu_ms_per_s()

    _seed_due(env, services, f"mem{small}", small)
    small_run = measured_sweep(env, services, settings)

    bare_runs = []
    _seed_due(env, services, "bare1", connections // BARE_RUNS)
    bare_runs.append(measured_bare(env, bare))
    _seed_due(env, services, f"sweep{connections}", connections)
    concurrent = measured_sweep(env, services, settings)
    for index in range(2, BARE_RUNS + 1):
        _seed_due(env, services, f"bare{index}", connections // BARE_RUNS)
        bare_runs.append(measured_bare(env, bare))

    _seed_due(env, services, f"seqbare{sample}", sample)
    sequential_bare = measured_bare(env, BareRenewals(env.servicenow_url, 1))
    _seed_due(env, services, f"seq{sample}", sample)
    sequential = measured_sweep(env, services, dataclasses.replace(settings, concurrency=1))
    env.set_token_latency(0)

    def bare_factory(concurrency: int, clients: tuple[Any, Any, Any, Any]) -> BareRenewals:
        return BareRenewals(env.servicenow_url, concurrency, clients)

    decomposition = {
        "in_memory": offline.in_memory(
            services, bare_factory, in_memory, settings.concurrency, OFFLINE_ROUNDS
        ),
        "token_call": offline.token_calls(
            services, env.servicenow_url, token_calls, OFFLINE_ROUNDS
        ),
        "hotspots": offline.hotspots(services, in_memory),
    }

    baseline = _combined(bare_runs)
    sweep_bound = _bound(concurrent, cores, settings.concurrency)
    bare_bound = _bound(baseline, cores, settings.concurrency)
    per_connection = sequential["seconds"] / sequential["worked"]
    sequential_estimate = per_connection * connections
    floor = connections * TOKEN_LATENCY / settings.concurrency
    return {
        "connections": connections,
        "concurrency": settings.concurrency,
        "cores": cores,
        "idle_cpu_ms_per_s": idle_ms_per_s,
        "concurrent": concurrent,
        "bare": baseline,
        "bare_runs": bare_runs,
        "decomposition": decomposition,
        "cpu_ratio": sweep_bound["cpu_per_renewal_ms"]["bench"]
        / bare_bound["cpu_per_renewal_ms"]["bench"],
        "sweep_bound": sweep_bound,
        "bare_bound": bare_bound,
        "sequential_sample": sequential,
        "sequential_bare": sequential_bare,
        "sequential_per_connection_s": per_connection,
        "sequential_estimate_s": sequential_estimate,
        "speedup": sequential_estimate / concurrent["seconds"],
        "floor_s": floor,
        "over_floor": concurrent["seconds"] / floor,
        "cpu_per_renewal_ms": sweep_bound["cpu_per_renewal_ms"],
        "memory_small": small_run,
        "small": small,
    }


def cost_when_little_is_due(
    env: BenchEnv, services: Services, connections: int, due: int
) -> dict[str, Any]:
    """`connections` records, of which `due` are due: what one sweep reads and calls."""
    per_tenant = 1000
    tenants = [f"idle-t{index:02d}" for index in range(connections // per_tenant)]
    later = datetime.now(UTC) + timedelta(hours=1)
    idle = seed.make_connections(tenants, per_tenant, env.servicenow_url, later)
    for index, connection in enumerate(idle):  # spread over the next hours, like real ones
        connection.next_due_at = later + timedelta(seconds=(index * 7919) % (5 * 3600))
    due_now = idle[:: len(idle) // due][:due]  # spread over the tenants
    for connection in due_now:
        connection.next_due_at = _past()
    started = time.perf_counter()
    seed.write_secrets(services, due_now)
    seed.write_records(idle)
    seed.write_due_entries(idle)
    seeded = time.perf_counter() - started

    counts = measure.TableCounts()
    counted = dataclasses.replace(
        services,
        store=ConnectionStore(measure.CountingTable(table_client(), counts)),
        due=DueIndex(measure.CountingTable(table_client(DUE_TABLE), counts)),
    )
    run = measured_sweep(env, counted, SweepSettings.from_environ())
    return {
        "connections": connections,
        "due": due,
        "seed_seconds": seeded,
        "run": run,
        "entities_read": dict(counts.entities_read),
        "table_requests": dict(counts.requests),
        "total_read": counts.total_read(),
        "total_requests": counts.total_requests(),
    }


def python_heap_growth(env: BenchEnv, services: Services, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Sweeps of each size under tracemalloc (untimed: tracing slows them): how much the
    Python heap grew at the sweep's peak, and how much stayed after it."""
    settings = SweepSettings.from_environ()
    env.set_token_latency(TOKEN_LATENCY)
    runs = []
    for size in sizes:
        _seed_due(env, services, f"heap{size}", size)
        gc.collect()
        tracemalloc.start()
        start, _ = tracemalloc.get_traced_memory()
        counts = run_sweep(services, settings)
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        runs.append(
            {
                "worked": sum(counts.values()),
                "peak_kb": (peak - start) / 1024,
                "kept_kb": (end - start) / 1024,
            }
        )
    env.set_token_latency(0)
    sample = seed.oauth_connection("tenant-0000", 1, env.servicenow_url, _past())
    sample.secret_versions = {"client_secret": "0" * 32, "access_token": "0" * 32}
    entity = _entity(sample)
    text = json.dumps(entity)  # records as the app holds them once read: parsed Connections
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    records = [
        from_entity_columns("tenant-0000", sample.id, json.loads(text), None) for _ in range(200)
    ]
    record = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    tracemalloc.stop()
    del records
    first, last = runs[0], runs[-1]
    extra = last["worked"] - first["worked"]
    return {
        "runs": runs,
        "record_bytes": record,
        "stored_record_bytes": len(text),
        "peak_per_connection_kb": (last["peak_kb"] - first["peak_kb"]) / extra,
        "kept_per_connection_kb": (last["kept_kb"] - first["kept_kb"]) / extra,
    }
