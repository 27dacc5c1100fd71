"""Stand-in for the managed-identity endpoint that the Azure Functions / App Service host exposes.

In Azure the host sets IDENTITY_ENDPOINT and IDENTITY_HEADER; azure-identity (through MSAL) then
sends `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<resource>[&client_id=<id>]` with
the header `X-IDENTITY-HEADER: {IDENTITY_HEADER}` over plain http on loopback, and reads
`{"access_token", "expires_on", "resource", "token_type", "client_id"}`.

Tokens are opaque: base64url JSON claims `{resource, client_id, exp}`, a dot, and an HMAC of the
claims under the issuer's random key. Stand-ins for the resources (Key Vault) share the
`TokenIssuer` and call `verify`, the way a real resource checks Entra ID's signature.
"""

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from werkzeug.wrappers import Request, Response

from localrun.server import BackgroundServer, ServedStandIn, json_reply

log = logging.getLogger(__name__)

API_VERSION = "2019-08-01"
TOKEN_PATH = "/msi/token"
DEFAULT_LIFETIME = 24 * 3600  # seconds; managed-identity tokens live about a day


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _same_resource(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


class TokenIssuer:
    """Issues and verifies the stand-in access tokens (HMAC-signed, bound to one resource)."""

    def __init__(self, lifetime: int = DEFAULT_LIFETIME) -> None:
        self.lifetime = lifetime
        self._key = secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return _b64encode(digest)

    def issue(self, resource: str, client_id: str, now: float | None = None) -> tuple[str, int]:
        """Returns (token, expires_on in epoch seconds)."""
        expires_on = int(time.time() if now is None else now) + self.lifetime
        claims = {"resource": resource, "client_id": client_id, "exp": expires_on}
        payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}", expires_on

    def verify(self, token: str, resource: str, now: float) -> bool:
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        try:
            claims = json.loads(_b64decode(payload))
            expires_on = int(claims["exp"])
            audience = str(claims["resource"])
        except (ValueError, KeyError, TypeError):
            return False
        return _same_resource(audience, resource) and now < expires_on


def _error(status: int, message: str) -> Response:
    """The App Service token endpoint's error shape."""
    return json_reply({"statusCode": status, "message": message}, status)


class IdentityStandIn(ServedStandIn):
    """Serves the managed-identity token endpoint over http on loopback."""

    label = "identity stand-in"

    def __init__(
        self,
        issuer: TokenIssuer | None = None,
        header_secret: str | None = None,
        client_id: str | None = None,
        port: int = 0,
    ) -> None:
        self.issuer = issuer or TokenIssuer()
        self.header_secret = header_secret or secrets.token_urlsafe(24)
        self.client_id = client_id or str(uuid.uuid4())
        self._lock = threading.Lock()
        self._issued = 0
        self._server = BackgroundServer(self._app, port=port, name="identity-standin")
        self.url = self._server.url + TOKEN_PATH

    def environment(self) -> dict[str, str]:
        """The settings the Functions host would give the app."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header_secret}

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self._issued

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        log.info(
            "identity: token for %s -> %d", request.args.get("resource", "-"), response.status_code
        )
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        if request.path.rstrip("/") != TOKEN_PATH:
            return _error(404, "Not found")
        if request.method != "GET":
            return _error(405, "Method not allowed")
        presented = request.headers.get("X-IDENTITY-HEADER")
        if not presented:
            return _error(400, "Missing X-IDENTITY-HEADER")
        if not hmac.compare_digest(presented.encode(), self.header_secret.encode()):
            return _error(401, "The X-IDENTITY-HEADER is not valid")
        if request.args.get("api-version") != API_VERSION:
            return _error(400, f"api-version must be {API_VERSION}")
        resource = request.args.get("resource", "")
        if not resource:
            return _error(400, "Missing resource")
        client_id = request.args.get("client_id") or self.client_id
        token, expires_on = self.issuer.issue(resource, client_id)
        with self._lock:
            self._issued += 1
        return json_reply(
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }
        )
