"""A JSON body POSTed to a webhook, signed `X-Signature: sha256=<hex HMAC-SHA256 of the body>`:
how notices and trigger events reach their receivers."""

import hashlib
import hmac

import requests

TIMEOUT = (5, 15)
# What an app setting holds when App Service could not resolve its Key Vault reference.
UNRESOLVED_REFERENCE = "@Microsoft.KeyVault("


class WebhookFailure(Exception):
    """The receiver did not take the body; the reason never holds the URL or the secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def post_signed(
    session: requests.Session,
    url: str,
    secret: str,
    setting: str,
    body: bytes,
    id_header: tuple[str, str],
) -> int:
    """POSTs the body signed with `secret` (named `setting` in reasons) and the id header;
    returns the 2xx status, else raises `WebhookFailure`. Redirects are never followed and the
    answer's body is never read."""
    if not secret.strip():
        raise WebhookFailure(f"{setting} is not set")
    if secret.startswith(UNRESOLVED_REFERENCE):
        raise WebhookFailure(f"{setting} is an unresolved Key Vault reference")
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Signature": signature(secret, body),
        id_header[0]: id_header[1],
    }
    try:
        with session.post(
            url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False, stream=True
        ) as response:
            status = response.status_code
    except requests.RequestException as error:
        raise WebhookFailure(type(error).__name__) from None  # its text would quote the URL
    if not 200 <= status < 300:
        raise WebhookFailure(f"the receiver answered {status}")
    return status
