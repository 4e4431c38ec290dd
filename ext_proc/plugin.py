"""ext_proc's service plugin (entry point `outrider.services: ext_proc`): its name, resource type and payload."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ext_proc import resource
from outrider.config.model import GatewayConfig
from outrider.service_resource import EXT_PROC_TYPE_URL


class ExtProcPlugin:
    name = "ext_proc"
    type_url = EXT_PROC_TYPE_URL

    def payload(self, config: GatewayConfig) -> Mapping[str, Any]:
        return resource.payload(config)


PLUGIN = ExtProcPlugin()
