"""The local host stops as the Functions host does: nothing new starts, the worker is told to
shut down with SIGTERM, the invocations in flight get a grace period, and the queue messages a
listener holds but has not begun are released for the next one."""

import signal
import threading
import time
import uuid
from datetime import UTC, datetime

import azure.functions as func

from localrun.azurite import Azurite
from localrun.clock import ManualClock
from localrun.host import LocalHost
from localrun.keys import Keys
from tests.test_runner_queues import OPTIONS, base64_sender, listener_for, pending

KEYS = Keys("function-key", "master-key")
NOON = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)

app = func.FunctionApp()
asked_to_stop = threading.Event()  # what the app's SIGTERM handler would set
running = threading.Event()


@app.timer_trigger(arg_name="timer", schedule="0 0 0 1 1 *")
def long_run(timer: func.TimerRequest) -> None:
    running.set()
    asked_to_stop.wait(60)


def test_stop_sends_the_worker_sigterm_and_waits_for_the_run_in_flight() -> None:
    asked_to_stop.clear()
    running.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked_to_stop.set())
    try:
        local_host = LocalHost(app, {}, KEYS, clock=ManualClock(NOON), signal_worker=True)
        local_host.start(port=0)
        run = threading.Thread(target=local_host.timers["long_run"].run_now)
        run.start()
        assert running.wait(10)
        started = time.monotonic()
        local_host.stop(timeout=10)
        took = time.monotonic() - started
        run.join(10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert asked_to_stop.is_set()
    assert not run.is_alive()
    assert took < 5


def test_a_host_that_is_not_the_worker_sends_no_signal() -> None:
    asked_to_stop.clear()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: asked_to_stop.set())
    try:
        LocalHost(app, {}, KEYS, clock=ManualClock(NOON)).start(port=0).stop(timeout=5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not asked_to_stop.is_set()


def test_a_listener_asked_to_stop_releases_the_messages_it_has_not_begun(
    azurite: Azurite,
) -> None:
    name = f"test-{uuid.uuid4().hex[:20]}"
    begun: list[bytes] = []

    def first_then_stop(msg: func.QueueMessage) -> None:
        begun.append(msg.get_body())
        listener.request_stop()  # the host stops while the batch's first message is worked

    listener = listener_for(azurite, name, first_then_stop)
    listener.process_once()  # creates the queue
    sender = base64_sender(azurite, name)
    for index in range(3):
        sender.send_message(f"m{index}".encode())
    assert OPTIONS.batch_size >= 3
    assert listener.process_once() == 3
    assert len(begun) == 1
    # The two not begun are visible again at once (peek sees only visible messages).
    assert len(pending(azurite, name)) == 2
