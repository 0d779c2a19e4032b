# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Evacuation: emptying a host. Which of its guests are moved (:func:`select_guests`), where
each goes (:func:`plan_evacuation`, biggest guests first, with :func:`_locate.rank_destinations`
counting what the plan already placed on each host; the moves in the order they start, most
bytes to move first), which move a free lane of the sliding window takes next
(:func:`claim_next`, race-free across processes) and what moved in the end
(:func:`evacuation_summary`). The backend of the ``evacuate`` role's filters and of its
``evacuate_claim`` lookup.

Shapes as in :mod:`_locate` (host facts keyed by inventory host name, pre-flight reports);
domain facts are the ``domains`` items of ``host_info``. Memory in bytes. Nothing here raises for
a situation an operator can meet: what cannot be moved is listed with its reason.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import time
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
                    concurrency: int = 1,
                    copy_bytes: dict[str, dict[str, int]] | None = None) -> dict[str, t.Any]:
    """Place each guest on the eligible host with the most memory left, biggest guests first,
    counting what this plan already put on each host.

    :param reports: guest name -> host -> pre-flight report (run with ``fail_on_error: false``).
    :param copy_bytes: guest name -> host -> bytes its storage migration to that host sends (the
        pre-flight's ``copy_bytes``); missing: 0.
    :returns: ``{moves: [{guest, to, memory_bytes, copy_bytes, bytes_to_move, ranking}], unplaced:
        [{guest, reason}], batches: [[guest, ...]]}``. ``moves`` in the order they start: most
        ``bytes_to_move`` (memory plus ``copy_bytes`` to the chosen host) first, then by name;
        batches are those moves cut into lists of at most ``concurrency`` guests (a sliding window
        of ``concurrency`` lanes takes them in the same order, without waiting for a batch).
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
            copied = int(((copy_bytes or {}).get(name) or {}).get(dest) or 0)
            moves.append({"guest": name, "to": dest, "memory_bytes": guest.get("memory_bytes"),
                          "copy_bytes": copied, "bytes_to_move": int(guest.get("memory_bytes") or 0) + copied,
                          "ranking": ranking})
        else:
            why = "; ".join("%s: %s" % (r["host"], " | ".join(r["reasons"])) for r in ranking) \
                or "no other host in the group"
            unplaced.append({"guest": name, "reason": "no host can take it: %s" % why})
    moves = largest_first(moves)
    size = max(1, int(concurrency or 1))
    batches = [[m["guest"] for m in moves[i:i + size]] for i in range(0, len(moves), size)]
    return {"moves": moves, "unplaced": unplaced, "batches": batches, "concurrency": size}


def largest_first(moves: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
    """``moves`` (of :func:`plan_evacuation`) with the most ``bytes_to_move`` first, ties by
    guest name: the order in which the lanes of the sliding window take them."""
    return sorted(moves, key=lambda m: (-int(m.get("bytes_to_move") or 0), str(m.get("guest", ""))))


def _read_claims(fd: int) -> dict[str, t.Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    raw = b"".join(chunks).decode("utf-8")
    return json.loads(raw) if raw.strip() else {"claims": []}


def _write_claims(fd: int, state: dict[str, t.Any]) -> None:
    data = json.dumps(state, sort_keys=True).encode("utf-8")
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)


def _with_claims(path: str, change: t.Callable[[dict[str, t.Any]], t.Any]) -> t.Any:
    """Run ``change`` on the claims of ``path`` under an exclusive ``fcntl.flock`` (created
    empty, mode 0600, when absent) and write them back: one claimer at a time, across
    processes and threads (each call opens its own descriptor).

    :raises OSError: the file cannot be opened, locked or written.
    :raises ValueError: the file holds no claims (not JSON).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = _read_claims(fd)
        out = change(state)
        _write_claims(fd, state)
        return out
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def claim_next(path: str, moves: list[dict[str, t.Any]], lane: str,
               clock: t.Callable[[], float] = time.time) -> dict[str, t.Any] | None:
    """The first move of ``moves`` (in their order, largest first) that no lane claimed yet in
    the claim file ``path``, claimed for ``lane``; None when every move is claimed.

    The claim file (JSON ``{claims: [{guest, lane, position, started_at, ended_at}]}``, times in seconds
    since the epoch from ``clock``) is shared by the lanes of one evacuation; each claim is made
    under the file's exclusive lock (:func:`_with_claims`), so two lanes never take one move.

    :returns: the move plus ``lane``, ``started_at`` and ``position`` (1 for the first claimed),
        or None.
    :raises OSError: as :func:`_with_claims`.
    """
    def take(state: dict[str, t.Any]) -> dict[str, t.Any] | None:
        taken = {c["guest"] for c in state["claims"]}
        for move in moves:
            if move["guest"] not in taken:
                claim = {"guest": move["guest"], "lane": lane, "position": len(state["claims"]) + 1,
                         "started_at": clock(), "ended_at": None}
                state["claims"].append(claim)
                return dict(move, lane=lane, started_at=claim["started_at"], position=claim["position"])
        return None
    return t.cast("dict[str, t.Any] | None", _with_claims(path, take))


def finish_claim(path: str, guest: str, clock: t.Callable[[], float] = time.time) -> dict[str, t.Any]:
    """Record in the claim file ``path`` that the move of ``guest`` ended (whatever its result).

    :returns: the claim ``{guest, lane, position, started_at, ended_at}``.
    :raises KeyError: ``guest`` was never claimed in this file.
    :raises OSError: as :func:`_with_claims`.
    """
    def end(state: dict[str, t.Any]) -> dict[str, t.Any]:
        for claim in state["claims"]:
            if claim["guest"] == guest:
                claim["ended_at"] = clock()
                return dict(claim)
        raise KeyError("no claim of %s in %s" % (guest, path))
    return t.cast("dict[str, t.Any]", _with_claims(path, end))


def max_in_flight(spans: t.Iterable[tuple[float, float]]) -> int:
    """The most of the ``(start, end)`` intervals (seconds) that were open at one time; an
    interval ending exactly when another starts does not overlap it."""
    spans = list(spans)
    events = sorted([(float(e), -1) for _s, e in spans] + [(float(s), 1) for s, _e in spans])
    most = now = 0
    for _when, step in events:
        now += step
        most = max(most, now)
    return most


def evacuation_summary(source: str, plan: dict[str, t.Any], results: dict[str, dict[str, t.Any]],
                       skipped: list[dict[str, t.Any]] | None = None) -> dict[str, t.Any]:
    """What moved where and what did not, and why.

    :param results: guest -> the ``migrate_guest_result`` of each attempted move (``{ok, msg,
        state, duration_s, downtime_ms, ...}``; a nested ``summary`` is read too), with the
        evacuate role's ``lane``, ``position`` (1 for the move claimed first), ``started_at`` and
        ``ended_at`` (seconds since the epoch) when a lane of the sliding window ran it.
    :returns: ``{source, moved: [{guest, to, state, downtime_ms, duration_s, time_to_healthy_ms,
        lane, position, started_at, ended_at}], failed: [{guest, to, reason, lane, position,
        started_at, ended_at}],
        not_moved: [{guest, reason}], lines: [str], ok, max_in_flight}``; ``max_in_flight`` is
        the most moves that ran at one time (:func:`max_in_flight`; None without times). The
        moves are listed in the plan's order (most bytes to move first).
    """
    moved, failed = [], []
    spans = []
    for move in plan.get("moves", []):
        res = results.get(move["guest"])
        if res is None:
            failed.append({"guest": move["guest"], "to": move["to"], "reason": "not attempted"})
            continue
        when = {k: res.get(k) for k in ("lane", "position", "started_at", "ended_at")}
        if when["started_at"] is not None and when["ended_at"] is not None:
            spans.append((when["started_at"], when["ended_at"]))
        if res.get("ok"):
            summary = res.get("summary") or res
            moved.append(dict({"guest": move["guest"], "to": move["to"], "state": summary.get("state"),
                               "downtime_ms": summary.get("downtime_ms"),
                               "duration_s": summary.get("duration_s"),
                               "time_to_healthy_ms": summary.get("time_to_healthy_ms")}, **when))
        else:
            failed.append(dict({"guest": move["guest"], "to": move["to"], "reason": res.get("msg")}, **when))
    not_moved = list(plan.get("unplaced", [])) + list(skipped or [])
    first = min((s for s, _e in spans), default=None)

    def window(m: dict[str, t.Any]) -> str:
        if first is None or m.get("started_at") is None or m.get("ended_at") is None:
            return ""
        order = "" if m.get("position") is None else "#%s " % m["position"]
        start, end = m["started_at"] - first, m["ended_at"] - first
        return " [%s%s: +%.1f s to +%.1f s]" % (order, m.get("lane") or "lane", start, end)

    lines = ["Evacuation of %s: %d moved, %d failed, %d not moved." % (
        source, len(moved), len(failed), len(not_moved))]
    for m in moved:
        if m.get("state") == "planned":
            lines.append("  plan   %s -> %s%s" % (m["guest"], m["to"], window(m)))
        else:
            healthy = ("" if m.get("time_to_healthy_ms") is None
                       else ", healthy %.1f s after the switch-over" % (m["time_to_healthy_ms"] / 1000.0))
            lines.append("  moved  %s -> %s (%s s, downtime %s ms%s)%s" % (
                m["guest"], m["to"], m["duration_s"], m["downtime_ms"], healthy, window(m)))
    lines += ["  FAILED %s -> %s: %s%s" % (f["guest"], f["to"], f["reason"], window(f)) for f in failed]
    lines += ["  stays  %s: %s" % (n["guest"], n["reason"]) for n in not_moved]
    most = max_in_flight(spans) if spans else None
    if most is not None:
        lines.append("  window: largest first, at most %d at once (concurrency %s)" % (
            most, plan.get("concurrency", "?")))
    return {"source": source, "moved": moved, "failed": failed, "not_moved": not_moved,
            "lines": lines, "ok": not failed, "max_in_flight": most}
