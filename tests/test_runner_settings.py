"""Settings, keys and host.json as the local host reads them."""

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from localrun.hostconfig import HostConfig, QueueOptions, parse_timespan
from localrun.keys import load_keys
from localrun.settings import apply_to_environ, load_settings, resolve

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def write_local_settings(root: Path, values: dict[str, str]) -> None:
    document = {"IsEncrypted": False, "Values": values}
    (root / "local.settings.json").write_text(json.dumps(document))


def test_environment_wins_then_local_settings_then_defaults(tmp_path: Path) -> None:
    write_local_settings(tmp_path, {"A": "file", "B": "file"})
    settings = load_settings(
        tmp_path, environ={"A": "env"}, defaults={"A": "default", "B": "default", "C": "default"}
    )
    assert settings["A"] == "env"
    assert settings["B"] == "file"
    assert settings["C"] == "default"


def test_no_local_settings_file_is_fine(tmp_path: Path) -> None:
    assert load_settings(tmp_path, environ={"X": "1"}) == {"X": "1"}


def test_apply_to_environ_never_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCALRUN_TEST_SET", "env")
    monkeypatch.delenv("LOCALRUN_TEST_UNSET", raising=False)
    apply_to_environ({"LOCALRUN_TEST_SET": "file", "LOCALRUN_TEST_UNSET": "file"})
    try:
        assert os.environ["LOCALRUN_TEST_SET"] == "env"
        assert os.environ["LOCALRUN_TEST_UNSET"] == "file"
    finally:
        os.environ.pop("LOCALRUN_TEST_UNSET", None)


def test_placeholders_resolve_inside_text() -> None:
    assert resolve("%PREFIX%-notices", {"PREFIX": "dev"}) == "dev-notices"
    assert resolve("no placeholders", {}) == "no placeholders"


def test_keys_from_settings_do_not_touch_the_state_dir(tmp_path: Path) -> None:
    keys = load_keys({"LOCAL_FUNCTION_KEY": "f", "LOCAL_MASTER_KEY": "m"}, tmp_path / "state")
    assert (keys.function_key, keys.master_key) == ("f", "m")
    assert not (tmp_path / "state").exists()


def test_generated_keys_are_kept_and_reused(tmp_path: Path) -> None:
    first = load_keys({}, tmp_path)
    second = load_keys({}, tmp_path)
    assert first == second
    assert len(first.function_key) >= 32
    assert first.function_key != first.master_key
    path = tmp_path / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["master_key"] == first.master_key


def test_a_key_setting_wins_over_the_stored_key(tmp_path: Path) -> None:
    stored = load_keys({}, tmp_path)
    keys = load_keys({"LOCAL_MASTER_KEY": "chosen"}, tmp_path)
    assert keys.master_key == "chosen"
    assert keys.function_key == stored.function_key


def test_key_checks() -> None:
    keys = load_keys({"LOCAL_FUNCTION_KEY": "f", "LOCAL_MASTER_KEY": "m"}, Path("/nonexistent"))
    assert keys.opens_function("f") and keys.opens_function("m")
    assert not keys.opens_function("x") and not keys.opens_function(None)
    assert keys.is_master("m") and not keys.is_master("f")


def test_the_projects_host_json() -> None:
    config = HostConfig.load(PROJECT_ROOT)
    assert config.route_prefix == "api"
    assert config.queues.max_dequeue_count == 5
    assert config.queues.message_encoding == "base64"


def test_host_json_defaults_and_overrides(tmp_path: Path) -> None:
    assert HostConfig.load(tmp_path) == HostConfig()
    document = {
        "extensions": {
            "http": {"routePrefix": ""},
            "queues": {"visibilityTimeout": "00:00:10", "maxPollingInterval": "00:00:02"},
        }
    }
    (tmp_path / "host.json").write_text(json.dumps(document))
    config = HostConfig.load(tmp_path)
    assert config.route_prefix == ""
    assert config.queues == QueueOptions(
        visibility_timeout=timedelta(seconds=10), max_polling_interval=timedelta(seconds=2)
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:30", timedelta(seconds=30)),
        ("01:02:03", timedelta(hours=1, minutes=2, seconds=3)),
        ("1.00:00:00", timedelta(days=1)),
        ("00:00:00.5", timedelta(milliseconds=500)),
    ],
)
def test_timespans(text: str, expected: timedelta) -> None:
    assert parse_timespan(text) == expected


def test_bad_timespan_raises() -> None:
    with pytest.raises(ValueError, match="TimeSpan"):
        parse_timespan("30s")
