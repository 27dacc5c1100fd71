"""Queue triggers with the host's semantics, on Azure Storage queues (Azurite locally).

Receives up to `batchSize` messages, hiding them while they are processed; decodes each body
(base64 unless host.json says `messageEncoding: none`) and calls the function with an
`azure.functions.QueueMessage`. On success the message is deleted. On failure it becomes visible
again after host.json `visibilityTimeout`, and once its `dequeue_count` reaches `maxDequeueCount`
its original content moves to `<queue>-poison`. Messages of a batch run one after another.
"""

import base64
import binascii
import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueClient
from azure.storage.queue import QueueMessage as StorageQueueMessage

from localrun.hostconfig import QueueOptions
from localrun.invoker import InvocationFailed, invoke

log = logging.getLogger(__name__)

POISON_SUFFIX = "-poison"
PROCESSING_VISIBILITY = timedelta(minutes=10)  # how long a received message stays hidden
_FIRST_BACKOFF = 0.1  # seconds between empty polls, doubling up to maxPollingInterval


class MessageDecodeError(ValueError):
    pass


def decode_body(content: str, encoding: str) -> bytes:
    if encoding == "none":
        return content.encode("utf-8")
    try:
        return base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageDecodeError("the message is not valid base64") from exc


def to_function_message(message: StorageQueueMessage, body: bytes) -> func.QueueMessage:
    return FunctionQueueMessage(
        id=message.id,
        body=body,
        dequeue_count=message.dequeue_count,
        expiration_time=message.expires_on,
        insertion_time=message.inserted_on,
        time_next_visible=message.next_visible_on,
        pop_receipt=message.pop_receipt,
    )


class QueueListener:
    def __init__(
        self,
        function_name: str,
        user_function: Callable[..., Any],
        binding_name: str,
        queue_name: str,
        connection_string: str,
        options: QueueOptions,
    ) -> None:
        self.function_name = function_name
        self.queue_name = queue_name
        self.options = options
        self._user_function = user_function
        self._binding_name = binding_name
        self._queue = QueueClient.from_connection_string(connection_string, queue_name)
        self._poison = QueueClient.from_connection_string(
            connection_string, queue_name + POISON_SUFFIX
        )
        self._queue_ready = False
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(
            target=self._poll, name=f"queue-{self.function_name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        self.join(timeout)

    def request_stop(self) -> None:
        """Receives no more; the messages of the batch in hand that have not started are
        released (visible again at once) for the next listener."""
        self._stopped.set()

    def join(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for the listener thread (and the message it is on)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def process_once(self) -> int:
        """Receives one batch and processes it; returns how many messages it held."""
        if not self._queue_ready:
            _create_if_missing(self._queue)
            self._queue_ready = True
        messages = list(
            self._queue.receive_messages(
                messages_per_page=self.options.batch_size,
                max_messages=self.options.batch_size,
                visibility_timeout=_seconds(PROCESSING_VISIBILITY),
            )
        )
        for message in messages:
            try:
                if self._stopped.is_set():
                    self._release(message)
                else:
                    self._process(message)
            except AzureError as exc:
                log.warning(
                    "queue %s: message %s not settled: %s", self.queue_name, message.id, exc
                )
        return len(messages)

    def _process(self, message: StorageQueueMessage) -> None:
        try:
            body = decode_body(message.content or "", self.options.message_encoding)
            argument = to_function_message(message, body)
            invoke(self.function_name, self._user_function, **{self._binding_name: argument})
        except MessageDecodeError as exc:
            log.warning("queue %s: message %s: %s", self.queue_name, message.id, exc)
            self._failed(message)
        except InvocationFailed:
            self._failed(message)
        else:
            self._queue.delete_message(message.id, message.pop_receipt)

    def _failed(self, message: StorageQueueMessage) -> None:
        if message.dequeue_count >= self.options.max_dequeue_count:
            self._move_to_poison(message)
            return
        self._queue.update_message(
            message.id,
            message.pop_receipt,
            visibility_timeout=_seconds(self.options.visibility_timeout),
        )

    def _release(self, message: StorageQueueMessage) -> None:
        self._queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)

    def _move_to_poison(self, message: StorageQueueMessage) -> None:
        log.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
            self.options.max_dequeue_count,
            self._poison.queue_name,
        )
        _create_if_missing(self._poison)
        self._poison.send_message(message.content)
        self._queue.delete_message(message.id, message.pop_receipt)

    def _poll(self) -> None:
        delay = 0.0
        failing = False
        while not self._stopped.wait(delay):
            try:
                found = self.process_once()
            except AzureError as exc:
                if not failing:
                    log.warning("queue %s: cannot reach storage: %s", self.queue_name, exc)
                failing, found = True, 0
            else:
                failing = False
            delay = 0.0 if found else self._backoff(delay)

    def _backoff(self, delay: float) -> float:
        longest = self.options.max_polling_interval.total_seconds()
        return min(max(delay * 2, _FIRST_BACKOFF), longest)


def _create_if_missing(queue: QueueClient) -> None:
    with contextlib.suppress(ResourceExistsError):
        queue.create_queue()


def _seconds(span: timedelta) -> int:
    return int(span.total_seconds())
