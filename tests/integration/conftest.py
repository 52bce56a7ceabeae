import socket

import pytest

from pgtest import BOOTSTRAP, REDIS_PORT, Env


def _reachable(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def services():
    host, port = BOOTSTRAP.rsplit(":", 1)
    assert _reachable(host, int(port)), "Kafka is not running: bash deploy/local/up.sh"
    assert _reachable("127.0.0.1", REDIS_PORT), "Redis is not running: bash deploy/local/up.sh"


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
