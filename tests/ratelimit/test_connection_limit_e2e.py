"""New connections per second per client address (`rate_limits.per_ip.new_connections_per_second`, the design's
"100 new connections per second per IP") through a real Envoy: its network rate limit filter asks the rate
limit service once per new connection with the peer's address (a substitution-formatted descriptor value,
envoyproxy/envoy#19875) and closes a connection that is over, before any byte of it is read."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict

RATE = 3
REQUEST = b"GET /health/live HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = example_config_dict()
    for section in ("transformations", "cache", "validation"):
        data.pop(section, None)  # not under test: fewer processes to start
    data["rate_limits"]["per_ip"]["new_connections_per_second"] = RATE
    stack = start_stack(tmp_path_factory.mktemp("connections"), data)
    yield stack
    stack.stop()


def answered(stack: Stack, source: str = "127.0.0.1") -> bool:
    """One new connection from `source`: True when it got an HTTP answer, False when Envoy closed it."""
    with socket.create_connection(("127.0.0.1", stack.data["listeners"][0]["port"]), timeout=10,
                                  source_address=(source, 0)) as conn:
        try:
            conn.sendall(REQUEST)
            return conn.recv(64).startswith(b"HTTP/1.1 200")
        except (ConnectionResetError, BrokenPipeError):
            return False


def closed_by_limit(stack: Stack) -> int:
    stats = httpx.get(f"{stack.admin_url}/stats?filter=^ratelimit.outrider_connections.cx_closed$", timeout=5).text
    return int(stats.split(":")[1]) if ":" in stats else 0


def test_a_burst_of_new_connections_from_one_address_is_cut_at_the_rate(gateway: Stack) -> None:
    before = closed_by_limit(gateway)
    # Wait for a full bucket: the fixture's start and other tests spent some of it.
    deadline = time.monotonic() + 10
    while not answered(gateway) and time.monotonic() < deadline:
        pass
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: answered(gateway), range(12)))
    elapsed = time.monotonic() - started
    ok, refused = results.count(True), results.count(False)
    # The bucket holds RATE (one was just spent by the poll) and refills RATE a second meanwhile.
    assert 1 <= ok <= RATE + int(RATE * elapsed) + 1, (ok, elapsed)
    assert refused >= 12 - (RATE + int(RATE * elapsed) + 1)
    assert closed_by_limit(gateway) - before >= refused  # Envoy's own count of what it closed

    # Another address has its own bucket.
    assert answered(gateway, source="127.0.0.2")

    # The bucket refills: a new connection from the first address is answered again within a second or so.
    deadline = time.monotonic() + 5
    while not answered(gateway):
        assert time.monotonic() < deadline, "the address never got a new connection again"
