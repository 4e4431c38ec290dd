"""The automatic per-IP ban through real Envoy: two gateways sharing one Redis, the metrics and the unban API."""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from outrider.process import ManagedProcess
from tests.conftest import start_stack
from tests.harness import Stack, example_config_dict
from tests.redis_harness import redis_url

AFTER = 20
BAN_S = 30
TOKEN = "ban-admin-token-" + "x" * 16


@pytest.fixture(scope="module")
def gateways(shared_redis: ManagedProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Stack]]:
    """Two gateways (Envoy, ext_authz, ratelimit each) whose rate limit services share one Redis."""
    token_file = tmp_path_factory.mktemp("ban-token") / "token"
    token_file.write_text(TOKEN + "\n")
    data = example_config_dict()
    for section in ("transformations", "cache", "validation"):
        data.pop(section, None)  # not under test: fewer processes to start
    rl = data["rate_limits"]
    rl["budget_ms"] = 500  # exact counts need the store's answers on a loaded machine
    data["services"]["ratelimit"].update({"timeout_ms": 1000, "admin_port": 1, "admin_token_file": str(token_file)})
    # A bucket far above the test's rate: only the ban refuses. An hour's window: no boundary mid-test.
    rl["per_ip"] = {"requests_per_unit": 1000, "unit": "second", "burst": 1000,
                    "ban": {"after_requests": AFTER, "window": "hour", "duration_s": BAN_S}}
    rl["redis"] = {"url": redis_url(shared_redis), "key_prefix": f"ban{uuid.uuid4().hex[:6]}:"}
    stacks: list[Stack] = []
    try:
        for name in ("a", "b"):
            stacks.append(start_stack(tmp_path_factory.mktemp(f"ban-{name}"), data))
        yield stacks
    finally:
        for stack in stacks:
            stack.stop()


def metrics(stack: Stack) -> str:
    port = stack.data["services"]["ratelimit"]["metrics_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{name}(?:\{{[^}}]*{re.escape(labels)}[^}}]*\}})? (\S+)$" if labels else rf"^{name} (\S+)$"
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def admin(stack: Stack, method: str, path: str, token: str | None = TOKEN) -> httpx.Response:
    port = stack.data["services"]["ratelimit"]["admin_port"]
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=5)


def test_an_address_past_the_threshold_is_banned_on_every_gateway_until_unbanned(gateways: list[Stack],
                                                                                 tmp_path: Path) -> None:
    a, b = gateways
    before = metrics(a)
    with a.client() as client:
        statuses = [client.get("/api/v1/public/x").status_code for _ in range(AFTER)]
        banned = client.get("/api/v1/public/x")
    assert statuses == [200] * AFTER
    assert banned.status_code == 429
    assert BAN_S - 2 <= int(banned.headers["retry-after"]) <= BAN_S
    assert banned.json()["error"] == "rate_limited"

    # The other gateway refuses the address too: the ban lives in the shared Redis.
    refused = b.get("/api/v1/public/x")
    assert refused.status_code == 429 and BAN_S - 3 <= int(refused.headers["retry-after"]) <= BAN_S
    # A token-bearing route sends no per-IP descriptor: the ban applies where the per-IP limit does.

    after_a, after_b = metrics(a), metrics(b)
    assert sample(after_a, "rate_limit_bans_total") - sample(before, "rate_limit_bans_total") == 1
    assert sample(after_b, "rate_limit_bans_total") == 0  # counted once, by the replica that started it
    assert sample(after_a, "rate_limit_banned_ips") == 1
    assert sample(after_b, "rate_limit_rejections_total", 'reason="ban"') >= 1
    assert sample(after_a, "rate_limit_rejections_total", 'reason="limit"') == 0

    # The admin API: token required, lists the ban, lifts it for every gateway.
    assert admin(a, "GET", "/v1/bans", token=None).status_code == 401
    assert admin(a, "GET", "/v1/bans", token="wrong-token-0123456789").status_code == 401
    listed = admin(b, "GET", "/v1/bans").json()["bans"]
    assert [ban["ip"] for ban in listed] == ["127.0.0.1"] and 0 < listed[0]["remaining_s"] <= BAN_S
    assert admin(a, "DELETE", "/v1/bans/127.0.0.1", token=None).status_code == 401
    lifted = admin(a, "DELETE", "/v1/bans/127.0.0.1")
    assert lifted.status_code == 200 and lifted.json() == {"unbanned": "127.0.0.1"}
    assert admin(a, "DELETE", "/v1/bans/127.0.0.1").status_code == 404
    assert admin(a, "DELETE", "/v1/bans/not-an-ip").status_code == 400
    assert a.get("/api/v1/public/x").status_code == 200
    assert b.get("/api/v1/public/x").status_code == 200
    assert sample(metrics(a), "rate_limit_banned_ips") == 0
    assert admin(a, "GET", "/v1/bans").json() == {"bans": []}
