"""Several hosts on one Linux machine: one network namespace per host, joined by a bridge that lives in
a namespace of its own (`<prefix>switch`), so that the cluster's private /24 exists only inside them:
the machine itself has no route to it, and nothing inside has a route out (no default route).

Each host gets `lo`, one `eth0` on the bridge, and a hosts file (`/etc/netns/<ns>/hosts`, which
`ip netns exec` puts over /etc/hosts) naming every host and mapping the machine's own hostname to the
host's cluster address, as an EC2 instance resolves its own name to its private address.

Processes started with `run_in` stay in their namespace; `teardown` stops whatever runs in the
namespaces (SIGTERM, then SIGKILL) before deleting them, so nothing outlives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_ETC = Path("/etc/netns")


@dataclass(frozen=True)
class Network:
    prefix: str  # namespace names: <prefix><host>
    subnet: str  # the first three octets of the private /24
    hosts: dict[str, int]  # host name -> last octet

    def ns(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def ip(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts[host]}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}switch"

    def namespaces(self) -> list[str]:
        return [self.switch, *(self.ns(h) for h in self.hosts)]


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None when they can): root, `ip`, `unshare`, `mount` and `nft`
    (the store host's firewall) are needed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "mount", "nft"):
        if not shutil.which(tool):
            return f"`{tool}` is not installed"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def existing(net: Network) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    return [ns for ns in net.namespaces() if ns in names]


def build(net: Network) -> None:
    """The namespaces, the bridge, one veth per host, addresses and hosts files."""
    _ip("netns", "add", net.switch)
    _ip("-n", net.switch, "link", "add", "br0", "type", "bridge")
    _ip("-n", net.switch, "link", "set", "br0", "up")
    names = "".join(f"{net.ip(h)} {h}\n" for h in net.hosts)
    for host in net.hosts:
        ns = net.ns(host)
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", host[:15], "netns", net.switch)
        _ip("-n", net.switch, "link", "set", "dev", host[:15], "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{net.ip(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{net.ip(host)} {socket.gethostname()}\n{names}")


def accept_only(net: Network, host: str, tcp_ports: list[int]) -> None:
    """Other hosts reach `host` on `tcp_ports` only: any other TCP connection from them is reset. The
    host's own traffic (to its cluster address too) goes through its loopback and is not filtered."""
    ports = ", ".join(str(p) for p in sorted(tcp_ports))
    rules = ("table inet fruitflow\ndelete table inet fruitflow\n"
             "table inet fruitflow {\n chain input {\n  type filter hook input priority 0; policy accept;\n"
             '  iif "lo" accept\n  ct state established,related accept\n'
             f"  tcp dport != {{ {ports} }} reject with tcp reset\n }}\n}}\n")
    done = subprocess.run(["ip", "netns", "exec", net.ns(host), "nft", "-f", "-"], input=rules, capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {host}: {done.stderr.strip()}")


def set_link(net: Network, host: str, up: bool) -> None:
    """The host's cable, as seen from the switch: down cuts it off from every other host."""
    _ip("-n", net.switch, "link", "set", "dev", host[:15], "up" if up else "down")


def pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
    return [int(p) for p in out.split()]


def stop_processes(ns: str, grace: float = 10.0) -> None:
    """SIGTERM everything running in `ns` (SIGCONT first: a paused process cannot act), then SIGKILL."""
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pid in pids_in(ns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    while pids_in(ns) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.2)
    for pid in pids_in(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while pids_in(ns) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.2)


def _reap() -> None:
    """Children of this process that exited stay zombies (still listed in the namespace) until reaped."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def teardown(net: Network) -> None:
    """Every process in the cluster's namespaces stopped, then the namespaces and their hosts files gone."""
    present = existing(net)
    for ns in present:
        stop_processes(ns)
    for ns in present:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    for ns in net.namespaces():
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def run_in(net: Network, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", net.ns(host), *argv], **kwargs)


def spawn_in(net: Network, host: str, argv: list[str], env: dict[str, str], logfile: Path,
             cwd: Path | None = None) -> subprocess.Popen:
    """Start `argv` on `host` in its own session, output to `logfile`."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as out:
        return subprocess.Popen(["ip", "netns", "exec", net.ns(host), *argv], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=cwd)


def private_mounts(hide: list[Path], keep: list[tuple[Path, bool]], stage: Path) -> list[str]:
    """A command prefix giving what follows its own mount namespace in which each folder of `hide` is an
    empty tmpfs, except the `keep` folders (path, read-only?) inside them, bound back at their own
    paths: a host that has the Python environment installed, not the driver's files."""
    script = ["set -e", f"mount -t tmpfs fruitflow-stage {_q(stage)}"]
    for i, (path, _ro) in enumerate(keep):
        script += [f"mkdir -p {_q(stage)}/{i}", f"mount --bind {_q(path)} {_q(stage)}/{i}"]
    for path in hide:
        script.append(f"mount -t tmpfs fruitflow-hidden {_q(path)}")
    for i, (path, ro) in enumerate(keep):
        script += [f"mkdir -p {_q(path)}", f"mount --bind {_q(stage)}/{i} {_q(path)}"]
        if ro:
            script.append(f"mount -o remount,bind,ro {_q(path)}")
    script += [f"umount -l {_q(stage)}", 'exec "$@"']
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(script), "sh"]


def _q(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
