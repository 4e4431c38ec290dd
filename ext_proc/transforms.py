"""Request and response transformations, compiled once from config; applying them is pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

from ext_proc import jsonbody
from ext_proc.config import (
    MUTATION_DISALLOW_REGEX,
    REQUEST_VARS,
    RESPONSE_VARS,
    JsonValue,
    PathStep,
    RequestTransforms,
    ResponseTransforms,
    header_spec,
    native_header_value,
    parse_field_path,
    parse_jsonpath,
    parse_template,
)
from ext_proc.templates import Context, Template

SetHeader = tuple[str, str, bool]  # name, value, only if absent
_FORBIDDEN = re.compile(MUTATION_DISALLOW_REGEX)


@dataclass(frozen=True, slots=True)
class HeaderRule:
    name: str
    template: Template
    if_absent: bool


@dataclass(frozen=True, slots=True)
class FieldRule:
    """Set `target` to a JSONPath selection of the original document, a template or a literal."""

    target: tuple[str, ...]
    source: tuple[PathStep, ...] | None
    template: Template | None
    literal: Any

    def value(self, original: Any, ctx: Context) -> Any:
        if self.source is not None:
            return jsonbody.select(original, self.source)
        if self.template is not None:
            # ${request_id} is a client's header: never a lone surrogate in the body we write.
            return jsonbody.utf8_text(self.template.render(ctx))
        return self.literal


def _field_rules(mapping: Mapping[str, JsonValue], allowed: frozenset[str]) -> tuple[FieldRule, ...]:
    rules = []
    for target, value in mapping.items():
        path = parse_field_path(target)
        if isinstance(value, str) and value.startswith("$") and not value.startswith("${"):
            rules.append(FieldRule(path, parse_jsonpath(value), None, None))
        elif isinstance(value, str):
            rules.append(FieldRule(path, None, Template(value, allowed), None))
        else:
            rules.append(FieldRule(path, None, None, value))
    return tuple(rules)


def _header_rules(add: Mapping[str, Any], allowed: frozenset[str], native: bool) -> tuple[HeaderRule, ...]:
    rules = []
    for name, spec in add.items():
        value = header_spec(spec)
        if native and native_header_value(parse_template(value.value, allowed)) is not None:
            continue  # Envoy's route adds this one itself
        rules.append(HeaderRule(name.lower(), Template(value.value, allowed), value.if_absent))
    return tuple(rules)


def apply_fields(doc: Any, rules: tuple[FieldRule, ...], ctx: Context) -> bool:
    """Apply field rules to a JSON object (selections read the document as it was); False if not an object."""
    if not isinstance(doc, dict):
        return False
    values = [(rule.target, rule.value(doc, ctx)) for rule in rules]
    for target, value in values:
        if value is not jsonbody.MISSING:
            jsonbody.set_field(doc, target, value)
    return True


class RequestTransformer:
    """Header adds ext_proc must compute, renames, query parameters and JSON body mapping of one route."""

    def __init__(self, config: RequestTransforms, native: bool = True) -> None:
        self.header_rules = _header_rules(config.add_headers, REQUEST_VARS, native)
        self.renames = tuple((s.lower(), t.lower()) for s, t in config.rename_headers.items())
        # With a native route, Envoy removes these (and rename sources) after every filter has run.
        # Without one, what Envoy's mutation_rules forbid us (authorization) stays for the route to drop.
        self.removes = () if native else tuple(dict.fromkeys(
            n.lower() for n in (*config.remove_headers, *config.rename_headers)
            if not _FORBIDDEN.fullmatch(n.lower())))
        self.query_rules = tuple(HeaderRule(k, Template(header_spec(v).value, REQUEST_VARS), header_spec(v).if_absent)
                                 for k, v in config.add_query.items())
        self.field_rules = _field_rules(config.json_body, REQUEST_VARS)
        self.edits_headers = bool(self.header_rules or self.renames or self.removes or self.query_rules)

    def headers(self, headers: Mapping[str, str], ctx: Context) -> tuple[list[SetHeader], tuple[str, ...]]:
        out: list[SetHeader] = [(r.name, r.template.render(ctx), r.if_absent) for r in self.header_rules
                                if not (r.if_absent and r.name in headers)]
        for source, target in self.renames:
            value = headers.get(source)
            if value is not None:
                out.append((target, value, False))
        if self.query_rules:
            path = headers.get(":path", "/")
            new_path = add_query(path, [(r.name, r.template.render(ctx), r.if_absent) for r in self.query_rules])
            if new_path != path:
                out.append((":path", new_path, False))
        return out, self.removes

    def body(self, doc: Any, ctx: Context) -> bool:
        return apply_fields(doc, self.field_rules, ctx)


def add_query(path: str, params: list[SetHeader]) -> str:
    """Set (or only add, if absent) query parameters on a request target, keeping the others in order."""
    base, sep, query = path.partition("?")
    items = [item for item in query.split("&") if item] if sep else []
    for name, value, if_absent in params:
        present = [i for i in items if unquote_plus(i.split("=", 1)[0]) == name]
        if present and if_absent:
            continue
        items = [i for i in items if i not in present]
        items.append(f"{quote(name, safe='')}={quote(value, safe='')}")
    return base + ("?" + "&".join(items) if items else "")


class ResponseTransformer:
    """Header adds ext_proc must compute and JSON field removal/addition of one route."""

    def __init__(self, config: ResponseTransforms, native: bool = True) -> None:
        self.header_rules = _header_rules(config.add_headers, RESPONSE_VARS, native)
        self.removes = () if native else tuple(n.lower() for n in config.remove_headers)
        self.remove_names = frozenset(f for f in config.remove_json_fields if not f.startswith("$"))
        self.remove_paths = tuple(parse_jsonpath(f) for f in config.remove_json_fields if f.startswith("$"))
        self.field_rules = _field_rules(config.add_json_fields, RESPONSE_VARS)
        self.edits_body = bool(self.remove_names or self.remove_paths or self.field_rules)
        # Everything ext_proc itself adds to a response, to replay on a cache hit too.
        self.all_header_rules = _header_rules(config.add_headers, RESPONSE_VARS, native=False)

    def headers(self, headers: Mapping[str, str], ctx: Context) -> list[SetHeader]:
        return [(r.name, r.template.render(ctx), r.if_absent) for r in self.header_rules
                if not (r.if_absent and r.name in headers)]

    def body(self, doc: Any, ctx: Context) -> int:
        """Remove and add fields in place; returns how many fields were removed."""
        removed = jsonbody.remove_names(doc, self.remove_names) if self.remove_names else 0
        for path in self.remove_paths:
            removed += jsonbody.remove_path(doc, path)
        if self.field_rules:
            apply_fields(doc, self.field_rules, ctx)
        return removed
