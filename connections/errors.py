"""Errors as values the caller can act on: an HTTP status, a code, a message and the fields."""

from dataclasses import dataclass, field


@dataclass
class FieldError:
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass
class ApiError(Exception):
    status: int
    code: str
    message: str
    details: list[FieldError] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def validation_error(details: list[FieldError]) -> ApiError:
    noun = "field is" if len(details) == 1 else "fields are"
    return ApiError(400, "validation_error", f"{len(details)} {noun} not valid.", details)


def invalid_json(message: str) -> ApiError:
    return ApiError(400, "invalid_json", message)


def not_found(message: str = "No such connection for this tenant.") -> ApiError:
    return ApiError(404, "not_found", message)


def name_taken(name: str) -> ApiError:
    return ApiError(
        409,
        "name_taken",
        "Another connection of this tenant already has that name.",
        [FieldError("name", "Choose a name no other connection of this tenant uses.")],
    )


def precondition_failed() -> ApiError:
    return ApiError(
        412,
        "precondition_failed",
        "The connection has changed since you read it (If-Match does not match its ETag). "
        "Read it again and retry.",
    )


def payload_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"The body is over {limit // 1024} KiB.")


def unsupported_media_type() -> ApiError:
    return ApiError(
        415,
        "unsupported_media_type",
        "Send the body as application/json (or application/merge-patch+json for PATCH).",
    )


def credentials_rejected(message: str, field_name: str | None = None) -> ApiError:
    rejected = "The instance rejected the credentials; the message says what to check."
    details = [FieldError(field_name, rejected)] if field_name else []
    return ApiError(422, "credentials_rejected", message, details)


def instance_unreachable(message: str) -> ApiError:
    return ApiError(502, "instance_unreachable", message)


def service_unavailable(message: str) -> ApiError:
    return ApiError(503, "service_unavailable", message)


def path_not_allowed(path: str) -> ApiError:
    return ApiError(
        403,
        "path_not_allowed",
        f"The path /{path} is outside the paths this service calls (PROXY_ALLOWED_PATHS).",
        [FieldError("path", "Use a path under one of the allowed prefixes.")],
    )


def connection_unusable(message: str) -> ApiError:
    return ApiError(409, "connection_unusable", message)


def response_too_large(message: str) -> ApiError:
    return ApiError(502, "response_too_large", message)


def instance_timeout(message: str) -> ApiError:
    return ApiError(504, "instance_timeout", message)


def query_rejected(message: str) -> ApiError:
    return ApiError(
        422,
        "query_rejected",
        message,
        [FieldError("query", "The instance refused the trigger's table or query.")],
    )


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)
