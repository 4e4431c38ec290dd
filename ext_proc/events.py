"""What flows through a stream session: events in (from Envoy or the cache), actions out. Frozen values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Phase = Literal["request_headers", "request_body", "response_headers", "response_body",
                "request_trailers", "response_trailers"]


# ---- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    headers: Mapping[str, str]   # lower-case names, pseudo-headers included
    end_of_stream: bool
    client_ip: str = ""          # Envoy's downstream address for this request, without the port ("" unknown)


@dataclass(frozen=True, slots=True)
class RequestBody:
    body: bytes
    end_of_stream: bool          # False: Envoy sent what fit in its buffer, the rest streams past us


@dataclass(frozen=True, slots=True)
class ResponseHeaders:
    headers: Mapping[str, str]
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class ResponseBody:
    body: bytes
    end_of_stream: bool
    # The response's content-type as Envoy forwarded it with the body (ext_proc/envoy.py, RESPONSE_NAMESPACE):
    # read when the route skips the response headers message; None if Envoy forwarded none.
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Trailers:
    phase: Literal["request_trailers", "response_trailers"]


@dataclass(frozen=True, slots=True)
class CacheResult:
    """The answer to a LookupCache action (None: a miss, or the backend could not answer)."""

    raw: bytes | None


Event = RequestHeaders | RequestBody | ResponseHeaders | ResponseBody | Trailers | CacheResult


# ---- actions --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeOverride:
    """Fewer phases than the route asked for, for the rest of this stream; or a request body of unknown
    length asked for as BUFFERED_PARTIAL, so that one above Envoy's buffer limit reaches us cut short
    (end_of_stream false) instead of stalling the stream (see ext_proc/envoy.py)."""

    request_body: bool
    response_headers: bool
    response_body: bool
    request_partial: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """Let the message continue, with header edits and/or a replacement body."""

    phase: Phase
    set_headers: tuple[tuple[str, str, bool], ...] = ()   # name, value, only if absent
    remove_headers: tuple[str, ...] = ()
    body: bytes | None = None
    mode: ModeOverride | None = None


@dataclass(frozen=True, slots=True)
class Immediate:
    """Answer the client now; the upstream is not (or no more) involved."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reason: str                  # for logs and counters, never sent


@dataclass(frozen=True, slots=True)
class LookupCache:
    key: str


@dataclass(frozen=True, slots=True)
class StoreCache:
    key: str
    resource: str
    path: str                    # without the query: what a prefix purge matches
    value: bytes
    ttl_s: int


@dataclass(frozen=True, slots=True)
class InvalidateCache:
    resource: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth a counter (and a log line when `log` is set): a rejection, an oversize body..."""

    kind: str
    detail: str = ""
    log: bool = False


Action = Reply | Immediate | LookupCache | StoreCache | InvalidateCache | Note
