# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pre-flight checks of storage, one small function per check, each returning one finding or
a list of findings (:mod:`_findings`) for :func:`_preflight.report`.

The copy set and the cache modes (C12), shared storage (shown, and accepted by the source's
libvirt), the destination's images (C01, C03, C04), backing chains (C02), free space (C05) and
the files a guest needs that the migration does not copy (C13). What is known about the
destination's paths is a :class:`DestFiles`, filled by the runner
(:func:`_preflight.run_preflight`) from the caller's facts or the destination's storage pools.

Shared storage
--------------
A disk whose directory ``preflight_dest`` marked on the destination and whose marker is seen on
the source is on shared storage (Nova's test): it is not copied (``shared_detected``). A disk
that is not copied must be on a filesystem the source's libvirt knows as shared, or under
``shared_filesystems`` of its qemu.conf, or libvirt refuses the move as unsafe.

Relies on: ``qemu-img info -U`` of the source's images (``_disk_info.describe_disk``, run by the
runner); libvirt's rules of qemuMigrationSrcIsSafe (cache modes, virFileIsSharedFS filesystem
types, qemu.conf ``shared_filesystems``) applied to the source's ``/proc/self/mounts``; libvirt
``virStorageVolLookupByPath`` and ``virConnectListAllStoragePools`` (pool ``info()``) of the
destination behind :class:`DestFiles`.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _conf
from ansible_collections.kvmops.migration.plugins.module_utils import _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _manifest
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils import _storage
from ansible_collections.kvmops.migration.plugins.module_utils import _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._findings import finding


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


# --------------------------------------------------------------------------------------------
# The copy set, cache modes and shared storage (C12)
# --------------------------------------------------------------------------------------------

def shared_proof(disks: list[dict[str, t.Any]], dest: "DestFiles", probe: dict[str, t.Any] | None,
                 marker_seen: t.Callable[[dict[str, t.Any], str], bool], host: str) -> dict[str, str]:
    """Target -> why its image is on storage both hosts see.

    The identity probe decides where it ran: a marker ``preflight_dest`` made in the disk's
    directory on ``host`` and seen here on the source proves the directory shared; a marker made
    there and not seen here proves it is not (then a matching inode and size is a coincidence,
    e.g. cloned hosts). Where no marker was made (no probe, or the directory is absent there) the
    same path with the same inode and size on both hosts (``_storage.same_file``) is the proof.
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
        if _storage.same_file(disk.get("fingerprint"), (seen or {}).get("fingerprint")):
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
                                   % _libvirt.version_or_unknown(qemu_version)), **values))
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
        mount = _storage.mount_holding(real, mounts) if mounts else None
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
                    disk["target"], path, host, fstype, mount["mount"], os.path.dirname(real), _tls.QEMU_CONF),
                **values))
    return out


# --------------------------------------------------------------------------------------------
# The destination's files (C01-C05, C13)
# --------------------------------------------------------------------------------------------

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
        best = _storage.mount_holding(path, self.mounts)
        if best is not None:
            return {"mount": best["mount"], "device": best.get("device") or best["mount"],
                    "free_bytes": int(best.get("size_available") or 0)}
        pool = self.pools.get(os.path.dirname(path))
        if pool is not None:
            return {"mount": os.path.dirname(path), "device": "pool %s" % pool["name"],
                    "free_bytes": int(pool["available_bytes"])}
        return None


def _removal_advice(path: str, host: str, disk: dict[str, t.Any], seen: dict[str, t.Any],
                    users: t.Sequence[str] | None, advice: str) -> str:
    """What to say about an existing destination file that is in the way: ``advice`` (remove or
    rename it) only when nothing shows it is data in use. Never removal when a domain on ``host``
    uses the path (``users``), or when it is the source's own disk seen through shared storage
    (same path, inode and size: :func:`_storage.same_file`); when either cannot be told
    (``users`` None: the destination's domains could not be read; no fingerprint on one side),
    the advice says what to check first."""
    if users:
        return ("It is used by domain %s on %s: never remove it. Give this guest's disk another path on %s, "
                "or move that guest first." % (", ".join(users), host, host))
    if _storage.same_file(disk.get("fingerprint"), seen.get("fingerprint")):
        return ("It has the path, inode and size of the source's own disk: it is that disk seen through storage "
                "shared with %s, so never remove it; declare the disk shared (shared_disks) instead." % host)
    checks = []
    if users is None:
        checks.append("that no guest on %s uses it (virsh domblklist)" % host)
    if not disk.get("fingerprint") or not seen.get("fingerprint"):
        checks.append("that it is not the source's own disk seen through shared storage (compare stat -c '%%i %%s' "
                      "%s on both hosts)" % path)
    return advice + ((" First check " + " and ".join(checks) + ".") if checks else "")


def check_dest_image(disk: dict[str, t.Any], dest: DestFiles, host: str,
                     for_domain: str | None = None, users: t.Sequence[str] | None = (),
                     created_next: bool = False) -> dict[str, t.Any]:
    """State of the destination path of one copied disk (cases C01, C03, C04).

    absent -> warning: it must be created first (``disk_image``) unless a libvirt pool covers the
    directory (then libvirt pre-creates it: ok) or the caller creates it next (``created_next``,
    the ``migrate_guest`` role: ok); exists, recorded in the manifest as ours and same format and
    size -> ok (reused); exists and not ours, or another format/size -> error naming both
    geometries, with removal advice only when nothing shows the file is data in use
    (:func:`_removal_advice`; ``users``: domains on ``host`` using the path, None when unknown);
    unknown (no facts) -> warning "not verified".
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
        kind = "LV of exactly %s bytes" % want_size if _image_geometry.is_block_path(path) else \
            "%s image of exactly %s bytes (sparse)" % (want_fmt, want_size)
        if created_next:
            return finding("dest_image", "ok", host,
                           "Destination image %s (disk %s) is absent on %s: it is created next, a %s "
                           "(kvmops.migration.disk_image, recorded as ours)." % (path, disk.get("target"), host, kind),
                           **values)
        return finding("dest_image", "warning", host,
                       "Destination image %s (disk %s) is absent on %s and no libvirt pool covers "
                       "its directory: create a %s there before migrating "
                       "(kvmops.migration.disk_image), else libvirt fails with 'Storage pool not "
                       "found'." % (path, disk.get("target"), host, kind), **values)
    ours = None
    if dest.manifest is not None:
        # the same identity rule as disk_image: path, inode and the identity attribute
        ours = any(e.get("path") == path and (not for_domain or e.get("for_domain") in (None, for_domain))
                   and _manifest.fingerprint_matches(e, seen.get("fingerprint"))
                   for e in dest.manifest)
    size, fmt = seen.get("virtual_size"), seen.get("format")
    values.update(state="exists", ours=ours, seen_format=fmt, seen_virtual_size=size)
    geometry = ("dst image %s exists: format %s, virtual size %s bytes; expected %s, %s bytes"
                % (path, fmt, size, want_fmt, want_size))
    matches = size == want_size and (fmt == want_fmt or seen.get("kind") == "block")
    if not matches:
        return finding("dest_image", "error", host, "%s. Never overwritten. %s" % (geometry, _removal_advice(
            path, host, disk, seen, users, "Remove or rename it on %s if it is stale, or fix the size (sizes are "
            "bytes, never rounded)." % host)), **values)
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
                   "guest's data and is never overwritten. %s" % (
                       geometry.replace("; expected", ", as expected"), _removal_advice(
                           path, host, disk, seen, users, "Remove it on %s after checking, or migrate to another "
                           "path." % host)), **values)


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
    ``_storage.plan_free_space`` (allocation when sparseness is kept, plus its margin).
    Disks whose destination already holds the image need nothing more."""
    plan_disks, unknown = [], []
    for disk in disks:
        seen, _src = dest.lookup(disk["path"])
        if seen is not None and seen.get("exists"):
            continue
        if _image_geometry.is_block_path(disk["path"]):
            continue
        if dest.filesystem(disk["path"]) is None or disk.get("virtual_size") is None:
            unknown.append(disk["path"])
            continue
        plan_disks.append({"path": disk["path"], "target": disk.get("target"),
                           "virtual_size": disk["virtual_size"], "allocation": disk.get("allocation")})
    out = []
    if plan_disks:
        plan = _storage.plan_free_space(plan_disks, keep_sparse=keep_sparse,
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


#: where Debian/Ubuntu and Fedora/RHEL install UEFI firmware, and the package that holds it
FIRMWARE_PACKAGES = (
    ("/usr/share/OVMF/", "ovmf (Debian/Ubuntu)"),
    ("/usr/share/AAVMF/", "qemu-efi-aarch64 (Debian/Ubuntu)"),
    ("/usr/share/qemu-efi-aarch64/", "qemu-efi-aarch64 (Debian/Ubuntu)"),
    ("/usr/share/edk2/ovmf/", "edk2-ovmf (Fedora/RHEL)"),
    ("/usr/share/edk2/aarch64/", "edk2-aarch64 (Fedora/RHEL)"),
)


def firmware_fix(path: str, host: str) -> str:
    """How to get a missing firmware file (loader, NVRAM template) of ``path`` onto ``host``:
    the package that installs it when the path is a distribution's firmware directory
    (:data:`FIRMWARE_PACKAGES`), which this collection's ``kvm_host`` role installs for OVMF."""
    for prefix, package in FIRMWARE_PACKAGES:
        if path.startswith(prefix):
            return ("install the package %s on %s (the kvmops.migration kvm_host role, playbooks/prepare_hosts.yml, "
                    "installs OVMF), or copy the file to the same path there" % (package, host))
    return ("install the firmware package that provides it on %s (OVMF: package ovmf, which the kvmops.migration "
            "kvm_host role installs), or copy the file to the same path there" % host)


def nvram_template_decision(nvram_seen: dict[str, t.Any] | None, template_seen: dict[str, t.Any] | None
                            ) -> tuple[str, str]:
    """Whether the destination needs the NVRAM template, and whether it has it.

    libvirt creates an absent NVRAM file from the template when it starts the guest's QEMU
    there (for the incoming migration, or the first start after an offline move,
    ``qemuPrepareNVRAM``); an NVRAM file already there is used as it is and the template is not
    read. So the template matters only when the NVRAM file is absent there.

    :param nvram_seen: the destination's facts of the NVRAM file (``DestFiles.lookup``), None
        when unknown.
    :param template_seen: the same of the template.
    :returns: ``(status, why)``: ``ok``/``not_needed`` (the NVRAM file is there), ``ok``/``present``
        (absent NVRAM, template there), ``error``/``missing`` (absent NVRAM and absent template:
        libvirt fails to start the guest there), ``warning``/``unknown`` (either is not known).
    """
    if nvram_seen is not None and nvram_seen.get("exists"):
        return "ok", "not_needed"
    if nvram_seen is None or template_seen is None:
        return "warning", "unknown"
    if template_seen.get("exists"):
        return "ok", "present"
    return "error", "missing"


def _template_finding(item: dict[str, t.Any], nvram: dict[str, t.Any] | None, dest: DestFiles,
                      host: str) -> dict[str, t.Any]:
    """The finding of the ``nvram template`` of :func:`_domain_xml.required_files`."""
    nvram_path = (nvram or {}).get("path")
    nvram_seen = dest.lookup(nvram_path)[0] if nvram_path else None
    seen, _src = dest.lookup(item["path"])
    status, why = nvram_template_decision(nvram_seen, seen)
    values = dict(item, seen=seen, nvram=nvram_path, decision=why)
    if why == "not_needed":
        msg = ("nvram template %s is not needed on %s: the guest's NVRAM file %s is there, and libvirt uses it as it is."
               % (item["path"], host, nvram_path))
    elif why == "present":
        msg = ("nvram template %s is present on %s: libvirt creates the guest's NVRAM file %s from it there."
               % (item["path"], host, nvram_path))
    elif why == "missing":
        msg = ("nvram template %s is missing on %s, and so is the guest's NVRAM file %s: libvirt creates that file "
               "from the template and cannot start the guest there without it; %s." % (
                   item["path"], host, nvram_path, firmware_fix(item["path"], host)))
    else:
        msg = ("nvram template %s not verified on %s (libvirt needs it there when the NVRAM file %s is absent); pass "
               "dest_disks (disk_info with paths on %s)." % (item["path"], host, nvram_path, host))
    return finding("required_file", status, host, msg, **values)


def check_required_files(files: list[dict[str, t.Any]], dest: DestFiles, host: str, live: bool = False
                         ) -> list[dict[str, t.Any]]:
    """Each path of ``_domain_xml.required_files`` exists on the destination (case C13).

    An NVRAM file (UEFI variables) absent there is ``ok`` for a live move (``live``): libvirt
    creates it from the firmware's template for the incoming QEMU, and QEMU's pflash device,
    whose contents move with the guest's memory, writes them into that file when the guest runs
    there (``pflash_post_load``). For a guest that is shut off it is a warning: nothing carries
    the variables, the new file starts from the template. The template itself must then be
    there (:func:`nvram_template_decision`); a missing loader or template names the firmware
    package (:func:`firmware_fix`)."""
    out = []
    nvram = next((item for item in files if item["what"] == "nvram"), None)
    for item in files:
        if item["what"] == "nvram template":
            out.append(_template_finding(item, nvram, dest, host))
            continue
        seen, _src = dest.lookup(item["path"])
        values = dict(item, seen=seen)
        if seen is None:
            out.append(finding("required_file", "warning", host,
                               "%s %s not verified on %s: it is not copied by the migration; pass "
                               "dest_disks (disk_info with paths on %s)." % (
                                   item["what"], item["path"], host, host), **values))
        elif not seen.get("exists") and item["what"] == "nvram" and live:
            out.append(finding("required_file", "ok", host,
                               "nvram %s is absent on %s: libvirt creates it there, and the guest's UEFI "
                               "variables, which move with its memory (the flash device's contents), are "
                               "written into it when the guest runs there." % (item["path"], host), **values))
        elif not seen.get("exists") and item["what"] == "nvram":
            out.append(finding("required_file", "warning", host,
                               "nvram %s is missing on %s: libvirt creates it from the firmware's "
                               "template, so the guest's UEFI variables (boot entries) are lost; "
                               "copy the file to the same path there first." % (item["path"], host),
                               **values))
        elif not seen.get("exists") and item["what"] == "loader":
            out.append(finding("required_file", "error", host,
                               "loader %s (the guest's firmware) is missing on %s: migration does not copy it, and "
                               "QEMU cannot start the guest there without it; %s." % (
                                   item["path"], host, firmware_fix(item["path"], host)), **values))
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
