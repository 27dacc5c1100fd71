"""The proxy's app settings (`PROXY_*`), read once per process."""

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_ALLOWED_PATHS = (
    "api/now/table/,api/now/attachment,api/sn_sc/servicecatalog/,api/sn_chg_rest/,api/now/import/"
)
MAX_REQUEST_BYTES = 10 * 1024 * 1024


def _number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    try:
        value = float(environ.get(name) or default)
    except ValueError:
        return default
    return max(minimum, value)


@dataclass(frozen=True)
class ProxySettings:
    allowed_paths: tuple[str, ...] = tuple(DEFAULT_ALLOWED_PATHS.split(","))
    max_retry_wait: float = 5.0
    timeout: float = 60.0
    max_response_bytes: int = 20 * 1024 * 1024
    audit_days: int = 30

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "ProxySettings":
        paths = environ.get("PROXY_ALLOWED_PATHS") or DEFAULT_ALLOWED_PATHS
        return cls(
            allowed_paths=tuple(p.strip().lstrip("/") for p in paths.split(",") if p.strip()),
            max_retry_wait=_number(environ, "PROXY_MAX_RETRY_WAIT_SECONDS", 5, 0),
            timeout=_number(environ, "PROXY_TIMEOUT_SECONDS", 60, 1),
            max_response_bytes=int(
                _number(environ, "PROXY_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, 1024)
            ),
            audit_days=int(_number(environ, "PROXY_AUDIT_DAYS", 30, 1)),
        )


@functools.cache
def proxy_settings() -> ProxySettings:
    return ProxySettings.from_environ()
