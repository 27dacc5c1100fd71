"""Putting notices on the `connection-notices` queue, base64-encoded as the Functions host reads."""

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

NOTICES_QUEUE = "connection-notices"


class NoticeQueue:
    def __init__(self, queue: "QueueClient") -> None:
        self._queue = queue

    def send(self, message: dict[str, Any]) -> None:
        self._queue.send_message(json.dumps(message, separators=(",", ":")))
