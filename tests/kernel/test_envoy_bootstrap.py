"""The committed envoy/bootstrap.yaml is what the compiler makes of examples/gateway.yaml, and Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from outrider.config import load_config
from outrider.envoy_config import compile_bootstrap
from outrider.supervisor import envoy_binary

ROOT = Path(__file__).parents[2]


def test_committed_bootstrap_matches_example_config() -> None:
    committed = yaml.safe_load((ROOT / "envoy" / "bootstrap.yaml").read_text())
    compiled = compile_bootstrap(load_config(ROOT / "examples" / "gateway.yaml"))
    assert committed == compiled, "run: outrider envoy-bootstrap examples/gateway.yaml -o envoy/bootstrap.yaml"


def test_envoy_accepts_the_bootstrap() -> None:
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(ROOT / "envoy" / "bootstrap.yaml"),
                             "--disable-hot-restart"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_routes_carry_their_policy() -> None:
    config = load_config(ROOT / "examples" / "gateway.yaml")
    listener = compile_bootstrap(config)["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    # The path policy routes see the raw path (edge.non_canonical_paths: reject, tests/edge/).
    assert hcm["normalize_path"] is False
    assert hcm["merge_slashes"] is False
    first = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert first["name"].startswith("outrider-path-")
    assert first["direct_response"]["status"] == 400
    routes = {r["name"]: r for r in hcm["route_config"]["virtual_hosts"][0]["routes"]}
    users = routes["users"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert users["check_settings"]["context_extensions"]["resource"] == "profile"
    public = routes["public"]
    assert public["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert "x-user-id" in public["request_headers_to_remove"]
    authz = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    assert authz["typed_config"]["failure_mode_allow"] is False
    assert authz["typed_config"]["grpc_service"]["timeout"] == "0.250s"


def test_every_regex_the_compiler_emits_fits_envoys_re2_limits() -> None:
    """Envoy NACKs a safe_regex whose RE2 program exceeds re2.max_program_size.error_level (100): the
    gateway's own regexes (identity header matchers, path policy, ...) must stay well inside it."""
    from pydantic import TypeAdapter

    from outrider.config import load_config
    from outrider.config.base import ENVOY_RE2_MAX_PROGRAM_SIZE, Re2Regex
    from outrider.envoy_config import compile_bootstrap

    def regexes(node: object) -> list[str]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "regex" and isinstance(v, str)]
            return found + [r for v in node.values() for r in regexes(v)]
        if isinstance(node, list):
            return [r for v in node for r in regexes(v)]
        return []

    import re2

    found = regexes(compile_bootstrap(load_config("examples/gateway.yaml")))
    assert found, "the example compiles to at least one regex (the identity header matcher)"
    check = TypeAdapter(Re2Regex)
    for regex in found:
        check.validate_python(regex)  # raises when RE2 refuses it or it is too big
        assert re2.compile(regex).programsize <= ENVOY_RE2_MAX_PROGRAM_SIZE * 0.95, regex  # keep a margin
