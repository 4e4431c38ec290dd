"""ratelimit_service's resource: its share of a gateway config as plain JSON (payload) and the table built from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from outrider.config.model import GatewayConfig
from ratelimit_service import file_set
from ratelimit_service.admin import AdminSettings
from ratelimit_service.config import (
    DescriptorFile,
    RateLimitsConfig,
    rate_limits_of,
    settings_of,
)
from ratelimit_service.limits import LimitTable, compile_table
from ratelimit_service.mesh import MeshMaps
from ratelimit_service.service import Settings, local_cache_entries

# Bumped when the payload's shape changes incompatibly; a service refuses a schema it does not know.
SCHEMA = 1


class PayloadError(ValueError):
    """A payload this service cannot apply; the message is the reason sent back in a NACK."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InlinedFile(_Strict):
    """One envoyproxy/ratelimit descriptor file, carried by content: the service may run on another machine."""

    name: str
    config: DescriptorFile


class DecisionLogging(_Strict):
    decisions: bool = True


class AdminPayload(_Strict):
    """services.ratelimit.admin_*: the ban admin API's listener (ratelimit_service/admin.py)."""

    address: str
    port: Annotated[int, Field(ge=1, le=65535)]
    token_env: str
    token_file: str | None = None


class RateLimitPayload(_Strict):
    """The validated payload: the same models the gateway config uses, so a bad one fails the same way."""

    rate_limits: RateLimitsConfig | None = None
    files: list[InlinedFile] = []
    logging: DecisionLogging = DecisionLogging()
    # services.ratelimit.timeout_ms: Envoy's deadline for a call, from which the overload threshold follows.
    envoy_timeout_ms: Annotated[int, Field(ge=1)] = 100
    # None: no ban admin API.
    admin: AdminPayload | None = None


@dataclass(frozen=True)
class RateLimitResource:
    """What one payload builds: the settings a request reads, and the start-up settings to compare."""

    rate_limits: RateLimitsConfig  # the section (defaults when the config has none); `files` left empty
    settings: Settings
    decisions_logged: bool
    admin: AdminSettings | None = None


def payload(config: GatewayConfig) -> dict[str, Any]:
    """Everything the rate limit service needs from a validated config, as JSON values.

    The `rate_limits` section goes as given except `files`: each descriptor file is read here and
    carried by content, under its file name (for error messages).
    """
    rl = rate_limits_of(config)
    files = inline_files(file_set.load(rl.files, rl.merge_domains) if rl is not None else [])
    section = rl.model_dump(mode="json", exclude={"files"}) if rl is not None else None
    service = settings_of(config)
    doc: dict[str, Any] = {"rate_limits": section, "files": files, "logging": {"decisions": config.logging.decisions},
                           "envoy_timeout_ms": service.timeout_ms}
    if service.admin_port is not None:
        doc["admin"] = {"address": service.admin_address, "port": service.admin_port,
                        "token_env": service.admin_token_env,
                        "token_file": str(service.admin_token_file) if service.admin_token_file else None}
    return doc


def inline_files(loaded: Sequence[file_set.LoadedFile]) -> list[dict[str, Any]]:
    """A loaded set as the payload's `files`: each by content, under its file name (for error messages)."""
    return [{"name": f.name, "config": f.config.model_dump(mode="json", exclude_defaults=True)} for f in loaded]


def _reason(exc: ValidationError, data: Mapping[str, Any]) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        loc = error["loc"]
        if len(loc) >= 3 and loc[0] == "files" and isinstance(loc[1], int) and loc[2] == "config":
            # Name the descriptor file rather than its index: that is where the operator must look.
            try:
                name = data["files"][loc[1]]["name"]
            except (KeyError, IndexError, TypeError):
                name = None
            if isinstance(name, str):
                where = f"{name}: " + (".".join(str(part) for part in loc[3:]) or "file")
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse(data: Mapping[str, Any]) -> RateLimitPayload:
    """Validate a payload; raises PayloadError naming each bad field (and descriptor file)."""
    try:
        parsed = RateLimitPayload.model_validate(data)
    except ValidationError as exc:
        raise PayloadError(f"invalid ratelimit payload: {_reason(exc, data)}") from None
    rl = parsed.rate_limits
    if rl is not None and rl.files:
        raise PayloadError("invalid ratelimit payload: rate_limits.files must be inlined under `files`")
    if rl is not None and rl.unknown_tier is not None and rl.unknown_tier not in rl.tiers:
        raise PayloadError(f"invalid ratelimit payload: rate_limits.unknown_tier: no plan named "
                           f"'{rl.unknown_tier}' in tiers")
    return parsed


def build(data: Mapping[str, Any]) -> RateLimitResource:
    """The limit table and settings of one payload; raises PayloadError when it cannot be applied."""
    parsed = parse(data)
    rl = parsed.rate_limits or RateLimitsConfig()
    duplicates = [f"{name}: {reason}" for name, reason in
                  file_set.duplicate_domains([(f.name, f.config) for f in parsed.files], rl.merge_domains)]
    if duplicates:
        # The same words as `outrider validate` and `check-config`, each naming its file.
        raise PayloadError("invalid ratelimit payload: " + "; ".join(duplicates))
    try:
        table: LimitTable = compile_table(parsed.rate_limits, [f.config for f in parsed.files])
    except ValueError as exc:
        names = ", ".join(f.name for f in parsed.files)
        raise PayloadError(f"invalid ratelimit payload: files ({names}): {exc}") from None
    settings = Settings(table, near_ratio=rl.near_limit_ratio, failure_mode_deny=rl.failure_mode == "deny",
                        min_time_left_s=rl.min_time_left_ms(parsed.envoy_timeout_ms) / 1000,
                        max_in_flight=rl.overload.max_in_flight, mesh=MeshMaps(rl),
                        stop_increment=rl.stop_increment_when_over_limit, global_shadow=rl.shadow_mode,
                        response_headers=rl.response_headers,
                        local_cache_entries=local_cache_entries(rl.local_cache_size_bytes))
    admin = parsed.admin
    return RateLimitResource(rl, settings, parsed.logging.decisions, None if admin is None else AdminSettings(
        admin.address, admin.port, admin.token_env, Path(admin.token_file) if admin.token_file else None))
