# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Disk geometry and exclusive, sparse destination images.

Geometry
    Files: ``qemu-img info --output=json [-U] -f FMT PATH``, one layer per call, parsed from JSON
    only; sizes are always integers in bytes (``virtual-size``, ``actual-size``,
    ``cluster-size``). ``-U`` (``--force-share``) reads images that a running QEMU holds locked.
    The format is never probed (:func:`read_format`): a layer is read as the format declared for
    it (the domain XML's driver type, the manifest's record of a file we made, a caller's
    declaration; none: raw), because a raw disk's first sector is the guest's and may hold a
    qcow2 header naming any size and any host file as backing. A backing chain is libvirt's
    ``<backingStore>`` or, below it, what a declared qcow2 layer's header names with the backing
    format that header records (none: raw); a raw layer never has one (:func:`geometry`).

Paths
    Image paths must be absolute and normalised (:func:`check_image_path`), and an image is only
    created or removed under a libvirt storage pool's target directory of the host unless the
    caller allows otherwise (:func:`check_in_pools`).
    Block devices: ``blockdev --getsize64``; LVM facts from
    ``lvs --reportformat json --units b --nosuffix``.

Creation (the safety rules of DESIGN.md)
    * Never on an existing path. An image is built under a temporary name in the destination
      directory (created with ``O_CREAT|O_EXCL``), verified, then linked to its final name with
      ``os.link`` (which fails with EEXIST instead of replacing) and the temporary name removed.
      A file that appears at the path meanwhile is never overwritten. The new file gets a random
      identity in the extended attribute ``user.kvmops-migration.id`` (when the filesystem has
      user xattrs), recorded in the manifest with its inode: a freed inode number is reused at
      once by the next file made in the directory, so the inode alone does not prove the file ours.
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
    * Everything created is recorded in a JSON manifest on the host (default
      :data:`DEFAULT_MANIFEST`). An existing image is reused only when the manifest records it
      (same host, path, inode and identity attribute), it matches the requested geometry, and no
      libvirt domain uses it (except the domain it was made for). ``absent`` removes only
      recorded, unused images that no process holds QEMU's lock bytes of.

Shared storage
    A destination directory that is really the source's storage (NFS, cluster FS) must not get
    images created or deleted by us. Two tests, both done on the destination:
    * ``source_fingerprint`` (from :func:`storage_fingerprint` run on the source, returned by the
      ``disk_info`` module per disk as ``fingerprint``): when the source image's path is visible
      here with the same inode number and size, it is the same file;
    * ``shared_marker`` ``{path, token}``: the caller wrote a file with a random token beside the
      source image (e.g. ``ansible.builtin.copy``); when the destination reads the same token at
      that path, the directory is shared.

Free space
    :func:`plan_free_space`: per destination filesystem, needed = sum over the disks landing there
    (allocation when the copy keeps sparseness, virtual size otherwise) plus a margin of
    :data:`MARGIN_RATIO` (5 %) of that sum plus :data:`MARGIN_BYTES` (256 MiB) for qcow2 metadata,
    rounding and logs; free = ``statvfs`` ``f_bavail * f_frsize``.

Relies on: qemu-img(1) (https://www.qemu.org/docs/master/tools/qemu-img.html) ``info``/``create``
and the qcow2 options ``cluster_size``, ``compat``, ``preallocation``; lvs(8)/lvcreate(8) JSON
reports and ``lv_attr`` (char 1 volume type: ``V`` thin volume, ``t`` thin pool; char 5 state
``a`` active); blockdev(8) ``--getsize64``; link(2) EEXIST semantics; open(2) ``O_EXCL`` on a
block device fails with EBUSY when the device is mounted or otherwise held.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import typing as t
from dataclasses import asdict, dataclass, field

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None  # type: ignore[assignment]

DEFAULT_MANIFEST = "/var/lib/kvmops-migration/manifest.json"
MARGIN_RATIO = 0.05
MARGIN_BYTES = 256 * 1024 ** 2
DEFAULT_DIR_MODE = 0o711
IMAGE_MODE = 0o600
FORMATS = ("raw", "qcow2")
#: What a format name given to ``qemu-img -f`` may look like (raw, qcow2, vmdk, luks ...).
_FORMAT_RE = re.compile(r"^[a-z][a-z0-9]*$")
#: Longest backing chain :func:`geometry` walks.
MAX_CHAIN = 32
#: Extended attribute holding the random identity recorded in the manifest for a file we made.
ID_XATTR = "user.kvmops-migration.id"
#: The byte ranges QEMU's file locking uses: 100+n "holds permission n", 200+n "does not share
#: permission n" (block/file-posix.c raw_apply_lock_bytes; up to 64 permission bits).
QEMU_LOCK_RANGES = ((100, 64), (200, 64))


# --------------------------------------------------------------------------- commands
@dataclass
class RunResult:
    """Outcome of one command: exit code, stdout and stderr as text."""
    rc: int
    stdout: str
    stderr: str


class Runner:
    """Runs external commands. Tests pass a fake with canned outputs."""

    def run(self, argv: list[str]) -> RunResult:  # pragma: no cover - interface
        raise NotImplementedError

    def which(self, name: str) -> str | None:
        return shutil.which(name)


class SubprocessRunner(Runner):
    """The real runner: ``subprocess.run`` with ``LC_ALL=C``, no shell, no stdin."""

    def run(self, argv: list[str]) -> RunResult:
        env = dict(os.environ, LC_ALL="C", LANG="C")
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, check=False)
        except OSError as err:
            return RunResult(127, "", "%s: %s" % (argv[0], err))
        return RunResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                         proc.stderr.decode("utf-8", "replace"))


def run_checked(runner: Runner, argv: list[str], what: str) -> str:
    """Run ``argv``; return stdout or raise :class:`KvmopsError` naming ``what``.

    :raises KvmopsError: non-zero exit; the tool's stderr is the detail.
    """
    res = runner.run(argv)
    if res.rc != 0:
        raise KvmopsError("Could not %s: %s exited with %d." % (what, argv[0], res.rc),
                          detail=(res.stderr or res.stdout).strip() or None,
                          values={"command": argv})
    return res.stdout


# --------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """One image layer or device. Sizes in bytes.

    ``kind`` is ``file`` or ``block``; ``allocation`` is what the file really uses on the host
    (qemu-img ``actual-size``); ``cluster_size`` and ``compat`` are qcow2 only.
    """
    path: str
    format: str
    virtual_size: int
    allocation: int | None = None
    kind: str = "file"
    cluster_size: int | None = None
    compat: str | None = None
    backing_file: str | None = None
    backing_format: str | None = None
    full_backing_file: str | None = None
    encrypted: bool = False
    dirty: bool = False
    lv: dict[str, t.Any] | None = None

    def as_dict(self) -> dict[str, t.Any]:
        return asdict(self)


def _int(value: t.Any, name: str, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise KvmopsError("qemu-img reported no integer %s for %s (got %r)." % (name, path, value))
    return value


def _layer(doc: dict[str, t.Any]) -> Geometry:
    path = str(doc.get("filename", ""))
    spec = (doc.get("format-specific") or {}).get("data") or {}
    return Geometry(
        path=path,
        format=str(doc.get("format")),
        virtual_size=_int(doc.get("virtual-size"), "virtual-size", path),
        allocation=doc.get("actual-size") if isinstance(doc.get("actual-size"), int) else None,
        cluster_size=doc.get("cluster-size"),
        compat=spec.get("compat"),
        backing_file=doc.get("backing-filename"),
        backing_format=doc.get("backing-filename-format"),
        full_backing_file=doc.get("full-backing-filename"),
        encrypted=bool(doc.get("encrypted", False)),
        dirty=bool(doc.get("dirty-flag", False)),
    )


def parse_qemu_img_info(text: str) -> list[Geometry]:
    """Parse ``qemu-img info --output=json`` (one object, or a list with ``--backing-chain``).

    :returns: layers, top first.
    :raises KvmopsError: not JSON, or a layer without an integer ``virtual-size``.
    """
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise KvmopsError("qemu-img info did not return JSON.", detail=str(err)) from err
    docs = doc if isinstance(doc, list) else [doc]
    if not docs or not all(isinstance(d, dict) for d in docs):
        raise KvmopsError("qemu-img info returned an unexpected JSON document.", detail=text[:200])
    return [_layer(d) for d in docs]


def read_format(fmt: str | None) -> str:
    """The format to read an image as: the declared one, else ``raw`` (never probed).

    A format that nobody declared is never guessed from the image's first bytes: a raw disk's
    first sector is written by the guest, which can put a qcow2 header there naming any virtual
    size and any host file as backing file.

    :raises KvmopsError: ``fmt`` is not a plain qemu-img format name (lower-case letters, digits).
    """
    if not fmt:
        return "raw"
    if not _FORMAT_RE.match(str(fmt)):
        raise KvmopsError("Image format %r is not a qemu-img format name (such as raw or qcow2)." % (fmt,))
    return str(fmt)


def qemu_img_info(path: str, runner: Runner, fmt: str, force_share: bool = True) -> Geometry:
    """Geometry of one image layer, read as the declared format ``fmt``.

    Runs ``qemu-img info --output=json [-U] -f FMT PATH``: never ``--backing-chain`` (qemu-img
    would then open the backing files the header names, probing formats the header does not
    record) and never without ``-f``. ``qemu-img info`` does not open the backing file.

    :param fmt: the declared format (``-f``), see :func:`read_format`; required.
    :param force_share: pass ``-U`` so that images of running guests can be read.
    :raises KvmopsError: qemu-img failed (detail: its stderr) or bad JSON.
    """
    argv = ["qemu-img", "info", "--output=json"]
    if force_share:
        argv.append("-U")
    argv += ["-f", read_format(fmt), path]
    layers = parse_qemu_img_info(run_checked(runner, argv, "read the geometry of %s as %s" % (path, fmt)))
    return layers[0]


def parse_lvs(text: str) -> list[dict[str, t.Any]]:
    """Parse ``lvs --reportformat json --units b --nosuffix`` into plain dicts.

    Shape per LV: ``{lv_name, vg_name, lv_path, size, lv_attr, pool_lv, data_percent,
    thin, thin_pool, active}``; ``size`` in bytes (a trailing ``B`` is tolerated).
    """
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise KvmopsError("lvs did not return JSON.", detail=str(err)) from err
    out = []
    for report in doc.get("report", []):
        for lv in report.get("lv", []):
            attr = lv.get("lv_attr", "") or ""
            pct = lv.get("data_percent") or ""
            out.append({
                "lv_name": lv.get("lv_name"),
                "vg_name": lv.get("vg_name"),
                "lv_path": lv.get("lv_path") or None,
                "size": _bytes(lv.get("lv_size")),
                "lv_attr": attr,
                "pool_lv": lv.get("pool_lv") or None,
                "data_percent": float(pct) if pct else None,
                "thin": attr[:1] == "V",
                "thin_pool": attr[:1] == "t",
                "active": attr[4:5] == "a",
            })
    return out


def parse_vgs(text: str) -> dict[str, t.Any]:
    """Parse ``vgs --reportformat json --units b --nosuffix -o vg_name,vg_extent_size,vg_free``."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise KvmopsError("vgs did not return JSON.", detail=str(err)) from err
    for report in doc.get("report", []):
        for vg in report.get("vg", []):
            return {"vg_name": vg.get("vg_name"), "extent_size": _bytes(vg.get("vg_extent_size")),
                    "free": _bytes(vg.get("vg_free"))}
    raise KvmopsError("vgs returned no volume group.", detail=text[:200])


def _bytes(value: t.Any) -> int:
    """A size of an LVM report in ``--units b`` (``"1073741824B"``; none is 0) in bytes, by
    :func:`_domain_xml.to_bytes` (the one size parser)."""
    text = str(value or "0").strip().rstrip("Bb")
    return _domain_xml.to_bytes(text.split(".", maxsplit=1)[0], "b") if text else 0


_LVS_FIELDS = "lv_name,vg_name,lv_path,lv_size,lv_attr,pool_lv,data_percent"


def lv_info(path: str, runner: Runner) -> dict[str, t.Any] | None:
    """LVM facts of the LV at ``path`` or None when it is not an LV (or LVM is absent).

    Thin volumes get ``pool_free`` (bytes free in their pool).
    """
    if runner.which("lvs") is None:
        return None
    res = runner.run(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                      "-o", _LVS_FIELDS, path])
    if res.rc != 0:
        return None
    lvs = parse_lvs(res.stdout)
    if not lvs:
        return None
    info = lvs[0]
    if info["thin"] and info["pool_lv"]:
        info["pool_free"] = thin_pool_free(info["vg_name"], info["pool_lv"], runner)
    return info


def thin_pool_free(vg: str, pool: str, runner: Runner) -> int:
    """Bytes free in thin pool ``vg/pool``: size * (100 - data_percent) / 100.

    :raises KvmopsError: the pool does not exist.
    """
    out = run_checked(runner, ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix",
                               "-o", _LVS_FIELDS, "%s/%s" % (vg, pool)],
                      "read thin pool %s/%s" % (vg, pool))
    lvs = parse_lvs(out)
    if not lvs:
        raise KvmopsError("Thin pool %s/%s not found." % (vg, pool))
    used = (lvs[0]["data_percent"] or 0.0) / 100.0
    return int(lvs[0]["size"] * (1.0 - used))


def block_geometry(path: str, runner: Runner) -> Geometry:
    """Geometry of a block device: raw data, size from ``blockdev --getsize64`` (bytes), LVM
    facts in ``lv`` when the device is an LV. Allocation is the full size (or, for a thin LV,
    its data_percent share).

    :raises KvmopsError: blockdev failed.
    """
    out = run_checked(runner, ["blockdev", "--getsize64", path], "read the size of block device %s" % path)
    try:
        size = int(out.strip())
    except ValueError as err:
        raise KvmopsError("blockdev --getsize64 %s printed %r, not a byte count." % (path, out)) from err
    lv = lv_info(path, runner)
    alloc = size
    if lv and lv["thin"] and lv["data_percent"] is not None:
        alloc = int(size * lv["data_percent"] / 100.0)
    return Geometry(path=path, format="raw", virtual_size=size, allocation=alloc, kind="block", lv=lv)


def is_block_path(path: str) -> bool:
    """True for an existing block device or any path under ``/dev/`` (never a file image)."""
    if os.path.normpath(path).startswith("/dev/"):
        return True
    with contextlib.suppress(OSError):
        return stat.S_ISBLK(os.stat(path).st_mode)
    return False


def read_as_declared(path: str, runner: Runner, fmt: str, force_share: bool = True,
                     fallback_raw: bool = False) -> Geometry:
    """One layer read as ``fmt`` (:func:`qemu_img_info`); with ``fallback_raw``, a file that is
    not in that format (qemu-img refuses it) is read as ``raw`` instead of failing: what a file
    of someone else at a path holds is then reported as the raw bytes it is."""
    try:
        return qemu_img_info(path, runner, fmt, force_share=force_share)
    except KvmopsError:
        if not fallback_raw or read_format(fmt) == "raw":
            raise
    return qemu_img_info(path, runner, "raw", force_share=force_share)


def _next_layer(geo: Geometry, declared: list[dict[str, t.Any]], depth: int) -> tuple[str, str] | None:
    """``(path, format)`` of the layer below ``geo``, or None at the end of the chain.

    Only a qcow2 layer has a backing file. libvirt's ``<backingStore>`` layer at ``depth`` (its
    path and declared format) wins; without one the qcow2 header's backing path is taken with
    the backing format the header records, else ``raw`` (never probed). A backing file that is
    not a local absolute path (``json:``, a URL, a network layer) ends the chain.
    """
    if geo.format != "qcow2":
        return None
    if depth < len(declared):
        layer = declared[depth]
        if not layer.get("path") or layer.get("type") == "network":
            return None
        return str(layer["path"]), read_format(layer.get("format"))
    if not geo.backing_file:
        return None
    path = geo.full_backing_file or geo.backing_file
    if not os.path.isabs(path):
        if ":" in path.split("/", 1)[0]:
            return None
        path = os.path.join(os.path.dirname(geo.path), path)
    return os.path.normpath(path), read_format(geo.backing_format)


def geometry(path: str, runner: Runner, force_share: bool = True, fmt: str | None = None,
             backing: t.Sequence[dict[str, t.Any]] | None = None, follow_backing: bool = True,
             fallback_raw: bool = False) -> list[Geometry]:
    """Geometry of an image and its backing chain (top first), every layer read as its
    declared format (:func:`qemu_img_info`, ``-f``), or of a raw block device (one entry,
    :func:`block_geometry`).

    :param fmt: the declared format of the top layer (the domain's ``<driver type>``); None is
        ``raw`` (:func:`read_format`). A raw layer never has a backing chain.
    :param backing: libvirt's ``<backingStore>`` chain (``_domain_xml`` ``backing``: ``[{path,
        format, type}]``, nearest first); layers it does not list come from the headers of the
        declared qcow2 layers only (:func:`_next_layer`).
    :param follow_backing: False reads the top layer only.
    :param fallback_raw: a top layer that is not in format ``fmt`` is read as raw
        (:func:`read_as_declared`) instead of failing.
    :raises KvmopsError: qemu-img/blockdev failed, the chain loops or is deeper than
        :data:`MAX_CHAIN` layers.
    """
    declared = list(backing or [])
    layers: list[Geometry] = []
    seen = set()
    current: tuple[str, str] | None = (path, read_format(fmt))
    while current is not None:
        layer_path, layer_fmt = current
        if layer_path in seen:
            raise KvmopsError("The backing chain of %s loops at %s: fix the image's backing file "
                              "(qemu-img rebase -u)." % (path, layer_path), values={"path": path})
        if len(layers) >= MAX_CHAIN:
            raise KvmopsError("The backing chain of %s is deeper than %d layers: flatten it (qemu-img "
                              "convert or virsh blockpull)." % (path, MAX_CHAIN), values={"path": path})
        seen.add(layer_path)
        if is_block_path(layer_path) and layer_fmt == "raw":
            geo = block_geometry(layer_path, runner)
        else:
            geo = read_as_declared(layer_path, runner, layer_fmt, force_share=force_share,
                                   fallback_raw=fallback_raw and not layers)
            geo.path = layer_path
            if is_block_path(layer_path):
                geo.kind = "block"
        layers.append(geo)
        if not follow_backing:
            break
        current = _next_layer(geo, declared, len(layers) - 1)
    return layers


def file_checksum(path: str, algorithm: str = "sha256", chunk: int = 4 * 1024 ** 2) -> str:
    """Hex digest of the file's bytes (used to prove a backing base identical, case C02)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- shared storage
def storage_fingerprint(path: str) -> dict[str, t.Any]:
    """``{path, inode, size, fsid, kvmops_id}`` of an image as seen on this host.

    ``kvmops_id`` is the identity attribute (:data:`ID_XATTR`) of a file this collection
    created, else None; with ``inode`` it tells whether a manifest entry is this very file
    (:func:`fingerprint_matches`)."""
    st = os.stat(path)
    fsid = None
    with contextlib.suppress(OSError, AttributeError):
        fsid = os.statvfs(path).f_fsid
    kvmops_id = None
    with contextlib.suppress(OSError, AttributeError):
        kvmops_id = os.getxattr(path, ID_XATTR).decode("ascii", "replace")
    return {"path": path, "inode": st.st_ino, "size": st.st_size, "fsid": fsid, "kvmops_id": kvmops_id}


def fingerprint_matches(entry: dict[str, t.Any], fingerprint: dict[str, t.Any] | None) -> bool:
    """The rule of :func:`is_recorded_file`, applied to a :func:`storage_fingerprint` taken on
    the host of the file (the pre-flight runs elsewhere): same inode and, when the manifest
    recorded one, the same identity attribute. No fingerprint: no match."""
    if not fingerprint:
        return False
    if entry.get("inode") is not None and fingerprint.get("inode") != entry["inode"]:
        return False
    return not entry.get("id") or fingerprint.get("kvmops_id") == entry["id"]


def shared_storage_reason(source_fingerprint: dict[str, t.Any] | None = None,
                          shared_marker: dict[str, t.Any] | None = None) -> str | None:
    """Why this host sees the source's storage (shared), or None.

    :param source_fingerprint: :func:`storage_fingerprint` of the source image, taken on the
        source host; matched when the same path here has the same inode and size.
    :param shared_marker: ``{path, token}`` of a marker file the caller wrote on the source;
        matched when the file here holds the same token.
    """
    if source_fingerprint and source_fingerprint.get("path"):
        path = source_fingerprint["path"]
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if st.st_ino == source_fingerprint.get("inode") and st.st_size == source_fingerprint.get("size"):
                return ("the source image %s is visible on this host with the same inode (%d) and size "
                        "(%d bytes)" % (path, st.st_ino, st.st_size))
    if shared_marker and shared_marker.get("path"):
        with contextlib.suppress(OSError):
            with open(shared_marker["path"], "r", encoding="utf-8") as handle:
                if handle.read().strip() == str(shared_marker.get("token", "")).strip():
                    return "the marker file %s written on the source is visible on this host" % (
                        shared_marker["path"])
    return None


# --------------------------------------------------------------------------- path rules
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


def recorded_format(ctx: "HostContext", path: str) -> str | None:
    """The format the manifest records for the file at ``path`` when it records this very file
    (:func:`is_recorded_file`), else None: the caller then reads it as ``raw`` or as declared,
    never probed (a file we did not make may hold a guest-written header)."""
    entry = ctx.manifest.find(ctx.host, path)
    if entry is not None and entry.get("kind") == "file" and is_recorded_file(entry, path):
        return read_format(entry.get("format"))
    return None


# --------------------------------------------------------------------------- free space
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


# --------------------------------------------------------------------------- manifest
class Manifest:
    """The JSON record of what this collection created on a host.

    File shape: ``{"version": 1, "entries": [{host, path, kind: file|lv, format, virtual_size,
    created_at, for_domain, inode, id, created_dirs}]}`` (``id``: the :data:`ID_XATTR` value of a
    file, where the filesystem has user xattrs; ``created_dirs``: ``[{path, inode}]``, the parent
    directories made for the image, outermost first; entries written before it was recorded have
    none, and then no directory is ever removed for them). Writes go to a temporary file
    renamed over the manifest (our own file), under an ``flock`` on ``<path>.lock``.
    """

    def __init__(self, path: str = DEFAULT_MANIFEST) -> None:
        self.path = path

    def entries(self) -> list[dict[str, t.Any]]:
        try:
            with open(self.path, "r", encoding="utf-8") as handle:
                doc = json.load(handle)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise KvmopsError("The kvmops manifest %s is unreadable: fix or move it aside "
                              "(it lists the images this tool created)." % self.path,
                              detail=str(err)) from err
        return list(doc.get("entries", []))

    def find(self, host: str, path: str) -> dict[str, t.Any] | None:
        for entry in self.entries():
            if entry.get("host") == host and entry.get("path") == path:
                return entry
        return None

    @contextlib.contextmanager
    def _locked(self) -> t.Iterator[None]:
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with open(self.path + ".lock", "a", encoding="utf-8") as lock:
            if fcntl is not None:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            yield

    def _write(self, entries: list[dict[str, t.Any]]) -> None:
        tmp = "%s.%s.tmp" % (self.path, secrets.token_hex(4))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "entries": entries}, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def add(self, entry: dict[str, t.Any]) -> None:
        with self._locked():
            entries = [e for e in self.entries()
                       if not (e.get("host") == entry["host"] and e.get("path") == entry["path"])]
            entries.append(entry)
            self._write(entries)

    def remove(self, host: str, path: str, hand_over: t.Sequence[dict[str, t.Any]] = ()) -> None:
        """Drop the entry of ``path``.

        :param hand_over: directories recorded with it that could not be removed yet (not
            empty): each is recorded again with an image of ours still inside it, so that
            removing that one removes the directory (a directory made for the first of two
            images is not left behind when the second goes last).
        """
        with self._locked():
            entries = self.entries()
            kept = [e for e in entries if not (e.get("host") == host and e.get("path") == path)]
            moved = False
            for record in hand_over:
                heir = next((e for e in kept if e.get("host") == host
                             and _is_under(str(e.get("path") or ""), record["path"])), None)
                if heir is None:
                    continue
                dirs = [d for d in created_dirs_of(heir) if d["path"] != record["path"]] + [dict(record)]
                heir["created_dirs"] = sorted(dirs, key=lambda d: len(d["path"]))
                moved = True
            if len(kept) != len(entries) or moved:
                self._write(kept)


def _is_under(path: str, directory: str) -> bool:
    """True when ``path`` lies inside ``directory`` (both absolute, normalised)."""
    directory = directory.rstrip("/")
    return bool(directory) and path.startswith(directory + "/")


def created_dirs_of(entry: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The ``created_dirs`` of a manifest entry as ``[{path, inode}]``, outermost first; ``[]``
    for entries of older versions (no field) and for records that are not well-formed."""
    out = []
    for record in entry.get("created_dirs") or []:
        if isinstance(record, dict) and isinstance(record.get("path"), str) and os.path.isabs(record["path"]):
            out.append({"path": os.path.normpath(record["path"]), "inode": record.get("inode")})
    return sorted(out, key=lambda d: len(d["path"]))


# --------------------------------------------------------------------------- in use
def paths_in_use(conn: t.Any) -> dict[str, list[str]]:
    """Every storage path used by a libvirt domain on ``conn`` -> domain names.

    Reads the live and the inactive XML of every domain (running or defined).
    """
    used: dict[str, list[str]] = {}
    for dom in conn.listAllDomains(0):
        name = dom.name()
        for flags in (0, 2):  # 2 = VIR_DOMAIN_XML_INACTIVE
            try:
                xml = dom.XMLDesc(flags)
            except Exception:  # a transient domain has no inactive XML; the live one was read
                if flags == 0:
                    raise
                continue
            for path in _domain_xml.referenced_paths(xml):
                names = used.setdefault(os.path.realpath(path), [])
                if name not in names:
                    names.append(name)
    return used


def lock_bytes_held(path: str) -> bool:
    """True when another process holds a lock on QEMU's lock bytes of the file
    (:data:`QEMU_LOCK_RANGES`): a QEMU (or qemu-img, qemu-nbd, ...) has the image open.

    Uses ``fcntl(F_GETLK)`` with a write-lock probe, which reports POSIX and OFD locks of other
    processes (QEMU takes shared OFD locks on those bytes, so even a read-only user shows). A
    running guest's raw image holds only the "consistent read" and "write" bytes, which
    ``qemu-img info`` without ``-U`` does not conflict with: that probe alone misses it.
    """
    if fcntl is None or struct.calcsize("hh4xqqi4x") != 32:  # pragma: no cover - not LP64 Linux
        return False
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for start, length in QEMU_LOCK_RANGES:
            probe = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
            got = fcntl.fcntl(fd, fcntl.F_GETLK, probe)
            if struct.unpack("hh4xqqi4x", got)[0] != fcntl.F_UNLCK:
                return True
    finally:
        os.close(fd)
    return False


def qemu_holds_lock(path: str, runner: Runner, fmt: str | None = None) -> bool:
    """True when a process (QEMU) has the image open: it holds QEMU's lock bytes
    (:func:`lock_bytes_held`) or ``qemu-img info --output=json -f FMT PATH`` (without ``-U``)
    fails on a lock.

    :param fmt: the format recorded for the image (:func:`read_format`: None is raw).
    """
    with contextlib.suppress(OSError):
        if lock_bytes_held(path):
            return True
    res = runner.run(["qemu-img", "info", "--output=json", "-f", read_format(fmt), path])
    return res.rc != 0 and "lock" in res.stderr.lower()


def tag_file(path: str) -> str | None:
    """Give the file a random identity in :data:`ID_XATTR`; None when the filesystem has no user
    extended attributes (then the manifest falls back to the inode alone)."""
    token = secrets.token_hex(16)
    try:
        os.setxattr(path, ID_XATTR, token.encode("ascii"), follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return token


def is_recorded_file(entry: dict[str, t.Any], path: str) -> bool:
    """True when the file at ``path`` is the one the manifest ``entry`` records: the same inode
    and, when recorded, the same identity attribute (a file made later at the same path may get
    the freed inode number again, never the attribute)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if entry.get("inode") is not None and st.st_ino != entry["inode"]:
        return False
    if entry.get("id"):
        try:
            value = os.getxattr(path, ID_XATTR, follow_symlinks=False).decode("ascii", "replace")
        except OSError:
            return False
        if value != entry["id"]:
            return False
    return True


def block_busy(path: str) -> bool:
    """True when the block device is mounted or held (open with O_EXCL fails with EBUSY)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL)
    except OSError as err:
        return err.errno == errno.EBUSY
    os.close(fd)
    return False


# --------------------------------------------------------------------------- desired image
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
    ``pools`` (:func:`storage_pools`, None when libvirt was not asked: not checked) and
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
        (:func:`remove_created_dirs` removes only those, only when empty, only the same inode).
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


def remove_created_dirs(records: t.Sequence[dict[str, t.Any]], image_path: str,
                        check_mode: bool = False) -> tuple[list[str], list[dict[str, t.Any]]]:
    """Remove the directories we made for ``image_path`` (``created_dirs`` of its manifest
    entry) that are empty once the image is gone, innermost first.

    Never a directory we did not make: only recorded paths that contain ``image_path``, are
    still a directory (not a symlink) with the recorded inode; never a non-empty one (``rmdir``,
    which refuses one that is not empty). In check mode nothing is removed and the answer
    says what would be (the image and the inner recorded directories counted as gone).

    :returns: ``(removed, kept)``: the paths removed (or that would be), and the records of
        ours left because they are not empty (for :meth:`Manifest.remove` to hand over).
    """
    removed: list[str] = []
    kept: list[dict[str, t.Any]] = []
    gone = os.path.normpath(image_path)
    for record in sorted(records, key=lambda d: len(d["path"]), reverse=True):
        directory = record["path"]
        if not _is_under(gone, directory) and gone != directory:
            continue
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            gone = directory
            continue
        if not stat.S_ISDIR(st.st_mode) or (record.get("inode") is not None and st.st_ino != record["inode"]):
            continue  # not the directory we made any more: never ours to remove
        if kept:
            kept.append(record)
            continue
        if check_mode:
            rest = [n for n in os.listdir(directory) if os.path.join(directory, n) != gone]
            if rest:
                kept.append(record)
            else:
                removed.append(directory)
                gone = directory
            continue
        try:
            os.rmdir(directory)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise KvmopsError("Could not remove directory %s that kvmops.migration created: %s."
                                  % (directory, err.strerror or err)) from err
            kept.append(record)
            continue
        removed.append(directory)
        gone = directory
    return removed, kept


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
        recorded = recorded_format(ctx, spec.path)
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
    """Build the image under a temporary name, verify it, tag it (:func:`tag_file`), link it to
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


def _lv_names(spec: ImageSpec) -> tuple[str, str]:
    if spec.lv_vg and spec.lv_name:
        return spec.lv_vg, spec.lv_name
    parts = os.path.normpath(spec.path).split("/")
    if len(parts) == 4 and parts[1] == "dev":
        return spec.lv_vg or parts[2], spec.lv_name or parts[3]
    raise KvmopsError("Cannot tell the volume group and LV name of %s: set lv_vg and lv_name." % spec.path)


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
    vg, name = _lv_names(spec)
    if not spec.lv_create:
        raise KvmopsError("Block device %s is missing on %s: create an LV of exactly %d bytes "
                          "(lvcreate -L %db -n %s %s) or set lv_create." % (
                              spec.path, ctx.host, spec.virtual_size, spec.virtual_size, name, vg),
                          values={"path": spec.path, "expected": spec.virtual_size})
    vgi = parse_vgs(run_checked(ctx.runner, ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
                                             "-o", "vg_name,vg_extent_size,vg_free", vg],
                                "read volume group %s on %s" % (vg, ctx.host)))
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
    (:func:`remove_created_dirs`); those still holding another image of ours are handed over
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


# --------------------------------------------------------------------------- disk facts
def describe_disk(disk: dict[str, t.Any], runner: Runner, force_share: bool = True,
                  checksums: bool = False, follow_backing: bool = True,
                  fallback_raw: bool = False) -> dict[str, t.Any]:
    """Add geometry to a ``_domain_xml.parse_disk`` dict (or ``{path, format}``): ``exists, kind,
    virtual_size, allocation, cluster_size, compat, backing: [{path, format, virtual_size,
    allocation[, checksum]}], lv, fingerprint``. Sizes in bytes. A missing source gives
    ``exists: False`` (nothing raised): the caller decides (C13: missing ISO).

    The image is read as its declared ``format`` (None: raw), never probed (:func:`geometry`):
    ``format`` and ``detected_format`` are that format. The backing chain is libvirt's
    ``backing`` (``<backingStore>``) where given, else what the declared qcow2 layers' headers
    name; a raw disk has none, whatever its first sector holds. Checksums are only taken of
    those layers. With ``fallback_raw`` a file not in its declared format is described as raw
    (``format: raw``) instead of failing (:func:`read_as_declared`).
    """
    out = dict(disk)
    path = out.get("path")
    out.update({"exists": False, "kind": None, "virtual_size": None, "allocation": None,
                "cluster_size": None, "compat": None, "lv": None, "fingerprint": None})
    out.setdefault("backing", [])
    if not path or out.get("type") == "network":
        return out
    if not os.path.exists(path):
        return out
    fmt = read_format(out.get("format"))
    layers = geometry(path, runner, force_share=force_share, fmt=fmt, backing=out["backing"],
                      follow_backing=follow_backing, fallback_raw=fallback_raw)
    top = layers[0]
    out.update({"exists": True, "kind": top.kind, "format": top.format if fallback_raw else fmt,
                "detected_format": top.format, "virtual_size": top.virtual_size, "allocation": top.allocation,
                "cluster_size": top.cluster_size, "compat": top.compat, "lv": top.lv,
                "fingerprint": storage_fingerprint(path) if top.kind == "file" else None})
    chain = []
    for layer in layers[1:]:
        item = {"path": layer.path, "format": layer.format, "virtual_size": layer.virtual_size,
                "allocation": layer.allocation, "backing_file": layer.backing_file}
        if checksums and os.path.isfile(layer.path):
            item["checksum"] = "sha256:" + file_checksum(layer.path)
        chain.append(item)
    if len(layers) > 1 or not out["backing"]:
        out["backing"] = chain
    out["backing_file"] = top.backing_file
    out["backing_format"] = top.backing_format
    return out


# --------------------------------------------------------------------------- module entry points
def _volume_path(conn: t.Any, pool: str, volume: str, uri: str) -> str | None:
    from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import libvirt_errors
    with libvirt_errors("resolve volume %s in pool %s" % (volume, pool), uri):
        return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path())


def describe_domain(conn: t.Any, dom: t.Any, uri: str, runner: Runner, force_share: bool = True,
                    checksums: bool = False) -> dict[str, t.Any]:
    """The disks of a domain with their geometry, as ``disk_info`` returns them.

    Reads the domain's current XML (the live one of a running domain), resolves volume disks to
    their path through the storage pool and describes every disk (:func:`describe_disk`; always
    force-share for a running domain).

    :returns: ``{domain: {name, uuid, active}, facts, disks, copy_set}``; ``facts`` is
        ``_domain_xml.domain_facts`` of that XML with ``disks`` replaced by the described ones.
    :raises KvmopsError: libvirt or qemu-img failure.
    """
    from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import libvirt_errors
    with libvirt_errors("read domain %s" % dom.name(), uri):
        active = bool(dom.isActive())
        xml = dom.XMLDesc(0)
    facts = _domain_xml.domain_facts(xml)
    for disk in facts["disks"]:
        if disk["type"] == "volume" and disk.get("pool") and disk.get("volume"):
            disk["path"] = _volume_path(conn, disk["pool"], disk["volume"], uri)
    facts["disks"] = [describe_disk(d, runner, force_share=force_share or active, checksums=checksums)
                      for d in facts["disks"]]
    return {"domain": {"name": facts["name"], "uuid": facts["uuid"], "active": active}, "facts": facts,
            "disks": facts["disks"], "copy_set": _domain_xml.copy_set(facts["disks"])}


def describe_paths(paths: t.Iterable[str], runner: Runner, force_share: bool = True,
                   checksums: bool = False, formats: t.Mapping[str, str | None] | None = None,
                   follow_backing: bool = True, fallback_raw: bool = False) -> list[dict[str, t.Any]]:
    """One ``disk_info`` entry per image file or block device path, without a domain.

    :param formats: the declared format per path; a path without one is read as ``raw``
        (never probed, so no backing chain: a qcow2 header in it is guest data).
    :param fallback_raw: see :func:`describe_disk`.
    :raises KvmopsError: a path is not absolute and normalised (:func:`check_image_path`), or
        qemu-img failed.
    """
    formats = formats or {}
    out = []
    for path in paths:
        check_image_path(path)
        block = is_block_path(path)
        out.append(describe_disk({"target": None, "device": "disk", "type": "block" if block else "file",
                                  "path": path, "format": read_format(formats.get(path)), "readonly": False,
                                  "shareable": False, "backing": []}, runner, force_share=force_share,
                                 checksums=checksums, follow_backing=follow_backing,
                                 fallback_raw=fallback_raw))
    return out


def disk_info(params: dict[str, t.Any], runner: Runner | None = None,
              connect: t.Callable[..., t.Any] | None = None) -> dict[str, t.Any]:
    """Backend of the ``disk_info`` module.

    :param params: ``{domain, paths, format, uri, force_share, checksums}``; ``format`` is the
        declared format of every path of ``paths`` (None: raw, no backing chain).
    :param connect: ``connection(uri, readonly=True)`` context manager (``_libvirt.connection``).
    :returns: ``{domain: {name, uuid, active}|None, disks: [...], copy_set: [targets]}``.
    :raises KvmopsError: domain not found, libvirt or qemu-img failure.
    """
    runner = runner or SubprocessRunner()
    force = bool(params.get("force_share", True))
    checksums = bool(params.get("checksums", False))
    if not params.get("domain"):
        paths = params.get("paths") or []
        fmt = read_format(params.get("format"))
        return {"domain": None, "copy_set": [],
                "disks": describe_paths(paths, runner, force, checksums, formats={p: fmt for p in paths})}
    from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import connection, lookup_domain
    uri = params.get("uri") or "qemu:///system"
    with (connect or connection)(uri, readonly=True) as conn:
        described = describe_domain(conn, lookup_domain(conn, params["domain"]), uri, runner, force, checksums)
    return {k: described[k] for k in ("domain", "disks", "copy_set")}


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
        from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import connection
        connect = connection
    uri = params.get("uri") or "qemu:///system"
    warnings: list[str] = []
    check_image_path(params["path"])
    allow_outside = bool(params.get("allow_outside_pools"))
    pools: list[dict[str, t.Any]] | None = None
    try:
        with connect(uri, readonly=True) as conn:
            from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import libvirt_errors
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
