"""The run command stopped and started again on the same state folder: Azurite keeps the
records and the Key Vault stand-in keeps the secrets, so the connections made before still
work."""

import json
import signal

import requests

from localrun.__main__ import DEMO_CLIENT_ID, DEMO_FILE
from tests.run_support import FUNCTION_KEY, RunCommand

TENANT = "contoso"


def _call(run: RunCommand, method: str, path: str, body: dict | None = None) -> dict:
    response = requests.request(
        method,
        f"{run.url}/api/tenants/{TENANT}{path}",
        json=body,
        headers={"x-functions-key": FUNCTION_KEY},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def _stop(run: RunCommand) -> None:
    try:
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=30) == 0, run.text()
    finally:
        run.kill()
    assert run.wait_until_nothing_left() == []


def test_connections_made_before_a_restart_still_work_after_it(tmp_path, stack):
    first = RunCommand(tmp_path, stack)
    try:
        first.wait_for_banner()
        demo = json.loads((tmp_path / DEMO_FILE).read_text())
        auths = [
            {"method": "api_token", "api_token": demo["api_token"]},
            {
                "method": "oauth2",
                "client_id": DEMO_CLIENT_ID,
                "client_secret": demo["client_secret"],
            },
        ]
        created = [
            _call(
                first,
                "POST",
                "/connections",
                {
                    "type": "servicenow",
                    "name": f"Before the restart {auth['method']}",
                    "instance_url": first.servicenow_url,
                    "auth": auth,
                },
            )["id"]
            for auth in auths
        ]
    finally:
        _stop(first)

    second = RunCommand(tmp_path, stack, ports=(first.port, first.servicenow_port))
    try:
        second.wait_for_banner()
        for connection_id in created:
            checked = _call(second, "POST", f"/connections/{connection_id}/check")
            assert checked["status"] == "connected", checked["status_detail"]
            read = _call(
                second,
                "GET",
                f"/connections/{connection_id}/servicenow/api/now/table/incident?sysparm_limit=1",
            )
            assert "result" in read
    finally:
        _stop(second)
    assert (tmp_path / "keyvault").stat().st_mode & 0o777 == 0o700, "the owner's only"
