"""The persisted state is the config as given: save → load → compile is byte-identical (property test).

A restart once dropped the global transformations of every route with its own section, because the state
was a re-dump of the model with every default filled in (the bearer token then reached the upstream).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from outrider.config import load_config_data
from tests.harness import EXAMPLE_CONFIG, example_config_dict
from xds_server.resources import SnapshotBuilder
from xds_server.store import FileStore, State

BASE_DIR = EXAMPLE_CONFIG.parent

header_names = st.sampled_from(["X-A", "X-B", "X-Tenant", "X-Debug"])
header_maps = st.dictionaries(header_names, st.sampled_from(["1", "on", "${uuid()}"]), max_size=2)
request_rules = st.fixed_dictionaries({}, optional={
    "add_headers": header_maps,
    "remove_headers": st.lists(header_names, max_size=2, unique=True),
    "add_query": st.dictionaries(st.sampled_from(["v", "lang"]), st.sampled_from(["1", "en"]), max_size=1),
})
response_rules = st.fixed_dictionaries({}, optional={
    "add_headers": header_maps,
    "remove_json_fields": st.lists(st.sampled_from(["password", "secret"]), max_size=2, unique=True),
})
transformations = st.fixed_dictionaries({}, optional={"request": request_rules, "response": response_rules})
validation = st.fixed_dictionaries({}, optional={
    "sql_injection": st.booleans(), "xss": st.booleans(), "max_url_length": st.integers(256, 8192)})


@st.composite
def routes(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 4))):
        route: dict[str, Any] = {"name": f"gen-{i}", "match": {"prefix": f"/gen/{i}/"}, "upstream": "demo"}
        if draw(st.booleans()):
            route["public"] = True
        else:
            route["resource"] = draw(st.sampled_from(["profile", "messages"]))
        if draw(st.booleans()):
            route["transformations"] = draw(transformations)
        if draw(st.booleans()):
            route["validation"] = draw(validation)
        if draw(st.booleans()):
            route["timeout_ms"] = draw(st.integers(1, 60_000))
        out.append(route)
    return out


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    data = example_config_dict()
    data["routes"].extend(draw(routes()))
    for section in ("transformations", "validation", "cache", "rate_limits"):
        if draw(st.booleans()):
            data.pop(section, None)
    return data


def compiled(given_config: dict[str, Any]) -> dict[str, dict[str, bytes]]:
    config = load_config_data(given_config, "<test>", BASE_DIR)
    snapshot = SnapshotBuilder().build(config, "1")
    return {t: {name: r.body for name, r in items.items()} for t, items in snapshot.resources.items()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=configs())
@example(data=example_config_dict())  # the example itself: users/messages have their own sections
def test_save_load_compile_is_byte_identical(tmp_path: Path, data: dict[str, Any]) -> None:
    before = copy.deepcopy(data)
    store = FileStore(tmp_path / "state")
    store.write(State(3, "digest", data))
    loaded = store.read()
    assert loaded is not None and loaded.version == 3 and loaded.file_digest == "digest"
    assert loaded.given == before  # stored as given, not re-dumped
    assert compiled(loaded.given) == compiled(before)
    assert data == before  # validating did not change the caller's values


def test_a_state_of_another_format_is_ignored(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.path.write_text('{"version": 4, "file_digest": "d", "config": {}}')
    assert store.read() is None
