"""The path policy: which request paths are confusing (refused before routing) and the canonical form of the rest.

Envoy gets the same regular expressions (outrider/envoy_edge.py compiles them into the first routes of the
route table), and ext_authz's fallback rules use `canonical_path`, so the gateway and the authorizer refuse
the same paths. The expressions use only the subset of syntax on which RE2 (Envoy's engine) and Python's `re`
agree for ASCII input: literals, classes and ranges, alternation, non-capturing groups, `?`/`+`/`*`, `$` and a
leading `(?i)`. A request path is ASCII by the time a route sees it: Envoy's HTTP/1 codec refuses raw bytes
outside 0x21-0x7e in the request target (checked with Envoy 1.40), and the raw check refuses them anyway.

Why each check exists (what an upstream would make of the path that the route table did not see):
- `%2e`, `%2f`, `%5c` and every other percent-encoded unreserved character: RFC 3986 6.2.2.2 says a URI
  producer encodes none of them, and upstreams decode them back into dots and separators after routing.
- double encoding (`%25..`), malformed escapes (`%u002e`, a trailing `%`), overlong or invalid UTF-8
  (`%c0%ae`, `%e0%80%ae`, `%f0%80%80%ae`, ...) and the NFKC look-alikes of `.`, `/` and `\\`: decoders that
  run twice, take IIS's `%u`, accept overlong forms or fold compatibility characters make dots of them.
- backslashes and `//`: Windows stacks and many frameworks read `\\` as `/`; empty segments collapse.
- dot-only segments (`.`, `..`, `...`), also with parameters (`..;x`): RFC 3986 5.2.4 removes `.` and `..`,
  Windows strips trailing dots from `...`, and Tomcat/Spring strip `;params` before resolving `..;`.
- `;` path parameters (Tomcat, Spring, Jetty strip them; Envoy's router does not): refused unless the route
  allows them (`allow_path_parameters`).
A path none of these match is already in RFC 3986 normal form (`normalize_path(p) == p`, hex case aside).
"""

from __future__ import annotations

import re

# name → regex over the path without its query (Envoy's route `safe_regex` sees exactly that), full match.
# Percent-encoded ASCII that may not be encoded: 00-1F, %, -, ., /, 0-9, ;, A-Z, \, _, a-z, ~, DEL; and
# any malformed escape.
ENCODED_ASCII = (r"(?i).*%(?:[01]|2[5def]|3[0-9b]|4[1-9a-f]|5[0-9acf]|6[1-9a-f]|7[0-9aef]"
                 r"|[^0-9a-f]|[0-9a-f][^0-9a-f]|[0-9a-f]?$).*")
# Overlong or invalid UTF-8 lead bytes (C0, C1, E0 8x/9x, F0 8x, F5-FF) and the NFKC look-alikes:
# U+FF0E ．, U+FF0F ／, U+FF3C ＼, U+FE52 ﹒, U+FE68 ﹨, U+2024 ․, U+2025 ‥, U+2026 ….
ENCODED_UTF8 = r"(?i).*%(?:c[01]|e0%[89]|f0%8|f[5-9a-f]|ef%bc%(?:8[ef]|bc)|ef%b9%(?:92|a8)|e2%80%a[4-6]).*"
# Raw: backslash, empty segment, dot-only segment (with or without ;params), fragment, anything not visible ASCII.
RAW = r".*(?:\\|//|/\.+(?:;[^/]*)?(?:/|$)|#|[^!-~]).*"
# `;` path parameters (a route may allow them).
PARAMETERS = r".*;.*"

CHECKS: tuple[tuple[str, str], ...] = (
    ("encoded_ascii", ENCODED_ASCII),
    ("encoded_utf8", ENCODED_UTF8),
    ("raw", RAW),
)
PARAMETER_CHECK = ("path_parameters", PARAMETERS)

_COMPILED = tuple((name, re.compile(regex)) for name, regex in (*CHECKS, PARAMETER_CHECK))


def path_only(target: str) -> str:
    """The path of a request target (what Envoy's route regexes match): the query string left out."""
    return target.split("?", 1)[0]


def violation(target: str, allow_parameters: bool = False) -> str | None:
    """The name of the first check the path of `target` fails, or None when it passes them all."""
    path = path_only(target)
    if not path.startswith("/"):
        return "not_absolute"
    for name, regex in _COMPILED:
        if allow_parameters and name == PARAMETER_CHECK[0]:
            continue
        if regex.fullmatch(path):
            return name
    return None


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _decode_unreserved(path: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, path)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path: `.` dropped, `..` drops the segment before it."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def normalize_path(path: str) -> str:
    """RFC 3986 6.2.2 syntax-based normalisation (unreserved escapes decoded, the others upper-cased) and
    dot-segment removal (5.2.4), then slashes merged: what Envoy's normalize_path + merge_slashes do."""
    return re.sub("/+", "/", _remove_dot_segments(_decode_unreserved(path)))


def canonical_path(target: str, allow_parameters: bool = False) -> str | None:
    """The normalised path of a request target, or None when its raw form is confusing (refuse it)."""
    if violation(target, allow_parameters) is not None:
        return None
    return normalize_path(path_only(target))
