"""Everything the function app talks to, started locally: Azurite and the stand-ins.

The run command and the integration tests both use `LocalStack`; `settings()` gives the app
settings (exactly the names used in Azure) that point the app at the stand-ins.
"""

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from localrun import tls
from localrun.azurite import Azurite, free_ports
from localrun.standins.identity import IdentityStandIn
from localrun.standins.keyvault import KeyVaultStandIn
from localrun.standins.receivers import EventReceiver, GraphStandIn, WebhookReceiver
from localrun.standins.servicenow import ServiceNowStandIn

log = logging.getLogger(__name__)

AZURITE_FOLDER = "azurite"  # in the state dir: Azurite's data, log and pid record
GRAPH_TENANT_ID = "00000000-0000-4000-8000-00000000a365"
GRAPH_CLIENT_ID = "automate365-notifier"
GRAPH_SENDER = "automate365@contoso.example"
# Variables that would make DefaultAzureCredential pick another credential than the
# host's managed identity endpoint, which the stack provides.
_OTHER_CREDENTIAL_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_TOKEN_CREDENTIALS",
    "IDENTITY_SERVER_THUMBPRINT",
    "MSI_ENDPOINT",
)


class LocalStack:
    def __init__(
        self,
        state_dir: Path,
        *,
        azurite_ports: tuple[int, int, int] | None = None,
        azurite: Azurite | None = None,
        servicenow_port: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.cert_dir = self.state_dir / "tls"
        self._own_azurite = azurite is None
        ports = azurite_ports or tuple(free_ports(3))
        self.azurite = azurite or Azurite(self.state_dir / AZURITE_FOLDER, *ports)
        self.identity = IdentityStandIn()
        self.keyvault = KeyVaultStandIn(
            self.cert_dir, self.identity.issuer, folder=self.state_dir / "keyvault"
        )
        self.servicenow = ServiceNowStandIn(clock=clock)
        self._servicenow_port = servicenow_port
        self.webhook_secret = secrets.token_urlsafe(24)
        self.webhook = WebhookReceiver(self.webhook_secret)
        self.event_webhook_secret = secrets.token_urlsafe(24)
        self.event_webhook = EventReceiver(self.event_webhook_secret)
        self.graph_secret = secrets.token_urlsafe(24)
        self.graph = GraphStandIn(
            GRAPH_TENANT_ID, GRAPH_CLIENT_ID, self.graph_secret, self.cert_dir
        )

    def start(self) -> "LocalStack":
        tls.ensure_certificates(self.cert_dir)
        if self._own_azurite:
            self.azurite.start()
        self.identity.start()
        self.keyvault.start()
        self.servicenow.start(self._servicenow_port)
        self.webhook.start()
        self.event_webhook.start()
        self.graph.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the stand-ins, then Azurite (killed if it has not ended within `timeout`)."""
        parts = (
            self.graph,
            self.event_webhook,
            self.webhook,
            self.servicenow,
            self.keyvault,
            self.identity,
        )
        for part in parts:
            part.stop()
        if self._own_azurite:
            self.azurite.stop(timeout)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings(self) -> dict[str, str]:
        """App settings pointing at the stand-ins; the environment and local.settings.json win."""
        return {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "AzureWebJobsStorage": self.azurite.connection_string,
            "KEY_VAULT_URL": self.keyvault.url,
            "RENEWAL_SCHEDULE": "0 */5 * * * *",
            "TRIGGER_SCHEDULE": "*/30 * * * * *",
            "NOTIFY_WEBHOOK_URL": self.webhook.url,
            "NOTIFY_WEBHOOK_SECRET": self.webhook_secret,
            "EVENTS_WEBHOOK_URL": self.event_webhook.url,
            "EVENTS_WEBHOOK_SECRET": self.event_webhook_secret,
            "GRAPH_TENANT_ID": GRAPH_TENANT_ID,
            "GRAPH_CLIENT_ID": GRAPH_CLIENT_ID,
            "GRAPH_CLIENT_SECRET": self.graph_secret,
            "GRAPH_SENDER": GRAPH_SENDER,
            "GRAPH_AUTHORITY_HOST": self.graph.authority_host,
            "GRAPH_API_URL": self.graph.api_url,
            "ALLOW_LOCAL_INSTANCES": "true",
        }

    def process_environment(self) -> dict[str, str]:
        """What the Functions host itself gives the worker process: the managed identity
        endpoint, and trust in the local CA (on top of the public roots) for the HTTPS
        stand-ins. These are set whatever the environment says."""
        return {
            **self.identity.environment(),
            "REQUESTS_CA_BUNDLE": str(tls.ca_bundle(self.cert_dir)),
        }

    def apply_process_environment(self) -> None:
        for name in _OTHER_CREDENTIAL_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(self.process_environment())
