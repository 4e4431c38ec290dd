"""`outrider pod MANIFESTS...`: run the pods and Services of rendered manifests locally until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from outrider.pod.network import unavailable_reason
from outrider.pod.spec import SpecError


def _print(text: str) -> None:
    # One write per line: probe threads report at the same time as the main thread.
    sys.stderr.write(f"outrider: {text}\n")
    sys.stderr.flush()


def cmd_pod(args: argparse.Namespace) -> int:
    from outrider.pod.cluster import LocalCluster, load_documents

    reason = unavailable_reason()
    if reason is not None:
        _print(reason)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        docs = load_documents([*args.spec, *args.objects])
    except SpecError as exc:
        _print(str(exc))
        return 1
    cluster = LocalCluster(prefix=args.prefix, on_event=_print)
    try:
        cluster.network.create()
        try:
            for host in args.host:
                name, _, address = host.partition("=")
                if not name or not address:
                    raise SpecError(f"--host {host!r}: expected NAME=IP")
                cluster.network.set_host(name, address)
            workloads = cluster.add_objects(docs)
            if not workloads:
                _print("no Pod or Deployment in " + ", ".join(args.spec))
                return 1
            plan = cluster.plan(workloads)
            _print("start order (backends of a Service first): "
                   + ", ".join(f"{w.name} x{w.replicas}" for w in plan))
            for pod in cluster.start_workloads(plan, args.ready_timeout, stop):
                _print(f"pod {pod.spec.name} at {pod.ip} (network namespace {pod.netns}); logs in {pod.workdir}/logs")
            if not stop.is_set():
                for name, address in cluster.cluster_ips.items():
                    ports = ", ".join(str(p.port) for p in cluster.services[name].ports)
                    _print(f"service {name}: {address} port {ports}")
                _print("all pods ready (Ctrl-C stops them in Kubernetes' order)")
            while not stop.wait(0.5):
                pass
            for name in reversed(list(cluster.pods)):
                report = cluster.stop_pod(name)
                _print(f"pod {name} stopped in {report.duration_s:.1f}s: exit codes {report.exit_codes}"
                       + (f", SIGKILLed {report.killed}" if report.killed else ""))
        finally:
            cluster.close(keep_workdir=args.keep_logs)
    except (SpecError, RuntimeError) as exc:
        _print(str(exc))
        return 1
    return 0


def add_command(sub: Any) -> None:  # argparse's _SubParsersAction is private
    p = sub.add_parser("pod", help="run rendered Kubernetes manifests (workloads, Services, ConfigMaps, Secrets) "
                                   "as local processes")
    p.add_argument("spec", nargs="+",
                   help="YAML files of rendered manifests, `-` for standard input "
                        "(kubectl kustomize deploy/kubernetes/overlays/dev | outrider pod -)")
    p.add_argument("--objects", nargs="+", action="extend", default=[], metavar="FILE",
                   help="more YAML files with ConfigMaps, Secrets, Services (after the specs, or repeat the flag)")
    p.add_argument("--host", action="append", default=[], metavar="NAME=IP",
                   help="an extra name every pod resolves (e.g. a Redis on the host)")
    p.add_argument("--prefix", default="orp", help="prefix of the network namespaces and links (default orp)")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--keep-logs", action="store_true", help="keep the pods' work directory (logs, volumes)")
    p.set_defaults(func=cmd_pod)
