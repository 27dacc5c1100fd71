"""The ServiceNow stand-in's Table API over loopback HTTP, as the proxy and the triggers call it."""

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from localrun.standins.servicenow import RATE_LIMIT_RULE, ServiceNowStandIn, ServiceNowState
from tests.test_standin_servicenow import START, TIMEOUT, FakeClock

KEY = "table-api-key-never-logged"
QUERY_KEY = "query-api-key-never-logged"
SECRET = "client-secret-never-logged"
HEADERS = {"x-sn-apikey": KEY}
NOW_TEXT = "2027-01-15 08:00:00"  # START as ServiceNow stores it
TABLES = ("incident", "sc_req_item", "sc_request", "change_request", "sc_task", "problem")
PREFIXES = {
    "incident": "INC",
    "sc_req_item": "RITM",
    "sc_request": "REQ",
    "change_request": "CHG",
    "sc_task": "SCTASK",
    "problem": "PRB",
}
NOT_FOUND = {
    "error": {
        "message": "No Record found",
        "detail": "Record doesn't exist or ACL restricts the record retrieval",
    },
    "status": "failure",
}
LINK = re.compile(r'<([^>]*)>;rel="(\w+)"')


@pytest.fixture(scope="module")
def running() -> Iterator[tuple[ServiceNowStandIn, FakeClock]]:
    clock = FakeClock()
    with ServiceNowStandIn(clock=clock) as standin:
        yield standin, clock


@pytest.fixture
def clock(running: tuple[ServiceNowStandIn, FakeClock]) -> FakeClock:
    running[1].now = START
    return running[1]


@pytest.fixture
def sn(running: tuple[ServiceNowStandIn, FakeClock], clock: FakeClock) -> ServiceNowStandIn:
    running[0].state.reset()
    running[0].state.add_api_key(KEY, name="automations")
    return running[0]


@pytest.fixture
def state(sn: ServiceNowStandIn) -> ServiceNowState:
    return sn.state


def call(
    sn: ServiceNowStandIn,
    method: str,
    path: str,
    params: dict[str, str] | list[tuple[str, str]] | None = None,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.request(
        method,
        f"{sn.url}{path}",
        params=params,
        json=body,
        headers={**HEADERS, **(headers or {})},
        timeout=TIMEOUT,
    )


def rows(sn: ServiceNowStandIn, table: str, **params: str) -> list[dict]:
    response = call(sn, "GET", f"/api/now/table/{table}", params)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def control(
    sn: ServiceNowStandIn, method: str, path: str, body: object = None, **params: str
) -> requests.Response:
    return requests.request(
        method, f"{sn.url}/_control/{path}", json=body, params=params, timeout=TIMEOUT
    )


def links(response: requests.Response) -> dict[str, str]:
    return {rel: url for url, rel in LINK.findall(response.headers["Link"])}


# ---- records ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_task_tables_are_seeded_with_complete_records(sn, table):
    records = rows(sn, table, sysparm_exclude_reference_link="true")
    assert len(records) == 3
    for index, record in enumerate(records):
        assert record["sys_id"] == hashlib.sha256(f"{table}:{index}".encode()).hexdigest()[:32]
        assert record["number"] == f"{PREFIXES[table]}{10_001 + index:07d}"
        assert record["short_description"]
        assert record["active"] in ("true", "false")
        assert record["state"] == "1"
        assert record["sys_mod_count"] == str(index)
        assert record["sys_created_on"] <= record["sys_updated_on"] < NOW_TEXT
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", record["sys_updated_on"])
        assert record["work_notes"] == record["comments"] == ""


def test_requested_items_refer_to_users_requests_and_a_catalog_item(sn):
    users = {user["sys_id"]: user for user in rows(sn, "sys_user")}
    assert {user["user_name"] for user in users.values()} == {
        "abel.tuter",
        "beth.anglin",
        "david.miller",
    }
    requests_ = {request["sys_id"] for request in rows(sn, "sc_request")}
    for item in rows(sn, "sc_req_item", sysparm_exclude_reference_link="true"):
        assert item["requested_for"] in users
        assert item["request"] in requests_
        assert re.fullmatch(r"[0-9a-f]{32}", item["cat_item"])
        assert not any(name.startswith("variables.") for name in item)  # only when asked for


# ---- encoded queries -------------------------------------------------------------------

OPS_RECORDS = {
    "A": {"short_description": "Email server down", "priority": "1", "u_size": "9"},
    "B": {"short_description": "email quota", "priority": "2", "u_size": "10"},
    "C": {"short_description": "Printer jam", "priority": "3", "u_size": ""},
    "D": {"short_description": "Another outage", "priority": "1", "u_size": "3"},
}
OPS_UPDATED = {
    "A": "2027-01-10 00:00:00",
    "B": "2027-01-12 00:00:00",
    "C": "2027-01-14 00:00:00",
    "D": "2027-01-11 00:00:00",
}


@pytest.fixture
def ops(state: ServiceNowState) -> dict[str, str]:
    """Four problems tagged u_batch=ops; returns short_description -> letter."""
    for letter, fields in OPS_RECORDS.items():
        state.create_records(
            "problem", {**fields, "u_batch": "ops"}, sys_updated_on=OPS_UPDATED[letter]
        )
    return {fields["short_description"]: letter for letter, fields in OPS_RECORDS.items()}


def letters(sn: ServiceNowStandIn, ops: dict[str, str], query: str) -> str:
    found = rows(sn, "problem", sysparm_query=query, sysparm_fields="short_description")
    return "".join(ops[record["short_description"]] for record in found)


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("short_description=printer jam", "C"),
        ("short_description!=Printer jam", "ABD"),
        ("u_size<10", "AD"),  # numbers compare as numbers: 9 < 10
        ("u_size<=10", "ABD"),
        ("u_size>9", "B"),
        ("u_size>=9", "AB"),
        ("priorityIN1,3", "ACD"),
        ("priorityNOT IN1,3", "B"),
        ("short_descriptionSTARTSWITHemail", "AB"),
        ("short_descriptionENDSWITHJAM", "C"),
        ("short_descriptionLIKEserver", "A"),
        ("short_descriptionNOT LIKEemail", "CD"),
        ("u_sizeISEMPTY", "C"),
        ("u_sizeISNOTEMPTY", "ABD"),
        ("sys_updated_on>2027-01-11 00:00:00", "BC"),
        ("sys_updated_on>=2027-01-11 00:00:00", "BCD"),
        ("sys_updated_on<2027-01-11 00:00:00", "A"),
        ("sys_updated_on<=2027-01-10 00:00:00", "A"),
        ("u_no_such_field=1", "ABCD"),  # an unknown field is dropped, as an instance does
        ("priority", "ABCD"),  # so is a term without an operator
    ],
)
def test_each_operator(sn, ops, term, expected):
    assert letters(sn, ops, f"u_batch=ops^{term}") == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # OR binds tighter than AND: (1 OR 2) AND 10, not 1 OR (2 AND 10)
        ("u_batch=ops^priority=1^ORpriority=2^u_size=10", "B"),
        ("u_batch=ops^priority=2^u_size=10^ORu_size=9", "B"),
        ("u_batch=ops^priority=1^NQu_batch=ops^priority=3", "ACD"),
        ("u_batch=ops^priority=1^u_size=3^NQu_batch=ops^short_descriptionLIKEquota", "BD"),
        ("u_batch=ops^priority=1^ORu_bogus=1", "AD"),
        ("u_batch=ops^u_bogus=1^ORpriority=2", "B"),
    ],
)
def test_and_or_and_new_query_precedence(sn, ops, query, expected):
    assert letters(sn, ops, query) == expected


@pytest.mark.parametrize(
    ("ordering", "expected"),
    [
        ("ORDERBYpriority^ORDERBYDESCshort_description", "ADBC"),
        ("ORDERBYDESCpriority^ORDERBYshort_description", "CBDA"),
        ("ORDERBYu_size", "CDAB"),  # empty first, then numerically
        ("ORDERBYDESCsys_updated_on", "CBDA"),
        ("ORDERBYu_bogus", "ABCD"),  # dropped: insertion order
    ],
)
def test_order_by_two_keys_and_directions(sn, ops, ordering, expected):
    assert letters(sn, ops, f"u_batch=ops^{ordering}") == expected


# ---- keyset paging ---------------------------------------------------------------------

SECOND = "2027-01-15 07:59:30"
NEXT_SECOND = "2027-01-15 07:59:31"
FILTER = "u_batch=bulk^active=true"


def keyset_poll(sn: ServiceNowStandIn, after: str, page_size: int = 100) -> list[dict]:
    """Pages by (sys_updated_on, sys_id) as the triggers do; returns what it read, in order."""
    fields = {"sysparm_fields": "sys_id,sys_updated_on", "sysparm_no_count": "true"}
    limit = {"sysparm_limit": str(page_size), **fields}
    cursor: tuple[str, str | None] = (after, None)
    read: list[dict] = []
    while True:
        moment, last_id = cursor
        page = []
        if last_id is not None:
            same_second = f"{FILTER}^sys_updated_on={moment}^sys_id>{last_id}"
            page = rows(sn, "sc_req_item", sysparm_query=same_second + ORDER, **limit)
        if not page:
            later = f"{FILTER}^sys_updated_on>{moment}"
            page = rows(sn, "sc_req_item", sysparm_query=later + ORDER, **limit)
        if not page:
            return read
        read += page
        cursor = (page[-1]["sys_updated_on"], page[-1]["sys_id"])


ORDER = "^ORDERBYsys_updated_on^ORDERBYsys_id"


def test_keyset_paging_over_a_thousand_records_sharing_one_second(sn, state):
    bulk = {"u_batch": "bulk", "active": "true"}
    state.create_records("sc_req_item", bulk, count=10, sys_updated_on="2027-01-15 07:59:00")
    wanted = state.create_records("sc_req_item", bulk, count=1000, sys_updated_on=SECOND)
    state.create_records(
        "sc_req_item", {**bulk, "active": "false"}, count=50, sys_updated_on=SECOND
    )
    wanted += state.create_records("sc_req_item", bulk, count=20, sys_updated_on=NEXT_SECOND)

    read = keyset_poll(sn, after="2027-01-15 07:59:29")

    ids = [record["sys_id"] for record in read]
    assert len(ids) == len(set(ids)) == 1020
    assert set(ids) == set(wanted)
    keys = [(record["sys_updated_on"], record["sys_id"]) for record in read]
    assert keys == sorted(keys)


def test_keyset_boundary_query_continues_exactly_after_the_cursor(sn, state):
    ids = sorted(state.create_records("sc_req_item", {"u_batch": "bulk"}, count=300))
    boundary = ids[149]
    query = f"u_batch=bulk^sys_updated_on={NOW_TEXT}^sys_id>{boundary}{ORDER}"
    found = rows(sn, "sc_req_item", sysparm_query=query, sysparm_fields="sys_id")
    assert [record["sys_id"] for record in found] == ids[150:]


# ---- offset paging, Link, counts -------------------------------------------------------


def test_offset_paging_follows_link_to_the_end_echoing_every_parameter(sn, state):
    state.add_api_key(QUERY_KEY, name="query-key", parameter_name="sn_key", parameter_type="query")
    state.create_records("incident", {"u_batch": "page"}, count=25)
    sent = [
        ("sn_key", QUERY_KEY),
        ("sysparm_query", "u_batch=page^ORDERBYnumber"),
        ("sysparm_limit", "10"),
        ("sysparm_fields", "number"),
    ]
    url = f"{sn.url}/api/now/table/incident?" + "&".join(f"{k}={v}" for k, v in sent)
    seen, rels_per_page = [], []
    while url:
        response = requests.get(url, timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.headers["X-Total-Count"] == "25"
        seen += [record["number"] for record in response.json()["result"]]
        page_links = links(response)
        rels_per_page.append(list(page_links))
        for rel, link in page_links.items():
            parts = urlsplit(link)
            assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
                f"{sn.url}/api/now/table/incident"
            )
            offset = {"first": 0, "last": 20}.get(rel)
            echoed = parse_qsl(parts.query)
            assert echoed[:4] == sent  # every parameter, the API key too, in order
            assert echoed[4][0] == "sysparm_offset"
            if offset is not None:
                assert echoed[4][1] == str(offset)
        url = page_links.get("next")
    assert rels_per_page == [
        ["first", "next", "last"],
        ["first", "prev", "next", "last"],
        ["first", "prev", "last"],
    ]
    assert len(seen) == len(set(seen)) == 25
    assert seen == sorted(seen)


def test_link_keeps_the_host_path_and_offset_position_as_received(sn):
    response = call(
        sn,
        "GET",
        "/api/now/v2/table/incident",
        [("sysparm_offset", "1"), ("sysparm_limit", "1"), ("sysparm_query", "active=true")],
        headers={"Host": "contoso.service-now.example:8443"},
    )
    assert response.status_code == 200
    base = "http://contoso.service-now.example:8443/api/now/v2/table/incident"
    assert response.headers["Link"] == ",".join(
        [
            f'<{base}?sysparm_offset=0&sysparm_limit=1&sysparm_query=active%3Dtrue>;rel="first"',
            f'<{base}?sysparm_offset=0&sysparm_limit=1&sysparm_query=active%3Dtrue>;rel="prev"',
            f'<{base}?sysparm_offset=2&sysparm_limit=1&sysparm_query=active%3Dtrue>;rel="next"',
            f'<{base}?sysparm_offset=2&sysparm_limit=1&sysparm_query=active%3Dtrue>;rel="last"',
        ]
    )


def test_without_a_count_link_has_no_last_and_next_while_pages_are_full(sn):
    full = call(
        sn, "GET", "/api/now/table/incident", {"sysparm_limit": "3", "sysparm_no_count": "true"}
    )
    assert "X-Total-Count" not in full.headers
    assert list(links(full)) == ["first", "next"]
    short = call(
        sn,
        "GET",
        "/api/now/table/incident",
        {"sysparm_limit": "2", "sysparm_offset": "2", "sysparm_no_count": "true"},
    )
    assert list(links(short)) == ["first", "prev"]
    suppressed = call(
        sn, "GET", "/api/now/table/incident", {"sysparm_suppress_pagination_header": "true"}
    )
    assert "Link" not in suppressed.headers


def test_total_count_counts_matches_not_the_page(sn, ops):
    response = call(
        sn,
        "GET",
        "/api/now/table/problem",
        {"sysparm_query": "u_batch=ops^priority=1", "sysparm_limit": "1"},
    )
    assert response.headers["X-Total-Count"] == "2"
    assert len(response.json()["result"]) == 1


def test_v1_answers_404_for_an_empty_result_v2_and_latest_an_empty_list(sn):
    query = {"sysparm_query": "number=INC9999999"}
    assert call(sn, "GET", "/api/now/v1/table/incident", query).status_code == 404
    for path in ("/api/now/v2/table/incident", "/api/now/table/incident"):
        empty = call(sn, "GET", path, query)
        assert (empty.status_code, empty.json()) == (200, {"result": []})
    assert len(call(sn, "GET", "/api/now/v1/table/incident").json()["result"]) == 3


# ---- fields, references, display values ------------------------------------------------


def test_fields_dot_walk_and_read_variables(sn):
    fields = "number,requested_for.name,variables.team_name,variables.nope,bogus,request.number"
    [first] = rows(sn, "sc_req_item", sysparm_fields=fields, sysparm_limit="1")
    assert first == {
        "number": "RITM0010001",
        "requested_for.name": "Abel Tuter",
        "variables.team_name": "Marketing",
        "request.number": "REQ0010001",
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("variables.team_name=Finance", ["RITM0010002"]),
        ("requested_for.name=Beth Anglin", ["RITM0010002"]),
        (
            "requested_for.user_name=david.miller^ORvariables.team_name=Marketing",
            ["RITM0010001", "RITM0010003"],
        ),
        ("request.requested_for.email=david.miller@example.com", ["RITM0010003"]),
    ],
)
def test_queries_dot_walk_and_read_variables(sn, query, expected):
    found = rows(sn, "sc_req_item", sysparm_query=query, sysparm_fields="number")
    assert [record["number"] for record in found] == expected


def test_reference_fields_carry_links_unless_excluded(sn):
    user = rows(sn, "sys_user", sysparm_limit="1")[0]["sys_id"]
    [item] = rows(sn, "sc_req_item", sysparm_limit="1")
    assert item["requested_for"] == {
        "link": f"{sn.url}/api/now/table/sys_user/{user}",
        "value": user,
    }
    assert item["cat_item"]["link"].startswith(f"{sn.url}/api/now/table/sc_cat_item/")
    [plain] = rows(sn, "sc_req_item", sysparm_limit="1", sysparm_exclude_reference_link="true")
    assert plain["requested_for"] == user
    [shown] = rows(sn, "sc_req_item", sysparm_limit="1", sysparm_display_value="true")
    assert shown["number"] == "RITM0010001"
    [both] = rows(
        sn,
        "sc_req_item",
        sysparm_limit="1",
        sysparm_display_value="all",
        sysparm_fields="number,requested_for",
    )
    assert both["number"] == {"display_value": "RITM0010001", "value": "RITM0010001"}
    assert both["requested_for"]["value"] == user
    assert both["requested_for"]["link"].endswith(user)


def test_a_record_by_sys_id_and_a_missing_one(sn):
    [first] = rows(sn, "incident", sysparm_limit="1")
    one = call(sn, "GET", f"/api/now/table/incident/{first['sys_id']}")
    assert one.json() == {"result": first}
    fields = call(
        sn, "GET", f"/api/now/v2/table/incident/{first['sys_id']}", {"sysparm_fields": "number"}
    )
    assert fields.json() == {"result": {"number": "INC0010001"}}
    missing = call(sn, "GET", f"/api/now/table/incident/{'0' * 32}")
    assert (missing.status_code, missing.json()) == (404, NOT_FOUND)


# ---- writes ----------------------------------------------------------------------------


def test_create_update_and_delete_a_record(sn, state, clock):
    created = call(
        sn,
        "POST",
        "/api/now/table/incident",
        body={"short_description": "VPN down", "work_notes": "first look", "u_unknown": "x"},
    )
    assert created.status_code == 201
    record = created.json()["result"]
    sys_id = record["sys_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sys_id)
    assert created.headers["Location"] == f"{sn.url}/api/now/table/incident/{sys_id}"
    assert record["number"] == "INC0010004"
    assert record["sys_mod_count"] == "0"
    assert record["sys_created_on"] == record["sys_updated_on"] == NOW_TEXT
    assert record["work_notes"] == ""  # journal fields read as ""
    assert "u_unknown" not in record  # the table has no such field

    clock.advance(5)
    patched = call(sn, "PATCH", f"/api/now/table/incident/{sys_id}", body={"state": "2"})
    assert patched.status_code == 200
    assert patched.json()["result"]["state"] == "2"
    assert patched.json()["result"]["sys_mod_count"] == "1"
    assert patched.json()["result"]["sys_updated_on"] == "2027-01-15 08:00:05"
    assert patched.json()["result"]["sys_created_on"] == NOW_TEXT

    clock.advance(5)
    put = call(sn, "PUT", f"/api/now/v2/table/incident/{sys_id}", body={"comments": "on it"})
    assert put.json()["result"]["sys_mod_count"] == "2"
    unchanged = call(sn, "PATCH", f"/api/now/table/incident/{sys_id}", body={"state": "2"})
    assert unchanged.json()["result"]["sys_mod_count"] == "2"  # no change, no new version

    journal = state.record("incident", sys_id)["journal"]
    assert [(e["field"], e["value"], e["created_by"]) for e in journal] == [
        ("work_notes", "first look", "automations"),
        ("comments", "on it", "automations"),
    ]
    assert journal[1]["created_on"] == "2027-01-15 08:00:10"

    deleted = call(sn, "DELETE", f"/api/now/table/incident/{sys_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert call(sn, "GET", f"/api/now/table/incident/{sys_id}").json() == NOT_FOUND
    assert call(sn, "DELETE", f"/api/now/table/incident/{sys_id}").status_code == 404
    assert call(sn, "PATCH", f"/api/now/table/incident/{sys_id}", body={}).status_code == 404


def test_no_response_body_header_keeps_the_status_and_drops_the_body(sn, state):
    quiet = {"X-no-response-body": "true"}
    created = call(sn, "POST", "/api/now/table/sc_task", body={"u_x": 1}, headers=quiet)
    assert (created.status_code, created.content) == (201, b"")
    sys_id = created.headers["Location"].rsplit("/", 1)[1]
    patched = call(
        sn, "PATCH", f"/api/now/table/sc_task/{sys_id}", body={"state": "3"}, headers=quiet
    )
    assert (patched.status_code, patched.content) == (200, b"")
    assert state.record("sc_task", sys_id)["fields"]["state"] == "3"


def test_a_body_that_is_not_json_is_refused(sn):
    response = requests.post(
        f"{sn.url}/api/now/table/incident", data=b"{", headers=HEADERS, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert response.json()["status"] == "failure"


# ---- ACL, rate limits, tokens ----------------------------------------------------------


def test_denied_tables_of_an_api_key_change_at_runtime_for_every_method(sn, state):
    [first] = rows(sn, "incident", sysparm_limit="1")
    record = f"/api/now/table/incident/{first['sys_id']}"
    patched = control(sn, "PATCH", "api-keys/automations", {"denied_tables": ["incident"]})
    assert patched.json()["denied_tables"] == ["incident"]
    assert KEY not in patched.text
    for method, path in [
        ("GET", "/api/now/table/incident"),
        ("POST", "/api/now/table/incident"),
        ("GET", record),
        ("PATCH", record),
        ("PUT", record),
        ("DELETE", record),
    ]:
        denied = call(sn, method, path, body={})
        assert denied.status_code == 403, method
        assert denied.json()["error"]["message"] == "User Not Authorized"
    assert call(sn, "GET", "/api/now/table/problem").status_code == 200
    state.update_api_key("automations", denied_tables=[])
    assert call(sn, "GET", record).status_code == 200
    assert control(sn, "GET", "api-keys/automations").json()["denied_tables"] == []


def test_rate_limited_answers_carry_the_rule_headers(sn, state):
    state.set_rate_limit(2, window_seconds=3600)
    rule = {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Reset": str(int(START) + 3600),
        "X-RateLimit-Rule": RATE_LIMIT_RULE,
    }
    for _ in range(2):
        allowed = call(sn, "GET", "/api/now/table/incident")
        assert allowed.status_code == 200
        assert {name: allowed.headers.get(name) for name in rule} == rule
    limited = call(sn, "POST", "/api/now/table/incident", body={})
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3600"
    assert {name: limited.headers.get(name) for name in rule} == rule
    assert limited.json() == {
        "error": {
            "message": "Rate limit exceeded",
            "detail": "Rate limit of 2 requests per hour for Table API exceeded",
        },
        "status": "failure",
    }
    state.set_rate_limit(None)
    assert "X-RateLimit-Limit" not in call(sn, "GET", "/api/now/table/incident").headers


def test_injected_429_with_retry_after_carries_the_rule_headers(sn, state):
    state.fail_next(1, status=429, retry_after=7)
    limited = call(sn, "GET", "/api/now/table/incident")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    assert limited.headers["X-RateLimit-Reset"] == str(int(START) + 7)
    assert limited.headers["X-RateLimit-Limit"] == "100"
    assert limited.headers["X-RateLimit-Rule"] == RATE_LIMIT_RULE
    state.fail_next(1, status=429)  # the semaphore kind: no rate limit headers
    bare = call(sn, "GET", "/api/now/table/incident")
    assert bare.status_code == 429
    assert "Retry-After" not in bare.headers
    assert "X-RateLimit-Rule" not in bare.headers


def grant(sn: ServiceNowStandIn) -> dict:
    response = requests.post(
        f"{sn.url}/oauth_token.do",
        data={"grant_type": "client_credentials", "client_id": "app", "client_secret": SECRET},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    return response.json()


def bearer(sn: ServiceNowStandIn, token: str) -> int:
    response = requests.get(
        f"{sn.url}/api/now/table/incident",
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )
    return response.status_code


def test_revoked_access_tokens_stop_working_and_a_new_grant_works(sn, state):
    state.add_client("app", SECRET, issue_refresh_token=True)
    old = grant(sn)
    assert bearer(sn, old["access_token"]) == 200
    assert state.revoke_access_tokens("app") == {"access_tokens": 1}
    assert bearer(sn, old["access_token"]) == 401
    assert state.client("app")["active"] is True
    assert bearer(sn, grant(sn)["access_token"]) == 200
    refreshed = requests.post(
        f"{sn.url}/oauth_token.do",
        data={
            "grant_type": "refresh_token",
            "client_id": "app",
            "client_secret": SECRET,
            "refresh_token": old["refresh_token"],
        },
        timeout=TIMEOUT,
    )
    assert refreshed.status_code == 200  # refresh tokens stay unless asked

    revoked = control(sn, "POST", "clients/app/revoke-tokens", {"refresh_tokens": True})
    assert revoked.json() == {"access_tokens": 2, "refresh_tokens": 2}
    assert bearer(sn, refreshed.json()["access_token"]) == 401
    assert control(sn, "POST", "clients/nobody/revoke-tokens").status_code == 404


# ---- late commits and bulk writes ------------------------------------------------------


def test_a_late_commit_appears_behind_changes_already_served(sn, state, clock):
    served = state.create_records("incident", {"u_batch": "late"}, sys_updated_on=NOW_TEXT)
    late = control(
        sn,
        "POST",
        "tables/incident/records",
        {"fields": {"u_batch": "late"}, "sys_updated_on": "2027-01-15 07:59:50", "visible": False},
    ).json()["sys_ids"]
    query = "u_batch=late^sys_updated_on>2027-01-15 07:59:00^ORDERBYsys_updated_on"
    first = rows(sn, "incident", sysparm_query=query, sysparm_fields="sys_id")
    assert [record["sys_id"] for record in first] == served
    assert call(sn, "GET", f"/api/now/table/incident/{late[0]}").status_code == 404
    assert state.record("incident", late[0])["fields"] is None

    assert control(sn, "POST", "tables/incident/records/make-visible", {}).json() == {
        "sys_ids": late
    }
    second = rows(sn, "incident", sysparm_query=query, sysparm_fields="sys_id,sys_updated_on")
    assert [record["sys_id"] for record in second] == late + served
    assert second[0]["sys_updated_on"] == "2027-01-15 07:59:50"


def test_records_visible_after_a_stand_in_time(sn, state, clock):
    ids = state.create_records("problem", {"u_batch": "later"}, visible_after=START + 30)
    assert state.count_records("problem", "u_batch=later") == 0
    clock.advance(29)
    assert rows(sn, "problem", sysparm_query="u_batch=later") == []
    clock.advance(1)
    assert [r["sys_id"] for r in rows(sn, "problem", sysparm_query="u_batch=later")] == ids


def test_a_held_back_update_shows_the_old_version_until_it_commits(sn, state, clock):
    [sys_id] = state.create_records("sc_task", {"u_batch": "held"})
    clock.advance(60)
    state.update_records(
        "sc_task",
        {"state": "3"},
        sys_ids=[sys_id],
        sys_updated_on="2027-01-15 08:00:30",
        visible=False,
    )
    before = call(sn, "GET", f"/api/now/table/sc_task/{sys_id}").json()["result"]
    assert (before["state"], before["sys_mod_count"]) == ("1", "0")
    view = state.record("sc_task", sys_id)
    assert view["pending"]["state"] == "3"
    assert view["visible_after"] is None
    assert state.make_visible("sc_task", [sys_id]) == [sys_id]
    after = call(sn, "GET", f"/api/now/table/sc_task/{sys_id}").json()["result"]
    assert (after["state"], after["sys_mod_count"]) == ("3", "1")
    assert after["sys_updated_on"] == "2027-01-15 08:00:30"


def test_bulk_update_of_ten_thousand_records(sn, state, clock):
    ids = state.create_records(
        "sc_task", {"u_batch": "big"}, count=10_000, sys_updated_on="2027-01-15 07:00:00"
    )
    assert len(set(ids)) == 10_000
    clock.advance(1)
    started = time.perf_counter()
    updated = state.update_records("sc_task", {"state": "3"}, query="u_batch=big")
    assert time.perf_counter() - started < 1.0
    assert sorted(updated) == sorted(ids)
    changed = "u_batch=big^state=3^sys_mod_count=1^sys_updated_on=2027-01-15 08:00:01"
    response = call(
        sn, "GET", "/api/now/table/sc_task", {"sysparm_query": changed, "sysparm_limit": "1"}
    )
    assert response.headers["X-Total-Count"] == "10000"
    assert state.count_records("sc_task", "u_batch=big^sys_mod_count=0") == 0


def test_control_api_creates_lists_updates_and_reads_records(sn):
    created = control(
        sn,
        "POST",
        "tables/sc_req_item/records",
        {"fields": {"u_batch": "ctl", "variables": {"team_name": "Sales"}}, "count": 3},
    )
    assert created.status_code == 201
    ids = created.json()["sys_ids"]
    assert len(ids) == 3
    found = rows(sn, "sc_req_item", sysparm_query="variables.team_name=Sales")
    assert [record["sys_id"] for record in found] == ids

    updated = control(
        sn,
        "POST",
        "tables/sc_req_item/records/update",
        {"sys_ids": ids[:2], "fields": {"work_notes": "bulk note"}, "sys_updated_on": START + 9},
    )
    assert updated.json() == {"sys_ids": ids[:2]}
    one = control(sn, "GET", f"tables/sc_req_item/records/{ids[0]}").json()
    assert one["fields"]["sys_mod_count"] == "1"
    assert one["fields"]["sys_updated_on"] == "2027-01-15 08:00:09"
    assert [entry["value"] for entry in one["journal"]] == ["bulk note"]

    listed = control(
        sn, "GET", "tables/sc_req_item/records", query="u_batch=ctl^sys_mod_count=1", limit="1"
    ).json()
    assert listed["count"] == 2
    assert [record["sys_id"] for record in listed["records"]] == ids[:1]


def test_control_api_refuses_bad_record_requests(sn):
    assert control(sn, "POST", "tables/u_nope/records", {}).status_code == 404
    assert control(sn, "GET", f"tables/incident/records/{'0' * 32}").status_code == 404
    assert control(sn, "POST", "tables/incident/records", {"count": 0}).status_code == 400
    bad_time = {"sys_updated_on": "15/01/2027"}
    assert control(sn, "POST", "tables/incident/records", bad_time).status_code == 400
    assert control(sn, "POST", "tables/incident/records/update", {}).status_code == 400
    assert control(sn, "PATCH", "api-keys/automations", {"colour": "red"}).status_code == 400


def test_reset_restores_records_keys_and_the_request_log(sn, state):
    state.create_records("incident", count=5)
    rows(sn, "incident")
    state.reset()
    assert state.count_records("incident") == 3
    assert state.requests() == []
    assert call(sn, "GET", "/api/now/table/incident").status_code == 401


# ---- the request log -------------------------------------------------------------------


def header(entry: dict, name: str) -> str | None:
    values = [value for key, value in entry["headers"] if key.lower() == name.lower()]
    return values[0] if values else None


def test_request_log_names_each_credential_without_holding_it(sn, state, caplog):
    caplog.set_level(logging.DEBUG, logger="localrun.standins")
    state.add_client("app", SECRET)
    state.add_api_key(QUERY_KEY, name="query-key", parameter_name="sn_key", parameter_type="query")
    requests.post(
        f"{sn.url}/oauth_token.do",
        data={"grant_type": "client_credentials"},
        auth=("app", SECRET),
        timeout=TIMEOUT,
    )
    token = grant(sn)["access_token"]
    bearer(sn, token)
    call(sn, "GET", "/api/now/table/incident", headers={"Cookie": "glide_session=made-up"})
    call(
        sn,
        "POST",
        "/api/now/table/incident",
        [("sysparm_fields", "number"), ("sn_key", QUERY_KEY)],
        body={"short_description": "x"},
        headers={"x-sn-apikey": "", "Authorization": "Bearer callers-own-token"},
    )
    state.revoke_access_tokens("app")
    bearer(sn, token)
    control(sn, "GET", "stats")

    entries = control(sn, "GET", "requests").json()["requests"]
    assert [(e["method"], e["path"], e["status"], e["principal"]) for e in entries] == [
        ("POST", "/oauth_token.do", 200, "app"),
        ("POST", "/oauth_token.do", 200, "app"),
        ("GET", "/api/now/table/incident", 200, "app"),
        ("GET", "/api/now/table/incident", 200, "automations"),
        ("POST", "/api/now/table/incident", 201, "query-key"),
        ("GET", "/api/now/table/incident", 401, None),
    ]
    basic, _, bearer_call, keyed, posted, revoked = entries
    assert header(basic, "Authorization") == "Basic [credential:app]"
    assert header(bearer_call, "Authorization") == "Bearer [credential:app]"
    assert header(keyed, "x-sn-apikey") == "[credential:automations]"
    assert header(keyed, "Cookie") == "glide_session=made-up"
    assert posted["query"] == [["sysparm_fields", "number"], ["sn_key", "[credential:query-key]"]]
    assert header(posted, "Authorization") == "Bearer callers-own-token"
    assert posted["body_size"] == len(json.dumps({"short_description": "x"}))
    assert header(revoked, "Authorization") == "Bearer [credential:app]"  # retired, still masked

    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("localrun"))
    assert "servicenow POST /api/now/table/incident -> 201 (query-key)" in logged
    everything = json.dumps(entries) + logged
    for secret in (SECRET, KEY, QUERY_KEY, token):
        assert secret not in everything
    assert "sn_key" not in logged  # no query string in the log

    assert control(sn, "POST", "requests/clear").ok
    assert control(sn, "GET", "requests").json() == {"requests": []}
