"""A trigger wired to the test stack, polled directly, with its own queues and a driven clock."""

import base64
import contextlib
import dataclasses
import json
import uuid
from collections import Counter

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from connections.clients import queue_client
from localrun.stack import LocalStack
from tests.renewal_support import DrivenClock
from triggers import poller
from triggers.events import EVENTS_TABLE, EventLog
from triggers.model import ACTIVE, Trigger
from triggers.poller import sn_time
from triggers.queues import JsonQueue
from triggers.services import TriggerServices, trigger_services
from triggers.store import TRIGGERS_TABLE, TriggerStore

# Storage clients that give up within a fraction of a second (as tests/test_faults.py's): a poll
# meeting a stopped Azurite fails at once instead of after the app's bounded retries.
FAST_STORAGE = {
    "retry_total": 1,
    "retry_backoff_factor": 0.01,
    "retry_backoff_max": 0.05,
    "connection_timeout": 2,
    "read_timeout": 5,
}


class TriggerWorld:
    """One trigger of one connection; `poll()` runs the poller, `received()` reads the events it
    queued (the delivery queue is the test's own, so nothing else lands there)."""

    def __init__(self, stack: LocalStack, clock: DrivenClock, connection: dict) -> None:
        self.stack = stack
        self.clock = clock
        self.connection = connection
        suffix = uuid.uuid4().hex[:10]
        self.events_queue = queue_client(f"events-{suffix}")
        self.polls_queue = queue_client(f"polls-{suffix}")
        self.ts: TriggerServices = dataclasses.replace(
            trigger_services(),
            deliveries=JsonQueue(self.events_queue),
            polls=JsonQueue(self.polls_queue),
        )
        self.messages: list[dict] = []
        self.trigger: Trigger | None = None

    def create(self, table: str = "incident", query: str = "", **values) -> Trigger:
        now = self.clock.now()
        start_at = values.pop("start_at", now)
        trigger = Trigger(
            id=uuid.uuid4().hex,
            tenant_id=self.connection["tenant_id"],
            connection_id=self.connection["id"],
            name=values.pop("name", "Test trigger"),
            table=table,
            query=query,
            fields=values.pop("fields", ["number", "short_description"]),
            start_at=start_at,
            interval_seconds=values.pop("interval_seconds", 60),
            enabled=True,
            created_at=now,
            updated_at=now,
            status=ACTIVE,
            cursor_updated_on=sn_time(start_at),
        )
        self.trigger = self.ts.triggers.add(trigger)
        return trigger

    def poll(self, fresh: bool = False) -> str:
        assert self.trigger is not None
        return poller.poll(self.ts, self.trigger.tenant_id, self.trigger.id, fresh=fresh)

    def poll_until_caught_up(self, most: int = 50) -> list[str]:
        """Polls, and polls again while a poll says more is waiting."""
        outcomes = [self.poll()]
        while outcomes[-1].startswith("more") and len(outcomes) < most:
            outcomes.append(self.poll())
        return outcomes

    def read(self) -> Trigger:
        assert self.trigger is not None
        return self.ts.triggers.get(self.trigger.tenant_id, self.trigger.id)

    def received(self) -> list[dict]:
        """Every event message queued so far (drained from the queue, kept here)."""
        self.messages += drain(self.events_queue)
        return [message["event"] for message in self.messages]

    def event_ids(self) -> list[str]:
        return [event["event_id"] for event in self.received()]

    def expected_ids(self, versions: list[tuple[str, int]]) -> set[str]:
        assert self.trigger is not None
        return {poller.event_id(self.trigger.id, sys_id, mod) for sys_id, mod in versions}

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def records_after_start(self, count: int, table: str = "incident") -> list[str]:
        """A trigger on `table` started now, then `count` new records a second later, the clock
        left two seconds after them; returns their sys_ids."""
        self.create(table)
        self.advance(1)
        created = self.stack.servicenow.state.create_records(table, count=count)
        self.advance(2)
        return created

    def use_fast_storage(self) -> None:
        """The trigger's table, its events and its queues through clients that fail fast (the
        connection's record is still read through the app's own client)."""
        connection_string = self.stack.azurite.connection_string
        tables = TableServiceClient.from_connection_string(connection_string, **FAST_STORAGE)

        def queue(name: str) -> QueueClient:
            client = QueueClient.from_connection_string(
                connection_string,
                name,
                message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=TextBase64DecodePolicy(),
                initial_backoff=0.01,
                increment_base=0.01,
                random_jitter_range=0.01,
                **FAST_STORAGE,
            )
            with contextlib.suppress(ResourceExistsError):
                client.create_queue()
            return client

        self.events_queue = queue(self.events_queue.queue_name)
        self.polls_queue = queue(self.polls_queue.queue_name)
        self.ts = dataclasses.replace(
            self.ts,
            triggers=TriggerStore(tables.get_table_client(TRIGGERS_TABLE)),
            events=EventLog(tables.get_table_client(EVENTS_TABLE)),
            deliveries=JsonQueue(self.events_queue),
            polls=JsonQueue(self.polls_queue),
        )


def assert_exactly(world: TriggerWorld, expected: set[str]) -> None:
    """The events queued so far are exactly `expected`, each once: none missing, none twice."""
    received = world.event_ids()
    doubled = [event_id for event_id, count in Counter(received).items() if count > 1]
    assert not doubled, f"{len(doubled)} events queued twice"
    missing = expected - set(received)
    extra = set(received) - expected
    assert not missing and not extra, f"{len(missing)} missing, {len(extra)} unexpected"


HIDDEN_SECONDS = 7 * 24 * 3600  # the longest a received message stays invisible


def drain(queue: QueueClient) -> list[dict]:
    """Every message the queue shows now. Each is received for the longest visibility timeout
    rather than deleted (the queue is the test's own), so a batch of 32 costs one call."""
    messages = []
    while True:
        batch = list(
            queue.receive_messages(
                messages_per_page=32, max_messages=32, visibility_timeout=HIDDEN_SECONDS
            )
        )
        if not batch:
            return messages
        messages += [json.loads(_text(message.content)) for message in batch]


def _text(content: str) -> str:
    try:
        return base64.b64decode(content, validate=True).decode()
    except ValueError:
        return content


def versions(state, table: str, query: str = "") -> list[tuple[str, int]]:
    """(sys_id, sys_mod_count) of the records the stand-in holds now (visible or not)."""
    found = state.list_records(table, query)["records"]
    return [(r["sys_id"], int(r["fields"]["sys_mod_count"])) for r in found]
