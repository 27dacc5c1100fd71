"""The ServiceNow stand-in, driven over loopback HTTP the way the service's client will call it."""

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from localrun.standins.servicenow import (
    CLIENT_CREDENTIALS_PROPERTY,
    ServiceNowStandIn,
    ServiceNowState,
)

SECRET = "s3cret-value-never-logged"
API_KEY = "api-key-value-never-logged"
START = 1_800_000_000.0
TIMEOUT = 5


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    return running[0]


@pytest.fixture
def state(sn: ServiceNowStandIn) -> ServiceNowState:
    return sn.state


def grant(sn: ServiceNowStandIn, **form: str) -> requests.Response:
    return requests.post(f"{sn.url}/oauth_token.do", data=form, timeout=TIMEOUT)


def client_credentials(
    sn: ServiceNowStandIn, client_id: str = "app", secret: str = SECRET
) -> requests.Response:
    return grant(sn, grant_type="client_credentials", client_id=client_id, client_secret=secret)


def refresh(sn: ServiceNowStandIn, refresh_token: str, client_id: str = "app") -> requests.Response:
    return grant(
        sn,
        grant_type="refresh_token",
        client_id=client_id,
        client_secret=SECRET,
        refresh_token=refresh_token,
    )


def read(
    sn: ServiceNowStandIn,
    table: str = "incident",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> requests.Response:
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(
        f"{sn.url}/api/now/table/{table}",
        headers=headers,
        params=params,
        timeout=TIMEOUT,
        allow_redirects=False,
    )


def token_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def control(
    sn: ServiceNowStandIn, method: str, path: str, body: object = None
) -> requests.Response:
    return requests.request(method, f"{sn.url}/_control/{path}", json=body, timeout=TIMEOUT)


ACCESS_DENIED = {"error": "server_error", "error_description": "access_denied"}
NOT_AUTHENTICATED = {
    "error": {
        "message": "User Not Authenticated",
        "detail": "Required to provide Auth information",
    },
    "status": "failure",
}


# ---- OAuth grants ----------------------------------------------------------------------


def test_client_credentials_grant_answers_a_bearer_token_without_refresh_token(sn, state):
    state.add_client("app", SECRET)
    response = client_credentials(sn)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "scope", "token_type", "expires_in"}
    assert body["scope"] == "useraccount"
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1799
    assert read(sn, token=body["access_token"]).status_code == 200
    assert state.token_exchanges("app", "client_credentials") == 1


def test_client_credentials_grant_accepts_http_basic_client_authentication(sn, state):
    state.add_client("app", SECRET)
    response = requests.post(
        f"{sn.url}/oauth_token.do",
        data={"grant_type": "client_credentials"},
        auth=("app", SECRET),
        timeout=TIMEOUT,
    )
    assert read(sn, token=token_of(response)).status_code == 200


@pytest.mark.parametrize(("client_id", "secret"), [("app", "wrong"), ("nobody", SECRET)])
def test_bad_client_is_access_denied(sn, state, client_id, secret):
    state.add_client("app", SECRET)
    response = client_credentials(sn, client_id, secret)
    assert response.status_code == 401
    assert response.json() == ACCESS_DENIED
    assert state.token_exchanges("app") == 0


def test_revoked_client_is_denied_and_its_tokens_stop_working_until_reenabled(sn, state):
    state.add_client("app", SECRET)
    token = token_of(client_credentials(sn))
    state.revoke_client("app")
    assert client_credentials(sn).json() == ACCESS_DENIED
    assert read(sn, token=token).json() == NOT_AUTHENTICATED
    state.enable_client("app")
    assert read(sn, token=token).status_code == 401
    assert read(sn, token=token_of(client_credentials(sn))).status_code == 200


def test_changed_secret_denies_the_old_one(sn, state):
    state.add_client("app", SECRET)
    state.set_client_secret("app", "new-secret")
    assert client_credentials(sn).status_code == 401
    assert client_credentials(sn, secret="new-secret").status_code == 200


def test_disabled_client_credentials_grant_is_access_denied(sn, state):
    state.add_client("app", SECRET)
    state.set_client_credentials_grant(False)
    response = client_credentials(sn)
    assert (response.status_code, response.json()) == (401, ACCESS_DENIED)
    assert state.stats()["token_rejections"] == {"app": {"client_credentials": 1}}
    state.set_client_credentials_grant(True)
    assert client_credentials(sn).status_code == 200


@pytest.mark.parametrize("grant_type", ["password", "authorization_code", ""])
def test_unsupported_grant_type(sn, state, grant_type):
    state.add_client("app", SECRET)
    response = grant(sn, grant_type=grant_type, client_id="app", client_secret=SECRET)
    assert (response.status_code, response.json()) == (400, {"error": "unsupported_grant_type"})


def test_access_token_expires_after_its_lifetime(sn, state, clock):
    state.add_client("app", SECRET)
    state.set_token_lifetimes("app", access=600)
    token_response = client_credentials(sn)
    assert token_response.json()["expires_in"] == 600
    token = token_of(token_response)
    clock.advance(599)
    assert read(sn, token=token).status_code == 200
    clock.advance(1)
    assert read(sn, token=token).json() == NOT_AUTHENTICATED


def test_reuse_token_hands_back_the_current_token_with_its_remaining_lifetime(sn, state, clock):
    state.add_client("app", SECRET, reuse_token=True)
    first = client_credentials(sn).json()
    clock.advance(600)
    second = client_credentials(sn).json()
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == 1199
    clock.advance(1199)
    third = client_credentials(sn).json()
    assert third["access_token"] != first["access_token"]
    assert third["expires_in"] == 1799
    assert state.token_exchanges("app", "client_credentials") == 3


def test_without_reuse_token_each_grant_is_a_new_token(sn, state):
    state.add_client("app", SECRET)
    assert token_of(client_credentials(sn)) != token_of(client_credentials(sn))


# ---- refresh tokens --------------------------------------------------------------------


def test_client_credentials_gives_a_refresh_token_only_when_the_client_says_so(sn, state):
    state.add_client("app", SECRET, issue_refresh_token=True)
    body = client_credentials(sn).json()
    assert body["refresh_token"]
    refreshed = refresh(sn, body["refresh_token"])
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert new["access_token"] != body["access_token"]
    assert new["refresh_token"] == body["refresh_token"]  # the instance keeps the same one
    assert read(sn, token=new["access_token"]).status_code == 200
    assert state.stats()["token_exchanges"] == {
        "app": {"client_credentials": 1, "refresh_token": 1}
    }


def test_rotated_refresh_token_invalidates_the_old_one(sn, state):
    state.add_client("app", SECRET, issue_refresh_token=True, rotate_refresh_token=True)
    first = client_credentials(sn).json()["refresh_token"]
    second = refresh(sn, first).json()["refresh_token"]
    assert second != first
    reused = refresh(sn, first)
    assert reused.status_code == 400
    assert reused.json() == {"error": "invalid_grant", "error_description": "invalid refresh token"}
    assert refresh(sn, second).status_code == 200


def test_refresh_token_expires_and_belongs_to_its_client(sn, state, clock):
    state.add_client("app", SECRET, issue_refresh_token=True, refresh_token_lifetime=3600)
    state.add_client("other", SECRET)
    token = client_credentials(sn).json()["refresh_token"]
    assert refresh(sn, token, client_id="other").json()["error"] == "invalid_grant"
    assert refresh(sn, "made-up").json()["error"] == "invalid_grant"
    clock.advance(3600)
    assert refresh(sn, token).json()["error"] == "invalid_grant"
    assert state.stats()["token_rejections"] == {
        "app": {"refresh_token": 2},
        "other": {"refresh_token": 1},
    }


def test_refresh_with_a_revoked_client_is_access_denied(sn, state):
    state.add_client("app", SECRET, issue_refresh_token=True)
    token = client_credentials(sn).json()["refresh_token"]
    state.revoke_client("app")
    response = refresh(sn, token)
    assert (response.status_code, response.json()) == (401, ACCESS_DENIED)


# ---- Table API and API keys ------------------------------------------------------------


def test_table_read_without_credentials_is_not_authenticated(sn):
    response = read(sn)
    assert (response.status_code, response.json()) == (401, NOT_AUTHENTICATED)
    assert read(sn, token="not-a-token").status_code == 401


def test_table_read_honours_limit_fields_and_no_count(sn, state):
    state.add_api_key(API_KEY)
    key = {"x-sn-apikey": API_KEY}
    full = read(sn, headers=key)
    assert full.headers["X-Total-Count"] == "3"
    assert len(full.json()["result"]) == 3
    assert {"sys_id", "number"} <= set(full.json()["result"][0])
    cheap = read(
        sn,
        headers=key,
        params={"sysparm_limit": "1", "sysparm_fields": "sys_id", "sysparm_no_count": "true"},
    )
    assert cheap.status_code == 200
    assert "X-Total-Count" not in cheap.headers
    [record] = cheap.json()["result"]
    assert list(record) == ["sys_id"]
    assert len(record["sys_id"]) == 32


def test_api_key_in_the_default_header(sn, state):
    name = state.add_api_key(API_KEY)
    assert read(sn, headers={"X-SN-APIKEY": API_KEY}).status_code == 200
    assert read(sn, headers={"x-sn-apikey": "wrong"}).status_code == 401
    assert read(sn, params={"x-sn-apikey": API_KEY}).status_code == 401  # registered as header
    assert state.stats()["calls"][0]["principal"] == name


def test_api_key_in_a_query_parameter_of_a_custom_name(sn, state):
    state.add_api_key(API_KEY, name="automations", parameter_name="sn_key", parameter_type="query")
    assert read(sn, params={"sn_key": API_KEY}).status_code == 200
    assert read(sn, headers={"sn_key": API_KEY}).status_code == 401  # registered as query
    assert read(sn, params={"x-sn-apikey": API_KEY}).status_code == 401  # other name
    assert state.stats()["calls"][0]["principal"] == "automations"


def test_api_key_in_a_header_of_a_custom_name(sn, state):
    state.add_api_key(API_KEY, parameter_name="X-Custom-Key")
    assert read(sn, headers={"x-custom-key": API_KEY}).status_code == 200
    assert read(sn, headers={"x-sn-apikey": API_KEY}).status_code == 401


def test_revoked_or_expired_api_key_is_not_authenticated(sn, state, clock):
    name = state.add_api_key(API_KEY, expires_at=START + 100)
    state.revoke_api_key(name)
    assert read(sn, headers={"x-sn-apikey": API_KEY}).json() == NOT_AUTHENTICATED
    state.enable_api_key(name)
    assert read(sn, headers={"x-sn-apikey": API_KEY}).status_code == 200
    clock.advance(100)
    assert read(sn, headers={"x-sn-apikey": API_KEY}).status_code == 401


def test_denied_table_is_forbidden_for_that_credential_only(sn, state):
    state.add_client("app", SECRET, denied_tables=["change_request"])
    state.add_api_key(API_KEY, denied_tables=["sc_req_item"])
    token = token_of(client_credentials(sn))
    denied = read(sn, "change_request", token=token)
    assert denied.status_code == 403
    assert denied.json()["status"] == "failure"
    assert denied.json()["error"]["message"] == "User Not Authorized"
    assert "ACL" in denied.json()["error"]["detail"]
    assert read(sn, "sc_req_item", token=token).status_code == 200
    assert read(sn, "sc_req_item", headers={"x-sn-apikey": API_KEY}).status_code == 403
    assert read(sn, "change_request", headers={"x-sn-apikey": API_KEY}).status_code == 200


def test_unknown_table_is_invalid_until_added(sn, state):
    state.add_api_key(API_KEY)
    key = {"x-sn-apikey": API_KEY}
    missing = read(sn, "u_custom", headers=key)
    assert missing.status_code == 400  # as an instance answers: not 404
    assert missing.json() == {
        "error": {"message": "Invalid table u_custom", "detail": None},
        "status": "failure",
    }
    for table in (
        "incident",
        "sc_req_item",
        "sc_request",
        "change_request",
        "sc_task",
        "problem",
        "sys_user",
    ):
        assert read(sn, table, headers=key).status_code == 200
    state.add_table("u_custom", [{"sys_id": "1" * 32}])
    assert read(sn, "u_custom", headers=key).json() == {"result": [{"sys_id": "1" * 32}]}


def test_rate_limit_answers_429_with_retry_after_until_the_window_passes(sn, state, clock):
    state.add_api_key(API_KEY)
    state.set_rate_limit(2, window_seconds=60, retry_after=30)
    key = {"x-sn-apikey": API_KEY}
    assert [read(sn, headers=key).status_code for _ in range(2)] == [200, 200]
    limited = read(sn, headers=key)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "30"
    assert limited.json()["status"] == "failure"
    clock.advance(60)
    assert read(sn, headers=key).status_code == 200


# ---- injected failures and latency -----------------------------------------------------


def test_fail_next_n_calls_with_a_status_then_recover(sn, state):
    state.add_api_key(API_KEY)
    state.fail_next(2, status=503)
    key = {"x-sn-apikey": API_KEY}
    statuses = [read(sn, headers=key).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_fail_next_429_carries_retry_after(sn, state):
    state.add_client("app", SECRET)
    state.fail_next(1, status=429, retry_after=7)
    limited = client_credentials(sn)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    assert client_credentials(sn).status_code == 200


def test_fail_next_scoped_to_token_calls_leaves_the_table_api_alone(sn, state):
    state.add_client("app", SECRET)
    state.add_api_key(API_KEY)
    state.fail_next(1, status=500, scope="token")
    assert read(sn, headers={"x-sn-apikey": API_KEY}).status_code == 200
    assert client_credentials(sn).status_code == 500
    assert client_credentials(sn).status_code == 200
    assert state.token_exchanges("app") == 1


def test_hibernating_instance_serves_an_html_page(sn, state):
    state.add_client("app", SECRET)
    state.fail_next(1, mode="hibernate")
    response = client_credentials(sn)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "hibernating" in response.text
    with pytest.raises(ValueError):
        response.json()


def test_garbage_answer_is_not_json(sn, state):
    state.fail_next(1, mode="garbage", scope="table")
    response = read(sn)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_redirect_answer_carries_its_location(sn, state):
    state.fail_next(1, mode="redirect", location="https://elsewhere.example/login")
    response = read(sn)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://elsewhere.example/login"


def test_latency_on_token_calls_only(sn, state):
    state.add_client("app", SECRET)
    state.add_api_key(API_KEY)
    state.set_latency(0.2, scope="token")
    started = time.monotonic()
    client_credentials(sn)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    read(sn, headers={"x-sn-apikey": API_KEY})
    assert time.monotonic() - started < 0.2


# ---- stats, logging, concurrency -------------------------------------------------------


def test_stats_and_log_name_callers_but_never_hold_a_secret(sn, state, caplog):
    caplog.set_level(logging.INFO, logger="localrun.standins.servicenow")
    state.add_client("app", SECRET, issue_refresh_token=True)
    state.add_api_key(API_KEY, name="reader", parameter_name="k", parameter_type="query")
    tokens = client_credentials(sn).json()
    refresh(sn, tokens["refresh_token"])
    read(sn, token=tokens["access_token"])
    read(sn, "sys_user", params={"k": API_KEY})
    client_credentials(sn, secret=SECRET + "-typo")
    stats = state.stats()
    assert stats["token_exchanges"] == {"app": {"client_credentials": 1, "refresh_token": 1}}
    assert stats["token_rejections"] == {"app": {"client_credentials": 1}}
    assert stats["table_calls"] == {"incident": 1, "sys_user": 1}
    assert [(c["method"], c["path"], c["status"], c["principal"]) for c in stats["calls"]] == [
        ("POST", "/oauth_token.do", 200, "app"),
        ("POST", "/oauth_token.do", 200, "app"),
        ("GET", "/api/now/table/incident", 200, "app"),
        ("GET", "/api/now/table/sys_user", 200, "reader"),
        ("POST", "/oauth_token.do", 401, "app"),
    ]
    assert len([r for r in caplog.records if "servicenow POST" in r.getMessage()]) == 3
    everything = json.dumps(stats) + caplog.text
    for secret in (SECRET, API_KEY, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in everything


def test_concurrent_grants_are_each_counted(sn, state):
    state.add_client("app", SECRET, reuse_token=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: client_credentials(sn).json(), range(24)))
    assert len({answer["access_token"] for answer in answers}) == 1
    assert state.token_exchanges("app", "client_credentials") == 24


def test_unknown_route_and_method_use_the_error_envelope(sn):
    assert requests.get(f"{sn.url}/api/now/nothing", timeout=TIMEOUT).json()["status"] == "failure"
    wrong_method = requests.get(f"{sn.url}/oauth_token.do", timeout=TIMEOUT)
    assert wrong_method.status_code == 405


# ---- control API over HTTP -------------------------------------------------------------


def test_control_api_drives_clients_and_the_grant_property(sn):
    added = control(
        sn, "POST", "clients", {"client_id": "app", "client_secret": SECRET, "reuse_token": True}
    )
    assert added.status_code == 201
    assert SECRET not in added.text
    assert added.json()["reuse_token"] is True
    patched = control(sn, "PATCH", "clients/app", {"access_token_lifetime": 60})
    assert patched.json()["access_token_lifetime"] == 60
    assert client_credentials(sn).json()["expires_in"] == 60

    assert control(sn, "POST", "clients/app/revoke").json()["active"] is False
    assert client_credentials(sn).status_code == 401
    assert control(sn, "POST", "clients/app/enable").json()["active"] is True
    control(sn, "PATCH", "clients/app", {"client_secret": "rotated"})
    assert client_credentials(sn, secret="rotated").status_code == 200

    assert control(sn, "POST", "properties", {CLIENT_CREDENTIALS_PROPERTY: False}).ok
    assert client_credentials(sn, secret="rotated").status_code == 401
    assert control(sn, "POST", "properties", {CLIENT_CREDENTIALS_PROPERTY: "true"}).ok
    assert client_credentials(sn, secret="rotated").status_code == 200


def test_control_api_drives_keys_tables_failures_and_stats(sn, clock):
    created = control(
        sn,
        "POST",
        "api-keys",
        {"value": API_KEY, "name": "k1", "denied_tables": ["sys_user"]},
    )
    assert (created.status_code, created.json()) == (201, {"name": "k1"})
    key = {"x-sn-apikey": API_KEY}
    assert read(sn, "sys_user", headers=key).status_code == 403
    assert control(sn, "POST", "tables", {"name": "u_extra"}).status_code == 201
    assert read(sn, "u_extra", headers=key).status_code == 200

    control(sn, "POST", "fail-next", {"count": 1, "status": 429, "retry_after": 3})
    assert read(sn, headers=key).headers["Retry-After"] == "3"
    control(sn, "POST", "rate-limit", {"max_calls": 0, "window_seconds": 10})
    assert read(sn, headers=key).status_code == 429
    control(sn, "POST", "rate-limit", {"max_calls": None})
    assert control(sn, "POST", "latency", {"seconds": 0, "scope": "table"}).ok

    assert control(sn, "POST", "api-keys/k1/revoke").ok
    assert read(sn, headers=key).status_code == 401
    assert control(sn, "POST", "api-keys/k1/enable").ok

    stats = control(sn, "GET", "stats").json()
    assert stats["table_calls"]["sys_user"] == 1
    assert all("_control" not in call["path"] for call in stats["calls"])
    assert API_KEY not in json.dumps(stats)

    assert control(sn, "POST", "reset").ok
    assert read(sn, headers=key).status_code == 401
    assert control(sn, "GET", "stats").json()["calls"] == [
        {"method": "GET", "path": "/api/now/table/incident", "status": 401, "principal": None}
    ]


def test_control_api_advances_the_instance_clock(sn, state):
    state.add_client("app", SECRET)
    token = token_of(client_credentials(sn))
    advanced = control(sn, "POST", "clock/advance", {"seconds": 1799})
    assert advanced.json()["now"] == START + 1799
    assert read(sn, token=token).status_code == 401


def test_control_api_rejects_bad_requests(sn):
    assert control(sn, "POST", "clients", {"client_id": "x"}).status_code == 400
    assert (
        control(sn, "POST", "clients", {"client_id": "x", "client_secret": "y", "z": 1}).status_code
        == 400
    )
    assert control(sn, "PATCH", "clients/missing", {"active": False}).status_code == 404
    assert control(sn, "POST", "api-keys/missing/revoke").status_code == 404
    assert control(sn, "POST", "fail-next", {"count": 1, "mode": "explode"}).status_code == 400
    assert control(sn, "POST", "fail-next", {"count": 0}).status_code == 400
    assert control(sn, "POST", "fail-next", {"count": 1, "mode": "redirect"}).status_code == 400
    assert control(sn, "POST", "properties", {"glide.unknown": True}).status_code == 400
    assert (
        control(sn, "POST", "api-keys", {"value": "v", "parameter_type": "cookie"}).status_code
        == 400
    )
    assert control(sn, "GET", "nowhere").status_code == 404
    not_json = requests.post(f"{sn.url}/_control/reset", data=b"{", timeout=TIMEOUT)
    assert not_json.status_code == 400
