"""Outbound HTTP to customers' instances, safe against SSRF, DNS rebinding and secret leaks.

`safe_request` re-validates the URL, resolves the host once, refuses it when any address is not
public, then connects to the address it checked (TLS SNI, certificate check and Host header still
use the name). Redirects are never followed, bodies are bounded, and every failure becomes an
`OutboundError` whose message names only the host: never the URL, its query or a header value.

Proxies (HTTPS_PROXY and friends) are never used: a proxy would resolve the name again. The CA
bundle still comes from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE when set (the local stand-ins).
"""

import codecs
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from servicenow.instance_url import (
    LOOPBACK_HOSTS,
    InvalidInstanceUrl,
    Origin,
    OutboundPolicy,
    normalise_instance_url,
    split_url,
)

__all__ = [
    "InvalidInstanceUrl",
    "OutboundBlocked",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "check_address",
    "normalise_instance_url",
    "resolve_and_check",
    "safe_request",
    "send_to_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

DEFAULT_TIMEOUT = (5.0, 15.0)
DEFAULT_MAX_BYTES = 1_048_576
MAX_REQUEST_URL_LENGTH = 8192
_CHUNK = 65536
_PIN_ATTRIBUTE = "_automate365_pinned_address"
_METHOD = re.compile(r"[A-Z]+")

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not public, whatever this Python's ipaddress tables say.
_NON_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "240.0.0.0/4",
        "168.63.129.16/32",  # Azure's platform address (wire server, DNS, health probes)
        "100::/64",
        "2001:2::/48",
        "2001:10::/28",
        "2001:db8::/32",
        "64:ff9b:1::/48",
        "5f00::/16",
        "fc00::/7",
        "fec0::/10",
    )
)


class OutboundError(Exception):
    """A call to an instance failed; `kind` says how, `message` is safe to show users.

    Kinds: timeout, connection, tls, dns, too_large, invalid_request, blocked.
    """

    def __init__(self, message: str, kind: str = "connection") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class OutboundBlocked(OutboundError):
    """The policy refused the destination (URL or resolved address); nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="blocked")


@dataclass(frozen=True)
class OutboundResponse:
    status_code: int
    headers: CaseInsensitiveDict
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON; ValueError when it is not JSON."""
        if not self.content.strip():
            raise ValueError("empty body")
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(_charset(self.headers.get("Content-Type", "")), "replace")


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset":
            try:
                return _codec(value.strip("\"' "))
            except LookupError:
                break
    return "utf-8"


def _codec(name: str) -> str:
    return codecs.lookup(name).name


class _RedactQueries(logging.Filter):
    """Cuts query strings (which may hold an API token) out of urllib3's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        return True


def _redact(value: object) -> object:
    if isinstance(value, int | float | type(None)):
        return value
    text = str(value)
    return text.split("?", 1)[0] + "?[redacted]" if "?" in text else value


def _install_log_redaction() -> None:
    for name in ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueries) for f in logger.filters):
            logger.addFilter(_RedactQueries())


_install_log_redaction()


# -- addresses --------------------------------------------------------------------------------


def check_address(ip: str | IPAddress, policy: OutboundPolicy, host: str) -> IPAddress:
    """Returns the address when the policy lets `host` connect to it; raises OutboundBlocked."""
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    local = policy.allow_local and host in LOOPBACK_HOSTS
    if local and _embedded(address).is_loopback:
        return address
    problem = address_problem(address)
    if problem:
        raise OutboundBlocked(
            f"{host} resolves to a {problem} address; only public addresses can be reached."
        )
    return address


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address ('private', 'loopback', ...), or None."""
    if address in _TEREDO:
        return "tunnelled (Teredo)"
    inner = _embedded(address)
    checks = (
        ("unspecified", inner.is_unspecified),
        ("loopback", inner.is_loopback),
        ("link-local", inner.is_link_local),
        ("multicast", inner.is_multicast),
        ("site-local", isinstance(inner, ipaddress.IPv6Address) and inner.is_site_local),
        ("shared (carrier-grade NAT)", inner in _SHARED),
        ("private", inner.is_private),
        ("reserved", inner.is_reserved or any(inner in net for net in _NON_PUBLIC)),
        ("non-public", not inner.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _embedded(address: IPAddress) -> IPAddress:
    """The IPv4 address inside an IPv4-mapped, 6to4 or NAT64 address; else the address."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def resolve_and_check(
    origin: Origin, policy: OutboundPolicy, resolver: Resolver | None = None
) -> IPAddress:
    """Resolves the host once and checks every address; returns the one to connect to.

    IPv4 is preferred (Azure Functions often has no IPv6 route); no other address is tried.
    """
    if origin.is_ip_literal:
        return check_address(origin.host, policy, origin.host)
    resolve = resolver or socket.getaddrinfo
    try:
        infos = resolve(origin.host, origin.effective_port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise OutboundError(f"The host name {origin.host} could not be resolved.", "dns") from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = check_address(str(info[4][0]), policy, origin.host)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundError(f"The host name {origin.host} could not be resolved.", "dns")
    return sorted(addresses, key=lambda a: a.version)[0]


# -- sending ----------------------------------------------------------------------------------


class _PinnedAdapter(HTTPAdapter):
    """Connects to the (address, TLS name) pinned on the request, never resolving the URL's host.

    The pool is keyed by address, port and TLS server name, so connections are reused only for
    the same name on the same address. A request without a pinned address is refused.
    """

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pin = getattr(request, _PIN_ATTRIBUTE, None)
        if pin is None:
            raise OutboundBlocked("Refusing to send a request whose address was not checked.")
        address, name = pin
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = name
        host_params["host"] = str(address)
        return host_params, pool_kwargs


_shared_lock = threading.Lock()
_shared_session: requests.Session | None = None
_shared_adapter: _PinnedAdapter | None = None


def _shared() -> tuple[requests.Session, _PinnedAdapter]:
    """The process-wide session (used to prepare requests) and pinned adapter, made on first use."""
    global _shared_session, _shared_adapter
    with _shared_lock:
        if _shared_session is None or _shared_adapter is None:
            session = requests.Session()
            session.trust_env = False
            session.headers["User-Agent"] = "Automate365-Connections"
            _shared_session, _shared_adapter = session, _PinnedAdapter(max_retries=0)
        return _shared_session, _shared_adapter


def ca_bundle() -> bool | str:
    """What `verify` should be: the CA bundle the environment names, else the system's."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def safe_request(
    method: str,
    url: str,
    *,
    policy: OutboundPolicy,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: Mapping[str, str] | bytes | str | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    resolver: Resolver | None = None,
    session: requests.Session | None = None,
) -> OutboundResponse:
    """Sends one request to an instance under the outbound policy; see the module docstring.

    `resolver` defaults to `socket.getaddrinfo` (looked up at call time). `session` only lends
    its default headers; sending always goes through the pinned adapter, never the session's
    adapters, proxies or cookie jar.
    """
    try:
        origin, rest = split_url(url, policy, max_length=MAX_REQUEST_URL_LENGTH)
    except InvalidInstanceUrl as exc:
        raise OutboundBlocked(exc.message) from None
    if "#" in rest:
        raise OutboundBlocked("Refusing a request URL with a fragment (#...).")
    address = resolve_and_check(origin, policy, resolver)
    return send_to_address(
        method,
        url,
        address,
        origin=origin,
        headers=headers,
        params=params,
        data=data,
        timeout=timeout,
        max_bytes=max_bytes,
        session=session,
    )


def send_to_address(
    method: str,
    url: str,
    address: str | IPAddress,
    *,
    origin: Origin | None = None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    data: Mapping[str, str] | bytes | str | None = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    max_bytes: int = DEFAULT_MAX_BYTES,
    session: requests.Session | None = None,
) -> OutboundResponse:
    """Sends to `address`, which the caller has already checked; the URL's host is not resolved.

    `origin` (from `split_url`) names the host for messages and the Host header; without it
    the URL is parsed as it is, unchecked: only pass URLs and addresses you have checked.
    """
    origin = origin or _origin_of(url)
    shared_session, adapter = _shared()
    prepared = _prepare(session or shared_session, method, url, origin, headers, params, data)
    setattr(prepared, _PIN_ATTRIBUTE, (ipaddress.ip_address(str(address)), origin.host))
    deadline = time.monotonic() + sum(timeout)
    try:
        response = adapter.send(
            prepared, stream=True, timeout=timeout, verify=ca_bundle(), proxies={}
        )
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        raise _failure(exc, origin.host) from None
    try:
        content = _read_body(response, origin.host, max_bytes, deadline)
    finally:
        response.close()
    return OutboundResponse(response.status_code, CaseInsensitiveDict(response.headers), content)


def _origin_of(url: str) -> Origin:
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError("the URL has no host")
    return Origin(parts.scheme.lower(), parts.hostname, parts.port)


def _prepare(
    session: requests.Session,
    method: str,
    url: str,
    origin: Origin,
    headers: Mapping[str, str] | None,
    params: Mapping[str, str] | None,
    data: Mapping[str, str] | bytes | str | None,
) -> requests.PreparedRequest:
    verb = method.upper()
    if not _METHOD.fullmatch(verb):
        raise ValueError("method must be an HTTP method name such as GET or POST")
    request = requests.Request(verb, url, headers=dict(headers or {}), params=params, data=data)
    try:
        prepared = session.prepare_request(request)
    except (requests.RequestException, ValueError):
        raise OutboundError(
            f"The request to {origin.host} could not be built: a header name or value, or the "
            "URL, holds characters HTTP does not allow (such as line breaks).",
            "invalid_request",
        ) from None
    prepared.headers["Host"] = origin.netloc
    return prepared


def _failure(exc: Exception, host: str) -> OutboundError:
    """The safe error for an exception from sending; never includes the exception's text."""
    if isinstance(exc, requests.Timeout):
        return OutboundError(f"{host} did not answer in time.", "timeout")
    if isinstance(exc, requests.exceptions.SSLError):
        return OutboundError(
            f"The TLS connection to {host} failed (certificate not valid for the name, or the "
            "handshake failed).",
            "tls",
        )
    if isinstance(exc, requests.exceptions.InvalidHeader | requests.exceptions.InvalidURL):
        return OutboundError(
            f"The request to {host} holds characters HTTP does not allow.", "invalid_request"
        )
    return OutboundError(f"The connection to {host} failed.", "connection")


def _read_body(response: requests.Response, host: str, max_bytes: int, deadline: float) -> bytes:
    """Reads at most max_bytes of (decoded) body, within the deadline."""
    too_large = OutboundError(
        f"The answer from {host} is larger than {max_bytes} bytes.", "too_large"
    )
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    try:
        for chunk in response.raw.stream(_CHUNK, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise too_large
            if time.monotonic() > deadline:
                raise OutboundError(f"{host} did not send its answer in time.", "timeout")
    except OutboundError:
        raise
    except urllib3.exceptions.ReadTimeoutError:
        raise OutboundError(f"{host} did not answer in time.", "timeout") from None
    except urllib3.exceptions.SSLError:
        raise OutboundError(f"The TLS connection to {host} failed.", "tls") from None
    except (urllib3.exceptions.HTTPError, OSError):
        raise OutboundError(
            f"The connection to {host} broke while reading.", "connection"
        ) from None
    return bytes(body)
