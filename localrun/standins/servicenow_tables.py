"""The ServiceNow stand-in's records: tables, their fields, references, journals and writes.

Every stored value is a string, as the Table API sends it. A record keeps the version readers
see and, for a late commit, a newer version written with an earlier `sys_updated_on` that only
becomes visible at `commit_at` (or when told), as a long transaction's write does on an instance.
Callers hold the stand-in's lock; nothing here is thread-safe on its own.
"""

import hashlib
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from localrun.standins import encoded_query

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
SAMPLES_PER_TABLE = 3
FIRST_NUMBER = 10_001
JOURNAL_FIELDS = ("work_notes", "comments")
SYSTEM_FIELDS = (
    "sys_id",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
)
# Written by the instance itself; a Table API write of these is ignored.
INSTANCE_FIELDS = frozenset(SYSTEM_FIELDS) - {"sys_id"}
VARIABLES = "variables."
SYSTEM_USER = "system"
SYS_ID = re.compile(r"[0-9a-f]{32}")
TASK_COLUMNS = ("number", "short_description", "state", "active", "priority", "opened_by")
DEFAULTS = {"active": "true", "state": "1", "priority": "4"}


@dataclass(frozen=True)
class TableSpec:
    prefix: str | None  # of `number`; None: the table has no number
    columns: tuple[str, ...]
    references: dict[str, str] = field(default_factory=dict)  # field -> referenced table
    journal: tuple[str, ...] = ()


def _task(prefix: str, *columns: str, **references: str) -> TableSpec:
    return TableSpec(
        prefix,
        TASK_COLUMNS + columns,
        {"opened_by": "sys_user", **references},
        JOURNAL_FIELDS,
    )


TABLE_SPECS = {
    "sys_user": TableSpec(
        None, ("user_name", "name", "first_name", "last_name", "email", "active")
    ),
    "incident": _task("INC", "caller_id", caller_id="sys_user"),
    "sc_request": _task("REQ", "requested_for", requested_for="sys_user"),
    "sc_req_item": _task(
        "RITM",
        "request",
        "cat_item",
        "requested_for",
        request="sc_request",
        cat_item="sc_cat_item",
        requested_for="sys_user",
    ),
    "sc_task": _task(
        "SCTASK", "request", "request_item", request="sc_request", request_item="sc_req_item"
    ),
    "change_request": _task("CHG"),
    "problem": _task("PRB"),
}


def format_time(epoch: float) -> str:
    """ServiceNow's stored date-time: `YYYY-MM-DD HH:MM:SS`, UTC."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime(TIME_FORMAT)


def stored_time(value: str | float) -> str:
    """A given time (stored text, or epoch seconds) as stored text; ValueError if neither."""
    if isinstance(value, int | float):
        return format_time(value)
    datetime.strptime(value, TIME_FORMAT)
    return value


def stored_value(value: Any) -> str:
    """A JSON value as the instance stores it: text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, dict) and "value" in value:
        return stored_value(value["value"])
    return str(value)


def sys_id_for(table: str, index: int) -> str:
    """Deterministic sys_ids: the n-th record a table ever held."""
    return hashlib.sha256(f"{table}:{index}".encode()).hexdigest()[:32]


USERS = (
    ("abel.tuter", "Abel", "Tuter"),
    ("beth.anglin", "Beth", "Anglin"),
    ("david.miller", "David", "Miller"),
)
CATALOG_ITEM = "0c4fa3e1db2f4410a8e5d1f3f39619a1"
INTEGRATION_USER = sys_id_for("sys_user", 0)  # whom every principal acts as (`opened_by`)
TEAMS = ("Marketing", "Finance", "Engineering")


@dataclass
class StoredRecord:
    sys_id: str
    fields: dict[str, str] | None  # what readers see; None: an insert not yet committed
    pending: dict[str, str] | None = None  # written, not yet committed
    commit_at: float = math.inf  # when `pending` becomes visible (inf: when told)
    journal: list[dict[str, str]] = field(default_factory=list)

    def visible(self, now: float) -> dict[str, str] | None:
        if self.pending is not None and self.commit_at <= now:
            self.commit()
        return self.fields

    def latest(self) -> dict[str, str]:
        return self.pending if self.pending is not None else self.fields or {}

    def commit(self) -> None:
        if self.pending is not None:
            self.fields, self.pending, self.commit_at = self.pending, None, math.inf


@dataclass
class Write:
    """What one write says: field values, journal entries, and when it becomes visible."""

    values: dict[str, str]
    by: str
    now: float
    updated_on: str | None = None
    created_on: str | None = None
    commit_at: float | None = None  # None: at once
    force: bool = False  # a new version even when no value changes (as a script's update)


class Table:
    def __init__(self, name: str, spec: TableSpec) -> None:
        self.name = name
        self.spec = spec
        self.records: dict[str, StoredRecord] = {}
        self.known: dict[str, None] = dict.fromkeys((*SYSTEM_FIELDS, *spec.columns, *spec.journal))
        self.inserted = 0
        self.next_number = FIRST_NUMBER

    def new_sys_id(self) -> str:
        sys_id = sys_id_for(self.name, self.inserted)
        while sys_id in self.records:
            self.inserted += 1
            sys_id = sys_id_for(self.name, self.inserted)
        self.inserted += 1
        return sys_id

    def new_number(self) -> str:
        number = f"{self.spec.prefix}{self.next_number:07d}"
        self.next_number += 1
        return number

    def visible(self, sys_id: str, now: float) -> dict[str, str] | None:
        record = self.records.get(sys_id)
        return record.visible(now) if record is not None else None

    def rows(self, now: float) -> list[dict[str, str]]:
        return [row for record in self.records.values() if (row := record.visible(now)) is not None]


def generic_spec(name: str) -> TableSpec:
    return TableSpec(name[:3].upper(), TASK_COLUMNS)


class Tables:
    """All tables of the instance, with dot-walking across references."""

    def __init__(self, now: float) -> None:
        self.tables: dict[str, Table] = {}
        for name, spec in TABLE_SPECS.items():
            self.tables[name] = Table(name, spec)
            self._seed(self.tables[name], now)

    # ---- tables ----------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.tables

    def table(self, name: str) -> Table:
        return self.tables[name]

    def add_table(self, name: str, records: list[dict[str, Any]] | None, now: float) -> None:
        """A table of the given records as they are, or of sample records."""
        table = Table(name, TABLE_SPECS.get(name) or generic_spec(name))
        self.tables[name] = table
        if records is None:
            self._seed(table, now)
            return
        for given in records:
            values = {key: stored_value(value) for key, value in given.items()}
            values.setdefault("sys_id", table.new_sys_id())
            table.known.update(dict.fromkeys(values))
            table.records[values["sys_id"]] = StoredRecord(values["sys_id"], values)

    def _seed(self, table: Table, now: float) -> None:
        for index in range(SAMPLES_PER_TABLE):
            created = int(now) - (SAMPLES_PER_TABLE - index) * 86_400
            write = Write(
                _sample_values(table.name, index),
                SYSTEM_USER,
                now,
                updated_on=format_time(created + 3600 * index),
                created_on=format_time(created),
            )
            row = self.insert(table, write, extend=True).latest()
            row["sys_mod_count"] = str(index)  # the n-th sample was updated n times

    # ---- fields ----------------------------------------------------------------------------

    def knows(self, table: Table, path: str) -> bool:
        """Whether the table has the field, following references for dotted names."""
        if path in table.known:
            return True
        head, _, rest = path.partition(".")
        target = table.spec.references.get(head)
        return bool(rest) and target in self.tables and self.knows(self.tables[target], rest)

    def value(self, table: Table, row: dict[str, str], path: str, now: float) -> str:
        """The stored value of a field or a dotted path; "" where nothing is there."""
        if path in row:
            return row[path]
        head, _, rest = path.partition(".")
        target = table.spec.references.get(head)
        if not rest or target not in self.tables:
            return ""
        referenced = self.tables[target].visible(row.get(head, ""), now)
        return self.value(self.tables[target], referenced, rest, now) if referenced else ""

    def reference_target(self, table: Table, path: str) -> str | None:
        """The table the field at the end of `path` refers to, if it is a reference."""
        head, _, rest = path.partition(".")
        target = table.spec.references.get(head)
        if not rest:
            return target
        if target not in self.tables:
            return None
        return self.reference_target(self.tables[target], rest)

    def default_fields(self, table: Table, row: dict[str, str]) -> list[str]:
        """What a read without `sysparm_fields` answers: the record's fields and journals."""
        names = [name for name in row if not name.startswith(VARIABLES)]
        return names + [name for name in table.spec.journal if name not in row]

    # ---- reading ---------------------------------------------------------------------------

    def select(self, table: Table, query: str, now: float) -> list[dict[str, str]]:
        """The visible rows the encoded query matches, in its order (else insertion order)."""
        parsed = encoded_query.restrict(
            encoded_query.parse(query), lambda path: self.knows(table, path)
        )
        return encoded_query.select(
            parsed, table.rows(now), lambda row, path: self.value(table, row, path, now)
        )

    # ---- writing ---------------------------------------------------------------------------

    def insert(self, table: Table, write: Write, *, extend: bool = False) -> StoredRecord:
        """A new record; `extend` adds unknown fields to the table (else they are ignored)."""
        values, journal = self._split(table, write.values, extend)
        sys_id = values.pop("sys_id", "")
        if not SYS_ID.fullmatch(sys_id) or sys_id in table.records:
            sys_id = table.new_sys_id()
        created_on = write.created_on or write.updated_on or format_time(write.now)
        row = {"sys_id": sys_id, **self._defaults(table, values)}
        row.update(
            sys_created_on=created_on,
            sys_created_by=write.by,
            sys_updated_on=write.updated_on or created_on,
            sys_updated_by=write.by,
            sys_mod_count="0",
        )
        record = StoredRecord(sys_id, None, row)
        self._schedule(record, write)
        self._append_journal(record, journal, write)
        table.records[sys_id] = record
        return record

    def update(
        self, record: StoredRecord, table: Table, write: Write, *, extend: bool = False
    ) -> bool:
        """Applies a write; returns False (and writes nothing) when it changes nothing."""
        values, journal = self._split(table, write.values, extend)
        values.pop("sys_id", None)
        current = record.latest()
        changed = {k: v for k, v in values.items() if current.get(k) != v}
        if not (changed or journal or write.force):
            return False
        row = {**current, **changed}
        row.update(
            sys_updated_on=write.updated_on or format_time(write.now),
            sys_updated_by=write.by,
            sys_mod_count=str(int(current.get("sys_mod_count") or 0) + 1),
        )
        record.pending = row
        self._schedule(record, write)
        self._append_journal(record, journal, write)
        return True

    def delete(self, table: Table, sys_id: str) -> None:
        del table.records[sys_id]

    def _split(
        self, table: Table, given: dict[str, Any], extend: bool
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The field values to store and the journal entries to append."""
        values, journal = {}, {}
        for name, value in _flatten_variables(given).items():
            if name in table.spec.journal:
                if stored_value(value):
                    journal[name] = stored_value(value)
            elif extend:
                table.known.setdefault(name)
                values[name] = stored_value(value)
            elif name in table.known and name not in INSTANCE_FIELDS:
                values[name] = stored_value(value)
        return values, journal

    def _defaults(self, table: Table, values: dict[str, str]) -> dict[str, str]:
        row = {name: "" for name in table.spec.columns}
        row.update({name: value for name, value in DEFAULTS.items() if name in row})
        if "number" in row and table.spec.prefix:
            row["number"] = table.new_number()
        if "opened_by" in row:
            row["opened_by"] = INTEGRATION_USER
        row.update(values)
        return row

    def _schedule(self, record: StoredRecord, write: Write) -> None:
        if write.commit_at is None:
            record.commit()
        else:
            record.commit_at = write.commit_at

    def _append_journal(self, record: StoredRecord, entries: dict[str, str], write: Write) -> None:
        for name, text in entries.items():
            record.journal.append(
                {
                    "field": name,
                    "value": text,
                    "created_on": format_time(write.now),
                    "created_by": write.by,
                }
            )


def _flatten_variables(given: dict[str, Any]) -> dict[str, Any]:
    """`{"variables": {"team_name": "x"}}` as `{"variables.team_name": "x"}`."""
    flat = {name: value for name, value in given.items() if name != "variables"}
    variables = given.get("variables")
    if isinstance(variables, dict):
        flat.update({f"{VARIABLES}{name}": value for name, value in variables.items()})
    return flat


def _sample_values(table: str, index: int) -> dict[str, str]:
    if table == "sys_user":
        user_name, first, last = USERS[index]
        return {
            "user_name": user_name,
            "name": f"{first} {last}",
            "first_name": first,
            "last_name": last,
            "email": f"{user_name}@example.com",
        }
    values = {"short_description": f"Sample {table} record {index + 1}"}
    user = sys_id_for("sys_user", index)
    if table == "incident":
        values["caller_id"] = user
    if table in ("sc_request", "sc_req_item"):
        values["requested_for"] = user
    if table == "sc_req_item":
        values.update(
            request=sys_id_for("sc_request", index),
            cat_item=CATALOG_ITEM,
            short_description=f"New team for {TEAMS[index]}",
        )
        values[f"{VARIABLES}team_name"] = TEAMS[index]
        values[f"{VARIABLES}owner_email"] = f"{USERS[index][0]}@example.com"
    if table == "sc_task":
        values.update(request=sys_id_for("sc_request", index))
        values.update(request_item=sys_id_for("sc_req_item", index))
    return values
