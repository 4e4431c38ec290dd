"""Whether an endpoint address is an IP literal: Envoy takes those in STATIC clusters, names need DNS clusters."""

from __future__ import annotations

import functools
import ipaddress


@functools.lru_cache(maxsize=4096)  # ipaddress parsing is slow; the same few endpoint addresses repeat
def is_ip_address(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
