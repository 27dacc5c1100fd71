"""Every route with an id in its path answers the contract's JSON error for an odd id, on every
method it takes, with the other ids of the route real: never a bare 404, a 500 or an HTML page.

The routes come from the app itself (the local host's table of HTTP functions), so a new route
is covered the day it is added."""

import re
import uuid
from collections.abc import Iterator

import pytest

from connections import services as services_module
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import Api

API_TOKEN = "odd-ids-api-token-" + uuid.uuid4().hex
# The value each kind of id takes when another one is the odd one. The proxy's catch-all path
# is not an id: it always reads the incident table.
ID_PARAMETERS = ("tenant_id", "connection_id", "trigger_id", "event_id")
PROXIED_PATH = "api/now/table/incident"
# (label, the odd id as it goes into the URL: already percent-encoded where it says so)
ODD_IDS = [
    ("encoded slash", "a%2Fb"),
    ("encoded slash alone", "%2F"),
    ("encoded slash, lower case", "..%2f..%2fx"),
    ("encoded backslash", "..%5C..%5Cx"),
    ("encoded NUL", "a%00b"),
    ("encoded NUL at the end", "a" * 31 + "%00"),
    ("encoded dot-dot", "%2E%2E"),
    ("encoded LF", "a%0Ab"),
    ("encoded space", "a%20b"),
    ("encoded percent", "a%252Fb"),
    ("encoded question mark", "a%3Fb"),
    ("encoded hash", "a%23b"),
    ("non-ASCII", "c%D0%BEntoso"),
    ("invalid UTF-8", "a%FFb"),
    ("overlong (129)", "a" * 129),
    ("overlong (1,000)", "f" * 1000),
    ("overlong (3,000, escapes)", "%41" * 1000),
]


@pytest.fixture
def api(app_host, stack, monkeypatch) -> Iterator[Api]:
    stack.servicenow.state.add_api_key(API_TOKEN, name="odd-ids")
    leak_guard.register_secret(API_TOKEN, "odd ids test API token")
    services = services_module.services()
    monkeypatch.setattr(services, "servicenow", ServiceNowClient(services.policy, sleep=_no_wait))
    yield Api(app_host.url, app_host.keys.function_key)


def _no_wait(seconds: float) -> None:
    return None


@pytest.fixture
def real_ids(api, stack) -> dict[str, str]:
    """A tenant, a connection and a trigger that exist, and an event id of the right shape."""
    tenant_id = "odd-" + uuid.uuid4().hex[:12]
    connection = {
        "type": "servicenow",
        "name": "Odd ids",
        "instance_url": stack.servicenow.url,
        "auth": {"method": "api_token", "api_token": API_TOKEN},
    }
    created = api.call("POST", f"/api/tenants/{tenant_id}/connections", connection)
    assert created.status_code == 201, created.text
    connection_id = created.json()["id"]
    trigger = {"name": "Odd ids", "table": "incident", "query": "active=true"}
    triggers = f"/api/tenants/{tenant_id}/connections/{connection_id}/triggers"
    made = api.call("POST", triggers, trigger)
    assert made.status_code == 201, made.text
    return {
        "tenant_id": tenant_id,
        "connection_id": connection_id,
        "trigger_id": made.json()["id"],
        "event_id": uuid.uuid4().hex,
        "path": PROXIED_PATH,
    }


def _routes_with_ids(app_host) -> list[tuple[str, str, str]]:
    """(function name, route template, method) for every HTTP function with an id parameter."""
    routes = []
    for function in app_host.http_functions:
        names = re.findall(r"\{\*?(\w+)", function.route.template)
        if not any(name in ID_PARAMETERS for name in names):
            continue
        methods = sorted(function.methods or {"GET", "POST", "PUT", "PATCH", "DELETE"})
        routes += [(function.name, function.route.template, method) for method in methods]
    return routes


def _path(template: str, values: dict[str, str]) -> str:
    return "/api/" + re.sub(r"\{\*?(\w+)\??\}", lambda found: values[found.group(1)], template)


def _assert_contract_error(response, where: str) -> None:
    assert 400 <= response.status_code < 500, (where, response.status_code, response.text[:200])
    assert response.headers.get("Content-Type", "").startswith("application/json"), where
    assert "X-Relayed-From" not in response.headers, where
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["code"], where
    assert isinstance(error["message"], str) and error["message"], where
    assert isinstance(error["details"], list), where


def test_every_route_answers_a_json_error_for_every_odd_id(api, app_host, real_ids):
    routes = _routes_with_ids(app_host)
    names = {name for name, _, _ in routes}
    assert {"get_connection", "get_trigger", "redeliver_trigger_event"} <= names
    assert {"proxy_servicenow", "trigger_push_hint"} <= names
    tried = 0
    for name, template, method in routes:
        for parameter in re.findall(r"\{\*?(\w+)", template):
            if parameter not in ID_PARAMETERS:
                continue
            for label, odd in ODD_IDS:
                path = _path(template, {**real_ids, parameter: odd})
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                headers = {"Content-Type": "application/json"} if body else {}
                key = None if name == "trigger_push_hint" else ""
                response = api.call(method, path, headers=headers, data=body, key=key, check=False)
                _assert_contract_error(response, f"{method} {name} {parameter}={label}")
                tried += 1
    assert tried >= len(routes) * len(ODD_IDS)
