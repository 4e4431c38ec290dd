"""ext_proc's payload: the same plans as from the config itself, through JSON, with bad payloads refused."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
from pydantic import BaseModel

from ext_proc.plugin import PLUGIN
from ext_proc.resource import build, payload
from outrider.plugins import ServicePlugin
from outrider.service_resource import EXT_PROC_TYPE_URL, decode, encode
from outrider.xds_client import ConfigRejected
from tests.ext_proc.conftest import config_from, ext_proc_config_dict, plans_from


def test_plugin_shape() -> None:
    assert isinstance(PLUGIN, ServicePlugin)
    assert (PLUGIN.name, PLUGIN.type_url) == ("ext_proc", EXT_PROC_TYPE_URL)


def _through_the_wire(data: dict[str, Any]) -> dict[str, Any]:
    return decode(EXT_PROC_TYPE_URL, encode(EXT_PROC_TYPE_URL, "v1", payload(config_from(data))))[1]


def fingerprint(value: Any) -> Any:
    """A plan as plain data, for comparing compiled objects that define no equality of their own."""
    if isinstance(value, re.Pattern):
        return ("re", value.pattern, value.flags)
    if isinstance(value, dict):
        return {fingerprint(k): fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [fingerprint(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, BaseModel):
        return (type(value).__name__, fingerprint(value.model_dump()), sorted(value.model_fields_set))
    if callable(value) and not hasattr(value, "__dict__") and not hasattr(value, "__slots__"):
        return repr(value)
    fields = dict(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(value, slot):
                fields[slot] = getattr(value, slot)
    if fields:
        return (type(value).__name__, fingerprint(fields))
    return value


# Route-level cache sections (the example has none): own rules, and the cache turned off.
CACHE_ROUTES: list[dict[str, Any]] = [
    {"name": "lab-cached", "match": {"prefix": "/api/v1/lab/cached/"}, "upstream": "demo", "public": True,
     "cache": {"rules": [{"path": "/api/v1/lab/cached/*", "ttl_s": 5}]}},
    {"name": "lab-uncached", "match": {"prefix": "/api/v1/public/catalog/x/"}, "upstream": "demo",
     "public": True, "cache": {"enabled": False}},
]


def test_payload_gives_the_plans_the_config_gives() -> None:
    data = ext_proc_config_dict()
    data["routes"] += copy.deepcopy(CACHE_ROUTES)
    config = config_from(data)
    built = build(_through_the_wire(data))
    direct = plans_from(data)
    assert set(built.plans) == set(direct)
    for name, plan in direct.items():
        assert fingerprint(built.plans[name]) == fingerprint(plan), name
    assert built.decisions is config.logging.decisions
    assert built.failure_mode_allow is config.services.ext_proc.failure_mode_allow


def test_fingerprint_sees_a_difference() -> None:
    data = ext_proc_config_dict()
    other = copy.deepcopy(data)
    other["transformations"]["request"]["add_headers"]["X-Extra"] = "1"
    assert fingerprint(plans_from(data)[""]) != fingerprint(plans_from(other)[""])


def test_payload_keeps_sections_as_given() -> None:
    data = ext_proc_config_dict()
    # A route that sets a field to its default value still overrides the global section with it.
    data["validation"] = {"xss": False}
    index = next(i for i, r in enumerate(data["routes"]) if "upstream" in r and "validation" not in r)
    data["routes"][index]["validation"] = {"xss": True}
    wire = _through_the_wire(data)
    assert wire["validation"] == {"xss": False}
    assert wire["routes"][index]["validation"] == {"xss": True}
    name = data["routes"][index]["name"]
    assert fingerprint(build(wire).plans[name]) == fingerprint(plans_from(data)[name])
    assert build(wire).plans[name].phases.request_body   # xss on: the body is inspected
    # Deterministic: the same config is the same bytes.
    assert json.dumps(payload(config_from(data)), sort_keys=True) == json.dumps(wire, sort_keys=True)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda p: p["routes"][1].update(transformations={"request": {"add_headers": {"x-a": "${nope}"}}}),
     "routes[1].transformations.request.add_headers"),
    (lambda p: p.update(cache={"backend": "redis"}), "cache: backend redis needs redis_url"),
    (lambda p: p["routes"][0].update(match={"prefix": "/a", "path": "/b"}), "routes[0].match"),
    (lambda p: p.pop("routes"), "malformed ext_proc payload"),
    (lambda p: p["routes"].append(copy.deepcopy(p["routes"][0])), "route names repeat"),
])
def test_bad_payloads_are_refused_with_the_reason(edit: Any, needle: str) -> None:
    wire = _through_the_wire(ext_proc_config_dict())
    edit(wire)
    with pytest.raises(ConfigRejected) as info:
        build(wire)
    assert needle in str(info.value)


def test_plan_memo_reuses_unchanged_routes_and_recompiles_what_changed() -> None:
    import copy

    from ext_proc.resource import PlanMemo, build
    from tests.ext_proc.conftest import config_from, ext_proc_config_dict

    data = ext_proc_config_dict()
    memo = PlanMemo()
    first = build(payload(config_from(data)), memo)
    changed = copy.deepcopy(data)
    strict = next(r for r in changed["routes"] if r["name"] == "lab-strict")
    strict["validation"] = {**strict.get("validation", {}), "max_url_length": 40}
    changed["routes"] = [r for r in changed["routes"] if r["name"] != "lab-lenient"]
    second = build(payload(config_from(changed)), memo)
    fresh = build(payload(config_from(changed)))
    assert second.plans.keys() == fresh.plans.keys() and "lab-lenient" not in second.plans
    for name, plan in second.plans.items():
        if name in ("lab-strict", ""):
            continue
        assert plan is first.plans[name], name  # unchanged: the very same compiled plan
    assert second.plans["lab-strict"] is not first.plans["lab-strict"]
    assert second.plans["lab-strict"].validator is not None
    assert second.plans["lab-strict"].validator.config.max_url_length == 40
    # A change to the global sections touches every route: nothing is reused.
    changed["validation"]["max_url_length"] = 1000
    third = build(payload(config_from(changed)), memo)
    assert all(third.plans[n] is not second.plans[n] for n in third.plans if n)
