"""The local function key and master key.

Taken from the settings LOCAL_FUNCTION_KEY and LOCAL_MASTER_KEY; a key that is not set is
generated once and kept in `<state dir>/keys.json` (the state dir is git-ignored), so it stays
the same from one start to the next.
"""

import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

FUNCTION_KEY_SETTING = "LOCAL_FUNCTION_KEY"
MASTER_KEY_SETTING = "LOCAL_MASTER_KEY"
KEYS_FILE = "keys.json"


@dataclass(frozen=True)
class Keys:
    function_key: str
    master_key: str

    def is_master(self, candidate: str | None) -> bool:
        return _same(candidate, self.master_key)

    def opens_function(self, candidate: str | None) -> bool:
        """The function key opens function-level routes; so does the master key."""
        return _same(candidate, self.function_key) or self.is_master(candidate)


def _same(candidate: str | None, key: str) -> bool:
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode(), key.encode())


def load_keys(settings: Mapping[str, str], state_dir: Path) -> Keys:
    function_key = settings.get(FUNCTION_KEY_SETTING)
    master_key = settings.get(MASTER_KEY_SETTING)
    if function_key and master_key:
        return Keys(function_key, master_key)
    generate = {name: lambda: secrets.token_urlsafe(32) for name in ("function_key", "master_key")}
    stored = stored_values(state_dir / KEYS_FILE, generate)
    return Keys(function_key or stored["function_key"], master_key or stored["master_key"])


def stored_values(path: Path, generate: Mapping[str, Callable[[], str]]) -> dict[str, str]:
    """The values kept in `path` (a JSON file only the owner can read), generating and writing
    any of `generate`'s names that are missing; so they stay the same from one start to the
    next."""
    stored = _read_stored(path)
    values = dict(stored)
    for name, make in generate.items():
        values[name] = values.get(name) or make()
    if values != stored:
        _write_stored(path, values)
    return values


def _read_stored(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return {name: value for name, value in document.items() if isinstance(value, str)}


def _write_stored(path: Path, keys: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(keys, file, indent=2)
        file.write("\n")
