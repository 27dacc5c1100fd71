"""Hostile values, each with the answer it must get, through the local host to the real app.

Every row is sent as an otherwise valid request; the answer must be the expected status and
error code (naming the field), match the OpenAPI document, and nothing may be stored: no record,
no Key Vault write. Host names never leave the process (tests.net_support.FakeDns): test names
under `.hostile.example` resolve to the private addresses they are given, everything else but
loopback does not resolve at all.
"""

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from connections import services as services_module
from connections.errors import ApiError
from connections.validation import validate_create
from servicenow.client import ServiceNowClient
from servicenow.instance_url import OutboundPolicy
from tests import leak_guard
from tests.api_client import Api
from tests.net_support import FakeDns, RogueInstance

API_TOKEN = "hostile-api-token-" + uuid.uuid4().hex
CLIENT_ID = "hostile-client"
CLIENT_SECRET = "hostile-client-secret-" + uuid.uuid4().hex
MB = 1024 * 1024

PRIVATE_NAMES = {
    "intranet.hostile.example": (["10.1.2.3"], "private"),
    "metadata.hostile.example": (["169.254.169.254"], "link-local"),
    "loop.hostile.example": (["127.0.0.1"], "loopback"),
    "loop6.hostile.example": (["::1"], "loopback"),
    "mapped.hostile.example": (["::ffff:10.0.0.1"], "private"),
    "nat64.hostile.example": (["64:ff9b::a9fe:a9fe"], "link-local"),
    "cgnat.hostile.example": (["100.64.0.1"], "shared"),
    "wireserver.hostile.example": (["168.63.129.16"], "reserved"),
    "ula.hostile.example": (["fd00::1"], "private"),
    # One public and one private address: refused as a whole (no address is tried).
    "rebind.hostile.example": (["20.1.2.3", "10.1.2.3"], "private"),
}


@dataclass
class World:
    api: Api
    stack: Any
    dns: FakeDns

    @property
    def instance(self) -> str:
        return self.stack.servicenow.url

    def kv_writes(self) -> int:
        return self.stack.keyvault.control.calls("set")


@pytest.fixture
def world(app_host, stack, monkeypatch) -> Iterator[World]:
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name="hostile-key")
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    stack.keyvault.control.reset()
    leak_guard.register_secret(API_TOKEN, "hostile API token")
    leak_guard.register_secret(CLIENT_SECRET, "hostile client secret")
    services = services_module.services()
    monkeypatch.setattr(
        services, "servicenow", ServiceNowClient(services.policy, sleep=lambda s: 0)
    )
    dns = FakeDns({name: addresses for name, (addresses, _) in PRIVATE_NAMES.items()})
    monkeypatch.setattr("socket.getaddrinfo", dns)
    yield World(Api(app_host.url, app_host.keys.function_key), stack, dns)


def body(world: World, **changes: Any) -> dict[str, Any]:
    auth = changes.pop("auth", {})
    document = {
        "type": "servicenow",
        "name": "Hostile " + uuid.uuid4().hex[:8],
        "instance_url": world.instance,
        "auth": {"method": "api_token", "api_token": API_TOKEN, **auth},
    }
    document.update(changes)
    return document


def tenant() -> str:
    return "hostile-" + uuid.uuid4().hex[:10]


def assert_error(response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code, error
    if field is not None:
        assert field in [detail["field"] for detail in error["details"]], error
    return error


def assert_nothing_stored(world: World, tenant_id: str, kv_writes_before: int) -> None:
    listed = world.api.call("GET", f"/api/tenants/{tenant_id}/connections").json()
    assert listed["items"] == []
    assert world.kv_writes() == kv_writes_before


# -- bodies ------------------------------------------------------------------------------------

NESTED = "[" * 30_000 + "]" * 30_000
RAW_BODIES = [
    # (id, body bytes, content type, status, code)
    (
        "one byte over 64 KiB",
        b'{"a": "' + b"x" * (64 * 1024 - 8) + b'"}',
        None,
        413,
        "payload_too_large",
    ),
    ("10 MB body", b'{"a": "' + b"x" * (10 * MB) + b'"}', None, 413, "payload_too_large"),
    ("nested 30,000 deep", NESTED.encode(), None, 400, "invalid_json"),
    ("invalid UTF-8", b'{"name": "\xff\xfe\xc3("}', None, 400, "invalid_json"),
    ("overlong UTF-8 slash", b'{"name": "\xc0\xaf"}', None, 400, "invalid_json"),
    ("UTF-16 body", '{"name": "x"}'.encode("utf-16"), None, 400, "invalid_json"),
    ("lone surrogate in a value", b'{"name": "\\ud800"}', None, 400, "invalid_json"),
    ("lone surrogate in a key", b'{"\\udfff": 1}', None, 400, "invalid_json"),
    ("5,000-digit number", b'{"name": 1' + b"0" * 5000 + b"}", None, 400, "invalid_json"),
    ("empty body", b"", None, 400, "invalid_json"),
    ("JSON array", b"[]", None, 400, "invalid_json"),
    ("JSON string", b'"servicenow"', None, 400, "invalid_json"),
    ("trailing garbage", b"{}{}", None, 400, "invalid_json"),
    ("form body", b"name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("XML body", b"<connection/>", "application/xml", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [row[1:] for row in RAW_BODIES],
    ids=[row[0] for row in RAW_BODIES],
)
def test_hostile_bodies(world, data, content_type, status, code):
    tenant_id, before = tenant(), world.kv_writes()
    headers = {"Content-Type": content_type or "application/json"}
    path = f"/api/tenants/{tenant_id}/connections"
    assert_error(world.api.call("POST", path, data=data, headers=headers), status, code)
    assert_nothing_stored(world, tenant_id, before)


def test_json_nested_up_to_the_parsers_limit_is_a_400_at_every_depth(world):
    """Around the depth where the JSON parser gives up, the merge patch must not crash either."""
    created = world.api.call("POST", f"/api/tenants/{tenant()}/connections", body(world)).json()
    path = f"/api/tenants/{created['tenant_id']}/connections/{created['id']}"
    for depth in [*range(940, 1001, 4), 5000]:
        data = '{"auth": ' + '{"x": ' * depth + "1" + "}" * depth + "}"
        response = world.api.call(
            "PATCH", path, data=data.encode(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, (depth, response.status_code)


TEN_MB = "t" * (10 * MB)
FIELD_VALUES = [
    # (id, changes to a valid create body, field, status, code)
    ("10 MB API token", {"auth": {"api_token": TEN_MB}}, None, 413, "payload_too_large"),
    (
        "API token over 4,096",
        {"auth": {"api_token": "t" * 4097}},
        "auth.api_token",
        400,
        "validation_error",
    ),
    (
        "API token with CR/LF",
        {"auth": {"api_token": "tok\r\nX-Evil: 1"}},
        "auth.api_token",
        400,
        "validation_error",
    ),
    (
        "API token with a space",
        {"auth": {"api_token": "tok en"}},
        "auth.api_token",
        400,
        "validation_error",
    ),
    (
        "API token of an object",
        {"auth": {"api_token": {"a": 1}}},
        "auth.api_token",
        400,
        "validation_error",
    ),
    (
        "header name with CR/LF",
        {"auth": {"parameter_name": "x-key\r\nX-Injected: 1"}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "header name with LF at the end",
        {"auth": {"parameter_name": "x-sn-apikey\n"}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "header name with a colon",
        {"auth": {"parameter_name": "x:key"}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "header name with a space",
        {"auth": {"parameter_name": "x key"}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "header name of 65 characters",
        {"auth": {"parameter_name": "x" * 65}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "query name with & and =",
        {"auth": {"parameter_type": "query", "parameter_name": "a&b=c"}},
        "auth.parameter_name",
        400,
        "validation_error",
    ),
    (
        "parameter type cookie",
        {"auth": {"parameter_type": "cookie"}},
        "auth.parameter_type",
        400,
        "validation_error",
    ),
    (
        "method of an object",
        {"auth": {"method": {"api_token": 1}}},
        "auth.method",
        400,
        "validation_error",
    ),
    ("NUL in the name", {"name": "Contoso\x00ITSM"}, "name", 400, "validation_error"),
    ("escape sequence in the name", {"name": "\x1b[31mContoso"}, "name", 400, "validation_error"),
    ("C1 control in the name", {"name": "Contoso\x85ITSM"}, "name", 400, "validation_error"),
    ("line separator in the name", {"name": "Contoso\u2028ITSM"}, "name", 400, "validation_error"),
    ("name of 101 characters", {"name": "n" * 101}, "name", 400, "validation_error"),
    ("blank name", {"name": "   "}, "name", 400, "validation_error"),
    ("unknown field", {"extra": True}, "extra", 400, "validation_error"),
    ("unknown auth field", {"auth": {"password": "x"}}, "auth.password", 400, "validation_error"),
    (
        "e-mail with LF at the end",
        {"notify_emails": ["it@contoso.example\n"]},
        "notify_emails[0]",
        400,
        "validation_error",
    ),
    (
        "e-mail with a Bcc header",
        {"notify_emails": ["it@contoso.example\r\nBcc: x@evil.example"]},
        "notify_emails[0]",
        400,
        "validation_error",
    ),
    (
        "21 e-mails",
        {"notify_emails": [f"it{i}@contoso.example" for i in range(21)]},
        "notify_emails",
        400,
        "validation_error",
    ),
    (
        "expiry before year 1 in UTC",
        {"auth": {"expires_at": "0001-01-01T00:00:00+01:00"}},
        "auth.expires_at",
        400,
        "validation_error",
    ),
    (
        "expiry after year 9999 in UTC",
        {"auth": {"expires_at": "9999-12-31T23:59:59-01:00"}},
        "auth.expires_at",
        400,
        "validation_error",
    ),
    (
        "expiry in year 169",
        {"auth": {"expires_at": "0169-06-23T08:00:00Z"}},
        "auth.expires_at",
        400,
        "validation_error",
    ),
    (
        "expiry without a zone",
        {"auth": {"expires_at": "2099-01-01T00:00:00"}},
        "auth.expires_at",
        400,
        "validation_error",
    ),
    (
        "expiry in the past",
        {"auth": {"expires_at": "2001-01-01T00:00:00Z"}},
        "auth.expires_at",
        400,
        "validation_error",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "status", "code"),
    [row[1:] for row in FIELD_VALUES],
    ids=[row[0] for row in FIELD_VALUES],
)
def test_hostile_field_values(world, changes, field, status, code):
    tenant_id, before = tenant(), world.kv_writes()
    response = world.api.call(
        "POST", f"/api/tenants/{tenant_id}/connections", body(world, **changes)
    )
    assert_error(response, status, code, field)
    assert_nothing_stored(world, tenant_id, before)


def test_hostile_values_in_an_update_change_nothing(world):
    created = world.api.call("POST", f"/api/tenants/{tenant()}/connections", body(world)).json()
    path = f"/api/tenants/{created['tenant_id']}/connections/{created['id']}"
    before = world.kv_writes()
    patches = [
        ({"auth": {"api_token": TEN_MB}}, 413, None),
        ({"auth": {"parameter_name": "x-key\r\nX-Injected: 1"}}, 400, "auth.parameter_name"),
        ({"name": "Contoso\x00"}, 400, "name"),
        ({"instance_url": "https://user:pw@contoso.service-now.com"}, 400, "instance_url"),
        ({"instance_url": "http://169.254.169.254"}, 400, "instance_url"),
        ({"notify_emails": ["it@contoso.example\n"]}, 400, "notify_emails[0]"),
    ]
    for patch, status, field in patches:
        response = world.api.call("PATCH", path, patch)
        assert response.status_code == status, (patch, response.text[:300])
        if field:
            assert field in [d["field"] for d in response.json()["error"]["details"]]
    assert world.api.call("GET", path).json() == created
    assert world.kv_writes() == before


def test_the_furthest_expiry_is_accepted_and_kept(world):
    """`9999-12-31T23:59:59Z` (a common "never") goes through validation, Key Vault's expiry
    attribute and the renewal schedule without overflowing."""
    document = body(world, auth={"expires_at": "9999-12-31T23:59:59Z"})
    response = world.api.call("POST", f"/api/tenants/{tenant()}/connections", document)
    assert response.status_code == 201, response.text
    assert response.json()["auth"]["expires_at"] == "9999-12-31T23:59:59Z"
    check = world.api.call("POST", response.headers["Location"] + "/check")
    assert check.json()["status"] == "connected"


def test_names_with_slashes_hashes_and_question_marks_are_just_text(world):
    """Names are display text: `/ \\ # ?` are kept verbatim (records are keyed by id and a hash
    of the name, never by the name itself)."""
    tenant_id = tenant()
    for name in ["a/b", "a\\b", "a#b", "a?b=c", "../../etc/passwd", "%2F%00", "<script>x</script>"]:
        created = world.api.call(
            "POST", f"/api/tenants/{tenant_id}/connections", body(world, name=name)
        )
        assert created.status_code == 201, (name, created.text)
        assert created.json()["name"] == name
        read = world.api.call("GET", created.headers["Location"])
        assert read.json()["name"] == name
    names = [
        item["name"]
        for item in world.api.call("GET", f"/api/tenants/{tenant_id}/connections").json()["items"]
    ]
    assert len(names) == 7


# -- instance URLs -----------------------------------------------------------------------------

REFUSED_URLS = [
    # (id, instance_url): each is 400 validation_error on `instance_url`, before any lookup
    ("Cyrillic look-alike", "https://c\u043entoso.service-now.com"),
    ("Greek look-alike", "https://c\u03bfntoso.service-now.com"),
    ("full-width letters", "https://\uff43\uff4f\uff4e\uff54\uff4f\uff53\uff4f.service-now.com"),
    ("punycode label", "https://xn--cntoso-3ve.service-now.com"),
    ("zero-width space", "https://contoso\u200b.service-now.com"),
    ("user and password", "https://user:secret@contoso.service-now.com"),
    ("instance as user info", "https://contoso.service-now.com@evil.example"),
    ("backslash trick", "https://contoso.service-now.com\\@evil.example"),
    ("port 8443", "https://contoso.service-now.com:8443"),
    ("port 0", "https://contoso.service-now.com:0"),
    ("port 99999", "https://contoso.service-now.com:99999"),
    ("empty port", "https://contoso.service-now.com:"),
    ("path", "https://contoso.service-now.com/api/now"),
    ("dot segments", "https://contoso.service-now.com/../"),
    ("query", "https://contoso.service-now.com/?sysparm=1"),
    ("fragment", "https://contoso.service-now.com/#x"),
    ("http", "http://contoso.service-now.com"),
    ("ftp", "ftp://contoso.service-now.com"),
    ("javascript", "javascript:alert(1)"),
    ("scheme-relative", "//contoso.service-now.com"),
    ("IPv4 private", "https://10.0.0.1"),
    ("IPv4 public", "https://8.8.8.8"),
    ("IPv6", "https://[2001:db8::1]"),
    ("IPv6 literal", "https://[::2]"),
    ("decimal IPv4", "https://2130706433"),
    ("octal IPv4", "https://0177.0.0.1"),
    ("hex IPv4", "https://0x7f.0.0.1"),
    ("short IPv4", "https://127.1"),
    ("IPv4-mapped IPv6 loopback", "http://[::ffff:127.0.0.1]:8081"),
    ("IPv4-mapped IPv6 metadata", "https://[::ffff:a9fe:a9fe]"),
    ("cloud metadata", "https://169.254.169.254"),
    ("cloud metadata over http", "http://169.254.169.254/latest/meta-data/"),
    ("localhost subdomain", "https://evil.localhost"),
    (".internal name", "https://metadata.google.internal"),
    (".local name", "https://printer.local"),
    ("single label", "https://intranet"),
    ("localhost with port 0", "https://localhost.:0"),
    ("CR/LF", "https://contoso.service-now.com\r\nHost: evil.example"),
    ("2,049 characters", "https://" + "a" * 2030 + ".service-now.com"),
]


@pytest.mark.parametrize(
    "url", [row[1] for row in REFUSED_URLS], ids=[row[0] for row in REFUSED_URLS]
)
def test_hostile_instance_urls_are_refused_before_any_lookup(world, url):
    tenant_id, before = tenant(), world.kv_writes()
    calls_before = len(world.stack.servicenow.state.stats()["calls"])
    response = world.api.call(
        "POST", f"/api/tenants/{tenant_id}/connections", body(world, instance_url=url)
    )
    error = assert_error(response, 400, "validation_error", "instance_url")
    assert url not in json.dumps(error), "the message must not echo the URL"
    non_loopback = [name for name in world.dns.lookups if name not in ("127.0.0.1", "localhost")]
    assert non_loopback == []
    assert len(world.stack.servicenow.state.stats()["calls"]) == calls_before
    assert_nothing_stored(world, tenant_id, before)


@pytest.mark.parametrize("name", sorted(PRIVATE_NAMES))
def test_hosts_that_resolve_to_non_public_addresses_are_never_called(world, name):
    tenant_id, before = tenant(), world.kv_writes()
    response = world.api.call(
        "POST", f"/api/tenants/{tenant_id}/connections", body(world, instance_url=f"https://{name}")
    )
    error = assert_error(response, 502, "instance_unreachable")
    problem = PRIVATE_NAMES[name][1]
    assert f"resolves to a {problem}" in error["message"], error["message"]
    assert world.dns.looked_up(name)
    # Nothing was connected to: the addresses were refused before any socket was opened (the
    # fake DNS would have failed a connect to them with "could not be resolved" instead).
    assert "could not" not in error["message"] and "connection" not in error["message"].lower()
    assert_nothing_stored(world, tenant_id, before)


def test_a_host_that_does_not_resolve_is_502(world):
    tenant_id = tenant()
    response = world.api.call(
        "POST",
        f"/api/tenants/{tenant_id}/connections",
        body(world, instance_url="https://nowhere.service-now.com"),
    )
    assert "could not be resolved" in assert_error(response, 502, "instance_unreachable")["message"]


def test_loopback_is_admitted_only_by_the_local_setting(world):
    """ALLOW_LOCAL_INSTANCES=true (the test stack) admits the literal loopback hosts; the
    production policy refuses them, and a name that merely resolves to loopback is refused by
    both (see the rows above)."""
    port = world.stack.servicenow.url.rsplit(":", 1)[1]
    for url in (f"http://localhost:{port}", f"http://127.0.0.1:{port}"):
        response = world.api.call(
            "POST", f"/api/tenants/{tenant()}/connections", body(world, instance_url=url)
        )
        assert response.status_code == 201, response.text
    production = OutboundPolicy()
    for url in (
        f"http://localhost:{port}",
        "https://127.0.0.1",
        "http://[::1]:8081",
        "https://localhost",
    ):
        with pytest.raises(ApiError) as caught:
            validate_create(body(world, instance_url=url), production)
        assert caught.value.status == 400, url


@pytest.mark.parametrize("method", ["api_token", "oauth2"])
@pytest.mark.parametrize(
    "target", ["loopback trap", "https://intranet.hostile.example/x", "http://169.254.169.254/"]
)
def test_an_instance_that_redirects_is_never_followed(world, method, target):
    """A 3xx could carry the API token or the client secret to another host: it is an error,
    and nothing reaches the redirect's target (not even a DNS lookup)."""
    with RogueInstance() as trap:
        location = trap.url + "/steal" if target == "loopback trap" else target
        world.stack.servicenow.state.fail_next(1, mode="redirect", location=location, status=307)
        auth = {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        document = body(world) if method == "api_token" else {**body(world), "auth": auth}
        tenant_id, before = tenant(), world.kv_writes()
        response = world.api.call("POST", f"/api/tenants/{tenant_id}/connections", document)
        assert "redirect" in assert_error(response, 502, "instance_unreachable")["message"]
        assert trap.requests == []
    assert not world.dns.looked_up("intranet.hostile.example")
    assert_nothing_stored(world, tenant_id, before)


# -- path and query values ---------------------------------------------------------------------

PATH_VALUES = [
    # (id, path after /api, expected status, code or None for the host's bare 404). An encoded
    # slash stays in its segment, as ASP.NET Core routes it: the app judges the value.
    ("slash in the tenant", "/tenants/a%2Fb/connections", 400, "validation_error"),
    ("dot-dot tenant", "/tenants/%2E%2E/connections", 400, "validation_error"),
    ("backslash in the tenant", "/tenants/a%5Cb/connections", 400, "validation_error"),
    ("hash in the tenant", "/tenants/a%23b/connections", 400, "validation_error"),
    ("question mark in the tenant", "/tenants/a%3Fb/connections", 400, "validation_error"),
    ("NUL in the tenant", "/tenants/a%00b/connections", 400, "validation_error"),
    ("LF after the tenant", "/tenants/contoso%0A/connections", 400, "validation_error"),
    ("look-alike tenant", "/tenants/c%D0%BEntoso/connections", 400, "validation_error"),
    ("tenant of 129", "/tenants/" + "t" * 129 + "/connections", 400, "validation_error"),
    ("tenant starting with a dot", "/tenants/.contoso/connections", 400, "validation_error"),
    ("LF after the id", "/tenants/contoso/connections/" + "a" * 32 + "%0A", 404, "not_found"),
    ("upper-case id", "/tenants/contoso/connections/" + "A" * 32, 404, "not_found"),
    ("NUL in the id", "/tenants/contoso/connections/" + "a" * 31 + "%00", 404, "not_found"),
    ("hash in the id", "/tenants/contoso/connections/a%23b", 404, "not_found"),
    ("question mark in the id", "/tenants/contoso/connections/a%3Fb", 404, "not_found"),
    ("backslash in the id", "/tenants/contoso/connections/..%5C..%5Cx", 404, "not_found"),
    ("slash in the id", "/tenants/contoso/connections/a%2F..%2Fb", 404, "not_found"),
    (
        "superscript digit limit",
        "/tenants/contoso/connections?limit=%C2%B2",
        400,
        "validation_error",
    ),
    (
        "Arabic-Indic digit limit",
        "/tenants/contoso/connections?limit=%D9%A3",
        400,
        "validation_error",
    ),
    ("exponent limit", "/tenants/contoso/connections?limit=1e3", 400, "validation_error"),
    ("negative limit", "/tenants/contoso/connections?limit=-1", 400, "validation_error"),
    ("limit 501", "/tenants/contoso/connections?limit=501", 400, "validation_error"),
    ("forged cursor", "/tenants/contoso/connections?cursor=eyJ4Ijog", 400, "validation_error"),
]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [row[1:] for row in PATH_VALUES],
    ids=[row[0] for row in PATH_VALUES],
)
def test_hostile_path_and_query_values(world, path, status, code):
    """Each value is tried on a read and on a write: GET of the list or the connection, and
    POST of a create or a check."""
    write = path + "/check" if "/connections/" in path else path
    calls = [("GET", path, None)]
    if "?" not in path:
        calls.append(("POST", write, None if "/connections/" in path else body(world)))
    for method, target, document in calls:
        response = world.api.call(method, "/api" + target, document, check=code is not None)
        assert response.status_code == status, (method, response.text[:300])
        if code is None:
            assert response.content == b"", "the host's own 404 has no body"
        else:
            assert response.json()["error"]["code"] == code
