"""What crosses the proxy in each direction: the caller's request filtered down to what an
instance needs (plus the connection's credential, added last), and the instance's answer filtered
down to what a caller may see (with `Link` pointing back at the proxy)."""

import email.utils
import re
import urllib.parse
from collections.abc import Mapping
from datetime import datetime

from servicenow.credentials import Credential

FORWARDED_REQUEST_HEADERS = ("Accept", "Content-Type", "X-no-response-body")
RELAYED_RESPONSE_HEADERS = (
    "Content-Type",
    "X-Total-Count",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Reset",
    "X-RateLimit-Rule",
)
RELAYED_FROM = ("X-Relayed-From", "servicenow")
MAX_QUERY_LENGTH = 4096
_LINK_PART = re.compile(r"<([^>]*)>([^,]*)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def filtered_query(raw_query: str, dropped: set[str]) -> str:
    """The caller's query string as sent, less the parameters named in `dropped` (any case)."""
    kept = []
    for pair in raw_query.split("&"):
        if not pair:
            continue
        name = urllib.parse.unquote_plus(pair.split("=", 1)[0]).strip().lower()
        if name not in dropped:
            kept.append(pair)
    return "&".join(kept)


def outbound_url(instance_url: str, path: str, query: str, credential: Credential) -> str:
    if credential.query is not None:
        name, value = credential.query
        added = urllib.parse.urlencode({name: value})
        query = f"{query}&{added}" if query else added
    return f"{instance_url}/{path}" + (f"?{query}" if query else "")


def outbound_headers(caller: Mapping[str, str], credential: Credential) -> dict[str, str]:
    wanted = {name.lower(): name for name in FORWARDED_REQUEST_HEADERS}
    headers = {}
    for name, value in caller.items():
        if name.lower() in wanted and not _CONTROL.search(value):
            headers[wanted[name.lower()]] = value
    headers.setdefault("Accept", "application/json")
    headers.update(credential.headers)
    return headers


def relayed_headers(
    answer: Mapping[str, str], instance_url: str, proxy_base: str, dropped: set[str]
) -> dict[str, str]:
    headers = {}
    for name in RELAYED_RESPONSE_HEADERS:
        value = answer.get(name)
        if value is not None and not _CONTROL.search(value):
            headers[name] = value
    link = answer.get("Link")
    if link:
        rewritten = rewrite_link(link, instance_url, proxy_base, dropped)
        if rewritten:
            headers["Link"] = rewritten
    headers[RELAYED_FROM[0]] = RELAYED_FROM[1]
    return headers


def rewrite_link(value: str, instance_url: str, proxy_base: str, dropped: set[str]) -> str:
    """Each `<url>; rel=...` of the instance pointed at the proxy route; links elsewhere, and
    credentials in their query strings, are dropped."""
    instance = urllib.parse.urlsplit(instance_url)
    parts = []
    for target, parameters in _LINK_PART.findall(value):
        url = urllib.parse.urlsplit(target.strip())
        same_origin = (url.scheme, url.netloc.lower()) == (instance.scheme, instance.netloc.lower())
        if not same_origin or _CONTROL.search(target):
            continue
        query = filtered_query(url.query, dropped)
        proxied = proxy_base + url.path.lstrip("/") + (f"?{query}" if query else "")
        parts.append(f"<{proxied}>{parameters.rstrip()}")
    return ",".join(parts)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds (delta or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - now).total_seconds())


def redacted_query(raw_query: str, dropped: set[str]) -> str:
    """The query string for the audit: the caller's as forwarded, bounded."""
    return filtered_query(raw_query, dropped)[:MAX_QUERY_LENGTH]
