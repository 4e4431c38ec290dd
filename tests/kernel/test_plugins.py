"""The kernel finds the services through their plugins (entry points) and builds its config model from them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from outrider.config import ConfigError, GatewayConfig, load_config, load_config_text
from outrider.config.base import StrictModel
from outrider.config.errors import Problem
from outrider.config.extensions import Section, extensions, section, service_settings
from outrider.config.model import RouteConfig, ServicesConfig
from outrider.config.schema import build_models, gateway_model, route_model
from outrider.envoy_config import compile_http_filters, contributions
from outrider.plugins import ServicePlugin, discover, ordered_plugins, plugin_named
from outrider.supervisor import plan_processes

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "gateway.yaml"
MINIMAL = ROOT / "tests" / "config" / "fixtures" / "good_minimal.yaml"


def test_discovery_finds_the_three_services_through_entry_points() -> None:
    plugins = discover()
    assert [p.name for p in plugins] == ["ext_authz", "ext_proc", "ratelimit"]
    assert all(isinstance(p, ServicePlugin) for p in plugins)
    assert [p.name for p in ordered_plugins()] == ["ext_authz", "ratelimit", "ext_proc"]
    assert plugin_named("ratelimit").type_url == "type.googleapis.com/outrider.config.v1.RateLimitServiceConfig"
    with pytest.raises(LookupError):
        plugin_named("nope")
    # The kernel's config side sees the same objects (one discovery, two views).
    assert [e.name for e in extensions()] == [p.name for p in plugins]


def test_kernel_model_knows_no_service_section() -> None:
    kernel = set(GatewayConfig.model_fields)
    assert not kernel & {"auth", "rbac", "rate_limits", "transformations", "cache", "validation"}
    assert set(ServicesConfig.model_fields) == {"demo_upstream", "xds"}
    assert not set(RouteConfig.model_fields) & {"transformations", "cache", "validation"}
    # ... the model a config is validated with has them, from the plugins.
    full = gateway_model()
    assert issubclass(full, GatewayConfig)
    assert {"auth", "rbac", "rate_limits", "transformations", "cache", "validation"} <= set(full.model_fields)
    assert {"transformations", "cache", "validation"} <= set(route_model().model_fields)
    services = full.model_fields["services"].annotation
    assert services is not None and {"ext_authz", "ratelimit", "ext_proc"} <= set(services.model_fields)


def test_loaded_config_is_the_extended_model_and_typed_accessors_read_it() -> None:
    from ext_proc.config import ExtProcService, TransformationsConfig, transformations_of
    from ratelimit_service.config import RateLimitsConfig, rate_limits_of

    config = load_config(EXAMPLE)
    assert isinstance(config, gateway_model())
    assert isinstance(rate_limits_of(config), RateLimitsConfig)
    assert isinstance(transformations_of(config), TransformationsConfig)
    assert service_settings(config, "ext_proc", ExtProcService).port == 18083
    with pytest.raises(TypeError):
        section(config, "rate_limits", TransformationsConfig)
    # A config without the section reads as None (the service has nothing to do), not an error.
    assert rate_limits_of(load_config(MINIMAL)) is None


def test_unknown_section_is_an_error_with_field_and_line() -> None:
    text = MINIMAL.read_text().replace("../../../", str(ROOT) + "/") + "rate_limit: {domain: edge}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "gw.yaml")
    assert [i.render("gw.yaml") for i in caught.value.issues] == ["gw.yaml:20: rate_limit: unknown field"]


def test_envoy_filters_come_from_the_plugins_in_their_order() -> None:
    names = [c.filter_name for c in contributions()]
    # ext_authz's companions (jwt_authn, rbac, lua: native enforcement) come right before its own filter.
    native = ["envoy.filters.http.jwt_authn", "envoy.filters.http.rbac", "outrider.native_roles"]
    assert names == ["envoy.filters.http.cors", *native, "envoy.filters.http.ext_authz",
                     "envoy.filters.http.ratelimit", "envoy.filters.http.ext_proc"]
    # No route of the example is native: those three stay out of the chain.
    chain = [f["name"] for f in compile_http_filters(load_config(EXAMPLE))]
    # ext_proc's companions for routes without a response headers message (ext_proc/envoy.py): the Lua
    # response hold right before it, header_to_metadata (the content type) right after.
    plain = [n for n in names if n not in native]
    assert chain == ["envoy.filters.http.health_check", *plain[:3], "outrider.ext_proc_response_hold", plain[3],
                     "envoy.filters.http.header_to_metadata", "envoy.filters.http.router"]


def test_outrider_run_starts_what_the_plugins_ask_for(tmp_path: Path) -> None:
    full = [p.name for p in plan_processes(load_config(EXAMPLE), EXAMPLE, tmp_path)]
    assert full == ["demo-upstream", "xds_server", "ext_authz", "ratelimit", "ext_proc", "envoy"]
    # No rate limits, no ext_proc sections: only the authorizer is asked for.
    minimal = [p.name for p in plan_processes(load_config(MINIMAL), MINIMAL, tmp_path)]
    assert minimal == ["demo-upstream", "ext_authz", "envoy"]


# ---- the model builder, with a plugin of the test's own ----------------------------------------------------


class Greeting(StrictModel):
    text: str = "hello"


class GreeterSettings(StrictModel):
    port: int = 18099


@dataclass(frozen=True)
class Greeter:
    name: str = "greeter"
    sections: Mapping[str, Section] = field(default_factory=lambda: {"greeting": Section(Greeting, required=True)})
    route_fields: Mapping[str, Section] = field(default_factory=lambda: {"greet": Section(Greeting)})
    settings: type[StrictModel] | None = GreeterSettings

    def check(self, config: GatewayConfig) -> Iterable[Problem]:
        return []


BASE = {"listeners": [{"name": "l", "port": 10000}],
        "routes": [{"name": "r", "match": {"prefix": "/"}, "direct_response": {"status": 200}}]}


def test_build_models_adds_sections_route_fields_and_settings() -> None:
    models = build_models([Greeter()])
    config = models.gateway.model_validate({**BASE, "greeting": {"text": "hi"},
                                            "routes": [{**BASE["routes"][0], "greet": {}}]})  # type: ignore[dict-item]
    assert section(config, "greeting", Greeting) == Greeting(text="hi")
    assert section(config.routes[0], "greet", Greeting) == Greeting()
    assert service_settings(config, "greeter", GreeterSettings).port == 18099
    with pytest.raises(ValidationError) as missing:
        models.gateway.model_validate(BASE)
    assert [e["loc"] for e in missing.value.errors()] == [("greeting",)]
    with pytest.raises(ValidationError) as typo:
        models.gateway.model_validate({**BASE, "greeting": {"txt": "hi"}})
    assert [(e["loc"], e["type"]) for e in typo.value.errors()] == [(("greeting", "txt"), "extra_forbidden")]


def test_two_plugins_cannot_claim_one_key() -> None:
    with pytest.raises(ValueError, match="adds `greeting` to the gateway config"):
        build_models([Greeter(), Greeter(name="other", settings=None, route_fields={})])
    with pytest.raises(ValueError, match="adds `routes`"):
        build_models([Greeter(sections={"routes": Section(Greeting)})])


def test_one_entry_point_seen_twice_counts_once_and_a_name_clash_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    import outrider.config.extensions as ext

    def found(*values: str) -> object:
        return lambda group: [EntryPoint("greeter", value, group) for value in values]

    try:
        # Two metadata copies of one project on sys.path (an installed one and a source tree's).
        monkeypatch.setattr(ext, "entry_points", found("tests.kernel.test_plugins:GREETER",
                                                       "tests.kernel.test_plugins:GREETER"))
        ext.installed.cache_clear()
        assert ext.installed() == (GREETER,)
        monkeypatch.setattr(ext, "entry_points", found("tests.kernel.test_plugins:GREETER",
                                                       "tests.kernel.test_plugins:OTHER"))
        ext.installed.cache_clear()
        with pytest.raises(TypeError, match="two outrider service plugins"):
            ext.installed()
    finally:
        monkeypatch.undo()
        ext.installed.cache_clear()
    assert [p.name for p in ext.installed()] == ["ext_authz", "ext_proc", "ratelimit"]


GREETER = Greeter()
OTHER = Greeter(name="other")


def test_filter_names_stay_unique_with_every_companion() -> None:
    """Per-route configs and a Lua script's route metadata go by filter name: native enforcement's Lua filter
    and ext_proc's response hold (both Lua) must not share one."""
    import yaml

    from outrider.config import load_config_data

    data = yaml.safe_load(EXAMPLE.read_text())
    next(r for r in data["routes"] if r["name"] == "messages")["enforcement"] = "native"
    names = [f["name"] for f in compile_http_filters(load_config_data(data, str(EXAMPLE), EXAMPLE.parent))]
    assert "outrider.native_roles" in names and "outrider.ext_proc_response_hold" in names
    assert len(names) == len(set(names)), names
