"""Cross-field rules of the route and upstream traffic settings (settings fit the target; regexes: base.Re2Regex)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from outrider.config.errors import Loc

if TYPE_CHECKING:
    from outrider.config.model import GatewayConfig


def traffic_problems(config: GatewayConfig) -> Iterator[tuple[Loc, str]]:
    """(field path, reason) for every traffic rule the config breaks."""
    for index, route in enumerate(config.routes):
        at: Loc = ("routes", index)
        if route.direct_response is not None:
            for key in ("rewrite", "retry", "idle_timeout_ms"):
                if getattr(route, key) is not None:
                    yield (*at, key), f"{key} needs an upstream; this route has a direct_response"
        if route.rewrite is not None and route.rewrite.prefix is not None and route.match.regex is not None:
            yield (
                (*at, "rewrite", "prefix"),
                "a prefix rewrite needs a prefix or path match; use rewrite.regex",
            )
        retry = route.retry
        if (
            retry is not None
            and retry.per_try_timeout_ms is not None
            and retry.per_try_timeout_ms > route.timeout_ms
        ):
            yield (
                (*at, "retry", "per_try_timeout_ms"),
                f"per_try_timeout_ms ({retry.per_try_timeout_ms}) exceeds the route's timeout_ms "
                f"({route.timeout_ms})",
            )
