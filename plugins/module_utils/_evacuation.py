# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evacuation: emptying a host. Which of its guests are moved (:func:`select_guests`), where
each goes (:func:`plan_evacuation`, biggest guests first, with :func:`_locate.rank_destinations`
counting what the plan already placed on each host) and what moved in the end
(:func:`evacuation_summary`). The backend of the ``evacuate`` role's filters.

Shapes as in :mod:`_locate` (host facts keyed by inventory host name, pre-flight reports);
domain facts are the ``domains`` items of ``host_info``. Memory in bytes. Nothing here raises for
a situation an operator can meet: what cannot be moved is listed with its reason.
"""

from __future__ import annotations

import fnmatch
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _locate

#: libvirt domain states of a guest that is not shut off (``virDomainGetInfo``, as ``host_info`` names them).
ACTIVE_STATES = ("running", "blocked", "paused", "pmsuspended")


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
        ranking = _locate.rank_destinations(guest, source, hosts, reports.get(name, {}), reserve_bytes, committed)
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
    :returns: ``{source, moved: [{guest, to, state, downtime_ms, duration_s, time_to_healthy_ms}],
        failed: [{guest, to, reason}], not_moved: [{guest, reason}], lines: [str], ok}``.
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
                          "duration_s": summary.get("duration_s"),
                          "time_to_healthy_ms": summary.get("time_to_healthy_ms")})
        else:
            failed.append({"guest": move["guest"], "to": move["to"], "reason": res.get("msg")})
    not_moved = list(plan.get("unplaced", [])) + list(skipped or [])
    lines = ["Evacuation of %s: %d moved, %d failed, %d not moved." % (
        source, len(moved), len(failed), len(not_moved))]
    for m in moved:
        if m.get("state") == "planned":
            lines.append("  plan   %s -> %s" % (m["guest"], m["to"]))
        else:
            healthy = ("" if m.get("time_to_healthy_ms") is None
                       else ", healthy %.1f s after the switch-over" % (m["time_to_healthy_ms"] / 1000.0))
            lines.append("  moved  %s -> %s (%s s, downtime %s ms%s)" % (
                m["guest"], m["to"], m["duration_s"], m["downtime_ms"], healthy))
    lines += ["  FAILED %s -> %s: %s" % (f["guest"], f["to"], f["reason"]) for f in failed]
    lines += ["  stays  %s: %s" % (n["guest"], n["reason"]) for n in not_moved]
    return {"source": source, "moved": moved, "failed": failed, "not_moved": not_moved,
            "lines": lines, "ok": not failed}
