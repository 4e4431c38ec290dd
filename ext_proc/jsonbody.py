"""JSON bodies: a strict parse that turns hostile input into a named error, and the JSONPath subset."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ext_proc.config import WILDCARD, PathStep

MISSING = object()


class BadJson(ValueError):
    """A body that is not acceptable JSON; `reason` is a short name for logs and counters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Integers longer than this are refused whatever the process-wide int conversion limit is
# (sys.set_int_max_str_digits; 0 would make converting a 1 MB integer cost seconds): Python's default.
MAX_INT_DIGITS = 4300
# Only a body holding a run of this many digits can hold such an integer: the fast path (C int parsing)
# is kept for every other body, the checked one costs a Python call per integer.
_LONG_DIGITS = re.compile(rb"\d{%d}" % (MAX_INT_DIGITS + 1))
# A lone surrogate can only come from a \u escape (the UTF-8 decoder refuses encoded surrogates).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_BOM = "\ufeff"


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        # Parsers disagree on which duplicate wins: a smuggling vector, so refuse it.
        raise BadJson("duplicate_key")
    return out


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadJson("number_out_of_range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INT_DIGITS:
        raise BadJson("number_out_of_range")
    try:
        return int(text)
    except ValueError:  # a process-wide limit lower than ours
        raise BadJson("number_out_of_range") from None


def _no_constants(name: str) -> Any:
    raise BadJson("non_standard_constant")  # NaN / Infinity are not JSON, and cannot be written back


def is_json(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or (base.startswith("application/") and base.endswith("+json"))


def utf8_text(text: str) -> str:
    """Text a JSON document we write may hold: bytes of a header that were not UTF-8 (kept as surrogate
    escapes when the header was read, ext_proc/service.py) become U+FFFD instead of lone surrogates."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def has_lone_surrogate(doc: Any) -> bool:
    """Whether a string (or a key) holds a UTF-16 surrogate that no pair completed: not UTF-8 encodable."""
    for text in strings(doc):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def parse(body: bytes, max_depth: int, strict: bool = True) -> Any:
    """JSON text → document, or BadJson naming why not. Raises nothing else, whatever the bytes.

    Both modes refuse what cannot be read or written back exactly: invalid UTF-8, nesting deeper than
    max_depth (or than the parser's recursion limit), numbers out of range (inf, more than MAX_INT_DIGITS
    digits), NaN/Infinity, anything but one JSON value.

    strict (request bodies, which the upstream reads after us): also refuses what parsers disagree on —
    duplicate keys (first or last wins?), a byte order mark (RFC 8259 §8.1: MUST NOT be sent, MAY be
    ignored), unpaired UTF-16 surrogates (RFC 8259 §8.2: "unpredictable"; RFC 7493 I-JSON §2.1: MUST NOT).

    lenient (upstream responses, which we write back ourselves): a BOM is ignored and not written back,
    the last of duplicate keys wins (as JavaScript's JSON.parse and Python read it), and a lone surrogate
    is kept: dump() writes it as the same \\u escape.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson("invalid_utf8") from None
    if text.startswith(_BOM):
        if strict:
            raise BadJson("byte_order_mark")
        text = text[1:]
    hooks: dict[str, Any] = {"parse_float": _finite, "parse_constant": _no_constants}
    if strict:
        hooks["object_pairs_hook"] = _no_duplicates
    if _LONG_DIGITS.search(body):
        hooks["parse_int"] = _bounded_int
    try:
        doc = json.loads(text, **hooks)
    except BadJson:
        raise
    except RecursionError:
        raise BadJson("too_deep") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a number the process-wide limit refuses
        raise BadJson("number_out_of_range" if "digits" in str(exc) else "invalid_json") from None
    if depth_exceeds(doc, max_depth):
        raise BadJson("too_deep")
    if strict and _SURROGATE_ESCAPE.search(body) and has_lone_surrogate(doc):
        raise BadJson("lone_surrogate")
    return doc


def dump(doc: Any) -> bytes:
    """Compact UTF-8 JSON; a document holding a lone surrogate (a lenient parse keeps it) is written with
    ASCII escapes instead, the only way to write it that is still JSON, and the one its sender used."""
    try:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def depth_exceeds(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in node if isinstance(v, dict | list))
    return False


def strings(doc: Any) -> list[str]:
    """Every string in the document, keys included (attack patterns hide in either)."""
    out: list[str] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            out.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _children(node: Any, step: PathStep) -> list[Any]:
    if step is WILDCARD:
        if isinstance(node, dict):
            return list(node.values())
        return list(node) if isinstance(node, list) else []
    if isinstance(step, int):
        if isinstance(node, list) and -len(node) <= step < len(node):
            return [node[step]]
        return []
    if isinstance(node, dict) and step in node:
        return [node[step]]
    return []


def select(doc: Any, steps: tuple[PathStep, ...]) -> Any:
    """The value at a path; a list of matches if the path has a wildcard; MISSING if nothing matches."""
    nodes = [doc]
    for step in steps:
        nodes = [child for node in nodes for child in _children(node, step)]
    if any(step is WILDCARD for step in steps):
        return nodes
    return nodes[0] if nodes else MISSING


def remove_path(doc: Any, steps: tuple[PathStep, ...]) -> int:
    """Delete what a path points at; returns how many values were removed."""
    if not steps:
        return 0
    parents = [doc]
    for step in steps[:-1]:
        parents = [child for node in parents for child in _children(node, step)]
    last, removed = steps[-1], 0
    for parent in parents:
        if last is WILDCARD:
            if isinstance(parent, dict | list):
                removed += len(parent)
                parent.clear()
            continue
        if _children(parent, last):  # the member or element exists
            del parent[last]
            removed += 1
    return removed


def remove_names(doc: Any, names: frozenset[str]) -> int:
    """Delete every member with one of these names, at any depth, inside arrays too."""
    removed = 0
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name in names & node.keys():
                del node[name]
                removed += 1
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return removed


def set_field(doc: Any, path: tuple[str, ...], value: Any) -> bool:
    """Set a dotted field on an object, creating objects on the way; False if something else is in the way."""
    node = doc
    for name in path[:-1]:
        if not isinstance(node, dict):
            return False
        node = node.setdefault(name, {})
    if not isinstance(node, dict):
        return False
    node[path[-1]] = value
    return True
