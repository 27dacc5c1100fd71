"""The stand-ins the benchmarks talk to, served from their own process.

`python -m bench.standins STATE_DIR` starts the identity, Key Vault and ServiceNow stand-ins and
the event receiver (the Automate365 engine's webhook), prints one JSON line (their URLs and the
settings the app needs), then serves until its stdin closes. Running them in a separate process
keeps their request handling off the GIL of the process being measured, as a real Key Vault, a
real instance and a real engine are.
"""

import hmac
import io
import json
import logging
import os
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any

from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import LimitedStream

from localrun import server, tls
from localrun.server import json_reply
from localrun.standins.identity import IdentityStandIn
from localrun.standins.keyvault import KeyVaultStandIn
from localrun.standins.receivers import EventReceiver, sign
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


class BenchEventReceiver(EventReceiver):
    """The stack's event receiver with the same checks (`X-Signature` the HMAC-SHA256 of the body
    with the secret, `X-Event-Id` equal to the body's `event_id`: 204, else 401 or 400), keeping
    per POST only what the bench reads: the event and trigger ids, the status, the signature
    check, whether an accepted id came again, and when it arrived (`time.time()`, for latency).
    A repeat is found in a set: the stock receiver scans every delivery it holds, which for
    10,000 events would cost the receiver more than the rest of each request.

    `GET /_control/arrivals?trigger_id=<id>` lists them (`[event_id, trigger_id, status,
    signature_valid, duplicate, at]`); `POST /_control/reset` forgets them."""

    def __init__(self, secret: str) -> None:
        super().__init__(secret)
        self._lock = threading.Lock()
        self._accepted: set[str] = set()
        self._arrivals: list[list[Any]] = []

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/_control/"):
            return self._bench_control(request)
        arrived = time.time()
        if request.method != "POST":
            return json_reply({"error": "method not allowed"}, 405, {"Allow": "POST"})
        raw = request.get_data(cache=False)
        valid = hmac.compare_digest(
            request.headers.get("X-Signature", "").encode(), sign(self.secret, raw).encode()
        )
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        event_id = request.headers.get(self.id_header)
        status, extra, problem = self._decide(valid, body, event_id)
        trigger_id = body.get("trigger_id") if isinstance(body, dict) else None
        with self._lock:
            duplicate = status == 204 and event_id in self._accepted
            if status == 204:
                self._accepted.add(str(event_id))
            self._arrivals.append([event_id, trigger_id, status, valid, duplicate, arrived])
        if status == 204:
            return Response(status=204)
        return json_reply({"error": problem}, status, extra)

    def _bench_control(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/_control/arrivals":
            wanted = request.args.get("trigger_id")
            with self._lock:
                arrivals = [a for a in self._arrivals if wanted is None or a[1] == wanted]
            return json_reply({"arrivals": arrivals})
        if request.method == "POST" and request.path == "/_control/reset":
            with self._lock:
                self._accepted.clear()
                self._arrivals.clear()
            return json_reply({})
        return json_reply({"error": "not found"}, 404)


def main() -> int:
    server._QuietHandler = KeepAliveHandler  # type: ignore[misc] -- for the servers made below
    logging.basicConfig(level=logging.WARNING)
    cert_dir = Path(sys.argv[1]) / "tls"
    tls.ensure_certificates(cert_dir)
    identity = IdentityStandIn().start()
    keyvault = KeyVaultStandIn(cert_dir, identity.issuer).start()
    servicenow = ServiceNowStandIn().start()
    events = BenchEventReceiver(secrets.token_hex(32)).start()
    ready = {
        "servicenow_url": servicenow.url,
        "keyvault_url": keyvault.url,
        "events_url": events.url,
        "environment": {
            **identity.environment(),
            "REQUESTS_CA_BUNDLE": str(tls.ca_bundle(cert_dir)),
            "KEY_VAULT_URL": keyvault.url,
            "EVENTS_WEBHOOK_URL": events.url,
            "EVENTS_WEBHOOK_SECRET": events.secret,
        },
    }
    print(json.dumps(ready), flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin (or exits)
    finally:
        events.stop()
        servicenow.stop()
        keyvault.stop()
        identity.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
