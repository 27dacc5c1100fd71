"""Shutdown requested (connections/shutdown.py): the SIGTERM handler the app installs, the waits
that end at once, and a renewal sweep that stops early leaving what it did not work due.

The sweeps run on the app's services with a clock the test drives and a due index of their own;
each test gets a fresh shutdown state, so asking it to stop stops only that test's work."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from connections import services as services_module
from connections import shutdown
from connections.clients import table_client
from connections.due_index import DueIndex
from connections.model import Connection
from connections.service import Services, create_connection, current_entry
from renewal.sweep import SweepSettings, run_sweep
from renewal.worker import LEASE, wait_for_release
from servicenow.client import ServiceNowClient
from tests.renewal_support import DrivenClock
from tests.run_support import ROOT

CLIENT_SECRET = "stop-secret-" + uuid.uuid4().hex
TENANT = "stop-tests"


@pytest.fixture
def fresh_shutdown(monkeypatch):
    """The process's shutdown state, fresh for the test (the real one is left as it was)."""
    watched, written = os.pipe()
    monkeypatch.setattr(shutdown, "_watched", watched)
    monkeypatch.setattr(shutdown, "_written", written)
    monkeypatch.setattr(shutdown, "_requested", False)
    yield
    os.close(watched)
    os.close(written)


@pytest.fixture
def clock(stack) -> DrivenClock:
    return DrivenClock(stack)


@pytest.fixture
def services(stack, clock, fresh_shutdown) -> Services:
    """The app's services on the driven clock, with a due index of their own."""
    app = services_module.services()
    return dataclasses.replace(
        app,
        clock=clock.now,
        due=DueIndex(table_client("stopdue" + uuid.uuid4().hex[:12])),
        servicenow=ServiceNowClient(app.policy, sleep=lambda seconds: None),
    )


def _oauth_connection(services: Services, stack, lifetime: int) -> Connection:
    """A new OAuth connection whose tokens live `lifetime` seconds, as stored."""
    client_id = "stop-" + uuid.uuid4().hex[:8]
    stack.servicenow.state.add_client(client_id, CLIENT_SECRET, access_token_lifetime=lifetime)
    body = {
        "type": "servicenow",
        "name": f"Stop {uuid.uuid4().hex[:6]}",
        "instance_url": stack.servicenow.url,
        "auth": {"method": "oauth2", "client_id": client_id, "client_secret": CLIENT_SECRET},
    }
    return services.store.get(TENANT, create_connection(services, TENANT, body).id)


def _due_ids(services: Services, clock: DrivenClock) -> set[str]:
    """The connections the due index has due now."""
    return {entry.connection_id for entry in services.due.due(clock.now(), 100)}


def test_the_sigterm_handler_requests_shutdown_and_chains_the_one_before():
    program = """
        import os, signal, threading
        from connections import shutdown

        chained = []
        signal.signal(signal.SIGTERM, lambda signum, frame: chained.append(signum))
        assert shutdown.install() and shutdown.install()  # installed once
        woken = []
        waiting = threading.Thread(target=lambda: woken.append(shutdown.sleep(60)))
        waiting.start()
        os.kill(os.getpid(), signal.SIGTERM)
        waiting.join()
        print(shutdown.requested(), woken, chained == [signal.SIGTERM], shutdown.sleep(60))
    """
    assert _run(program) == "True [True] True True"


def test_where_sigterm_ended_the_process_it_still_does_as_ctrl_c_would():
    program = """
        import os, signal
        from connections import shutdown

        shutdown.install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            shutdown.sleep(60)
        except KeyboardInterrupt:
            print("stopped", shutdown.requested())
    """
    assert _run(program) == "stopped True"


def _run(program: str) -> str:
    done = subprocess.run(  # noqa: S603 -- this interpreter, the test's own program
        [sys.executable, "-c", textwrap.dedent(program)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_a_sweep_waiting_for_a_timed_renewal_stops_at_once_leaving_it_due(services, stack, clock):
    connection = _oauth_connection(services, stack, lifetime=120)
    entry = current_entry(connection)
    assert entry is not None and entry.exact
    waiting = threading.Event()

    def sleep(seconds: float) -> bool:  # the real wait, on the wall clock
        waiting.set()
        return shutdown.sleep(seconds)

    services.sleep = sleep
    outcome: list[Counter] = []
    sweep = threading.Thread(target=lambda: outcome.append(run_sweep(services, SweepSettings())))
    sweep.start()
    assert waiting.wait(30), "the sweep never waited for the timed renewal"
    asked = time.monotonic()
    shutdown.request()
    sweep.join(10)
    assert not sweep.is_alive(), "the sweep went on waiting"
    print(f"sweep stopped {time.monotonic() - asked:.2f} s after it was asked")
    assert outcome == [Counter()]
    clock.advance((connection.next_due_at - clock.now()).total_seconds())
    assert _due_ids(services, clock) == {connection.id}
    kept = services.store.get(TENANT, connection.id)
    assert kept.next_due_at == connection.next_due_at
    assert kept.auth["token_expires_at"] == connection.auth["token_expires_at"]


def test_a_sweep_asked_to_stop_begins_no_more_renewals_and_leaves_them_due(services, stack, clock):
    connections = [_oauth_connection(services, stack, lifetime=1800) for _ in range(3)]
    clock.advance(1500)  # all three are due: renewed 10 minutes (and some jitter) before expiry
    assert _due_ids(services, clock) == {connection.id for connection in connections}
    client = services.servicenow
    exchange = client.client_credentials

    def exchange_then_stop(*args):
        shutdown.request()  # the host asks the app to stop while the first renewal is under way
        return exchange(*args)

    client.client_credentials = exchange_then_stop
    counts = run_sweep(services, SweepSettings(concurrency=1))
    # The renewal under way finished and was written; the one handed over but not begun, and
    # the one not handed over, are left due.
    assert counts == Counter(connected=1, stopped=1)
    renewed = [
        connection
        for connection in connections
        if services.store.get(TENANT, connection.id).next_due_at != connection.next_due_at
    ]
    assert len(renewed) == 1
    assert renewed[0].id not in _due_ids(services, clock)
    left = {connection.id for connection in connections} - {renewed[0].id}
    assert _due_ids(services, clock) == left


def test_waiting_for_another_workers_lease_ends_when_the_app_is_asked_to_stop(
    services, stack, clock
):
    connection = _oauth_connection(services, stack, lifetime=1800)
    connection.lease_owner, connection.lease_until = "another-worker", clock.now() + LEASE
    services.store.write_lease(connection)
    shutdown.request()
    asked = time.monotonic()
    found = wait_for_release(services, TENANT, connection.id, timeout=60)
    assert time.monotonic() - asked < 5
    assert found.lease_owner == "another-worker"
    assert timedelta(0) < found.lease_until - clock.now() <= LEASE
