"""App settings the way the Functions host sees them.

Order: environment variables first, then `Values` of `local.settings.json` for names the
environment does not set, then any defaults the caller gives. `%NAME%` placeholders in trigger
properties are resolved from the same settings.
"""

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SETTINGS_FILE = "local.settings.json"
_PLACEHOLDER = re.compile(r"%([^%]+)%")


class MissingSettingError(LookupError):
    def __init__(self, name: str, where: str = "") -> None:
        self.name = name
        suffix = f" (used by {where})" if where else ""
        super().__init__(f"app setting '{name}' is not set{suffix}")


def read_local_settings(root: Path) -> dict[str, str]:
    """The `Values` of local.settings.json in `root`, or {} when there is no such file."""
    path = root / LOCAL_SETTINGS_FILE
    if not path.is_file():
        return {}
    document = json.loads(path.read_text(encoding="utf-8"))
    values = document.get("Values") or {}
    return {str(name): "" if value is None else str(value) for name, value in values.items()}


def load_settings(
    root: Path,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    settings = dict(defaults or {})
    settings.update(read_local_settings(root))
    settings.update(environ)
    return settings


def apply_to_environ(settings: Mapping[str, str]) -> None:
    """Puts every setting the environment lacks into os.environ, as the host does for the worker."""
    for name, value in settings.items():
        os.environ.setdefault(name, value)


def resolve(value: str, settings: Mapping[str, str], where: str = "") -> str:
    """Replaces each `%NAME%` in a trigger property with the setting NAME."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings:
            raise MissingSettingError(name, where)
        return settings[name]

    return _PLACEHOLDER.sub(lookup, value)
