"""The change pipeline: validate → build → consistency check → push → wait for ACK → persist, or roll back.

Every change (API call, edited config file) goes through `apply`, one at a time.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from outrider.config.errors import Loc, format_loc
from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig
from outrider.config.schema import route_model
from outrider.config.semantic import check_references
from outrider.envoy_protos import CompileError
from xds_server.cache import InconsistentSnapshot, SnapshotCache
from xds_server.metrics import service_metrics
from xds_server.resources import SnapshotBuilder
from xds_server.snapshot import Snapshot, short
from xds_server.store import State, Store

log = logging.getLogger("xds_server.control")


@dataclass(frozen=True)
class Outcome:
    """The answer to one change: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)


def _issues(error: ValidationError, prefix: Loc) -> list[dict[str, str]]:
    out = []
    for item in error.errors(include_url=False):
        loc: Loc = (
            *prefix,
            *(p for p in item["loc"] if isinstance(p, int) or not str(p).startswith("function-")),
        )
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        out.append({"field": format_loc(loc), "reason": message})
    return out


def given_item(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """A route or cluster as the API was given it, with the URL's name first: what the store keeps."""
    return {"name": name, **{k: copy.deepcopy(v) for k, v in body.items() if k != "name"}}


def _name_of(item: Any) -> Any:
    """The name of a validated item or of one as given."""
    return item.get("name") if isinstance(item, dict) else item.name


def _replace_named(items: list[Any], name: str, new: Any) -> list[Any]:
    """items with the one named `name` replaced by new (or new appended: new ones match after the others)."""
    out = list(items)
    index = next((i for i, item in enumerate(out) if _name_of(item) == name), None)
    if index is None:
        out.append(new)
    else:
        out[index] = new
    return out


class Controller:
    def __init__(
        self,
        cache: SnapshotCache,
        store: Store,
        key: str,
        config: GatewayConfig,
        given: dict[str, Any],
        version: int,
        file_digest: str,
        ack_timeout_s: float,
        builder: SnapshotBuilder | None = None,
    ) -> None:
        self._cache = cache
        self._store = store
        self._key = key
        self._builder = builder or SnapshotBuilder()
        self._lock = asyncio.Lock()
        self._ack_timeout_s = ack_timeout_s
        self.config = config
        # The config as given (file values plus accepted API changes): what is persisted and listed.
        self.given = given
        self.version = version
        self.file_digest = file_digest
        self._next_version = version + 1
        self._snapshot: Snapshot | None = None

    def start(self, persist: bool) -> None:
        """Serve the initial config (before the gRPC server accepts any stream)."""
        started = time.perf_counter()
        snapshot = self._builder.build(self.config, str(self.version))
        service_metrics().build_seconds.observe(time.perf_counter() - started)
        self._cache.set_snapshot(self._key, snapshot)
        self._snapshot = snapshot
        service_metrics().version.set(self.version)
        if persist:
            self._store.save(State(self.version, self.file_digest, self.given))

    # --- the API's changes --------------------------------------------------------------------------

    async def put_route(self, name: str, body: Any) -> Outcome:
        route, problems = self._parse(route_model(), name, body, ("routes", name))
        if route is None:
            return Outcome(422, {"error": "invalid route", "problems": problems})
        given = {**self.given, "routes": _replace_named(self.given.get("routes", []), name,
                                                        given_item(name, body))}
        routes = _replace_named(list(self.config.routes), name, route)
        return await self.apply(self.config.model_copy(update={"routes": routes}), "api", given)

    async def delete_route(self, name: str) -> Outcome:
        routes = [r for r in self.config.routes if r.name != name]
        if len(routes) == len(self.config.routes):
            return Outcome(404, {"error": f"no route named {name!r}"})
        if not routes:
            return Outcome(422, {"error": "the last route cannot be deleted (the config needs one)"})
        given = {**self.given, "routes": [r for r in self.given.get("routes", []) if r.get("name") != name]}
        return await self.apply(self.config.model_copy(update={"routes": routes}), "api", given)

    async def put_cluster(self, name: str, body: Any) -> Outcome:
        upstream, problems = self._parse(UpstreamConfig, name, body, ("upstreams", name))
        if upstream is None:
            return Outcome(422, {"error": "invalid cluster", "problems": problems})
        given = {**self.given, "upstreams": _replace_named(self.given.get("upstreams", []), name,
                                                           given_item(name, body))}
        upstreams = _replace_named(list(self.config.upstreams), name, upstream)
        return await self.apply(self.config.model_copy(update={"upstreams": upstreams}), "api", given)

    async def delete_cluster(self, name: str) -> Outcome:
        upstreams = [u for u in self.config.upstreams if u.name != name]
        if len(upstreams) == len(self.config.upstreams):
            return Outcome(404, {"error": f"no cluster named {name!r}"})
        given = {**self.given,
                 "upstreams": [u for u in self.given.get("upstreams", []) if u.get("name") != name]}
        return await self.apply(self.config.model_copy(update={"upstreams": upstreams}), "api", given)

    @staticmethod
    def _parse(
        model: type[RouteConfig] | type[UpstreamConfig], name: str, body: Any, prefix: Loc
    ) -> tuple[RouteConfig | UpstreamConfig | None, list[dict[str, str]]]:
        if not isinstance(body, dict):
            return None, [{"field": format_loc(prefix), "reason": "the body must be a JSON object"}]
        if body.get("name", name) != name:
            return None, [
                {
                    "field": format_loc((*prefix, "name")),
                    "reason": f"the body names {body.get('name')!r} but the URL names {name!r}",
                }
            ]
        try:
            return model.model_validate({**body, "name": name}), []
        except ValidationError as exc:
            return None, _issues(exc, prefix)

    # --- every change ------------------------------------------------------------------------------

    async def apply(self, config: GatewayConfig, source: str, given: dict[str, Any],
                    file_digest: str | None = None) -> Outcome:
        """Apply `config`, which must be what `given` (the config as given) validates to."""
        async with self._lock:
            outcome = await self._apply(config, source, given, file_digest)
        service_metrics().changes.labels(source=source, outcome=str(outcome.status)).inc()
        return outcome

    async def _apply(self, config: GatewayConfig, source: str, given: dict[str, Any],
                     file_digest: str | None) -> Outcome:
        problems = [{"field": format_loc(loc), "reason": reason} for loc, reason in check_references(config)]
        if problems:
            return Outcome(422, {"error": "invalid config", "problems": problems})
        version = self._next_version
        started = time.perf_counter()
        try:
            snapshot = self._builder.build(config, str(version), self._snapshot)
        except CompileError as exc:
            return Outcome(
                422, {"error": "does not compile to valid Envoy resources", "problems": [str(exc)]}
            )
        service_metrics().build_seconds.observe(time.perf_counter() - started)
        previous = self._snapshot
        try:
            push = self._cache.set_snapshot(self._key, snapshot)
        except InconsistentSnapshot as exc:
            return Outcome(
                422, {"error": "inconsistent snapshot; nothing was pushed", "problems": exc.problems}
            )
        # The version is used up even if Envoy rejects it: a NACKed version string is never reused.
        self._next_version += 1
        pushed = time.perf_counter()
        answered = await push.wait(self._ack_timeout_s)
        if push.nacks or not answered:
            assert previous is not None
            self._cache.set_snapshot(self._key, previous)
            if push.nacks:
                nacks = [
                    {"node": n.node, "type": short(n.type_url), "error": n.error}
                    for n in push.nacks
                ]
                log.error(
                    "change rejected by Envoy; rolled back",
                    extra={"source": source, "version": version, "nacks": nacks},
                )
                return Outcome(
                    409,
                    {
                        "error": "rejected by Envoy; rolled back",
                        "version": str(self.version),
                        "rejected_version": str(version),
                        "nacks": nacks,
                    },
                )
            log.error("no ACK in time; rolled back", extra={"source": source, "version": version})
            return Outcome(
                504,
                {
                    "error": f"Envoy did not ACK within {self._ack_timeout_s}s; rolled back",
                    "version": str(self.version),
                    "rejected_version": str(version),
                },
            )
        service_metrics().push_seconds.observe(time.perf_counter() - pushed)
        self.config = config
        self.given = given
        self.version = version
        self._snapshot = snapshot
        if file_digest is not None:
            self.file_digest = file_digest
        self._store.save(State(version, self.file_digest, given))
        service_metrics().version.set(version)
        log.info(
            "config changed", extra={"source": source, "version": version, "acked_by": sorted(push.acked_by)}
        )
        return Outcome(
            200, {"version": str(version), "acked_by": sorted(push.acked_by), "resources": snapshot.counts()}
        )

    # --- reads -------------------------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """The routes as given (file or API), in match order."""
        return {"version": str(self.version), "routes": copy.deepcopy(self.given.get("routes", []))}

    def clusters(self) -> dict[str, Any]:
        return {"version": str(self.version), "clusters": copy.deepcopy(self.given.get("upstreams", []))}
