"""Parsing and normalising ServiceNow instance URLs, and the outbound policy that admits them.

The parser is hand-written rather than built on `urllib.parse`, whose leniency (backslashes,
empty ports, odd schemes) is where SSRF filters usually break. Decisions:

- Only ASCII host names are accepted. Unicode hosts and punycode (`xn--`) labels are refused, so
  look-alike names mixing scripts cannot pass as real ones (and UTS #46 mapping cannot turn
  full-width digits into an IP address). ServiceNow instance names are ASCII.
- A host whose last label is numeric (`127.1`, `2130706433`, `0x7f.1`, `0177.0.0.1`) is an IP
  literal, as browsers treat it; IP literals are never accepted, except the loopback hosts
  admitted by `allow_local`.
- One trailing dot is removed; error messages never echo the raw URL (it may hold a token).
"""

import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

MAX_URL_LENGTH = 2048
MAX_HOST_LENGTH = 253
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
BLOCKED_NAME_SUFFIXES = ("localhost", "local", "localdomain", "internal", "arpa")

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_PORT = re.compile(r"[0-9]{1,5}")
_EXAMPLE = "https://<name>.service-now.com"


class InvalidInstanceUrl(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class OutboundPolicy:
    allow_local: bool = False
    allowed_suffixes: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "OutboundPolicy":
        allow_local = environ.get("ALLOW_LOCAL_INSTANCES", "").strip().lower() == "true"
        suffixes = environ.get("ALLOWED_INSTANCE_SUFFIXES", "")
        return cls(allow_local=allow_local, allowed_suffixes=parse_suffixes(suffixes))


def parse_suffixes(text: str) -> tuple[str, ...]:
    """`.a.com, B.com` -> ('.a.com', '.b.com'): trimmed, lowercased, leading dot added."""
    cleaned = (part.strip().lower().lstrip(".") for part in text.split(","))
    return tuple(f".{part}" for part in cleaned if part)


def host_matches_suffix(host: str, suffix: str) -> bool:
    """True when `host` is `suffix` (leading dot optional) or ends with it on a label boundary."""
    bare = suffix.strip().lower().lstrip(".")
    return bool(bare) and (host == bare or host.endswith("." + bare))


@dataclass(frozen=True)
class Origin:
    """Scheme, host (lowercase, IPv6 without brackets) and port (None: the scheme's default)."""

    scheme: str
    host: str
    port: int | None = None

    @property
    def is_ip_literal(self) -> bool:
        return self.host in ("127.0.0.1", "::1")

    @property
    def effective_port(self) -> int:
        return self.port or (443 if self.scheme == "https" else 80)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def normalise_instance_url(raw: str, policy: OutboundPolicy) -> str:
    origin, rest = split_url(raw, policy)
    if "?" in rest:
        raise InvalidInstanceUrl("The instance URL must not contain a query (?...).")
    if "#" in rest:
        raise InvalidInstanceUrl("The instance URL must not contain a fragment (#...).")
    if rest not in ("", "/"):
        raise InvalidInstanceUrl(f"The instance URL must not contain a path; use {_EXAMPLE}.")
    return origin.url


def split_url(
    raw: str, policy: OutboundPolicy, max_length: int = MAX_URL_LENGTH
) -> tuple[Origin, str]:
    """Validates a URL's scheme and authority against the policy.

    Returns the origin and the rest of the URL (path, query and fragment, unchecked).
    """
    if not isinstance(raw, str):
        raise InvalidInstanceUrl("The instance URL must be text.")
    text = raw.strip(" ")
    if len(text) > max_length:
        raise InvalidInstanceUrl(f"The instance URL is too long (at most {max_length} characters).")
    if any(_is_forbidden_char(char) for char in text):
        raise InvalidInstanceUrl(
            "The instance URL must not contain spaces, control characters or backslashes."
        )
    match = _SCHEME.match(text)
    if not match:
        raise InvalidInstanceUrl(f"The instance URL must start with https:// (like {_EXAMPLE}).")
    scheme = match.group(1).lower()
    authority, rest = _split_authority(text[match.end() :])
    host, port = _split_host_port(authority)
    origin = _check_host(host, port, scheme, policy)
    return origin, rest


def _is_forbidden_char(char: str) -> bool:
    return char == "\\" or char.isspace() or unicodedata.category(char)[0] in ("C", "Z")


def _split_authority(text: str) -> tuple[str, str]:
    end = len(text)
    for mark in "/?#":
        index = text.find(mark)
        if index != -1:
            end = min(end, index)
    authority, rest = text[:end], text[end:]
    if not authority:
        raise InvalidInstanceUrl("The instance URL has no host name.")
    if "@" in authority:
        raise InvalidInstanceUrl("The instance URL must not contain a user name or password.")
    return authority, rest


def _split_host_port(authority: str) -> tuple[str, str | None]:
    """`[::1]:8081` -> ('[::1]', '8081'); `host` -> ('host', None)."""
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise InvalidInstanceUrl("The instance URL's host is not valid.")
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise InvalidInstanceUrl("The instance URL's host is not valid.")
        return host, after[1:] if after else None
    host, colon, port = authority.rpartition(":")
    if not colon:
        return authority, None
    return host, port


def _check_host(host: str, port_text: str | None, scheme: str, policy: OutboundPolicy) -> Origin:
    name = _loopback_name(host) if policy.allow_local else None
    if name is not None:
        if scheme not in ("http", "https"):
            raise InvalidInstanceUrl("The instance URL must start with https:// or http://.")
        return Origin(scheme, name, _parse_port(port_text))
    dns_name = _check_dns_name(host, policy)
    if scheme != "https":
        raise InvalidInstanceUrl(f"The instance URL must use https:// (like {_EXAMPLE}).")
    if _parse_port(port_text) not in (None, 443):
        raise InvalidInstanceUrl("The instance URL must not contain a port (only 443 is used).")
    return Origin("https", dns_name)


def _parse_port(text: str | None) -> int | None:
    if text is None:
        return None
    if not _PORT.fullmatch(text) or not 0 < int(text) < 65536:
        raise InvalidInstanceUrl("The instance URL's port must be a number from 1 to 65535.")
    return int(text)


def _loopback_name(host: str) -> str | None:
    """The canonical loopback host (`localhost`, `127.0.0.1`, `::1`) that `host` spells, if any."""
    lowered = host.lower()
    if lowered.startswith("["):
        try:
            address = ipaddress.IPv6Address(lowered[1:-1])
        except ValueError:
            return None
        return "::1" if address == ipaddress.IPv6Address("::1") else None
    lowered = lowered.removesuffix(".")
    return lowered if lowered in ("localhost", "127.0.0.1") else None


def _check_dns_name(host: str, policy: OutboundPolicy) -> str:
    if not host:
        raise InvalidInstanceUrl("The instance URL has no host name.")
    if host.startswith("["):
        raise InvalidInstanceUrl("The instance URL must use a host name, not an IP address.")
    if ":" in host:
        raise InvalidInstanceUrl("The instance URL's host or port is not valid.")
    if not host.isascii():
        raise _lookalike()
    name = host.lower().removesuffix(".")
    if len(name) > MAX_HOST_LENGTH:
        raise InvalidInstanceUrl(
            f"The host name is too long (at most {MAX_HOST_LENGTH} characters)."
        )
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InvalidInstanceUrl("The instance URL must use a host name, not an IP address.")
    if any(host_matches_suffix(name, blocked) for blocked in BLOCKED_NAME_SUFFIXES):
        raise InvalidInstanceUrl(
            "Local and internal host names (localhost, .local, .internal, ...) are not accepted."
        )
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidInstanceUrl(
            "The host name is not valid: it needs at least two dot-separated parts, each of "
            f"letters, digits and inner hyphens (like {_EXAMPLE})."
        )
    if any(label.startswith("xn--") for label in labels):
        raise _lookalike()
    _check_allowed_suffix(name, policy)
    return name


def _lookalike() -> InvalidInstanceUrl:
    return InvalidInstanceUrl(
        "Internationalised host names (non-ASCII or punycode xn--) are not accepted, so that "
        "look-alike names cannot pass for real ones; use the instance's ASCII name."
    )


def _check_allowed_suffix(name: str, policy: OutboundPolicy) -> None:
    if not policy.allowed_suffixes:
        return
    if any(host_matches_suffix(name, suffix) for suffix in policy.allowed_suffixes):
        return
    listed = ", ".join("." + s.strip().lower().lstrip(".") for s in policy.allowed_suffixes)
    raise InvalidInstanceUrl(f"The instance host must end with one of: {listed}.")
