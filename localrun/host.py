"""The local Functions host: serves a FunctionApp the way the Azure Functions host does.

Everything comes from the app's own registered functions: HTTP triggers at
`/<routePrefix>/<route>` with their methods and auth levels, the admin call
`POST /admin/functions/{name}` (master key) that runs a non-HTTP function now, timer triggers on
their NCRONTAB schedules and queue triggers on Azure Storage queues.

It stops as the Functions host does: no new request, message or occurrence, then the worker is
told to shut down (SIGTERM, as the host signals its worker process; in the run command the
worker is this process) and the invocations in flight get a grace period to end.
"""

import contextlib
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.functions.decorators.core import Trigger
from azure.functions.decorators.function_app import FunctionRegister
from azure.functions.decorators.http import HttpTrigger
from azure.functions.decorators.queue import QueueTrigger
from azure.functions.decorators.timer import TimerTrigger
from azure.functions.queue import QueueMessage
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from localrun import ncrontab
from localrun.clock import Clock, SystemClock
from localrun.hostconfig import HostConfig
from localrun.invoker import InvocationFailed, invoke
from localrun.keys import Keys, load_keys
from localrun.queues import QueueListener
from localrun.routes import RouteTemplate, compile_route
from localrun.server import BackgroundServer
from localrun.settings import (
    PROJECT_ROOT,
    MissingSettingError,
    apply_to_environ,
    load_settings,
    resolve,
)
from localrun.timers import TimerScheduler

log = logging.getLogger(__name__)

DEFAULT_PORT = 7071
PORT_SETTING = "LOCAL_PORT"
STATE_DIR = ".localrun"
KEY_HEADER = "x-functions-key"
KEY_QUERY = "code"
DEFAULT_STORAGE_SETTING = "AzureWebJobsStorage"
_ENCODED_SLASH = re.compile(r"%2[fF]")
_INDEXED: "weakref.WeakKeyDictionary[FunctionRegister, list[func.Function]]" = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class HttpFunction:
    name: str
    user_function: Callable[..., Any]
    binding_name: str
    route: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    auth_level: str


class LocalHost:
    def __init__(
        self,
        app: FunctionRegister,
        settings: Mapping[str, str],
        keys: Keys,
        *,
        config: HostConfig | None = None,
        clock: Clock | None = None,
        signal_worker: bool = False,
    ) -> None:
        """`signal_worker`: this process is the app's worker, which `stop` sends SIGTERM (the run
        command); a test session serving the app in-process is not."""
        self.settings = dict(settings)
        self.keys = keys
        self.config = config or HostConfig()
        self.clock = clock or SystemClock()
        self.http_functions: list[HttpFunction] = []
        self.timers: dict[str, TimerScheduler] = {}
        self.queues: dict[str, QueueListener] = {}
        self._admin_runners: dict[str, Callable[[str], None]] = {}
        self._admin_threads: list[threading.Thread] = []
        self._server: BackgroundServer | None = None
        self._signal_worker = signal_worker
        for function in indexed_functions(app):
            self._register(function)
        self.http_functions.sort(key=lambda function: function.route.precedence)

    # -- registration --------------------------------------------------------------------------

    def _register(self, function: func.Function) -> None:
        name = function.get_function_name()
        trigger = function.get_trigger()
        user_function = function.get_user_function()
        if isinstance(trigger, HttpTrigger):
            self.http_functions.append(_http_function(name, trigger, user_function))
        elif isinstance(trigger, TimerTrigger):
            self._register_timer(name, trigger, user_function)
        elif isinstance(trigger, QueueTrigger):
            self._register_queue(name, trigger, user_function)
        else:
            log.warning("function %s: %s is not supported locally; skipped", name, _kind(trigger))

    def _register_timer(
        self, name: str, trigger: TimerTrigger, user_function: Callable[..., Any]
    ) -> None:
        expression = resolve(trigger.schedule, self.settings, where=name)
        try:
            schedule = ncrontab.parse(expression)
        except ncrontab.CronError as exc:
            raise ncrontab.CronError(f"function {name}: {exc}") from None
        scheduler = TimerScheduler(
            name,
            user_function,
            trigger.name,
            schedule,
            run_on_startup=bool(trigger.run_on_startup),
            clock=self.clock,
        )
        self.timers[name] = scheduler
        self._admin_runners[name.lower()] = lambda _input: _run_timer(scheduler)

    def _register_queue(
        self, name: str, trigger: QueueTrigger, user_function: Callable[..., Any]
    ) -> None:
        queue_name = resolve(trigger.queue_name, self.settings, where=name)
        connection = self._connection_string(trigger.connection or DEFAULT_STORAGE_SETTING, name)
        self.queues[name] = QueueListener(
            name, user_function, trigger.name, queue_name, connection, self.config.queues
        )

        def run(text: str) -> None:
            _run_queue_function(name, user_function, trigger.name, text)

        self._admin_runners[name.lower()] = run

    def _connection_string(self, setting: str, function_name: str) -> str:
        for candidate in (setting, "AzureWebJobs" + setting):
            if self.settings.get(candidate):
                return self.settings[candidate]
        raise MissingSettingError(setting, function_name)

    # -- serving -------------------------------------------------------------------------------

    def start(
        self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, triggers: bool = True
    ) -> "LocalHost":
        """Serves HTTP on host:port (0: a free port); with `triggers`, runs timers and queues."""
        self._server = BackgroundServer(self.wsgi_app, host, port, name="functions-host").start()
        if triggers:
            for scheduler in self.timers.values():
                scheduler.start()
            for listener in self.queues.values():
                listener.start()
        return self

    def wait_for_admin_runs(self, timeout: float = 30.0) -> None:
        """Waits until every function started by an admin call so far has finished."""
        for thread in list(self._admin_threads):
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"admin run {thread.name} still running after {timeout}s")

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Takes no more requests, messages or occurrences, tells the worker to shut down, and
        waits up to `timeout` seconds in all for the invocations in flight. Returns the threads
        still running then (the Functions host would now end its worker)."""
        deadline = time.monotonic() + timeout
        if self._server is not None:
            self._server.stop()
            self._server = None
        triggers = {**self.queues, **self.timers}  # by function name
        for trigger in triggers.values():
            trigger.request_stop()
        if self._signal_worker:
            os.kill(os.getpid(), signal.SIGTERM)
        running = [*triggers.items(), *((thread.name, thread) for thread in self._admin_threads)]
        for _, part in running:
            part.join(max(0.0, deadline - time.monotonic()))
        self._admin_threads.clear()
        return [name for name, part in running if part.is_alive()]

    def __enter__(self) -> "LocalHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the host is not started")
        return self._server.url

    def describe(self) -> list[str]:
        """One line per function, as Core Tools lists them at start."""
        base = self.url if self._server else ""
        prefix = f"/{self.config.route_prefix}" if self.config.route_prefix else ""
        lines = []
        for function in self.http_functions:
            methods = ",".join(sorted(function.methods or {"ALL"}))
            route = function.route.template.strip("/")
            lines.append(f"{function.name}: [{methods}] {base}{prefix}/{route}")
        for name, scheduler in self.timers.items():
            lines.append(f"{name}: timerTrigger ({scheduler.schedule.expression})")
        for name, listener in self.queues.items():
            lines.append(f"{name}: queueTrigger ({listener.queue_name})")
        return lines

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        response = self.handle(Request(environ))
        return response(environ, start_response)

    def handle(self, request: Request) -> Response:
        path = route_path(request).strip("/")
        segments = path.split("/")
        if segments[0].lower() == "admin":
            return self._admin(request, segments[1:])
        prefix = self.config.route_prefix.lower()
        if not prefix:
            return self._http(request, path)
        if path.lower() == prefix:
            return self._http(request, "")
        if not path.lower().startswith(prefix + "/"):
            return Response(status=404)
        return self._http(request, path[len(prefix) + 1 :])

    # -- HTTP triggers -------------------------------------------------------------------------

    def _http(self, request: Request, path: str) -> Response:
        matched = []
        for function in self.http_functions:
            route_params = function.route.match(path)
            if route_params is None:
                continue
            if function.methods is None or request.method in function.methods:
                return self._call_http(function, request, route_params)
            matched.append(function)
        if not matched:
            return Response(status=404)
        allowed = sorted({method for function in matched for method in function.methods or ()})
        return Response(status=405, headers={"Allow": ", ".join(allowed)})

    def _call_http(
        self, function: HttpFunction, request: Request, route_params: dict[str, str]
    ) -> Response:
        if not self._authorized(function.auth_level, request):
            return Response(status=401)
        http_request = func.HttpRequest(
            method=request.method,
            url=raw_url(request),
            headers=dict(request.headers.items()),
            params=request.args.to_dict(),
            route_params=route_params,
            body=request.get_data(),
        )
        arguments = {function.binding_name: http_request}
        try:
            result = invoke(function.name, function.user_function, **arguments)
        except InvocationFailed:
            return Response(status=500)
        return _to_response(function.name, result)

    def _authorized(self, auth_level: str, request: Request) -> bool:
        key = _presented_key(request)
        if auth_level == "anonymous":
            return True
        if auth_level == "admin":
            return self.keys.is_master(key)
        return self.keys.opens_function(key)

    # -- admin API -----------------------------------------------------------------------------

    def _admin(self, request: Request, segments: list[str]) -> Response:
        key = _presented_key(request)
        if not self.keys.is_master(key):
            return Response(status=401)
        if len(segments) != 2 or segments[0].lower() != "functions":
            return Response(status=404)
        if request.method != "POST":
            return Response(status=405, headers={"Allow": "POST"})
        name = segments[1]
        if any(function.name.lower() == name.lower() for function in self.http_functions):
            return Response(status=400)  # HTTP functions are called over HTTP
        runner = self._admin_runners.get(name.lower())
        if runner is None:
            return Response(status=404)
        try:
            text = _admin_input(request.get_data())
        except ValueError:
            return Response(status=400)
        self._start_admin_run(name, runner, text)
        return Response(status=202)

    def _start_admin_run(self, name: str, runner: Callable[[str], None], text: str) -> None:
        self._admin_threads = [thread for thread in self._admin_threads if thread.is_alive()]
        thread = threading.Thread(target=runner, args=(text,), name=f"admin-{name}", daemon=True)
        self._admin_threads.append(thread)
        thread.start()


def _raw_target(request: Request) -> str:
    """The request target as the client sent it (werkzeug's `path` is already decoded)."""
    return request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path


def route_path(request: Request) -> str:
    """The path routes are matched on, as the Functions host (ASP.NET Core) gives it: percent
    escapes decoded, except an encoded '/' (%2F), which stays as it was sent and so never
    splits a segment."""
    raw = _raw_target(request).split("?", 1)[0].split("#", 1)[0]
    pieces = _ENCODED_SLASH.split(raw)
    separators = _ENCODED_SLASH.findall(raw)
    decoded = [urllib.parse.unquote(piece, errors="replace") for piece in pieces]
    return "".join(part + sep for part, sep in zip(decoded, [*separators, ""], strict=True))


def raw_url(request: Request) -> str:
    """The URL as sent (path and query undecoded), which is what `HttpRequest.url` carries."""
    target = _raw_target(request)
    if not target.startswith("/"):
        return request.url
    return request.host_url.rstrip("/") + target


def _presented_key(request: Request) -> str | None:
    return request.headers.get(KEY_HEADER) or request.args.get(KEY_QUERY)


def indexed_functions(app: FunctionRegister) -> list[func.Function]:
    """`app.get_functions()`, once per app: a second call on one app fails its duplicate check."""
    if app not in _INDEXED:
        _INDEXED[app] = app.get_functions()
    return _INDEXED[app]


def _http_function(
    name: str, trigger: HttpTrigger, user_function: Callable[..., Any]
) -> HttpFunction:
    methods = None
    if trigger.methods:
        methods = frozenset(
            str(getattr(method, "value", method)).upper() for method in trigger.methods
        )
    level = getattr(trigger.auth_level, "value", trigger.auth_level) or "function"
    return HttpFunction(
        name=name,
        user_function=user_function,
        binding_name=trigger.name,
        route=compile_route(trigger.route if trigger.route is not None else name),
        methods=methods,
        auth_level=str(level).lower(),
    )


def _kind(trigger: Trigger) -> str:
    return str(getattr(trigger, "type", type(trigger).__name__))


def _to_response(function_name: str, result: Any) -> Response:
    if isinstance(result, func.HttpResponse):
        headers = Headers(list(result.headers.items()))
        if "Content-Type" not in headers:
            mimetype = result.mimetype
            if mimetype.startswith("text/"):
                mimetype = f"{mimetype}; charset={result.charset}"
            headers["Content-Type"] = mimetype
        return Response(result.get_body() or b"", status=result.status_code, headers=headers)
    if isinstance(result, str):
        return Response(result, status=200, content_type="text/plain; charset=utf-8")
    if result is None:
        return Response(status=204)
    log.error("function %s returned %s, not an HttpResponse", function_name, type(result).__name__)
    return Response(status=500)


def _admin_input(body: bytes) -> str:
    """The `input` of the admin call's JSON body, as text ("" when there is no body)."""
    if not body.strip():
        return ""
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the admin call takes a JSON object")
    value = document.get("input", "")
    return value if isinstance(value, str) else json.dumps(value)


def _run_timer(scheduler: TimerScheduler) -> None:
    scheduler.run_now()


def _run_queue_function(
    name: str, user_function: Callable[..., Any], binding_name: str, text: str
) -> None:
    now = datetime.now(UTC)
    message = QueueMessage(
        id=str(uuid.uuid4()),
        body=text.encode("utf-8"),
        dequeue_count=1,
        insertion_time=now,
        time_next_visible=now,
    )
    with contextlib.suppress(InvocationFailed):  # logged; an admin run has nothing to retry
        invoke(name, user_function, **{binding_name: message})


def load_function_app(root: Path = PROJECT_ROOT, module_name: str = "function_app") -> Any:
    """Imports `function_app.py` from `root` and returns its FunctionApp, as the worker finds it."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(module_name)
    for value in vars(module).values():
        if isinstance(value, FunctionRegister):
            return value
    raise LookupError(f"{module_name}.py defines no azure.functions.FunctionApp")


def serve(
    root: Path = PROJECT_ROOT,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    defaults: Mapping[str, str] | None = None,
    triggers: bool = True,
    signal_worker: bool = True,
) -> LocalHost:
    """Loads settings (environment, then local.settings.json, then `defaults`), puts them into
    os.environ, imports the app and starts the host on `port` (else LOCAL_PORT, else 7071).
    This process is the app's worker: `stop` sends it SIGTERM (see `LocalHost`)."""
    settings = load_settings(root, defaults=defaults)
    apply_to_environ(settings)
    keys = load_keys(settings, root / STATE_DIR)
    app = load_function_app(root)
    if port is None:
        port = int(settings.get(PORT_SETTING) or DEFAULT_PORT)
    local_host = LocalHost(
        app, settings, keys, config=HostConfig.load(root), signal_worker=signal_worker
    )
    return local_host.start(host, port, triggers=triggers)
