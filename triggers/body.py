"""The trigger's create body, declared once.

`FIELDS` is the one declaration: each field's kind, bounds and default. The validation of a
create body and of a merge patch (400 `validation_error`, one `details` entry per bad field) and
the JSON Schemas of the OpenAPI document (create body, merge patch, the trigger as returned) are
both derived from it, so they cannot drift apart. A schema only says what JSON Schema can say;
the validation is never looser than the schema (a value the schema refuses is always refused).
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from connections import errors
from connections.errors import FieldError
from triggers.settings import TriggerSettings

Schema = dict[str, Any]

# Kinds of field.
TEXT = "text"
CHOICE = "choice"
NAMES = "names"
MOMENT = "moment"
WHOLE = "whole"
FLAG = "flag"


class Now:
    """The default of `start_at`: the moment of the request."""


NOW = Now()

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# The longest request URL the poller may need for `query` and `fields` together (the outbound
# limit is 8,192; the rest is the instance, the table, the keyset and the fixed parameters).
URL_BUDGET = 6_500


@dataclass(frozen=True)
class Refused:
    """A construct a text field must not hold."""

    pattern: str  # a regular expression
    label: str  # what it is, for the message
    ignore_case: bool = False

    def found_in(self, value: str) -> bool:
        flags = re.IGNORECASE if self.ignore_case else 0
        return re.search(self.pattern, value, flags) is not None


@dataclass(frozen=True)
class Field:
    name: str
    kind: str
    description: str
    required: bool = False
    default: Any = None  # a value, NOW, or None when required
    # TEXT
    min_length: int = 0
    max_length: int = 0
    strip: bool = False
    refused: tuple[Refused, ...] = ()
    # CHOICE: the allowed values, from the settings
    choices: Callable[[TriggerSettings], tuple[str, ...]] | None = None
    # NAMES
    max_items: int = 0
    item_pattern: str = ""
    item_max_length: int = 0
    item_hint: str = ""
    # MOMENT
    max_past: timedelta | None = None
    max_future: timedelta | None = None
    # WHOLE
    minimum: int = 0
    maximum: int = 0
    example: Any = None


FIELDS: tuple[Field, ...] = (
    Field(
        "name",
        TEXT,
        "What the trigger is for, shown to people.",
        required=True,
        min_length=1,
        max_length=100,
        strip=True,
        example="New Teams requests",
    ),
    Field(
        "table",
        CHOICE,
        "The table watched: one of `TRIGGER_TABLES`.",
        required=True,
        choices=lambda settings: settings.tables,
        example="sc_req_item",
    ),
    Field(
        "query",
        TEXT,
        "A ServiceNow encoded query the records must match (empty: every record). `^NQ`, `^EQ`, "
        "`^RQ`, `ORDERBY` and `javascript:` are refused, as are control characters. It is tried "
        "on the instance before it is stored.",
        default="",
        max_length=2000,
        refused=(
            Refused(r"\^NQ", "^NQ (a second query)"),
            Refused(r"\^EQ", "^EQ (end of query)"),
            Refused(r"\^RQ", "^RQ (a related-list query)"),
            Refused(r"ORDERBY", "ORDERBY (the service orders the reads itself)"),
            Refused(r"javascript:", "javascript: (a script)", ignore_case=True),
        ),
        example="cat_item=0c4fa3e1db2f4410a8e5d1f3f39619a1^active=true",
    ),
    Field(
        "fields",
        NAMES,
        "Fields each event's `record` holds (dot-walking with `.`, e.g. `variables.team_name`); "
        "`sys_id`, `number`, `sys_created_on`, `sys_updated_on` and `sys_mod_count` are always "
        "read.",
        default=[],
        max_items=50,
        item_pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)*$",
        item_max_length=80,
        item_hint="Must be a field name: lowercase letters, digits and _, with . for "
        "dot-walking (e.g. variables.team_name).",
        example=["number", "short_description", "requested_for", "variables.team_name"],
    ),
    Field(
        "start_at",
        MOMENT,
        "Changes from this moment on become events (RFC 3339; default: now). At most 7 days "
        "back and 366 days ahead.",
        default=NOW,
        max_past=timedelta(days=7),
        max_future=timedelta(days=366),
        example="2026-12-01T00:00:00Z",
    ),
    Field(
        "interval_seconds",
        WHOLE,
        "Seconds between polls.",
        default=60,
        minimum=30,
        maximum=3600,
        example=60,
    ),
    Field(
        "enabled",
        FLAG,
        "False pauses the trigger (status `paused`); true resumes it where it stopped.",
        default=True,
        example=True,
    ),
)
BY_NAME = {field.name: field for field in FIELDS}
# Returned but never written: named as such when a patch or a create body holds them.
READ_ONLY = (
    "id",
    "connection_id",
    "status",
    "status_detail",
    "matching_now",
    "caught_up_to",
    "last_polled_at",
    "last_event_at",
    "events_emitted",
    "created_at",
    "updated_at",
    "push_secret",
)


# -- validation ---------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, *details: FieldError) -> None:
        self.details = list(details)


def _default(field: Field, now: datetime) -> Any:
    if isinstance(field.default, Now):
        return now
    return list(field.default) if isinstance(field.default, list) else field.default


def parse_moment(value: Any) -> datetime | None:
    """An RFC 3339 date-time as UTC; None when `value` is not one (or out of range)."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return None
    text = value.upper().replace("Z", "+00:00")
    fraction = re.search(r"\.\d+", text)
    if fraction:  # Python reads at most 6 digits of a fraction
        text = text.replace(fraction.group(0), fraction.group(0)[:7].ljust(7, "0"))
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _text(field: Field, value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(FieldError(field.name, "Must be a string."))
    if len(value) > field.max_length:
        raise _Invalid(FieldError(field.name, f"Must be at most {field.max_length} characters."))
    if _CONTROL.search(value):
        raise _Invalid(FieldError(field.name, "Must not contain control characters."))
    if field.strip:
        value = value.strip()
    if field.min_length and len(value) < field.min_length:
        raise _Invalid(FieldError(field.name, "Must not be empty."))
    found = [refused.label for refused in field.refused if refused.found_in(value)]
    if found:
        raise _Invalid(FieldError(field.name, f"Must not use {', '.join(found)}."))
    return value


def _choice(field: Field, value: Any, settings: TriggerSettings) -> str:
    allowed = field.choices(settings) if field.choices else ()
    if not isinstance(value, str) or value not in allowed:
        raise _Invalid(FieldError(field.name, f"Must be one of: {', '.join(allowed)}."))
    return value


def _names(field: Field, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(FieldError(field.name, "Must be an array of field names."))
    if len(value) > field.max_items:
        raise _Invalid(FieldError(field.name, f"At most {field.max_items} field names."))
    details, seen = [], set()
    pattern = re.compile(field.item_pattern)
    for index, item in enumerate(value):
        where = f"{field.name}[{index}]"
        if not isinstance(item, str) or not pattern.fullmatch(item):
            details.append(FieldError(where, field.item_hint))
        elif len(item) > field.item_max_length:
            details.append(FieldError(where, f"At most {field.item_max_length} characters."))
        elif item in seen:
            details.append(FieldError(where, "Named twice: give each field once."))
        else:
            seen.add(item)
    if details:
        raise _Invalid(*details)
    return list(value)


def _moment(field: Field, value: Any, now: datetime) -> datetime:
    moment = parse_moment(value)
    if moment is None:
        hint = "Must be an RFC 3339 date-time with a time zone, e.g. 2026-12-01T00:00:00Z."
        raise _Invalid(FieldError(field.name, hint))
    if field.max_past is not None and moment < now - field.max_past:
        raise _Invalid(FieldError(field.name, f"Must be at most {field.max_past.days} days back."))
    if field.max_future is not None and moment > now + field.max_future:
        days = field.max_future.days
        raise _Invalid(FieldError(field.name, f"Must be at most {days} days ahead."))
    return moment


def _whole(field: Field, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(FieldError(field.name, "Must be a whole number."))
    if not field.minimum <= value <= field.maximum:
        message = f"Must be from {field.minimum} to {field.maximum}."
        raise _Invalid(FieldError(field.name, message))
    return value


def _flag(field: Field, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(FieldError(field.name, "Must be true or false."))
    return value


def check(field: Field, value: Any, settings: TriggerSettings, now: datetime) -> Any:
    """The field's value, checked (and normalised); raises _Invalid."""
    if field.kind == TEXT:
        return _text(field, value)
    if field.kind == CHOICE:
        return _choice(field, value, settings)
    if field.kind == NAMES:
        return _names(field, value)
    if field.kind == MOMENT:
        return _moment(field, value, now)
    if field.kind == WHOLE:
        return _whole(field, value)
    return _flag(field, value)


def _unknown(doc: dict[str, Any]) -> list[FieldError]:
    details = []
    for key in sorted(set(doc) - set(BY_NAME)):
        message = "Is read-only." if key in READ_ONLY else "Unknown field."
        details.append(FieldError(key, message))
    return details


def _url_budget(values: dict[str, Any]) -> list[FieldError]:
    """`query` and `fields` must fit, together, in the URL of every read a poll makes."""
    query, fields = values.get("query"), values.get("fields")
    if not isinstance(query, str) or not isinstance(fields, list):
        return []
    size = len(quote(query, safe="")) + len(quote(",".join(fields), safe=""))
    if size <= URL_BUDGET:
        return []
    message = "The query and the field names are too long together for the instance's URLs."
    return [FieldError("query", message)]


def validate_create(
    doc: dict[str, Any], settings: TriggerSettings, now: datetime
) -> dict[str, Any]:
    """Every field's value (defaults filled in), or 400 naming each bad field."""
    details = _unknown(doc)
    values: dict[str, Any] = {}
    for field in FIELDS:
        if field.name not in doc:
            if field.required:
                details.append(FieldError(field.name, "This field is required."))
            else:
                values[field.name] = _default(field, now)
            continue
        try:
            values[field.name] = check(field, doc[field.name], settings, now)
        except _Invalid as invalid:
            details += invalid.details
    details += _url_budget(values)
    if details:
        raise errors.validation_error(details)
    return values


def validate_patch(
    patch: dict[str, Any], current: dict[str, Any], settings: TriggerSettings, now: datetime
) -> dict[str, Any]:
    """The fields the merge patch (RFC 7396) sets, checked: null puts a field back to its
    default and cannot remove a required one. `current` (the trigger's create-body fields) is
    only used to check the result as a whole."""
    details = _unknown(patch)
    values: dict[str, Any] = {}
    for name, value in patch.items():
        field = BY_NAME.get(name)
        if field is None:
            continue
        if value is None:
            if field.required:
                details.append(FieldError(name, "Cannot be removed."))
            else:
                values[name] = _default(field, now)
            continue
        try:
            values[name] = check(field, value, settings, now)
        except _Invalid as invalid:
            details += invalid.details
    if not details:
        details += _url_budget({**current, **values})
    if details:
        raise errors.validation_error(details)
    return values


# -- JSON Schemas -------------------------------------------------------------------------------


def _field_schema(field: Field, settings: TriggerSettings, *, returned: bool = False) -> Schema:
    schema: Schema
    if field.kind == TEXT:
        schema = {"type": "string", "maxLength": field.max_length}
        if field.min_length:
            schema["minLength"] = field.min_length
    elif field.kind == CHOICE:
        schema = {"type": "string"}
        if not returned:  # a trigger keeps its table when the setting changes later
            schema["enum"] = list(field.choices(settings) if field.choices else ())
    elif field.kind == NAMES:
        item = {
            "type": "string",
            "minLength": 1,
            "maxLength": field.item_max_length,
            "pattern": field.item_pattern,
        }
        schema = {"type": "array", "items": item, "maxItems": field.max_items}
        schema["uniqueItems"] = True
    elif field.kind == MOMENT:
        schema = {"type": "string", "format": "date-time"}
    elif field.kind == WHOLE:
        schema = {"type": "integer", "minimum": field.minimum, "maximum": field.maximum}
    else:
        schema = {"type": "boolean"}
    schema["description"] = field.description
    if not returned and field.default is not None and not isinstance(field.default, Now):
        schema["default"] = field.default
    if field.example is not None:
        schema["examples"] = [field.example]
    return schema


def create_example() -> dict[str, Any]:
    """A create body with every field's example (the contract's)."""
    return {field.name: field.example for field in FIELDS}


def create_schema(settings: TriggerSettings) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {field.name: _field_schema(field, settings) for field in FIELDS},
        "required": [field.name for field in FIELDS if field.required],
        "description": "A trigger to create. Unknown fields are refused.",
        "examples": [create_example()],
    }


def patch_schema(settings: TriggerSettings, nullable: Callable[[Schema], Schema]) -> Schema:
    """`nullable(schema)` admits null besides what `schema` admits (the document's one way)."""
    properties = {}
    for field in FIELDS:
        schema = _field_schema(field, settings)
        schema.pop("default", None)
        properties[field.name] = schema if field.required else nullable(schema)
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": [],
        "description": "A JSON merge patch (RFC 7396) of the create body: fields not named keep "
        "their values; null puts a field back to its default (`name` and `table` cannot be "
        "removed).",
        "examples": [{"query": "active=true", "enabled": False}],
    }


def returned_properties(settings: TriggerSettings) -> dict[str, Schema]:
    """The create body's fields as a returned trigger holds them (all present, no defaults)."""
    return {field.name: _field_schema(field, settings, returned=True) for field in FIELDS}
