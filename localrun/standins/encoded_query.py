"""ServiceNow encoded queries (`sysparm_query`): parsing, matching and ordering.

Terms are joined by `^` (AND); a term starting with `OR` joins the term before it (OR binds
tighter than AND: `a=1^ORa=2^b=3` is `(a=1 OR a=2) AND b=3`); `^NQ` starts a new query whose
result is ORed with the others. `ORDERBY<field>` and `ORDERBYDESC<field>` order the result, in
the order given. `^^` stands for a literal `^` inside a value.

As an instance does, a term it cannot use (an unknown field, an operator it does not know) is
dropped and the rest of the query runs. Values compare as the stored text, case-insensitively;
when both sides are numbers they compare as numbers. Dates compare as their stored
`YYYY-MM-DD HH:MM:SS` text, which orders like the time itself.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

# Longer operators first, so that `<=` is not read as `<` followed by a value "=...".
OPERATORS = (
    "ISNOTEMPTY",
    "ISEMPTY",
    "STARTSWITH",
    "ENDSWITH",
    "NOT LIKE",
    "NOT IN",
    "LIKE",
    "IN",
    "!=",
    "<=",
    ">=",
    "=",
    "<",
    ">",
)
_FIELD = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ORDER_BY = "ORDERBY"
_ORDER_BY_DESC = "ORDERBYDESC"

Item = TypeVar("Item")
ValueOf = Callable[[Any, str], str]


@dataclass(frozen=True)
class Condition:
    field: str
    operator: str
    value: str


@dataclass(frozen=True)
class Ordering:
    field: str
    descending: bool


# One OR clause: any of its conditions. An empty clause (all its terms dropped) is no constraint.
Clause = list[Condition]
# One query (between `^NQ`s): all of its clauses.
Group = list[Clause]


@dataclass
class EncodedQuery:
    groups: list[Group] = field(default_factory=list)
    ordering: list[Ordering] = field(default_factory=list)

    def fields(self) -> set[str]:
        named = {c.field for group in self.groups for clause in group for c in clause}
        return named | {order.field for order in self.ordering}


def parse(text: str) -> EncodedQuery:
    """Reads an encoded query; terms that are not conditions become empty clauses."""
    query = EncodedQuery(groups=[[]])
    for term in split_terms(text):
        if term.startswith(_ORDER_BY_DESC):
            query.ordering.append(Ordering(term[len(_ORDER_BY_DESC) :], descending=True))
        elif term.startswith(_ORDER_BY):
            query.ordering.append(Ordering(term[len(_ORDER_BY) :], descending=False))
        elif term and term != "EQ":
            _add_term(query, term)
    return query


def split_terms(text: str) -> list[str]:
    """Splits on `^`, reading `^^` as a literal `^`."""
    parts = text.replace("^^", "\x00").split("^")
    return [part.replace("\x00", "^") for part in parts]


def _add_term(query: EncodedQuery, term: str) -> None:
    if term.startswith("NQ"):
        query.groups.append([])
        term = term[2:]
    either = term.startswith("OR")
    if either:
        term = term[2:]
    condition = parse_condition(term)
    group = query.groups[-1]
    if either and group:
        if condition is not None:
            group[-1].append(condition)
    else:
        group.append([condition] if condition is not None else [])


def parse_condition(term: str) -> Condition | None:
    """`<field><operator><value>`, or None when the term is not one."""
    match = _FIELD.match(term)
    if match is None:
        return None
    rest = term[match.end() :]
    for operator in OPERATORS:
        if rest.startswith(operator):
            return Condition(match.group(), operator, rest[len(operator) :])
    return None


def restrict(query: EncodedQuery, known: Callable[[str], bool]) -> EncodedQuery:
    """The query without the conditions and orderings naming fields that `known` rejects."""
    groups = [[[c for c in clause if known(c.field)] for clause in group] for group in query.groups]
    ordering = [order for order in query.ordering if known(order.field)]
    return EncodedQuery(groups, ordering)


def matches(query: EncodedQuery, item: Any, value_of: ValueOf) -> bool:
    """True when any group holds: every non-empty clause has a condition that holds."""
    return any(_group_holds(group, item, value_of) for group in query.groups) or not query.groups


def _group_holds(group: Group, item: Any, value_of: ValueOf) -> bool:
    return all(
        any(holds(condition, value_of(item, condition.field)) for condition in clause)
        for clause in group
        if clause
    )


def holds(condition: Condition, stored: str) -> bool:
    """Whether the stored value satisfies the condition."""
    operator, wanted = condition.operator, condition.value
    if operator == "ISEMPTY":
        return stored == ""
    if operator == "ISNOTEMPTY":
        return stored != ""
    if operator in ("IN", "NOT IN"):
        found = any(_compare(stored, item) == 0 for item in wanted.split(","))
        return found == (operator == "IN")
    if operator in ("LIKE", "NOT LIKE", "STARTSWITH", "ENDSWITH"):
        return _text_holds(operator, stored.casefold(), wanted.casefold())
    if operator in ("=", "!="):
        return (_compare(stored, wanted) == 0) == (operator == "=")
    return stored != "" and _ordered_holds(operator, _compare(stored, wanted))


def _text_holds(operator: str, stored: str, wanted: str) -> bool:
    if operator == "LIKE":
        return wanted in stored
    if operator == "NOT LIKE":
        return wanted not in stored
    if operator == "STARTSWITH":
        return stored.startswith(wanted)
    return stored.endswith(wanted)


def _ordered_holds(operator: str, comparison: int) -> bool:
    return {
        "<": comparison < 0,
        "<=": comparison <= 0,
        ">": comparison > 0,
        ">=": comparison >= 0,
    }[operator]


def sort_key(value: str) -> tuple[int, Decimal, str]:
    """Empty values first, then numbers by value, then text case-insensitively."""
    if value == "":
        return (0, Decimal(0), "")
    if _NUMBER.fullmatch(value):
        return (1, Decimal(value), "")
    return (2, Decimal(0), value.casefold())


def _compare(stored: str, wanted: str) -> int:
    """-1, 0 or 1; numbers compare as numbers only when both sides are numbers.

    Uses the same key as the ordering, so a keyset boundary (`sys_id>x`) agrees with
    `ORDERBYsys_id` for every value."""
    left, right = sort_key(stored), sort_key(wanted)
    return (left > right) - (left < right)


def order(items: list[Item], ordering: list[Ordering], value_of: ValueOf) -> list[Item]:
    """Items sorted by each ordering in turn (the first is the main key); stable otherwise."""
    ordered = list(items)
    for key in reversed(ordering):
        ordered.sort(
            key=lambda item, name=key.field: sort_key(value_of(item, name)),
            reverse=key.descending,
        )
    return ordered


def select(query: EncodedQuery, items: list[Item], value_of: ValueOf) -> list[Item]:
    """The items the query matches, in the query's order."""
    chosen = [item for item in items if matches(query, item, value_of)]
    return order(chosen, query.ordering, value_of)
