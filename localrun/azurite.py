"""Azurite (local Azure Storage) from the project's node_modules, started and stopped in-process.

Azurite dies with the process that started it, even by SIGKILL (`die_with_parent`), and its pid
is recorded in its folder while it runs: a start that finds the record of one that is still
running (a run whose parent could not stop it) says so and stops it, if the pid is still that
Azurite and not a process that reused the pid.
"""

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from localrun.children import die_with_parent, identity, stop_process
from localrun.settings import PROJECT_ROOT

log = logging.getLogger(__name__)

ACCOUNT_NAME = "devstoreaccount1"
# The well-known development storage key, published in Microsoft's Azurite documentation.
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
LOG_FILE = "azurite.log"
PID_FILE = "azurite.pid"  # {"pid", "start_time", "command_line"} of the Azurite serving the folder


class AzuriteError(RuntimeError):
    pass


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Azurite:
    def __init__(
        self,
        folder: Path,
        blob_port: int = 10000,
        queue_port: int = 10001,
        table_port: int = 10002,
        *,
        host: str = "127.0.0.1",
        project_root: Path = PROJECT_ROOT,
    ) -> None:
        self.folder = Path(folder)
        self.host = host
        self.blob_port, self.queue_port, self.table_port = blob_port, queue_port, table_port
        self.executable = project_root / "node_modules" / ".bin" / "azurite"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.blob_port, self.queue_port, self.table_port

    @property
    def connection_string(self) -> str:
        endpoint = f"http://{self.host}:{{port}}/{ACCOUNT_NAME}"
        return ";".join(
            [
                "DefaultEndpointsProtocol=http",
                f"AccountName={ACCOUNT_NAME}",
                f"AccountKey={ACCOUNT_KEY}",
                "BlobEndpoint=" + endpoint.format(port=self.blob_port),
                "QueueEndpoint=" + endpoint.format(port=self.queue_port),
                "TableEndpoint=" + endpoint.format(port=self.table_port),
            ]
        )

    def start(self, timeout: float = 30.0) -> "Azurite":
        if not self.executable.exists():
            raise AzuriteError(f"{self.executable} is missing; run scripts/setup (npm ci)")
        clear_leftover(self.folder)
        busy = [port for port in self.ports if _accepts(self.host, port)]
        if busy:
            raise AzuriteError(f"port(s) {busy} already in use; is another Azurite running?")
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOG_FILE, "ab") as log_file:
            # Its own session: Ctrl-C in the terminal reaches the run command, which stops the
            # app before Azurite.
            self._process = subprocess.Popen(  # noqa: S603 -- our own fixed command line
                self._command(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        self._wait_until_ready(self._process, timeout)
        _write_record(self.folder / PID_FILE, self._process.pid)
        return self

    def _command(self) -> list[str]:
        return [
            str(self.executable),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--location",
            str(self.folder),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            self.host,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            self.host,
            "--tablePort",
            str(self.table_port),
        ]

    def _wait_until_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if process.poll() is not None:
                raise AzuriteError(f"Azurite exited with {process.returncode}: {self._log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AzuriteError(f"Azurite did not open {waiting} within {timeout}s")
            waiting = [port for port in waiting if not _accepts(self.host, port)]
            if waiting:
                time.sleep(0.05)

    def _log(self) -> str:
        path = self.folder / LOG_FILE
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        (self.folder / PID_FILE).unlink(missing_ok=True)

    def __enter__(self) -> "Azurite":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signum)


def _write_record(path: Path, pid: int) -> None:
    found = identity(pid)
    if found is not None:
        start_time, command_line = found
        record = {"pid": pid, "start_time": start_time, "command_line": command_line}
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return {**record, "pid": int(record["pid"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_leftover(folder: Path, timeout: float = 5.0) -> None:
    """Stops the Azurite an earlier run left serving `folder`, if its record there names a
    process that is still that Azurite (same pid, start time and command line); says what it
    found either way, and forgets the record."""
    path = Path(folder) / PID_FILE
    record = _read_record(path)
    if record is None:
        path.unlink(missing_ok=True)
        return
    pid, found = record["pid"], identity(record["pid"])
    if found == (record.get("start_time"), record.get("command_line")):
        log.warning("Azurite (pid %d) was left running by an earlier run; stopping it", pid)
        if not stop_process(pid, timeout):
            raise AzuriteError(f"the Azurite an earlier run left running (pid {pid}) did not stop")
    elif found is not None:
        log.warning(
            "an earlier run did not stop its Azurite (pid %d), which has ended; that pid is now "
            "another process, left alone",
            pid,
        )
    else:
        log.warning("an earlier run did not stop its Azurite (pid %d), which has ended", pid)
    path.unlink(missing_ok=True)
