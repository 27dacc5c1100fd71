"""Property-based fuzzing of every route in the OpenAPI document (schemathesis + hypothesis).

Requests are generated from the document itself, valid ones and invalid ones, and sent through
the local Functions host with the function key, to the real app on Azurite and the stand-ins.
Every answer must be documented for its operation and match its schema, and none may be a 5xx
other than the documented 502 and 503, show a stack trace or hold a secret.

Part of the generated requests are steered at real data: at connections that exist (the fuzz
tenant's, and the same ids under another tenant), and at the ServiceNow stand-in with a valid
or an invalid API token, so the deep paths (proofs, Key Vault, updates) are fuzzed too. Host
names other than loopback never leave the process: the fake DNS refuses them.

The number of examples per operation is FUZZ_EXAMPLES (default 60, about 1,000 requests);
for a longer run: `FUZZ_EXAMPLES=1000 FUZZ_RANDOM=1 .venv/bin/python -m pytest -q
tests/test_fuzz_openapi.py` (FUZZ_RANDOM=1 draws new cases each run instead of the fixed ones).
"""

import itertools
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi import checks as openapi_checks

from connections import services as services_module
from connections.openapi import openapi_document
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.net_support import FakeDns

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES") or 60)
FUZZ_RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
TENANT = "fuzz-" + uuid.uuid4().hex[:8]
OTHER_TENANT = "fuzz-other-" + uuid.uuid4().hex[:8]
API_TOKEN = "fuzz-api-token-" + uuid.uuid4().hex
CLIENT_ID = "fuzz-client"
CLIENT_SECRET = "fuzz-client-secret-" + uuid.uuid4().hex
DOCUMENTED_5XX = {502, 503, 504}
# Where steered proxy cases go: real tables of the stand-in, and paths the proxy must refuse.
PROXIED_PATHS = [
    "as generated",
    "api/now/table/incident",
    "api/now/v2/table/sc_req_item",
    "api/now/table/no_such_table",
    "api/now/attachmentX",
    "api/now/table/../../oauth_token.do",
]
STACK_TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+")

schema = schemathesis.openapi.from_dict(openapi_document())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=FUZZ_EXAMPLES,
    deterministic=not FUZZ_RANDOM,
    # Unknown query parameters are ignored, as HTTP APIs (and the Functions host, with ?code=) do.
    allow_extra_parameters=False,
)


SEEN: Counter = Counter()  # "METHOD path -> status": how often; printed at the end (-s)


class World:
    """What the steering hooks aim at; filled by the `world` fixture before any case is drawn."""

    instance_url = ""
    connection_ids: list[str] = []  # noqa: RUF012 -- filled once per module
    create: Any = None  # makes one more connection of the fuzz tenant; returns its id

    @classmethod
    def replace(cls, deleted: str) -> None:
        """A fuzzed DELETE removed one: make another, so later cases still find real ones."""
        if deleted in cls.connection_ids:
            cls.connection_ids = [cid for cid in cls.connection_ids if cid != deleted]
            cls.connection_ids.append(cls.create())


def _is_negative(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    generation = getattr(meta, "generation", None)
    return getattr(generation, "mode", None) == GenerationMode.NEGATIVE


@schema.hook
def filter_path_parameters(context: Any, path_parameters: dict[str, Any]) -> bool:
    """Values that change which route the URL names (a "/" or a dot segment) are left out: the
    host answers those with a bare 404 before any app code runs (tests/test_hostile_input.py
    covers them)."""
    for value in (path_parameters or {}).values():
        text = str(value)
        if not text or "/" in text or text in (".", "..") or "%2f" in text.lower():
            return False
    return True


@schema.hook
def flatmap_case(context: Any, case: Any) -> st.SearchStrategy:
    """Steers some cases at real connections (of the fuzz tenant, or under another tenant) and
    at the ServiceNow stand-in, with a valid or an invalid API token."""
    parameters = case.path_parameters or {}
    aims = ["as generated"]
    negative_path = case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
    if "tenant_id" in parameters and World.connection_ids and not negative_path:
        aims += ["own", "own"] + (["other tenant"] if "connection_id" in parameters else [])
    bodies = ["as generated"]
    if isinstance(case.body, dict) and not _is_negative(case) and World.instance_url:
        bodies += [API_TOKEN, "not-the-token"]
    choices = st.tuples(
        st.sampled_from(aims),
        st.sampled_from(World.connection_ids or [""]),
        st.sampled_from(bodies),
        st.sampled_from(PROXIED_PATHS),
    )
    return choices.map(lambda choice: _steer(case, *choice))


def _steer(case: Any, aim: str, connection_id: str, token: str, proxied: str) -> Any:
    if aim != "as generated":
        case.path_parameters = dict(case.path_parameters)
        case.path_parameters["tenant_id"] = TENANT if aim == "own" else OTHER_TENANT
        if "connection_id" in case.path_parameters:
            case.path_parameters["connection_id"] = connection_id
        if "path" in case.path_parameters and proxied != "as generated":
            case.path_parameters["path"] = proxied
    if token != "as generated":
        body = dict(case.body)
        if "instance_url" in body or case.method.upper() == "POST":
            body["instance_url"] = World.instance_url
        auth = body.get("auth")
        if isinstance(auth, dict) and auth.get("method") == "api_token" and "api_token" in auth:
            body["auth"] = {**auth, "api_token": token}
        case.body = body
    return case


def not_an_undocumented_failure(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx but 502/503, no stack trace, no secret; every error in the contract's shape."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    SEEN[f"{case.method} {case.operation.path} -> {response.status_code}"] += 1
    leak_guard.capture(f"fuzz {case.method} {case.path}", f"{dict(response.headers)}\n{text}")
    status = response.status_code
    if status >= 500 and status not in DOCUMENTED_5XX:
        sent = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r}"
        raise AssertionError(f"undocumented server error {status} for {sent[:2000]}")
    parameters = case.path_parameters or {}
    if parameters.get("tenant_id") == OTHER_TENANT:
        assert not 200 <= status < 300, f"another tenant's connection answered {status}"
        assert not any(cid in text for cid in World.connection_ids), "another tenant's data"
    if case.method.upper() == "DELETE" and status == 204 and parameters.get("tenant_id") == TENANT:
        World.replace(parameters["connection_id"])
    if STACK_TRACE.search(text):
        raise AssertionError(f"a stack trace in the answer: {text[:300]}")
    leaks = leak_guard.find_leaks(text + str(dict(response.headers)), leak_guard.known_secrets())
    if leaks:
        raise AssertionError(f"a secret in the answer: {leaks}")
    relayed = "servicenow" in str(
        {name.lower(): value for name, value in response.headers.items()}.get("x-relayed-from")
    )
    if not relayed and (
        (status >= 400 and status not in (401, 404, 405)) or (status == 404 and text)
    ):
        error = response.json().get("error")
        assert set(error) == {"code", "message", "details"}, error
    return True


def negative_data_rejection(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' check, except that a failed `If-Match` may answer 412 before the body is
    read: preconditions are evaluated before the content is processed (RFC 9110, 13.2.1)."""
    if response.status_code == 412 and (case.headers or {}).get("If-Match"):
        return None
    return openapi_checks.negative_data_rejection(ctx, response, case)


CHECKS = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    negative_data_rejection,
    openapi_checks.missing_required_header,
    openapi_checks.unsupported_method,
    openapi_checks.ignored_auth,
]


@pytest.fixture(scope="module")
def world(app_host, stack) -> Iterator[dict[str, Any]]:
    """A tenant with real connections, the stand-in set up, and no DNS but loopback."""
    state = stack.servicenow.state
    state.reset()
    state.add_api_key(API_TOKEN, name="fuzz-key")
    state.add_client(CLIENT_ID, CLIENT_SECRET)
    leak_guard.register_secret(API_TOKEN, "fuzz API token")
    leak_guard.register_secret(CLIENT_SECRET, "fuzz client secret")
    services = services_module.services()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            services, "servicenow", ServiceNowClient(services.policy, sleep=lambda s: None)
        )
        patch.setattr(socket, "getaddrinfo", FakeDns())
        session = requests.Session()
        session.headers["x-functions-key"] = app_host.keys.function_key
        base = app_host.url + "/api/tenants/" + TENANT + "/connections"
        methods = itertools.cycle(
            [
                {"method": "api_token", "api_token": API_TOKEN},
                {"method": "oauth2", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            ]
        )

        def create() -> str:
            body = {
                "type": "servicenow",
                "name": f"Fuzzed {uuid.uuid4().hex[:8]}",
                "instance_url": stack.servicenow.url,
                "auth": next(methods),
            }
            response = session.post(base, json=body, timeout=30)
            assert response.status_code == 201, response.text
            return response.json()["id"]

        World.create = staticmethod(create)
        ids = [create() for _ in range(3)]
        World.instance_url = stack.servicenow.url
        World.connection_ids = ids
        yield {"base_url": app_host.url + "/api", "session": session}
        session.close()
        print(f"\nfuzzed {sum(SEEN.values())} requests:")
        for line, count in sorted(SEEN.items()):
            print(f"  {count:6d}  {line}")
        World.instance_url, World.connection_ids, World.create = "", [], None


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=not FUZZ_RANDOM,
)
def test_every_route_answers_within_the_contract(case, world):
    case.call_and_validate(
        base_url=world["base_url"],
        session=world["session"],
        checks=CHECKS,
        additional_checks=[not_an_undocumented_failure],
        timeout=30,
    )
