import json

import pytest

from connections.errors import ApiError
from connections.validation import (
    MAX_BODY_BYTES,
    check_tenant_id,
    is_connection_id,
    parse_json_body,
    validate_create,
    validate_patch,
)
from servicenow.outbound import OutboundPolicy

POLICY = OutboundPolicy()


def api_token_body(**auth_overrides):
    auth = {"method": "api_token", "api_token": "tok-123", **auth_overrides}
    return {
        "type": "servicenow",
        "name": "Contoso ITSM",
        "instance_url": "https://contoso.service-now.com/",
        "auth": auth,
    }


def fields_of(exc: pytest.ExceptionInfo) -> set[str]:
    return {detail.field for detail in exc.value.details}


def test_api_token_defaults_and_normalised_url():
    spec = validate_create(api_token_body(), POLICY)
    assert spec.instance_url == "https://contoso.service-now.com"
    assert spec.auth == {
        "method": "api_token",
        "parameter_name": "x-sn-apikey",
        "parameter_type": "header",
        "expires_at": None,
    }
    assert spec.secrets == {"api_token": "tok-123"}
    assert spec.notify_emails == []


def test_oauth2_keeps_secret_apart_from_public_auth():
    body = api_token_body()
    body["auth"] = {"method": "oauth2", "client_id": "abc", "client_secret": "s3cret"}
    spec = validate_create(body, POLICY)
    assert spec.auth == {"method": "oauth2", "client_id": "abc", "token_expires_at": None}
    assert spec.secrets == {"client_secret": "s3cret"}


def test_expires_at_is_normalised_to_utc():
    spec = validate_create(api_token_body(expires_at="2027-03-01T01:00:00+01:00"), POLICY)
    assert spec.auth["expires_at"] == "2027-03-01T00:00:00Z"


def test_every_bad_field_is_reported_once():
    body = {
        "type": "jira",
        "name": "",
        "instance_url": "http://10.0.0.1",
        "auth": {"method": "api_token", "parameter_type": "cookie", "extra": 1},
        "notify_emails": ["ok@contoso.com", "not-an-address"],
        "colour": "blue",
    }
    with pytest.raises(ApiError) as exc:
        validate_create(body, POLICY)
    assert exc.value.status == 400
    assert exc.value.code == "validation_error"
    assert fields_of(exc) == {
        "type",
        "name",
        "instance_url",
        "auth.parameter_type",
        "auth.api_token",
        "auth.extra",
        "notify_emails[1]",
        "colour",
    }


@pytest.mark.parametrize(
    ("auth", "bad_field"),
    [
        ({"method": "basic"}, "auth.method"),
        ({"method": "api_token", "api_token": 5}, "auth.api_token"),
        ({"method": "api_token", "api_token": "a b"}, "auth.api_token"),
        ({"method": "api_token", "api_token": "x" * 5000}, "auth.api_token"),
        (
            {"method": "api_token", "api_token": "t", "parameter_name": "bad\r\nname"},
            "auth.parameter_name",
        ),
        ({"method": "api_token", "api_token": "t", "parameter_name": "a b"}, "auth.parameter_name"),
        ({"method": "api_token", "api_token": "t", "expires_at": "tomorrow"}, "auth.expires_at"),
        (
            {"method": "api_token", "api_token": "t", "expires_at": "2027-01-01T00:00:00"},
            "auth.expires_at",
        ),
        ({"method": "oauth2", "client_id": "c"}, "auth.client_secret"),
        ({"method": "oauth2", "client_secret": "s"}, "auth.client_id"),
        (
            {"method": "oauth2", "client_id": "c", "client_secret": "s", "api_token": "t"},
            "auth.api_token",
        ),
    ],
)
def test_bad_auth_fields(auth, bad_field):
    body = api_token_body()
    body["auth"] = auth
    with pytest.raises(ApiError) as exc:
        validate_create(body, POLICY)
    assert bad_field in fields_of(exc)


def test_notify_emails_limit_and_duplicates():
    body = api_token_body()
    body["notify_emails"] = [f"a{i}@contoso.com" for i in range(21)]
    with pytest.raises(ApiError) as exc:
        validate_create(body, POLICY)
    assert fields_of(exc) == {"notify_emails"}
    body["notify_emails"] = ["A@contoso.com", "a@contoso.com"]
    assert validate_create(body, POLICY).notify_emails == ["A@contoso.com"]


def test_name_with_control_characters_is_refused():
    body = api_token_body()
    body["name"] = "bad\x00name"
    with pytest.raises(ApiError) as exc:
        validate_create(body, POLICY)
    assert fields_of(exc) == {"name"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{", "application/json", 400, "invalid_json"),
        (b"[1]", "application/json", 400, "invalid_json"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 413, "payload_too_large"),
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b" " * (MAX_BODY_BYTES + 1), "application/json", 413, "payload_too_large"),
    ],
)
def test_parse_json_body_errors(body, content_type, status, code):
    with pytest.raises(ApiError) as exc:
        parse_json_body(body, content_type)
    assert (exc.value.status, exc.value.code) == (status, code)


def test_deeply_nested_json_within_the_size_limit_is_invalid_json():
    body = b"[" * 30_000 + b"]" * 30_000
    with pytest.raises(ApiError) as exc:
        parse_json_body(body, "application/json")
    assert exc.value.code == "invalid_json"


def test_parse_json_body_accepts_merge_patch_and_charset():
    assert parse_json_body(b'{"a": 1}', "application/merge-patch+json") == {"a": 1}
    assert parse_json_body(json.dumps({"é": 1}).encode(), "application/json; charset=utf-8")


@pytest.mark.parametrize("tenant", ["contoso", "0b4f-1", "a.b_c", "x" * 128])
def test_good_tenant_ids(tenant):
    assert check_tenant_id(tenant) == tenant


@pytest.mark.parametrize("tenant", ["", "-x", "a/b", "a\\b", "a#b", "a?b", "x" * 129, "é"])
def test_bad_tenant_ids(tenant):
    with pytest.raises(ApiError) as exc:
        check_tenant_id(tenant)
    assert fields_of(exc) == {"tenant_id"}


def test_connection_ids_are_32_hex():
    assert is_connection_id("0" * 32)
    assert not is_connection_id("../" + "0" * 29)
    assert not is_connection_id("A" * 32)


CURRENT = {
    "type": "servicenow",
    "name": "Contoso ITSM",
    "instance_url": "https://contoso.service-now.com",
    "auth": {"method": "api_token", "parameter_name": "x-sn-apikey", "parameter_type": "header"},
    "notify_emails": ["it@contoso.com"],
}


def test_patch_rename_needs_no_proof():
    result = validate_patch(CURRENT, {"name": "New name"}, POLICY)
    assert result.connection.name == "New name"
    assert not result.needs_proof


def test_patch_token_rotation_needs_proof_and_keeps_other_fields():
    result = validate_patch(CURRENT, {"auth": {"api_token": "new"}}, POLICY)
    assert result.needs_proof and not result.method_changed
    assert result.connection.secrets == {"api_token": "new"}
    assert result.connection.auth["parameter_name"] == "x-sn-apikey"


def test_patch_url_change_needs_proof():
    result = validate_patch(CURRENT, {"instance_url": "https://fabrikam.service-now.com"}, POLICY)
    assert result.url_changed and result.needs_proof


def test_patch_method_change_needs_its_secrets():
    with pytest.raises(ApiError) as exc:
        validate_patch(CURRENT, {"auth": {"method": "oauth2", "client_id": "c"}}, POLICY)
    assert fields_of(exc) == {"auth.client_secret"}
    result = validate_patch(
        CURRENT, {"auth": {"method": "oauth2", "client_id": "c", "client_secret": "s"}}, POLICY
    )
    assert result.method_changed
    assert result.connection.auth["method"] == "oauth2"


def test_patch_null_removes_optional_fields_only():
    assert validate_patch(CURRENT, {"notify_emails": None}, POLICY).connection.notify_emails == []
    with pytest.raises(ApiError) as exc:
        validate_patch(CURRENT, {"name": None, "type": "jira", "bogus": 1}, POLICY)
    assert fields_of(exc) == {"name", "type", "bogus"}


def test_patch_field_of_other_method_is_unknown():
    with pytest.raises(ApiError) as exc:
        validate_patch(CURRENT, {"auth": {"client_secret": "s"}}, POLICY)
    assert fields_of(exc) == {"auth.client_secret"}
