"""What the triggers stand on, assembled from settings on first use and cached."""

import functools
from dataclasses import dataclass

from connections.due_index import DueIndex
from connections.service import Services
from triggers.events import EventLog
from triggers.queues import JsonQueue
from triggers.settings import TriggerSettings
from triggers.store import TriggerStore

TRIGGER_DUE_TABLE = "triggerdue"


@dataclass
class TriggerServices:
    services: Services  # the connections' (their store, secrets, clock, notices, ...)
    triggers: TriggerStore
    events: EventLog
    due: DueIndex  # entries name the trigger (`connection_id`) and its interval
    polls: JsonQueue
    deliveries: JsonQueue
    settings: TriggerSettings


@functools.cache
def trigger_services() -> TriggerServices:
    from connections.clients import queue_client, table_client
    from connections.services import services
    from triggers.events import EVENTS_TABLE
    from triggers.queues import EVENTS_QUEUE, POLLS_QUEUE
    from triggers.settings import trigger_settings
    from triggers.store import TRIGGERS_TABLE

    return TriggerServices(
        services=services(),
        triggers=TriggerStore(table_client(TRIGGERS_TABLE)),
        events=EventLog(table_client(EVENTS_TABLE)),
        due=DueIndex(table_client(TRIGGER_DUE_TABLE)),
        polls=JsonQueue(queue_client(POLLS_QUEUE)),
        deliveries=JsonQueue(queue_client(EVENTS_QUEUE)),
        settings=trigger_settings(),
    )
