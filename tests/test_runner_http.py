"""The local host's HTTP semantics, served in-process from a small FunctionApp."""

import json
import logging
import queue
from collections.abc import Iterator

import azure.functions as func
import pytest
import requests
from werkzeug.test import Client

from localrun.host import LocalHost
from localrun.hostconfig import HostConfig
from localrun.keys import Keys

KEYS = Keys(function_key="function-key", master_key="master-key")
SETTINGS = {"TEST_SCHEDULE": "0 0 0 1 1 *", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
admin_calls: "queue.Queue[tuple[str, object]]" = queue.Queue()


@app.route(route="tenants/{tenant_id}/items/{item_id:int}", methods=["GET", "POST"])
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "method": req.method,
        "url": req.url,
        "route": dict(req.route_params),
        "params": dict(req.params),
        "header": req.headers.get("x-test"),
        "body": req.get_body().decode(),
    }
    return func.HttpResponse(json.dumps(body), status_code=201, mimetype="application/json")


@app.route(route="tenants/{tenant_id}/items/latest", methods=["GET"])
def latest(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("latest")


@app.route(route="optional/{name?}", methods=["GET"])
def optional(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params.get("name", "(none)"))


@app.route(route="files/{*path}", methods=["GET"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.route_params.get("path", ""))


@app.route(route="open", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def open_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("open", headers={"X-Extra": "yes"})


@app.route(route="admin-only", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def admin_only(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("admin")


@app.route(route="anymethod")
def any_method(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(req.method)


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret internal detail")


@app.route(route="big", methods=["POST"])
def big(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(str(len(req.get_body())))


@app.timer_trigger(arg_name="timer", schedule="%TEST_SCHEDULE%")
def nightly(timer: func.TimerRequest) -> None:
    admin_calls.put(("nightly", timer.past_due))


@app.queue_trigger(arg_name="msg", queue_name="work-items", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    admin_calls.put(("work", msg.get_body()))


@pytest.fixture(scope="module")
def host() -> Iterator[LocalHost]:
    local_host = LocalHost(app, SETTINGS, KEYS).start(port=0, triggers=False)
    yield local_host
    local_host.stop()


def get(host: LocalHost, path: str, **kwargs: object) -> requests.Response:
    return requests.get(host.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def with_key(key: str = "function-key") -> dict[str, dict[str, str]]:
    return {"headers": {"x-functions-key": key}}


def test_route_params_query_headers_and_body_reach_the_function(host: LocalHost) -> None:
    response = requests.post(
        host.url + "/api/tenants/contoso/items/42?limit=5",
        data=b"hello",
        headers={"x-functions-key": "function-key", "x-test": "yes"},
        timeout=10,
    )
    assert response.status_code == 201
    assert response.headers["Content-Type"] == "application/json"
    seen = response.json()
    assert seen["method"] == "POST"
    assert seen["route"] == {"tenant_id": "contoso", "item_id": "42"}
    assert seen["params"] == {"limit": "5"}
    assert seen["header"] == "yes"
    assert seen["body"] == "hello"
    assert seen["url"] == host.url + "/api/tenants/contoso/items/42?limit=5"


def test_literal_segments_win_over_parameters(host: LocalHost) -> None:
    assert get(host, "/api/tenants/contoso/items/latest", **with_key()).text == "latest"


def test_constraint_rejects_a_non_matching_value(host: LocalHost) -> None:
    assert get(host, "/api/tenants/contoso/items/abc", **with_key()).status_code == 404


def test_route_matching_ignores_case_of_literals_but_keeps_values(host: LocalHost) -> None:
    response = get(host, "/API/Tenants/Contoso/Items/7", **with_key())
    assert response.json()["route"] == {"tenant_id": "Contoso", "item_id": "7"}


def test_optional_and_catch_all_parameters(host: LocalHost) -> None:
    assert get(host, "/api/optional", **with_key()).text == "(none)"
    assert get(host, "/api/optional/x", **with_key()).text == "x"
    assert get(host, "/api/files/a/b/c.txt", **with_key()).text == "a/b/c.txt"


def test_text_response_gets_the_default_content_type(host: LocalHost) -> None:
    response = get(host, "/api/open")
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["X-Extra"] == "yes"


def test_method_not_allowed_is_405(host: LocalHost) -> None:
    response = requests.delete(host.url + "/api/tenants/contoso/items/42", timeout=10)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, POST"


def test_route_without_methods_takes_any_method(host: LocalHost) -> None:
    response = requests.patch(host.url + "/api/anymethod", timeout=10, **with_key())
    assert response.text == "PATCH"


@pytest.mark.parametrize("path", ["/api/nothing-here", "/", "/other/open", "/api"])
def test_unknown_route_is_404(host: LocalHost, path: str) -> None:
    assert get(host, path, **with_key()).status_code == 404


def test_anonymous_route_needs_no_key(host: LocalHost) -> None:
    assert get(host, "/api/open").status_code == 200


def test_function_route_without_key_is_401_with_empty_body(host: LocalHost) -> None:
    response = get(host, "/api/tenants/contoso/items/1")
    assert response.status_code == 401
    assert response.content == b""


def test_function_route_with_wrong_key_is_401(host: LocalHost) -> None:
    assert get(host, "/api/tenants/contoso/items/1", **with_key("nope")).status_code == 401
    assert get(host, "/api/tenants/contoso/items/1?code=nope").status_code == 401


def test_function_key_in_header_or_code_parameter(host: LocalHost) -> None:
    assert get(host, "/api/tenants/contoso/items/1", **with_key()).status_code == 201
    assert get(host, "/api/tenants/contoso/items/1?code=function-key").status_code == 201


def test_master_key_works_as_function_key(host: LocalHost) -> None:
    assert get(host, "/api/tenants/contoso/items/1", **with_key("master-key")).status_code == 201


def test_admin_level_route_needs_the_master_key(host: LocalHost) -> None:
    assert get(host, "/api/admin-only", **with_key()).status_code == 401
    assert get(host, "/api/admin-only", **with_key("master-key")).text == "admin"


def test_exception_is_500_with_empty_body_and_logged(
    host: LocalHost, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="localrun.functions"):
        response = get(host, "/api/boom", **with_key())
    assert response.status_code == 500
    assert response.content == b""
    failed = [record for record in caplog.records if "Functions.boom" in record.getMessage()]
    assert len(failed) == 1
    assert failed[0].getMessage().startswith("Executed 'Functions.boom' (Failed, Duration=")
    assert failed[0].exc_info is not None
    assert "secret internal detail" in str(failed[0].exc_info[1])


def test_one_log_line_per_invocation(host: LocalHost, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="localrun.functions"):
        get(host, "/api/open")
    lines = [
        record.getMessage() for record in caplog.records if record.name == "localrun.functions"
    ]
    assert len(lines) == 1
    assert lines[0].startswith("Executed 'Functions.open_route' (Succeeded, Duration=")
    assert lines[0].endswith("ms)")


def test_large_bodies_pass_through(host: LocalHost) -> None:
    body = b"x" * (5 * 1024 * 1024)
    response = requests.post(host.url + "/api/big", data=body, timeout=30, **with_key())
    assert response.text == str(len(body))


def admin_call(host: LocalHost, name: str, key: str = "master-key", **kwargs: object):
    kwargs.setdefault("json", {"input": ""})
    return requests.post(
        f"{host.url}/admin/functions/{name}",
        headers={"x-functions-key": key},
        timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )


def test_admin_call_runs_a_timer_function(host: LocalHost) -> None:
    response = admin_call(host, "nightly")
    assert response.status_code == 202
    assert admin_calls.get(timeout=10) == ("nightly", False)


def test_admin_call_gives_a_queue_function_the_input_as_message_body(host: LocalHost) -> None:
    assert admin_call(host, "work", json={"input": "payload"}).status_code == 202
    assert admin_calls.get(timeout=10) == ("work", b"payload")


def test_admin_call_names_are_case_insensitive(host: LocalHost) -> None:
    assert admin_call(host, "NIGHTLY").status_code == 202
    assert admin_calls.get(timeout=10)[0] == "nightly"


def test_admin_call_without_master_key_is_401(host: LocalHost) -> None:
    assert admin_call(host, "nightly", key="function-key").status_code == 401
    assert requests.post(host.url + "/admin/functions/nightly", timeout=10).status_code == 401
    assert admin_calls.empty()


def test_admin_call_for_unknown_function_is_404(host: LocalHost) -> None:
    assert admin_call(host, "no_such_function").status_code == 404


def test_admin_call_for_an_http_function_is_400(host: LocalHost) -> None:
    assert admin_call(host, "echo").status_code == 400


def test_admin_call_with_a_bad_body_is_400(host: LocalHost) -> None:
    assert admin_call(host, "nightly", json=None, data=b"{not json").status_code == 400


def test_route_prefix_from_host_json() -> None:
    local_host = LocalHost(app, SETTINGS, KEYS, config=HostConfig(route_prefix=""))
    client = Client(local_host.wsgi_app)
    assert client.get("/open").status_code == 200
    assert client.get("/api/open").status_code == 404


def test_route_prefix_with_several_segments() -> None:
    local_host = LocalHost(app, SETTINGS, KEYS, config=HostConfig(route_prefix="svc/v1"))
    client = Client(local_host.wsgi_app)
    assert client.get("/svc/v1/open").status_code == 200
    assert client.get("/svc/open").status_code == 404
