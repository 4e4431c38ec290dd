"""Rate limit settings that are valid but likely not what was meant: logged at start, shown by `outrider validate`."""

from __future__ import annotations

from outrider.config.model import GatewayConfig
from ratelimit_service.config import UNIT_SECONDS, PerIpLimit, rate_limits_of, settings_of


def admitted_per_ban_window(per_ip: PerIpLimit) -> int:
    """The most requests the per-IP limit admits in one ban window (its capacity, then its rate)."""
    assert per_ip.ban is not None and per_ip.unit is not None
    capacity = per_ip.burst if per_ip.algorithm == "token_bucket" and per_ip.burst else per_ip.requests_per_unit
    return capacity + per_ip.requests_per_unit * UNIT_SECONDS[per_ip.ban.window] // UNIT_SECONDS[per_ip.unit]


def config_warnings(config: GatewayConfig) -> list[str]:
    """Plain-text warnings for a validated config; empty when nothing needs saying."""
    warnings = []
    workers = settings_of(config).workers
    rl = rate_limits_of(config)
    if rl is not None and rl.redis is None and workers > 1:
        # Each worker process counts in its own memory and the kernel spreads connections over them, so a
        # client can spend up to `workers` times its limit.
        warnings.append(
            f"services.ratelimit.workers is {workers} with the in-memory rate limit store (no rate_limits.redis): "
            f"each worker keeps its own counters, so a limit may admit up to {workers} times its rate; "
            "configure rate_limits.redis to share one count, or run one worker")
    if rl is not None and rl.per_ip is not None and rl.per_ip.ban is not None and not rl.per_ip.unlimited:
        admitted = admitted_per_ban_window(rl.per_ip)
        if rl.per_ip.ban.after_requests <= admitted:
            # The ban is meant for clients that ignore their 429s; below this, one that never saw one is banned.
            warnings.append(
                f"rate_limits.per_ip.ban.after_requests is {rl.per_ip.ban.after_requests}, but the per-IP limit "
                f"admits up to {admitted} requests per {rl.per_ip.ban.window}: a client that never got a 429 can "
                "be banned; raise after_requests or shorten ban.window")
    return warnings
