"""gRPC adapter: Envoy CheckRequest → Authorizer decision → CheckResponse. Errors map to deny here, once."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from urllib.parse import quote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

from ext_authz.decision import Authorizer, CheckInput, Decision
from ext_authz.fallback import DirectAnswer
from ext_authz.jwt_verifier import Identity
from ext_authz.metrics import AuthzMetrics, DecisionCounter, service_metrics
from outrider.identity import IDENTITY_HEADERS
from outrider.logs import REQUEST_ID, DecisionLog
from outrider.tracing import ServiceTracer

log = logging.getLogger("ext_authz.service")
# Spans only with OTEL_EXPORTER_OTLP_ENDPOINT set, and only for a sampled request (outrider/tracing.py).
TRACER = ServiceTracer("ext_authz")

OK_CACHE_ENTRIES = 10_000
NOT_READY = Decision(False, 403, "not_ready")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_JSON = base_pb2.HeaderValueOption(
    header=base_pb2.HeaderValue(key="content-type", value="application/json"), append_action=_OVERWRITE)
_CLIENT_ERRORS = {
    400: ("invalid_request", http_status_pb2.BadRequest, code_pb2.INVALID_ARGUMENT),
    401: ("unauthorized", http_status_pb2.Unauthorized, code_pb2.UNAUTHENTICATED),
    403: ("forbidden", http_status_pb2.Forbidden, code_pb2.PERMISSION_DENIED),
    429: ("too_many_requests", http_status_pb2.TooManyRequests, code_pb2.RESOURCE_EXHAUSTED),
}
# Envoy sets it on every edge request to the client address it trusts (the peer, or the XFF entry
# xff_num_trusted_hops names) and overwrites what a client sent (HTTP header manipulation,
# x-envoy-external-address); tests/e2e/test_token_hardening.py checks a client cannot choose it.
EXTERNAL_ADDRESS = "x-envoy-external-address"
AUTHORIZATION = "authorization"


# Visible ASCII but `%` (the escape), `,` (the separator): kept as is in a role; anything else is %XX-encoded.
_ROLE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%,")


def encode_roles(roles: Sequence[str]) -> str:
    """Roles joined with `,`, each percent-encoded (RFC 3986 §2.1, its UTF-8 bytes) outside visible ASCII and
    for `%` and `,`: a role "user,admin" arrives as "user%2Cadmin", one role that cannot pass for two, and a
    space, non-ASCII or control character can neither be trimmed away nor break the header. Roles made of
    visible ASCII without `%`/`,` (the usual ones) are sent unchanged; an upstream splits on `,` and
    percent-decodes each part."""
    return ",".join(quote(role, safe=_ROLE_SAFE) for role in roles)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def build_ok(decision: Decision) -> external_auth_pb2.CheckResponse:
    """The allow response: identity headers (overwriting the client's) and dynamic metadata."""
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.OK))
    ok = response.ok_response
    identity = decision.identity
    if identity is None:
        ok.headers_to_remove.extend(IDENTITY_HEADERS)
        # A public route's upstream has no use for a credential, and must not see one it could log or
        # replay: behind someone else's Envoy nothing else strips it. OkHttpResponse.headers_to_remove is in
        # Envoy's v3 API since 1.17 (envoyproxy.io/docs/envoy/v1.17.1/api-v3/service/auth/v3/external_auth.proto).
        ok.headers_to_remove.append(AUTHORIZATION)
        return response
    roles = encode_roles(identity.roles)
    # Overwrite, never append: whatever the client sent under these names is discarded.
    ok.headers.extend((_header("x-user-id", identity.user_id), _header("x-user-roles", roles),
                       _header("x-user-tier", identity.tier)))
    if identity.email is not None:
        ok.headers.append(_header("x-user-email", identity.email))
    else:
        ok.headers_to_remove.append("x-user-email")
    # Envoy files this under the ext_authz filter's namespace; the rate limit filter reads it from there.
    response.dynamic_metadata.update(
        {"user_id": identity.user_id, "tier": identity.tier, "roles": roles, "provider": identity.provider})
    return response


def challenge(decision: Decision) -> str | None:
    """The WWW-Authenticate value of a refusal (RFC 6750 §3, §3.1), None when it is not about the token."""
    if decision.status == 400:
        return 'Bearer error="invalid_request"'
    if decision.status == 401:
        # No credentials at all: the bare challenge, no error code (RFC 6750 §3.1, last paragraph).
        return 'Bearer error="invalid_token"' if decision.token_sent else "Bearer"
    if decision.status == 403 and decision.identity is not None:
        # A valid token whose holder may not do this: "requires higher privileges than provided".
        return 'Bearer error="insufficient_scope"'
    return None


# Denied responses differ only in their body (the request id) once status, challenge and Retry-After are
# known: copying a prebuilt one costs ~2 µs against ~15 µs to build it, which matters in a flood.
_DENIED_TEMPLATES: dict[tuple[int, str | None, str | None], tuple[external_auth_pb2.CheckResponse, str]] = {}
_MAX_TEMPLATES = 256


def _denied_template(status: int, value: str | None,
                     retry_after: str | None) -> tuple[external_auth_pb2.CheckResponse, str]:
    key = (status, value, retry_after)
    found = _DENIED_TEMPLATES.get(key)
    if found is None:
        error, http_code, rpc_code = _CLIENT_ERRORS.get(status, _CLIENT_ERRORS[403])
        template = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=rpc_code))
        denied = template.denied_response
        denied.status.code = http_code
        denied.headers.append(_JSON)
        if value is not None:
            denied.headers.append(_header("www-authenticate", value))
        if retry_after is not None:
            denied.headers.append(_header("retry-after", retry_after))
        if len(_DENIED_TEMPLATES) >= _MAX_TEMPLATES:
            _DENIED_TEMPLATES.clear()
        found = _DENIED_TEMPLATES[key] = (template, '{"error":' + json.dumps(error) + ',"request_id":')
    return found


def build_direct(answer: DirectAnswer) -> external_auth_pb2.CheckResponse:
    """A direct-response route answered in Envoy's place: a denied CheckResponse with the route's own status
    (any, 2xx too: Envoy's ext_authz filter replies locally with the code it is given), body and type."""
    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED))
    denied = response.denied_response
    denied.status.code = answer.status  # an open enum: any HTTP status
    denied.headers.append(_header("content-type", answer.content_type))
    denied.body = answer.body
    return response


def build_denied(decision: Decision, request_id: str) -> external_auth_pb2.CheckResponse:
    if decision.answer is not None:
        return build_direct(decision.answer)
    retry_after = None
    if decision.retry_after_s is not None:
        # Whole seconds, rounded up (RFC 9110 §10.2.3): never tell a client to come back too early.
        retry_after = str(max(1, math.ceil(decision.retry_after_s)))
    template, body_head = _denied_template(decision.status, challenge(decision), retry_after)
    response = external_auth_pb2.CheckResponse()
    response.CopyFrom(template)
    # The body names the class of failure only; the precise reason stays in our logs.
    response.denied_response.body = body_head + json.dumps(request_id) + "}"
    return response


def client_of(request: external_auth_pb2.CheckRequest) -> str:
    """Who the failure budget charges: Envoy's trusted client address, else the peer Envoy saw."""
    attributes = request.attributes
    address: str = (attributes.request.http.headers.get(EXTERNAL_ADDRESS)
                    or attributes.source.address.socket_address.address)
    return address


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    """envoy.service.auth.v3.Authorization/Check."""

    def __init__(self, authorizer: Authorizer | None, decision_log: DecisionLog,
                 clock: Callable[[], float] = time.time, metrics: AuthzMetrics | None = None) -> None:
        self._authorizer = authorizer
        self._log = decision_log
        self._clock = clock
        self._metrics = metrics or service_metrics()
        self._counter = DecisionCounter(self._metrics.checks)
        # An identity's allow response never changes, so build it once (bounded like the token cache).
        self._ok_cache: dict[Identity, external_auth_pb2.CheckResponse] = {}
        self._public_ok = build_ok(Decision(True, 200, "public", public=True))

    def use(self, authorizer: Authorizer) -> None:
        """Swap in the policy of a reloaded config (one attribute store: in-flight checks finish on the old)."""
        self._authorizer = authorizer
        self._ok_cache = {}

    def _ok_response(self, decision: Decision) -> external_auth_pb2.CheckResponse:
        identity = decision.identity
        if identity is None:
            return self._public_ok
        response = self._ok_cache.get(identity)
        if response is None:
            if len(self._ok_cache) >= OK_CACHE_ENTRIES:
                self._ok_cache.clear()
            response = self._ok_cache[identity] = build_ok(decision)
        return response

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        started = time.perf_counter()
        # The design's auth_validate stage, child of Envoy's ext_authz client span (None: off or unsampled).
        span = TRACER.start("auth_validate", context.invocation_metadata()) if TRACER.enabled else None
        http = request.attributes.request.http
        # x-request-id is what the client and the logs see; http.id is Envoy's internal stream id.
        request_id = http.headers.get("x-request-id") or http.id
        REQUEST_ID.set(request_id)  # this call's own task: its log lines carry the id (outrider/logs.py)
        try:
            check = CheckInput(method=http.method, path=http.path, headers=http.headers,
                               context=request.attributes.context_extensions, request_id=request_id,
                               client=client_of(request))
            authorizer = self._authorizer
            # No config version applied yet (health says NOT_SERVING): fail closed, say why in the log.
            decision = NOT_READY if authorizer is None else authorizer.decide(check, self._clock())
            response = self._ok_response(decision) if decision.allowed else build_denied(decision, request_id)
        except Exception:
            # A bug must not open the gateway nor surface as a 500: deny, and say so in the log.
            log.exception("check failed", extra={"request_id": request_id})
            self._metrics.errors.inc()
            decision = Decision(False, 403, "internal_error")
            response = build_denied(decision, request_id)
        self._counter.inc("allow" if decision.allowed else "deny", decision.reason)
        self._metrics.check_seconds.observe(time.perf_counter() - started)
        self._log.write({
            "event": "authz_decision", "request_id": request_id,
            "decision": "allow" if decision.allowed else "deny", "status": decision.status,
            "reason": decision.reason, "resource": decision.resource,
            "user_id": decision.identity.user_id if decision.identity else None,
            "method": http.method, "path": http.path.split("?", 1)[0],
        })
        if span is not None:
            span.set_attribute("outrider.decision", "allow" if decision.allowed else "deny")
            span.set_attribute("outrider.reason", decision.reason)
            span.end()
        return response
