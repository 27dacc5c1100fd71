"""The app's one `Services`, assembled from settings on first use and cached."""

import functools
import gc

from connections.clients import DUE_TABLE, queue_client, secret_client, table_client
from connections.due_index import DueIndex
from connections.lifecycle import LifecycleSettings
from connections.notices import NOTICES_QUEUE, NoticeQueue
from connections.secrets import SecretStore
from connections.service import Services
from connections.store import ConnectionStore
from servicenow.client import ServiceNowClient
from servicenow.outbound import OutboundPolicy


@functools.cache
def services() -> Services:
    assembled = _assemble()
    # The SDK modules, clients and settings made so far live as long as the process: moved out
    # of the collector's reach, they are no longer walked by every full collection (which made
    # the slowest list calls about half again as slow as the typical one).
    gc.freeze()
    return assembled


def _assemble() -> Services:
    policy = OutboundPolicy.from_environ()
    return Services(
        store=ConnectionStore(table_client()),
        secrets=SecretStore(secret_client()),
        servicenow=ServiceNowClient(policy),
        policy=policy,
        due=DueIndex(table_client(DUE_TABLE)),
        notices=NoticeQueue(queue_client(NOTICES_QUEUE)),
        settings=LifecycleSettings.from_environ(),
    )
