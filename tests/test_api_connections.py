"""The Connections API through the local host, Azurite and the Key Vault and ServiceNow
stand-ins."""

import logging
import uuid
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError

from connections import services as services_module
from connections.secrets import secret_name
from localrun.standins.keyvault import VaultError
from servicenow.client import ServiceNowClient
from tests.api_client import Api

CLIENT_ID = "automate365-test"
CLIENT_SECRET = "client-secret-" + uuid.uuid4().hex
API_TOKEN = "api-token-" + uuid.uuid4().hex
SECRETS = (CLIENT_SECRET, API_TOKEN)


@pytest.fixture
def api(app_host, stack, caplog) -> Iterator[Api]:
    caplog.set_level(logging.DEBUG)
    stack.servicenow.state.reset()
    stack.servicenow.state.add_client(CLIENT_ID, CLIENT_SECRET)
    stack.servicenow.state.add_api_key(API_TOKEN, name="test-key")
    stack.keyvault.control.reset()
    services = services_module.services()
    services.servicenow = ServiceNowClient(services.policy, sleep=lambda seconds: None)
    client = Api(app_host.url, app_host.keys.function_key)
    yield client
    seen = client.seen_text() + caplog.text
    for secret in SECRETS + tuple(getattr(client, "extra_secrets", ())):
        assert secret not in seen, "a secret leaked into a response or a log line"


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:12]


def api_token_body(stack, name="Contoso ITSM", token=API_TOKEN, **auth):
    return {
        "type": "servicenow",
        "name": name,
        "instance_url": stack.servicenow.url,
        "auth": {"method": "api_token", "api_token": token, **auth},
        "notify_emails": ["it-admins@contoso.example"],
    }


def oauth_body(stack, name="Contoso OAuth", secret=CLIENT_SECRET):
    return {
        "type": "servicenow",
        "name": name,
        "instance_url": stack.servicenow.url,
        "auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": secret},
    }


def connections_path(tenant: str) -> str:
    return f"/api/tenants/{tenant}/connections"


def create(api: Api, tenant: str, body: dict) -> dict:
    response = api.call("POST", connections_path(tenant), body)
    assert response.status_code == 201, response.text
    return response.json()


def vault_secret(stack, name: str) -> dict | None:
    """The secret's bundle as the vault holds it (its latest version), or None."""
    try:
        return stack.keyvault.store.get(name)
    except VaultError:
        return None


def vault_deleted(stack, name: str) -> dict | None:
    try:
        return stack.keyvault.store.get_deleted(name)
    except VaultError:
        return None


def kv_calls(stack) -> dict:
    return dict(stack.keyvault.control.stats()["calls"])


# -- create --------------------------------------------------------------------------------


def test_create_api_token_connection(api, stack, tenant):
    response = api.call("POST", connections_path(tenant), api_token_body(stack))
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"] == f"{connections_path(tenant)}/{body['id']}"
    assert response.headers["ETag"]
    assert body["status"] == "connected"
    assert body["instance_url"] == stack.servicenow.url
    assert body["auth"] == {
        "method": "api_token",
        "parameter_name": "x-sn-apikey",
        "parameter_type": "header",
        "expires_at": None,
    }
    assert body["capabilities"] == {"incident": True, "sc_req_item": True, "change_request": True}
    stored = vault_secret(stack, secret_name(body["id"], "api_token"))
    assert stored["value"] == API_TOKEN
    assert stored["contentType"]
    assert stored["tags"] == {"tenant": tenant, "connection": body["id"], "kind": "api_token"}


def test_create_api_token_in_query_parameter_with_expiry(api, stack, tenant):
    stack.servicenow.state.add_api_key(
        "query-token-1", name="q", parameter_name="apikey", parameter_type="query"
    )
    api.extra_secrets = ("query-token-1",)
    body = api_token_body(
        stack,
        token="query-token-1",
        parameter_name="apikey",
        parameter_type="query",
        expires_at="2099-01-01T00:00:00Z",
    )
    created = create(api, tenant, body)
    assert created["auth"]["parameter_type"] == "query"
    assert created["auth"]["expires_at"] == "2099-01-01T00:00:00Z"
    stored = vault_secret(stack, secret_name(created["id"], "api_token"))
    assert stored["attributes"]["exp"] == 4070908800


def test_create_oauth_connection(api, stack, tenant):
    created = create(api, tenant, oauth_body(stack))
    assert created["status"] == "connected"
    assert created["auth"]["method"] == "oauth2"
    assert created["auth"]["client_id"] == CLIENT_ID
    assert created["auth"]["token_expires_at"]
    assert stack.servicenow.state.token_exchanges(CLIENT_ID, "client_credentials") == 1
    secret = vault_secret(stack, secret_name(created["id"], "client_secret"))
    assert secret["value"] == CLIENT_SECRET
    assert vault_secret(stack, secret_name(created["id"], "access_token"))["value"]


def test_capabilities_show_a_table_the_credentials_cannot_read(api, stack, tenant):
    stack.servicenow.state.add_api_key(
        "limited-token", name="limited", denied_tables=["change_request"]
    )
    api.extra_secrets = ("limited-token",)
    created = create(api, tenant, api_token_body(stack, token="limited-token"))
    assert created["capabilities"] == {
        "incident": True,
        "sc_req_item": True,
        "change_request": False,
    }


def test_wrong_api_token_is_422_and_nothing_is_stored(api, stack, tenant):
    before = kv_calls(stack)
    response = api.call("POST", connections_path(tenant), api_token_body(stack, token="wrong"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "credentials_rejected"
    assert "x-sn-apikey" in error["message"]
    assert kv_calls(stack).get("set", 0) == before.get("set", 0)
    assert api.call("GET", connections_path(tenant)).json()["items"] == []


def test_wrong_client_secret_names_the_causes(api, stack, tenant):
    response = api.call("POST", connections_path(tenant), oauth_body(stack, secret="nope"))
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "glide.oauth.inbound.client.credential.grant_type.enabled" in message
    assert "OAuth Application User" in message
    # A 401 from oauth_token.do is tried once more before it counts.
    assert stack.servicenow.state.stats()["token_rejections"][CLIENT_ID] == {
        "client_credentials": 2
    }


def test_hibernating_instance_is_502_saying_so(api, stack, tenant):
    stack.servicenow.state.fail_next(1, mode="hibernate")
    response = api.call("POST", connections_path(tenant), api_token_body(stack))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "instance_unreachable"
    assert "hibernating" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        ({"status": 503}, "server error (503)"),
        ({"mode": "redirect", "location": "https://evil.example/"}, "redirect"),
        ({"mode": "garbage"}, "not JSON"),
    ],
)
def test_instance_failures_are_502(api, stack, tenant, failure, words):
    stack.servicenow.state.fail_next(1, **failure)
    response = api.call("POST", connections_path(tenant), oauth_body(stack))
    assert response.status_code == 502
    assert words in response.json()["error"]["message"]
    assert api.call("GET", connections_path(tenant)).json()["items"] == []


def test_instance_that_does_not_listen_is_502(api, stack, tenant):
    body = api_token_body(stack)
    body["instance_url"] = "http://127.0.0.1:9"
    response = api.call("POST", connections_path(tenant), body)
    assert response.status_code == 502


def test_rate_limited_instance_is_retried(api, stack, tenant):
    stack.servicenow.state.fail_next(1, status=429, retry_after=1)
    assert create(api, tenant, api_token_body(stack))["status"] == "connected"


def test_key_vault_throttling_is_retried(api, stack, tenant):
    stack.keyvault.control.throttle(2, retry_after=0)
    assert create(api, tenant, api_token_body(stack))["status"] == "connected"


def test_validation_errors_name_every_field(api, stack, tenant):
    body = api_token_body(stack, parameter_type="cookie")
    body["instance_url"] = "https://10.0.0.1"
    body["extra"] = True
    response = api.call("POST", connections_path(tenant), body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    fields = {detail["field"] for detail in error["details"]}
    assert fields == {"instance_url", "auth.parameter_type", "extra"}


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[]", "application/json", 400, "invalid_json"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b'{"a": "' + b"x" * 70_000 + b'"}', "application/json", 413, "payload_too_large"),
    ],
)
def test_bad_bodies(api, tenant, data, content_type, status, code):
    response = api.call(
        "POST", connections_path(tenant), data=data, headers={"Content-Type": content_type}
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_names_are_unique_per_tenant_case_insensitively(api, stack, tenant):
    create(api, tenant, api_token_body(stack, name="Contoso ITSM"))
    response = api.call(
        "POST", connections_path(tenant), api_token_body(stack, name="CONTOSO itsm")
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "name_taken"
    other = "o" + tenant
    assert create(api, other, api_token_body(stack, name="Contoso ITSM"))["name"] == "Contoso ITSM"


# -- read, list ----------------------------------------------------------------------------


def test_read_and_tenant_isolation(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    response = api.call("GET", path)
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["ETag"]
    other = api.call("GET", f"{connections_path('other' + tenant)}/{created['id']}")
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"
    assert api.call("GET", f"{connections_path(tenant)}/{uuid.uuid4().hex}").status_code == 404
    assert api.call("GET", f"{connections_path(tenant)}/not-an-id").status_code == 404


def test_list_pages_through_next(api, stack, tenant):
    for index in range(3):
        create(api, tenant, api_token_body(stack, name=f"Connection {index}"))
    first = api.call("GET", connections_path(tenant) + "?limit=2").json()
    assert len(first["items"]) == 2
    assert first["next"]
    second = api.call("GET", first["next"]).json()
    assert len(second["items"]) == 1
    assert second["next"] is None
    names = {item["name"] for item in first["items"] + second["items"]}
    assert names == {"Connection 0", "Connection 1", "Connection 2"}


def test_list_and_read_never_touch_key_vault(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    before = kv_calls(stack)
    api.call("GET", connections_path(tenant))
    api.call("GET", f"{connections_path(tenant)}/{created['id']}")
    assert kv_calls(stack) == before


def test_list_rejects_bad_limit_and_cursor(api, tenant):
    assert api.call("GET", connections_path(tenant) + "?limit=0").status_code == 400
    assert api.call("GET", connections_path(tenant) + "?cursor=%%%").status_code == 400


def test_bad_tenant_id_is_400(api):
    response = api.call("GET", "/api/tenants/bad%23tenant/connections")
    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["field"] == "tenant_id"


# -- update --------------------------------------------------------------------------------


def test_rename_needs_no_proof_and_honours_if_match(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    etag = api.call("GET", path).headers["ETag"]
    calls_before = stack.servicenow.state.stats()["table_calls"]
    response = api.call(
        "PATCH",
        path,
        data=b'{"name": "Renamed"}',
        headers={"Content-Type": "application/merge-patch+json", "If-Match": etag},
    )
    assert response.status_code == 200
    assert response.json()["name"] == "Renamed"
    assert stack.servicenow.state.stats()["table_calls"] == calls_before
    stale = api.call("PATCH", path, {"name": "Again"}, headers={"If-Match": etag})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "precondition_failed"
    # The old name is free again, the new one is taken.
    create(api, tenant, api_token_body(stack, name="Contoso ITSM"))
    clash = api.call("PATCH", path, {"name": "contoso itsm"})
    assert clash.status_code == 409


def test_rotating_to_a_rejected_token_changes_nothing(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    response = api.call("PATCH", path, {"auth": {"api_token": "wrong-token"}})
    assert response.status_code == 422
    stored = vault_secret(stack, secret_name(created["id"], "api_token"))
    assert stored["value"] == API_TOKEN
    assert api.call("POST", path + "/check").json()["status"] == "connected"


def test_rotating_the_token_proves_it_then_swaps_it(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    stack.servicenow.state.add_api_key("rotated-token", name="rotated")
    api.extra_secrets = ("rotated-token",)
    response = api.call(
        "PATCH", path, {"auth": {"method": "api_token", "api_token": "rotated-token"}}
    )
    assert response.status_code == 200
    stored = vault_secret(stack, secret_name(created["id"], "api_token"))
    assert stored["value"] == "rotated-token"
    stack.servicenow.state.revoke_api_key("test-key")
    assert api.call("POST", path + "/check").json()["status"] == "connected"


def test_changing_the_method_replaces_auth_and_purges_old_secrets(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    incomplete = api.call("PATCH", path, {"auth": {"method": "oauth2", "client_id": CLIENT_ID}})
    assert incomplete.status_code == 400
    patch = {"auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}}
    response = api.call("PATCH", path, patch)
    assert response.status_code == 200
    assert response.json()["auth"]["method"] == "oauth2"
    assert vault_secret(stack, secret_name(created["id"], "api_token")) is None


def test_switching_the_method_back_and_forth_in_a_purge_protected_vault(api, stack, tenant):
    """API token -> OAuth 2.0 -> API token within the retention period: each old secret is only
    soft-deleted, so writing its name again recovers it first; the new version is the one used."""
    assert stack.keyvault.store.purge_protection, "the stand-in's default, as infra deploys"
    second_token = "api-token-second-" + uuid.uuid4().hex
    api.extra_secrets = (second_token,)
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    api_token_name = secret_name(created["id"], "api_token")
    to_oauth = {
        "auth": {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    }
    for switch in (to_oauth, api_token_body(stack), to_oauth):
        switched = api.call("PATCH", path, {"auth": switch.get("auth")})
        assert switched.status_code == 200, switched.text
        assert switched.json()["status"] == "connected"
    assert vault_secret(stack, api_token_name) is None, "the API token is not readable"
    assert vault_deleted(stack, api_token_name) is not None, "only kept, deleted"
    stack.servicenow.state.revoke_api_key("test-key")  # only the new token works from now on
    stack.servicenow.state.add_api_key(second_token, name="second-key")
    back = api.call("PATCH", path, api_token_body(stack, token=second_token))
    assert back.status_code == 200, back.text
    assert back.json()["auth"]["method"] == "api_token"
    assert vault_secret(stack, api_token_name)["value"] == second_token
    assert api.call("POST", path + "/check").json()["status"] == "connected"
    for kind in ("client_secret", "access_token"):
        assert vault_secret(stack, secret_name(created["id"], kind)) is None
    assert api.call("DELETE", path).status_code == 204
    assert vault_secret(stack, api_token_name) is None


def test_patch_unknown_connection_is_404(api, tenant):
    response = api.call("PATCH", f"{connections_path(tenant)}/{uuid.uuid4().hex}", {"name": "x"})
    assert response.status_code == 404


# -- delete, check -------------------------------------------------------------------------


@pytest.mark.parametrize("purge_protection", [True, False], ids=["purge-protected", "purgeable"])
def test_delete_removes_record_and_purges_secrets(
    api, stack, tenant, monkeypatch, purge_protection
):
    """No credential stays readable; a purge-protected vault keeps them deleted (recoverable
    only by an operator) until their retention ends, a purgeable one forgets them at once."""
    monkeypatch.setattr(stack.keyvault.store, "purge_protection", purge_protection)
    created = create(api, tenant, oauth_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    assert api.call("DELETE", path).status_code == 204
    assert api.call("GET", path).status_code == 404
    assert api.call("DELETE", path).status_code == 404
    for kind in ("client_secret", "access_token"):
        assert vault_secret(stack, secret_name(created["id"], kind)) is None
        kept = vault_deleted(stack, secret_name(created["id"], kind))
        assert (kept is not None) == purge_protection
    # The name can be used again.
    create(api, tenant, oauth_body(stack))


def test_delete_honours_if_match(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}"
    stale = api.call("DELETE", path, headers={"If-Match": "W/\"datetime'2000-01-01'\""})
    assert stale.status_code == 412
    etag = api.call("GET", path).headers["ETag"]
    assert api.call("DELETE", path, headers={"If-Match": etag}).status_code == 204


def test_check_reports_a_revoked_key_and_its_recovery(api, stack, tenant):
    created = create(api, tenant, api_token_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}/check"
    stack.servicenow.state.revoke_api_key("test-key")
    checked = api.call("POST", path).json()
    assert checked["status"] == "invalid_credentials"
    assert "API token" in checked["status_detail"]
    stack.servicenow.state.enable_api_key("test-key")
    assert api.call("POST", path).json()["status"] == "connected"


def test_check_renews_the_oauth_token(api, stack, tenant):
    created = create(api, tenant, oauth_body(stack))
    path = f"{connections_path(tenant)}/{created['id']}/check"
    assert api.call("POST", path).json()["status"] == "connected"
    assert stack.servicenow.state.token_exchanges(CLIENT_ID) == 2
    stack.servicenow.state.revoke_client(CLIENT_ID)
    assert api.call("POST", path).json()["status"] == "renewal_failed"


def test_check_unknown_connection_is_404(api, tenant):
    assert (
        api.call("POST", f"{connections_path(tenant)}/{uuid.uuid4().hex}/check").status_code == 404
    )


# -- faults half-way -----------------------------------------------------------------------


def test_key_vault_down_after_the_check_stores_nothing(api, stack, tenant):
    stack.keyvault.control.fail(20, status=503)
    response = api.call("POST", connections_path(tenant), api_token_body(stack))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    stack.keyvault.control.reset()
    assert api.call("GET", connections_path(tenant)).json()["items"] == []


def test_table_down_after_the_secret_was_written_purges_it(api, stack, tenant, monkeypatch):
    services = services_module.services()
    written = []
    real_put = services.secrets.put

    def put(*args, **kwargs):
        written.append(args[1])
        return real_put(*args, **kwargs)

    def add(connection):
        raise ServiceRequestError("table storage is down")

    monkeypatch.setattr(services.secrets, "put", put)
    monkeypatch.setattr(services.store, "add", add)
    response = api.call("POST", connections_path(tenant), api_token_body(stack))
    assert response.status_code == 503
    assert written
    with pytest.raises(ResourceNotFoundError):
        services.secrets._client.get_secret(secret_name(written[0], "api_token"))
    assert vault_secret(stack, secret_name(written[0], "api_token")) is None


def test_every_route_needs_the_function_key(api, tenant):
    path = connections_path(tenant)
    some = f"{path}/{uuid.uuid4().hex}"
    routes = [
        ("GET", "/api/connection-types"),
        ("GET", "/api/openapi.json"),
        ("POST", path),
        ("GET", path),
        ("GET", some),
        ("PATCH", some),
        ("DELETE", some),
        ("POST", some + "/check"),
    ]
    for method, route in routes:
        assert api.call(method, route, key=None).status_code == 401, route
        assert api.call(method, route, key="wrong-key").status_code == 401, route
    assert api.call("GET", "/api/health", key=None).status_code == 200
