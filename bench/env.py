"""The benchmark environment: Azurite, the stand-ins in their own process, and the app settings.

`BenchEnv` starts Azurite (tables and queues, in memory: no disk in the measurement) and
`bench.standins` in a subprocess, puts the app settings into `os.environ` and offers the
stand-ins' control APIs (ServiceNow latency, clients and stats; Key Vault call counts; the events
the event receiver got).
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

from localrun.azurite import Azurite, free_ports
from localrun.settings import PROJECT_ROOT
from localrun.stack import _OTHER_CREDENTIAL_VARIABLES

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-secret-value"  # noqa: S105 -- a stand-in's client secret
KEEP_ALIVE_SECONDS = "240"  # Azure Load Balancer's default idle timeout: 4 minutes


class MemoryAzurite(Azurite):
    """Azurite that keeps its data in memory, so disk writes are not part of what is measured.

    Its idle connections are kept for minutes rather than its default 5 s, as Azure's front
    ends keep them: with 5 s, a pooled connection the SDK reuses just as Azurite closes it
    fails the call (`Connection reset by peer`, not retried for a POST), which a busy machine
    made frequent enough to stop whole runs.
    """

    def _command(self) -> list[str]:
        command = super()._command()
        at = command.index("--location")
        kept = ["--tableKeepAliveTimeout", KEEP_ALIVE_SECONDS]
        kept += ["--queueKeepAliveTimeout", KEEP_ALIVE_SECONDS]
        return [*command[:at], *command[at + 2 :], "--inMemoryPersistence", *kept]


class BenchEnv:
    def __init__(self) -> None:
        self._temp = tempfile.TemporaryDirectory(prefix="bench-")
        self.state_dir = Path(self._temp.name)
        self.azurite = MemoryAzurite(self.state_dir / "azurite", *free_ports(3))
        self._standins: subprocess.Popen[str] | None = None
        self.servicenow_url = ""
        self.keyvault_url = ""
        self.events_url = ""
        self.environment: dict[str, str] = {}
        self._saved_environ: dict[str, str] = {}
        self._http = requests.Session()
        self._http.trust_env = False

    def start(self) -> "BenchEnv":
        self.azurite.start()
        self._standins = subprocess.Popen(  # noqa: S603 -- our own module, fixed arguments
            [sys.executable, "-m", "bench.standins", str(self.state_dir)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._standins.stdout is not None
        line = self._standins.stdout.readline()
        if not line:
            raise RuntimeError("bench.standins did not start")
        ready = json.loads(line)
        self.servicenow_url = ready["servicenow_url"]
        self.keyvault_url = ready["keyvault_url"]
        self.events_url = ready["events_url"]
        self.environment = {
            **ready["environment"],
            "AzureWebJobsStorage": self.azurite.connection_string,
            "ALLOW_LOCAL_INSTANCES": "true",
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "RENEWAL_SCHEDULE": "0 */5 * * * *",
            "TRIGGER_SCHEDULE": "*/30 * * * * *",
        }
        self._http.verify = self.environment["REQUESTS_CA_BUNDLE"]
        self._saved_environ = dict(os.environ)
        for name in _OTHER_CREDENTIAL_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(self.environment)
        self.servicenow(
            "POST", "/_control/clients", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )
        return self

    def stop(self) -> None:
        if self._standins is not None:
            with contextlib.suppress(OSError):
                assert self._standins.stdin is not None
                self._standins.stdin.close()
            try:
                self._standins.wait(15)
            except subprocess.TimeoutExpired:
                self._standins.kill()
                self._standins.wait()
            self._standins = None
        self.azurite.stop()
        if self._saved_environ:
            os.environ.clear()
            os.environ.update(self._saved_environ)
        self._temp.cleanup()

    def __enter__(self) -> "BenchEnv":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server_pids(self) -> dict[str, int]:
        """The processes serving the app besides itself: Azurite and the stand-ins."""
        assert self.azurite._process is not None and self._standins is not None
        return {"azurite": self.azurite._process.pid, "stand-ins": self._standins.pid}

    # -- the stand-ins' control APIs ----------------------------------------------------------

    def servicenow(self, method: str, path: str, **body: Any) -> Any:
        response = self._http.request(method, self.servicenow_url + path, json=body or None)
        response.raise_for_status()
        return response.json()

    def set_token_latency(self, seconds: float) -> None:
        self.servicenow("POST", "/_control/latency", seconds=seconds, scope="token")

    def token_exchanges(self) -> int:
        stats = self.servicenow("GET", "/_control/stats")
        return sum(stats["token_exchanges"].get(CLIENT_ID, {}).values())

    def vault_calls(self) -> dict[str, int]:
        response = self._http.get(self.keyvault_url + "/_control/stats")
        response.raise_for_status()
        return dict(response.json()["calls"])

    def reset_vault_counts(self) -> None:
        self._http.post(self.keyvault_url + "/_control/reset", json={}).raise_for_status()

    def event_arrivals(self, trigger_id: str) -> list[list[Any]]:
        """What the event receiver got of the trigger's events: `[event_id, trigger_id, status,
        signature_valid, duplicate, at]` each, oldest first (`at`: epoch seconds)."""
        response = self._http.get(
            self.events_url + "/_control/arrivals", params={"trigger_id": trigger_id}
        )
        response.raise_for_status()
        return list(response.json()["arrivals"])
