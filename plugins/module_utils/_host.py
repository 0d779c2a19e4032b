# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts of one hypervisor host, read-only: identity, versions, memory, and its domains.

What the roles need to locate a guest in a group, to place guests by free memory, and to find
duplicated host UUIDs (case C10) before anything is touched:

* ``host``: host name, the host UUID libvirt reports (``//host/uuid`` of the capabilities) and
  the one configured in libvirtd.conf (``host_uuid``), CPU vendor/model, CPU count, libvirt and
  QEMU versions, total / free / available memory in bytes (``virNodeGetMemoryStats``: available
  is free + buffers + cached, the kernel's reclaimable page cache).
* ``domains``: every domain defined or running on the host: name, UUID, state, active,
  persistent, current memory in bytes and vCPU count (``virDomainGetInfo``).

Relies on: ``virConnectGetCapabilities``, ``virConnectGetLibVersion``/``getVersion``,
``virNodeGetInfo``, ``virNodeGetMemoryStats(VIR_NODE_MEMORY_STATS_ALL_CELLS)``,
``virConnectListAllDomains``, ``virDomainGetInfo`` (memory in KiB); libvirtd.conf(5) syntax
``key = "value"`` with ``#`` comments.
"""

from __future__ import annotations

import re
import socket
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from ansible_collections.kvmops.migration.plugins.module_utils._domain_xml import etree

DEFAULT_LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
KIB = 1024

#: virDomainState numbers (stable libvirt ABI) to names.
STATE_NAMES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
               5: "shutoff", 6: "crashed", 7: "pmsuspended"}

_HOST_UUID_RE = re.compile(r'^\s*host_uuid\s*=\s*"([^"]*)"\s*(?:#.*)?$')
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def parse_host_uuid(conf_text: str) -> str | None:
    """The ``host_uuid`` value set in a libvirtd.conf text (the last one wins), or None."""
    found = None
    for line in conf_text.splitlines():
        match = _HOST_UUID_RE.match(line)
        if match:
            found = match.group(1)
    return found


def is_valid_host_uuid(value: str | None) -> bool:
    """A UUID libvirt accepts as ``host_uuid``: well formed, and not all digits the same
    (libvirt rejects e.g. 00000000-... and ffffffff-... as invalid host UUIDs)."""
    if not value or not _UUID_RE.match(value):
        return False
    return len(set(value.replace("-", "").lower())) > 1


def version_text(number: int | None) -> str | None:
    """libvirt's packed version (major * 1000000 + minor * 1000 + micro) as ``M.m.u``."""
    if number is None:
        return None
    return "%d.%d.%d" % (number // 1000000, (number // 1000) % 1000, number % 1000)


def parse_capabilities(xml: str) -> dict[str, t.Any]:
    """Host UUID, arch, CPU vendor and model from ``virConnectGetCapabilities`` XML."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)

    def text(path: str) -> str | None:
        node = root.find(path)
        return node.text.strip() if node is not None and node.text else None
    return {"uuid": text("host/uuid"), "arch": text("host/cpu/arch"),
            "cpu_vendor": text("host/cpu/vendor"), "cpu_model": text("host/cpu/model")}


def memory_from_stats(stats: dict[str, int], total_kib: int | None = None) -> dict[str, int | None]:
    """Bytes from ``getMemoryStats`` (KiB): total, free, and available (free + buffers + cached)."""
    total = stats.get("total", total_kib)
    free = stats.get("free")
    available = None
    if free is not None:
        available = free + stats.get("buffers", 0) + stats.get("cached", 0)
    return {"memory_bytes": total * KIB if total is not None else None,
            "free_memory_bytes": free * KIB if free is not None else None,
            "available_memory_bytes": available * KIB if available is not None else None}


def domain_facts(dom: t.Any) -> dict[str, t.Any]:
    """Name, UUID, state, active, persistent, memory (bytes), vCPUs of one ``virDomain``."""
    state, max_kib, cur_kib, vcpus, _cpu_time = dom.info()
    return {"name": dom.name(), "uuid": dom.UUIDString(), "state": STATE_NAMES.get(state, "unknown"),
            "active": bool(dom.isActive()), "persistent": bool(dom.isPersistent()),
            "memory_bytes": int(cur_kib) * KIB, "max_memory_bytes": int(max_kib) * KIB,
            "vcpus": int(vcpus)}


def read_conf(path: str) -> tuple[bool, str]:
    """(exists, text) of a configuration file; a missing file is not an error."""
    try:
        with open(path) as handle:
            return True, handle.read()
    except FileNotFoundError:
        return False, ""
    except OSError as err:
        raise KvmopsError("Could not read %s: %s." % (path, err.strerror)) from err


def host_facts(conn: t.Any, conf_text: str | None, conf_exists: bool, include_domains: bool = True,
               hostname: str | None = None) -> dict[str, t.Any]:
    """Everything :mod:`host_info` returns, from an open connection and the libvirtd.conf text."""
    with _libvirt.libvirt_errors("read the host capabilities"):
        caps = parse_capabilities(conn.getCapabilities())
        node = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
        lib_version = conn.getLibVersion()
        hv_version = conn.getVersion()
    mem_stats: dict[str, int] = {}
    try:
        mem_stats = conn.getMemoryStats(-1, 0)  # VIR_NODE_MEMORY_STATS_ALL_CELLS
    except Exception as err:  # an old or restricted driver: fall back to the node info total
        if not _libvirt.is_libvirt_error(err):
            raise
    memory = memory_from_stats(mem_stats, total_kib=int(node[1]) * KIB)
    configured = parse_host_uuid(conf_text or "")
    host = {
        "hostname": hostname or socket.gethostname(),
        "uri": _libvirt_uri(conn),
        "uuid": caps["uuid"],
        "uuid_configured": configured,
        "uuid_configured_valid": is_valid_host_uuid(configured) if configured is not None else None,
        "libvirtd_conf_exists": conf_exists,
        "arch": caps["arch"] or node[0],
        "cpu_vendor": caps["cpu_vendor"],
        "cpu_model": caps["cpu_model"],
        "cpus": int(node[2]),
        "libvirt_version": version_text(lib_version),
        "hypervisor_version": version_text(hv_version),
    }
    host.update(memory)
    result: dict[str, t.Any] = {"host": host}
    if include_domains:
        with _libvirt.libvirt_errors("list the domains"):
            domains = [domain_facts(d) for d in conn.listAllDomains(0)]
        domains.sort(key=lambda d: d["name"])
        host["running_memory_bytes"] = sum(d["memory_bytes"] for d in domains if d["active"])
        host["running_vcpus"] = sum(d["vcpus"] for d in domains if d["active"])
        result["domains"] = domains
    return result


def _libvirt_uri(conn: t.Any) -> str | None:
    try:
        return str(conn.getURI())
    except Exception as err:
        if not _libvirt.is_libvirt_error(err):
            raise
        return None


def run_host_info(params: dict[str, t.Any]) -> dict[str, t.Any]:
    """The ``host_info`` module: read-only facts of the local host (``params['uri']``)."""
    exists, text = read_conf(params["libvirtd_conf"])
    with _libvirt.connection(params["uri"], readonly=True) as conn:
        return host_facts(conn, text, exists, include_domains=params["domains"])
