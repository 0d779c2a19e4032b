# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pre-flight checks of the guest and the two hosts, one small function per check, each
returning one finding or a list of findings (:mod:`_findings`) for :func:`_preflight.report`.

Where the guest is (exactly once in the group, on the source), its state, that source and
destination are different machines (C10), name/UUID conflicts on the destination (C11), the
CPU, machine type and emulator (C06, C07, by :mod:`_cpu`), the destination's memory, and the
libvirt and QEMU versions with the features the chosen options need.

The checks judge facts the runner (:func:`_preflight.run_preflight`) read; only
:func:`check_cpu_all` talks to libvirt itself (through :mod:`_cpu`).

Relies on: libvirt ``virConnectCompareHypervisorCPU`` (:func:`_cpu.check_cpu`),
``virConnectGetCapabilities`` (machine types, emulators),
``virNodeGetFreeMemory``/``virNodeGetMemoryStats`` (memory), ``virConnectGetLibVersion`` and
``virConnectGetVersion`` (versions) as the runner read them.
"""

from __future__ import annotations

import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils._findings import finding, validated


#: Options that need a minimum libvirt on both hosts: name -> (version number, what).
FEATURE_MIN_LIBVIRT = {
    "detect_zeroes": (10009000, "zero detection of copied disks "
                      "(VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES)"),
    "disks_uri": (6008000, "a separate storage stream URI (VIR_MIGRATE_PARAM_DISKS_URI)"),
    "parallel": (5002000, "parallel migration (VIR_MIGRATE_PARALLEL)"),
    "postcopy": (1003003, "post-copy migration (VIR_MIGRATE_POSTCOPY)"),
    "zlib_zstd": (9004000, "zlib/zstd compression of parallel migration"),
}


# --------------------------------------------------------------------------------------------
# Guest, hosts and the destination domain (C10, C11)
# --------------------------------------------------------------------------------------------

def check_location(domain: str, source_host: str, found: dict[str, dict[str, t.Any] | None]
                   ) -> dict[str, t.Any]:
    """The guest is found exactly once in the group, and on the source.

    :param found: host name -> ``_migration.describe`` dict of the guest there, or None.
    """
    where = {h: d for h, d in found.items() if d is not None}
    values = {"found_on": {h: d["state"] for h, d in where.items()}}
    if not where:
        return finding("guest_location", "error", source_host,
                       "Guest %s is defined on none of %s: check the name (virsh list --all)."
                       % (domain, ", ".join(sorted(found))), **values)
    if len(where) > 1:
        return finding("guest_location", "error", source_host,
                       "Guest %s is defined on %d hosts (%s): decide which copy is current and "
                       "undefine the others before migrating." % (
                           domain, len(where), ", ".join("%s: %s" % hs for hs in sorted(
                               values["found_on"].items()))), **values)
    host = next(iter(where))
    if host != source_host:
        return finding("guest_location", "error", source_host,
                       "Guest %s is on %s, not on the source %s: run the migration from %s."
                       % (domain, host, source_host, host), **values)
    return finding("guest_location", "ok", source_host,
                   "Guest %s is defined once in the group, on %s." % (domain, host), **values)


def check_state(info: dict[str, t.Any], require_state: str, host: str) -> dict[str, t.Any]:
    """The guest is running or shut off as ``require_state`` asks (``any``: either)."""
    state = info["state"]
    values = {"state": state, "required": require_state}
    running = state in _migration_plan.RUNNING_STATES
    if require_state == "running" and not running:
        return finding("guest_state", "error", host, "Guest %s is %s on %s; a live migration needs "
                       "it running: start it (virsh start %s) or migrate it offline "
                       "(require_state: shut off)." % (info["name"], state, host, info["name"]),
                       **values)
    if require_state == "shut off" and state != "shutoff":
        return finding("guest_state", "error", host, "Guest %s is %s on %s; an offline migration "
                       "needs it shut off: shut it down first (virsh shutdown %s)."
                       % (info["name"], state, host, info["name"]), **values)
    if not running and state != "shutoff":
        return finding("guest_state", "warning", host, "Guest %s is %s on %s: it is neither running "
                       "nor shut off; resume or stop it before migrating." % (
                           info["name"], state, host), **values)
    return finding("guest_state", "ok", host, "Guest %s is %s." % (info["name"], state), **values)


def check_distinct_hosts(src: dict[str, t.Any], dst: dict[str, t.Any], dest_host: str,
                         dest_is_local: bool) -> dict[str, t.Any]:
    """Source and destination are different machines (case C10).

    :param src: ``{host, uuid, hostname}`` of the source (uuid from ``//host/uuid``).
    :param dst: the same for the destination.
    :param dest_is_local: ``dest_host`` is an address of the source itself.
    """
    values = {"source_uuid": src.get("uuid"), "dest_uuid": dst.get("uuid"),
              "source_hostname": src.get("hostname"), "dest_hostname": dst.get("hostname"),
              "dest_host": dest_host}
    if dest_is_local:
        return finding("distinct_hosts", "error", dst["host"],
                       "dest_host %s is an address of the source host itself: libvirt would refuse "
                       "with 'Attempt to migrate guest to the same host'. Use the destination's "
                       "address." % dest_host, **values)
    if src.get("uuid") and src.get("uuid") == dst.get("uuid"):
        return finding("distinct_hosts", "error", dst["host"],
                       "Source and destination report the same host UUID %s (cloned machines): "
                       "libvirt refuses with 'Attempt to migrate guest to the same host'. Set a "
                       "unique host_uuid in /etc/libvirt/libvirtd.conf on %s (e.g. from uuidgen) "
                       "and restart libvirtd there." % (src["uuid"], dst["host"]), **values)
    if src.get("hostname") and src.get("hostname") == dst.get("hostname"):
        return finding("distinct_hosts", "warning", dst["host"],
                       "Source and destination have the same host name %s (UUIDs differ): "
                       "give the hosts distinct names to keep logs and certificates apart."
                       % src["hostname"], **values)
    return finding("distinct_hosts", "ok", dst["host"],
                   "Source (%s) and destination (%s) are different hosts." % (
                       src.get("uuid"), dst.get("uuid")), **values)


def check_destination_domain(source: dict[str, t.Any] | None, by_name: dict[str, t.Any] | None,
                             by_uuid: dict[str, t.Any] | None, dest_name: str, dest: str,
                             cleanup_leftover: bool = False) -> dict[str, t.Any]:
    """Name/UUID conflicts on the destination (case C11, all four states), by
    ``_migration_plan.classify_destination`` (the one decision table).

    migrate -> ok; noop (already migrated, c) -> ok with ``values.already_migrated``;
    cleanup_then_migrate (b, ours, asked) -> warning; fail (a, b, d) -> error.
    """
    decision = _migration_plan.classify_destination(source, by_name, by_uuid, dest_name=dest_name,
                                                    dest=dest, cleanup_leftover=cleanup_leftover)
    status = {"migrate": "ok", "noop": "ok", "cleanup_then_migrate": "warning"}.get(
        decision.action, "error")
    return finding("destination_domain", status, dest, decision.msg, case=decision.case,
                   action=decision.action, already_migrated=decision.action == "noop",
                   dest_by_name=by_name, dest_by_uuid=by_uuid)


# --------------------------------------------------------------------------------------------
# CPU, machine, emulator (C06, C07): _cpu's checks, normalised
# --------------------------------------------------------------------------------------------

def check_cpu_all(dconn: t.Any, guest_xml: str, dst_caps: _cpu.HostCaps, host: str
                  ) -> list[dict[str, t.Any]]:
    """CPU compatibility (vendor, features), feature names, machine type and emulator of the
    guest as it runs (pass the migratable live XML of a running guest)."""
    cpu = validated(_cpu.check_cpu(dconn, guest_xml, host))
    comparison = cpu["values"].get("comparison") or {}
    names = _cpu.check_feature_names(guest_xml, host, comparison=_cpu.CpuComparison(
        host=host, result=comparison.get("result", "identical"),
        unknown_features=list(comparison.get("unknown_features") or [])))
    return [cpu, validated(names), validated(_cpu.check_machine(guest_xml, dst_caps, host)),
            validated(_cpu.check_emulator(guest_xml, dst_caps, host))]


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

def check_memory(name: str, needed_bytes: int, free_bytes: int, available_bytes: int | None,
                 host: str) -> dict[str, t.Any]:
    """The destination can hold the guest's memory.

    :param needed_bytes: the guest's maximum memory (what QEMU may allocate).
    :param free_bytes: ``virNodeGetFreeMemory`` (MemFree: excludes page cache).
    :param available_bytes: free + buffers + cached from ``virNodeGetMemoryStats`` (None if
        unknown): memory the kernel can reclaim for the guest.
    """
    values = {"needed_bytes": needed_bytes, "free_bytes": free_bytes,
              "available_bytes": available_bytes}
    if needed_bytes <= free_bytes:
        return finding("memory", "ok", host, "%s has %d bytes free for the %d bytes of guest %s."
                       % (host, free_bytes, needed_bytes, name), **values)
    if available_bytes is not None and needed_bytes <= available_bytes:
        return finding("memory", "warning", host,
                       "%s has only %d bytes free but %d bytes reclaimable (page cache) for the %d "
                       "bytes of guest %s: the migration will push the cache out; expect slower "
                       "I/O on %s meanwhile." % (host, free_bytes, available_bytes, needed_bytes,
                                                 name, host), **values)
    return finding("memory", "error", host,
                   "Not enough memory on %s for guest %s: needs %d bytes, %d bytes free (%s "
                   "reclaimable). Free memory there (stop or move other guests) or choose another "
                   "destination." % (host, name, needed_bytes, free_bytes,
                                     available_bytes if available_bytes is not None else "unknown"),
                   **values)


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------

def check_versions(src: dict[str, int | None], dst: dict[str, int | None], wanted: t.Sequence[str],
                   host: str) -> list[dict[str, t.Any]]:
    """libvirt and QEMU on both sides, and the libvirt the chosen options need.

    :param src: ``{libvirt, qemu}`` version numbers (``getLibVersion``, ``getVersion``).
    :param wanted: keys of :data:`FEATURE_MIN_LIBVIRT`.
    """
    values = {"source_libvirt": _libvirt.version_or_unknown(src.get("libvirt")),
              "source_qemu": _libvirt.version_or_unknown(src.get("qemu")),
              "dest_libvirt": _libvirt.version_or_unknown(dst.get("libvirt")),
              "dest_qemu": _libvirt.version_or_unknown(dst.get("qemu"))}
    out = []
    if src.get("qemu") and dst.get("qemu") and dst["qemu"] < src["qemu"]:
        out.append(finding("versions", "warning", host,
                           "QEMU on %s (%s) is older than on the source (%s): migration to an older "
                           "QEMU works only for machine types and devices it knows (see the machine "
                           "check)." % (host, values["dest_qemu"], values["source_qemu"]), **values))
    else:
        out.append(finding("versions", "ok", host, "libvirt %s / QEMU %s on the source, libvirt %s / "
                           "QEMU %s on %s." % (values["source_libvirt"], values["source_qemu"],
                                               values["dest_libvirt"], values["dest_qemu"], host),
                           **values))
    for key in wanted:
        need, what = FEATURE_MIN_LIBVIRT[key]
        low = [side for side, ver in (("source", src.get("libvirt")), (host, dst.get("libvirt")))
               if ver is not None and ver < need]
        fvalues = {"feature": key, "needs_libvirt": _libvirt.version_or_unknown(need), **values}
        if low:
            status = "warning" if key == "detect_zeroes" else "error"
            out.append(finding("feature_support", status, host,
                               "%s needs libvirt %s or later; %s %s older%s." % (
                                   what, _libvirt.version_or_unknown(need), " and ".join(low),
                                   "is" if len(low) == 1 else "are",
                                   ": the migrate module skips it" if status == "warning"
                                   else ": upgrade libvirt or do without it"), **fvalues))
        else:
            out.append(finding("feature_support", "ok", host, "%s is supported on both hosts." % what,
                               **fvalues))
    return out
