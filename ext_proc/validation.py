"""Request validation: size limits, content types, path traversal, SQL-injection and XSS patterns (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from ext_proc.config import ValidationConfig


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a request is refused: the HTTP status, the client-facing error, the rule (logs only)."""

    status: int
    error: str
    rule: str


# Named groups: the match's lastgroup names the rule in the log. Each pattern stays within one value
# (values are joined with NUL, which none of them can cross).
_SQLI = {
    "sqli_union_select": r"\bunion\b[\s/*+]+(?:all[\s/*+]+|distinct[\s/*+]+)?select\b",
    "sqli_tautology": r"(?:['\"`]\s*|\b)(?:or|and)\s+['\"`]?(\w+)['\"`]?\s*=\s*['\"`]?\1\b",
    "sqli_quote_logic": r"['\"`]\s*(?:or|and)\s+['\"`]?\w+['\"`]?\s*(?:=|<|>|like\b)",
    "sqli_stacked_query": r";\s*(?:drop|delete|insert|update|alter|create|truncate|exec|shutdown)\b",
    "sqli_comment_escape": r"['\"`]\s*(?:--|#|/\*)",
    "sqli_time_based": r"\b(?:sleep|benchmark|pg_sleep)\s*\(|\bwaitfor\s+delay\b",
    "sqli_schema_probe": r"\binformation_schema\b|\bsys\.(?:tables|objects)\b",
}
_XSS = {
    "xss_script_tag": r"<\s*/?\s*script\b",
    "xss_event_handler": r"<[^>\x00]*\bon[a-z]+\s*=",
    "xss_javascript_uri": r"(?:java|vb)script\s*:",
    "xss_dangerous_tag": r"<\s*(?:iframe|object|embed|base|frameset|svg)\b",
    "xss_dom_access": r"\bdocument\s*\.\s*(?:cookie|write|domain)\b",
}
_TRAVERSAL = re.compile(r"(?:^|[/\\])\.\.(?:[/\\]|$)|\x00")


def _combined(groups: dict[str, str]) -> re.Pattern[str] | None:
    if not groups:
        return None
    return re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in groups.items()), re.IGNORECASE)


def _decoded(value: str) -> str:
    # Twice: %252e%252e is ../ to a server that decodes once more than we do.
    once = unquote(value)
    return unquote(once) if "%" in once else once


class RequestValidator:
    """One route's validation rules, compiled once; each check returns a Violation or None."""

    def __init__(self, config: ValidationConfig) -> None:
        self.config = config
        self.allowed_types = frozenset(config.allowed_content_types)
        patterns = {**(_SQLI if config.sql_injection else {}), **(_XSS if config.xss else {})}
        # Tautology uses a backreference; names of the other groups shift it, so number it explicitly.
        self._patterns = _combined({k: v.replace(r"\1", f"(?P={k}_v)").replace(r"(\w+)", f"(?P<{k}_v>\\w+)")
                                    if k == "sqli_tautology" else v for k, v in patterns.items()})
        self.inspects_values = self._patterns is not None

    def check_headers(self, path: str, header_bytes: int, content_length: int | None, has_body: bool,
                      content_type: str) -> Violation | None:
        cfg = self.config
        if len(path) > cfg.max_url_length:
            return Violation(414, "uri_too_long", "max_url_length")
        if header_bytes > cfg.max_header_bytes:
            return Violation(431, "request_header_fields_too_large", "max_header_bytes")
        if content_length is not None and content_length > cfg.max_body_bytes:
            return Violation(413, "payload_too_large", "max_body_bytes")
        if has_body:
            base = content_type.split(";", 1)[0].strip().lower()
            if base not in self.allowed_types:
                return Violation(415, "unsupported_media_type", "allowed_content_types")
        raw_path, _, query = path.partition("?")
        if cfg.path_traversal and _TRAVERSAL.search(_decoded(raw_path)):
            return Violation(400, "bad_request", "path_traversal")
        if query:
            values = [item for pair in parse_qsl(query, keep_blank_values=True) for item in pair]
            if cfg.path_traversal and any(_TRAVERSAL.search(_decoded(v)) for v in values):
                return Violation(400, "bad_request", "path_traversal")
            return self.check_values(values)
        return None

    def check_body_size(self, size: int) -> Violation | None:
        if size > self.config.max_body_bytes:
            return Violation(413, "payload_too_large", "max_body_bytes")
        return None

    def check_values(self, values: Iterable[str]) -> Violation | None:
        """SQL-injection and XSS patterns over query or JSON string values, in one regex pass."""
        if self._patterns is None:
            return None
        match = self._patterns.search("\x00".join(values))
        if match is None:
            return None
        rule = match.lastgroup or "pattern"
        return Violation(400, "bad_request", rule.removesuffix("_v"))


def header_bytes(headers: Mapping[str, str]) -> int:
    """Size of the header block as the client sent it (name: value, without pseudo-headers)."""
    return sum(len(k) + len(v) + 4 for k, v in headers.items() if not k.startswith(":"))
