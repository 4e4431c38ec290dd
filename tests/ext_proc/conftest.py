"""Fixtures of the ext_proc tests: the example gateway plus lab routes, as config and as running stacks."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_proc.plan import RoutePlan, compile_plans
from outrider.config import GatewayConfig, load_config_text
from tests.conftest import start_stack
from tests.harness import EXAMPLE_CONFIG, Stack, example_config_dict

# The example's response JSON rules, switched off on lab routes that show request-side behaviour (their small
# body limits would otherwise refuse the demo upstream's echo as an oversize response).
NO_RESPONSE_JSON: dict[str, Any] = {"remove_json_fields": [], "add_json_fields": {}}

# Routes of our own (public, so no tokens needed), each with one thing to show.
LAB_ROUTES: list[dict[str, Any]] = [
    {"name": "lab-headers", "match": {"prefix": "/api/v1/lab/headers/"}, "upstream": "demo", "public": True,
     # Header work only: the processor sees request headers and nothing else (the example's response JSON
     # rules switched off here).
     "transformations": {"request": {"add_query": {"lab": "1"}}, "response": NO_RESPONSE_JSON},
     "validation": {"enabled": False}},
    {"name": "lab-strict", "match": {"prefix": "/api/v1/lab/strict/"}, "upstream": "demo", "public": True,
     "validation": {"max_body_bytes": 1024},
     "transformations": {"max_body_bytes": 512, "oversize_body": "reject",
                         "request": {"json_body": {"seen": "yes"}}, "response": NO_RESPONSE_JSON}},
    {"name": "lab-lenient", "match": {"prefix": "/api/v1/lab/lenient/"}, "upstream": "demo", "public": True,
     "validation": {"sql_injection": False, "xss": False},
     "transformations": {"max_body_bytes": 512, "oversize_body": "pass",
                         "request": {"json_body": {"seen": "yes"}}, "response": NO_RESPONSE_JSON}},
    {"name": "lab-client-ip", "match": {"prefix": "/api/v1/lab/client-ip/"}, "upstream": "demo", "public": True,
     "validation": {"enabled": False},
     # The same ${client_ip} twice: in a header Envoy sets natively, and in a body field ext_proc writes.
     "transformations": {"request": {"add_headers": {"X-Native-Client-IP": "${client_ip}"},
                                     "json_body": {"client_ip": "${client_ip}"}}}},
]


def ext_proc_config_dict() -> dict[str, Any]:
    data = copy.deepcopy(example_config_dict())
    data["routes"] = [*data["routes"], *copy.deepcopy(LAB_ROUTES)]
    data.pop("rate_limits", None)  # not under test here; keeps request counts free
    return data


def config_from(data: dict[str, Any]) -> GatewayConfig:
    return load_config_text(yaml.safe_dump(data), "test.yaml", EXAMPLE_CONFIG.parent)


def plans_from(data: dict[str, Any]) -> dict[str, RoutePlan]:
    return compile_plans(config_from(data))


@pytest.fixture(scope="module")
def example_plans() -> dict[str, RoutePlan]:
    return plans_from(ext_proc_config_dict())


@pytest.fixture(scope="module")
def ep_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack per module with the lab routes, for tests that change nothing."""
    running = start_stack(tmp_path_factory.mktemp("ep-stack"), ext_proc_config_dict())
    yield running
    running.stop()


@pytest.fixture
def ep_own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of the test's own, for tests that stop processes."""
    running = start_stack(tmp_path, ext_proc_config_dict())
    yield running
    running.stop()
