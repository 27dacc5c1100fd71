"""The local host serving the real function_app.py."""

from collections.abc import Iterator

import pytest
import requests

from localrun.host import LocalHost, load_function_app
from localrun.keys import Keys

SETTINGS = {
    "RENEWAL_SCHEDULE": "0 */5 * * * *",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}
KEYS = Keys(function_key="function-key", master_key="master-key")


@pytest.fixture(scope="module")
def host() -> Iterator[LocalHost]:
    local_host = LocalHost(load_function_app(), SETTINGS, KEYS).start(port=0, triggers=False)
    yield local_host
    local_host.stop()


def test_health_is_open(host: LocalHost) -> None:
    assert requests.get(host.url + "/api/health", timeout=10).status_code == 200


def test_connection_types_needs_the_function_key(host: LocalHost) -> None:
    url = host.url + "/api/connection-types"
    assert requests.get(url, timeout=10).status_code == 401
    response = requests.get(url, headers={"x-functions-key": "function-key"}, timeout=10)
    assert response.status_code == 200


def test_admin_call_starts_the_renewal_sweep(host: LocalHost) -> None:
    response = requests.post(
        host.url + "/admin/functions/renewal_sweep",
        json={"input": ""},
        headers={"x-functions-key": "master-key"},
        timeout=10,
    )
    assert response.status_code == 202


def test_every_trigger_is_served(host: LocalHost) -> None:
    assert "renewal_sweep" in host.timers
    assert "send_notice" in host.queues
    assert any(function.name == "health" for function in host.http_functions)
