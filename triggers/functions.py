"""Non-HTTP functions of the triggers: the dispatch timer, the poll and delivery queues."""

import json
import logging

import azure.functions as func

from triggers.queues import EVENTS_QUEUE, POLLS_QUEUE

# The SDKs are imported on first use, so importing the app (a cold start) stays cheap.

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("trigger_dispatch")
@bp.timer_trigger(arg_name="timer", schedule="%TRIGGER_SCHEDULE%", use_monitor=False)
def trigger_dispatch(timer: func.TimerRequest) -> None:
    from triggers.dispatch import dispatch
    from triggers.services import trigger_services

    dispatch(trigger_services())


@bp.function_name("poll_trigger")
@bp.queue_trigger(arg_name="msg", queue_name=POLLS_QUEUE, connection="AzureWebJobsStorage")
def poll_trigger(msg: func.QueueMessage) -> None:
    """Polls one trigger; a storage fault raises, so the queue tries the message again."""
    from triggers.dispatch import drop_entry
    from triggers.poller import poll
    from triggers.services import trigger_services

    ts, message = trigger_services(), json.loads(msg.get_body())
    scheduled = message.get("reason") == "schedule"
    outcome = poll(
        ts,
        message["tenant_id"],
        message["trigger_id"],
        fresh=not scheduled,
        interval=message.get("interval") if scheduled else None,
    )
    if scheduled and outcome in ("gone", "stale"):
        drop_entry(ts, message)
    log.info("trigger %s: poll (%s): %s", message["trigger_id"], message.get("reason"), outcome)


@bp.function_name("deliver_event")
@bp.queue_trigger(arg_name="msg", queue_name=EVENTS_QUEUE, connection="AzureWebJobsStorage")
def deliver_event(msg: func.QueueMessage) -> None:
    """Delivers one event to EVENTS_WEBHOOK_URL; raising makes the queue retry it, and poison
    it after 5 tries (it stays listed under the trigger's events)."""
    from triggers.delivery import deliver
    from triggers.services import trigger_services

    deliver(trigger_services(), json.loads(msg.get_body()), msg.dequeue_count or 1)
