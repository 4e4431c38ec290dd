"""Envoy's access log: one JSON line per request in the design's schema (config: `logging.access_log`).

Every field comes from Envoy's own request record (command operators, docs: envoyproxy.io/docs/envoy/v1.40.0/
configuration/observability/access_log/usage), except two that services leave in the request's dynamic
metadata: `user_id` (ext_authz's CheckResponse.dynamic_metadata, which Envoy files under the ext_authz filter's
name) and `cache_hit` (ext_proc's ProcessingResponse.dynamic_metadata, under the namespace below).

Nothing a client sends as a secret reaches a line: the path is logged without its query string, and no
header but X-Request-ID and User-Agent is read (no Authorization, no Cookie, no token).
"""

from __future__ import annotations

from typing import Any

from outrider.config.model import GatewayConfig

# Envoy files a CheckResponse's dynamic metadata under the ext_authz filter's name (Envoy's, not ours).
AUTHZ_NAMESPACE = "envoy.filters.http.ext_authz"
USER_ID_KEY = "user_id"
# ext_proc answers a request from its cache with {CACHE_NAMESPACE: {CACHE_HIT_KEY: true}} as dynamic
# metadata (the ext_proc filter must list the namespace in metadata_options.receiving_namespaces).
CACHE_NAMESPACE = "envoy.filters.http.ext_proc"
CACHE_HIT_KEY = "cache_hit"
# Envoy writes file access logs from a buffer: when 64 KiB are pending or every flush interval (Envoy's
# default 10 s, `--file-flush-interval-msec`). 1 s keeps a line a second away from a request on a quiet
# gateway and costs nothing under load (the 64 KiB flushes come first).
FLUSH_INTERVAL_MS = 1000
# A client's X-Envoy-Original-Path is kept by Envoy when no rewrite replaces it, and %PATH(...:ORIG_OR_PATH)%
# would log it: removed on arrival (the router sets it again when a route rewrites the path).
DISTRUSTED_REQUEST_HEADERS = ("x-envoy-original-path",)

FILE_ACCESS_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT = "/dev/stdout"

# `level` and `cache_hit` are constants of six loggers rather than expressions of one: each logger's filter
# picks the requests it writes (status range x cache hit or not), so exactly one writes each request's line.
# The filters are cheaper than the %TYPED_CEL(...)% expressions they replace (Envoy alone, paired runs:
# the log cost Envoy ~14 µs per request with CEL, ~5 with the filters; README "Observability"). Envoy shares one
# file (and its buffer) between loggers of the same path.
LEVEL_STATUS: dict[str, tuple[tuple[str, int], ...]] = {
    "info": (("LE", 399),),                 # 1xx-3xx, and 0 (no response was sent)
    "warn": (("GE", 400), ("LE", 499)),
    "error": (("GE", 500),),
}

# The design's schema, in its order (`level` and `cache_hit` filled per logger). Single %OPERATOR% values keep
# their type in json_format (numbers stay numbers); a value that is absent is null, and omit_empty_values drops
# it (user_id when anonymous, upstream_service and upstream_duration_ms when no upstream answered).
FIELDS: dict[str, str | bool] = {
    # START_TIME is formatted in UTC (Envoy formats system time with gmtime); %3f: milliseconds.
    "timestamp": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "level": "info",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    # NQ: no query string (query secrets never reach the log); ORIG_OR_PATH: the path the client sent,
    # before a route's rewrite (X-Envoy-Original-Path, which the router sets when it rewrites).
    "path": "%PATH(NQ:ORIG_OR_PATH)%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    # The trusted-hop-resolved client (use_remote_address + xff_num_trusted_hops), not the TCP peer.
    "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_id": f"%DYNAMIC_METADATA({AUTHZ_NAMESPACE}:{USER_ID_KEY})%",
    "user_agent": "%REQ(USER-AGENT)%",
    "bytes_sent": "%BYTES_SENT%",
    "upstream_service": "%UPSTREAM_CLUSTER%",
    # From the first byte sent upstream to the last byte received from it.
    "upstream_duration_ms": "%COMMON_DURATION(US_TX_BEG:US_RX_END:ms)%",
    "cache_hit": False,
}


def access_log_format(level: str = "info", cache_hit: bool = False) -> dict[str, Any]:
    """The log_format of the lines of one level and cache outcome (a SubstitutionFormatString)."""
    return {"json_format": {**FIELDS, "level": level, "cache_hit": cache_hit}, "omit_empty_values": True}


def _status_filter(op: str, value: int) -> dict[str, Any]:
    # A status_code_filter's value must name a runtime key (it would override the default); none is set.
    return {"status_code_filter": {"comparison": {"op": op, "value": {
        "default_value": value, "runtime_key": f"outrider.access_log.status_{op.lower()}_{value}"}}}}


def _cache_filter(hit: bool) -> dict[str, Any]:
    """Matches ext_proc's {cache_hit: true} (hit), or its absence (miss). Envoy's metadata filter ignores the
    matcher's `invert`: the miss side matches `false`, which ext_proc never sets, or no key at all."""
    return {"metadata_filter": {
        "matcher": {"filter": CACHE_NAMESPACE, "path": [{"key": CACHE_HIT_KEY}], "value": {"bool_match": hit}},
        "match_if_key_not_found": not hit,
    }}


def compile_access_logs(config: GatewayConfig) -> list[dict[str, Any]]:
    """The HTTP connection manager's `access_log` list: six file loggers to one path (one per level and cache
    outcome, exactly one of which writes a request's line), or none when disabled."""
    settings = config.logging.access_log
    if not settings.enabled:
        return []
    return [{
        "name": "envoy.access_loggers.file",
        "filter": {"and_filter": {"filters": [*(_status_filter(op, v) for op, v in status), _cache_filter(hit)]}},
        "typed_config": {
            "@type": FILE_ACCESS_LOG_TYPE,
            "path": settings.path or STDOUT,
            "log_format": access_log_format(level, hit),
        },
    } for level, status in LEVEL_STATUS.items() for hit in (False, True)]
