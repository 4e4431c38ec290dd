"""Pure request validation: limits, content types, traversal, SQL-injection and XSS patterns by name."""

from __future__ import annotations

import pytest

from ext_proc.config import ValidationConfig
from ext_proc.validation import RequestValidator, header_bytes

V = RequestValidator(ValidationConfig())


def check(path: str, **kw: object) -> str | None:
    args = {"header_bytes": 100, "content_length": None, "has_body": False, "content_type": ""}
    args.update(kw)
    violation = V.check_headers(path, **args)  # type: ignore[arg-type]
    return None if violation is None else f"{violation.status} {violation.rule}"


@pytest.mark.parametrize(("path", "kw", "expected"), [
    ("/" + "a" * 4096, {}, "414 max_url_length"),
    ("/" + "a" * 4095, {}, None),
    ("/a", {"header_bytes": 8193}, "431 max_header_bytes"),
    ("/a", {"content_length": 10 * 1024 * 1024 + 1, "has_body": True, "content_type": "application/json"},
     "413 max_body_bytes"),
    ("/a", {"has_body": True, "content_type": "text/xml"}, "415 allowed_content_types"),
    ("/a", {"has_body": True, "content_type": ""}, "415 allowed_content_types"),
    ("/a", {"has_body": True, "content_type": "Application/JSON; charset=utf-8"}, None),
    ("/a", {"has_body": True, "content_type": "multipart/form-data; boundary=x"}, None),
    ("/a", {"has_body": False, "content_type": "text/xml"}, None),
    ("/a?f=../../etc/passwd", {}, "400 path_traversal"),
    ("/a?f=..%2F..%2Fetc", {}, "400 path_traversal"),
    ("/a?f=%252e%252e%252fetc", {}, "400 path_traversal"),
    ("/%2e%2e/etc", {}, "400 path_traversal"),
    ("/a?f=..\\windows", {}, "400 path_traversal"),
    ("/a?f=x%00.png", {}, "400 path_traversal"),
    ("/a..b/c?v=1.2..3", {}, None),
])
def test_header_checks(path: str, kw: dict[str, object], expected: str | None) -> None:
    assert check(path, **kw) == expected


@pytest.mark.parametrize(("value", "rule"), [
    ("1' OR '1'='1", "sqli_tautology"),
    ("1 or 1=1", "sqli_tautology"),
    ("admin'--", "sqli_comment_escape"),
    ("1 UNION ALL SELECT pw FROM users", "sqli_union_select"),
    ("1;DROP TABLE users", "sqli_stacked_query"),
    ("1 AND sleep(5)", "sqli_time_based"),
    ("select * from information_schema.tables", "sqli_schema_probe"),
    ("<script>alert(1)</script>", "xss_script_tag"),
    ('<img src=x onerror="alert(1)">', "xss_event_handler"),
    ("javascript:alert(1)", "xss_javascript_uri"),
    ("<iframe src=//evil>", "xss_dangerous_tag"),
    ("document.cookie", "xss_dom_access"),
])
def test_attack_patterns_are_named(value: str, rule: str) -> None:
    violation = V.check_values([value])
    assert violation is not None and (violation.status, violation.rule) == (400, rule)


@pytest.mark.parametrize("value", [
    "O'Reilly", "rock and roll", "or", "1=1", "what's on tonight?", "a < b > c", "select a colour",
    "union station", "https://example.com/?a=1&b=2", "2 + 2 = 4", "email me at a@b.c", "--verbose",
    "on=1", "I'd rather; not",
])
def test_ordinary_values_pass(value: str) -> None:
    assert V.check_values([value]) is None


def test_values_do_not_combine_across_items() -> None:
    assert V.check_values(["x' or", "'a'='a"]) is None
    assert V.check_values(["x' or 'a'='a"]) is not None


def test_checks_switch_off() -> None:
    relaxed = RequestValidator(ValidationConfig(sql_injection=False, xss=False))
    assert not relaxed.inspects_values
    assert relaxed.check_values(["1' OR '1'='1", "<script>"]) is None
    only_xss = RequestValidator(ValidationConfig(sql_injection=False))
    assert only_xss.check_values(["1' OR '1'='1"]) is None
    assert only_xss.check_values(["<script>"]) is not None


def test_header_bytes_counts_names_and_values_without_pseudo_headers() -> None:
    assert header_bytes({":path": "/x" * 100, "a": "bc"}) == 7
