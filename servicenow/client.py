"""Talking to a ServiceNow instance: proving credentials and reading what they may access.

Every failure is classified where it arises: `Rejected` when the instance refused the
credentials (definitive), `Unreachable` when it did not answer properly (transient).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from servicenow.outbound import (
    OutboundError,
    OutboundPolicy,
    OutboundResponse,
    safe_request,
)
from servicenow.table_api import json_or_none

log = logging.getLogger(__name__)

PROBE_TABLES = ("incident", "sc_req_item", "change_request")
DEFAULT_TOKEN_LIFETIME = 1799  # ServiceNow's default access token lifespan, when none is said
MAX_TOKEN_LIFETIME = 366 * 24 * 3600  # a longer `expires_in` is taken as this (no overflow)
MAX_RETRY_AFTER = 10.0
_HEADERS = {"Accept": "application/json"}

CLIENT_REJECTED = (
    "ServiceNow refused the OAuth client. Check that: the client secret is current (it may have "
    "been changed in System OAuth > Application Registry); the client credentials grant is "
    "enabled (system property glide.oauth.inbound.client.credential.grant_type.enabled = true); "
    "and the application registry entry has an OAuth Application User set. ServiceNow answers "
    "all of these with the same 'access_denied'."
)
GRANT_REJECTED = "ServiceNow refused the refresh token (expired or revoked)."


class Rejected(Exception):
    """The instance refused the credentials: a definitive answer.

    `stage` is "token" when the token endpoint refused the OAuth client or refresh token, and
    "api" when the Table API refused the API token or access token.
    """

    def __init__(self, message: str, stage: str = "api") -> None:
        super().__init__(message)
        self.message = message
        self.stage = stage


class Unreachable(Exception):
    """The instance did not answer properly: network, 5xx, 429, or not ServiceNow's JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class TokenGrant:
    access_token: str
    expires_in: int
    refresh_token: str | None = None


@dataclass
class Proof:
    detail: str
    capabilities: dict[str, bool] = field(default_factory=dict)
    grant: TokenGrant | None = None


@dataclass
class ApiTokenCredentials:
    token: str
    parameter_name: str
    parameter_type: str


class ServiceNowClient:
    def __init__(
        self,
        policy: OutboundPolicy,
        sleep: Callable[[float], None] = time.sleep,
        retry_pause: float = 1.0,
        max_tries: int = 3,
    ) -> None:
        self._policy = policy
        self._sleep = sleep
        self._retry_pause = retry_pause
        self._max_tries = max_tries

    # -- transport ------------------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> OutboundResponse:
        """Sends once per try; 429 is retried honouring Retry-After, within a bound."""
        for attempt in range(1, self._max_tries + 1):
            response = self._send_once(method, url, **kwargs)
            if response.status_code != 429 or attempt == self._max_tries:
                return response
            self._sleep(_retry_after(response))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send_once(self, method: str, url: str, **kwargs: Any) -> OutboundResponse:
        try:
            return safe_request(method, url, policy=self._policy, **kwargs)
        except OutboundError as exc:  # OutboundBlocked included
            raise Unreachable(exc.message) from None

    # -- OAuth ----------------------------------------------------------------------------

    def client_credentials(self, instance_url: str, client_id: str, secret: str) -> TokenGrant:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        return self._token(instance_url, form, CLIENT_REJECTED)

    def refresh(
        self, instance_url: str, client_id: str, secret: str, refresh_token: str
    ) -> TokenGrant:
        form = {
            "grant_type": "refresh_token",
            "client_id": client_id,
            "client_secret": secret,
            "refresh_token": refresh_token,
        }
        return self._token(instance_url, form, GRANT_REJECTED)

    def _token(self, instance_url: str, form: dict[str, str], rejected: str) -> TokenGrant:
        url = f"{instance_url}/oauth_token.do"
        response = self._send("POST", url, data=form, headers=_HEADERS)
        if response.status_code == 401:
            # Instances are known to answer 401 now and then: one more try before believing it.
            self._sleep(self._retry_pause)
            response = self._send("POST", url, data=form, headers=_HEADERS)
        return _token_grant(response, rejected)

    # -- proofs ---------------------------------------------------------------------------

    def prove_api_token(self, instance_url: str, credentials: ApiTokenCredentials) -> Proof:
        headers, params = dict(_HEADERS), {}
        if credentials.parameter_type == "query":
            params[credentials.parameter_name] = credentials.token
            where = f"query parameter '{credentials.parameter_name}'"
        else:
            headers[credentials.parameter_name] = credentials.token
            where = f"header '{credentials.parameter_name}'"
        rejected = (
            f"ServiceNow did not accept the API token sent in the {where}. Check that the "
            "token is active (System Web Services > API Access Policies > REST API Key), that "
            "an API access policy for the Table API admits API key authentication with this "
            "parameter name and place, and that the token's user is active."
        )
        capabilities = self._probe(instance_url, headers, params, rejected)
        return Proof("Authenticated with the API token.", capabilities)

    def prove_oauth(self, instance_url: str, client_id: str, secret: str) -> Proof:
        grant = self.client_credentials(instance_url, client_id, secret)
        return self.prove_access_token(instance_url, grant)

    def prove_access_token(self, instance_url: str, grant: TokenGrant) -> Proof:
        headers = dict(_HEADERS, Authorization=f"Bearer {grant.access_token}")
        rejected = (
            "ServiceNow issued an access token but refused it on the Table API (User Not "
            "Authenticated). Check that the OAuth Application User is active and that no API "
            "access policy blocks OAuth for the Table API."
        )
        capabilities = self._probe(instance_url, headers, {}, rejected)
        return Proof("Authenticated with an OAuth 2.0 access token.", capabilities, grant)

    def _probe(
        self, instance_url: str, headers: dict[str, str], params: dict[str, str], rejected: str
    ) -> dict[str, bool]:
        """Reads one record of each table the automations need; the first read proves auth."""
        capabilities = {}
        for index, table in enumerate(PROBE_TABLES):
            query = dict(
                params, sysparm_limit="1", sysparm_fields="sys_id", sysparm_no_count="true"
            )
            url = f"{instance_url}/api/now/table/{table}"
            response = self._send("GET", url, headers=headers, params=query)
            capabilities[table] = _table_readable(response, rejected, first=index == 0)
        return capabilities


def _retry_after(response: OutboundResponse) -> float:
    try:
        seconds = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        seconds = 1.0
    return max(0.0, min(seconds, MAX_RETRY_AFTER))


def _not_json(response: OutboundResponse) -> Unreachable:
    content_type = response.headers.get("Content-Type", "")
    if "html" in content_type.lower() or response.content.lstrip()[:1] == b"<":
        return Unreachable(
            "The instance answered with an HTML page instead of ServiceNow's JSON. A developer "
            "instance that is hibernating does that: wake it at developer.servicenow.com, or "
            "check the instance URL."
        )
    return Unreachable("The instance's answer was not JSON; check the instance URL.")


def _general_failure(response: OutboundResponse) -> Unreachable:
    status = response.status_code
    if 300 <= status < 400:
        return Unreachable(
            f"The instance answered with a redirect ({status}), which is never followed. Use the "
            "instance's own https://<name>.service-now.com address."
        )
    if status == 429:
        return Unreachable("The instance is rate limiting requests (429); try again later.")
    if status >= 500:
        return Unreachable(f"The instance answered with a server error ({status}).")
    return Unreachable(f"The instance answered with an unexpected status ({status}).")


def _token_grant(response: OutboundResponse, rejected: str) -> TokenGrant:
    body = json_or_none(response)
    if response.status_code in (400, 401) and isinstance(body, dict) and "error" in body:
        raise Rejected(rejected, stage="token")
    if response.status_code != 200:
        raise _general_failure(response)
    if body is None:
        raise _not_json(response)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise Unreachable("The instance's token answer holds no access token.")
    expires_in = body.get("expires_in")
    text = str(expires_in)
    if not isinstance(expires_in, int | float | str) or not (text.isascii() and text.isdigit()):
        log.warning(
            "token answer without a usable expires_in; assuming %s s", DEFAULT_TOKEN_LIFETIME
        )
        expires_in = DEFAULT_TOKEN_LIFETIME
    refresh_token = body.get("refresh_token")
    refresh_token = refresh_token if isinstance(refresh_token, str) and refresh_token else None
    return TokenGrant(token, min(int(expires_in), MAX_TOKEN_LIFETIME), refresh_token)


def _is_error_envelope(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), dict)


def _table_readable(response: OutboundResponse, rejected: str, *, first: bool) -> bool:
    status = response.status_code
    body = json_or_none(response)
    if status == 401 and first:
        raise Rejected(rejected)
    if status in (400, 401, 403, 404) and _is_error_envelope(body):
        return False  # 400 is "Invalid table": the instance has no such table to read
    if 300 <= status < 400 or status == 429 or status >= 500:
        raise _general_failure(response)
    if body is None:
        raise _not_json(response)
    if status == 200 and isinstance(body, dict) and isinstance(body.get("result"), list):
        return True
    raise Unreachable(
        f"The instance's answer ({status}) does not look like ServiceNow's Table API."
    )
