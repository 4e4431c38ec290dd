"""The response JSON policy: ext_proc's Python path against the Lua of the native path, µs per body.

    .venv/bin/python bench/native_json_bench.py [--seconds 1.0]

The example route's policy (remove password/internal_id/secret_key at any depth, add api_version and
`${now()}`) on API-like bodies of about 200 B, 2 KB and 20 KB:
- python: jsonbody.parse(strict=False) + ResponseTransformer.body + jsonbody.dump, what ext_proc/session.py
  does per response body (without the gRPC message and Envoy's round trip to ext_proc around it);
- lua (in LuaJIT): ext_proc/lua/json_policy.lua's outrider_json_transform timed by a loop inside LuaJIT
  (os.clock, CPU time like the others), the script's own cost in Envoy's Lua (LuaJIT 2.1) without Envoy's body copy;
- lua (lupa call): the same through lupa, one Python → Lua call per body (string copies both ways).
Both sides are checked to give the same bytes first (tests/ext_proc/test_native_json.py proves it broadly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_table
from tests.ext_proc.native_json_harness import EXAMPLE, NOW_MS, LuaPolicy, params_for, python_answer


def body_of(size: int) -> bytes:
    """An API-like response of about `size` bytes: a list of users with secrets to remove."""
    items = []
    n = 0
    while True:
        items.append({"id": n, "name": f"user {n} Zoë", "email": f"u{n}@example.com", "password": "hunter2",
                      "profile": {"internal_id": 1000 + n, "score": n * 1.25, "tags": ["a", "b"], "active": n % 2 == 0},
                      "secret_key": None})
        n += 1
        body = json.dumps({"items": items, "total": n, "next": None}, ensure_ascii=False).encode()
        if len(body) >= size or n > 10_000:
            return body


def _time(fn: Callable[[], object], seconds: float) -> float:
    """CPU µs per call (this process: other load on the machine counts less), over about `seconds`."""
    for _ in range(20):
        fn()
    n, batch, start = 0, 20, time.process_time()
    while time.process_time() - start < seconds:
        for _ in range(batch):
            fn()
        n += batch
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    lua = LuaPolicy()
    params = lua.table(params_for(EXAMPLE))
    loop = lua.runtime.execute(b"""
        local transform = ...
        return function(raw, p, now, n)
          local start = os.clock()
          for _ = 1, n do transform(raw, p, now) end
          return (os.clock() - start) / n * 1e6
        end""", lua.transform)
    rows = []
    for size in (200, 2_000, 20_000):
        raw = body_of(size)
        expected = python_answer(raw, EXAMPLE)
        assert lua.answer(raw, params) == expected, "the Lua and the Python path differ"
        py = _time(lambda raw=raw: python_answer(raw, EXAMPLE), args.seconds)
        call = _time(lambda raw=raw: lua.transform(raw, params, NOW_MS), args.seconds)
        runs = max(50, int(args.seconds * 1e6 / max(call, 1.0)))
        inner = float(loop(raw, params, NOW_MS, runs))
        rows.append([f"{len(raw):,} B", f"{py:.1f}", f"{inner:.1f}", f"{call:.1f}", f"{py / inner:.1f}×"])
    print_table("Response JSON policy (example route), µs per body",
                ["body", "python", "lua (in LuaJIT)", "lua (lupa call)", "python / lua"], rows)


if __name__ == "__main__":
    main()
