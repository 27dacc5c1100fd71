"""A small threaded HTTP(S) server for the local host and the stand-ins, built on werkzeug.

Each stand-in is a werkzeug WSGI app; `BackgroundServer` serves it on a loopback port in a
thread so tests and the run command can start and stop it in-process.
"""

import json
import logging
import ssl
import threading
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Response

log = logging.getLogger(__name__)


class _QuietHandler(WSGIRequestHandler):
    """Keeps werkzeug's per-request access log out of the output; each server logs what matters."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class BackgroundServer:
    """Serves a WSGI app on host:port (0 picks a free port) in a daemon thread."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "server",
    ) -> None:
        self.name = name
        self._server: BaseWSGIServer = make_server(
            host,
            port,
            app,
            threaded=True,
            ssl_context=ssl_context,
            request_handler=_QuietHandler,
        )
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        scheme = "https" if ssl_context else "http"
        self.port: int = self._server.server_port
        self.url = f"{scheme}://{host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self.name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that never began
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ServedStandIn:
    """Start, stop and `with` for a stand-in whose `_server` is a BackgroundServer."""

    _server: BackgroundServer
    label = "stand-in"

    def start(self) -> Self:
        self._server.start()
        log.info("%s listening on %s", self.label, self._server.url)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def json_reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )
