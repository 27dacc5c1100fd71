"""The parts of host.json the local host honours: the HTTP route prefix and the queue options."""

import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

HOST_JSON = "host.json"
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)$")


def parse_timespan(text: str) -> timedelta:
    """A .NET TimeSpan as host.json writes it: `hh:mm:ss`, `d.hh:mm:ss`, optional `.fff`."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise ValueError(f"not a TimeSpan: {text!r}")
    days, hours, minutes, seconds = match.groups()
    return timedelta(
        days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds)
    )


@dataclass(frozen=True)
class QueueOptions:
    """host.json `extensions.queues`, with the host's own defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(minutes=1)
    message_encoding: str = "base64"

    @classmethod
    def from_json(cls, section: dict[str, Any]) -> "QueueOptions":
        defaults = cls()
        return cls(
            batch_size=int(section.get("batchSize", defaults.batch_size)),
            new_batch_threshold=int(section.get("newBatchThreshold", defaults.new_batch_threshold)),
            max_dequeue_count=int(section.get("maxDequeueCount", defaults.max_dequeue_count)),
            visibility_timeout=_timespan(section, "visibilityTimeout", defaults.visibility_timeout),
            max_polling_interval=_timespan(
                section, "maxPollingInterval", defaults.max_polling_interval
            ),
            message_encoding=str(section.get("messageEncoding", defaults.message_encoding)).lower(),
        )


def _timespan(section: dict[str, Any], key: str, default: timedelta) -> timedelta:
    raw = section.get(key)
    return default if raw is None else parse_timespan(str(raw))


@dataclass(frozen=True)
class HostConfig:
    route_prefix: str = "api"
    queues: QueueOptions = field(default_factory=QueueOptions)

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "HostConfig":
        extensions = document.get("extensions") or {}
        http = extensions.get("http") or {}
        prefix = http.get("routePrefix", "api")
        return cls(
            route_prefix=str(prefix).strip("/"),
            queues=QueueOptions.from_json(extensions.get("queues") or {}),
        )

    @classmethod
    def load(cls, root: Path) -> "HostConfig":
        path = root / HOST_JSON
        if not path.is_file():
            return cls()
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
