"""Issue 19 item 4: a post-copy move whose link broke. The guest runs on the destination and
waits for memory still on the source: it is told from the domain state, nothing is aborted,
destroyed or undefined on either host, the move is waited for, the messages name the place and
the fix, a rerun waits instead of moving, and locate/rollback treat it as one guest in post-copy."""

from __future__ import annotations

import json
import os
import sys

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _host
from ansible_collections.kvmops.migration.plugins.module_utils import _locate
from ansible_collections.kvmops.migration.plugins.module_utils import _migration as m
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan as mp
from ansible_collections.kvmops.migration.plugins.module_utils import _postcopy as pc
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_libvirt import LV_11_3, Connection, Domain, FakeClock, connector  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "migration")
UUID = "5b1d8f0e-1c2a-4f6e-8d9b-0a1b2c3d4e5f"
XML = """<domain type='kvm'><name>vm12</name><uuid>%s</uuid><memory unit='KiB'>1048576</memory>
<devices><disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/images/vm12.raw'/><target dev='vda' bus='virtio'/></disk></devices></domain>""" % UUID
PAUSED_FAILED, PAUSED_POSTCOPY, RUNNING_POSTCOPY, RUNNING_FAILED = ("paused", 13), ("paused", 12), ("running", 10), ("running", 11)


@pytest.mark.parametrize("state, reason, expected", [
    ("paused", 13, "failed"), ("running", 11, "failed"), ("paused", 12, "active"), ("running", 10, "active"),
    ("paused", 2, None), ("running", 2, None), ("running", 0, None), ("shutoff", 13, None), (None, None, None),
])
def test_phase_of_each_domain_state(state, reason, expected):
    """libvirt's reasons (enum values, as the binding's constants have them)."""
    assert pc.phase(state, reason) == expected


def test_the_reason_numbers_are_libvirt_s():
    libvirt = pytest.importorskip("libvirt")
    assert libvirt.VIR_DOMAIN_PAUSED_POSTCOPY == 12 and libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED == 13
    assert libvirt.VIR_DOMAIN_RUNNING_POSTCOPY == 10 and libvirt.VIR_DOMAIN_RUNNING_POSTCOPY_FAILED == 11


def test_resume_command_repeats_the_move_s_flags():
    cmd = pc.resume_command("vm12", "qemu+ssh://root@198.18.0.2/system",
                            ["VIR_MIGRATE_LIVE", "VIR_MIGRATE_PERSIST_DEST", "VIR_MIGRATE_UNDEFINE_SOURCE",
                             "VIR_MIGRATE_NON_SHARED_DISK", "VIR_MIGRATE_POSTCOPY", "VIR_MIGRATE_TLS"], "tcp://198.18.0.2")
    assert cmd == ("virsh migrate --live --persistent --undefinesource --copy-storage-all --postcopy --tls "
                   "--postcopy-resume vm12 qemu+ssh://root@198.18.0.2/system --migrateuri tcp://198.18.0.2")
    assert "--postcopy --postcopy-resume" in pc.resume_command("vm", "qemu:///x", ["VIR_MIGRATE_LIVE"], None)


def test_resume_command_repeats_the_move_s_parameters():
    """The resume must repeat the original call: the disks, their URI, the bandwidths, the TLS
    name; the XML parameters are not for the command line."""
    cmd = pc.resume_command("vm12", "qemu+ssh://root@198.18.0.2/system", ["VIR_MIGRATE_POSTCOPY"], "tcp://198.18.0.2",
                            {"migrate_disks": ["vda", "vdb"], "disks_uri": "tcp://198.18.0.2", "bandwidth": 10,
                             "bandwidth.postcopy": 8, "tls.destination": "hostb", "destination_xml": "<domain/>",
                             "migrate_disks_detect_zeroes": [], "listen_address": None})
    assert cmd.endswith("--migrateuri tcp://198.18.0.2 --migrate-disks vda,vdb --disks-uri tcp://198.18.0.2 "
                        "--bandwidth 10 --postcopy-bandwidth 8 --tls-destination hostb"), cmd


def test_paused_message_names_the_place_and_the_fix():
    msg = pc.paused_message("vm12", "qemu:///system", "198.18.0.2", "virsh migrate X", 300, "failed")
    for words in ("Guest vm12 is paused in post-copy between qemu:///system and 198.18.0.2", "NOT lost",
                  "nothing was removed on either host", "never destroy or undefine vm12", "within 300 s",
                  "rerun the playbook", "virsh domstate --reason vm12", "virsh migrate X", "post-copy failed",
                  "crashed the destination's libvirtd", "upgrade libvirt on both hosts first"):
        assert words in msg, (words, msg)


def test_backoff_doubles_up_to_its_cap():
    delays = pc.backoff(2, 15)
    assert [next(delays) for _step in range(6)] == [2, 4, 8, 15, 15, 15]


def test_wait_for_end_sees_the_move_complete_and_touches_nothing():
    dom = Domain("vm12", XML, state="paused", reason=13)
    dom.migrate3_returned = True
    dom.states_after = [PAUSED_FAILED, PAUSED_FAILED, PAUSED_FAILED, ("shutoff", 2)]
    clock = FakeClock()
    out = pc.wait_for_end(dom, timeout_s=300, clock=clock, sleep=clock.sleep, lv=LV_11_3, failed_at=-5.0)
    assert out.state == "completed" and out.seen == ["failed", "gone"]
    assert out.waited_s == 14 and out.paused_s == 19  # 2 + 4 + 8 s of backoff, failed 5 s before
    assert dom.calls == []


def test_wait_for_end_gives_up_at_the_deadline_still_paused():
    dom = Domain("vm12", XML, state="paused", reason=13)
    clock = FakeClock()
    out = pc.wait_for_end(dom, timeout_s=40, clock=clock, sleep=clock.sleep, lv=LV_11_3)
    assert out.state == "paused" and out.paused_s is None and out.seen == ["failed"]
    assert 40 <= out.waited_s <= 40.5 and dom.calls == []
    assert out.as_result() == {"state": "paused", "paused_s": None, "waited_s": out.waited_s, "seen": ["failed"]}


def test_source_phase_of_a_running_and_a_shut_off_source():
    dom = Domain("vm12", XML)
    assert pc.source_phase(dom, LV_11_3) == "other"  # running, no post-copy reason
    dom._state, dom.reason = "shutoff", 2
    assert pc.source_phase(dom, LV_11_3) == "gone"


# ------------------------------------------------------------------------- the migrate module

def _run(timeout_s=30.0, states_after=None, **kw):
    with open(os.path.join(FIXTURES, "jobstats_postcopy.json")) as f:
        fx = json.load(f)
    sdom = Domain("vm12", XML, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sdom.postcopy_link_breaks = True
    sdom.states_after = list(states_after or [PAUSED_FAILED])
    sconn = Connection("qemu:///system", [sdom])
    dconn = Connection("qemu+ssh://root@198.18.0.2/system")
    clock = FakeClock()
    rt = m.Runtime(lv=LV_11_3, clock=clock, sleep=clock.sleep, connect=connector(dconn))
    o = mp.MigrationOptions(domain="vm12", dest_host="198.18.0.2", tls=False, allow_insecure_transport=True,
                            postcopy=True, timeout_action="postcopy", timeout_s_per_gib=1, timeout_min_s=10,
                            poll_interval_s=0.5, postcopy_recover_timeout_s=timeout_s, **kw)
    return sdom, sconn, dconn, rt, o


def _changes(conn):
    return [c for d in conn.domains for c in d.calls]


def test_link_lost_in_postcopy_leaves_both_copies_and_says_so():
    sdom, sconn, dconn, rt, o = _run(timeout_s=30)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = str(err.value)
    assert "is paused in post-copy between qemu:///system and 198.18.0.2" in msg and "NOT lost" in msg
    assert "within 30 s" in msg and "--postcopy-resume vm12 qemu+ssh://root@198.18.0.2/system" in msg
    assert err.value.values["state"] == "postcopy_paused"
    assert err.value.values["postcopy_recovery"]["state"] == "paused"
    # nothing aborted, resumed, destroyed or undefined on either host; both copies still there
    assert "migrateStartPostCopy" in sdom.calls
    assert not {"abortJob", "destroy", "resume"} & set(map(str, sdom.calls + _changes(dconn)))
    assert not [c for c in sdom.calls + _changes(dconn) if isinstance(c, tuple) and c[0] == "undefineFlags"]
    assert sconn.domains == [sdom] and [d.state() for d in dconn.domains] == [[1, 11]]


def test_link_back_in_time_completes_the_move():
    sdom, sconn, dconn, rt, o = _run(timeout_s=300, states_after=[PAUSED_FAILED, PAUSED_FAILED, ("shutoff", 2)])
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["state"] == "migrated" and res["changed"] is True
    assert res["postcopy_recovery"]["state"] == "completed" and res["postcopy_recovery"]["paused_s"] == 6
    assert "completed 6 s later" in res["msg"]
    assert any("health check was not run" in w for w in res["warnings"])
    assert not {"abortJob", "destroy", "resume"} & set(map(str, sdom.calls))
    # the incoming domain is not (yet) persistent on the destination: the source's definition stays
    assert sdom.persistent and any("keeps its shut-off definition" in w for w in res["warnings"])


def test_completed_move_undefines_the_source_only_once_the_destination_holds_the_guest():
    sdom, sconn, dconn, rt, o = _run(timeout_s=300, states_after=[PAUSED_FAILED, ("shutoff", 2)])
    real = sdom._migrate3

    def finished_there(dconn_, params, flags):
        try:
            return real(dconn_, params, flags)
        finally:  # libvirt finished the move on the destination once the link was back
            dconn_.domains[0]._state, dconn_.domains[0].reason, dconn_.domains[0].persistent = "running", 2, True

    sdom._migrate3 = finished_there
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["state"] == "migrated"
    assert ("undefineFlags", 8) in sdom.calls and not sdom.persistent
    assert any("was undefined (its NVRAM kept)" in w for w in res["warnings"])


def test_rerun_finds_the_guest_in_postcopy_and_waits_instead_of_moving():
    sdom = Domain("vm12", XML, uuid=UUID, state="paused", reason=13)
    ddom = Domain("vm12", XML, uuid=UUID, state="running", reason=11, persistent=False)
    sconn, dconn = Connection("qemu:///system", [sdom]), Connection("qemu+ssh://root@198.18.0.2/system", [ddom])
    clock = FakeClock()
    rt = m.Runtime(lv=LV_11_3, clock=clock, sleep=clock.sleep, connect=connector(dconn))
    o = mp.MigrationOptions(domain="vm12", dest_host="198.18.0.2", tls=False, allow_insecure_transport=True,
                            postcopy=True, cleanup_leftover=True, postcopy_recover_timeout_s=60)
    planned = m.migrate_domain(o, sconn, dconn, check_mode=True, rt=rt)
    assert planned["state"] == "planned" and planned["case"] == "postcopy_failed"
    assert "would wait for that move to end" in planned["msg"]
    sdom.migrate3_returned = True  # the earlier run's: the state reads below follow states_after
    sdom.states_after = [PAUSED_FAILED, PAUSED_FAILED, ("shutoff", 2)]
    res = m.migrate_domain(o, sconn, dconn, rt=rt)
    assert res["state"] == "migrated" and res["postcopy_recovery"]["state"] == "completed"
    # no new migrate3, and cleanup_leftover never touched the destination copy
    assert sdom.calls == [] and ddom.calls == []


def test_rerun_on_the_destination_side_refuses():
    ddom = Domain("vm12", XML, uuid=UUID, state="running", reason=11, persistent=False)
    conn, other = Connection("qemu:///system", [ddom]), Connection("qemu+ssh://root@198.18.0.1/system")
    o = mp.MigrationOptions(domain="vm12", dest_host="198.18.0.1", tls=False, allow_insecure_transport=True,
                            postcopy=True)
    with pytest.raises(KvmopsError, match="the destination of an interrupted move"):
        m.migrate_domain(o, conn, other, rt=m.Runtime(lv=LV_11_3))
    assert ddom.calls == []


# ------------------------------------------------------------------------- host facts, locate

def test_host_facts_tell_the_postcopy_phase_and_side():
    assert {k: v for k, v in _host.domain_summary(Domain("a", XML, state="running", reason=10)).items()
            if k.startswith("postcopy") or k == "reason"} == {"reason": 10, "postcopy": "active",
                                                              "postcopy_side": "destination"}
    paused = _host.domain_summary(Domain("a", XML, state="paused", reason=13))
    assert paused["postcopy"] == "failed" and paused["postcopy_side"] is None


def _facts(state, reason, persistent=True):
    summary = {"name": "vm12", "uuid": UUID, "id": 3, "state": state, "reason": reason,
               "postcopy": pc.phase(state, reason), "postcopy_side": pc.SIDES.get((state, reason)),
               "active": True, "persistent": persistent, "memory_bytes": 1 << 30, "vcpus": 1}
    return summary


def _hosts(a, b):
    return {"hosta": {"host": {"uuid": "ua", "hostname": "hosta"}, "domains": [a]},
            "hostb": {"host": {"uuid": "ub", "hostname": "hostb"}, "domains": [b]}}


def test_locate_takes_a_guest_in_postcopy_on_two_hosts_as_one_move():
    where = _locate.locate_guest("vm12", _hosts(_facts(*PAUSED_FAILED), _facts(*RUNNING_FAILED, persistent=False)))
    assert where["error"] is None and where["source"] == "hosta"
    assert where["postcopy"] == {"source": "hosta", "destination": "hostb", "phase": "failed",
                                 "hosts": {"hosta": "failed", "hostb": "failed"}}
    # both paused in failed post-copy: the persistent one is the source
    where = _locate.locate_guest("vm12", _hosts(_facts(*PAUSED_FAILED, persistent=False), _facts(*PAUSED_FAILED)))
    assert where["source"] == "hostb" and where["postcopy"]["destination"] == "hosta"


def test_locate_cannot_tell_the_source_and_says_so():
    where = _locate.locate_guest("vm12", _hosts(_facts(*PAUSED_FAILED), _facts(*PAUSED_FAILED)))
    assert "in post-copy on hosta and hostb" in where["error"] and "Nothing was touched" in where["error"]
    assert "virsh domjobinfo vm12" in where["error"] and "STOP" not in where["error"]


def test_two_running_copies_still_stop():
    running = _facts("running", 1)
    where = _locate.locate_guest("vm12", _hosts(running, dict(running)))
    assert where["error"].startswith("STOP") and where["postcopy"] is None
    one = _locate.locate_guest("vm12", _hosts(_facts(*PAUSED_POSTCOPY), _facts("running", 1)))
    assert one["error"].startswith("STOP")  # one copy not in post-copy: two copies
    assert _locate.locate_guest("vm12", _hosts(_facts(*PAUSED_POSTCOPY), _facts(*RUNNING_POSTCOPY)))["source"] == "hosta"


def test_postcopy_started_by_hand_is_told_from_the_source_state():
    """The operator switched to post-copy (virsh migrate-postcopy): the module's monitor did not,
    but the failure is handled as a post-copy one from the source's state: nothing resumed on the
    source, nothing removed on the destination."""
    sdom, sconn, dconn, rt, o = _run(timeout_s=10)
    o = mp.MigrationOptions(**dict(vars(o), timeout_action="abort", timeout_s_per_gib=800, timeout_min_s=300))
    sdom.calls.append("migrateStartPostCopy")  # as if by hand: the fake fails migrate3 in post-copy
    sdom.lingering_job = [2]  # libvirt keeps the failed post-copy job: never waited out, aborted or severed
    sdom.finish_after_samples = True
    with pytest.raises(KvmopsError, match="is paused in post-copy between") as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert err.value.values["state"] == "postcopy_paused"
    assert not {"abortJob", "destroy", "resume"} & set(map(str, sdom.calls + _changes(dconn)))
    assert not any("closed" in n or "abort" in n for n in err.value.values["notes"])  # no ss -K, no abort
