# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The source QEMU's data connections of a migration, and how to close them after an abort.

Why
---
``virDomainAbortJob`` asks QEMU to cancel the migration and libvirt to cancel the storage copy's
mirror jobs. Both wait for the requests already sent to the destination. When the link between
the hosts drops packets silently (a dead switch port, a firewall that starts dropping), those
requests never complete: the aborted job stays on the source (the guest keeps running, but
holds a migration job and cannot be moved or managed) until TCP gives up, which takes as long
as ``net.ipv4.tcp_retries2`` allows (about 15 minutes by default), or until the link returns and
a retransmission, after an exponential back-off of up to 2 minutes, meets a reset.

QEMU's own answer to that, the ``yank`` QMP command, cannot be sent through libvirt while the
migration job holds the domain. The same effect is had from the host: the kernel closes a TCP
socket on request (``ss -K``, ``SOCK_DESTROY`` of the ``inet_diag`` netlink interface, Linux
>= 4.5 with ``CONFIG_INET_DIAG_DESTROY``); QEMU then sees the connection fail
(``ECONNABORTED``), the mirror jobs and the migration end as failed, and libvirt cleans up as
after any network error. Only connections of the guest's own QEMU process to the destination's
migration ports are closed; the guest keeps running on its source disks, untouched.

Tool used: ``ss`` from iproute2 (``ss -Htnp dst ADDR`` to list, ``ss -K`` to close).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _checks_network

#: libvirt's default ``migration_port_min``/``migration_port_max`` (qemu.conf): the ports the
#: destination picks for the memory stream and the NBD server when no port is given.
LIBVIRT_MIGRATION_PORTS = (49152, 49215)

_LINE = re.compile(r"^(?P<state>\S+)\s+\d+\s+\d+\s+(?P<local>\S+)\s+(?P<peer>\S+)(?:\s+(?P<process>.*))?$")
_PID = re.compile(r"pid=(\d+)")


@dataclasses.dataclass(frozen=True)
class Connection:
    """One TCP connection as ``ss`` lists it: addresses without brackets, ports as int."""

    state: str
    local_addr: str
    local_port: int
    peer_addr: str
    peer_port: int
    pids: t.Tuple[int, ...]

    def as_dict(self) -> dict[str, t.Any]:
        return {"state": self.state, "local": "%s:%d" % (self.local_addr, self.local_port),
                "peer": "%s:%d" % (self.peer_addr, self.peer_port), "pids": list(self.pids)}


def _split_endpoint(text: str) -> tuple[str, int]:
    """``198.18.0.1:49152`` or ``[fe80::1%eth0]:49152`` -> (address, port)."""
    addr, _sep, port = text.rpartition(":")
    addr = addr.strip("[]").split("%", 1)[0]
    return addr, int(port)


def parse_ss(text: str) -> list[Connection]:
    """Parse the output of ``ss -Htnp`` (no header; TCP; numeric; with processes).

    :returns: one :class:`Connection` per line that has the expected columns; other lines
        (a header, blank lines) are ignored.
    """
    conns = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        try:
            local = _split_endpoint(m.group("local"))
            peer = _split_endpoint(m.group("peer"))
        except ValueError:
            continue
        pids = tuple(int(p) for p in _PID.findall(m.group("process") or ""))
        conns.append(Connection(m.group("state"), local[0], local[1], peer[0], peer[1], pids))
    return conns


def data_connections(conns: t.Iterable[Connection], qemu_pid: int, dest_addrs: t.Iterable[str],
                     ports: t.Iterable[int] = ()) -> list[Connection]:
    """The migration's data connections among ``conns``: owned by ``qemu_pid``, to one of
    ``dest_addrs``, to one of ``ports`` (the plan's memory and disk ports) or, when none is
    given, to a port of libvirt's default migration range (so that a guest's user-mode network
    traffic to the destination host, if any, is not taken for the migration)."""
    wanted = {str(ipaddress.ip_address(a)) for a in dest_addrs}
    port_set = set(p for p in ports if p)
    low, high = LIBVIRT_MIGRATION_PORTS

    def port_ok(port: int) -> bool:
        return port in port_set if port_set else low <= port <= high

    return [c for c in conns
            if qemu_pid in c.pids and _normal(c.peer_addr) in wanted and port_ok(c.peer_port)]


def _normal(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def qemu_pid(domain_name: str, run_dir: str = "/run/libvirt/qemu") -> int | None:
    """The pid of a running domain's QEMU process from libvirt's pid file
    (``/run/libvirt/qemu/NAME.pid``, the same for libvirtd and virtqemud); None if unreadable."""
    if "/" in domain_name or domain_name.startswith("."):
        return None
    try:
        with open("%s/%s.pid" % (run_dir, domain_name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def sever(runner: t.Any, pid: int, dest_host: str, ports: t.Iterable[int] = ()) -> dict[str, t.Any]:
    """Close the data connections of QEMU ``pid`` to ``dest_host`` (``ss -K`` per connection,
    by its exact addresses and ports), then list again to see what is left. ``runner`` runs
    commands on this host (``_runner.Runner``: ``run(argv)`` -> ``.rc``, ``.stdout``, ``.stderr``).

    :returns: ``{closed: [conn dicts], left: [conn dicts], error: str|None}``; ``left`` not
        empty means this kernel cannot close sockets (no ``CONFIG_INET_DIAG_DESTROY``) or the
        tool failed (``error``).
    """
    ports = list(ports)
    try:
        addrs = _checks_network.resolve(dest_host, strict=True)
    except OSError as err:
        return {"closed": [], "left": [], "error": "cannot resolve %s: %s" % (dest_host, err)}

    def listing() -> tuple[list[Connection], str | None]:
        found: list[Connection] = []
        for addr in addrs:
            res = runner.run(["ss", "-Htnp", "dst", addr])
            if res.rc != 0:
                return found, "ss -Htnp failed (%d): %s" % (res.rc, res.stderr.strip())
            found += data_connections(parse_ss(res.stdout), pid, addrs, ports)
        return found, None

    before, error = listing()
    if error:
        return {"closed": [], "left": [], "error": error}
    for c in before:
        runner.run(["ss", "-K", "-Htn", "src", c.local_addr, "sport", "=", str(c.local_port),
                    "dst", c.peer_addr, "dport", "=", str(c.peer_port)])
    after, error = listing()
    left = {(c.local_addr, c.local_port, c.peer_addr, c.peer_port) for c in after}
    return {"closed": [c.as_dict() for c in before
                       if (c.local_addr, c.local_port, c.peer_addr, c.peer_port) not in left],
            "left": [c.as_dict() for c in after], "error": error}
