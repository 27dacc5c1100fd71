"""The stand-ins the benchmarks talk to, served from their own process.

`python -m bench.standins STATE_DIR` starts the identity, Key Vault and ServiceNow stand-ins,
prints one JSON line (their URLs and the settings the app needs), then serves until its stdin
closes. Running them in a separate process keeps their request handling off the GIL of the
process being measured, as a real Key Vault and a real instance are.
"""

import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from werkzeug.wsgi import LimitedStream

from localrun import server, tls
from localrun.standins.identity import IdentityStandIn
from localrun.standins.keyvault import KeyVaultStandIn
from localrun.standins.servicenow import ServiceNowStandIn


def _always_at_end() -> int:
    """A descriptor that is always readable and always at its end (a pipe with no writer)."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


class _NoMoreInput(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return 0


class KeepAliveHandler(server._QuietHandler):
    """werkzeug's development server closes every connection after one answer; real Key Vault
    and ServiceNow keep them open, and the SDKs reuse them. Without this, every Key Vault call
    of the measured process would pay a new TLS handshake (and a CA bundle load) that Azure
    does not make it pay.

    What keeping them open takes: the "Connection: close" header is left out; each request's
    body is read to its end (and no further) after the answer; werkzeug's own drain of the
    socket after an answer, which would swallow the next request, is pointed at a source that
    is always at its end; and Nagle's algorithm is off (headers and body are separate writes).
    """

    disable_nagle_algorithm = True
    _at_end = _always_at_end()

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        self._body: LimitedStream | None = None
        if not environ.get("wsgi.input_terminated"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            self._body = LimitedStream(environ["wsgi.input"], length)
            environ["wsgi.input"] = self._body
        # From here to the end of run_wsgi, werkzeug uses these only for its final drain.
        self._connection, self._rfile = self.connection, self.rfile
        self.connection, self.rfile = self._at_end, _NoMoreInput()
        return environ

    def run_wsgi(self) -> None:
        try:
            super().run_wsgi()
        finally:
            if hasattr(self, "_connection"):
                self.connection, self.rfile = self._connection, self._rfile
                del self._connection, self._rfile
        if self._body is None:
            self.close_connection = True  # a chunked body: not worth draining
        else:
            self._body.exhaust()

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close":
            return  # http.server still closes when the client asked to
        super().send_header(keyword, value)


def main() -> int:
    server._QuietHandler = KeepAliveHandler  # type: ignore[misc] -- for the servers made below
    logging.basicConfig(level=logging.WARNING)
    cert_dir = Path(sys.argv[1]) / "tls"
    tls.ensure_certificates(cert_dir)
    identity = IdentityStandIn().start()
    keyvault = KeyVaultStandIn(cert_dir, identity.issuer).start()
    servicenow = ServiceNowStandIn().start()
    ready = {
        "servicenow_url": servicenow.url,
        "keyvault_url": keyvault.url,
        "environment": {
            **identity.environment(),
            "REQUESTS_CA_BUNDLE": str(tls.ca_bundle(cert_dir)),
            "KEY_VAULT_URL": keyvault.url,
        },
    }
    print(json.dumps(ready), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or exits)
    finally:
        servicenow.stop()
        keyvault.stop()
        identity.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
