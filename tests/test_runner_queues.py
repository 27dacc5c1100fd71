"""Queue triggers against a real Azurite: encoding, dequeue counts, poison, deletion."""

import base64
import contextlib
import queue
import uuid
from collections.abc import Callable
from datetime import timedelta

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import BinaryBase64EncodePolicy, QueueClient, QueueServiceClient

from localrun.azurite import Azurite
from localrun.host import LocalHost
from localrun.hostconfig import QueueOptions
from localrun.keys import Keys
from localrun.queues import QueueListener

OPTIONS = QueueOptions(visibility_timeout=timedelta(0), max_dequeue_count=5, batch_size=16)


def new_queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:20]}"


def listener_for(
    azurite: Azurite, queue_name: str, function: Callable[[func.QueueMessage], None]
) -> QueueListener:
    return QueueListener("work", function, "msg", queue_name, azurite.connection_string, OPTIONS)


def raw_client(azurite: Azurite, queue_name: str) -> QueueClient:
    return QueueClient.from_connection_string(azurite.connection_string, queue_name)


def base64_sender(azurite: Azurite, queue_name: str) -> QueueClient:
    """Sends the way the app does: bytes, base64-encoded on the wire."""
    return QueueClient.from_connection_string(
        azurite.connection_string, queue_name, message_encode_policy=BinaryBase64EncodePolicy()
    )


def queue_exists(azurite: Azurite, queue_name: str) -> bool:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    return any(item.name == queue_name for item in service.list_queues(name_starts_with="test-"))


def pending(azurite: Azurite, queue_name: str) -> list[str]:
    return [message.content for message in raw_client(azurite, queue_name).peek_messages(32)]


def test_creates_the_queue_when_missing(azurite: Azurite) -> None:
    name = new_queue_name()
    listener = listener_for(azurite, name, lambda msg: None)
    assert listener.process_once() == 0
    assert queue_exists(azurite, name)


def test_base64_round_trip_and_success_deletes(azurite: Azurite) -> None:
    name = new_queue_name()
    received: list[func.QueueMessage] = []
    listener = listener_for(azurite, name, lambda msg: received.append(msg))
    listener.process_once()
    payload = b'{"connection": "c-1"}\x00\xff'
    sent = base64_sender(azurite, name).send_message(payload)

    assert listener.process_once() == 1

    (message,) = received
    assert message.get_body() == payload
    assert message.id == sent.id
    assert message.dequeue_count == 1
    assert message.pop_receipt
    assert message.insertion_time is not None
    assert message.expiration_time is not None
    assert message.time_next_visible is not None
    assert pending(azurite, name) == []
    assert listener.process_once() == 0


def test_plain_text_encoding_when_host_json_says_none(azurite: Azurite) -> None:
    name = new_queue_name()
    received: list[bytes] = []
    listener = QueueListener(
        "work",
        lambda msg: received.append(msg.get_body()),
        "msg",
        name,
        azurite.connection_string,
        QueueOptions(message_encoding="none"),
    )
    listener.process_once()
    raw_client(azurite, name).send_message("plain text")
    listener.process_once()
    assert received == [b"plain text"]


def test_failures_count_up_then_the_original_moves_to_poison(azurite: Azurite) -> None:
    name = new_queue_name()
    counts: list[int] = []

    def failing(msg: func.QueueMessage) -> None:
        counts.append(msg.dequeue_count)
        raise RuntimeError("cannot send notice")

    listener = listener_for(azurite, name, failing)
    listener.process_once()
    original = base64.b64encode(b"notice for c-1").decode()
    raw_client(azurite, name).send_message(original)

    for _ in range(5):
        assert listener.process_once() == 1

    assert counts == [1, 2, 3, 4, 5]
    assert pending(azurite, name) == []
    assert pending(azurite, name + "-poison") == [original]
    assert listener.process_once() == 0


def test_a_failure_before_the_limit_makes_the_message_visible_again(azurite: Azurite) -> None:
    name = new_queue_name()
    outcomes = iter([RuntimeError("first try fails"), None])
    bodies: list[bytes] = []

    def flaky(msg: func.QueueMessage) -> None:
        bodies.append(msg.get_body())
        outcome = next(outcomes)
        if outcome:
            raise outcome

    listener = listener_for(azurite, name, flaky)
    listener.process_once()
    base64_sender(azurite, name).send_message(b"retry me")
    assert listener.process_once() == 1
    assert pending(azurite, name) == [base64.b64encode(b"retry me").decode()]
    assert listener.process_once() == 1
    assert bodies == [b"retry me", b"retry me"]
    assert pending(azurite, name) == []
    assert not queue_exists(azurite, name + "-poison")


def test_a_message_that_is_not_base64_ends_in_poison_untouched(azurite: Azurite) -> None:
    name = new_queue_name()
    calls: list[object] = []
    listener = listener_for(azurite, name, lambda msg: calls.append(msg))
    listener.process_once()
    raw_client(azurite, name).send_message("not base64 !")
    for _ in range(5):
        listener.process_once()
    assert calls == []
    assert pending(azurite, name + "-poison") == ["not base64 !"]


app = func.FunctionApp()
delivered: queue.Queue[bytes] = queue.Queue()
QUEUE_NAME = new_queue_name()


@app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="TestStorage")
def consume(msg: func.QueueMessage) -> None:
    delivered.put(msg.get_body())


def test_the_running_host_polls_the_queue_named_by_its_settings(azurite: Azurite) -> None:
    settings = {"TEST_QUEUE": QUEUE_NAME, "TestStorage": azurite.connection_string}
    local_host = LocalHost(app, settings, Keys("f", "m")).start(port=0)
    try:
        assert local_host.queues["consume"].queue_name == QUEUE_NAME
        sender = base64_sender(azurite, QUEUE_NAME)
        with contextlib.suppress(ResourceExistsError):
            sender.create_queue()
        sender.send_message(b"hello")
        assert delivered.get(timeout=10) == b"hello"
    finally:
        local_host.stop()


def test_missing_connection_setting_is_named() -> None:
    with pytest.raises(LookupError, match="TestStorage"):
        LocalHost(app, {"TEST_QUEUE": "q"}, Keys("f", "m"))
