"""Runs every benchmark, prints the figures and writes them to bench/results.md.

    scripts/bench                 # set-up, then this
    .venv/bin/python -m bench     # the same, once set up
    .venv/bin/python -m bench --quick   # smaller counts, a few minutes; results not written
    .venv/bin/python -m bench --only sweep   # one part; its figures replace theirs in results.md

Each figure is a comparison made in the same run (see README, "Benchmarks").
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import coldimport, machine, report

RESULTS = Path(__file__).resolve().parent / "results.md"

FULL = {
    "sweep": 2000,
    "sweep_in_memory": 1000,
    "token_calls": 200,
    "sample": 200,
    "small": 500,
    "idle": 20_000,
    "idle_due": 200,
    "listed": 500,
    "calls": 300,
    "writes": 40,
    "imports": 15,
    "proxy_calls": 500,
    "proxy_load": 2000,
    "trigger_burst": 10_000,
    "trigger_deliveries": 2000,
    "trigger_idle_polls": 20,
    "trigger_latency": 50,
    "trigger_cycles": 3,
}
QUICK = {
    "sweep": 400,
    "sweep_in_memory": 300,
    "token_calls": 50,
    "sample": 40,
    "small": 100,
    "idle": 2000,
    "idle_due": 20,
    "listed": 100,
    "calls": 60,
    "writes": 10,
    "imports": 3,
    "proxy_calls": 100,
    "proxy_load": 400,
    "trigger_burst": 2000,
    "trigger_deliveries": 2000,
    "trigger_idle_polls": 10,
    "trigger_latency": 50,
    "trigger_cycles": 1,
}


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Many workers renewing against one stand-in instance overflow the outbound pool of 10
    # connections per host: urllib3 says so on each discarded connection.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _step(title: str) -> float:
    print(f"... {title}", flush=True)
    return time.perf_counter()


def _api(env: Any, app_services: Any, sizes: dict[str, int], results: dict[str, Any]) -> None:
    from bench import api, proxy

    host = api.start_host()
    try:
        client, timer = api.Client(host.url), api.HandlerTimer(host)
        _step(f"API latency through the local runner ({sizes['listed']} listed)")
        results["latency"] = api.latency(
            env, client, timer, sizes["listed"], sizes["calls"], sizes["writes"]
        )
        _step("Key Vault calls per operation")
        results["vault"] = api.vault_calls_per_operation(env, client, app_services)
        _step(
            f"proxy: {sizes['proxy_calls']} calls each way one at a time, "
            f"{sizes['proxy_load']} each at concurrency {proxy.CONCURRENCY}"
        )
        results["proxy"] = proxy.proxy_figures(
            env, client, host, sizes["proxy_calls"], sizes["proxy_load"]
        )
    finally:
        host.stop()


def _sweep(env: Any, app_services: Any, sizes: dict[str, int], results: dict[str, Any]) -> None:
    from bench import sweep

    _step(
        f"sweep CPU and throughput: {sizes['sweep']} due OAuth connections, the bare loop on "
        f"{sizes['sweep']} more, {sizes['sweep_in_memory']} of each in memory"
    )
    results["sweep"] = sweep.throughput_and_memory(
        env,
        app_services,
        sizes["sweep"],
        sizes["sample"],
        sizes["small"],
        sizes["sweep_in_memory"],
        sizes["token_calls"],
    )
    _step(f"sweep memory under tracemalloc: {sizes['small']} and {sizes['sweep']}")
    results["heap"] = sweep.python_heap_growth(env, app_services, (sizes["small"], sizes["sweep"]))
    _step(f"sweep cost: {sizes['idle']} connections, {sizes['idle_due']} due")
    results["idle"] = sweep.cost_when_little_is_due(
        env, app_services, sizes["idle"], sizes["idle_due"]
    )


def _triggers(env: Any, sizes: dict[str, int], results: dict[str, Any]) -> None:
    from bench import api, triggers

    _step(
        f"triggers: {sizes['trigger_cycles']} poll cycles of {sizes['trigger_latency']} "
        f"records, {sizes['trigger_idle_polls']} idle polls each way, a burst of "
        f"{sizes['trigger_burst']:,} changed records, {sizes['trigger_deliveries']:,} "
        f"deliveries at concurrency {triggers.CONCURRENCY}"
    )
    host = api.start_host()
    try:
        results["triggers"] = triggers.trigger_figures(
            env,
            api.Client(host.url),
            host,
            sizes["trigger_burst"],
            sizes["trigger_deliveries"],
            sizes["trigger_idle_polls"],
            sizes["trigger_latency"],
            sizes["trigger_cycles"],
        )
    finally:
        host.stop()


def run(sizes: dict[str, int], parts: tuple[str, ...] = report.PARTS) -> dict[str, Any]:
    """Runs the given parts (all by default), in the order of `report.PARTS`."""
    from bench.env import BenchEnv

    results: dict[str, Any] = {"machine": machine.describe(), "sizes": sizes, "parts": parts}
    started = time.perf_counter()
    if "import" in parts:
        _step(f"cold import, {sizes['imports']} fresh interpreters each")
        results["cold_import"] = coldimport.cold_import(sizes["imports"])
    if set(parts) - {"import"}:
        with BenchEnv() as env:
            from connections.services import services

            app_services = services()
            if "api" in parts:
                _api(env, app_services, sizes, results)
            if "sweep" in parts:
                _sweep(env, app_services, sizes, results)
            # Last: the burst leaves its messages in Azurite's queues (see bench/triggers.py).
            if "triggers" in parts:
                _triggers(env, sizes, results)
    results["seconds"] = time.perf_counter() - started
    results["machine"]["load average at end (1 / 5 / 15 min)"] = machine.load_average()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts; nothing written")
    parser.add_argument(
        "--only",
        action="append",
        choices=report.PARTS,
        metavar="PART",
        help="run only this part (repeatable): "
        + "; ".join(
            f"{part}: figure {', '.join(report.PART_FIGURES[part])}" for part in report.PARTS
        )
        + ". Its figures and sections replace theirs in bench/results.md; the rest is kept.",
    )
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])
    _quiet_logs()
    parts = tuple(part for part in report.PARTS if part in (args.only or report.PARTS))
    results = run(QUICK if args.quick else FULL, parts)
    text = report.render(results)
    if parts != report.PARTS and RESULTS.exists():
        text = report.merge(RESULTS.read_text(), text, results)
    print()
    print(text)
    if not args.quick:
        RESULTS.write_text(text)
        print(f"written to {RESULTS.relative_to(Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
