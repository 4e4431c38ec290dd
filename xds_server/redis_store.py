"""The control plane's state in Redis, shared by its replicas: compare-and-set saves, change notifications.

Layout (key_prefix `outrider:xds:` by default): the hash `<prefix>state` holds `version` (an integer) and
`state` (the same JSON as the file store); every save PUBLISHes the new version on `<prefix>changes`.

- **Compare-and-set.** A save is one Lua script (atomic in Redis): it writes only if the stored version is
  the one the change was built on and the new version is greater, and publishes in the same step, so two
  replicas can never both commit on the same base and versions only grow. The loser gets `Conflict` and
  redoes its change on the newer state (xds_server/control.py).
- **Notification, not polling.** Each replica SUBSCRIBEs to the channel; a message (or a (re)connection to
  Redis, since messages sent while it was away are lost: pub/sub is fire-and-forget) makes it load the
  stored state when it is newer than the one it serves.
- Redis Cluster is not supported (the channel is not a key, and one hash holds everything).

The ordering of a change with replicas (persist → notify → push → ACK, rollback as a newer version) is
explained in xds_server/control.py and docs/replicas.md.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from xds_server.store import Conflict, OnChange, State, StoreUnavailable, decode_state, encode_state

log = logging.getLogger("xds_server.redis_store")

# KEYS[1] the state hash; ARGV: expected version ("" = nothing stored), new version, state JSON, channel.
# Returns {1} when saved, {0, found} when the stored version is not the expected one (found "" = none).
_CAS = """
local found = redis.call('HGET', KEYS[1], 'version')
if not found then found = '' end
if found ~= ARGV[1] then return {0, found} end
if found ~= '' and tonumber(ARGV[2]) <= tonumber(found) then return {0, found} end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'state', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return {1}
"""


class RedisStore:
    shared = True

    def __init__(self, url: str, key_prefix: str = "outrider:xds:", *, timeout_s: float = 2.0,
                 reconnect_max_s: float = 2.0, password: str | None = None) -> None:
        self.url = url
        # Given apart from the URL (from an environment variable), so it is in no config file and no log.
        self._auth = {"password": password} if password else {}
        self.key = f"{key_prefix}state"
        self.channel = f"{key_prefix}changes"
        self._reconnect_max_s = reconnect_max_s
        # Short timeouts: a Redis that is gone must fail a change quickly, not hang the admin call.
        self._client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                         **self._auth)
        self._cas = self._client.register_script(_CAS)

    async def _field(self, name: str) -> Any:
        try:
            return await self._client.hget(self.key, name)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis {_redacted(self.url)}: {exc}") from exc

    async def load(self) -> State | None:
        text = await self._field("state")
        return None if text is None else decode_state(text)

    async def stored_version(self) -> int | None:
        found = await self._field("version")
        return None if found is None else int(found)

    async def save(self, state: State, expected: int | None) -> None:
        try:
            result = cast(list[Any], await self._cas(
                keys=[self.key],
                args=["" if expected is None else str(expected), str(state.version), encode_state(state),
                      self.channel]))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis {_redacted(self.url)}: {exc}") from exc
        if int(result[0]) != 1:
            found = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
            raise Conflict(expected, int(found) if found else None)

    async def watch(self, on_change: OnChange) -> None:
        """Subscribe until cancelled; reconnect with a growing, jittered delay when Redis goes away."""
        delay = 0.1
        while True:
            # Its own connection: a subscribed connection can run no other command. Health checks (PING)
            # find a Redis that vanished without closing the connection.
            client = aioredis.from_url(self.url, socket_connect_timeout=2.0, health_check_interval=5, **self._auth)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # Anything saved while unsubscribed was announced to nobody: look now.
                await on_change(None)
                delay = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        await on_change(_version(message.get("data")))
            except (RedisError, OSError) as exc:
                log.warning("config store subscription lost; reconnecting",
                            extra={"url": _redacted(self.url), "error": repr(exc)})
            finally:
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
                except (RedisError, OSError):
                    pass
            await asyncio.sleep(delay * (0.5 + random.random() / 2))  # noqa: S311 (jitter, not a secret)
            delay = min(delay * 2, self._reconnect_max_s)

    async def close(self) -> None:
        await self._client.aclose()


def _version(data: Any) -> int | None:
    try:
        return int(data)
    except (TypeError, ValueError):
        return None


def _redacted(url: str) -> str:
    """The URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
