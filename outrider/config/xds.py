"""Settings of the xDS control plane (services.xds): ports, persistence, node matching, ACK timeout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from outrider.config.base import ConfigPath

Port = Annotated[int, Field(ge=1, le=65535)]


class XdsTls(BaseModel):
    """mTLS on the ADS port: who may connect, and which node ids each client certificate may claim."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The control plane's certificate and key, and the CA that signs its clients' certificates. Relative
    # paths resolve against the config file's folder; the files are read again when they change.
    cert_file: ConfigPath
    key_file: ConfigPath
    client_ca_file: ConfigPath
    # A client certificate's identity (a URI or DNS subject alternative name, else its subject CN) → the
    # node ids (shell patterns) a client holding it may claim. An identity not listed may claim nothing.
    identities: Annotated[dict[Annotated[str, Field(min_length=1)], list[Annotated[str, Field(min_length=1)]]],
                          Field(min_length=1)]
    # The certificate the gateway's own ADS clients present (Envoy and the services `outrider run` starts).
    client_cert_file: ConfigPath | None = None
    client_key_file: ConfigPath | None = None
    # The CA the gateway's own clients trust for the control plane's certificate (default: client_ca_file).
    server_ca_file: ConfigPath | None = None
    # The name the clients expect in the control plane's certificate (a DNS subject alternative name).
    server_name: Annotated[str, Field(min_length=1)] = "localhost"


class FileStoreSettings(BaseModel):
    """The state in `state_dir` (one control-plane process)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["file"] = "file"


class RedisStoreSettings(BaseModel):
    """The state in Redis, shared by control-plane replicas (compare-and-set saves, change notifications)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["redis"]
    url: str
    key_prefix: Annotated[str, Field(min_length=1)] = "outrider:xds:"
    # The environment variable holding Redis's password (a Kubernetes Secret), so the config file (a
    # ConfigMap) needs none; unset or empty: the URL's own password, if any.
    password_env: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if scheme not in ("redis", "rediss", "unix") or not sep or not rest or any(c.isspace() for c in value):
            raise ValueError("must be a redis://, rediss:// (TLS) or unix:// URL, e.g. redis://redis:6379/0")
        return value


def _server_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (e.g. 10.0.0.5:18000)")
    return value


class XdsService(BaseModel):
    """`enabled: true` moves Envoy onto ADS: listeners, routes, clusters, endpoints come from xds_server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    address: str = "127.0.0.1"
    port: Port = 18000
    # Admin HTTP API (routes and clusters at runtime); keep it on loopback.
    admin_address: str = "127.0.0.1"
    admin_port: Port = 18001
    # Listen on this Unix socket instead of admin_address:admin_port (file permissions then say who may call).
    admin_socket: Path | None = None
    # Every admin call needs `Authorization: Bearer <token>`. The token comes from this environment variable,
    # else from admin_token_file (relative to the config file's folder); with neither the control plane
    # refuses to start. `outrider run` generates one for development when none is configured.
    admin_token_env: Annotated[str, Field(min_length=1)] = "OUTRIDER_ADMIN_TOKEN"
    admin_token_file: Path | None = None
    # Host headers the admin API answers (any port); anything else is refused, so a web page that rebinds
    # its own DNS name to 127.0.0.1 cannot drive the API from a browser.
    admin_allowed_hosts: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"])
    metrics_port: Port = 19084
    # Accepted changes are persisted here (store kind "file"); relative to the config file's folder.
    state_dir: Path = Path(".run/xds-state")
    # Where the state lives: {kind: file} (state_dir) or {kind: redis, url: ..., key_prefix: ...} when
    # several control-plane replicas serve one gateway (docs/replicas.md).
    store: Annotated[FileStoreSettings | RedisStoreSettings, Field(discriminator="kind")] = FileStoreSettings()
    # The control-plane replicas ("host:port") the gateway's ADS clients (Envoy, the services) use, tried in
    # order and failed over. Empty: address:port only.
    servers: list[str] = Field(default_factory=list)
    # "sotw" (state of the world) or "delta" (incremental xDS) for the Envoy that `outrider run` starts.
    protocol: Literal["sotw", "delta"] = "sotw"
    # Snapshots are kept per node id or per node cluster (several Envoys of one cluster share one).
    node_key: Literal["id", "cluster"] = "id"
    node_id: Annotated[str, Field(min_length=1, pattern=r"^[^/]+$")] = "outrider-gateway"
    node_cluster: Annotated[str, Field(min_length=1)] = "outrider"
    # The ADS clients that belong to the gateway (shell patterns over node ids); any other is refused and
    # cannot read the config or veto a change. Empty: the gateway's Envoy (node_id) and its services
    # (node_id/<service>); with node_key "cluster", every node of node_cluster.
    expected_nodes: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # How long an API change waits for the Envoys' ACK before it is rolled back.
    ack_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 5_000
    # mTLS on the ADS port (certificates, client identities → node ids); none = plaintext on loopback only.
    tls: XdsTls | None = None
    # How often the config file is checked for edits (0 = never).
    watch_interval_ms: Annotated[int, Field(ge=0, le=60_000)] = 500

    @field_validator("servers")
    @classmethod
    def _servers(cls, value: list[str]) -> list[str]:
        return [_server_address(item) for item in value]

    def ads_servers(self) -> list[str]:
        """The "host:port" of every replica the gateway's ADS clients may use, in the order they try them."""
        return list(self.servers) or [f"{self.address}:{self.port}"]
