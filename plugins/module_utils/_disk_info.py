# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The backend of the ``disk_info`` module: the disks of a domain, or image paths, with their
geometry, backing chain, LVM facts and storage fingerprint.

Every disk is read as its declared format, never probed (``_image_geometry``); a missing source
is reported as ``exists: False``, not raised. Volume disks are resolved to their path through
their storage pool.

Relies on: libvirt ``virDomainGetXMLDesc``, ``virDomainIsActive``,
``virStoragePoolLookupByName``/``virStorageVolLookupByName``/``virStorageVolGetPath``;
``qemu-img info`` and ``blockdev``/``lvs`` through ``_image_geometry``.
"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import connection, libvirt_errors, lookup_domain
from ansible_collections.kvmops.migration.plugins.module_utils._image_geometry import file_checksum, geometry, is_block_path, read_format
from ansible_collections.kvmops.migration.plugins.module_utils._runner import Runner, SubprocessRunner
from ansible_collections.kvmops.migration.plugins.module_utils._storage import check_image_path, storage_fingerprint


def describe_disk(disk: dict[str, t.Any], runner: Runner, force_share: bool = True,
                  checksums: bool = False, follow_backing: bool = True,
                  fallback_raw: bool = False) -> dict[str, t.Any]:
    """Add geometry to a ``_domain_xml.parse_disk`` dict (or ``{path, format}``): ``exists, kind,
    virtual_size, allocation, cluster_size, compat, backing: [{path, format, virtual_size,
    allocation[, checksum]}], lv, fingerprint``. Sizes in bytes. A missing source gives
    ``exists: False`` (nothing raised): the caller decides (C13: missing ISO).

    The image is read as its declared ``format`` (None: raw), never probed (:func:`_image_geometry.geometry`):
    ``format`` and ``detected_format`` are that format. The backing chain is libvirt's
    ``backing`` (``<backingStore>``) where given, else what the declared qcow2 layers' headers
    name; a raw disk has none, whatever its first sector holds. Checksums are only taken of
    those layers. With ``fallback_raw`` a file not in its declared format is described as raw
    (``format: raw``) instead of failing (:func:`_image_geometry.read_as_declared`).
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


def _volume_path(conn: t.Any, pool: str, volume: str, uri: str) -> str | None:
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
    :raises KvmopsError: a path is not absolute and normalised (:func:`_storage.check_image_path`), or
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
    uri = params.get("uri") or "qemu:///system"
    with (connect or connection)(uri, readonly=True) as conn:
        described = describe_domain(conn, lookup_domain(conn, params["domain"]), uri, runner, force, checksums)
    return {k: described[k] for k in ("domain", "disks", "copy_set")}


def disk_paths(disks: list[dict[str, t.Any]]) -> list[str]:
    """Every local path of a ``disk_info`` disks list, backing layers included, once each."""
    out: list[str] = []
    for disk in disks or []:
        for path in [disk.get("path")] + [b.get("path") for b in disk.get("backing") or []]:
            if path and disk.get("type") != "network" and path not in out:
                out.append(path)
    return out


def disk_formats(disks: list[dict[str, t.Any]]) -> dict[str, str]:
    """The declared format of every local path of a ``disk_info`` disks list (:func:`disk_paths`),
    backing layers included: ``{path: format}``, for ``host_info``'s ``formats`` on a
    destination. A path without a declared format is left out (read as raw there)."""
    out: dict[str, str] = {}
    for disk in disks or []:
        if disk.get("type") == "network":
            continue
        for item in [disk] + list(disk.get("backing") or []):
            path, fmt = item.get("path"), item.get("format")
            if path and fmt and path not in out:
                out[path] = str(fmt)
    return out
