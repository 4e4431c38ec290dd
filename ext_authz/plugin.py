"""ext_authz's service plugin: its name, its resource type and its payload (entry point `outrider.services`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_authz import resource
from outrider.config.model import GatewayConfig
from outrider.service_resource import EXT_AUTHZ_TYPE_URL


class ExtAuthzPlugin:
    name = "ext_authz"
    type_url = EXT_AUTHZ_TYPE_URL

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)


PLUGIN = ExtAuthzPlugin()
