"""The connection types the "Create connection +" pop-up is drawn from."""

from typing import Any

DEFAULT_PARAMETER_NAME = "x-sn-apikey"
PARAMETER_TYPES = ("header", "query")
MAX_NOTIFY_EMAILS = 20


def _field(
    name: str,
    label: str,
    description: str,
    *,
    type_: str = "string",
    required: bool = True,
    secret: bool = False,
    default: Any = None,
    allowed_values: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": type_,
        "required": required,
        "secret": secret,
        "default": default,
        "allowed_values": allowed_values,
    }


_COMMON_FIELDS = [
    _field("name", "Connection Name", "A label to identify your connection."),
    _field(
        "instance_url",
        "Instance URL",
        "Your ServiceNow instance, e.g. https://contoso.service-now.com "
        "(or https://contoso.servicenowservices.com, or your custom domain).",
    ),
    _field(
        "notify_emails",
        "Notification e-mails",
        f"Who is told when the connection stops working (at most {MAX_NOTIFY_EMAILS} addresses).",
        type_="array",
        required=False,
        default=[],
    ),
]

_API_TOKEN_FIELDS = [
    _field(
        "api_token",
        "API Token",
        "Token generated from your ServiceNow instance (System Web Services > API Access "
        "Policies > REST API Key). It is not refreshed automatically: edit the connection with a "
        "new token before it expires.",
        secret=True,
    ),
    _field(
        "parameter_name",
        "Parameter Name",
        "The name of the parameter used to pass the token.",
        required=False,
        default=DEFAULT_PARAMETER_NAME,
    ),
    _field(
        "parameter_type",
        "Parameter Type",
        "Whether the token is sent in a request header or as a query parameter.",
        required=False,
        default="header",
        allowed_values=list(PARAMETER_TYPES),
    ),
    _field(
        "expires_at",
        "Token expiry",
        "When the token expires in your instance (ISO 8601). You are reminded before it, and the "
        "connection shows as expired after it.",
        type_="date-time",
        required=False,
    ),
]

_OAUTH2_FIELDS = [
    _field(
        "client_id",
        "Client ID",
        "Identifies the application (Automate365) to ServiceNow: the Client ID of the OAuth "
        "API endpoint registered in System OAuth > Application Registry.",
    ),
    _field(
        "client_secret",
        "Client Secret",
        "A confidential key that authenticates your application's identity to ServiceNow.",
        secret=True,
    ),
]

CONNECTION_TYPES: list[dict[str, Any]] = [
    {
        "type": "servicenow",
        "label": "ServiceNow",
        "description": "Create Microsoft 365 workspaces from ServiceNow incidents, requests "
        "and changes.",
        "fields": _COMMON_FIELDS,
        "auth_methods": [
            {
                "method": "api_token",
                "label": "API Token",
                "description": "A secret key of a dedicated integration user, sent in a header "
                "or a query parameter. Not refreshed automatically.",
                "fields": _API_TOKEN_FIELDS,
            },
            {
                "method": "oauth2",
                "label": "OAuth 2.0",
                "description": "Client credentials of an OAuth application in ServiceNow; "
                "access tokens are renewed automatically before they expire.",
                "fields": _OAUTH2_FIELDS,
            },
        ],
    }
]
