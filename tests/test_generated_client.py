"""The client the BindTuning App's developers generate from the served OpenAPI document.

openapi-python-client (requirements-dev.txt) generates a typed client from
`GET /api/openapi.json`, as they would; any line of its output but "Generating ..." (each
warning is one) fails. The generated client, imported from a temporary folder, then reads the
catalogue and creates, lists, reads, updates and deletes a connection through the local host,
Azurite and the stand-ins: every answer parses into its generated model, and is also checked
against the document.
"""

import importlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests

from connections import services as services_module
from servicenow.client import ServiceNowClient
from tests import leak_guard
from tests.api_client import _template
from tests.openapi_check import assert_matches_openapi

GENERATOR = Path(sys.executable).parent / "openapi-python-client"  # beside the venv's python
PACKAGE = "automate365_connections_client"
API_TOKEN = "generated-client-token-" + uuid.uuid4().hex


class Generated:
    """The generated package, the document it came from and what the generator printed."""

    def __init__(self, package: ModuleType, document: dict[str, Any], output: str) -> None:
        self.package = package
        self.document = document
        self.output = output

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.{name}")

    @property
    def models(self) -> ModuleType:
        return self.module("models")


def generate(document: Path, output: Path) -> subprocess.CompletedProcess[str]:
    """Runs the generator; its formatting step calls `ruff`, found beside it."""
    path = f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    command = [GENERATOR, "generate", "--path", document, "--output-path", output, "--meta", "none"]
    return subprocess.run(  # noqa: S603 -- the venv's own generator, fixed arguments
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path},
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def generated(app_host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    served = requests.get(f"{app_host.url}/api/openapi.json", timeout=30, headers=_key(app_host))
    assert served.status_code == 200, served.text
    folder = tmp_path_factory.mktemp("generated")
    (folder / "openapi.json").write_bytes(served.content)
    result = generate(folder / "openapi.json", folder / PACKAGE)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    sys.path.insert(0, str(folder))
    try:
        yield Generated(importlib.import_module(PACKAGE), served.json(), output)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _key(app_host) -> dict[str, str]:
    return {"x-functions-key": app_host.keys.function_key}


def _checked(response: httpx.Response) -> None:
    """Each answer the generated client gets: scanned for secrets, checked against the document."""
    response.read()
    leak_guard.capture(f"generated client {response.status_code}", response.text)
    request = response.request
    body = response.json() if response.content else None
    path = _template(request.url.path)
    assert_matches_openapi(request.method, path, response.status_code, body, response.headers)


@pytest.fixture
def client(generated: Generated, app_host, stack) -> Iterator[Any]:
    stack.servicenow.state.reset()
    stack.servicenow.state.add_api_key(API_TOKEN, name="generated-client-key")
    leak_guard.register_secret(API_TOKEN, "generated client API token")
    with pytest.MonkeyPatch.context() as patch:
        services = services_module.services()
        no_wait = ServiceNowClient(services.policy, sleep=lambda seconds: None)
        patch.setattr(services, "servicenow", no_wait)
        authenticated = generated.package.AuthenticatedClient(
            base_url=f"{app_host.url}/api",
            token=app_host.keys.function_key,
            prefix="",
            auth_header_name="x-functions-key",
            httpx_args={"event_hooks": {"response": [_checked]}},
        )
        with authenticated as open_client:
            yield open_client


def _snake(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


def test_the_served_document_generates_a_client_without_a_warning(generated: Generated):
    lines = [line for line in generated.output.splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("Generating ")] == [], generated.output
    assert "warning" not in generated.output.lower()


def test_every_operation_and_schema_is_in_the_generated_client(generated: Generated):
    for item in generated.document["paths"].values():
        for operation in (value for value in item.values() if isinstance(value, dict)):
            if "operationId" in operation:
                tag, name = operation["tags"][0], _snake(operation["operationId"])
                assert hasattr(generated.module(f"api.{tag}.{name}"), "sync_detailed"), name
    for name, schema in generated.document["components"]["schemas"].items():
        if schema.get("type") == "object" or "enum" in schema:
            assert hasattr(generated.models, name), f"no model for {name}"


def test_the_catalogue_is_typed(generated: Generated, client):
    models = generated.models
    catalogue = generated.module("api.connections.list_connection_types").sync(client=client)
    assert isinstance(catalogue, models.ConnectionTypes)
    servicenow = catalogue.items[0]
    assert isinstance(servicenow, models.ConnectionType)
    methods = {method.method: method for method in servicenow.auth_methods}
    assert set(methods) == {models.AuthMethodName.API_TOKEN, models.AuthMethodName.OAUTH2}
    fields = {field.name: field for field in methods[models.AuthMethodName.API_TOKEN].fields}
    assert fields["parameter_type"].allowed_values == ["header", "query"]
    assert fields["parameter_name"].default == "x-sn-apikey"
    assert fields["expires_at"].type_ is models.CatalogueFieldType.DATE_TIME
    assert {field.name: field.default for field in servicenow.fields}["notify_emails"] == []


def test_the_generated_client_creates_lists_reads_updates_and_deletes_a_connection(
    generated: Generated, client, stack
):
    models, tenant = generated.models, "gen" + uuid.uuid4().hex[:12]
    api = {
        name: generated.module(f"api.connections.{name}")
        for name in (
            "create_connection",
            "list_connections",
            "get_connection",
            "update_connection",
            "delete_connection",
        )
    }
    body = models.CreateConnection(
        type_="servicenow",
        name="Contoso ITSM",
        instance_url=stack.servicenow.url,
        auth=models.ApiTokenAuth(method="api_token", api_token=API_TOKEN),
        notify_emails=["it-admins@contoso.example"],
    )

    created = api["create_connection"].sync_detailed(tenant, client=client, body=body)
    assert created.status_code == HTTPStatus.CREATED, created.content
    connection = created.parsed
    assert isinstance(connection, models.Connection)
    assert connection.status is models.ConnectionStatus.CONNECTED
    assert isinstance(connection.auth, models.ApiTokenAuthPublic)
    assert connection.auth.parameter_type is models.ParameterType.HEADER
    assert connection.auth.expires_at is None
    assert isinstance(connection.created_at, datetime)
    assert connection.capabilities.additional_properties["incident"] is True
    assert created.headers["Location"].endswith(f"/connections/{connection.id}")

    listed = api["list_connections"].sync(tenant, client=client)
    assert isinstance(listed, models.ConnectionList)
    assert [item.id for item in listed.items] == [connection.id]
    assert listed.next_ is None

    read = api["get_connection"].sync_detailed(tenant, connection.id, client=client)
    assert read.status_code == HTTPStatus.OK
    assert read.parsed.to_dict() == connection.to_dict()

    patch = models.ConnectionPatch(name="Contoso ITSM (production)", notify_emails=None)
    updated = api["update_connection"].sync(
        tenant, connection.id, client=client, body=patch, if_match=read.headers["ETag"]
    )
    assert isinstance(updated, models.Connection)
    assert (updated.name, updated.notify_emails) == ("Contoso ITSM (production)", [])
    assert isinstance(updated.auth, models.ApiTokenAuthPublic)

    deleted = api["delete_connection"].sync_detailed(tenant, connection.id, client=client)
    assert deleted.status_code == HTTPStatus.NO_CONTENT

    gone = api["get_connection"].sync(tenant, connection.id, client=client)
    assert isinstance(gone, models.Error)
    assert gone.error.code is models.ErrorCode.NOT_FOUND
    assert api["list_connections"].sync(tenant, client=client).items == []


def test_a_rejected_token_is_a_typed_error(generated: Generated, client, stack):
    models = generated.models
    body = models.CreateConnection(
        type_="servicenow",
        name="Contoso ITSM",
        instance_url=stack.servicenow.url,
        auth=models.ApiTokenAuth(
            method="api_token",
            api_token="not-" + API_TOKEN,
            parameter_type=models.ParameterType.QUERY,
        ),
    )
    tenant = "gen" + uuid.uuid4().hex[:12]
    answer = generated.module("api.connections.create_connection").sync_detailed(
        tenant, client=client, body=body
    )
    assert answer.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert isinstance(answer.parsed, models.Error)
    assert answer.parsed.error.code is models.ErrorCode.CREDENTIALS_REJECTED
    assert [detail.field for detail in answer.parsed.error.details] == ["auth.api_token"]
