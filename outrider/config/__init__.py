"""The gateway config: one YAML file describing listeners, routes, upstreams, auth and RBAC."""

from outrider.config.errors import ConfigError, ConfigIssue
from outrider.config.loader import load_config, load_config_data, load_config_given, load_config_text, parse_config_text
from outrider.config.model import GatewayConfig

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "GatewayConfig",
    "load_config",
    "load_config_data",
    "load_config_given",
    "load_config_text",
    "parse_config_text",
]
