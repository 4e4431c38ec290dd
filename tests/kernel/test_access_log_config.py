"""The compiled access log: the design's schema, no secret read, in both the static and the xDS listeners."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc_pb2

from ext_proc.events import Immediate
from ext_proc.service import build_immediate
from outrider.config import ConfigError, load_config, load_config_text
from outrider.config.model import GatewayConfig
from outrider.envoy_access_log import CACHE_HIT_KEY, CACHE_NAMESPACE
from outrider.envoy_config import compile_bootstrap, gateway_set_headers
from xds_server.resources import SnapshotBuilder
from xds_server.snapshot import LISTENER

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "gateway.yaml"
SCHEMA = ["timestamp", "level", "request_id", "method", "path", "status", "duration_ms", "client_ip", "user_id",
          "user_agent", "bytes_sent", "upstream_service", "upstream_duration_ms", "cache_hit"]


def with_logging(**access_log: Any) -> GatewayConfig:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["logging"] = {"access_log": access_log}
    return load_config_text(yaml.safe_dump(data), str(EXAMPLE), base_dir=EXAMPLE.parent)


def hcm_of(config: GatewayConfig) -> dict[str, Any]:
    listener = compile_bootstrap(config)["static_resources"]["listeners"][0]
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    return hcm


def test_one_json_line_in_the_designs_schema_to_stdout() -> None:
    logs = hcm_of(load_config(EXAMPLE))["access_log"]
    assert len(logs) == 6  # one per level and cache outcome; their filters pick exactly one per request
    for log in logs:
        assert log["name"] == "envoy.access_loggers.file"
        assert log["typed_config"]["path"] == "/dev/stdout"
        fmt = log["typed_config"]["log_format"]
        assert list(fmt["json_format"]) == SCHEMA
        assert fmt["omit_empty_values"] is True  # user_id absent when anonymous, not null
        fields = fmt["json_format"]
        assert fields["timestamp"] == "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%"
        assert fields["path"].startswith("%PATH(NQ:")  # never the query string
        assert fields["user_id"] == "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:user_id)%"
        assert fields["level"] in ("info", "warn", "error") and isinstance(fields["cache_hit"], bool)
        assert "CEL" not in str(fields)  # constants: the loggers' filters decide, cheaper than expressions
    assert {(log["typed_config"]["log_format"]["json_format"]["level"],
             log["typed_config"]["log_format"]["json_format"]["cache_hit"]) for log in logs} == {
        (level, hit) for level in ("info", "warn", "error") for hit in (False, True)}


def _matches(log: dict[str, Any], status: int, metadata: dict[str, Any]) -> bool:
    """A logger's and_filter of status_code_filters and one metadata_filter, as Envoy evaluates it
    (envoy source/common/access_log/access_log_impl.cc: StatusCodeFilter, MetadataFilter)."""
    ops = {"GE": int.__ge__, "LE": int.__le__, "EQ": int.__eq__}
    for item in log["filter"]["and_filter"]["filters"]:
        if "status_code_filter" in item:
            comparison = item["status_code_filter"]["comparison"]
            if not ops[comparison["op"]](status, comparison["value"]["default_value"]):
                return False
        else:
            spec = item["metadata_filter"]
            key = spec["matcher"]["path"][0]["key"]
            found = metadata.get(spec["matcher"]["filter"], {}).get(key)
            if found is None:
                if not spec["match_if_key_not_found"]:
                    return False
            elif found != spec["matcher"]["value"]["bool_match"]:
                return False
    return True


@pytest.mark.parametrize("status", [0, 200, 304, 399, 400, 401, 429, 499, 500, 503, 599])
@pytest.mark.parametrize("hit", [False, True])
def test_exactly_one_logger_writes_each_request_with_its_level(status: int, hit: bool) -> None:
    logs = hcm_of(load_config(EXAMPLE))["access_log"]
    metadata = {CACHE_NAMESPACE: {CACHE_HIT_KEY: True}} if hit else {}
    [log] = [log for log in logs if _matches(log, status, metadata)]
    fields = log["typed_config"]["log_format"]["json_format"]
    assert fields["level"] == ("error" if status >= 500 else "warn" if status >= 400 else "info")
    assert fields["cache_hit"] is hit


def test_no_field_reads_a_secret() -> None:
    for log in hcm_of(load_config(EXAMPLE))["access_log"]:
        fields = log["typed_config"]["log_format"]["json_format"]
        text = " ".join(str(v) for v in fields.values()).lower()
        for secret in ("authorization", "cookie", "token", "(:path)", "query"):
            assert secret not in text
        reads = {v for v in fields.values() if isinstance(v, str) and v.startswith("%REQ(")}
        assert reads == {"%REQ(X-REQUEST-ID)%", "%REQ(:METHOD)%", "%REQ(USER-AGENT)%"}


def test_xds_listeners_get_the_same_access_log() -> None:
    config = load_config(EXAMPLE)
    snapshot = SnapshotBuilder().build(config, "1")
    [resource] = snapshot.get(LISTENER).values()
    listener = listener_pb2.Listener.FromString(resource.body)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[-1].typed_config.Unpack(hcm)
    static = hcm_of(config)["access_log"]
    assert len(hcm.access_log) == len(static)
    for log, expected in zip(hcm.access_log, static, strict=True):
        file_log = file_pb2.FileAccessLog()
        log.typed_config.Unpack(file_log)
        assert sorted(file_log.log_format.json_format.fields) == sorted(SCHEMA)  # a Struct: no order
        fields = file_log.log_format.json_format.fields
        assert {k: v.bool_value if k == "cache_hit" else v.string_value for k, v in fields.items()} \
            == expected["typed_config"]["log_format"]["json_format"]
        assert log.filter.and_filter.filters[-1].metadata_filter.matcher.filter == CACHE_NAMESPACE


def test_path_and_off_switch() -> None:
    assert {log["typed_config"]["path"] for log in hcm_of(with_logging(path="/var/log/outrider/access.log"))[
        "access_log"]} == {"/var/log/outrider/access.log"}
    assert "access_log" not in hcm_of(with_logging(enabled=False))


@pytest.mark.parametrize("path", ["access.log", "", "logs/x.log"])
def test_relative_path_is_refused_naming_the_field(path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        with_logging(path=path)
    assert "logging.access_log" in str(caught.value)
    assert "absolute" in str(caught.value)


def test_a_clients_original_path_header_is_removed_on_arrival() -> None:
    # %PATH(NQ:ORIG_OR_PATH)% would otherwise log whatever path a client claims in X-Envoy-Original-Path.
    assert "x-envoy-original-path" in gateway_set_headers(load_config(EXAMPLE))


def test_ext_proc_reports_cache_hits_as_metadata_envoy_accepts() -> None:
    filters = {f["name"]: f for f in hcm_of(load_config(EXAMPLE))["http_filters"]}
    options = filters["envoy.filters.http.ext_proc"]["typed_config"]["metadata_options"]
    assert options["receiving_namespaces"]["untyped"] == [CACHE_NAMESPACE]
    hit = build_immediate(Immediate(200, (), b"{}", "cache_hit"))
    assert hit.dynamic_metadata.fields[CACHE_NAMESPACE].struct_value.fields[CACHE_HIT_KEY].bool_value is True
    refused = build_immediate(Immediate(400, (), b"{}", "sql_injection"))
    assert refused == ext_proc_pb2.ProcessingResponse(immediate_response=refused.immediate_response)
