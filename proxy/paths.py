"""Which instance paths the proxy calls: strict checks on the path as received, then the
allow-list, matched on whole segments (with an optional version segment after the namespace).

Nothing is normalised: a path that would only be allowed after resolving `.`, `..`, `//` or a
percent-encoded separator is refused as it stands.
"""

import re
import urllib.parse

from connections import errors
from connections.errors import FieldError

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VERSION = re.compile(r"v[0-9]+")
MAX_PATH_LENGTH = 2048


def _invalid(message: str) -> errors.ApiError:
    return errors.validation_error([FieldError("path", message)])


def check_path(raw_path: str, allowed_prefixes: tuple[str, ...]) -> str:
    """The instance path to call (still percent-encoded as received), or an ApiError:
    400 `validation_error` for a path that is not plain, 403 `path_not_allowed` outside the list."""
    if len(raw_path) > MAX_PATH_LENGTH:
        raise _invalid(f"Is longer than {MAX_PATH_LENGTH} characters.")
    if _ENCODED_SEPARATOR.search(raw_path) or _BAD_ESCAPE.search(raw_path):
        raise _invalid("Holds a percent-encoded '/', '\\' or '.', or a broken escape.")
    try:
        decoded = urllib.parse.unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise _invalid("Holds percent-encoded bytes that are not UTF-8.") from None
    if _CONTROL.search(decoded) or "\\" in decoded:
        raise _invalid("Holds a control character or a backslash.")
    segments = decoded.split("/")
    if raw_path.startswith("/") or "" in segments[:-1]:
        raise _invalid("Holds an empty segment ('//' or a leading '/').")
    if any(segment in (".", "..") for segment in segments):
        raise _invalid("Holds a '.' or '..' segment.")
    if not any(_allowed(segments, prefix) for prefix in allowed_prefixes):
        raise errors.path_not_allowed(decoded)
    return raw_path


def _allowed(segments: list[str], prefix: str) -> bool:
    wanted = [part for part in prefix.split("/") if part]
    needs_more = prefix.endswith("/")
    if _matches(segments, wanted, needs_more):
        return True
    if len(wanted) < 2 or len(segments) < 3 or not _VERSION.fullmatch(segments[2]):
        return False
    return _matches(segments[:2] + segments[3:], wanted, needs_more)


def _matches(segments: list[str], wanted: list[str], needs_more: bool) -> bool:
    if segments[: len(wanted)] != wanted:
        return False
    rest = segments[len(wanted) :]
    return bool(rest and rest[0]) if needs_more else True
