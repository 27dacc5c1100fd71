from datetime import UTC, datetime

import pytest

from localrun.ncrontab import CronError, next_occurrence, parse
from localrun.settings import MissingSettingError, resolve


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 */5 * * * *", at(2024, 1, 1, 12, 0, 0), at(2024, 1, 1, 12, 5, 0)),
        ("0 */5 * * * *", at(2024, 1, 1, 12, 4, 59), at(2024, 1, 1, 12, 5, 0)),
        ("0 */5 * * * *", at(2024, 1, 1, 23, 58, 0), at(2024, 1, 2, 0, 0, 0)),
        ("* * * * * *", at(2024, 1, 1, 12, 0, 0), at(2024, 1, 1, 12, 0, 1)),
        ("*/15 * * * * *", at(2024, 1, 1, 12, 0, 14), at(2024, 1, 1, 12, 0, 15)),
        ("0 0 * * * *", at(2024, 1, 1, 12, 30, 0), at(2024, 1, 1, 13, 0, 0)),
        ("0 30 9 * * *", at(2024, 1, 1, 9, 30, 0), at(2024, 1, 2, 9, 30, 0)),
        ("0 0 9-17 * * *", at(2024, 1, 1, 17, 0, 1), at(2024, 1, 2, 9, 0, 0)),
        ("0 0 1-10/2 * * *", at(2024, 1, 1, 1, 0, 0), at(2024, 1, 1, 3, 0, 0)),
        ("0 0 1-10/2 * * *", at(2024, 1, 1, 9, 0, 0), at(2024, 1, 2, 1, 0, 0)),
        ("5/20 * * * * *", at(2024, 1, 1, 0, 0, 6), at(2024, 1, 1, 0, 0, 25)),
        ("0 0 0,12 * * *", at(2024, 1, 1, 0, 0, 0), at(2024, 1, 1, 12, 0, 0)),
        ("0 0 0 * * MON", at(2024, 1, 1, 0, 0, 0), at(2024, 1, 8, 0, 0, 0)),  # 1 Jan 2024: Monday
        ("0 0 0 * * mon-fri", at(2024, 1, 5, 0, 0, 0), at(2024, 1, 8, 0, 0, 0)),
        ("0 0 0 * * 0", at(2024, 1, 1, 0, 0, 0), at(2024, 1, 7, 0, 0, 0)),  # Sunday is 0
        ("0 0 0 1 JAN,jul *", at(2024, 2, 1, 0, 0, 0), at(2024, 7, 1, 0, 0, 0)),
        ("0 0 0 31 * *", at(2024, 1, 31, 0, 0, 0), at(2024, 3, 31, 0, 0, 0)),
        ("0 0 0 29 2 *", at(2024, 3, 1, 0, 0, 0), at(2028, 2, 29, 0, 0, 0)),
        ("0 0 0 1 1 *", at(2024, 12, 31, 23, 59, 59), at(2025, 1, 1, 0, 0, 0)),
        ("0 0 0 13 * FRI", at(2024, 1, 1, 0, 0, 0), at(2024, 9, 13, 0, 0, 0)),  # day AND weekday
    ],
)
def test_next_occurrence(expression: str, after: datetime, expected: datetime) -> None:
    assert next_occurrence(expression, after) == expected


def test_next_occurrence_is_strictly_after_and_drops_fractions() -> None:
    after = datetime(2024, 1, 1, 12, 5, 0, 500_000, tzinfo=UTC)
    assert next_occurrence("0 */5 * * * *", after) == at(2024, 1, 1, 12, 10, 0)


def test_naive_times_are_utc() -> None:
    assert next_occurrence("0 0 * * * *", datetime(2024, 1, 1, 12, 30)) == at(2024, 1, 1, 13, 0)


def test_parse_expands_fields() -> None:
    schedule = parse("0,30 */20 1-3 * JAN-MAR SAT,SUN")
    assert schedule.seconds == {0, 30}
    assert schedule.minutes == {0, 20, 40}
    assert schedule.hours == {1, 2, 3}
    assert schedule.days == set(range(1, 32))
    assert schedule.months == {1, 2, 3}
    assert schedule.weekdays == {6, 0}


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * * *",  # five fields: the host's NCRONTAB has six
        "* * * * * * *",
        "60 * * * * *",
        "* 60 * * * *",
        "* * 24 * * *",
        "* * * 0 * *",
        "* * * 32 * *",
        "* * * * 13 *",
        "* * * * * 7",
        "*/0 * * * * *",
        "5-1 * * * * *",
        "a * * * * *",
        "1,,2 * * * * *",
        "-1 * * * * *",
        "* * * * FOO *",
        "? * * * * *",
    ],
)
def test_invalid_expressions_raise(expression: str) -> None:
    with pytest.raises(CronError):
        parse(expression)


def test_an_expression_that_never_occurs_raises() -> None:
    with pytest.raises(CronError, match="never occurs"):
        next_occurrence("0 0 0 30 2 *", at(2024, 1, 1))


def test_schedule_setting_is_resolved() -> None:
    expression = resolve("%RENEWAL_SCHEDULE%", {"RENEWAL_SCHEDULE": "0 */5 * * * *"})
    assert next_occurrence(expression, at(2024, 1, 1, 12, 1)) == at(2024, 1, 1, 12, 5)


def test_missing_schedule_setting_names_it() -> None:
    with pytest.raises(MissingSettingError, match="RENEWAL_SCHEDULE") as caught:
        resolve("%RENEWAL_SCHEDULE%", {}, where="renewal_sweep")
    assert caught.value.name == "RENEWAL_SCHEDULE"
    assert "renewal_sweep" in str(caught.value)
