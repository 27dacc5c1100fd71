"""Attacks on the API: other tenants' ids, missing and wrong keys, and secrets that must not leak.

The session-wide scan (tests/leak_guard.py) checks every response, log record (with its
traceback) and notice of the whole suite for every secret the stand-ins ever held; the last tests
here drive the paths where a secret is most at risk and check that scan itself.
"""

import logging
import uuid
from collections.abc import Iterator

import pytest

from connections import services as services_module
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import Api

CLIENT_ID = "attacks-client"
CLIENT_SECRET = "attacks-client-secret-" + uuid.uuid4().hex
API_TOKEN = "attacks-api-token-" + uuid.uuid4().hex
ROTATED = "attacks-rotated-token-" + uuid.uuid4().hex


@pytest.fixture
def api(app_host, stack, monkeypatch) -> Iterator[Api]:
    state = stack.servicenow.state
    state.reset()
    state.add_client(CLIENT_ID, CLIENT_SECRET, issue_refresh_token=True)
    state.add_api_key(API_TOKEN, name="attacks-key")
    state.add_api_key(ROTATED, name="attacks-rotated")
    stack.keyvault.control.reset()
    for value in (CLIENT_SECRET, API_TOKEN, ROTATED):
        leak_guard.register_secret(value, "attacks secret")
    services = services_module.services()
    monkeypatch.setattr(
        services, "servicenow", ServiceNowClient(services.policy, sleep=lambda s: 0)
    )
    yield Api(app_host.url, app_host.keys.function_key)


def tenant() -> str:
    return "atk" + uuid.uuid4().hex[:10]


def create(api: Api, stack, tenant_id: str, auth: dict) -> dict:
    body = {
        "type": "servicenow",
        "name": "Victim " + uuid.uuid4().hex[:6],
        "instance_url": stack.servicenow.url,
        "auth": auth,
        "notify_emails": ["victim@contoso.example"],
    }
    response = api.call("POST", f"/api/tenants/{tenant_id}/connections", body)
    assert response.status_code == 201, response.text
    return response.json()


TOKEN_AUTH = {"method": "api_token", "api_token": API_TOKEN}
OAUTH_AUTH = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}


# -- tenant isolation ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [TOKEN_AUTH, OAUTH_AUTH], ids=["api_token", "oauth2"])
def test_another_tenants_ids_are_404_on_every_route_and_change_nothing(api, stack, auth):
    victim_tenant = tenant()
    victim = create(api, stack, victim_tenant, auth)
    victim_path = f"/api/tenants/{victim_tenant}/connections/{victim['id']}"
    etag = api.call("GET", victim_path).headers["ETag"]
    state = stack.servicenow.state
    calls_before = (state.stats()["table_calls"], state.token_exchanges(CLIENT_ID))
    vault_before = stack.keyvault.control.calls("set")
    nobody = f"/api/tenants/{tenant()}/connections/{uuid.uuid4().hex}"
    unknown = api.call("GET", nobody).json()
    attackers = [tenant(), victim_tenant.upper(), victim_tenant + "x", victim_tenant[:-1]]
    for attacker in attackers:
        path = f"/api/tenants/{attacker}/connections/{victim['id']}"
        attempts = [
            ("GET", path, None, {}),
            ("PATCH", path, {"name": "Hijacked"}, {}),
            ("PATCH", path, {"name": "Hijacked"}, {"If-Match": etag}),
            ("PATCH", path, {"auth": {"method": "api_token", "api_token": ROTATED}}, {}),
            ("PATCH", path, {"instance_url": "https://evil.example"}, {}),
            ("DELETE", path, None, {}),
            ("DELETE", path, None, {"If-Match": "*"}),
            ("DELETE", path, None, {"If-Match": etag}),
            ("POST", path + "/check", None, {}),
        ]
        for method, target, body, headers in attempts:
            response = api.call(method, target, body, headers=headers)
            assert response.status_code == 404, (attacker, method, response.status_code)
            assert response.json() == unknown, "the answer must not tell that the id exists"
            for value in (victim["id"], victim["name"], victim["instance_url"]):
                assert value not in response.text
        listed = api.call("GET", f"/api/tenants/{attacker}/connections").json()
        assert listed == {"items": [], "next": None}
    assert api.call("GET", victim_path).json() == victim, "nothing changed"
    assert (state.stats()["table_calls"], state.token_exchanges(CLIENT_ID)) == calls_before
    assert stack.keyvault.control.calls("set") == vault_before


def test_a_cursor_of_one_tenant_lists_nothing_of_it_under_another(api, stack):
    victim_tenant = tenant()
    for _ in range(3):
        create(api, stack, victim_tenant, TOKEN_AUTH)
    first = api.call("GET", f"/api/tenants/{victim_tenant}/connections?limit=1").json()
    cursor = first["next"].split("cursor=", 1)[1]
    attacker = tenant()
    create(api, stack, attacker, TOKEN_AUTH)
    stolen = api.call("GET", f"/api/tenants/{attacker}/connections?limit=5&cursor={cursor}")
    assert stolen.status_code in (200, 400)
    if stolen.status_code == 200:
        assert all(item["tenant_id"] == attacker for item in stolen.json()["items"])
        assert victim_tenant not in stolen.text


# -- keys ------------------------------------------------------------------------------------


def test_every_route_but_health_refuses_a_missing_or_wrong_key(api, app_host):
    key, master = app_host.keys.function_key, app_host.keys.master_key
    connections = f"/api/tenants/{tenant()}/connections"
    one = f"{connections}/{uuid.uuid4().hex}"
    routes = [
        ("GET", "/api/connection-types"),
        ("GET", "/api/openapi.json"),
        ("POST", connections),
        ("GET", connections),
        ("GET", one),
        ("PATCH", one),
        ("DELETE", one),
        ("POST", one + "/check"),
    ]
    wrong_keys = [
        {"x-functions-key": ""},
        {"x-functions-key": key.upper()},
        {"x-functions-key": key[:-1]},
        {"x-functions-key": key + "x"},
        {"Authorization": f"Bearer {key}"},
        {"x-functions-key": "wrong", "x-ms-client-principal": "admin"},
    ]
    for method, route in routes:
        for headers in wrong_keys:
            response = api.call(method, route, headers=headers, key=None)
            assert response.status_code == 401, (method, route, headers)
            assert response.content == b"", "a refusal says nothing"
        for query in ("?code=wrong", "?code=", f"?code={key[:-1]}"):
            assert api.call(method, route + query, key=None).status_code == 401
        # The master key opens every function-level route, as in Azure.
        assert api.call(method, route, key=master).status_code != 401
    assert api.call("GET", "/api/health", key=None).status_code == 200
    assert api.call("GET", "/api/health", key="wrong").status_code == 200
    health = api.call("GET", "/api/health", key=None)
    assert health.json() == {"status": "ok"}, "health reveals nothing"
    admin = api.call("POST", "/admin/functions/renewal_sweep", {"input": ""}, key=key, check=False)
    assert admin.status_code == 401, "the function key is not the master key"


# -- secrets ---------------------------------------------------------------------------------


def test_secrets_stay_out_of_every_answer_log_and_notice_on_the_risky_paths(
    api, stack, app_host, caplog
):
    """The paths where a secret is most at risk: a token in a query parameter, instances that
    fail, redirect or answer garbage, a rotation that is refused, a renewal that fails and its
    notice. The session-wide scan checks everything they produce; this checks them here too."""
    caplog.set_level(logging.DEBUG)
    state = stack.servicenow.state
    query_token = "attacks-query-token-" + uuid.uuid4().hex
    leak_guard.register_secret(query_token, "attacks query token")
    state.add_api_key(query_token, name="q", parameter_name="apikey", parameter_type="query")
    tenant_id = tenant()
    auth = {"method": "api_token", "api_token": query_token}
    auth.update(parameter_name="apikey", parameter_type="query")
    body = {"type": "servicenow", "name": "Q", "instance_url": stack.servicenow.url, "auth": auth}
    path = f"/api/tenants/{tenant_id}/connections"
    for failure in ({"status": 503}, {"mode": "garbage"}, {"mode": "hibernate"}):
        state.fail_next(1, **failure)
        assert api.call("POST", path, body).status_code == 502
    state.fail_next(1, mode="redirect", location=f"https://evil.example/?t={query_token}")
    assert api.call("POST", path, body).status_code == 502
    created = api.call("POST", path, body).json()
    rotation = {"auth": {"method": "api_token", "api_token": query_token + "-not-valid"}}
    assert api.call("PATCH", f"{path}/{created['id']}", rotation).status_code == 422
    oauth = create(api, stack, tenant_id, OAUTH_AUTH)
    state.revoke_client(CLIENT_ID)
    state.revoke_api_key("q")
    for connection in (created, oauth):
        checked = api.call("POST", f"{path}/{connection['id']}/check").json()
        assert checked["status"] in ("invalid_credentials", "renewal_failed")
    listener = app_host.queues["send_notice"]
    while listener.process_once():
        pass
    seen = caplog.text + "\n".join(response.text for response in api.responses)
    seen += "\n".join(str(delivery.to_json()) for delivery in stack.webhook.received)
    seen += "\n".join(str(mail.to_json()) for mail in stack.graph.mails)
    for secret in (query_token, CLIENT_SECRET, API_TOKEN):
        assert secret not in seen
    assert "[redacted]" in caplog.text, "urllib3 logged the query string, redacted"


def test_the_leak_guard_sees_every_log_record_and_finds_what_it_must(caplog):
    marker = "leak-guard-marker-" + uuid.uuid4().hex
    logging.getLogger("some.library.deep.inside").debug("a record with %s", marker)
    with leak_guard._lock:
        captured = "\n".join(leak_guard._current)
    assert marker in captured, "DEBUG records of any logger are captured"
    try:
        raise ValueError(f"failed with {marker}-in-an-exception")
    except ValueError:
        logging.getLogger("x").exception("boom")
    with leak_guard._lock:
        captured = "\n".join(leak_guard._current)
    assert f"{marker}-in-an-exception" in captured, "tracebacks are captured"
    leaks = leak_guard.find_leaks(f"token={marker}!", {marker: "a marker"})
    assert leaks == ["a marker: ...token=<SECRET>!..."]
    # The marker is not registered as a secret, so this test itself passes the guard.
