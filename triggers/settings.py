"""The triggers' app settings (`TRIGGER_*`, `EVENT_RETENTION_DAYS`), read once per process."""

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TABLES = "incident,sc_req_item,sc_request,change_request,sc_task,problem"


def _whole(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = (environ.get(name) or "").strip()
    return max(minimum, int(raw)) if raw.isdigit() else default


@dataclass(frozen=True)
class TriggerSettings:
    tables: tuple[str, ...] = tuple(DEFAULT_TABLES.split(","))
    lookback_seconds: int = 120
    max_polls_per_connection: int = 2
    retention_days: int = 7

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "TriggerSettings":
        tables = environ.get("TRIGGER_TABLES") or DEFAULT_TABLES
        return cls(
            tables=tuple(t.strip() for t in tables.split(",") if t.strip()),
            lookback_seconds=_whole(environ, "TRIGGER_LOOKBACK_SECONDS", 120, 0),
            max_polls_per_connection=_whole(environ, "TRIGGER_MAX_POLLS_PER_CONNECTION", 2, 1),
            retention_days=_whole(environ, "EVENT_RETENTION_DAYS", 7, 1),
        )


@functools.cache
def trigger_settings() -> TriggerSettings:
    return TriggerSettings.from_environ()
