# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The geometry of an image: one layer, its backing chain, or a block device.

Files: ``qemu-img info --output=json [-U] -f FMT PATH``, one layer per call, parsed from JSON
only; sizes are always integers in bytes (``virtual-size``, ``actual-size``, ``cluster-size``).
``-U`` (``--force-share``) reads images that a running QEMU holds locked. The format is never
probed (:func:`read_format`): a layer is read as the format declared for it (the domain XML's
driver type, the manifest's record of a file we made, a caller's declaration; none: raw),
because a raw disk's first sector is the guest's and may hold a qcow2 header naming any size
and any host file as backing. A backing chain is libvirt's ``<backingStore>`` or, below it,
what a declared qcow2 layer's header names with the backing format that header records (none:
raw); a raw layer never has one (:func:`geometry`).

Block devices: raw data, size from ``blockdev --getsize64``, LVM facts from ``_lvm``
(:func:`block_geometry`). The checksum of a layer's bytes proves a backing base identical
(:func:`file_checksum`).

Relies on: qemu-img(1) ``info`` (https://www.qemu.org/docs/master/tools/qemu-img.html);
blockdev(8) ``--getsize64``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import typing as t
from dataclasses import asdict, dataclass

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._lvm import lv_info
from ansible_collections.kvmops.migration.plugins.module_utils._runner import Runner, run_checked

#: The image formats disk_image creates and disk_info and disk_image accept as declared.
FORMATS = ("raw", "qcow2")
#: What a format name given to ``qemu-img -f`` may look like (raw, qcow2, vmdk, luks ...).
_FORMAT_RE = re.compile(r"^[a-z][a-z0-9]*$")
#: Longest backing chain :func:`geometry` walks.
MAX_CHAIN = 32


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
