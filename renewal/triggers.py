"""Non-HTTP functions: the renewal sweep (timer) and the notice sender (queue)."""

import logging

import azure.functions as func

NOTICES_QUEUE = "connection-notices"

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("renewal_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%RENEWAL_SCHEDULE%", use_monitor=True)
def renewal_sweep(timer: func.TimerRequest) -> None:
    log.info("renewal sweep: no connections are due")


@bp.function_name("send_notice")
@bp.queue_trigger(arg_name="msg", queue_name=NOTICES_QUEUE, connection="AzureWebJobsStorage")
def send_notice(msg: func.QueueMessage) -> None:
    log.info("notice %s received", msg.id)
