"""The load generator of figure 7, in a process of its own, and the handle the bench holds on it.

`python -m bench.load` reads one JSON plan a line on stdin, runs it, prints one JSON line with
its timings, and ends when stdin closes. Generating the load here keeps the client's CPU and GIL
out of the process being measured (the bench process serves the app). Every call, direct or
proxied, is the same client code: `requests`, a new session and so a new connection per call
(the local runner closes each connection after its answer, so keeping connections alive could
only help the direct side).

Plans (a target is `{"url": ..., "headers": {...}}`):

- `{"kind": "sequence", "targets": [...], "calls": n}`: n rounds, each calling every target
  once, one after another, the order rotating each round. Answers `seconds` (a list of the
  call times per target), `statuses` and `cpu` (this process's CPU seconds).
- `{"kind": "concurrent", "target": {...}, "calls": n, "concurrency": c}`: n calls, c at a time.
  Answers `seconds` (wall time), `statuses` and `cpu`.
"""

import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from localrun.settings import PROJECT_ROOT

TIMEOUT = 30


def call(target: dict[str, Any]) -> tuple[float, int]:
    """One GET on a new connection: its time, body read, and its status."""
    started = time.perf_counter()
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(target["url"], headers=target["headers"], timeout=TIMEOUT)
        _ = response.content
    return time.perf_counter() - started, response.status_code


def sequence(targets: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    seconds: list[list[float]] = [[] for _ in targets]
    statuses: Counter[int] = Counter()
    for round_number in range(calls):
        for step in range(len(targets)):
            index = (round_number + step) % len(targets)
            elapsed, status = call(targets[index])
            seconds[index].append(elapsed)
            statuses[status] += 1
    return {"seconds": seconds, "statuses": statuses}


def concurrent(target: dict[str, Any], calls: int, concurrency: int) -> dict[str, Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        answers = list(pool.map(lambda _: call(target), range(calls)))
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "statuses": Counter(status for _, status in answers)}


def run(plan: dict[str, Any]) -> dict[str, Any]:
    cpu_before = time.process_time()
    if plan["kind"] == "sequence":
        result = sequence(plan["targets"], plan["calls"])
    else:
        result = concurrent(plan["target"], plan["calls"], plan["concurrency"])
    return {**result, "cpu": time.process_time() - cpu_before}


class LoadProcess:
    """`python -m bench.load` in a subprocess: `run(plan)` sends one plan and waits for its
    timings; `with` starts and stops it."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> "LoadProcess":
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.load"],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is None:
            return
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def run(self, plan: dict[str, Any]) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(plan) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("bench.load stopped without an answer")
        result = json.loads(line)
        result["statuses"] = {int(status): count for status, count in result["statuses"].items()}
        return result


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(run(json.loads(line))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
