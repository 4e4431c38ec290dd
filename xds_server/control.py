"""The change pipeline: validate → build → consistency check → push/persist → wait for ACK, or roll back.

Every change (API call, edited config file) goes through `change`, one at a time per control plane.

Order, one control plane (file store): push → ACK → persist. Nobody else serves the gateway, so a change
Envoy refuses is simply never persisted and the previous snapshot is pushed again under its old version.

Order, replicas on a shared store (Redis): persist (compare-and-set on the version this replica serves) →
notify → push → ACK; a NACK or no ACK in time commits a *rollback*: the previous config as a newer version.
Why: every version any client ever receives is in the store before any replica pushes it, so the replica a
client fails over to can always find a version at least as new as the client's (it reads the store before
answering a new stream, `catch_up`), and versions never go back — a rollback is version v+1, never v-1.
The price: the other replicas push v as soon as they are notified, so their clients see the refused
version too (Envoy keeps its last good config on a NACK; the rollback follows within the ACK timeout). A
change that loses the compare-and-set (another replica committed first) is redone on the newer state; a
rollback that loses it is superseded by the newer change, which then owns the outcome.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from outrider.config.errors import ConfigError, Loc, format_loc
from outrider.config.model import GatewayConfig, RouteConfig, UpstreamConfig
from outrider.config.schema import route_model
from outrider.config.semantic import check_references
from outrider.envoy_protos import CompileError
from xds_server.cache import InconsistentSnapshot, Push, SnapshotCache
from xds_server.metrics import service_metrics
from xds_server.resources import SnapshotBuilder
from xds_server.snapshot import Snapshot, short
from xds_server.store import Conflict, State, Store, StoreUnavailable

log = logging.getLogger("xds_server.control")

# An edit turns the served (config, config as given) into the changed pair, or refuses with an Outcome. A
# function, not a value: when another replica commits first the edit is redone on the newer state.
Edited = tuple[GatewayConfig, dict[str, Any]]
# Validates a stored state as given (the same loader as the config file); raises ConfigError.
Loader = Callable[[dict[str, Any]], GatewayConfig]
# How often a change is redone on a newer state before the API answers 409 (busy replicas).
CAS_ATTEMPTS = 5


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
        loader: Loader | None = None,
    ) -> None:
        self._cache = cache
        self._store = store
        self._key = key
        self._builder = builder or SnapshotBuilder()
        self._loader = loader
        self._lock = asyncio.Lock()
        self._ack_timeout_s = ack_timeout_s
        self.config = config
        # The config as given (file values plus accepted API changes): what is persisted and listed.
        self.given = given
        self.version = version
        self.file_digest = file_digest
        self._next_version = version + 1
        self._snapshot: Snapshot | None = None
        self._refresh_wanted = asyncio.Event()

    async def start(self, persist: bool, expected: int | None = None) -> None:
        """Serve the initial config (before the gRPC server accepts any stream); persist it when asked,
        on a shared store only if the stored version is still `expected`."""
        started = time.perf_counter()
        snapshot = self._builder.build(self.config, str(self.version))
        service_metrics().build_seconds.observe(time.perf_counter() - started)
        self._cache.set_snapshot(self._key, snapshot)
        self._snapshot = snapshot
        service_metrics().version.set(self.version)
        if persist:
            try:
                await self._store.save(State(self.version, self.file_digest, self.given), expected)
            except Conflict:
                # Another replica started (or changed something) at the same moment: serve its state.
                await self.refresh()

    # --- the API's changes --------------------------------------------------------------------------

    async def put_route(self, name: str, body: Any) -> Outcome:
        route, problems = self._parse(route_model(), name, body, ("routes", name))
        if route is None:
            return Outcome(422, {"error": "invalid route", "problems": problems})

        def edit(config: GatewayConfig, given: dict[str, Any]) -> Edited:
            return (config.model_copy(update={"routes": _replace_named(list(config.routes), name, route)}),
                    {**given, "routes": _replace_named(given.get("routes", []), name, given_item(name, body))})

        return await self.change(edit, "api")

    async def delete_route(self, name: str) -> Outcome:
        def edit(config: GatewayConfig, given: dict[str, Any]) -> Edited | Outcome:
            routes = [r for r in config.routes if r.name != name]
            if len(routes) == len(config.routes):
                return Outcome(404, {"error": f"no route named {name!r}"})
            if not routes:
                return Outcome(422, {"error": "the last route cannot be deleted (the config needs one)"})
            return (config.model_copy(update={"routes": routes}),
                    {**given, "routes": [r for r in given.get("routes", []) if r.get("name") != name]})

        return await self.change(edit, "api")

    async def put_cluster(self, name: str, body: Any) -> Outcome:
        upstream, problems = self._parse(UpstreamConfig, name, body, ("upstreams", name))
        if upstream is None:
            return Outcome(422, {"error": "invalid cluster", "problems": problems})

        def edit(config: GatewayConfig, given: dict[str, Any]) -> Edited:
            upstreams = _replace_named(list(config.upstreams), name, upstream)
            return (config.model_copy(update={"upstreams": upstreams}),
                    {**given, "upstreams": _replace_named(given.get("upstreams", []), name,
                                                          given_item(name, body))})

        return await self.change(edit, "api")

    async def delete_cluster(self, name: str) -> Outcome:
        def edit(config: GatewayConfig, given: dict[str, Any]) -> Edited | Outcome:
            upstreams = [u for u in config.upstreams if u.name != name]
            if len(upstreams) == len(config.upstreams):
                return Outcome(404, {"error": f"no cluster named {name!r}"})
            return (config.model_copy(update={"upstreams": upstreams}),
                    {**given, "upstreams": [u for u in given.get("upstreams", []) if u.get("name") != name]})

        return await self.change(edit, "api")

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
        """Apply `config`, which must be what `given` (the config as given) validates to (a whole new file)."""
        return await self.change(lambda _config, _given: (config, given), source, file_digest)

    async def change(self, edit: Callable[[GatewayConfig, dict[str, Any]], Edited | Outcome], source: str,
                     file_digest: str | None = None) -> Outcome:
        async with self._lock:
            if self._store.shared:
                outcome = await self._change_shared(edit, source, file_digest)
            else:
                edited = edit(self.config, self.given)
                outcome = edited if isinstance(edited, Outcome) else await self._apply(*edited, source,
                                                                                      file_digest)
        service_metrics().changes.labels(source=source, outcome=str(outcome.status)).inc()
        return outcome

    def _build(self, config: GatewayConfig, version: int) -> Snapshot | Outcome:
        """The snapshot of a changed config, or the 422 that says why there is none."""
        problems = [{"field": format_loc(loc), "reason": reason} for loc, reason in check_references(config)]
        if problems:
            return Outcome(422, {"error": "invalid config", "problems": problems})
        started = time.perf_counter()
        try:
            snapshot = self._builder.build(config, str(version), self._snapshot)
        except CompileError as exc:
            return Outcome(
                422, {"error": "does not compile to valid Envoy resources", "problems": [str(exc)]}
            )
        service_metrics().build_seconds.observe(time.perf_counter() - started)
        return snapshot

    async def _apply(self, config: GatewayConfig, given: dict[str, Any], source: str,
                     file_digest: str | None) -> Outcome:
        """One control plane: push → ACK → persist (see the module docstring)."""
        version = self._next_version
        snapshot = self._build(config, version)
        if isinstance(snapshot, Outcome):
            return snapshot
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
            return self._refused(push, answered, source, self.version, version)
        service_metrics().push_seconds.observe(time.perf_counter() - pushed)
        self._serve(config, given, version, file_digest or self.file_digest, snapshot, push=False)
        await self._store.save(State(version, self.file_digest, given), None)
        log.info(
            "config changed", extra={"source": source, "version": version, "acked_by": sorted(push.acked_by)}
        )
        return Outcome(
            200, {"version": str(version), "acked_by": sorted(push.acked_by), "resources": snapshot.counts()}
        )

    async def _change_shared(self, edit: Callable[[GatewayConfig, dict[str, Any]], Edited | Outcome],
                             source: str, file_digest: str | None) -> Outcome:
        """Replicas: persist (compare-and-set) → notify → push → ACK, or commit a rollback (module docstring)."""
        for _attempt in range(CAS_ATTEMPTS):
            if file_digest is not None and file_digest == self.file_digest:
                # Every replica watches the same file: another one already committed this edit of it.
                return Outcome(200, {"version": str(self.version), "acked_by": [], "already_applied": True})
            edited = edit(self.config, self.given)
            if isinstance(edited, Outcome):
                return edited
            config, given = edited
            base = self.version
            version = base + 1
            snapshot = self._build(config, version)
            if isinstance(snapshot, Outcome):
                return snapshot
            problems = snapshot.inconsistencies()
            if problems:
                return Outcome(422, {"error": "inconsistent snapshot; nothing was pushed", "problems": problems})
            digest = file_digest or self.file_digest
            try:
                await self._store.save(State(version, digest, given), base)
            except Conflict:
                # Another replica committed first: take its state and redo this edit on top of it.
                service_metrics().store_conflicts.inc()
                log.info("change lost the compare-and-set; redoing it on the newer state",
                         extra={"source": source, "built_on": base})
                await self._refresh_locked()
                continue
            except StoreUnavailable as exc:
                return Outcome(503, {"error": "config store unavailable; nothing changed", "detail": str(exc)})
            previous = (self.config, self.given, self.file_digest)
            pushed = time.perf_counter()
            push = self._serve(config, given, version, digest, snapshot)
            answered = await push.wait(self._ack_timeout_s)
            if not push.nacks and answered:
                service_metrics().push_seconds.observe(time.perf_counter() - pushed)
                log.info("config changed", extra={"source": source, "version": version,
                                                   "acked_by": sorted(push.acked_by)})
                return Outcome(200, {"version": str(version), "acked_by": sorted(push.acked_by),
                                     "resources": snapshot.counts()})
            return await self._roll_back(push, answered, source, version, *previous)
        return Outcome(409, {"error": f"the config kept changing on other replicas ({CAS_ATTEMPTS} attempts); "
                                      "nothing changed, try again", "version": str(self.version)})

    async def _roll_back(self, push: Push, answered: bool, source: str, version: int,
                         config: GatewayConfig, given: dict[str, Any], digest: str) -> Outcome:
        """Replicas: the refused version is in the store already, so the rollback is a newer version."""
        back = version + 1
        snapshot = self._build(config, back)
        try:
            if isinstance(snapshot, Outcome):  # it compiled a moment ago; the builder is deterministic
                raise RuntimeError(f"the previous config no longer builds: {snapshot.body}")
            await self._store.save(State(back, digest, given), version)
        except (Conflict, StoreUnavailable) as exc:
            # A newer change was committed on top of the refused one (it owns the outcome now), or the
            # store is gone: serve whatever the store holds.
            log.error("rollback not committed", extra={"version": version, "error": repr(exc)})
            await self._refresh_locked()
            outcome = self._refused(push, answered, source, self.version, version)
            return Outcome(outcome.status, {**outcome.body, "rollback": f"not committed: {exc}"})
        self._serve(config, given, back, digest, snapshot)
        return self._refused(push, answered, source, back, version)

    def _refused(self, push: Push, answered: bool, source: str, serving: int, rejected: int) -> Outcome:
        if push.nacks:
            nacks = [{"node": n.node, "type": short(n.type_url), "error": n.error} for n in push.nacks]
            log.error("change rejected by Envoy; rolled back",
                      extra={"source": source, "version": rejected, "nacks": nacks})
            return Outcome(409, {"error": "rejected by Envoy; rolled back", "version": str(serving),
                                 "rejected_version": str(rejected), "nacks": nacks})
        log.error("no ACK in time; rolled back", extra={"source": source, "version": rejected})
        return Outcome(504, {"error": f"Envoy did not ACK within {self._ack_timeout_s}s; rolled back",
                             "version": str(serving), "rejected_version": str(rejected)})

    def _serve(self, config: GatewayConfig, given: dict[str, Any], version: int, digest: str,
               snapshot: Snapshot, push: bool = True) -> Push:
        """Make (config, given, version) the served state; push its snapshot unless it is live already."""
        result = self._cache.set_snapshot(self._key, snapshot) if push else Push(snapshot.version)
        self.config, self.given, self.version, self.file_digest = config, given, version, digest
        self._snapshot = snapshot
        self._next_version = max(self._next_version, version + 1)
        service_metrics().version.set(version)
        return result

    # --- replicas: following the shared store --------------------------------------------------------

    async def on_store_change(self, version: int | None) -> None:
        """A store notification (None: reconnected, anything may have changed): refresh when it is newer."""
        if version is None or version > self.version:
            self._refresh_wanted.set()

    async def follow(self) -> None:
        """Serve every newer state the store announces (run as a task beside the store's watch)."""
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            try:
                await self.refresh()
            except Exception:  # a replica that silently stopped following would serve stale config forever
                log.exception("refresh from the config store failed; waiting for the next notification")

    async def refresh(self) -> bool:
        async with self._lock:
            return await self._refresh_locked()

    async def catch_up(self, client_version: str) -> None:
        """Before a new ADS stream is answered: serve the store's newest state, and never a version older
        than `client_version`, the one the client says it holds (it may come from another replica)."""
        if not self._store.shared:
            return
        held = int(client_version) if client_version.isdigit() else 0
        try:
            stored = await self._store.stored_version()
        except StoreUnavailable as exc:
            log.warning("config store unavailable; answering with the served version",
                        extra={"version": self.version, "error": str(exc)})
            stored = None
        if (stored is None or stored <= self.version) and held <= self.version:
            return
        async with self._lock:
            await self._refresh_locked()
            if held > self.version:
                # Only if the store lost what it had (a Redis restarted empty): whatever a client got was
                # persisted first. Re-commit the served config under a version above the client's.
                log.warning("a client holds a version newer than the store's; re-committing the served "
                            "config above it", extra={"client_version": held, "version": self.version})
                await self._recommit(held + 1)

    async def _refresh_locked(self) -> bool:
        """Serve the stored state when it is newer than the served one; True when it was."""
        try:
            state = await self._store.load()
        except StoreUnavailable as exc:
            log.warning("config store unavailable; keeping the served version",
                        extra={"version": self.version, "error": str(exc)})
            return False
        if state is None or state.version < self.version:
            # The store lost its state (Redis restarted without persistence): write the served one back.
            await self._recommit(self.version, None if state is None else state.version)
            return False
        if state.version == self.version:
            return False
        if self._loader is None:
            raise RuntimeError("a controller on a shared store needs a loader")
        try:
            config = self._loader(state.given)
        except ConfigError as exc:
            log.error("stored state does not validate here; keeping the served version",
                      extra={"stored_version": state.version, "version": self.version,
                             "problems": [i.render(exc.filename) for i in exc.issues]})
            return False
        snapshot = self._build(config, state.version)
        if isinstance(snapshot, Outcome) or snapshot.inconsistencies():
            log.error("stored state does not build here; keeping the served version",
                      extra={"stored_version": state.version, "version": self.version})
            return False
        self._serve(config, state.given, state.version, state.file_digest, snapshot)
        service_metrics().store_refreshes.inc()
        log.info("serving a newer stored version", extra={"version": state.version})
        return True

    async def _recommit(self, version: int, expected: int | None = None) -> None:
        try:
            if expected is None:
                expected = await self._store.stored_version()
            await self._store.save(State(version, self.file_digest, self.given), expected)
        except (Conflict, StoreUnavailable) as exc:
            log.warning("could not write the served state back", extra={"error": repr(exc)})
            return
        if version != self.version:
            snapshot = self._build(self.config, version)
            if isinstance(snapshot, Snapshot):
                self._serve(self.config, self.given, version, self.file_digest, snapshot)

    # --- reads -------------------------------------------------------------------------------------

    def routes(self) -> dict[str, Any]:
        """The routes as given (file or API), in match order."""
        return {"version": str(self.version), "routes": copy.deepcopy(self.given.get("routes", []))}

    def clusters(self) -> dict[str, Any]:
        return {"version": str(self.version), "clusters": copy.deepcopy(self.given.get("upstreams", []))}
