"""The gateway benchmark's setup: the example config plus isolated scenario routes, the Envoy bootstrap with
an Envoy-served origin, and the server processes (real services or trivial floors) for each variant."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from outrider.config import load_config
from outrider.envoy_config import compile_bootstrap
from outrider.process import ManagedProcess, free_port, tcp_ready

ROOT = Path(__file__).resolve().parents[1]
# Every limit of the seed keeps its algorithm and windows but is raised this many times: the bench measures
# the allow path (a refused request is cheaper and never reaches the upstream). Capped at the API's uint32.
LIMIT_SCALE = 1_000_000
LIMIT_MAX = 4_000_000_000
# What the origin answers: a JSON user document, so the seed's response transforms have work to do.
ORIGIN_BODY = json.dumps({"id": "u-42", "name": "Ada", "email": "ada@example.com", "password": "hunter2",
                          "internal_id": 7, "settings": {"theme": "dark", "secret_key": "k"},
                          "items": [{"id": 1, "secret_key": "a"}, {"id": 2, "secret_key": "b"}]},
                         separators=(",", ":"))
JSON_BODY = json.dumps({"request": {"userId": "u-42", "text": "hello"}, "text": "hello", "tags": ["a", "b"]},
                       separators=(",", ":"))
SERVICES = ("ext_authz", "ratelimit", "ext_proc")
NO_PROC = {"validation": {"enabled": False}, "transformations": {"enabled": False}, "cache": {"enabled": False}}
_NOW_HEADER = {"add_headers": {"X-Seen-At": "${now()}"}}  # a value only the processor can compute


@dataclass(frozen=True)
class Overrides:
    """What the bench changes in examples/gateway.yaml's policy (ports, Redis and the raised limits are plumbing
    and stay in gateway_data). Edit the data in OVERRIDES, not the code, to switch a scenario to a feature."""

    # Dotted path into the gateway file → value; None leaves the example's value (or absence) as it is.
    settings: dict[str, Any]
    # Prepended to the example's routes, so they match first; each isolates one service or one mode.
    routes: tuple[dict[str, Any], ...]
    # Routes whose rate limit actions are taken off in the compiled Envoy config (no rate limit hop).
    no_rate_limit: tuple[str, ...]


OVERRIDES = Overrides(
    settings={
        "services.demo_upstream": {"enabled": False},
        "services.xds": {"enabled": False},  # the static bootstrap: xDS is control plane, not on the request path
        # Placeholders for issue 15's native features, built on other branches and not on main yet: the
        # config validation refuses unknown keys, so they stay None (unset) until they land. At merge:
        #   "local": the tier / per-IP / endpoint limits counted in Envoy's local_ratelimit, no RLS hop (h-nlimit);
        "rate_limits.enforcement": None,
        #   True: a provably clean GET on a native route skips ext_proc (Lua edits + SkipFilter) (h-nreq).
        "services.ext_proc.native_fast_path": None,
    },
    routes=(
        {"name": "bench-proxy", "match": {"prefix": "/bench/proxy/"}, "upstream": "demo", "public": True, **NO_PROC},
        {"name": "bench-authz", "match": {"prefix": "/bench/authz/"}, "upstream": "demo", "resource": "profile",
         **NO_PROC},
        {"name": "bench-ratelimit", "match": {"prefix": "/bench/ratelimit/"}, "upstream": "demo", "public": True,
         **NO_PROC},
        {"name": "bench-proc-headers", "match": {"prefix": "/bench/proc-headers/"}, "upstream": "demo",
         "public": True, "validation": {"enabled": False}, "cache": {"enabled": False},
         "transformations": {"request": _NOW_HEADER, "response": {"add_headers": {}}}},
        {"name": "bench-proc-json", "match": {"prefix": "/bench/proc-json/"}, "upstream": "demo", "public": True,
         "validation": {"enabled": False}, "cache": {"enabled": False},
         "transformations": {"request": {"json_body": {"user_id": "$.request.userId", "timestamp": "${now()}"}},
                             "response": {"add_headers": {}}}},
        # The example's `messages` route as it is, but checked by Envoy's own filters (issue 15's native mode).
        {"name": "bench-native", "match": {"prefix": "/bench/native/"}, "upstream": "demo", "resource": "messages",
         "enforcement": "native"},
    ),
    no_rate_limit=("bench-authz", "bench-proc-headers", "bench-proc-json", "bench-proxy"),
)


def active_settings(overrides: Overrides = OVERRIDES) -> dict[str, Any]:
    """The settings overrides that change something (the placeholders left None are not)."""
    return {path: value for path, value in overrides.settings.items() if value is not None}


def apply_settings(data: dict[str, Any], settings: dict[str, Any]) -> None:
    """Set each dotted path in the gateway data, creating the sections on the way."""
    for path, value in settings.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value


@dataclass(frozen=True)
class Scenario:
    """One row of the table: a request through the gateway and the services it exercises."""

    name: str
    path: str
    services: tuple[str, ...]
    auth: bool = False
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    tier: str = "free"  # the token's tier when `auth`
    issue: str = ""  # the name issue 15's targets give this request ("python", "native", "cache"), if any


# The scenario every other one's ratio and added latency are measured against (issue 15's denominator).
BASELINE = "Envoy → origin (no filters)"
SCENARIOS = (
    Scenario("Envoy alone, direct_response", "/health/live", ()),
    Scenario(BASELINE, "/bench/proxy/x", ()),
    Scenario("+ ext_authz (RS256 token, RBAC)", "/bench/authz/x", ("ext_authz",), auth=True),
    Scenario("+ rate limit on Redis (per-IP token bucket)", "/bench/ratelimit/x", ("ratelimit",)),
    Scenario("+ ext_proc, request headers only", "/bench/proc-headers/x", ("ext_proc",)),
    Scenario("+ ext_proc, JSON request body", "/bench/proc-json/x", ("ext_proc",),
             body=JSON_BODY, headers={"content-type": "application/json"}),
    # Issue 15's target request, through the example's own `messages` route, then the same policy with
    # `enforcement: native` (Envoy's jwt_authn + rbac instead of ext_authz).
    Scenario("GET /api/v1/messages/inbox, enterprise token (python)", "/api/v1/messages/inbox", SERVICES,
             auth=True, tier="enterprise", issue="python"),
    Scenario("GET …/messages/inbox, enterprise token (enforcement: native)", "/bench/native/messages/inbox",
             ("ratelimit", "ext_proc"), auth=True, tier="enterprise", issue="native"),
    Scenario("full pipeline, every seed policy (GET /api/v1/users/profile)", "/api/v1/users/profile",
             SERVICES, auth=True),
    Scenario("cache hit (GET /api/v1/public/catalog/…)", "/api/v1/public/catalog/items",
             ("ratelimit", "ext_proc"), headers={"accept-language": "en"}, issue="cache"),
)


@dataclass(frozen=True)
class Ports:
    """Shared gRPC ports; one Envoy per worker count (its gRPC cluster settings follow `workers`)."""

    listener: dict[int, int]
    admin: dict[int, int]
    origin: dict[int, int]
    redis: int
    service: dict[str, int]
    metrics: dict[str, int]


def _scale(limit: dict[str, Any]) -> dict[str, Any]:
    if "requests_per_unit" in limit:
        limit = {**limit, "requests_per_unit": min(limit["requests_per_unit"] * LIMIT_SCALE, LIMIT_MAX)}
    if "burst" in limit:
        limit = {**limit, "burst": min(limit["burst"] * LIMIT_SCALE, LIMIT_MAX)}
    return limit


def gateway_data(ports: Ports, workers: int) -> dict[str, Any]:
    """examples/gateway.yaml with free ports, Redis, raised limits, the upstream on the origin, bench routes."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "gateway.yaml").read_text())
    data["listeners"][0]["port"] = ports.listener[workers]
    data["admin"]["port"] = ports.admin[workers]
    services = data["services"]
    for name in SERVICES:
        services[name].update({"port": ports.service[name], "metrics_port": ports.metrics[name], "workers": workers})
    for upstream in data["upstreams"]:
        upstream["endpoints"] = [{"address": "127.0.0.1", "port": ports.origin[workers]}]
    for provider in data["auth"]["providers"]:
        provider["jwks_file"] = str(ROOT / "examples" / provider["jwks_file"])
    rl = data["rate_limits"]
    rl["redis"] = {"url": f"redis://127.0.0.1:{ports.redis}/0"}
    rl["per_ip"] = _scale(rl["per_ip"])
    # The ban and the connection rate are per address too, and every request of the bench comes from 127.0.0.1.
    if "ban" in rl["per_ip"]:
        ban = rl["per_ip"]["ban"]
        rl["per_ip"]["ban"] = {**ban, "after_requests": min(ban["after_requests"] * LIMIT_SCALE, LIMIT_MAX)}
    if "new_connections_per_second" in rl["per_ip"]:
        rl["per_ip"]["new_connections_per_second"] = 1_000_000
    rl["tiers"] = {tier: [_scale(w) for w in windows] for tier, windows in rl["tiers"].items()}
    rl["endpoints"] = [{**e, "limit": _scale(e["limit"])} for e in rl["endpoints"]]
    apply_settings(data, active_settings())
    data["routes"] = [*OVERRIDES.routes, *data["routes"]]
    return data


def write_configs(workdir: Path, ports: Ports) -> dict[int, Path]:
    """One gateway file per worker count (everything else identical)."""
    paths = {}
    for workers in (1, 2):
        path = workdir / f"gateway-w{workers}.yaml"
        path.write_text(yaml.safe_dump(gateway_data(ports, workers), sort_keys=False))
        load_config(path)  # a bench config the gateway would reject is a bench bug: fail here
        paths[workers] = path
    return paths


def origin_listener(port: int) -> dict[str, Any]:
    """A second listener of the same Envoy answering every request itself: the upstream that adds least."""
    return {
        "name": "bench_origin",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "bench_origin",
                "route_config": {"name": "origin", "virtual_hosts": [{
                    "name": "origin", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": ORIGIN_BODY}},
                                "response_headers_to_add": [{"header": {"key": "content-type",
                                                                        "value": "application/json"}}]}],
                }]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }


def write_bootstrap(workdir: Path, config_path: Path, ports: Ports, workers: int) -> Path:
    bootstrap = compile_bootstrap(load_config(config_path))
    resources = bootstrap["static_resources"]
    for listener in resources["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][-1]["typed_config"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            if route["name"] in OVERRIDES.no_rate_limit:
                route.get("route", {}).pop("rate_limits", None)
    resources["listeners"].append(origin_listener(ports.origin[workers]))
    path = workdir / f"envoy-w{workers}.yaml"
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return path


def free_ports() -> Ports:
    def two() -> dict[int, int]:
        return {1: free_port(), 2: free_port()}

    return Ports(listener=two(), admin=two(), origin=two(), redis=free_port(),
                 service={s: free_port() for s in SERVICES}, metrics={s: free_port() for s in SERVICES})


def _launcher(section: str, target: str) -> list[str]:
    """`python -m <service>` runs launch(section, target); the same call, for a service whose __main__
    does not (yet) go through the workers launcher."""
    code = f"import sys; from outrider.workers import launch; launch({section!r}, {target!r}, sys.argv[1:])"
    return [sys.executable, "-c", code]


def service_argv(name: str, config_path: Path) -> list[str]:
    module = {"ext_authz": "ext_authz", "ratelimit": "ratelimit_service", "ext_proc": "ext_proc"}[name]
    if "launch(" in (ROOT / module / "__main__.py").read_text():
        return [sys.executable, "-m", module, "--config", str(config_path)]
    return [*_launcher(name, f"{module}.app:main"), "--config", str(config_path)]


def floor_argv(name: str, port: int) -> list[str]:
    script = {"ext_authz": ["bench/trivial_authz.py", "--port"],
              "ratelimit": ["bench/ratelimit_bench.py", "--trivial-server"],
              "ext_proc": ["bench/trivial_ext_proc.py", "--port"]}[name]
    return [sys.executable, str(ROOT / script[0]), script[1], str(port)]


def server_processes(variant: str, configs: dict[int, Path], ports: Ports, workdir: Path) -> dict[str, ManagedProcess]:
    """The three gRPC servers of a variant: 'floor' (trivial servers) or 'w1'/'w2' (outrider, N workers)."""
    procs = {}
    for name in SERVICES:
        argv = (floor_argv(name, ports.service[name]) if variant == "floor"
                else service_argv(name, configs[int(variant.removeprefix("w"))]))
        procs[name] = ManagedProcess(f"{variant}-{name}", argv, ready=tcp_ready("127.0.0.1", ports.service[name]),
                                     log_path=workdir / f"{variant}-{name}.log", cwd=ROOT)
    return procs
