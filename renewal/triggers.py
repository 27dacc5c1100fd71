"""Non-HTTP functions: the renewal sweep (timer) and the notice sender (queue)."""

import json
import logging

import azure.functions as func

from connections.notices import NOTICES_QUEUE

# The SDKs are imported on first use, so importing the app (a cold start) stays cheap.

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("renewal_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%RENEWAL_SCHEDULE%", use_monitor=True)
def renewal_sweep(timer: func.TimerRequest) -> None:
    from connections.services import services
    from renewal.sweep import SweepSettings, run_sweep

    run_sweep(services(), SweepSettings.from_environ())


@bp.function_name("send_notice")
@bp.queue_trigger(arg_name="msg", queue_name=NOTICES_QUEUE, connection="AzureWebJobsStorage")
def send_notice(msg: func.QueueMessage) -> None:
    """Delivers one notice; raising makes the queue retry it, and poison it after 5 tries."""
    from renewal.notifier import deliver_notice

    deliver_notice(json.loads(msg.get_body()))
