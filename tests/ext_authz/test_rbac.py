"""RBAC: method -> action mapping, deny by default, wildcards, and the seed policy."""

from __future__ import annotations

import pytest

from ext_authz.rbac import (
    DEFAULT_ROLE_GRANTS,
    DELETE,
    READ,
    WRITE,
    Grant,
    RbacPolicy,
    action_for_method,
)


@pytest.mark.parametrize(
    ("method", "action"),
    [
        ("GET", READ), ("HEAD", READ), ("POST", WRITE), ("PUT", WRITE), ("PATCH", WRITE),
        ("DELETE", DELETE), ("OPTIONS", None), ("TRACE", None), ("CONNECT", None),
        ("get", None), ("", None), ("GET ", None),
    ],
)
def test_action_for_method(method: str, action: str | None) -> None:
    assert action_for_method(method) == action


SEED = RbacPolicy(DEFAULT_ROLE_GRANTS)

# (roles, resource, method, allowed)
SEED_TABLE = [
    (["admin"], "profile", "DELETE", True),
    (["admin"], "anything-at-all", "PATCH", True),
    (["admin"], "public", "GET", True),
    (["admin"], "profile", "OPTIONS", False),  # no action, no access, even for admin
    (["user"], "profile", "GET", True),
    (["user"], "profile", "HEAD", True),
    (["user"], "messages", "POST", True),
    (["user"], "files", "PUT", True),
    (["user"], "files", "PATCH", True),
    (["user"], "files", "DELETE", False),
    (["user"], "admin", "GET", False),
    (["user"], "public", "GET", False),  # not granted to user in the seed (public routes skip RBAC)
    (["guest"], "public", "GET", True),
    (["guest"], "public", "POST", False),
    (["guest"], "profile", "GET", False),
    (["guest", "user"], "messages", "POST", True),  # any role may grant
    (["guest", "user"], "public", "GET", True),
    ([], "public", "GET", False),
    (["unknown-role"], "public", "GET", False),
    (["Admin"], "profile", "GET", False),  # role names are exact
    (["*"], "profile", "GET", False),  # "*" is not a role wildcard
]


@pytest.mark.parametrize(("roles", "resource", "method", "allowed"), SEED_TABLE)
def test_seed_policy(roles: list[str], resource: str, method: str, allowed: bool) -> None:
    assert SEED.allows(roles, resource, action_for_method(method)) is allowed


def test_wildcards_and_deny_by_default() -> None:
    policy = RbacPolicy(
        {
            "reader": [Grant("*", frozenset({READ}))],
            "files-admin": [Grant("files", frozenset({"*"}))],
        }
    )
    assert policy.allows(["reader"], "anything", READ)
    assert not policy.allows(["reader"], "anything", WRITE)
    assert policy.allows(["files-admin"], "files", DELETE)
    assert not policy.allows(["files-admin"], "profile", READ)
    assert not policy.allows(["reader"], "anything", None)
    assert not policy.allows(["reader"], "anything", "*")  # a request never asks for "all actions"
    assert not policy.allows(["reader"], "", READ)
    assert not RbacPolicy({}).allows(["admin"], "x", READ)


def test_roles_may_be_any_iterable() -> None:
    assert SEED.allows(("user",), "files", WRITE)
    assert SEED.allows(iter(["guest"]), "public", READ)
    assert SEED.allows(frozenset({"admin"}), "x", DELETE)


@pytest.mark.parametrize(
    ("resource", "actions", "message"),
    [
        ("files", frozenset({"wirte"}), "unknown actions"),
        ("files", frozenset(), "no actions"),
        ("", frozenset({READ}), "must not be empty"),
    ],
)
def test_invalid_grants_are_refused(resource: str, actions: frozenset[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Grant(resource, actions)
