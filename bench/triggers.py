"""Figure 8: triggers. One burst of changed records polled until caught up (events queued per
second, against a bare `azure-storage-queue` loop sending the same bodies), the instance calls it
made, the delivery of its events to the event receiver, what a poll that finds nothing costs, and
the time from a record becoming visible to its event reaching the receiver, polled every 30 s.

- The burst and the idle polls run `triggers.poller.poll` directly in the bench process, on a
  `TriggerServices` built as `tests/trigger_support.TriggerWorld` builds one: the app's own, with
  queues of the bench's own and its table clients wrapped to count their requests (as for
  figure 2). The triggers are written straight into the store, as `TriggerWorld` writes them.
- The deliveries run `triggers.delivery.deliver` (what the `deliver_event` function calls) on
  the burst's queued messages, `CONCURRENCY` at once.
- The latency runs through the local host: at each simulated poll boundary the `trigger_dispatch`
  timer function (what the timer runs every 30 s), then the host's `poll_trigger` and
  `deliver_event` queue listeners (host.json's queue settings) on the app's own queues.

The event receiver is `bench.standins.BenchEventReceiver` (the stack's `EventReceiver` checks) in
the stand-ins' process; `EVENTS_WEBHOOK_URL` and `EVENTS_WEBHOOK_SECRET` come from there.

Azurite's queues and the order here: Azurite keeps every queue's messages in one in-memory
collection, and each receive or delete scans it (with 20,000 messages waiting elsewhere, receiving
and deleting 200 took minutes), while each deleted message leaves an extent that its queue GC,
every 60 s, removes at a cost that grows with their number (4,000 took it about 40 s at 60% of a
core). So the latency, whose host listeners receive and delete, runs first, on near-empty queues;
then the idle polls, the burst and the bare loop, whose messages stay where they are, unread and
undeleted (the run ends with this figure, and Azurite with it); the deliveries, which touch no
queue, come last.
"""

import dataclasses
import functools
import json
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from bench import measure
from bench.api import Client
from bench.env import BenchEnv
from connections.clients import CONNECTIONS_TABLE, queue_client, table_client
from connections.due_index import DueEntry
from connections.model import format_time
from connections.store import ConnectionStore
from localrun.host import LocalHost
from triggers import poller
from triggers.delivery import deliver
from triggers.events import EVENTS_TABLE, EventLog
from triggers.model import ACTIVE, Trigger
from triggers.queues import SENDERS, JsonQueue
from triggers.services import TriggerServices, trigger_services
from triggers.store import TRIGGERS_TABLE, TriggerStore

TENANT = "trigger-bench"
TOKEN = "bench-trigger-token-" + uuid.uuid4().hex
KEY_NAME = "bench-trigger-key"
INTERVAL = 30  # seconds between polls (the trigger's interval_seconds and TRIGGER_SCHEDULE)
CONCURRENCY = 16  # deliveries at once: host.json batchSize, the messages a host hands at once
IDLE_WAIT = 2.5  # seconds the queue listeners sit idle before a poll boundary: their backoff
# reaches host.json maxPollingInterval (2 s), as between two polls 30 s apart
OLD = "2020-01-01 00:00:00"  # when the records existing before a trigger last changed
CATALOG_ITEM = "0c4fa3e1db2f4410a8e5d1f3f39619a1"
ARRIVAL_TIMEOUT = 120.0

BURST_TABLE, BURST_QUERY = "incident", "category=network^active=true"
BURST_FIELDS = ["number", "short_description", "category", "priority", "state"]
BURST_RECORD = {
    "category": "network",
    "active": "true",
    "priority": "3",
    "short_description": "Switch port flapping on floor 2",
}
IDLE_TABLE, IDLE_QUERY = "problem", "active=true^priority=1"
IDLE_RECORDS = 1000
LATENCY_TABLE = "sc_req_item"
LATENCY_QUERY = f"cat_item={CATALOG_ITEM}^active=true"
LATENCY_FIELDS = ["number", "short_description", "requested_for", "variables.team_name"]
LATENCY_RECORD = {
    "cat_item": CATALOG_ITEM,
    "active": "true",
    "short_description": "New team for Marketing",
    "variables": {"team_name": "Marketing"},
}


def trigger_figures(
    env: BenchEnv,
    client: Client,
    host: LocalHost,
    burst: int,
    deliveries: int,
    idle_polls: int,
    latency_records: int,
    cycles: int,
) -> dict[str, Any]:
    connection_id = _api_token_connection(env, client)
    latency = _latency(env, client, host, connection_id, latency_records, cycles)
    idle = _idle(env, connection_id, idle_polls)
    burst_run = _burst(env, connection_id, burst)
    messages = burst_run.pop("messages")
    bare = _bare_sends(env, messages)
    delivery = _delivery(env, messages[:deliveries], burst_run["trigger_id"])
    return {
        "burst": burst_run,
        "bare": bare,
        "ratio": burst_run["queued_per_second"] / bare["per_second"],
        "delivery": delivery,
        "idle": idle,
        "latency": latency,
    }


# -- set-up ------------------------------------------------------------------------------------


def _api_token_connection(env: BenchEnv, client: Client) -> str:
    env.servicenow("POST", "/_control/api-keys", value=TOKEN, name=KEY_NAME)
    body = {
        "type": "servicenow",
        "name": "Trigger bench (API token)",
        "instance_url": env.servicenow_url,
        "auth": {"method": "api_token", "api_token": TOKEN},
    }
    return str(client.call("POST", f"/api/tenants/{TENANT}/connections", body, 201)["id"])


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class TimedQueue(JsonQueue):
    """The poller's event queue (a fresh one), noting what each send sent and when it returned."""

    def __init__(self, queue: QueueClient) -> None:
        super().__init__(queue)
        self.sent: list[tuple[float, dict[str, Any]]] = []

    def send(self, message: dict[str, Any], delay_seconds: int = 0) -> None:
        super().send(message, delay_seconds)
        self.sent.append((time.perf_counter(), message))


@functools.cache
def _bench_queue(kind: str) -> JsonQueue:
    """A queue of the bench's own (made once per run), so nothing else reads what lands there."""
    return JsonQueue(queue_client(_fresh(f"bench-{kind}")))


def _counted(counts: measure.TableCounts, deliveries: JsonQueue | None = None) -> TriggerServices:
    """The app's trigger services with every table request counted, the bench's own queues for
    polls and (unless `deliveries` is given) events."""
    base = trigger_services()

    def table(name: str) -> Any:
        return measure.CountingTable(table_client(name), counts)

    services = dataclasses.replace(base.services, store=ConnectionStore(table(CONNECTIONS_TABLE)))
    return dataclasses.replace(
        base,
        services=services,
        triggers=TriggerStore(table(TRIGGERS_TABLE)),
        events=EventLog(table(EVENTS_TABLE)),
        deliveries=deliveries or _bench_queue("events"),
        polls=_bench_queue("polls"),
    )


def _add_trigger(
    connection_id: str, name: str, table: str, query: str, fields: list[str]
) -> Trigger:
    """A trigger starting now, written straight into the store (no due entry: only the bench
    polls it), as `TriggerWorld.create` writes one."""
    ts = trigger_services()
    now = ts.services.clock()
    trigger = Trigger(
        id=uuid.uuid4().hex,
        tenant_id=TENANT,
        connection_id=connection_id,
        name=name,
        table=table,
        query=query,
        fields=fields,
        start_at=now,
        interval_seconds=INTERVAL,
        enabled=True,
        created_at=now,
        updated_at=now,
        status=ACTIVE,
        cursor_updated_on=poller.sn_time(now),
    )
    return ts.triggers.add(trigger)


def _create_records(env: BenchEnv, table: str, fields: dict[str, Any], count: int, **more: Any):
    path = f"/_control/tables/{table}/records"
    return list(env.servicenow("POST", path, fields=fields, count=count, **more)["sys_ids"])


def _clear_instance_log(env: BenchEnv) -> None:
    env.servicenow("POST", "/_control/requests/clear")


def _instance_calls(env: BenchEnv) -> list[dict[str, Any]]:
    """The Table API requests in the ServiceNow stand-in's request log."""
    logged = env.servicenow("GET", "/_control/requests")["requests"]
    return [entry for entry in logged if "/table/" in entry["path"]]


class _Cpu:
    """CPU seconds each process spent since `start()`: this one (`bench`), Azurite, stand-ins."""

    def __init__(self, env: BenchEnv) -> None:
        self._pids = env.server_pids
        self.start()

    def start(self) -> None:
        self._before = {name: measure.cpu_seconds(pid) for name, pid in self._pids.items()}
        self._bench = time.process_time()

    def spent(self) -> dict[str, float]:
        spent = {"bench": time.process_time() - self._bench}
        for name, pid in self._pids.items():
            spent[name] = measure.cpu_seconds(pid) - self._before[name]
        return spent


def _per_item_ms(cpu: dict[str, float], items: int) -> dict[str, float]:
    return {name: seconds * 1000 / items for name, seconds in cpu.items()}


# -- 1 and 2: the burst ---------------------------------------------------------------------------


def _burst(env: BenchEnv, connection_id: str, records: int) -> dict[str, Any]:
    """`records` matching records, last changed long ago, all changed by one bulk update after
    the trigger's start; then the trigger polled until caught up."""
    _create_records(env, BURST_TABLE, BURST_RECORD, records, sys_updated_on=OLD)
    trigger = _add_trigger(
        connection_id, "Network incidents", BURST_TABLE, BURST_QUERY, BURST_FIELDS
    )
    update = f"/_control/tables/{BURST_TABLE}/records/update"
    changed = env.servicenow("POST", update, fields={"state": "2"}, query=BURST_QUERY)["sys_ids"]
    if len(changed) != records:
        raise RuntimeError(f"the bulk update changed {len(changed)} records, not {records}")
    counts = measure.TableCounts()
    events = TimedQueue(queue_client(_fresh("bench-events")))
    ts = _counted(counts, events)
    phases: dict[str, list[float]] = {"read": [], "queue": [], "record": []}
    real_read = poller._read_page
    poller._read_page = _durations(real_read, phases["read"])  # `_page` calls it by name
    events.send_all = _durations(events.send_all, phases["queue"])  # type: ignore[method-assign]
    ts.events.record = _durations(ts.events.record, phases["record"])  # type: ignore[method-assign]
    _clear_instance_log(env)
    cpu = _Cpu(env)
    polls = []
    started = time.perf_counter()
    try:
        while True:
            outcome = poller.poll(ts, TENANT, trigger.id)
            polls.append({"outcome": outcome, "seconds": time.perf_counter() - started})
            if not outcome.startswith("more") or len(polls) >= 50:
                break
    finally:
        poller._read_page = real_read
    whole = time.perf_counter() - started
    spent = cpu.spent()
    calls = _instance_calls(env)
    sent = events.sent
    expected = {poller.event_id(trigger.id, sys_id, 1) for sys_id in changed}
    queued = [message["event"]["event_id"] for _, message in sent]
    if len(queued) != records or set(queued) != expected:
        raise RuntimeError(f"{len(queued)} events queued ({len(set(queued))} distinct)")
    record = trigger_services().triggers.get(TENANT, trigger.id)
    if record.events_emitted != records or record.scan_from:
        raise RuntimeError(f"the trigger is not caught up: {record.events_emitted} emitted")
    to_last = max(moment for moment, _ in sent) - started
    return {
        "trigger_id": trigger.id,
        "records": records,
        "polls": polls,
        "whole_seconds": whole,
        "first_queued_seconds": min(moment for moment, _ in sent) - started,
        "last_queued_seconds": to_last,
        "queued_per_second": records / to_last,
        "seconds_changed": len({message["event"]["sys_updated_on"] for _, message in sent}),
        "phases": {name: {"n": len(took), "seconds": sum(took)} for name, took in phases.items()},
        "instance_calls": len(calls),
        "instance_calls_per_1000": len(calls) * 1000 / records,
        "instance_paths": dict(Counter(f"{call['method']} {call['path']}" for call in calls)),
        "table_requests": dict(counts.requests),
        "table_requests_total": counts.total_requests(),
        "cpu_per_event_ms": _per_item_ms(spent, records),
        "senders": SENDERS,
        "messages": [message for _, message in sent],
        "message_bytes": statistics.fmean(
            len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
            for _, message in sent
        ),
    }


def _bare_sends(env: BenchEnv, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The same bodies, as the app's queue writes them (JSON, base64), sent to a fresh queue by
    a bare `QueueClient`, one after another."""
    texts = [json.dumps(m, separators=(",", ":"), ensure_ascii=False) for m in messages]
    queue = QueueClient.from_connection_string(
        env.environment["AzureWebJobsStorage"],
        _fresh("bench-bare"),
        message_encode_policy=TextBase64EncodePolicy(),
    )
    queue.create_queue()
    cpu = _Cpu(env)
    started = time.perf_counter()
    for text in texts:
        queue.send_message(text)
    elapsed = time.perf_counter() - started
    spent = cpu.spent()
    queue.close()
    return {
        "messages": len(texts),
        "seconds": elapsed,
        "per_second": len(texts) / elapsed,
        "cpu_per_message_ms": _per_item_ms(spent, len(texts)),
    }


# -- 3: delivery ---------------------------------------------------------------------------------


def _delivery(env: BenchEnv, messages: list[dict[str, Any]], trigger_id: str) -> dict[str, Any]:
    counts = measure.TableCounts()
    ts = _counted(counts)
    cpu = _Cpu(env)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        started = time.perf_counter()
        list(pool.map(lambda message: deliver(ts, message, 1), messages))
        elapsed = time.perf_counter() - started
    spent = cpu.spent()
    arrivals = env.event_arrivals(trigger_id)
    accepted = {arrival[0] for arrival in arrivals if arrival[2] == 204}
    sent = {message["event"]["event_id"] for message in messages}
    if accepted != sent:
        raise RuntimeError(f"the receiver accepted {len(accepted)} of {len(sent)} events")
    return {
        "events": len(messages),
        "concurrency": CONCURRENCY,
        "seconds": elapsed,
        "per_second": len(messages) / elapsed,
        "received": len(arrivals),
        "accepted": len(accepted),
        "duplicates": sum(1 for arrival in arrivals if arrival[4]),
        "invalid_signatures": sum(1 for arrival in arrivals if not arrival[3]),
        "table_requests": dict(counts.requests),
        "table_requests_per_event": counts.total_requests() / len(messages),
        "cpu_per_event_ms": _per_item_ms(spent, len(messages)),
    }


# -- 4: a poll that finds nothing ----------------------------------------------------------------


def _idle(env: BenchEnv, connection_id: str, polls: int) -> dict[str, Any]:
    """A trigger on a table of matching records none of which changed since long before it
    started: polled once, then `polls` times by the worker that polled it last (warm), then
    `polls` times with the poller's memory of triggers cleared first (cold)."""
    _create_records(
        env, IDLE_TABLE, {"active": "true", "priority": "1"}, IDLE_RECORDS, sys_updated_on=OLD
    )
    trigger = _add_trigger(connection_id, "Priority 1 problems", IDLE_TABLE, IDLE_QUERY, [])
    poller.poll(trigger_services(), TENANT, trigger.id)  # its first poll, by this worker
    runs: dict[str, Any] = {}
    for kind in ("warm", "cold"):
        rows = []
        for _ in range(polls):
            if kind == "cold":
                poller.KNOWN._items.clear()
            counts = measure.TableCounts()
            ts = _counted(counts)
            _clear_instance_log(env)
            env.reset_vault_counts()
            started = time.perf_counter()
            outcome = poller.poll(ts, TENANT, trigger.id)
            elapsed = time.perf_counter() - started
            if not outcome.startswith("ok (0 events)"):
                raise RuntimeError(f"an idle poll answered {outcome}")
            rows.append(
                {
                    "seconds": elapsed,
                    "instance_calls": len(_instance_calls(env)),
                    "table_requests": dict(counts.requests),
                    "vault_calls": sum(env.vault_calls().values()),
                }
            )
        runs[kind] = _idle_summary(rows)
    return {"records": IDLE_RECORDS, "polls": polls, **runs}


def _idle_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    requests: Counter[str] = Counter()
    for row in rows:
        requests.update(row["table_requests"])
    totals = [sum(row["table_requests"].values()) for row in rows]
    return {
        "instance_calls": max(row["instance_calls"] for row in rows),
        "instance_calls_min": min(row["instance_calls"] for row in rows),
        "table_requests": max(totals),
        "table_requests_min": min(totals),
        "by_table": {name: count / len(rows) for name, count in sorted(requests.items())},
        "vault_calls": max(row["vault_calls"] for row in rows),
        "p50_ms": measure.percentile([row["seconds"] for row in rows], 0.5) * 1000,
    }


# -- 5: latency ----------------------------------------------------------------------------------


def _latency(
    env: BenchEnv, client: Client, host: LocalHost, connection_id: str, records: int, cycles: int
) -> dict[str, Any]:
    """Per cycle: the trigger made due (the simulated 30 s since the last poll have passed), the
    queue listeners left idle, `records` records made visible, then at the boundary the dispatch
    timer's function run and the real pipeline timed until every event reached the receiver.
    Each record is given a uniformly random moment within the 30 s before the boundary at which
    it became visible: its latency is the wait from there to the boundary plus the measured time
    from the boundary to its event's arrival."""
    body = {
        "name": "New Teams requests",
        "table": LATENCY_TABLE,
        "query": LATENCY_QUERY,
        "fields": LATENCY_FIELDS,
        "interval_seconds": INTERVAL,
    }
    path = f"/api/tenants/{TENANT}/connections/{connection_id}/triggers"
    trigger_id = str(client.call("POST", path, body, 201)["id"])
    polled: list[tuple[float, float]] = []
    real_poll = poller.poll
    poller.poll = _timing(real_poll, polled)  # `poll_trigger` imports it at each call
    listeners = [host.queues["poll_trigger"], host.queues["deliver_event"]]
    for listener in listeners:
        listener.start()
    rng = random.Random(8)  # noqa: S311 -- simulated moments, not secrets
    samples: list[dict[str, float]] = []
    parts: list[dict[str, float]] = []
    try:
        _boundary(host, trigger_id)  # the trigger's first poll, not measured
        _wait(lambda: len(polled) >= 1, "the first poll")
        for _ in range(cycles):
            sys_ids = _create_records(env, LATENCY_TABLE, LATENCY_RECORD, records)
            offsets = [rng.uniform(0, INTERVAL) for _ in sys_ids]
            polls_before = len(polled)
            boundary = _boundary(host, trigger_id)
            expected = {poller.event_id(trigger_id, sys_id, 0): sys_id for sys_id in sys_ids}
            arrived = _arrivals(env, trigger_id, set(expected))
            for (event_id, _sys_id), offset in zip(expected.items(), offsets, strict=True):
                measured = arrived[event_id] - boundary
                wait = INTERVAL - offset
                samples.append({"wait": wait, "measured": measured, "total": wait + measured})
            poll_start, poll_end = polled[polls_before]
            times = sorted(arrived.values())
            parts.append(
                {
                    "to_poll": poll_start - boundary,
                    "poll": poll_end - poll_start,
                    "to_first": times[0] - poll_end,
                    "first_to_last": times[-1] - times[0],
                    "last": times[-1] - boundary,
                }
            )
    finally:
        for listener in listeners:
            listener.stop()
        poller.poll = real_poll
    arrivals = env.event_arrivals(trigger_id)
    return {
        "records": records,
        "cycles": cycles,
        "interval": INTERVAL,
        "samples": len(samples),
        "total": _seconds_summary([sample["total"] for sample in samples]),
        "measured": _seconds_summary([sample["measured"] for sample in samples]),
        "wait": _seconds_summary([sample["wait"] for sample in samples]),
        "parts": {name: statistics.median(part[name] for part in parts) for name in parts[0]},
        "duplicates": sum(1 for arrival in arrivals if arrival[4]),
        "refused": sum(1 for arrival in arrivals if arrival[2] != 204),
        "batch_size": host.config.queues.batch_size,
        "max_polling_seconds": host.config.queues.max_polling_interval.total_seconds(),
    }


def _durations(inner: Callable[..., Any], sink: list[float]) -> Callable[..., Any]:
    """`inner`, noting how long each call took."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - started)

    return timed


def _timing(inner: Callable[..., Any], sink: list[tuple[float, float]]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.time()
        try:
            return inner(*args, **kwargs)
        finally:
            sink.append((started, time.time()))

    return timed


def _boundary(host: LocalHost, trigger_id: str) -> float:
    """Makes the trigger due now (the entry the last dispatch moved an interval on goes back to
    now: the simulated interval has passed), leaves the listeners idle for `IDLE_WAIT`, then
    runs the dispatch timer's function, as the timer would at the boundary; returns when."""
    ts = trigger_services()
    now = ts.services.clock()
    for entry in ts.due.due(now + timedelta(days=1), 1000):
        if entry.connection_id == trigger_id:
            ts.due.remove(entry)
    ts.due.put(DueEntry(format_time(now) or "", TENANT, trigger_id, interval=INTERVAL))
    time.sleep(IDLE_WAIT)
    boundary = time.time()
    if not host.timers["trigger_dispatch"].run_now():
        raise RuntimeError("trigger_dispatch failed")
    return boundary


def _arrivals(env: BenchEnv, trigger_id: str, expected: set[str]) -> dict[str, float]:
    """When each expected event first reached the receiver (accepted), waiting for all."""
    found: dict[str, float] = {}

    def complete() -> bool:
        for event_id, _, status, _, _, at in env.event_arrivals(trigger_id):
            if status == 204 and event_id in expected:
                found.setdefault(event_id, at)
        return len(found) == len(expected)

    _wait(complete, f"{len(expected)} events at the receiver")
    return found


def _wait(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {ARRIVAL_TIMEOUT:.0f} s for {what}")
        time.sleep(0.1)


def _seconds_summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": measure.percentile(values, 0.5),
        "p95": measure.percentile(values, 0.95),
        "max": max(values),
        "mean": statistics.fmean(values),
    }
