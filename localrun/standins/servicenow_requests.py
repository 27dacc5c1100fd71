"""The stand-in's request log: what each request to the instance carried, credentials masked.

Each entry holds the method, path, query parameters and headers (names and values, in order), the
body size, the status answered and the authenticated principal. A value holding a credential the
instance knows (or once knew) shows `[credential:<owner>]` in its place, so tests can tell which
credential arrived, and that a caller's own, made-up one did not, without the log holding a secret.
"""

import base64
import binascii
from collections import deque
from typing import Any

from werkzeug.wrappers import Request

MAX_LOGGED_REQUESTS = 2000
# Shorter credentials are masked only when they are the whole value (or the whole token after
# the scheme): replacing every occurrence of a short string would garble the log.
MIN_SUBSTRING_LENGTH = 8


def marker(owner: str) -> str:
    return f"[credential:{owner}]"


def mask(value: str, credentials: dict[str, str]) -> str:
    """The value with every known credential (value -> owner) in it replaced by its marker."""
    if value in credentials:
        return marker(credentials[value])
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "basic":
        owner = _basic_owner(rest.strip(), credentials)
        if owner is not None:
            return f"{scheme} {marker(owner)}"
    if rest.strip() in credentials:
        return f"{scheme} {marker(credentials[rest.strip()])}"
    for secret in sorted(credentials, key=len, reverse=True):
        if len(secret) >= MIN_SUBSTRING_LENGTH and secret in value:
            value = value.replace(secret, marker(credentials[secret]))
    return value


def _basic_owner(encoded: str, credentials: dict[str, str]) -> str | None:
    """Whose secret an HTTP Basic `id:secret` carries, if it is a known one."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    secret = decoded.partition(":")[2]
    if secret in credentials:
        return credentials[secret]
    inside = [s for s in credentials if len(s) >= MIN_SUBSTRING_LENGTH and s in decoded]
    return credentials[inside[0]] if inside else None


class RequestLog:
    """Bounded, newest last. Callers hold the stand-in's lock."""

    def __init__(self) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=MAX_LOGGED_REQUESTS)

    def record(
        self,
        request: Request,
        *,
        at: float,
        status: int,
        principal: str | None,
        body_size: int,
        credentials: dict[str, str],
    ) -> None:
        self._entries.append(
            {
                "at": at,
                "method": request.method,
                "path": request.path,
                "query": [
                    [name, mask(value, credentials)]
                    for name, value in request.args.items(multi=True)
                ],
                "headers": [[name, mask(value, credentials)] for name, value in request.headers],
                "body_size": body_size,
                "status": status,
                "principal": principal,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()
