"""`outrider validate` and the loader: one bad fixture per rule, each reported with file, field and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from outrider.config import ConfigError, load_config

FIXTURES = Path(__file__).parent / "fixtures"
BAD = FIXTURES / "bad"

# fixture → (line, field path, words of the reason)
CASES: dict[str, tuple[int, str, str]] = {
    "yaml_syntax": (3, "<root>", "invalid YAML"),
    "duplicate_key": (10, "routes[0].upstream", "duplicate key"),
    "not_mapping": (1, "<root>", "must hold a mapping"),
    "unknown_field": (11, "routes[0].resouce", "unknown field"),
    "missing_listeners": (1, "listeners", "required field is missing"),
    "port_range": (2, "listeners[0].port", "less than or equal to 65535"),
    "upstream_and_direct": (7, "routes[0]", "exactly one of upstream, direct_response"),
    "protected_without_resource": (7, "routes[0]", "protected route needs `resource`"),
    "public_with_resource": (7, "routes[0]", "public route has no RBAC resource"),
    "match_two_kinds": (8, "routes[0].match", "exactly one of prefix, path, regex"),
    "prefix_no_slash": (8, "routes[0].match", "must start with '/'"),
    "unknown_upstream": (9, "routes[0].upstream", "unknown upstream 'nope'"),
    "resource_not_granted": (10, "routes[0].resource", "granted to no role"),
    "duplicate_route_name": (11, "routes[1].name", "duplicate name 'users'"),
    "bad_regex": (8, "routes[0].match.regex", "not an RE2 regex Envoy accepts"),
    "regex_lookahead": (8, "routes[0].match.regex", "invalid perl operator: (?="),  # Python re accepts it
    "regex_too_complex": (8, "routes[0].match.regex", "RE2 program size"),
    "header_value_crlf": (12, "routes[0].rewrite.host", "control characters"),
    "direct_response_body_cr": (9, "routes[0].direct_response.body", "control characters"),
    "provider_without_keys": (13, "auth.providers[0]", "exactly one of jwks_file, jwks_url"),
    "hs256_without_secret": (13, "auth.providers[0]", "HS256 needs hs256_secret_env"),
    "alg_none": (15, "auth.providers[0].algorithms[0]", "'RS256'"),
    "jwks_file_missing": (15, "auth.providers[0].jwks_file", "file not found"),
    "port_clash": (1, "admin.port", "port 9901 is already used by listeners[0].port"),
    "bad_action": (19, "rbac.roles.user[0].actions[1]", "'read', 'write', 'delete'"),
    "jwks_url_scheme": (13, "auth.providers[0]", "jwks_url must be an https:// URL"),
    "leeway_negative": (12, "auth.leeway_s", "greater than or equal to 0"),
    # sections the kernel does not know: a typo'd one, and a typo inside a plugin's section
    "unknown_section": (20, "transformationz", "unknown field"),
    "plugin_section_unknown_field": (25, "rate_limits.budget", "unknown field"),
    # ext_proc (ext_proc/config.py)
    "ext_proc_identity_header": (23, "transformations.request.add_headers", "identity headers are set by ext_authz"),
    "ext_proc_set_authorization": (22, "routes[0].transformations.request.add_headers",
                                   "may not set 'Authorization'"),
    "ext_proc_rename_envoy_header": (22, "transformations.request.rename_headers", "x-envoy-* headers belong"),
    "ext_proc_unknown_template": (22, "transformations.request.add_headers", "unknown template variable ${whoami}"),
    "ext_proc_response_var_in_request": (22, "transformations.request.add_headers",
                                         "unknown template variable ${response_time_ms}"),
    "ext_proc_bad_jsonpath": (22, "transformations.request.json_body", "unsupported JSONPath syntax"),
    "ext_proc_x_cache_status": (22, "transformations.response.add_headers", "the response cache sets it"),
    "ext_proc_redis_without_url": (21, "cache", "backend redis needs redis_url"),
    "ext_proc_cache_path_no_slash": (21, "cache.rules[0].path", "a cache path starts with '/'"),
    "ext_proc_cache_rule_unserved": (23, "cache.rules[1].path", "no route with an upstream serves '/orders/**'"),
    "ext_proc_route_cache_rule_unmatched": (21, "routes[0].cache.rules[0].path", "never matches '/orders/*'"),
    "ext_proc_direct_response_section": (23, "routes[1].validation", "direct_response route has no upstream"),
    "ext_proc_bad_content_type": (21, "validation.allowed_content_types", "a media type like application/json"),
}


def test_every_bad_fixture_has_a_case() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_loader_reports_location_and_reason(name: str) -> None:
    line, field, reason = CASES[name]
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = str(caught.value).splitlines()
    expected = f"{path}:{line}: {field}: "
    assert any(r.startswith(expected) and reason in r for r in rendered), rendered


def test_good_fixture_and_example_load() -> None:
    load_config(FIXTURES / "good_minimal.yaml")
    config = load_config(Path(__file__).parents[2] / "examples" / "gateway.yaml")
    assert config.routes


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outrider", "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_cli_validate_exit_codes() -> None:
    bad = _validate(BAD / "unknown_upstream.yaml")
    assert bad.returncode == 1
    assert f"{BAD / 'unknown_upstream.yaml'}:9: routes[0].upstream: unknown upstream 'nope'" in bad.stderr
    good = _validate(FIXTURES / "good_minimal.yaml")
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout


def test_cli_validate_missing_file(tmp_path: Path) -> None:
    result = _validate(tmp_path / "absent.yaml")
    assert result.returncode == 1
    assert "cannot read file" in result.stderr
