"""The run command stops clean: Ctrl-C or SIGTERM stop everything within 10 s whatever is in
flight (a renewal sweep waiting for a timed renewal; a renewal whose instance stops answering),
SIGKILL leaves no process of it, and a start clears an Azurite an earlier run left, only if it
is still that Azurite."""

import json
import signal
import subprocess
import time
import uuid

import pytest
import requests
from azure.data.tables import TableClient

from connections.clients import CONNECTIONS_TABLE
from connections.store import CONNECTION_PREFIX
from localrun.azurite import PID_FILE, Azurite, clear_leftover, free_ports
from tests.run_support import FUNCTION_KEY, MASTER_KEY, RunCommand

STOP_SECONDS = 10.0
TENANT = "contoso"
TOKEN_LIFETIME = 120  # seconds: renewed at an exact moment, a minute and a half after it is given


def _short_token_connection(run: RunCommand, lifetime: int) -> str:
    """An OAuth connection to the run command's ServiceNow stand-in whose tokens live `lifetime`
    seconds (so it is renewed at an exact moment); returns its id."""
    client = {"client_id": "short-" + uuid.uuid4().hex[:8], "client_secret": uuid.uuid4().hex}
    short = {**client, "access_token_lifetime": lifetime}
    added = requests.post(f"{run.servicenow_url}/_control/clients", json=short, timeout=10)
    assert added.status_code == 201, added.text
    body = {
        "type": "servicenow",
        "name": "Short-lived token",
        "instance_url": run.servicenow_url,
        "auth": {"method": "oauth2", **client},
    }
    created = requests.post(
        f"{run.url}/api/tenants/{TENANT}/connections",
        json=body,
        headers={"x-functions-key": FUNCTION_KEY},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _start_the_sweep(run: RunCommand) -> None:
    started = requests.post(
        f"{run.url}/admin/functions/renewal_sweep",
        json={"input": ""},
        headers={"x-functions-key": MASTER_KEY},
        timeout=10,
    )
    assert started.status_code == 202


def _start_a_timed_renewal_wait(run: RunCommand) -> None:
    """The renewal sweep waiting for the renewal of a token due in about 90 s."""
    _short_token_connection(run, TOKEN_LIFETIME)
    _start_the_sweep(run)
    run.wait_for("renewal sweep: waiting")


def _wait_for_lease(run: RunCommand, connection_id: str, timeout: float = 30.0) -> None:
    """Polls the connection's record in the run command's Azurite until a worker holds it."""
    table = TableClient.from_connection_string(run.storage(), CONNECTIONS_TABLE)
    deadline = time.monotonic() + timeout
    while not table.get_entity(TENANT, CONNECTION_PREFIX + connection_id).get("LeaseOwner"):
        assert time.monotonic() < deadline, "no worker took the connection"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_a_timed_renewal_wait_stops_everything_within_10_s(
    tmp_path, stack, signum
):
    run = RunCommand(tmp_path, stack)
    try:
        run.wait_for_banner()
        _start_a_timed_renewal_wait(run)
        signalled = time.monotonic()
        run.process.send_signal(signum)
        exit_code = run.process.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        run.kill()
    print(f"{signal.Signals(signum).name}: stopped in {took:.1f} s")
    assert exit_code == 0, run.text()
    assert took < STOP_SECONDS, run.text()
    assert run.leftovers() == []
    output = run.text()
    # The app got the host's SIGTERM (for Ctrl-C too): the sweep stopped waiting and ended,
    # leaving its connection due.
    assert "asked to stop, the rest stays due for the next run" in output
    assert "Executed 'Functions.renewal_sweep' (Succeeded" in output
    assert "still running when the grace period ended" not in output


def test_a_renewal_stuck_in_flight_does_not_hold_the_stop_past_its_grace_period(tmp_path, stack):
    run = RunCommand(tmp_path, stack)
    try:
        run.wait_for_banner()
        connection_id = _short_token_connection(run, lifetime=4)  # renewed 5 s after its grant
        hang = {"seconds": 120, "scope": "token"}  # the instance's token endpoint stops answering
        latency = requests.post(f"{run.servicenow_url}/_control/latency", json=hang, timeout=10)
        assert latency.status_code == 200, latency.text
        _start_the_sweep(run)
        _wait_for_lease(run, connection_id)
        signalled = time.monotonic()
        run.process.send_signal(signal.SIGINT)
        exit_code = run.process.wait(timeout=30)
        took = time.monotonic() - signalled
    finally:
        run.kill()
    print(f"with a renewal stuck in flight: stopped in {took:.1f} s")
    assert exit_code == 0, run.text()
    assert took < STOP_SECONDS, run.text()
    assert "still running when the grace period ended" in run.text()
    assert run.leftovers() == []


def test_sigkill_leaves_no_process_of_the_run_command(tmp_path, stack):
    run = RunCommand(tmp_path, stack)
    try:
        run.wait_for_banner()
        _start_a_timed_renewal_wait(run)
    finally:
        run.kill()
    assert run.wait_until_nothing_left(STOP_SECONDS) == []


def test_a_start_stops_the_azurite_an_earlier_run_left_if_it_is_still_that_azurite(
    tmp_path, caplog
):
    folder = tmp_path / "azurite"
    earlier = Azurite(folder, *free_ports(3)).start()
    left, earlier._process = earlier._process, None  # its run ended without stopping it
    assert left is not None
    later = Azurite(folder, *free_ports(3))
    try:
        later.start()
        assert left.wait(timeout=STOP_SECONDS) is not None
        assert "was left running by an earlier run; stopping it" in caplog.text
        record = json.loads((folder / PID_FILE).read_text())
        assert record["pid"] == later._process.pid
    finally:
        later.stop()
    assert not (folder / PID_FILE).exists()


def test_a_recorded_pid_that_is_now_another_process_is_left_alone(tmp_path, caplog):
    folder = tmp_path / "azurite"
    folder.mkdir()
    other = subprocess.Popen(["cat"], stdin=subprocess.PIPE)  # noqa: S607 -- any process
    try:
        record = {"pid": other.pid, "start_time": "1", "command_line": "node azurite"}
        (folder / PID_FILE).write_text(json.dumps(record))
        clear_leftover(folder)
        assert other.poll() is None
        assert "that pid is now another process, left alone" in caplog.text
        assert not (folder / PID_FILE).exists()
    finally:
        other.kill()
        other.wait()


def test_a_record_of_an_azurite_that_has_ended_is_reported_and_forgotten(tmp_path, caplog):
    folder = tmp_path / "azurite"
    folder.mkdir()
    beyond_pid_max = 2**22 + 1  # no process ever has this pid
    record = {"pid": beyond_pid_max, "start_time": "1", "command_line": "node azurite"}
    (folder / PID_FILE).write_text(json.dumps(record))
    clear_leftover(folder)
    assert f"did not stop its Azurite (pid {beyond_pid_max}), which has ended" in caplog.text
    assert not (folder / PID_FILE).exists()
