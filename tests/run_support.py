"""The run command (`python -m localrun`) started by a test: its output, its ports, and what it
leaves behind once it has ended."""

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from localrun.azurite import Azurite, free_ports
from localrun.children import die_with_parent
from localrun.stack import AZURITE_FOLDER

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "Press Ctrl-C to stop everything."
FUNCTION_KEY = "run-function-key"
MASTER_KEY = "run-master-key"
_PORTS = re.compile(r"127\.0\.0\.1:(\d+)|(?:blob|queue|table) (\d+)")


class RunCommand:
    """The run command on free ports with its state in `state_dir`. It runs in a session of its
    own (its process group is its pid) and dies with the test session."""

    def __init__(self, state_dir: Path, stack, ports: tuple[int, int] | None = None) -> None:
        """`ports`: the app's and the ServiceNow stand-in's (default: free ones)."""
        self.state_dir = state_dir
        self.port, self.servicenow_port = ports or free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.servicenow_url = f"http://127.0.0.1:{self.servicenow_port}"
        self.banner = ""
        # What the test session's own stack put into the environment would win over the run
        # command's defaults, so the run command gets the environment without it.
        ours = set(stack.settings()) | set(stack.process_environment())
        environment = dict(
            {name: value for name, value in os.environ.items() if name not in ours},
            LOCAL_PORT=str(self.port),
            LOCAL_SERVICENOW_PORT=str(self.servicenow_port),
            LOCAL_STATE_DIR=str(state_dir),
            LOCAL_FUNCTION_KEY=FUNCTION_KEY,
            LOCAL_MASTER_KEY=MASTER_KEY,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localrun"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Reads the output up to the first line (after those read before) holding `text`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"no {text!r} before the output ended:\n{self.text()}")
            self.output.append(line)
            if text in line:
                return line

    def wait_for_banner(self) -> str:
        start = len(self.output)
        self.wait_for(READY_LINE)
        self.banner = "".join(self.output[start:])
        return self.banner

    def text(self) -> str:
        """Everything read so far, and the rest once the run command has ended."""
        if self.process.poll() is not None:
            while (line := self._lines.get(timeout=10)) is not None:
                self.output.append(line)
            self._lines.put(None)
        return "".join(self.output)

    def storage(self) -> str:
        """The connection string of the run command's Azurite, from the banner."""
        found = re.search(r"blob (\d+), queue (\d+), table (\d+)", self.banner)
        assert found, self.banner
        ports = [int(port) for port in found.groups()]
        return Azurite(self.state_dir / AZURITE_FOLDER, *ports).connection_string

    def ports(self) -> set[int]:
        """Every port the banner names: the app's, the stand-ins' and Azurite's."""
        return {int(a or b) for a, b in _PORTS.findall(self.banner)}

    def kill(self) -> None:
        """SIGKILL, if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def leftovers(self) -> list[str]:
        """What is still there of the run command: processes in its process group or naming its
        state folder (Azurite's does), and ports of its banner that still accept connections."""
        found = [f"process {pid} in its group" for pid in processes_in_group(self.process.pid)]
        found += [f"process {pid}" for pid in processes_mentioning(str(self.state_dir))]
        return found + [f"port {port}" for port in sorted(self.ports()) if accepts(port)]

    def wait_until_nothing_left(self, timeout: float = 10.0) -> list[str]:
        """Polls `leftovers` until there are none or `timeout` passes; returns the last."""
        deadline = time.monotonic() + timeout
        while (found := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found


def _proc_entries() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in _proc_entries():
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in command_line:
            found.append(int(entry.name))
    return found


def processes_in_group(group: int) -> list[int]:
    """Live (not zombie) processes whose process group is `group`."""
    found = []
    for entry in _proc_entries():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(entry.name))
    return found


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0
