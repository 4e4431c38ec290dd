"""`outrider drain` against a scripted Envoy admin: the calls in order, waiting for connections, the timeout."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from outrider.envoy_command import cmd_drain


class FakeAdmin(ThreadingHTTPServer):
    calls: list[str]
    open_connections: list[int]  # what successive stats polls report; the last value repeats


class Handler(BaseHTTPRequestHandler):
    server: FakeAdmin

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.calls.append(f"POST {self.path}")
        self._answer(b"OK\n")

    def do_GET(self) -> None:
        self.server.calls.append(f"GET {self.path}")
        queue = self.server.open_connections
        active = queue.pop(0) if len(queue) > 1 else queue[0]
        self._answer(json.dumps({"stats": [
            {"name": "listener.0.0.0.0_10000.downstream_cx_active", "value": active},
            {"name": "listener.admin.downstream_cx_active", "value": 1}]}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[FakeAdmin]:
    server = FakeAdmin(("127.0.0.1", 0), Handler)
    server.calls, server.open_connections = [], [0]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def drain(admin: FakeAdmin, timeout: float, settle: float) -> int:
    url = f"http://127.0.0.1:{admin.server_address[1]}"
    return cmd_drain(argparse.Namespace(admin=url, timeout=timeout, settle=settle))


def test_fails_health_then_drains_then_waits_for_connections(admin: FakeAdmin) -> None:
    admin.open_connections = [3, 2, 1, 0]
    assert drain(admin, timeout=5, settle=0) == 0
    assert admin.calls[:2] == ["POST /healthcheck/fail", "POST /drain_listeners?graceful"]
    polls = admin.calls[2:]
    assert len(polls) == 4 and all(p.startswith("GET /stats?format=json") for p in polls)


def test_keeps_serving_for_the_settle_time_even_without_connections(admin: FakeAdmin) -> None:
    started = time.monotonic()
    assert drain(admin, timeout=5, settle=0.5) == 0
    assert 0.5 <= time.monotonic() - started < 2


def test_gives_up_at_the_timeout(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    admin.open_connections = [2]
    started = time.monotonic()
    assert drain(admin, timeout=0.5, settle=0) == 0  # the kubelet sends SIGTERM next either way
    assert 0.5 <= time.monotonic() - started < 2
    assert "2 connections still open" in capsys.readouterr().err


def test_no_admin_is_an_error() -> None:
    assert cmd_drain(argparse.Namespace(admin="http://127.0.0.1:1", timeout=1, settle=0)) == 1
