"""One ext_proc stream as a sans-IO state machine: events in, actions out; no grpc, no I/O, time passed in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ext_proc import jsonbody
from ext_proc.cache import CacheEntry, Lookup, hit_headers
from ext_proc.events import (
    Action,
    CacheResult,
    Event,
    Immediate,
    InvalidateCache,
    LookupCache,
    ModeOverride,
    Note,
    Reply,
    RequestBody,
    RequestHeaders,
    ResponseBody,
    ResponseHeaders,
    StoreCache,
    Trailers,
)
from ext_proc.plan import RESPONSE_MAX_DEPTH, RoutePlan
from ext_proc.templates import Context
from ext_proc.validation import Violation, header_bytes

JSON_TYPE = (("content-type", "application/json"),)


def error_response(status: int, error: str, request_id: str, reason: str) -> Immediate:
    """A JSON error; `reason` (the rule) goes to the log only, never to the client."""
    body = json.dumps({"error": error, "request_id": jsonbody.utf8_text(request_id)},
                      separators=(",", ":")).encode()
    return Immediate(status, JSON_TYPE, body, reason)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


STREAM_TYPES = ("text/event-stream", "application/grpc")


def _asks_for_a_stream(headers: Mapping[str, str]) -> bool:
    """Whether a request asks for a response that streams (server-sent events, gRPC, gRPC-Web)."""
    accept, content_type = headers.get("accept", "").lower(), headers.get("content-type", "").lower()
    return any(kind in accept for kind in STREAM_TYPES) or content_type.startswith("application/grpc")


class ProtocolError(Exception):
    """Envoy sent a message this session cannot be in (a bug on one side); the adapter maps it."""


class Session:
    """States: request headers → (cache lookup) → request body → response headers → response body → done."""

    def __init__(self, plan: RoutePlan) -> None:
        self.plan = plan
        self.state = "request_headers"
        self.ctx = Context(now=0.0)
        self.started = 0.0
        self.method = ""
        self.path = ""
        self.request_headers: Mapping[str, str] = {}
        self.request_json = False
        self.request_partial = False
        self.lookup: Lookup | None = None
        self.invalidate: str | None = None
        self.request_has_auth = False
        self.response_status = 0
        self.response_headers: dict[str, str] = {}
        self.response_json = False
        self.store_ttl: int | None = None
        self.wants_response_body = False
        self.headers_sent = False  # the response headers went to the client without us (no headers message)

    # ---- dispatch ----

    def handle(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, RequestHeaders):
            return self._request_headers(event, now)
        if isinstance(event, CacheResult):
            return self._cache_result(event, now)
        if isinstance(event, RequestBody):
            return self._request_body(event, now)
        if isinstance(event, ResponseHeaders):
            return self._response_headers(event, now)
        if isinstance(event, ResponseBody):
            return self._response_body(event, now)
        if isinstance(event, Trailers):
            return [Reply(event.phase)]
        raise ProtocolError(f"unknown event {type(event).__name__}")

    def _expect(self, *states: str) -> None:
        if self.state not in states:
            raise ProtocolError(f"unexpected message in state {self.state}")

    # ---- request ----

    def _request_headers(self, event: RequestHeaders, now: float) -> list[Action]:
        self._expect("request_headers")
        plan, h = self.plan, event.headers
        self.started = now
        self.request_headers = h
        self.method = h.get(":method", "")
        self.path = h.get(":path", "")
        # The client address is Envoy's own (its downstream remote address), never parsed from a header a
        # client or a proxy in between could have written.
        self.ctx = Context(now=now, client_ip=event.client_ip, request_id=h.get("x-request-id", ""))
        has_body = not event.end_of_stream
        content_type = h.get("content-type", "")
        content_length = _int(h.get("content-length"))
        if plan.validator is not None:
            violation = plan.validator.check_headers(self.path, header_bytes(h), content_length, has_body,
                                                     content_type)
            if violation is not None:
                return self._reject(violation)
        if plan.cache is not None:
            self.invalidate = plan.cache.invalidates(self.method, self.path)
        self.request_json = has_body and plan.inspects_request_json and jsonbody.is_json(content_type)
        if self.request_json and content_length is not None and content_length > plan.max_body_bytes:
            if plan.oversize_reject or (plan.validator is not None and plan.validator.inspects_values):
                return self._reject(Violation(413, "payload_too_large", "body_not_inspectable"))
            self.request_json = False
            self.state = "request_body"
            return [Note("oversize_request_body"), self._request_reply()]
        # A body of unknown length (chunked, or HTTP/2 without content-length) may be larger than Envoy
        # buffers: ask for it as BUFFERED_PARTIAL, so that such a body reaches us cut at the limit and is
        # answered (413) instead of stalling. A declared length keeps BUFFERED: Envoy keeps the
        # content-length header then, and the route's buffer limit (ext_proc/envoy.py) covers it.
        self.request_partial = self.request_json and content_length is None
        if plan.cache is not None:
            self.lookup = plan.cache.lookup(self.method, self.path, h)
            self.request_has_auth = "authorization" in h
            if self.lookup is not None and self.lookup.read:
                self.state = "cache_lookup"
                return [LookupCache(self.lookup.key)]
        self.state = "request_body"
        return [self._request_reply()]

    def _cache_result(self, event: CacheResult, now: float) -> list[Action]:
        self._expect("cache_lookup")
        entry = CacheEntry.decode(event.raw) if event.raw is not None else None
        if entry is not None:
            self.state = "done"
            headers = hit_headers(entry, now)
            if self.plan.response is not None:
                ctx = self._response_ctx(now)
                present = {k for k, _ in headers}
                headers += [(r.name, r.template.render(ctx)) for r in self.plan.response.all_header_rules
                            if not (r.if_absent and r.name in present)]
            return [Note("cache_hit"), Immediate(entry.status, tuple(headers), entry.body, "cache_hit")]
        self.state = "request_body"
        return [Note("cache_miss"), self._request_reply()]

    def _request_reply(self) -> Reply:
        """Headers reply for the request, asking Envoy to skip phases this request turned out not to need."""
        plan = self.plan
        sets: tuple[tuple[str, str, bool], ...] = ()
        removes: tuple[str, ...] = ()
        if plan.request is not None and plan.request.edits_headers:
            out, removes = plan.request.headers(self.request_headers, self.ctx)
            sets = tuple(out)
        response = plan.response
        response_body = bool(response is not None and response.edits_body)
        response_headers = bool(response_body or (response is not None and response.header_rules))
        if self.lookup is not None:
            response_headers = True
            response_body = response_body or self.lookup.write
        elif plan.cache is not None:
            response_headers = True  # to say BYPASS: a method never cached, or a path no rule covers
        if self.invalidate is not None:
            response_headers = True
        phases = plan.phases
        # Only ever fewer phases than the route's: a header-only request never buffers a body, and a route
        # whose body message carries what the headers would (ext_proc/envoy.py) never gets them back...
        request_body = self.request_json and phases.request_body
        response_headers = response_headers and phases.response_headers
        response_body = response_body and phases.response_body
        if response_body and not response_headers and _asks_for_a_stream(self.request_headers):
            # ...but for a stream: without its headers message its body would be buffered (BUFFERED_PARTIAL,
            # up to Envoy's limit) before the processor could tell it is no JSON, holding every event back.
            response_headers = True
        mode = None
        if (request_body != phases.request_body or response_headers != phases.response_headers
                or response_body != phases.response_body or self.request_partial):
            mode = ModeOverride(request_body, response_headers, response_body,
                                request_partial=self.request_partial)
        self.wants_response_body = response_body
        return Reply("request_headers", sets, removes, mode=mode)

    def _request_body(self, event: RequestBody, now: float) -> list[Action]:
        self._expect("request_body")
        self.state = "response_headers"
        plan = self.plan
        if not self.request_json:
            return [Reply("request_body")]
        if not event.end_of_stream:
            # Cut at Envoy's buffer limit (BUFFERED_PARTIAL: a body of unknown length). Refused whatever
            # oversize_body says: Envoy itself refuses such a body (413) when it is all there before our
            # answer to the headers, so passing it on here would make the outcome a matter of timing.
            return self._reject(Violation(413, "payload_too_large", "body_over_buffer_limit"))
        if len(event.body) > plan.max_body_bytes:
            if plan.oversize_reject or (plan.validator is not None and plan.validator.inspects_values):
                return self._reject(Violation(413, "payload_too_large", "body_not_inspectable"))
            return [Note("oversize_request_body"), Reply("request_body")]
        if not event.body:
            # An empty body is no JSON document to check or map, however it was framed: a chunked one
            # (this message) passes like `content-length: 0` (no body phase at all) does.
            return [Note("empty_body"), Reply("request_body")]
        if plan.validator is not None:
            too_big = plan.validator.check_body_size(len(event.body))
            if too_big is not None:
                return self._reject(too_big)
        try:
            doc = jsonbody.parse(event.body, plan.max_json_depth)
        except jsonbody.BadJson as exc:
            # A body we must inspect but cannot read is refused, never passed on half-checked.
            return self._reject(Violation(400, "invalid_json", f"json_{exc.reason}"))
        if plan.validator is not None and plan.validator.inspects_values:
            violation = plan.validator.check_values(jsonbody.strings(doc))
            if violation is not None:
                return self._reject(violation)
        if plan.request is not None and plan.request.field_rules:
            if not plan.request.body(doc, self.ctx):
                # The route's fields (a client address, a timestamp the upstream trusts) can only be set
                # on an object: an array or a scalar would reach the upstream without them.
                return self._reject(Violation(400, "invalid_json", "json_not_object"))
            body = jsonbody.dump(doc)
            return [Reply("request_body", (("content-length", str(len(body)), False),), body=body)]
        return [Reply("request_body")]

    def _reject(self, violation: Violation) -> list[Action]:
        self.state = "done"
        return [Note("rejected", violation.rule, log=True),
                error_response(violation.status, violation.error, self.ctx.request_id, violation.rule)]

    # ---- response ----

    def _response_ctx(self, now: float) -> Context:
        return Context(now=now, client_ip=self.ctx.client_ip, request_id=self.ctx.request_id,
                       response_time_ms=max(0, int((now - self.started) * 1000)) if self.started else 0)

    def _response_headers(self, event: ResponseHeaders, now: float) -> list[Action]:
        self._expect("request_headers", "request_body", "response_headers")
        if self.state == "request_headers":
            # The request never reached us: this is a reply an earlier filter made (ext_authz, rate limit).
            self.state = "done"
            skip_body = ModeOverride(request_body=False, response_headers=True, response_body=False)
            return [Note("local_reply_untouched"), Reply("response_headers", mode=skip_body)]
        self.state = "response_body"
        h = event.headers
        self.response_status = _int(h.get(":status")) or 0
        self.ctx = self._response_ctx(now)
        actions: list[Action] = []
        if self.invalidate is not None and 200 <= self.response_status < 400:
            actions.append(InvalidateCache(self.invalidate))
        sets: list[tuple[str, str, bool]] = []
        removes: tuple[str, ...] = ()
        response = self.plan.response
        if response is not None:
            sets = response.headers(h, self.ctx)
            removes = response.removes
        self.response_headers = {k: v for k, v in h.items() if k not in removes}
        for name, value, if_absent in sets:
            if not (if_absent and name in self.response_headers):
                self.response_headers[name] = value
        has_body = not event.end_of_stream
        declared = _int(h.get("content-length")) or 0
        self.response_json = bool(has_body and response is not None and response.edits_body
                                  and jsonbody.is_json(h.get("content-type", "")))
        if self.response_json and declared > self.plan.max_body_bytes:
            if self.plan.oversize_reject:
                self.state = "done"
                return [*actions, Note("oversize_response_body", log=True),
                        error_response(502, "bad_gateway", self.ctx.request_id, "oversize_response_body")]
            actions.append(Note("oversize_response_body"))
            self.response_json = False
        if self.lookup is None and self.plan.cache is not None:
            sets.append(("x-cache-status", "BYPASS", False))
        elif self.lookup is not None and self.plan.cache is not None:
            ttl = self.plan.cache.store_ttl(self.lookup, self.response_status, h, self.request_has_auth, declared)
            if ttl is None or not has_body:
                sets.append(("x-cache-status", "MISS" if ttl is not None else "BYPASS", False))
                if ttl is not None:
                    actions.append(self._store(b"", ttl, now))
            else:
                self.store_ttl = ttl  # decided with the body (its size, its final form)
        mode: ModeOverride | None = None
        if not has_body:
            self.state = "done"
        elif self.wants_response_body and not (self.response_json or self.store_ttl is not None):
            # Nothing to do with this body after all (not JSON, not storable, too large): don't buffer it.
            mode = ModeOverride(request_body=False, response_headers=True, response_body=False)
            self.state = "done"
        actions.append(Reply("response_headers", tuple(sets), removes, mode=mode))
        return actions

    def _store(self, body: bytes, ttl: int, now: float) -> StoreCache:
        assert self.lookup is not None and self.plan.cache is not None
        entry = self.plan.cache.entry(self.response_status, self.response_headers, body, now)
        return StoreCache(self.lookup.key, self.lookup.resource, self.lookup.path, entry.encode(), ttl)

    def _body_without_headers(self, event: ResponseBody, now: float) -> list[Action] | None:
        """A response body whose headers message the route skips (ext_proc/config.py route_phases): what the
        headers would have decided, from what Envoy forwards with the body; None to go on with the body."""
        if self.state == "request_headers":
            # The request never reached us: a reply an earlier filter made (ext_authz, rate limit).
            self.state = "done"
            return [Note("local_reply_untouched"), Reply("response_body")]
        self._expect("request_body", "response_headers")
        self.state = "response_body"
        self.headers_sent = True
        self.ctx = self._response_ctx(now)
        response = self.plan.response
        if response is None or not response.edits_body:
            self.response_json = False
            return None
        if event.content_type is None:
            # No content type came with the body: this Envoy lacks the filter that forwards it (not a config
            # of ours). Never passed on untransformed: the route's removals may hide a secret.
            self.state = "done"
            return [Note("response_content_type_unknown", log=True),
                    error_response(502, "bad_gateway", self.ctx.request_id, "response_content_type_unknown")]
        self.response_json = jsonbody.is_json(event.content_type)
        return None

    def _response_body(self, event: ResponseBody, now: float) -> list[Action]:
        if self.state != "response_body":
            early = self._body_without_headers(event, now)
            if early is not None:
                return early
        self._expect("response_body")
        self.state = "done"
        self.ctx = replace(self.ctx, now=now)  # response_time_ms stays the time to the response headers
        plan = self.plan
        complete = event.end_of_stream and len(event.body) <= plan.max_body_bytes
        actions: list[Action] = []
        body: bytes | None = None
        if self.response_json and not event.body and event.end_of_stream:
            actions.append(Note("empty_body"))  # nothing to transform, however it was framed
        elif self.response_json:
            if not complete:
                if plan.oversize_reject:
                    return [Note("oversize_response_body", log=True),
                            error_response(502, "bad_gateway", self.ctx.request_id, "oversize_response_body")]
                actions.append(Note("oversize_response_body"))
            else:
                try:
                    body = self._transform_response(event.body)
                except jsonbody.BadJson as exc:
                    # Never passed on untransformed: the route's removals (a password field) would be
                    # skipped by a body the upstream made unreadable, and a client could make it so
                    # (a stored NaN, a deep document). RFC 9110 §15.6.3: an invalid upstream response.
                    return [Note("response_json_invalid", exc.reason, log=True),
                            error_response(502, "bad_gateway", self.ctx.request_id, f"response_json_{exc.reason}")]
        sets: list[tuple[str, str, bool]] = []
        if body is not None and not self.headers_sent:
            # Without a headers message Envoy has sent the headers on already (and dropped content-length:
            # BUFFERED_PARTIAL); a header edit here would be ignored.
            sets.append(("content-length", str(len(body)), False))
        if self.store_ttl is not None:
            final = body if body is not None else event.body
            stored = event.end_of_stream and plan.cache is not None and len(final) <= plan.cache.max_body_bytes
            sets.append(("x-cache-status", "MISS" if stored else "BYPASS", False))
            if stored:
                self.response_headers["content-length"] = str(len(final))
                actions.append(self._store(final, self.store_ttl, now))
        actions.insert(0, Reply("response_body", tuple(sets), body=body))
        return actions

    def _transform_response(self, raw: bytes) -> bytes:
        """The transformed body; BadJson if the upstream's body cannot be read (and written back) exactly."""
        assert self.plan.response is not None
        # Lenient: what we write back ourselves may drop a BOM, keep a lone surrogate as an escape and take
        # the last of duplicate keys (jsonbody.parse); the rest of the strict rules hold.
        doc: Any = jsonbody.parse(raw, RESPONSE_MAX_DEPTH, strict=False)
        self.plan.response.body(doc, self.ctx)
        return jsonbody.dump(doc)
