"""Envoy ext_authz service: JWT verification against JWKS, RBAC, identity for the upstream."""
