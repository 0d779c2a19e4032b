# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pre-flight: every check before anything is touched, as one report.

Each check is a small function returning one finding or a list of findings
``{check, status, host, msg, values}`` (:mod:`_findings`, the one findings type, also of the
CPU checks of ``_cpu``); ``status`` is ``ok``, ``warning`` or ``error``. :func:`report` builds
``{ok, findings, summary}``; :func:`run_preflight` is the backend of the ``preflight`` module:
it reads both hosts (read-only) and runs every check.

Where the facts come from (the module runs on the source host)
--------------------------------------------------------------
- libvirt on both sides: the source guest (live XML, migratable form for the CPU), the
  destination's capabilities, domains (C11), networks, host interfaces, storage pools, free
  memory, versions. Everything is read; nothing is defined, started or refreshed.
- the source's images: ``_images.describe_disk`` (``qemu-img info -U``), locally.
- the destination's files cannot be seen from the source. They come from facts the caller read
  on the destination, all four given by ``kvmops.migration.host_info`` run there with ``paths``:
  ``dest_disks`` (its ``paths``, the ``disks`` list ``kvmops.migration.disk_info`` gives for
  them), ``dest_mounts`` (its ``mounts``, in the shape of the ``ansible_mounts`` fact),
  ``dest_interfaces`` and ``dest_manifest`` (the entries of its kvmops manifest). Without them
  the destination's libvirt storage pools are used where a pool covers the directory
  (``storageVolLookupByPath``, pool ``info()``); a path that neither covers is reported as a
  warning "not verified", never as ok.

What is honest about ports
--------------------------
The destination QEMU listens on its migration and NBD ports (49152-49215 by default,
``migration_port_min``/``max`` in qemu.conf) only while an incoming migration runs. With
``dest_probe`` (the ``preflight_dest`` module run on the destination just before, see
:mod:`_probe`) a kvmops listener holds the very port the move will get, so the answer is
exact: ``open``, ``closed`` (a reset although the listener holds it: a REJECT rule) or
``filtered`` (no answer: a DROP rule), and the two blocked ones are errors before anything is
created. Without it a TCP connect proves the route only when something listens: "Connection
refused" means the host answered but a firewall REJECT rule answers the same way, so it is
``ok`` with ``values.verified: false`` and the words "not verifiable until the migration"; no
answer within the timeout is an ``error`` (a dropping firewall dooms the move); an unreachable
network is an ``error``. ``ignore_blocked_ports`` makes these errors warnings. The libvirt
transport port (ssh 22, tls 16514) must accept a connection: that one is verified.

Shared storage
--------------
A disk whose directory ``preflight_dest`` marked on the destination and whose marker is seen on
the source is on shared storage (Nova's test): it is not copied (``shared_detected``). A disk
that is not copied must be on a filesystem the source's libvirt knows as shared, or under
``shared_filesystems`` of its qemu.conf, or libvirt refuses the move as unsafe.

Relies on: libvirt ``virConnectGetCapabilities``, ``virConnectGetHostname``,
``virConnectGetLibVersion``, ``virConnectGetVersion``, ``virNodeGetFreeMemory``,
``virNodeGetMemoryStats``, ``virNetworkLookupByName``/``virNetworkIsActive``/
``virNetworkGetBridgeName``, ``virInterfaceLookupByName``, ``virStorageVolLookupByPath``,
``virConnectListAllStoragePools``; https://libvirt.org/kbase/tlscerts.html (client files);
qemu.conf ``default_tls_x509_cert_dir`` (``/etc/pki/qemu``: ``ca-cert.pem``,
``client-cert.pem``, ``client-key.pem``, ``server-cert.pem``, ``server-key.pem``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import socket
import time
import typing as t
from urllib.parse import urlsplit

from ansible_collections.kvmops.migration.plugins.module_utils import _conf
from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _host
from ansible_collections.kvmops.migration.plugins.module_utils import _images
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _findings
from ansible_collections.kvmops.migration.plugins.module_utils import _migration
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils import _probe
from ansible_collections.kvmops.migration.plugins.module_utils import _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError


STATUSES = _findings.STATUSES

REQUIRE_STATES = ("running", "shut off", "any")
DEFAULT_MIGRATE_PORT = 49152
DEFAULT_DISKS_PORT = 49153
#: Cache modes libvirt accepts on a disk that is not copied (qemuMigrationSrcIsSafe).
SAFE_CACHE_MODES = ("none", "directsync")
#: QEMU that drops the destination's page cache of a file at the switch-over (file driver
#: ``drop-cache``, QEMU 4.0): libvirt then accepts any cache mode on shared storage
#: (QEMU_CAPS_MIGRATION_FILE_DROP_CACHE in qemuMigrationSrcIsSafe).
QEMU_DROP_CACHE_SINCE = 4000000
#: Filesystem types (``/proc/self/mounts``) the source's libvirt knows as shared
#: (virFileIsSharedFS: NFS, GFS2, OCFS2, AFS, SMB/CIFS, CephFS, GPFS, Quobyte, ACFS, GlusterFS
#: and BeeGFS); anything else (ext4, xfs, a bind mount of them) is "Migration without shared
#: storage is unsafe" for a disk that is not copied, unless qemu.conf's shared_filesystems lists it.
LIBVIRT_SHARED_FSTYPES = ("nfs", "nfs4", "gfs2", "ocfs2", "afs", "smb3", "smbfs", "cifs", "ceph",
                          "gpfs", "quobyte", "fuse.quobyte", "acfs", "fuse.glusterfs", "beegfs")
QEMU_CONF = _tls.QEMU_CONF
PROC_MOUNTS = "/proc/self/mounts"
#: the firewall advice of a blocked data port
_OPEN_PORTS = ("open TCP 49152-49215 from the source in the firewall of %s (the kvm_host role does with "
               "kvm_host_firewall: firewalld or ufw; by hand: firewall-cmd --permanent "
               "--add-port=49152-49215/tcp && firewall-cmd --reload, or ufw allow proto tcp to any "
               "port 49152:49215) and in any firewall between the hosts")

#: Client side of a qemu+tls connection, for root (https://libvirt.org/kbase/tlscerts.html).
LIBVIRT_TLS_CLIENT_FILES = ("/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/clientcert.pem",
                            "/etc/pki/libvirt/private/clientkey.pem")

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
# Findings and the report
# --------------------------------------------------------------------------------------------

#: one finding (:mod:`_findings`, the one findings type of CPU and pre-flight checks)
finding = _findings.finding
#: a finding checked for a known status (:func:`_findings.validated`)
normalise = _findings.validated


def report(findings: t.Iterable[dict[str, t.Any]]) -> dict[str, t.Any]:
    """``{ok, findings, summary: {errors, warnings, oks, checks, msg}}``; ``ok`` is False when
    any finding is an error."""
    items = [normalise(f) for f in findings]
    counts = {s: sum(1 for f in items if f["status"] == s) for s in STATUSES}
    errors = [f["msg"] for f in items if f["status"] == "error"]
    msg = ("Pre-flight passed: %d checks ok, %d warnings." % (counts["ok"], counts["warning"])
           if not errors else "Pre-flight found %d error(s): %s" % (len(errors), " | ".join(errors)))
    return {"ok": not errors, "findings": items,
            "summary": {"errors": counts["error"], "warnings": counts["warning"],
                        "oks": counts["ok"], "checks": len(items), "msg": msg}}


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
    cpu = normalise(_cpu.check_cpu(dconn, guest_xml, host))
    comparison = cpu["values"].get("comparison") or {}
    names = _cpu.check_feature_names(guest_xml, host, comparison=_cpu.CpuComparison(
        host=host, result=comparison.get("result", "identical"),
        unknown_features=list(comparison.get("unknown_features") or [])))
    return [cpu, normalise(names), normalise(_cpu.check_machine(guest_xml, dst_caps, host)),
            normalise(_cpu.check_emulator(guest_xml, dst_caps, host))]


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
# Storage (C01-C05, C12, C13)
# --------------------------------------------------------------------------------------------

def same_file(src_fp: dict[str, t.Any] | None, dst_fp: dict[str, t.Any] | None) -> bool:
    """Fingerprints (``_images.storage_fingerprint``) of the source image and of the same path
    read on the destination show one file: same path, inode and size (the rule of
    ``_images.shared_storage_reason``)."""
    if not src_fp or not dst_fp:
        return False
    return (src_fp.get("path") == dst_fp.get("path") and src_fp.get("inode") is not None
            and src_fp.get("inode") == dst_fp.get("inode") and src_fp.get("size") == dst_fp.get("size"))


def shared_proof(disks: list[dict[str, t.Any]], dest: "DestFiles", probe: dict[str, t.Any] | None,
                 marker_seen: t.Callable[[dict[str, t.Any], str], bool], host: str) -> dict[str, str]:
    """Target -> why its image is on storage both hosts see.

    The identity probe decides where it ran: a marker ``preflight_dest`` made in the disk's
    directory on ``host`` and seen here on the source proves the directory shared; a marker made
    there and not seen here proves it is not (then a matching inode and size is a coincidence,
    e.g. cloned hosts). Where no marker was made (no probe, or the directory is absent there) the
    same path with the same inode and size on both hosts (:func:`same_file`) is the proof.
    """
    probe = probe or {}
    probe_id = probe.get("probe_id") or ""
    markers = {m.get("dir"): m for m in probe.get("markers") or []}
    out: dict[str, str] = {}
    for disk in disks:
        path = disk.get("path") or ""
        if not path or disk.get("type") == "network":
            continue
        directory = os.path.dirname(os.path.normpath(path))
        entry = markers.get(directory)
        if entry is not None and entry.get("state") == "created":
            if marker_seen(entry, probe_id):
                out[disk["target"]] = ("a file made in %s on %s is visible in the same directory on the "
                                       "source (identity probe)" % (directory, host))
            continue
        seen, _src = dest.lookup(path)
        if same_file(disk.get("fingerprint"), (seen or {}).get("fingerprint")):
            out[disk["target"]] = ("the same file (inode %s, %s bytes) is visible on %s"
                                   % (disk["fingerprint"]["inode"], disk["fingerprint"]["size"], host))
    return out


def check_copy_set(disks: list[dict[str, t.Any]], copy_storage: str, shared: t.Sequence[str],
                   shared_proof: dict[str, str | None], host: str,
                   selected: list[str] | None = None) -> list[dict[str, t.Any]]:
    """The copy set is safe (case C12): every writable local disk is copied, or declared shared
    AND verified shared (``shared_proof``: target -> why it is shared, None when not shown).

    Uses ``_migration_plan.select_disks`` (the copy set of the migration itself).
    """
    out = []
    declared = list(shared)
    try:
        chosen = _migration_plan.select_disks(disks, copy_storage, selected, declared)
    except KvmopsError as err:
        return [finding("copy_set", "error", host, err.msg, **err.values)]
    copyable = [d["target"] for d in disks if d.get("copy")]
    if copy_storage == "none":
        declared = sorted(set(declared) | set(copyable))
    out.append(finding("copy_set", "ok", host, "Disks copied: %s." % (", ".join(chosen) or "none"),
                       copy=chosen, shared=declared))
    by_target = {d["target"]: d for d in disks}
    for target in declared:
        disk = by_target.get(target)
        if disk is None:
            out.append(finding("shared_storage", "error", host, "Disk %s declared shared is not a "
                               "disk of the guest (disks: %s)." % (target, ", ".join(sorted(by_target))),
                               target=target))
            continue
        proof = shared_proof.get(target)
        if proof:
            out.append(finding("shared_storage", "ok", host, "Disk %s (%s) is on storage shared with %s: "
                               "%s; it is not copied." % (target, disk.get("path"), host, proof),
                               target=target, path=disk.get("path"), shared=True))
        elif disk.get("type") == "network":
            out.append(finding("shared_storage", "warning", host,
                               "Disk %s is a %s network disk (%s): not copied; that %s reaches it "
                               "is not verifiable from the source." % (
                                   target, disk.get("protocol"), disk.get("name"), host),
                               target=target))
        else:
            out.append(finding("shared_storage", "error", host,
                               "Disk %s (%s) is not copied but not shown to be shared with %s: the "
                               "same file was not found there (same inode and size). Copy it "
                               "(remove it from shared_disks, copy_storage: all) or put it on "
                               "storage both hosts mount." % (target, disk.get("path"), host),
                               target=target, path=disk.get("path")))
    return out


def check_cache_modes(disks: list[dict[str, t.Any]], copied: t.Sequence[str], host: str,
                      qemu_version: int | None = None) -> list[dict[str, t.Any]]:
    """Cache modes and data safety (case C12).

    libvirt's "Unsafe migration: Migration may lead to data corruption if disks use cache other
    than none or directsync" is about disks that are NOT copied: with a host page cache on both
    hosts, the destination could read stale data of shared storage. Such a disk is an error
    (libvirt refuses; the unsafe flag is never added for you), unless the source's QEMU is
    :data:`QEMU_DROP_CACHE_SINCE` or newer (``qemu_version``): it drops the destination's page
    cache at the switch-over and libvirt accepts the move, so it is a warning. A copied disk with
    another cache mode is a warning: libvirt accepts it and QEMU flushes at the switch-over, but
    writes sit in the source's page cache until then, so a source crash during the copy loses them.
    """
    out = []
    for disk in disks:
        if disk.get("readonly") or not (disk.get("path") or disk.get("volume") or disk.get("name")):
            continue
        cache = disk.get("cache") or "default"
        values = {"target": disk["target"], "cache": cache, "path": disk.get("path")}
        if cache in SAFE_CACHE_MODES:
            continue
        cache = disk.get("cache") or "default, i.e. QEMU's writeback"
        if disk["target"] in copied:
            out.append(finding("cache_mode", "warning", host,
                               "Disk %s uses cache='%s': guest writes wait in the source's page cache "
                               "until the switch-over flush; a source crash during the copy loses "
                               "them. Prefer cache='none' (change it while the guest is shut off)."
                               % (disk["target"], cache), **values))
        elif disk.get("shareable") or (qemu_version or 0) >= QEMU_DROP_CACHE_SINCE:
            out.append(finding("cache_mode", "warning", host,
                               "Disk %s is not copied and uses cache='%s': libvirt accepts it (%s), but "
                               "cache='none' keeps both hosts' page caches out of shared storage (change "
                               "it while the guest is shut off)." % (
                                   disk["target"], cache, "the disk is shareable" if disk.get("shareable")
                                   else "QEMU %s drops the destination's page cache at the switch-over"
                                   % version_text(qemu_version)), **values))
        else:
            out.append(finding("cache_mode", "error", host,
                               "Disk %s is not copied and uses cache='%s': libvirt refuses with "
                               "'Unsafe migration: Migration may lead to data corruption if disks use "
                               "cache other than none or directsync' (each host would cache the shared "
                               "image). Set cache='none' on it (cold change), or copy it."
                               % (disk["target"], cache), **values))
    if not out:
        out.append(finding("cache_mode", "ok", host, "No disk uses an unsafe cache mode."))
    return out


def shared_filesystems(qemu_conf: str | None) -> list[str]:
    """The directories of ``shared_filesystems = [...]`` in the text of qemu.conf (comments and
    a commented-out example ignored)."""
    return _conf.string_list(qemu_conf, "shared_filesystems")


def check_shared_safety(disks: list[dict[str, t.Any]], copied: t.Sequence[str], shared: t.Sequence[str],
                        mounts: list[dict[str, t.Any]], declared_dirs: t.Sequence[str], host: str,
                        realpath: t.Callable[[str], str] = os.path.realpath) -> list[dict[str, t.Any]]:
    """A writable file disk that is shared (not copied) must be on storage the source's libvirt
    knows as shared, or libvirt refuses with "Unsafe migration: Migration without shared storage
    is unsafe" (qemuMigrationSrcIsSafe judges by the filesystem type of the disk's path).

    :param shared: targets not copied because they are shared (declared or shown).
    :param mounts: the source's ``/proc/self/mounts`` entries (``_host.parse_mounts``).
    :param declared_dirs: ``shared_filesystems`` of the source's qemu.conf.
    """
    out = []
    for disk in disks:
        path = disk.get("path")
        if (disk.get("target") not in shared or disk.get("target") in copied or disk.get("readonly")
                or disk.get("type") not in (None, "file") or not path):
            continue
        real = realpath(path)
        values = {"target": disk["target"], "path": path, "realpath": real}
        covered = [d for d in declared_dirs if real == d.rstrip("/") or real.startswith(d.rstrip("/") + "/")]
        mount = _images.mount_holding(real, mounts) if mounts else None
        fstype = (mount or {}).get("fstype")
        values.update(fstype=fstype, mount=(mount or {}).get("mount"), shared_filesystems=covered)
        if covered:
            out.append(finding("shared_storage", "ok", host, "Disk %s (%s) is under %s, declared in "
                               "shared_filesystems of the source's qemu.conf: libvirt treats it as shared."
                               % (disk["target"], path, covered[0]), **values))
        elif fstype is None:
            out.append(finding("shared_storage", "warning", host, "Disk %s (%s): the filesystem holding it on "
                               "the source is unknown, so whether libvirt accepts it as shared is not "
                               "verified." % (disk["target"], path), **values))
        elif fstype in LIBVIRT_SHARED_FSTYPES:
            out.append(finding("shared_storage", "ok", host, "Disk %s (%s) is on %s (%s), which libvirt "
                               "knows as shared storage." % (disk["target"], path, fstype, mount["mount"]),
                               **values))
        else:
            out.append(finding(
                "shared_storage", "error", host,
                "Disk %s (%s) is shared with %s but not copied, and it is on a %s filesystem (%s) that "
                "libvirt does not know as shared storage: libvirt refuses the move with 'Unsafe migration: "
                "Migration without shared storage is unsafe' (it judges by the filesystem type: NFS, GFS2, "
                "OCFS2, CephFS ... are shared; ext4, xfs or a bind mount of them are not). Declare the "
                "directory on the source: shared_filesystems = [\"%s\"] in %s, then restart libvirt there "
                "(systemctl restart libvirtd, or virtqemud)." % (
                    disk["target"], path, host, fstype, mount["mount"], os.path.dirname(real), QEMU_CONF),
                **values))
    return out


@dataclasses.dataclass
class DestFiles:
    """What is known about paths on the destination: ``disks`` maps a path to the facts of
    ``disk_info`` run there (``exists``, ``format``, ``virtual_size``, ``fingerprint``,
    ``kind``, ``backing``); ``pools`` maps a pool's target directory to ``{name,
    available_bytes}`` and ``volumes`` a path to pool volume facts, both from the destination's
    libvirt; ``mounts`` are ``ansible_mounts`` entries; ``manifest`` the kvmops manifest
    entries there."""

    disks: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    pools: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    volumes: dict[str, dict[str, t.Any]] = dataclasses.field(default_factory=dict)
    mounts: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    manifest: list[dict[str, t.Any]] | None = None

    def lookup(self, path: str) -> tuple[dict[str, t.Any] | None, str]:
        """``(facts, source)``: facts ``{exists, format, virtual_size, ...}`` or None when
        nothing tells; source ``dest_disks``, ``pool`` or ``none``."""
        if path in self.disks:
            return self.disks[path], "dest_disks"
        if path in self.volumes:
            return dict(self.volumes[path], exists=True), "pool"
        if os.path.dirname(path) in self.pools:
            return {"exists": False, "path": path}, "pool"
        return None, "none"

    def filesystem(self, path: str) -> dict[str, t.Any] | None:
        """``{mount, device, free_bytes}`` holding ``path``: the longest ``ansible_mounts``
        prefix, else the pool of its directory, else None."""
        best = _images.mount_holding(path, self.mounts)
        if best is not None:
            return {"mount": best["mount"], "device": best.get("device") or best["mount"],
                    "free_bytes": int(best.get("size_available") or 0)}
        pool = self.pools.get(os.path.dirname(path))
        if pool is not None:
            return {"mount": os.path.dirname(path), "device": "pool %s" % pool["name"],
                    "free_bytes": int(pool["available_bytes"])}
        return None


def check_dest_image(disk: dict[str, t.Any], dest: DestFiles, host: str,
                     for_domain: str | None = None) -> dict[str, t.Any]:
    """State of the destination path of one copied disk (cases C01, C03, C04).

    absent -> warning: it must be created first (``disk_image``) unless a libvirt pool covers the
    directory (then libvirt pre-creates it: ok); exists, recorded in the manifest as ours and
    same format and size -> ok (reused); exists and not ours, or another format/size -> error
    naming both geometries; unknown (no facts) -> warning "not verified".
    """
    path = disk.get("path")
    want_fmt, want_size = disk.get("format"), disk.get("virtual_size")
    values = {"target": disk.get("target"), "path": path, "format": want_fmt,
              "virtual_size": want_size}
    seen, source = dest.lookup(path)
    if seen is None:
        return finding("dest_image", "warning", host,
                       "Destination image %s (disk %s) not verified: no facts from %s. Run "
                       "kvmops.migration.disk_info with paths on %s and pass its disks as "
                       "dest_disks." % (path, disk.get("target"), host, host), **values)
    values.update(state="absent", seen=seen, facts_from=source)
    if not seen.get("exists"):
        if source == "pool" or os.path.dirname(path or "") in dest.pools:
            return finding("dest_image", "ok", host,
                           "Destination image %s is absent; libvirt pool of %s on %s will create it."
                           % (path, os.path.dirname(path), host), **values)
        kind = "LV of exactly %s bytes" % want_size if _images.is_block_path(path) else \
            "%s image of exactly %s bytes (sparse)" % (want_fmt, want_size)
        return finding("dest_image", "warning", host,
                       "Destination image %s (disk %s) is absent on %s and no libvirt pool covers "
                       "its directory: create a %s there before migrating "
                       "(kvmops.migration.disk_image), else libvirt fails with 'Storage pool not "
                       "found'." % (path, disk.get("target"), host, kind), **values)
    ours = None
    if dest.manifest is not None:
        # the same identity rule as disk_image: path, inode and the identity attribute
        ours = any(e.get("path") == path and (not for_domain or e.get("for_domain") in (None, for_domain))
                   and _images.fingerprint_matches(e, seen.get("fingerprint"))
                   for e in dest.manifest)
    size, fmt = seen.get("virtual_size"), seen.get("format")
    values.update(state="exists", ours=ours, seen_format=fmt, seen_virtual_size=size)
    geometry = ("dst image %s exists: format %s, virtual size %s bytes; expected %s, %s bytes"
                % (path, fmt, size, want_fmt, want_size))
    matches = size == want_size and (fmt == want_fmt or seen.get("kind") == "block")
    if not matches:
        return finding("dest_image", "error", host,
                       "%s. Never overwritten: remove or rename it on %s if it is stale, or fix "
                       "the size (sizes are bytes, never rounded)." % (geometry, host), **values)
    if ours:
        return finding("dest_image", "ok", host, "Destination image %s exists, created by kvmops "
                       "for this guest, format and size match: reused." % path, **values)
    if ours is None:
        return finding("dest_image", "warning", host,
                       "Destination image %s exists with matching format and size; whether kvmops "
                       "created it is unknown (pass dest_manifest). disk_image reuses only images "
                       "it recorded." % path, **values)
    return finding("dest_image", "error", host,
                   "%s, but kvmops did not create it (not in the manifest): it may be another "
                   "guest's data and is never overwritten. Remove it on %s after checking, or "
                   "migrate to another path." % (geometry.replace("; expected", ", as expected"), host),
                   **values)


def check_backing(disk: dict[str, t.Any], dest: DestFiles, host: str) -> list[dict[str, t.Any]]:
    """For ``copy_storage: incremental``: every backing layer must be on the destination,
    same size (and checksum when both are known) (case C02)."""
    out = []
    for layer in disk.get("backing") or []:
        path = layer.get("path")
        seen, _src = dest.lookup(path)
        values = {"target": disk.get("target"), "path": path,
                  "virtual_size": layer.get("virtual_size"), "seen": seen}
        if seen is None:
            out.append(finding("backing_chain", "warning", host, "Backing image %s of disk %s not "
                               "verified on %s (no facts)." % (path, disk.get("target"), host), **values))
        elif not seen.get("exists"):
            out.append(finding("backing_chain", "error", host,
                               "Backing image %s of disk %s is missing on %s: an incremental copy "
                               "needs the identical base there; copy it first or use "
                               "copy_storage: all." % (path, disk.get("target"), host), **values))
        elif seen.get("virtual_size") != layer.get("virtual_size") or (
                layer.get("checksum") and seen.get("checksum")
                and layer["checksum"] != seen["checksum"]):
            out.append(finding("backing_chain", "error", host,
                               "Backing image %s on %s differs from the source's (virtual size %s "
                               "vs %s bytes, checksum %s vs %s): an incremental copy would corrupt "
                               "the disk." % (path, host, seen.get("virtual_size"),
                                              layer.get("virtual_size"), seen.get("checksum"),
                                              layer.get("checksum")), **values))
        else:
            out.append(finding("backing_chain", "ok", host, "Backing image %s is on %s." % (path, host),
                               **values))
    return out


def check_free_space(disks: list[dict[str, t.Any]], dest: DestFiles, host: str,
                     keep_sparse: bool = True) -> list[dict[str, t.Any]]:
    """Free space per destination filesystem for the copied disks (case C05), by
    ``_images.plan_free_space`` (allocation when sparseness is kept, plus its margin).
    Disks whose destination already holds the image need nothing more."""
    plan_disks, unknown = [], []
    for disk in disks:
        seen, _src = dest.lookup(disk["path"])
        if seen is not None and seen.get("exists"):
            continue
        if _images.is_block_path(disk["path"]):
            continue
        if dest.filesystem(disk["path"]) is None or disk.get("virtual_size") is None:
            unknown.append(disk["path"])
            continue
        plan_disks.append({"path": disk["path"], "target": disk.get("target"),
                           "virtual_size": disk["virtual_size"], "allocation": disk.get("allocation")})
    out = []
    if plan_disks:
        plan = _images.plan_free_space(plan_disks, keep_sparse=keep_sparse,
                                       fs_lookup=dest.filesystem, host=host)
        for fs in plan["filesystems"]:
            if fs["ok"]:
                msg = ("Filesystem %s on %s: %d bytes needed (with margin), %d bytes free."
                       % (fs["mount"], host, fs["needed_bytes"], fs["free_bytes"]))
            else:
                msg = ("Not enough space on %s in filesystem %s (device %s): need %d bytes (%d for "
                       "%s + %d margin), free %d bytes. Free space there or choose another path."
                       % (host, fs["mount"], fs["device"], fs["needed_bytes"], fs["data_bytes"],
                          ", ".join(d["path"] for d in fs["disks"]), fs["margin_bytes"], fs["free_bytes"]))
            out.append(finding("free_space", "ok" if fs["ok"] else "error", host, msg, **fs))
    if unknown:
        out.append(finding("free_space", "warning", host,
                           "Free space for %s on %s not verified: pass dest_mounts (host_info's "
                           "mounts or ansible_mounts, read there) or define a libvirt pool there."
                           % (", ".join(unknown), host), paths=unknown))
    return out


def check_required_files(files: list[dict[str, t.Any]], dest: DestFiles, host: str
                         ) -> list[dict[str, t.Any]]:
    """Each path of ``_domain_xml.required_files`` exists on the destination (case C13)."""
    out = []
    for item in files:
        seen, _src = dest.lookup(item["path"])
        values = dict(item, seen=seen)
        if seen is None:
            out.append(finding("required_file", "warning", host,
                               "%s %s not verified on %s: it is not copied by the migration; pass "
                               "dest_disks (disk_info with paths on %s)." % (
                                   item["what"], item["path"], host, host), **values))
        elif not seen.get("exists") and item["what"] == "nvram":
            out.append(finding("required_file", "warning", host,
                               "nvram %s is missing on %s: libvirt creates it from the firmware's "
                               "template, so the guest's UEFI variables (boot entries) are lost; "
                               "copy the file to the same path there first." % (item["path"], host),
                               **values))
        elif not seen.get("exists"):
            fix = ("copy it to the same path there and verify size and checksum, or eject the media "
                   "first" if item["target"] else "install or copy it there at the same path")
            out.append(finding("required_file", "error", host,
                               "%s %s is missing on %s: migration does not copy it; %s."
                               % (item["what"], item["path"], host, fix), **values))
        elif item.get("virtual_size") is not None and seen.get("virtual_size") not in (
                None, item["virtual_size"]):
            out.append(finding("required_file", "error", host,
                               "%s %s on %s has %s bytes, the source's %s: not the same media."
                               % (item["what"], item["path"], host, seen.get("virtual_size"),
                                  item["virtual_size"]), **values))
        else:
            out.append(finding("required_file", "ok", host, "%s %s is present on %s." % (
                item["what"], item["path"], host), **values))
    return out


# --------------------------------------------------------------------------------------------
# Networks (C08)
# --------------------------------------------------------------------------------------------

def check_networks(nics: list[dict[str, t.Any]], lookup: t.Callable[[str, str], dict[str, t.Any]],
                   network_map: dict[str, str], host: str) -> list[dict[str, t.Any]]:
    """Every interface's bridge / network / direct device exists (and a network is active) on
    the destination, after ``network_map`` ``{source name: destination name}``.

    :param lookup: ``(kind, name) -> {exists: bool|None, active: bool|None}`` (None: unknown)
        for kind ``bridge``, ``network`` or ``direct``.
    """
    out = []
    for nic in nics:
        kind = {"bridge": "bridge", "network": "network", "direct": "direct"}.get(nic.get("type"))
        name = nic.get("source")
        if kind is None or not name:
            out.append(finding("network", "ok", host, "Interface %s (type %s) needs nothing on %s."
                               % (nic.get("mac"), nic.get("type"), host), mac=nic.get("mac"),
                               type=nic.get("type")))
            continue
        dst_name = network_map.get(name, name)
        state = lookup(kind, dst_name)
        values = {"mac": nic.get("mac"), "type": kind, "source": name, "dest_source": dst_name,
                  "exists": state.get("exists"), "active": state.get("active")}
        label = "%s %s%s" % (kind, dst_name, " (mapped from %s)" % name if dst_name != name else "")
        if state.get("exists") is None:
            out.append(finding("network", "warning", host, "Could not verify %s for NIC %s on %s: %s"
                               % (label, nic.get("mac"), host, state.get("why", "unknown")), **values))
        elif not state["exists"]:
            out.append(finding("network", "error", host,
                               "The %s of NIC %s does not exist on %s: create it there, or map it "
                               "with network_map {%s: <name on %s>}." % (
                                   label, nic.get("mac"), host, name, host), **values))
        elif state.get("active") is False:
            out.append(finding("network", "error", host,
                               "The %s of NIC %s is not active on %s: start it there (virsh "
                               "net-start %s; net-autostart)." % (label, nic.get("mac"), host, dst_name),
                               **values))
        else:
            out.append(finding("network", "ok", host, "The %s of NIC %s is present on %s." % (
                label, nic.get("mac"), host), **values))
    return out


def libvirt_network_lookup(conn: t.Any, lv: t.Any,
                           host_interfaces: list[str] | None = None) -> t.Callable[[str, str], dict[str, t.Any]]:
    """A :func:`check_networks` lookup over a destination connection: networks by
    ``networkLookupByName``/``isActive``; bridges and direct devices in ``host_interfaces``
    (the destination's ``ansible_interfaces`` fact, when the caller gathered it), else by
    ``interfaceLookupByName`` (libvirt's interface driver, absent on many hosts) or as the
    bridge of an active network."""
    def lookup(kind: str, name: str) -> dict[str, t.Any]:
        if kind == "network":
            try:
                net = conn.networkLookupByName(name)
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                if _libvirt.libvirt_error_code(err) == getattr(lv, "VIR_ERR_NO_NETWORK", None):
                    return {"exists": False, "active": None}
                return {"exists": None, "why": _libvirt.libvirt_error_detail(err)}
            try:
                return {"exists": True, "active": bool(net.isActive())}
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                return {"exists": True, "active": None, "why": _libvirt.libvirt_error_detail(err)}
        if host_interfaces is not None:
            return {"exists": name in host_interfaces, "active": None}
        try:
            iface = conn.interfaceLookupByName(name)
            return {"exists": True, "active": bool(iface.isActive())}
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            code = _libvirt.libvirt_error_code(err)
            if code != getattr(lv, "VIR_ERR_NO_INTERFACE", None):
                return {"exists": None, "why": "libvirt cannot list host interfaces (%s)"
                        % _libvirt.libvirt_error_detail(err)}
        if kind == "bridge":
            try:
                for net in conn.listAllNetworks(0):
                    if net.bridgeName() == name:
                        return {"exists": True, "active": bool(net.isActive())}
            except Exception as err:  # a network without a bridge (macvtap, hostdev) has no name
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
        return {"exists": False, "active": None}
    return lookup


# --------------------------------------------------------------------------------------------
# Transport: names (C09), ports, TLS
# --------------------------------------------------------------------------------------------

def resolve(name: str) -> list[str]:
    """Addresses ``name`` resolves to from this host (``getaddrinfo``), [] when it does not."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def is_loopback(address: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    return False


def is_local_address(address: str) -> bool:
    """True when ``address`` belongs to this host: binding a socket to it succeeds
    (EADDRNOTAVAIL otherwise). Nothing listens; the socket is closed at once."""
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_loopback:
            return True
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((str(ip), 0))
            except OSError:
                return False
            return True
    return False


def check_names(names: dict[str, bool], resolver: t.Callable[[str], list[str]], host: str
                ) -> list[dict[str, t.Any]]:
    """Names resolve from the source to non-loopback addresses (case C09).

    :param names: name -> True when this tool's migration uses it (dest_host, the URI's host:
        error when it fails) or False when only other tools would (the destination's own
        host name, which ``virsh migrate`` without ``--migrateuri`` uses: warning).
    """
    out = []
    for name, used in names.items():
        if not name:
            continue
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(name.strip("[]"))
            continue  # a literal address needs no resolution
        addresses = resolver(name)
        loop = [a for a in addresses if is_loopback(a)]
        values = {"name": name, "addresses": addresses, "used_by_migration": used}
        status = "error" if used else "warning"
        why = ("" if used else " This migration passes explicit migration and disk URIs built from "
               "dest_host, so it does not depend on it; 'virsh migrate' without --migrateuri does "
               "and fails with \"address resolution failed for %s:49152\"." % name)
        if not addresses:
            out.append(finding("name_resolution", status, host,
                               "%s does not resolve from the source: add it to DNS or /etc/hosts on "
                               "the source.%s" % (name, why), **values))
        elif loop:
            out.append(finding("name_resolution", status, host,
                               "%s resolves to the loopback address %s from the source (an "
                               "/etc/hosts line like '127.0.1.1 %s' is the classic cause): map it to "
                               "the destination's real address.%s" % (name, ", ".join(loop), name, why),
                               **values))
        else:
            out.append(finding("name_resolution", "ok", host, "%s resolves to %s." % (
                name, ", ".join(addresses)), **values))
    return out


def tcp_probe(address: str, port: int, timeout_s: float) -> str:
    """``open`` (a listener accepted), ``refused``, ``timeout`` or ``unreachable``."""
    try:
        with socket.create_connection((address.strip("[]"), port), timeout=timeout_s):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED,):
            return "refused"
        if err.errno in (errno.ETIMEDOUT,):
            return "timeout"
        return "unreachable"


def check_transport_port(address: str, port: int, what: str, result: str, host: str
                         ) -> dict[str, t.Any]:
    """The libvirt transport port (ssh or tls) must accept a connection from the source."""
    values = {"address": address, "port": port, "result": result}
    if result == "open":
        return finding("transport_port", "ok", host, "%s port %d on %s accepts connections from the "
                       "source." % (what, port, address), **values)
    return finding("transport_port", "error", host,
                   "%s port %d on %s is not reachable from the source (%s): start the service there "
                   "and open the port in its firewall." % (what, port, address, result), **values)


def check_data_port(address: str, port: int, what: str, result: str, host: str,
                    listener: dict[str, t.Any] | None = None, ignore_blocked: bool = False
                    ) -> dict[str, t.Any]:
    """A migration or NBD port: what can honestly be said (see the module docstring).

    :param result: of :func:`_probe.probe_port` (``open``, ``open_other``, ``refused``,
        ``timeout``, ``unreachable``), or ``unavailable`` when the listener held no port.
    :param listener: the ``preflight_dest`` entry of this port (``{requested, port, state,
        reason}``): a kvmops listener held it, so a reset means a firewall rejects (``closed``)
        and no answer means one drops it (``filtered``). None: a plain connect, where a reset
        is not verifiable (nothing listens before the migration).
    :param ignore_blocked: a closed, filtered or unreachable port is a warning, not an error
        (the operator knows the firewall opens the ports only for the move).
    """
    verified = listener is not None
    shown = (listener or {}).get("port") or port
    label = "%s port %d on %s" % (what, shown, address)
    if listener is not None and listener.get("requested") not in (None, shown):
        label += " (%d is in use there; libvirt takes the next free one)" % listener["requested"]
    state = {"open": "open", "open_other": "other", "refused": "closed", "timeout": "filtered",
             "unreachable": "unreachable", "unavailable": "unavailable"}.get(result, result)
    values = {"address": address, "port": shown, "requested": (listener or {}).get("requested", port),
              "result": result, "state": state, "verified": result == "open",
              "probe": "listener" if verified else "connect"}
    if result == "open":
        return finding("data_port", "ok", host, "%s: %s answered, the route is open." % (
            label, "the kvmops listener" if verified else "a listener"), **values)
    if result == "refused" and not verified:
        return finding("data_port", "ok", host,
                       "%s: the host answered (connection refused), not verifiable until the migration: QEMU "
                       "listens there only during an incoming migration, and a firewall REJECT rule answers "
                       "the same way. Make sure the firewall of %s accepts TCP 49152-49215 from the source."
                       % (label, host), **values)
    if result == "unavailable":
        why = (listener or {}).get("reason") or "no port held"
        status = "error" if why.startswith("every port") else "warning"
        msg = ("%s: not verified, the probe on %s could not listen (%s)%s." % (
            label, host, why, ": libvirt fails the same way ('Unable to find an unused port in range'); "
            "wait for the other incoming migrations to end or widen migration_port_max in qemu.conf"
            if status == "error" else ""))
        return finding("data_port", status, host, msg, **values)
    if result == "open_other":
        msg = ("%s: something answered, but not the kvmops listener that holds the port on %s: a NAT or "
               "proxy sends it elsewhere, so the migration stream would not reach %s's QEMU. Fix the "
               "forwarding, or give dest_host the address the source reaches %s at directly."
               % (label, host, host, host))
    elif result == "refused":
        msg = ("%s is closed: the kvmops listener holds it on %s, yet the connection was reset, so a firewall "
               "rejects it (a REJECT rule). The move would fail after the images were created: %s."
               % (label, host, _OPEN_PORTS % host))
    elif result == "timeout":
        msg = ("%s is filtered: no answer at all (timeout), so a firewall drops it. The move would fail after "
               "the images were created: %s." % (label, _OPEN_PORTS % host))
    else:
        msg = "%s: host unreachable from the source: check routing to %s." % (label, address)
    if ignore_blocked:
        return finding("data_port", "warning", host, "%s (Accepted: ignore_blocked / "
                       "migrate_guest_ignore_blocked_migration_ports is set.)" % msg, **values)
    return finding("data_port", "error", host, msg, **values)


def check_tls_files(files: t.Sequence[str], purpose: str, exists: t.Callable[[str], bool],
                    host: str) -> dict[str, t.Any]:
    """TLS material present on the source (https://libvirt.org/kbase/tlscerts.html)."""
    missing = [f for f in files if not exists(f)]
    values = {"files": list(files), "missing": missing, "purpose": purpose}
    if missing:
        return finding("tls_files", "error", host, "TLS for %s is asked, but %s missing on the source: "
                       "install the CA certificate and this host's client certificate and key there "
                       "(https://libvirt.org/kbase/tlscerts.html)." % (purpose, ", ".join(missing)),
                       **values)
    return finding("tls_files", "ok", host, "TLS files for %s are present on the source (the "
                   "destination's server certificate is checked when it connects)." % purpose, **values)


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------

def version_text(number: int | None) -> str:
    """:func:`_libvirt.version_text`, ``unknown`` when the host did not say (None or 0)."""
    return _libvirt.version_text(number or None) or "unknown"


def check_versions(src: dict[str, int | None], dst: dict[str, int | None], wanted: t.Sequence[str],
                   host: str) -> list[dict[str, t.Any]]:
    """libvirt and QEMU on both sides, and the libvirt the chosen options need.

    :param src: ``{libvirt, qemu}`` version numbers (``getLibVersion``, ``getVersion``).
    :param wanted: keys of :data:`FEATURE_MIN_LIBVIRT`.
    """
    values = {"source_libvirt": version_text(src.get("libvirt")),
              "source_qemu": version_text(src.get("qemu")),
              "dest_libvirt": version_text(dst.get("libvirt")), "dest_qemu": version_text(dst.get("qemu"))}
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
        fvalues = {"feature": key, "needs_libvirt": version_text(need), **values}
        if low:
            status = "warning" if key == "detect_zeroes" else "error"
            out.append(finding("feature_support", status, host,
                               "%s needs libvirt %s or later; %s %s older%s." % (
                                   what, version_text(need), " and ".join(low),
                                   "is" if len(low) == 1 else "are",
                                   ": the migrate module skips it" if status == "warning"
                                   else ": upgrade libvirt or do without it"), **fvalues))
        else:
            out.append(finding("feature_support", "ok", host, "%s is supported on both hosts." % what,
                               **fvalues))
    return out


# --------------------------------------------------------------------------------------------
# Orchestration: read both hosts, run every check
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PreflightOptions:
    """What the user asked for (the module's options)."""

    domain: str
    dest_host: str
    dest_uri: str | None = None
    source_uri: str = _libvirt.DEFAULT_URI
    dest_user: str = "root"
    transport: str = "ssh"
    group: list[dict[str, str]] = dataclasses.field(default_factory=list)
    copy_storage: str = "all"
    disks: list[str] | None = None
    shared_disks: list[str] = dataclasses.field(default_factory=list)
    network_map: dict[str, str] = dataclasses.field(default_factory=dict)
    require_state: str = "running"
    #: True: TLS required; False: plain (needs allow_insecure_transport); None: auto (TLS when
    #: both hosts hold valid certificates of one CA, else an error unless allow_insecure_transport)
    tls: bool | None = None
    allow_insecure_transport: bool = False
    #: ``host_info``'s ``tls`` of the destination (:func:`_tls.read_host_tls`); None: not read
    dest_tls: dict[str, t.Any] | None = None
    #: the name the destination's certificate is checked against (default: dest_host)
    tls_destination: str | None = None
    #: the setting named in the transport messages (the role passes its variable's name)
    insecure_var: str = _tls.INSECURE_OPTION
    migrate_port: int = DEFAULT_MIGRATE_PORT
    disks_port: int = DEFAULT_DISKS_PORT
    port_timeout_s: float = 3.0
    dest_name: str | None = None
    detect_zeroes: bool = True
    parallel_connections: int | None = None
    postcopy: bool = False
    compression: list[str] = dataclasses.field(default_factory=list)
    cleanup_leftover: bool = False
    dest_disks: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    dest_mounts: list[dict[str, t.Any]] = dataclasses.field(default_factory=list)
    dest_manifest: list[dict[str, t.Any]] | None = None
    dest_interfaces: list[str] | None = None
    #: where the caller already found the guest: ``{source: host name, hosts: {host: state}}``
    #: (the role's locate step); given, the group is not searched again
    located: dict[str, t.Any] | None = None
    #: what ``preflight_dest`` set up on the destination: ``{probe_id, ports: [{requested, port,
    #: state, reason}], markers: [{dir, path, state, reason}]}``; None: plain connects, and
    #: shared storage shown by inode and size only
    dest_probe: dict[str, t.Any] | None = None
    #: a closed, filtered or unreachable data port is a warning, not an error
    ignore_blocked_ports: bool = False

    def validate(self) -> None:
        """:raises KvmopsError: an option out of range, named."""
        if not self.dest_host or not self.dest_host.strip():
            raise KvmopsError("dest_host is empty: give the destination's inventory address.")
        if self.copy_storage not in _migration_plan.COPY_STORAGE_CHOICES:
            raise KvmopsError("copy_storage must be one of %s, got %r." % (
                ", ".join(_migration_plan.COPY_STORAGE_CHOICES), self.copy_storage))
        if self.located is not None and self.group:
            raise KvmopsError("Give either group (search the hosts for the guest) or located (where it "
                              "was already found), not both.")
        if self.located is not None and not self.located.get("source"):
            raise KvmopsError("located needs source: the host name the guest was found on.")
        if self.require_state not in REQUIRE_STATES:
            raise KvmopsError("require_state must be one of %s, got %r." % (
                ", ".join(REQUIRE_STATES), self.require_state))
        for name in ("migrate_port", "disks_port"):
            if not 0 < int(getattr(self, name)) < 65536:
                raise KvmopsError("%s must be a TCP port (1-65535), got %s." % (name, getattr(self, name)))

    def wanted_features(self) -> list[str]:
        out = []
        if self.detect_zeroes and self.copy_storage != "none":
            out.append("detect_zeroes")
        if self.parallel_connections:
            out.append("parallel")
        if self.postcopy:
            out.append("postcopy")
        if set(self.compression) & {"zlib", "zstd"}:
            out.append("zlib_zstd")
        return out


@dataclasses.dataclass
class Probes:
    """Injectable access to the world outside libvirt (tests pass fakes)."""

    connect: t.Callable[..., t.Any] = _libvirt.connection
    resolver: t.Callable[[str], list[str]] = resolve
    tcp: t.Callable[[str, int, float], str] = tcp_probe
    #: a connect that says hello to a ``preflight_dest`` listener (:func:`_probe.probe_port`)
    probe_port: t.Callable[[str, int, str | None, float], str] = _probe.probe_port
    marker_seen: t.Callable[[dict[str, t.Any], str], bool] = _probe.marker_seen
    exists: t.Callable[[str], bool] = os.path.exists
    is_local: t.Callable[[str], bool] = is_local_address
    #: the text of a file of the source, None when unreadable (``/proc/self/mounts``, qemu.conf)
    read_text: t.Callable[[str], str | None] = _tls.read_text
    #: the source's own TLS material (:func:`_tls.read_host_tls`) and the wall clock (epoch s)
    tls_material: t.Callable[[], dict[str, t.Any]] = _tls.read_host_tls
    now: t.Callable[[], float] = time.time
    runner: t.Any = None
    lv: t.Any = None


def _host_of(uri: str) -> str | None:
    with contextlib.suppress(ValueError):
        return urlsplit(uri).hostname
    return None


def _transport_port(uri: str) -> tuple[str, int | None]:
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ("tls" if parts.hostname else "")
    default = {"ssh": 22, "libssh": 22, "libssh2": 22, "tls": 16514, "tcp": 16509}.get(scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return scheme, port


def _open(stack: contextlib.ExitStack, probes: Probes, uri: str) -> tuple[t.Any, str | None]:
    try:
        return stack.enter_context(probes.connect(uri)), None
    except KvmopsError as err:
        return None, str(err)


def _host_facts(conn: t.Any, uri: str) -> dict[str, t.Any]:
    with _libvirt.libvirt_errors("read the host facts", host=uri):
        caps = _cpu.parse_capabilities(conn.getCapabilities())
        facts: dict[str, t.Any] = {"uri": uri, "caps": caps, "uuid": caps.uuid,
                                   "hostname": str(conn.getHostname()),
                                   "libvirt": int(conn.getLibVersion()), "qemu": int(conn.getVersion())}
    return facts


def _dest_storage(dconn: t.Any, opts: PreflightOptions, paths: list[str], lv: t.Any) -> DestFiles:
    """Destination file facts: the caller's (``dest_disks``, ``dest_mounts``,
    ``dest_manifest``), else the destination's libvirt pools (read, never refreshed)."""
    dest = DestFiles(disks={d["path"]: d for d in opts.dest_disks if d.get("path")},
                     mounts=list(opts.dest_mounts), manifest=opts.dest_manifest)
    if dconn is None:
        return dest
    try:
        for pool in dconn.listAllStoragePools(0):
            target = _domain_xml.from_string(pool.XMLDesc(0), remove_blank_text=False).findtext("target/path")
            if target and pool.isActive():
                dest.pools[target.rstrip("/")] = {"name": pool.name(), "available_bytes": int(pool.info()[3])}
    except Exception as err:  # no storage driver there: paths without facts stay "not verified"
        if not _libvirt.is_libvirt_error(err, lv):
            raise
    for path in paths:
        if path in dest.disks:
            continue
        try:
            vol = dconn.storageVolLookupByPath(path)
            info = vol.info()
            vol_xml = vol.XMLDesc(0)
        except Exception as err:  # not a volume there, or unreadable: the path stays "not verified"
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            continue
        fmt_el = _domain_xml.from_string(vol_xml, remove_blank_text=False).find("target/format")
        fmt = fmt_el.get("type") if fmt_el is not None else None
        dest.volumes[path] = {"path": path, "virtual_size": int(info[1]), "allocation": int(info[2]),
                              "format": fmt}
    return dest


def _memory(dconn: t.Any, lv: t.Any, host: str = "the destination") -> tuple[int, int | None]:
    """``(free bytes, available bytes or None)`` of the destination (virNodeGetFreeMemory,
    virNodeGetMemoryStats). :raises KvmopsError: the free memory could not be read."""
    with _libvirt.libvirt_errors("read the free memory", host=host):
        free = int(dconn.getFreeMemory())
    try:
        stats = dconn.getMemoryStats(getattr(lv, "VIR_NODE_MEMORY_STATS_ALL_CELLS", -1), 0)
    except Exception as err:  # not every driver reports it: reclaimable memory stays unknown
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return free, None
    return free, 1024 * sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached"))


def run_preflight(opts: PreflightOptions, probes: Probes | None = None) -> dict[str, t.Any]:
    """Read both hosts and run every check; never changes anything.

    :returns: :func:`report` plus ``domain``, ``source``, ``destination``, ``dest_uri``,
        ``copy_set``, ``already_migrated`` and ``checked`` (``{disks: [{target, path, format,
        virtual_size}], cpu}``: the copy set with the geometry and the CPU fingerprint the checks
        saw, for ``migrate``'s ``expect_disks``/``expect_cpu``; ``cpu`` None before the XML was read).
    :raises KvmopsError: only for invalid options; every failure to read a host is a finding.
    """
    probes = probes or Probes()
    opts.validate()
    lv = _libvirt.binding(probes.lv)
    dest_uri = opts.dest_uri or _migration_plan.build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    dest = opts.dest_host
    src_label = opts.source_uri
    findings: list[dict[str, t.Any]] = []
    result: dict[str, t.Any] = {"domain": opts.domain, "source": src_label, "destination": dest,
                                "dest_uri": dest_uri, "copy_set": [], "shared_detected": [],
                                "already_migrated": False, "checked": {"disks": [], "cpu": None},
                                "transport": None}

    probe = opts.dest_probe or {}
    probe_id = probe.get("probe_id")
    held = {int(p["requested"]): p for p in probe.get("ports") or [] if p.get("requested") is not None}
    probed: dict[int, str] = {}

    def data_port(requested: int) -> tuple[str, dict[str, t.Any] | None]:
        """(result, listener entry or None) of the port the move asks for."""
        entry = held.get(int(requested))
        if entry is None:
            return probes.tcp(opts.dest_host, requested, opts.port_timeout_s), None
        if entry.get("state") != "listening" or not entry.get("port"):
            return "unavailable", entry
        if int(requested) not in probed:
            probed[int(requested)] = probes.probe_port(opts.dest_host, int(entry["port"]), probe_id,
                                                       opts.port_timeout_s)
        return probed[int(requested)], entry

    def done() -> dict[str, t.Any]:
        for requested in held:  # every port the listener holds is probed once: then it ends
            if held[requested].get("state") == "listening" and requested not in probed:
                data_port(requested)
        out = dict(result)
        out.update(report(findings))
        return out

    with contextlib.ExitStack() as stack:
        sconn, serr = _open(stack, probes, opts.source_uri)
        if sconn is None:
            findings.append(finding("source_connection", "error", src_label, serr or "no connection"))
            return done()
        scheme, tport = _transport_port(dest_uri)
        uri_host = _host_of(dest_uri) or opts.dest_host
        if tport:
            findings.append(check_transport_port(uri_host, tport, "libvirt %s transport" % scheme,
                                                 probes.tcp(uri_host, tport, opts.port_timeout_s), dest))
        if scheme == "tls":
            findings.append(check_tls_files(LIBVIRT_TLS_CLIENT_FILES, "the libvirt connection (qemu+tls)",
                                            probes.exists, src_label))
        dconn, derr = _open(stack, probes, dest_uri)
        if dconn is None:
            findings.append(finding("dest_connection", "error", dest, derr or "no connection",
                                    uri=dest_uri))
        else:
            findings.append(finding("dest_connection", "ok", dest, "Connected to %s as the migration "
                                    "will (%s)." % (dest, dest_uri), uri=dest_uri))

        # Where is the guest (C11, group)?
        try:
            dom = _libvirt.find_domain(sconn, opts.domain, lv=lv)
            info = _migration.describe(dom, lv, src_label) if dom is not None else None
        except KvmopsError as err:
            findings.append(finding("guest_location", "error", src_label, str(err)))
            return done()
        found = {src_label: info}
        if opts.located is not None:  # found by the caller (the role's locate step): not searched again
            found = {str(h): {"state": str(st)} for h, st in (opts.located.get("hosts") or {}).items()}
            found[src_label] = info
            found.pop(str(opts.located["source"]), None)
        for member in opts.group:
            if member.get("uri") in (opts.source_uri, dest_uri) or member.get("name") == opts.dest_host:
                continue  # the destination is judged by the C11 check
            label = member.get("name") or member["uri"]
            with contextlib.ExitStack() as gstack:
                gconn, gerr = _open(gstack, probes, member["uri"])
                try:
                    gdom = _libvirt.find_domain(gconn, opts.domain, lv=lv) if gconn is not None else None
                    if gconn is not None:
                        found[label] = _migration.describe(gdom, lv, label) if gdom else None
                except KvmopsError as err:
                    gconn, gerr = None, str(err)
                if gconn is None:
                    findings.append(finding("group_host", "warning", label,
                                            "Group host not searched for the guest: %s" % gerr))
        try:
            src_facts = _host_facts(sconn, src_label)
            dst_facts = _host_facts(dconn, dest_uri) if dconn is not None else None
        except KvmopsError as err:
            findings.append(finding("host_facts", "error", dest, str(err)))
            return done()
        dest_name = opts.dest_name or (info["name"] if info else opts.domain)
        if dconn is not None:
            uuid_key = info["uuid"] if info else (opts.domain if _libvirt.looks_like_uuid(opts.domain)
                                                  else None)
            try:
                d_by_name = _libvirt.find_domain(dconn, dest_name, by="name", lv=lv)
                d_by_uuid = _libvirt.find_domain(dconn, uuid_key, by="uuid", lv=lv) if uuid_key else None
                by_name = _migration.describe(d_by_name, lv, dest) if d_by_name is not None else None
                by_uuid = _migration.describe(d_by_uuid, lv, dest) if d_by_uuid is not None else None
            except KvmopsError as err:
                findings.append(finding("destination_domain", "error", dest, "The domains on %s could not "
                                        "be read, so a conflict (C11) cannot be ruled out: %s" % (dest, err)))
                return done()
            dd = check_destination_domain(info, by_name, by_uuid, dest_name, dest, opts.cleanup_leftover)
            findings.append(dd)
            if dd["values"]["already_migrated"]:
                result["already_migrated"] = True
                return done()
            if info is None:
                return done()
        findings.append(check_location(opts.domain, src_label, found))
        if info is None:
            return done()
        findings.append(check_state(info, opts.require_state, src_label))
        if dst_facts is None:
            return done()

        active = bool(info["active"])
        with _libvirt.libvirt_errors("read the XML of domain %s" % info["name"], host=src_label):
            xml = _cpu.domain_xml(dom, migratable=active, inactive=not active)
        facts = _domain_xml.domain_facts(xml)
        result["checked"]["cpu"] = _domain_xml.cpu_fingerprint(xml)
        findings.append(check_distinct_hosts(
            {"host": src_label, "uuid": src_facts["uuid"], "hostname": src_facts["hostname"]},
            {"host": dest, "uuid": dst_facts["uuid"], "hostname": dst_facts["hostname"]},
            opts.dest_host, probes.is_local(opts.dest_host.strip("[]"))
            if _is_ip(opts.dest_host) else any(probes.is_local(a) for a in probes.resolver(opts.dest_host))))
        findings.extend(check_cpu_all(dconn, xml, dst_facts["caps"], dest))
        if active:
            try:
                free, available = _memory(dconn, lv, dest)
            except KvmopsError as err:
                findings.append(finding("memory", "error", dest, str(err)))
            else:
                findings.append(check_memory(info["name"], int(facts.get("memory_bytes") or 0), free,
                                             available, dest))

        # Storage
        runner = probes.runner or _images.SubprocessRunner()
        disks = [_images.describe_disk(d, runner, force_share=True) if d.get("path") and probes.exists(d["path"])
                 else dict(d) for d in facts["disks"]]
        facts["disks"] = disks
        req = _domain_xml.required_files(facts)
        dest_files = _dest_storage(dconn, opts, [d["path"] for d in disks if d.get("path")]
                                   + [r["path"] for r in req] + [b["path"] for d in disks
                                                                 for b in d.get("backing") or [] if b.get("path")], lv)
        proof = shared_proof(disks, dest_files, probe, probes.marker_seen, dest)
        # a disk shown shared is not copied (copying it would write the image onto itself)
        detected = [d["target"] for d in disks if d.get("copy") and d["target"] in proof
                    and d["target"] not in opts.shared_disks] if opts.copy_storage != "none" else []
        forced = [tg for tg in detected if tg in (opts.disks or [])]
        for target in forced:
            findings.append(finding("shared_storage", "error", dest,
                                    "Disk %s is listed in disks to copy, but it is on storage shared with %s (%s): "
                                    "copying it would write the image onto itself. Leave it out of disks."
                                    % (target, dest, proof[target]), target=target))
        shared = list(opts.shared_disks) + [tg for tg in detected if tg not in forced]
        result["shared_detected"] = [tg for tg in detected if tg not in forced]
        copy_findings = check_copy_set(disks, opts.copy_storage, shared, proof, dest, opts.disks)
        findings.extend(copy_findings)
        copied = copy_findings[0]["values"].get("copy", []) if copy_findings[0]["status"] == "ok" else []
        result["copy_set"] = copied
        not_copied = copied if copied or opts.copy_storage == "none" else _domain_xml.copy_set(disks, shared)
        findings.extend(check_cache_modes(disks, not_copied, dest, src_facts.get("qemu")))
        if active:
            kept = [d["target"] for d in disks if d["target"] not in copied and (
                d["target"] in shared or opts.copy_storage == "none")]
            findings.extend(check_shared_safety(
                disks, copied, kept, _host.parse_mounts(probes.read_text(PROC_MOUNTS) or ""),
                shared_filesystems(probes.read_text(QEMU_CONF)), dest))
        if copied and not active:
            findings.append(finding("copy_set", "error", dest, "Guest %s is shut off: libvirt's offline "
                                    "migration cannot copy disks (%s). Start it and migrate live, or "
                                    "copy the images yourself and use copy_storage: none."
                                    % (info["name"], ", ".join(copied)), copy=copied))
        copy_disks = [d for d in disks if d["target"] in copied]
        result["checked"]["disks"] = [{k: d.get(k) for k in ("target", "path", "format", "virtual_size")}
                                      for d in copy_disks]
        for disk in copy_disks:
            findings.append(check_dest_image(disk, dest_files, dest, info["name"]))
            if opts.copy_storage == "incremental":
                findings.extend(check_backing(disk, dest_files, dest))
        findings.extend(check_free_space(copy_disks, dest_files, dest))
        findings.extend(check_required_files(req, dest_files, dest))

        # Networks
        lookup = libvirt_network_lookup(dconn, lv, opts.dest_interfaces)
        findings.extend(check_networks(facts["interfaces"], lookup, opts.network_map, dest))

        # Names, ports, TLS
        names = {dst_facts["hostname"]: False}
        names.update({opts.dest_host: True, uri_host: True})
        findings.extend(check_names(names, probes.resolver, dest))
        if active:
            res, entry = data_port(opts.migrate_port)
            findings.append(check_data_port(opts.dest_host, opts.migrate_port, "Migration", res, dest, entry,
                                            opts.ignore_blocked_ports))
            if copied:
                res, entry = data_port(opts.disks_port)
                findings.append(check_data_port(opts.dest_host, opts.disks_port, "Disk (NBD)", res, dest, entry,
                                                opts.ignore_blocked_ports))
        findings.extend(check_transport(opts, probes, live=active, copies_disks=bool(copied),
                                        dest_uri=dest_uri, src_label=src_label, dest=dest, result=result))

        wanted = opts.wanted_features()
        if copied and getattr(lv, "VIR_MIGRATE_PARAM_DISKS_URI", None) is not None:
            wanted.append("disks_uri")  # _migration_plan.build_params uses it when the binding has it
        findings.extend(check_versions(src_facts, dst_facts, wanted, dest))
    return done()


def check_transport(opts: PreflightOptions, probes: Probes, *, live: bool, copies_disks: bool, dest_uri: str,
                    src_label: str, dest: str, result: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Which transport will protect the move's streams (:func:`_tls.decide`), from both hosts'
    TLS material (:func:`_tls.pair_faults`); sets ``result["transport"]``
    (:meth:`_tls.Transport.as_result`)."""
    out: list[dict[str, t.Any]] = []
    faults: list[_tls.Fault] = []
    if live and opts.tls is not False:
        if opts.dest_tls is None:
            out.append(finding("tls_certificates", "warning", dest, "The destination's TLS material was not "
                               "read (give dest_tls: host_info's tls of the destination): only the source's "
                               "certificates are checked."))
        faults = _tls.pair_faults(probes.tls_material(), opts.dest_tls, src_label=src_label, dst_label=dest,
                                  dest_name=opts.tls_destination or opts.dest_host, now=probes.now())
    decided = _tls.decide(opts.tls, opts.allow_insecure_transport, live=live, copies_disks=copies_disks,
                          dest_uri=dest_uri, faults=faults, insecure_var=opts.insecure_var)
    for status, check, msg, host in decided.findings:
        out.append(finding(check, status, host or dest, msg))
    result["transport"] = decided.as_result()
    return out


def _is_ip(text: str) -> bool:
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text.strip().strip("[]"))
        return True
    return False


def options_from_params(params: dict[str, t.Any]) -> PreflightOptions:
    """:class:`PreflightOptions` from the ``preflight`` module's parameters (``ports`` is
    ``{migrate, disks, timeout_s}``)."""
    values = {k: v for k, v in params.items()
              if k in {f.name for f in dataclasses.fields(PreflightOptions)} and v is not None}
    ports = params.get("ports") or {}
    values["migrate_port"] = int(ports.get("migrate") or DEFAULT_MIGRATE_PORT)
    values["disks_port"] = int(ports.get("disks") or DEFAULT_DISKS_PORT)
    values["port_timeout_s"] = float(ports.get("timeout_s") or 3.0)
    values["ignore_blocked_ports"] = bool(ports.get("ignore_blocked"))
    return PreflightOptions(**values)


def run_module(params: dict[str, t.Any], probes: Probes | None = None) -> dict[str, t.Any]:
    """Backend of the ``preflight`` module: ``{changed: False, report: {ok, findings},
    summary, msg, ...}``; ``failed_checks`` lists the errors' check names."""
    result = run_preflight(options_from_params(params), probes)
    rep = {"ok": result.pop("ok"), "findings": result.pop("findings")}
    summary = result.pop("summary")
    return dict(result, changed=False, report=rep, summary=summary, msg=summary["msg"],
                failed_checks=sorted({f["check"] for f in rep["findings"] if f["status"] == "error"}))
