"""Each service's payload text built from per-route pieces is byte-identical to canonical_json(payload(config)).

The control plane builds the services' resources for every version; with 10,000 routes, re-encoding the
whole payload each time cost more than Envoy's resources, so unchanged routes' JSON is reused (differential).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from ext_authz.resource import PayloadJson as AuthzPayloadJson
from ext_authz.resource import payload as authz_payload
from ext_proc.resource import PayloadJson as ExtProcPayloadJson
from ext_proc.resource import payload as ext_proc_payload
from outrider.config import load_config_data
from outrider.service_resource import canonical_json, canonical_json_with_items
from tests.harness import EXAMPLE_CONFIG
from tests.xds.test_state_roundtrip import configs

PAIRS = ((AuthzPayloadJson, authz_payload), (ExtProcPayloadJson, ext_proc_payload))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=configs())
def test_payload_text_equals_the_library_encoding_before_and_after_a_change(data: dict[str, Any]) -> None:
    config = load_config_data(data, "<test>", EXAMPLE_CONFIG.parent)
    routes = list(config.routes)
    routes[1] = routes[1].model_copy(update={"public": True, "resource": None})
    changed = config.model_copy(update={"routes": [*routes, routes[2].model_copy(update={"name": "extra"})]})
    for fast, reference in PAIRS:
        encoder = fast()
        for version in (config, changed, config):  # cold, one route changed and one added, back again
            assert encoder(version) == canonical_json(reference(version))


def test_items_text_survives_hostile_strings() -> None:
    head = {"a": "\u0000outrider-items\u0000 is only a marker", "z": {"routes": None}}
    items = [canonical_json({"k": "\"routes\":[]\u2028"}), canonical_json({"k": 1})]
    expected = canonical_json({**head, "routes": [{"k": "\"routes\":[]\u2028"}, {"k": 1}]})
    assert canonical_json_with_items(head, "routes", items) == expected
    marked = {"a": "\u0000outrider-items\u0000"}  # a value that is exactly the marker
    assert canonical_json_with_items(marked, "routes", items) == canonical_json(
        {**marked, "routes": [{"k": "\"routes\":[]\u2028"}, {"k": 1}]})
