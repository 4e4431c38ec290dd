"""The hand-written RESP client (backends/resp.py) answers exactly as redis-py does, on a real redis-server.

Every command goes through both clients; replies must be equal, errors must carry the same text. Then the
raw reply stream Redis sent is fed to our protocol a byte at a time and in odd splits (partial reads), and
must give the same replies again. redis-py runs with decode_responses=False (bytes, as ours) and its
response callbacks do not apply to the commands used (EVAL, GET, INCRBY, DEL, HSET, ECHO).

Documented differences, each safe for the rate limiter:
- Error codes it knows (ERR, NOSCRIPT, ...: redis-py _parsers/base.py parse_error, EXCEPTION_CLASSES) redis-py
  moves from the text to `status_code` and a subclass (NoScriptError); ours keeps the server's whole text
  ("NOSCRIPT No matching script..."), which redis_backend.py tests with startswith. Compared as code + text.
- An error nested in an array (only a Lua script can build one): both return it in place as a value, not
  raised; ours as hiredis.ReplyError, redis-py as its ResponseError. The text is equal. Our Lua script
  never returns one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from outrider.process import ManagedProcess
from ratelimit_service.backends.redis_backend import LUA
from ratelimit_service.backends.resp import RespClient, RespError, _Protocol
from tests.redis_harness import redis_url

BIG = bytes(range(256)) * 4096 + b"\r\n$-1\r\n*3\r\n"  # 1 MiB + RESP framing bytes inside a bulk string

# (name, command): each exercises one reply shape. KEY is replaced with a per-test key.
COMMANDS: list[tuple[str, tuple[Any, ...]]] = [
    ("nil bulk", ("GET", "KEY:missing")),
    ("integer", ("INCRBY", "KEY:n", 41)),
    ("integer 2^62", ("INCRBY", "KEY:n", 2**62)),
    ("negative integer", ("INCRBY", "KEY:m", -7)),
    ("big bulk string with CRLF and framing bytes", ("GET", "KEY:big")),
    ("empty bulk string", ("GET", "KEY:empty")),
    ("unicode bytes", ("ECHO", "é☃\x00")),
    ("nested arrays with nil", ("EVAL", "return {1, 'a', {2, {'b', false}}, {}}", 0)),
    ("empty array", ("EVAL", "return {}", 0)),
    ("status reply", ("EVAL", "return redis.status_reply('OK')", 0)),
    ("Lua nil", ("EVAL", "return nil", 0)),
    ("argument packing: int, negative, float, str, bytes, 2^63-1",
     ("EVAL", "return ARGV", 0, 1, -5, 2.5, "é x", b"\x00\r\n\xff", 2**63 - 1)),
    ("the rate limit script (3 fixed-window checks)",
     ("EVAL", LUA, 3, "KEY:a", "KEY:b", "KEY:c", 1_800_000_000_000,
      *[v for _ in range(3) for v in (1, 10, 60_000, 1, 1_799_999_940_000, 0)])),
    ("error reply", ("EVAL", "return redis.error_reply('MYERR boom')", 0)),
    ("WRONGTYPE error", ("GET", "KEY:hash")),
    ("error inside an array", ("EVAL", "return {1, redis.error_reply('INNER bad')}", 0)),
    ("unknown command", ("NOSUCHCOMMAND", "x")),
]


def _stateful(command: tuple[Any, ...]) -> bool:
    """Commands whose reply depends on how often they ran (counters): each client gets its own keys."""
    return command[0] == "INCRBY" or LUA in command


def _bind(command: tuple[Any, ...], prefix: str) -> tuple[Any, ...]:
    return tuple(a.replace("KEY", prefix) if isinstance(a, str) and a.startswith("KEY") else a for a in command)


def _normal(outcome: Any) -> Any:
    """A comparable form: errors (raised or nested) become ("error", text)."""
    if isinstance(outcome, ResponseError) and getattr(outcome, "status_code", None):
        return ("error", f"{outcome.status_code} {outcome}")  # the code redis-py took off the text
    if isinstance(outcome, hiredis.ReplyError | RespError | ResponseError):
        return ("error", str(outcome))
    if isinstance(outcome, list):
        return [_normal(item) for item in outcome]
    return outcome


async def _ours(client: RespClient, command: tuple[Any, ...]) -> Any:
    try:
        return _normal(await client.call(*command))
    except RespError as exc:
        return _normal(exc)


async def _library(client: aioredis.Redis, command: tuple[Any, ...]) -> Any:
    try:
        return _normal(await client.execute_command(*command))
    except ResponseError as exc:
        return _normal(exc)


@pytest.fixture
def prefix(shared_redis: ManagedProcess) -> Iterator[str]:
    name = f"resp-diff-{id(object())}"
    sync = redis.Redis(port=shared_redis.port)  # type: ignore[attr-defined]
    sync.set(f"{name}:big", BIG)
    sync.set(f"{name}:empty", b"")
    sync.hset(f"{name}:hash", "f", "v")
    yield name
    sync.delete(*sync.keys(f"{name}:*"))
    sync.close()


async def test_every_reply_shape_equals_redis_py(shared_redis: ManagedProcess, prefix: str) -> None:
    """Same replies, same error texts, for each command (RESP2, https://redis.io/docs/latest/develop/reference/protocol-spec/)."""
    ours = RespClient(redis_url(shared_redis), connect_timeout_s=2.0)
    theirs = aioredis.Redis.from_url(redis_url(shared_redis), decode_responses=False)
    try:
        for name, command in COMMANDS:
            bound = _bind(command, prefix)
            stateful = _stateful(command)
            mine = await _ours(ours, _bind(command, prefix + ":ours") if stateful else bound)
            lib = await _library(theirs, _bind(command, prefix + ":lib") if stateful else bound)
            assert mine == lib, name
        # Pipelined: 50 calls in flight on our one connection resolve to their own replies, in order.
        many = await asyncio.gather(*(ours.call("ECHO", str(i)) for i in range(50)))
        assert many == [str(i).encode() for i in range(50)]
    finally:
        await ours.close()
        await theirs.aclose()


async def test_noscript_keeps_the_error_code_redis_py_drops(shared_redis: ManagedProcess) -> None:
    """The one documented difference: the backend falls back to EVAL on a reply starting with NOSCRIPT."""
    ours = RespClient(redis_url(shared_redis), connect_timeout_s=2.0)
    theirs = aioredis.Redis.from_url(redis_url(shared_redis))
    try:
        with pytest.raises(RespError) as mine:
            await ours.call("EVALSHA", "0" * 40, 0)
        with pytest.raises(NoScriptError) as lib:
            await theirs.evalsha("0" * 40, 0)
        assert str(mine.value) == "NOSCRIPT " + str(lib.value)
    finally:
        await ours.close()
        await theirs.aclose()


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data


def _raw_replies(port: int, payload: bytes, marker: bytes) -> bytes:
    """What Redis sends back for `payload`, read off a plain socket up to the final ECHO of `marker`."""
    end = b"$%d\r\n%s\r\n" % (len(marker), marker)
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        while not data.endswith(end):
            chunk = sock.recv(1 << 16)
            assert chunk, "redis closed the connection"
            data += chunk
    return bytes(data)


@pytest.mark.parametrize("split", [1, 7, 4096], ids=["byte-by-byte", "7-byte reads", "4-KiB reads"])
async def test_partial_reads_give_the_same_replies(shared_redis: ManagedProcess, prefix: str, split: int) -> None:
    """Replies cut anywhere (TCP delivers any split) parse to what redis-py got from the same commands."""
    port = shared_redis.port  # type: ignore[attr-defined]
    # No counters here: the raw stream runs each command a second time.
    commands = [_bind(c, prefix) for _, c in COMMANDS if not _stateful(c) and c[1:] != ("KEY:big",)]
    commands.append(("GETRANGE", f"{prefix}:big", 0, 70_000))  # big, but byte-by-byte stays fast
    theirs = aioredis.Redis(port=port, decode_responses=False)
    try:
        expected = [await _library(theirs, c) for c in commands]
    finally:
        await theirs.aclose()

    loop = asyncio.get_running_loop()
    protocol = _Protocol()
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    futures = [protocol.send(hiredis.pack_command(c), loop) for c in [*commands, ("ECHO", "END-MARKER")]]
    await asyncio.sleep(0)  # the batch leaves at the end of the loop turn
    stream = _raw_replies(port, bytes(transport.written), b"END-MARKER")
    for start in range(0, len(stream), split):
        protocol.data_received(stream[start:start + split])
    got = []
    for future in futures[:-1]:
        exc = future.exception()
        got.append(_normal(exc if exc is not None else future.result()))
    assert got == expected
    assert futures[-1].result() == b"END-MARKER"
