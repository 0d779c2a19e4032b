# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LVM facts of a host: logical volumes, volume groups, thin pools, and the names of the LV
behind a block path.

Reports are read as JSON only: ``lvs --reportformat json --units b --nosuffix`` and
``vgs --reportformat json --units b --nosuffix``; sizes are integers in bytes, through the one
size parser (``_domain_xml.to_bytes``). ``lv_attr`` char 1 is the volume type (``V`` thin
volume, ``t`` thin pool), char 5 the state (``a`` active).

Relies on: lvs(8), vgs(8) and their JSON reports; lvcreate(8) is run by ``_disk_image``.
"""

from __future__ import annotations

import json
import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._runner import Runner, run_checked

_LVS_FIELDS = "lv_name,vg_name,lv_path,lv_size,lv_attr,pool_lv,data_percent"


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


def vg_info(vg: str, runner: Runner, host: str) -> dict[str, t.Any]:
    """``{vg_name, extent_size, free}`` of volume group ``vg`` (bytes), from ``vgs --reportformat
    json --units b --nosuffix -o vg_name,vg_extent_size,vg_free VG`` (:func:`parse_vgs`).

    :raises KvmopsError: vgs failed (naming ``host``) or reported no volume group.
    """
    return parse_vgs(run_checked(runner, ["vgs", "--reportformat", "json", "--units", "b", "--nosuffix",
                                          "-o", "vg_name,vg_extent_size,vg_free", vg],
                                 "read volume group %s on %s" % (vg, host)))


def lv_names(path: str, vg: str | None = None, name: str | None = None) -> tuple[str, str]:
    """``(volume group, LV name)`` of the LV at block path ``path``: the ones given, else the
    components of ``/dev/VG/LV``.

    :raises KvmopsError: neither given nor readable from the path.
    """
    if vg and name:
        return vg, name
    parts = os.path.normpath(path).split("/")
    if len(parts) == 4 and parts[1] == "dev":
        return vg or parts[2], name or parts[3]
    raise KvmopsError("Cannot tell the volume group and LV name of %s: set lv_vg and lv_name." % path)
