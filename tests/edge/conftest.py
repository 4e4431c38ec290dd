"""Raw HTTP/1.1 over a socket (httpx would normalise the paths under test), Envoy's counters, the edge configs."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness import Stack, example_config_dict


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET",
                timeout_s: float = 10.0) -> RawResponse:
    """One request with the request target sent byte for byte as given. Reads the response by its
    content-length (or until Envoy closes): waiting for the close would wait out Envoy's delayed_close_timeout
    (1 s) after each of its own replies."""
    lines = [f"{method} {target} HTTP/1.1", "host: gateway", "connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        parsed: dict[str, str] | None = None
        while chunk := sock.recv(65536):
            data += chunk
            if parsed is None and b"\r\n\r\n" in data:
                parsed = _head(data)
            if (parsed is not None and "content-length" in parsed
                    and len(data.partition(b"\r\n\r\n")[2]) >= int(parsed["content-length"])):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.decode("latin-1").split("\r\n", 1)[0]
    headers = _head(data)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        # A body ext_proc rewrote (the example's response transform) goes out chunked: handed back whole.
        body = _dechunk(body)
        del headers["transfer-encoding"]
    return RawResponse(int(status_line.split(" ")[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        data = rest[size + 2:]


def _head(data: bytes) -> dict[str, str]:
    lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v for k, v in (line.split(": ", 1) for line in lines if ": " in line)}


def counter(stack: Stack, name: str) -> int:
    """One of Envoy's counters from its admin interface (0 when it does not exist yet)."""
    text = httpx.get(f"{stack.admin_url}/stats", params={"filter": f"^{name}$"}, timeout=5).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def edge_config(**edge: Any) -> dict[str, Any]:
    """The example with an `edge` section. Per-IP limits are lifted: these tests send hundreds of anonymous
    requests from one address, which is not what per_ip is tested by."""
    data = example_config_dict()
    data["rate_limits"]["per_ip"] = {"requests_per_unit": 100_000, "unit": "second"}
    # No response cache: these tests read what the upstream received, request by request (a hit would answer
    # with an earlier request's echo, and would not count as a request that reached the upstream).
    data.pop("cache", None)
    if edge:
        data["edge"] = edge
    return data
