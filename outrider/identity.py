"""The identity headers: set by ext_authz only, stripped from clients elsewhere, never rewritten by a rule."""

IDENTITY_HEADERS = ("x-user-id", "x-user-email", "x-user-roles", "x-user-tier")
