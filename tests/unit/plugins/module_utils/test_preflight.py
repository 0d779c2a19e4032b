# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the pre-flight (_preflight and its checks in _checks_guest, _checks_storage and
_checks_network): one or more per check, the cases of ../shared/cases/CASES.md that
pre-flight catches as named tests, and whole runs against fake hosts of the one fake libvirt
(fake_libvirt.py, whose CPU comparison mimics libvirt's messages)."""

from __future__ import annotations

import atexit
import os
import pathlib
import shutil
import subprocess
import re
import tempfile

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _checks_guest, _checks_network, _checks_storage, _domain_xml, _findings, _host, _tls
from ansible_collections.kvmops.migration.plugins.module_utils import _storage
from ansible_collections.kvmops.migration.plugins.module_utils import _preflight as pf
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

libvirt = pytest.importorskip("libvirt")

from fake_libvirt import LAB_UUID, Connection, Domain, FakeClock, LibvirtError, Network, connector, intel_conn, lab_conn  # noqa: E402
from test_cpu import C06_CPU, domain  # noqa: E402
import tls_fakes  # noqa: E402

GIB = 1024 ** 3
DST = "198.18.0.2"
UUID = "5b1d8f0e-1c2a-4f6e-8d9b-0a1b2c3d4e5f"


def only(findings, check):
    found = [f for f in findings if f["check"] == check]
    assert len(found) == 1, findings
    return found[0]


# ------------------------------------------------------------------------------------------
# findings and the report
# ------------------------------------------------------------------------------------------

def test_one_findings_type_for_cpu_and_preflight_checks():
    expected = {"check": "x", "status": "ok", "host": "h", "msg": "m", "values": {"a": 1}}
    assert pf.finding("x", "ok", "h", "m", a=1) == expected
    assert pf.finding is _findings.finding and pf.STATUSES == ("ok", "warning", "error")
    assert pf.normalise is _findings.validated  # the CPU checks of _cpu use the same type (test_cpu.py)
    for bad in ("bad", "warn", "fail"):
        with pytest.raises(KvmopsError, match="unknown status '%s'" % bad):
            pf.normalise({"check": "x", "status": bad})


def test_report_fails_on_any_error_and_counts():
    rep = pf.report([pf.finding("a", "ok", "h", "fine"), pf.finding("b", "warning", "h", "hmm"),
                     pf.finding("c", "error", "h", "broken bridge")])
    assert rep["ok"] is False
    assert rep["summary"]["errors"] == 1 and rep["summary"]["warnings"] == 1 and rep["summary"]["oks"] == 1
    assert "broken bridge" in rep["summary"]["msg"]
    assert pf.report([pf.finding("a", "ok", "h", "fine")])["ok"] is True


# ------------------------------------------------------------------------------------------
# guest location and state
# ------------------------------------------------------------------------------------------

def guest(state="running", uuid=UUID, name="vm12", ours=False):
    return {"name": name, "uuid": uuid, "state": state, "active": state in ("running", "paused", "blocked"),
            "persistent": True, "ours": ours, "reason": 0, "run": None}


def test_location_exactly_once_on_the_source():
    assert _checks_guest.check_location("vm12", "hosta", {"hosta": guest(), "hostc": None})["status"] == "ok"


def test_location_found_twice_is_an_error_naming_the_hosts():
    f = _checks_guest.check_location("vm12", "hosta", {"hosta": guest(), "hostc": guest("shutoff")})
    assert f["status"] == "error" and "hosta: running" in f["msg"] and "hostc: shutoff" in f["msg"]


def test_location_not_found_or_elsewhere():
    assert _checks_guest.check_location("vm12", "hosta", {"hosta": None})["status"] == "error"
    f = _checks_guest.check_location("vm12", "hosta", {"hosta": None, "hostc": guest()})
    assert f["status"] == "error" and "is on hostc, not on the source" in f["msg"]


@pytest.mark.parametrize("state,required,status", [
    ("running", "running", "ok"), ("shutoff", "running", "error"), ("running", "shut off", "error"),
    ("shutoff", "shut off", "ok"), ("paused", "any", "warning"), ("shutoff", "any", "ok")])
def test_state_as_required(state, required, status):
    assert _checks_guest.check_state(guest(state), required, "hosta")["status"] == status


# ------------------------------------------------------------------------------------------
# C10 same host
# ------------------------------------------------------------------------------------------

def test_c10_same_host_uuid_names_uuid_and_host_uuid_setting():
    f = _checks_guest.check_distinct_hosts({"host": "hosta", "uuid": "36333932-3634-4252-4332-30363052334e", "hostname": "a"},
                                           {"host": DST, "uuid": "36333932-3634-4252-4332-30363052334e", "hostname": "b"},
                                           DST, False)
    assert f["status"] == "error"
    assert "36333932-3634-4252-4332-30363052334e" in f["msg"]
    assert "host_uuid" in f["msg"] and "libvirtd.conf" in f["msg"]


def test_c10_destination_address_is_the_source():
    f = _checks_guest.check_distinct_hosts({"host": "hosta", "uuid": "u1"}, {"host": DST, "uuid": "u2"}, DST, True)
    assert f["status"] == "error" and "address of the source host itself" in f["msg"]
    ok = _checks_guest.check_distinct_hosts({"host": "hosta", "uuid": "u1"}, {"host": DST, "uuid": "u2"}, DST, False)
    assert ok["status"] == "ok"


def test_is_local_address_for_loopback_and_a_foreign_address():
    assert _checks_network.is_local_address("127.0.0.1") is True
    assert _checks_network.is_local_address("192.0.2.77") is False  # TEST-NET-1: never configured here


# ------------------------------------------------------------------------------------------
# C11 the destination domain (decision table of _migration)
# ------------------------------------------------------------------------------------------

def test_c11a_other_domain_same_name_is_an_error():
    other = guest("shutoff", uuid="11111111-2222-3333-4444-555555555555")
    f = _checks_guest.check_destination_domain(guest(), other, None, "vm12", DST)
    assert f["status"] == "error" and f["values"]["case"] == "a"
    assert "11111111-2222-3333-4444-555555555555" in f["msg"] and "vm12" in f["msg"]


def test_c11b_paused_leftover_is_an_error_with_instructions():
    left = guest("paused")
    f = _checks_guest.check_destination_domain(guest(), left, left, "vm12", DST)
    assert f["status"] == "error" and f["values"]["case"] == "b"
    assert "virsh -c %s destroy vm12" % DST in f["msg"]
    ours = guest("paused", ours=True)
    w = _checks_guest.check_destination_domain(guest(), ours, ours, "vm12", DST, cleanup_leftover=True)
    assert w["status"] == "warning" and w["values"]["action"] == "cleanup_then_migrate"


def test_c11c_already_migrated_is_ok_and_flagged():
    there = guest("running")
    f = _checks_guest.check_destination_domain(None, there, there, "vm12", DST)
    assert f["status"] == "ok" and f["values"]["already_migrated"] is True and f["values"]["case"] == "c"


def test_c11d_running_on_both_stops():
    there = guest("running")
    f = _checks_guest.check_destination_domain(guest(), there, there, "vm12", DST)
    assert f["status"] == "error" and f["values"]["case"] == "d" and f["msg"].startswith("STOP")


def test_c11_absent_on_destination_is_ok():
    f = _checks_guest.check_destination_domain(guest(), None, None, "vm12", DST)
    assert f["status"] == "ok" and f["values"]["case"] == "none"


# ------------------------------------------------------------------------------------------
# C06, C07 CPU, machine, emulator (via _cpu, normalised)
# ------------------------------------------------------------------------------------------

def test_c06_foreign_vendor_is_an_error():
    conn = intel_conn()
    out = _checks_guest.check_cpu_all(conn, domain(C06_CPU, machine="pc-i440fx-7.2"), conn.facts("kvm").caps, "intel1")
    cpu = only(out, "cpu")
    assert cpu["status"] == "error" and "vendor AMD" in cpu["msg"]
    assert {f["status"] for f in out} <= set(pf.STATUSES)


def test_c07_machine_feature_name_and_emulator():
    conn = lab_conn()
    cpu = ("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
           "<feature policy='require' name='arch-facilities'/></cpu>")
    xml = domain(cpu, machine="pc-i440fx-bionic", virttype="qemu", emulator="/usr/bin/kvm")
    out = _checks_guest.check_cpu_all(conn, xml, conn.facts("qemu").caps, DST)
    machine = only(out, "machine")
    assert machine["status"] == "error" and "pc-i440fx-bionic" in machine["msg"]
    names = only(out, "cpu_feature_names")
    assert names["status"] == "error" and "arch-facilities" in names["msg"]
    emu = only(out, "emulator")
    assert emu["status"] == "warning" and "/usr/bin/kvm" in emu["msg"]
    assert emu["values"]["dst_emulator"] == "/usr/bin/qemu-system-x86_64"


# ------------------------------------------------------------------------------------------
# memory
# ------------------------------------------------------------------------------------------

def test_memory_ok_warning_error():
    assert _checks_guest.check_memory("vm1", GIB, 2 * GIB, 3 * GIB, DST)["status"] == "ok"
    assert _checks_guest.check_memory("vm1", 2 * GIB, GIB, 3 * GIB, DST)["status"] == "warning"
    f = _checks_guest.check_memory("vm1", 4 * GIB, GIB, 2 * GIB, DST)
    assert f["status"] == "error" and str(4 * GIB) in f["msg"] and "vm1" in f["msg"]


# ------------------------------------------------------------------------------------------
# storage: C12 copy set and cache, C01-C05 destination images and space, C13 media
# ------------------------------------------------------------------------------------------

XML_C12 = """<domain type='kvm'><name>vm12</name><uuid>%s</uuid>
<memory unit='GiB'>1</memory><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='writeback'/>
<source file='/var/lib/libvirt/images/vm12.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/images/vm12-data.raw'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>""" % UUID


def test_c12_writable_disk_left_out_is_an_error():
    disks = _domain_xml.disks(XML_C12)
    out = _checks_storage.check_copy_set(disks, "all", [], {}, DST, selected=["vda"])
    f = only(out, "copy_set")
    assert f["status"] == "error" and "vdb" in f["msg"] and "Unsafe migration" in f["msg"]
    assert f["values"]["left_out"] == ["vdb"]


def test_c12_declared_shared_must_be_verified():
    disks = _domain_xml.disks(XML_C12)
    out = _checks_storage.check_copy_set(disks, "all", ["vdb"], {}, DST)
    assert only(out, "copy_set")["values"]["copy"] == ["vda"]
    shared = only(out, "shared_storage")
    assert shared["status"] == "error" and "vdb" in shared["msg"] and "vm12-data.raw" in shared["msg"]
    proof = {"vdb": "the same file (inode 12, 5 bytes) is visible on %s" % DST}
    out = _checks_storage.check_copy_set(disks, "all", ["vdb"], proof, DST)
    assert only(out, "shared_storage")["status"] == "ok"


def test_c12_cache_writeback_on_copied_disk_warns_and_on_shared_disk_errors():
    disks = _domain_xml.disks(XML_C12)
    vda, vdb = _checks_storage.check_cache_modes(disks, ["vda", "vdb"], DST)
    assert vda["status"] == "warning" and "vda" in vda["msg"] and "writeback" in vda["msg"]
    # no cache attribute: QEMU's default is writeback, and libvirt treats it as unsafe too
    assert vdb["status"] == "warning" and vdb["values"]["cache"] == "default"
    vda, _vdb = _checks_storage.check_cache_modes(disks, ["vdb"], DST)  # vda on shared storage
    assert vda["status"] == "error" and "Unsafe migration" in vda["msg"] and "vda" in vda["msg"]
    none = _domain_xml.disks(XML_C12.replace("writeback", "none").replace("type='raw'/>", "type='raw' cache='none'/>"))
    assert [f["status"] for f in _checks_storage.check_cache_modes(none, ["vdb"], DST)] == ["ok"]


def test_same_file_fingerprints():
    fp = {"path": "/p", "inode": 5, "size": 10, "fsid": 1}
    assert _storage.same_file(fp, dict(fp, fsid=2)) is True
    assert _storage.same_file(fp, dict(fp, inode=6)) is False
    assert _storage.same_file(fp, None) is False


QCOW = {"target": "vda", "path": "/var/lib/libvirt/images/vm1.qcow2", "format": "qcow2",
        "virtual_size": 21474836480, "allocation": 1 * GIB}


def test_c01_destination_image_absent_names_path_format_and_exact_size():
    dest = _checks_storage.DestFiles(disks={QCOW["path"]: {"path": QCOW["path"], "exists": False}})
    f = _checks_storage.check_dest_image(QCOW, dest, DST)
    assert f["status"] == "warning" and f["values"]["state"] == "absent"
    assert QCOW["path"] in f["msg"] and "qcow2" in f["msg"] and "21474836480 bytes" in f["msg"]
    assert "disk_image" in f["msg"]


def test_c01_absent_in_a_libvirt_pool_directory_is_ok():
    dest = _checks_storage.DestFiles(pools={"/var/lib/libvirt/images": {"name": "default", "available_bytes": 10}})
    assert _checks_storage.check_dest_image(QCOW, dest, DST)["status"] == "ok"


def test_dest_image_without_facts_is_not_verified():
    f = _checks_storage.check_dest_image(QCOW, _checks_storage.DestFiles(), DST)
    assert f["status"] == "warning" and "not verified" in f["msg"]


def test_c02_incremental_base_missing_or_different():
    disk = dict(QCOW, backing=[{"path": "/var/lib/libvirt/images/base.qcow2", "virtual_size": 21474836480,
                                "checksum": "sha256:aa"}])
    missing = _checks_storage.DestFiles(disks={"/var/lib/libvirt/images/base.qcow2": {"exists": False}})
    f = only(_checks_storage.check_backing(disk, missing, DST), "backing_chain")
    assert f["status"] == "error" and "base.qcow2" in f["msg"]
    other = _checks_storage.DestFiles(disks={"/var/lib/libvirt/images/base.qcow2": {
        "exists": True, "virtual_size": 21474836480, "checksum": "sha256:bb"}})
    assert only(_checks_storage.check_backing(disk, other, DST), "backing_chain")["status"] == "error"


def test_c03_existing_destination_image_of_another_size_is_an_error():
    disk = dict(QCOW, virtual_size=22011707392)
    dest = _checks_storage.DestFiles(disks={QCOW["path"]: {"exists": True, "format": "qcow2", "virtual_size": 21474836480}},
                                     manifest=[])
    f = _checks_storage.check_dest_image(disk, dest, DST)
    assert f["status"] == "error"
    assert ("dst image %s exists: format qcow2, virtual size 21474836480 bytes; expected qcow2, "
            "22011707392 bytes" % QCOW["path"]) in f["msg"]


def test_c03_matching_image_reused_only_when_ours():
    seen = {"exists": True, "format": "qcow2", "virtual_size": 21474836480,
            "fingerprint": {"path": QCOW["path"], "inode": 12, "size": 196616, "kvmops_id": "a1b2"}}
    entry = {"path": QCOW["path"], "for_domain": "vm1", "inode": 12, "id": "a1b2"}
    ours = _checks_storage.DestFiles(disks={QCOW["path"]: seen}, manifest=[entry])
    assert _checks_storage.check_dest_image(QCOW, ours, DST, "vm1")["status"] == "ok"
    # the same path and inode number, but not the file we made (no identity attribute): as
    # disk_image decides, it is not ours
    replaced = dict(seen, fingerprint=dict(seen["fingerprint"], kvmops_id=None))
    f = _checks_storage.check_dest_image(QCOW, _checks_storage.DestFiles(disks={QCOW["path"]: replaced}, manifest=[entry]), DST, "vm1")
    assert f["status"] == "error" and "not in the manifest" in f["msg"]
    foreign = _checks_storage.DestFiles(disks={QCOW["path"]: seen}, manifest=[])
    f = _checks_storage.check_dest_image(QCOW, foreign, DST, "vm1")
    assert f["status"] == "error" and "not in the manifest" in f["msg"]
    unknown = _checks_storage.DestFiles(disks={QCOW["path"]: seen})
    assert _checks_storage.check_dest_image(QCOW, unknown, DST, "vm1")["status"] == "warning"


def test_c01_absent_image_the_caller_creates_next_is_ok_without_advice_to_create_it():
    dest = _checks_storage.DestFiles(disks={QCOW["path"]: {"path": QCOW["path"], "exists": False}})
    f = _checks_storage.check_dest_image(QCOW, dest, DST, created_next=True)
    assert f["status"] == "ok" and "created next" in f["msg"] and "before migrating" not in f["msg"]
    assert "21474836480 bytes" in f["msg"]


FOREIGN_SEEN = {"exists": True, "format": "qcow2", "virtual_size": 21474836480,
                "fingerprint": {"path": QCOW["path"], "inode": 99, "size": 196616, "kvmops_id": None}}
SOURCE_FP = {"path": QCOW["path"], "inode": 12, "size": 5 * GIB, "kvmops_id": None}


@pytest.mark.parametrize("size", [21474836480, 22011707392])  # a foreign file of the right size, and of another
def test_removal_advice_only_when_no_guest_uses_the_file(size):
    disk = dict(QCOW, fingerprint=SOURCE_FP)
    dest = _checks_storage.DestFiles(disks={QCOW["path"]: dict(FOREIGN_SEEN, virtual_size=size)}, manifest=[])
    free = _checks_storage.check_dest_image(disk, dest, DST, "vm1", users=[])
    assert free["status"] == "error" and re.search(r"\bRemove", free["msg"]) and "First check" not in free["msg"]
    # a domain of the destination uses it: never removal
    used = _checks_storage.check_dest_image(disk, dest, DST, "vm1", users=["db1"])
    assert used["status"] == "error" and "used by domain db1 on %s: never remove it" % DST in used["msg"]
    assert not re.search(r"\bRemove|remove or rename|after checking", used["msg"])
    # the destination's domains could not be read: say what to check before removing
    unknown = _checks_storage.check_dest_image(disk, dest, DST, "vm1", users=None)
    assert "First check that no guest on %s uses it (virsh domblklist)" % DST in unknown["msg"]


def test_removal_advice_never_for_the_source_disk_seen_through_shared_storage():
    same = dict(FOREIGN_SEEN, fingerprint=dict(SOURCE_FP))
    disk = dict(QCOW, fingerprint=SOURCE_FP)
    f = _checks_storage.check_dest_image(disk, _checks_storage.DestFiles(disks={QCOW["path"]: same}, manifest=[]),
                                         DST, "vm1", users=[])
    assert f["status"] == "error" and "source's own disk" in f["msg"] and "never remove it" in f["msg"]
    assert not re.search(r"\bRemove", f["msg"])
    # no fingerprint on the source side: the advice asks to compare both files first
    f = _checks_storage.check_dest_image(QCOW, _checks_storage.DestFiles(disks={QCOW["path"]: same}, manifest=[]),
                                         DST, "vm1", users=[])
    assert "not the source's own disk seen through shared storage (compare stat" in f["msg"]


def test_c04_block_target_compares_bytes():
    disk = {"target": "vdb", "path": "/dev/vg0/vm1-data", "format": "raw", "virtual_size": 10 * GIB}
    dest = _checks_storage.DestFiles(disks={disk["path"]: {"exists": True, "kind": "block", "format": "raw",
                                                           "virtual_size": 10 * GIB + 4 * 1024 ** 2}}, manifest=[])
    f = _checks_storage.check_dest_image(disk, dest, DST)
    assert f["status"] == "error" and str(10 * GIB) in f["msg"] and "/dev/vg0/vm1-data" in f["msg"]


def test_c05_not_enough_space_names_filesystem_needed_and_free():
    disk = {"target": "vda", "path": "/var/lib/libvirt/images/vm1.qcow2", "format": "qcow2",
            "virtual_size": 107374182400, "allocation": 64424509440}
    dest = _checks_storage.DestFiles(disks={disk["path"]: {"exists": False}},
                                     mounts=[{"mount": "/", "device": "/dev/sda1", "size_available": 500 * GIB},
                                             {"mount": "/var/lib/libvirt/images", "device": "/dev/sdb1",
                                              "size_available": 32212254720}])
    f = only(_checks_storage.check_free_space([disk], dest, DST), "free_space")
    assert f["status"] == "error"
    assert "/var/lib/libvirt/images" in f["msg"] and "free 32212254720 bytes" in f["msg"]
    assert f["values"]["needed_bytes"] > 64424509440 and f["values"]["free_bytes"] == 32212254720


def test_free_space_sums_disks_on_one_filesystem_and_skips_existing():
    a = {"target": "vda", "path": "/img/a.raw", "virtual_size": 10 * GIB, "allocation": 3 * GIB}
    b = {"target": "vdb", "path": "/img/b.raw", "virtual_size": 10 * GIB, "allocation": 3 * GIB}
    dest = _checks_storage.DestFiles(disks={"/img/a.raw": {"exists": False}, "/img/b.raw": {"exists": False}},
                                     mounts=[{"mount": "/img", "device": "/dev/x", "size_available": 7 * GIB}])
    f = only(_checks_storage.check_free_space([a, b], dest, DST), "free_space")
    assert f["status"] == "ok" and f["values"]["data_bytes"] == 6 * GIB
    dest.mounts[0]["size_available"] = 5 * GIB
    assert only(_checks_storage.check_free_space([a, b], dest, DST), "free_space")["status"] == "error"
    dest.disks["/img/b.raw"] = {"exists": True}
    assert only(_checks_storage.check_free_space([a, b], dest, DST), "free_space")["status"] == "ok"
    assert only(_checks_storage.check_free_space([a], _checks_storage.DestFiles(), DST), "free_space")["status"] == "warning"


XML_C13 = """<domain type='qemu'><name>vm13</name><uuid>7c9e6679-7425-40de-944b-e07fc1f90ae7</uuid>
<memory>262144</memory><os><type arch='x86_64' machine='pc'>hvm</type>
<kernel>/var/lib/kvmops/guest/vmlinuz</kernel><initrd>/var/lib/kvmops/guest/initrd.img</initrd></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>
<source file='/var/lib/libvirt/images/vm13.raw'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
<source file='/var/lib/libvirt/isos/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
</devices></domain>"""


def test_c13_missing_iso_and_kernel_are_errors_naming_the_paths():
    facts = _domain_xml.domain_facts(XML_C13)
    req = _domain_xml.required_files(facts)
    assert [r["path"] for r in req] == ["/var/lib/libvirt/isos/seed.iso", "/var/lib/kvmops/guest/vmlinuz",
                                        "/var/lib/kvmops/guest/initrd.img"]
    dest = _checks_storage.DestFiles(disks={"/var/lib/libvirt/isos/seed.iso": {"exists": False},
                                            "/var/lib/kvmops/guest/vmlinuz": {"exists": False},
                                            "/var/lib/kvmops/guest/initrd.img": {"exists": True}})
    out = _checks_storage.check_required_files(req, dest, DST)
    iso, kernel, initrd = out
    assert iso["status"] == "error" and "seed.iso" in iso["msg"] and "eject" in iso["msg"]
    assert kernel["status"] == "error" and "kernel /var/lib/kvmops/guest/vmlinuz" in kernel["msg"]
    assert initrd["status"] == "ok"
    # and the ISO is never in the copy set
    assert _checks_storage.check_copy_set(facts["disks"], "all", [], {}, DST)[0]["values"]["copy"] == ["vda"]


def test_missing_nvram_is_a_warning_about_lost_uefi_variables():
    req = [{"what": "nvram", "path": "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", "target": None,
            "virtual_size": None}]
    f = _checks_storage.check_required_files(req, _checks_storage.DestFiles(disks={req[0]["path"]: {"exists": False}}), DST)[0]
    assert f["status"] == "warning" and "UEFI" in f["msg"]


def test_absent_nvram_of_a_live_move_is_ok_its_variables_move_with_the_memory():
    req = [{"what": "nvram", "path": "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", "target": None,
            "virtual_size": None}]
    dest = _checks_storage.DestFiles(disks={req[0]["path"]: {"exists": False}})
    f = _checks_storage.check_required_files(req, dest, DST, live=True)[0]
    assert f["status"] == "ok" and "UEFI variables" in f["msg"] and "lost" not in f["msg"]


NVRAM = "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd"
TEMPLATE = "/usr/share/OVMF/OVMF_VARS_4M.fd"
LOADER = "/usr/share/OVMF/OVMF_CODE_4M.fd"
UEFI_REQ = [{"what": "loader", "path": LOADER, "target": None, "virtual_size": None},
            {"what": "nvram", "path": NVRAM, "target": None, "virtual_size": None},
            {"what": "nvram template", "path": TEMPLATE, "target": None, "virtual_size": None}]


@pytest.mark.parametrize("nvram, template, expected", [
    ({"exists": True}, {"exists": False}, ("ok", "not_needed")),
    ({"exists": True}, None, ("ok", "not_needed")),
    ({"exists": False}, {"exists": True}, ("ok", "present")),
    ({"exists": False}, {"exists": False}, ("error", "missing")),
    ({"exists": False}, None, ("warning", "unknown")),
    (None, {"exists": True}, ("warning", "unknown")),
], ids=["nvram-there", "nvram-there-template-unknown", "template-there", "both-missing", "template-unknown",
        "nvram-unknown"])
def test_nvram_template_is_needed_only_when_the_nvram_file_is_absent(nvram, template, expected):
    assert _checks_storage.nvram_template_decision(nvram, template) == expected


@pytest.mark.parametrize("live", [True, False], ids=["live", "offline"])
def test_missing_nvram_template_with_absent_nvram_is_an_error_naming_the_file_and_the_ovmf_package(live):
    dest = _checks_storage.DestFiles(disks={LOADER: {"exists": True}, NVRAM: {"exists": False},
                                            TEMPLATE: {"exists": False}})
    loader, _nvram, template = _checks_storage.check_required_files(UEFI_REQ, dest, DST, live=live)
    assert loader["status"] == "ok"
    assert template["status"] == "error" and template["values"]["decision"] == "missing"
    assert TEMPLATE in template["msg"] and NVRAM in template["msg"] and DST in template["msg"]
    assert "ovmf" in template["msg"] and "kvm_host role" in template["msg"]


def test_present_nvram_template_is_ok_and_an_existing_nvram_file_makes_it_unneeded():
    dest = _checks_storage.DestFiles(disks={LOADER: {"exists": True}, NVRAM: {"exists": False},
                                            TEMPLATE: {"exists": True}})
    template = _checks_storage.check_required_files(UEFI_REQ, dest, DST, live=True)[2]
    assert template["status"] == "ok" and "creates the guest's NVRAM file" in template["msg"]
    dest.disks[NVRAM] = {"exists": True}
    dest.disks[TEMPLATE] = {"exists": False}
    template = _checks_storage.check_required_files(UEFI_REQ, dest, DST, live=True)[2]
    assert template["status"] == "ok" and "not needed" in template["msg"]


def test_missing_loader_is_an_error_naming_the_firmware_package():
    dest = _checks_storage.DestFiles(disks={LOADER: {"exists": False}, NVRAM: {"exists": True},
                                            TEMPLATE: {"exists": True}})
    loader = _checks_storage.check_required_files(UEFI_REQ, dest, DST, live=True)[0]
    assert loader["status"] == "error" and LOADER in loader["msg"] and DST in loader["msg"]
    assert "install the package ovmf (Debian/Ubuntu)" in loader["msg"] and "kvm_host role" in loader["msg"]


@pytest.mark.parametrize("path, package", [
    ("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "ovmf (Debian/Ubuntu)"),
    ("/usr/share/AAVMF/AAVMF_CODE.fd", "qemu-efi-aarch64"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "edk2-ovmf (Fedora/RHEL)"),
    ("/opt/fw/CODE.fd", "OVMF: package ovmf"),
])
def test_firmware_fix_names_the_package_of_the_path(path, package):
    assert package in _checks_storage.firmware_fix(path, DST)


def test_preflight_of_a_uefi_guest_reads_the_template_on_the_destination():
    facts = _domain_xml.domain_facts(
        "<domain><name>vm1</name><os><type arch='x86_64' machine='q35'>hvm</type>"
        "<loader readonly='yes' type='pflash'>%s</loader><nvram template='%s'>%s</nvram></os></domain>"
        % (LOADER, TEMPLATE, NVRAM))
    req = _domain_xml.required_files(facts)
    assert [r["path"] for r in req] == [LOADER, NVRAM, TEMPLATE]
    dest = _checks_storage.DestFiles(disks={LOADER: {"exists": True}, NVRAM: {"exists": False}})
    template = _checks_storage.check_required_files(req, dest, DST, live=True)[2]
    assert template["status"] == "warning" and "not verified" in template["msg"]


# ------------------------------------------------------------------------------------------
# C08 networks
# ------------------------------------------------------------------------------------------

NICS = [{"type": "bridge", "source": "br-vlan774", "mac": "52:54:00:00:00:01"},
        {"type": "network", "source": "default", "mac": "52:54:00:00:00:02"}]


def lookup_of(bridges=(), networks=None):
    networks = networks or {}

    def lookup(kind, name):
        if kind == "network":
            return {"exists": name in networks, "active": networks.get(name)}
        return {"exists": name in bridges, "active": True if name in bridges else None}
    return lookup


def test_c08_missing_bridge_names_bridge_and_mac():
    out = _checks_network.check_networks(NICS[:1], lookup_of(bridges=["br0"]), {}, DST)
    assert out[0]["status"] == "error"
    assert "br-vlan774" in out[0]["msg"] and "52:54:00:00:00:01" in out[0]["msg"]


def test_c08_inactive_network_names_network_and_mac():
    out = _checks_network.check_networks(NICS[1:], lookup_of(networks={"default": False}), {}, DST)
    assert out[0]["status"] == "error" and "not active" in out[0]["msg"]
    assert "default" in out[0]["msg"] and "52:54:00:00:00:02" in out[0]["msg"]


def test_c08_mapping_applies():
    out = _checks_network.check_networks(NICS, lookup_of(bridges=["br0"], networks={"default": True}),
                                         {"br-vlan774": "br0"}, DST)
    assert [f["status"] for f in out] == ["ok", "ok"] and out[0]["values"]["dest_source"] == "br0"


def test_libvirt_network_lookup():
    look = _checks_network.libvirt_network_lookup(Connection(networks={"default": Network(False)}, interfaces=["br0"]), libvirt)
    assert look("network", "default") == {"exists": True, "active": False}
    assert look("network", "nope") == {"exists": False, "active": None}
    assert look("bridge", "br0") == {"exists": True, "active": True}
    assert look("bridge", "virbr0") == {"exists": True, "active": False}
    assert look("bridge", "br-vlan774") == {"exists": False, "active": None}


def test_c08_bridge_checked_against_the_destinations_interface_facts():
    conn = Connection(networks={"default": Network(True)}, interface_driver=False)  # no netcf/udev backend, as in the lab
    unknown = _checks_network.libvirt_network_lookup(conn, libvirt)("bridge", "br-vm")
    assert unknown["exists"] is None and "cannot list host interfaces" in unknown["why"]
    facts = _checks_network.libvirt_network_lookup(conn, libvirt, ["lo", "eth0", "virbr0"])
    assert facts("bridge", "br-vm") == {"exists": False, "active": None}
    assert facts("bridge", "virbr0")["exists"] is True
    out = _checks_network.check_networks([{"type": "bridge", "source": "br-vm", "mac": "52:54:00:6b:01:10"}],
                                         facts, {}, DST)
    assert out[0]["status"] == "error" and "br-vm" in out[0]["msg"] and "52:54:00:6b:01:10" in out[0]["msg"]


# ------------------------------------------------------------------------------------------
# C09 names, ports, TLS
# ------------------------------------------------------------------------------------------

def test_c09_destination_hostname_on_127_0_1_1():
    resolver = {"hostb": ["127.0.1.1"], "dst.example": ["127.0.1.1"], "good": ["198.18.0.2"]}.get
    out = _checks_network.check_names({"hostb": False, "dst.example": True, "good": True, DST: True},
                                      lambda n: resolver(n) or [], DST)
    by_name = {f["values"]["name"]: f for f in out}
    assert DST not in by_name  # literal addresses need no resolution
    assert by_name["hostb"]["status"] == "warning" and "127.0.1.1" in by_name["hostb"]["msg"]
    assert "address resolution failed" in by_name["hostb"]["msg"]
    assert by_name["dst.example"]["status"] == "error" and "127.0.1.1" in by_name["dst.example"]["msg"]
    assert by_name["good"]["status"] == "ok"


def test_c09_unresolvable_name_used_by_the_migration_is_an_error():
    f = _checks_network.check_names({"hostb": True}, lambda n: [], DST)[0]
    assert f["status"] == "error" and "hostb does not resolve" in f["msg"]


@pytest.mark.parametrize("result,status,verified", [
    ("open", "ok", True), ("refused", "ok", False), ("timeout", "error", False),
    ("unreachable", "error", False)])
def test_data_port_honesty(result, status, verified):
    """A plain connect (no listener): a refusal is not verifiable; no answer at all predicts the
    move's failure, so it stops the run before anything is created (issue 16 item 1)."""
    f = _checks_network.check_data_port(DST, 49152, "Migration", result, DST)
    assert f["status"] == status and f["values"]["verified"] is verified
    if result == "refused":
        assert "not verifiable until the migration" in f["msg"]
    if result == "timeout":
        assert "filtered" in f["msg"] and "kvm_host_firewall" in f["msg"]


LISTENING = {"requested": 49152, "port": 49152, "state": "listening", "reason": None}


@pytest.mark.parametrize("result,status,state,words", [
    ("open", "ok", "open", "the kvmops listener answered"),
    ("refused", "error", "closed", "REJECT rule"),
    ("timeout", "error", "filtered", "a firewall drops it"),
    ("open_other", "error", "other", "NAT or proxy"),
    ("unreachable", "error", "unreachable", "check routing")])
def test_data_port_with_the_listener_tells_open_closed_and_filtered_apart(result, status, state, words):
    f = _checks_network.check_data_port(DST, 49152, "Migration", result, DST, LISTENING)
    assert (f["status"], f["values"]["state"], f["values"]["probe"]) == (status, state, "listener")
    assert words in f["msg"]
    if result in ("refused", "timeout"):
        assert "firewall-cmd --permanent --add-port=49152-49215/tcp" in f["msg"]


@pytest.mark.parametrize("result", ["refused", "timeout", "unreachable", "open_other"])
def test_blocked_port_accepted_by_the_operator_is_a_warning(result):
    f = _checks_network.check_data_port(DST, 49152, "Migration", result, DST, LISTENING, ignore_blocked=True)
    assert f["status"] == "warning" and "migrate_guest_ignore_blocked_migration_ports" in f["msg"]


def test_data_port_the_listener_moved_to_the_next_free_port():
    entry = {"requested": 49152, "port": 49154, "state": "listening", "reason": "ports 49152, 49153 in use"}
    f = _checks_network.check_data_port(DST, 49152, "Migration", "open", DST, entry)
    assert f["status"] == "ok" and f["values"]["port"] == 49154
    assert "49152 is in use there; libvirt takes the next free one" in f["msg"]


def test_data_port_no_free_port_is_an_error_other_listen_failures_a_warning():
    full = {"requested": 49152, "port": None, "state": "unavailable",
            "reason": "every port from 49152 to 49215 is in use"}
    assert _checks_network.check_data_port(DST, 49152, "Migration", "unavailable", DST, full)["status"] == "error"
    odd = dict(full, reason="cannot listen on port 49152: Permission denied")
    assert _checks_network.check_data_port(DST, 49152, "Migration", "unavailable", DST, odd)["status"] == "warning"


def test_transport_port_must_accept():
    assert _checks_network.check_transport_port(DST, 22, "ssh", "open", DST)["status"] == "ok"
    f = _checks_network.check_transport_port(DST, 22, "ssh", "refused", DST)
    assert f["status"] == "error" and "22" in f["msg"]


def test_tcp_probe_against_a_local_listener_and_a_closed_port():
    import socket
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        assert _checks_network.tcp_probe("127.0.0.1", port, 1.0) == "open"
    assert _checks_network.tcp_probe("127.0.0.1", port, 1.0) == "refused"


def test_tls_files_missing_are_named():
    f = _checks_network.check_tls_files(_checks_network.LIBVIRT_TLS_CLIENT_FILES, "qemu+tls", lambda p: p.startswith("/etc/pki/CA"), "a")
    assert f["status"] == "error" and "/etc/pki/libvirt/clientcert.pem" in f["msg"]
    assert _checks_network.check_tls_files(_checks_network.LIBVIRT_TLS_CLIENT_FILES, "qemu+tls", lambda p: True, "a")["status"] == "ok"


# ------------------------------------------------------------------------------------------
# versions
# ------------------------------------------------------------------------------------------

def test_versions_and_detect_zeroes_needs_10_9():
    src = {"libvirt": 11003000, "qemu": 10000002}
    dst = {"libvirt": 9000000, "qemu": 7002000}
    out = _checks_guest.check_versions(src, dst, ["detect_zeroes", "postcopy"], DST)
    assert only(out, "versions")["status"] == "warning"  # older QEMU on the destination
    feats = {f["values"]["feature"]: f for f in out if f["check"] == "feature_support"}
    assert feats["detect_zeroes"]["status"] == "warning" and "10.9.0" in feats["detect_zeroes"]["msg"]
    assert feats["postcopy"]["status"] == "ok"
    out = _checks_guest.check_versions(src, {"libvirt": 5001000, "qemu": 10000002}, ["parallel"], DST)
    assert [f for f in out if f["check"] == "feature_support"][0]["status"] == "error"


def test_options_validate_and_wanted_features():
    with pytest.raises(KvmopsError, match="require_state"):
        pf.PreflightOptions(domain="vm", dest_host=DST, require_state="paused").validate()
    opts = pf.PreflightOptions(domain="vm", dest_host=DST, detect_zeroes=True, compression=["zstd"],
                               parallel_connections=2)
    assert opts.wanted_features() == ["detect_zeroes", "parallel", "zlib_zstd"]


# ------------------------------------------------------------------------------------------
# whole runs against fake hosts
# ------------------------------------------------------------------------------------------

def dom(xml, state=libvirt.VIR_DOMAIN_RUNNING):
    """A guest of ``xml`` as the pre-flight's hosts hold it (state reason 1)."""
    return Domain(xml=xml, state=state, reason=1)


def lab_host(uri, uuid, hostname, domains=(), bridges=("br-vm",), nets=None, free=4 * GIB, lib=11003000,
             qemu=10000002):
    """A host of the lab's CPU (fake_libvirt.lab_conn) with host UUID ``uuid``, its domains,
    bridges, networks, memory and versions. Read-only: a changing call fails the test."""
    conn = lab_conn(uri, domains=list(domains), hostname=hostname, interfaces=bridges, networks=nets,
                    free_memory=free, mem_stats={"total": 8 * 1024 ** 2, "free": free // 1024, "buffers": 0,
                                                 "cached": 1024 ** 2},
                    lib_version=lib, version=qemu, readonly=True)
    conn.caps_xml = conn.caps_xml.replace(LAB_UUID, uuid)
    return conn


def run_xml(tmp_path, nic="br-vm"):
    image = tmp_path / "vm1.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "1G"], check=True)
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    xml = ("<domain type='qemu'><name>vm1</name><uuid>%s</uuid><memory unit='MiB'>256</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>"
           "<kernel>%s</kernel></os>"
           "<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>"
           "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
           "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>"
           "<source file='%s'/><target dev='vda' bus='virtio'/></disk>"
           "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='%s'/>"
           "<model type='virtio'/></interface></devices></domain>" % (UUID, kernel, image, nic))
    return xml, str(image), str(kernel)


_TLS_PAIR: list = []


def tls_pair():
    """(source, destination) TLS material of one CA, made once (real certificates)."""
    if not _TLS_PAIR:
        # the tests' destination answers on DST and, for the probe tests, on 127.0.0.1
        where = tempfile.mkdtemp(prefix="kvmops-tls-")
        atexit.register(shutil.rmtree, where, True)
        _TLS_PAIR.extend(tls_fakes.pair(pathlib.Path(where), dest=DST,
                                        more_dest_names=["127.0.0.1"]))
    return _TLS_PAIR


def probes(hosts, names=None, tcp="refused", tls_material=None, clock=None):
    names = names or {"hostb": [DST]}
    clock = clock or FakeClock()
    out = pf.Probes(connect=connector(hosts), resolver=lambda n: names.get(n, []),
                    tcp=lambda a, p, t: "open" if p == 22 else tcp, is_local=lambda a: False,
                    tls_material=tls_material or (lambda: tls_pair()[0]), now=tls_fakes.NOW.timestamp,
                    monotonic=clock, sleep=clock.sleep, ram_reader=lambda name, memory: None)
    # the link probe is the port probe the test sets, measuring nothing (the real one: below)
    out.probe_link = lambda a, port, pid, t: (out.probe_port(a, port, pid, t), None)
    return out


def opts_for(image, kernel, **kw):
    base = dict(domain="vm1", dest_host=DST, dest_tls=tls_pair()[1],
                dest_disks=[{"path": image, "exists": False}, {"path": kernel, "exists": True}],
                dest_mounts=[{"mount": "/", "device": "/dev/sda1", "size_available": 100 * GIB}],
                dest_manifest=[])
    base.update(kw)
    return pf.PreflightOptions(**base)


DEST_URI = "qemu+ssh://root@%s/system" % DST


def test_run_all_checks_pass_and_touch_nothing(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    res = pf.run_preflight(opts_for(image, kernel), probes({"qemu:///system": src, DEST_URI: dst}))
    errors = [f for f in res["findings"] if f["status"] == "error"]
    assert res["ok"] is True, errors
    checks = {f["check"] for f in res["findings"]}
    for name in ("dest_connection", "transport_port", "destination_domain", "guest_location", "guest_state",
                 "distinct_hosts", "cpu", "machine", "emulator", "memory", "copy_set", "cache_mode",
                 "dest_image", "free_space", "required_file", "network", "name_resolution", "data_port",
                 "versions"):
        assert name in checks, name
    assert res["copy_set"] == ["vda"]
    assert only(res["findings"], "dest_image")["values"]["state"] == "absent"
    assert only(res["findings"], "free_space")["values"]["data_bytes"] >= 0


def test_run_destination_file_used_by_a_destination_guest_is_never_to_be_removed(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    # another guest on the destination has the same path as its disk (the file there is its data)
    other = xml.replace(UUID, "11111111-2222-3333-4444-555555555555").replace("<name>vm1</name>", "<name>db1</name>")
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb", [dom(other)])
    there = {"path": image, "exists": True, "format": "raw", "virtual_size": 1024 ** 3,
             "fingerprint": {"path": image, "inode": 424242, "size": 1024 ** 3}}
    res = pf.run_preflight(opts_for(image, kernel, dest_disks=[there, {"path": kernel, "exists": True}]),
                           probes({"qemu:///system": src, DEST_URI: dst}))
    f = only(res["findings"], "dest_image")
    assert f["status"] == "error" and "used by domain db1 on %s: never remove it" % DST in f["msg"], f["msg"]
    assert "Remove" not in f["msg"]
    # nobody uses it there: the advice to remove it after checking is given
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    res = pf.run_preflight(opts_for(image, kernel, dest_disks=[there, {"path": kernel, "exists": True}]),
                           probes({"qemu:///system": src, DEST_URI: dst}))
    assert "Remove it on %s after checking" % DST in only(res["findings"], "dest_image")["msg"]
    # absent and created next by the caller (the role): ok
    res = pf.run_preflight(opts_for(image, kernel, images_created_next=True), probes({"qemu:///system": src, DEST_URI: dst}))
    f = only(res["findings"], "dest_image")
    assert f["status"] == "ok" and "created next" in f["msg"]


def test_run_c08_c10_c11_together(tmp_path):
    xml, image, kernel = run_xml(tmp_path, nic="br-vlan774")
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    other = dom(xml.replace(UUID, "11111111-2222-3333-4444-555555555555"), libvirt.VIR_DOMAIN_SHUTOFF)
    dst = lab_host(DEST_URI, "aaaaaaaa-0000-0000-0000-000000000001", "hostb", [other])
    res = pf.run_preflight(opts_for(image, kernel), probes({"qemu:///system": src, DEST_URI: dst}))
    assert res["ok"] is False
    errs = {f["check"]: f for f in res["findings"] if f["status"] == "error"}
    assert errs["destination_domain"]["values"]["case"] == "a"
    assert "host_uuid" in errs["distinct_hosts"]["msg"]
    assert "br-vlan774" in errs["network"]["msg"] and "52:54:00:00:00:01" in errs["network"]["msg"]


def test_run_already_migrated_stops_early(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb", [dom(xml)])
    res = pf.run_preflight(opts_for(image, kernel), probes({"qemu:///system": src, DEST_URI: dst}))
    assert res["ok"] is True and res["already_migrated"] is True


def test_run_destination_unreachable_is_a_finding(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    res = pf.run_preflight(opts_for(image, kernel), probes({"qemu:///system": src}))
    assert res["ok"] is False
    f = only(res["findings"], "dest_connection")
    assert f["status"] == "error" and DEST_URI in f["msg"]


def test_run_group_finds_guest_twice(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    hostc = lab_host("qemu+ssh://root@hostc/system", "cccccccc-0000-0000-0000-000000000003", "hostc",
                     [dom(xml, libvirt.VIR_DOMAIN_SHUTOFF)])
    res = pf.run_preflight(
        opts_for(image, kernel, group=[{"name": "hostc", "uri": hostc.uri}, {"name": DST, "uri": DEST_URI}]),
        probes({"qemu:///system": src, DEST_URI: dst, hostc.uri: hostc}))
    f = only(res["findings"], "guest_location")
    assert f["status"] == "error" and "hostc: shutoff" in f["msg"]


def test_run_module_shapes_the_result_and_maps_ports(tmp_path):
    xml, image, kernel = run_xml(tmp_path, nic="br-vlan774")
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    seen = []
    probe = probes({"qemu:///system": src, DEST_URI: dst})
    probe.tcp = lambda a, p, t: seen.append((p, t)) or ("open" if p == 22 else "refused")
    params = {"domain": "vm1", "dest_host": DST, "ports": {"migrate": 50000, "disks": 50001, "timeout_s": 1.5},
              "dest_disks": [{"path": image, "exists": False}, {"path": kernel, "exists": True}],
              "dest_mounts": [{"mount": "/", "device": "/dev/sda1", "size_available": 100 * GIB}],
              "dest_manifest": None, "fail_on_error": True, "group": [], "network_map": {}}
    res = pf.run_module(params, probe)
    assert res["changed"] is False and res["report"]["ok"] is False
    assert res["failed_checks"] == ["network"] and "br-vlan774" in res["msg"]
    assert (50000, 1.5) in seen and (50001, 1.5) in seen


def test_run_destination_domain_unreadable_is_a_finding_not_a_traceback(tmp_path):
    """A destination domain whose state cannot be read (issue 13 item 2): an error finding."""
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    other = dom(xml.replace(UUID, "11111111-2222-3333-4444-555555555555"), libvirt.VIR_DOMAIN_SHUTOFF)

    def broken():
        raise LibvirtError("Cannot recv data: Connection reset by peer", 38)

    other.state = broken
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb", [other])
    res = pf.run_preflight(opts_for(image, kernel), probes({"qemu:///system": src, DEST_URI: dst}))
    f = only(res["findings"], "destination_domain")
    assert res["ok"] is False and f["status"] == "error"
    assert "cannot be ruled out" in f["msg"] and "Connection reset by peer" in f["msg"]


def test_run_with_located_does_not_search_the_group_again(tmp_path):
    """The role's locate step found the guest (issue 13 item 3): no group host is connected to,
    the located facts are judged instead, and the result carries what was checked."""
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    opened = []
    probe = probes({"qemu:///system": src, DEST_URI: dst})
    connect = probe.connect
    probe.connect = lambda uri: (opened.append(uri), connect(uri))[1]
    res = pf.run_preflight(opts_for(image, kernel, located={"source": "hosta", "hosts": {"hosta": "running"}}), probe)
    assert res["ok"] is True, [f for f in res["findings"] if f["status"] == "error"]
    assert sorted(set(opened)) == sorted(["qemu:///system", DEST_URI])
    assert only(res["findings"], "guest_location")["status"] == "ok"
    assert res["checked"]["disks"] == [{"target": "vda", "path": image, "format": "raw", "virtual_size": GIB}]
    assert res["checked"]["cpu"] == _domain_xml.cpu_fingerprint(xml)
    located = {"source": "hosta", "hosts": {"hosta": "running", "hostc": "shutoff"}}
    twice = pf.run_preflight(opts_for(image, kernel, located=located), probe)
    f = only(twice["findings"], "guest_location")
    assert f["status"] == "error" and "hostc: shutoff" in f["msg"]


def test_group_and_located_exclude_each_other():
    with pytest.raises(KvmopsError, match="not both"):
        pf.PreflightOptions(domain="vm1", dest_host=DST, group=[{"name": "c", "uri": "qemu:///c"}],
                            located={"source": "hosta", "hosts": {}}).validate()


# ------------------------------------------------------------------------------------------
# Issue 16: the destination's probes (preflight_dest) judged by the pre-flight
# ------------------------------------------------------------------------------------------

LOCAL = "127.0.0.1"
LOCAL_URI = "qemu+ssh://root@%s/system" % LOCAL
PROBE_ID = "k3v9x0q2m8a1z7c4"


def local_hosts(xml):
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(LOCAL_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    return {"qemu:///system": src, LOCAL_URI: dst}


def test_run_with_a_real_listener_open_and_a_held_port_that_resets_is_closed(tmp_path):
    """Real sockets: the listener holds the migration port and answers (open); the disk port
    entry claims a port nobody listens on, as when a REJECT rule resets the SYN (closed)."""
    import threading

    from ansible_collections.kvmops.migration.plugins.module_utils import _probe

    xml, image, kernel = run_xml(tmp_path)
    sockets, ports = _probe.open_listeners([_free_port()], 65535, LOCAL)
    closed = _free_port()
    probe = {"probe_id": PROBE_ID, "markers": [],
             "ports": [dict(ports[0], requested=49152), {"requested": 49153, "port": closed, "state": "listening"}]}
    thread = threading.Thread(target=_probe.serve, args=(sockets, PROBE_ID, 10))
    thread.start()
    try:
        p = probes(local_hosts(xml), names={"hostb": [LOCAL]})
        p.probe_port, p.probe_link = _probe.probe_port, _probe.probe_link
        res = pf.run_preflight(opts_for(image, kernel, dest_host=LOCAL, dest_probe=probe,
                                        forecast={"bandwidth_mibps": 64}), p)
    finally:
        thread.join(5)
        for sock in sockets:
            sock.close()
    # the migration port's probe streamed zeros to the listener: the link is measured (loopback,
    # far above the 64 MiB/s cap, which the forecast takes) and said so
    fc = res["forecast"]
    assert fc["link_measured"] is True and fc["link"]["port"] == ports[0]["port"], fc
    assert fc["link"]["bps"] > 64 * 1024 ** 2 and 0 < fc["link"]["seconds"] <= 1.5 and fc["capped"] is True
    assert fc["rate_bps"] == 64 * 1024 ** 2 and "the bandwidth cap; link measured" in fc["msg"]
    forecast = only(res["findings"], "forecast")
    assert forecast["values"]["link_bps"] == fc["link"]["bps"] and forecast["values"]["link_seconds"] > 0
    ports_found = {f["values"]["requested"]: f for f in res["findings"] if f["check"] == "data_port"}
    assert ports_found[49152]["status"] == "ok" and ports_found[49152]["values"]["state"] == "open"
    assert ports_found[49153]["status"] == "error" and ports_found[49153]["values"]["state"] == "closed"
    assert res["ok"] is False and "data_port" in {f["check"] for f in res["findings"] if f["status"] == "error"}
    assert not thread.is_alive()  # probed once: the listener ended by itself
    # one of its ports was not reached: the role must remove the markers itself
    assert res["probe_ended"] is False


def _free_port():
    import socket as socketlib

    with socketlib.socket() as sock:
        sock.bind((LOCAL, 0))
        return sock.getsockname()[1]


def test_run_filtered_port_stops_the_run_unless_accepted(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    probe = {"probe_id": PROBE_ID, "markers": [],
             "ports": [{"requested": 49152, "port": 49152, "state": "listening"},
                       {"requested": 49153, "port": 49153, "state": "listening"}]}
    calls = []
    p = probes(local_hosts(xml), names={"hostb": [LOCAL]})
    p.probe_port = lambda a, port, pid, t: calls.append((port, pid)) or "timeout"
    res = pf.run_preflight(opts_for(image, kernel, dest_host=LOCAL, dest_probe=probe), p)
    assert res["ok"] is False and calls == [(49152, PROBE_ID), (49153, PROBE_ID)]
    assert all(f["values"]["state"] == "filtered" for f in res["findings"] if f["check"] == "data_port")
    calls.clear()
    res = pf.run_preflight(opts_for(image, kernel, dest_host=LOCAL, dest_probe=probe, ignore_blocked_ports=True), p)
    assert res["ok"] is True and {f["status"] for f in res["findings"] if f["check"] == "data_port"} == {"warning"}


def test_run_probes_every_held_port_even_when_it_stops_early(tmp_path):
    """The listener ends when each of its ports was probed: an early stop (no destination
    connection) still probes them, so it does not linger for its whole lifetime."""
    xml, image, kernel = run_xml(tmp_path)
    probe = {"probe_id": PROBE_ID, "markers": [],
             "ports": [{"requested": 49152, "port": 49152, "state": "listening"},
                       {"requested": 49153, "port": 49154, "state": "listening"}]}
    calls = []
    hosts = local_hosts(xml)
    del hosts[LOCAL_URI]
    p = probes(hosts, names={"hostb": [LOCAL]})
    p.probe_port = lambda a, port, pid, t: calls.append(port) or "open"
    res = pf.run_preflight(opts_for(image, kernel, dest_host=LOCAL, dest_probe=probe), p)
    assert res["ok"] is False and sorted(calls) == [49152, 49154]
    # each port probed open: the listener ended and removed its markers (the role skips that step)
    assert res["probe_ended"] is True
    # no listener at all (a shut-off guest's probe holds no port): the role removes the markers
    res = pf.run_preflight(opts_for(image, kernel, dest_host=LOCAL, dest_probe=dict(probe, ports=[])), p)
    assert res["probe_ended"] is False


def shared_run(tmp_path, mounts, qemu_conf="", seen=True, **kw):
    from ansible_collections.kvmops.migration.plugins.module_utils import _probe

    xml, image, kernel = run_xml(tmp_path)
    markers = _probe.make_markers([image], PROBE_ID)
    if not seen:  # made on the destination, in a directory the source does not share
        markers = [dict(markers[0], path=markers[0]["path"] + "-elsewhere")]
    p = probes(local_hosts(xml), names={"hostb": [LOCAL]})
    p.read_text = {_host.PROC_MOUNTS: mounts, _tls.QEMU_CONF: qemu_conf}.get
    probe = {"probe_id": PROBE_ID, "markers": markers, "ports": []}
    fp = {"path": image, "inode": os.stat(image).st_ino, "size": os.stat(image).st_size}
    opts = opts_for(image, kernel, dest_host=LOCAL, dest_probe=probe,
                    dest_disks=[{"path": image, "exists": True, "format": "raw", "virtual_size": 1024 ** 3,
                                 "fingerprint": fp}, {"path": kernel, "exists": True}], **kw)
    return pf.run_preflight(opts, p), image


def test_shared_directory_found_by_the_marker_is_not_copied_and_libvirt_s_view_is_checked(tmp_path):
    res, _image = shared_run(tmp_path, "server:/export / nfs4 rw 0 0\n")
    assert res["copy_set"] == [] and res["shared_detected"] == ["vda"]
    shared = [f for f in res["findings"] if f["check"] == "shared_storage"]
    assert shared[0]["status"] == "ok" and "identity probe" in shared[0]["msg"] and "not copied" in shared[0]["msg"]
    assert any("nfs4" in f["msg"] and f["status"] == "ok" for f in shared)
    assert not [f for f in res["findings"] if f["check"] == "dest_image"]  # nothing to create
    assert res["ok"] is True, [f["msg"] for f in res["findings"] if f["status"] == "error"]


def test_shared_directory_on_a_local_filesystem_predicts_libvirt_s_unsafe_refusal(tmp_path):
    """A bind mount (ext4 underneath): both hosts see the files, libvirt does not know it as shared."""
    res, image = shared_run(tmp_path, "/dev/sda1 / ext4 rw 0 0\n")
    err = [f for f in res["findings"] if f["check"] == "shared_storage" and f["status"] == "error"]
    assert res["ok"] is False and len(err) == 1
    msg = err[0]["msg"]
    assert "Migration without shared storage is unsafe" in msg and "ext4" in msg
    assert 'shared_filesystems = ["%s"]' % os.path.dirname(os.path.realpath(image)) in msg
    # declared in the source's qemu.conf: libvirt treats it as shared
    conf = '# shared_filesystems = ["/nowhere"]\nshared_filesystems = [\n  "%s"\n]\n' % os.path.dirname(
        os.path.realpath(image))
    (tmp_path / "again").mkdir()
    res, _image = shared_run(tmp_path / "again", "/dev/sda1 / ext4 rw 0 0\n", conf.replace(
        os.path.dirname(os.path.realpath(image)), os.path.realpath(str(tmp_path / "again"))))
    assert res["ok"] is True, [f["msg"] for f in res["findings"] if f["status"] == "error"]


def test_a_marker_not_seen_on_the_source_means_not_shared_even_with_the_same_inode(tmp_path):
    """Cloned hosts keep inode and size: only the identity probe tells; the disk is copied."""
    res, _image = shared_run(tmp_path, "/dev/sda1 / ext4 rw 0 0\n", seen=False)
    assert res["copy_set"] == ["vda"] and res["shared_detected"] == []


def test_a_shared_disk_listed_to_copy_is_refused(tmp_path):
    res, _image = shared_run(tmp_path, "server:/export / nfs4 rw 0 0\n", disks=["vda"])
    err = [f for f in res["findings"] if f["check"] == "shared_storage" and f["status"] == "error"]
    assert err and "onto itself" in err[0]["msg"]


def test_shared_filesystems_of_qemu_conf():
    conf = ('#shared_filesystems = [\n#  "/path/to/images",\n#]\n'
            'shared_filesystems = [ "/srv/images", "/srv/nvram" ]  # ours\n')
    assert _checks_storage.shared_filesystems(conf) == ["/srv/images", "/srv/nvram"]
    assert _checks_storage.shared_filesystems("") == [] and _checks_storage.shared_filesystems(None) == []


def test_cache_mode_of_a_shared_disk_follows_the_source_qemu():
    disks = [{"target": "vda", "path": "/srv/vm.qcow2", "cache": "writeback"}]
    assert _checks_storage.check_cache_modes(disks, [], DST)[0]["status"] == "error"
    f = _checks_storage.check_cache_modes(disks, [], DST, qemu_version=7002000)[0]
    assert f["status"] == "warning" and "QEMU 7.2.0 drops the destination's page cache" in f["msg"]


# ------------------------------------------------------------------------------------------
# Transport (issue 15)
# ------------------------------------------------------------------------------------------

def _transport_run(tmp_path, **kw):
    xml, image, kernel = run_xml(tmp_path)
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [dom(xml)])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    material = kw.pop("tls_material", None)
    return pf.run_preflight(opts_for(image, kernel, **kw),
                            probes({"qemu:///system": src, DEST_URI: dst}, tls_material=material))


def test_run_default_transport_is_tls_with_both_hosts_checked(tmp_path):
    res = _transport_run(tmp_path)
    assert res["transport"] == {"tls": True, "memory": "tls", "disks": "tls", "control": "ssh", "encrypted": True}
    assert only(res["findings"], "transport")["status"] == "ok"


def test_run_destination_of_another_ca_stops_the_move(tmp_path):
    other = tls_fakes.material(str(tmp_path / "other"), tls_fakes.CA("another CA"), ["hostb", DST])
    res = _transport_run(tmp_path, dest_tls=other)
    assert res["ok"] is False
    errs = [f for f in res["findings"] if f["check"] == "tls_certificates" and f["status"] == "error"]
    assert len(errs) == 2 and all("do not share a CA" in f["msg"] for f in errs)
    assert {f["host"] for f in errs} == {DST, "qemu:///system"}
    assert "would cross the network unencrypted" in only(res["findings"], "transport")["msg"]


def test_run_without_certificates_allowed_in_clear_is_a_warning(tmp_path):
    empty = _tls.read_host_tls("", directory=str(tmp_path / "none"), identity={"uid": 0, "gids": []})
    res = _transport_run(tmp_path, dest_tls=empty, tls_material=lambda: empty, allow_insecure_transport=True,
                         insecure_var="migrate_guest_allow_insecure_transport")
    assert res["ok"] is True
    assert res["transport"]["memory"] == "plain" and res["transport"]["encrypted"] is False
    msg = only(res["findings"], "transport")["msg"]
    assert "unencrypted, allowed by migrate_guest_allow_insecure_transport" in msg


def test_run_without_destination_material_checks_the_source_and_says_so(tmp_path):
    res = _transport_run(tmp_path, dest_tls=None)
    warn = [f for f in res["findings"] if f["check"] == "tls_certificates"]
    assert [f["status"] for f in warn] == ["warning"] and "was not read" in warn[0]["msg"]
    assert res["transport"]["tls"] is True


# ------------------------------------------------------------------------------------------
# the forecast (issue 19)
# ------------------------------------------------------------------------------------------

def test_run_measures_the_guest_and_forecasts_the_move(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    guest = dom(xml)
    guest.dirty_rate_mibps, guest.dirty_measuring = 2, 1
    guest.block_written = {"vda": [1000, 1000 + 4 * 1024 ** 2]}
    guest.memory_stats = {"actual": 262144, "unused": 170000, "rss": 120000}
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [guest])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    clock = FakeClock(100.0)
    res = pf.run_preflight(opts_for(image, kernel, forecast={"bandwidth_mibps": 64}),
                           probes({"qemu:///system": src, DEST_URI: dst}, clock=clock))
    fc = res["forecast"]
    assert guest.dirty_calcs == [1] and guest.calls == []  # measured, nothing changed
    assert fc["measured"]["dirty_bps"] == 2 * 1024 ** 2 and fc["measured"]["memory_source"] == "balloon"
    assert fc["measured"]["memory_bytes"] == (262144 - 170000) * 1024
    assert fc["measured"]["disk_write_bps"] == pytest.approx(4 * 1024 ** 2, rel=0.01)
    assert fc["verdict"] == "converges" and fc["link_measured"] is False
    assert fc["inputs"]["sources"]["link_bps"].startswith("assumed: the bandwidth cap")
    f = only(res["findings"], "forecast")
    assert f["status"] == "ok" and "converges in about" in f["msg"] and "link assumed, not measured" in f["msg"]
    assert f["values"]["verdict"] == "converges"


def test_run_forecast_says_what_could_not_be_measured_and_can_be_off(tmp_path):
    xml, image, kernel = run_xml(tmp_path)
    guest = dom(xml)
    guest.dirty_rate_mibps = None  # a libvirt or QEMU without the dirty-rate calculation
    src = lab_host("qemu:///system", "aaaaaaaa-0000-0000-0000-000000000001", "hosta", [guest])
    dst = lab_host(DEST_URI, "bbbbbbbb-0000-0000-0000-000000000002", "hostb")
    hosts = {"qemu:///system": src, DEST_URI: dst}
    res = pf.run_preflight(opts_for(image, kernel), probes(hosts))
    f = only(res["findings"], "forecast")
    assert f["status"] == "warning" and "virDomainStartDirtyRateCalc" in f["msg"]
    assert res["forecast"]["measured"]["memory_source"] == "max_memory" and res["ok"] is True
    off = pf.run_preflight(opts_for(image, kernel, forecast={"enabled": False}), probes(hosts))
    assert off["forecast"] is None and not [f for f in off["findings"] if f["check"] == "forecast"]


def test_forecast_settings_fill_the_defaults():
    assert pf.forecast_settings(None) == {"enabled": True, "seconds": 1, "link_probe": True, "link_mibps": None,
                                          "bandwidth_mibps": None,
                                          "max_downtime_ms": None, "stream_mibps": None}
    assert pf.forecast_settings({"seconds": 2, "link_mibps": None})["seconds"] == 2
