"""The gateway config: one YAML file; the kernel's sections plus those its service plugins add."""

from outrider.config.errors import ConfigError, ConfigIssue
from outrider.config.loader import load_config, load_config_data, load_config_given, load_config_text, parse_config_text
from outrider.config.model import GatewayConfig
from outrider.config.schema import config_from_data

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "GatewayConfig",
    "config_from_data",
    "load_config",
    "load_config_data",
    "load_config_given",
    "load_config_text",
    "parse_config_text",
]
