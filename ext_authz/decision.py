"""The authorization decision for one request: find the token, verify it, apply RBAC. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ext_authz.jwt_verifier import AuthError, Identity, TokenVerifier, UnknownKeyError
from ext_authz.rbac import RbacPolicy, action_for_method
from ext_authz.token_cache import TokenCache
from outrider.path_policy import canonical_path

PUBLIC = "public"
INVALID_PATH = "invalid_path"
_REFUSED = "!invalid_path"  # _resource_for's answer for a path no fallback rule may see (never a resource name)


@dataclass(frozen=True)
class CheckInput:
    """What the decision needs from Envoy's CheckRequest."""

    method: str
    path: str
    headers: Mapping[str, str]          # lower-case names, as Envoy sends them
    context: Mapping[str, str]          # the route's context_extensions
    request_id: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int                         # 200, 401 or 403
    reason: str                         # stable code for logs and metrics; never sent to the client
    identity: Identity | None = None
    resource: str | None = None
    token_sent: bool = False
    public: bool = False                # allowed without identity: strip any identity headers


@dataclass(frozen=True)
class PathRule:
    """Fallback policy for requests whose route carries no context_extensions (someone else's Envoy config).

    `matches` takes the canonical path (outrider.path_policy.canonical_path), never the raw request target.
    """

    prefix: str | None
    exact: str | None
    regex: re.Pattern[str] | None
    resource: str | None                # None = public

    def matches(self, path: str) -> bool:
        if self.exact is not None:
            return path == self.exact
        if self.prefix is not None:
            return path.startswith(self.prefix)
        return self.regex is not None and self.regex.fullmatch(path) is not None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive); None when absent."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class Authorizer:
    """Token → identity (cached) → RBAC on the route's resource."""

    def __init__(self, verifier: TokenVerifier, cache: TokenCache, rbac: RbacPolicy,
                 fallback_rules: Sequence[PathRule] = (),
                 on_unknown_key: Callable[[str], None] | None = None) -> None:
        self._verifier = verifier
        self._cache = cache
        self._rbac = rbac
        self._fallback = tuple(fallback_rules)
        self._on_unknown_key = on_unknown_key

    def _resource_for(self, check: CheckInput) -> str | None:
        resource = check.context.get("resource")
        if resource:
            return resource
        if check.context.get("public") == "true":
            return PUBLIC
        if not self._fallback:
            return None
        # Rules match the normalised path only; a path an upstream could read differently (encoded or overlong
        # dots and slashes, `..`, `;` parameters, ...) is refused, as the gateway's own Envoy refuses it.
        path = canonical_path(check.path)
        if path is None:
            return _REFUSED
        for rule in self._fallback:
            if rule.matches(path):
                return rule.resource if rule.resource is not None else PUBLIC
        return None

    def identify(self, token: str, now: float) -> Identity:
        identity = self._cache.get(token, now)
        if identity is None:
            try:
                identity = self._verifier.verify(token, now)
            except UnknownKeyError as exc:
                if self._on_unknown_key is not None:
                    self._on_unknown_key(exc.provider)
                raise
            self._cache.put(token, identity, now)
        return identity

    def decide(self, check: CheckInput, now: float) -> Decision:
        resource = self._resource_for(check)
        if resource == _REFUSED:
            return Decision(False, 403, INVALID_PATH)
        if resource == PUBLIC:
            return Decision(True, 200, "public", public=True, resource=PUBLIC)
        token = bearer_token(check.headers)
        if token is None:
            return Decision(False, 401, "token_missing", resource=resource)
        try:
            identity = self.identify(token, now)
        except AuthError as exc:
            return Decision(False, 401, exc.reason, resource=resource, token_sent=True)
        if resource is None:
            # No route policy and no fallback rule: deny rather than guess.
            return Decision(False, 403, "no_policy", identity=identity, token_sent=True)
        if not self._rbac.allows(identity.roles, resource, action_for_method(check.method)):
            return Decision(False, 403, "forbidden", identity=identity, resource=resource, token_sent=True)
        return Decision(True, 200, "allowed", identity=identity, resource=resource, token_sent=True)
