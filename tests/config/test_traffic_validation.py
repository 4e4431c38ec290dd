"""Route/upstream traffic settings and services.xds: one bad fixture per rule, reported with file, field, line."""

from __future__ import annotations

from pathlib import Path

import pytest

from outrider.config import ConfigError, load_config

BAD = Path(__file__).parent / "traffic_fixtures"

# fixture → (line, field path, words of the reason)
CASES: dict[str, tuple[int, str, str]] = {
    "cors_credentials_wildcard": (12, "routes[0].cors", "allow_credentials cannot be used with th"),
    "hash_policy_two_kinds": (8, "upstreams[0].hash_policy[0]", "give exactly one of header, cookie, sour"),
    "hash_policy_without_hashing_lb": (4, "upstreams[0]", "hash_policy needs lb_policy ring_hash or"),
    "header_match_bad_regex": (11, "routes[0].match.headers[0].regex", "RE2 regex Envoy accepts: missing ): (unclosed"),
    "header_match_two_kinds": (11, "routes[0].match.headers[0]", "give exactly one of exact, prefix, regex"),
    "health_check_timeout_over_interval": (6, "upstreams[0].health_check", "timeout_ms must not exceed interval_ms"),
    "retry_backoff_max_without_base": (11, "routes[0].retry", "backoff_max_ms needs backoff_base_ms"),
    "retry_codes_without_retry_on": (12, "routes[0].retry", "retriable_status_codes needs 'retriable-"),
    "retry_on_direct_response": (10, "routes[0].retry", "retry needs an upstream; this route has"),
    "retry_per_try_over_timeout": (
        12,
        "routes[0].retry.per_try_timeout_ms",
        "per_try_timeout_ms (2000) exceeds the ro",
    ),
    "rewrite_bad_regex": (12, "routes[0].rewrite.regex.pattern", "RE2 regex Envoy accepts: missing ): (unclosed"),
    "rewrite_empty": (11, "routes[0].rewrite", "give prefix, regex or host"),
    "rewrite_prefix_and_regex": (12, "routes[0].rewrite", "give at most one of prefix, regex"),
    "rewrite_prefix_with_regex_match": (11, "routes[0].rewrite.prefix", "a prefix rewrite needs a prefix or path"),
    "xds_bad_protocol": (21, "services.xds.protocol", "Input should be 'sotw' or 'delta'"),
}


def test_every_fixture_has_a_case() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_reported_with_location_and_reason(name: str) -> None:
    line, field, reason = CASES[name]
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    rendered = str(caught.value).splitlines()
    assert any(r.startswith(f"{path}:{line}: {field}: ") and reason in r for r in rendered), rendered
