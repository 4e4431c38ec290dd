"""Test helpers: build limit tables from envoyproxy-format YAML and run one decision through a backend."""

from __future__ import annotations

from collections.abc import Sequence

from ratelimit_service.backends.base import Backend
from ratelimit_service.config import parse_descriptor_file
from ratelimit_service.decision import Decision, DescriptorInput, decide, plan
from ratelimit_service.limits import LimitTable, compile_table

T0 = 1_800_000_000_000  # a fixed "now" in ms, on a day boundary: windows start here
MINUTE = 60_000


def table_of(*texts: str) -> LimitTable:
    return compile_table(None, [parse_descriptor_file(t, "<test>") for t in texts])


def desc(*entries: tuple[str, str], hits: int = 1) -> DescriptorInput:
    return DescriptorInput(tuple(entries), hits)


async def run(backend: Backend, table: LimitTable, domain: str, descriptors: Sequence[DescriptorInput],
              now_ms: int) -> Decision:
    laid_out = plan(table, domain, descriptors, now_ms)
    outcomes = await backend.evaluate(domain, laid_out.checks, now_ms) if laid_out.checks else []
    return decide(laid_out, outcomes)


def limit_yaml(domain: str, algorithm: str, rpu: int, unit: str = "minute", burst: int | None = None,
               shadow: bool = False, key: str = "k") -> str:
    extra = f"\n      burst: {burst}" if burst is not None else ""
    return f"""
domain: {domain}
descriptors:
  - key: {key}
    shadow_mode: {str(shadow).lower()}
    rate_limit:
      unit: {unit}
      requests_per_unit: {rpu}
      algorithm: {algorithm}{extra}
"""
