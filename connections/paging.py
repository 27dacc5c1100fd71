"""Opaque page cursors: a storage continuation token as URL-safe text, and back."""

import base64
import json
from typing import Any

from connections import errors


def encode_cursor(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    """The token inside a cursor this service handed out (a JSON object); 400 for anything else."""
    if not cursor:
        return None
    try:
        token = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        token = None
    if not isinstance(token, dict):
        detail = errors.FieldError("cursor", "Not a cursor this service handed out.")
        raise errors.validation_error([detail])
    return token
