"""`outrider explain-route`: the hops it names are the ones the compiled Envoy route takes (issue 15: "A GET on
a route whose transformations are all static must not touch ext_proc at all; `outrider explain-route NAME`
prints which hops a route takes and why")."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from outrider.cli import main
from outrider.config import load_config_data
from outrider.envoy_config import compile_route
from outrider.plugins import ordered_plugins
from outrider.route_explain import explain_route, hop_state
from tests.harness import EXAMPLE_CONFIG, example_config_dict

EXT_PROC = "envoy.filters.http.ext_proc"


def _config(data: dict[str, Any]) -> Any:
    return load_config_data(data, str(EXAMPLE_CONFIG), EXAMPLE_CONFIG.parent)


def _static_only() -> dict[str, Any]:
    """The example with only the edits Envoy makes itself: no body rules, no cache, no validation."""
    data = copy.deepcopy(example_config_dict())
    data["transformations"] = {"request": {"add_headers": {"X-Gateway-Version": "1.0"},
                                           "remove_headers": ["X-Internal-Token"]},
                               "response": {"add_headers": {"X-Response-Time": "${response_time_ms}ms"}}}
    data.pop("cache")
    data.pop("validation")
    return data


def test_static_edits_take_no_ext_proc_hop() -> None:
    config = _config(_static_only())
    route = next(r for r in config.routes if r.name == "admin")  # no transformations of its own
    envoy_route = compile_route(route, config)
    lines = explain_route(config, route, ordered_plugins())
    text = "\n".join(lines)
    assert hop_state(EXT_PROC, envoy_route) is None
    assert "  ext_proc: skipped" in text and "ext_proc: hop" not in text
    # The edits are Envoy's own, on the route.
    assert "set x-gateway-version: 1.0" in text and "set x-response-time: %DURATION%ms" in text
    assert "remove x-internal-token" in text
    assert lines[-1] == "  2 service hops per request"  # ext_authz + ratelimit


def test_example_routes_hops_and_reasons() -> None:
    config = _config(example_config_dict())
    routes = {r.name: r for r in config.routes}
    public = "\n".join(explain_route(config, routes["public"], ordered_plugins()))
    assert "  ext_authz: skipped\n    - public route" in public
    assert "ratelimit: hop, descriptors (remote_address)" in public
    assert "ext_proc: hop, messages: request headers, request body, response headers, response body" in public
    assert "the response cache" in public and "remove_json_fields" in public
    live = explain_route(config, routes["health-live"], ordered_plugins())
    assert live[1] == "  answered by Envoy itself (direct_response 200): no hop"
    assert live[-1] == "  0 service hops per request"


def test_response_only_phases_are_read_from_envoy_route() -> None:
    data = _static_only()
    data["transformations"]["response"]["remove_json_fields"] = ["password"]
    config = _config(data)
    route = next(r for r in config.routes if r.name == "admin")
    assert hop_state(EXT_PROC, compile_route(route, config)) == (
        "messages: request headers, response body")  # the content type comes with the body (ext_proc/envoy.py)
    text = "\n".join(explain_route(config, route, ordered_plugins()))
    assert "request headers: to tell the upstream's responses from Envoy's own replies" in text


def test_cli_unknown_route_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["explain-route", "no-such-route", str(EXAMPLE_CONFIG)])
    assert exit_info.value.code == 1
    assert "no route named 'no-such-route'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["explain-route", "all", str(EXAMPLE_CONFIG)])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.count("\nroute ") == 7


def test_a_native_route_takes_no_ext_authz_hop() -> None:
    data = copy.deepcopy(example_config_dict())
    for route in data["routes"]:
        if route["name"] == "admin":
            route["enforcement"] = "native"
    config = _config(data)
    route = next(r for r in config.routes if r.name == "admin")
    text = "\n".join(explain_route(config, route, ordered_plugins()))
    assert "  ext_authz: skipped\n    - enforcement: native" in text
    assert "ratelimit: hop, descriptors (tier, user_id)" in text
