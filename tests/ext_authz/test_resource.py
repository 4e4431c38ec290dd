"""ext_authz's resource: the payload is deterministic JSON, decides as the config says, and bad ones are refused."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ext_authz.app import AuthzRuntime
from ext_authz.decision import CheckInput
from ext_authz.jwks import JwksError
from ext_authz.plugin import PLUGIN
from ext_authz.resource import PayloadError, Policy, build_policy, payload
from outrider.config import GatewayConfig, load_config
from outrider.devtoken import mint_dev_token
from outrider.plugins import ServicePlugin
from outrider.service_main import cancel_tasks
from outrider.xds_client import ConfigRejected
from tests.harness import KEYS_DIR, example_config_dict, with_free_ports, write_config

ACTIONS = {"GET": "read", "POST": "write", "DELETE": "delete"}
# Routes beyond the example's prefixes: an exact path, a regex, and a catch-all prefix after them
# (the first matching rule wins, so their order is part of the payload).
EXTRA_ROUTES = [
    {"name": "ping", "match": {"path": "/api/v2/ping"}, "upstream": "demo", "public": True},
    {"name": "item", "match": {"regex": "/api/v2/items/[0-9]+"}, "upstream": "demo", "resource": "files"},
    {"name": "v2", "match": {"prefix": "/api/v2/"}, "upstream": "demo", "resource": "admin"},
]
PATHS = ["/health/live", "/api/v1/public/x", "/api/v1/users/profile", "/api/v1/messages/1", "/api/v1/files/a",
         "/api/v1/admin/users", "/api/v1/chat/send", "/api/v1/search?q=1", "/api/v2/ping", "/api/v2/ping/no",
         "/api/v2/items/42", "/api/v2/items/x", "/api/v2/other", "/elsewhere"]
ROLES: list[tuple[str, ...] | None] = [None, ("admin",), ("user",), ("guest",), ("user", "guest")]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    data = with_free_ports(example_config_dict())
    data["routes"].extend(EXTRA_ROUTES)
    return load_config(write_config(data, tmp_path / "gateway.yaml"))


@pytest.fixture
async def policy(config: GatewayConfig) -> AsyncIterator[Policy]:
    # Built from the payload after a trip through canonical JSON, as the control plane sends it.
    built = await build_policy(json.loads(canonical(payload(config))))
    yield built
    await cancel_tasks(built.tasks)


def expected(config: GatewayConfig, method: str, path: str, roles: tuple[str, ...] | None) -> tuple[bool, int]:
    """What the config says, worked out from the config itself (independently of the payload)."""
    bare = path.split("?", 1)[0]
    route = next((r for r in config.routes if (
        (r.match.prefix is not None and bare.startswith(r.match.prefix))
        or (r.match.path is not None and bare == r.match.path)
        or (r.match.regex is not None and re.fullmatch(r.match.regex, bare) is not None))), None)
    if route is not None and route.direct_response is not None:
        return False, route.direct_response.status  # answered by the authorizer, never forwarded
    if route is not None and route.public:
        return True, 200
    if roles is None:
        return False, 401
    if route is None:
        return False, 403
    for role in roles:
        for grant in config.rbac.roles.get(role, []):
            if grant.resource in ("*", route.resource) and ("*" in grant.actions or ACTIONS[method] in grant.actions):
                return True, 200
    return False, 403


def token(config: GatewayConfig, roles: tuple[str, ...]) -> str:
    provider = config.auth.providers[0]
    return mint_dev_token(KEYS_DIR, provider.issuer, provider.audiences[0], subject="alice", roles=list(roles),
                          tier="free")


def test_plugin_is_a_service_plugin(config: GatewayConfig) -> None:
    assert isinstance(PLUGIN, ServicePlugin)
    assert PLUGIN.name == "ext_authz"
    assert PLUGIN.type_url == "type.googleapis.com/outrider.config.v1.ExtAuthzConfig"
    assert PLUGIN.payload(config) == payload(config)


def test_payload_is_json_deterministic_and_self_contained(config: GatewayConfig, tmp_path: Path) -> None:
    first = payload(config)
    assert json.loads(canonical(first)) == first  # plain JSON values only
    again = load_config(tmp_path / "gateway.yaml")
    assert canonical(payload(again)) == canonical(first)
    provider = first["auth"]["providers"][0]
    assert Path(provider["jwks_file"]).is_absolute() and Path(provider["jwks_file"]).is_file()
    # Every route (direct responses too: behind a foreign Envoy they are answered, not skipped), in config
    # order, one match key each.
    assert [next(k for k in ("prefix", "path", "regex") if k in r) for r in first["rules"]][-3:] == \
        ["path", "regex", "prefix"]
    assert len(first["rules"]) == len(config.routes)
    assert [r for r in first["rules"] if "direct_response" in r] == [
        {"path": "/health/live", "direct_response": {"status": 200, "body": '{"status":"live"}',
                                                      "content_type": "application/json"}}]
    assert first["logging"] == {"decisions": config.logging.decisions}


async def test_decisions_from_the_payload_follow_the_config(config: GatewayConfig, policy: Policy) -> None:
    tokens = {roles: token(config, roles) for roles in ROLES if roles is not None}
    now = time.time()
    checked = 0
    for path in PATHS:
        for method in ACTIONS:
            for roles in ROLES:
                headers = {} if roles is None else {"authorization": f"Bearer {tokens[roles]}"}
                decision = policy.authorizer.decide(CheckInput(method, path, headers, {}), now)
                assert (decision.allowed, decision.status) == expected(config, method, path, roles), \
                    (method, path, roles, decision)
                checked += 1
    assert checked == len(PATHS) * len(ACTIONS) * len(ROLES)


BAD: list[tuple[str, Any, str]] = [
    ("unknown key", lambda p: p.update(extra=1), "extra: Extra inputs are not permitted"),
    ("bad action", lambda p: p["rbac"]["roles"]["user"][0].update(actions=["fly"]), "rbac.roles.user.0.actions.0"),
    ("bad regex", lambda p: p["rules"].append({"regex": "(", "public": True}), "regex does not compile"),
    ("two matches", lambda p: p["rules"][1].update(path="/x"), "give exactly one of prefix, path, regex"),
    ("no providers", lambda p: p["auth"].update(providers=[]), "auth.providers"),
    ("public and resource", lambda p: p["rules"][1].update(resource="files"),
     "exactly one of public, protecting a resource"),
]


@pytest.mark.parametrize(("mutate", "reason"), [(m, r) for _, m, r in BAD], ids=[n for n, _, _ in BAD])
async def test_a_bad_payload_is_refused_with_its_reason(config: GatewayConfig, mutate: Any, reason: str) -> None:
    data = copy.deepcopy(payload(config))
    mutate(data)
    with pytest.raises(PayloadError, match="invalid ext_authz payload") as info:
        await build_policy(data)
    assert reason in str(info.value)


async def test_a_key_file_that_cannot_load_is_refused(config: GatewayConfig, tmp_path: Path) -> None:
    data = copy.deepcopy(payload(config))
    broken = tmp_path / "broken.json"
    broken.write_text('{"keys": []}')
    data["auth"]["providers"][0]["jwks_file"] = str(broken)
    with pytest.raises(JwksError, match=r"broken\.json"):
        await build_policy(data)
    data["auth"]["providers"][0]["jwks_file"] = str(tmp_path / "missing.json")
    with pytest.raises(JwksError, match=r"missing\.json"):
        await build_policy(data)


async def test_the_runtime_swaps_versions_and_keeps_the_last_good(config: GatewayConfig, tmp_path: Path) -> None:
    runtime = AuthzRuntime()
    try:
        service = runtime.service
        alice = {"authorization": f"Bearer {token(config, ('user',))}"}
        delete_profile = CheckInput("DELETE", "/api/v1/users/profile", alice, {})
        # Before a first version every Check is refused (fail closed), whatever it carries.
        assert service._authorizer is None

        v1 = payload(config)
        await runtime.apply("v1", v1)
        first = runtime.policy
        assert first is not None and runtime.version == "v1"
        assert first.authorizer.decide(delete_profile, time.time()).status == 403

        v2 = copy.deepcopy(v1)
        v2["rbac"]["roles"]["user"][0]["actions"] = ["read", "write", "delete"]
        await runtime.apply("v2", v2)
        second = runtime.policy
        assert second is not None and second is not first and runtime.version == "v2"
        assert service._authorizer is second.authorizer
        assert second.authorizer.decide(delete_profile, time.time()).allowed
        assert all(task.done() for task in first.tasks)  # the old key sources were stopped

        v3 = copy.deepcopy(v2)
        v3["auth"]["providers"][0]["jwks_file"] = str(tmp_path / "gone.json")
        with pytest.raises(ConfigRejected, match=r"gone\.json"):
            await runtime.apply("v3", v3)
        v4 = copy.deepcopy(v2)
        v4["rules"][0]["regex"] = "("
        with pytest.raises(ConfigRejected, match="regex does not compile"):
            await runtime.apply("v4", v4)
        assert runtime.policy is second and runtime.version == "v2" and service._authorizer is second.authorizer
        assert not any(task.done() for task in second.tasks)  # the live key sources keep running

        v5 = copy.deepcopy(v2)
        v5["logging"]["decisions"] = False
        await runtime.apply("v5", v5)
        assert runtime.decision_log.enabled is False
    finally:
        await runtime.close()


@pytest.mark.parametrize(("url", "insecure", "error"), [
    ("http://keys.example/jwks.json", False, "must be https://"),
    ("http://keys.example/jwks.json", True, None),
    ("https://keys.example/jwks.json", False, None),
    ("https:///jwks.json", False, "with a host"),
    ("https://user:pw@keys.example/jwks.json", False, "must not carry credentials"),
    ("file:///etc/jwks.json", True, "must be an https:// URL"),
])
def test_jwks_url_must_be_https(tmp_path: Path, url: str, insecure: bool, error: str | None) -> None:
    from outrider.config import ConfigError
    from outrider.plugins import config_warnings

    data = with_free_ports(example_config_dict())
    provider = data["auth"]["providers"][0]
    provider.pop("jwks_file")
    provider["jwks_url"] = url
    if insecure:
        provider["allow_insecure"] = True
    path = write_config(data, tmp_path / "gateway.yaml")
    if error is not None:
        with pytest.raises(ConfigError, match=error) as info:
            load_config(path)
        if "https://" in error and insecure is False:
            assert "allow_insecure: true" in str(info.value) and "DEVELOPMENT ONLY" in str(info.value)
        return
    config = load_config(path)
    warnings = config_warnings(config, [PLUGIN])
    assert bool(warnings) == url.startswith("http:")
    assert all("DEVELOPMENT ONLY" in w for w in warnings)
    # The hardening settings travel in the payload (the service reads them from there).
    sent = payload(config)["auth"]
    assert sent["providers"][0]["max_lifetime_s"] == 86_400 and sent["providers"][0]["allow_insecure"] is insecure
    assert sent["failure_budget"]["enabled"] is True
