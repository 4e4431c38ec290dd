"""The path policy as compiled for Envoy, checked with Python's `re` over the very regexes Envoy gets.

RE2 and Python's `re` agree on the subset the policy uses (literals, classes, ranges, alternation, `(?:)`,
`?`/`+`/`*`, `$`, a leading `(?i)`) for ASCII input, and a request path is ASCII when a route sees it
(outrider/path_policy.py says why); tests/edge/test_paths_through_envoy.py sends a sample through the real
Envoy and checks its verdicts equal these.

The property: no path the gateway admits through the public prefix resolves, by any common upstream rule,
outside it (into /api/v1/admin/...). The upstream rules modelled: RFC 3986 5.2.4 dot-segment removal,
`;` parameter stripping per segment (Tomcat/Spring/Jetty, before or after decoding), percent-decoding once
or twice, lenient UTF-8 decoding of overlong forms (the "%c0%ae is a dot" decoders), IIS `%u` escapes,
backslash as separator, NFKC folding of compatibility characters, Windows' trailing-dot stripping and
merged slashes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_authz.decision import Authorizer, CheckInput, PathRule
from ext_authz.rbac import RbacPolicy
from ext_authz.token_cache import TokenCache
from outrider.config import load_config
from outrider.envoy_config import compile_route_configuration
from outrider.path_policy import canonical_path, normalize_path, violation
from tests.harness import EXAMPLE_CONFIG

PUBLIC = "/api/v1/public/"
PROTECTED = "/api/v1/admin/"


def _policy_routes() -> list[dict[str, Any]]:
    table = compile_route_configuration(load_config(EXAMPLE_CONFIG))["virtual_hosts"][0]["routes"]
    return [r for r in table if r["name"].startswith("outrider-path-")]


# The policy routes' regexes exactly as compiled for Envoy from the example config.
REGEXES = [re.compile(r["match"]["safe_regex"]["regex"]) for r in _policy_routes()]


def test_policy_routes_come_first_and_answer_400() -> None:
    table = compile_route_configuration(load_config(EXAMPLE_CONFIG))["virtual_hosts"][0]["routes"]
    head = _policy_routes()
    assert len(head) == 4 and table[: len(head)] == head
    for route in head:
        assert route["direct_response"]["status"] == 400
        assert route["direct_response"]["body_format"]["json_format"]["error"] == "invalid_path"
        # No check, no processor, no rate limit call for a request that is refused anyway.
        assert route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
        assert "route" not in route


def admitted(target: str) -> bool:
    """What Envoy's route table decides for `target` (the route regex sees the path without the query)."""
    path = target.split("?", 1)[0]
    return not any(regex.fullmatch(path) for regex in REGEXES)


# ---- the examples and friends ----------------------------------------------------------------

REFUSED = [
    "/api/v1/public/..%3b/admin/x", "/api/v1/public/..;/admin/x", "/api/v1/public/%c0%ae%c0%ae/admin/x",
    "/api/v1/public/...//admin/x", "/api/v1/public/%2e%2e/admin/x", "/api/v1/public/%2E%2e/admin/x",
    "/api/v1/public/.%2e/admin/x", "/api/v1/public/../admin/x", "/api/v1/public/./x", "/api/v1/public/x/..",
    "/api/v1/public/%252e%252e/admin/x", "/api/v1/public/%25252e/x", "/api/v1/public/%2fx", "/api/v1/public/%5Cx",
    "/api/v1/public/a\\..\\admin", "/api/v1/public/%e0%80%ae%e0%80%ae/admin", "/api/v1/public/%c0%af",
    "/api/v1/public/%f0%80%80%ae", "/api/v1/public/%u002e%u002e/admin", "/api/v1/public/%ef%bc%8e%ef%bc%8e/x",
    "/api/v1/public/%E2%80%A5/admin", "/api/v1/public/x;jsessionid=1", "/api/v1/public/%61dmin",
    "/api/v1/%61dmin/x", "/api/v1/public/x%", "/api/v1/public/x%4", "/api/v1/public/x%00", "/api/v1/public//x",
    "/api/v1/public/..;x=1/admin", "/api/v1/public/x#/../../admin",
]
ADMITTED = [
    "/api/v1/public/x", "/api/v1/public/a.b/c", "/api/v1/public/.hidden", "/api/v1/public/a..b",
    "/api/v1/public/a%20b", "/api/v1/public/%C3%A9t%C3%A9", "/api/v1/public/a%3Fb", "/api/v1/public/x/",
    "/api/v1/public/x?next=/../admin;x=%2e%2e", "/api/v1/search?q=..%2F..", "/health/live",
]


@pytest.mark.parametrize("target", REFUSED)
def test_confusing_paths_are_refused(target: str) -> None:
    assert not admitted(target)
    assert violation(target) is not None
    assert canonical_path(target) is None


@pytest.mark.parametrize("target", ADMITTED)
def test_ordinary_paths_pass(target: str) -> None:
    assert admitted(target)
    assert canonical_path(target) is not None


@pytest.mark.parametrize(("raw", "normal"), [
    # RFC 3986 5.4 and 6.2.2 examples (and Envoy's merge_slashes).
    ("/a/b/c/./../../g", "/a/g"), ("/mid/content=5/../6", "/mid/6"), ("/a/%7Euser/%3f", "/a/~user/%3F"),
    ("/a//b///c", "/a/b/c"), ("/a/b/..", "/a/"), ("/..", "/"), ("/a/./", "/a/"),
])
def test_normalize_path(raw: str, normal: str) -> None:
    assert normalize_path(raw) == normal


def test_parameters_pass_only_where_allowed() -> None:
    assert violation("/legacy/x;jsessionid=1") == "path_parameters"
    assert violation("/legacy/x;jsessionid=1", allow_parameters=True) is None
    # A dot segment with parameters stays refused where parameters are allowed.
    assert violation("/legacy/..;x/admin", allow_parameters=True) == "raw"


# ---- upstream interpretations ------------------------------------------------------------------------

def strip_params(path: str) -> str:
    return "/".join(seg.split(";", 1)[0] for seg in path.split("/"))


def _utf8_lenient(data: bytes) -> str:
    """A decoder that accepts overlong forms (the classic "%c0%ae is a dot" bug)."""
    out, i = [], 0
    while i < len(data):
        b = data[i]
        if b >= 0xF0 and i + 3 < len(data):
            out.append(chr(((b & 0x07) << 18) | ((data[i + 1] & 0x3F) << 12) | ((data[i + 2] & 0x3F) << 6)
                           | (data[i + 3] & 0x3F)))
            i += 4
        elif b >= 0xE0 and i + 2 < len(data):
            out.append(chr(((b & 0x0F) << 12) | ((data[i + 1] & 0x3F) << 6) | (data[i + 2] & 0x3F)))
            i += 3
        elif b >= 0xC0 and i + 1 < len(data):
            out.append(chr(((b & 0x1F) << 6) | (data[i + 1] & 0x3F)))
            i += 2
        else:
            out.append(chr(b))
            i += 1
    return "".join(out)


def decode(path: str) -> str:
    path = re.sub(r"%u([0-9A-Fa-f]{4})", lambda m: chr(int(m.group(1), 16)), path)  # IIS
    raw = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), path.encode("utf-8", "replace"))
    return _utf8_lenient(raw)


def nfkc(path: str) -> str:
    return unicodedata.normalize("NFKC", path)


def backslashes(path: str) -> str:
    return path.replace("\\", "/")


def trailing_dots(path: str) -> str:
    return "/".join(seg.rstrip(".") if seg.strip(".") else seg for seg in path.split("/"))


def remove_dots(path: str) -> str:
    return normalize_path(path) if path.startswith("/") else path


PIPELINES: list[tuple[str, list[Callable[[str], str]]]] = [
    ("rfc3986", [remove_dots]),
    ("decode, resolve", [decode, remove_dots]),
    ("tomcat: strip ;params, decode, resolve", [strip_params, decode, remove_dots]),
    ("decode, strip ;params, resolve", [decode, strip_params, remove_dots]),
    ("decode twice, resolve", [decode, decode, remove_dots]),
    ("windows: decode, \\ as /, trailing dots, resolve", [decode, backslashes, trailing_dots, remove_dots]),
    ("nfkc: decode, fold, \\ as /, resolve", [decode, nfkc, backslashes, remove_dots]),
    ("resolve raw, then decode and resolve again", [remove_dots, decode, strip_params, remove_dots]),
]


def interpretations(target: str) -> dict[str, str]:
    path = target.split("?", 1)[0]
    out = {}
    for name, steps in PIPELINES:
        value = path
        for step in steps:
            value = step(value)
        out[name] = value
    return out


# ---- generated paths ---------------------------------------------------------------------------------

def _cases(text: str) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted({text, text.upper(), text.lower()}))


DOT = st.one_of(st.just("."), _cases("%2e"), _cases("%252e"), _cases("%25252e"), _cases("%c0%ae"),
                _cases("%e0%80%ae"), _cases("%f0%80%80%ae"), st.just("%u002e"), _cases("%ef%bc%8e"),
                _cases("%e2%80%a4"), _cases("%ef%b9%92"))
SLASH = st.one_of(st.just("/"), st.just("//"), st.just("\\"), _cases("%2f"), _cases("%5c"), _cases("%252f"),
                  _cases("%c0%af"), _cases("%c1%9c"), _cases("%e0%80%af"), _cases("%ef%bc%8f"),
                  _cases("%ef%bc%bc"), st.just("%u2215"), st.just("%u005c"))
PARAM = st.one_of(st.just(";"), st.just(";x=1"), _cases("%3b"), _cases("%3bx=1"), st.just(";jsessionid=a/b"))
WORD = st.one_of(st.sampled_from(["admin", "api", "v1", "public", "x", "a.b", "..x", "x..", "~u", "%20", "%41"]),
                 st.text(alphabet="abc.-_~%;", min_size=1, max_size=4))


@st.composite
def variant(draw: st.DrawFn) -> str:
    """/api/v1/public/ followed by segments meant to climb out. One trick per path (an encoding of the dot, a
    separator, a kind of parameter, or all three), mixed with plain dots and slashes, not ten tricks at once."""
    trick = draw(st.sampled_from(["dot", "slash", "param", "all"]))
    dot = draw(DOT) if trick in ("dot", "all") else "."
    slash = draw(SLASH) if trick in ("slash", "all") else "/"
    param = draw(PARAM) if trick in ("param", "all") else ""
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["climb", "climb", "climb", "dots", "word", "admin"]))
        if kind == "climb":  # `..` as dot+dot or a mixed .%2e
            segment = dot + draw(st.sampled_from([dot, "."]))
        elif kind == "dots":
            segment = dot * draw(st.integers(1, 3))
        else:
            segment = "admin" if kind == "admin" else draw(WORD)
        if draw(st.booleans()):
            segment += param
        parts.append(segment + (slash if draw(st.booleans()) else "/"))
    tail = draw(st.sampled_from(["", "?q=1", "?next=/../admin"]))
    return PUBLIC + "".join(parts) + draw(st.sampled_from(["admin/x", "x", ""])) + tail


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(variant())
def test_no_admitted_public_path_resolves_elsewhere(target: str) -> None:
    if not admitted(target):
        return
    # The route table sees the raw path: it is routed as public only if it starts with the public prefix.
    assert target.startswith(PUBLIC)
    for name, resolved in interpretations(target).items():
        assert resolved.startswith(PUBLIC), f"{target!r} admitted, but {name} makes it {resolved!r}"


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(variant())
def test_python_verdict_is_envoys_and_admitted_paths_are_normal(target: str) -> None:
    # path_policy.violation (ext_authz's fallback) and the compiled routes decide alike...
    assert (violation(target) is None) == admitted(target)
    # ...and a path that passes is already in RFC 3986 normal form, so Envoy's normalisation has nothing to do.
    if admitted(target):
        path = target.split("?", 1)[0]
        assert normalize_path(path) == re.sub(r"%[0-9a-f]{2}", lambda m: m.group(0).upper(), path)


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(variant())
def test_a_route_that_allows_parameters_gets_no_other_confusion(target: str) -> None:
    if violation(target, allow_parameters=True) is not None:
        return
    for name, resolved in interpretations(target).items():
        assert resolved.startswith(PUBLIC), f"{target!r} admitted with ;params, but {name} makes it {resolved!r}"


def test_generator_reaches_the_protected_prefix() -> None:
    """The property is not vacuous: without the policy, generated paths do leave /api/v1/public/ (and some land
    in /api/v1/admin/) by the upstream rules modelled."""
    total: list[str] = []
    outside: list[str] = []
    protected: list[str] = []

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(variant())
    def collect(target: str) -> None:
        resolved = interpretations(target).values()
        total.append(target)
        if any(not r.startswith(PUBLIC) for r in resolved):
            outside.append(target)
        if any(r.startswith(PROTECTED) for r in resolved):
            protected.append(target)

    collect()
    assert len(outside) >= len(total) // 10
    assert len(protected) >= 5


# ---- ext_authz fallback rules: the canonical path only -----------------------------------------------

class _NoTokens:
    def verify(self, token: str, now: float) -> Any:
        raise AssertionError("no token expected")


def _fallback_authorizer() -> Authorizer:
    rules = [PathRule(PUBLIC, None, None, None), PathRule(PROTECTED, None, None, "admin")]
    return Authorizer(_NoTokens(), TokenCache(), RbacPolicy({}), rules)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", [t for t in REFUSED if t.startswith(PUBLIC)])
def test_fallback_rules_refuse_confusing_paths(target: str) -> None:
    decision = _fallback_authorizer().decide(CheckInput("GET", target, {}, {}), 0.0)
    assert (decision.allowed, decision.status, decision.reason) == (False, 403, "invalid_path")


def test_fallback_rules_match_the_normalised_path() -> None:
    auth = _fallback_authorizer()
    assert auth.decide(CheckInput("GET", "/api/v1/public/x?a=/../admin", {}, {}), 0.0).public
    assert auth.decide(CheckInput("GET", "/api/v1/admin/x", {}, {}), 0.0).status == 401
    # A route's context_extensions still decide on their own (Envoy's route table already refused the path).
    assert auth.decide(CheckInput("GET", "/api/v1/public/x", {}, {"public": "true"}), 0.0).public


@settings(max_examples=500, deadline=None, derandomize=True)
@given(variant())
def test_fallback_never_admits_a_path_that_resolves_outside_public(target: str) -> None:
    decision = _fallback_authorizer().decide(CheckInput("GET", target, {}, {}), 0.0)
    if decision.public:
        assert all(r.startswith(PUBLIC) for r in interpretations(target).values())
