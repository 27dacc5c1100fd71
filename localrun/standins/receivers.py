"""Stand-ins for where notices and events go: webhook receivers and Microsoft Graph (tokens and
sendMail).

`WebhookReceiver` (notices, `X-Notice-Id`) and `EventReceiver` (trigger events, `X-Event-Id`)
check the `X-Signature` HMAC the way a customer's receiver or the Automate365 engine would.
`GraphStandIn` serves the Entra ID endpoints MSAL's client-credentials flow calls and Graph
`sendMail`, over HTTPS with the local CA (MSAL only accepts https authorities). Both record what
they receive, log one line per request, can be told to fail the next N requests, and let tests
wait for deliveries with `wait_for` instead of sleeping.
"""

import base64
import datetime
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote_plus

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from localrun.server import BackgroundServer, ServedStandIn, json_reply
from localrun.tls import server_context

log = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_AUDIENCE = "https://graph.microsoft.com"


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Record(Protocol):
    @property
    def accepted(self) -> bool: ...


R = TypeVar("R", bound=_Record)


class _Recorder(Generic[R]):
    """A thread-safe list of records that tests can wait on."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._items: list[R] = []
        self._changed = threading.Condition()

    def add(self, item: R) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def items(self) -> list[R]:
        with self._changed:
            return list(self._items)

    def clear(self) -> None:
        with self._changed:
            self._items.clear()

    def wait_for(self, count: int, timeout: float, accepted_only: bool) -> list[R]:
        def matching() -> list[R]:
            return [i for i in self._items if i.accepted or not accepted_only]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count, timeout):
                raise TimeoutError(
                    f"waited {timeout}s for {count} {self._what}"
                    f"{' (accepted)' if accepted_only else ''}, got {len(matching())}: "
                    f"{self._items!r}"
                )
            return matching()


class _FailPlan:
    """Answers the next `count` requests with `status` instead of handling them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._status = 500
        self._retry_after: int | None = None

    def set(self, count: int, status: int, retry_after: int | None) -> None:
        with self._lock:
            self._count, self._status, self._retry_after = count, status, retry_after

    def take(self) -> tuple[int, int | None] | None:
        with self._lock:
            if self._count <= 0:
                return None
            self._count -= 1
            return self._status, self._retry_after


def _retry_headers(retry_after: int | None) -> dict[str, str]:
    return {"Retry-After": str(retry_after)} if retry_after is not None else {}


def _wsgi(handle: Callable[[Request], Response]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        try:
            response = handle(request)
        except HTTPException as error:
            response = error.get_response()
        return response(environ, start_response)

    return app


# --- Webhook receiver -------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The `X-Signature` value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    """One POST a receiver got. `id` is its `X-Notice-Id` (notice receiver) or `X-Event-Id`
    (event receiver); `id_field` names which, as the body's field and in `to_json`."""

    id: str | None
    body: Any
    headers: dict[str, str]
    signature_valid: bool
    status: int
    path: str
    duplicate: bool
    id_field: str = "notice_id"
    received_at: str = field(default_factory=_now_iso)

    @property
    def accepted(self) -> bool:
        return self.status == 204

    @property
    def notice_id(self) -> str | None:
        return self.id if self.id_field == "notice_id" else None

    @property
    def event_id(self) -> str | None:
        return self.id if self.id_field == "event_id" else None

    def to_json(self) -> dict[str, Any]:
        return {
            self.id_field: self.id,
            "body": self.body,
            "headers": self.headers,
            "signature_valid": self.signature_valid,
            "status": self.status,
            "path": self.path,
            "duplicate": self.duplicate,
            "received_at": self.received_at,
        }


class WebhookReceiver(ServedStandIn):
    """Receives signed notice POSTs on plain http: 204 when the signature is valid, 401 when not.

    A valid delivery also needs a JSON body whose `notice_id` equals `X-Notice-Id` (else 400).
    A repeated notice id is still answered 204 and recorded with `duplicate=True`.
    `GET /_control/received` lists every POST received.
    """

    label = "webhook receiver"
    id_header = "X-Notice-Id"
    id_field = "notice_id"
    server_name = "webhook-receiver"

    def __init__(self, secret: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.secret = secret
        self._recorder: _Recorder[Delivery] = _Recorder(f"{self.label} deliveries")
        self._fail = _FailPlan()
        self._server = BackgroundServer(_wsgi(self._handle), host, port, name=self.server_name)
        self.url: str = self._server.url

    @property
    def received(self) -> list[Delivery]:
        return self._recorder.items()

    @property
    def delivered(self) -> list[Delivery]:
        return [d for d in self._recorder.items() if d.accepted]

    def wait_for(
        self, count: int, timeout: float = 5.0, *, accepted_only: bool = False
    ) -> list[Delivery]:
        """Blocks until `count` deliveries (only accepted ones if asked) have arrived."""
        return self._recorder.wait_for(count, timeout, accepted_only)

    def fail_next(self, count: int, status: int = 500, retry_after: int | None = None) -> None:
        self._fail.set(count, status, retry_after)

    def reset(self) -> None:
        self._recorder.clear()
        self._fail.set(0, 500, None)

    def _handle(self, request: Request) -> Response:
        if request.path.startswith("/_control/"):
            return self._control(request)
        if request.method != "POST":
            return json_reply({"error": "method not allowed"}, 405, {"Allow": "POST"})
        raw = request.get_data(cache=False)
        signature_valid = hmac.compare_digest(
            request.headers.get("X-Signature", "").encode(), sign(self.secret, raw).encode()
        )
        body = _json_or_none(raw)
        delivery_id = request.headers.get(self.id_header)
        status, extra, problem = self._decide(signature_valid, body, delivery_id)
        duplicate = status == 204 and any(d.id == delivery_id for d in self.delivered)
        delivery = Delivery(
            id=delivery_id,
            body=body,
            headers=dict(request.headers.items()),
            signature_valid=signature_valid,
            status=status,
            path=request.path,
            duplicate=duplicate,
            id_field=self.id_field,
        )
        self._recorder.add(delivery)
        self._log(delivery, problem)
        if status == 204:
            return Response(status=204)
        return json_reply({"error": problem}, status, extra)

    def _decide(
        self, signature_valid: bool, body: Any, delivery_id: str | None
    ) -> tuple[int, dict[str, str], str]:
        if not signature_valid:
            return 401, {}, "invalid signature"
        failure = self._fail.take()
        if failure:
            status, retry_after = failure
            return status, _retry_headers(retry_after), "failing on request"
        if not isinstance(body, dict):
            return 400, {}, "body is not a JSON object"
        if not delivery_id or body.get(self.id_field) != delivery_id:
            return 400, {}, f"{self.id_header} missing or not equal to the body's {self.id_field}"
        return 204, {}, ""

    def _control(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/_control/received":
            return json_reply({"received": [d.to_json() for d in self.received]})
        return json_reply({"error": "not found"}, 404)

    def _log(self, delivery: Delivery, problem: str) -> None:
        body = delivery.body if isinstance(delivery.body, dict) else {}
        log.info(
            "webhook notice=%s event=%s connection=%r signature=%s status=%d%s%s",
            delivery.id,
            body.get("event"),
            body.get("connection_name"),
            "valid" if delivery.signature_valid else "INVALID",
            delivery.status,
            " duplicate" if delivery.duplicate else "",
            f" ({problem})" if problem else "",
        )


class EventReceiver(WebhookReceiver):
    """Receives the signed event POSTs of `deliver_event`, as the Automate365 engine would: the
    same checks as the notice receiver (HMAC in `X-Signature`; 204, 401 or 400), keyed by
    `X-Event-Id`, which must equal the body's `event_id`. A repeated event id is answered 204 and
    recorded with `duplicate=True`. Its log line names the event and the trigger, never a record
    value (they may be personal data)."""

    label = "event receiver"
    id_header = "X-Event-Id"
    id_field = "event_id"
    server_name = "event-receiver"

    def _log(self, delivery: Delivery, problem: str) -> None:
        body = delivery.body if isinstance(delivery.body, dict) else {}
        log.info(
            "event webhook event=%s trigger=%s change=%s signature=%s status=%d%s%s",
            delivery.id,
            body.get("trigger_id"),
            body.get("change"),
            "valid" if delivery.signature_valid else "INVALID",
            delivery.status,
            " duplicate" if delivery.duplicate else "",
            f" ({problem})" if problem else "",
        )


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


# --- Microsoft Graph stand-in -----------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    content_type: str
    body: str
    save_to_sent_items: bool
    status: int
    received_at: str = field(default_factory=_now_iso)

    @property
    def accepted(self) -> bool:
        return self.status == 202

    def to_json(self) -> dict[str, Any]:
        return {
            "sender": self.sender,
            "to": self.to,
            "cc": self.cc,
            "subject": self.subject,
            "content_type": self.content_type,
            "body": self.body,
            "save_to_sent_items": self.save_to_sent_items,
            "status": self.status,
            "received_at": self.received_at,
        }


class _BadMail(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_GRAPH_ROUTES = Map(
    [
        Rule("/<tenant>/v2.0/.well-known/openid-configuration", methods=["GET"], endpoint="oidc"),
        Rule("/<tenant>/oauth2/v2.0/token", methods=["POST"], endpoint="token"),
        Rule("/v1.0/users/<sender>/sendMail", methods=["POST"], endpoint="send_mail"),
        Rule("/_control/mails", methods=["GET"], endpoint="control_mails"),
    ]
)


class GraphStandIn(ServedStandIn):
    """Entra ID (client-credentials tokens) and Graph `sendMail` for one registered app.

    Tokens are signed with a key derived from the app's registration, so a token that an MSAL
    cache kept from an earlier stand-in with the same registration is still accepted.
    """

    label = "graph stand-in"

    def __init__(
        self,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        cert_folder: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 3599,
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self._key = hashlib.sha256(f"{tenant_id}\n{client_id}\n{client_secret}".encode()).digest()
        self._recorder: _Recorder[Mail] = _Recorder("mails")
        self._fail_mail = _FailPlan()
        self._fail_token = _FailPlan()
        self._lock = threading.Lock()
        self._token_requests = 0
        self._server = BackgroundServer(
            _wsgi(self._handle), host, port, server_context(cert_folder), name="graph-standin"
        )
        self.url: str = self._server.url
        self.authority_host: str = self.url
        self.api_url: str = self.url
        self.authority: str = f"{self.url}/{tenant_id}"

    @property
    def mails(self) -> list[Mail]:
        return self._recorder.items()

    @property
    def delivered(self) -> list[Mail]:
        return [m for m in self._recorder.items() if m.accepted]

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._token_requests

    def wait_for(
        self, count: int, timeout: float = 5.0, *, accepted_only: bool = False
    ) -> list[Mail]:
        """Blocks until `count` authenticated sendMail calls (only accepted ones if asked)."""
        return self._recorder.wait_for(count, timeout, accepted_only)

    def fail_next(self, count: int, status: int = 503, retry_after: int | None = None) -> None:
        """Answers the next `count` authenticated, well-formed sendMail calls with `status`."""
        self._fail_mail.set(count, status, retry_after)

    def fail_next_token_requests(self, count: int, status: int = 503) -> None:
        self._fail_token.set(count, status, None)

    def reset(self) -> None:
        self._recorder.clear()
        self._fail_mail.set(0, 503, None)
        self._fail_token.set(0, 503, None)
        with self._lock:
            self._token_requests = 0

    def _handle(self, request: Request) -> Response:
        endpoint, args = _GRAPH_ROUTES.bind_to_environ(request.environ).match()
        if endpoint == "oidc":
            return self._openid_configuration(request, args["tenant"])
        if endpoint == "token":
            return self._token(request, args["tenant"])
        if endpoint == "send_mail":
            return self._send_mail(request, args["sender"])
        return json_reply(
            {"mails": [m.to_json() for m in self.mails], "token_requests": self.token_requests}
        )

    # Entra ID

    def _openid_configuration(self, request: Request, tenant: str) -> Response:
        if tenant != self.tenant_id:
            return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        base = f"{request.host_url.rstrip('/')}/{tenant}"
        return json_reply(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "msgraph_host": "graph.microsoft.com",
            }
        )

    def _token(self, request: Request, tenant: str) -> Response:
        with self._lock:
            self._token_requests += 1
        response = self._token_answer(request, tenant)
        log.info(
            "graph token client=%s status=%d", request.form.get("client_id"), response.status_code
        )
        return response

    def _token_answer(self, request: Request, tenant: str) -> Response:
        failure = self._fail_token.take()
        if failure:
            return _aad_error(
                failure[0], "temporarily_unavailable", 50196, "The service is unavailable."
            )
        if tenant != self.tenant_id:
            return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        if request.form.get("grant_type") != "client_credentials":
            return _aad_error(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            )
        client_id, client_secret = _client_credentials(request)
        if client_id != self.client_id:
            return _aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant.",
            )
        if not client_secret:
            return _aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.",
            )
        if not hmac.compare_digest(client_secret.encode(), self.client_secret.encode()):
            return _aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{client_id}'.",
            )
        scopes = request.form.get("scope", "").split()
        if GRAPH_SCOPE not in scopes:
            return _aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {' '.join(scopes)} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        return json_reply(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": self._issue_token(),
            }
        )

    def _issue_token(self) -> str:
        now = int(time.time())
        claims = {
            "aud": GRAPH_AUDIENCE,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "appid": self.client_id,
            "tid": self.tenant_id,
            "roles": ["Mail.Send"],
            "uti": secrets.token_urlsafe(16),
        }
        signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(json.dumps(claims))
        return signing_input + "." + _b64(self._signature(signing_input))

    def _signature(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()

    def _token_problem(self, authorization: str) -> str | None:
        """Why the bearer token is not accepted, or None when it is."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Access token is empty."
        parts = token.strip().split(".")
        if len(parts) != 3:
            return "IDX14100: JWT is not well formed, there are no dots (.)."
        signing_input = f"{parts[0]}.{parts[1]}"
        expected = _b64(self._signature(signing_input)).encode()
        if not hmac.compare_digest(expected, parts[2].encode()):
            return "Access token validation failure."
        claims = json.loads(_unb64(parts[1]))
        if claims.get("aud") != GRAPH_AUDIENCE:
            return "Access token validation failure. Invalid audience."
        if claims.get("exp", 0) <= time.time():
            return "Lifetime validation failed, the token is expired."
        return None

    # Graph

    def _send_mail(self, request: Request, sender: str) -> Response:
        problem = self._token_problem(request.headers.get("Authorization", ""))
        if problem:
            log.info("graph sendMail from=%s status=401 (%s)", sender, problem)
            return _graph_error(
                request,
                401,
                "InvalidAuthenticationToken",
                problem,
                {"WWW-Authenticate": 'Bearer realm="", error="invalid_token"'},
            )
        try:
            mail = _parse_mail(sender, request.get_data(cache=False))
        except _BadMail as bad:
            log.info("graph sendMail from=%s status=400 (%s)", sender, bad)
            return _graph_error(request, 400, bad.code, str(bad))
        failure = self._fail_mail.take()
        status = failure[0] if failure else 202
        self._recorder.add(_with_status(mail, status))
        log.info(
            "graph sendMail from=%s to=%s subject=%r status=%d",
            sender,
            ",".join(mail.to + mail.cc),
            mail.subject,
            status,
        )
        if failure:
            code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
            return _graph_error(
                request, status, code, "Failing on request.", _retry_headers(failure[1])
            )
        return Response(status=202)


def _client_credentials(request: Request) -> tuple[str | None, str | None]:
    """The client id and secret from the form body, or from HTTP Basic authentication."""
    client_id = request.form.get("client_id")
    client_secret = request.form.get("client_secret")
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value).decode()
        except ValueError:
            return client_id, client_secret
        basic_id, _, basic_secret = decoded.partition(":")
        client_id = client_id or unquote_plus(basic_id)
        client_secret = client_secret or unquote_plus(basic_secret)
    return client_id, client_secret


def _parse_mail(sender: str, raw: bytes) -> Mail:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise _BadMail(
            "BadRequest",
            "Unable to read JSON request payload. Please ensure Content-Type header is set "
            "and payload is of valid JSON format.",
        ) from None
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, dict):
        raise _BadMail("ErrorInvalidRequest", "The 'message' property is required.")
    body = message.get("body", {})
    if not isinstance(body, dict) or not isinstance(body.get("content", ""), str):
        raise _BadMail("ErrorInvalidRequest", "The 'body' property is not valid.")
    content_type = body.get("contentType", "Text")
    if not isinstance(content_type, str) or content_type.lower() not in ("text", "html"):
        raise _BadMail("ErrorInvalidRequest", f"Invalid contentType '{content_type}'.")
    subject = message.get("subject", "")
    if not isinstance(subject, str):
        raise _BadMail("ErrorInvalidRequest", "The 'subject' property is not valid.")
    to = _addresses(message.get("toRecipients", []))
    cc = _addresses(message.get("ccRecipients", []))
    if not to and not cc:
        raise _BadMail(
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains "
            "no recipients.",
        )
    return Mail(
        sender=sender,
        to=to,
        cc=cc,
        subject=subject,
        content_type=content_type,
        body=body.get("content", ""),
        save_to_sent_items=payload.get("saveToSentItems", True) is not False,
        status=0,
    )


def _addresses(recipients: Any) -> list[str]:
    if not isinstance(recipients, list):
        raise _BadMail("ErrorInvalidRequest", "Recipients must be a collection.")
    found = []
    for recipient in recipients:
        email = recipient.get("emailAddress") if isinstance(recipient, dict) else None
        address = email.get("address") if isinstance(email, dict) else None
        if not isinstance(address, str) or "@" not in address:
            raise _BadMail("ErrorInvalidRecipients", "At least one recipient isn't valid.")
        found.append(address)
    return found


def _with_status(mail: Mail, status: int) -> Mail:
    return Mail(**{**mail.__dict__, "status": status})


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return json_reply(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {timestamp}",
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status,
    )


def _graph_error(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> Response:
    inner = {
        "date": _now_iso(),
        "request-id": str(uuid.uuid4()),
        "client-request-id": request.headers.get("client-request-id", str(uuid.uuid4())),
    }
    return json_reply(
        {"error": {"code": code, "message": message, "innerError": inner}}, status, headers
    )


def _b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
