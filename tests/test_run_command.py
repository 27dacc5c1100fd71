"""The README's run command: everything up within a minute, and nothing left after Ctrl-C."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import requests

from localrun.azurite import free_ports

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "Press Ctrl-C to stop everything."


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _wait_for_banner(lines: queue.Queue, timeout: float = 60.0) -> str:
    seen = []
    while True:
        line = lines.get(timeout=timeout)
        if line is None:
            raise AssertionError("the run command ended early:\n" + "".join(seen))
        seen.append(line)
        if READY_LINE in line:
            return "".join(seen)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command_line:
            found.append(int(entry.name))
    return found


def test_run_command_serves_everything_and_stops_cleanly(tmp_path, stack):
    port, servicenow_port = free_ports(2)
    # What the test session's own stack put into the environment would win over the run
    # command's defaults, so the run command gets the environment without it.
    ours = set(stack.settings()) | set(stack.process_environment())
    environment = dict(
        {name: value for name, value in os.environ.items() if name not in ours},
        LOCAL_PORT=str(port),
        LOCAL_SERVICENOW_PORT=str(servicenow_port),
        LOCAL_STATE_DIR=str(tmp_path),
        LOCAL_FUNCTION_KEY="run-function-key",
        LOCAL_MASTER_KEY="run-master-key",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "localrun"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    try:
        banner = _wait_for_banner(lines)
        base = f"http://127.0.0.1:{port}"
        assert "run-function-key" in banner and "run-master-key" in banner
        assert requests.get(f"{base}/api/health", timeout=10).status_code == 200
        types_url = f"{base}/api/connection-types"
        assert requests.get(types_url, timeout=10).status_code == 401
        key = {"x-functions-key": "run-function-key"}
        assert requests.get(types_url, headers=key, timeout=10).status_code == 200
        quick_start = banner.split("Quick start (copy and paste):", 1)[1].split(READY_LINE)[0]
        ran = subprocess.run(  # noqa: S603 -- the banner's own commands, on loopback
            ["bash", "-euo", "pipefail", "-c", quick_start],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        _assert_quick_start_worked(ran.stdout)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert _processes_mentioning(str(tmp_path)) == []


def _assert_quick_start_worked(output: str) -> None:
    """What the quick start shows: both connections connected, the wrong secret refused, the
    catalog request read and its work note written through the proxy, the calls listed, a
    trigger's event for a new request at the engine's webhook, and the sweep started."""
    documents = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    created = [d for d in documents if d.get("type") == "servicenow"]  # the API token's id is kept
    assert [c["status"] for c in created] == ["connected"]
    listed = next(d for d in documents if d.get("items") and "status" in d["items"][0])
    assert [item["status"] for item in listed["items"]] == ["connected", "connected"]
    assert next(d for d in documents if "error" in d)["error"]["code"] == "credentials_rejected"
    read, written, request = [d["result"] for d in documents if "result" in d]
    assert read[0]["variables.team_name"] == "Marketing"
    assert read[0]["number"].startswith("RITM")
    assert written["sys_mod_count"] == "1" and written["sys_id"] == read[0]["sys_id"]
    calls = next(d for d in documents if d.get("items") and "method" in d["items"][0])
    assert [(c["method"], c["status"]) for c in calls["items"]] == [("PATCH", 200), ("GET", 200)]
    # the trigger: the new request's signed event at the engine, listed, and read by the proxy
    received = next(d for d in documents if "received" in d)["received"]
    assert all(d["signature_valid"] and d["status"] == 204 for d in received)
    (delivery,) = [d for d in received if d["body"]["record"]["variables.team_name"] == "Sales"]
    assert delivery["body"]["change"] == "created"
    # the work note written through the proxy (in the trigger's first second) is one too
    events = next(d for d in documents if d.get("items") and "event_id" in d["items"][0])
    listed = [event["event_id"] for event in events["items"]]
    assert delivery["body"]["event_id"] in listed and len(listed) == len(received)
    assert request["variables.team_name"] == "Sales"
    assert request["number"] == delivery["body"]["number"]
    assert output.rstrip().endswith("202")
