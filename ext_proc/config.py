"""Config model of ext_proc: the `transformations`, `cache` and `validation` sections, globally and per route,
and `services.ext_proc`.

Also the pure knowledge both sides need: template and JSONPath syntax, protected headers, a route's
effective settings, which header edits Envoy can do natively and which phases ext_proc must see.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from outrider.config.base import ConfigPath, Port, StrictModel
from outrider.config.errors import Problem
from outrider.config.extensions import section, service_settings
from outrider.config.model import GatewayConfig, ServiceEndpoint
from outrider.identity import IDENTITY_HEADERS

SERVICE = "ext_proc"

HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
JsonValue = str | int | float | bool | None
Bytes = Annotated[int, Field(ge=1, le=64 * 1024 * 1024)]

# Identity that ext_authz sets; nothing after it may touch these.
_FRAMING = ("content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade",
            "proxy-connection")
# Envoy's mutation_rules.disallow_expression: what the processor may never send, even by a bug.
# `:path` stays allowed (query parameters are added through it); other routing headers do not.
MUTATION_DISALLOW_REGEX = ("^(:authority|:method|:scheme|:status|:protocol|host|authorization|x-envoy-.*|"
                           "x-user-id|x-user-email|x-user-roles|x-user-tier)$")


# ---- templates and JSONPath ------------------------------------------------------------------------------

_TEMPLATE_VAR = re.compile(r"\$\{([^}]*)\}")
REQUEST_VARS = frozenset({"uuid()", "now()", "client_ip", "request_id"})
RESPONSE_VARS = REQUEST_VARS | {"response_time_ms"}
# What Envoy's header formatter computes itself (same value as ext_proc would), per template variable.
_NATIVE = {
    "uuid()": "%UNIQUE_ID%",
    "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "request_id": "%REQ(x-request-id)%",
    "response_time_ms": "%DURATION%",
}

TemplatePart = tuple[Literal["text", "var"], str]


def parse_template(text: str, allowed: frozenset[str]) -> tuple[TemplatePart, ...]:
    """`a ${uuid()} b` → (text a, var uuid(), text b); raises ValueError naming an unknown variable."""
    parts: list[TemplatePart] = []
    pos = 0
    for match in _TEMPLATE_VAR.finditer(text):
        if match.start() > pos:
            parts.append(("text", text[pos:match.start()]))
        name = match.group(1).strip()
        if name not in allowed:
            raise ValueError(f"unknown template variable ${{{name}}} (known: {', '.join(sorted(allowed))})")
        parts.append(("var", name))
        pos = match.end()
    if pos < len(text):
        parts.append(("text", text[pos:]))
    return tuple(parts)


def native_header_value(parts: tuple[TemplatePart, ...]) -> str | None:
    """The same template in Envoy's header formatter syntax, or None if only ext_proc can compute it."""
    out = []
    for kind, value in parts:
        if kind == "text":
            out.append(value.replace("%", "%%"))
        elif value in _NATIVE:
            out.append(_NATIVE[value])
        else:
            return None
    return "".join(out)


class Wildcard:
    """`*` or `[*]` in a JSONPath: every member of an object or element of an array."""

    def __repr__(self) -> str:
        return "*"


WILDCARD = Wildcard()
PathStep = str | int | Wildcard
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\.\*|\[(-?\d+)\]|\[\*\]|\[['\"]([^'\"\]]+)['\"]\]")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")


def parse_jsonpath(text: str) -> tuple[PathStep, ...]:
    """The JSONPath subset: `$`, `.name`, `['name']`, `[3]`, `[-1]`, `[*]`, `.*`."""
    if not text.startswith("$"):
        raise ValueError(f"a JSONPath starts with '$': {text!r}")
    steps: list[PathStep] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise ValueError(f"unsupported JSONPath syntax at offset {pos} of {text!r} "
                             "(supported: .name, ['name'], [index], [*], .*)")
        name, index, quoted = match.group(1), match.group(2), match.group(3)
        if name is not None:
            steps.append(name)
        elif quoted is not None:
            steps.append(quoted)
        elif index is not None:
            steps.append(int(index))
        else:
            steps.append(WILDCARD)
        pos = match.end()
    return tuple(steps)


def parse_field_path(text: str) -> tuple[str, ...]:
    """A target field: `user_id` or `meta.request.ts` (objects are created on the way)."""
    if not _DOTTED.match(text):
        raise ValueError(f"a target field is a dotted name like meta.user_id: {text!r}")
    return tuple(text.split("."))


def _check_value(value: JsonValue, allowed: frozenset[str]) -> None:
    if isinstance(value, str):
        if value.startswith("$") and not value.startswith("${"):
            parse_jsonpath(value)
        else:
            parse_template(value, allowed)


# ---- protected headers -------------------------------------------------------------------------------------


def protection_reason(name: str, *, removing: bool = False) -> str | None:
    """Why a rule may not change this header, or None. `authorization` may be removed (or renamed away)."""
    lower = name.lower()
    if lower.startswith(":") or lower == "host":
        return "pseudo-headers and host are routing state"
    if lower.startswith("x-envoy-"):
        return "x-envoy-* headers belong to Envoy"
    if lower in IDENTITY_HEADERS:
        return "identity headers are set by ext_authz"
    if lower in _FRAMING:
        return "framing headers are Envoy's to set"
    if lower == "authorization" and not removing:
        return "authorization is checked before ext_proc runs; a rule may not set it afterwards"
    return None


# ---- the sections ------------------------------------------------------------------------------------------


class HeaderValue(StrictModel):
    """A header value template; `if_absent: true` adds it only when the message has none."""

    value: str
    if_absent: bool = False


HeaderSpec = str | HeaderValue


def header_spec(spec: HeaderSpec) -> HeaderValue:
    return spec if isinstance(spec, HeaderValue) else HeaderValue(value=spec)


def _check_adds(add: dict[str, HeaderSpec], allowed: frozenset[str]) -> dict[str, HeaderSpec]:
    for name, spec in add.items():
        reason = protection_reason(name)
        if reason:
            raise ValueError(f"may not set '{name}': {reason}")
        if name.lower() == "x-cache-status":
            raise ValueError("may not set 'x-cache-status': the response cache sets it")
        parse_template(header_spec(spec).value, allowed)
    return add


def _check_removes(remove: list[str]) -> list[str]:
    for name in remove:
        reason = protection_reason(name, removing=True)
        if reason:
            raise ValueError(f"may not remove '{name}': {reason}")
    return remove


def _check_fields(mapping: dict[str, JsonValue], allowed: frozenset[str]) -> dict[str, JsonValue]:
    for target, value in mapping.items():
        parse_field_path(target)
        _check_value(value, allowed)
    return mapping


class RequestTransforms(StrictModel):
    add_headers: dict[HeaderName, HeaderSpec] = Field(default_factory=dict)
    remove_headers: list[HeaderName] = Field(default_factory=list)
    # from → to: the upstream gets the value under the new name only.
    rename_headers: dict[HeaderName, HeaderName] = Field(default_factory=dict)
    # Sets the parameter (replacing any value the client sent), or only adds it with if_absent.
    add_query: dict[Annotated[str, Field(min_length=1, max_length=256)], HeaderSpec] = Field(
        default_factory=dict)
    # target field → `$.json.path` of the original body, a template, or a literal.
    json_body: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("add_headers")
    @classmethod
    def _adds(cls, value: dict[str, HeaderSpec]) -> dict[str, HeaderSpec]:
        return _check_adds(value, REQUEST_VARS)

    @field_validator("remove_headers")
    @classmethod
    def _removes(cls, value: list[str]) -> list[str]:
        return _check_removes(value)

    @field_validator("rename_headers")
    @classmethod
    def _renames(cls, value: dict[str, str]) -> dict[str, str]:
        for source, target in value.items():
            reason = protection_reason(source, removing=True) or protection_reason(target)
            if reason:
                raise ValueError(f"may not rename '{source}' to '{target}': {reason}")
        return value

    @field_validator("add_query")
    @classmethod
    def _query(cls, value: dict[str, HeaderSpec]) -> dict[str, HeaderSpec]:
        for spec in value.values():
            parse_template(header_spec(spec).value, REQUEST_VARS)
        return value

    @field_validator("json_body")
    @classmethod
    def _body(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return _check_fields(value, REQUEST_VARS)


class ResponseTransforms(StrictModel):
    add_headers: dict[HeaderName, HeaderSpec] = Field(default_factory=dict)
    remove_headers: list[HeaderName] = Field(default_factory=list)
    # A plain name is removed at any depth (inside arrays too); `$.a[*].b` removes at that path only.
    remove_json_fields: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    add_json_fields: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("add_headers")
    @classmethod
    def _adds(cls, value: dict[str, HeaderSpec]) -> dict[str, HeaderSpec]:
        return _check_adds(value, RESPONSE_VARS)

    @field_validator("remove_headers")
    @classmethod
    def _removes(cls, value: list[str]) -> list[str]:
        return _check_removes(value)

    @field_validator("remove_json_fields")
    @classmethod
    def _remove_fields(cls, value: list[str]) -> list[str]:
        for field in value:
            if field.startswith("$"):
                parse_jsonpath(field)
        return value

    @field_validator("add_json_fields")
    @classmethod
    def _add_fields(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        return _check_fields(value, RESPONSE_VARS)


class TransformationsConfig(StrictModel):
    """Header, query and JSON body rules; a route's section overrides the fields it sets."""

    enabled: bool = True
    request: RequestTransforms = Field(default_factory=RequestTransforms)
    response: ResponseTransforms = Field(default_factory=ResponseTransforms)
    # JSON bodies larger than this are not transformed: passed untouched (counted) or refused (413).
    max_body_bytes: Bytes = 1024 * 1024
    oversize_body: Literal["pass", "reject"] = "pass"


class CacheRule(StrictModel):
    """GET responses under `path` (glob: `*` one segment, `**` any rest) kept `ttl_s`, one per vary_by value."""

    path: Annotated[str, Field(min_length=1)]
    ttl_s: Annotated[int, Field(ge=1, le=7 * 86_400)]
    vary_by: list[HeaderName] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _glob(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("a cache path starts with '/'")
        glob_to_regex(value)
        return value


def glob_to_regex(glob: str) -> str:
    """`/api/*/x/**` → an anchored regex: `*` within one segment, `**` across segments."""
    out = []
    for token in re.split(r"(\*\*|\*)", glob):
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]+")
        else:
            out.append(re.escape(token))
    return "^" + "".join(out) + "$"


class CacheConfig(StrictModel):
    """The response cache: where entries live, and which GET responses are kept."""

    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "outrider:cache:"
    max_entries: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000  # memory backend
    max_body_bytes: Bytes = 1024 * 1024  # larger responses are not stored
    rules: list[CacheRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _backend(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
        return self


class RouteCacheConfig(StrictModel):
    """A route's cache: `enabled: false` turns it off; `rules` replace the global rules for this route."""

    enabled: bool = True
    rules: list[CacheRule] | None = None


DEFAULT_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


class ValidationConfig(StrictModel):
    """Request limits and attack patterns; a route's section overrides the fields it sets."""

    enabled: bool = True
    max_body_bytes: Bytes = 10 * 1024 * 1024           # → 413
    max_header_bytes: Annotated[int, Field(ge=256, le=1024 * 1024)] = 8192   # → 431
    max_url_length: Annotated[int, Field(ge=16, le=65_536)] = 4096          # → 414
    allowed_content_types: list[Annotated[str, Field(min_length=3)]] = Field(
        default_factory=lambda: list(DEFAULT_CONTENT_TYPES))                # → 415
    path_traversal: bool = True                        # → 400
    sql_injection: bool = True                         # → 400 (query values, JSON string values)
    xss: bool = True                                   # → 400
    max_json_depth: Annotated[int, Field(ge=1, le=512)] = 64

    @field_validator("allowed_content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for item in value:
            if "/" not in item or ";" in item:
                raise ValueError(f"a media type like application/json, without parameters: {item!r}")
        return [item.lower() for item in value]


class ExtProcService(ServiceEndpoint):
    """`services.ext_proc`: where ext_proc listens, and how Envoy treats it."""

    port: Port = 18083
    metrics_port: Port = 19083
    # Envoy's deadline for each message of a stream; a late answer is an error (→ failure mode).
    message_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 500
    # Fail closed by default: without the processor, validation and response filtering cannot run.
    failure_mode_allow: bool = False
    # The cache purge webhook (ext_proc/purge.py): `POST /v1/cache/purge` on admin_address:admin_port with
    # `Authorization: Bearer <token>` and {"path": ...} or {"prefix": ...}; no admin_port, no listener. The
    # token: the environment variable purge_token_env, else purge_token_file (relative to the config file's
    # folder), read at each call; with neither, every call is refused (503). Keep the address on loopback
    # or a pod network: the token is the only guard.
    admin_address: str = "127.0.0.1"
    admin_port: Port | None = None
    purge_token_env: Annotated[str, Field(min_length=1, max_length=128)] = "OUTRIDER_CACHE_PURGE_TOKEN"
    purge_token_file: ConfigPath | None = None


# ---- the sections of a loaded config, typed ---------------------------------------------------------------


def transformations_of(owner: object) -> TransformationsConfig | None:
    """The global section (of the config) or a route's override (of a route)."""
    return section(owner, "transformations", TransformationsConfig)


def validation_of(owner: object) -> ValidationConfig | None:
    return section(owner, "validation", ValidationConfig)


def cache_of(config: object) -> CacheConfig | None:
    return section(config, "cache", CacheConfig)


def route_cache_of(route: object) -> RouteCacheConfig | None:
    return section(route, "cache", RouteCacheConfig)


def settings_of(config: GatewayConfig) -> ExtProcService:
    return service_settings(config, SERVICE, ExtProcService)


# ---- a route's effective settings --------------------------------------------------------------------------


def _override(base: StrictModel | None, route: StrictModel | None, cls: type[StrictModel]) -> Any:
    """Fields the route section sets win over the global section's, at any depth (maps and lists are
    replaced, not merged); None when neither section exists."""
    if route is None:
        return base
    if base is None:
        return route
    update = {}
    for key in route.model_fields_set:
        mine, theirs = getattr(route, key), getattr(base, key)
        update[key] = _override(theirs, mine, type(mine)) if isinstance(mine, StrictModel) and isinstance(
            theirs, StrictModel) else mine
    return base.model_copy(update=update)


@dataclass(frozen=True)
class RouteSettings:
    """What ext_proc does on one route (None / disabled sections do nothing)."""

    transformations: TransformationsConfig | None
    cache: CacheConfig | None
    validation: ValidationConfig | None


def route_settings(route: Any, config: Any) -> RouteSettings:
    """Merge the global sections with the route's; direct-response routes get nothing.

    `route` and `config` are a loaded route and config, or the same shapes rebuilt from a payload
    (ext_proc/resource.py): only their attributes are read."""
    if route.direct_response is not None:
        return RouteSettings(None, None, None)
    transformations = _override(transformations_of(config), transformations_of(route), TransformationsConfig)
    validation = _override(validation_of(config), validation_of(route), ValidationConfig)
    cache = cache_of(config)
    route_cache = route_cache_of(route)
    if route_cache is not None:
        if not route_cache.enabled:
            cache = None
        else:
            cache = cache or CacheConfig()
            if route_cache.rules is not None:
                cache = cache.model_copy(update={"rules": route_cache.rules})
    if cache is not None:
        # Only the rules this route can serve: a route no rule covers never buffers for the cache.
        cache = cache.model_copy(update={"rules": [r for r in cache.rules if _may_serve(route, r.path)]})
    return RouteSettings(
        transformations if transformations is not None and transformations.enabled else None,
        cache if cache is not None and cache.enabled and cache.rules else None,
        validation if validation is not None and validation.enabled else None,
    )


@dataclass(frozen=True)
class NativeHeaders:
    """Header edits compiled into the Envoy route: (name, envoy value, if_absent) and names to remove."""

    request_add: tuple[tuple[str, str, bool], ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[tuple[str, str, bool], ...] = ()
    response_remove: tuple[str, ...] = ()


def native_headers(t: TransformationsConfig | None) -> NativeHeaders:
    """Header edits Envoy does with the same result. Renames: ext_proc copies, the route removes the source
    (Envoy's route removals run after every filter, so ext_authz still sees an Authorization header)."""
    if t is None:
        return NativeHeaders()
    return NativeHeaders(
        request_add=_native_adds(t.request.add_headers, REQUEST_VARS),
        request_remove=tuple(dict.fromkeys(n.lower() for n in (*t.request.remove_headers, *t.request.rename_headers))),
        response_add=_native_adds(t.response.add_headers, RESPONSE_VARS),
        response_remove=tuple(n.lower() for n in t.response.remove_headers),
    )


def _native_adds(add: dict[str, HeaderSpec], allowed: frozenset[str]) -> tuple[tuple[str, str, bool], ...]:
    out = []
    for name, spec in add.items():
        value = header_spec(spec)
        native = native_header_value(parse_template(value.value, allowed))
        if native is not None:
            out.append((name.lower(), native, value.if_absent))
    return tuple(out)


def processor_header_adds(add: dict[str, HeaderSpec], allowed: frozenset[str]) -> dict[str, HeaderValue]:
    """The header adds only ext_proc can compute (their template has a variable Envoy does not know)."""
    return {name.lower(): header_spec(spec) for name, spec in add.items()
            if native_header_value(parse_template(header_spec(spec).value, allowed)) is None}


@dataclass(frozen=True)
class Phases:
    """Which messages of a stream ext_proc must see on a route."""

    request_headers: bool = False
    request_body: bool = False
    response_headers: bool = False
    response_body: bool = False

    @property
    def any(self) -> bool:
        return self.request_headers or self.request_body or self.response_headers or self.response_body


def _uses(values: Any, names: set[str], allowed: frozenset[str]) -> bool:
    for value in values:
        text = value.value if isinstance(value, HeaderValue) else value
        if (isinstance(text, str) and not (text.startswith("$") and not text.startswith("${"))
                and any(kind == "var" and v in names for kind, v in parse_template(text, allowed))):
            return True
    return False


def _ignore(_reason: str) -> None:
    pass


def route_phases(settings: RouteSettings, why: list[str] | None = None) -> Phases:
    """The least a route needs: header-only work never asks for a body. With `why`, each rule that asks for
    a phase appends its reason (`outrider explain-route`); the phases are the same either way."""
    t, cache, validation = settings.transformations, settings.cache, settings.validation
    note = why.append if why is not None else _ignore
    request_headers = validation is not None or cache is not None
    request_body = validation is not None and (validation.sql_injection or validation.xss)
    response_headers = cache is not None
    response_body = cache is not None
    if validation is not None:
        note("request headers: validation (URL length, header size, content type, path traversal, query values)")
        if request_body:
            note("request body: validation of JSON string values (sql_injection / xss); only JSON bodies are sent")
    if cache is not None:
        note("request headers + response headers and body: the response cache (lookup, then store)")
    if t is not None:
        req, resp = t.request, t.response
        computed = processor_header_adds(req.add_headers, REQUEST_VARS)
        if computed or req.rename_headers or req.add_query:
            request_headers = True
            if why is not None:
                why.append("request headers: " + ", ".join(
                    part for part, present in (("header values Envoy cannot render", computed),
                                               ("rename_headers (the copy)", req.rename_headers),
                                               ("add_query", req.add_query)) if present))
        if req.json_body:
            request_headers = request_body = True
            note("request body: json_body (JSON request bodies only)")
        resp_adds = processor_header_adds(resp.add_headers, RESPONSE_VARS)
        if resp_adds:
            response_headers = True
            if why is not None:
                why.append("response headers: header values Envoy cannot render: " + ", ".join(sorted(resp_adds)))
        if resp.remove_json_fields or resp.add_json_fields:
            # The body message alone: Envoy copies the response's content-type into dynamic metadata
            # (header_to_metadata, ext_proc/envoy.py) and forwards it with the body, so the JSON-only
            # decision needs no response headers message (two messages per request, not three).
            response_body = True
            note("response body: remove_json_fields / add_json_fields (JSON responses only; the content "
                 "type comes with the body, no response headers message)")
            if t.oversize_body == "reject":
                # A declared length above max_body_bytes is refused (502) at the headers, before any of the
                # response has gone out; without them a refusal could only reset a response already begun.
                response_headers = True
                note("response headers: oversize_body reject (a declared oversize response is refused whole)")
            elif _uses(resp.add_json_fields.values(), {"response_time_ms"}, RESPONSE_VARS):
                # The time to the response headers, as measured when they arrive.
                response_headers = True
                note("response headers: a response template uses response_time_ms")
        # Response templates that need what only the request headers carry.
        needs_request = {"client_ip", "request_id", "response_time_ms"}
        if (resp_adds and _uses(resp_adds.values(), needs_request, RESPONSE_VARS)) or _uses(
                resp.add_json_fields.values(), needs_request, RESPONSE_VARS):
            request_headers = True
            note("request headers: a response template uses a request value")
    # A response to a request ext_proc never saw is a reply Envoy made itself (ext_authz's 401, a 429):
    # seeing the request is how the processor tells them apart, and leaves them untouched.
    if (response_headers or response_body) and not request_headers:
        note("request headers: to tell the upstream's responses from Envoy's own replies")
    request_headers = request_headers or response_headers or response_body
    return Phases(request_headers, request_body, response_headers, response_body)


def check_ext_proc(config: GatewayConfig) -> Iterator[Problem]:
    """Cross-reference rules of the ext_proc sections: nothing on direct responses, cache rules served."""
    for index, route in enumerate(config.routes):
        if route.direct_response is None:
            continue
        given = {"transformations": transformations_of(route), "cache": route_cache_of(route),
                 "validation": validation_of(route)}
        for key, value in given.items():
            if value is not None:
                yield ("routes", index, key), "a direct_response route has no upstream to process"
    cache = cache_of(config)
    if cache is not None:
        for index, rule in enumerate(cache.rules):
            if not any(_may_serve(r, rule.path) for r in config.routes if r.direct_response is None):
                yield ("cache", "rules", index, "path"), f"no route with an upstream serves '{rule.path}'"
    for index, route in enumerate(config.routes):
        route_cache = route_cache_of(route)
        if route_cache is None or route_cache.rules is None:
            continue
        for rule_index, rule in enumerate(route_cache.rules):
            if not _may_serve(route, rule.path):
                yield (("routes", index, "cache", "rules", rule_index, "path"),
                       f"the route never matches '{rule.path}'")


def _may_serve(route: Any, glob: str) -> bool:
    """Whether some path matched by the glob can reach this route (regex routes: assumed yes)."""
    literal = glob.split("*", 1)[0]
    if route.match.prefix is not None:
        return literal.startswith(route.match.prefix) or route.match.prefix.startswith(literal)
    if route.match.path is not None:
        return re.match(glob_to_regex(glob), route.match.path) is not None
    return True
