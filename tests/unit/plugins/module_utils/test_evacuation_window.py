# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18 item 4, the evacuation's sliding window (_evacuation): the moves in the order they
start (most bytes to move first), the claim file that hands a free lane the next move (each move
to exactly one lane, with several processes and threads claiming at once), and a window of K
lanes never running more than K moves, with the summary showing it."""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _evacuation

MIB = 1024 ** 2
GIB = 1024 ** 3


def dom(name, memory):
    return {"name": name, "state": "running", "active": True, "memory_bytes": memory, "vcpus": 1}


def ok_report():
    return {"ok": True, "findings": []}


def test_plan_orders_moves_by_bytes_to_move_memory_plus_copied_disks():
    hosts = {"a": {"host": {"available_memory_bytes": 64 * GIB}, "domains": []},
             "b": {"host": {"available_memory_bytes": 64 * GIB}, "domains": []}}
    guests = [dom("bigmem", 4 * GIB), dom("bigdisk", GIB), dom("small", GIB), dom("tie", GIB)]
    reports = {g["name"]: {"b": ok_report()} for g in guests}
    copied = {"bigmem": {"b": 0}, "bigdisk": {"b": 10 * GIB}, "small": {"b": 0}, "tie": {"b": 0}}
    plan = _evacuation.plan_evacuation("a", guests, hosts, reports, 0, 2, copied)
    assert [m["guest"] for m in plan["moves"]] == ["bigdisk", "bigmem", "small", "tie"]
    assert [m["bytes_to_move"] for m in plan["moves"]] == [11 * GIB, 4 * GIB, GIB, GIB]
    assert plan["moves"][0]["copy_bytes"] == 10 * GIB and plan["moves"][0]["memory_bytes"] == GIB
    assert plan["batches"] == [["bigdisk", "bigmem"], ["small", "tie"]] and plan["concurrency"] == 2
    # without copy_bytes (no storage copied) the memory alone orders them
    plain = _evacuation.plan_evacuation("a", guests, hosts, reports, 0, 1)
    assert [m["guest"] for m in plain["moves"]] == ["bigmem", "bigdisk", "small", "tie"]


def test_claims_take_the_order_then_nothing(tmp_path):
    path = str(tmp_path / "claims.json")
    moves = [{"guest": "g1", "to": "b"}, {"guest": "g2", "to": "c"}]
    clock = iter([10.0, 11.0, 12.5, 13.0]).__next__
    first = _evacuation.claim_next(path, moves, "lane-1", clock)
    second = _evacuation.claim_next(path, moves, "lane-2", clock)
    assert (first["guest"], first["to"], first["lane"], first["started_at"], first["position"]) == ("g1", "b", "lane-1", 10.0, 1)
    assert (second["guest"], second["lane"], second["position"]) == ("g2", "lane-2", 2)
    assert _evacuation.claim_next(path, moves, "lane-1", clock) is None
    done = _evacuation.finish_claim(path, "g1", clock)
    assert done == {"guest": "g1", "lane": "lane-1", "position": 1, "started_at": 10.0, "ended_at": 12.5}
    with open(path) as f:
        assert [c["guest"] for c in json.load(f)["claims"]] == ["g1", "g2"]
    with pytest.raises(KeyError, match="no claim of g9"):
        _evacuation.finish_claim(path, "g9")


def _claim_all(args):
    path, moves, lane = args
    got = []
    while True:
        move = _evacuation.claim_next(path, moves, lane)
        if move is None:
            return got
        got.append(move["guest"])


def test_claims_are_race_free_across_processes(tmp_path):
    path = str(tmp_path / "claims.json")
    moves = [{"guest": "g%03d" % i} for i in range(200)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        got = pool.map(_claim_all, [(path, moves, "lane-%d" % i) for i in range(8)])
    claimed = [g for lane in got for g in lane]
    assert sorted(claimed) == [m["guest"] for m in moves]  # each move exactly once
    assert sum(1 for lane in got if lane) >= 2  # the processes really competed
    with open(path) as f:
        assert [c["guest"] for c in json.load(f)["claims"]] == [m["guest"] for m in moves]  # in the order


def test_claims_are_race_free_across_threads(tmp_path):
    path = str(tmp_path / "claims.json")
    moves = [{"guest": "g%03d" % i} for i in range(300)]
    got: dict[str, list[str]] = {}
    threads = [threading.Thread(target=lambda n=n: got.__setitem__(n, _claim_all((path, moves, n))))
               for n in ("lane-%d" % i for i in range(6))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    claimed = [g for lane in got.values() for g in lane]
    assert len(claimed) == len(set(claimed)) == len(moves)


@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_a_window_of_k_lanes_never_runs_more_than_k_moves(tmp_path, lanes):
    """K lanes as threads, each a loop of claim -> run (a random time) -> finish, as move.yml and
    lane.yml run them: the spans in the claim file never overlap beyond K, K do overlap, and each
    move started no earlier than a larger one."""
    path = str(tmp_path / "claims.json")
    rnd = random.Random(lanes)
    moves = _evacuation.largest_first([{"guest": "g%d" % i, "bytes_to_move": rnd.randint(1, 50) * GIB}
                                       for i in range(12)])
    running = []
    most = [0]
    lock = threading.Lock()

    def lane(name):
        for _turn in moves:
            move = _evacuation.claim_next(path, moves, name)
            if move is None:
                continue
            with lock:
                running.append(move["guest"])
                most[0] = max(most[0], len(running))
            time.sleep(rnd.uniform(0.005, 0.03))
            with lock:
                running.remove(move["guest"])
            _evacuation.finish_claim(path, move["guest"])

    threads = [threading.Thread(target=lane, args=("lane-%d" % i,)) for i in range(lanes)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with open(path) as f:
        claims = json.load(f)["claims"]
    assert len(claims) == len(moves) and all(c["ended_at"] >= c["started_at"] for c in claims)
    spans = [(c["started_at"], c["ended_at"]) for c in claims]
    assert most[0] <= lanes and _evacuation.max_in_flight(spans) <= lanes
    if lanes > 1:
        assert most[0] > 1  # the lanes did run at the same time
    started = sorted(claims, key=lambda c: c["started_at"])
    assert [c["guest"] for c in started] == [m["guest"] for m in moves]  # largest first


def test_max_in_flight():
    assert _evacuation.max_in_flight([]) == 0
    assert _evacuation.max_in_flight([(0, 10), (1, 2), (3, 4)]) == 2
    assert _evacuation.max_in_flight([(0, 1), (1, 2), (2, 3)]) == 1  # touching spans do not overlap
    assert _evacuation.max_in_flight([(0, 5), (1, 5), (2, 5)]) == 3


def test_summary_shows_the_window():
    plan = {"moves": [{"guest": "big", "to": "b"}, {"guest": "small", "to": "c"}, {"guest": "bad", "to": "c"}],
            "unplaced": [], "concurrency": 2, "lanes": 2}
    res = {"big": {"ok": True, "state": "migrated", "duration_s": 9.0, "downtime_ms": 30, "lane": "kvmops-lane-1",
                   "position": 1, "started_at": 100.0, "ended_at": 110.0},
           "small": {"ok": True, "state": "migrated", "duration_s": 2.0, "downtime_ms": 20, "lane": "kvmops-lane-2",
                     "started_at": 100.2, "ended_at": 103.0},
           "bad": {"ok": False, "msg": "pre-flight failed", "lane": "kvmops-lane-2", "started_at": 103.1,
                   "ended_at": 104.0}}
    out = _evacuation.evacuation_summary("a", plan, res)
    assert out["max_in_flight"] == 2
    assert out["moved"][0]["started_at"] == 100.0 and out["moved"][1]["lane"] == "kvmops-lane-2"
    assert out["failed"][0]["ended_at"] == 104.0
    assert out["lines"][1] == "  moved  big -> b (9.0 s, downtime 30 ms) [#1 kvmops-lane-1: +0.0 s to +10.0 s]"
    assert out["lines"][3] == "  FAILED bad -> c: pre-flight failed [kvmops-lane-2: +3.1 s to +4.0 s]"
    assert out["lines"][-1] == "  window: largest first, at most 2 at once (concurrency 2)"
    assert _evacuation.evacuation_summary("a", plan, {})["max_in_flight"] is None
