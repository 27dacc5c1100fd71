"""A trigger wired to the test stack, polled directly, with its own queues and a driven clock."""

import base64
import dataclasses
import json
import uuid
from datetime import datetime, timedelta

from azure.storage.queue import QueueClient

from connections.clients import queue_client
from localrun.stack import LocalStack
from tests.renewal_support import DrivenClock
from triggers import poller
from triggers.model import ACTIVE, Trigger
from triggers.poller import sn_time
from triggers.queues import JsonQueue
from triggers.services import TriggerServices, trigger_services

CONNECTION_TABLE_FIELDS = ["number", "short_description", "variables.team_name"]


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


def drain(queue: QueueClient) -> list[dict]:
    messages = []
    while True:
        batch = list(queue.receive_messages(messages_per_page=32, max_messages=32))
        if not batch:
            return messages
        for message in batch:
            messages.append(json.loads(_text(message.content)))
            queue.delete_message(message)


def _text(content: str) -> str:
    try:
        return base64.b64decode(content, validate=True).decode()
    except ValueError:
        return content


def versions(state, table: str, query: str = "") -> list[tuple[str, int]]:
    """(sys_id, sys_mod_count) of the records the stand-in holds now (visible or not)."""
    found = state.list_records(table, query)["records"]
    return [(r["sys_id"], int(r["fields"]["sys_mod_count"])) for r in found]


def moment(clock: DrivenClock, seconds: float = 0) -> datetime:
    return clock.now() + timedelta(seconds=seconds)
