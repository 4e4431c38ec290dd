"""Envoy's edge settings (the `edge` section): path policy, timeouts, header and HTTP/2 limits, buffers,
connection and heap limits, trusted hops.

Defaults follow Envoy's "Configuring Envoy as an edge proxy" best practices
(https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge, its edge.yaml): idle 1 h,
stream idle 5 min, request 5 min, HTTP/2 100 streams / 64 KiB stream window / 1 MiB connection window,
headers with underscores rejected, use_remote_address, an overload manager with a fixed heap monitor
(shrink_heap at 0.95, stop_accepting_requests at 0.98) and a global downstream connection limit (50,000).
Where the page gives no number (request headers timeout) the default is ours and says why.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from outrider.config.base import StrictModel

Millis = Annotated[int, Field(ge=1, le=86_400_000)]
Header = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]


class Http2Limits(StrictModel):
    max_concurrent_streams: Annotated[int, Field(ge=1, le=2_147_483_647)] = 100
    initial_stream_window_size: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 65_536
    initial_connection_window_size: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 1_048_576


class EdgeConfig(StrictModel):
    """Settings of every listener's HTTP connection manager and of Envoy's overload manager."""

    # reject: a path Envoy would rewrite (dot segments, encoded unreserved characters, //) or that an upstream
    # could read differently (encoded or overlong dots and slashes, backslashes, ;params) is a 400, and routes
    # see the path exactly as the client sent it and the upstream gets it. normalize: Envoy normalises first
    # (RFC 3986, merged slashes), then refuses what normalisation leaves confusing (;params, %25, overlong
    # UTF-8, `...`). Both refuse ;params unless the route sets allow_path_parameters.
    non_canonical_paths: Literal["reject", "normalize"] = "reject"
    # A client must finish its request headers this long after its first byte (slowloris); Envoy has no
    # default. 10 s covers a slow mobile link sending 60 KiB of headers.
    request_headers_timeout_ms: Millis = 10_000
    # No bytes on a request/response stream for this long: reset (408 when nothing was answered yet).
    stream_idle_timeout_ms: Millis = 300_000
    # The whole request must be received within this (slow bodies); null disables it (streaming uploads).
    request_timeout_ms: Millis | None = 300_000
    # A connection without requests is closed after this.
    idle_timeout_ms: Millis = 3_600_000
    # Close (drain) every downstream connection after this long; null = never.
    max_connection_duration_ms: Millis | None = None
    max_request_headers_kb: Annotated[int, Field(ge=1, le=8192)] = 60
    max_headers_count: Annotated[int, Field(ge=1, le=10_000)] = 100
    headers_with_underscores: Literal["reject", "drop", "allow"] = "reject"
    http2: Http2Limits = Field(default_factory=Http2Limits)
    # Each listener's read/write buffer per connection, which is also how much of a request or response Envoy
    # buffers for a filter (ext_proc buffers whole JSON bodies): keep it at least transformations.max_body_bytes.
    # The edge page's 32 KiB suits gateways that never buffer bodies.
    connection_buffer_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 1_048_576
    # Downstream connections over every listener (overload manager); beyond it new connections are closed.
    max_connections: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000
    # Envoy's heap (tcmalloc) budget: at 95 % it returns memory to the OS, at 98 % it stops accepting requests
    # (503) until usage falls. Set it below the memory limit of Envoy's container.
    max_heap_bytes: Annotated[int, Field(ge=16 << 20)] = 1 << 30
    # Proxies in front of the gateway whose X-Forwarded-For entries are trusted for the client address
    # (0: the connecting peer is the client, a client-sent X-Forwarded-For is never believed).
    xff_num_trusted_hops: Annotated[int, Field(ge=0, le=10)] = 0
    # Removed from every request before routing, so no upstream acts on a method the policy did not check.
    strip_request_headers: list[Header] = Field(
        default_factory=lambda: ["x-http-method-override", "x-http-method", "x-method-override"])
