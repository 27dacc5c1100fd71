"""Small measuring tools: percentiles, process CPU and memory, and a counting table client."""

import json
import math
import os
import re
import resource
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

_STATUS_FIELD = re.compile(r"^(Vm\w+):\s+(\d+) kB", re.MULTILINE)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction 0.5 is the median, 0.95 the p95)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "p50": percentile(seconds, 0.5) * 1000,
        "p95": percentile(seconds, 0.95) * 1000,
        "mean": statistics.fmean(seconds) * 1000,
    }


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of the process and of every live process descended from it (a server
    started through a wrapper does its work in a child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry))
    total, waiting = 0.0, [pid]
    while waiting:
        current = waiting.pop()
        try:
            total += cpu_seconds(current)
        except OSError:
            continue
        waiting += children.get(current, [])
    return total


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent busy so far (/proc/stat: all but idle and
    iowait), whoever used it; with `cpu_seconds` of one's own processes it gives the CPU that
    other users of the machine took."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _memory_status() -> dict[str, int]:
    with open("/proc/self/status") as status:
        return {name: int(kb) for name, kb in _STATUS_FIELD.findall(status.read())}


def rss_kb() -> int:
    return _memory_status()["VmRSS"]


def reset_peak_rss() -> bool:
    """Starts a new peak-RSS measurement (Linux: clear_refs 5 resets VmHWM); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_kb() -> int:
    """The peak resident set since the last reset (VmHWM), else ru_maxrss for the process."""
    status = _memory_status()
    return status.get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class TableCounts:
    """What a set of table clients asked Azure Table storage for, counted per HTTP request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # "<table> <METHOD>"
        self.entities_read: Counter[str] = Counter()  # per table

    def record(self, table: str, method: str, entities: int) -> None:
        with self._lock:
            self.requests[f"{table} {method}"] += 1
            self.entities_read[table] += entities

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def total_read(self) -> int:
        return sum(self.entities_read.values())


class CountingTable:
    """Wraps a TableClient: every call carries a `raw_response_hook` that counts the HTTP
    request and, for reads, the entities the service returned (query pages included)."""

    _COUNTED = frozenset(
        {
            "get_entity",
            "query_entities",
            "list_entities",
            "create_entity",
            "upsert_entity",
            "update_entity",
            "delete_entity",
            "submit_transaction",
        }
    )

    def __init__(self, table: Any, counts: TableCounts) -> None:
        self._table = table
        self._counts = counts
        self._name = table.table_name

    def _hook(self, pipeline_response: Any) -> None:
        method = pipeline_response.http_request.method
        entities = 0
        response = pipeline_response.http_response
        if method == "GET" and response.status_code == 200:
            body = json.loads(response.text() or "null")
            entities = len(body.get("value", [])) if "value" in body else 1
        self._counts.record(self._name, method, entities)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._table, name)
        if name not in self._COUNTED:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            return attribute(*args, raw_response_hook=self._hook, **kwargs)

        return counted
