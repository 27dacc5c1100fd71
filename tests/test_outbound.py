"""Outbound safety: instance URL rules, address checks, and the pinned, bounded HTTP calls.

No test resolves a real name: resolvers are injected, and `no_real_dns` fails any test that
reaches `socket.getaddrinfo` for anything but loopback.
"""

import gzip
import ipaddress
import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator

import pytest
import requests
import responses
from werkzeug.wrappers import Request, Response

from localrun.azurite import free_ports
from localrun.server import BackgroundServer
from localrun.tls import ca_bundle, server_context
from servicenow.instance_url import Origin
from servicenow.outbound import (
    InvalidInstanceUrl,
    OutboundBlocked,
    OutboundError,
    OutboundPolicy,
    OutboundResponse,
    _PinnedAdapter,
    check_address,
    normalise_instance_url,
    resolve_and_check,
    safe_request,
    send_to_address,
)

STRICT = OutboundPolicy()
LOCAL = OutboundPolicy(allow_local=True)
SUFFIXES = OutboundPolicy(allowed_suffixes=(".service-now.com", "servicenowservices.com"))
SECRET = "s3cr3t-token-value"
QUICK = (1.0, 2.0)


@pytest.fixture(autouse=True)
def no_real_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    real = socket.getaddrinfo
    leaks: list[str] = []

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost"):
            leaks.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "real DNS is not allowed in tests")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield leaks
    assert leaks == []


def resolver_for(*addresses: str, calls: list | None = None):
    def resolve(host, port, *args, **kwargs):
        if calls is not None:
            calls.append((host, port))
        family = {4: socket.AF_INET, 6: socket.AF_INET6}
        return [
            (
                family[ipaddress.ip_address(a.split("%")[0]).version],
                socket.SOCK_STREAM,
                6,
                "",
                (a, port),
            )
            for a in addresses
        ]

    return resolve


def failing_resolver(host, port, *args, **kwargs):
    raise socket.gaierror(socket.EAI_NONAME, f"Name or service not known: {host}")


# -- instance URLs ----------------------------------------------------------------------------

GOOD = [
    ("https://contoso.service-now.com", "https://contoso.service-now.com"),
    ("https://Contoso.Service-Now.COM/", "https://contoso.service-now.com"),
    ("HTTPS://contoso.service-now.com:443", "https://contoso.service-now.com"),
    ("https://contoso.service-now.com.", "https://contoso.service-now.com"),
    ("  https://contoso.service-now.com  ", "https://contoso.service-now.com"),
    ("https://contoso.servicenowservices.com", "https://contoso.servicenowservices.com"),
    ("https://itsm.contoso.co.uk", "https://itsm.contoso.co.uk"),
    ("https://1-2.example", "https://1-2.example"),
]

HOSTILE = [
    # scheme
    ("http://contoso.service-now.com", "https://"),
    ("ftp://contoso.service-now.com", "https://"),
    ("contoso.service-now.com", "start with https://"),
    ("//contoso.service-now.com", "start with https://"),
    ("https:/contoso.service-now.com", "start with https://"),
    ("https:contoso.service-now.com", "start with https://"),
    ("javascript:alert(1)", "start with https://"),
    ("", "start with https://"),
    ("https://", "no host"),
    ("https://:443", "no host"),
    ("https:///contoso.service-now.com", "no host"),
    # user info, query, fragment, path, port
    ("https://user:pass@contoso.service-now.com", "user name"),
    ("https://contoso.service-now.com@evil.com", "user name"),
    ("https://contoso.service-now.com%40evil.com", "not valid"),
    ("https://evil.com#@contoso.service-now.com", "fragment"),
    ("https://evil.com?@contoso.service-now.com", "query"),
    ("https://contoso.service-now.com?token=x", "query"),
    ("https://contoso.service-now.com/?", "query"),
    ("https://contoso.service-now.com#", "fragment"),
    ("https://contoso.service-now.com/navpage.do", "path"),
    ("https://contoso.service-now.com//", "path"),
    ("https://contoso.service-now.com/..", "path"),
    ("https://contoso.service-now.com:8443", "port"),
    ("https://contoso.service-now.com:", "port"),
    ("https://contoso.service-now.com:+443", "port"),
    ("https://contoso.service-now.com:443:443", "not valid"),
    # IP literals in every spelling
    ("https://127.0.0.1", "IP address"),
    ("https://127.0.0.1.", "IP address"),
    ("https://127.1", "IP address"),
    ("https://2130706433", "IP address"),
    ("https://0177.0.0.1", "IP address"),
    ("https://0x7f.1", "IP address"),
    ("https://0x7f000001", "IP address"),
    ("https://169.254.169.254", "IP address"),
    ("https://10.0.0.1", "IP address"),
    ("https://8.8.8.8", "IP address"),
    ("https://[::1]", "IP address"),
    ("https://[::ffff:127.0.0.1]", "IP address"),
    ("https://[::ffff:7f00:1]", "IP address"),
    ("https://[2001:4860:4860::8888]", "IP address"),
    ("https://[fe80::1%25eth0]", "IP address"),
    ("https://[::1", "not valid"),
    ("https://[::1]x", "not valid"),
    ("https://::1", "not valid"),
    # local and internal names
    ("https://localhost", "Local and internal"),
    ("https://LOCALHOST.", "Local and internal"),
    ("https://foo.localhost", "Local and internal"),
    ("https://printer.local", "Local and internal"),
    ("https://metadata.google.internal", "Local and internal"),
    ("https://1.0.0.127.in-addr.arpa", "Local and internal"),
    # malformed names
    ("https://servicenow", "not valid"),
    ("https://-contoso.service-now.com", "not valid"),
    ("https://contoso-.service-now.com", "not valid"),
    ("https://contoso_x.service-now.com", "not valid"),
    ("https://contoso..service-now.com", "not valid"),
    ("https://contoso.service-now.com..", "not valid"),
    ("https://contoso%2eservice-now.com", "not valid"),
    ("https://" + "a" * 64 + ".service-now.com", "not valid"),
    ("https://" + "a." * 127 + "com", "too long"),
    ("https://contoso.service-now.com/" + "a" * 2048, "too long"),
    # whitespace, control characters, backslashes
    ("https://contoso.service-now.com\n", "control characters"),
    ("https://contoso.service-now.com\r\nX: y", "control characters"),
    ("https://con toso.service-now.com", "control characters"),
    ("https://contoso.service\t-now.com", "control characters"),
    ("https://contoso.service-now.com\x00.evil.com", "control characters"),
    ("https://contoso\u200b.service-now.com", "control characters"),
    ("https://contoso.service-now.com\u3000", "control characters"),
    ("https:\\\\contoso.service-now.com", "backslashes"),
    ("https://evil.com\\@contoso.service-now.com", "backslashes"),
    # look-alikes
    ("https://c\u043entoso.service-now.com", "look-alike"),  # Cyrillic o
    ("https://xn--cntoso-5ve.service-now.com", "look-alike"),
    ("https://contoso.xn--p1ai", "look-alike"),
    ("https://\uff11\uff12\uff17.\uff10.\uff10.\uff11", "look-alike"),  # full-width 127.0.0.1
    ("https://\u24dbocalhost.com", "look-alike"),  # circled l
    ("https://contoso.service-now\u3002com", "look-alike"),  # ideographic full stop
]


@pytest.mark.parametrize(("raw", "expected"), GOOD)
def test_good_instance_urls_are_normalised(raw: str, expected: str) -> None:
    assert normalise_instance_url(raw, STRICT) == expected


@pytest.mark.parametrize(("raw", "fragment"), HOSTILE)
def test_hostile_instance_urls_are_refused(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidInstanceUrl) as caught:
        normalise_instance_url(raw, STRICT)
    assert fragment.lower() in caught.value.message.lower()
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("raw", [None, 42, b"https://contoso.service-now.com"])
def test_instance_url_must_be_text(raw: object) -> None:
    with pytest.raises(InvalidInstanceUrl, match="text"):
        normalise_instance_url(raw, STRICT)  # type: ignore[arg-type]


def test_messages_never_echo_the_url() -> None:
    with pytest.raises(InvalidInstanceUrl) as caught:
        normalise_instance_url(f"https://contoso.service-now.com/?token={SECRET}", STRICT)
    assert SECRET not in caught.value.message


LOCAL_GOOD = [
    ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ("http://127.0.0.1:8081/", "http://127.0.0.1:8081"),
    ("http://127.0.0.1", "http://127.0.0.1"),
    ("http://localhost:8081", "http://localhost:8081"),
    ("https://LOCALHOST.:8443", "https://localhost:8443"),
    ("http://[::1]:8081", "http://[::1]:8081"),
    ("http://[0:0:0:0:0:0:0:1]:8081", "http://[::1]:8081"),
    ("https://contoso.service-now.com", "https://contoso.service-now.com"),
]

LOCAL_HOSTILE = [
    ("http://contoso.service-now.com", "https://"),
    ("http://127.1:8081", "IP address"),
    ("http://127.0.0.2:8081", "IP address"),
    ("http://10.0.0.1:8081", "IP address"),
    ("http://[::ffff:127.0.0.1]:8081", "IP address"),
    ("http://foo.localhost:8081", "Local and internal"),
    ("https://foo.localhost", "Local and internal"),
    ("ftp://localhost:21", "https:// or http://"),
    ("http://localhost:0", "port"),
    ("http://localhost:65536", "port"),
    ("http://user@localhost:8081", "user name"),
    ("http://localhost:8081/path", "path"),
    ("http://localhost:8081?x=1", "query"),
]


@pytest.mark.parametrize(("raw", "expected"), LOCAL_GOOD)
def test_allow_local_admits_loopback_hosts(raw: str, expected: str) -> None:
    assert normalise_instance_url(raw, LOCAL) == expected


@pytest.mark.parametrize(("raw", "fragment"), LOCAL_HOSTILE)
def test_allow_local_admits_nothing_else(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidInstanceUrl) as caught:
        normalise_instance_url(raw, LOCAL)
    assert fragment.lower() in caught.value.message.lower()


@pytest.mark.parametrize(
    ("raw", "admitted"),
    [
        ("https://contoso.service-now.com", True),
        ("https://service-now.com", True),
        ("https://a.b.servicenowservices.com", True),
        ("https://evilservice-now.com", False),
        ("https://contoso.service-now.com.evil.com", False),
        ("https://service-now.com.evil.com", False),
        ("https://contoso.service-now.co", False),
        ("https://itsm.contoso.com", False),
    ],
)
def test_suffixes_match_on_label_boundary(raw: str, admitted: bool) -> None:
    if admitted:
        assert normalise_instance_url(raw, SUFFIXES) == raw
    else:
        with pytest.raises(InvalidInstanceUrl, match="must end with one of"):
            normalise_instance_url(raw, SUFFIXES)


def test_loopback_bypasses_suffixes_only_with_allow_local() -> None:
    policy = OutboundPolicy(allow_local=True, allowed_suffixes=(".service-now.com",))
    assert normalise_instance_url("http://127.0.0.1:8081", policy) == "http://127.0.0.1:8081"


def test_policy_from_environ() -> None:
    environ = {
        "ALLOW_LOCAL_INSTANCES": " TRUE ",
        "ALLOWED_INSTANCE_SUFFIXES": " .Service-Now.com , servicenowservices.com,, ",
    }
    assert OutboundPolicy.from_environ(environ) == OutboundPolicy(
        allow_local=True, allowed_suffixes=(".service-now.com", ".servicenowservices.com")
    )
    assert OutboundPolicy.from_environ({}) == OutboundPolicy()
    assert not OutboundPolicy.from_environ({"ALLOW_LOCAL_INSTANCES": "yes"}).allow_local
    assert not OutboundPolicy.from_environ({"ALLOW_LOCAL_INSTANCES": "1"}).allow_local


# -- addresses --------------------------------------------------------------------------------

BLOCKED_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.5.5.5", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "shared"),
    ("0.0.0.0", "unspecified"),  # noqa: S104
    ("0.1.2.3", None),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", None),
    ("240.0.0.1", None),
    ("192.0.2.1", None),
    ("198.18.0.1", None),
    ("192.0.0.8", None),
    ("168.63.129.16", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fc00::1", None),
    ("fd12:3456::1", None),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::127.0.0.1", None),
    ("2002:7f00:1::1", "loopback"),
    ("2002:a00:1::1", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("64:ff9b::a00:1", "private"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b:1::1", None),
    ("2001:db8::1", None),
    ("100::1", None),
]

PUBLIC_ADDRESSES = [
    "93.184.216.34",
    "8.8.8.8",
    "2606:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize(("address", "word"), BLOCKED_ADDRESSES)
@pytest.mark.parametrize("policy", [STRICT, LOCAL], ids=["strict", "allow_local"])
def test_non_public_addresses_are_blocked(
    address: str, word: str | None, policy: OutboundPolicy
) -> None:
    origin = Origin("https", "instance.example")
    with pytest.raises(OutboundBlocked) as caught:
        resolve_and_check(origin, policy, resolver_for(address))
    assert caught.value.kind == "blocked"
    assert "instance.example" in caught.value.message
    if word:
        assert word in caught.value.message


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_pass(address: str) -> None:
    checked = check_address(address, STRICT, "instance.example")
    assert checked == ipaddress.ip_address(address)


def test_any_non_public_address_blocks_the_host() -> None:
    resolver = resolver_for("93.184.216.34", "10.0.0.1")
    with pytest.raises(OutboundBlocked, match="private"):
        resolve_and_check(Origin("https", "instance.example"), STRICT, resolver)


def test_resolves_once_and_prefers_ipv4() -> None:
    calls: list = []
    resolver = resolver_for("2606:4700::1111", "93.184.216.34", "93.184.216.34", calls=calls)
    chosen = resolve_and_check(Origin("https", "instance.example"), STRICT, resolver)
    assert chosen == ipaddress.ip_address("93.184.216.34")
    assert calls == [("instance.example", 443)]


@pytest.mark.parametrize("resolver", [failing_resolver, resolver_for()])
def test_unresolvable_host_is_a_dns_error(resolver) -> None:
    with pytest.raises(OutboundError) as caught:
        resolve_and_check(Origin("https", "instance.example"), STRICT, resolver)
    assert caught.value.kind == "dns"
    assert "instance.example" in caught.value.message


def test_loopback_is_only_for_loopback_hosts_under_allow_local() -> None:
    assert check_address("127.0.0.1", LOCAL, "localhost")
    assert check_address("::1", LOCAL, "::1")
    with pytest.raises(OutboundBlocked):
        check_address("127.0.0.1", STRICT, "localhost")
    with pytest.raises(OutboundBlocked):
        check_address("127.0.0.1", LOCAL, "instance.example")
    with pytest.raises(OutboundBlocked, match="private"):
        check_address("10.0.0.1", LOCAL, "localhost")


def test_safe_request_refuses_before_any_connection() -> None:
    calls: list = []
    with pytest.raises(OutboundBlocked, match="IP address"):
        safe_request("GET", "https://10.0.0.1/", policy=STRICT, resolver=resolver_for(calls=calls))
    with pytest.raises(OutboundBlocked, match="fragment"):
        safe_request(
            "GET", "https://instance.example/x#y", policy=STRICT, resolver=resolver_for(calls=calls)
        )
    with pytest.raises(OutboundBlocked, match="must end with one of"):
        safe_request("GET", "https://instance.example/", policy=SUFFIXES, resolver=failing_resolver)
    assert calls == []


# -- the loopback test server -----------------------------------------------------------------


class StandIn:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[dict] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        self.seen.append(
            {
                "path": request.path,
                "query": request.query_string.decode(),
                "host": request.headers.get("Host"),
                "cookie": request.headers.get("Cookie"),
                "body": request.get_data(as_text=True),
            }
        )
        return self.respond(request)(environ, start_response)

    def drip(self) -> Iterator[bytes]:
        for _ in range(50):
            if self.release.wait(0.1):
                return
            yield b"x"

    def respond(self, request: Request) -> Response:
        if request.path == "/redirect":
            return Response("", 302, {"Location": "http://169.254.169.254/latest/meta-data/"})
        if request.path == "/big":
            return Response(b"x" * 5000)
        if request.path == "/big-chunked":
            return Response(iter([b"x" * 1000] * 5))
        if request.path == "/bomb":
            body = gzip.compress(b"\0" * 5_000_000)
            return Response(body, headers={"Content-Encoding": "gzip"})
        if request.path == "/gzip":
            body = gzip.compress(b'{"ok": true}')
            return Response(body, headers={"Content-Encoding": "gzip"})
        if request.path == "/drip":
            return Response(self.drip())
        if request.path == "/slow":
            self.release.wait(5)
            return Response("late")
        if request.path == "/cookie":
            return Response("{}", headers={"Set-Cookie": "glide_session=abc; Path=/"})
        if request.path == "/html":
            return Response("<html>hibernating</html>", content_type="text/html; charset=utf-8")
        return Response('{"result": []}', content_type="application/json")


@pytest.fixture(scope="module")
def shared_app() -> Iterator[StandIn]:
    yield (app := StandIn())
    app.release.set()


@pytest.fixture
def stand_in(shared_app: StandIn) -> Iterator[StandIn]:
    shared_app.seen.clear()
    shared_app.release.clear()
    yield shared_app
    shared_app.release.set()


@pytest.fixture(scope="module")
def server(shared_app: StandIn) -> Iterator[BackgroundServer]:
    with BackgroundServer(shared_app, name="outbound-test") as running:
        yield running


@pytest.fixture(scope="module")
def tls_server(shared_app: StandIn, cert_folder) -> Iterator[BackgroundServer]:
    context = server_context(cert_folder)
    with BackgroundServer(shared_app, ssl_context=context, name="outbound-tls") as running:
        yield running


def ipv6_loopback_works() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def secrets_absent(error: BaseException) -> None:
    """Neither the message nor the logged traceback holds the secret or the query string."""
    message = str(error) + error.message  # type: ignore[attr-defined]
    assert "token=" not in message
    assert SECRET not in message
    assert SECRET not in "".join(traceback.format_exception(error))


# -- calls ------------------------------------------------------------------------------------


def test_allow_local_loopback_http_works(server: BackgroundServer, stand_in: StandIn) -> None:
    response = safe_request(
        "GET", f"{server.url}/api/now/table/incident", policy=LOCAL, params={"a": "1"}
    )
    assert isinstance(response, OutboundResponse)
    assert response.status_code == 200
    assert response.json() == {"result": []}
    assert response.headers["content-type"] == "application/json"
    assert stand_in.seen[-1]["query"] == "a=1"


def test_loopback_needs_allow_local(server: BackgroundServer, stand_in: StandIn) -> None:
    with pytest.raises(OutboundBlocked):
        safe_request("GET", f"{server.url}/", policy=STRICT)
    assert stand_in.seen == []


def test_localhost_is_resolved_once_with_the_injected_resolver(
    server: BackgroundServer, stand_in: StandIn
) -> None:
    calls: list = []
    url = f"http://localhost:{server.port}/echo"
    resolver = resolver_for("::1", "127.0.0.1", calls=calls)
    response = safe_request("POST", url, policy=LOCAL, data={"k": "v"}, resolver=resolver)
    assert response.status_code == 200
    assert calls == [("localhost", server.port)]
    assert stand_in.seen[-1]["host"] == f"localhost:{server.port}"
    assert stand_in.seen[-1]["body"] == "k=v"


def test_connects_to_the_checked_address_not_the_name(
    server: BackgroundServer, stand_in: StandIn
) -> None:
    url = f"http://instance.example:{server.port}/api?x=1"
    response = send_to_address("GET", url, "127.0.0.1", headers={"Host": "evil.example"})
    assert response.status_code == 200
    assert stand_in.seen[-1]["host"] == f"instance.example:{server.port}"
    assert stand_in.seen[-1]["query"] == "x=1"


def test_tls_verifies_the_name_not_the_address(
    tls_server: BackgroundServer, cert_folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_bundle(cert_folder)))
    good = send_to_address("GET", f"https://localhost:{tls_server.port}/", "127.0.0.1")
    assert good.status_code == 200
    # The certificate also names 127.0.0.1: only checking the name can fail here.
    with pytest.raises(OutboundError) as caught:
        send_to_address(
            "GET", f"https://instance.example:{tls_server.port}/?token={SECRET}", "127.0.0.1"
        )
    assert caught.value.kind == "tls"
    secrets_absent(caught.value)


def test_tls_needs_a_trusted_certificate(
    tls_server: BackgroundServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(OutboundError) as caught:
        safe_request(
            "GET",
            f"https://localhost:{tls_server.port}/",
            policy=LOCAL,
            resolver=resolver_for("127.0.0.1"),
        )
    assert caught.value.kind == "tls"


def test_redirect_is_returned_not_followed(server: BackgroundServer, stand_in: StandIn) -> None:
    response = safe_request("GET", f"{server.url}/redirect", policy=LOCAL)
    assert response.status_code == 302
    assert response.headers["location"].startswith("http://169.254.169.254")
    assert [seen["path"] for seen in stand_in.seen] == ["/redirect"]


@pytest.mark.parametrize("path", ["/big", "/big-chunked", "/bomb"])
def test_too_large_body_stops(server: BackgroundServer, path: str) -> None:
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", f"{server.url}{path}", policy=LOCAL, max_bytes=4096)
    assert caught.value.kind == "too_large"
    assert "127.0.0.1" in caught.value.message


def test_compressed_body_is_decoded(server: BackgroundServer) -> None:
    assert safe_request("GET", f"{server.url}/gzip", policy=LOCAL).json() == {"ok": True}


def test_timeout(server: BackgroundServer, stand_in: StandIn) -> None:
    url = f"{server.url}/slow?token={SECRET}"
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", url, policy=LOCAL, headers={"X-Key": SECRET}, timeout=(1.0, 0.2))
    stand_in.release.set()
    assert caught.value.kind == "timeout"
    assert caught.value.message == "127.0.0.1 did not answer in time."
    secrets_absent(caught.value)


def test_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}/api?token={SECRET}"
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", url, policy=LOCAL, headers={"X-Key": SECRET}, timeout=QUICK)
    assert caught.value.kind == "connection"
    secrets_absent(caught.value)


@pytest.mark.parametrize(
    "headers",
    [{"X-Key": f"{SECRET}\r\nX-Injected: 1"}, {f"X-Key\r\n{SECRET}": "v"}, {"X-Key": f" {SECRET}"}],
)
def test_invalid_headers_never_leak(server: BackgroundServer, headers: dict) -> None:
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", f"{server.url}/?token={SECRET}", policy=LOCAL, headers=headers)
    assert caught.value.kind == "invalid_request"
    secrets_absent(caught.value)


def test_dns_failure_never_leaks() -> None:
    url = f"https://instance.example/api?token={SECRET}"
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", url, policy=STRICT, resolver=failing_resolver)
    assert caught.value.kind == "dns"
    secrets_absent(caught.value)


def test_cookies_are_never_kept(server: BackgroundServer, stand_in: StandIn) -> None:
    safe_request("GET", f"{server.url}/cookie", policy=LOCAL)
    safe_request("GET", f"{server.url}/", policy=LOCAL)
    assert stand_in.seen[-1]["cookie"] is None


def test_unpinned_requests_are_refused() -> None:
    prepared = requests.Request("GET", "http://127.0.0.1:1/").prepare()
    with pytest.raises(OutboundBlocked):
        _PinnedAdapter().send(prepared, timeout=QUICK)


def test_response_helpers(server: BackgroundServer) -> None:
    response = safe_request("GET", f"{server.url}/html", policy=LOCAL)
    assert response.text == "<html>hibernating</html>"
    with pytest.raises(ValueError):
        response.json()
    with pytest.raises(ValueError):
        OutboundResponse(204, requests.structures.CaseInsensitiveDict(), b"").json()


def test_works_with_the_responses_mock() -> None:
    """Other modules' tests mock ServiceNow with `responses`; the pinned adapter allows that."""
    url = "https://contoso.service-now.com/api/now/table/incident"
    with responses.RequestsMock() as mock:
        mock.get(url, json={"result": [{"sys_id": "1"}]})
        response = safe_request(
            "GET",
            url,
            policy=STRICT,
            params={"sysparm_limit": "1"},
            resolver=resolver_for("93.184.216.34"),
        )
        assert mock.calls[0].request.headers["Host"] == "contoso.service-now.com"
    assert response.json() == {"result": [{"sys_id": "1"}]}


def test_slow_drip_body_hits_the_overall_deadline(
    server: BackgroundServer, stand_in: StandIn
) -> None:
    started = time.monotonic()
    with pytest.raises(OutboundError) as caught:
        safe_request("GET", f"{server.url}/drip", policy=LOCAL, timeout=(0.2, 0.3))
    stand_in.release.set()
    assert caught.value.kind == "timeout"
    assert time.monotonic() - started < 2


def test_urllib3_logs_hold_no_query(
    server: BackgroundServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    safe_request("GET", f"{server.url}/api", policy=LOCAL, params={"x-sn-apikey": SECRET})
    assert "/api?[redacted]" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
def test_ipv6_loopback(shared_app: StandIn) -> None:
    with BackgroundServer(shared_app, host="::1", name="outbound-v6") as running:
        url = f"http://[::1]:{running.port}/"
        assert safe_request("GET", url, policy=LOCAL).status_code == 200
        assert shared_app.seen[-1]["host"] == f"[::1]:{running.port}"
        named = f"http://localhost:{running.port}/"
        assert (
            safe_request("GET", named, policy=LOCAL, resolver=resolver_for("::1")).status_code
            == 200
        )
