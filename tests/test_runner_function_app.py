"""The local host serving the real function_app.py."""

import pytest
import requests

from localrun.host import LocalHost


@pytest.fixture
def host(app_host: LocalHost) -> LocalHost:
    """The real app, wired to Azurite and the stand-ins (conftest's `app_host`)."""
    return app_host


def test_health_is_open(host: LocalHost) -> None:
    assert requests.get(host.url + "/api/health", timeout=10).status_code == 200


def test_connection_types_needs_the_function_key(host: LocalHost) -> None:
    url = host.url + "/api/connection-types"
    assert requests.get(url, timeout=10).status_code == 401
    response = requests.get(url, headers={"x-functions-key": host.keys.function_key}, timeout=10)
    assert response.status_code == 200


def test_admin_call_starts_the_renewal_sweep(host: LocalHost) -> None:
    response = requests.post(
        host.url + "/admin/functions/renewal_sweep",
        json={"input": ""},
        headers={"x-functions-key": host.keys.master_key},
        timeout=10,
    )
    assert response.status_code == 202
    host.wait_for_admin_runs()


def test_every_trigger_is_served(host: LocalHost) -> None:
    assert "renewal_sweep" in host.timers
    assert "send_notice" in host.queues
    assert any(function.name == "health" for function in host.http_functions)
