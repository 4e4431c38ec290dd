"""A Kubernetes Pod (or a Deployment's pod template) read into plain values: containers, probes, hooks, volumes.

Pure: no processes, no files beyond what the caller hands in as parsed YAML. Bad input raises SpecError
naming the field path and the reason.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WORKLOADS_WITH_TEMPLATE = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


class SpecError(ValueError):
    """A pod spec (or a referenced object) we cannot run; the message names the field and the reason."""


# Kubernetes' probe defaults (core/v1 Probe): period 10 s, timeout 1 s, success 1, failure 3.
@dataclass(frozen=True)
class Probe:
    kind: Literal["grpc", "httpGet", "tcpSocket", "exec"]
    port: int | None = None
    path: str = "/"
    host: str | None = None
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    service: str = ""  # grpc: the health service name ("" = the whole server)
    command: tuple[str, ...] = ()
    initial_delay_s: float = 0.0
    period_s: float = 10.0
    timeout_s: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Handler:
    """A lifecycle hook (preStop): exec a command, GET a URL, or sleep."""

    kind: Literal["exec", "httpGet", "sleep"]
    command: tuple[str, ...] = ()
    port: int | None = None
    path: str = "/"
    host: str | None = None
    sleep_s: float = 0.0


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class Container:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, int], ...] = ()  # (name or "", containerPort)
    working_dir: str | None = None
    mounts: tuple[Mount, ...] = ()
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    pre_stop: Handler | None = None
    # "init": runs to completion before the next; "sidecar": a native sidecar (init + restartPolicy Always);
    # "main": a regular container.
    role: Literal["init", "sidecar", "main"] = "main"
    # securityContext.readOnlyRootFilesystem: only the mounted volumes are writable.
    read_only_root: bool = False


@dataclass(frozen=True)
class Volume:
    """What a volume holds: files written from a ConfigMap or Secret, or an empty directory."""

    name: str
    kind: Literal["emptyDir", "configMap", "secret"]
    files: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class PodSpec:
    name: str
    containers: tuple[Container, ...]
    volumes: tuple[Volume, ...] = ()
    grace_period_s: float = 30.0
    labels: tuple[tuple[str, str], ...] = ()

    def start_plan(self) -> list[Container]:
        """Kubernetes' start order: init containers and native sidecars in their declared order (each sidecar
        must pass its startup probe, each init container must exit 0, before the next starts), then the main
        containers (started together)."""
        return [c for c in self.containers if c.role != "main"] + [c for c in self.containers if c.role == "main"]

    def stop_plan(self) -> tuple[list[Container], list[Container]]:
        """Kubernetes' stop order: the main containers first (preStop, then SIGTERM; together), then the
        native sidecars one by one in the reverse of their start order. Finished init containers are gone."""
        mains = [c for c in self.containers if c.role == "main"]
        sidecars = [c for c in self.containers if c.role == "sidecar"]
        return mains, list(reversed(sidecars))


@dataclass
class ObjectStore:
    """ConfigMaps and Secrets the pod may reference (the cluster's API objects, here local YAML documents)."""

    config_maps: dict[str, dict[str, bytes]] = field(default_factory=dict)
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def add(self, doc: Mapping[str, Any], where: str) -> None:
        kind, name = doc.get("kind"), _get(doc, "metadata", where).get("name")
        if not isinstance(name, str):
            raise SpecError(f"{where}: metadata.name: missing")
        if kind == "ConfigMap":
            self.config_maps[name] = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
            self.config_maps[name].update(
                {k: base64.b64decode(v) for k, v in (doc.get("binaryData") or {}).items()})
        elif kind == "Secret":
            data = {k: base64.b64decode(v) for k, v in (doc.get("data") or {}).items()}
            data.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
            self.secrets[name] = data

    def key(self, kind: Literal["configMap", "secret"], name: str, key: str, where: str) -> bytes:
        source = self.config_maps if kind == "configMap" else self.secrets
        if name not in source:
            raise SpecError(f"{where}: {kind} {name!r} not found (pass it with --objects)")
        if key not in source[name]:
            raise SpecError(f"{where}: {kind} {name!r} has no key {key!r}")
        return source[name][key]


def _get(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}.{key}: expected a mapping")
    return value


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise SpecError(f"{where}.{key}: expected a list")
    return value


def pod_template(doc: Mapping[str, Any], where: str = "spec") -> tuple[str, Mapping[str, Any], Mapping[str, Any]]:
    """(name, metadata, pod spec) of a Pod, or of a Deployment's (and the like) spec.template."""
    kind = doc.get("kind")
    meta = _get(doc, "metadata", where)
    if kind == "Pod":
        return str(meta.get("name", "pod")), meta, _get(doc, "spec", where)
    if kind in WORKLOADS_WITH_TEMPLATE:
        template = _get(_get(doc, "spec", where), "template", f"{where}.spec")
        return str(meta.get("name", "pod")), _get(template, "metadata", f"{where}.spec.template"), \
            _get(template, "spec", f"{where}.spec.template")
    raise SpecError(f"{where}: kind {kind!r} is not a Pod or a workload with a pod template")


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: unknown references stay as written,
    $$ is a literal $."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR_REF.sub(one, text)


def _port(value: Any, ports: Mapping[str, int], where: str) -> int:
    if isinstance(value, int) and 0 < value < 65536:
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if value in ports:
            return ports[value]
    raise SpecError(f"{where}.port: {value!r} is neither a port number nor a named container port")


def parse_probe(doc: Mapping[str, Any], ports: Mapping[str, int], where: str) -> Probe:
    """One probe: exactly one of grpc, httpGet, tcpSocket, exec, with Kubernetes' timing defaults."""
    kinds = [k for k in ("grpc", "httpGet", "tcpSocket", "exec") if k in doc]
    if len(kinds) != 1:
        raise SpecError(f"{where}: needs exactly one of grpc, httpGet, tcpSocket, exec (found {kinds or 'none'})")
    kind = kinds[0]
    body = _get(doc, kind, where)
    timing: dict[str, Any] = {}
    for key, attr, minimum in (("initialDelaySeconds", "initial_delay_s", 0), ("periodSeconds", "period_s", 1),
                               ("timeoutSeconds", "timeout_s", 1), ("successThreshold", "success_threshold", 1),
                               ("failureThreshold", "failure_threshold", 1)):
        if key in doc:
            value = doc[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise SpecError(f"{where}.{key}: expected an integer >= {minimum}, got {value!r}")
            timing[attr] = value
    if kind == "exec":
        command = _list(body, "command", f"{where}.exec")
        if not command:
            raise SpecError(f"{where}.exec.command: must not be empty")
        return Probe("exec", command=tuple(str(c) for c in command), **timing)
    port = _port(body.get("port"), ports, f"{where}.{kind}")
    if kind == "grpc":
        return Probe("grpc", port=port, service=str(body.get("service", "")), **timing)
    if kind == "tcpSocket":
        return Probe("tcpSocket", port=port, host=body.get("host"), **timing)
    headers = tuple((str(h["name"]), str(h["value"])) for h in _list(body, "httpHeaders", f"{where}.httpGet"))
    scheme = str(body.get("scheme", "HTTP"))
    if scheme not in ("HTTP", "HTTPS"):
        raise SpecError(f"{where}.httpGet.scheme: {scheme!r} is not HTTP or HTTPS")
    return Probe("httpGet", port=port, path=str(body.get("path", "/")), host=body.get("host"), scheme=scheme,
                 headers=headers, **timing)


def parse_handler(doc: Mapping[str, Any], ports: Mapping[str, int], where: str) -> Handler:
    if "exec" in doc:
        command = _list(_get(doc, "exec", where), "command", f"{where}.exec")
        if not command:
            raise SpecError(f"{where}.exec.command: must not be empty")
        return Handler("exec", command=tuple(str(c) for c in command))
    if "httpGet" in doc:
        body = _get(doc, "httpGet", where)
        return Handler("httpGet", port=_port(body.get("port"), ports, f"{where}.httpGet"),
                       path=str(body.get("path", "/")), host=body.get("host"))
    if "sleep" in doc:
        return Handler("sleep", sleep_s=float(_get(doc, "sleep", where).get("seconds", 0)))
    raise SpecError(f"{where}: needs one of exec, httpGet, sleep")


def _env(items: Sequence[Any], objects: ObjectStore, where: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise SpecError(f"{at}: expected {{name, value | valueFrom}}")
        if "valueFrom" in item:
            source = _get(item, "valueFrom", at)
            for kind, ref_key in (("configMap", "configMapKeyRef"), ("secret", "secretKeyRef")):
                if ref_key in source:
                    ref = _get(source, ref_key, f"{at}.valueFrom")
                    try:
                        value = objects.key(kind, str(ref.get("name")), str(ref.get("key")),  # type: ignore[arg-type]
                                            f"{at}.valueFrom.{ref_key}")
                    except SpecError:
                        if ref.get("optional"):
                            break
                        raise
                    out[item["name"]] = value.decode()
                    break
            else:
                raise SpecError(f"{at}.valueFrom: only configMapKeyRef and secretKeyRef are supported here")
        else:
            # Later entries may refer to earlier ones with $(NAME), as in Kubernetes.
            out[item["name"]] = expand(str(item.get("value", "")), out)
    return tuple(out.items())


def _env_from(items: Sequence[Any], objects: ObjectStore, where: str) -> dict[str, str]:
    """envFrom: every key of a ConfigMap or Secret (with an optional prefix)."""
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        for kind, ref_key in (("configMap", "configMapRef"), ("secret", "secretRef")):
            if ref_key in item:
                ref = _get(item, ref_key, at)
                store = objects.config_maps if kind == "configMap" else objects.secrets
                name = str(ref.get("name"))
                if name not in store:
                    if ref.get("optional"):
                        break
                    raise SpecError(f"{at}.{ref_key}: {kind} {name!r} not found (pass it with --objects)")
                out.update({str(item.get("prefix", "")) + k: v.decode() for k, v in store[name].items()})
                break
        else:
            raise SpecError(f"{at}: needs configMapRef or secretRef")
    return out


# What an image runs when the container gives no `command` (its ENTRYPOINT, then CMD when there are no args),
# for the images our manifests use; the binaries come from this host (see runner.local_argv).
IMAGE_ENTRYPOINTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # Containerfile: no ENTRYPOINT, CMD = the gateway pod's main container.
    "outrider": ((), ("outrider", "envoy", "/etc/outrider/gateway.yaml", "--bootstrap", "/run/outrider/envoy.yaml")),
    # docker-entrypoint.sh runs its arguments (redis-server ...), or redis-server with them when they are
    # options; CMD is redis-server.
    "redis": ((), ("redis-server",)),
}


def image_entrypoint(image: str, args: Sequence[str], where: str) -> list[str]:
    """The command a container without `command` runs, from its image's ENTRYPOINT / CMD."""
    repository = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    if repository not in IMAGE_ENTRYPOINTS:
        raise SpecError(f"{where}.command: required here for image {image!r} (its ENTRYPOINT is unknown; known "
                        f"images: {', '.join(sorted(IMAGE_ENTRYPOINTS))})")
    entrypoint, cmd = IMAGE_ENTRYPOINTS[repository]
    if repository == "redis" and args and args[0].startswith("-"):
        return ["redis-server"]  # the entrypoint prepends it to options; the args follow
    return list(entrypoint) + ([] if args else list(cmd))


def _container(doc: Mapping[str, Any], role: Literal["init", "sidecar", "main"], objects: ObjectStore,
               where: str) -> Container:
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}.name: missing")
    where = f"{where}({name})"
    command = [str(c) for c in _list(doc, "command", where)]
    args = [str(a) for a in _list(doc, "args", where)]
    if not command:
        command = image_entrypoint(str(doc.get("image", "")), args, where)
    ports_list = _list(doc, "ports", where)
    ports = {str(p.get("name", "")): int(p["containerPort"]) for p in ports_list if isinstance(p, Mapping)}
    env_map = _env_from(_list(doc, "envFrom", where), objects, f"{where}.envFrom")
    env_map.update(_env(_list(doc, "env", where), objects, f"{where}.env"))  # env wins over envFrom
    env = tuple(env_map.items())
    argv = tuple(expand(a, env_map) for a in [*command, *args])
    mounts = tuple(Mount(str(m["name"]), str(m["mountPath"]), bool(m.get("readOnly", False)),
                         str(m.get("subPath", "")))
                   for m in _list(doc, "volumeMounts", where))
    probes = {key: parse_probe(_get(doc, key, where), ports, f"{where}.{key}") if key in doc else None
              for key in ("startupProbe", "readinessProbe", "livenessProbe")}
    lifecycle = _get(doc, "lifecycle", where)
    pre_stop = parse_handler(_get(lifecycle, "preStop", f"{where}.lifecycle"), ports,
                             f"{where}.lifecycle.preStop") if "preStop" in lifecycle else None
    if role == "init" and doc.get("restartPolicy") == "Always":
        role = "sidecar"
    elif role == "init" and doc.get("restartPolicy") not in (None,):
        raise SpecError(f"{where}.restartPolicy: only Always is allowed on an init container")
    if role == "init" and any(probes.values()):
        raise SpecError(f"{where}: probes are only allowed on native sidecars (restartPolicy: Always)")
    return Container(name=name, argv=argv, env=env, ports=tuple((k, v) for k, v in ports.items()),
                     working_dir=doc.get("workingDir"), mounts=mounts, startup=probes["startupProbe"],
                     readiness=probes["readinessProbe"], liveness=probes["livenessProbe"], pre_stop=pre_stop,
                     role=role, read_only_root=bool(_get(doc, "securityContext", where).get("readOnlyRootFilesystem")))


def _volume(doc: Mapping[str, Any], objects: ObjectStore, where: str) -> Volume:
    name = str(doc.get("name"))
    where = f"{where}({name})"
    if "emptyDir" in doc:
        return Volume(name, "emptyDir")
    for kind, name_key in (("configMap", "name"), ("secret", "secretName")):
        if kind in doc:
            body = _get(doc, kind, where)
            source_name = str(body.get(name_key))
            store = objects.config_maps if kind == "configMap" else objects.secrets
            if source_name not in store:
                if body.get("optional"):
                    return Volume(name, kind)  # type: ignore[arg-type]
                raise SpecError(f"{where}.{kind}: {kind} {source_name!r} not found (pass it with --objects)")
            data = store[source_name]
            items = _list(body, "items", f"{where}.{kind}")
            if items:
                files = tuple((str(i["path"]), objects.key(kind, source_name, str(i["key"]),  # type: ignore[arg-type]
                                                           f"{where}.{kind}.items")) for i in items)
            else:
                files = tuple(sorted(data.items()))
            for path, _ in files:
                if path.startswith("/") or ".." in path.split("/"):
                    raise SpecError(f"{where}.{kind}: file path {path!r} must stay inside the volume")
            return Volume(name, kind, files)  # type: ignore[arg-type]
    raise SpecError(f"{where}: only emptyDir, configMap and secret volumes are supported here")


def parse_pod(doc: Mapping[str, Any], objects: ObjectStore | None = None, where: str = "pod") -> PodSpec:
    """A Pod (or a Deployment's pod template) as a PodSpec; env and volumes resolved against `objects`."""
    objects = objects or ObjectStore()
    name, meta, spec = pod_template(doc, where)
    containers: list[Container] = []
    for i, c in enumerate(_list(spec, "initContainers", f"{where}.spec")):
        containers.append(_container(c, "init", objects, f"{where}.spec.initContainers[{i}]"))
    mains = _list(spec, "containers", f"{where}.spec")
    if not mains:
        raise SpecError(f"{where}.spec.containers: at least one container is required")
    for i, c in enumerate(mains):
        containers.append(_container(c, "main", objects, f"{where}.spec.containers[{i}]"))
    names = [c.name for c in containers]
    if len(set(names)) != len(names):
        raise SpecError(f"{where}.spec: container names must be unique: {names}")
    volumes = tuple(_volume(v, objects, f"{where}.spec.volumes[{i}]")
                    for i, v in enumerate(_list(spec, "volumes", f"{where}.spec")))
    known = {v.name for v in volumes}
    for c in containers:
        for m in c.mounts:
            if m.volume not in known:
                raise SpecError(f"{where}: container {c.name!r} mounts volume {m.volume!r}, which spec.volumes "
                                f"does not declare")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or grace < 0:
        raise SpecError(f"{where}.spec.terminationGracePeriodSeconds: expected an integer >= 0, got {grace!r}")
    labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
    return PodSpec(name=name, containers=tuple(containers), volumes=volumes, grace_period_s=float(grace),
                   labels=labels)
