"""The app's one `Services`, assembled from settings on first use and cached."""

import functools

from connections.clients import DUE_TABLE, queue_client, secret_client, table_client
from connections.due_index import DueIndex
from connections.lifecycle import LifecycleSettings
from connections.notices import NOTICES_QUEUE, NoticeQueue
from connections.outbound import OutboundPolicy
from connections.secrets import SecretStore
from connections.service import Services
from connections.servicenow import ServiceNowClient
from connections.store import ConnectionStore


@functools.cache
def services() -> Services:
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
