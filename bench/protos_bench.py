"""Why the Envoy API comes from `xds-protos` (protobuf, upb backend) and not `envoy-data-plane` (betterproto2).

    .venv/bin/python bench/protos_bench.py [--iterations 20000]

The per-request work of ext_authz's adapter, in both libraries: decode a ~1.1 KB CheckRequest (as Envoy
sends it: the request's headers, path, source address, context extensions), then build and encode an OK
CheckResponse with identity headers and dynamic metadata. xds-protos runs in this venv; envoy-data-plane
runs in a venv of its own (.run/bench-envoy-data-plane, created on the first run with pip), since both
claim Envoy's API. Prints µs per request for each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OTHER_VENV = ROOT / ".run" / "bench-envoy-data-plane"

HEADERS = {
    ":authority": "api.example.com", ":method": "GET", ":path": "/api/v1/messages/inbox?page=2&size=50",
    ":scheme": "https", "accept": "application/json", "accept-language": "en-GB,en;q=0.9",
    "authorization": "Bearer " + "e" * 420, "user-agent": "Mozilla/5.0 (X11; Linux x86_64) bench/1.0",
    "x-forwarded-for": "203.0.113.7", "x-forwarded-proto": "https", "x-request-id": "7f1c" * 8,
    "cookie": "sid=" + "c" * 64,
}

# The same measurement for both libraries; only the imports and the message API differ.
XDS_PROTOS = """
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

def make(headers):
    req = ext.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "GET", headers[":path"], headers[":authority"]
    http.scheme, http.protocol = "https", "HTTP/1.1"
    http.headers.update(headers)
    req.attributes.source.address.socket_address.address = "203.0.113.7"
    req.attributes.source.address.socket_address.port_value = 51234
    req.attributes.context_extensions.update({"route": "messages", "resource": "messages", "public": "false"})
    return req.SerializeToString()

def handle(wire):
    req = ext.CheckRequest.FromString(wire)
    headers = req.attributes.request.http.headers
    _ = (headers["authorization"], req.attributes.request.http.path, req.attributes.context_extensions["route"])
    resp = ext.CheckResponse()
    resp.status.code = 0
    for name, value in (("x-user-id", "alice"), ("x-user-roles", "user"), ("x-user-tier", "enterprise")):
        resp.ok_response.headers.append(base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value)))
    resp.dynamic_metadata.update({"user_id": "alice", "tier": "enterprise"})
    return resp.SerializeToString()
"""

ENVOY_DATA_PLANE = """
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest, CheckResponse, OkHttpResponse
from envoy_data_plane.envoy.config.core.v3 import HeaderValueOption, HeaderValue
from envoy_data_plane.google.rpc import Status
import betterproto2

def make(headers):
    raise NotImplementedError  # the wire bytes come from xds-protos, as Envoy would send them

def handle(wire):
    req = CheckRequest.parse(wire)
    headers = req.attributes.request.http.headers
    _ = (headers["authorization"], req.attributes.request.http.path, req.attributes.context_extensions["route"])
    identity = (("x-user-id", "alice"), ("x-user-roles", "user"), ("x-user-tier", "enterprise"))
    headers = [HeaderValueOption(header=HeaderValue(key=k, value=v)) for k, v in identity]
    resp = CheckResponse(status=Status(code=0), ok_response=OkHttpResponse(headers=headers))
    return bytes(resp)
"""

TIMER = """
import json, sys, time
wire = bytes.fromhex(sys.argv[1]); n = int(sys.argv[2])
for _ in range(min(n, 1000)):
    handle(wire)
start = time.perf_counter()
for _ in range(n):
    out = handle(wire)
elapsed = time.perf_counter() - start
print(json.dumps({"us": elapsed / n * 1e6, "response_bytes": len(out)}))
"""


def run(python: str, code: str, wire: bytes, n: int) -> dict[str, float]:
    out = subprocess.run([python, "-c", code + TIMER, wire.hex(), str(n)], capture_output=True, text=True,
                         check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def other_python() -> str:
    python = OTHER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OTHER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "envoy-data-plane"], check=True)
    return str(python)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(XDS_PROTOS), namespace)  # our own constant, shared with the subprocess
    wire = namespace["make"](HEADERS)  # type: ignore[operator]
    ours = run(sys.executable, XDS_PROTOS, wire, args.iterations)
    theirs = run(other_python(), ENVOY_DATA_PLANE, wire, max(1, args.iterations // 20))
    print(f"CheckRequest {len(wire)} bytes; decode it, build and encode an OK CheckResponse:\n")
    print("| library | µs per request | ratio |\n|---|---|---|")
    print(f"| xds-protos (protobuf upb) | {ours['us']:.1f} | 1.0 |")
    print(f"| envoy-data-plane (betterproto2) | {theirs['us']:.1f} | {theirs['us'] / ours['us']:.0f}× |")


if __name__ == "__main__":
    main()
