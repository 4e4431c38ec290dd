"""Hand-written code against the library it replaces, in one run: keep ours only where it wins.

    .venv/bin/python bench/handwritten_bench.py [--seconds 1.0]

- RESP client (ratelimit_service/backends/resp.py) against redis-py's asyncio client (hiredis parser), both
  on one real redis-server: the rate limiter's real call (EVALSHA of its Lua script, 3 checks), one at a
  time and 32 in flight. ops/s is wall clock (Redis shares the machine); CPU µs/op is this process only,
  which is what the client costs the service.
- JSON decision line (outrider/logs.py encode_fields) against json.dumps of the same dict (and orjson,
  if installed, for reference only: it is not a dependency).
- JWS (ext_authz/jwt_verifier.py TokenVerifier.verify) against PyJWT's jwt.decode with the same key,
  issuer, audience and leeway; RS256 and HS256, and parsing alone (ours vs PyJWS._load).
The differential tests proving equal results are tests/kernel/test_handwritten_differential.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.common import print_table
from ext_authz.jwks import KeySet, VerificationKey
from ext_authz.jwt_verifier import ProviderSettings, TokenVerifier, _decode_json_object
from outrider.logs import DecisionLog, encode_fields
from outrider.process import ManagedProcess, free_port, tcp_ready
from ratelimit_service.backends.base import Check
from ratelimit_service.backends.redis_backend import LUA, _encode

Row = list[str]


def _time_sync(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(ops/s, CPU µs/op) of calling fn repeatedly for about `seconds`."""
    for _ in range(200):
        fn()
    n, batch = 0, 500
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(batch):
            fn()
        n += batch
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, cpu / n * 1e6


def _row(what: str, ours: tuple[float, float], theirs: tuple[float, float], library: str) -> Row:
    return [what, f"{ours[0]:,.0f}", f"{ours[1]:.2f}", library, f"{theirs[0]:,.0f}", f"{theirs[1]:.2f}",
            f"{theirs[1] / ours[1]:.2f}×"]


# CPU time is the figure to trust on a shared machine (wall clock counts time spent descheduled);
# "ours faster by" is library CPU / ours CPU per op: above 1, the hand-written code wins.
HEADERS = ["workload", "ours ops/s", "ours CPU µs/op", "library", "library ops/s", "library CPU µs/op",
           "ours faster by (CPU)"]


# --- RESP ------------------------------------------------------------------------------------------------

def _checks() -> list[Check]:
    window = 60_000
    now = int(time.time() * 1000)
    start = now - now % window
    return [Check(keys=(f"bench:{name}",), algorithm=0, limit=1_000_000_000, window_ms=window, hits=1,
                  extra=start, shadow=False, ban_ms=0) for name in ("ip", "user", "endpoint")]


async def _time_async(call: Callable[[], Awaitable[object]], seconds: float, in_flight: int) -> tuple[float, float]:
    async def worker(deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            await call()
            done += 1
        return done

    await asyncio.gather(*(worker(time.perf_counter() + 0.2) for _ in range(in_flight)))  # warm up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    n = sum(await asyncio.gather(*(worker(wall0 + seconds) for _ in range(in_flight))))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return n / wall, cpu / n * 1e6


async def _resp_rows(port: int, seconds: float) -> list[Row]:
    from ratelimit_service.backends.resp import RespClient

    args = _encode(_checks(), int(time.time() * 1000), "")
    sha = hashlib.sha1(LUA.encode()).hexdigest()
    ours = RespClient(f"redis://127.0.0.1:{port}/0", connect_timeout_s=2.0)
    await ours.call("SCRIPT", "LOAD", LUA)
    theirs = aioredis.Redis(host="127.0.0.1", port=port, max_connections=64)
    rows = []
    try:
        for in_flight in (1, 32):
            mine = await _time_async(lambda: ours.call("EVALSHA", sha, *args), seconds, in_flight)
            lib = await _time_async(lambda: theirs.evalsha(sha, *args), seconds, in_flight)
            rows.append(_row(f"RESP EVALSHA (3 checks), {in_flight} in flight", mine, lib, "redis-py 8.1 + hiredis"))
        mine = await _time_async(lambda: ours.call("GET", "bench:big"), seconds, 1)
        lib = await _time_async(lambda: theirs.get("bench:big"), seconds, 1)
        rows.append(_row("RESP GET 64 KiB bulk string, 1 in flight", mine, lib, "redis-py 8.1 + hiredis"))
    finally:
        await ours.close()
        await theirs.aclose()
    return rows


def resp_rows(seconds: float) -> list[Row]:
    if shutil.which("redis-server") is None:
        return [["RESP: redis-server not installed", "-", "-", "-", "-", "-", "-"]]
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="handwritten-bench-"))
    proc = ManagedProcess("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(workdir)],
                          ready=tcp_ready("127.0.0.1", port), log_path=workdir / "redis.log")
    proc.start().wait_ready(10)
    try:
        import redis
        redis.Redis(port=port).set("bench:big", b"x" * 65536)
        try:
            import uvloop
            return uvloop.run(_resp_rows(port, seconds))
        except ImportError:
            return asyncio.run(_resp_rows(port, seconds))
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# --- JSON log line ---------------------------------------------------------------------------------------

DECISION = {
    "event": "authz_decision", "request_id": "7f1c2a9e-5b3d-4c1a-9e8f-0a1b2c3d4e5f", "decision": "allow",
    "status": 200, "reason": "ok", "resource": "messages", "user_id": "alice@example.com", "method": "GET",
    "path": "/api/v1/messages/inbox",
}


def _old_encode_fields(fields: dict[str, Any]) -> str:
    """outrider/logs.py encode_fields up to this benchmark: a member loop around the C string quoter."""
    quote = encode_basestring_ascii
    parts = []
    for key, value in fields.items():
        if isinstance(value, str):
            encoded = quote(value)
        elif value is None:
            encoded = "null"
        elif value is True or value is False:
            encoded = "true" if value else "false"
        elif isinstance(value, int | float):
            encoded = json.dumps(value)
        else:
            encoded = json.dumps(value, default=str, separators=(",", ":"))
        parts.append(f"{quote(key)}:{encoded}")
    return ",".join(parts)


def json_rows(seconds: float) -> list[Row]:
    encoder = json.JSONEncoder(separators=(",", ":"), default=str).encode
    rows = [_row("log members: hand loop (before) vs prebuilt JSONEncoder (now)",
                 _time_sync(lambda: _old_encode_fields(DECISION), seconds),
                 _time_sync(lambda: encoder(DECISION), seconds), "json.JSONEncoder(...).encode"),
            _row("log members: encode_fields (now) vs json.dumps(**kw)", _time_sync(lambda: encode_fields(DECISION),
                                                                                  seconds),
                 _time_sync(lambda: json.dumps(DECISION, default=str, separators=(",", ":")), seconds),
                 "json.dumps(default=str, separators)")]

    # What a request pays: before, DecisionLog.write formatted the line; now it appends (time, dict).
    sink = DecisionLog("ext_authz", stream=io.StringIO(), max_buffered=1 << 30)
    buffer: list[str] = []

    def write_before() -> None:
        buffer.append(f'{{"ts":{time.time():.6f},"service":"ext_authz",{_old_encode_fields(DECISION)}}}')
        if len(buffer) > 10_000:
            buffer.clear()

    def write_now() -> None:
        sink.write(DECISION)
        if len(sink._buffer) > 10_000:
            sink._buffer.clear()

    rows.append(_row("DecisionLog.write on the request path: lazy (now) vs formatted (before)",
                     _time_sync(write_now, seconds), _time_sync(write_before, seconds), "(before: inline format)"))

    # And in all, write + its share of the batched flush (formatting moved, not removed).
    whole = DecisionLog("ext_authz", stream=io.StringIO(), max_buffered=1 << 30)
    joined: list[str] = []

    def line_now() -> None:
        whole.write(DECISION)
        if len(whole._buffer) >= 200:
            whole.flush()
            whole._stream = io.StringIO()

    def line_before() -> None:
        joined.append(f'{{"ts":{time.time():.6f},"service":"ext_authz",{_old_encode_fields(DECISION)}}}')
        if len(joined) >= 200:
            io.StringIO().write("\n".join(joined) + "\n")
            joined.clear()

    rows.append(_row("decision line, write + flush (batches of 200): now vs before", _time_sync(line_now, seconds),
                     _time_sync(line_before, seconds), "(before: hand loop, inline)"))
    try:
        import orjson  # reference only: not a dependency
    except ImportError:
        return rows
    rows.append(_row("log members: encode_fields vs orjson", _time_sync(lambda: encode_fields(DECISION), seconds),
                     _time_sync(lambda: orjson.dumps(DECISION, default=str), seconds), "orjson (not a dependency)"))
    return rows


# --- JWS ---------------------------------------------------------------------------------------------------

ISSUER, AUDIENCE, SECRET = "https://issuer.bench", "outrider", b"s" * 32


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, "tier": "enterprise",
            "roles": ["user", "admin"], "email": "alice@example.com"}


def jws_rows(seconds: float) -> list[Row]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key()
    vkey = VerificationKey(kid="k1", kty="RSA", algorithms=frozenset({"RS256"}), key=public, spki_sha256="bench")
    settings = ProviderSettings(name="bench", issuer=ISSUER, audiences=(AUDIENCE,), algorithms=("RS256", "HS256"),
                                hs256_secret=SECRET)
    verifier = TokenVerifier([settings])
    verifier.set_keys("bench", KeySet(keys={"k1": vkey}, fingerprint="bench"))
    rs256 = jwt.encode(_claims(), private, algorithm="RS256", headers={"kid": "k1"})
    hs256 = jwt.encode(_claims(), SECRET, algorithm="HS256")
    options = {"require": ["exp", "iss", "sub"]}

    def library(token: str, key: Any, alg: str) -> Callable[[], object]:
        return lambda: jwt.decode(token, key, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER, leeway=30,
                                  options=options)  # type: ignore[arg-type]

    rows = []
    for name, token, key, alg in (("RS256", rs256, public, "RS256"), ("HS256", hs256, SECRET, "HS256")):
        rows.append(_row(f"JWS verify + claims, {name}", _time_sync(lambda t=token: verifier.verify(t, time.time()),
                                                                     seconds),  # type: ignore[misc]
                         _time_sync(library(token, key, alg), seconds), "PyJWT 2.x jwt.decode"))

    def parse_ours() -> object:
        header, payload, signature = rs256.encode("ascii").split(b".")
        return _decode_json_object(header, "header"), _decode_json_object(payload, "payload"), \
            base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))

    pyjws = jwt.PyJWS()
    rows.append(_row("JWS parse only (3 segments, 2 JSON objects)", _time_sync(parse_ours, seconds),
                     _time_sync(lambda: pyjws._load(rs256), seconds), "PyJWS._load"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--only", choices=("resp", "json", "jws"), default=None)
    args = parser.parse_args()
    rows: list[Row] = []
    if args.only in (None, "resp"):
        rows += resp_rows(args.seconds)
    if args.only in (None, "json"):
        rows += json_rows(args.seconds)
    if args.only in (None, "jws"):
        rows += jws_rows(args.seconds)
    print_table("Hand-written code vs its library (same run)", HEADERS, rows)


if __name__ == "__main__":
    main()
