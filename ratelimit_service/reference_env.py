"""envoyproxy/ratelimit's environment settings (src/settings/settings.go) → this service's start-up and config.

Every setting of the reference is listed in SETTINGS, with what it does here: mapped onto a field
(`supported`), accepted only at the reference's default or at a value that means the same here
(`default_only`, with the reason any other value is refused), or without effect because the setting it
depends on is off or refused (`depends_on`). A setting the reference reads is never silently ignored: a
value this service cannot honour stops it at start, naming the variable and why.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

SUPPORTED, DEFAULT_ONLY, DEPENDS = "supported", "default_only", "depends_on"


class ReferenceEnvError(ValueError):
    """Settings this service refuses; the message names every variable and its reason."""


@dataclass(frozen=True)
class Setting:
    """One environment variable of the reference."""

    name: str
    default: str
    status: str
    # SUPPORTED: where it goes; DEFAULT_ONLY: why another value is refused; DEPENDS: the setting it needs.
    note: str
    # DEFAULT_ONLY: the values accepted besides unset (the default, and values meaning the same here).
    accepted: frozenset[str] = field(default_factory=frozenset)


def _s(name: str, default: str, note: str) -> Setting:
    return Setting(name, default, SUPPORTED, note)


def _d(name: str, default: str, reason: str, *also: str) -> Setting:
    return Setting(name, default, DEFAULT_ONLY, reason, frozenset({default.lower(), *(a.lower() for a in also)}))


def _only(name: str, default: str, reason: str, *accepted: str) -> Setting:
    """Accepted unset or at `accepted` only: the reference's default itself behaves differently here."""
    return Setting(name, default, DEFAULT_ONLY, reason, frozenset(a.lower() for a in accepted))


def _dep(name: str, default: str, parent: str) -> Setting:
    return Setting(name, default, DEPENDS, parent)


_NO_TLS = "TLS on the gRPC listener is not built: terminate TLS in front (Envoy's cluster to the service on loopback)"
_NO_STATSD = "statsd is not built: metrics are Prometheus, on /metrics (USE_PROMETHEUS, PROMETHEUS_ADDR)"
_NO_XDS = "the reference's xDS config source is not built: use outrider's control plane (`--xds`)"
_NO_MEMCACHE = "memcache is not built: use BACKEND_TYPE=redis (or memory, one process)"
_NO_TRACING = "OTLP tracing of the rate limit service is not built"
_NO_REDIS_TLS_FILES = "client certificates for Redis are not built: REDIS_TLS with the system CAs only"
_NO_PERSECOND = "a second Redis for per-second limits is not built: one store holds every counter"
_NO_HTTP = ("the reference's HTTP port (/healthcheck, /json) and debug port are not served: health is gRPC "
            "(grpc.health.v1) on GRPC_PORT, metrics on PROMETHEUS_ADDR")

SETTINGS: tuple[Setting, ...] = (
    # listeners
    _d("PROTO", "tcp", "only TCP listeners"),
    _d("HOST", "0.0.0.0", _NO_HTTP),
    _d("PORT", "8080", _NO_HTTP),
    _d("DEBUG_HOST", "0.0.0.0", _NO_HTTP),
    _d("DEBUG_PORT", "6070", _NO_HTTP),
    _d("GRPC_UDS", "", "a unix-socket gRPC listener is not built: use GRPC_HOST/GRPC_PORT"),
    _s("GRPC_HOST", "0.0.0.0", "gRPC listen address"),
    _s("GRPC_PORT", "8081", "gRPC port (RateLimitService and grpc.health.v1)"),
    _d("GRPC_MAX_CONNECTION_AGE", "24h", "connection age limits are not built"),
    _d("GRPC_MAX_CONNECTION_AGE_GRACE", "1h", "connection age limits are not built"),
    _d("GRPC_SERVER_USE_TLS", "false", _NO_TLS),
    _dep("GRPC_SERVER_TLS_CERT", "", "GRPC_SERVER_USE_TLS"),
    _dep("GRPC_SERVER_TLS_KEY", "", "GRPC_SERVER_USE_TLS"),
    _dep("GRPC_CLIENT_TLS_CACERT", "", "GRPC_SERVER_USE_TLS"),
    _dep("GRPC_CLIENT_TLS_SAN", "", "GRPC_SERVER_USE_TLS"),
    # logging
    _s("LOG_LEVEL", "WARN", "log level (debug, info, warn, error)"),
    _only("LOG_FORMAT", "text", "logs are JSON lines (LOG_FORMAT=json)", "json"),
    # config source
    _d("CONFIG_TYPE", "FILE", _NO_XDS),
    _s("FORCE_START_WITHOUT_INITIAL_CONFIG", "false",
       "either value: the service starts with whatever the directory holds (an empty set is a config)"),
    _dep("CONFIG_GRPC_XDS_NODE_ID", "default", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_NODE_METADATA", "", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_SERVER_URL", "localhost:18000", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL", "3s", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS", "", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_SERVER_USE_TLS", "false", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "", "CONFIG_TYPE"),
    _dep("CONFIG_GRPC_XDS_SERVER_TLS_SAN", "", "CONFIG_TYPE"),
    _dep("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "10s", "CONFIG_TYPE"),
    _dep("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "60s", "CONFIG_TYPE"),
    _dep("XDS_CLIENT_BACKOFF_RANDOM_FACTOR", "0.5", "CONFIG_TYPE"),
    _dep("XDS_CLIENT_BACKOFF_JITTER", "true", "CONFIG_TYPE"),
    # stats
    _only("USE_STATSD", "true", _NO_STATSD, "false"),
    _dep("STATSD_HOST", "localhost", "USE_STATSD"),
    _dep("STATSD_PORT", "8125", "USE_STATSD"),
    _d("USE_DOG_STATSD", "false", _NO_STATSD),
    _dep("USE_DOG_STATSD_MOGRIFIERS", "", "USE_DOG_STATSD"),
    _d("EXTRA_TAGS", "", "extra metric tags are not built: add labels at the scraper"),
    _dep("STATS_FLUSH_INTERVAL", "10s", "USE_STATSD"),
    _s("DISABLE_STATS", "false", "true: no /metrics endpoint"),
    _s("USE_PROMETHEUS", "false", "true: /metrics on PROMETHEUS_ADDR; false: no /metrics endpoint"),
    _s("PROMETHEUS_ADDR", ":9090", "/metrics listen address (`host:port`, empty host: GRPC_HOST)"),
    _d("PROMETHEUS_PATH", "/metrics", "metrics are served on /metrics only"),
    _d("PROMETHEUS_MAPPER_YAML", "", "statsd-to-Prometheus mapping does not apply: metrics are Prometheus-native"),
    # runtime directory
    _s("RUNTIME_ROOT", "/srv/runtime_data/current", "config directory: RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/"
       "RUNTIME_APPDIRECTORY, every file under it (rate_limits.files)"),
    _s("RUNTIME_SUBDIRECTORY", "", "see RUNTIME_ROOT"),
    _s("RUNTIME_APPDIRECTORY", "config", "see RUNTIME_ROOT"),
    _only("RUNTIME_IGNOREDOTFILES", "false", "dot files and dot directories are always skipped (a Kubernetes "
       "ConfigMap mount keeps a second copy of every file under `..<timestamp>/`)", "true"),
    _s("RUNTIME_WATCH_ROOT", "true", "either value: files are polled every 0.5 s, so an edit in place and a "
       "swap of the RUNTIME_ROOT symlink both reload"),
    # limits
    _only("EXPIRATION_JITTER_MAX_SECONDS", "300", "counter expiry has no jitter here", "0"),
    _s("LOCAL_CACHE_SIZE_IN_BYTES", "0", "rate_limits.local_cache_size_bytes"),
    _s("NEAR_LIMIT_RATIO", "0.8", "rate_limits.near_limit_ratio"),
    _s("CACHE_KEY_PREFIX", "", "rate_limits.redis.key_prefix"),
    _s("BACKEND_TYPE", "redis", "redis: rate_limits.redis; memory (an outrider extension): counters in memory"),
    _s("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "false", "rate_limits.stop_increment_when_over_limit"),
    _s("LIMIT_RESPONSE_HEADERS_ENABLED", "false", "rate_limits.response_headers"),
    _d("LIMIT_LIMIT_HEADER", "RateLimit-Limit", "the header names are fixed"),
    _d("LIMIT_REMAINING_HEADER", "RateLimit-Remaining", "the header names are fixed"),
    _d("LIMIT_RESET_HEADER", "RateLimit-Reset", "the header names are fixed"),
    _d("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "false",
       "health is SERVING once a config version is live, an empty set included"),
    _s("SHADOW_MODE", "false", "rate_limits.shadow_mode"),
    _s("MERGE_DOMAIN_CONFIG", "false", "rate_limits.merge_domains"),
    # redis
    _s("REDIS_SOCKET_TYPE", "unix", "tcp: REDIS_URL is host:port; unix: a socket path (rate_limits.redis.url)"),
    _s("REDIS_TYPE", "SINGLE", "SINGLE, or CLUSTER (rate_limits.redis.cluster: the first node of REDIS_URL); "
       "SENTINEL is refused (not built)"),
    _s("REDIS_URL", "/var/run/nutcracker/ratelimit.sock", "rate_limits.redis.url"),
    _s("REDIS_POOL_SIZE", "10", "rate_limits.redis.max_connections"),
    _s("REDIS_AUTH", "", "`password` or `user:password`, put in rate_limits.redis.url"),
    _s("REDIS_TLS", "false", "true: a rediss:// URL (system CAs)"),
    _d("REDIS_TLS_CLIENT_CERT", "", _NO_REDIS_TLS_FILES),
    _d("REDIS_TLS_CLIENT_KEY", "", _NO_REDIS_TLS_FILES),
    _d("REDIS_TLS_CACERT", "", _NO_REDIS_TLS_FILES),
    _d("REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", "false", "Redis certificates are always verified"),
    _d("REDIS_PIPELINE_WINDOW", "0", "implicit pipelining is not built: one Lua call per request"),
    _d("REDIS_PIPELINE_LIMIT", "0", "implicit pipelining is not built: one Lua call per request"),
    _d("REDIS_PERSECOND", "false", _NO_PERSECOND),
    _dep("REDIS_PERSECOND_SOCKET_TYPE", "unix", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_TYPE", "SINGLE", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_URL", "/var/run/nutcracker/ratelimitpersecond.sock", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_POOL_SIZE", "10", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_AUTH", "", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_TLS", "false", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_PIPELINE_WINDOW", "0", "REDIS_PERSECOND"),
    _dep("REDIS_PERSECOND_PIPELINE_LIMIT", "0", "REDIS_PERSECOND"),
    _d("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", "false",
       "health does not follow Redis: a request Redis cannot answer gets rate_limits.failure_mode"),
    # memcache
    _dep("MEMCACHE_HOST_PORT", "", "BACKEND_TYPE"),
    _dep("MEMCACHE_MAX_IDLE_CONNS", "2", "BACKEND_TYPE"),
    _dep("MEMCACHE_SRV", "", "BACKEND_TYPE"),
    _dep("MEMCACHE_SRV_REFRESH", "0", "BACKEND_TYPE"),
    _dep("MEMCACHE_TLS", "false", "BACKEND_TYPE"),
    _dep("MEMCACHE_TLS_CLIENT_CERT", "", "BACKEND_TYPE"),
    _dep("MEMCACHE_TLS_CLIENT_KEY", "", "BACKEND_TYPE"),
    _dep("MEMCACHE_TLS_CACERT", "", "BACKEND_TYPE"),
    _dep("MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION", "false", "BACKEND_TYPE"),
    # tracing
    _d("TRACING_ENABLED", "false", _NO_TRACING),
    _dep("TRACING_SERVICE_NAME", "RateLimit", "TRACING_ENABLED"),
    _dep("TRACING_SERVICE_NAMESPACE", "", "TRACING_ENABLED"),
    _dep("TRACING_SERVICE_INSTANCE_ID", "", "TRACING_ENABLED"),
    _dep("TRACING_EXPORTER_PROTOCOL", "http", "TRACING_ENABLED"),
    _dep("TRACING_SAMPLING_RATE", "1", "TRACING_ENABLED"),
)
BY_NAME = {s.name: s for s in SETTINGS}
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error",
               "fatal": "error", "panic": "error", "trace": "debug"}
_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


@dataclass(frozen=True)
class ReferenceStartup:
    """What the reference's environment gives: where to listen, what to read, and the `rate_limits` section."""

    address: str
    port: int
    metrics_address: str
    metrics_port: int  # 0: no /metrics endpoint
    log_level: str
    config_dir: Path
    rate_limits: dict[str, Any]
    explicit: frozenset[str]  # the section's fields set from a variable given (not from a reference default)


class _Reader:
    """Reads variables, collecting every problem rather than stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        value = self.env.get(name)
        return BY_NAME[name].default if value is None else value

    def given(self, name: str) -> bool:
        return name in self.env

    def boolean(self, name: str) -> bool:
        value = self.raw(name).strip().lower()
        if value in _TRUE:
            return True
        if value not in _FALSE:
            self.problems.append(f"{name}={self.raw(name)!r}: not a boolean (true or false)")
        return False

    def integer(self, name: str, low: int, high: int) -> int:
        text = self.raw(name).strip()
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            self.problems.append(f"{name}={text!r}: not an integer from {low} to {high}")
            return low
        return value

    def number(self, name: str) -> float:
        text = self.raw(name).strip()
        try:
            return float(text)
        except ValueError:
            self.problems.append(f"{name}={text!r}: not a number")
            return 0.0


def _host_port(text: str, name: str, reader: _Reader, default_host: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        reader.problems.append(f"{name}={text!r}: not host:port")
        return default_host, 0
    return host.strip("[]") or default_host, int(port)


def _redis(reader: _Reader, section: dict[str, Any]) -> None:
    socket_type = reader.raw("REDIS_SOCKET_TYPE").strip().lower()
    url = reader.raw("REDIS_URL").strip()
    kind = reader.raw("REDIS_TYPE").strip().upper()
    if kind not in ("SINGLE", "CLUSTER"):
        reader.problems.append(f"REDIS_TYPE={reader.raw('REDIS_TYPE')!r}: only SINGLE and CLUSTER are built "
                               "(Redis Sentinel is not)")
    auth = reader.raw("REDIS_AUTH")
    user, _, password = auth.rpartition(":") if ":" in auth else ("", "", auth)
    credentials = (f"{quote(user, safe='')}:{quote(password, safe='')}@" if user
                   else f":{quote(password, safe='')}@" if password else "")
    tls = reader.boolean("REDIS_TLS")
    if socket_type == "unix":
        if tls:
            reader.problems.append("REDIS_TLS=true with REDIS_SOCKET_TYPE=unix: TLS applies to tcp only")
        redis_url = f"unix://{credentials}{url}" if url.startswith("/") else ""
        if not redis_url:
            reader.problems.append(f"REDIS_URL={url!r}: REDIS_SOCKET_TYPE=unix needs an absolute socket path")
    elif socket_type == "tcp":
        # CLUSTER lists every node; the client discovers the others from the first.
        first = url.split(",")[0].strip()
        if "://" in first:
            reader.problems.append(f"REDIS_URL={url!r}: give host:port (the scheme comes from REDIS_TLS)")
        redis_url = f"{'rediss' if tls else 'redis'}://{credentials}{first}"
    else:
        reader.problems.append(f"REDIS_SOCKET_TYPE={reader.raw('REDIS_SOCKET_TYPE')!r}: tcp or unix")
        redis_url = ""
    section["redis"] = {"url": redis_url, "cluster": kind == "CLUSTER",
                        "key_prefix": reader.raw("CACHE_KEY_PREFIX"),
                        "max_connections": reader.integer("REDIS_POOL_SIZE", 1, 1024)}


def _refusals(reader: _Reader) -> None:
    for setting in SETTINGS:
        if setting.status != DEFAULT_ONLY or not reader.given(setting.name):
            continue
        if reader.raw(setting.name).strip().lower() not in setting.accepted:
            reader.problems.append(f"{setting.name}={reader.raw(setting.name)!r}: refused: {setting.note}")


# Section fields set from the reference's variables: (variable, field, read).
_FLAGS: tuple[tuple[str, str, Callable[[_Reader, str], Any]], ...] = (
    ("MERGE_DOMAIN_CONFIG", "merge_domains", _Reader.boolean),
    ("STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT", "stop_increment_when_over_limit", _Reader.boolean),
    ("SHADOW_MODE", "shadow_mode", _Reader.boolean),
    ("LIMIT_RESPONSE_HEADERS_ENABLED", "response_headers", _Reader.boolean),
    ("NEAR_LIMIT_RATIO", "near_limit_ratio", _Reader.number),
    ("LOCAL_CACHE_SIZE_IN_BYTES", "local_cache_size_bytes",
     lambda reader, name: reader.integer(name, 0, 2**40)),
)


def read(env: Mapping[str, str]) -> ReferenceStartup:
    """The start-up settings and `rate_limits` section the reference's environment describes.

    Raises ReferenceEnvError naming every variable refused and why.
    """
    reader = _Reader(env)
    _refusals(reader)
    section: dict[str, Any] = {}
    explicit: set[str] = set()
    for name, field_name, get in _FLAGS:
        # The reference's default when unset: `--reference-env` means the reference's behaviour.
        section[field_name] = get(reader, name)
        if reader.given(name):
            explicit.add(field_name)
    backend = reader.raw("BACKEND_TYPE").strip().lower()
    if backend == "redis":
        _redis(reader, section)
    elif backend != "memory":
        reader.problems.append(f"BACKEND_TYPE={reader.raw('BACKEND_TYPE')!r}: redis or memory "
                               f"({_NO_MEMCACHE})")
    level = _LOG_LEVELS.get(reader.raw("LOG_LEVEL").strip().lower())
    if level is None:
        reader.problems.append(f"LOG_LEVEL={reader.raw('LOG_LEVEL')!r}: debug, info, warn or error")
    reader.boolean("FORCE_START_WITHOUT_INITIAL_CONFIG")  # either value behaves the same; checked only
    reader.boolean("RUNTIME_WATCH_ROOT")
    address = reader.raw("GRPC_HOST").strip() or "0.0.0.0"
    port = reader.integer("GRPC_PORT", 1, 65535)
    metrics_address, metrics_port = address, 0
    if reader.boolean("USE_PROMETHEUS") and not reader.boolean("DISABLE_STATS"):
        metrics_address, metrics_port = _host_port(reader.raw("PROMETHEUS_ADDR"), "PROMETHEUS_ADDR", reader, address)
    config_dir = (Path(reader.raw("RUNTIME_ROOT")) / reader.raw("RUNTIME_SUBDIRECTORY")
                  / reader.raw("RUNTIME_APPDIRECTORY"))
    if not config_dir.is_dir():
        reader.problems.append(f"RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY: {config_dir} is not a "
                               "directory")
    if reader.problems:
        raise ReferenceEnvError("refused envoyproxy/ratelimit settings:\n  " + "\n  ".join(reader.problems))
    return ReferenceStartup(address, port, metrics_address, metrics_port, level or "warning", config_dir,
                            section, frozenset(explicit))


def fit(startup: ReferenceStartup, known_fields: set[str]) -> dict[str, Any]:
    """The section with only the fields this build has; a variable given for a field it lacks is refused."""
    missing = sorted(f for f in startup.rate_limits if f not in known_fields and f in startup.explicit)
    if missing:
        names = [name for name, field_name, _ in _FLAGS if field_name in missing]
        raise ReferenceEnvError("refused envoyproxy/ratelimit settings: " + ", ".join(names)
                                + ": not built into this version of the service")
    return {k: v for k, v in startup.rate_limits.items() if k in known_fields}
