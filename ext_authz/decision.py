"""The authorization decision for one request: find the token, verify it, apply RBAC. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ext_authz.failure_budget import FailureBudget, client_key
from ext_authz.fallback import REFUSED, DirectAnswer, PathRule, Refused, resolve
from ext_authz.jwt_verifier import AuthError, Identity, TokenVerifier, UnknownKeyError
from ext_authz.rbac import RbacPolicy, action_for_method
from ext_authz.token_cache import NegativeCache, TokenCache, token_digest

__all__ = ["Authorizer", "CheckInput", "Decision", "DirectAnswer", "PathRule", "bearer_token"]

PUBLIC = "public"
INVALID_PATH = "invalid_path"
DIRECT_RESPONSE = "direct_response"
# Refusals that time may undo (nbf or iat still ahead): never remembered as refused.
_MAY_BECOME_VALID = frozenset({"not_yet_valid", "issued_in_future"})


@dataclass(frozen=True)
class CheckInput:
    """What the decision needs from Envoy's CheckRequest."""

    method: str
    path: str
    headers: Mapping[str, str]          # lower-case names, as Envoy sends them
    context: Mapping[str, str]          # the route's context_extensions
    request_id: str = ""
    client: str = ""                    # the client's address as Envoy gives it (service.client_of)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int                         # 200, 400, 401, 403 or 429
    reason: str                         # stable code for logs and metrics; never sent to the client
    identity: Identity | None = None
    resource: str | None = None
    token_sent: bool = False
    public: bool = False                # allowed without identity: strip any identity headers
    retry_after_s: float | None = None  # 429: when the client may try a token again
    answer: DirectAnswer | None = None  # a direct-response route's own answer (status, body) in Envoy's place


class InvalidRequest(Exception):
    """The request carries its credentials in a way RFC 6750 calls malformed (answered 400 invalid_request)."""


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive); None when absent.

    Raises InvalidRequest for two Authorization headers: Envoy hands them to us joined with a comma,
    which no single credential contains (RFC 6750 §2.1's b64token has no comma; RFC 9110 §5.3 is
    how a recipient combines repeated fields). RFC 6750 §3.1 answers a request that "repeats the same
    parameter" or "uses more than one method for including an access token" with 400 invalid_request.
    """
    value = headers.get("authorization")
    if not value:
        return None
    if "," in value:
        raise InvalidRequest("more than one Authorization credential")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class Authorizer:
    """Token → identity (cached) → RBAC on the route's resource."""

    def __init__(self, verifier: TokenVerifier, cache: TokenCache, rbac: RbacPolicy,
                 fallback_rules: Sequence[PathRule] = (),
                 on_unknown_key: Callable[[str], None] | None = None,
                 refused: NegativeCache | None = None, budget: FailureBudget | None = None) -> None:
        self._verifier = verifier
        self._cache = cache
        self._rbac = rbac
        self._fallback = tuple(fallback_rules)
        self._on_unknown_key = on_unknown_key
        self._refused = refused if refused is not None else NegativeCache(0)
        self._budget = budget

    def _resource_for(self, check: CheckInput) -> str | PathRule | Refused | None:
        """The route's resource (or PUBLIC) from its context_extensions; else the fallback rule it is on."""
        resource = check.context.get("resource")
        if resource:
            return resource
        if check.context.get("public") == "true":
            return PUBLIC
        if not self._fallback:
            return None
        # Rules match the normalised path only; a path an upstream could read differently (encoded or overlong
        # dots and slashes, `..`, `;` parameters, ...) is refused, as the gateway's own Envoy refuses it.
        rule = resolve(self._fallback, check.path, check.headers)
        if isinstance(rule, PathRule) and rule.answer is None:
            return rule.resource if rule.resource is not None else PUBLIC
        return rule

    def identify(self, token: str, now: float, client: str = "", resource: str | None = None) -> Identity | Decision:
        """The token's identity (cached, else verified), or the refusal: 401, or 429 once the client is over
        its budget of refused tokens (then nothing is verified: a flood of forged signatures stays cheap)."""
        digest = token_digest(token)
        identity = self._cache.get_digest(digest, now)
        if identity is not None:
            return identity
        budget = self._budget
        if budget is not None:
            client = client_key(client)  # only now: a cached token never pays for parsing the address
            wait = budget.retry_after(client, now)
            if wait is not None:
                return Decision(False, 429, "failure_budget", resource=resource, token_sent=True, retry_after_s=wait)
        reason = self._refused.get(digest, now)
        if reason is not None:
            if budget is not None:
                budget.record_failure(client, now)
            return Decision(False, 401, reason, resource=resource, token_sent=True)
        try:
            identity = self._verifier.verify(token, now)
        except UnknownKeyError as exc:
            # Not the client's doing (keys not loaded yet, or rotated): ask for a refresh (rate-limited
            # by the source's cooldown), remember nothing and charge no budget.
            if self._on_unknown_key is not None:
                self._on_unknown_key(exc.provider)
            return Decision(False, 401, exc.reason, resource=resource, token_sent=True)
        except AuthError as exc:
            if exc.reason not in _MAY_BECOME_VALID:
                self._refused.put(digest, exc.reason, now)
            if budget is not None:
                budget.record_failure(client, now)
            return Decision(False, 401, exc.reason, resource=resource, token_sent=True)
        self._cache.put_digest(digest, identity, now)
        return identity

    def forget_tokens(self) -> None:
        """Keys changed: cached identities (a removed key) and refusals (a new key) no longer hold."""
        self._cache.clear()
        self._refused.clear()

    def decide(self, check: CheckInput, now: float) -> Decision:
        found = self._resource_for(check)
        if found is REFUSED:
            return Decision(False, 403, INVALID_PATH)
        if isinstance(found, PathRule):
            # A route the gateway answers itself (blocked path, health): never forwarded, never public.
            assert found.answer is not None
            return Decision(False, found.answer.status, DIRECT_RESPONSE, answer=found.answer)
        resource = found if isinstance(found, str) else None
        if resource == PUBLIC:
            return Decision(True, 200, "public", public=True, resource=PUBLIC)
        try:
            token = bearer_token(check.headers)
        except InvalidRequest:
            return Decision(False, 400, "invalid_request", resource=resource)
        if token is None:
            return Decision(False, 401, "token_missing", resource=resource)
        identified = self.identify(token, now, check.client, resource)
        if isinstance(identified, Decision):
            return identified
        identity = identified
        if resource is None:
            # No route policy and no fallback rule: deny rather than guess.
            return Decision(False, 403, "no_policy", identity=identity, token_sent=True)
        if not self._rbac.allows(identity.roles, resource, action_for_method(check.method)):
            return Decision(False, 403, "forbidden", identity=identity, resource=resource, token_sent=True)
        return Decision(True, 200, "allowed", identity=identity, resource=resource, token_sent=True)
