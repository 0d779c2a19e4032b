# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of issue 13 items 2 and 3 against the fake libvirt (fake_libvirt.py):

- recovery after a failed migration resumes the source whatever fails on the destination (a
  lookup or a state read that raises), never raises over the migration's own error, and notes
  what it could not do;
- a guest that changed since the pre-flight (a disk hot-plugged or removed, a disk resized, a
  new path or format, another CPU) stops ``migrate`` before anything changes.
"""

from __future__ import annotations

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _migration as m
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from fake_libvirt import LV_11_3, Connection, Domain, LibvirtError
from test_migration import GIB, UUID, XML_C12, load, opts, setup_run  # noqa: E402


def _broken(*_args, **_kwargs):
    raise LibvirtError("Cannot recv data: Connection reset by peer", code=38)


def fail_after_abort(sdom, dconn, what):
    """Once the monitor aborts the job, make the destination's ``what`` raise a libvirt error
    (``lookup``: ``lookupByUUIDString``; ``state``/``isActive``: the incoming domain's)."""
    real_abort = sdom.abortJob

    def abort():
        if what == "lookup":
            dconn.lookupByUUIDString = _broken
        else:
            for dom in dconn.domains:
                setattr(dom, what, _broken)
        real_abort()

    sdom.abortJob = abort


# ------------------------------------------------------------------------------------------
# Recovery (item 2)
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["lookup", "state", "isActive"])
def test_recovery_resumes_the_source_when_a_destination_call_raises(what):
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    sdom.pause_during_migration = True
    fail_after_abort(sdom, dconn, what)
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "completion timeout of 10 s" in msg  # the migration's own error is the headline
    assert "resume" in sdom.calls and sdom._state == "running"
    assert "The source guest was paused and has been resumed." in msg
    if what != "isActive":  # recovery reads the state, not isActive(), of the incoming domain
        assert "198.18.0.2 could not be checked" in msg and "Connection reset by peer" in msg
        assert "cleanup_leftover" in msg  # how to remove what may be left there


def test_recovery_resumes_the_source_before_touching_the_destination():
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    sdom.pause_during_migration = True
    order = []
    real_resume = sdom.resume
    sdom.resume = lambda: (order.append("resume source"), real_resume())
    real_abort = sdom.abortJob

    def abort():
        for dom in dconn.domains:
            real_destroy = dom.destroy
            dom.destroy = lambda real=real_destroy: (order.append("destroy incoming"), real())
        real_abort()

    sdom.abortJob = abort
    with pytest.raises(KvmopsError):
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert order == ["resume source", "destroy incoming"]
    assert dconn.domains == []


def test_recovery_notes_a_source_that_cannot_be_read_and_keeps_the_original_error():
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    real_abort = sdom.abortJob
    sdom.abortJob = lambda: (setattr(sdom, "isActive", _broken), real_abort())
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "completion timeout of 10 s" in msg
    assert "The source guest could not be read after the failure" in msg and "virsh domstate vm12" in msg
    # the source's state is unknown: the incoming domain is not destroyed on a guess
    assert "was left alone" in msg and len(dconn.domains) == 1


def test_recovery_notes_a_failed_resume():
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    sdom.pause_during_migration = True
    sdom.resume = _broken
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    msg = err.value.msg
    assert "completion timeout of 10 s" in msg
    assert "could not be resumed" in msg and "virsh resume vm12" in msg


def test_recovery_never_resumes_the_source_while_the_guest_runs_on_the_destination():
    lv = LV_11_3
    sdom, sconn, dconn, rt, _p, o = setup_run(lv, "jobstats_not_converging.json",
                                              timeout_s_per_gib=1, timeout_min_s=10)
    sdom.pause_during_migration = True
    real_abort = sdom.abortJob

    def abort():
        for dom in dconn.domains:
            dom._state = "running"  # the destination resumed it although the job failed
        real_abort()

    sdom.abortJob = abort
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(o, sconn, dconn, rt=rt)
    assert "STOP" in err.value.msg and "resume" not in sdom.calls


def test_a_destination_read_error_before_the_move_is_an_operator_error():
    """describe() of a destination domain goes through the guarded call (no raw libvirtError)."""
    lv = LV_11_3
    sdom = Domain("vm12", XML_C12, uuid=UUID)
    other = Domain("vm12", XML_C12, uuid="11111111-2222-3333-4444-555555555555", state="shutoff")
    other.state = _broken
    sconn, dconn = Connection("qemu:///system", [sdom]), Connection("qemu+ssh://x/system", [other])
    with pytest.raises(KvmopsError) as err:
        m.migrate_domain(opts(), sconn, dconn, rt=m.Runtime(lv=lv))
    assert "Could not read domain vm12 on 198.18.0.2" in err.value.msg
    assert "Connection reset by peer" in err.value.detail
    assert sdom.calls == []


# ------------------------------------------------------------------------------------------
# The guest as the pre-flight saw it (item 3)
# ------------------------------------------------------------------------------------------

XML_CPU = XML_C12.replace("<devices>", "<cpu mode='custom' match='exact'><model>qemu64</model></cpu><devices>")
HOTPLUG = ("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
           "<source file='/var/lib/libvirt/images/vm12-new.raw'/><target dev='vdc' bus='virtio'/></disk>")


def checked(xml=XML_CPU):
    """What the pre-flight checked and the role made images for: vda and vdb of 10 GiB
    (fake_libvirt.Domain.blockInfo reports 10 GiB for every disk), and the CPU of ``xml``."""
    disks = [{"target": d["target"], "path": d["path"], "format": d["format"], "virtual_size": 10 * GIB}
             for d in _domain_xml.disks(xml)]
    return disks, _domain_xml.cpu_fingerprint(xml)


def guarded_run(xml, expect_disks, expect_cpu, check_mode=False, capacity=None):
    lv = LV_11_3
    fx = load("jobstats_converging.json")
    sdom = Domain("vm12", xml, uuid=UUID, samples=fx["samples"], completed=fx["completed"])
    sdom.finish_after_samples = True
    if capacity is not None:
        sdom.blockInfo = lambda target: [capacity.get(target, 10 * GIB), 128 * 1024 * 1024, 10 * GIB]
    sconn, dconn = Connection("qemu:///system", [sdom]), Connection("qemu+ssh://root@198.18.0.2/system")
    o = opts(poll_interval_s=0.5, expect_disks=expect_disks, expect_cpu=expect_cpu)
    return sdom, dconn, (lambda: m.migrate_domain(o, sconn, dconn, check_mode=check_mode, rt=m.Runtime(lv=lv)))


def assert_refused_before_anything(sdom, dconn, run, *needles):
    with pytest.raises(KvmopsError) as err:
        run()
    msg = err.value.msg
    assert "Guest vm12 changed since the pre-flight" in msg and "run the playbook again" in msg
    for needle in needles:
        assert needle in msg
    assert not any(isinstance(c, tuple) and c[0] == "migrate3" for c in sdom.calls)
    assert sdom.calls == [] and dconn.domains == []  # not even the marker was written
    return err.value


def test_unchanged_guest_migrates():
    disks, cpu = checked()
    sdom, dconn, run = guarded_run(XML_CPU, disks, cpu)
    assert run()["state"] == "migrated"


@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check-mode"])
def test_hot_plugged_disk_is_refused_before_the_move(check_mode):
    disks, cpu = checked()
    sdom, dconn, run = guarded_run(XML_CPU.replace("</devices>", HOTPLUG + "</devices>"), disks, cpu, check_mode)
    err = assert_refused_before_anything(sdom, dconn, run, "disk vdc (/var/lib/libvirt/images/vm12-new.raw) was added")
    assert err.values["copy_set"] == ["vda", "vdb", "vdc"]


def test_removed_disk_is_refused():
    disks, cpu = checked()
    xml = XML_CPU.replace(XML_CPU[XML_CPU.index("<disk type='file' device='disk'><driver name='qemu' type='raw'/>"):
                                  XML_CPU.index("</devices>")], "")
    sdom, dconn, run = guarded_run(xml, disks, cpu)
    assert_refused_before_anything(sdom, dconn, run, "disk vdb (/var/lib/libvirt/images/vm12-data.raw) was removed")


def test_resized_disk_is_refused():
    disks, cpu = checked()
    sdom, dconn, run = guarded_run(XML_CPU, disks, cpu, capacity={"vdb": 20 * GIB})
    assert_refused_before_anything(sdom, dconn, run, "disk vdb was resized from %d to %d bytes" % (10 * GIB, 20 * GIB))


def test_changed_cpu_is_refused():
    disks, cpu = checked()
    sdom, dconn, run = guarded_run(XML_CPU.replace("qemu64", "Westmere"), disks, cpu)
    assert_refused_before_anything(sdom, dconn, run, "its CPU definition changed")


def test_replaced_disk_path_or_format_is_refused():
    disks, cpu = checked()
    xml = XML_CPU.replace("vm12-data.raw", "vm12-other.raw").replace("type='qcow2'", "type='raw'")
    sdom, dconn, run = guarded_run(xml, disks, cpu)
    assert_refused_before_anything(sdom, dconn, run, "disk vdb now is /var/lib/libvirt/images/vm12-other.raw",
                                   "disk vda now is raw, not qcow2")


def test_without_expectations_nothing_is_compared():
    """Direct module users who pass neither option keep the old behaviour."""
    sdom, dconn, run = guarded_run(XML_CPU.replace("</devices>", HOTPLUG + "</devices>"), None, None)
    assert run()["state"] == "migrated"


def test_cpu_fingerprint_ignores_formatting_only():
    a = _domain_xml.cpu_fingerprint(XML_CPU)
    assert a == _domain_xml.cpu_fingerprint(XML_CPU.replace("<model>", "\n  <model>"))
    assert a != _domain_xml.cpu_fingerprint(XML_C12) and a.startswith("sha256:")


def test_expect_disks_items_need_a_target():
    with pytest.raises(KvmopsError, match="needs a target"):
        opts(expect_disks=[{"path": "/x"}]).validate()
