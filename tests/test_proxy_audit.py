"""The record of proxied calls on Azurite: day tables, newest first across days, paging, and
retention by dropping whole tables (never a scan)."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
from azure.data.tables import TableServiceClient

from proxy.audit import TABLE_PREFIX, CallEntry, CallLog, table_name

TODAY = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def service(azurite) -> TableServiceClient:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    for table in service.query_tables(
        "TableName ge @low and TableName lt @high",
        parameters={"low": TABLE_PREFIX, "high": TABLE_PREFIX + "~"},
    ):
        service.delete_table(table.name)
    return service


def entry(moment: datetime, path: str = "/api/now/table/incident") -> CallEntry:
    at = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return CallEntry(
        at=at,
        method="GET",
        path=path,
        query="",
        status=200,
        duration_ms=3,
        bytes_in=0,
        bytes_out=10,
        retries=0,
        renewed=False,
        relayed=True,
    )


def record_days(log: CallLog, connection: str, days: list[int], per_day: int = 2) -> None:
    for back in days:
        for index in range(per_day):
            moment = TODAY - timedelta(days=back, minutes=index)
            log.record("contoso", connection, entry(moment, f"/d{back}/{index}"))
    assert log.flush()


def test_entries_come_newest_first_across_days_and_page_with_a_cursor(service):
    log, connection = CallLog(service, Clock(TODAY), 30), uuid.uuid4().hex
    record_days(log, connection, [0, 1, 5])
    paths, cursor, pages = [], None, 0
    while True:
        items, cursor = log.recent("contoso", connection, 4, cursor)
        paths += [item["path"] for item in items]
        pages += 1
        if cursor is None:
            break
    assert paths == ["/d0/0", "/d0/1", "/d1/0", "/d1/1", "/d5/0", "/d5/1"]
    assert pages == 2


def test_other_connections_are_not_listed(service):
    log = CallLog(service, Clock(TODAY), 30)
    mine, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    record_days(log, mine, [0])
    record_days(log, theirs, [0], per_day=3)
    items, cursor = log.recent("contoso", mine, 100, None)
    assert len(items) == 2 and cursor is None
    assert log.recent("fabrikam", mine, 100, None) == ([], None)


def test_expired_days_are_dropped_as_whole_tables_and_never_listed(service):
    log, connection = CallLog(service, Clock(TODAY), 3), uuid.uuid4().hex
    record_days(log, connection, [0, 2, 3, 40])
    items, _ = log.recent("contoso", connection, 100, None)
    assert {item["path"].split("/")[1] for item in items} == {"d0", "d2"}
    dropped = log.drop_expired()
    assert dropped == [table_name(TODAY - timedelta(days=40)), table_name(TODAY - timedelta(3))]
    names = {table.name for table in service.list_tables()}
    assert table_name(TODAY) in names and table_name(TODAY - timedelta(days=2)) in names
    assert log.drop_expired() == []


def test_a_day_table_dropped_meanwhile_is_made_again(service):
    log, connection = CallLog(service, Clock(TODAY), 30), uuid.uuid4().hex
    record_days(log, connection, [0], per_day=1)
    service.delete_table(table_name(TODAY))
    record_days(log, connection, [0], per_day=1)
    items, _ = log.recent("contoso", connection, 100, None)
    assert len(items) == 1


def test_the_daily_cleanup_runs_as_a_timer_function(app_host, stack):
    service = TableServiceClient.from_connection_string(stack.azurite.connection_string)
    old = table_name(datetime.now(UTC) - timedelta(days=400))
    service.create_table_if_not_exists(old)
    response = requests.post(
        f"{app_host.url}/admin/functions/proxy_audit_cleanup",
        json={"input": ""},
        headers={"x-functions-key": app_host.keys.master_key},
        timeout=10,
    )
    assert response.status_code == 202
    app_host.wait_for_admin_runs()
    assert old not in {table.name for table in service.list_tables()}
