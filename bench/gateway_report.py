"""The gateway benchmark's tables: throughput, latency at half capacity, CPU and memory per process tree,
before → after against an earlier results file, and issue 15's targets with pass/fail."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.common import print_table
from bench.gateway_setup import BASELINE, SCENARIOS, SERVICES, Scenario
from bench.results_md import Previous, number

VARIANT_LABEL = {"floor": "trivial floors", "w1": "outrider, 1 worker", "w2": "outrider, 2 workers"}
PROCESSES = (*SERVICES, "envoy", "redis")
PROCESS_LABEL = {"ext_authz": "ext_authz", "ratelimit": "ratelimit", "ext_proc": "ext_proc", "envoy": "Envoy",
                 "redis": "Redis"}
# The title the before → after comparison reads back from an earlier file: keep it stable across versions.
CPU_SAT_TITLE = "CPU µs per request at saturation"
Sample = dict[str, float]
Samples = dict[tuple[str, str], list[Sample]]


@dataclass(frozen=True)
class Target:
    """One of issue 15's targets: a bound on one measure of the scenario issue 15 names `issue`."""

    issue: str  # Scenario.issue
    measure: str  # "ratio" (req/s ÷ Envoy → origin's, same run, no non-2xx) or "added_p99" (ms)
    bound: float
    text: str

    def met(self, value: float, non_2xx: float) -> bool:
        if self.measure == "ratio":
            return value >= self.bound and non_2xx == 0
        return value <= self.bound


TARGETS = (
    Target("python", "ratio", 0.12, "python mode, GET /api/v1/messages/inbox: req/s ÷ Envoy → origin ≥ 0.12, "
                                    "no non-2xx"),
    Target("native", "ratio", 0.5, "native mode: req/s ÷ Envoy → origin ≥ 0.5, no non-2xx"),
    Target("cache", "ratio", 0.2, "cache hit: req/s ÷ Envoy → origin ≥ 0.2, no non-2xx"),
    Target("python", "added_p99", 5.0, "python mode: added p99 at 50 % of capacity ≤ 5 ms"),
    Target("native", "added_p99", 1.0, "native mode: added p99 at 50 % of capacity ≤ 1 ms"),
)


def med(samples: list[Sample], key: str) -> float:
    """Median over the rounds, NaN (a run with too few answers) left out; NaN if nothing is left."""
    values = [s[key] for s in samples if key in s and not math.isnan(s[key])]
    return statistics.median(values) if values else math.nan


def fmt(value: float, spec: str = ".2f") -> str:
    return "—" if math.isnan(value) else format(value, spec)


def ratio(value: float, floor: float | None) -> str:
    return f" ({value / floor:.2f}×)" if floor else ""


@dataclass
class Report:
    """Everything one run measured, and the tables made of it."""

    samples: Samples
    memory: dict[str, list[Sample]]
    variants: Sequence[str]

    def rows(self) -> list[tuple[Scenario, str, list[Sample]]]:
        """(scenario, variant, its samples) in table order; Envoy-only scenarios have variant '-'."""
        out = []
        for scenario in SCENARIOS:
            for variant in self.variants if scenario.services else ["-"]:
                samples = self.samples.get((scenario.name, variant))
                if samples:
                    out.append((scenario, variant, samples))
        return out

    def floor(self, scenario: Scenario, variant: str) -> list[Sample] | None:
        return self.samples.get((scenario.name, "floor")) if variant not in ("floor", "-") else None

    def to_baseline(self, samples: list[Sample]) -> float:
        """Issue 15's ratio: req/s ÷ Envoy → origin's req/s, each round's to the baseline measured in that variant
        round (`pair_rps`), median over the rounds; without it, to the median of the Envoy-only baseline rows."""
        paired = [s["rps"] / s["pair_rps"] for s in samples if s.get("pair_rps", 0) > 0]
        if paired:
            return statistics.median(paired)
        proxied = self.samples.get((BASELINE, "-"))
        return med(samples, "rps") / med(proxied, "rps") if proxied else math.nan

    def throughput(self) -> str:
        rows = []
        for scenario, variant, samples in self.rows():
            floor, rps = self.floor(scenario, variant), med(samples, "rps")
            rows.append([scenario.name, label(scenario, variant),
                         f"{rps:,.0f}{ratio(rps, med(floor, 'rps') if floor else None)}",
                         fmt(med(samples, "pair_rps"), ",.0f"), fmt(self.to_baseline(samples), ".3f"),
                         f"{sum(s['non2xx'] for s in samples):.0f}"])
        return print_table("Throughput", ["scenario", "gRPC servers", "req/s at saturation (× floor)",
                                          "Envoy → origin req/s, same round", "× Envoy → origin", "non-2xx"], rows)

    def latency(self) -> str:
        rows = []
        for scenario, variant, samples in self.rows():
            rows.append([scenario.name, label(scenario, variant),
                         f"{fmt(med(samples, 'half_rate'), ',.0f')} ({fmt(med(samples, 'half_rps'), ',.0f')})",
                         fmt(med(samples, "p50")), fmt(med(samples, "p90")), fmt(med(samples, "p99")),
                         fmt(med(samples, "base_p99")), fmt(med(samples, "added_p99"))])
        return print_table(
            "Latency at 50 % of capacity (open loop at half the scenario's req/s at saturation)",
            ["scenario", "gRPC servers", "req/s asked (done)", "p50 ms", "p90 ms", "p99 ms",
             "Envoy → origin p99 ms, same rate", "added p99 ms"], rows)

    def cpu_half(self) -> str:
        rows = []
        for scenario, variant, samples in self.rows():
            floor, cells = self.floor(scenario, variant), []
            for name in PROCESSES:
                if name in SERVICES and name not in scenario.services:
                    cells.append("—")
                    continue
                value = med(samples, f"cpu_half_{name}")
                base = med(floor, f"cpu_half_{name}") if floor and name in SERVICES else None
                cells.append(f"{fmt(value, '.0f')}{ratio(value, base)}")
            rows.append([scenario.name, label(scenario, variant), *cells])
        return print_table("CPU µs per request at 50 % of capacity, per process tree (× the trivial floor's)",
                           ["scenario", "gRPC servers", *(PROCESS_LABEL[p] for p in PROCESSES)], rows)

    def sat_cells(self, samples: list[Sample]) -> list[float]:
        return [med(samples, f"cpu_sat_{name}") for name in PROCESSES]

    def cpu_sat(self) -> str:
        rows = []
        for scenario, variant, samples in self.rows():
            cells = self.sat_cells(samples)
            rows.append([scenario.name, label(scenario, variant), f"{med(samples, 'rps'):,.0f}",
                         *[f"{c:.0f}" for c in cells], f"{sum(cells):.0f}"])
        return print_table(f"{CPU_SAT_TITLE} (where the 2 cores go; the load generator is the rest)",
                           ["scenario", "gRPC servers", "req/s", *(PROCESS_LABEL[p] for p in PROCESSES), "sum"],
                           rows)

    def peak_memory(self) -> str:
        rows = []
        for variant in self.variants:
            if self.memory.get(variant):
                samples = self.memory[variant]
                rows.append([VARIANT_LABEL[variant], *[f"{max(s[name] for s in samples):.0f}" for name in PROCESSES]])
        return print_table("Peak memory (VmHWM, MiB; a service's processes summed: parent + workers)",
                           ["gRPC servers", *(PROCESS_LABEL[p] for p in PROCESSES)], rows)

    def before_after(self, previous: Previous) -> str:
        """Issue 15's scenarios (and the Envoy → origin baseline, the run-to-run noise) at saturation: each
        figure as before → after, the before read from `previous`'s table of the same title."""
        rows = []
        for scenario, variant, samples in self.rows():
            if not (scenario.issue or scenario.name == BASELINE) or variant == "floor":
                continue
            old = previous.rows.get((scenario.name, label(scenario, variant)), {})
            cells = self.sat_cells(samples)
            after = [med(samples, "rps"), *cells, sum(cells)]
            columns = ["req/s", *(PROCESS_LABEL[p] for p in PROCESSES), "sum"]
            rows.append([scenario.name, label(scenario, variant),
                         *[f"{_old(old.get(column))} → {value:,.0f}" for column, value in zip(columns, after,
                                                                                                strict=True)]])
        return print_table(
            f"{CPU_SAT_TITLE}, before → after (before: {previous.path.name} of {previous.date})",
            ["scenario", "gRPC servers", "req/s", *(PROCESS_LABEL[p] for p in PROCESSES), "sum"], rows)

    def targets(self) -> str:
        rows = []
        by_issue = {s.issue: s for s in SCENARIOS if s.issue}
        for target in TARGETS:
            scenario = by_issue[target.issue]
            for variant in self.variants:
                samples = self.samples.get((scenario.name, variant))
                if variant == "floor" or not samples:
                    continue
                non_2xx = sum(s["non2xx"] for s in samples)
                if target.measure == "ratio":
                    value = self.to_baseline(samples)
                    shown = f"{fmt(value, '.3f')} ({non_2xx:.0f} non-2xx)"
                else:
                    value = med(samples, "added_p99")
                    shown = f"{fmt(value)} ms"
                verdict = "—" if math.isnan(value) else "pass" if target.met(value, non_2xx) else "FAIL"
                rows.append([target.text, VARIANT_LABEL[variant], shown, verdict])
        return print_table("Issue 15's targets", ["target", "gRPC servers", "measured", "verdict"], rows)

    def ceiling(self) -> str | None:
        full = next(s.name for s in SCENARIOS if s.name.startswith("full pipeline"))
        costs = {v: sum(self.sat_cells(self.samples[(full, v)])) for v in self.variants if (full, v) in self.samples}
        if not costs:
            return None
        cores = os.cpu_count() or 1
        return ("**Ceiling of the full pipeline.** At saturation a request of the full pipeline costs, in CPU "
                "summed over the gRPC servers, Envoy and Redis (the load generator not counted): " + "; ".join(
                    f"{VARIANT_LABEL[v]} {c:,.0f} µs → at most {cores * 1e6 / c:,.0f} req/s on {cores} cores"
                    for v, c in costs.items()) + ". The floors' line is what Envoy plus gRPC in Python cost "
                "before any outrider logic runs: 2 unary calls and a 3-message ext_proc stream per request.")

    def upstream(self, demo: tuple[float, float] | None) -> str | None:
        origin = self.samples.get((BASELINE, "-"))
        direct = self.samples.get(("Envoy alone, direct_response", "-"))
        if demo is None or not origin or not direct:
            return None
        envoy_origin = med(origin, "cpu_sat_envoy") - med(direct, "cpu_sat_envoy")
        return (f"**Upstream.** The demo upstream (aiohttp, `outrider.demo_upstream`) by itself answers "
                f"{demo[0]:,.0f} req/s at saturation with {demo[1]:.0f} µs of CPU per request: far above what "
                "any scenario with a gRPC service reaches, so it would not cap them. The bench proxies to the "
                "Envoy origin all the same: a fixed JSON answer, no further Python process on the shared "
                f"cores, and Envoy-only rows that measure Envoy alone (proxying to the origin adds "
                f"{envoy_origin:.0f} µs per request to Envoy, both listeners counted).")

    def all(self, demo: tuple[float, float] | None, previous: Previous | None) -> list[str]:
        parts = [self.throughput(), self.latency(), self.cpu_half(), self.cpu_sat(), self.peak_memory(),
                 self.ceiling(), self.upstream(demo),
                 self.before_after(previous) if previous is not None else None, self.targets()]
        return [part for part in parts if part]


def label(scenario: Scenario, variant: str) -> str:
    return VARIANT_LABEL[variant] if scenario.services else "—"


def _old(cell: str | None) -> str:
    value = number(cell) if cell is not None else None
    return "—" if value is None else f"{value:,.0f}"
