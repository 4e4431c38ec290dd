"""Native enforcement against Python enforcement: one corpus through twin routes on one real Envoy.

Each protected route exists twice, `/py/...` checked by ext_authz and `/nat/...` with `enforcement: native`
(Envoy's jwt_authn + rbac, ext_authz/native.py), same resource, same upstream (the echo demo upstream),
same ratelimit_service, two providers (the example's, keys from a file; a second one, keys from a URL, so
jwt_authn's requirement is `requires_any`). Every case must give the same status code and identity headers;
rate limits must answer 429 after the same count. The differences that remain are the README's list
("Native enforcement", mode differences); `test_documented_mode_differences` keeps that list true.

Envoy behaviours relied on (envoyproxy/envoy api/envoy/extensions/filters/http/jwt_authn/v3/config.proto):
`from_headers` replaces the default token locations (so no `access_token` query parameter);
`clock_skew_seconds` applies to `exp` and `nbf`; `max_lifetime` bounds exp - now; `claim_to_headers`
copies no array claim (hence the Lua line for x-user-roles); `payload_in_metadata` files the payload
under `envoy.filters.http.jwt_authn`, which RBAC's `sourced_metadata` and the rate limit filter's
`metadata` action read (api/envoy/config/rbac/v3/rbac.proto, route_components.proto RateLimit.Action).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from tests.conftest import start_stack
from tests.harness import KEYS_DIR, Stack, example_config_dict
from tests.jwks_endpoint import JwksEndpoint

IDENTITY = ("x-user-id", "x-user-email", "x-user-roles", "x-user-tier")
ISSUER = "https://auth.outrider.dev"
KID = json.loads((KEYS_DIR / "jwks.json").read_text())["keys"][0]["kid"]
PEM = (KEYS_DIR / "dev-private.pem").read_bytes()
FREE_PER_MINUTE = 5


def _routes() -> list[dict[str, Any]]:
    twins = [("users", {"prefix": "/users/"}, "profile"), ("admin", {"prefix": "/admin/"}, "admin"),
             ("files", {"path": "/files"}, "files")]
    routes: list[dict[str, Any]] = [{"name": "public", "match": {"prefix": "/api/v1/public/"},
                                     "upstream": "demo", "public": True}]
    for mode in ("py", "nat"):
        for name, match, resource in twins:
            key, value = next(iter(match.items()))
            route = {"name": f"{mode}-{name}", "match": {key: f"/{mode}{value}"}, "upstream": "demo",
                     "resource": resource}
            if mode == "nat":
                route["enforcement"] = "native"
            routes.append(route)
    return routes


# A second provider whose keys come from a URL (jwt_authn's remote_jwks through its own cluster; ext_authz's
# fetcher): plain http on loopback, allow_insecure — DEVELOPMENT ONLY, as in any test.
REMOTE_ISSUER = "https://remote.example"
REMOTE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
REMOTE_KID = "remote-1"


def _remote_jwks() -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(REMOTE_KEY.public_key()))
    return {"keys": [{**jwk, "kid": REMOTE_KID, "alg": "RS256"}]}


def _config(jwks_url: str | None = None) -> dict[str, Any]:
    data = example_config_dict()
    if jwks_url is not None:
        data["auth"]["providers"].append({"name": "remote", "issuer": REMOTE_ISSUER, "audiences": ["outrider"],
                                          "algorithms": ["RS256"], "jwks_url": jwks_url, "allow_insecure": True})
    for key in ("transformations", "cache", "validation"):
        data.pop(key, None)
    data["routes"] = _routes()
    # A client's refused tokens are budgeted in python mode only (README: mode differences); the corpus
    # sends dozens of them from one address.
    data["auth"]["failure_budget"] = {"enabled": False}
    rl = data["rate_limits"]
    rl["tiers"]["free"] = [{"requests_per_unit": FREE_PER_MINUTE, "unit": "minute"}]
    rl["endpoints"] = []
    rl.pop("per_ip", None)
    return data


class Twin:
    """The running stack and one kept-alive client (hundreds of requests: no connection per request)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.client = stack.client()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    endpoint = JwksEndpoint(_remote_jwks())
    try:
        running = start_stack(tmp_path_factory.mktemp("native"), _config(endpoint.url))
        pair = Twin(running)
        yield pair
        pair.client.close()
        running.stop()
    finally:
        endpoint.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(claims: dict[str, Any], *, alg: str = "RS256", key: Any = PEM, kid: str | None = KID) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def claims(**changes: Any) -> dict[str, Any]:
    """A valid user token's claims, with `changes` applied (None removes a claim)."""
    now = int(time.time())
    # enterprise: never rate-limited here, so only the rate-limit test meets a 429.
    base: dict[str, Any] = {"iss": ISSUER, "aud": "outrider", "sub": "alice", "roles": ["user"], "tier": "enterprise",
                            "iat": now, "nbf": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def _unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def _tamper_payload(token: str) -> str:
    header, _, rest = token.partition(".")
    _, _, signature = rest.partition(".")
    return f"{header}.{_b64(json.dumps(claims(roles=['admin'])).encode())}.{signature}"


def _tamper_signature(token: str) -> str:
    head, _, signature = token.rpartition(".")
    return f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def corpus() -> dict[str, str | None]:
    """name → Authorization header value (None: no header). Built at call time: times are relative to now."""
    now = int(time.time())
    public_pem = serialization.load_pem_private_key(PEM, None).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    valid = sign(claims())
    tokens: dict[str, str | None] = {
        "valid": valid,
        "admin premium with email": sign(claims(sub="root", roles=["admin", "user"], tier="premium",
                                                email="root@x.io")),
        "roles as a string": sign(claims(roles="user")),
        "no roles": sign(claims(roles=None)),
        "empty roles": sign(claims(roles=[])),
        "guest": sign(claims(roles=["guest"])),
        "no tier (default)": sign(claims(sub="no-tier", tier=None)),
        "no iat, no nbf": sign(claims(iat=None, nbf=None)),
        "expired": sign(claims(iat=now - 700, nbf=now - 700, exp=now - 100)),
        "expired within leeway": sign(claims(iat=now - 610, nbf=now - 610, exp=now - 10)),
        "not yet valid": sign(claims(nbf=now + 120)),
        "nbf within leeway": sign(claims(nbf=now + 10)),
        "no exp": sign(claims(exp=None)),
        "lifetime too long, no iat": sign(claims(iat=None, nbf=None, exp=now + 2 * 86_400)),
        "audience list": sign(claims(aud=["x", "outrider"])),
        "wrong issuer": sign(claims(iss="https://evil.example")),
        "no issuer": sign(claims(iss=None)),
        "no sub": sign(claims(sub=None)),
        "empty sub": sign(claims(sub="")),
        "alg none": _unsigned(claims()),
        "alg None spelled": _unsigned(claims(), "None"),
        "HS256 with the public key": _hs256_confusion(public_pem),
        "RS384 with the key": sign(claims(), alg="RS384"),
        "PS256 with the key": sign(claims(), alg="PS256"),
        "ES256 unknown key": sign(claims(), alg="ES256", key=ec.generate_private_key(ec.SECP256R1()), kid=None),
        "unknown kid": sign(claims(), kid="no-such-key"),
        "no kid": sign(claims(), kid=None),
        "tampered payload": _tamper_payload(valid),
        "tampered signature": _tamper_signature(valid),
        "remote provider": sign(claims(iss=REMOTE_ISSUER, sub="remote-user"), key=REMOTE_KEY, kid=REMOTE_KID),
        "remote provider, unknown kid": sign(claims(iss=REMOTE_ISSUER), key=REMOTE_KEY, kid="remote-2"),
        "remote provider, dev key": sign(claims(iss=REMOTE_ISSUER), kid=REMOTE_KID),
        "remote provider, expired": sign(claims(iss=REMOTE_ISSUER, exp=now - 100, iat=now - 700, nbf=now - 700),
                                         key=REMOTE_KEY, kid=REMOTE_KID),
        "missing": None,
        "malformed": "Bearer not.a.jwt",
        "two segments": "Bearer abc.def",
        "garbage": "Bearer !!!",
        "bare scheme": "Bearer",
        "basic scheme": "Basic YWxpY2U6cHc=",
    }
    return {name: (t if t is None or t.startswith(("Bearer", "Basic ")) else f"Bearer {t}")
            for name, t in tokens.items()}


def _hs256_confusion(secret: bytes) -> str:
    """HS256 keyed with the published RSA key's text: the classic algorithm-confusion forgery."""
    import hashlib
    import hmac
    signing_input = (f"{_b64(json.dumps({'alg': 'HS256', 'kid': KID}).encode())}."
                     f"{_b64(json.dumps(claims()).encode())}")
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def seen(stack: Twin, method: str, path: str, authorization: str | None,
         extra: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """(status, identity headers the upstream received) for one request."""
    headers = {"x-user-id": "mallory", "x-user-roles": "admin", "x-user-tier": "enterprise",
               "x-user-email": "m@evil", **(extra or {})}
    if authorization is not None:
        headers["authorization"] = authorization
    response = stack.request(method, path, headers=headers)
    identity: dict[str, str] = {}
    if response.status_code == 200 and method != "HEAD":
        upstream = response.json()["headers"]
        identity = {k: upstream[k] for k in IDENTITY if k in upstream}
    return response.status_code, identity


def both(stack: Twin, method: str, path: str, authorization: str | None) -> tuple[Any, Any]:
    return (seen(stack, method, f"/py{path}", authorization), seen(stack, method, f"/nat{path}", authorization))


def test_token_corpus_same_status_and_identity(twin: Twin) -> None:
    differences = []
    statuses = {}
    for name, authorization in corpus().items():
        py, nat = both(twin, "GET", "/users/profile", authorization)
        statuses[name] = py[0]
        if py != nat:
            differences.append(f"{name}: python {py} native {nat}")
    assert not differences, "\n".join(differences)
    assert set(statuses.values()) == {200, 401, 403}  # the corpus exercises every outcome
    # Both providers' keys are in use (the remote one fetched by jwt_authn and by ext_authz).
    assert statuses["valid"] == statuses["remote provider"] == 200


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_roles_methods_and_resources(twin: Twin, method: str) -> None:
    differences = []
    for roles in (["user"], ["guest", "admin"], "admin", []):
        authorization = f"Bearer {sign(claims(sub='r-' + method, roles=roles, tier='enterprise'))}"
        for path in ("/users/profile", "/admin/stats", "/files"):
            py, nat = both(twin, method, path, authorization)
            if py != nat:
                differences.append(f"{roles} {path}: python {py} native {nat}")
    assert not differences, "\n".join(differences)


@pytest.mark.parametrize("path", [
    "/users/profile?x=1", "/users/a/b/c", "/users/", "/files", "/files?y=2", "/files/more", "/users",
    "/users/%2e%2e/admin/x", "/users/../admin/x", "/users//profile", "/users/a;b",
])
def test_path_variants(twin: Twin, path: str) -> None:
    user = f"Bearer {sign(claims(sub='paths', tier='enterprise'))}"
    for authorization in (user, None):
        py, nat = both(twin, "GET", path, authorization)
        assert py == nat, f"{path} {authorization is not None}: python {py} native {nat}"


def test_spoofed_identity_never_reaches_upstream(twin: Twin) -> None:
    authorization = f"Bearer {sign(claims(sub='eve', tier=None, roles=['user']))}"
    py, nat = both(twin, "GET", "/users/me", authorization)
    assert py == nat == (200, {"x-user-id": "eve", "x-user-roles": "user", "x-user-tier": "free"})


def test_rate_limit_429_after_the_same_count(twin: Twin) -> None:
    """The free plan (FREE_PER_MINUTE a minute) keyed on (tier, user_id) from the verified claims in both
    modes; a token without tier falls in the default tier's plan; enterprise is never limited here."""
    outcomes = {}
    for mode in ("py", "nat"):
        for label, tier in (("free", "free"), ("default", None), ("enterprise", "enterprise")):
            authorization = f"Bearer {sign(claims(sub=f'rl-{label}-{mode}', tier=tier))}"
            outcomes[(mode, label)] = [seen(twin, "GET", f"/{mode}/users/profile", authorization)[0]
                                       for _ in range(FREE_PER_MINUTE + 2)]
    limited = [200] * FREE_PER_MINUTE + [429] * 2
    assert outcomes[("py", "free")] == outcomes[("nat", "free")] == limited
    assert outcomes[("py", "default")] == outcomes[("nat", "default")] == limited
    assert outcomes[("py", "enterprise")] == outcomes[("nat", "enterprise")] == [200] * (FREE_PER_MINUTE + 2)


def test_documented_mode_differences(twin: Twin) -> None:
    """The README's list of mode differences, as they are (a fix makes this fail: update the README)."""
    now = int(time.time())
    # Lifetime: ext_authz bounds exp - iat, jwt_authn exp - now.
    old_iat = f"Bearer {sign(claims(iat=now - 2 * 86_400, nbf=now - 2 * 86_400))}"
    py, nat = both(twin, "GET", "/users/p", old_iat)
    assert (py[0], nat[0]) == (401, 200)
    # iat in the future beyond the leeway: ext_authz refuses, jwt_authn does not read iat.
    future_iat = f"Bearer {sign(claims(iat=now + 3600, nbf=None))}"
    py, nat = both(twin, "GET", "/users/p", future_iat)
    assert (py[0], nat[0]) == (401, 200)
    # A token for another audience (or none): jwt_authn answers 403 (its JwtAudienceNotAllowed), ext_authz 401.
    for aud in ("someone-else", None):
        py, nat = both(twin, "GET", "/users/p", f"Bearer {sign(claims(aud=aud))}")
        assert (py[0], nat[0]) == (401, 403)
    # The scheme: ext_authz takes any case (RFC 9110 §11.1), jwt_authn's value_prefix is exact.
    lower = f"bEaReR {sign(claims())}"
    py, nat = both(twin, "GET", "/users/p", lower)
    assert (py[0], nat[0]) == (200, 401)
    # Two Authorization headers (a valid token and another credential): ext_authz answers 400 invalid_request
    # (RFC 6750 §3.1); jwt_authn refuses the token it reads (401): both refuse, with another status.
    two = [("authorization", f"Bearer {sign(claims())}"), ("authorization", "Basic YWxpY2U6cHc=")]
    assert (twin.get("/py/users/p", headers=two).status_code, twin.get("/nat/users/p", headers=two).status_code) \
        == (400, 401)
    # Refusals are answered by Envoy's filters: their text, not ext_authz's JSON and challenge.
    py_401 = twin.get("/py/users/p")
    nat_401 = twin.get("/nat/users/p")
    assert py_401.headers["www-authenticate"] == "Bearer"
    assert nat_401.headers["www-authenticate"].startswith('Bearer realm="')
    assert nat_401.text == "Jwt is missing"
    guest = {"authorization": f"Bearer {sign(claims(roles=['guest']))}"}
    assert twin.get("/nat/users/p", headers=guest).text == "RBAC: access denied"
    assert twin.get("/py/users/p", headers=guest).json()["error"] == "forbidden"


def test_validate_refuses_what_native_cannot_express(tmp_path: Path) -> None:
    from outrider.config import load_config
    from outrider.config.errors import ConfigError
    from tests.harness import with_free_ports, write_config

    data = with_free_ports(_config())
    data["auth"]["leeway_s"] = 2.5
    path = write_config(data, tmp_path / "gateway.yaml")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "routes[4].enforcement" in text and "clock_skew_seconds is whole seconds" in text
