# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where images may live on a host and what its storage is: image paths, libvirt storage
pools, filesystems and free space, and whether a directory is really the source's storage.

Paths
    Image paths must be absolute and normalised (:func:`check_image_path`), and an image is only
    created or removed under a libvirt storage pool's target directory of the host unless the
    caller allows otherwise (:func:`check_in_pools`).

Shared storage
    A destination directory that is really the source's storage (NFS, cluster FS) must not get
    images created or deleted by us. Two tests, both done on the destination
    (:func:`shared_storage_reason`):
    * ``source_fingerprint`` (from :func:`storage_fingerprint` run on the source, returned by the
      ``disk_info`` module per disk as ``fingerprint``): when the source image's path is visible
      here with the same inode number and size, it is the same file (:func:`same_file`, the one
      rule, also the pre-flight's);
    * ``shared_marker`` ``{path, token}``: the caller wrote a file with a random token beside the
      source image (e.g. ``ansible.builtin.copy``); when the destination reads the same token at
      that path, the directory is shared.

Free space
    :func:`plan_free_space`: per destination filesystem, needed = sum over the disks landing there
    (allocation when the copy keeps sparseness, virtual size otherwise) plus a margin of
    :data:`MARGIN_RATIO` (5 %) of that sum plus :data:`MARGIN_BYTES` (256 MiB) for qcow2 metadata,
    rounding and logs; free = ``statvfs`` ``f_bavail * f_frsize``.

Relies on: libvirt ``virConnectListAllStoragePools`` and the pool XML's ``<target><path>``;
stat(2) and statvfs(3).
"""

from __future__ import annotations

import contextlib
import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._image_geometry import is_block_path
from ansible_collections.kvmops.migration.plugins.module_utils._manifest import ID_XATTR

MARGIN_RATIO = 0.05
MARGIN_BYTES = 256 * 1024 ** 2


def check_image_path(path: str, what: str = "Image path") -> str:
    """Refuse a path that is not absolute and normalised, before anything reads or changes it.

    Normalised: what ``os.path.normpath`` gives back unchanged, and no leading ``//``; so no
    ``..`` or ``.`` component, no ``//`` and no trailing ``/``.

    :returns: ``path``.
    :raises KvmopsError: naming the path and its normalised spelling.
    """
    text = str(path or "")
    if text.startswith("/") and not text.startswith("//") and os.path.normpath(text) == text:
        return text
    if text.startswith("/"):
        fix = "write it as %r (check that this is the file you mean)" % ("/" + os.path.normpath(text).lstrip("/"))
    else:
        fix = "give the absolute path, such as '/var/lib/libvirt/images/vm1.qcow2'"
    raise KvmopsError("%s %r is not an absolute, normalised path (no '..', '.', '//' or trailing '/'): %s. "
                      "Nothing was read or changed." % (what, text, fix), values={"path": text})


def _pool_target(xml: str) -> str | None:
    """``<target><path>`` of a libvirt storage pool XML (hardened parser), or None."""
    _domain_xml.require_lxml()
    root = _domain_xml.from_string(xml, remove_blank_text=False)
    target = root.findtext("target/path")
    return target.strip() if target and target.strip() else None


def storage_pools(conn: t.Any) -> list[dict[str, t.Any]]:
    """The libvirt storage pools of ``conn`` with a target directory: ``[{name, path, active}]``
    (``virConnectListAllStoragePools``, every pool, active or not; ``path`` normalised)."""
    out = []
    for pool in conn.listAllStoragePools(0):
        target = _pool_target(pool.XMLDesc(0))
        if target and target.startswith("/"):
            out.append({"name": str(pool.name()), "path": os.path.normpath(target),
                        "active": bool(pool.isActive())})
    return out


def pool_of(path: str, pools: t.Iterable[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    """The pool whose target directory holds ``path``, compared as text and, for files, with
    links resolved (a symlinked directory inside a pool leading elsewhere does not count)."""
    for pool in pools:
        root = pool["path"].rstrip("/") or "/"
        prefix = root if root == "/" else root + "/"
        if not (path.startswith(prefix) and path != root):
            continue
        if is_block_path(path):
            return pool
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if real.startswith(real_root.rstrip("/") + "/"):
            return pool
    return None


def check_in_pools(path: str, pools: list[dict[str, t.Any]] | None, allow_outside: bool,
                   host: str, action: str = "create") -> None:
    """Refuse an image path outside every storage pool of this host unless allowed.

    :param pools: :func:`storage_pools` of the host; None when libvirt could not be asked
        (then nothing is checked here: the caller warns).
    :raises KvmopsError: naming the path, the pools (name and directory) and the option.
    """
    if allow_outside or pools is None or pool_of(path, pools) is not None:
        return
    where = ", ".join("%s (%s)" % (p["name"], p["path"]) for p in pools) or "none defined"
    raise KvmopsError("Refusing to %s %s on %s: it is not under any libvirt storage pool of this host "
                      "(pools: %s). Use a path inside a pool, define a pool for its directory "
                      "(kvm_host_storage_pools), or set allow_outside_pools: true "
                      "(migrate_guest_allow_outside_pools in the migrate_guest role)."
                      % (action, path, host, where), values={"path": path, "pools": pools})


def storage_fingerprint(path: str) -> dict[str, t.Any]:
    """``{path, inode, size, fsid, kvmops_id}`` of an image as seen on this host.

    ``kvmops_id`` is the identity attribute (:data:`_manifest.ID_XATTR`) of a file this collection
    created, else None; with ``inode`` it tells whether a manifest entry is this very file
    (:func:`_manifest.fingerprint_matches`)."""
    st = os.stat(path)
    fsid = None
    with contextlib.suppress(OSError, AttributeError):
        fsid = os.statvfs(path).f_fsid
    kvmops_id = None
    with contextlib.suppress(OSError, AttributeError):
        kvmops_id = os.getxattr(path, ID_XATTR).decode("ascii", "replace")
    return {"path": path, "inode": st.st_ino, "size": st.st_size, "fsid": fsid, "kvmops_id": kvmops_id}


def same_file(src_fp: dict[str, t.Any] | None, dst_fp: dict[str, t.Any] | None) -> bool:
    """Fingerprints (:func:`storage_fingerprint`) of the source image and of the same path read on
    the destination show one file: same path, inode and size. The one rule of shared storage by
    fingerprint, of :func:`shared_storage_reason` and of the pre-flight
    (``_checks_storage.shared_proof``)."""
    if not src_fp or not dst_fp:
        return False
    return (src_fp.get("path") == dst_fp.get("path") and src_fp.get("inode") is not None
            and src_fp.get("inode") == dst_fp.get("inode") and src_fp.get("size") == dst_fp.get("size"))


def shared_storage_reason(source_fingerprint: dict[str, t.Any] | None = None,
                          shared_marker: dict[str, t.Any] | None = None) -> str | None:
    """Why this host sees the source's storage (shared), or None.

    :param source_fingerprint: :func:`storage_fingerprint` of the source image, taken on the
        source host; matched when the same path here has the same inode and size (:func:`same_file`).
    :param shared_marker: ``{path, token}`` of a marker file the caller wrote on the source;
        matched when the file here holds the same token.
    """
    if source_fingerprint and source_fingerprint.get("path"):
        path = source_fingerprint["path"]
        with contextlib.suppress(OSError):
            here = storage_fingerprint(path)
            if same_file(source_fingerprint, here):
                return ("the source image %s is visible on this host with the same inode (%d) and size "
                        "(%d bytes)" % (path, here["inode"], here["size"]))
    if shared_marker and shared_marker.get("path"):
        with contextlib.suppress(OSError):
            with open(shared_marker["path"], "r", encoding="utf-8") as handle:
                if handle.read().strip() == str(shared_marker.get("token", "")).strip():
                    return "the marker file %s written on the source is visible on this host" % (
                        shared_marker["path"])
    return None


def filesystem_of(path: str) -> dict[str, t.Any]:
    """The filesystem that holds (or will hold) ``path``: nearest existing ancestor.

    :returns: ``{mount, device, free_bytes, size_bytes}``; free = ``f_bavail * f_frsize``
        (what an unprivileged writer may use; root's reserve is not counted).
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    dev = os.stat(probe).st_dev
    mount = probe
    while mount != "/":
        parent = os.path.dirname(mount)
        if os.stat(parent).st_dev != dev:
            break
        mount = parent
    vfs = os.statvfs(probe)
    return {"mount": mount, "device": "%d:%d" % (os.major(dev), os.minor(dev)),
            "free_bytes": vfs.f_bavail * vfs.f_frsize, "size_bytes": vfs.f_blocks * vfs.f_frsize}


def mount_holding(path: str, mounts: t.Iterable[dict[str, t.Any]]) -> dict[str, t.Any] | None:
    """The entry of ``mounts`` (dicts with ``mount``, as in ``ansible_mounts``) whose mount point
    is the longest prefix of ``path``, compared as text (links are not resolved); None when no
    mount point is a prefix. The pre-flight's rule for the filesystem of a destination path."""
    best = None
    for mount in mounts:
        point = mount.get("mount") or ""
        if path == point or path.startswith(point.rstrip("/") + "/"):
            if best is None or len(point) > len(best.get("mount") or ""):
                best = mount
    return best


def margin_for(needed: int, ratio: float = MARGIN_RATIO, extra: int = MARGIN_BYTES) -> int:
    """Safety margin in bytes for ``needed`` bytes: ``ceil(ratio * needed) + extra``."""
    return -(-int(needed * ratio * 1000) // 1000) + extra


def plan_free_space(disks: list[dict[str, t.Any]], keep_sparse: bool = True,
                    fs_lookup: t.Callable[[str], dict[str, t.Any]] = filesystem_of,
                    host: str | None = None, ratio: float = MARGIN_RATIO,
                    extra: int = MARGIN_BYTES) -> dict[str, t.Any]:
    """Bytes needed per destination filesystem against bytes free (case C05).

    :param disks: ``[{path, virtual_size, allocation, target?, kind?}]`` with sizes in bytes
        (destination paths; source geometry). Block targets (``kind: block`` or ``/dev/``
        paths) use no filesystem space and are skipped.
    :param keep_sparse: True when the copy keeps holes (count allocation), else virtual size.
    :param fs_lookup: ``path -> {mount, device, free_bytes}`` (:func:`filesystem_of`).
    :returns: ``{ok, msg, filesystems: [{mount, device, disks, data_bytes, margin_bytes,
        needed_bytes, free_bytes, ok}]}``.
    """
    groups: dict[str, dict[str, t.Any]] = {}
    for disk in disks:
        path = disk["path"]
        if disk.get("kind") == "block" or is_block_path(path):
            continue
        fs = fs_lookup(path)
        key = "%s@%s" % (fs["device"], fs["mount"])
        group = groups.setdefault(key, {"mount": fs["mount"], "device": fs["device"], "disks": [],
                                        "data_bytes": 0, "free_bytes": int(fs["free_bytes"])})
        alloc = disk.get("allocation")
        need = int(alloc) if keep_sparse and alloc is not None else int(disk["virtual_size"])
        group["disks"].append({"path": path, "target": disk.get("target"), "bytes": need})
        group["data_bytes"] += need
    short = []
    for group in groups.values():
        group["margin_bytes"] = margin_for(group["data_bytes"], ratio, extra)
        group["needed_bytes"] = group["data_bytes"] + group["margin_bytes"]
        group["ok"] = group["needed_bytes"] <= group["free_bytes"]
        if not group["ok"]:
            short.append(group)
    where = " on %s" % host if host else ""
    if short:
        msg = "; ".join(
            "Not enough space%s in filesystem %s (device %s): need %d bytes (%d for %s + %d margin), "
            "free %d bytes" % (where, g["mount"], g["device"], g["needed_bytes"], g["data_bytes"],
                               ", ".join(d["path"] for d in g["disks"]), g["margin_bytes"], g["free_bytes"])
            for g in short)
    else:
        msg = "Enough space%s in %d filesystem(s)." % (where, len(groups))
    return {"ok": not short, "msg": msg, "filesystems": list(groups.values())}
