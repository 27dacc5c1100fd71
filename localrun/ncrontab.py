"""NCRONTAB schedules as Azure Functions timer triggers write them, evaluated in UTC.

Six fields: second minute hour day month day-of-week. Each field takes `*`, numbers, lists
(`1,15`), ranges (`1-5`), steps (`*/5`, `1-10/2`, `5/15`) and, for month and day-of-week, names
(`JAN`, `MON`; day-of-week 0 is Sunday). As in NCrontab, a time matches only when every field
matches: day and day-of-week are combined with AND, not cron's OR.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_SEARCH_YEARS = 10


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()


_FIELDS = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day-of-week", 0, 6, tuple(_WEEKDAYS)),
)


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches_day(self, moment: datetime) -> bool:
        weekday = (moment.weekday() + 1) % 7  # Python's Monday is 0; cron's Sunday is 0.
        return moment.day in self.days and weekday in self.weekdays


def parse(expression: str) -> Schedule:
    texts = expression.split()
    if len(texts) != len(_FIELDS):
        raise CronError(f"{expression!r}: an NCRONTAB expression has six fields, not {len(texts)}")
    values = [
        _parse_field(text, spec, expression) for text, spec in zip(texts, _FIELDS, strict=True)
    ]
    return Schedule(expression, *values)


def _parse_field(text: str, spec: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        try:
            values |= _parse_part(part, spec)
        except CronError as exc:
            raise CronError(f"{expression!r}: {spec.name} field {text!r}: {exc}") from None
    return frozenset(values)


def _parse_part(part: str, spec: _Field) -> set[int]:
    base, slash, step_text = part.partition("/")
    step = _number(step_text) if slash else 1
    if step < 1:
        raise CronError("a step must be at least 1")
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise CronError(f"range {base!r} runs backwards")
    else:
        low = _value(base, spec)
        high = spec.high if slash else low
    return set(range(low, high + 1, step))


def _value(text: str, spec: _Field) -> int:
    upper = text.upper()
    value = spec.low + spec.names.index(upper) if upper in spec.names else _number(text)
    if not spec.low <= value <= spec.high:
        raise CronError(f"{text!r} is outside {spec.low}-{spec.high}")
    return value


def _number(text: str) -> int:
    if not text.isdigit():
        raise CronError(f"{text!r} is not a number")
    return int(text)


def next_occurrence(schedule: Schedule | str, after: datetime) -> datetime:
    """The first whole second strictly after `after` (UTC; naive means UTC) that matches."""
    if isinstance(schedule, str):
        schedule = parse(schedule)
    after = after.replace(tzinfo=UTC) if after.tzinfo is None else after.astimezone(UTC)
    moment = after.replace(microsecond=0) + timedelta(seconds=1)
    last_year = moment.year + _SEARCH_YEARS
    while moment.year <= last_year:
        if moment.month not in schedule.months:
            moment = _start_of_next_month(moment)
        elif not schedule.matches_day(moment):
            moment = moment.replace(hour=0, minute=0, second=0) + timedelta(days=1)
        elif moment.hour not in schedule.hours:
            moment = moment.replace(minute=0, second=0) + timedelta(hours=1)
        elif moment.minute not in schedule.minutes:
            moment = moment.replace(second=0) + timedelta(minutes=1)
        elif moment.second not in schedule.seconds:
            moment += timedelta(seconds=1)
        else:
            return moment
    raise CronError(f"{schedule.expression!r} never occurs")


def _start_of_next_month(moment: datetime) -> datetime:
    if moment.month == 12:
        return datetime(moment.year + 1, 1, 1, tzinfo=UTC)
    return datetime(moment.year, moment.month + 1, 1, tzinfo=UTC)
