"""End-to-end fixtures: one real `fulfillment serve` per backend and test module.

Starting a server takes a second or two, so a module shares one per backend; its tests
use their own SKUs, keys and customers and never depend on the database being empty.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import BACKENDS, empty_database

from .server import Server, start_server


@pytest.fixture(scope="module", params=BACKENDS)
def server_database_url(request: pytest.FixtureRequest, _migrated_urls: dict[str, str]) -> str:
    """A migrated database on each backend in turn, emptied once for the module."""
    url = _migrated_urls[str(request.param)]
    empty_database(url)
    return url


@pytest.fixture(scope="module")
def server(server_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`fulfillment serve` with one in-process worker, on the module's database.

    It is asked for every interface, but has no API keys: it must bind to loopback only.
    """
    with start_server(
        server_database_url, args=["--host", "0.0.0.0"], log_dir=tmp_path_factory.mktemp("serve")
    ) as srv:
        yield srv
