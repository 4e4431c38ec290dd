"""Redis and Redis Cluster backends: one EVALSHA per request covers every descriptor and window."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from ratelimit_service.algorithms import Outcome
from ratelimit_service.backends.base import CHARGE_ALL, BackendError, Check
from ratelimit_service.backends.resp import ConnectionLost, RespClient, RespError
from ratelimit_service.keys import cluster_tag
from ratelimit_service.limits import BAN

# KEYS: one per fixed-window / token-bucket check, two (current, previous) per sliding-window check, two
# (ban, counter) per ban check. ARGV: now_ms, the charge mode (backends/base.py CHARGE_*), then 6 per
# check: algorithm, limit, window_ms, hits, extra, shadow, and a 7th, ban_ms, for a ban check. A ban check
# counts (or bans) at once, whatever the others say. Mirrors ratelimit_service/algorithms.py and
# MemoryBackend's charging. Every key written gets its TTL in the same call, so no key can outlive its
# window even if the service dies between calls.
LUA = """
local now = tonumber(ARGV[1])
local charge = tonumber(ARGV[2])
local out = {}
local commit = {}
local any_over = false
local k = 1
local b = 3
while b <= #ARGV do
  local algo = tonumber(ARGV[b])
  local limit = tonumber(ARGV[b + 1])
  local window = tonumber(ARGV[b + 2])
  local hits = tonumber(ARGV[b + 3])
  local extra = tonumber(ARGV[b + 4])
  local shadow = ARGV[b + 5] == '1'
  local over, remaining, reset
  if algo == 1 then
    local count = tonumber(redis.call('GET', KEYS[k]) or '0')
    reset = extra + window - now
    if count + hits > limit then
      over = true; remaining = math.max(0, limit - count)
    else
      over = false; remaining = limit - count - hits
    end
    commit[#commit + 1] = {1, KEYS[k], hits, window, 0, true}
    k = k + 1
  elseif algo == 2 then
    local cur = tonumber(redis.call('GET', KEYS[k]) or '0')
    local prev = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    local elapsed = now - extra
    local estimate = prev * (window - elapsed) / window + cur
    if estimate + hits <= limit then
      over = false; remaining = math.floor(limit - estimate - hits); reset = window - elapsed
    else
      over = true; remaining = math.max(0, math.floor(limit - estimate))
      if hits > limit then
        reset = window
      elseif cur + hits <= limit and prev > 0 then
        reset = math.max(1, math.ceil(window - elapsed - (limit - hits - cur) * window / prev))
      else
        reset = window - elapsed
        if cur > 0 then reset = reset + math.ceil(window * (1 - (limit - hits) / cur)) end
        reset = math.max(1, reset)
      end
    end
    commit[#commit + 1] = {1, KEYS[k], hits, 2 * window, 0, not over}
    k = k + 2
  elseif algo == 4 then
    local ban_ms = tonumber(ARGV[b + 6])
    b = b + 1
    local left = redis.call('PTTL', KEYS[k])
    if left > 0 then
      over = true; remaining = 0; reset = left
    else
      local count = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
      if count + hits > limit then
        redis.call('SET', KEYS[k], '1', 'PX', ban_ms)
        redis.call('DEL', KEYS[k + 1])
        over = true; remaining = 1; reset = ban_ms
      else
        over = false; remaining = limit - count - hits; reset = extra + window - now
        if hits > 0 then
          redis.call('INCRBY', KEYS[k + 1], hits)
          redis.call('PEXPIRE', KEYS[k + 1], window)
        end
      end
    end
    k = k + 2
  else
    local per_ms = limit / window
    local state = redis.call('HMGET', KEYS[k], 't', 'u')
    local tokens = tonumber(state[1])
    local updated = tonumber(state[2])
    if tokens == nil or updated == nil then
      tokens = extra
    else
      tokens = math.min(extra, tokens + math.max(0, now - updated) * per_ms)
    end
    local left = tokens
    if tokens < hits then
      over = true; remaining = math.floor(tokens)
      if hits > extra then reset = window else reset = math.max(1, math.ceil((hits - tokens) / per_ms)) end
    else
      over = false; left = tokens - hits; remaining = math.floor(left)
      reset = math.ceil((extra - left) / per_ms)
    end
    commit[#commit + 1] = {3, KEYS[k], hits, math.ceil(extra * window / limit) + 1000, left, not over}
    k = k + 1
  end
  if over then any_over = true end
  out[#out + 1] = over and 1 or 0
  out[#out + 1] = remaining
  out[#out + 1] = reset
  b = b + 6
end
if charge == 0 or (charge == 1 and not any_over) then
  for _, c in ipairs(commit) do
    if c[3] > 0 and c[6] then
      if c[1] == 1 then
        redis.call('INCRBY', c[2], c[3])
        redis.call('PEXPIRE', c[2], c[4])
      else
        redis.call('HSET', c[2], 't', tostring(c[5]), 'u', tostring(now))
        redis.call('PEXPIRE', c[2], c[4])
      end
    end
  end
end
return out
"""

def _encode(checks: Sequence[Check], now_ms: int, tag_prefix: str, charge: int) -> list[Any]:
    keys: list[str] = []
    args: list[Any] = [now_ms, charge]
    for c in checks:
        for key in c.keys:
            keys.append(tag_prefix + key)
        args.extend((c.algorithm, c.limit, c.window_ms, c.hits, c.extra, 1 if c.shadow else 0))
        if c.algorithm == BAN:
            args.append(c.ban_ms)
    return [len(keys), *keys, *args]


def _glob(text: str) -> str:
    """`text` matched literally by SCAN's MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


# Keys per SCAN step: listing bans walks the whole keyspace (counters too), an operator's call, not the hot path.
SCAN_COUNT = 1000


def _decode(raw: Any) -> list[Outcome]:
    return [(bool(raw[i]), int(raw[i + 1]), int(raw[i + 2])) for i in range(0, len(raw), 3)]


class RedisBackend:
    """A single Redis node (or a proxy in front of several), over one multiplexed connection."""

    def __init__(self, url: str, key_prefix: str = "", timeout_s: float = 0.02) -> None:
        self._prefix = key_prefix
        self._client = RespClient(url, connect_timeout_s=timeout_s)
        self._sha = hashlib.sha1(LUA.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int,
                       charge: int = CHARGE_ALL) -> list[Outcome]:
        args = _encode(checks, now_ms, self._prefix, charge)
        try:
            try:
                raw = await self._client.call("EVALSHA", self._sha, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # A restarted or flushed Redis forgot the script; EVAL loads it again.
                raw = await self._client.call("EVAL", LUA, *args)
        except (RespError, ConnectionLost, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        return _decode(raw)

    async def bans(self, tag: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        cursor = "0"
        try:
            while True:
                cursor_raw, keys = await self._client.call("SCAN", cursor, "MATCH", _glob(self._prefix) + "*ban",
                                                           "COUNT", SCAN_COUNT)
                for raw_key in keys:
                    key = _text(raw_key)
                    left = int(await self._client.call("PTTL", key))
                    if left > 0:
                        found.append((key[len(self._prefix):], left))
                cursor = _text(cursor_raw)
                if cursor == "0":
                    return found
        except (RespError, ConnectionLost, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc

    async def unban(self, tag: str, key: str) -> bool:
        try:
            return int(await self._client.call("DEL", self._prefix + key)) > 0
        except (RespError, ConnectionLost, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._client.close()


class RedisClusterBackend:
    """Redis Cluster: every key of one request carries the hash tag {prefix+domain}, so one slot holds them
    (keys.cluster_tag: escaped so the tag always ends at its own brace and the key stays injective).

    That keeps one request to one EVALSHA on one node (atomic), at the price of placing a domain's
    counters on one shard: scale out across domains, or run several domains.
    """

    def __init__(self, url: str, key_prefix: str = "", max_connections: int = 128,
                 timeout_s: float = 0.02) -> None:
        self._prefix = key_prefix
        # Per node, and a hard cap (no waiting), so leave room for bursts; errors go to the failure mode.
        self._client: Any = RedisCluster.from_url(
            url, max_connections=max_connections, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1))
        self._script = self._client.register_script(LUA)
        # Per domain; domains come from the config (a request's checks exist only for a configured one).
        self._tags: dict[str, str] = {}
        self._ready = False
        self._init_lock = asyncio.Lock()

    async def evaluate(self, tag: str, checks: Sequence[Check], now_ms: int,
                       charge: int = CHARGE_ALL) -> list[Outcome]:
        args = _encode(checks, now_ms, self._tag(tag), charge)
        try:
            if not self._ready:
                await self._initialize()
            try:
                raw = await self._client.evalsha(self._script.sha, *args)
            except NoScriptError:
                raw = await self._client.eval(LUA, *args)
        except (RedisError, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        return _decode(raw)

    async def _initialize(self) -> None:
        # redis-py's cluster client breaks when many first calls initialise it at once: do it once.
        async with self._init_lock:
            if not self._ready:
                await self._client.initialize()
                self._ready = True

    def _tag(self, tag: str) -> str:
        prefix = self._tags.get(tag)
        if prefix is None:
            prefix = self._tags[tag] = cluster_tag(self._prefix, tag)
        return prefix

    async def bans(self, tag: str) -> list[tuple[str, int]]:
        prefix = self._tag(tag)
        found: list[tuple[str, int]] = []
        try:
            if not self._ready:
                await self._initialize()
            # The domain's keys share one slot, so one node holds them; scan_iter walks every primary.
            async for raw_key in self._client.scan_iter(match=_glob(prefix) + "*ban", count=SCAN_COUNT):
                key = _text(raw_key)
                left = int(await self._client.pttl(key))
                if left > 0:
                    found.append((key[len(prefix):], left))
        except (RedisError, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc
        return found

    async def unban(self, tag: str, key: str) -> bool:
        try:
            if not self._ready:
                await self._initialize()
            return int(await self._client.delete(self._tag(tag) + key)) > 0
        except (RedisError, OSError) as exc:
            raise BackendError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()
