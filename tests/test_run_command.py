"""The README's run command: everything up within a minute, and nothing left after Ctrl-C."""

import json
import signal
import subprocess

import requests

from localrun.children import die_with_parent
from tests.run_support import FUNCTION_KEY, MASTER_KEY, READY_LINE, RunCommand


def test_run_command_serves_everything_and_stops_cleanly(tmp_path, stack):
    run = RunCommand(tmp_path, stack)
    try:
        banner = run.wait_for_banner()
        assert FUNCTION_KEY in banner and MASTER_KEY in banner
        assert requests.get(f"{run.url}/api/health", timeout=10).status_code == 200
        types_url = f"{run.url}/api/connection-types"
        assert requests.get(types_url, timeout=10).status_code == 401
        key = {"x-functions-key": FUNCTION_KEY}
        assert requests.get(types_url, headers=key, timeout=10).status_code == 200
        quick_start = banner.split("Quick start (copy and paste):", 1)[1].split(READY_LINE)[0]
        ran = subprocess.run(  # noqa: S603 -- the banner's own commands, on loopback
            ["bash", "-euo", "pipefail", "-c", quick_start],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=die_with_parent(),
        )
        assert ran.returncode == 0, ran.stderr
        _assert_quick_start_worked(ran.stdout)
    finally:
        run.process.send_signal(signal.SIGINT)
        assert run.process.wait(timeout=60) == 0
    assert run.leftovers() == []


def _assert_quick_start_worked(output: str) -> None:
    """What the quick start shows: both connections connected, the wrong secret refused, the
    catalog request read and its work note written through the proxy, the calls listed, a
    trigger's event for a new request at the engine's webhook, and the sweep started."""
    documents = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    created = [d for d in documents if d.get("type") == "servicenow"]  # the API token's id is kept
    assert [c["status"] for c in created] == ["connected"]
    listed = next(d for d in documents if d.get("items") and "status" in d["items"][0])
    assert [item["status"] for item in listed["items"]] == ["connected", "connected"]
    assert next(d for d in documents if "error" in d)["error"]["code"] == "credentials_rejected"
    read, written, request = [d["result"] for d in documents if "result" in d]
    assert read[0]["variables.team_name"] == "Marketing"
    assert read[0]["number"].startswith("RITM")
    assert written["sys_mod_count"] == "1" and written["sys_id"] == read[0]["sys_id"]
    calls = next(d for d in documents if d.get("items") and "method" in d["items"][0])
    assert [(c["method"], c["status"]) for c in calls["items"]] == [("PATCH", 200), ("GET", 200)]
    # the trigger: the new request's signed event at the engine, listed, and read by the proxy
    received = next(d for d in documents if "received" in d)["received"]
    assert all(d["signature_valid"] and d["status"] == 204 for d in received)
    (delivery,) = [d for d in received if d["body"]["record"]["variables.team_name"] == "Sales"]
    assert delivery["body"]["change"] == "created"
    # the work note written through the proxy (in the trigger's first second) is one too
    events = next(d for d in documents if d.get("items") and "event_id" in d["items"][0])
    listed = [event["event_id"] for event in events["items"]]
    assert delivery["body"]["event_id"] in listed and len(listed) == len(received)
    assert request["variables.team_name"] == "Sales"
    assert request["number"] == delivery["body"]["number"]
    assert output.rstrip().endswith("202")
