"""Replica logic without processes: compare-and-set changes, catch-up before a stream, rollback as a newer
version, the services' failover guard, the bootstrap's replica list, the settings."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from pydantic import ValidationError

from outrider.config import GatewayConfig, load_config_data
from outrider.config.xds import XdsService
from outrider.envoy_ads import ADS_SERVICE, compile_ads_bootstrap
from outrider.service_resource import encode_json
from outrider.xds_client import Subscription
from tests.harness import EXAMPLE_CONFIG
from tests.xds.conftest import core_example
from xds_server.cache import SnapshotCache
from xds_server.control import Controller
from xds_server.protocol import Node, SotwRequest, SotwResponse
from xds_server.snapshot import ROUTE
from xds_server.store import MemoryStore, State

KEY = "gw"
EXTRA = {"match": {"prefix": "/api/v1/extra/"}, "upstream": "demo", "public": True}


def _data() -> dict[str, Any]:
    data = core_example()
    data["auth"]["providers"][0].pop("jwks_file")
    data["auth"]["providers"][0]["jwks_url"] = "https://keys.example/jwks.json"
    return data


def _load(given: dict[str, Any]) -> GatewayConfig:
    return load_config_data(given, "state", EXAMPLE_CONFIG.parent)


async def _replica(store: MemoryStore, ack_timeout_s: float = 0.5) -> tuple[Controller, SnapshotCache]:
    """A controller on the shared store, started the way app.run_service starts one."""
    cache = SnapshotCache(lambda node: KEY)
    state = await store.load()
    given = copy.deepcopy(state.given) if state else _data()
    version = state.version if state else 1
    controller = Controller(cache, store, KEY, _load(given), given, version, "digest", ack_timeout_s,
                            loader=_load)
    await controller.start(persist=state is None, expected=None)
    return controller, cache


def _names(controller: Controller) -> set[str]:
    return {r["name"] for r in controller.given["routes"]}


async def test_a_change_on_one_replica_reaches_the_other_by_notification() -> None:
    store = MemoryStore()
    a, _ = await _replica(store)
    b, _ = await _replica(store)
    follower = asyncio.create_task(b.follow())
    watcher = asyncio.create_task(store.watch(b.on_store_change))
    try:
        await asyncio.sleep(0)
        outcome = await a.put_route("extra", EXTRA)
        assert outcome.status == 200 and outcome.body["version"] == "2"
        assert b.version == 1  # nothing polls: only the notification moves B
        await store.notify()
        for _ in range(100):
            if b.version == 2:
                break
            await asyncio.sleep(0.01)
        assert b.version == 2 and "extra" in _names(b)
    finally:
        follower.cancel()
        watcher.cancel()


async def test_concurrent_changes_on_two_replicas_lose_no_update() -> None:
    store = MemoryStore()
    a, _ = await _replica(store)
    b, _ = await _replica(store)
    # B has not heard of A's change: its change is built on version 1 and loses the compare-and-set, so it
    # is redone on A's state (never overwriting it).
    first = await a.put_route("from-a", {**EXTRA, "match": {"prefix": "/a/"}})
    second = await b.put_route("from-b", {**EXTRA, "match": {"prefix": "/b/"}})
    assert (first.status, second.status) == (200, 200)
    assert (first.body["version"], second.body["version"]) == ("2", "3")
    stored = await store.load()
    assert stored is not None and stored.version == 3
    assert {"from-a", "from-b"} <= {r["name"] for r in stored.given["routes"]}
    assert {"from-a", "from-b"} <= _names(b)


async def test_racing_changes_on_two_replicas_commit_in_order() -> None:
    store = MemoryStore()
    a, _ = await _replica(store)
    b, _ = await _replica(store)
    outcomes = await asyncio.gather(*(
        (a if i % 2 else b).put_route(f"r{i}", {**EXTRA, "match": {"prefix": f"/r{i}/"}}) for i in range(6)))
    assert all(o.status == 200 for o in outcomes), outcomes
    versions = sorted(int(o.body["version"]) for o in outcomes)
    assert versions == list(range(2, 8))  # every version once, monotonic
    stored = await store.load()
    assert stored is not None and {f"r{i}" for i in range(6)} <= {r["name"] for r in stored.given["routes"]}


async def test_a_client_never_gets_an_older_version_from_a_replica_that_is_behind() -> None:
    store = MemoryStore()
    a, _ = await _replica(store)
    b, b_cache = await _replica(store)
    for i in range(2):
        assert (await a.put_route(f"r{i}", {**EXTRA, "match": {"prefix": f"/r{i}/"}})).status == 200
    assert (a.version, b.version) == (3, 1)  # B missed both notifications
    # An Envoy that held version 3 on A reconnects to B: B reads the store before answering.
    sent: list[SotwResponse] = []
    await b.catch_up("3")
    stream = b_cache.open_stream(Node("gw"), False, sent.append)  # type: ignore[arg-type]
    b_cache.on_request(stream, SotwRequest(ROUTE, version_info="3", names=("outrider_routes",)))
    assert sent and int(sent[0].snapshot_version) >= 3


async def test_a_client_ahead_of_a_store_that_lost_its_state_gets_a_newer_version() -> None:
    store = MemoryStore()
    b, _ = await _replica(store)
    store.state = None  # a Redis that restarted without persistence
    await b.catch_up("7")
    assert b.version > 7
    stored = await store.load()
    assert stored is not None and stored.version == b.version


async def test_a_refused_change_is_rolled_back_as_a_newer_version() -> None:
    store = MemoryStore()
    a, cache = await _replica(store)
    sent: list[SotwResponse] = []
    stream = cache.open_stream(Node("gw"), False, sent.append)  # type: ignore[arg-type]
    cache.on_request(stream, SotwRequest(ROUTE, names=("outrider_routes",)))
    cache.on_request(stream, SotwRequest(ROUTE, version_info=sent[-1].version, nonce=sent[-1].nonce,
                                         names=("outrider_routes",)))
    change = asyncio.create_task(a.put_route("extra", EXTRA))
    for _ in range(200):
        if len(sent) >= 2:
            break
        await asyncio.sleep(0.005)
    assert len(sent) == 2, "version 2 was not pushed"
    cache.on_request(stream, SotwRequest(ROUTE, version_info="1", nonce=sent[-1].nonce, names=("outrider_routes",),
                                         error="no"))
    outcome = await change
    assert outcome.status == 409 and outcome.body["rejected_version"] == "2"
    # The refused version 2 was persisted before it was pushed; the rollback is version 3, never 1 again.
    assert outcome.body["version"] == "3" and a.version == 3 and "extra" not in _names(a)
    stored = await store.load()
    assert stored is not None and stored.version == 3 and "extra" not in {r["name"] for r in stored.given["routes"]}
    assert int(sent[-1].snapshot_version) == 3


async def test_replicas_watching_one_file_commit_its_edit_once() -> None:
    store = MemoryStore()
    a, _ = await _replica(store)
    b, _ = await _replica(store)
    edited = _data()
    edited["routes"].append({"name": "file", **EXTRA})
    assert (await a.apply(_load(edited), "file", edited, file_digest="new")).status == 200
    outcome = await b.apply(_load(edited), "file", edited, file_digest="new")
    assert outcome.status == 200 and outcome.body.get("already_applied") is True
    assert store.saves == 2  # the initial state and A's commit; B found it applied


# --- the services' side -----------------------------------------------------------------------------------

TYPE = "type.googleapis.com/outrider.config.v1.ExtProcConfig"


def _response(version: str, payload: str, nonce: str = "1") -> discovery_pb2.DiscoveryResponse:
    from google.protobuf import any_pb2

    body = encode_json(TYPE, version, payload)
    return discovery_pb2.DiscoveryResponse(version_info=version, nonce=nonce, type_url=TYPE,
                                           resources=[any_pb2.Any(type_url=TYPE, value=body)])


def test_a_service_refuses_an_older_version_from_another_replica() -> None:
    from envoy.config.core.v3 import base_pb2

    sub = Subscription(base_pb2.Node(id="gw/ext_proc"), TYPE)
    sub.server = "a:1"
    update = sub.on_response(_response("5", '{"x":1}'))
    assert not isinstance(update, discovery_pb2.DiscoveryRequest) and update is not None
    sub.applied(_response("5", '{"x":1}'), "5")
    sub.server = "b:2"  # failed over to a replica that is behind
    refused = sub.on_response(_response("4", '{"x":0}', nonce="7"))
    assert isinstance(refused, discovery_pb2.DiscoveryRequest) and refused.HasField("error_detail")
    assert "older than version 5" in refused.error_detail.message and sub.applied_version == "5"
    newer = sub.on_response(_response("6", '{"x":2}', nonce="8"))
    assert newer is not None and not isinstance(newer, discovery_pb2.DiscoveryRequest)
    # The control plane it got version 5 from may roll back (an older version on the same replica).
    sub.server = "a:1"
    back = sub.on_response(_response("3", '{"x":0}', nonce="9"))
    assert back is not None and not isinstance(back, discovery_pb2.DiscoveryRequest)


def test_the_services_client_takes_a_list_of_replicas() -> None:
    from outrider.xds_client import ServiceConfigClient

    async def apply(version: str, payload: Any) -> None:
        return None

    client = ServiceConfigClient("10.0.0.1:18000, 10.0.0.2:18000", "gw/x", "c", TYPE, apply)
    assert client.targets == ["10.0.0.1:18000", "10.0.0.2:18000"]


def test_a_service_fails_over_to_the_next_replica_at_once_and_backs_off_after_a_whole_round() -> None:
    from outrider.xds_client import Failover

    failover = Failover(["a:1", "b:2", "c:3"], 0.1, 0.4)
    assert failover.current == "a:1"
    assert failover.after_stream(answered=True, jitter=0.0) == pytest.approx(0.05)  # A went away: a pause
    assert failover.current == "b:2"
    assert failover.after_stream(answered=False, jitter=1.0) == pytest.approx(0.1)  # B down: C at once-ish
    assert failover.current == "c:3"
    assert failover.after_stream(answered=False, jitter=1.0) == pytest.approx(0.1)
    assert failover.after_stream(answered=False, jitter=1.0) == pytest.approx(0.2)  # a whole round failed
    assert [failover.after_stream(False, 1.0) for _ in range(3)][-1] == pytest.approx(0.4)  # capped
    assert failover.after_stream(answered=True, jitter=1.0) == pytest.approx(0.1)  # answered: start over
    single = Failover(["a:1"], 0.1, 2.0)
    assert [round(single.after_stream(False, 1.0), 3) for _ in range(3)] == [0.1, 0.2, 0.4]
    assert single.current == "a:1"


# --- bootstrap and settings -------------------------------------------------------------------------------


def _config(**xds: Any) -> GatewayConfig:
    data = _data()
    data["services"]["xds"] = {"enabled": True, **xds}
    return _load(data)


def test_the_bootstrap_lists_every_replica_in_priority_order_with_health_checks() -> None:
    cluster = compile_ads_bootstrap(_config(servers=["10.0.0.1:18000", "10.0.0.2:18010"]))[
        "static_resources"]["clusters"][0]
    levels = cluster["load_assignment"]["endpoints"]
    assert [level.get("priority", 0) for level in levels] == [0, 1]
    assert [level["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
            for level in levels] == [18000, 18010]
    assert cluster["type"] == "STATIC"
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == ADS_SERVICE
    dns = compile_ads_bootstrap(_config(servers=["outrider-control-plane:18000"]))["static_resources"]["clusters"][0]
    assert dns["type"] == "STRICT_DNS" and "health_checks" in dns  # a headless Service lists every pod
    single = compile_ads_bootstrap(_config())["static_resources"]["clusters"][0]
    assert single["type"] == "STATIC" and "health_checks" not in single


def test_settings_refuse_a_bad_server_or_store() -> None:
    with pytest.raises(ValidationError, match="not host:port"):
        XdsService.model_validate({"servers": ["10.0.0.1"]})
    with pytest.raises(ValidationError, match="url"):
        XdsService.model_validate({"store": {"kind": "redis", "url": "localhost:6379"}})
    assert XdsService.model_validate({}).ads_servers() == ["127.0.0.1:18000"]
    assert XdsService.model_validate({"store": {"kind": "redis", "url": "redis://r:6379/0"}}).store.kind == "redis"


def test_the_cli_overrides_the_listen_settings() -> None:
    import argparse

    from xds_server.app import with_overrides

    args = argparse.Namespace(address="0.0.0.0", port=18100, admin_address=None, admin_port=18101,
                              metrics_port=None)
    settings = with_overrides(XdsService(), args)
    assert (settings.address, settings.port, settings.admin_port, settings.metrics_port) == (
        "0.0.0.0", 18100, 18101, 19084)


def test_state_versions_are_what_the_snapshot_versions_are_made_of() -> None:
    assert State(3, "d", {}).version == 3
