# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _migration: flags, parameters, URIs, copy set (C12, C13), C09 addresses, the C11
decision table, the completion timeout and its escalation against recorded job statistics, and
the whole run against the fake libvirt (fake_libvirt.py) of the bindings of 9.0 and 11.3."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _migration as m
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_monitor as mm
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan as mp
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from fake_libvirt import LV_6_0, LV_9_0, LV_11_3, NEWER_THAN_9_0, Connection, Domain, FakeClock, LibvirtError, namespace

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "fixtures", "migration")
GIB = 1024 ** 3


BOTH = pytest.mark.parametrize("lv", [LV_9_0, LV_11_3], ids=["libvirt-9.0", "libvirt-11.3"])


# ------------------------------------------------------------------------------------------
# Domain XML of the cases
# ------------------------------------------------------------------------------------------

XML_C12 = """<domain type='kvm'><name>vm12</name><uuid>5b1d8f0e-1c2a-4f6e-8d9b-0a1b2c3d4e5f</uuid>
<memory unit='GiB'>1</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/>
<source file='/var/lib/libvirt/images/vm12.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/images/vm12-data.raw'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""

XML_C13 = """<domain type='kvm'><name>vm13</name><uuid>6c2e9f1f-2d3b-4a7f-9e0c-1b2c3d4e5f60</uuid>
<memory unit='MiB'>256</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
<source file='/var/lib/libvirt/images/vm13.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/isos/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>"""


def disks_of(xml: str) -> list:
    from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
    return _domain_xml.disks(xml)


def source(xml: str = XML_C12, active: bool = True, persistent: bool = True,
           memory_bytes: int = GIB, disk_bytes: dict | None = None) -> dict:
    return {"name": "vm12", "uuid": "5b1d8f0e-1c2a-4f6e-8d9b-0a1b2c3d4e5f", "active": active,
            "persistent": persistent, "state": "running" if active else "shutoff",
            "memory_bytes": memory_bytes, "disks": disks_of(xml),
            "disk_bytes": disk_bytes if disk_bytes is not None else {"vda": GIB, "vdb": GIB}}


def opts(**kw) -> mp.MigrationOptions:
    kw.setdefault("domain", "vm12")
    kw.setdefault("dest_host", "198.18.0.2")
    # plain unless a test asks for TLS: the transport decision has tests of its own
    kw.setdefault("tls", False)
    kw.setdefault("allow_insecure_transport", True)
    return mp.MigrationOptions(**kw)


# ------------------------------------------------------------------------------------------
# URIs (C09)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address, port, expected", [
    ("198.18.0.2", None, "tcp://198.18.0.2"),
    ("198.18.0.2", 49152, "tcp://198.18.0.2:49152"),
    ("fd00::2", None, "tcp://[fd00::2]"),
    ("fd00::2", 49153, "tcp://[fd00::2]:49153"),
    ("[fd00::2]", 49153, "tcp://[fd00::2]:49153"),
    ("hostb.example", 49152, "tcp://hostb.example:49152"),
])
def test_data_uri(address, port, expected):
    assert mp.build_data_uri(address, port) == expected


@pytest.mark.parametrize("transport, user, port, expected", [
    ("ssh", "root", None, "qemu+ssh://root@198.18.0.2/system"),
    ("ssh", "migrator", 2222, "qemu+ssh://migrator@198.18.0.2:2222/system"),
    ("tls", "root", None, "qemu+tls://198.18.0.2/system"),
])
def test_dest_uri(transport, user, port, expected):
    assert mp.build_dest_uri("198.18.0.2", transport, user, port) == expected


def test_dest_uri_ipv6():
    assert mp.build_dest_uri("fd00::2") == "qemu+ssh://root@[fd00::2]/system"


@BOTH
def test_c09_data_uris_use_the_inventory_address_not_the_host_name(lv):
    """C09: 'address resolution failed for hostb:49153' -> explicit migrate and disks URIs."""
    plan = mp.build_plan(opts(dest_host="198.18.0.2", migrate_port=49152, disks_port=49153),
                         source(), lv)
    assert plan.params["migrate_uri"] == "tcp://198.18.0.2:49152"
    assert plan.params["disks_uri"] == "tcp://198.18.0.2:49153"
    assert plan.dest_uri == "qemu+ssh://root@198.18.0.2/system"
    assert "listen_address" not in plan.params


def test_c09_old_libvirt_without_disks_uri_uses_listen_address_and_port():
    plan = mp.build_plan(opts(dest_host="fd00::2", disks_port=49153), source(), LV_6_0)
    assert plan.params["listen_address"] == "fd00::2"
    assert plan.params["disks_port"] == 49153
    assert plan.params["migrate_uri"] == "tcp://[fd00::2]"
    assert plan.disks_uri is None


# ------------------------------------------------------------------------------------------
# Flags and parameters
# ------------------------------------------------------------------------------------------

@BOTH
def test_default_flags_by_name(lv):
    plan = mp.build_plan(opts(), source(), lv)
    assert plan.flag_names == ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PERSIST_DEST",
                               "VIR_MIGRATE_UNDEFINE_SOURCE", "VIR_MIGRATE_NON_SHARED_DISK"]
    assert plan.flags == lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PERSIST_DEST | \
        lv.VIR_MIGRATE_UNDEFINE_SOURCE | lv.VIR_MIGRATE_NON_SHARED_DISK
    assert "VIR_MIGRATE_UNSAFE" not in plan.flag_names
    assert "VIR_MIGRATE_POSTCOPY" not in plan.flag_names


@BOTH
def test_every_control_switches_its_flag_and_param(lv):
    every = opts(persistent=False, undefine_source=False, copy_storage="incremental",
                 bandwidth_mibps=100, auto_converge=True, auto_converge_initial=20,
                 auto_converge_increment=10, compression=["xbzrle"], parallel_connections=4,
                 tls=True, tls_destination="hostb.example", postcopy=True, unsafe=True,
                 dest_name="vm12-new", dest_xml="<domain/>", persist_xml="<domain/>")
    plan = mp.build_plan(every, source(), lv)
    assert set(plan.flag_names) == {
        "VIR_MIGRATE_LIVE", "VIR_MIGRATE_NON_SHARED_INC", "VIR_MIGRATE_AUTO_CONVERGE",
        "VIR_MIGRATE_COMPRESSED", "VIR_MIGRATE_PARALLEL", "VIR_MIGRATE_POSTCOPY",
        "VIR_MIGRATE_TLS", "VIR_MIGRATE_UNSAFE"}
    p = plan.params
    assert p["bandwidth"] == 100
    assert p["auto_converge.initial"] == 20 and p["auto_converge.increment"] == 10
    assert p["compression"] == ["xbzrle"]
    assert p["parallel.connections"] == 4
    assert p["tls.destination"] == "hostb.example"
    assert p["destination_name"] == "vm12-new"
    assert p["destination_xml"] == "<domain/>" and p["persistent_xml"] == "<domain/>"
    assert plan.as_result()["params"]["destination_xml"] == "(9 characters of XML)"


def test_non_live_drops_the_live_flag():
    plan = mp.build_plan(opts(live=False), source(), LV_11_3)
    assert "VIR_MIGRATE_LIVE" not in plan.flag_names


def test_postcopy_needs_live():
    with pytest.raises(KvmopsError, match="postcopy needs a live migration"):
        mp.build_plan(opts(live=False, postcopy=True), source(), LV_11_3)


def test_timeout_action_postcopy_needs_explicit_opt_in():
    with pytest.raises(KvmopsError, match="explicit opt-in"):
        mp.build_plan(opts(timeout_action="postcopy"), source(), LV_11_3)


def test_zstd_needs_parallel():
    with pytest.raises(KvmopsError, match="parallel"):
        mp.build_plan(opts(compression=["zstd"]), source(), LV_11_3)


def test_zero_detection_on_11_3_lists_the_copied_disks():
    plan = mp.build_plan(opts(detect_zeroes=True), source(), LV_11_3)
    assert plan.params["migrate_disks_detect_zeroes"] == ["vda", "vdb"]
    assert plan.warnings == []


def test_zero_detection_on_9_0_is_skipped_with_a_warning_not_a_crash():
    plan = mp.build_plan(opts(detect_zeroes=True), source(), LV_9_0)
    assert "migrate_disks_detect_zeroes" not in plan.params
    assert "10.9" in plan.warnings[0] and "9.0.0" in plan.warnings[0]


def test_missing_flag_in_binding_is_refused_by_name():
    lv = namespace(1002000, ("VIR_MIGRATE_PARALLEL",))
    with pytest.raises(KvmopsError, match="VIR_MIGRATE_PARALLEL"):
        mp.build_plan(opts(parallel_connections=2), source(), lv)


def test_transient_source_ignores_undefine_source():
    plan = mp.build_plan(opts(), source(persistent=False), LV_11_3)
    assert "VIR_MIGRATE_UNDEFINE_SOURCE" not in plan.flag_names
    assert "transient" in plan.warnings[0]


@BOTH
def test_offline_migration_of_a_shut_off_guest_cannot_copy_storage(lv):
    with pytest.raises(KvmopsError, match="cannot copy disks") as err:
        mp.build_plan(opts(), source(active=False), lv)
    assert err.value.values["disks"] == ["vda", "vdb"]


@BOTH
def test_offline_migration_with_copy_storage_none(lv):
    plan = mp.build_plan(opts(copy_storage="none"), source(active=False), lv)
    assert plan.flag_names == ["VIR_MIGRATE_OFFLINE", "VIR_MIGRATE_PERSIST_DEST",
                               "VIR_MIGRATE_UNDEFINE_SOURCE"]
    assert plan.params == {"destination_name": "vm12"}
    assert plan.migrate_uri is None and plan.timeout_s is None and plan.offline


def test_offline_migration_needs_persistent():
    with pytest.raises(KvmopsError, match="persistent: true"):
        mp.build_plan(opts(copy_storage="none", persistent=False), source(active=False), LV_11_3)


def test_copy_storage_none_sets_no_storage_flag_nor_disks():
    plan = mp.build_plan(opts(copy_storage="none"), source(), LV_11_3)
    assert not {"VIR_MIGRATE_NON_SHARED_DISK", "VIR_MIGRATE_NON_SHARED_INC"} & set(plan.flag_names)
    assert "migrate_disks" not in plan.params and "disks_uri" not in plan.params


# ------------------------------------------------------------------------------------------
# Copy set: C12, C13
# ------------------------------------------------------------------------------------------

def test_c12_copy_set_is_explicit_and_complete():
    """C12: vda (writeback qcow2) and vdb (raw) are both writable local disks: both copied,
    passed explicitly as migrate_disks, and the unsafe flag is not added."""
    plan = mp.build_plan(opts(), source(XML_C12), LV_11_3)
    assert plan.params["migrate_disks"] == ["vda", "vdb"]
    assert "VIR_MIGRATE_UNSAFE" not in plan.flag_names


def test_c12_copying_only_vda_is_refused():
    with pytest.raises(KvmopsError, match="vdb") as err:
        mp.build_plan(opts(disks=["vda"]), source(XML_C12), LV_11_3)
    assert "Unsafe migration" in err.value.msg
    assert err.value.values["left_out"] == ["vdb"]


def test_c12_left_out_disk_declared_shared_is_accepted_without_unsafe_flag():
    plan = mp.build_plan(opts(disks=["vda"], shared_disks=["vdb"]), source(XML_C12), LV_11_3)
    assert plan.params["migrate_disks"] == ["vda"]
    assert "VIR_MIGRATE_UNSAFE" not in plan.flag_names


def test_c13_cdrom_is_never_in_the_copy_set():
    src = source(XML_C13, disk_bytes={"vda": GIB})
    plan = mp.build_plan(opts(domain="vm13"), dict(src, name="vm13"), LV_11_3)
    assert plan.params["migrate_disks"] == ["vda"]
    assert plan.disks == ["vda"]


def test_c13_selecting_the_cdrom_is_refused():
    src = dict(source(XML_C13, disk_bytes={"vda": GIB}), name="vm13")
    with pytest.raises(KvmopsError, match="sda"):
        mp.build_plan(opts(domain="vm13", disks=["vda", "sda"]), src, LV_11_3)


# ------------------------------------------------------------------------------------------
# Completion timeout and escalation
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_bytes, per_gib, floor, expected", [
    (3 * GIB, 800, 300, 2400),
    (GIB // 4, 800, 300, 300),          # floor
    (GIB + 1, 10, 0, 11),               # rounded up
    (5 * GIB, 0, 300, None),            # disabled
])
def test_completion_timeout_scales_per_gib(data_bytes, per_gib, floor, expected):
    assert mp.completion_timeout_s(data_bytes, per_gib, floor) == expected


def test_plan_timeout_counts_memory_and_copied_disk_allocation():
    plan = mp.build_plan(opts(timeout_s_per_gib=100, timeout_min_s=10), source(memory_bytes=GIB,
                         disk_bytes={"vda": GIB, "vdb": 2 * GIB}), LV_11_3)
    assert plan.data_bytes == 4 * GIB
    assert plan.timeout_s == 400


def load(name: str) -> dict:
    with open(os.path.join(FIXTURES, name)) as handle:
        return json.load(handle)


def replay(fixture: dict, monitor: mm.MigrationMonitor) -> list:
    return [(s["elapsed_s"], monitor.observe(s["stats"], s["elapsed_s"])) for s in fixture["samples"]]


@BOTH
def test_converging_job_never_escalates(lv):
    fx = load("jobstats_converging.json")
    timeout = mp.completion_timeout_s(fx["memory_bytes"] + fx["disk_bytes"], 800, 300)
    actions = replay(fx, mm.MigrationMonitor(timeout, "abort", max_downtime_ms=300, lv=lv))
    assert actions[0] == (0.0, "set_downtime")
    assert {a for _t, a in actions[1:]} == {"wait"}


def test_progress_sample_of_converging_job():
    fx = load("jobstats_converging.json")
    first = mm.progress_from_stats(fx["samples"][1]["stats"], 0.5, LV_11_3)
    assert first["phase"] == "storage" and first["percent"] == 50.0
    last = mm.progress_from_stats(fx["samples"][-1]["stats"], 2.0, LV_11_3)
    assert last["phase"] == "memory" and last["memory_iteration"] == 2
    assert last["data_remaining_bytes"] == 4 * 1024 * 1024
    assert last["dirty_rate_bytes_per_s"] == 150 * 4096


def test_not_converging_job_is_aborted_at_the_timeout_then_given_up_after_grace():
    fx = load("jobstats_not_converging.json")
    monitor = mm.MigrationMonitor(10, "abort", abort_grace_s=8, lv=LV_11_3)
    actions = replay(fx, monitor)
    assert [t for t, a in actions if a == "abort"] == [10.0]
    assert all(a == "wait" for t, a in actions if t < 10.0)
    assert [t for t, a in actions if a == "give_up"][0] == 20.0
    assert "completion timeout of 10 s" in monitor.reason


def test_not_converging_job_switches_to_postcopy_once_when_opted_in():
    fx = load("jobstats_postcopy.json")
    monitor = mm.MigrationMonitor(10, "postcopy", lv=LV_9_0)
    actions = replay(fx, monitor)
    assert [t for t, a in actions if a == "postcopy"] == [10.0]
    assert "abort" not in {a for _t, a in actions} and "give_up" not in {a for _t, a in actions}
    assert "post-copy" in monitor.reason


def test_postcopy_action_waits_while_the_job_is_still_setting_up():
    """Connections and the TLS handshake outlast a short timeout: post-copy is switched at the
    first memory sample (lab: a 1 s timeout with TLS), not aborted in the setup phase."""
    setup = {"type": 2, "operation": 5, "time_elapsed": 0, "data_total": 0, "data_processed": 0,
             "data_remaining": 0}
    memory = {"type": 2, "operation": 5, "time_elapsed": 3000, "data_total": 134217728,
              "data_processed": 4194304, "data_remaining": 130023424, "memory_processed": 4194304,
              "memory_iteration": 1}
    monitor = mm.MigrationMonitor(1, "postcopy", abort_grace_s=30, lv=LV_11_3)
    assert [monitor.observe(setup, t) for t in (0.0, 1.0, 2.0)] == ["wait", "wait", "wait"]
    assert monitor.observe(memory, 3.0) == "postcopy"
    stuck = mm.MigrationMonitor(1, "postcopy", abort_grace_s=30, lv=LV_11_3)
    assert stuck.observe(setup, 30.0) == "wait" and stuck.observe(setup, 31.0) == "abort"
    assert "phase setup" in stuck.reason


def test_postcopy_action_during_storage_copy_aborts():
    fx = load("jobstats_converging.json")
    monitor = mm.MigrationMonitor(0.5, "postcopy", lv=LV_11_3)
    actions = replay(fx, monitor)
    assert ("0.5", "abort") == (str(actions[1][0]), actions[1][1])
    assert "post-copy cannot move disk data" in monitor.reason


def test_completed_stats_map_to_the_result():
    fx = load("jobstats_converging.json")
    res = mm.result_from_stats(fx["completed"], LV_9_0)
    assert res["time_ms"] == 2100 and res["downtime_ms"] == 112 and res["setup_ms"] == 5
    assert res["memory_bytes"] == 94371840 and res["disk_bytes"] == 134217728
    assert res["iterations"] == 3 and res["dirty_rate_bytes_per_s"] == 150 * 4096


def test_waiter_stops_at_deadline_and_on_result():
    clock = {"now": 0.0}

    def sleep(s):
        clock["now"] += s
    ticks = mm.timing(1.0, 3.0, clock=lambda: clock["now"], sleep=sleep)
    assert mm.wait_for(lambda elapsed: None, ticks) is None
    assert clock["now"] == 3.0
    ticks = mm.timing(1.0, None, clock=lambda: clock["now"], sleep=sleep)
    assert mm.wait_for(lambda elapsed: "done" if elapsed >= 2 else None, ticks) == "done"


def test_progress_writer_appends_json_lines(tmp_path):
    path = str(tmp_path / "progress.jsonl")
    lines = []
    write = mm.progress_writer(path, lines.append)
    write({"phase": "memory", "percent": 50.0})
    write({"phase": "memory", "percent": 90.0})
    with open(path) as handle:
        assert [json.loads(x)["percent"] for x in handle] == [50.0, 90.0]
    assert len(lines) == 2 and "memory 90.0%" in lines[1]


# ------------------------------------------------------------------------------------------
# C11 decision table
# ------------------------------------------------------------------------------------------

UUID = "5b1d8f0e-1c2a-4f6e-8d9b-0a1b2c3d4e5f"
OTHER = "11111111-2222-3333-4444-555555555555"


def dom_info(state="running", uuid=UUID, name="vm12", persistent=True, ours=False):
    return {"name": name, "uuid": uuid, "state": state, "persistent": persistent, "ours": ours,
            "active": state not in ("shutoff",)}


SRC_RUNNING = dom_info()


def decide(src, by_name, by_uuid, cleanup=False):
    return mp.classify_destination(src, by_name, by_uuid, dest_name="vm12", dest="hostb",
                                   cleanup_leftover=cleanup)


def test_c11_clean_destination_migrates():
    assert decide(SRC_RUNNING, None, None).action == "migrate"


def test_c11_a_other_uuid_under_the_name_fails():
    other = dom_info("shutoff", uuid=OTHER)
    d = decide(SRC_RUNNING, other, None)
    assert (d.action, d.case) == ("fail", "a")
    assert OTHER in d.msg and "dest_name" in d.msg


def test_c11_a_uuid_used_by_another_name_fails():
    d = decide(SRC_RUNNING, None, dom_info("shutoff", name="vm12-old"))
    assert (d.action, d.case) == ("fail", "a")


def test_c11_b_paused_leftover_fails_with_instructions():
    d = decide(SRC_RUNNING, dom_info("paused"), dom_info("paused", ours=True))
    assert (d.action, d.case) == ("fail", "b")
    assert "virsh -c hostb destroy vm12" in d.msg and "cleanup_leftover" in d.msg


def test_c11_b_paused_leftover_not_ours_is_never_cleaned():
    d = decide(SRC_RUNNING, dom_info("paused"), dom_info("paused"), cleanup=True)
    assert (d.action, d.case) == ("fail", "b")
    assert "not known to be ours" in d.msg


def test_c11_b_paused_leftover_ours_is_cleaned_when_asked():
    d = decide(SRC_RUNNING, dom_info("paused", ours=True), dom_info("paused", ours=True), cleanup=True)
    assert (d.action, d.case) == ("cleanup_then_migrate", "b")


def test_c11_c_already_migrated_is_a_noop():
    d = decide(None, dom_info(), dom_info())
    assert (d.action, d.case) == ("noop", "c")


def test_c11_c_already_migrated_with_inactive_source_definition_is_a_noop():
    d = decide(dom_info("shutoff"), dom_info(), dom_info())
    assert (d.action, d.case) == ("noop", "c")


def test_c11_d_running_on_both_stops():
    d = decide(SRC_RUNNING, dom_info(), dom_info())
    assert (d.action, d.case) == ("fail", "d")
    assert d.msg.startswith("STOP") and "Nothing was touched" in d.msg


def test_c11_d_running_on_both_under_other_uuid_stops():
    d = decide(SRC_RUNNING, dom_info(uuid=OTHER), None)
    assert (d.action, d.case) == ("fail", "d")


def test_c11_inactive_definition_with_same_uuid_is_replaced():
    d = decide(SRC_RUNNING, dom_info("shutoff"), dom_info("shutoff"))
    assert d.action == "migrate" and "replaces" in d.msg


def test_c11_absent_everywhere_fails():
    assert decide(None, None, None).action == "fail"


def test_c11_paused_on_destination_absent_on_source_is_not_touched():
    d = decide(None, dom_info("paused"), dom_info("paused"))
    assert d.action == "fail" and "post-copy" in d.msg


# ------------------------------------------------------------------------------------------
# The whole run against fakes
# ------------------------------------------------------------------------------------------

def setup_run(lv, fixture, **kw):
    fx = load(fixture)
    sdom = Domain("vm12", XML_C12, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sconn = Connection("qemu:///system", [sdom])
    dconn = Connection("qemu+ssh://root@198.18.0.2/system")
    clock = FakeClock()
    progress: list = []
    rt = m.Runtime(lv=lv, clock=clock, sleep=clock.sleep, progress=progress.append)
    return sdom, sconn, dconn, rt, progress, opts(poll_interval_s=0.5, **kw)


@BOTH
def test_check_mode_returns_the_plan_and_moves_nothing(lv):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json")
    res = m.migrate_domain(o, sconn, dconn, check_mode=True, rt=rt)
    assert res["changed"] is True and res["state"] == "planned"
    assert res["plan"]["flags"][0] == "VIR_MIGRATE_LIVE"
    assert res["plan"]["disks"] == ["vda", "vdb"]
    assert res["plan"]["migrate_uri"] == "tcp://198.18.0.2"
    assert sdom.calls == [] and dconn.domains == []


@BOTH
def test_successful_run_reports_completed_stats_from_the_destination(lv):
    sdom, sconn, dconn, rt, progress, o = setup_run(lv, "jobstats_converging.json",
                                                    max_downtime_ms=300)
    sdom.finish_after_samples = True
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["changed"] is True and res["state"] == "migrated"
    assert res["stats"]["downtime_ms"] == 112 and res["stats"]["iterations"] == 3
    assert res["dest_state"] == "running" and res["now_on"] == "198.18.0.2"
    assert ("migrateSetMaxDowntime", 300) in sdom.calls
    assert sconn.domains == [] and [d.name() for d in dconn.domains] == ["vm12"]
    assert progress and progress[0]["phase"] == "storage"
    call = [c for c in sdom.calls if isinstance(c, tuple) and c[0] == "migrate3"][0]
    assert call[1]["migrate_disks"] == ["vda", "vdb"]


@BOTH
def test_rerun_after_success_is_not_changed(lv):
    dconn = Connection("qemu+ssh://root@198.18.0.2/system",
                       [Domain("vm12", XML_C12, uuid=UUID, state="running")])
    sconn = Connection("qemu:///system")
    res = m.migrate_domain(opts(), sconn, dconn, rt=m.Runtime(lv=lv))
    assert res["changed"] is False and res["state"] == "already_migrated" and res["case"] == "c"


@BOTH
def test_timeout_aborts_resumes_the_source_and_leaves_nothing_on_the_destination(lv):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    sdom.pause_during_migration = True
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "completion timeout of 10 s" in msg and "198.18.0.2" in msg
    assert "resumed" in msg and "destroyed" in msg
    assert "canceled by client" in err.value.detail
    assert "abortJob" in sdom.calls and "resume" in sdom.calls
    assert dconn.domains == [] and sconn.domains == [sdom] and sdom.isActive()


def test_lost_destination_connection_aborts_and_gives_up_when_the_job_stays_locked():
    """A cut link: keepalive closes dconn, the abort cannot finish (QEMU waits for TCP) and
    jobStats() fails while the abort holds the job lock; the run must still end, naming why."""
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json", abort_grace_s=30)
    samples = {"n": 0}
    real_stats = sdom.jobStats

    def stats(flags=0):
        samples["n"] += 1
        if samples["n"] == 3:
            dconn.alive = False  # keepalive gave up on the destination
        if sdom.aborted:
            raise LibvirtError("Timed out during operation: cannot acquire state change lock")
        return real_stats(flags)

    sdom.jobStats = stats
    sdom.abortJob = lambda: (sdom.calls.append("abortJob"), setattr(sdom, "aborted", True))
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "did not end 30 s after the abort request" in msg
    assert "the connection to libvirtd on 198.18.0.2 was lost" in msg
    assert "abortJob" in sdom.calls and sdom.isActive()
    assert rt.clock() < 60  # about abort_grace_s after the loss, not at the completion timeout (300 s)
    sdom.finished.set()  # let the fake migrate3 thread end


def test_explain_failure_names_the_cause():
    assert "ran out of space" in m.explain_failure(
        "operation failed: migration of disk vda failed: No space left on device", "hostb", "vm1")
    assert "libvirtd there stopped" in m.explain_failure("internal error: client socket is closed", "hostb", "vm1")
    assert "/var/log/libvirt/qemu/vm1.log on hostb" in m.explain_failure(
        "internal error: qemu unexpectedly closed the monitor", "hostb", "vm1")
    assert m.explain_failure("something new", "hostb", "vm1") == "libvirt reported an error"


def test_timeout_with_postcopy_switches_and_completes():
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_postcopy.json", postcopy=True,
                                              timeout_action="postcopy", timeout_s_per_gib=1,
                                              timeout_min_s=10)
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "migrateStartPostCopy" in sdom.calls and "abortJob" not in sdom.calls
    assert res["state"] == "migrated" and "post-copy" in res["escalation"]
    assert res["stats"]["downtime_ms"] == 35


def test_c11_d_run_touches_nothing():
    lv = LV_11_3
    sdom = Domain("vm12", XML_C12, uuid=UUID)
    ddom = Domain("vm12", XML_C12, uuid=UUID)
    sconn, dconn = Connection("qemu:///system", [sdom]), Connection("qemu+ssh://x/system", [ddom])
    with pytest.raises(KvmopsError, match="STOP"):
        m.migrate_domain(opts(cleanup_leftover=True), sconn, dconn, rt=m.Runtime(lv=lv))
    assert sdom.calls == [] and ddom.calls == []


def test_c11_b_run_cleans_our_leftover_then_migrates():
    lv = LV_11_3
    fx = load("jobstats_converging.json")
    sdom = Domain("vm12", XML_C12, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sdom.finish_after_samples = True
    left = Domain("vm12", XML_C12, uuid=UUID, state="paused", persistent=False)
    left.metadata_xml = '<migration run="abc" source="qemu:///system" started="1"/>'
    sconn, dconn = Connection("qemu:///system", [sdom]), Connection("qemu+ssh://x/system", [left])
    clock = FakeClock()
    res = m.migrate_domain(opts(cleanup_leftover=True, poll_interval_s=0.5), sconn, dconn,
                           rt=m.Runtime(lv=lv, clock=clock, sleep=clock.sleep))
    assert "destroy" in left.calls and left not in dconn.domains
    assert res["state"] == "migrated" and res["case"] == "b"


@BOTH
def test_keep_sparse_sends_a_destination_xml_with_discard_unmap_on_copied_disks(lv):
    """Without discard='unmap' on the destination, QEMU 10 fills raw destination images."""
    src = dict(source(), migratable_xml=XML_C12)
    plan = mp.build_plan(opts(), src, lv)
    assert plan.sparse_targets == ["vda", "vdb"]
    dest = plan.params["destination_xml"]
    assert {d["target"]: d["discard"] for d in disks_of(dest)} == {"vda": "unmap", "vdb": "unmap"}
    assert plan.as_result()["sparse_targets"] == ["vda", "vdb"]


@BOTH
def test_keep_sparse_off_or_user_xml_leaves_the_destination_xml_alone(lv):
    src = dict(source(), migratable_xml=XML_C12)
    assert "destination_xml" not in mp.build_plan(opts(keep_sparse=False), src, lv).params
    user = mp.build_plan(opts(dest_xml="<domain/>"), src, lv)
    assert user.params["destination_xml"] == "<domain/>" and user.sparse_targets == []
    offline = mp.build_plan(opts(live=False, copy_storage="none"), dict(src, active=False), lv)
    assert offline.sparse_targets == []


def test_disk_total_is_remembered_for_the_result():
    mon = mm.MigrationMonitor(None, lv=LV_11_3)
    job = {"type": LV_11_3.VIR_DOMAIN_JOB_UNBOUNDED, "disk_total": 20 * GIB, "disk_processed": GIB}
    mon.observe(job, 1.0)
    mon.observe({"type": LV_11_3.VIR_DOMAIN_JOB_UNBOUNDED, "memory_processed": 5}, 2.0)
    assert mon.disk_total_bytes == 20 * GIB


def test_detect_zeroes_with_an_old_binding_on_a_new_library():
    """Debian 12's python3-libvirt 9.0 on libvirt 11.3 (the lab): the constant is missing but the
    library knows the parameter, so it is passed by its documented name."""
    binding_9_library_11 = namespace(11003000, NEWER_THAN_9_0)
    plan = mp.build_plan(opts(), source(), binding_9_library_11)
    assert plan.params["migrate_disks_detect_zeroes"] == ["vda", "vdb"]
    assert not any("detect_zeroes" in w for w in plan.warnings)
    old = mp.build_plan(opts(), source(), LV_9_0)
    assert "migrate_disks_detect_zeroes" not in old.params
    assert any("detect_zeroes skipped" in w for w in old.warnings)


def _kernel_closes(rt, monkeypatch, on_close):
    """The source's kernel as ``ss`` sees it: QEMU (pid 4242, vm12's) holds one data connection
    to the destination; ``ss -K`` closes it and calls ``on_close``."""
    from ansible_collections.kvmops.migration.plugins.module_utils import _runner

    class Kernel(_runner.Runner):
        conns = ["ESTAB 0 2339968 198.18.0.1:34610 198.18.0.2:49153 users:((\"qemu-system-x86\",pid=4242,fd=41))"]

        def run(self, argv):
            if argv[1] == "-K":
                self.conns = []
                on_close()
                return _runner.RunResult(0, "", "")
            return _runner.RunResult(0, "\n".join(self.conns), "")

    rt.runner = Kernel()
    monkeypatch.setattr(m._sockets, "qemu_pid", lambda name: 4242 if name == "vm12" else None)


def _cut_link_run(**kw):
    """A run whose destination connection is lost at the third poll (keepalive gave up on it)."""
    sdom, sconn, dconn, rt, _p, o = setup_run(LV_11_3, "jobstats_not_converging.json", **kw)
    polls = {"n": 0}
    real_stats = sdom.jobStats

    def stats(flags=0):
        polls["n"] += 1
        if polls["n"] == 3:
            dconn.alive = False  # keepalive gave up on the destination
        return real_stats(flags)

    sdom.jobStats = stats
    return sdom, sconn, dconn, rt, o


def test_cut_link_abort_that_hangs_is_ended_by_closing_the_data_connections(monkeypatch):
    """Issue 13 item 7: on a link that drops packets the abort waits for TCP; sever_after_s after
    the abort, the source QEMU's data connections to the destination are closed (ss -K) and the
    job ends then, as a failure with the guest running on the source, well before abort_grace_s."""
    sdom, sconn, dconn, rt, o = _cut_link_run(abort_grace_s=120, sever_after_s=10)
    # the abort is accepted but the job does not end: QEMU waits for the NBD requests in flight
    sdom.abortJob = lambda: (sdom.calls.append("abortJob"), setattr(sdom, "aborted", True))
    severed_at = {}

    def on_close():
        severed_at["t"] = rt.clock()
        sdom.finished.set()  # the NBD client fails: migrate3 returns with the abort's error

    _kernel_closes(rt, monkeypatch, on_close)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "the connection to libvirtd on 198.18.0.2 was lost" in msg
    assert "ended 10 s after the abort by closing its 1 data connection(s) to 198.18.0.2" in msg
    assert "did not end" not in msg
    assert 10 <= severed_at["t"] < 20  # sever_after_s after the abort, not abort_grace_s (120 s)
    # the guest runs on the source; the destination could not be reached (its libvirtd removes
    # the incoming domain itself, which the message says)
    assert sdom.isActive() and sconn.domains == [sdom] and "could not be checked" in msg


def test_a_job_that_outlives_the_closed_connections_gets_the_abort_again(monkeypatch):
    """As seen in the lab with TLS (libvirt 11.3, QEMU 10.0): after the abort and the closed data
    connections, QEMU's mirror job had concluded but libvirt kept the cancelled job (migrate3
    blocked) for minutes, until a second virDomainAbortJob ended it. The abort is sent again from
    sever_after_s on, every REABORT_EVERY_S, and the run reports the failure, not a stuck job."""
    sdom, sconn, dconn, rt, o = _cut_link_run(abort_grace_s=30, sever_after_s=10)
    aborts: list[float] = []

    def abort():
        aborts.append(rt.clock())
        sdom.calls.append("abortJob")
        if len(aborts) == 3:  # the second abort sent again: libvirt wakes and ends the job
            sdom.aborted = True
            sdom.finished.set()

    sdom.abortJob = abort
    closed: list[float] = []
    _kernel_closes(rt, monkeypatch, lambda: closed.append(rt.clock()))  # closing alone ends nothing
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "did not end" not in msg and "had not ended" not in msg
    assert "sending the abort again (2 time(s))" in msg
    assert len(aborts) == 3 and closed
    assert aborts[1] - aborts[0] >= 10 and closed[0] <= aborts[1]  # again only once the sever was due
    assert aborts[2] - aborts[1] >= m.REABORT_EVERY_S
    assert sdom.isActive() and sconn.domains == [sdom]


def test_the_abort_is_sent_again_from_sever_after_s_every_reabort_every_s():
    """The schedule of the abort sent again (the caller calls it only before post-copy)."""
    dom = Domain("vm12", XML_C12)
    calls = dom.calls
    reabort = m._Reabort(dom, mp.MigrationOptions(domain="vm12", dest_host="198.18.0.2"), m.Runtime(), [], LV_11_3)
    reabort.maybe(9.9)
    assert calls == []
    reabort.maybe(10.0)
    reabort.maybe(12.0)
    reabort.maybe(15.0)
    assert calls == ["abortJob", "abortJob"] and reabort.sent == [10.0, 15.0]


def test_cut_link_migrate3_returns_before_the_job_ends_and_the_wait_goes_on(monkeypatch):
    """Issue 13 item 7, as seen in the full lab suite: migrate3 returns the abort's error at once,
    while the source keeps a 'Cancelled' job (its mirror jobs wait on the dead link). The run must
    not report before that job ended: it waits, closes the data connections sever_after_s after
    the abort, and only then recovers and reports."""
    sdom, sconn, dconn, rt, o = _cut_link_run(abort_grace_s=120, sever_after_s=10)
    real_abort = sdom.abortJob

    def abort():
        if not events:  # the first abort (the one sent again after the sever finds no job to cancel)
            sdom.lingering_job = [5]  # VIR_DOMAIN_JOB_CANCELLED: the job is still there
        real_abort()  # migrate3 returns with "canceled by client" right away

    sdom.abortJob = abort
    events = []

    def on_close():
        events.append(("sever", rt.clock()))
        sdom.lingering_job = []  # the mirror jobs fail: the job ends

    real_resume = sdom.resume
    sdom.resume = lambda: (events.append(("resume", rt.clock(), list(sdom.lingering_job))), real_resume())[1]
    _kernel_closes(rt, monkeypatch, on_close)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "by closing its 1 data connection(s) to 198.18.0.2" in msg
    assert "had not ended" not in msg
    assert events and events[0][0] == "sever"
    assert 10 <= events[0][1] < 20  # sever_after_s after the abort
    # anything the recovery did came after the job ended
    assert all(e[2] == [] for e in events if e[0] == "resume")
    assert sdom.isActive() and sconn.domains == [sdom]


def test_a_single_no_job_reading_is_confirmed_before_the_run_reports(monkeypatch):
    """Full lab suite with TLS: the run reported while 'virsh domjobinfo' still showed the
    cancelled job. One 'none' reading right after migrate3 returned is read again a poll interval
    later; the job seen then is waited for (and its connections closed) before the report."""
    sdom, sconn, dconn, rt, o = _cut_link_run(abort_grace_s=120, sever_after_s=10)
    state = {"job": 5, "first": True}
    readings: list = []

    def after_migrate3():
        job = 0 if state["first"] else state["job"]
        state["first"] = False
        readings.append(job)
        return {"type": job}

    sdom._after_migrate3 = after_migrate3

    def on_close():
        state["job"] = 0

    _kernel_closes(rt, monkeypatch, on_close)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "by closing its 1 data connection(s) to 198.18.0.2" in err.value.msg
    assert "had not ended" not in err.value.msg
    assert readings[:2] == [0, 5] and readings[-2:] == [0, 0]


def test_a_job_query_that_times_out_on_the_lock_is_not_taken_for_an_ended_job(monkeypatch):
    """As seen on the booted lab hosts: while the abort waits on the dead link, virDomainGetJobInfo
    waits for the domain's job lock and fails ("cannot acquire state change lock"). That is a job
    still there: the wait goes on, the connections are closed, and only then the run reports."""
    sdom, sconn, dconn, rt, o = _cut_link_run(abort_grace_s=120, sever_after_s=10)
    real_abort = sdom.abortJob
    lock = LibvirtError("Timed out during operation: cannot acquire state change lock (held by "
                        "monitor=remoteDispatchDomainMigratePerform3Params)", code=68)

    def abort():
        sdom.lingering_job = [lock, lock, 5]
        real_abort()

    sdom.abortJob = abort
    severed = []

    def on_close():
        severed.append(rt.clock())
        sdom.lingering_job = []

    _kernel_closes(rt, monkeypatch, on_close)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert severed, "a failed job query was taken for an ended job"
    assert "by closing its 1 data connection(s)" in err.value.msg


def test_a_job_that_outlives_migrate3_and_the_grace_is_named_in_the_failure(monkeypatch):
    """When closing the connections is off and the job stays, the failure says so after
    abort_grace_s instead of claiming the source is clean."""
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json", abort_grace_s=30,
                                              sever_after_s=None)
    real_stats = sdom.jobStats
    sdom.jobStats = lambda flags=0: (setattr(dconn, "alive", False), real_stats(flags))[1]
    real_abort = sdom.abortJob
    sdom.abortJob = lambda: (setattr(sdom, "lingering_job", [5]), real_abort())
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "had not ended 30 s after the failure" in err.value.msg
    assert "virsh domjobinfo vm12" in err.value.msg


def test_sever_is_off_when_asked_and_never_in_post_copy(monkeypatch):
    """sever_after_s=None leaves the aborted job to TCP (the run gives up after abort_grace_s)."""
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json", abort_grace_s=30,
                                              sever_after_s=None)
    sdom.abortJob = lambda: (sdom.calls.append("abortJob"), setattr(sdom, "aborted", True))
    real_stats = sdom.jobStats
    sdom.jobStats = lambda flags=0: (setattr(dconn, "alive", False), real_stats(flags))[1]

    class NoSs:
        def run(self, argv):
            raise AssertionError("ss must not run: %s" % argv)

    rt.runner = NoSs()
    monkeypatch.setattr(m._sockets, "qemu_pid", lambda name: 4242)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "did not end 30 s after the abort request" in err.value.msg
    sdom.finished.set()


# ------------------------------------------------------------------------------------------
# The summary after a post-copy (or escalated) move, when the source domain is gone
# ------------------------------------------------------------------------------------------

def postcopy_run(lv, completed=True, late=0):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_postcopy.json", postcopy=True,
                                              timeout_action="postcopy", timeout_s_per_gib=1,
                                              timeout_min_s=10)
    if not completed:
        sdom.completed = None
    sdom.completed_late = late
    return m.migrate_domain(o, sconn, dconn, rt=rt), sconn


def test_postcopy_summary_waits_for_the_destination_s_completed_stats():
    """migrate3 returned, the source domain is gone, the destination reports its completed
    statistics two polls later: the summary has them, not None."""
    res, sconn = postcopy_run(LV_11_3, late=2)
    assert sconn.domains == []  # UNDEFINE_SOURCE: nothing to read on the source
    stats = res["stats"]
    assert stats["stats_from"] == "completed"
    assert stats["time_ms"] == 14800 and stats["downtime_ms"] == 35 and stats["memory_bytes"] == 1321205760
    assert not [w for w in res["warnings"] if "completed statistics" in w]


def test_postcopy_summary_without_completed_stats_takes_the_last_sample():
    """Neither host has completed statistics: duration, bytes and passes come from the last
    progress sample (marked as such), never None."""
    res, _sconn = postcopy_run(LV_11_3, completed=False)
    stats = res["stats"]
    last = load("jobstats_postcopy.json")["samples"][-1]["stats"]
    assert stats["stats_from"] == "last_sample"
    assert stats["time_ms"] == last["time_elapsed"] and stats["memory_bytes"] == last["memory_processed"]
    assert stats["data_bytes"] == last["data_processed"] and stats["iterations"] == last["memory_iteration"]
    assert stats["disk_bytes"] == last["disk_processed"]
    assert any("no completed statistics" in w for w in res["warnings"])
    from ansible_collections.kvmops.migration.plugins.module_utils import _report

    lines = _report.migration_summary("vm12", "hosta", "hostb", res)["lines"]
    assert lines[0].startswith("vm12 moved hosta -> hostb in at least %s s" % round(last["time_elapsed"] / 1000.0, 1))
    assert "None" not in lines[0] and "memory ?" not in " ".join(lines)
    assert "from the last progress sample" in lines[1]


def test_completed_summary_fills_only_what_the_completed_stats_lack():
    fx = load("jobstats_postcopy.json")
    last = mm.progress_from_stats(fx["samples"][-1]["stats"], 30.0, LV_11_3)
    partial = {k: v for k, v in fx["completed"].items() if k not in ("memory_processed", "downtime")}
    res = mm.completed_summary(partial, last, LV_11_3)
    assert res["stats_from"] == "completed+last_sample"
    assert res["time_ms"] == 14800  # the completed job's own
    assert res["memory_bytes"] == fx["samples"][-1]["stats"]["memory_processed"]
    assert res["downtime_ms"] is None and res["downtime_estimated"] is False  # a running job gave no downtime
    full = mm.completed_summary(fx["completed"], last, LV_11_3)
    assert full["stats_from"] == "completed" and full["downtime_ms"] == 35


def test_completed_summary_with_nothing_known():
    res = mm.completed_summary({}, None, LV_11_3)
    assert res["stats_from"] == "none" and res["time_ms"] is None
    res = mm.completed_summary(None, {"elapsed_s": 12.5, "active": True}, LV_11_3)
    assert res["time_ms"] == 12500 and res["stats_from"] == "last_sample"


def test_completed_stats_wait_while_the_destination_job_runs():
    """The destination still runs the incoming post-copy job: its completed statistics are
    waited for (by the run's clock) up to COMPLETED_STATS_WAIT_ACTIVE_S, not only the grace."""
    lv = LV_11_3
    fx = load("jobstats_postcopy.json")
    ddom = Domain("vm12", XML_C12, uuid=UUID, samples=[{"stats": {"type": 2}}], completed=fx["completed"])
    # not there for 20 s (one read every COMPLETED_STATS_POLL_S): longer than the grace, shorter than the active wait
    ddom.completed_late = int(20 / m.COMPLETED_STATS_POLL_S)
    clock = FakeClock()
    notes: list = []
    stats = m._completed_stats(ddom, None, lv, notes, m.Runtime(lv=lv, clock=clock, sleep=clock.sleep))
    assert stats["type"] == 3 and 20 - 1e-9 <= clock() < m.COMPLETED_STATS_WAIT_ACTIVE_S and notes == []  # float sums
    idle = Domain("vm12", XML_C12, uuid=UUID, completed=None)
    clock = FakeClock()
    assert m._completed_stats(idle, None, lv, notes, m.Runtime(lv=lv, clock=clock, sleep=clock.sleep)) == {}
    assert clock() <= m.COMPLETED_STATS_WAIT_GRACE_S + 1


# ------------------------------------------------------------------------------------------
# Transport (issue 15): encrypted by default, plain only when allowed, before anything changes
# ------------------------------------------------------------------------------------------

def _source_tls(tmp_path, valid=True):
    import tls_fakes
    if not valid:  # a host never prepared: nothing in its certificate directory
        return lambda: m._tls.read_host_tls("", directory=str(tmp_path / "none"), identity={"uid": 0, "gids": []})
    src, _dst = tls_fakes.pair(tmp_path)
    return lambda: src


@BOTH
def test_default_move_uses_tls_when_the_source_holds_certificates(lv, tmp_path):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", tls=None,
                                              allow_insecure_transport=False)
    rt.tls_material = _source_tls(tmp_path)
    rt.now = lambda: 1796083200.0  # 2026-12-01, within the test certificates' validity
    res = m.migrate_domain(o, sconn, dconn, check_mode=True, rt=rt)
    assert "VIR_MIGRATE_TLS" in res["plan"]["flags"]
    assert res["transport"] == {"tls": True, "memory": "tls", "disks": "tls", "control": "ssh", "encrypted": True}


@BOTH
def test_default_move_without_certificates_is_refused_before_anything(lv, tmp_path):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", tls=None,
                                              allow_insecure_transport=False)
    rt.tls_material = _source_tls(tmp_path, valid=False)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "would cross the network unencrypted" in err.value.msg and "nothing was changed" in err.value.msg
    assert "allow_insecure_transport: true" in err.value.msg and "has no migration certificates" in err.value.msg
    assert sdom.calls == [] and dconn.domains == []


@BOTH
def test_plain_move_when_allowed_says_so(lv, tmp_path):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", tls=None,
                                              allow_insecure_transport=True)
    rt.tls_material = _source_tls(tmp_path, valid=False)
    res = m.migrate_domain(o, sconn, dconn, check_mode=True, rt=rt)
    assert "VIR_MIGRATE_TLS" not in res["plan"]["flags"]
    assert res["transport"]["memory"] == "plain" and res["transport"]["encrypted"] is False
    assert any("cross the network unencrypted, allowed by allow_insecure_transport" in w for w in res["warnings"])


@BOTH
def test_tls_false_needs_the_variable_and_qemu_tcp_is_refused(lv):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", tls=False,
                                              allow_insecure_transport=False)
    with pytest.raises(KvmopsError, match="unencrypted \\(tls: false\\)"):
        m.migrate_domain(o, sconn, dconn, rt=rt)
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", tls=False,
                                              allow_insecure_transport=False,
                                              dest_uri="qemu+tcp://198.18.0.2/system")
    with pytest.raises(KvmopsError, match="qemu\\+tcp\\) is neither encrypted nor authenticated"):
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert sdom.calls == []


def test_the_wait_on_migrate3_returns_when_the_call_returns_not_at_the_next_poll():
    worker = threading.Thread(target=threading.Event().wait, args=(0.2,))
    worker.start()
    start = time.monotonic()
    m.Runtime().pause(worker)(30.0)  # the real clock: join(timeout)
    assert time.monotonic() - start < 10.0 and not worker.is_alive()
    clock = FakeClock()
    assert m.Runtime(clock=clock, sleep=clock.sleep).pause(worker) == clock.sleep  # fakes keep theirs


@BOTH
def test_successful_run_checks_the_guest_health_on_the_destination(lv):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json", health={"window_s": 1})
    sdom.finish_after_samples = True
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["health"]["healthy"] is True and res["health"]["agent"] == "none"
    assert res["health"]["watched_ms"] >= 1000 and "BUT" not in res["msg"]
    assert dconn.callbacks == {}  # the panic watch is deregistered


def test_guest_that_panics_after_the_switch_over_is_migrated_but_not_healthy():
    sdom, sconn, dconn, rt, _p, o = setup_run(LV_11_3, "jobstats_converging.json")
    sdom.finish_after_samples = True
    plain_sleep = rt.sleep

    def sleep(seconds):
        plain_sleep(seconds)
        moved = [d for d in dconn.domains if d.isActive()]
        if sdom.migrate3_returned and moved and moved[0].persistent:
            moved[0].crash()  # pvpanic -> libvirt's crashed event, on_crash=destroy
    rt.sleep = sleep
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["state"] == "migrated" and res["health"]["healthy"] is False
    assert res["health"]["panic"]["how"] == "panicked"
    assert "BUT the guest is not healthy there: the guest panicked" in res["msg"]


def test_check_mode_plan_says_what_health_check_follows():
    sdom, sconn, dconn, rt, _p, o = setup_run(LV_11_3, "jobstats_converging.json")
    res = m.migrate_domain(o, sconn, dconn, check_mode=True, rt=rt)
    assert res["plan"]["health"].startswith("health after the move: running for 2 s after the switch-over")
    assert sdom.calls == [] and dconn.callbacks == {}


# ------------------------------------------------------------------------------------------
# UEFI guests: the source's NVRAM file at the switch-over
# ------------------------------------------------------------------------------------------

def uefi_xml(nvram_path: str) -> str:
    return XML_C12.replace(
        "<memory unit='GiB'>1</memory>",
        "<memory unit='GiB'>1</memory><os><type arch='x86_64' machine='q35'>hvm</type>"
        "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
        "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>%s</nvram></os>" % nvram_path)


def setup_uefi_run(tmp_path, source_uri="qemu:///system"):
    import hashlib
    vars_file = tmp_path / "vm12_VARS.fd"
    vars_file.write_bytes(b"\x01" * 540672)
    fx = load("jobstats_converging.json")
    sdom = Domain("vm12", uefi_xml(str(vars_file)), uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sdom.finish_after_samples = True
    sconn = Connection(source_uri, [sdom])
    dconn = Connection("qemu+ssh://root@198.18.0.2/system")
    clock = FakeClock()
    rt = m.Runtime(lv=LV_11_3, clock=clock, sleep=clock.sleep)
    return vars_file, hashlib.sha256(b"\x01" * 540672).hexdigest(), sdom, sconn, dconn, rt


def test_live_move_of_a_uefi_guest_returns_the_source_nvram_read_right_after_the_switch_over(tmp_path):
    vars_file, digest, sdom, sconn, dconn, rt = setup_uefi_run(tmp_path)
    plain_sleep = rt.sleep
    after = []

    def sleep(seconds):
        # the wait loop sleeps at most once after migrate3 returned before it sees the end; any
        # later sleep (completed statistics, the health window) is after the read: the guest,
        # running on the destination, cannot change the source's file, but a change then must
        # not be what is reported
        plain_sleep(seconds)
        if sdom.migrate3_returned:
            after.append(seconds)
            if len(after) == 2:
                vars_file.write_bytes(b"\x02" * 540672)
    rt.sleep = sleep
    res = m.migrate_domain(opts(poll_interval_s=0.5, health={"window_s": 1}), sconn, dconn, rt=rt)
    assert res["state"] == "migrated"
    assert res["nvram"] == {"path": str(vars_file), "format": "raw", "exists": True, "size": 540672,
                            "sha256": digest, "error": None}
    assert len(after) >= 2 and vars_file.read_bytes()[:1] == b"\x02"  # changed later, and not what was read


def test_the_source_nvram_is_not_read_through_a_remote_source_uri(tmp_path):
    vars_file, _digest, _sdom, sconn, dconn, rt = setup_uefi_run(tmp_path, "qemu+ssh://root@198.18.0.1/system")
    res = m.migrate_domain(opts(poll_interval_s=0.5, source_uri="qemu+ssh://root@198.18.0.1/system"), sconn, dconn,
                           rt=rt)
    assert res["nvram"]["path"] == str(vars_file) and res["nvram"]["sha256"] is None
    assert "not on the host this module runs on" in res["nvram"]["error"]


def test_a_missing_source_nvram_is_reported_not_raised(tmp_path):
    vars_file, _digest, _sdom, sconn, dconn, rt = setup_uefi_run(tmp_path)
    vars_file.unlink()
    res = m.migrate_domain(opts(poll_interval_s=0.5), sconn, dconn, rt=rt)
    assert res["state"] == "migrated" and res["nvram"]["exists"] is False and "does not exist" in res["nvram"]["error"]


@BOTH
def test_a_bios_guest_returns_no_nvram(lv):
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_converging.json")
    sdom.finish_after_samples = True
    assert m.migrate_domain(o, sconn, dconn, rt=rt)["nvram"] is None
