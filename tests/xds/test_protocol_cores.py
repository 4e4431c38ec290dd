"""The pure cores: snapshot consistency, the SotW and delta stream state machines."""

from __future__ import annotations

from xds_server.delta import DeltaStream
from xds_server.protocol import Ack, DeltaRequest, Nack, SotwRequest, Stale
from xds_server.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resource, Snapshot
from xds_server.sotw import SotwStream


def snap(
    version: str,
    clusters: dict[str, bytes],
    routes: bytes = b"r",
    previous: Snapshot | None = None,
    route_refs: tuple[str, ...] = ("a",),
) -> Snapshot:
    resources = {
        CLUSTER: {n: Resource.of(n, b, frozenset({(ENDPOINT, n)})) for n, b in clusters.items()},
        ENDPOINT: {n: Resource.of(n, b"e-" + n.encode()) for n in clusters},
        LISTENER: {"l": Resource.of("l", b"l", frozenset({(ROUTE, "rc")}))},
        ROUTE: {"rc": Resource.of("rc", routes, frozenset((CLUSTER, c) for c in route_refs))},
    }
    return Snapshot.build(version, resources, previous)


def test_consistency_finds_dangling_references() -> None:
    assert snap("1", {"a": b"1"}).consistent()
    bad = snap("1", {"a": b"1"}, route_refs=("a", "missing"))
    assert bad.inconsistencies() == ["rds resource 'rc' refers to cds resource 'missing', which does not exist"]
    no_endpoints = Snapshot.build("1", {CLUSTER: {"a": Resource.of("a", b"1", frozenset({(ENDPOINT, "a")}))}})
    assert "eds resource 'a'" in no_endpoints.inconsistencies()[0]


def test_unchanged_types_keep_their_version() -> None:
    first = snap("1", {"a": b"1"})
    second = snap("2", {"a": b"1"}, routes=b"r2", previous=first)
    assert second.type_versions == {CLUSTER: "1", ENDPOINT: "1", LISTENER: "1", ROUTE: "2"}


def _handshake(stream: SotwStream, snapshot: Snapshot) -> dict[str, str]:
    """Envoy's startup: CDS, EDS, LDS, RDS requests, each ACKed; returns the last nonce per type."""
    nonces = {}
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("a",)), (LISTENER, ()), (ROUTE, ("rc",))):
        responses, events = stream.on_request(SotwRequest(type_url, names=names), snapshot)
        assert [r.type_url for r in responses] == [type_url] and events == []
        nonces[type_url] = responses[0].nonce
        responses, events = stream.on_request(
            SotwRequest(type_url, responses[0].version, responses[0].nonce, names), snapshot
        )
        assert responses == [] and isinstance(events[0], Ack)
    return nonces


def test_sotw_initial_requests_answered_with_version_and_nonce() -> None:
    stream = SotwStream()
    snapshot = snap("1", {"a": b"1", "b": b"2"})
    responses, _ = stream.on_request(SotwRequest(CLUSTER), snapshot)
    (cds,) = responses
    assert cds.version == "1" and cds.nonce and {r.name for r in cds.resources} == {"a", "b"}
    responses, _ = stream.on_request(SotwRequest(ENDPOINT, names=("a",)), snapshot)
    assert [r.name for r in responses[0].resources] == ["a"]  # only the requested names
    assert responses[0].nonce != cds.nonce


def test_sotw_push_order_and_only_changed_types() -> None:
    stream = SotwStream()
    first = snap("1", {"a": b"1"})
    _handshake(stream, first)
    routes_only = snap("2", {"a": b"1"}, routes=b"r2", previous=first)
    assert [r.type_url for r in stream.on_snapshot(routes_only)] == [ROUTE]
    clusters_too = snap("3", {"a": b"new"}, routes=b"r3", previous=routes_only)
    # Clusters first, then their endpoints (resent: an updated cluster warms until it has them), then routes.
    assert [r.type_url for r in stream.on_snapshot(clusters_too)] == [CLUSTER, ENDPOINT, ROUTE]
    assert stream.on_snapshot(clusters_too) == []  # same content again: nothing is resent


def test_sotw_stale_nonce_is_ignored() -> None:
    stream = SotwStream()
    first = snap("1", {"a": b"1"})
    _handshake(stream, first)
    old = stream.on_snapshot(snap("2", {"a": b"1"}, routes=b"r2", previous=first))[0]
    new = stream.on_snapshot(snap("3", {"a": b"1"}, routes=b"r3", previous=first))[0]
    responses, events = stream.on_request(
        SotwRequest(ROUTE, "1", old.nonce, ("rc",), "late NACK"), snap("3", {"a": b"1"}, routes=b"r3")
    )
    assert responses == [] and events == [Stale(ROUTE, old.nonce)]
    _, events = stream.on_request(SotwRequest(ROUTE, "3", new.nonce, ("rc",)), snap("3", {"a": b"1"}, routes=b"r3"))
    assert events == [Ack(ROUTE, new.nonce, "3", "3")]
    assert stream.acked_versions()[ROUTE] == "3"


def test_sotw_nack_recorded_and_not_resent() -> None:
    stream = SotwStream()
    first = snap("1", {"a": b"1"})
    _handshake(stream, first)
    bad = snap("2", {"a": b"1"}, routes=b"bad", previous=first)
    (pushed,) = stream.on_snapshot(bad)
    responses, events = stream.on_request(SotwRequest(ROUTE, "1", pushed.nonce, ("rc",), "bad regex"), bad)
    assert responses == []  # the NACKed version is not sent again
    assert events == [Nack(ROUTE, pushed.nonce, "2", "2", "bad regex")]
    assert stream.acked_versions()[ROUTE] == "1"  # the node keeps its last ACKed config
    assert stream.on_snapshot(bad) == []
    # A rollback to the good snapshot is sent again.
    (rolled_back,) = stream.on_snapshot(first)
    assert rolled_back.version == "1" and rolled_back.resources[0].body == b"r"


def test_sotw_new_names_in_an_ack_are_answered() -> None:
    stream = SotwStream()
    snapshot = snap("1", {"a": b"1", "b": b"2"})
    (eds,), _ = stream.on_request(SotwRequest(ENDPOINT, names=("a",)), snapshot)
    (more,), _ = stream.on_request(SotwRequest(ENDPOINT, "1", eds.nonce, ("a", "b")), snapshot)
    assert [r.name for r in more.resources] == ["a", "b"]


def test_sotw_waits_without_snapshot_then_answers_on_set() -> None:
    stream = SotwStream()
    assert stream.on_request(SotwRequest(CLUSTER), None) == ([], [])
    assert [r.type_url for r in stream.on_snapshot(snap("1", {"a": b"1"}))] == [CLUSTER]


def test_delta_sends_only_changed_resources_and_removals() -> None:
    stream = DeltaStream()
    first = snap("1", {"a": b"1", "b": b"2"})
    (cds,), _ = stream.on_request(DeltaRequest(CLUSTER), first)
    assert {r.name for r in cds.resources} == {"a", "b"} and cds.removed == ()
    (eds,), _ = stream.on_request(DeltaRequest(ENDPOINT, subscribe=("a", "b")), first)
    assert {r.name for r in eds.resources} == {"a", "b"}
    stream.on_request(DeltaRequest(CLUSTER, nonce=cds.nonce), first)
    stream.on_request(DeltaRequest(ENDPOINT, nonce=eds.nonce), first)
    # One cluster changes: the push carries that one cluster (and its endpoints, which it needs to warm).
    second = snap("2", {"a": b"1", "b": b"changed"}, previous=first)
    cds2, eds2 = stream.on_snapshot(second)
    assert [r.name for r in cds2.resources] == ["b"] and cds2.system_version == "2"
    assert [r.name for r in eds2.resources] == ["b"]
    # A cluster removed: named in removed_resources, nothing else resent.
    third = snap("3", {"a": b"1"}, previous=second)
    (cds3, *_) = stream.on_snapshot(third)
    assert cds3.resources == () and cds3.removed == ("b",)


def test_delta_initial_versions_skip_what_the_node_has() -> None:
    first = snap("1", {"a": b"1", "b": b"2"})
    have = {"a": first.get(CLUSTER)["a"].version, "gone": "x"}
    (response,), _ = DeltaStream().on_request(DeltaRequest(CLUSTER, initial_versions=have), first)
    assert [r.name for r in response.resources] == ["b"] and response.removed == ("gone",)


def test_delta_ack_nack_and_stale_nonce_still_applies_subscriptions() -> None:
    stream = DeltaStream()
    first = snap("1", {"a": b"1", "b": b"2"})
    (eds,), _ = stream.on_request(DeltaRequest(ENDPOINT, subscribe=("a",)), first)
    responses, events = stream.on_request(DeltaRequest(ENDPOINT, nonce=eds.nonce, error="bad"), first)
    assert responses == [] and events == [Nack(ENDPOINT, eds.nonce, "1", "1", "bad")]
    responses, events = stream.on_request(DeltaRequest(ENDPOINT, subscribe=("b",), nonce="999"), first)
    assert events == [Stale(ENDPOINT, "999")]
    assert [r.name for r in responses[0].resources] == ["b"]
    responses, _ = stream.on_request(DeltaRequest(ENDPOINT, unsubscribe=("a",), subscribe=("nope",)), first)
    assert responses[0].removed == ("nope",)  # a name that does not exist is reported as such, once
    assert stream.on_snapshot(first) == []
