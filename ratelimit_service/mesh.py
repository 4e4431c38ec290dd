"""A mesh's descriptors read as this gateway's (`rate_limits.mesh`): the translation before planning. Pure.

A mesh's Envoy builds its own descriptors (Envoy Gateway: `[<route>=<route>, rule-0-match-0=rule-0-match-0,
rule-0-match-1=<x-user-id>]` in domain `<namespace>/<gateway>/<listener>`; Istio: whatever actions its
EnvoyFilter names). The compiled table knows ours (ratelimit_service/envoy.py): `[tier, user_id]`,
`[remote_address]`, `[endpoint]`. A request in a mapped domain is decided in `rate_limits.domain`, each
descriptor read by the first mapping whose `match` holds, so the mesh's callers and our own Envoy's share one
set of counters and plans. A descriptor no mapping reads is not limited (its status is OK), and a limit the
mesh sends with a descriptor is ignored: the plans are the config's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ratelimit_service.config import MeshDescriptor, RateLimitsConfig
from ratelimit_service.decision import DescriptorInput

Entry = tuple[str, str]
ANY = "*"
_MASKS = ("/32", "/128")  # Envoy's masked_remote_address appends the mask length to a full address


@dataclass(frozen=True)
class _Reading:
    match: tuple[Entry, ...]
    tier: str | None
    tier_from: str | None
    user: str | None
    per_ip: str | None
    endpoint: str | None

    def read(self, entries: dict[str, str]) -> tuple[Entry, ...] | None:
        for key, value in self.match:
            found = entries.get(key)
            if found is None or (value != ANY and found != value):
                return None
        if self.user is not None:
            user = entries.get(self.user)
            tier = self.tier if self.tier is not None else entries.get(self.tier_from or "")
            if not user or not tier:
                return None
            return (("tier", tier), ("user_id", user))
        if self.per_ip is not None:
            address = entries.get(self.per_ip)
            if not address:
                return None
            for mask in _MASKS:
                address = address.removesuffix(mask)
            return (("remote_address", address),)
        assert self.endpoint is not None
        return (("endpoint", self.endpoint),)


def _reading(d: MeshDescriptor, endpoint_values: dict[str, str]) -> _Reading:
    endpoint = endpoint_values[d.endpoint] if d.endpoint is not None else None
    return _Reading(tuple(d.match.items()), d.tier, d.tier_from, d.user, d.per_ip, endpoint)


class MeshMaps:
    """Mesh domain → its readings; `translate` turns a request's (domain, descriptors) into ours."""

    def __init__(self, rl: RateLimitsConfig | None) -> None:
        self.domain = rl.domain if rl is not None else ""
        self._maps: dict[str, tuple[_Reading, ...]] = {}
        if rl is None:
            return
        # The compiled table keys an endpoint by its value: the path, or the prefix + '*'.
        values = {(e.path if e.path is not None else str(e.prefix)): e.value for e in rl.endpoints}
        for m in rl.mesh:
            self._maps[m.domain] = tuple(_reading(d, values) for d in m.descriptors)

    def __bool__(self) -> bool:
        return bool(self._maps)

    def translate(self, domain: str, inputs: Sequence[DescriptorInput]) -> tuple[str, list[DescriptorInput]]:
        readings = self._maps.get(domain)
        if readings is None:
            return domain, list(inputs)
        out = []
        for d in inputs:
            entries: dict[str, str] = {}
            for key, value in d.entries:
                entries.setdefault(key, value)  # a key given twice: its first value, as a route matcher reads
            ours: tuple[Entry, ...] = ()
            for reading in readings:
                found = reading.read(entries)
                if found is not None:
                    ours = found
                    break
            # No entries: matches nothing in the table (status OK), keeping one status per descriptor.
            out.append(DescriptorInput(ours, d.hits))
        return self.domain, out
