"""`outrider pod SPEC... [--objects FILE...]`: run the pods of rendered manifests locally until Ctrl-C."""

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
        objects = load_documents(args.objects)
        specs = load_documents(args.spec)
    except SpecError as exc:
        _print(str(exc))
        return 1
    cluster = LocalCluster(prefix=args.prefix, on_event=_print)
    try:
        cluster.network.create()
        try:
            workloads = cluster.add_objects([*objects, *specs])
            if not workloads:
                _print("no Pod or Deployment in " + ", ".join(args.spec))
                return 1
            for host in args.host:
                name, _, address = host.partition("=")
                if not name or not address:
                    raise SpecError(f"--host {host!r}: expected NAME=IP")
                cluster.network.set_host(name, address)
            # In the order given, each ready before the next: list a Service's backends (the control plane)
            # before the pods that call it by name.
            for where, doc in workloads:
                if stop.is_set():
                    break
                spec = cluster.pod_spec(doc, where)
                pod = cluster.start_pod(spec)
                _print(f"pod {spec.name} at {pod.ip} (network namespace {pod.netns}); logs in {pod.workdir}/logs")
                pod.wait_ready(args.ready_timeout)
            if not stop.is_set():
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
    p = sub.add_parser("pod", help="run Kubernetes pod specs (Pods, Deployments' templates) as local processes")
    p.add_argument("spec", nargs="+", help="YAML files with Pods/Deployments (and ConfigMaps, Secrets, Services)")
    p.add_argument("--objects", nargs="+", action="extend", default=[], metavar="FILE",
                   help="more YAML files with ConfigMaps, Secrets, Services (after the specs, or repeat the flag)")
    p.add_argument("--host", action="append", default=[], metavar="NAME=IP",
                   help="an extra name every pod resolves (e.g. a Redis on the host)")
    p.add_argument("--prefix", default="orp", help="prefix of the network namespaces and links (default orp)")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    p.add_argument("--keep-logs", action="store_true", help="keep the pods' work directory (logs, volumes)")
    p.set_defaults(func=cmd_pod)
