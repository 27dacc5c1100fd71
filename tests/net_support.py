"""Network doubles for the hardening tests: a fake DNS and a misbehaving ServiceNow instance.

Both keep every byte on the loopback interface: the fake DNS answers only the names it is given
(with the addresses it is given, never connected to) and refuses everything else, including IP
literals other than loopback, so a bug can at worst fail to connect, never reach another host.
"""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class FakeDns:
    """A `socket.getaddrinfo` that knows only `names`; loopback goes to the real resolver."""

    def __init__(self, names: dict[str, list[str]] | None = None) -> None:
        self.names = dict(names or {})
        self.lookups: list[str] = []
        self._real = socket.getaddrinfo
        self._lock = threading.Lock()

    def __call__(
        self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[tuple[Any, ...]]:
        name = host.decode() if isinstance(host, bytes) else str(host)
        with self._lock:
            self.lookups.append(name)
        if name in LOOPBACK:
            return self._real(host, port, family, type, proto, flags)
        if name not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        port_number = int(port or 0)
        answers = []
        for address in self.names[name]:
            if ":" in address:
                answers.append(
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port_number, 0, 0))
                )
            else:
                answers.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port_number)))
        return answers

    def looked_up(self, name: str) -> bool:
        with self._lock:
            return name in self.lookups


@dataclass
class Reply:
    """One scripted answer of the rogue instance: raw bytes, or an action on the connection."""

    action: str = "send"  # send, reset, close, hang
    data: bytes = b""
    hang_seconds: float = 0.0


def http_reply(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Reply:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(content)}", "Connection: close"]
    if not any(name.lower() == "content-type" for name in headers or {}):
        lines.append("Content-Type: application/json")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return Reply("send", ("\r\n".join(lines) + "\r\n\r\n").encode() + content)


def chunked_reply(status: int, chunk: bytes, count: int) -> Reply:
    """A body of `count` chunks, without a Content-Length (so only reading can bound it)."""
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * count
    return Reply("send", head.encode() + chunks + b"0\r\n\r\n")


def normal_reply(path: str) -> Reply:
    """What a healthy instance answers: a token, or an empty Table API page."""
    if path.startswith("/oauth_token.do"):
        return http_reply(200, {"access_token": "rogue-access-" + "x" * 20, "expires_in": 1799})
    return http_reply(200, {"result": []})


@dataclass
class RogueInstance:
    """A ServiceNow-like HTTP server on 127.0.0.1 whose next answers are scripted.

    `script` maps a path prefix ("/oauth_token.do", "/api/now/table/") to the replies to give,
    in order; when a path has no scripted reply left, it answers like a healthy instance.
    """

    script: dict[str, list[Reply]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    default: Callable[[str], Reply] = normal_reply

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="rogue-instance", daemon=True)

    def start(self) -> "RogueInstance":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> "RogueInstance":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def then(self, prefix: str, *replies: Reply) -> "RogueInstance":
        with self._lock:
            self.script.setdefault(prefix, []).extend(replies)
        return self

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            self.requests.append(path)
            for prefix, replies in self.script.items():
                if path.startswith(prefix) and replies:
                    return replies.pop(0)
        return self.default(path)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with contextlib.closing(connection):
            connection.settimeout(5)
            path = _read_request_path(connection)
            reply = self._next_reply(path)
            if reply.action == "reset":
                linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # on, 0 s: close sends RST
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            elif reply.action == "hang":
                deadline = time.monotonic() + reply.hang_seconds
                while time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(0.02)
            elif reply.action == "send":
                with contextlib.suppress(OSError):
                    connection.sendall(reply.data)


def _read_request_path(connection: socket.socket) -> str:
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        while len(rest) < min(length, 65536):
            chunk = connection.recv(4096)
            if not chunk:
                break
            rest += chunk
    parts = data.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 else ""
