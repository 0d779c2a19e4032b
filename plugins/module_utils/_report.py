# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a person reads: the findings of a pre-flight report as a table (:func:`findings_table`),
the destination images after a move compared with the source's, sparse or not
(:func:`image_report`), and the one summary of a migration (:func:`migration_summary`: from, to,
duration, downtime, bytes moved, images created, allocation on both hosts, with ``lines`` for
people). The verify and report steps of ``migrate_guest``, through the collection's filters.

Inputs are the modules' results as Ansible registers them: disk lists of ``disk_info`` (sizes
and allocation in bytes), the ``migrate`` result (``state``, ``stats`` with ``time_ms``,
``downtime_ms``, ``*_bytes``; ``plan``; ``transport``), the pre-flight report (``{ok, findings:
[{check, status, host, msg, values}]}``). Nothing here raises for a situation an operator can
meet: what is wrong is said in ``problems`` or the ``lines``.
"""

from __future__ import annotations

import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _forecast
from ansible_collections.kvmops.migration.plugins.module_utils import _health
from ansible_collections.kvmops.migration.plugins.module_utils import _nvram

MIB = 1024 ** 2


# --------------------------------------------------------------------------------------------
# Images and the final report
# --------------------------------------------------------------------------------------------

def image_report(src_disks: list[dict[str, t.Any]], dst_disks: list[dict[str, t.Any]],
                 created: t.Sequence[str] = (), slack_ratio: float = 0.10,
                 slack_bytes: int = 64 * MIB, shared: t.Sequence[str] = (),
                 src_after: dict[str, int] | None = None) -> dict[str, t.Any]:
    """Source and destination geometry of every copied disk, and whether the copy stayed sparse:
    the destination allocation may exceed the source's by at most ``slack_ratio`` of it or
    ``slack_bytes``, whichever is larger. The source's is the larger of its allocation before
    the move (``src_disks``) and right after it (``src_after``, ``{path: bytes}``, the migrate
    module's ``source_allocation_after``): a guest that writes new blocks during the move grows
    both images. Disks of ``shared`` (targets on storage both hosts see: not copied, one image)
    are left out.

    :returns: ``{images: [{target, path, format, virtual_size, src_allocation, dst_allocation,
        created, exists, sparse}], ok, problems: [str]}``.
    """
    by_path = {d.get("path"): d for d in dst_disks or []}
    created_set = set(created or [])
    images, problems = [], []
    for disk in src_disks or []:
        if not disk.get("copy") or disk.get("target") in shared:
            continue
        path = disk.get("path")
        dst = by_path.get(path) or {}
        src_alloc = disk.get("allocation")
        after = (src_after or {}).get(path)
        if after is not None and (src_alloc is None or int(after) > int(src_alloc)):
            src_alloc = int(after)
        dst_alloc = dst.get("allocation")
        exists = bool(dst.get("exists"))
        sparse = None
        if exists and src_alloc is not None and dst_alloc is not None:
            sparse = dst_alloc <= src_alloc + max(int(slack_bytes), int(src_alloc * slack_ratio))
        entry = {"target": disk.get("target"), "path": path, "format": disk.get("format"),
                 "virtual_size": disk.get("virtual_size"), "src_allocation": src_alloc,
                 "dst_allocation": dst_alloc, "created": path in created_set, "exists": exists,
                 "sparse": sparse}
        if not exists:
            problems.append("%s is missing on the destination" % path)
        elif dst.get("virtual_size") != disk.get("virtual_size"):
            problems.append("%s has virtual size %s bytes on the destination, %s on the source" % (
                path, dst.get("virtual_size"), disk.get("virtual_size")))
        elif sparse is False:
            problems.append("%s is not sparse on the destination: %s allocated there, %s on the "
                            "source" % (path, human_bytes(dst_alloc), human_bytes(src_alloc)))
        images.append(entry)
    return {"images": images, "ok": not problems, "problems": problems}


def human_bytes(value: int | float | None) -> str:
    """``1536 -> '1.5 KiB'``; None -> ``'?'``."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return ("%d %s" % (size, unit)) if unit == "B" else ("%.1f %s" % (size, unit))
        size /= 1024
    return "%.1f TiB" % size  # pragma: no cover - loop always returns


_STREAM_WORDS = {"tls": "TLS (QEMU native TLS)", "plain": "UNENCRYPTED (plain TCP)", "none": "none streamed"}


def _cold_words(stats: dict[str, t.Any], forced: bool) -> str:
    """What the downtime of a cold move was made of."""
    def secs(key: str) -> str:
        return "?" if stats.get(key) is None else "%.1f s" % (stats[key] / 1000.0)
    return ("from the ACPI shutdown request until it ran on the destination: shutdown %s%s, disk copy %s, start %s; "
            "its OS booted after that." % (secs("shutdown_ms"), " (powered off hard after the timeout)" if forced else "",
                                           secs("copy_ms"), secs("start_ms")))


def forecast_beside_actual(fc: dict[str, t.Any] | None, summary: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The pre-flight's forecast (``_forecast.forecast``) beside what the move did:
    ``{verdict, total_s, downtime_ms, memory_passes, lever, levers (every lever, gentlest first),
    inputs (the forecast's), link_measured, link (words), msg, actual_s,
    actual_downtime_ms, error_pct}``; ``error_pct`` is ``100 * (forecast - actual) / actual`` of the
    total time (None unless both are known). None without a forecast."""
    if not fc:
        return None
    out = {"verdict": fc.get("verdict"), "total_s": fc.get("total_s"), "downtime_ms": fc.get("downtime_ms"),
           "memory_passes": fc.get("memory_passes"), "lever": (fc.get("recommendation") or {}).get("lever"),
           "link_measured": fc.get("link_measured"), "msg": fc.get("msg"),
           "link": _forecast.link_words(fc["link"]) if fc.get("link") else None,
           "levers": [lv.get("lever") for lv in fc.get("levers") or []], "inputs": fc.get("inputs"),
           "actual_s": summary.get("duration_s"), "actual_downtime_ms": summary.get("downtime_ms"), "error_pct": None}
    if out["total_s"] and out["actual_s"]:
        out["error_pct"] = round(100.0 * (float(out["total_s"]) - float(out["actual_s"])) / float(out["actual_s"]), 1)
    return out


def _forecast_line(fb: dict[str, t.Any], state: str) -> str:
    if state != "migrated" or fb["actual_s"] is None:
        return str(fb.get("msg") or "Forecast: %s." % fb["verdict"])
    if fb["total_s"] is None:
        return "forecast: does not converge (%s recommended); actual: %s s, downtime %s ms" % (
            fb.get("lever"), fb["actual_s"], fb["actual_downtime_ms"])
    return "forecast beside actual: %s s / %s s (%+.0f %%), downtime %s ms / %s ms, %s pass(es)%s" % (
        fb["total_s"], fb["actual_s"], fb["error_pct"] or 0.0, fb["downtime_ms"], fb["actual_downtime_ms"],
        fb["memory_passes"], " (%s)" % fb["link"] if fb.get("link") else "" if fb.get("link_measured")
        else " (link rate assumed)")


def migration_summary(guest: str, source: str, dest: str, result: dict[str, t.Any] | None,
                      images: dict[str, t.Any] | None = None, created: t.Sequence[str] = (),
                      check_mode: bool = False, dest_nvram: dict[str, t.Any] | None = None,
                      forecast: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """The one summary of a migration: guest, from, to, duration, downtime, memory and disk bytes
    moved, images created, source/destination allocation of each image, the UEFI variables
    (``nvram``), the forecast beside the actual figures (:func:`forecast_beside_actual`); ``lines``
    for people.

    :param result: the ``migrate`` module's result (``state``, ``stats``, ``plan``, ``nvram``: the
        source's NVRAM file at the switch-over), or the ``cold_move`` module's (``mode: cold``,
        ``plan`` a list of steps, ``forced``).
    :param dest_nvram: the guest's NVRAM file on the destination after the move (``host_info``'s
        ``guest_nvram`` there); compared with the source's by :func:`_nvram.compare` into
        ``nvram`` (None when the move read no NVRAM file) and one line, a warning when they differ.
    :param forecast: the pre-flight's ``forecast`` (None: none, nothing said about it).
    """
    result = result or {}
    cold = result.get("mode") == "cold"
    stats = result.get("stats") or {}
    state = result.get("state") or ("planned" if check_mode else "unknown")
    time_ms = stats.get("time_ms")
    summary = {
        "guest": guest, "from": source, "to": dest, "state": state,
        "stats_from": stats.get("stats_from"),
        "changed": bool(result.get("changed")),
        "duration_s": round(time_ms / 1000.0, 1) if time_ms is not None else None,
        "downtime_ms": stats.get("downtime_ms"),
        "memory_bytes": stats.get("memory_bytes"), "disk_bytes": stats.get("disk_bytes"),
        "disk_allocated_bytes": stats.get("disk_allocated_bytes"),
        "data_bytes": stats.get("data_bytes"), "iterations": stats.get("iterations"),
        "images_created": list(created or []),
        "images": [{k: i.get(k) for k in ("target", "path", "virtual_size", "src_allocation",
                                          "dst_allocation", "created", "sparse")}
                   for i in (images or {}).get("images", [])],
        "mode": "cold" if cold else "live",
        "flags": None if cold else (result.get("plan") or {}).get("flags"),
        "transport": result.get("transport"),
        "warnings": list(result.get("warnings") or []),
        # the guest itself on the destination after the move (_health.check_health)
        "health": result.get("health"),
        "time_to_healthy_ms": (result.get("health") or {}).get("time_to_healthy_ms"),
        "clock": (result.get("health") or {}).get("clock"),
        # the UEFI variables: the source's NVRAM file at the switch-over against the destination's
        "nvram": _nvram.compare(result.get("nvram"), dest_nvram, dest) if state == "migrated" and not cold else None,
    }
    summary["forecast"] = forecast_beside_actual(forecast, summary) if not cold else None
    # the convergence ladder's steps (_convergence.Ladder.as_result), live moves only
    summary["convergence"] = result.get("convergence") if not cold else None
    if state == "already_migrated":
        head = "%s already runs on %s: nothing to do." % (guest, dest)
    elif state == "planned" and cold:
        head = "PLAN (check mode): %s would move COLD %s -> %s: %s." % (
            guest, source, dest, "; ".join(result.get("plan") or []))
    elif state == "planned":
        head = "PLAN (check mode): %s would move %s -> %s (%s)." % (
            guest, source, dest, ", ".join(summary["flags"] or []))
    elif cold:
        head = "%s moved COLD %s -> %s in %s s, downtime %s ms: %s" % (
            guest, source, dest, summary["duration_s"], summary["downtime_ms"], _cold_words(stats, bool(result.get("forced"))))
    else:
        sampled = stats.get("stats_from") in ("last_sample", "completed+last_sample")
        duration = ("an unknown time" if summary["duration_s"] is None else
                    "%s%s s" % ("at least " if sampled and summary["duration_s"] else "", summary["duration_s"]))
        downtime = ("unknown" if summary["downtime_ms"] is None else "%s%s ms" % (
            "about " if stats.get("downtime_estimated") else "", summary["downtime_ms"]))
        head = "%s moved %s -> %s in %s, downtime %s." % (guest, source, dest, duration, downtime)
    lines = [head]
    if state == "migrated" and stats.get("stats_from") in ("last_sample", "completed+last_sample", "none"):
        lines.append("figures %s: the completed job statistics were not readable on either host (after a "
                     "post-copy move the source domain is gone)" % (
                         "unknown" if stats.get("stats_from") == "none" else "from the last progress sample"))
    if state == "migrated" and cold:
        lines.append("moved: no memory (cold move), disks %s of data (%s of disk walked, holes kept)" % (
            human_bytes(summary["disk_allocated_bytes"]), human_bytes(summary["disk_bytes"])))
    elif state == "migrated":
        # disk_bytes is what the storage copy walked (the virtual size of the copied disks);
        # the data that had to move is their allocation on the source
        disks = human_bytes(summary["disk_bytes"])
        if summary["disk_allocated_bytes"] is not None:
            disks = "%s of data (%s of disk walked)" % (human_bytes(summary["disk_allocated_bytes"]), disks)
        lines.append("moved: memory %s, disks %s, %s memory pass(es)" % (
            human_bytes(summary["memory_bytes"]), disks, summary["iterations"]))
    if summary["forecast"] and state in ("migrated", "planned"):
        lines.append(_forecast_line(summary["forecast"], state))
    if summary["convergence"] and state == "migrated":
        lines.append("convergence ladder: %s" % summary["convergence"].get("msg"))
    transport = summary["transport"]
    if transport and state in ("migrated", "planned"):
        lines.append("streams %s: memory %s, disks %s (libvirt connection over %s)" % (
            "protected" if state == "migrated" else "to be protected",
            _STREAM_WORDS.get(transport.get("memory"), transport.get("memory")),
            _STREAM_WORDS.get(transport.get("disks"), transport.get("disks")), transport.get("control")))
    if state == "planned" and not cold and (result.get("plan") or {}).get("health"):
        lines.append(result["plan"]["health"])
    if state == "migrated" and summary["health"] is not None:
        lines.append("guest on %s: %s" % (dest, _health.words(summary["health"])))
    if summary["nvram"] is not None:
        lines.append(summary["nvram"]["words"])
    verb = "would be created" if state == "planned" else "created"
    lines.append("images %s on %s: %s" % (verb, dest, ", ".join(summary["images_created"]) or "none"))
    for img in summary["images"]:
        lines.append("  %s (%s): %s virtual, allocated %s on %s, %s on %s%s" % (
            img["path"], img["target"], human_bytes(img["virtual_size"]),
            human_bytes(img["src_allocation"]), source,
            human_bytes(img["dst_allocation"]) if img["dst_allocation"] is not None else "-", dest,
            "" if img["sparse"] in (None, True) else "  NOT SPARSE"))
    if state == "migrated" and summary["images"]:
        lines.append("the old images on %s are kept (never deleted by kvmops): a move back to %s reuses "
                     "the ones kvmops created there and refuses any other; remove those once they are no "
                     "longer needed" % (source, source))
    lines += ["warning: %s" % w for w in summary["warnings"]]
    summary["lines"] = lines
    return summary


# --------------------------------------------------------------------------------------------
# The pre-flight's findings, for people
# --------------------------------------------------------------------------------------------

def findings_table(report: dict[str, t.Any] | None, show_ok: bool = False) -> list[str]:
    """The findings of a pre-flight report as lines for people, errors first."""
    report = (report or {}).get("report", report) or {}
    order = {"error": 0, "warning": 1, "ok": 2}
    items = sorted(report.get("findings", []), key=lambda f: order.get(f.get("status"), 3))
    return ["%-7s %-18s %s" % (f.get("status", "?").upper(), f.get("check"), f.get("msg"))
            for f in items if show_ok or f.get("status") != "ok"]
