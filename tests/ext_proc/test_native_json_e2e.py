"""The Lua response policy in a real Envoy against ext_proc's answer through a real Envoy: one upstream of the
test's own serves the same bytes to a route of the gateway (ext_proc transforms them) and to an Envoy whose
only filter is a Lua filter built from ext_proc/lua/json_policy.lua (the native path); both answers must be
the same status and body bytes (the clock masked: `${now()}` is read at each response)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ext_proc.config import route_settings
from ext_proc.envoy import ExtProcContribution
from ext_proc.native_json import NAMESPACE, REQUEST_ID_KEY, json_policy_lua, response_params
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.supervisor import envoy_argv
from tests.conftest import start_stack
from tests.ext_proc.conftest import config_from, ext_proc_config_dict
from tests.ext_proc.raw_upstream import Canned, RawUpstream
from tests.harness import Stack

POLICY: dict[str, Any] = {"remove_json_fields": ["password", "internal_id", "secret_key"],
                          "add_json_fields": {"api_version": "v1", "meta.gw": 1.5, "timestamp": "${now()}"}}
SMALL = 1024  # max_body_bytes of the oversize routes
ROUTES: list[dict[str, Any]] = [
    {"name": f"lab-njson{suffix}", "match": {"prefix": f"/api/v1/lab/njson{suffix}/"}, "upstream": "raw",
     "public": True, "validation": {"enabled": False}, "transformations": {"response": POLICY, **limits}}
    for suffix, limits in (("", {}), ("-pass", {"max_body_bytes": SMALL}),
                           ("-reject", {"max_body_bytes": SMALL, "oversize_body": "reject"}))]
FILTER = "outrider.native_json_test"
# The request side of the native path records the request id for the response side (nreq's script does it
# in the gateway): the 502 body names it as ext_proc's error_response does.
SCRIPT = json_policy_lua() + f"""
function envoy_on_request(handle)
  handle:streamInfo():dynamicMetadata():set("{NAMESPACE}", "{REQUEST_ID_KEY}",
    handle:headers():get("x-request-id") or "")
end
function envoy_on_response(handle)
  outrider_json_response(handle, handle:metadata():get("response"))
end
"""

BODIES: dict[str, Canned] = {
    "plain": Canned(b'{"id":1,"password":"p","items":[{"secret_key":"s","v":0.1},{"internal_id":9}],"n":null}'),
    "unicode": Canned('{"name":"Zoë 😀","esc":"\\u00e9\\n\\"","raw":"\u2028"}'.encode()),
    "numbers": Canned(b'[1e16,1e-5,-0,-0.0,123456789012345678901234567890,2.5E+3,0.30000000000000004,1E400]'[:-7]
                      + b"5e-324]"),
    "duplicates": Canned(b'{"a":1,"b":2,"a":{"password":3,"c":4},"meta":{"x":1}}'),
    "bom": Canned(b'\xef\xbb\xbf {"a" : [ 1 , 2 ] }\n'),
    "lone": Canned(b'{"s":"\\ud800 \xc3\xa9","k":"\\ud83d\\ude00"}'),
    "array": Canned(b'[{"password":1},{"password":2}]'),
    "scalar": Canned(b'"just text"'),
    "empty": Canned(b""),
    "not-json-type": Canned(b"{NaN", content_type="text/plain"),
    "json-suffix": Canned(b'{"password":1}', content_type="application/problem+json; charset=utf-8"),
    "chunked": Canned(json.dumps({"password": "p", "pad": "x" * 150_000}).encode(), chunked=True),
    "big": Canned(b'{"pad":"' + b"y" * 300_000 + b'","password":"p"}'),
    # above Envoy's 1 MiB connection buffer: neither path can hold it
    "huge-chunked": Canned(b'{"pad":"' + b"z" * (2 << 20) + b'","password":"p"}', chunked=True),
    "huge": Canned(b'{"pad":"' + b"z" * (2 << 20) + b'","password":"p"}'),
    # refused: the same 502 as ext_proc's error_response
    "nan": Canned(b'{"a":NaN}'),
    "utf8": Canned(b'{"a":"\xff"}'),
    "deep": Canned(b"[" * 300 + b"]" * 300),
    "range": Canned(b'{"a":1e400}'),
    "broken": Canned(b'{"a":1,}'),
    "broken-chunked": Canned(b'{"password":"p",' + b" " * 100_000, chunked=True),
}
REFUSED = {"nan", "utf8", "deep", "range", "broken"}
OBJECTS = {"plain", "unicode", "duplicates", "bom", "lone", "json-suffix", "chunked", "big"}  # fields added
STAMP = re.compile(rb'"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"')


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawUpstream]:
    upstream = RawUpstream()
    upstream.bodies.update(BODIES)
    upstream.start()
    yield upstream
    upstream.stop()


def gateway_data(upstream_port: int) -> dict[str, Any]:
    data = ext_proc_config_dict()
    data["upstreams"].append({"name": "raw", "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]})
    data["routes"] = [*copy.deepcopy(ROUTES), *data["routes"]]
    return data


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, raw_upstream: RawUpstream) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("njson-gw"), gateway_data(raw_upstream.port))
    yield running
    running.stop()


def lua_bootstrap(port: int, admin: int, upstream: int, routes: list[dict[str, Any]]) -> dict[str, Any]:
    # Lua filter API (docs/root/configuration/http/http_filters/lua_filter.rst, envoyproxy/envoy): body()
    # "suspend[s] execution of the script until the entire body has been received in a buffer", headers
    # "can be modified ... after a body() call returns", metadata() is the route's filter_metadata under
    # the filter's name, respond() is "only valid in the request flow" (so a refusal rewrites the response).
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "lua", "preserve_external_request_id": True,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            {"name": FILTER, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                                              "default_source_code": {"inline_string": SCRIPT}}},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "lua", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [{"name": "raw", "type": "STATIC", "connect_timeout": "1s",
                          "load_assignment": {"cluster_name": "raw", "endpoints": [{"lb_endpoints": [
                              {"endpoint": {"address": address}}]}]}}],
        },
    }


@pytest.fixture(scope="module")
def lua_envoy(tmp_path_factory: pytest.TempPathFactory, raw_upstream: RawUpstream) -> Iterator[str]:
    # The gateway route's own settings and header edits (x-response-time, x-cache-status: BYPASS), as the
    # native path gets them on that route.
    config = config_from(gateway_data(raw_upstream.port))
    routes = []
    for route in config.routes:
        if route.name.startswith("lab-njson"):
            params = response_params(route_settings(route, config), config)
            assert params is not None
            routes.append({"match": {"prefix": f"/{route.name}/"}, "route": {"cluster": "raw"},
                           **ExtProcContribution().route_headers(route, config),
                           "metadata": {"filter_metadata": {FILTER: {"response": params}}}})
    workdir: Path = tmp_path_factory.mktemp("njson-lua")
    port, admin = free_port(), free_port()
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(yaml.safe_dump(lua_bootstrap(port, admin, raw_upstream.port, routes)))
    envoy = ManagedProcess("envoy-lua", envoy_argv(bootstrap), http_ready(f"http://127.0.0.1:{admin}/ready"),
                           log_path=workdir / "envoy.log")
    envoy.start()
    try:
        envoy.wait_ready(30)
        yield f"http://127.0.0.1:{port}"
    finally:
        envoy.stop()


def _stamp(body: bytes) -> float:
    found = STAMP.search(body)
    assert found is not None
    text = found.group().decode().split('":"')[1].rstrip('"')
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _get(url: str, name: str) -> httpx.Response:
    return httpx.get(url, headers={"x-request-id": f"njson-{name}"}, timeout=10)


def _both(gateway: Stack, lua_envoy: str, route: str, name: str) -> tuple[httpx.Response, httpx.Response]:
    python = _get(f"{gateway.url}/api/v1/lab/{route.removeprefix('lab-')}/{name}", name)
    lua = _get(f"{lua_envoy}/{route}/{name}", name)
    return python, lua


@pytest.mark.parametrize(("route", "name", "status"), [
    ("lab-njson-pass", "plain", 200), ("lab-njson-pass", "big", 200), ("lab-njson-pass", "chunked", 200),
    ("lab-njson-reject", "plain", 200), ("lab-njson-reject", "big", 502), ("lab-njson-reject", "chunked", 502),
    ("lab-njson-reject", "nan", 502), ("lab-njson-reject", "not-json-type", 200),
    ("lab-njson", "huge", 200), ("lab-njson-pass", "huge", 200), ("lab-njson-reject", "huge", 502),
    ("lab-njson", "huge-chunked", 200), ("lab-njson-pass", "huge-chunked", 200),
])
def test_oversize_bodies_as_ext_proc(route: str, name: str, status: int, gateway: Stack, lua_envoy: str) -> None:
    """max_body_bytes and oversize_body: a larger JSON body passes untouched or is refused whole (502), by a
    declared length (before any of it is read) or by its size once read (chunked)."""
    python, lua = _both(gateway, lua_envoy, route, name)
    assert (lua.status_code, STAMP.sub(b"<now>", lua.content)) == (
        python.status_code, STAMP.sub(b"<now>", python.content))
    assert lua.status_code == status
    if status == 502:
        assert set(lua.headers) == set(python.headers)
    elif len(BODIES[name].body) > SMALL:
        assert lua.content == BODIES[name].body


@pytest.mark.parametrize("name", sorted(set(BODIES) - {"huge", "huge-chunked", "broken-chunked"}))
def test_lua_answers_as_ext_proc(name: str, gateway: Stack, lua_envoy: str) -> None:
    python, lua = _both(gateway, lua_envoy, "lab-njson", name)
    assert (lua.status_code, STAMP.sub(b"<now>", lua.content)) == (
        python.status_code, STAMP.sub(b"<now>", python.content))
    assert lua.headers.get("content-type") == python.headers.get("content-type")
    if python.status_code == 502:  # the whole local reply: the route's headers, none of the upstream's
        assert set(lua.headers) == set(python.headers)
    if name in REFUSED:
        assert lua.status_code == 502
        assert lua.content == b'{"error":"bad_gateway","request_id":"njson-%s"}' % name.encode()
    elif name in OBJECTS:
        # `${now()}` rendered as templates.iso_time, from Envoy's clock (handle:timestamp(), epoch ms)
        assert abs(_stamp(lua.content) - _stamp(python.content)) < 5
        if BODIES[name].chunked:  # streamed as ext_proc's is: no content-length either
            assert "content-length" not in lua.headers and "content-length" not in python.headers
        else:
            assert int(lua.headers["content-length"]) == len(lua.content)


def test_a_refused_chunked_body_never_passes(lua_envoy: str) -> None:
    """Without a declared length on an oversize_body: pass route the headers are on their way before the body
    is read (as without a response headers message to ext_proc, which can only reset the stream then): the
    Lua drops the body, not one byte of it passes."""
    lua = _get(f"{lua_envoy}/lab-njson/broken-chunked", "broken-chunked")
    assert (lua.status_code, lua.content) == (200, b"")


def test_the_502_names_the_request_id_as_ext_proc_writes_it(gateway: Stack, lua_envoy: str) -> None:
    """error_response: json.dumps (ASCII escapes) of the request's x-request-id, quotes and backslashes too."""
    rid = {"x-request-id": 'id "quoted" \\ back'}
    python = httpx.get(f"{gateway.url}/api/v1/lab/njson/nan", headers=rid, timeout=10)
    lua = httpx.get(f"{lua_envoy}/lab-njson/nan", headers=rid, timeout=10)
    assert (lua.status_code, lua.content) == (python.status_code, python.content)
    assert lua.content == b'{"error":"bad_gateway","request_id":"id \\"quoted\\" \\\\ back"}'
