"""Response cache policy (pure): rule matching, hashed keys, what may be stored and for how long, entries."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ext_proc.config import CacheConfig, glob_to_regex

# Never replayed from the cache: per-connection, per-response or per-user state.
_NOT_STORED = frozenset({"set-cookie", "content-length", "transfer-encoding", "connection", "date", "age",
                         "server", "x-cache-status", "keep-alive", "x-envoy-upstream-service-time"})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def cache_control(value: str) -> dict[str, str]:
    """`public, max-age=60` → {public: "", max-age: "60"} (names lower-cased)."""
    out = {}
    for item in value.split(","):
        name, _, arg = item.strip().partition("=")
        if name:
            out[name.lower()] = arg.strip().strip('"')
    return out


def _seconds(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(0, int(value))
    except ValueError:
        return 0  # an unreadable age is stale (RFC 9111 4.2.1)


def resource_key(prefix: str, path: str) -> str:
    """The index of every entry of one path (any query, any vary value): what a write or a purge empties."""
    return f"{prefix}r:{_sha(path)}"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    regex: re.Pattern[str]
    ttl_s: int
    vary_by: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float

    def encode(self) -> bytes:
        head = json.dumps({"s": self.status, "h": self.headers, "t": self.stored_at}, separators=(",", ":"))
        return head.encode() + b"\n" + self.body

    @classmethod
    def decode(cls, raw: bytes) -> CacheEntry | None:
        head, sep, body = raw.partition(b"\n")
        if not sep:
            return None
        try:
            meta = json.loads(head)
            return cls(int(meta["s"]), tuple((str(k), str(v)) for k, v in meta["h"]), body, float(meta["t"]))
        except (ValueError, KeyError, TypeError):
            return None  # a corrupt entry is a miss


@dataclass(frozen=True, slots=True)
class Lookup:
    """A GET that a rule covers: where its entry lives and whether we may read or write it."""

    key: str
    resource: str
    path: str
    rule: CompiledRule
    read: bool
    write: bool
    vary_authorization: bool


class CachePolicy:
    """One route's cache rules, compiled once."""

    def __init__(self, config: CacheConfig, exclude_headers: Sequence[str] = ()) -> None:
        self.prefix = config.key_prefix
        self.max_body_bytes = config.max_body_bytes
        self.rules = tuple(CompiledRule(re.compile(glob_to_regex(r.path)), r.ttl_s,
                                        tuple(h.lower() for h in r.vary_by)) for r in config.rules)
        # Headers Envoy adds to every response itself (the route's native headers) are not replayed.
        self._skip = _NOT_STORED | {h.lower() for h in exclude_headers}

    def rule_for(self, path: str) -> CompiledRule | None:
        for rule in self.rules:
            if rule.regex.match(path):
                return rule
        return None

    def resource_key(self, path: str) -> str:
        return resource_key(self.prefix, path)

    def lookup(self, method: str, path_with_query: str, headers: Mapping[str, str]) -> Lookup | None:
        if method != "GET":
            return None
        path = path_with_query.split("?", 1)[0]
        rule = self.rule_for(path)
        if rule is None:
            return None
        request_cc = cache_control(headers.get("cache-control", ""))
        # Vary values are hashed into the key: an Authorization header is never stored in clear.
        vary = "\n".join(f"{name}={_sha(headers.get(name, ''))}" for name in rule.vary_by)
        key = f"{self.prefix}e:{_sha(path_with_query + chr(10) + vary)}"
        no_store = "no-store" in request_cc
        fresh_only = no_store or "no-cache" in request_cc or request_cc.get("max-age") == "0"
        return Lookup(key, self.resource_key(path), path, rule, read=not fresh_only, write=not no_store,
                      vary_authorization="authorization" in rule.vary_by)

    def invalidates(self, method: str, path_with_query: str) -> str | None:
        """The resource whose entries an unsafe method's success invalidates (RFC 9111 4.4)."""
        if method not in UNSAFE_METHODS:
            return None
        path = path_with_query.split("?", 1)[0]
        return self.resource_key(path) if self.rule_for(path) is not None else None

    def store_ttl(self, lookup: Lookup, status: int, headers: Mapping[str, str], request_has_auth: bool,
                  body_size: int) -> int | None:
        """Seconds to keep this response, or None when it must not be stored."""
        if not lookup.write or status != 200 or body_size > self.max_body_bytes:
            return None
        if "set-cookie" in headers or headers.get("vary", "").strip() == "*":
            return None
        cc = cache_control(headers.get("cache-control", ""))
        if "no-store" in cc or "private" in cc or "no-cache" in cc:
            return None
        # A shared cache keeps answers to authenticated requests only when they are keyed by the
        # credential, or the origin said so explicitly (RFC 9111 3.5).
        if request_has_auth and not lookup.vary_authorization and not ("public" in cc or "s-maxage" in cc):
            return None
        ttl = lookup.rule.ttl_s
        limit = _seconds(cc.get("s-maxage")) if "s-maxage" in cc else _seconds(cc.get("max-age"))
        if limit is not None:
            ttl = min(ttl, limit)
        return ttl if ttl > 0 else None

    def entry(self, status: int, headers: Mapping[str, str], body: bytes, now: float) -> CacheEntry:
        kept = tuple((k, v) for k, v in headers.items() if not k.startswith(":") and k not in self._skip)
        return CacheEntry(status, kept, body, now)


def hit_headers(entry: CacheEntry, now: float) -> list[tuple[str, str]]:
    return [*entry.headers, ("age", str(max(0, int(now - entry.stored_at)))), ("x-cache-status", "HIT")]
