"""The README's run command: everything up within a minute, and nothing left after Ctrl-C."""

import json
import os
import queue
import re
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
        create = json.loads(re.search(r"-d '(\{\"type.*?API token.*?\})'", banner).group(1))
        created = requests.post(
            f"{base}/api/tenants/contoso/connections", json=create, headers=key, timeout=30
        )
        assert created.status_code == 201, created.text
        assert created.json()["status"] == "connected"
        admin = requests.post(
            f"{base}/admin/functions/renewal_sweep",
            json={"input": ""},
            headers={"x-functions-key": "run-master-key"},
            timeout=10,
        )
        assert admin.status_code == 202
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert _processes_mentioning(str(tmp_path)) == []
