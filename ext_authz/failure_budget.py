"""Per-client budget of refused tokens (a token bucket per client address, bounded table). Pure: time passed in."""

from __future__ import annotations

import functools
import ipaddress
import math
from collections import OrderedDict

# One IPv6 client usually holds a whole /64 (SLAAC, privacy addresses): budget it as one client, or it
# could mint a fresh address, and so a fresh budget, for every token.
IPV6_CLIENT_PREFIX = 64
UNKNOWN_CLIENT = "unknown"


@functools.lru_cache(maxsize=4096)  # parsing an address costs ~6 µs; the same clients come back
def client_key(address: str) -> str:
    """The budget key of a client address: the IPv4 address, the IPv6 /64, or the text itself if not an IP."""
    text = address.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1:text.index("]")]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text[:64] or UNKNOWN_CLIENT
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


class FailureBudget:
    """Each client may have `burst` refused tokens at once, refilled at `per_second`; over it, it waits.

    The table keeps the `max_clients` most recently failing clients (least recently failing evicted
    first), so a flood from many addresses costs bounded memory. An evicted client starts afresh with a
    full bucket, which is the same as a client that never failed.
    """

    __slots__ = ("_buckets", "_burst", "_max_clients", "_per_second")

    def __init__(self, burst: int, per_second: float, max_clients: int) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        if not (math.isfinite(per_second) and per_second > 0):
            raise ValueError("per_second must be a finite number > 0")
        if max_clients < 1:
            raise ValueError("max_clients must be >= 1")
        self._burst = float(burst)
        self._per_second = per_second
        self._max_clients = max_clients
        # client -> (tokens left, time they were counted)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _tokens(self, client: str, now: float) -> float:
        entry = self._buckets.get(client)
        if entry is None:
            return self._burst
        tokens, at = entry
        # max(0, …): a clock that went backwards must not take tokens away.
        return min(self._burst, tokens + max(0.0, now - at) * self._per_second)

    def retry_after(self, client: str, now: float) -> float | None:
        """None while the client may still fail; else the seconds until it may fail once more."""
        tokens = self._tokens(client, now)
        if tokens >= 1.0:
            return None
        return (1.0 - tokens) / self._per_second

    def record_failure(self, client: str, now: float) -> None:
        """Take one token from the client's bucket (never below zero)."""
        tokens = max(0.0, self._tokens(client, now) - 1.0)
        buckets = self._buckets
        buckets[client] = (tokens, now)
        buckets.move_to_end(client)
        while len(buckets) > self._max_clients:
            buckets.popitem(last=False)

    def clear(self) -> None:
        self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)
