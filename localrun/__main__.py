"""The run command: Azurite, the stand-ins and the function app, until Ctrl-C.

Run it through `scripts/run-local`, which installs what it needs first.

Ctrl-C, SIGTERM or SIGHUP stop everything within `STOP_SECONDS`: the host takes nothing new and
tells the app to shut down (SIGTERM, as the Functions host tells its worker), the invocations in
flight get `GRACE_SECONDS` to end, then the stand-ins and Azurite stop. Killed outright, the run
command leaves nothing behind either: Azurite dies with it, and the next start stops any Azurite
an earlier run left serving the state folder.
"""

import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

from localrun.azurite import clear_leftover, free_ports
from localrun.host import STATE_DIR, LocalHost, serve
from localrun.keys import stored_values
from localrun.settings import PROJECT_ROOT
from localrun.stack import AZURITE_FOLDER, LocalStack

log = logging.getLogger("localrun")

AZURITE_PORTS = (10000, 10001, 10002)
SERVICENOW_PORT_SETTING = "LOCAL_SERVICENOW_PORT"
STATE_DIR_SETTING = "LOCAL_STATE_DIR"
DEFAULT_SERVICENOW_PORT = 8081
DEMO_CLIENT_ID = "automate365-demo"
DEMO_FILE = "demo-credentials.json"
DEMO_TENANT = "contoso"
DEMO_QUERY = "variables.team_name=Marketing"
DEMO_CATALOG_ITEM = "0c4fa3e1db2f4410a8e5d1f3f39619a1"  # the stand-in's "New Microsoft Team"
STOP_SECONDS = 8.0  # from Ctrl-C to everything stopped
GRACE_SECONDS = 5.0  # of those, for the invocations in flight to end


def _free_or_default(ports: tuple[int, ...]) -> tuple[int, ...]:
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                logging.warning("port %s is busy; using free ports for Azurite", port)
                return tuple(free_ports(len(ports)))
    return ports


def _seed_demo(stack: LocalStack) -> dict[str, str]:
    """A demo OAuth client and API key in the ServiceNow stand-in, for the quick start; the same
    from one start to the next (kept in the state folder), as the connections made with them
    and their secrets in the Key Vault stand-in are."""
    generate = {
        "client_secret": lambda: secrets.token_urlsafe(18),
        "api_token": lambda: "demo-" + secrets.token_urlsafe(18),
    }
    demo = stored_values(stack.state_dir / DEMO_FILE, generate)
    stack.servicenow.state.add_client(DEMO_CLIENT_ID, demo["client_secret"])
    stack.servicenow.state.add_api_key(demo["api_token"], name="demo")
    return demo


def _curl(host: LocalHost, method: str, path: str, body: dict | None = None) -> str:
    parts = [f"curl -s -w '\\n' -X {method} -H 'x-functions-key: {host.keys.function_key}'"]
    if body is not None:
        parts.append("-H 'Content-Type: application/json' -d '" + json.dumps(body) + "'")
    parts.append(f'"{host.url}{path}"')
    return " \\\n    ".join(parts)


def _keep(variable: str, command: str, field: str) -> str:
    """`VARIABLE=$(command | take field)`, then shows it: a value later steps use."""
    take = f"python3 -c 'import json, sys; print(json.load(sys.stdin){field})'"
    return f"{variable}=$({command} \\\n    | {take}); echo ${variable}"


def _trigger_steps(host: LocalHost, stack: LocalStack) -> list[tuple[str, str]]:
    """A trigger turns each new catalog request for a team into a signed event for the engine."""
    triggers = f"/api/tenants/{DEMO_TENANT}/connections/$CONN/triggers"
    trigger = {
        "name": "New Teams requests",
        "table": "sc_req_item",
        "query": f"cat_item={DEMO_CATALOG_ITEM}^active=true",
        "fields": ["number", "short_description", "requested_for", "variables.team_name"],
        "interval_seconds": 30,
    }
    request = {
        "fields": {
            "cat_item": DEMO_CATALOG_ITEM,
            "active": "true",
            "short_description": "New team for Sales",
            "variables": {"team_name": "Sales"},
        }
    }
    instance = stack.servicenow.url
    received = f"{stack.event_webhook.url}/_control/received"
    wait = (
        f'for i in $(seq 60); do curl -s {received} | grep -q "$REQ" && break; sleep 0.5; '
        f"done; \\\n    curl -s -w '\\n' {received}"
    )
    return [
        (
            "A trigger: every new catalog request for a team becomes an event for the engine "
            "(the query is tried on the instance first; the push secret is shown only here)",
            _keep("TRIG", _curl(host, "POST", triggers, trigger), '["id"]'),
        ),
        (
            "Someone asks for a new team in ServiceNow (the stand-in's control API plays them)",
            _keep(
                "REQ",
                f"curl -s -X POST -H 'Content-Type: application/json' -d '{json.dumps(request)}' "
                f"{instance}/_control/tables/sc_req_item/records",
                '["sys_ids"][0]',
            ),
        ),
        (
            "Poll now (the timer polls every 30 s anyway; ServiceNow can also push a hint)",
            _curl(host, "POST", f"{triggers}/$TRIG/poll"),
        ),
        ("The signed event arrives at the engine's webhook (waits up to 30 s)", wait),
        ("The trigger's events, oldest first", _curl(host, "GET", f"{triggers}/$TRIG/events")),
        (
            "The automation the event starts reads the request through the proxy",
            _curl(
                host,
                "GET",
                f"/api/tenants/{DEMO_TENANT}/connections/$CONN/servicenow/api/now/table/"
                "sc_req_item/$REQ?sysparm_fields=number,short_description,variables.team_name",
            ),
        ),
    ]


def _demo_request(stack: LocalStack) -> str:
    """The sys_id of the stand-in's catalog request for a new Marketing team."""
    found = stack.servicenow.state.list_records("sc_req_item", DEMO_QUERY, limit=1)
    return found["records"][0]["sys_id"]


def _proxy_steps(host: LocalHost, stack: LocalStack) -> list[tuple[str, str]]:
    """An automation reads the request that started a workspace and writes the result back."""
    proxy = f"/api/tenants/{DEMO_TENANT}/connections/$CONN/servicenow"
    fields = "sys_id,number,short_description,requested_for,variables.team_name"
    query = f"sysparm_query={urllib.parse.quote(DEMO_QUERY)}&sysparm_fields={fields}"
    item = f"{proxy}/api/now/table/sc_req_item/{_demo_request(stack)}"
    note = {"work_notes": "Microsoft 365 team created: Marketing"}
    return [
        (
            "An automation reads the catalog request through the connection (the proxy adds "
            "the API token; the automation never sees it)",
            _curl(host, "GET", f"{proxy}/api/now/table/sc_req_item?{query}"),
        ),
        ("...and writes a work note back on it", _curl(host, "PATCH", item, note)),
        (
            "Every call made through the connection, newest first",
            _curl(host, "GET", f"/api/tenants/{DEMO_TENANT}/connections/$CONN/calls"),
        ),
    ]


def _quick_start(host: LocalHost, stack: LocalStack, demo: dict[str, str]) -> str:
    base = f"/api/tenants/{DEMO_TENANT}/connections"
    instance = stack.servicenow.url
    api_token = {
        "type": "servicenow",
        "name": "Contoso ITSM (API token)",
        "instance_url": instance,
        "auth": {"method": "api_token", "api_token": demo["api_token"]},
        "notify_emails": ["it-admins@contoso.example"],
    }
    oauth = {
        "type": "servicenow",
        "name": "Contoso ITSM (OAuth 2.0)",
        "instance_url": instance,
        "auth": {
            "method": "oauth2",
            "client_id": DEMO_CLIENT_ID,
            "client_secret": demo["client_secret"],
        },
    }
    wrong = dict(oauth, name="Wrong secret")
    wrong["auth"] = dict(oauth["auth"], client_secret="not-the-secret")
    admin = (
        f"curl -s -X POST -H 'x-functions-key: {host.keys.master_key}' "
        f"-H 'Content-Type: application/json' -d '{{\"input\": \"\"}}' "
        f"{host.url}/admin/functions/renewal_sweep -w '%{{http_code}}\\n'"
    )
    steps = [
        ("Liveness (no key needed)", f"curl -s -w '\\n' {host.url}/api/health"),
        (
            "The connection types the 'Create connection +' pop-up is drawn from",
            _curl(host, "GET", "/api/connection-types"),
        ),
        (
            "Create an API-token connection to the bundled ServiceNow stand-in; keep its id",
            _keep("CONN", _curl(host, "POST", base, api_token), '["id"]'),
        ),
        ("Create an OAuth 2.0 connection", _curl(host, "POST", base, oauth)),
        ("List them: both 'connected'", _curl(host, "GET", base)),
        (
            "A wrong client secret: 422 credentials_rejected, saying what to check",
            _curl(host, "POST", base, wrong),
        ),
        *_proxy_steps(host, stack),
        *_trigger_steps(host, stack),
        ("Run the renewal sweep now (master key; answers 202)", admin),
    ]
    return "\n\n".join(f"# {title}\n{command}" for title, command in steps)


def _banner(host: LocalHost, stack: LocalStack, demo: dict[str, str]) -> str:
    lines = [
        "",
        "Automate365 Connections service is running.",
        "",
        f"  Function app       {host.url}  (OpenAPI: {host.url}/api/openapi.json)",
        f"  Function key       {host.keys.function_key}",
        f"  Master key         {host.keys.master_key}",
        f"  ServiceNow         {stack.servicenow.url}  (control API: /_control/...)",
        f"  Key Vault          {stack.keyvault.url}",
        f"  Notice webhook     {stack.webhook.url}  (received: /_control/received)",
        f"  Event webhook      {stack.event_webhook.url}  (received: /_control/received)",
        f"  Microsoft Graph    {stack.graph.url}  (mails: /_control/mails)",
        f"  Azurite            {stack.azurite.host}  (blob {stack.azurite.blob_port}, "
        f"queue {stack.azurite.queue_port}, table {stack.azurite.table_port})",
        "",
        "Functions:",
        *[f"  {line}" for line in host.describe()],
        "",
        "Quick start (copy and paste):",
        "",
        _quick_start(host, stack, demo),
        "",
        "Press Ctrl-C to stop everything.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    stop = threading.Event()
    # Before the app is imported: the SIGTERM handler the app installs chains this one.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    servicenow_port = int(os.environ.get(SERVICENOW_PORT_SETTING) or DEFAULT_SERVICENOW_PORT)
    state_dir = os.environ.get(STATE_DIR_SETTING) or str(PROJECT_ROOT / STATE_DIR)
    clear_leftover(Path(state_dir) / AZURITE_FOLDER)  # before its ports are judged busy
    stack = LocalStack(
        Path(state_dir),
        azurite_ports=_free_or_default(AZURITE_PORTS),
        servicenow_port=_free_or_default((servicenow_port,))[0],
    )
    host = None
    try:
        stack.start()
        demo = _seed_demo(stack)
        stack.apply_process_environment()
        host = serve(PROJECT_ROOT, defaults=stack.settings())
        print(_banner(host, stack, demo), flush=True)
        stop.wait()
        print("\nStopping...", flush=True)
    finally:
        deadline = time.monotonic() + STOP_SECONDS
        unfinished = host.stop(GRACE_SECONDS) if host is not None else []
        stack.stop(max(1.0, deadline - time.monotonic()))
        if unfinished:
            _end_now(unfinished)
    return 0


def _end_now(unfinished: list[str]) -> None:
    """Ends the process while invocations are still running, as the Functions host ends its
    worker once the grace period is over (the interpreter's exit would wait for them)."""
    log.warning("still running when the grace period ended, ended: %s", ", ".join(unfinished))
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
