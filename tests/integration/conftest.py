# SPDX-License-Identifier: Apache-2.0
import socket

import pytest

from pgtest import BOOTSTRAP, REDIS_PORT, Env


def _reachable(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_services: the test needs neither Kafka nor Redis (e.g. test_deploy.py)")


@pytest.fixture(scope="session")
def services():
    host, port = BOOTSTRAP.rsplit(":", 1)
    assert _reachable(host, int(port)), "Kafka is not running: bash deploy/local/up.sh"
    assert _reachable("127.0.0.1", REDIS_PORT), "Redis is not running: bash deploy/local/up.sh"


@pytest.fixture(autouse=True)
def _require_services(request):
    """Every test needs the shared Kafka and Redis unless marked no_services."""
    if request.node.get_closest_marker("no_services") is None:
        request.getfixturevalue("services")


@pytest.fixture(params=["exactly-once", "at-least-once"])
def env(request):
    """A test's own topics, group and cache entries; each worker test runs in
    both delivery modes."""
    e = Env(delivery=request.param)
    yield e
    e.close()


@pytest.fixture
def cache_env():
    """For tests that need the cache and topics but no delivery mode."""
    e = Env()
    yield e
    e.close()
