"""outrider/logs.py's JSON lines are exactly what json.dumps writes for the same fields, hostile values included.

encode_fields was a hand-written member loop; bench/handwritten_bench.py found a prebuilt stdlib JSONEncoder
at least as fast, so it now is one, and this test pins its output to json.dumps(fields, default=str,
separators=(",", ":")) without the braces (Python docs, json.dumps: ensure_ascii escapes every non-ASCII
character, keys that are int/float/bool/None become strings, other keys raise TypeError). The old loop
differed on non-str keys (it raised TypeError where json.dumps writes "1"); that difference is gone.
"""

from __future__ import annotations

import asyncio
import enum
import io
import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outrider.logs import DecisionLog, JsonFormatter, encode_fields


def library(fields: dict[Any, Any]) -> str:
    return json.dumps(fields, default=str, separators=(",", ":"))[1:-1]


class Tier(enum.IntEnum):
    GOLD = 3


class Name(str):
    pass


HOSTILE: list[tuple[str, dict[Any, Any]]] = [
    ("quotes and backslashes", {"path": 'a"b\\c', 'k"ey': "\\\""}),
    ("control characters", {"v": "\x00\x01\n\r\t\x1f\x7f", "ctl\n": "x"}),
    ("unicode: BMP, astral, lone surrogate", {"u": "é☃", "astral": "\U0001f600", "lone": "\ud800", "ü": 1}),
    ("line separators", {"v": "\u2028\u2029"}),
    ("non-str keys", {7: "int", 2.5: "float", True: "bool", None: "none"}),
    ("numbers", {"i": -(2**70), "f": 0.1, "neg0": -0.0, "nan": math.nan, "inf": -math.inf, "big": 1e308}),
    ("bool and None values", {"t": True, "f": False, "n": None}),
    ("nested", {"descriptors": ["a", {"b": [1, None, "c\n"]}], "empty": {}, "tuple": (1, "x")}),
    ("default=str for unknown types", {"bytes": b"\x00'\"", "set": frozenset(), "obj": object.__name__}),
    ("subclasses", {"enum": Tier.GOLD, "name": Name("x\"y"), Name("k"): 1}),
    ("empty", {}),
]


@pytest.mark.parametrize(("name", "fields"), HOSTILE, ids=[n for n, _ in HOSTILE])
def test_encode_fields_equals_json_dumps(name: str, fields: dict[Any, Any]) -> None:
    assert encode_fields(fields) == library(fields)


def test_unencodable_keys_raise_as_json_dumps_does() -> None:
    with pytest.raises(TypeError):
        library({(1, 2): "tuple key"})
    with pytest.raises(TypeError):
        encode_fields({(1, 2): "tuple key"})


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                          max_size=4), max_leaves=12)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text() | st.integers() | st.booleans() | st.none(), values, max_size=8))
def test_any_fields_encode_as_json_dumps(fields: dict[Any, Any]) -> None:
    assert encode_fields(fields) == library(fields)


def test_a_decision_line_is_ts_service_then_the_fields_as_json_dumps_writes_them() -> None:
    """Formatted lazily at flush: the fields as they were handed over, the time of write()."""
    stream = io.StringIO()
    log = DecisionLog('svc"x', stream=stream)
    samples = [fields for _, fields in HOSTILE]
    for fields in samples:
        log.write(fields)
    assert stream.getvalue() == ""  # nothing formatted or written on the request path
    log.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(samples)
    for line, fields in zip(lines, samples, strict=True):
        head, _, rest = line.partition(',"service":"svc\\"x"')
        assert head.startswith('{"ts":') and float(head[6:]) > 0
        body = library(fields)
        assert rest == ("," + body + "}" if body else "}")
        json.loads(line)  # one valid object (NaN aside, which json.loads accepts as json.dumps wrote it)


async def test_a_full_buffer_flushes_in_a_later_loop_turn() -> None:
    stream = io.StringIO()
    log = DecisionLog("svc", stream=stream, max_buffered=3)
    for i in range(3):
        log.write({"i": i})
    assert stream.getvalue() == ""  # not inside the request that filled the buffer
    await asyncio.sleep(0)
    assert [json.loads(line)["i"] for line in stream.getvalue().splitlines()] == [0, 1, 2]


async def test_the_buffer_stays_bounded_when_no_loop_turn_comes() -> None:
    stream = io.StringIO()
    log = DecisionLog("svc", stream=stream, max_buffered=3)
    for i in range(6):  # no await: the scheduled flush cannot run
        log.write({"i": i})
    assert [json.loads(line)["i"] for line in stream.getvalue().splitlines()] == list(range(6))


def test_json_formatter_writes_what_json_dumps_writes() -> None:
    record = logging.LogRecord("svc", logging.WARNING, __file__, 1, 'odd "msg"\n\u2028', None, None)
    record.__dict__.update({"user": "é\x00", "n": 1, "blob": b"x"})
    line = JsonFormatter("svc").format(record)
    entry = {"ts": round(record.created, 6), "level": "warning", "service": "svc", "logger": "svc",
             "msg": 'odd "msg"\n\u2028', "user": "é\x00", "n": 1, "blob": b"x"}
    assert line == json.dumps(entry, default=str, separators=(",", ":"))
