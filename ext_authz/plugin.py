"""ext_authz's service plugin: its name, its resource type and its payload (entry point `outrider.services`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_authz import resource
from outrider.config.model import GatewayConfig

TYPE_URL = "type.googleapis.com/outrider.config.v1.ExtAuthzConfig"


@dataclass(frozen=True)
class ExtAuthzPlugin:
    name: str = "ext_authz"
    type_url: str = TYPE_URL

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)


PLUGIN = ExtAuthzPlugin()
