"""Shared fixtures."""

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from localrun.azurite import Azurite, free_ports

# pyproject.toml puts the project root on sys.path (pythonpath), so the app imports.
# tests.leak_guard scans everything the session captures for the secrets it used.
pytest_plugins = ["tests.receiver_fixtures", "tests.leak_guard"]

if TYPE_CHECKING:
    from localrun.host import LocalHost
    from localrun.stack import LocalStack


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One Azurite for the whole session, on free ports, data in a temporary folder.

    Use `azurite.connection_string`; give each test its own queue or table names.
    """
    blob_port, queue_port, table_port = free_ports(3)
    server = Azurite(tmp_path_factory.mktemp("azurite"), blob_port, queue_port, table_port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def stack(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalStack"]:
    """Azurite and every stand-in, with the app settings pointing at them in os.environ."""
    import os

    from localrun.stack import LocalStack
    from tests import leak_guard

    local = LocalStack(tmp_path_factory.mktemp("stack"), azurite=azurite).start()
    leak_guard.watch_stack(local)
    saved = dict(os.environ)
    local.apply_process_environment()
    os.environ.update(local.settings())
    _clear_client_caches()
    try:
        yield local
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _clear_client_caches()
        local.stop()


def _clear_client_caches() -> None:
    from connections import clients, services
    from proxy import api as proxy_api
    from proxy.settings import proxy_settings
    from triggers.services import trigger_services
    from triggers.settings import trigger_settings

    cached_clients = (
        clients.credential,
        clients.table_service,
        clients.table_client,
        clients.queue_client,
        clients.secret_client,
    )
    for cached in cached_clients:
        cached.cache_clear()
    services.services.cache_clear()
    proxy_api._proxy.cache_clear()
    proxy_settings.cache_clear()
    trigger_services.cache_clear()
    trigger_settings.cache_clear()


@pytest.fixture(scope="session")
def app_host(stack: "LocalStack") -> Iterator["LocalHost"]:
    """The real function app served by the local host, wired to the stack."""
    import os

    from localrun.host import LocalHost, load_function_app
    from localrun.keys import Keys

    keys = Keys(function_key="test-function-key", master_key="test-master-key")
    host = LocalHost(load_function_app(), dict(os.environ), keys).start(port=0, triggers=False)
    try:
        yield host
    finally:
        host.stop()
