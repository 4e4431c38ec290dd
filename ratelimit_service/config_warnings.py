"""Rate limit settings that are valid but likely not what was meant: logged at start, shown by `outrider validate`."""

from __future__ import annotations

from outrider.config.model import GatewayConfig
from ratelimit_service.config import rate_limits_of, settings_of


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
    return warnings
