"""Loading envoyproxy/ratelimit configs as the reference does: a directory as one set, duplicate domains,
reloads of the set, files never read half-written, and the service run from the reference's environment.

Reference sections cited: envoyproxy/ratelimit README "Loading Configuration" / "File Based Configuration
Loading", src/settings/settings.go, src/provider/file_provider.go, src/config/config_impl.go (loadConfig),
and lyft/goruntime loader/loader.go (walkDirectoryCallback), which reads the runtime directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from outrider import cli
from outrider.config import ConfigError, load_config
from outrider.process import ManagedProcess, free_port, http_ready
from outrider.service_main import FileSource, counted
from ratelimit_service import file_set, reference_env
from ratelimit_service.app import SPEC, RateLimitRuntime
from ratelimit_service.config import RateLimitsConfig
from ratelimit_service.resource import PayloadError, build, payload
from ratelimit_service.runtime_dir import RuntimeDirSource
from tests.harness import ROOT, example_config_dict, with_free_ports, write_config

Response = rls_pb2.RateLimitResponse


def limits(domain: str, key: str, rpu: int, unit: str = "minute") -> str:
    rule = f"{{unit: {unit}, requests_per_unit: {rpu}}}"
    return f"domain: {domain}\ndescriptors:\n  - key: {key}\n    rate_limit: {rule}\n"


def put(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    # Old enough not to look mid-write (file_set.SETTLE_S), and distinct from the previous write's mtime.
    stamp = time.time_ns() - 2_000_000_000 + len(text) * 1000
    os.utime(path, ns=(stamp, stamp))


def test_a_directory_is_every_visible_file_under_it(tmp_path: Path) -> None:
    """README "File Based Configuration Loading": files are loaded from RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/
    RUNTIME_APPDIRECTORY; goruntime's loader walks that tree and reads every file (any extension, subdirectories
    too). Dot files and dot directories are skipped, as RUNTIME_IGNOREDOTFILES=true does (a Kubernetes ConfigMap
    keeps a copy of each file under `..<timestamp>/`, which would load every domain twice)."""
    config = tmp_path / "config"
    put(config / "a.yaml", limits("a", "k", 1))
    put(config / "team" / "b.conf", limits("b", "k", 2))
    put(config / ".hidden.yaml", limits("a", "k", 3))
    # A Kubernetes ConfigMap mount: c.yaml -> ..data/c.yaml, ..data -> ..2024_01_01, the real file inside.
    put(config / "..2024_01_01" / "c.yaml", limits("c", "k", 4))
    (config / "..data").symlink_to("..2024_01_01")
    (config / "c.yaml").symlink_to("..data/c.yaml")
    loaded = file_set.load([config], merge=False)
    assert [(Path(f.name).relative_to(config).as_posix(), f.config.domain) for f in loaded] == [
        ("a.yaml", "a"), ("c.yaml", "c"), ("team/b.conf", "b")]

    # A stray file is read like the others, so it is refused (naming it), never skipped silently.
    put(config / "notes.txt", "just some notes\n")
    with pytest.raises(file_set.SetError) as refused:
        file_set.load([config], merge=False)
    assert refused.value.files == [str(config / "notes.txt")]


def test_duplicate_domain_refused_naming_both_files_unless_merged(tmp_path: Path) -> None:
    """README "File Based Configuration Loading": "By default it is not possible to define multiple configuration
    files within RUNTIME_SUBDIRECTORY referencing the same domain. To enable this behavior set MERGE_DOMAIN_CONFIG
    to true." config_impl.go loadConfig: "duplicate domain '<d>' in config file"; merged, the files' descriptors
    join one tree, and a descriptor in two files is a duplicate composite key."""
    put(tmp_path / "a.yaml", limits("shared", "x", 1))
    put(tmp_path / "b.yaml", limits("shared", "y", 2))
    with pytest.raises(file_set.SetError) as refused:
        file_set.load([tmp_path], merge=False)
    assert refused.value.problems == [
        f"{tmp_path / 'b.yaml'}: duplicate domain 'shared' in config file (also in {tmp_path / 'a.yaml'}); "
        "set rate_limits.merge_domains (MERGE_DOMAIN_CONFIG) to merge the files of one domain"]

    merged = file_set.load([tmp_path], merge=True)
    assert [f.config.domain for f in merged] == ["shared", "shared"]

    put(tmp_path / "c.yaml", limits("shared", "x", 3))
    with pytest.raises(file_set.SetError) as clash:
        file_set.load([tmp_path], merge=True)
    assert clash.value.problems == [f"{tmp_path / 'c.yaml'}: duplicate descriptor composite key 'shared.x' "
                                    f"(also in {tmp_path / 'a.yaml'})"]


def _gateway(tmp_path: Path, files: list[str], **rate_limits: Any) -> Path:
    data = with_free_ports(example_config_dict())
    data["rate_limits"]["files"] = files
    data["rate_limits"].update(rate_limits)
    return write_config(data, tmp_path / "gateway.yaml")


def test_validate_and_the_service_give_the_same_error(tmp_path: Path) -> None:
    """The same refusal (config_impl.go loadConfig's duplicate domain, with both files named) from `outrider
    validate` and from the service starting on the config: before, validate passed and the service failed."""
    put(tmp_path / "limits" / "a.yaml", limits("d", "a", 1))
    put(tmp_path / "limits" / "b.yaml", limits("d", "b", 2))
    gateway = _gateway(tmp_path, ["limits"])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as validate:
        cli.main(["validate", str(gateway)])
    assert validate.value.code == 1
    expected = (f"rate_limits.files[0]: {tmp_path / 'limits' / 'b.yaml'}: duplicate domain 'd' in config file "
                f"(also in {tmp_path / 'limits' / 'a.yaml'})")
    assert expected in stderr.getvalue()

    service = subprocess.run([sys.executable, "-m", "ratelimit_service", "--config", str(gateway)],
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert service.returncode == 1
    assert expected in service.stderr and "Traceback" not in service.stderr
    assert [line for line in service.stderr.splitlines() if line] == [
        line for line in stderr.getvalue().splitlines() if line]

    _gateway(tmp_path, ["limits"], merge_domains=True)
    assert load_config(gateway) is not None  # merged: valid


def test_a_pushed_payload_with_a_duplicate_domain_is_refused_naming_both_files() -> None:
    """Under the control plane the files arrive inlined; the service applies the same loadConfig rule
    (README "File Based Configuration Loading", MERGE_DOMAIN_CONFIG) and NACKs naming both files."""
    files = [{"name": name, "config": {"domain": "d", "descriptors": [
        {"key": key, "rate_limit": {"unit": "second", "requests_per_unit": 1}}]}} for name, key in
        (("a.yaml", "x"), ("b.yaml", "y"))]
    with pytest.raises(PayloadError, match=r"b.yaml: duplicate domain 'd' in config file \(also in a.yaml\)"):
        build({"rate_limits": None, "files": files})
    section = RateLimitsConfig(merge_domains=True).model_dump(mode="json", exclude={"files"})
    table = build({"rate_limits": section, "files": files}).settings.table
    assert table.lookup("d", [("x", "1")]) is not None and table.lookup("d", [("y", "1")]) is not None


@pytest.fixture
async def runtime() -> Any:
    live = RateLimitRuntime()
    yield live
    await live.close()


async def test_the_set_reloads_files_added_removed_and_broken(
        tmp_path: Path, runtime: RateLimitRuntime, caplog: pytest.LogCaptureFixture) -> None:
    """README "File Based Configuration Loading": Write, Create and Remove inside the directory reload all
    config files; a removed file's domain goes with it (the set is rebuilt, file_provider.go sendEvent). A set
    that fails to load keeps the running config, logged with the file and the reason."""
    config = tmp_path / "limits"
    put(config / "a.yaml", limits("a", "k", 5))
    put(config / "b.yaml", limits("b", "k", 6))
    gateway = _gateway(tmp_path, ["limits"])
    source = FileSource(SPEC, gateway, load_config(gateway), interval_s=0.01)
    await source.start(counted("ratelimit", runtime.apply))

    def rpu(domain: str) -> int | None:
        match = runtime.service.settings.table.lookup(domain, [("k", "v")])
        return None if match is None else match.limits[0].requests_per_unit

    assert (rpu("a"), rpu("b")) == (5, 6)
    (config / "b.yaml").unlink()
    assert await source.poll()
    assert (rpu("a"), rpu("b")) == (5, None)  # its domain dropped

    put(config / "sub" / "c.yaml", limits("c", "k", 7))  # a new file, in a new subdirectory
    assert await source.poll()
    assert rpu("c") == 7
    put(config / "sub" / "c.yaml", limits("c", "k", 8))  # an edit of a file found by the walk
    assert await source.poll()
    assert rpu("c") == 8

    put(config / "d.yaml", limits("a", "other", 1))  # a second file of domain a: refused, old set stays
    with caplog.at_level(logging.ERROR):
        assert not await source.poll()
    assert (rpu("a"), rpu("c")) == (5, 8)
    refused = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert refused and f"{config / 'd.yaml'}: duplicate domain 'a'" in str(refused[-1].__dict__["issues"])


async def test_reference_directory_source_drops_removed_files_and_keeps_the_set_on_a_bad_edit(
        tmp_path: Path, runtime: RateLimitRuntime, caplog: pytest.LogCaptureFixture) -> None:
    """`--reference-env`'s source (RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY): file_provider.go
    sendEvent rebuilds the whole set on each change, so a removed file's domain goes; a set that does not load
    keeps the running config (logged with the file and the reason)."""
    put(tmp_path / "a.yaml", limits("a", "k", 5))
    put(tmp_path / "b.yaml", limits("b", "k", 6))
    source = RuntimeDirSource(tmp_path, {"merge_domains": False})
    await source.start(counted("ratelimit", runtime.apply))

    def domains() -> list[str]:
        return sorted(runtime.service.settings.table.domains)  # the live table: each version swaps it

    assert domains() == ["a", "b", "outrider"]
    (tmp_path / "b.yaml").unlink()
    assert await source.poll()
    assert domains() == ["a", "outrider"]
    put(tmp_path / "c.yaml", "domain: c\ndescriptors: [{key: k, rate_limit: {unit: fortnight}}]\n")
    with caplog.at_level(logging.ERROR):
        assert not await source.poll()
    assert domains() == ["a", "outrider"]
    issues = str([r.__dict__.get("issues") for r in caplog.records])
    assert str(tmp_path / "c.yaml") in issues and "unit" in issues


def test_a_file_rewritten_in_place_is_never_read_half_written(tmp_path: Path) -> None:
    """A writer rewriting a file in place (truncate, then chunks, as an editor or `cp` does) while the set is
    read: every successful read is one complete version. (The reference reloads on each Write event and may read
    a prefix; README "File Based Configuration Loading" recommends a symlink swap, which is atomic anyway.)"""
    path = tmp_path / "limits.yaml"
    versions = [limits("d", "k", 100 + i) + "".join(f"  - key: pad{j}\n" for j in range(40)) for i in range(2)]
    put(path, versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            text = versions[i % 2].encode()
            with path.open("wb") as out:
                for start in range(0, len(text), 64):
                    out.write(text[start:start + 64])
                    out.flush()
                    time.sleep(0.002)  # a pause between writes, shorter than file_set.SETTLE_S
            i += 1
            stop.wait(0.12)  # complete for a while: a reader may take this version

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    seen: list[int] = []
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            try:
                loaded = file_set.load([path], merge=False)
            except (file_set.SetError, ConfigError):
                continue  # refused as still changing: the running config would stay
            parsed = loaded[0].config
            assert len(parsed.descriptors) == 41, "a partial file was accepted"
            rate_limit = parsed.descriptors[0].rate_limit
            assert rate_limit is not None
            seen.append(rate_limit.requests_per_unit)
    finally:
        stop.set()
        thread.join()
    assert seen, "never read a settled version"


def test_reference_environment_maps_onto_the_shared_names(tmp_path: Path) -> None:
    """src/settings/settings.go: each variable and default. The behaviour switches map onto rate_limits
    fields (CONTRACT names); any other setting is supported or refused at start naming it, never ignored."""
    (tmp_path / "srv" / "ratelimit" / "config").mkdir(parents=True)
    env = {"RUNTIME_ROOT": str(tmp_path / "srv"), "RUNTIME_SUBDIRECTORY": "ratelimit",
           "MERGE_DOMAIN_CONFIG": "true", "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT": "true",
           "SHADOW_MODE": "true", "NEAR_LIMIT_RATIO": "0.9", "LOCAL_CACHE_SIZE_IN_BYTES": "1048576",
           "LIMIT_RESPONSE_HEADERS_ENABLED": "true", "REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": "10.0.0.5:6379",
           "REDIS_AUTH": "user:p@ss", "CACHE_KEY_PREFIX": "rl_", "GRPC_PORT": "9081", "USE_STATSD": "false",
           "LOG_LEVEL": "debug"}
    found = reference_env.read(env)
    assert found.config_dir == tmp_path / "srv" / "ratelimit" / "config"
    assert (found.port, found.metrics_port, found.log_level) == (9081, 0, "debug")
    assert found.rate_limits == {
        "merge_domains": True, "stop_increment_when_over_limit": True, "shadow_mode": True,
        "response_headers": True, "near_limit_ratio": 0.9, "local_cache_size_bytes": 1048576,
        "redis": {"url": "redis://user:p%40ss@10.0.0.5:6379", "cluster": False, "key_prefix": "rl_",
                  "max_connections": 10}}
    # Unset, each switch is the reference's default (not this service's own).
    defaults = reference_env.read({"RUNTIME_ROOT": str(tmp_path / "srv"), "RUNTIME_SUBDIRECTORY": "ratelimit",
                                   "BACKEND_TYPE": "memory"})
    assert defaults.rate_limits["response_headers"] is False and "redis" not in defaults.rate_limits

    refused = {"USE_STATSD": "true", "REDIS_TYPE": "SENTINEL", "EXPIRATION_JITTER_MAX_SECONDS": "300",
               "GRPC_SERVER_USE_TLS": "true", "CONFIG_TYPE": "GRPC_XDS_SOTW", "RUNTIME_IGNOREDOTFILES": "false",
               "NEAR_LIMIT_RATIO": "lots"}
    with pytest.raises(reference_env.ReferenceEnvError) as error:
        reference_env.read({**env, **refused})
    for name in refused:
        assert f"{name}=" in str(error.value), name  # every refusal named, not only the first
    with pytest.raises(reference_env.ReferenceEnvError, match="BACKEND_TYPE='memcache': redis or memory"):
        reference_env.read({**env, "BACKEND_TYPE": "memcache"})

    # A variable given for a field this build lacks is refused rather than dropped.
    assert "merge_domains" in RateLimitsConfig.model_fields
    with pytest.raises(reference_env.ReferenceEnvError, match="SHADOW_MODE"):
        reference_env.fit(found, {"merge_domains", "near_limit_ratio", "redis"})


def test_readme_table_lists_every_reference_setting() -> None:
    """The README's table of envoyproxy/ratelimit settings names every variable settings.go reads."""
    text = (ROOT / "README.md").read_text()
    missing = [s.name for s in reference_env.SETTINGS if f"`{s.name}`" not in text]
    assert not missing


@pytest.fixture
def reference_service(tmp_path: Path, shared_redis: ManagedProcess) -> Iterator[tuple[ManagedProcess, Path]]:
    config = tmp_path / "srv" / "ratelimit" / "config"
    put(config / "api.yaml", limits("api", "user", 2))
    grpc_port, metrics_port = free_port(), free_port()
    env = {"RUNTIME_ROOT": str(tmp_path / "srv"), "RUNTIME_SUBDIRECTORY": "ratelimit",
           "RUNTIME_WATCH_ROOT": "false", "USE_STATSD": "false", "BACKEND_TYPE": "redis",
           "REDIS_SOCKET_TYPE": "tcp", "REDIS_URL": f"127.0.0.1:{shared_redis.port}",  # type: ignore[attr-defined]
           "CACHE_KEY_PREFIX": f"ref{grpc_port}_", "GRPC_HOST": "127.0.0.1", "GRPC_PORT": str(grpc_port),
           "USE_PROMETHEUS": "true", "PROMETHEUS_ADDR": f"127.0.0.1:{metrics_port}", "LOG_LEVEL": "info"}
    proc = ManagedProcess("reference-env", [sys.executable, "-m", "ratelimit_service", "--reference-env"],
                          ready=http_ready(f"http://127.0.0.1:{metrics_port}/metrics"), env=env,
                          log_path=tmp_path / "service.log", cwd=ROOT)
    proc.port = grpc_port  # type: ignore[attr-defined]
    proc.start().wait_ready(20)
    yield proc, config
    proc.stop()


async def test_service_runs_from_the_reference_environment(reference_service: tuple[ManagedProcess, Path]) -> None:
    """README "Building and Testing" runs the service from RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/RUNTIME_APPDIRECTORY,
    REDIS_SOCKET_TYPE/REDIS_URL and USE_STATSD=false; GRPC_PORT is settings.go's gRPC listener. A real process,
    real Redis, real gRPC: the limit of the directory's file applies, an unknown domain is OK, and a file added
    to the directory is picked up (RUNTIME_WATCH_ROOT=false: a Create reloads)."""
    proc, config = reference_service
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:  # type: ignore[attr-defined]
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        async def code(domain: str, key: str) -> int:
            request = rls_pb2.RateLimitRequest(domain=domain)
            request.descriptors.add().entries.add(key=key, value="alice")
            return int((await stub.ShouldRateLimit(request, timeout=5)).overall_code)

        assert [await code("api", "user") for _ in range(3)] == [Response.OK, Response.OK, Response.OVER_LIMIT]
        assert await code("elsewhere", "user") == Response.OK

        put(config / "more.yaml", limits("more", "user", 1))
        for _ in range(100):  # unknown domain: OK; once loaded, 1 a minute: OK then OVER_LIMIT
            if await code("more", "user") == Response.OVER_LIMIT:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the file added to the runtime directory was never loaded")


def test_service_refuses_an_unsupported_reference_setting_at_start(tmp_path: Path) -> None:
    """settings.go USE_STATSD defaults to true; statsd is not built here, so asking for it stops the service at
    start with the variable and the reason (and every other refused variable), before it listens."""
    (tmp_path / "srv" / "config").mkdir(parents=True)
    env = {**os.environ, "RUNTIME_ROOT": str(tmp_path / "srv"), "USE_STATSD": "true", "BACKEND_TYPE": "memory",
           "REDIS_PERSECOND": "true"}
    result = subprocess.run([sys.executable, "-m", "ratelimit_service", "--reference-env"], env=env,
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1
    assert "USE_STATSD='true': refused: statsd is not built" in result.stderr
    assert "REDIS_PERSECOND='true': refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_config_reads_a_directory_entry(tmp_path: Path) -> None:
    """`rate_limits.files` entries may be directories (the same set as the reference's runtime directory)."""
    put(tmp_path / "limits" / "a.yaml", limits("a", "k", 1))
    gateway = _gateway(tmp_path, ["limits"])
    config = load_config(gateway)
    assert [f["config"]["domain"] for f in payload(config)["files"]] == ["a"]
    assert yaml.safe_load(gateway.read_text())["rate_limits"]["files"] == ["limits"]
