"""The rate limit service's plugin: its name, its resource type and its payload (entry point `outrider.services`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outrider.config.model import GatewayConfig
from ratelimit_service import resource

TYPE_URL = "type.googleapis.com/outrider.config.v1.RateLimitServiceConfig"


@dataclass(frozen=True)
class RateLimitPlugin:
    name: str = "ratelimit"
    type_url: str = TYPE_URL

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)


PLUGIN = RateLimitPlugin()
