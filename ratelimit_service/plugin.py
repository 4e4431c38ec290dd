"""The rate limit service's plugin: its name, its resource type and its payload (entry point `outrider.services`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from outrider.config.model import GatewayConfig
from outrider.service_resource import RATELIMIT_TYPE_URL
from ratelimit_service import resource


class RateLimitPlugin:
    name = "ratelimit"
    type_url = RATELIMIT_TYPE_URL

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)


PLUGIN = RateLimitPlugin()
