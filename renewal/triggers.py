"""Non-HTTP functions: the renewal sweep and the orphaned-secret cleanup (timers), and the notice
sender (queue)."""

import json
import logging

import azure.functions as func

from connections.notices import NOTICES_QUEUE

# The SDKs are imported on first use, so importing the app (a cold start) stays cheap.

ORPHAN_CLEANUP_SCHEDULE = "0 7-59/15 * * * *"  # every 15 minutes, off the sweep's minutes

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("renewal_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%RENEWAL_SCHEDULE%", use_monitor=True)
def renewal_sweep(timer: func.TimerRequest) -> None:
    from connections.services import services
    from renewal.sweep import SweepSettings, run_sweep

    run_sweep(services(), SweepSettings.from_environ())


@bp.function_name("secret_cleanup")
@bp.timer_trigger(arg_name="timer", schedule=ORPHAN_CLEANUP_SCHEDULE, use_monitor=True)
def secret_cleanup(timer: func.TimerRequest) -> None:
    """Removes secrets whose connection has no record, a bounded part of the vault per run."""
    from connections.clients import table_client
    from connections.services import services
    from renewal.secret_cleanup import MAINTENANCE_TABLE, CleanupSettings, run_cleanup_safely

    run_cleanup_safely(services(), table_client(MAINTENANCE_TABLE), CleanupSettings.from_environ())


@bp.function_name("send_notice")
@bp.queue_trigger(arg_name="msg", queue_name=NOTICES_QUEUE, connection="AzureWebJobsStorage")
def send_notice(msg: func.QueueMessage) -> None:
    """Delivers one notice; raising makes the queue retry it, and poison it after 5 tries."""
    from renewal.notifier import deliver_notice

    deliver_notice(json.loads(msg.get_body()))
