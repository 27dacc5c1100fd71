"""Timer triggers on an injected clock: nothing here waits on the wall clock's schedule."""

import queue
import threading
import time
from datetime import UTC, datetime, timedelta

import azure.functions as func
import pytest

from localrun.clock import ManualClock, SystemClock
from localrun.host import LocalHost
from localrun.keys import Keys
from localrun.ncrontab import CronError, parse
from localrun.settings import MissingSettingError
from localrun.timers import TimerScheduler

NOON = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
KEYS = Keys("function-key", "master-key")


def scheduler_for(function, clock, expression="0 */5 * * * *", **kwargs) -> TimerScheduler:
    return TimerScheduler("tick", function, "timer", parse(expression), clock=clock, **kwargs)


def test_runs_at_each_occurrence_of_the_schedule() -> None:
    clock = ManualClock(NOON)
    runs: queue.Queue[datetime] = queue.Queue()
    scheduler = scheduler_for(lambda timer: runs.put(clock.now()), clock)
    scheduler.start()
    try:
        assert clock.wait_for_waiters(1)
        assert scheduler.next_due == NOON + timedelta(minutes=5)
        clock.advance(timedelta(minutes=4, seconds=59))
        assert runs.empty()
        clock.advance(timedelta(seconds=1))
        assert runs.get(timeout=5) == NOON + timedelta(minutes=5)
        assert clock.wait_for_waiters(1)
        assert scheduler.next_due == NOON + timedelta(minutes=10)
        clock.advance(timedelta(minutes=5))
        assert runs.get(timeout=5) == NOON + timedelta(minutes=10)
    finally:
        scheduler.stop()


def test_passes_a_timer_request() -> None:
    clock = ManualClock(NOON)
    seen: queue.Queue[object] = queue.Queue()
    scheduler = scheduler_for(lambda timer: seen.put(timer), clock)
    assert scheduler.run_now() is True
    timer = seen.get_nowait()
    assert isinstance(timer, func.TimerRequest)
    assert timer.past_due is False


def test_run_now_reports_failure() -> None:
    def failing(timer: func.TimerRequest) -> None:
        raise RuntimeError("no")

    assert scheduler_for(failing, ManualClock(NOON)).run_now() is False


def test_never_two_runs_at_once_and_missed_occurrences_are_skipped() -> None:
    clock = ManualClock(NOON)
    started, release = threading.Event(), threading.Event()
    lock = threading.Lock()
    running, most, total = 0, 0, 0

    def slow(timer: func.TimerRequest) -> None:
        nonlocal running, most, total
        with lock:
            running += 1
            total += 1
            most = max(most, running)
        started.set()
        release.wait(10)
        with lock:
            running -= 1

    scheduler = scheduler_for(slow, clock)
    scheduler.start()
    try:
        assert clock.wait_for_waiters(1)
        clock.set(NOON + timedelta(minutes=5))
        assert started.wait(5)
        # While the scheduled run is in progress: admin calls, and two occurrences pass by.
        callers = [threading.Thread(target=scheduler.run_now) for _ in range(3)]
        for caller in callers:
            caller.start()
        clock.set(NOON + timedelta(minutes=17))
        release.set()
        for caller in callers:
            caller.join(10)
        assert clock.wait_for_waiters(1)
        assert scheduler.next_due == NOON + timedelta(minutes=20)
    finally:
        scheduler.stop()
    assert most == 1
    assert total == 4  # the scheduled run and the three calls that waited for it


def test_run_on_startup_runs_once_before_the_schedule() -> None:
    clock = ManualClock(NOON)
    runs: queue.Queue[datetime] = queue.Queue()
    scheduler = scheduler_for(lambda timer: runs.put(clock.now()), clock, run_on_startup=True)
    scheduler.start()
    try:
        assert runs.get(timeout=5) == NOON
        assert clock.wait_for_waiters(1)
        assert runs.empty()
    finally:
        scheduler.stop()


def test_stops_promptly_while_waiting_on_the_system_clock() -> None:
    scheduler = scheduler_for(lambda timer: None, SystemClock(), "0 0 0 1 1 *")
    scheduler.start()
    started = time.monotonic()
    scheduler.stop()
    assert time.monotonic() - started < 2


def test_stops_promptly_while_waiting_on_a_manual_clock() -> None:
    clock = ManualClock(NOON)
    scheduler = scheduler_for(lambda timer: None, clock)
    scheduler.start()
    assert clock.wait_for_waiters(1)
    scheduler.stop(timeout=5)
    assert clock.next_wake() is None


app = func.FunctionApp()
host_runs: queue.Queue[str] = queue.Queue()


@app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%")
def sweep(timer: func.TimerRequest) -> None:
    host_runs.put("sweep")


def test_host_resolves_the_schedule_setting_and_runs_the_timer() -> None:
    clock = ManualClock(NOON)
    settings = {"TEST_SCHEDULE": "*/30 * * * * *"}
    local_host = LocalHost(app, settings, KEYS, clock=clock).start(port=0)
    try:
        assert local_host.timers["sweep"].schedule.expression == "*/30 * * * * *"
        assert clock.wait_for_waiters(1)
        clock.advance(timedelta(seconds=30))
        assert host_runs.get(timeout=5) == "sweep"
    finally:
        local_host.stop()


def test_host_names_a_missing_schedule_setting() -> None:
    with pytest.raises(MissingSettingError, match="TEST_SCHEDULE"):
        LocalHost(app, {}, KEYS)


def test_host_names_the_function_with_a_bad_schedule() -> None:
    with pytest.raises(CronError, match="function sweep: '0 0 0 \\* \\*'"):
        LocalHost(app, {"TEST_SCHEDULE": "0 0 0 * *"}, KEYS)
