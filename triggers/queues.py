"""The triggers' queues: `trigger-polls` (one message per poll to run) and `servicenow-events`
(one message per event to deliver), JSON as the Functions host reads it (base64)."""

import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient

POLLS_QUEUE = "trigger-polls"
EVENTS_QUEUE = "servicenow-events"
SENDERS = 8  # messages sent at once by `send_all` (the queue service has no batch send)


class JsonQueue:
    def __init__(self, queue: "QueueClient") -> None:
        self._queue = queue

    def send(self, message: dict[str, Any], delay_seconds: int = 0) -> None:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
        self._queue.send_message(text, visibility_timeout=delay_seconds or None)

    def send_all(self, messages: list[dict[str, Any]]) -> None:
        """Sends every message, several at once; at the first failure the messages not yet
        started are not sent, and it raises (the caller sends them all again later)."""
        if len(messages) <= 1:
            for message in messages:
                self.send(message)
            return
        with ThreadPoolExecutor(min(SENDERS, len(messages))) as pool:
            futures = [pool.submit(self.send, message) for message in messages]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
