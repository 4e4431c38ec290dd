"""The fallback route table: which gateway route a request is on when its Envoy sends no context_extensions. Pure.

Someone else's Envoy (Istio's, Envoy Gateway's) routes by its own table and tells ext_authz nothing about our
routes, so the authorizer finds the route itself, the way our own Envoy would: the first route whose path
AND header conditions match. It never sees a raw path: `resolve` takes the request target and matches its
canonical form (outrider.path_policy), refusing any path an upstream could read differently.

A route's three outcomes behind such an Envoy:
- public: allowed without identity (the Authorization header removed on the way up);
- protected: the RBAC resource to check;
- a direct response (a path the gateway answers itself, e.g. a blocked path or /health/live): ext_authz
  answers it in Envoy's place (a denied CheckResponse carrying the route's status and body), so the
  request never reaches an upstream, whatever the status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from outrider.path_policy import canonical_path


@dataclass(frozen=True)
class HeaderCondition:
    """A route's header condition, as Envoy's HeaderMatcher evaluates it (invert negates the whole test).

    Envoy hands ext_authz a header sent twice as one value joined by "," (the same string its route
    matcher compares), so comparing the CheckRequest's value gives the route table's answer.
    """

    name: str                           # lower case, as Envoy sends header names
    exact: str | None = None
    prefix: str | None = None
    regex: re.Pattern[str] | None = None
    present: bool = False
    invert: bool = False

    def holds(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if value is None:
            found = False               # absent: no condition holds (Envoy), so only `invert` matches
        elif self.present:
            found = True
        elif self.exact is not None:
            found = value == self.exact
        elif self.prefix is not None:
            found = value.startswith(self.prefix)
        else:
            found = self.regex is not None and self.regex.fullmatch(value) is not None
        return found != self.invert


@dataclass(frozen=True)
class DirectAnswer:
    """The response a route gives without an upstream (its `direct_response`)."""

    status: int
    body: str = ""
    content_type: str = "application/json"


@dataclass(frozen=True)
class PathRule:
    """One gateway route as a fallback rule. `matches` takes the canonical path, never the raw target."""

    prefix: str | None
    exact: str | None
    regex: re.Pattern[str] | None
    resource: str | None                # None = public (unless `answer` is set)
    headers: tuple[HeaderCondition, ...] = ()
    answer: DirectAnswer | None = None  # a direct-response route: the authorizer answers it
    allow_parameters: bool = False      # the route's allow_path_parameters (`;` parameters reach it)

    def matches_path(self, path: str) -> bool:
        if self.exact is not None:
            return path == self.exact
        if self.prefix is not None:
            return path.startswith(self.prefix)
        return self.regex is not None and self.regex.fullmatch(path) is not None

    def matches(self, path: str, headers: Mapping[str, str] | None = None) -> bool:
        if not self.matches_path(path):
            return False
        return all(condition.holds(headers or {}) for condition in self.headers)


class Refused:
    """`resolve`'s answer for a path no rule may see: confusing, or `;` parameters on a route refusing them."""


REFUSED = Refused()


def resolve(rules: Sequence[PathRule], target: str, headers: Mapping[str, str]) -> PathRule | Refused | None:
    """The first rule matching the request (path and headers, in order), REFUSED, or None (no rule)."""
    path = canonical_path(target)
    if path is not None:
        return next((rule for rule in rules if rule.matches(path, headers)), None)
    # `;` parameters only, perhaps: as our own Envoy does, they pass on a route that allows them.
    lenient = canonical_path(target, allow_parameters=True)
    if lenient is None:
        return REFUSED
    rule = next((rule for rule in rules if rule.matches(lenient, headers)), None)
    return rule if rule is not None and rule.allow_parameters else REFUSED
