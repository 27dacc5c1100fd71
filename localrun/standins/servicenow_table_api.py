"""The stand-in's Table API: list, read, create, update and delete records as an instance answers.

`answer()` takes one authenticated, authorised request for a known table and returns the status,
body and headers: `sysparm_query`, `sysparm_fields` (dot-walking, `variables.<name>`),
`sysparm_limit`/`sysparm_offset` with `X-Total-Count` and a `Link` header that echoes the request's
own URL and parameters, reference links, journal fields, `X-no-response-body`. What is not known
about real instances is chosen and said here: with `sysparm_no_count=true` the `Link` header has no
`last` (the instance did not count) and has `next` whenever the page came back full.
"""

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from localrun.standins.servicenow_tables import StoredRecord, Table, Tables, Write

DEFAULT_LIMIT = 10_000
NOT_FOUND_DETAIL = "Record doesn't exist or ACL restricts the record retrieval"


@dataclass
class TableRequest:
    method: str
    table: str
    sys_id: str | None  # None: the table's collection
    version: str | None  # "v1", "v2", or None for the unversioned path
    args: dict[str, str]  # the first value of each query parameter
    raw_query: str  # the query string exactly as received
    url: str  # scheme, host, port and path as received, without the query
    instance_url: str  # scheme, host and port as received
    body: bytes
    principal: str
    no_response_body: bool = False


@dataclass
class TableAnswer:
    status: int
    body: Any = None  # None: an empty body
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """How records are rendered: which fields, reference links, display values."""

    fields: list[str] | None
    links: bool
    display: str
    instance_url: str


def error_envelope(message: str, detail: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "detail": detail}, "status": "failure"}


def answer(tables: Tables, request: TableRequest, now: float) -> TableAnswer:
    table = tables.table(request.table)
    if request.sys_id is None:
        if request.method == "POST":
            return _create(tables, table, request, now)
        return _list(tables, table, request, now)
    record = table.records.get(request.sys_id)
    if record is None or record.visible(now) is None:
        return TableAnswer(404, error_envelope("No Record found", NOT_FOUND_DETAIL))
    if request.method in ("PUT", "PATCH"):
        return _update(tables, table, record, request, now)
    if request.method == "DELETE":
        tables.delete(table, record.sys_id)
        return TableAnswer(204)
    return _one(tables, table, record, request, now)


# ---- reading -----------------------------------------------------------------------------


def _list(tables: Tables, table: Table, request: TableRequest, now: float) -> TableAnswer:
    args = request.args
    rows = tables.select(table, args.get("sysparm_query", ""), now)
    offset = _int_arg(args, "sysparm_offset", 0)
    limit = _int_arg(args, "sysparm_limit", DEFAULT_LIMIT)
    chosen = rows[offset : offset + limit]
    if request.version == "v1" and not chosen:
        return TableAnswer(404, error_envelope("No Record found", "Records not found"))
    view = _view(request)
    headers = {}
    total = None if _flag(args, "sysparm_no_count") else len(rows)
    if total is not None:
        headers["X-Total-Count"] = str(total)
    if not _flag(args, "sysparm_suppress_pagination_header"):
        pages = page_offsets(offset, limit, total, len(chosen))
        headers["Link"] = link_header(request.url, request.raw_query, pages)
    result = [render(tables, table, row, view, now) for row in chosen]
    return TableAnswer(200, {"result": result}, headers)


def _one(
    tables: Tables, table: Table, record: StoredRecord, request: TableRequest, now: float
) -> TableAnswer:
    row = record.visible(now) or {}
    return TableAnswer(200, {"result": render(tables, table, row, _view(request), now)})


def page_offsets(
    offset: int, limit: int, total: int | None, returned: int
) -> list[tuple[str, int]]:
    """The `Link` relations and their offsets; without a total, `next` when the page was full."""
    pages = [("first", 0)]
    if offset > 0:
        pages.append(("prev", max(0, offset - limit)))
    if total is None:
        if limit and returned == limit:
            pages.append(("next", offset + limit))
        return pages
    if limit and offset + limit < total:
        pages.append(("next", offset + limit))
    pages.append(("last", (total - 1) // limit * limit if total and limit else 0))
    return pages


def link_header(url: str, raw_query: str, pages: list[tuple[str, int]]) -> str:
    """`<url>;rel="first",...`: every parameter as received, in order, `sysparm_offset` set."""
    return ",".join(
        f'<{url}?{with_offset(raw_query, offset)}>;rel="{rel}"' for rel, offset in pages
    )


def with_offset(raw_query: str, offset: int) -> str:
    """The raw query string with `sysparm_offset` set (in place, or added at the end)."""
    parts, found = [], False
    for part in raw_query.split("&"):
        if not part:
            continue
        if unquote_plus(part.partition("=")[0]) == "sysparm_offset":
            part, found = f"sysparm_offset={offset}", True
        parts.append(part)
    if not found:
        parts.append(f"sysparm_offset={offset}")
    return "&".join(parts)


def render(tables: Tables, table: Table, row: dict[str, str], view: View, now: float) -> dict:
    """One record as the Table API answers it; unknown fields are absent."""
    names = view.fields if view.fields is not None else tables.default_fields(table, row)
    rendered: dict[str, Any] = {}
    for name in names:
        if name not in rendered and tables.knows(table, name):
            rendered[name] = _field(tables, table, row, name, view, now)
    return rendered


def _field(
    tables: Tables, table: Table, row: dict[str, str], name: str, view: View, now: float
) -> Any:
    # Journal fields read as "" without display values, as on an instance.
    value = "" if name in table.spec.journal else tables.value(table, row, name, now)
    target = tables.reference_target(table, name)
    link = f"{view.instance_url}/api/now/table/{target}/{value}" if target and value else None
    shown: dict[str, str] = {"display_value": value} if view.display == "all" else {}
    if link and view.links:
        shown["link"] = link
    if not shown:
        return value
    return {**shown, "value": value}


def _view(request: TableRequest) -> View:
    given = request.args.get("sysparm_fields", "")
    names = [name.strip() for name in given.split(",") if name.strip()]
    return View(
        fields=names or None,
        links=not _flag(request.args, "sysparm_exclude_reference_link"),
        display=request.args.get("sysparm_display_value", "false").lower(),
        instance_url=request.instance_url,
    )


# ---- writing -----------------------------------------------------------------------------


def _create(tables: Tables, table: Table, request: TableRequest, now: float) -> TableAnswer:
    values = _body_values(request.body)
    if values is None:
        return _unreadable()
    record = tables.insert(table, Write(values, request.principal, now))
    headers = {"Location": f"{request.url}/{record.sys_id}"}
    return _written(tables, table, record, request, now, 201, headers)


def _update(
    tables: Tables, table: Table, record: StoredRecord, request: TableRequest, now: float
) -> TableAnswer:
    values = _body_values(request.body)
    if values is None:
        return _unreadable()
    tables.update(record, table, Write(values, request.principal, now))
    return _written(tables, table, record, request, now, 200, {})


def _written(
    tables: Tables,
    table: Table,
    record: StoredRecord,
    request: TableRequest,
    now: float,
    status: int,
    headers: dict[str, str],
) -> TableAnswer:
    if request.no_response_body:
        return TableAnswer(status, None, headers)
    row = record.visible(now) or {}
    return TableAnswer(status, {"result": render(tables, table, row, _view(request), now)}, headers)


def _body_values(body: bytes) -> dict[str, Any] | None:
    """The JSON object written; of a list, the first one (as an instance does); else None."""
    try:
        given = json.loads(body or b"{}")
    except ValueError:
        return None
    if isinstance(given, list) and given:
        given = given[0]
    return given if isinstance(given, dict) else None


def _unreadable() -> TableAnswer:
    return TableAnswer(
        400, error_envelope("Exception while reading request", "The payload is not valid JSON.")
    )


# ---- parameters --------------------------------------------------------------------------


def _int_arg(args: dict[str, str], name: str, default: int) -> int:
    try:
        return max(0, int(args.get(name, default)))
    except ValueError:
        return default


def _flag(args: dict[str, str], name: str) -> bool:
    return args.get(name, "false").lower() == "true"
