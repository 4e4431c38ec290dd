"""Pure role-based access decision: (roles, resource, action) -> allowed or not."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

READ, WRITE, DELETE = "read", "write", "delete"
ACTIONS = frozenset({READ, WRITE, DELETE})
WILDCARD = "*"

_METHOD_ACTIONS: Mapping[str, str] = MappingProxyType(
    {"GET": READ, "HEAD": READ, "POST": WRITE, "PUT": WRITE, "PATCH": WRITE, "DELETE": DELETE}
)


def action_for_method(method: str) -> str | None:
    """Map an HTTP method to an action; None (always denied) for anything else, e.g. OPTIONS, TRACE."""
    # HTTP methods are case-sensitive (RFC 9110 §9.1), so "get" is not GET.
    return _METHOD_ACTIONS.get(method)


@dataclass(frozen=True)
class Grant:
    """Permission to perform `actions` on `resource`; "*" matches any resource or any action."""

    resource: str
    actions: frozenset[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", frozenset(self.actions))
        if not self.resource:
            raise ValueError("grant resource must not be empty")
        if not self.actions:
            raise ValueError(f"grant on {self.resource!r} has no actions")
        unknown = sorted(self.actions - ACTIONS - {WILDCARD})
        if unknown:
            # A typo such as "wirte" would otherwise silently grant nothing.
            raise ValueError(f"grant on {self.resource!r}: unknown actions {unknown}")


class RbacPolicy:
    """Deny by default; a request is allowed when any of the caller's roles grants it."""

    __slots__ = ("_granted",)

    def __init__(self, roles: Mapping[str, Sequence[Grant]]) -> None:
        # Flattened once so allows() is a handful of set lookups, wildcards included.
        self._granted: frozenset[tuple[str, str, str]] = frozenset(
            (role, grant.resource, action)
            for role, grants in roles.items()
            for grant in grants
            for action in grant.actions
        )

    def allows(self, roles: Iterable[str], resource: str, action: str | None) -> bool:
        if action not in ACTIONS or not resource:
            return False
        granted = self._granted
        for role in roles:
            if (
                (role, resource, action) in granted
                or (role, WILDCARD, action) in granted
                or (role, resource, WILDCARD) in granted
                or (role, WILDCARD, WILDCARD) in granted
            ):
                return True
        return False


# The seed policy: admin does anything, user reads/writes their own areas, guest reads public.
DEFAULT_ROLE_GRANTS: Mapping[str, tuple[Grant, ...]] = MappingProxyType(
    {
        "admin": (Grant(WILDCARD, frozenset({WILDCARD})),),
        "user": tuple(
            Grant(resource, frozenset({READ, WRITE})) for resource in ("profile", "messages", "files")
        ),
        "guest": (Grant("public", frozenset({READ})),),
    }
)
