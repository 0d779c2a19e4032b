# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Locate: where a guest is in the group (the host that runs it, case C11 d) and which host
should receive it (every candidate judged by its pre-flight report and its memory, the best
first). The first step of a move, the backend of the ``locate_guest`` and ``pick_destination``
filters; :mod:`_evacuation` places many guests with the same ranking.

Inputs are the modules' results as Ansible registers them. Nothing here raises for a situation
an operator can meet: a result with ``error`` set (a sentence for the operator) is turned into
a task failure with that message by the role.

Shapes
    host facts: ``{host: {...}, domains: [...]}`` of :mod:`_host` (``host_info`` module), keyed
    by inventory host name; a host whose facts could not be read is ``{failed: true, msg}``.
    pre-flight report: ``{ok, findings: [{check, status, host, msg, values}], summary}``.
    Memory in bytes.
"""

from __future__ import annotations

import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _cold_move

MIB = 1024 ** 2


# --------------------------------------------------------------------------------------------
# Locate a guest in the group
# --------------------------------------------------------------------------------------------

def _matches(dom: dict[str, t.Any], name: str) -> bool:
    return dom.get("name") == name or (dom.get("uuid") or "").lower() == name.lower()


def locate_guest(name: str, hosts: dict[str, dict[str, t.Any]], group: str = "kvm_hosts"
                 ) -> dict[str, t.Any]:
    """Where ``name`` (a domain name or UUID) is defined and where it runs.

    :returns: ``{name, found, source, state, active, uuid, memory_bytes, vcpus, on: {host: state},
        not_searched: {host: reason}, reachable: [host], host_uuids: {host: uuid}, error}``, and
        ``postcopy`` (:func:`_postcopy_source`) when a move of it is in post-copy between two hosts
        (active on both; ``source`` is then the move's source, and a rerun resumes that move). ``source`` is the host that runs the guest, or the
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
                             "on": on, "not_searched": not_searched, "error": None, "postcopy": None,
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
    postcopy = _postcopy_source(name, facts, active) if len(active) > 1 else None
    if postcopy is not None and postcopy.get("error"):
        out["error"] = postcopy["error"]
        return out
    if postcopy is not None:
        active = [postcopy["source"]]
        out["postcopy"] = postcopy
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


def _postcopy_source(name: str, facts: dict[str, dict[str, t.Any]], active: list[str]) -> dict[str, t.Any] | None:
    """A guest active on several hosts because a move is in post-copy (each copy's
    ``postcopy`` set by host facts, :func:`_host.domain_summary`): which host is the move's source.

    The destination side is the copy whose ``postcopy_side`` is ``destination`` (running in
    post-copy); a paused failed copy may be either, so the source is the one copy left when the
    destination side is known, else the only persistent one (libvirt makes the destination
    persistent only when the move ends).

    :returns: None when not every active copy is in post-copy (two running copies: the caller's
        STOP); ``{source, destination, phase, hosts: {host: phase}}``; or ``{error}`` (a sentence
        naming the guest ``name``) when the source cannot be told.
    """
    if len(active) != 2 or not all(facts[h].get("postcopy") for h in active):
        return None
    phases = {h: facts[h]["postcopy"] for h in active}
    dest = [h for h in active if facts[h].get("postcopy_side") == "destination"]
    rest = [h for h in active if h not in dest]
    if len(dest) != 1 or len(rest) != 1:
        persistent = [h for h in active if facts[h].get("persistent")]
        if len(persistent) != 1:
            return {"error": "Guest %s is in post-copy on %s (%s): a move between these hosts lost its link after "
                             "the switch, its memory is split between them, and which host is its source cannot be "
                             "told. Nothing was touched and nothing may be removed: on the source run 'virsh "
                             "domjobinfo %s' (the source shows the outgoing job), then resume there with 'virsh "
                             "migrate --postcopy-resume' and the flags of the move." % (
                                 name, " and ".join(sorted(active)), ", ".join("%s %s" % (h, phases[h]) for h in sorted(active)), name)}
        rest = persistent
        dest = [h for h in active if h != persistent[0]]
    phase = "failed" if "failed" in phases.values() else "active"
    return {"source": rest[0], "destination": dest[0], "phase": phase, "hosts": phases}


# --------------------------------------------------------------------------------------------
# Choose a destination
# --------------------------------------------------------------------------------------------

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
                      committed: dict[str, int] | None = None, allow_cold: bool = False) -> list[dict[str, t.Any]]:
    """Every host with a report (or every host when ``reports`` is empty) but ``source``,
    judged for ``guest`` (``locate_guest`` result or
    ``{name, memory_bytes, active}``): eligible when its pre-flight report for this guest allows a
    move (:func:`_cold_move.move_kind`: no error, or with ``allow_cold`` only errors about the
    running guest's CPU, which a cold move fixes) and its available memory minus
    ``reserve_bytes`` and minus what this run already placed there (``committed``) holds the
    guest. Eligible hosts first, live moves before cold ones, most memory left first, then
    fewest warnings, then name.

    :returns: ``[{host, eligible, kind (live|offline|cold|None), cold_offered, reasons,
        available_bytes, left_bytes, warnings}]``.
    """
    committed = committed or {}
    need = int(guest.get("memory_bytes") or 0)
    ranked = []
    for host in sorted(reports or hosts):
        if host == source:
            continue
        kind = _cold_move.move_kind(reports.get(host), bool(guest.get("active")), allow_cold)
        reasons = list(kind["blockers"])
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
        ranked.append({"host": host, "eligible": not reasons, "kind": kind["kind"] if not reasons else None,
                       "cold_offered": kind["cold_offered"], "reasons": reasons,
                       "available_bytes": available, "left_bytes": left,
                       "warnings": _warnings(reports.get(host))})
    ranked.sort(key=lambda r: (not r["eligible"], r["kind"] == "cold", -(r["left_bytes"] or 0), r["warnings"], r["host"]))
    return ranked


def pick_destination(guest: dict[str, t.Any], source: str, hosts: dict[str, dict[str, t.Any]],
                     reports: dict[str, dict[str, t.Any]], reserve_bytes: int = 0,
                     allow_cold: bool = False) -> dict[str, t.Any]:
    """The best destination of :func:`rank_destinations`, and how the guest goes there.

    :returns: ``{host, kind (live|offline|cold), ranking, error}``; ``host`` and ``kind`` are None
        and ``error`` says why for each host when none is eligible.
    """
    ranking = rank_destinations(guest, source, hosts, reports, reserve_bytes, allow_cold=allow_cold)
    if ranking and ranking[0]["eligible"]:
        return {"host": ranking[0]["host"], "kind": ranking[0]["kind"], "ranking": ranking, "error": None}
    if not ranking:
        why = "the group has no host other than %s" % source
    else:
        why = "; ".join("%s: %s" % (r["host"], " | ".join(r["reasons"])) for r in ranking)
    return {"host": None, "kind": None, "ranking": ranking,
            "error": "No host can take guest %s from %s: %s." % (guest.get("name"), source, why)}
