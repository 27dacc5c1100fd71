"""Property-based fuzzing of every route in the OpenAPI document (schemathesis + hypothesis).

Requests are generated from the document itself, valid ones and invalid ones, and sent through
the local Functions host with the function key, to the real app on Azurite and the stand-ins.
Every answer must be documented for its operation and match its schema, and none may be a 5xx
other than the documented 502 and 503, show a stack trace or hold a secret.

Part of the generated requests are steered at real data: at connections that exist (the fuzz
tenant's, and the same ids under another tenant), and at the ServiceNow stand-in with a valid
or an invalid API token, so the deep paths (proofs, Key Vault, updates) are fuzzed too; and at
real triggers of those connections (with their kept events, and on the push route with their
push secret or a wrong one), with trigger bodies whose query is tried on the stand-in. Host
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
from datetime import UTC, datetime, timedelta
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
from connections.model import format_time
from connections.openapi import openapi_document
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.net_support import FakeDns
from triggers import poller
from triggers.events import Emitted, list_key, seen_key
from triggers.services import trigger_services

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
# Steered trigger bodies: as generated but with a start the service admits, or a valid one.
TRIGGER_BODIES = ["recent start", "valid"]
TRIGGERS = "/tenants/{tenant_id}/connections/{connection_id}/triggers"
CONNECTION_BODIES = {
    "/tenants/{tenant_id}/connections",
    "/tenants/{tenant_id}/connections/{connection_id}",
}
PUSH_SECRET_ANSWERS = {("POST", TRIGGERS), ("POST", TRIGGERS + "/{trigger_id}/push-secret")}
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
    # (connection id, trigger id) of real triggers, their kept events and push secrets
    triggers: list[tuple[str, str]] = []  # noqa: RUF012
    events: dict[str, list[str]] = {}  # noqa: RUF012
    push_secrets: dict[str, str] = {}  # noqa: RUF012
    create_trigger: Any = None  # makes one more trigger of a connection; returns its id

    @classmethod
    def replace(cls, deleted: str) -> None:
        """A fuzzed DELETE removed one: make another, so later cases still find real ones."""
        if deleted in cls.connection_ids:
            cls.connection_ids = [cid for cid in cls.connection_ids if cid != deleted]
            cls.connection_ids.append(cls.create())
            for connection_id, trigger_id in list(cls.triggers):
                if connection_id == deleted:
                    cls.replace_trigger(trigger_id)

    @classmethod
    def replace_trigger(cls, deleted: str) -> None:
        """A fuzzed DELETE removed a trigger (or its connection): make another."""
        if deleted in {trigger_id for _, trigger_id in cls.triggers}:
            cls.triggers = [pair for pair in cls.triggers if pair[1] != deleted]
            cls.triggers.append((cls.connection_ids[0], cls.create_trigger(cls.connection_ids[0])))


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
    at the ServiceNow stand-in, with a valid or an invalid API token; and at real triggers (and
    their events, and their push secret on the push route), with bodies the service admits."""
    parameters = case.path_parameters or {}
    aims = ["as generated"]
    negative_path = case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
    if "tenant_id" in parameters and World.connection_ids and not negative_path:
        aims += ["own", "own"] + (["other tenant"] if "connection_id" in parameters else [])
    if "trigger_id" in parameters and "tenant_id" not in parameters and not negative_path:
        aims += ["real trigger", "real trigger"]
    bodies = ["as generated"]
    positive_body = isinstance(case.body, dict) and not _is_negative(case)
    if positive_body and World.instance_url and case.operation.path in CONNECTION_BODIES:
        bodies += [API_TOKEN, "not-the-token"]
    if positive_body and World.instance_url and case.operation.path.startswith(TRIGGERS):
        bodies += TRIGGER_BODIES
    choices = st.tuples(
        st.sampled_from(aims),
        st.sampled_from(World.connection_ids or [""]),
        st.sampled_from(bodies),
        st.sampled_from(PROXIED_PATHS),
    )
    if "trigger_id" not in parameters:  # the other routes draw as they always have
        return choices.map(lambda choice: _steer(case, *choice))
    at_triggers = st.tuples(
        choices,
        st.sampled_from(World.triggers or [("", "")]),
        st.sampled_from(["as generated", "its secret", "its secret"]),
    )
    return at_triggers.map(lambda choice: _steer(case, *choice[0], *choice[1:]))


def _steer(
    case: Any,
    aim: str,
    connection_id: str,
    token: str,
    proxied: str,
    trigger: tuple[str, str] = ("", ""),
    secret: str = "as generated",
) -> Any:
    if aim != "as generated":
        case.path_parameters = dict(case.path_parameters)
        if aim != "real trigger":
            case.path_parameters["tenant_id"] = TENANT if aim == "own" else OTHER_TENANT
        if "connection_id" in case.path_parameters:
            case.path_parameters["connection_id"] = connection_id
        if "path" in case.path_parameters and proxied != "as generated":
            case.path_parameters["path"] = proxied
        if "trigger_id" in case.path_parameters and trigger[1]:
            _steer_at_trigger(case, trigger, secret)
    if token in ("recent start", "valid"):
        case.body = _trigger_body(case, token)
    elif token != "as generated":
        body = dict(case.body)
        if "instance_url" in body or case.method.upper() == "POST":
            body["instance_url"] = World.instance_url
        auth = body.get("auth")
        if isinstance(auth, dict) and auth.get("method") == "api_token" and "api_token" in auth:
            body["auth"] = {**auth, "api_token": token}
        case.body = body
    return case


def _steer_at_trigger(case: Any, trigger: tuple[str, str], secret: str) -> None:
    connection_id, trigger_id = trigger
    case.path_parameters["trigger_id"] = trigger_id
    if "connection_id" in case.path_parameters:
        case.path_parameters["connection_id"] = connection_id
    if "event_id" in case.path_parameters and World.events.get(trigger_id):
        case.path_parameters["event_id"] = World.events[trigger_id][0]
    if "tenant_id" not in case.path_parameters and secret == "its secret":
        case.headers = {**(case.headers or {}), "X-Trigger-Secret": World.push_secrets[trigger_id]}


def _trigger_body(case: Any, choice: str) -> dict[str, Any]:
    """A body whose query reaches the instance: a generated one with a start the service admits,
    or a valid one."""
    creating = case.method.upper() == "POST"
    if choice == "valid":
        if creating:
            return {"name": "Fuzzed trigger", "table": "incident", "query": "active=true"}
        return {"query": "active=true", "interval_seconds": 120, "enabled": True}
    body = dict(case.body)
    if creating or "start_at" in body:
        body["start_at"] = format_time(datetime.now(UTC) - timedelta(hours=1))
    return body


def _shown_once(case: Any, response: Any, text: str) -> str:
    """The answer as captured: a push secret where the contract shows it (the create and the
    rotation answers) is masked, after it is registered and kept for the push route."""
    if (case.method.upper(), case.operation.path) not in PUSH_SECRET_ANSWERS:
        return text
    if response.status_code not in (200, 201):
        return text
    secret = response.json().get("push_secret")
    if not isinstance(secret, str):
        return text
    leak_guard.register_secret(secret, "fuzzed trigger push secret")
    trigger_id = (case.path_parameters or {}).get("trigger_id")
    if trigger_id in World.push_secrets:
        World.push_secrets[trigger_id] = secret
    return text.replace(secret, "<push secret>")


def not_an_undocumented_failure(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx but 502/503, no stack trace, no secret; every error in the contract's shape."""
    text = response.content.decode("utf-8", "replace") if response.content else ""
    text = _shown_once(case, response, text)
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
        assert not any(tid in text for _, tid in World.triggers), "another tenant's trigger"
    if case.method.upper() == "DELETE" and status == 204 and parameters.get("tenant_id") == TENANT:
        if "trigger_id" in parameters:
            World.replace_trigger(parameters["trigger_id"])
        else:
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

        def create_trigger(connection_id: str) -> str:
            body = {"name": f"Fuzzed {uuid.uuid4().hex[:8]}", "table": "incident"}
            response = session.post(f"{base}/{connection_id}/triggers", json=body, timeout=30)
            assert response.status_code == 201, response.text
            trigger = response.json()
            leak_guard.register_secret(trigger["push_secret"], "fuzz trigger push secret")
            World.push_secrets[trigger["id"]] = trigger["push_secret"]
            World.events[trigger["id"]] = _seed_events(trigger)
            return trigger["id"]

        World.create = staticmethod(create)
        World.create_trigger = staticmethod(create_trigger)
        ids = [create() for _ in range(3)]
        World.instance_url = stack.servicenow.url
        World.connection_ids = ids
        World.triggers = [(cid, create_trigger(cid)) for cid in ids[:2]]
        yield {"base_url": app_host.url + "/api", "session": session}
        session.close()
        print(f"\nfuzzed {sum(SEEN.values())} requests:")
        for line, count in sorted(SEEN.items()):
            print(f"  {count:6d}  {line}")
        World.instance_url, World.connection_ids, World.create = "", [], None
        World.triggers, World.events, World.push_secrets, World.create_trigger = [], {}, {}, None


def _seed_events(trigger: dict[str, Any]) -> list[str]:
    """Two kept events of the trigger, as a poll records them."""
    emitted = []
    for index in range(2):
        moment = datetime.now(UTC) - timedelta(minutes=10 - index)
        sys_id = uuid.uuid4().hex
        event_id = poller.event_id(trigger["id"], sys_id, 0)
        event = {
            "event_id": event_id,
            "change": "created",
            "tenant_id": TENANT,
            "connection_id": trigger["connection_id"],
            "trigger_id": trigger["id"],
            "trigger_name": trigger["name"],
            "table": trigger["table"],
            "sys_id": sys_id,
            "number": f"INC{index:07d}",
            "sys_mod_count": 0,
            "sys_updated_on": format_time(moment),
            "record": {"number": f"INC{index:07d}"},
            "emitted_at": format_time(moment),
        }
        seen = seen_key(poller.sn_time(moment), sys_id, 0)
        emitted.append(Emitted(event, seen, list_key(moment, index, event_id)))
    trigger_services().events.record(trigger["id"], emitted)
    return [item.event["event_id"] for item in emitted]


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
