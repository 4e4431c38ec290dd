"""Route settings, phases and native header edits from config; what ext_proc adds to the Envoy config."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from ext_proc.config import (
    MUTATION_DISALLOW_REGEX,
    Phases,
    RequestTransforms,
    native_header_value,
    parse_template,
    protection_reason,
    route_phases,
    route_settings,
)
from ext_proc.envoy import EXT_PROC_CLUSTER, ExtProcContribution
from outrider.envoy_config import compile_bootstrap, compile_route_configuration
from outrider.supervisor import envoy_binary, plan_processes
from tests.ext_proc.conftest import config_from, ext_proc_config_dict

CONFIG = config_from(ext_proc_config_dict())
ROUTES = {r.name: r for r in CONFIG.routes}


def phases(name: str) -> Phases:
    return route_phases(route_settings(ROUTES[name], CONFIG))


def test_each_route_asks_only_for_what_it_needs() -> None:
    assert phases("health-live") == Phases()
    assert phases("lab-headers") == Phases(request_headers=True)
    # Validation inspects JSON request bodies; the design's response transform reads JSON responses, whose
    # content type comes with the body message (no response headers message: ext_proc/envoy.py).
    assert phases("files") == Phases(True, True, False, True)
    # A cache rule covers this route: responses are read (to store them) and writes invalidate.
    assert phases("public") == Phases(True, True, True, True)
    assert phases("users") == Phases(True, True, True, True)


def test_route_sections_override_the_fields_they_set() -> None:
    users = route_settings(ROUTES["users"], CONFIG).transformations
    assert users is not None
    assert users.response.remove_json_fields == ["password", "internal_id", "secret_key"]
    assert users.request == CONFIG.transformations.request  # type: ignore[union-attr]  # inherited whole
    messages = route_settings(ROUTES["messages"], CONFIG).transformations
    assert messages is not None and messages.request.json_body and messages.request.add_query == {"version": "v1"}
    lab = route_settings(ROUTES["lab-headers"], CONFIG)
    assert lab.validation is None and lab.transformations is not None
    assert lab.transformations.request.add_query == {"lab": "1"}  # maps are replaced, not merged
    assert lab.transformations.request.rename_headers == {"Authorization": "X-Auth-Token"}
    strict = route_settings(ROUTES["lab-strict"], CONFIG).validation
    assert strict is not None and strict.max_body_bytes == 1024 and strict.max_url_length == 4096


def test_route_can_switch_cache_off_or_bring_its_own_rules() -> None:
    data = ext_proc_config_dict()
    public = next(r for r in data["routes"] if r["name"] == "public")
    public["cache"] = {"enabled": False}
    assert route_settings(next(r for r in config_from(data).routes if r.name == "public"), config_from(data)).cache \
        is None
    public["cache"] = {"rules": [{"path": "/api/v1/public/news/*", "ttl_s": 5}]}
    settings = route_settings(next(r for r in config_from(data).routes if r.name == "public"), config_from(data))
    assert settings.cache is not None and [r.path for r in settings.cache.rules] == ["/api/v1/public/news/*"]


@pytest.mark.parametrize(("name", "removing", "protected"), [
    (":path", False, True), ("Host", False, True), ("x-envoy-retry-on", False, True),
    ("X-User-Roles", True, True), ("content-length", False, True), ("authorization", False, True),
    ("authorization", True, False), ("x-custom", False, False),
])
def test_protected_headers(name: str, removing: bool, protected: bool) -> None:
    assert (protection_reason(name, removing=removing) is not None) == protected


@pytest.mark.parametrize("rules", [
    {"add_headers": {"x-user-tier": "enterprise"}},
    {"add_headers": {"Host": "evil"}},
    {"remove_headers": ["x-user-id"]},
    {"rename_headers": {"x-user-email": "x-mail"}},
    {"rename_headers": {"x-a": "authorization"}},
])
def test_rules_on_protected_headers_are_rejected_at_load(rules: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RequestTransforms.model_validate(rules)


def test_native_values_escape_percent() -> None:
    assert native_header_value(parse_template("100% ${client_ip}", frozenset({"client_ip"}))) == \
        "100%% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
    assert native_header_value(parse_template("${now()}", frozenset({"now()"}))) is None


def test_filter_settings() -> None:
    http_filter = ExtProcContribution().http_filter(CONFIG)
    assert http_filter is not None
    typed = http_filter["typed_config"]
    assert typed["failure_mode_allow"] is False
    assert typed["message_timeout"] == "0.500s"
    assert typed["grpc_service"] == {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}}
    assert typed["mutation_rules"]["disallow_expression"]["regex"] == MUTATION_DISALLOW_REGEX
    assert typed["processing_mode"]["request_header_mode"] == "SKIP"  # routes opt in
    import re
    for header in ("authorization", "host", ":authority", ":method", "x-envoy-foo", "x-user-id", "x-user-tier"):
        assert re.fullmatch(MUTATION_DISALLOW_REGEX, header)
    for header in (":path", "x-auth-token", "content-length", "x-cache-status"):
        assert not re.fullmatch(MUTATION_DISALLOW_REGEX, header)


def test_routes_in_the_envoy_config() -> None:
    routes = {r["name"]: r for r in compile_route_configuration(CONFIG)["virtual_hosts"][0]["routes"]}
    per_route = routes["lab-headers"]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
    assert per_route["processing_mode"] == {
        "request_header_mode": "SEND", "response_header_mode": "SKIP", "request_body_mode": "NONE",
        "response_body_mode": "NONE", "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"}
    assert per_route["grpc_initial_metadata"] == [{"key": "x-outrider-route", "value": "lab-headers"}]
    for name in ("health-live", "outrider-not-found"):
        assert routes[name]["typed_per_filter_config"]["envoy.filters.http.ext_proc"] == {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True}
    users = routes["users"]
    added = {h["header"]["key"]: (h["header"]["value"], h["append_action"]) for h in users["request_headers_to_add"]}
    assert added == {"x-gateway-version": ("1.0", "OVERWRITE_IF_EXISTS_OR_ADD"),
                     "x-request-id": ("%UNIQUE_ID%", "ADD_IF_ABSENT"),
                     "x-forwarded-for": ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "OVERWRITE_IF_EXISTS_OR_ADD")}
    assert {"x-internal-token", "authorization"} <= set(users["request_headers_to_remove"])
    assert users["response_headers_to_add"][0]["header"] == {"key": "x-response-time", "value": "%DURATION%ms"}
    # X-Cache-Status: from ext_proc where a cache rule covers the route, else BYPASS from the route itself.
    assert "x-cache-status" not in {h["header"]["key"] for h in users["response_headers_to_add"]}
    files = {h["header"]["key"]: h["header"]["value"] for h in routes["files"]["response_headers_to_add"]}
    assert files == {"x-cache-status": "BYPASS", "x-response-time": "%DURATION%ms"}
    public = routes["public"]  # the identity removal of public routes is kept beside ours
    assert {"x-user-id", "x-internal-token"} <= set(public["request_headers_to_remove"])


def test_no_sections_no_filter_no_cluster_no_process(tmp_path: Path) -> None:
    data = copy.deepcopy(ext_proc_config_dict())
    for key in ("transformations", "cache", "validation"):
        data.pop(key)
    data["routes"] = [r for r in data["routes"] if not r["name"].startswith("lab-") and r["name"] not in
                      ("users", "messages")]
    config = config_from(data)
    bootstrap = compile_bootstrap(config)
    assert EXT_PROC_CLUSTER not in {c["name"] for c in bootstrap["static_resources"]["clusters"]}
    assert "ext_proc" not in {p.name for p in plan_processes(config, tmp_path / "g.yaml", tmp_path)}
    assert "ext_proc" in {p.name for p in plan_processes(CONFIG, tmp_path / "g.yaml", tmp_path)}


def test_envoy_accepts_the_compiled_config(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(compile_bootstrap(CONFIG)))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_body_modes_and_request_buffer_limits() -> None:
    routes = {r["name"]: r for r in compile_route_configuration(CONFIG)["virtual_hosts"][0]["routes"]}

    def mode(name: str) -> dict[str, str]:
        overrides = routes[name]["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
        return dict(overrides["processing_mode"])

    # Requests BUFFERED (a declared content-length is kept; a chunked one is switched to BUFFERED_PARTIAL
    # by the processor); responses BUFFERED_PARTIAL (no Envoy 500 for a large fast one). ext_proc/envoy.py.
    assert mode("users")["request_body_mode"] == "BUFFERED"
    assert mode("users")["response_body_mode"] == "BUFFERED_PARTIAL"
    assert mode("lab-headers")["response_body_mode"] == "NONE"
    # A route that reads request bodies buffers up to its max_body_bytes, whatever the connection limit.
    assert routes["messages"]["request_body_buffer_limit"] == 1024 * 1024
    assert routes["lab-strict"]["request_body_buffer_limit"] == 512
    for name in ("lab-headers", "health-live", "outrider-not-found"):
        assert "request_body_buffer_limit" not in routes[name]


def test_headers_set_memo_follows_route_changes() -> None:
    """The per-route memo of request_headers_set gives what a fresh computation gives after a change."""
    from ext_proc.config import TransformationsConfig, route_settings, transformations_of
    from ext_proc.envoy import _names, request_headers_set

    def fresh(config: Any) -> list[str]:
        names = _names(transformations_of(config)) if transformations_of(config) is not None else set()
        for route in config.routes:
            if transformations_of(route) is not None:
                t = route_settings(route, config).transformations
                names |= _names(t) if t is not None else set()
        return sorted({n.lower() for n in names})

    first = request_headers_set(CONFIG)
    assert first == fresh(CONFIG)
    routes = list(CONFIG.routes)
    index = next(i for i, r in enumerate(routes) if transformations_of(r) is not None)
    renamed = TransformationsConfig.model_validate({"request": {"rename_headers": {"X-Api-Key": "X-Client-Key"}}})
    routes[index] = routes[index].model_copy(update={"transformations": renamed})
    changed = CONFIG.model_copy(update={"routes": routes})
    assert request_headers_set(changed) == fresh(changed)
    assert "x-client-key" in request_headers_set(changed)
