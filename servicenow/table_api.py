"""Reading a ServiceNow table with a connection's credential: the request the trigger polls and
the trigger query try send, and what an instance's answer says."""

from collections.abc import Callable, Mapping
from typing import Any

from servicenow.credentials import Credential
from servicenow.instance_url import OutboundPolicy
from servicenow.outbound import OutboundResponse, safe_request

DEFAULT_TIMEOUT = (5.0, 30.0)


def table_reader(
    policy: OutboundPolicy,
    instance_url: str,
    table: str,
    params: Mapping[str, str],
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
) -> Callable[[Credential], OutboundResponse]:
    """`GET <instance>/api/now/table/<table>?<params>` for `renewal.on_demand.call_with`: the
    credential goes in as a header or a query parameter, added last."""
    url = f"{instance_url}/api/now/table/{table}"

    def send(credential: Credential) -> OutboundResponse:
        query = dict(params)
        if credential.query:
            query[credential.query[0]] = credential.query[1]
        headers = {"Accept": "application/json", **credential.headers}
        return safe_request(
            "GET", url, policy=policy, headers=headers, params=query, timeout=timeout
        )

    return send


def json_or_none(response: OutboundResponse) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        return None


def error_text(body: Any) -> str:
    """`message: detail` of ServiceNow's error envelope (bounded), or "" when there is none."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return ""
    parts = [str(error.get(key)) for key in ("message", "detail") if error.get(key)]
    return ": ".join(parts)[:500]
