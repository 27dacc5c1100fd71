"""A connection's credential as it goes on the wire: an API token in the header or query
parameter the connection names, or an OAuth 2.0 bearer token."""

from dataclasses import dataclass, field

# The function key (?code=), and the default API key parameter whatever the connection's method:
# a caller of the proxy never brings credentials of its own.
ALWAYS_DROPPED_PARAMETERS = ("code", "x-sn-apikey")


@dataclass(frozen=True)
class Credential:
    """The headers or query parameter to add, and the parameter names a caller may not set."""

    headers: dict[str, str] = field(default_factory=dict)
    query: tuple[str, str] | None = None
    parameter_name: str = ""

    def dropped_parameters(self) -> set[str]:
        names = {name.lower() for name in ALWAYS_DROPPED_PARAMETERS}
        if self.parameter_name:
            names.add(self.parameter_name.lower())
        return names


def api_token_credential(token: str, parameter_name: str, parameter_type: str) -> Credential:
    if parameter_type == "query":
        return Credential(query=(parameter_name, token), parameter_name=parameter_name)
    return Credential(headers={parameter_name: token}, parameter_name=parameter_name)


def bearer_credential(access_token: str) -> Credential:
    return Credential(headers={"Authorization": f"Bearer {access_token}"})
