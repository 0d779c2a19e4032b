# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Decisions of the roles, as plain functions: where a guest is, where it should go, which host
UUIDs must change, what an evacuation moves, and the report a person reads at the end.

The roles gather facts with modules (``host_info``, ``preflight``, ``disk_info``, ``migrate``) and
pass them here through the collection's filter plugins; no decision is made in Jinja. Inputs are
the modules' results as Ansible registers them. Every function returns data (never raises for a
situation an operator can meet): a result with ``error`` set is turned into a task failure with
that message by the role.

Shapes
    host facts: ``{host: {...}, domains: [...]}`` of :mod:`_host` (``host_info`` module), keyed
    by inventory host name; a host whose facts could not be read is ``{failed: true, msg}``.
    pre-flight report: ``{ok, findings: [{check, status, host, msg, values}], summary}``.
"""

from __future__ import annotations

import fnmatch
import typing as t
import uuid as uuidlib

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml

MIB = 1024 ** 2
GIB = 1024 ** 3
#: UUID namespace of the host UUIDs this collection writes (uuid5 of "kvmops-host:<name>").
HOST_UUID_NAMESPACE = uuidlib.UUID("5d0f8c1e-3b0a-4e58-9a51-6b7f3c2d9e10")
ACTIVE_STATES = ("running", "blocked", "paused", "pmsuspended")


# --------------------------------------------------------------------------------------------
# Locate a guest in the group
# --------------------------------------------------------------------------------------------

def _matches(dom: dict[str, t.Any], name: str) -> bool:
    return dom.get("name") == name or (dom.get("uuid") or "").lower() == name.lower()


def locate_guest(name: str, hosts: dict[str, dict[str, t.Any]], group: str = "kvm_hosts"
                 ) -> dict[str, t.Any]:
    """Where ``name`` (a domain name or UUID) is defined and where it runs.

    :returns: ``{name, found, source, state, active, uuid, memory_bytes, vcpus, on: {host: state},
        not_searched: {host: reason}, reachable: [host], host_uuids: {host: uuid}, error}``. ``source`` is the host that runs the guest, or the
        only host that defines it when it runs nowhere. ``error`` (a sentence for the operator)
        when it is nowhere, runs on more than one host (case C11 d: stop), or is defined on
        several hosts and runs on none.
    """
    on: dict[str, str] = {}
    facts: dict[str, dict[str, t.Any]] = {}
    not_searched: dict[str, str] = {}
    host_uuids: dict[str, str | None] = {}
    identity: dict[str, tuple[t.Any, ...]] = {}
    for host in sorted(hosts):
        data = hosts[host] or {}
        if data.get("failed") or data.get("unreachable") or "domains" not in data:
            not_searched[host] = str(data.get("msg") or "no facts")
            continue
        host_uuids[host] = (data.get("host") or {}).get("uuid")
        identity[host] = ((data.get("host") or {}).get("hostname"), host_uuids[host],
                          tuple(sorted((d.get("name"), d.get("id"), d.get("state")) for d in data["domains"])))
        for dom in data["domains"]:
            if _matches(dom, name):
                on[host] = dom.get("state", "unknown")
                facts[host] = dom
    out: dict[str, t.Any] = {"name": name, "found": bool(on), "source": None, "state": None,
                             "active": False, "uuid": None, "memory_bytes": None, "vcpus": None,
                             "on": on, "not_searched": not_searched, "error": None,
                             "reachable": sorted(host_uuids), "host_uuids": host_uuids}
    searched = sorted(set(hosts) - set(not_searched))
    unsearched_txt = ""
    if not_searched:
        unsearched_txt = "; not searched: %s" % ", ".join(
            "%s (%s)" % (h, r) for h, r in sorted(not_searched.items()))
    if not on:
        out["error"] = ("Guest %s is not defined on any host of group %s (searched: %s%s). Check "
                        "the name with 'virsh list --all' on the hosts." % (
                            name, group, ", ".join(searched) or "none", unsearched_txt))
        return out
    active = sorted(h for h, d in facts.items() if d.get("active"))
    if len(active) > 1 and len({identity[h] for h in active}) == 1:
        out["error"] = ("Hosts %s of group %s look like one machine: same host name %s, libvirt host UUID "
                        "%s and the same domains with the same IDs. If the inventory lists one machine "
                        "under two names, remove the extra entry. If they are cloned machines, guest %s "
                        "runs on each: stop one copy by hand. Nothing was touched." % (
                            ", ".join(active), group, identity[active[0]][0], identity[active[0]][1], name))
        return out
    if len(active) > 1:
        out["error"] = ("STOP: guest %s is active on %d hosts (%s). Two running copies of one "
                        "guest corrupt its disks; nothing was touched. Decide which copy is current "
                        "and stop the other by hand." % (name, len(active), ", ".join(active)))
        return out
    if active:
        source = active[0]
    elif len(facts) == 1:
        source = next(iter(facts))
    else:
        out["error"] = ("Guest %s is defined on %d hosts (%s) and runs on none: decide which "
                        "definition is current and undefine the others." % (
                            name, len(facts), ", ".join(sorted(facts))))
        return out
    dom = facts[source]
    out.update(source=source, state=dom.get("state"), active=bool(dom.get("active")),
               uuid=dom.get("uuid"), memory_bytes=dom.get("memory_bytes"), vcpus=dom.get("vcpus"),
               name=dom.get("name", name))
    return out


# --------------------------------------------------------------------------------------------
# Choose a destination
# --------------------------------------------------------------------------------------------

def _errors(report: dict[str, t.Any] | None) -> list[str]:
    if not report:
        return ["no pre-flight report"]
    if report.get("failed") and not report.get("findings"):
        return [str(report.get("msg") or "pre-flight failed")]
    return [f.get("msg", "") for f in report.get("findings", []) if f.get("status") == "error"]


def _warnings(report: dict[str, t.Any] | None) -> int:
    return sum(1 for f in (report or {}).get("findings", []) if f.get("status") == "warning")


def _available(facts: dict[str, t.Any] | None) -> int | None:
    host = (facts or {}).get("host") or {}
    value = host.get("available_memory_bytes")
    if value is None:
        value = host.get("free_memory_bytes")
    return value


def rank_destinations(guest: dict[str, t.Any], source: str, hosts: dict[str, dict[str, t.Any]],
                      reports: dict[str, dict[str, t.Any]], reserve_bytes: int = 0,
                      committed: dict[str, int] | None = None) -> list[dict[str, t.Any]]:
    """Every host with a report (or every host when ``reports`` is empty) but ``source``,
    judged for ``guest`` (``locate_guest`` result or
    ``{name, memory_bytes}``): eligible when its pre-flight report for this guest has no error
    and its available memory minus ``reserve_bytes`` and minus what this run already placed
    there (``committed``) holds the guest. Eligible hosts first, most memory left first, then
    fewest warnings, then name.

    :returns: ``[{host, eligible, reasons, available_bytes, left_bytes, warnings}]``.
    """
    committed = committed or {}
    need = int(guest.get("memory_bytes") or 0)
    ranked = []
    for host in sorted(reports or hosts):
        if host == source:
            continue
        reasons = _errors(reports.get(host))
        available = _available(hosts.get(host))
        left = None
        if available is None:
            reasons.append("free memory of %s unknown" % host)
        else:
            left = int(available) - int(reserve_bytes) - int(committed.get(host, 0)) - need
            if left < 0:
                reasons.append("not enough memory on %s: %d MiB available%s, guest needs %d MiB "
                               "(reserve %d MiB)" % (
                                   host, int(available) // MIB,
                                   " after %d MiB placed in this run" % (committed[host] // MIB)
                                   if committed.get(host) else "", need // MIB,
                                   int(reserve_bytes) // MIB))
        ranked.append({"host": host, "eligible": not reasons, "reasons": reasons,
                       "available_bytes": available, "left_bytes": left,
                       "warnings": _warnings(reports.get(host))})
    ranked.sort(key=lambda r: (not r["eligible"], -(r["left_bytes"] or 0), r["warnings"], r["host"]))
    return ranked


def pick_destination(guest: dict[str, t.Any], source: str, hosts: dict[str, dict[str, t.Any]],
                     reports: dict[str, dict[str, t.Any]], reserve_bytes: int = 0) -> dict[str, t.Any]:
    """The best destination of :func:`rank_destinations`.

    :returns: ``{host, ranking, error}``; ``host`` is None and ``error`` says why for each host
        when none is eligible.
    """
    ranking = rank_destinations(guest, source, hosts, reports, reserve_bytes)
    if ranking and ranking[0]["eligible"]:
        return {"host": ranking[0]["host"], "ranking": ranking, "error": None}
    if not ranking:
        why = "the group has no host other than %s" % source
    else:
        why = "; ".join("%s: %s" % (r["host"], " | ".join(r["reasons"])) for r in ranking)
    return {"host": None, "ranking": ranking,
            "error": "No host can take guest %s from %s: %s." % (guest.get("name"), source, why)}


# --------------------------------------------------------------------------------------------
# Evacuation
# --------------------------------------------------------------------------------------------

def select_guests(domains: list[dict[str, t.Any]], include: t.Sequence[str] | None = None,
                  exclude: t.Sequence[str] | None = None) -> dict[str, t.Any]:
    """The running guests of a host that match ``include`` (shell patterns, default all) and no
    pattern of ``exclude``.

    :returns: ``{selected: [domain facts], skipped: [{guest, reason}]}``, by name.
    """
    include = list(include or ["*"])
    exclude = list(exclude or [])
    selected, skipped = [], []
    for dom in sorted(domains, key=lambda d: d.get("name", "")):
        name = dom.get("name", "")
        if not dom.get("active") or dom.get("state") not in ACTIVE_STATES:
            skipped.append({"guest": name, "reason": "not running (%s)" % dom.get("state")})
        elif not any(fnmatch.fnmatchcase(name, p) for p in include):
            skipped.append({"guest": name, "reason": "matches no include pattern (%s)" % ", ".join(include)})
        elif any(fnmatch.fnmatchcase(name, p) for p in exclude):
            pattern = next(p for p in exclude if fnmatch.fnmatchcase(name, p))
            skipped.append({"guest": name, "reason": "excluded by pattern %s" % pattern})
        elif dom.get("state") != "running":
            skipped.append({"guest": name, "reason": "state %s: only running guests are moved" % dom.get("state")})
        else:
            selected.append(dom)
    return {"selected": selected, "skipped": skipped}


def plan_evacuation(source: str, guests: list[dict[str, t.Any]], hosts: dict[str, dict[str, t.Any]],
                    reports: dict[str, dict[str, dict[str, t.Any]]], reserve_bytes: int = 0,
                    concurrency: int = 1) -> dict[str, t.Any]:
    """Place each guest on the eligible host with the most memory left, biggest guests first,
    counting what this plan already put on each host.

    :param reports: guest name -> host -> pre-flight report (run with ``fail_on_error: false``).
    :returns: ``{moves: [{guest, to, memory_bytes, ranking}], unplaced: [{guest, reason}],
        batches: [[guest, ...]]}``; batches hold at most ``concurrency`` moves each.
    """
    committed: dict[str, int] = {}
    moves, unplaced = [], []
    order = sorted(guests, key=lambda g: (-int(g.get("memory_bytes") or 0), g.get("name", "")))
    for guest in order:
        name = guest.get("name")
        ranking = rank_destinations(guest, source, hosts, reports.get(name, {}), reserve_bytes, committed)
        if ranking and ranking[0]["eligible"]:
            dest = ranking[0]["host"]
            committed[dest] = committed.get(dest, 0) + int(guest.get("memory_bytes") or 0)
            moves.append({"guest": name, "to": dest, "memory_bytes": guest.get("memory_bytes"),
                          "ranking": ranking})
        else:
            why = "; ".join("%s: %s" % (r["host"], " | ".join(r["reasons"])) for r in ranking) \
                or "no other host in the group"
            unplaced.append({"guest": name, "reason": "no host can take it: %s" % why})
    size = max(1, int(concurrency or 1))
    batches = [[m["guest"] for m in moves[i:i + size]] for i in range(0, len(moves), size)]
    return {"moves": moves, "unplaced": unplaced, "batches": batches}


def evacuation_summary(source: str, plan: dict[str, t.Any], results: dict[str, dict[str, t.Any]],
                       skipped: list[dict[str, t.Any]] | None = None) -> dict[str, t.Any]:
    """What moved where and what did not, and why.

    :param results: guest -> the ``migrate_guest_result`` of each attempted move (``{ok, msg,
        state, duration_s, downtime_ms, ...}``; a nested ``summary`` is read too).
    :returns: ``{source, moved: [{guest, to, state, downtime_ms, duration_s}], failed: [{guest, to,
        reason}], not_moved: [{guest, reason}], lines: [str], ok}``.
    """
    moved, failed = [], []
    for move in plan.get("moves", []):
        res = results.get(move["guest"])
        if res is None:
            failed.append({"guest": move["guest"], "to": move["to"], "reason": "not attempted"})
        elif res.get("ok"):
            summary = res.get("summary") or res
            moved.append({"guest": move["guest"], "to": move["to"], "state": summary.get("state"),
                          "downtime_ms": summary.get("downtime_ms"),
                          "duration_s": summary.get("duration_s")})
        else:
            failed.append({"guest": move["guest"], "to": move["to"], "reason": res.get("msg")})
    not_moved = list(plan.get("unplaced", [])) + list(skipped or [])
    lines = ["Evacuation of %s: %d moved, %d failed, %d not moved." % (
        source, len(moved), len(failed), len(not_moved))]
    for m in moved:
        if m.get("state") == "planned":
            lines.append("  plan   %s -> %s" % (m["guest"], m["to"]))
        else:
            lines.append("  moved  %s -> %s (%s s, downtime %s ms)" % (
                m["guest"], m["to"], m["duration_s"], m["downtime_ms"]))
    lines += ["  FAILED %s -> %s: %s" % (f["guest"], f["to"], f["reason"]) for f in failed]
    lines += ["  stays  %s: %s" % (n["guest"], n["reason"]) for n in not_moved]
    return {"source": source, "moved": moved, "failed": failed, "not_moved": not_moved,
            "lines": lines, "ok": not failed}


# --------------------------------------------------------------------------------------------
# Host UUIDs (case C10)
# --------------------------------------------------------------------------------------------

def new_host_uuid(host: str, taken: t.Iterable[str] = ()) -> str:
    """A stable UUID for ``host`` (uuid5, so reruns agree) that is not in ``taken``."""
    taken_set = {u.lower() for u in taken if u}
    salt = 0
    while True:
        value = str(uuidlib.uuid5(HOST_UUID_NAMESPACE, "kvmops-host:%s%s" % (
            host, ":%d" % salt if salt else "")))
        if value not in taken_set:
            return value
        salt += 1


def host_uuid_plan(hosts: dict[str, dict[str, t.Any]], order: t.Sequence[str] | None = None,
                   pin: bool = True) -> dict[str, dict[str, t.Any]]:
    """What each host's ``host_uuid`` in libvirtd.conf must be, so that every host of the group
    has its own (case C10).

    :param hosts: inventory host -> ``host_info`` ``host`` dict (``uuid``, ``uuid_configured``,
        ``uuid_configured_valid``).
    :param order: inventory order; the first host holding a duplicated UUID keeps it.
    :param pin: write the current UUID into libvirtd.conf when none is configured (it is then
        kept even if SMBIOS or machine-id change, e.g. when the machine is cloned).
    :returns: host -> ``{action: keep|pin|replace, uuid, current, restart, reason}``;
        ``restart`` is True when libvirtd must be restarted for the value to take effect.
    """
    order = [h for h in (order or sorted(hosts)) if h in hosts]
    order += sorted(h for h in hosts if h not in order)
    taken = [str((hosts[h] or {}).get("uuid") or "").lower() for h in order]
    seen: dict[str, str] = {}
    plan: dict[str, dict[str, t.Any]] = {}
    for host in order:
        facts = hosts[host] or {}
        current = str(facts.get("uuid") or "").lower() or None
        configured = facts.get("uuid_configured")
        valid = facts.get("uuid_configured_valid")
        entry = {"action": "keep", "uuid": current, "current": current, "restart": False, "reason": ""}
        if configured is not None and valid is False:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="host_uuid %r in libvirtd.conf is not a valid host UUID" % configured)
        elif current is None:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="libvirt reports no host UUID")
        elif current in seen:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="host UUID %s is also %s's (cloned machines?): libvirt refuses to "
                                "migrate between them ('Attempt to migrate guest to the same host')"
                                % (current, seen[current]))
        elif configured is None and pin:
            entry.update(action="pin", reason="no host_uuid in libvirtd.conf: the current one is "
                                              "written there so that it stays unique")
        if entry["action"] == "replace":
            taken.append(entry["uuid"])
        if current and current not in seen:
            seen[current] = host
        plan[host] = entry
    return plan


# --------------------------------------------------------------------------------------------
# Images and the final report
# --------------------------------------------------------------------------------------------

def image_report(src_disks: list[dict[str, t.Any]], dst_disks: list[dict[str, t.Any]],
                 created: t.Sequence[str] = (), slack_ratio: float = 0.10,
                 slack_bytes: int = 64 * MIB, shared: t.Sequence[str] = ()) -> dict[str, t.Any]:
    """Source and destination geometry of every copied disk, and whether the copy stayed sparse:
    the destination allocation may exceed the source's by at most ``slack_ratio`` of it or
    ``slack_bytes``, whichever is larger. Disks of ``shared`` (targets on storage both hosts
    see: not copied, one image) are left out.

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


def migration_summary(guest: str, source: str, dest: str, result: dict[str, t.Any] | None,
                      images: dict[str, t.Any] | None = None, created: t.Sequence[str] = (),
                      check_mode: bool = False) -> dict[str, t.Any]:
    """The one summary of a migration: guest, from, to, duration, downtime, memory and disk bytes
    moved, images created, source/destination allocation of each image; ``lines`` for people.

    :param result: the ``migrate`` module's result (``state``, ``stats``, ``plan``).
    """
    result = result or {}
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
        "flags": (result.get("plan") or {}).get("flags"),
        "transport": result.get("transport"),
        "warnings": list(result.get("warnings") or []),
    }
    if state == "already_migrated":
        head = "%s already runs on %s: nothing to do." % (guest, dest)
    elif state == "planned":
        head = "PLAN (check mode): %s would move %s -> %s (%s)." % (
            guest, source, dest, ", ".join(summary["flags"] or []))
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
    if state == "migrated":
        # disk_bytes is what the storage copy walked (the virtual size of the copied disks);
        # the data that had to move is their allocation on the source
        disks = human_bytes(summary["disk_bytes"])
        if summary["disk_allocated_bytes"] is not None:
            disks = "%s of data (%s of disk walked)" % (human_bytes(summary["disk_allocated_bytes"]), disks)
        lines.append("moved: memory %s, disks %s, %s memory pass(es)" % (
            human_bytes(summary["memory_bytes"]), disks, summary["iterations"]))
    transport = summary["transport"]
    if transport and state in ("migrated", "planned"):
        lines.append("streams %s: memory %s, disks %s (libvirt connection over %s)" % (
            "protected" if state == "migrated" else "to be protected",
            _STREAM_WORDS.get(transport.get("memory"), transport.get("memory")),
            _STREAM_WORDS.get(transport.get("disks"), transport.get("disks")), transport.get("control")))
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
# Inputs of the modules
# --------------------------------------------------------------------------------------------

def libvirt_uris(addresses: dict[str, str], user: str = "root", transport: str = "ssh",
                 local: str | None = None) -> list[dict[str, str]]:
    """``[{name, uri}]`` of hosts by inventory name -> address, as seen from ``local``
    (which gets ``qemu:///system``): ``qemu+ssh://USER@ADDR/system`` or ``qemu+tls://ADDR/system``."""
    out = []
    for name in sorted(addresses):
        addr = str(addresses[name])
        host = "[%s]" % addr if ":" in addr and not addr.startswith("[") else addr
        if name == local:
            uri = "qemu:///system"
        elif transport == "tls":
            uri = "qemu+tls://%s/system" % host
        else:
            uri = "qemu+ssh://%s%s/system" % ("%s@" % user if user else "", host)
        out.append({"name": name, "uri": uri})
    return out


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


def findings_table(report: dict[str, t.Any] | None, show_ok: bool = False) -> list[str]:
    """The findings of a pre-flight report as lines for people, errors first."""
    report = (report or {}).get("report", report) or {}
    order = {"error": 0, "warning": 1, "ok": 2}
    items = sorted(report.get("findings", []), key=lambda f: order.get(f.get("status"), 3))
    return ["%-7s %-18s %s" % (f.get("status", "?").upper(), f.get("check"), f.get("msg"))
            for f in items if show_ok or f.get("status") != "ok"]


# --------------------------------------------------------------------------------------------
# Networks mirrored from a reference host
# --------------------------------------------------------------------------------------------

def network_for_host(xml: str) -> str:
    """A libvirt network definition of another host, made fit to define here: its ``<uuid>``
    and the bridge's ``<mac>`` are removed, so that libvirt gives this host its own (two hosts
    with the same bridge MAC on one segment confuse their neighbours). Parsed with the
    collection's one hardened parser (:func:`_domain_xml.from_string`: no entities, no network).

    :raises KvmopsError: lxml missing. :raises lxml.etree.XMLSyntaxError: not well-formed.
    """
    _domain_xml.require_lxml()
    root = _domain_xml.from_string(xml, remove_blank_text=False)  # the collection's one hardened parser
    for tag in ("uuid", "mac"):
        for node in root.findall(tag):
            root.remove(node)
    return _domain_xml.etree.tostring(root, encoding="unicode")


def mirror_networks(definitions: list[dict[str, t.Any]], only: t.Sequence[str] = ()) -> list[dict[str, str]]:
    """``[{name, xml}]`` from ``[{name, xml}]`` read on the reference host (``only``: names kept,
    empty keeps all), each passed through :func:`network_for_host`."""
    out = []
    for item in definitions or []:
        if only and item.get("name") not in only:
            continue
        out.append({"name": item["name"], "xml": network_for_host(item["xml"])})
    return out
