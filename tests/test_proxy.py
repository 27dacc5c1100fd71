"""The proxy through the local host, Azurite and the stand-ins: what an automation calling
ServiceNow through a connection relies on (CONTRACT.md, "Calling ServiceNow through a
connection")."""

import dataclasses
import http.client
import json
import logging
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from connections import services as services_module
from connections.model import parse_time
from proxy import api as proxy_api
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import Api

CLIENT_ID = "proxy-client"
CLIENT_SECRET = "proxy-client-secret-" + uuid.uuid4().hex
API_TOKEN = "proxy-api-token-" + uuid.uuid4().hex
CALLER_SECRET = "caller-own-credential-" + uuid.uuid4().hex
TABLE = "api/now/table/incident"


@pytest.fixture
def api(app_host, stack, caplog, monkeypatch) -> Iterator[Api]:
    caplog.set_level(logging.DEBUG)
    state = stack.servicenow.state
    state.reset()
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    state.add_api_key(API_TOKEN, name="proxy-key")
    state.add_api_key(API_TOKEN + "-q", name="proxy-query-key", parameter_type="query")
    services = services_module.services()
    monkeypatch.setattr(services, "servicenow", ServiceNowClient(services.policy, sleep=_no_wait))
    client = Api(app_host.url, app_host.keys.function_key)
    yield client
    seen = client.seen_text() + caplog.text
    for secret in (CLIENT_SECRET, API_TOKEN, API_TOKEN + "-q"):
        assert secret not in seen, "a secret leaked into a response or a log line"


def _no_wait(seconds: float) -> None:
    return None


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    """The proxy's pauses before a retry, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(services_module.services(), "sleep", recorded.append)
    return recorded


@pytest.fixture
def proxy_settings(monkeypatch):
    """Changes the running proxy's settings for one test: `proxy_settings(timeout=1)`."""
    proxy = proxy_api._proxy()

    def change(**values) -> None:
        monkeypatch.setattr(proxy, "settings", dataclasses.replace(proxy.settings, **values))

    return change


@pytest.fixture
def notices(monkeypatch) -> list[dict]:
    """Notices the app enqueues, in order (they still go to the queue)."""
    queue = services_module.services().notices
    sent: list[dict] = []
    real_send = queue.send

    def send(message: dict) -> None:
        real_send(message)
        sent.append(message["notice"])

    monkeypatch.setattr(queue, "send", send)
    return sent


def events_of(notices: list[dict], connection: dict) -> list[str]:
    return [notice["event"] for notice in notices if notice["connection_id"] == connection["id"]]


@pytest.fixture
def tenant() -> str:
    return "p" + uuid.uuid4().hex[:12]


def create(api: Api, stack, tenant: str, auth: dict, name: str = "ITSM") -> dict:
    body = {"type": "servicenow", "name": name, "instance_url": stack.servicenow.url, "auth": auth}
    response = api.call("POST", f"/api/tenants/{tenant}/connections", body)
    assert response.status_code == 201, response.text
    return response.json()


def api_token_connection(api, stack, tenant, **auth) -> dict:
    return create(api, stack, tenant, {"method": "api_token", "api_token": API_TOKEN, **auth})


def query_token_connection(api, stack, tenant) -> dict:
    auth = {"method": "api_token", "api_token": API_TOKEN + "-q", "parameter_type": "query"}
    return create(api, stack, tenant, auth, name="ITSM query")


def oauth_connection(api, stack, tenant) -> dict:
    auth = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return create(api, stack, tenant, auth, name="ITSM OAuth")


def proxied(connection: dict, path: str = TABLE) -> str:
    return (
        f"/api/tenants/{connection['tenant_id']}/connections/{connection['id']}/servicenow/{path}"
    )


def calls(api: Api, connection: dict, query: str = "") -> list[dict]:
    path = f"/api/tenants/{connection['tenant_id']}/connections/{connection['id']}/calls{query}"
    response = api.call("GET", path)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def table_calls(stack) -> int:
    return sum(stack.servicenow.state.stats()["table_calls"].values())


def raw_request(host, method: str, target: str, headers: dict[str, str] | None = None):
    """Sends the request target exactly as written (requests would normalise `..`)."""
    url = urllib.parse.urlsplit(host.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in {"x-functions-key": host.keys.function_key, **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        leak_guard.capture(f"response {response.status}", body.decode("utf-8", "replace"))
        return response.status, dict(response.getheaders()), body
    finally:
        connection.close()


# -- relaying --------------------------------------------------------------------------------


def test_a_table_read_is_relayed_with_its_status_body_and_headers(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    response = api.call("GET", proxied(connection, TABLE + "?sysparm_limit=2"))
    assert response.status_code == 200
    assert response.headers["X-Relayed-From"] == "servicenow"
    assert response.headers["X-Total-Count"] == "3"
    assert response.headers["Content-Type"].startswith("application/json")
    assert len(response.json()["result"]) == 2
    assert "Server" not in response.headers or "ServiceNow" not in response.headers["Server"]


def test_the_instance_s_404_is_relayed_and_told_apart_from_the_service_s(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    relayed = api.call("GET", proxied(connection, "api/now/table/no_such_table"))
    assert relayed.headers["X-Relayed-From"] == "servicenow"
    assert relayed.status_code in (400, 404)
    assert relayed.json()["status"] == "failure"
    other = {**connection, "id": uuid.uuid4().hex}
    own = api.call("GET", proxied(other))
    assert own.status_code == 404
    assert "X-Relayed-From" not in own.headers
    assert own.json()["error"]["code"] == "not_found"


def test_another_tenant_s_connection_is_404_and_calls_nothing(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    before = table_calls(stack)
    stranger = {**connection, "tenant_id": "other-" + tenant}
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        response = api.call(method, proxied(stranger))
        assert response.status_code == 404, method
        assert response.json()["error"]["code"] == "not_found"
    listed = api.call("GET", f"/api/tenants/other-{tenant}/connections/{connection['id']}/calls")
    assert listed.status_code == 404
    assert table_calls(stack) == before


def test_every_method_is_served_and_the_function_key_is_required(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        response = api.call(method, proxied(connection, TABLE), key="wrong-key", check=False)
        assert response.status_code == 401, method
        response = api.call(method, proxied(connection, TABLE + "/x"), check=False)
        assert response.headers.get("X-Relayed-From") == "servicenow", method


# -- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "api/now/table/../../../oauth_token.do",
        "api/now/table/%2e%2e/%2e%2e/oauth_token.do",
        "api/now/table/%2E%2e/x",
        "api/now/table/incident%2f..%2fsys_user",
        "api/now/table/incident%2Fx",
        "api/now//table/incident",
        "api/now/table/incident/./x",
        "api/now/table/inc%5cident",
        "api/now/table/inc%2eident",
        "api/now/table/inc%00ident",
        "api/now/table/inc%0aident",
        "api/now/table/inc%7fident",
        "api/now/table/%ff",
        "api/now/table/inc%zzident",
    ],
)
def test_path_tricks_are_400_and_never_reach_the_instance(api, app_host, stack, tenant, path):
    connection = api_token_connection(api, stack, tenant)
    before = table_calls(stack)
    status, headers, body = raw_request(app_host, "GET", "/api" + proxied(connection, path)[4:])
    assert status == 400, body
    assert "X-Relayed-From" not in headers
    error = json.loads(body)["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "path"
    assert table_calls(stack) == before


def test_a_backslash_as_sent_is_400(api, app_host, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    status, _, body = raw_request(app_host, "GET", proxied(connection, "api/now/table/inc\\ident"))
    assert status == 400, body


@pytest.mark.parametrize(
    "path",
    [
        "oauth_token.do",
        "api/now/attachmentX",
        "api/now/table",
        "api/now/tables/incident",
        "api/now/v2/tablex/incident",
        "api/now/vx/table/incident",
        "api/global/user_role_inheritance",
        "api/now/ui/meta/incident",
        "xapi/now/table/incident",
    ],
)
def test_paths_outside_the_allow_list_are_403(api, stack, tenant, path):
    connection = api_token_connection(api, stack, tenant)
    before = table_calls(stack)
    response = api.call("GET", proxied(connection, path))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "path_not_allowed"
    assert "X-Relayed-From" not in response.headers
    assert table_calls(stack) == before


@pytest.mark.parametrize(
    "path",
    [
        "api/now/table/incident",
        "api/now/v2/table/incident",
        "api/now/v1/table/incident",
        "api/now/attachment",
        "api/now/attachment/file",
        "api/now/v1/attachment",
        "api/sn_sc/servicecatalog/items",
        "api/sn_sc/v1/servicecatalog/items",
        "api/sn_chg_rest/change",
        "api/now/import/u_staging",
    ],
)
def test_allowed_paths_reach_the_instance(api, stack, tenant, path):
    connection = api_token_connection(api, stack, tenant)
    response = api.call("GET", proxied(connection, path))
    assert response.headers.get("X-Relayed-From") == "servicenow", response.text
    assert stack.servicenow.state.stats()["calls"][-1]["path"] == "/" + path


def test_the_allow_list_follows_the_setting(api, stack, tenant, proxy_settings):
    connection = api_token_connection(api, stack, tenant)
    proxy_settings(allowed_paths=("api/now/attachment",))
    assert api.call("GET", proxied(connection, TABLE)).status_code == 403
    allowed = api.call("GET", proxied(connection, "api/now/v1/attachment/x"))
    assert allowed.headers.get("X-Relayed-From") == "servicenow"


# -- connections that cannot work --------------------------------------------------------------


def test_a_connection_with_rejected_credentials_is_409_without_calling_out(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.revoke_api_key("proxy-key")
    path = f"/api/tenants/{tenant}/connections/{connection['id']}/check"
    assert api.call("POST", path).json()["status"] == "invalid_credentials"
    before = table_calls(stack)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "connection_unusable"
    assert "invalid_credentials" in error["message"] and "PATCH" in error["message"]
    assert table_calls(stack) == before


def test_an_api_token_401_is_relayed_and_the_connection_checked_once(api, stack, tenant, notices):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.revoke_api_key("proxy-key")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: api.call("GET", proxied(connection)), range(8)))
    # calls that reached the instance relay its 401; calls that came after the check found the
    # connection invalid and answered 409 themselves
    relayed = [r for r in responses if r.status_code == 401]
    assert relayed and all(r.headers["X-Relayed-From"] == "servicenow" for r in relayed)
    assert all(
        r.json()["error"]["code"] == "connection_unusable" for r in responses if r not in relayed
    )
    path = f"/api/tenants/{tenant}/connections/{connection['id']}"
    assert api.call("GET", path).json()["status"] == "invalid_credentials"
    assert events_of(notices, connection) == ["invalid_credentials"]


# -- retries ---------------------------------------------------------------------------------


def test_a_429_on_get_is_retried_once_after_its_retry_after(api, stack, tenant, waits):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(1, status=429, retry_after=2, scope="table")
    response = api.call("GET", proxied(connection))
    assert response.status_code == 200
    assert waits == [2.0]
    assert calls(api, connection)[0]["retries"] == 1


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_429_on_post_or_patch_is_relayed_never_retried(api, stack, tenant, waits, method):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(1, status=429, retry_after=1, scope="table")
    before = table_calls(stack)
    response = api.call(method, proxied(connection, TABLE), {"short_description": "x"})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Relayed-From"] == "servicenow"
    assert waits == []
    assert len(stack.servicenow.state.stats()["calls"]) >= 1
    assert table_calls(stack) == before  # the 429 was the only call, injected before the table


def test_a_503_with_a_long_retry_after_is_relayed_with_it(api, stack, tenant, waits):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(1, status=503, retry_after=30, scope="table")
    response = api.call("GET", proxied(connection))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert waits == []


def test_a_second_429_after_the_retry_is_relayed(api, stack, tenant, waits):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(2, status=429, retry_after=1, scope="table")
    response = api.call("DELETE", proxied(connection, TABLE + "/abc"))
    assert response.status_code == 429
    assert waits == [1.0]


# -- limits ----------------------------------------------------------------------------------


def test_an_answer_over_the_limit_is_502_response_too_large(api, stack, tenant, proxy_settings):
    connection = api_token_connection(api, stack, tenant)
    proxy_settings(max_response_bytes=100)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "response_too_large"
    assert "X-Relayed-From" not in response.headers


def test_no_answer_in_time_is_504_instance_timeout(api, stack, tenant, proxy_settings):
    connection = api_token_connection(api, stack, tenant)
    proxy_settings(timeout=1.0)
    stack.servicenow.state.set_latency(3, scope="table")
    try:
        response = api.call("GET", proxied(connection))
    finally:
        stack.servicenow.state.set_latency(0, scope="table")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "instance_timeout"


def test_an_instance_that_is_gone_is_502_instance_unreachable(api, stack, tenant, monkeypatch):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(
        1, mode="redirect", location="https://example.org/", status=307
    )
    redirected = api.call("GET", proxied(connection))
    assert redirected.status_code == 307  # relayed, never followed, without its Location
    assert "Location" not in redirected.headers
    from servicenow import outbound

    def refused(*args, **kwargs):
        raise outbound.OutboundError("The connection to the instance failed.")

    monkeypatch.setattr("proxy.service.safe_request", refused)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "instance_unreachable"


def test_a_body_over_10_mib_is_413(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    before = table_calls(stack)
    body = b"x" * (10 * 1024 * 1024 + 1)
    response = api.call("POST", proxied(connection), data=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert table_calls(stack) == before


# -- OAuth 2.0 -------------------------------------------------------------------------------


def test_oauth_calls_carry_a_bearer_token(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 200
    assert stack.servicenow.state.stats()["calls"][-1]["principal"] == CLIENT_ID


def test_fifty_calls_refused_together_make_exactly_one_more_grant(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    state = stack.servicenow.state
    state.advance_clock(3600)  # the instance has expired the token the service still holds
    grants = state.token_exchanges(CLIENT_ID)
    try:
        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(lambda _: api.call("GET", proxied(connection)), range(50)))
    finally:
        state.advance_clock(-3600)
    assert [r.status_code for r in responses] == [200] * 50
    assert state.token_exchanges(CLIENT_ID) == grants + 1
    entries = calls(api, connection, "?limit=50")
    assert len(entries) == 50
    # A call that read the record before the new token was saved was refused, then sent again
    # with the new token; one that read it after went out once with the new token.
    assert all(entry["renewed"] == (entry["retries"] == 1) for entry in entries)
    assert any(entry["renewed"] for entry in entries)


def test_a_revoked_oauth_client_answers_409_after_the_failed_renewal(api, stack, tenant, notices):
    connection = oauth_connection(api, stack, tenant)
    stack.servicenow.state.revoke_client(CLIENT_ID)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 409
    assert "renewal_failed" in response.json()["error"]["message"]
    before = table_calls(stack)
    again = api.call("GET", proxied(connection))
    assert again.status_code == 409
    assert table_calls(stack) == before
    assert events_of(notices, connection) == ["renewal_failed"]


# -- the audit -------------------------------------------------------------------------------


def test_each_call_is_recorded_newest_first_without_credentials(api, stack, tenant):
    connection = query_token_connection(api, stack, tenant)
    query = f"sysparm_limit=1&x-sn-apikey={CALLER_SECRET}&code=k&sysparm_fields=number"
    api.call("GET", proxied(connection, f"{TABLE}?{query}"), headers={"X-Automation-Id": "a-1"})
    api.call("POST", proxied(connection, TABLE), {"short_description": "New team"})
    api.call("GET", proxied(connection, "api/x"))
    entries = calls(api, connection)
    assert [entry["method"] for entry in entries] == ["GET", "POST", "GET"]
    denied, posted, read = entries
    assert denied["status"] == 403 and denied["error_code"] == "path_not_allowed"
    assert not denied["relayed"]
    assert posted["bytes_in"] == len(b'{"short_description": "New team"}')
    assert read["path"] == "/" + TABLE
    assert read["query"] == "sysparm_limit=1&sysparm_fields=number"
    assert read["automation_id"] == "a-1"
    assert read["status"] == 200 and read["relayed"] and read["bytes_out"] > 0
    assert read["retries"] == 0 and read["renewed"] is False
    assert parse_time(read["at"]) >= parse_time(connection["created_at"])
    text = str(entries)
    assert CALLER_SECRET not in text and API_TOKEN not in text


def test_the_audit_pages_with_next(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    for _ in range(5):
        api.call("GET", proxied(connection))
    path = f"/api/tenants/{tenant}/connections/{connection['id']}/calls?limit=2"
    seen, pages = [], 0
    while path:
        page = api.call("GET", path).json()
        seen += page["items"]
        path, pages = page["next"], pages + 1
    assert len(seen) == 5 and pages == 3
    assert [entry["at"] for entry in seen] == sorted((e["at"] for e in seen), reverse=True)


def test_the_audit_rejects_a_forged_cursor(api, stack, tenant):
    connection = api_token_connection(api, stack, tenant)
    path = f"/api/tenants/{tenant}/connections/{connection['id']}/calls?cursor=bm9wZQ"
    response = api.call("GET", path)
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "cursor"


# -- what reaches the instance (its request log masks credentials as [credential:<owner>]) ----


def last_request(stack) -> dict:
    return stack.servicenow.state.requests()[-1]


def headers_of(entry: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in entry["headers"]}


CALLER_HEADERS = {
    "Authorization": f"Bearer {CALLER_SECRET}",
    "Cookie": f"JSESSIONID={CALLER_SECRET}",
    "x-sn-apikey": CALLER_SECRET,
    "X-Custom": "kept-out",
    "X-Forwarded-For": "10.0.0.1",
    "Accept": "application/json",
    "Content-Type": "application/json",
    "X-no-response-body": "true",
}


@pytest.mark.parametrize("placement", ["header", "query"])
def test_only_the_allowed_headers_and_the_connection_s_own_credential_arrive(
    api, stack, tenant, placement
):
    connection = (
        api_token_connection(api, stack, tenant)
        if placement == "header"
        else query_token_connection(api, stack, tenant)
    )
    query = f"sysparm_limit=1&code=function-key&x-sn-apikey={CALLER_SECRET}&X-SN-APIKEY=again"
    path = proxied(connection, f"{TABLE}?{query}")
    response = api.call("POST", path, {"short_description": "x"}, headers=CALLER_HEADERS)
    assert response.status_code == 201 and response.content == b""  # X-no-response-body
    entry = last_request(stack)
    headers = headers_of(entry)
    allowed = {"accept", "content-type", "x-no-response-body", "host", "content-length"}
    allowed |= {"user-agent", "accept-encoding", "connection"}  # the HTTP client's own
    owner = "proxy-key" if placement == "header" else "proxy-query-key"
    if placement == "header":
        assert headers.pop("x-sn-apikey") == f"[credential:{owner}]"
        assert [name for name, _ in entry["query"]] == ["sysparm_limit"]
    else:
        assert "x-sn-apikey" not in headers
        assert entry["query"] == [["sysparm_limit", "1"], ["x-sn-apikey", f"[credential:{owner}]"]]
    assert set(headers) <= allowed, set(headers) - allowed
    assert headers["x-no-response-body"] == "true"
    assert headers["content-type"] == "application/json"
    assert CALLER_SECRET not in str(entry)
    assert entry["principal"] == owner


def test_oauth_sends_its_bearer_token_and_never_the_caller_s(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    api.call("GET", proxied(connection, TABLE + "?sysparm_limit=1"), headers=CALLER_HEADERS)
    entry = last_request(stack)
    assert headers_of(entry)["authorization"] == f"Bearer [credential:{CLIENT_ID}]"
    assert "cookie" not in headers_of(entry)
    assert CALLER_SECRET not in str(entry)


def test_link_points_back_at_the_proxy_and_pages_through_it(api, app_host, stack, tenant):
    connection = query_token_connection(api, stack, tenant)
    path = proxied(connection, TABLE + "?sysparm_limit=1&sysparm_fields=number")
    numbers = []
    while path:
        response = api.call("GET", path)
        assert response.status_code == 200
        numbers += [record["number"] for record in response.json()["result"]]
        link = response.headers.get("Link", "")
        assert API_TOKEN not in link and stack.servicenow.url not in link
        nexts = [part for part in link.split(",") if 'rel="next"' in part]
        path = nexts[0].split(">")[0].strip(" <").removeprefix(app_host.url) if nexts else None
        assert path is None or path.startswith(proxied(connection, TABLE + "?"))
    assert numbers == sorted(set(numbers)) and len(numbers) == int(
        response.headers["X-Total-Count"]
    )


def test_an_automation_reads_a_request_and_writes_a_work_note_back(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    fields = "sys_id,number,short_description,variables.team_name"
    read = api.call(
        "GET", proxied(connection, f"api/now/table/sc_req_item?sysparm_fields={fields}")
    )
    item = read.json()["result"][0]
    written = api.call(
        "PATCH",
        proxied(connection, f"api/now/table/sc_req_item/{item['sys_id']}"),
        {"work_notes": "Team created: https://teams.example/marketing"},
    )
    assert written.status_code == 200
    assert written.json()["result"]["sys_mod_count"] == "1"
    stored = stack.servicenow.state.record("sc_req_item", item["sys_id"])
    notes = [entry["value"] for entry in stored["journal"] if entry["field"] == "work_notes"]
    assert notes == ["Team created: https://teams.example/marketing"]
    deleted = api.call("DELETE", proxied(connection, f"api/now/table/incident/{item['sys_id']}"))
    assert deleted.status_code == 404 and deleted.headers["X-Relayed-From"] == "servicenow"


def test_rate_limit_headers_are_relayed(api, stack, tenant, waits):
    connection = api_token_connection(api, stack, tenant)
    stack.servicenow.state.set_rate_limit(1, window_seconds=3600, retry_after=600)
    try:
        assert api.call("GET", proxied(connection)).status_code == 200
        limited = api.call("GET", proxied(connection))
    finally:
        stack.servicenow.state.set_rate_limit(None)
    assert limited.status_code == 429
    for name in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset", "X-RateLimit-Rule"):
        assert limited.headers.get(name), name
    assert waits == []  # 600 s is over PROXY_MAX_RETRY_WAIT_SECONDS


def test_a_revoked_access_token_is_renewed_once_and_the_call_retried(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    state = stack.servicenow.state
    state.revoke_access_tokens(CLIENT_ID)
    grants = state.token_exchanges(CLIENT_ID)
    response = api.call("GET", proxied(connection))
    assert response.status_code == 200
    assert state.token_exchanges(CLIENT_ID) == grants + 1
    entry = calls(api, connection)[0]
    assert entry["renewed"] is True and entry["retries"] == 1
    again = api.call("GET", proxied(connection))
    assert again.status_code == 200 and state.token_exchanges(CLIENT_ID) == grants + 1


def test_a_second_401_is_relayed_and_the_connection_checked(api, stack, tenant):
    connection = oauth_connection(api, stack, tenant)
    stack.servicenow.state.fail_next(2, status=401, scope="table")
    response = api.call("GET", proxied(connection))
    assert response.status_code == 401
    assert response.headers["X-Relayed-From"] == "servicenow"
    read = api.call("GET", f"/api/tenants/{tenant}/connections/{connection['id']}").json()
    assert read["status"] == "connected"  # the check after it read the table fine
    assert read["last_checked_at"] >= connection["last_checked_at"]
