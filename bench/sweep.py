"""Figures 1, 2 and 6: sweep throughput, sweep cost when little is due, sweep memory.

All run the app's own `run_sweep` on the app's own `services()`, against Azurite and the Key
Vault and ServiceNow stand-ins (in their own process), on seeded, due OAuth connections.
"""

import dataclasses
import gc
import json
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import measure, seed
from bench.env import BenchEnv
from connections.clients import DUE_TABLE, table_client
from connections.due_index import DueIndex
from connections.model import from_entity_columns
from connections.service import Services
from connections.store import ConnectionStore, _entity
from renewal.sweep import SweepSettings, run_sweep

TOKEN_LATENCY = 0.05  # seconds the ServiceNow stand-in adds to each token call
TENANTS = 10


def _past() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=1)


def _seed_due(env: BenchEnv, services: Services, label: str, count: int) -> None:
    tenants = [f"{label}-t{index:02d}" for index in range(TENANTS)]
    seed.seed(services, tenants, count // TENANTS, env.servicenow_url, _past())


def measured_sweep(env: BenchEnv, services: Services, settings: SweepSettings) -> dict[str, Any]:
    """One sweep, with its wall time, the CPU each process used, Key Vault and token calls,
    and the sweep process's resident memory before it and at its peak."""
    gc.collect()
    peak_reset = measure.reset_peak_rss()
    rss_before = measure.rss_kb()
    env.reset_vault_counts()
    exchanges_before = env.token_exchanges()
    pids = env.server_pids
    servers_before = {name: measure.cpu_seconds(pid) for name, pid in pids.items()}
    cpu_before = time.process_time()
    started = time.perf_counter()
    counts = run_sweep(services, settings)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    servers = {name: measure.cpu_seconds(pid) - servers_before[name] for name, pid in pids.items()}
    return {
        "counts": dict(counts),
        "worked": sum(counts.values()),
        "seconds": elapsed,
        "cpu": {"sweep": cpu, **servers},
        "vault": env.vault_calls(),
        "token_calls": env.token_exchanges() - exchanges_before,
        "rss_before_kb": rss_before,
        "peak_rss_kb": measure.peak_rss_kb() if peak_reset else None,
        "rss_after_kb": measure.rss_kb(),
    }


def throughput_and_memory(
    env: BenchEnv, services: Services, connections: int, sample: int, small: int
) -> dict[str, Any]:
    settings = SweepSettings.from_environ()
    env.set_token_latency(TOKEN_LATENCY)
    _seed_due(env, services, "warmup", 40)  # threads, pools and connections exist after this
    run_sweep(services, settings)

    _seed_due(env, services, f"mem{small}", small)
    small_run = measured_sweep(env, services, settings)

    _seed_due(env, services, f"sweep{connections}", connections)
    concurrent = measured_sweep(env, services, settings)

    _seed_due(env, services, f"seq{sample}", sample)
    sequential = measured_sweep(env, services, dataclasses.replace(settings, concurrency=1))
    env.set_token_latency(0)

    per_connection = sequential["seconds"] / sequential["worked"]
    sequential_estimate = per_connection * connections
    floor = connections * TOKEN_LATENCY / settings.concurrency
    cpu = {name: seconds / concurrent["worked"] for name, seconds in concurrent["cpu"].items()}
    return {
        "connections": connections,
        "concurrency": settings.concurrency,
        "concurrent": concurrent,
        "sequential_sample": sequential,
        "sequential_per_connection_s": per_connection,
        "sequential_estimate_s": sequential_estimate,
        "speedup": sequential_estimate / concurrent["seconds"],
        "floor_s": floor,
        "over_floor": concurrent["seconds"] / floor,
        "cpu_per_renewal_ms": {name: seconds * 1000 for name, seconds in cpu.items()},
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
