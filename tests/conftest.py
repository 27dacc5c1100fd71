"""Shared fixtures."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The project root on sys.path, so plain `pytest` (not only `python -m pytest`) imports the app.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localrun.azurite import Azurite, free_ports


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
