# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The convergence ladder (issue 19 item 3, ``_convergence``): which step when, given a sequence
of job statistics; and the whole driver against the fake libvirt, with the recorded
not-converging job (tests/unit/fixtures/migration/jobstats_not_converging.json)."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _convergence as cv
from ansible_collections.kvmops.migration.plugins.module_utils import _migration as m
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_monitor as mm
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan as mp

from fake_libvirt import Connection, Domain, FakeClock, LibvirtError, namespace  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "migration")
LV = namespace()
UUID = "0d9c2c4e-0000-4000-8000-000000000012"
XML = """<domain type='kvm'><name>vm12</name><uuid>%s</uuid><memory unit='KiB'>524288</memory>
<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/images/vm12.img'/><target dev='vda' bus='virtio'/></disk></devices></domain>""" % UUID


def opts(**kw) -> mp.MigrationOptions:
    """Options of a plain move of vm12 (the transport decision has tests of its own)."""
    kw.setdefault("tls", False)
    kw.setdefault("allow_insecure_transport", True)
    return mp.MigrationOptions(domain="vm12", dest_host="198.18.0.2", **kw)


def load(name: str) -> dict:
    with open(os.path.join(FIXTURES, name)) as handle:
        return json.load(handle)


def sample(elapsed: float, iteration: int | None, throttle: int | None = None, phase: str | None = None) -> dict:
    """A progress sample as the waiter hands it over (only what the ladder reads)."""
    return {"elapsed_s": elapsed, "active": True, "memory_iteration": iteration, "auto_converge_throttle": throttle,
            "phase": phase or ("memory" if iteration else "storage")}


def run(ladder: cv.Ladder, samples: list[dict]) -> list[tuple[float, list]]:
    return [(s["elapsed_s"], a) for s in samples for a in [ladder.observe(s)] if a]


def test_downtime_steps_run_evenly_from_the_start_to_the_maximum():
    assert cv.downtime_steps(100, 500, 3) == [100, 300, 500]
    assert cv.downtime_steps(100, 1000, 4) == [100, 400, 700, 1000]
    assert cv.downtime_steps(100, 500, 1) == [500]
    assert cv.downtime_steps(600, 500, 4) == [500]  # the top below the start: the top at once
    assert cv.downtime_steps(100, None, 4) == []  # no maximum: QEMU's default, no steps


def test_one_step_per_memory_pass_that_did_not_converge_and_never_past_the_top():
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=500, downtime_steps=3))
    samples = [sample(0.0, None), sample(1.0, None), sample(2.0, 1), sample(3.0, 1), sample(4.0, 2),
               sample(5.0, 2), sample(6.0, 3), sample(8.0, 4), sample(10.0, 5)]
    assert run(ladder, samples) == [(0.0, [("set_downtime", 100)]), (4.0, [("set_downtime", 300)]),
                                    (6.0, [("set_downtime", 500)])]
    assert [(s["step"], s["at_s"], s["memory_iteration"], s["max_downtime_ms"]) for s in ladder.steps] == [
        ("downtime", 0.0, None, 100), ("downtime", 4.0, 2, 300), ("downtime", 6.0, 3, 500)]
    assert ladder.as_result()["msg"] == "max downtime 100 ms at 0.0 s, 300 ms at 4.0 s (pass 2), 500 ms at 6.0 s (pass 3)"


def test_a_move_that_converges_in_its_first_pass_keeps_the_low_downtime():
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=1000, downtime_steps=4, postcopy=True))
    run(ladder, [sample(0.0, None), sample(1.0, 1), sample(1.5, 1)])
    assert [s["max_downtime_ms"] for s in ladder.steps] == [100] and not ladder.postcopy_requested


def test_one_step_sets_the_maximum_at_once_as_before():
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=300))
    assert run(ladder, [sample(0.0, None), sample(2.0, 2), sample(4.0, 3)]) == [(0.0, [("set_downtime", 300)])]


def test_auto_converge_is_recorded_when_qemu_throttles_and_how_far():
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=500, downtime_steps=2, auto_converge=True))
    run(ladder, [sample(0.0, None), sample(2.0, 1), sample(4.0, 2), sample(6.0, 3, 20), sample(8.0, 4, 30),
                 sample(10.0, 5, 40)])
    ac = [s for s in ladder.steps if s["step"] == "auto_converge"]
    assert ac == [{"step": "auto_converge", "at_s": 6.0, "memory_iteration": 3, "throttle_percent": 20,
                   "throttle_max_percent": 40}]
    assert "auto-converge throttling 20 % at 6.0 s (pass 3), up to 40 %" in ladder.as_result()["msg"]
    # not allowed (the job has no VIR_MIGRATE_AUTO_CONVERGE): a throttle figure is not a step
    other = cv.Ladder(cv.LadderOptions(max_downtime_ms=500))
    run(other, [sample(0.0, None), sample(6.0, 3, 20)])
    assert [s["step"] for s in other.steps] == ["downtime"]


def test_postcopy_only_when_the_ladder_is_exhausted_and_allowed():
    samples = [sample(0.0, None)] + [sample(2.0 * i, i) for i in range(1, 12)]
    # downtime steps at passes 2 and 3 (top), then 3 more passes: post-copy at pass 6
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=500, downtime_steps=3, postcopy=True, stall_iterations=3))
    actions = run(ladder, samples)
    assert actions[-1] == (12.0, [("postcopy", None)]) and ladder.steps[-1]["memory_iteration"] == 6
    assert "max downtime 500 ms" in ladder.reason and "memory pass 6" in ladder.reason
    assert ladder.observe(sample(24.0, 12)) == []  # once
    # not allowed: the ladder stops at its top, the completion timeout decides
    stays = cv.Ladder(cv.LadderOptions(max_downtime_ms=500, downtime_steps=3, stall_iterations=3))
    assert ("postcopy", None) not in [a for _t, acts in run(stays, samples) for a in acts]


def test_postcopy_waits_for_auto_converge_to_have_had_its_passes():
    samples = [sample(0.0, None), sample(2.0, 1), sample(4.0, 2), sample(6.0, 3), sample(8.0, 4),
               sample(10.0, 5, 20), sample(12.0, 6, 30), sample(14.0, 7, 40), sample(16.0, 8, 50)]
    ladder = cv.Ladder(cv.LadderOptions(max_downtime_ms=300, downtime_steps=2, auto_converge=True,
                                        postcopy=True, stall_iterations=3))
    actions = run(ladder, samples)
    # the downtime's top at pass 2, throttling from pass 5: post-copy at pass 5 + 3 = 8, not at 2 + 3
    assert [t for t, acts in actions if ("postcopy", None) in acts] == [16.0]
    assert [s["step"] for s in ladder.steps] == ["downtime", "downtime", "auto_converge", "postcopy"]


def test_no_postcopy_while_the_disks_are_copied():
    ladder = cv.Ladder(cv.LadderOptions(postcopy=True, stall_iterations=1))
    assert run(ladder, [sample(1.0, None, phase="storage"), sample(2.0, None, phase="storage")]) == []
    assert run(ladder, [sample(3.0, 1), sample(4.0, 2)]) == [(4.0, [("postcopy", None)])]


def test_options_come_from_the_flags_the_job_has():
    o = opts(max_downtime_ms=500, downtime_steps=3, auto_converge=True, postcopy=True, postcopy_on_stall=True)
    plan = mp.build_plan(o, {"name": "vm12", "uuid": UUID, "active": True, "persistent": True, "disks": [],
                             "memory_bytes": 0}, LV)
    got = cv.options_for(o, plan)
    assert (got.auto_converge, got.postcopy, got.max_downtime_ms, got.downtime_steps) == (True, True, 500, 3)
    with pytest.raises(Exception, match="postcopy_on_stall needs postcopy=true"):
        opts(postcopy_on_stall=True).validate()
    with pytest.raises(Exception, match="downtime_steps must be at least 1"):
        opts(downtime_steps=0).validate()


def test_the_switchover_bandwidth_is_passed_where_libvirt_has_it():
    o = opts(switchover_bandwidth_bps=117440512)
    src = {"name": "vm12", "uuid": UUID, "active": True, "persistent": True, "disks": [], "memory_bytes": 0}
    assert mp.build_plan(o, src, LV).params["bandwidth.avail.switchover"] == 117440512
    old = mp.build_plan(o, src, namespace(9000000, missing=["VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER"]))
    assert "bandwidth.avail.switchover" not in old.params
    assert any("switchover_bandwidth_bps not passed" in w for w in old.warnings)


# ------------------------------------------------------------------------------------------
# The driver with the ladder, against the fake libvirt
# ------------------------------------------------------------------------------------------

def run_move(**kw):
    fx = load("jobstats_not_converging.json")
    sdom = Domain("vm12", XML, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sconn = Connection("qemu:///system", [sdom])
    dconn = Connection("qemu+ssh://root@198.18.0.2/system")
    clock = FakeClock()
    rt = m.Runtime(lv=LV, clock=clock, sleep=clock.sleep)
    o = opts(poll_interval_s=2.0, copy_storage="none", **kw)
    return sdom, m.migrate_domain(o, sconn, dconn, rt=rt)


def test_the_driver_steps_the_downtime_then_switches_to_postcopy_and_says_when():
    sdom, res = run_move(max_downtime_ms=500, downtime_steps=3, postcopy=True, postcopy_on_stall=True,
                         stall_iterations=2, timeout_min_s=600)
    assert res["state"] == "migrated"
    downs = [c[1] for c in sdom.calls if isinstance(c, tuple) and c[0] == "migrateSetMaxDowntime"]
    assert downs == [100, 300, 500]
    assert sdom.calls.count("migrateStartPostCopy") == 1
    steps = res["convergence"]["steps"]
    assert [s["step"] for s in steps] == ["downtime", "downtime", "downtime", "postcopy"]
    assert steps[-1]["memory_iteration"] == steps[-2]["memory_iteration"] + 2
    assert "switched to post-copy" in res["escalation"] and "post-copy at" in res["convergence"]["msg"]


def test_a_refused_downtime_step_is_a_note_and_the_move_goes_on():
    fx = load("jobstats_converging.json")
    sdom = Domain("vm12", XML, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sdom.finish_after_samples = True

    def refuse(ms, flags=0):
        raise LibvirtError("Requested operation is not valid: domain is not being migrated")
    sdom.migrateSetMaxDowntime = refuse
    clock = FakeClock()
    o = opts(poll_interval_s=0.5, copy_storage="none", max_downtime_ms=300)
    res = m.migrate_domain(o, Connection("qemu:///system", [sdom]), Connection("qemu+ssh://root@198.18.0.2/system"),
                           rt=m.Runtime(lv=LV, clock=clock, sleep=clock.sleep))
    assert res["state"] == "migrated" and res["convergence"]["steps"][0]["applied"] is False
    assert any("max_downtime_ms not applied" in w for w in res["warnings"])
    assert "(refused by libvirt)" in res["convergence"]["msg"]


def test_the_throttle_figure_reaches_the_progress_sample():
    got = mm.progress_from_stats({"type": 2, "memory_iteration": 3, "auto_converge_throttle": 30}, 5.0, LV)
    assert got["auto_converge_throttle"] == 30
