"""Pod networking: one network namespace per pod, veth pairs into one host bridge, names in /etc/netns/<ns>/hosts.

Like a cluster's pod network: each pod has an address on the bridge's subnet, pods reach each other (and
the host reaches them, as the kubelet does for probes) by address, and 127.0.0.1 inside a pod is that pod.
Service names resolve through the pod's hosts file (`ip netns exec` bind-mounts /etc/netns/<ns>/hosts over
/etc/hosts). Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

NETNS_ETC = Path("/etc/netns")
CLUSTER_IP_FIRST = 200  # Services' virtual IPs: .200 and up of the pod subnet (pods get .2 and up)
LOCK_FILE = Path("/run/lock/outrider-pod-network.lock")


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unavailable_reason() -> str | None:
    """Why pods cannot get network namespaces here (None: they can)."""
    if os.geteuid() != 0:
        return "the pod harness needs root (ip netns, bridges, mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"the pod harness needs `{tool}` (iproute2 / util-linux)"
    return None


def _subnets_in_use() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in _ip("-4", "-o", "addr", "show").splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return nets


def free_subnet(base: str = "10.77.0.0/16") -> ipaddress.IPv4Network:
    """The first /24 of `base` that no host interface uses (10.77.0.0/24 unless another harness has it)."""
    used = _subnets_in_use()
    for net in ipaddress.ip_network(base).subnets(new_prefix=24):
        if not any(net.overlaps(u) for u in used):
            return net  # type: ignore[return-value]
    raise NetworkError(f"no free /24 left in {base}")


@dataclass
class PodNetwork:
    """One bridge and the pods' namespaces on it; `close()` removes all of it (call it in a finally)."""

    prefix: str = "orp"
    base: str = "10.77.0.0/16"
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: ipaddress.IPv4Network | None = None
    namespaces: dict[str, str] = field(default_factory=dict)  # pod name → netns name
    host_links: dict[str, str] = field(default_factory=dict)  # pod name → host end of its veth pair
    addresses: dict[str, str] = field(default_factory=dict)  # pod name → IP
    hosts: dict[str, str] = field(default_factory=dict)  # host name → IP (pods and Services)
    _next_host: int = 2
    _next_cluster_ip: int = CLUSTER_IP_FIRST
    _alive: IO[str] | None = None  # this run's lock, held while the network exists

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br{self.run_id}"  # interface names are at most 15 characters

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def create(self) -> PodNetwork:
        # Held while picking a subnet and taking it: two harnesses starting at once (another test run, the
        # other helpers' orr-/orm-/ors- networks) must not both take the first free /24.
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._alive = open(run_lock(self.prefix, self.run_id), "w")  # noqa: SIM115 - held until close()
            fcntl.flock(self._alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            sweep_stale(self.prefix)
            self.subnet = self.subnet or free_subnet(self.base)
            _ip("link", "add", self.bridge, "type", "bridge")
            # A fixed MAC: a bridge without one takes the lowest MAC of its ports and changes it as pods join,
            # and pods that cached the old one for the host's addresses (the Services' cluster IPs) would
            # send their packets into some other pod's veth until their ARP entry expires.
            mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))  # locally administered
            _ip("link", "set", self.bridge, "address", mac)
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def add_pod(self, pod: str) -> tuple[str, str]:
        """A namespace for `pod` with loopback up and an address on the bridge: (netns name, IP)."""
        assert self.subnet is not None, "create() first"
        index = self._next_host
        if index >= CLUSTER_IP_FIRST:
            raise NetworkError(f"no pod address left below the cluster IPs (.{CLUSTER_IP_FIRST}+)")
        self._next_host += 1
        ns = f"{self.prefix}-{self.run_id}-{pod}"
        address = str(self.subnet.network_address + index)
        host_if, pod_if = f"{self.prefix}{self.run_id}h{index}", f"{self.prefix}{self.run_id}p{index}"
        self.namespaces[pod] = ns
        self.host_links[pod] = host_if
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        _ip("link", "set", host_if, "master", self.bridge)
        _ip("link", "set", host_if, "up")
        _ip("link", "set", pod_if, "netns", ns)
        _ip("-n", ns, "link", "set", pod_if, "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)
        self.addresses[pod] = address
        self.hosts[pod] = address
        self.write_hosts()
        return ns, address

    def add_cluster_ip(self) -> str:
        """A Service's virtual IP: an address of the host on the bridge, where the Service proxy listens.

        Pods reach it on their subnet route (the host answers ARP for it on the bridge), the host directly.
        """
        assert self.subnet is not None, "create() first"
        if self._next_cluster_ip >= self.subnet.num_addresses - 1 or self._next_cluster_ip - CLUSTER_IP_FIRST >= 50:
            raise NetworkError("no cluster IP left for another Service (50 per harness run)")
        address = str(self.subnet.network_address + self._next_cluster_ip)
        self._next_cluster_ip += 1
        _ip("addr", "add", f"{address}/32", "dev", self.bridge)
        return address

    def set_host(self, name: str, address: str) -> None:
        """Make `name` (a Service) resolve to `address` in every pod, now and in pods added later."""
        self.hosts[name] = address
        self.write_hosts()

    def write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", "::1 localhost", *(f"{ip} {name}" for name, ip in self.hosts.items())]
        text = "\n".join(lines) + "\n"
        for ns in self.namespaces.values():
            path = NETNS_ETC / ns / "hosts"
            path.parent.mkdir(parents=True, exist_ok=True)
            # In place, not rename: processes already running see the bind-mounted inode's new content.
            with open(path, "w") as handle:
                handle.write(text)
            resolv = NETNS_ETC / ns / "resolv.conf"
            if not resolv.exists():
                # Pods have no route to the host's DNS server; a query for a name not in the hosts file (an
                # IPv6 lookup of a Service name, say) must fail at once, as a cluster DNS's NXDOMAIN would,
                # not after resolver timeouts: nothing listens on the pod's own port 53.
                resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def remove_pod(self, pod: str) -> None:
        ns = self.namespaces.pop(pod, None)
        if ns is None:
            return
        # A namespace lives on while a process is in it: end them first (a pod's runner normally has).
        for pid in _ip("netns", "pids", ns, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.host_links.pop(pod, ""), check=False)  # gone with the namespace, or now
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only when no other namespace has files there

    def close(self) -> None:
        for pod in list(self.namespaces):
            self.remove_pod(pod)
        _ip("link", "del", self.bridge, check=False)
        if self._alive is not None:
            with contextlib.suppress(OSError):
                run_lock(self.prefix, self.run_id).unlink()
            self._alive.close()
            self._alive = None


def run_lock(prefix: str, run_id: str) -> Path:
    return LOCK_FILE.parent / f"outrider-pod-{prefix}-{run_id}.lock"


def _owner_alive(prefix: str, run_id: str) -> bool:
    """A run holds its lock file while its network exists; a run that was killed (SIGKILL, a timeout) left
    the file unlocked, or no file at all."""
    try:
        with open(run_lock(prefix, run_id)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def sweep_stale(prefix: str) -> list[str]:
    """Remove what killed runs of this prefix left (namespaces, links, hosts files); returns the names."""
    removed: list[str] = []
    pattern = _name_pattern(prefix)
    for name in leftovers(prefix):
        match = pattern.match(name)
        if match is None or _owner_alive(prefix, match.group(1)):
            continue
        if name.startswith(f"{prefix}-{match.group(1)}-"):  # a namespace
            for pid in _ip("netns", "pids", name, check=False).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
        else:
            _ip("link", "del", name, check=False)
        with contextlib.suppress(OSError):
            run_lock(prefix, match.group(1)).unlink()
        removed.append(name)
    return removed


def _name_pattern(prefix: str) -> re.Pattern[str]:
    """Names a run makes: namespaces <prefix>-<run>-<pod>, bridge <prefix>-br<run>, veths <prefix><run>h<n>."""
    return re.compile(rf"^{re.escape(prefix)}(?:-br|-|)([0-9a-f]{{4}})(?:$|-|[hp]\d+$)")


def leftovers(prefix: str, run_id: str | None = None) -> list[str]:
    """Namespaces and links of `prefix` (and of one run of it) that are still there (tests assert none)."""
    names = [line.split()[0] for line in _ip("netns", "list").splitlines()]
    for line in _ip("-o", "link", "show").splitlines():
        names.append(line.split(":")[1].strip().split("@")[0])
    pattern = _name_pattern(prefix)
    return [n for n in names if (m := pattern.match(n)) is not None and run_id in (None, m.group(1))]
