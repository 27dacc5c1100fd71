"""Figure 7: the proxy. A proxied GET of one record against a direct call to the same
ServiceNow stand-in for the same record with the same API token: latency (interleaved),
throughput at the same concurrency, and Key Vault calls per proxied call on a warm worker.

The load, direct and proxied alike, comes from `bench.load` in a process of its own; the app is
served by `LocalHost` in the bench process, as for figure 4.
"""

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import requests

import proxy.service
from bench import measure
from bench.api import FUNCTION_KEY, Client
from bench.env import BenchEnv
from bench.load import LoadProcess
from connections.services import services
from localrun.host import LocalHost
from proxy.api import _proxy

CONCURRENCY = 16
WARMUP_ROUNDS = 20
TENANT = "proxy-bench"
TOKEN = "bench-proxy-token-" + uuid.uuid4().hex
KEY_NAME = "bench-proxy-key"
RECORD_PATH = "api/now/table/incident"

Part = tuple[float, float]  # one call's wall time and its thread's CPU time, in seconds


def proxy_figures(
    env: BenchEnv, client: Client, host: LocalHost, calls: int, load_calls: int
) -> dict[str, Any]:
    """`calls` interleaved rounds of one direct and one proxied call, `calls` more proxied ones
    timed in parts, then `load_calls` of each at concurrency 16."""
    sys_id = _incident(env)
    connection_id = _api_token_connection(env, client)
    accept = {"Accept": "application/json"}
    direct = {
        "url": f"{env.servicenow_url}/{RECORD_PATH}/{sys_id}",
        "headers": {**accept, "x-sn-apikey": TOKEN},
    }
    proxied = {
        "url": f"{host.url}/api/tenants/{TENANT}/connections/{connection_id}/servicenow/"
        f"{RECORD_PATH}/{sys_id}",
        "headers": {**accept, "x-functions-key": FUNCTION_KEY},
    }
    record_bytes = _same_answer(direct, proxied)
    with LoadProcess() as load:
        warmup = {"kind": "sequence", "targets": [direct, proxied], "calls": WARMUP_ROUNDS}
        _expect_ok(load.run(warmup))
        env.reset_vault_counts()
        latency = _expect_ok(
            load.run({"kind": "sequence", "targets": [direct, proxied], "calls": calls})
        )
        parts = _parts(load, host, proxied, calls)
        throughput = _throughput(env, load, direct, proxied, load_calls)
        vault = env.vault_calls()
    direct_times, proxied_times = latency["seconds"]
    proxied_calls = calls + calls + throughput["calls"]
    return {
        "record_path": f"{RECORD_PATH}/<sys_id>",
        "record_bytes": record_bytes,
        "calls": calls,
        "warmup_rounds": WARMUP_ROUNDS,
        "direct": measure.summary_ms(direct_times),
        "proxied": measure.summary_ms(proxied_times),
        "parts": parts,
        "throughput": throughput,
        "vault": vault,
        "proxied_calls": proxied_calls,
        "vault_per_call": sum(vault.values()) / proxied_calls,
    }


def _incident(env: BenchEnv) -> str:
    fields = {"short_description": "Printer on floor 3 is out of toner", "priority": "3"}
    return env.servicenow("POST", "/_control/tables/incident/records", fields=fields)["sys_ids"][0]


def _api_token_connection(env: BenchEnv, client: Client) -> str:
    env.servicenow("POST", "/_control/api-keys", value=TOKEN, name=KEY_NAME)
    body = {
        "type": "servicenow",
        "name": "Proxy bench (API token)",
        "instance_url": env.servicenow_url,
        "auth": {"method": "api_token", "api_token": TOKEN},
    }
    return client.call("POST", f"/api/tenants/{TENANT}/connections", body, 201)["id"]


def _same_answer(direct: dict[str, Any], proxied: dict[str, Any]) -> int:
    """Checks that both sides answer 200 with the same record; returns its size in bytes."""
    with requests.Session() as session:
        session.trust_env = False
        answers = [
            session.get(target["url"], headers=target["headers"], timeout=30)
            for target in (direct, proxied)
        ]
    for answer in answers:
        if answer.status_code != 200:
            raise RuntimeError(f"GET {answer.url}: {answer.status_code} {answer.text[:300]}")
    if answers[0].json() != answers[1].json():
        raise RuntimeError("the proxied answer is not the direct one")
    return len(answers[1].content)


def _expect_ok(result: dict[str, Any]) -> dict[str, Any]:
    if set(result["statuses"]) != {200}:
        raise RuntimeError(f"calls that did not answer 200: {result['statuses']}")
    return result


# -- where the proxied call's time goes ---------------------------------------------------------


def _timing(inner: Callable[..., Any], sink: list[Part]) -> Callable[..., Any]:
    """`inner`, recording the wall time and the calling thread's CPU time of each call."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append((time.perf_counter() - started, time.thread_time() - cpu))

    return timed


@contextlib.contextmanager
def _timed_parts(host: LocalHost) -> Iterator[dict[str, list[Part]]]:
    """While open, records the time of the host's handling of each request, of the record read
    (`ConnectionStore.get`) and of the call to the instance (`safe_request`), in the app's
    process, by wrapping them; puts them back after."""
    times: dict[str, list[Part]] = {"handler": [], "record read": [], "instance call": []}
    store = services().store
    handle, send = host.handle, proxy.service.safe_request
    host.handle = _timing(handle, times["handler"])  # type: ignore[method-assign]
    store.get = _timing(store.get, times["record read"])  # type: ignore[method-assign]
    proxy.service.safe_request = _timing(send, times["instance call"])
    try:
        yield times
    finally:
        host.handle = handle  # type: ignore[method-assign]
        del store.get
        proxy.service.safe_request = send


def _parts(
    load: LoadProcess, host: LocalHost, proxied: dict[str, Any], calls: int
) -> dict[str, Any]:
    """Proxied calls one at a time, each split into its parts: the p50 of each part's wall time
    and the mean CPU time of the handling thread in it (ms), and the app's CPU per call."""
    _proxy().calls.flush()
    app_before = time.process_time()
    with _timed_parts(host) as times:
        result = _expect_ok(load.run({"kind": "sequence", "targets": [proxied], "calls": calls}))
    _proxy().calls.flush()
    app_cpu = time.process_time() - app_before
    if any(len(values) != calls for values in times.values()):
        raise RuntimeError(f"expected {calls} of each part: {[len(v) for v in times.values()]}")
    walls = {name: [wall for wall, _ in values] for name, values in times.items()}
    cpus = {name: [cpu for _, cpu in values] for name, values in times.items()}
    walls["total"] = result["seconds"][0]
    walls["http hop"] = [t - h for t, h in zip(walls["total"], walls["handler"], strict=True)]
    walls["rest"], cpus["rest"] = _rest(walls), _rest(cpus)
    return {
        "p50": {name: measure.percentile(values, 0.5) * 1000 for name, values in walls.items()},
        "cpu": {name: statistics.fmean(values) * 1000 for name, values in cpus.items()},
        "app_cpu_ms": app_cpu * 1000 / calls,
    }


def _rest(parts: dict[str, list[float]]) -> list[float]:
    """The handling less the record read and the instance call: routing, the function key,
    path rules, headers each way, the audit entry queued."""
    handler, read, instance = parts["handler"], parts["record read"], parts["instance call"]
    return [h - r - i for h, r, i in zip(handler, read, instance, strict=True)]


# -- throughput --------------------------------------------------------------------------------


def _throughput(
    env: BenchEnv,
    load: LoadProcess,
    direct: dict[str, Any],
    proxied: dict[str, Any],
    calls: int,
) -> dict[str, Any]:
    """`calls` of each side at concurrency 16, in halves ordered direct, proxied, proxied,
    direct so that drift in the machine's load falls on both; wall time and CPU per process."""
    half = calls // 2
    runs = {"direct": _empty_run(), "proxied": _empty_run()}
    for side in ("direct", "proxied", "proxied", "direct"):
        target = direct if side == "direct" else proxied
        _add_run(runs[side], _concurrent(env, load, target, half))
    for run in runs.values():
        run["per_second"] = run["calls"] / run["seconds"]
        run["cpu_per_call_ms"] = {
            name: seconds * 1000 / run["calls"] for name, seconds in run["cpu"].items()
        }
    return {
        "concurrency": CONCURRENCY,
        "calls": 2 * half,
        **runs,
        "ratio": runs["proxied"]["per_second"] / runs["direct"]["per_second"],
    }


def _empty_run() -> dict[str, Any]:
    return {"calls": 0, "seconds": 0.0, "cpu": {}}


def _add_run(total: dict[str, Any], run: dict[str, Any]) -> None:
    total["calls"] += run["calls"]
    total["seconds"] += run["seconds"]
    for name, seconds in run["cpu"].items():
        total["cpu"][name] = total["cpu"].get(name, 0.0) + seconds


def _concurrent(
    env: BenchEnv, load: LoadProcess, target: dict[str, Any], calls: int
) -> dict[str, Any]:
    """One concurrent run, with the CPU each process spent on it: the app's (this process),
    the stand-ins', Azurite's and the load generator's. The audit entries the run left pending
    are written before the CPU is read, so their cost is counted (not their time)."""
    _proxy().calls.flush()  # what earlier calls left pending is not this run's
    pids = {**env.server_pids, "load": load.pid}
    before = {name: measure.cpu_seconds(pid) for name, pid in pids.items()}
    app_before = time.process_time()
    plan = {"kind": "concurrent", "target": target, "calls": calls, "concurrency": CONCURRENCY}
    result = _expect_ok(load.run(plan))
    _proxy().calls.flush()
    cpu = {"app": time.process_time() - app_before}
    cpu |= {name: measure.cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    return {"calls": calls, "seconds": result["seconds"], "cpu": cpu}
