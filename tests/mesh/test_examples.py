"""The mesh examples parse: outrider's standalone configs validate, the Kubernetes manifests are YAML of the kinds
docs/mesh.md names, and the Envoy Gateway example's descriptor readings match its BackendTrafficPolicy rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from outrider.config import load_config
from ratelimit_service.config import rate_limits_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mesh"
KINDS = {
    "istio": {"IstioOperator", "AuthorizationPolicy", "EnvoyFilter"},
    "envoy-gateway": {"ConfigMap", "SecurityPolicy", "ReferenceGrant", "EnvoyExtensionPolicy",
                      "BackendTrafficPolicy", "EnvoyPatchPolicy", "EnvoyProxy"},
}


def _docs(mesh: str) -> list[dict]:  # type: ignore[type-arg]
    return [doc for path in sorted((EXAMPLES / mesh).glob("*.yaml")) if path.name != "outrider.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_rate_limit_runs_before_ext_proc_in_both_examples() -> None:
    # A cache hit answered by ext_proc must still spend quota (tests/mesh/fixtures follow this order).
    filters = {d["metadata"]["name"]: d["spec"] for d in _docs("istio") if d["kind"] == "EnvoyFilter"}
    assert filters["outrider-ext-proc"].get("priority", 0) > filters["outrider-ratelimit"].get("priority", 0)
    (proxy,) = [d for d in _docs("envoy-gateway") if d["kind"] == "EnvoyProxy"]
    assert {"name": "envoy.filters.http.ratelimit", "before": "envoy.filters.http.ext_proc"} in \
        proxy["spec"]["filterOrder"]


@pytest.mark.parametrize("mesh", sorted(KINDS))
def test_example_configs_validate_and_manifests_parse(mesh: str) -> None:
    config = load_config(EXAMPLES / mesh / "outrider.yaml")
    assert not config.services.xds.enabled  # standalone
    kinds = set()
    for path in sorted((EXAMPLES / mesh).glob("*.yaml")):
        if path.name != "outrider.yaml":
            kinds |= {doc["kind"] for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert kinds == KINDS[mesh]


def test_eg_readings_cover_the_backend_traffic_policy_rules() -> None:
    rl = rate_limits_of(load_config(EXAMPLES / "envoy-gateway" / "outrider.yaml"))
    assert rl is not None and [m.domain for m in rl.mesh] == ["default/eg/http"]
    policy = yaml.safe_load((EXAMPLES / "envoy-gateway" / "backend-traffic-policy.yaml").read_text())
    rules = policy["spec"]["rateLimit"]["global"]["rules"]
    assert len(rl.mesh[0].descriptors) == len(rules)
    for index, (reading, rule) in enumerate(zip(rl.mesh[0].descriptors, rules, strict=True)):
        headers = rule["clientSelectors"][0].get("headers")
        if headers is None:
            assert reading.per_ip == "remote_address"
            continue
        # Exact x-user-tier → a header_value_match entry rule-<i>-match-0; Distinct x-user-id → rule-<i>-match-1.
        assert reading.match == {f"rule-{index}-match-0": f"rule-{index}-match-0"}
        assert reading.tier == headers[0]["value"] and reading.user == f"rule-{index}-match-1"
