"""How a connection's status moves, when it is next due, and which notice a move sends.

Pure functions of the connection, an outcome and the time: the API's check and update and the
renewal sweep all go through `record_outcome`, so a status moves the same way wherever it moves.
"""

import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from connections.model import (
    API_TOKEN,
    CONNECTED,
    EXPIRED,
    EXPIRING,
    INVALID_CREDENTIALS,
    OAUTH2,
    RENEWAL_FAILED,
    UNREACHABLE,
    Connection,
    format_time,
    parse_time,
)

FAILURE_STATUSES = (INVALID_CREDENTIALS, RENEWAL_FAILED, UNREACHABLE, EXPIRED)
OK, REJECTED, TRANSIENT = "ok", "rejected", "transient"
MAX_BACKOFF = timedelta(minutes=15)
# After an exact expiry, so the instance's clock surely agrees that the old token is gone.
EXACT_GRACE = timedelta(seconds=2)
# The part of a short lifetime (one under twice the minimum margin) left when it is renewed.
SHORT_MARGIN_FRACTION = 0.25
# Never renew sooner than this after a renewal, however short the lifetime (an instance
# answering `expires_in: 0` must not make the sweep loop).
MIN_RENEWAL_INTERVAL = timedelta(seconds=5)


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(environ.get(name) or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class LifecycleSettings:
    api_token_check_interval: timedelta = timedelta(hours=6)
    reminder_days: tuple[int, ...] = (14, 3, 1)
    unreachable_after: timedelta = timedelta(hours=1)
    min_margin: timedelta = timedelta(minutes=10)
    max_jitter: timedelta = timedelta(minutes=2)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "LifecycleSettings":
        days = environ.get("EXPIRY_REMINDER_DAYS") or "14,3,1"
        reminder_days = tuple(sorted({int(d) for d in days.split(",") if d.strip().isdigit()}))
        return cls(
            api_token_check_interval=timedelta(
                minutes=_number(environ, "API_TOKEN_CHECK_INTERVAL_MINUTES", 360)
            ),
            reminder_days=tuple(reversed(reminder_days)) or (14, 3, 1),
            unreachable_after=timedelta(minutes=_number(environ, "UNREACHABLE_AFTER_MINUTES", 60)),
            min_margin=timedelta(minutes=_number(environ, "RENEWAL_MARGIN_MINUTES", 10)),
        )


@dataclass
class Outcome:
    kind: str  # OK, REJECTED or TRANSIENT
    detail: str
    rejected_stage: str = ""  # "token" when the token endpoint refused an OAuth client


# -- status --------------------------------------------------------------------------------


def _expiry_status(
    connection: Connection, now: datetime, settings: LifecycleSettings
) -> tuple[str | None, int]:
    """(EXPIRED / EXPIRING / None, the reminder threshold in days that has been reached)."""
    expires_at = parse_time(connection.auth.get("expires_at"))
    if connection.method != API_TOKEN or expires_at is None:
        return None, 0
    if expires_at <= now:
        return EXPIRED, 0
    reached = [days for days in settings.reminder_days if expires_at - now <= timedelta(days=days)]
    return (EXPIRING, min(reached)) if reached else (None, 0)


def _failure_status(connection: Connection, outcome: Outcome) -> str:
    if connection.method == OAUTH2 and outcome.rejected_stage == "token":
        return RENEWAL_FAILED
    return INVALID_CREDENTIALS


def _new_status(
    connection: Connection, outcome: Outcome, now: datetime, settings: LifecycleSettings
) -> tuple[str, str]:
    expiry, _ = _expiry_status(connection, now, settings)
    expires_text = format_time(parse_time(connection.auth.get("expires_at")))
    if expiry == EXPIRED:
        return EXPIRED, f"The API token expired on {expires_text}; replace it."
    if outcome.kind == REJECTED:
        return _failure_status(connection, outcome), outcome.detail
    if outcome.kind == TRANSIENT:
        if now - (connection.failing_since or now) >= settings.unreachable_after:
            return UNREACHABLE, outcome.detail
        detail = f"{outcome.detail} Retrying; last success stays in effect."
        return connection.status, detail
    if expiry == EXPIRING:
        return EXPIRING, f"{outcome.detail} The API token expires on {expires_text}."
    return CONNECTED, outcome.detail


# -- notices -------------------------------------------------------------------------------


def notice_id(connection_id: str, event: str, moment: str) -> str:
    return hashlib.sha256(f"{connection_id}|{event}|{moment}".encode()).hexdigest()[:32]


def make_notice(
    connection: Connection, event: str, now: datetime, key: str | None = None
) -> dict[str, Any]:
    """The queue message: the contract's notice body plus who to e-mail."""
    occurred_at = format_time(now)
    notice = {
        "notice_id": notice_id(connection.id, event, key or occurred_at or ""),
        "event": event,
        "tenant_id": connection.tenant_id,
        "connection_id": connection.id,
        "connection_name": connection.name,
        "instance_url": connection.instance_url,
        "status": connection.status,
        "detail": connection.status_detail,
        "occurred_at": occurred_at,
    }
    return {"notice": notice, "recipients": list(connection.notify_emails)}


def _event_for(previous: str, status: str, reminder_due: bool) -> str | None:
    if status != previous and status in FAILURE_STATUSES:
        return status
    if previous in FAILURE_STATUSES and status not in FAILURE_STATUSES:
        return "restored"
    if status == EXPIRING and (previous != EXPIRING or reminder_due):
        return EXPIRING
    return None


# -- schedule ------------------------------------------------------------------------------


def oauth_due(
    now: datetime,
    expires_in: int,
    settings: LifecycleSettings,
    rng: random.Random,
    *,
    reused: bool = False,
) -> tuple[datetime, bool]:
    """(when to renew, whether that moment is timed: the sweep waits for it rather than leave it
    to a later run; stored as `due_exact`).

    Always before expiry. The margin is 10 minutes (`min_margin`) or a fifth of the lifetime,
    whichever is larger, as long as that is at most half the lifetime; the next sweep after
    the due time is then soon enough. A shorter lifetime (an instance issuing 60 s or
    5-minute tokens) is renewed a quarter of it before expiry, at a timed moment. Jitter (so
    thousands of tokens don't renew in the same second) takes at most a quarter of the margin.

    Only when the instance handed back the token it already gave (`reused`: no later expiry
    than the stored one) with a short lifetime left is the renewal set for the moment it
    expires (plus a grace): renewing earlier would just return the same token again.
    """
    lifetime = timedelta(seconds=max(expires_in, 0))
    margin = max(settings.min_margin, lifetime / 5)
    timed = margin > lifetime / 2
    if timed and reused:
        return now + max(lifetime + EXACT_GRACE, MIN_RENEWAL_INTERVAL), True
    if timed:
        margin = lifetime * SHORT_MARGIN_FRACTION
    jitter = timedelta(seconds=rng.uniform(0, min(settings.max_jitter, margin / 4).total_seconds()))
    return max(now + lifetime - margin - jitter, now + MIN_RENEWAL_INTERVAL), timed


def api_token_due(connection: Connection, now: datetime, settings: LifecycleSettings) -> datetime:
    """The next check: its interval, or sooner when a reminder threshold or the expiry comes."""
    due = now + settings.api_token_check_interval
    expires_at = parse_time(connection.auth.get("expires_at"))
    if expires_at is not None and expires_at > now:
        moments = [expires_at] + [expires_at - timedelta(days=d) for d in settings.reminder_days]
        due = min([due] + [moment for moment in moments if moment > now])
    return due


def _retry_due(connection: Connection, now: datetime) -> datetime:
    backoff = timedelta(minutes=2 ** min(connection.failure_count, 4))
    return now + min(backoff, MAX_BACKOFF)


# -- the one entry point -------------------------------------------------------------------


def record_outcome(
    connection: Connection,
    outcome: Outcome,
    now: datetime,
    settings: LifecycleSettings,
    *,
    expires_in: int | None = None,
    reused: bool = False,
    rng: random.Random | None = None,
) -> dict[str, Any] | None:
    """Moves the status, schedules the next due time and queues (in the record) the notice the
    move sends, if any; returns that notice. `reused`: the instance handed back the OAuth token
    it had already given (see `oauth_due`)."""
    rng = rng or random.Random()  # noqa: S311 -- jitter, not security
    if outcome.kind == OK:
        connection.failing_since, connection.failure_count = None, 0
    else:
        connection.failing_since = connection.failing_since or now
        connection.failure_count += 1
    previous = connection.status
    status, detail = _new_status(connection, outcome, now, settings)
    connection.status, connection.status_detail = status, detail
    connection.last_checked_at = now
    if status != previous:
        connection.status_changed_at = now
    _schedule(connection, outcome, now, settings, expires_in, reused, rng)
    return _queue_notice(connection, previous, now, settings)


def _schedule(
    connection: Connection,
    outcome: Outcome,
    now: datetime,
    settings: LifecycleSettings,
    expires_in: int | None,
    reused: bool,
    rng: random.Random,
) -> None:
    exact = False
    if outcome.kind == TRANSIENT:
        due = _retry_due(connection, now)
    elif connection.method == OAUTH2 and outcome.kind == OK and expires_in is not None:
        due, exact = oauth_due(now, expires_in, settings, rng, reused=reused)
    elif connection.method == OAUTH2 and outcome.kind == REJECTED:
        due = now + settings.api_token_check_interval
    else:
        due = api_token_due(connection, now, settings)
    connection.next_due_at, connection.due_exact = due, exact


def _queue_notice(
    connection: Connection, previous: str, now: datetime, settings: LifecycleSettings
) -> dict[str, Any] | None:
    _, threshold = _expiry_status(connection, now, settings)
    reminder_due = bool(threshold) and (
        not connection.reminder_sent_days or threshold < connection.reminder_sent_days
    )
    event = _event_for(previous, connection.status, reminder_due)
    if connection.status != EXPIRING:
        connection.reminder_sent_days = 0
    if event is None:
        return None
    key = format_time(connection.status_changed_at or now)
    if event == EXPIRING:
        connection.reminder_sent_days = threshold
        key = f"{threshold}d-before-{connection.auth.get('expires_at')}"
    notice = make_notice(connection, event, now, key)
    connection.pending_notices.append(notice)
    return notice
