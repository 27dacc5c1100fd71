"""HTTP route templates as the Functions host reads them (ASP.NET Core route syntax, a subset).

`tenants/{tenant_id}/connections`, optional `{name?}`, catch-all `{*rest}` and the constraints
int, long, bool, alpha, guid, double, float and decimal (`{id:int}`). Literal text matches
case-insensitively; more specific templates win over less specific ones.
"""

import re
from dataclasses import dataclass

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "bool": r"(?i:true|false)",
    "alpha": r"[A-Za-z]+",
    "guid": r"\{?[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
    "decimal": r"-?\d+(?:\.\d+)?",
}
_PARAMETER = re.compile(r"\{([^{}]+)\}")
# Segment kinds, most specific first: the order routes are tried in.
_LITERAL, _COMPLEX, _CONSTRAINED, _PLAIN, _OPTIONAL, _CATCH_ALL = range(6)


class RouteError(ValueError):
    pass


@dataclass(frozen=True)
class _Parameter:
    name: str
    pattern: str
    optional: bool
    catch_all: bool
    constrained: bool


@dataclass(frozen=True)
class RouteTemplate:
    template: str
    precedence: tuple[int, ...]
    _regex: re.Pattern[str]
    _names: tuple[str, ...]

    def match(self, path: str) -> dict[str, str] | None:
        """Route parameters for `path` (relative to the route prefix, no leading slash)."""
        found = self._regex.fullmatch("/" + path.strip("/"))
        if found is None:
            return None
        values = found.groups()
        return {name: value for name, value in zip(self._names, values, strict=True) if value}


def compile_route(template: str) -> RouteTemplate:
    segments = [segment for segment in template.strip("/").split("/") if segment]
    names: list[str] = []
    regex, precedence = "", []
    for segment in segments:
        part, kind = _compile_segment(segment, names, template)
        regex += part
        precedence.append(kind)
    if not segments:
        regex = "/"
    return RouteTemplate(
        template, tuple(precedence), re.compile(regex, re.IGNORECASE | re.DOTALL), tuple(names)
    )


def _compile_segment(segment: str, names: list[str], template: str) -> tuple[str, int]:
    whole = _PARAMETER.fullmatch(segment)
    if whole:
        parameter = _parse_parameter(whole.group(1), template)
        names.append(parameter.name)
        group = f"({parameter.pattern})"
        if parameter.catch_all:
            return r"(?:/(.*))?", _CATCH_ALL
        if parameter.optional:
            return f"(?:/{group})?", _OPTIONAL
        return "/" + group, _CONSTRAINED if parameter.constrained else _PLAIN
    if "{" not in segment and "}" not in segment:
        return "/" + re.escape(segment), _LITERAL
    return "/" + _compile_complex(segment, names, template), _COMPLEX


def _compile_complex(segment: str, names: list[str], template: str) -> str:
    """A segment mixing text and parameters, such as `{name}.{ext}` (the last dot splits)."""
    regex, position = "", 0
    for found in _PARAMETER.finditer(segment):
        parameter = _parse_parameter(found.group(1), template)
        if parameter.optional or parameter.catch_all:
            raise RouteError(f"route {template!r}: {{{found.group(1)}}} must be a whole segment")
        names.append(parameter.name)
        regex += re.escape(segment[position : found.start()]) + f"({parameter.pattern})"
        position = found.end()
    literal_tail = segment[position:]
    if "{" in literal_tail or "}" in literal_tail:
        raise RouteError(f"route {template!r}: unbalanced braces in {segment!r}")
    return regex + re.escape(literal_tail)


def _parse_parameter(text: str, template: str) -> _Parameter:
    catch_all = text.startswith("*")
    text = text.lstrip("*")
    optional = text.endswith("?")
    text = text.rstrip("?")
    name, _, constraint = text.partition(":")
    if not name.isidentifier():
        raise RouteError(f"route {template!r}: {name!r} is not a parameter name")
    pattern = r"[^/]+"
    if constraint:
        if constraint.lower() not in _CONSTRAINTS:
            raise RouteError(f"route {template!r}: constraint {constraint!r} is not supported")
        pattern = _CONSTRAINTS[constraint.lower()]
    return _Parameter(name, pattern, optional, catch_all, bool(constraint))
