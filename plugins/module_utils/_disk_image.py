# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend of the ``disk_image`` module: exclusive, sparse destination images, reused only
when ours, removed only when ours and unused.

Creation (the safety rules of DESIGN.md)
    * Never on an existing path. An image is built under a temporary name in the destination
      directory (created with ``O_CREAT|O_EXCL``), verified, then linked to its final name with
      ``os.link`` (which fails with EEXIST instead of replacing) and the temporary name removed.
      A file that appears at the path meanwhile is never overwritten. The new file gets a random
      identity (``_manifest.tag_file``), recorded in the manifest with its inode.
    * Raw images: ``ftruncate`` to the exact byte size (sparse). qcow2: ``qemu-img create -f qcow2
      -o preallocation=off[,cluster_size=N][,compat=V] [-b BACKING -F FMT] TMP BYTES``.
    * Missing parent directories are created ``root:root`` mode ``0711`` by default, like the
      ``/var/lib/libvirt/images`` directory libvirt's packages ship: the QEMU user may traverse
      but not list. Images are created mode ``0600`` like ``virsh vol-create``; libvirt's DAC
      driver relabels them for the QEMU user when the incoming guest starts. When SELinux is
      enabled (``selinuxenabled`` exits 0), ``restorecon`` resets the contexts of what we created;
      otherwise this step is skipped silently.
    * Block targets (``/dev/...``): never ``qemu-img create``; an LV of exactly the byte size,
      active, is required or (when asked) created with ``lvcreate -L <bytes>b``.
    * Everything created is recorded in the manifest on the host (``_manifest``). An existing
      image is reused only when the manifest records it (same host, path, inode and identity
      attribute), it matches the requested geometry, and no libvirt domain uses it (except the
      domain it was made for). ``absent`` removes only recorded, unused images that no process
      holds QEMU's lock bytes of (``_image_use``).
    * Nothing is created or removed outside the storage pools (unless allowed) or on storage
      shared with the source (``_storage``).

Relies on: qemu-img(1) ``create`` and the qcow2 options ``cluster_size``, ``compat``,
``preallocation``; lvcreate(8)/lvremove(8); link(2) EEXIST semantics; restorecon(8).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import socket
import stat
import typing as t
from dataclasses import dataclass, field

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._image_geometry import (
    FORMATS, Geometry, block_geometry, file_checksum, is_block_path, qemu_img_info, read_as_declared, read_format)
from ansible_collections.kvmops.migration.plugins.module_utils._image_use import block_busy, paths_in_use, qemu_holds_lock
from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import connection, libvirt_errors
from ansible_collections.kvmops.migration.plugins.module_utils._lvm import lv_names, thin_pool_free, vg_info
from ansible_collections.kvmops.migration.plugins.module_utils._manifest import (
    DEFAULT_MANIFEST, Manifest, created_dirs_of, is_recorded_file, remove_created_dirs, tag_file)
from ansible_collections.kvmops.migration.plugins.module_utils._runner import Runner, SubprocessRunner, run_checked
from ansible_collections.kvmops.migration.plugins.module_utils._storage import check_image_path, check_in_pools, shared_storage_reason, storage_pools

#: Mode of the parent directories we create, as libvirt's packages ship /var/lib/libvirt/images.
DEFAULT_DIR_MODE = 0o711
#: Mode of the images we create, as ``virsh vol-create`` makes them.
IMAGE_MODE = 0o600


@dataclass
class ImageSpec:
    """The image wanted at ``path``. Sizes in bytes.

    ``backing_*``: for an incremental copy the overlay keeps the source's backing path and
    format, and the base must already be on this host with ``backing_virtual_size`` and
    ``backing_checksum`` (``sha256:<hex>`` or bare hex) of the source's base.
    ``lv_*``: block targets; ``lv_create`` asks to create a missing LV.
    ``adopt_existing``: accept an existing block device not created by us (the operator
    prepared it for this guest; it will be overwritten by the copy).
    """
    path: str
    format: str = "raw"
    virtual_size: int = 0
    cluster_size: int | None = None
    compat: str | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    backing_virtual_size: int | None = None
    backing_checksum: str | None = None
    for_domain: str | None = None
    dir_owner: str | int = "root"
    dir_group: str | int = "root"
    dir_mode: int = DEFAULT_DIR_MODE
    lv_create: bool = False
    lv_vg: str | None = None
    lv_name: str | None = None
    lv_thin_pool: str | None = None
    adopt_existing: bool = False


@dataclass
class HostContext:
    """Where and how: this host's name, the command runner, the manifest, the paths in use
    (``{realpath: [domain names]}``), check mode, the shared-storage evidence, and the pool rule:
    ``pools`` (:func:`_storage.storage_pools`, None when libvirt was not asked: not checked) and
    ``allow_outside_pools``."""
    host: str = field(default_factory=socket.gethostname)
    runner: Runner = field(default_factory=SubprocessRunner)
    manifest: Manifest = field(default_factory=Manifest)
    in_use: dict[str, list[str]] = field(default_factory=dict)
    check_mode: bool = False
    source_fingerprint: dict[str, t.Any] | None = None
    shared_marker: dict[str, t.Any] | None = None
    pools: list[dict[str, t.Any]] | None = None
    allow_outside_pools: bool = False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _validate(spec: ImageSpec) -> None:
    check_image_path(spec.path)
    if spec.backing_file:
        base = spec.backing_file
        if os.path.isabs(base):
            check_image_path(base, "backing_file")
        elif os.path.normpath(base) != base or base.split("/", 1)[0] in ("..", "."):
            raise KvmopsError("backing_file %r of %s is not a normalised relative path (no '..', '.', '//' "
                              "or trailing '/'): give the absolute path of the base." % (base, spec.path),
                              values={"path": spec.path, "backing_file": base})
    if spec.format not in FORMATS:
        raise KvmopsError("Image format %r is not supported: use one of %s." % (spec.format, ", ".join(FORMATS)))
    if isinstance(spec.virtual_size, bool) or not isinstance(spec.virtual_size, int) or spec.virtual_size <= 0:
        raise KvmopsError("virtual_size must be a positive integer number of bytes, got %r." % (spec.virtual_size,))
    if spec.virtual_size % 512:
        raise KvmopsError("virtual size %d bytes of %s is not a multiple of 512: QEMU counts image sizes in "
                          "512-byte sectors (qemu-img info of the source reports a multiple of 512); use the "
                          "source's virtual size from qemu-img info." % (spec.virtual_size, spec.path))
    if spec.format == "raw" and (spec.cluster_size or spec.compat or spec.backing_file):
        raise KvmopsError("cluster_size, compat and backing_file apply to qcow2 only (image %s is raw)." % spec.path)
    if spec.backing_file and not spec.backing_format:
        raise KvmopsError("backing_format is required with backing_file (never let qemu probe the base of %s)."
                          % spec.path)


def _describe(geo: Geometry | None) -> dict[str, t.Any]:
    if geo is None:
        return {"exists": False}
    out = geo.as_dict()
    out["exists"] = True
    return out


def _wanted(spec: ImageSpec, kind: str) -> dict[str, t.Any]:
    out = {"exists": True, "path": spec.path, "format": spec.format, "virtual_size": spec.virtual_size,
           "kind": kind}
    if spec.format == "qcow2":
        out.update({"cluster_size": spec.cluster_size, "compat": spec.compat,
                    "backing_file": spec.backing_file, "backing_format": spec.backing_format})
    return out


def _mismatch(spec: ImageSpec, geo: Geometry) -> list[str]:
    diffs = []
    if geo.format != spec.format:
        diffs.append("format")
    if geo.virtual_size != spec.virtual_size:
        diffs.append("virtual_size")
    if spec.format == "qcow2" and geo.format == "qcow2":
        if spec.cluster_size and geo.cluster_size != spec.cluster_size:
            diffs.append("cluster_size")
        if spec.compat and geo.compat != spec.compat:
            diffs.append("compat")
        if (geo.backing_file or None) != (spec.backing_file or None):
            diffs.append("backing_file")
        if spec.backing_file and geo.backing_format != spec.backing_format:
            diffs.append("backing_format")
    return diffs


def _geometry_text(spec: ImageSpec, geo: Geometry) -> str:
    return ("dst image %s exists: format %s, virtual size %d bytes; expected %s, %d bytes"
            % (spec.path, geo.format, geo.virtual_size, spec.format, spec.virtual_size))


def _users(ctx: HostContext, path: str) -> list[str]:
    return list(ctx.in_use.get(os.path.realpath(path), []))


def _check_shared(ctx: HostContext, action: str, path: str) -> None:
    reason = shared_storage_reason(ctx.source_fingerprint, ctx.shared_marker)
    if reason:
        raise KvmopsError(
            "Refusing to %s %s on %s: its storage is shared with the source (%s). A storage "
            "migration is not needed there: migrate without copy_storage, or choose a destination "
            "path on local storage." % (action, path, ctx.host, reason), values={"path": path})


def ensure_image(spec: ImageSpec, ctx: HostContext) -> dict[str, t.Any]:
    """Make sure the destination image of ``spec`` exists, exactly, sparse, without ever
    touching an existing file that is not ours.

    :returns: ``{changed, path, kind, action: created|reused|would_create, before, after,
        created_dirs, manifest_path, msg}``; ``before``/``after`` are geometries (``exists``).
    :raises KvmopsError: shared storage; an existing image not ours or of another geometry
        (message gives both geometries, case C03); a domain uses it; an incremental base
        missing or different (C02); block device wrong size, inactive or missing (C04);
        any tool failure.
    """
    _validate(spec)
    check_in_pools(spec.path, ctx.pools, ctx.allow_outside_pools, ctx.host, "create")
    _check_shared(ctx, "create", spec.path)
    if is_block_path(spec.path):
        return _ensure_block(spec, ctx)
    return _ensure_file(spec, ctx)


def _existing_ours(spec: ImageSpec, ctx: HostContext, kind: str) -> dict[str, t.Any] | None:
    entry = ctx.manifest.find(ctx.host, spec.path)
    if entry is None or entry.get("kind") != kind:
        return None
    if kind == "file" and not is_recorded_file(entry, spec.path):
        return None  # replaced by someone else since we made it (inode or identity differs)
    return entry


def _reuse_or_refuse(spec: ImageSpec, ctx: HostContext, geo: Geometry, kind: str) -> dict[str, t.Any]:
    diffs = _mismatch(spec, geo)
    values = {"path": spec.path, "host": ctx.host, "found": geo.as_dict(), "expected": _wanted(spec, kind)}
    if diffs:
        raise KvmopsError("%s (differs in %s). It was left untouched: remove or rename it if it is a "
                          "stale leftover, or fix the requested geometry." % (_geometry_text(spec, geo),
                                                                              ", ".join(diffs)), values=values)
    entry = _existing_ours(spec, ctx, kind)
    if entry is None and not (kind == "lv" and spec.adopt_existing):
        raise KvmopsError("%s, but it was not created by kvmops.migration (not recorded in %s on %s). "
                          "It was left untouched: remove it yourself if it is a stale leftover%s."
                          % (_geometry_text(spec, geo), ctx.manifest.path, ctx.host,
                             ", or set adopt_existing for a prepared block device" if kind == "lv" else ""),
                          values=values)
    users = _users(ctx, spec.path)
    owner = (entry or {}).get("for_domain") or spec.for_domain
    foreign = [u for u in users if not (owner and u == owner and u == spec.for_domain)]
    if foreign:
        raise KvmopsError("%s and matches, but domain(s) %s on %s use it: it cannot be the target of a "
                          "copy." % (_geometry_text(spec, geo), ", ".join(foreign), ctx.host), values=values)
    return {"changed": False, "path": spec.path, "kind": kind, "action": "reused",
            "before": _describe(geo), "after": _describe(geo), "created_dirs": [],
            "manifest_path": ctx.manifest.path,
            "msg": "%s %s on %s already matches (%s, %d bytes)%s." % (
                "Image" if kind == "file" else "Block device", spec.path, ctx.host, geo.format,
                geo.virtual_size, "" if entry else ", adopted")}


def _verify_base(spec: ImageSpec, ctx: HostContext) -> None:
    """Case C02: the base of an incremental overlay must be on this host, identical."""
    base = spec.backing_file or ""
    if not os.path.isabs(base):
        base = os.path.join(os.path.dirname(spec.path), base)
    if not os.path.exists(base):
        raise KvmopsError("Backing base %s of %s is missing on %s: an incremental copy needs the "
                          "identical base on the destination first (copy it and verify the checksum), "
                          "or use a full copy (flat image)." % (base, spec.path, ctx.host),
                          values={"base": base})
    if spec.backing_virtual_size is None or not spec.backing_checksum:
        raise KvmopsError("An incremental overlay %s needs backing_virtual_size and backing_checksum of "
                          "the source's base %s to prove the destination's base identical." % (spec.path, base))
    layer = qemu_img_info(base, ctx.runner, spec.backing_format or "raw")
    if layer.virtual_size != spec.backing_virtual_size:
        raise KvmopsError("Backing base %s on %s has virtual size %d bytes; the source's base has %d bytes."
                          % (base, ctx.host, layer.virtual_size, spec.backing_virtual_size),
                          values={"base": base})
    algo, _sep, want = spec.backing_checksum.rpartition(":")
    algo = algo or "sha256"
    got = file_checksum(base, algo)
    if got.lower() != want.lower():
        raise KvmopsError("Backing base %s on %s differs from the source's base: %s %s, expected %s."
                          % (base, ctx.host, algo, got, want), values={"base": base})


def _missing_dirs(directory: str) -> list[str]:
    missing = []
    probe = directory
    while not os.path.exists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise KvmopsError("Cannot create directory %s: %s exists and is not a directory." % (directory, probe))
    return list(reversed(missing))


def _ids(owner: str | int, group: str | int) -> tuple[int, int]:
    import grp
    import pwd
    owner = int(owner) if str(owner).isdigit() else owner
    group = int(group) if str(group).isdigit() else group
    try:
        uid = owner if isinstance(owner, int) else pwd.getpwnam(owner).pw_uid
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except KeyError as err:
        raise KvmopsError("Unknown owner or group %s:%s for image directories." % (owner, group)) from err
    return int(uid), int(gid)


def _make_dirs(dirs: list[str], spec: ImageSpec) -> list[dict[str, t.Any]]:
    """Create ``dirs`` (outermost first, from :func:`_missing_dirs`).

    :returns: ``[{path, inode}]`` of the directories made, for the manifest entry of the image
        (:func:`_manifest.remove_created_dirs` removes only those, only when empty, only the same inode).
        On a failure the ones already made are removed again (when empty) and the error raised.
    """
    uid, gid = _ids(spec.dir_owner, spec.dir_group)
    made: list[dict[str, t.Any]] = []
    try:
        for directory in dirs:
            os.mkdir(directory, spec.dir_mode)
            made.append({"path": os.path.normpath(directory), "inode": os.lstat(directory).st_ino})
            if os.geteuid() == 0:
                os.chown(directory, uid, gid)
            os.chmod(directory, spec.dir_mode)
    except OSError as err:
        with contextlib.suppress(KvmopsError):
            remove_created_dirs(made, os.path.join(dirs[-1], "-"))
        raise KvmopsError("Could not create directory %s: %s." % (err.filename or dirs[-1], err.strerror or err)) from err
    return made


def _restorecon(paths: list[str], runner: Runner) -> None:
    """Reset SELinux contexts of what we created; silently nothing when SELinux is off."""
    if not paths or runner.which("selinuxenabled") is None:
        return
    if runner.run(["selinuxenabled"]).rc != 0:
        return
    run_checked(runner, ["restorecon"] + paths, "restore the SELinux context of %s" % ", ".join(paths))


def _ensure_file(spec: ImageSpec, ctx: HostContext) -> dict[str, t.Any]:
    if os.path.lexists(spec.path):
        if os.path.islink(spec.path) or not os.path.isfile(spec.path):
            raise KvmopsError("dst image %s exists on %s and is not a regular file (a symlink, directory or "
                              "device): left untouched." % (spec.path, ctx.host), values={"path": spec.path})
        # ours: read as the format we made it; not ours: as the requested format, else as raw
        # (it is refused either way; the format only makes the message exact).
        recorded = ctx.manifest.recorded_format(ctx.host, spec.path)
        geo = read_as_declared(spec.path, ctx.runner, recorded or spec.format, fallback_raw=recorded is None)
        return _reuse_or_refuse(spec, ctx, geo, "file")
    if spec.backing_file:
        _verify_base(spec, ctx)
    dirs = _missing_dirs(os.path.dirname(spec.path))
    result = {"changed": True, "path": spec.path, "kind": "file", "before": {"exists": False},
              "after": _wanted(spec, "file"), "created_dirs": dirs, "manifest_path": ctx.manifest.path}
    if ctx.check_mode:
        result.update(action="would_create", msg="Would create %s image %s (%d bytes) on %s." % (
            spec.format, spec.path, spec.virtual_size, ctx.host))
        return result
    made = _make_dirs(dirs, spec)
    try:
        geo, ident = _create_file_exclusive(spec, ctx)
    except BaseException:
        with contextlib.suppress(KvmopsError):
            remove_created_dirs(made, spec.path)
        raise
    entry = {"host": ctx.host, "path": spec.path, "kind": "file", "format": spec.format,
             "virtual_size": spec.virtual_size, "created_at": _now(),
             "for_domain": spec.for_domain, "inode": os.lstat(spec.path).st_ino,
             "created_dirs": made}
    if ident:
        entry["id"] = ident
    ctx.manifest.add(entry)
    _restorecon(dirs + [spec.path], ctx.runner)
    result.update(action="created", after=_describe(geo),
                  msg="Created %s image %s (%d bytes, sparse) on %s." % (
                      spec.format, spec.path, spec.virtual_size, ctx.host))
    return result


def _create_file_exclusive(spec: ImageSpec, ctx: HostContext) -> tuple[Geometry, str | None]:
    """Build the image under a temporary name, verify it, tag it (:func:`_manifest.tag_file`), link it to
    its name without replacing. Returns its geometry and identity."""
    directory, base = os.path.split(spec.path)
    tmp = os.path.join(directory, ".%s.kvmops-%s.tmp" % (base, secrets.token_hex(6)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0), IMAGE_MODE)
    try:
        if spec.format == "raw":
            try:
                os.ftruncate(fd, spec.virtual_size)
            finally:
                os.close(fd)
        else:
            os.close(fd)
            argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
            opts = ["preallocation=off"]
            if spec.cluster_size:
                opts.append("cluster_size=%d" % spec.cluster_size)
            if spec.compat:
                opts.append("compat=%s" % spec.compat)
            argv += ["-o", ",".join(opts)]
            if spec.backing_file:
                argv += ["-b", spec.backing_file, "-F", spec.backing_format or ""]
            argv += [tmp, "%d" % spec.virtual_size]
            run_checked(ctx.runner, argv, "create qcow2 image %s on %s" % (spec.path, ctx.host))
        geo = qemu_img_info(tmp, ctx.runner, spec.format)
        diffs = _mismatch(spec, geo)
        if diffs:
            raise KvmopsError("The image made for %s on %s came out with format %s, virtual size %d bytes "
                              "(differs in %s); expected %s, %d bytes. Nothing was put at the path."
                              % (spec.path, ctx.host, geo.format, geo.virtual_size, ", ".join(diffs),
                                 spec.format, spec.virtual_size))
        ident = tag_file(tmp)
        try:
            os.link(tmp, spec.path)
        except FileExistsError as err:
            raise KvmopsError("dst image %s appeared on %s while we were creating it: it was left untouched."
                              % (spec.path, ctx.host)) from err
        except OSError as err:
            raise KvmopsError("Could not link the new image to %s on %s (the filesystem must support hard "
                              "links for exclusive creation)." % (spec.path, ctx.host), detail=str(err)) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    geo.path = spec.path
    geo.allocation = os.stat(spec.path).st_blocks * 512
    return geo, ident


def block_device_exists(path: str, host: str = "this host") -> bool:
    """True for an existing block device, False when nothing is there.

    :raises KvmopsError: something else (a file, a directory) is at the path.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISBLK(mode):
        raise KvmopsError("%s on %s is not a block device: left untouched." % (path, host))
    return True


def _ensure_block(spec: ImageSpec, ctx: HostContext) -> dict[str, t.Any]:
    """Block targets, case C04: an active device of exactly ``virtual_size`` bytes."""
    if spec.format != "raw":
        raise KvmopsError("Block target %s must hold raw data; format %s on a block device is not "
                          "supported (qemu-img create is never run on a block path)." % (spec.path, spec.format))
    if block_device_exists(spec.path, ctx.host):
        geo = block_geometry(spec.path, ctx.runner)
        if geo.virtual_size != spec.virtual_size:
            raise KvmopsError("Block device %s on %s has %d bytes; the source disk has %d bytes: the "
                              "destination must have exactly that size (LVs round up to extents; compare "
                              "bytes). Left untouched." % (spec.path, ctx.host, geo.virtual_size, spec.virtual_size),
                              values={"path": spec.path, "found": geo.virtual_size, "expected": spec.virtual_size})
        if geo.lv and not geo.lv["active"]:
            raise KvmopsError("LV %s on %s is inactive: activate it (lvchange -ay %s/%s)." % (
                spec.path, ctx.host, geo.lv["vg_name"], geo.lv["lv_name"]))
        if block_busy(spec.path):
            raise KvmopsError("Block device %s on %s is mounted or held by another device: it cannot be the "
                              "target of a copy." % (spec.path, ctx.host))
        return _reuse_or_refuse(spec, ctx, geo, "lv")
    vg, name = lv_names(spec.path, spec.lv_vg, spec.lv_name)
    if not spec.lv_create:
        raise KvmopsError("Block device %s is missing on %s: create an LV of exactly %d bytes "
                          "(lvcreate -L %db -n %s %s) or set lv_create." % (
                              spec.path, ctx.host, spec.virtual_size, spec.virtual_size, name, vg),
                          values={"path": spec.path, "expected": spec.virtual_size})
    vgi = vg_info(vg, ctx.runner, ctx.host)
    extent = vgi["extent_size"] or 1
    if spec.virtual_size % extent:
        rounded = -(-spec.virtual_size // extent) * extent
        raise KvmopsError("An LV of %d bytes cannot be made in VG %s on %s: extents of %d bytes would round "
                          "it up to %d bytes and the copy needs exactly %d." % (
                              spec.virtual_size, vg, ctx.host, extent, rounded, spec.virtual_size))
    if spec.lv_thin_pool:
        free = thin_pool_free(vg, spec.lv_thin_pool, ctx.runner)
        if free < spec.virtual_size:
            raise KvmopsError("Thin pool %s/%s on %s has %d bytes free; the source disk %s has %d bytes." % (
                vg, spec.lv_thin_pool, ctx.host, free, spec.path, spec.virtual_size),
                values={"pool_free": free, "expected": spec.virtual_size})
        argv = ["lvcreate", "-y", "-V", "%db" % spec.virtual_size, "-T", "%s/%s" % (vg, spec.lv_thin_pool),
                "-n", name]
    else:
        if vgi["free"] < spec.virtual_size:
            raise KvmopsError("VG %s on %s has %d bytes free; LV %s needs %d bytes." % (
                vg, ctx.host, vgi["free"], spec.path, spec.virtual_size))
        argv = ["lvcreate", "-y", "-L", "%db" % spec.virtual_size, "-n", name, vg]
    result = {"changed": True, "path": spec.path, "kind": "lv", "before": {"exists": False},
              "after": _wanted(spec, "lv"), "created_dirs": [], "manifest_path": ctx.manifest.path}
    if ctx.check_mode:
        result.update(action="would_create", msg="Would create LV %s/%s (%d bytes) on %s." % (
            vg, name, spec.virtual_size, ctx.host))
        return result
    run_checked(ctx.runner, argv, "create LV %s/%s on %s" % (vg, name, ctx.host))
    ctx.manifest.add({"host": ctx.host, "path": spec.path, "kind": "lv", "format": "raw",
                      "virtual_size": spec.virtual_size, "created_at": _now(), "for_domain": spec.for_domain})
    geo = block_geometry(spec.path, ctx.runner)
    if geo.virtual_size != spec.virtual_size:
        raise KvmopsError("LV %s on %s came out with %d bytes, expected %d (it is recorded as ours; remove it "
                          "with state=absent)." % (spec.path, ctx.host, geo.virtual_size, spec.virtual_size))
    result.update(action="created", after=_describe(geo),
                  msg="Created LV %s (%d bytes) on %s." % (spec.path, spec.virtual_size, ctx.host))
    return result


def remove_image(path: str, ctx: HostContext) -> dict[str, t.Any]:
    """``state: absent``: remove an image only when the manifest records it as ours and no
    domain uses it.

    The parent directories recorded with it (``created_dirs``) go too when they are empty
    (:func:`_manifest.remove_created_dirs`); those still holding another image of ours are handed over
    to its entry.

    :returns: ``{changed, path, action: removed|would_remove|absent, before, after,
        removed_dirs, msg}``.
    :raises KvmopsError: the path is not normalised or outside the storage pools (unless
        allowed), exists and is not ours (left untouched), is in use, is shared with the source,
        or removal failed. The file is read as the format the manifest records
        (``qemu-img info -f FMT``), never probed.
    """
    check_image_path(path)
    check_in_pools(path, ctx.pools, ctx.allow_outside_pools, ctx.host, "remove")
    _check_shared(ctx, "delete", path)
    kind = "lv" if is_block_path(path) else "file"
    entry = ctx.manifest.find(ctx.host, path)
    exists = block_device_exists(path, ctx.host) if kind == "lv" else os.path.lexists(path)
    result: dict[str, t.Any] = {"changed": False, "path": path, "kind": kind, "before": {"exists": exists},
                                "after": {"exists": False}, "manifest_path": ctx.manifest.path,
                                "removed_dirs": []}
    if not exists:
        if entry is not None:
            dirs, left = remove_created_dirs(created_dirs_of(entry), path, ctx.check_mode)
            result.update(changed=bool(dirs), removed_dirs=dirs)
            if not ctx.check_mode:
                ctx.manifest.remove(ctx.host, path, hand_over=left)
        result.update(action="absent", msg="%s is absent on %s.%s" % (path, ctx.host, _dirs_note(result, ctx.check_mode)))
        return result
    if entry is None or entry.get("kind") != kind or (kind == "file" and not is_recorded_file(entry, path)):
        raise KvmopsError("%s on %s was not created by kvmops.migration (not recorded in %s): it was left "
                          "untouched." % (path, ctx.host, ctx.manifest.path), values={"path": path})
    users = _users(ctx, path)
    if users:
        raise KvmopsError("%s on %s is used by domain(s) %s: it was left in place." % (
            path, ctx.host, ", ".join(users)), values={"path": path, "domains": users})
    if kind == "file":
        fmt = read_format(entry.get("format"))
        if qemu_holds_lock(path, ctx.runner, fmt):
            raise KvmopsError("%s on %s is locked by a running QEMU: it was left in place." % (path, ctx.host))
        geo = qemu_img_info(path, ctx.runner, fmt)
    else:
        if block_busy(path):
            raise KvmopsError("%s on %s is mounted or held: it was left in place." % (path, ctx.host))
        geo = block_geometry(path, ctx.runner)
    result.update(changed=True, before=_describe(geo))
    if ctx.check_mode:
        result["removed_dirs"] = remove_created_dirs(created_dirs_of(entry), path, check_mode=True)[0]
        result.update(action="would_remove", msg="Would remove %s on %s.%s" % (path, ctx.host, _dirs_note(result, True)))
        return result
    if kind == "file":
        os.unlink(path)
    else:
        lv = geo.lv or {}
        target = "%s/%s" % (lv.get("vg_name"), lv.get("lv_name")) if lv else path
        run_checked(ctx.runner, ["lvremove", "-y", target], "remove LV %s on %s" % (path, ctx.host))
    result["removed_dirs"], left = remove_created_dirs(created_dirs_of(entry), path)
    ctx.manifest.remove(ctx.host, path, hand_over=left)
    result.update(action="removed", msg="Removed %s on %s.%s" % (path, ctx.host, _dirs_note(result, False)))
    return result


def _dirs_note(result: dict[str, t.Any], check_mode: bool) -> str:
    dirs = result.get("removed_dirs") or []
    if not dirs:
        return ""
    return " %s the empty directories created for it: %s." % (
        "Would remove" if check_mode else "Removed", ", ".join(dirs))


def _mode(value: t.Any) -> int:
    if value is None:
        return DEFAULT_DIR_MODE
    if isinstance(value, int):
        return value
    try:
        return int(str(value), 8)
    except ValueError as err:
        raise KvmopsError("dir_mode %r is not an octal mode such as '0711'." % value) from err


def disk_image(params: dict[str, t.Any], check_mode: bool = False, runner: Runner | None = None,
               connect: t.Callable[..., t.Any] | None = None) -> dict[str, t.Any]:
    """Backend of the ``disk_image`` module: read the state, compare, act (unless check mode).

    :param params: the module's options (see its DOCUMENTATION).
    :param connect: ``connection(uri, readonly=True)``; used to list the paths libvirt domains use.
    :returns: :func:`ensure_image` / :func:`remove_image` result plus ``diff: {before, after}``.
    :raises KvmopsError: see :func:`ensure_image` and :func:`remove_image`.
    """
    runner = runner or SubprocessRunner()
    if connect is None:
        connect = connection
    uri = params.get("uri") or "qemu:///system"
    warnings: list[str] = []
    check_image_path(params["path"])
    allow_outside = bool(params.get("allow_outside_pools"))
    pools: list[dict[str, t.Any]] | None = None
    try:
        with connect(uri, readonly=True) as conn:
            with libvirt_errors("list the domains and their disks", uri):
                in_use = paths_in_use(conn)
            if not allow_outside:
                with libvirt_errors("list the storage pools", uri):
                    pools = storage_pools(conn)
    except KvmopsError as err:
        if params.get("state", "present") != "absent":
            raise
        # Removing an image we recorded must still work when libvirtd is down (a migration that
        # failed because the destination's libvirtd died): QEMU's image lock (files) or the
        # device's holders (LVs) then tell whether anything still uses it.
        in_use = {}
        pools = None
        warnings.append("libvirt at %s did not answer (%s): only QEMU's image lock and the device's "
                        "holders were checked before removing (and not the storage pools: the "
                        "manifest still decides what may be removed)." % (uri, err))
    ctx = HostContext(host=params.get("host") or socket.gethostname(), runner=runner,
                      manifest=Manifest(params.get("manifest_path") or DEFAULT_MANIFEST), in_use=in_use,
                      check_mode=check_mode, source_fingerprint=params.get("source_fingerprint"),
                      shared_marker=params.get("shared_marker"), pools=pools,
                      allow_outside_pools=allow_outside)
    if params.get("state", "present") == "absent":
        result = remove_image(params["path"], ctx)
    else:
        spec = ImageSpec(
            path=params["path"], format=params.get("format") or "raw",
            virtual_size=params.get("virtual_size") or 0, cluster_size=params.get("cluster_size"),
            compat=params.get("compat"), backing_file=params.get("backing_file"),
            backing_format=params.get("backing_format"),
            backing_virtual_size=params.get("backing_virtual_size"),
            backing_checksum=params.get("backing_checksum"), for_domain=params.get("for_domain"),
            dir_owner=params.get("dir_owner") or "root", dir_group=params.get("dir_group") or "root",
            dir_mode=_mode(params.get("dir_mode")), lv_create=bool(params.get("lv_create")),
            lv_vg=params.get("lv_vg"), lv_name=params.get("lv_name"), lv_thin_pool=params.get("lv_thin_pool"),
            adopt_existing=bool(params.get("adopt_existing")))
        result = ensure_image(spec, ctx)
    result["diff"] = {"before": result["before"], "after": result["after"]}
    if warnings:
        result["warnings"] = list(result.get("warnings") or []) + warnings
    return result
