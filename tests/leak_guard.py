"""A pytest plugin that proves no secret leaks, over the whole session.

Everything the suite sees is captured: every log record of every logger at DEBUG (with its
traceback, so exception text too), every response the tests' API clients and the fuzzer receive,
every notice the webhook receiver and the Graph stand-in got, every event the event receiver got,
and what pytest reports (failures' exception text, captured stdout and stderr). The secret values
are every value the session's stand-ins hold as a secret (Key Vault secrets, ServiceNow client
secrets, API keys and the access and refresh tokens it issued, the notice and event webhook
secrets and the Graph secret) plus what tests register with `register_secret`. After each test
its captures are scanned for every secret known by then (a leak fails that test's teardown); at
the end of the session everything captured is scanned again for every secret known at the end,
so a value learnt late is still checked everywhere.
"""

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

# Shorter values (test fixtures such as "wrong" or "x") would match by chance.
MIN_SECRET_LENGTH = 10
_EXCERPT = 60

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> label (never printed with the value)
_current: list[str] = []
_archive: list[tuple[str, str]] = []  # (test id, everything captured during it)
_stacks: list[Any] = []


def register_secret(value: object, label: str = "registered secret") -> None:
    """Marks a value as secret: it must never show up in anything captured."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _secrets.setdefault(value, label)


def capture(where: str, text: str) -> None:
    """Adds text the suite saw (a response, a notice, an exception) to what is scanned."""
    with _lock:
        _current.append(f"[{where}] {text}")


def capture_response(response: Any) -> None:
    """A `requests` response: its status, headers and body. A trigger's push secret in the
    answer to its create or its rotation is where the contract shows it (once): there it is
    masked, and registered, so it is found anywhere else."""
    body = response.content.decode("utf-8", "replace") if response.content else ""
    secret = shown_push_secret(getattr(response, "request", None), body)
    if secret:
        register_secret(secret, "trigger push secret")
        body = body.replace(secret, "<push secret>")
    capture(f"response {response.status_code}", f"{dict(response.headers)}\n{body}")


def shown_push_secret(request: Any, body: str) -> str | None:
    """The push secret of a trigger create or push-secret rotation answer, else None."""
    method = getattr(request, "method", "") or ""
    path = (getattr(request, "path_url", "") or "").split("?")[0].rstrip("/")
    if method.upper() != "POST" or not path.endswith(("/triggers", "/push-secret")):
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    secret = document.get("push_secret") if isinstance(document, dict) else None
    return secret if isinstance(secret, str) and secret else None


def watch_stack(stack: Any) -> None:
    """The session's stand-ins: their secrets are harvested and their notices scanned."""
    _stacks.append(stack)


def known_secrets() -> dict[str, str]:
    with _lock:
        return dict(_secrets)


class _CaptureHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a record that cannot be formatted still counts
            text = f"{record.msg!r} {record.args!r}"
        capture(f"log {record.name} {record.levelname}", text)


def _harvest() -> None:
    """Registers every secret the session's stand-ins hold; captures the notices and events."""
    for stack in _stacks:
        register_secret(stack.webhook_secret, "NOTIFY_WEBHOOK_SECRET")
        register_secret(stack.event_webhook_secret, "EVENTS_WEBHOOK_SECRET")
        register_secret(stack.graph_secret, "GRAPH_CLIENT_SECRET")
        store = stack.keyvault.store
        with store._lock:
            secrets = [*store._live.values(), *store._deleted.values()]
            values = [(s.name, v.value) for s in secrets for v in s.versions]
        for name, value in values:
            register_secret(value, f"Key Vault secret {name}")
        state = stack.servicenow.state
        with state._lock:
            found = [
                (f"client secret of {c.client_id}", c.client_secret)
                for c in state._clients.values()
            ]
            found += [(f"API key {k.name}", k.value) for k in state._api_keys.values()]
            found += [("issued access token", token) for token in state._access_tokens]
            found += [("issued refresh token", token) for token in state._refresh_tokens]
        for label, value in found:
            register_secret(value, label)
        received = [delivery.to_json() for delivery in list(stack.webhook.received)]
        mails = [mail.to_json() for mail in list(stack.graph.mails)]
        if received or mails:
            capture("notices", json.dumps({"webhook": received, "mails": mails}, default=str))
        events = [delivery.to_json() for delivery in list(stack.event_webhook.received)]
        if events:
            capture("events", json.dumps(events, default=str))


def find_leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """One line per secret found in `text`: its label and the text around it, masked."""
    found = []
    for value, label in secrets.items():
        index = text.find(value)
        if index != -1:
            around = text[max(0, index - _EXCERPT) : index + len(value) + _EXCERPT]
            for other in sorted(secrets, key=len, reverse=True):  # mask every secret shown
                around = around.replace(other, "<SECRET>")
            found.append(f"{label}: ...{around}...")
    return found


def _install() -> tuple[logging.Handler, int]:
    handler = _CaptureHandler(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    return handler, previous


_installed: list[tuple[logging.Handler, int]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """What pytest itself shows: a failure's exception text, and the captured output."""
    if report.failed:
        capture(f"report {report.when}", report.longreprtext)
    output = report.capstdout + report.capstderr
    if output:
        capture(f"output {report.when}", output)


def pytest_configure(config: pytest.Config) -> None:
    _installed.append(_install())


@pytest.fixture(autouse=True)
def _no_secret_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    _harvest()
    with _lock:
        text = "\n".join(_current)
        _current.clear()
        _archive.append((request.node.nodeid, text))
    leaks = find_leaks(text, known_secrets())
    assert not leaks, "a secret leaked during this test:\n" + "\n".join(leaks)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for handler, previous in _installed:
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(previous)
    _installed.clear()
    _harvest()
    secrets = known_secrets()
    with _lock:
        archive = [*_archive, ("(between tests)", "\n".join(_current))]
    leaks = [f"{test}: {leak}" for test, text in archive for leak in find_leaks(text, secrets)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", "secret leak guard: FAILED", red=True)
            for line in leaks[:50]:
                reporter.write_line(line)
    elif reporter is not None and len(archive) > 1:
        size = sum(len(text) for _, text in archive)
        reporter.write("\n")
        reporter.write_sep(
            "-",
            f"secret leak guard: {len(secrets)} secret values, none in {size:,} characters "
            f"captured over {len(archive) - 1} tests (logs, responses, notices)",
        )
