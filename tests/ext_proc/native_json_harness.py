"""Both sides of the native JSON response policy, for the differential tests and the benchmark: ext_proc's
Python path (jsonbody + ResponseTransformer, as ext_proc/session.py _transform_response) and the Lua of
ext_proc/lua/json_policy.lua run by LuaJIT in-process (lupa)."""

from __future__ import annotations

from typing import Any

import lupa.luajit21 as luajit

from ext_proc import jsonbody
from ext_proc.config import ResponseTransforms, RouteSettings, TransformationsConfig
from ext_proc.native_json import json_policy_lua, response_params
from ext_proc.plan import RESPONSE_MAX_DEPTH
from ext_proc.templates import Context
from ext_proc.transforms import ResponseTransformer
from outrider.config.loader import load_config
from outrider.config.model import GatewayConfig

EXAMPLE_CONFIG = "examples/gateway.yaml"

# The example's response policy (examples/gateway.yaml), and one with nested targets and literals.
EXAMPLE = ResponseTransforms(remove_json_fields=["password", "internal_id", "secret_key"],
                             add_json_fields={"api_version": "v1", "timestamp": "${now()}"})
NESTED = ResponseTransforms(
    remove_json_fields=["password", "a", "é", "x"],
    add_json_fields={"meta.at": "t=${now()}!", "meta.n": 1.5, "meta.big": 10**20, "meta.f": False,
                     "meta.z": None, "x.y": -0.0, "password": "ü\n\"", "a.b.c": 1e16, "list": 7})
POLICIES = {"example": EXAMPLE, "nested": NESTED}
NOW_MS = 1_767_225_600_123  # a fixed clock: 2026-01-01T00:00:00.123Z
_TRANSFORMERS: dict[int, tuple[ResponseTransforms, ResponseTransformer]] = {}


def python_answer(raw: bytes, policy: ResponseTransforms, now_ms: int = NOW_MS) -> tuple[bool, bytes | str]:
    """What ext_proc makes of a response body: (True, bytes) or (False, refusal reason)."""
    known = _TRANSFORMERS.get(id(policy))  # compiled once per policy, as ext_proc compiles a route's plan once
    if known is None or known[0] is not policy:
        known = _TRANSFORMERS[id(policy)] = (policy, ResponseTransformer(policy))  # holds the policy: no id reuse
    transformer = known[1]
    try:
        doc: Any = jsonbody.parse(raw, RESPONSE_MAX_DEPTH, strict=False)
    except jsonbody.BadJson as exc:
        return False, exc.reason
    transformer.body(doc, Context(now=now_ms / 1000))
    return True, jsonbody.dump(doc)


def params_for(policy: ResponseTransforms, config: GatewayConfig | None = None) -> dict[str, Any]:
    config = config or load_config(EXAMPLE_CONFIG)
    params = response_params(RouteSettings(TransformationsConfig(response=policy), None, None), config)
    assert params is not None
    return params


class LuaPolicy:
    """json_policy.lua in LuaJIT: outrider_json_transform(raw, params, now_ms)."""

    def __init__(self) -> None:
        self.runtime = luajit.LuaRuntime(encoding=None)  # Lua strings stay bytes both ways
        source = json_policy_lua() + "\nreturn outrider_json_transform\n"
        self.transform = self.runtime.execute(source.encode())

    def table(self, value: Any) -> Any:
        if isinstance(value, dict):
            return self.runtime.table_from({k.encode(): self.table(v) for k, v in value.items()})
        if isinstance(value, list):
            return self.runtime.table_from([self.table(v) for v in value])
        if isinstance(value, str):
            return value.encode()
        return value

    def answer(self, raw: bytes, params: Any, now_ms: int = NOW_MS) -> tuple[bool, bytes | str]:
        ok, out = self.transform(raw, params, now_ms)
        return bool(ok), out if ok else out.decode()
