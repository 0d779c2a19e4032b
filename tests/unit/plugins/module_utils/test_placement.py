# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of placing guests and reporting on them: locating a guest (C11 d) and choosing
destinations (_locate), evacuation plans (_evacuation), host UUID plans (C10) and mirrored
networks (_host_prep), the image report (sparse check), the migration summary and the findings
table (_report), and the modules' inputs (_migration_plan.libvirt_uris, _disk_info.disk_paths
and disk_formats)."""

from __future__ import annotations

import uuid

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _evacuation
from ansible_collections.kvmops.migration.plugins.module_utils import _host_prep
from ansible_collections.kvmops.migration.plugins.module_utils import _locate
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils import _report

MIB = 1024 ** 2
GIB = 1024 ** 3


def dom(name, state="running", memory=256 * MIB, uid=None):
    return {"name": name, "uuid": uid or str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "state": state,
            "active": state in ("running", "paused"), "persistent": True, "memory_bytes": memory,
            "vcpus": 1}


def host(domains, available=8 * GIB, uid=None):
    return {"host": {"uuid": uid or str(uuid.uuid4()), "available_memory_bytes": available,
                     "free_memory_bytes": available}, "domains": domains}


def report(*errors, warnings=0):
    findings = [{"check": "x", "status": "error", "host": "h", "msg": e, "values": {}} for e in errors]
    findings += [{"check": "w", "status": "warning", "host": "h", "msg": "w", "values": {}}] * warnings
    return {"ok": not errors, "findings": findings}


# ------------------------------------------------------------------------------- locate

def test_locate_running_guest():
    hosts = {"hosta": host([dom("vm1"), dom("other")]), "hostb": host([])}
    where = _locate.locate_guest("vm1", hosts)
    assert where["error"] is None
    assert where["source"] == "hosta" and where["state"] == "running" and where["memory_bytes"] == 256 * MIB
    assert where["reachable"] == ["hosta", "hostb"]
    assert set(where["host_uuids"]) == {"hosta", "hostb"}


def test_locate_by_uuid():
    vm = dom("vm1")
    where = _locate.locate_guest(vm["uuid"].upper(), {"hosta": host([]), "hostb": host([vm])})
    assert where["source"] == "hostb" and where["name"] == "vm1"


def test_locate_missing_names_searched_and_unreachable_hosts():
    hosts = {"hosta": host([]), "hostb": {"unreachable": True, "msg": "ssh: connect timed out"}}
    where = _locate.locate_guest("vm1", hosts)
    assert not where["found"]
    assert "not defined on any host of group kvm_hosts (searched: hosta" in where["error"]
    assert "hostb (ssh: connect timed out)" in where["error"]


def test_c11d_running_on_two_hosts_is_a_stop():
    hosts = {"hosta": host([dom("vm1")]), "hostb": host([dom("vm1", "paused")])}
    where = _locate.locate_guest("vm1", hosts)
    assert where["error"].startswith("STOP: guest vm1 is active on 2 hosts (hosta, hostb)")


def test_c10_one_machine_under_two_inventory_names_is_named_as_such():
    same = host([dict(dom("vm1"), id=3)], uid="0b7f3d5e-0000-4000-8000-000000000001")
    same["host"]["hostname"] = "hosta"
    where = _locate.locate_guest("vm1", {"hosta": same, "hosta2": same, "hostb": host([])})
    assert where["error"].startswith("Hosts hosta, hosta2 of group kvm_hosts look like one machine: same host "
                                     "name hosta, libvirt host UUID 0b7f3d5e-0000-4000-8000-000000000001")
    assert "remove the extra entry" in where["error"] and "STOP" not in where["error"]


def test_cloned_hosts_with_different_domain_ids_are_still_a_stop():
    uid = "0b7f3d5e-0000-4000-8000-000000000001"
    a, b = host([dict(dom("vm1"), id=3)], uid=uid), host([dict(dom("vm1"), id=7)], uid=uid)
    a["host"]["hostname"] = b["host"]["hostname"] = "clone"
    where = _locate.locate_guest("vm1", {"hosta": a, "hostb": b})
    assert where["error"].startswith("STOP: guest vm1 is active on 2 hosts (hosta, hostb)")


def test_running_copy_wins_over_an_inactive_definition():
    hosts = {"hosta": host([dom("vm1", "shutoff")]), "hostb": host([dom("vm1")])}
    where = _locate.locate_guest("vm1", hosts)
    assert where["source"] == "hostb" and where["on"] == {"hosta": "shutoff", "hostb": "running"}


def test_defined_twice_and_running_nowhere_is_ambiguous():
    hosts = {"hosta": host([dom("vm1", "shutoff")]), "hostb": host([dom("vm1", "shutoff")])}
    assert "runs on none" in _locate.locate_guest("vm1", hosts)["error"]


# ------------------------------------------------------------------------------- destination

def test_pick_destination_prefers_most_memory_left_and_skips_errors():
    hosts = {"a": host([dom("vm1")]), "b": host([], 2 * GIB), "c": host([], 6 * GIB), "d": host([], 16 * GIB)}
    reports = {"b": report(), "c": report(), "d": report("bridge br-x missing")}
    choice = _locate.pick_destination({"name": "vm1", "memory_bytes": GIB}, "a", hosts, reports, 256 * MIB)
    assert choice["host"] == "c"
    assert [r["host"] for r in choice["ranking"]] == ["c", "b", "d"]
    assert choice["ranking"][2]["reasons"] == ["bridge br-x missing"]


def test_pick_destination_names_every_reason_when_none_fits():
    hosts = {"a": host([]), "b": host([], 512 * MIB)}
    choice = _locate.pick_destination({"name": "vm1", "memory_bytes": GIB}, "a", hosts, {"b": report("CPU vendor clash")})
    assert choice["host"] is None
    assert "No host can take guest vm1 from a: b: CPU vendor clash | not enough memory on b" in choice["error"]


def test_pick_destination_without_report_is_not_eligible():
    choice = _locate.pick_destination({"name": "vm1", "memory_bytes": 1}, "a", {"a": host([]), "b": host([])},
                                      {"b": None})
    assert choice["host"] is None and "no pre-flight report" in choice["error"]


def test_warnings_break_ties():
    hosts = {"a": host([]), "b": host([], 4 * GIB), "c": host([], 4 * GIB)}
    ranking = _locate.rank_destinations({"name": "vm1", "memory_bytes": 1}, "a", hosts,
                                        {"b": report(warnings=2), "c": report()})
    assert [r["host"] for r in ranking] == ["c", "b"]


# ------------------------------------------------------------------------------- evacuation

def test_select_guests_filters():
    doms = [dom("web1"), dom("web2"), dom("db1"), dom("idle", "shutoff"), dom("frozen", "paused")]
    sel = _evacuation.select_guests(doms, ["web*", "db*", "frozen"], ["web2"])
    assert [d["name"] for d in sel["selected"]] == ["db1", "web1"]
    reasons = {s["guest"]: s["reason"] for s in sel["skipped"]}
    assert reasons["web2"] == "excluded by pattern web2"
    assert reasons["idle"].startswith("not running")
    assert "only running guests" in reasons["frozen"]


def test_plan_evacuation_counts_what_it_placed_and_batches():
    hosts = {"a": host([]), "b": host([], 3 * GIB), "c": host([], 2 * GIB)}
    guests = [dom("g1", memory=2 * GIB), dom("g2", memory=GIB), dom("g3", memory=GIB), dom("g4", memory=4 * GIB)]
    ok = {h: report() for h in ("b", "c")}
    reports = {g["name"]: ok for g in guests}
    plan = _evacuation.plan_evacuation("a", guests, hosts, reports, 0, 2)
    assert [(m["guest"], m["to"]) for m in plan["moves"]] == [("g1", "b"), ("g2", "c"), ("g3", "b")]
    assert plan["unplaced"][0]["guest"] == "g4" and "not enough memory" in plan["unplaced"][0]["reason"]
    assert plan["batches"] == [["g1", "g2"], ["g3"]]


def test_plan_evacuation_respects_cpu_incompatibility():
    hosts = {"a": host([]), "b": host([], 64 * GIB), "c": host([], 2 * GIB)}
    reports = {"g1": {"b": report("host CPU vendor does not match"), "c": report()}}
    plan = _evacuation.plan_evacuation("a", [dom("g1")], hosts, reports)
    assert plan["moves"][0]["to"] == "c"


def test_evacuation_summary():
    plan = {"moves": [{"guest": "g1", "to": "b"}, {"guest": "g2", "to": "c"}, {"guest": "g3", "to": "c"}],
            "unplaced": [{"guest": "g4", "reason": "no host can take it"}]}
    results = {"g1": {"ok": True, "state": "migrated", "duration_s": 3.2, "downtime_ms": 40},
               "g2": {"ok": False, "msg": "pre-flight failed"}}
    healthy = _evacuation.evacuation_summary("a", {"moves": [{"guest": "g1", "to": "b"}]},
                                             {"g1": dict(results["g1"], time_to_healthy_ms=420)})
    assert healthy["lines"][1] == "  moved  g1 -> b (3.2 s, downtime 40 ms, healthy 0.4 s after the switch-over)"
    out = _evacuation.evacuation_summary("a", plan, results, [{"guest": "off", "reason": "not running (shutoff)"}])
    assert [m["guest"] for m in out["moved"]] == ["g1"]
    assert {f["guest"]: f["reason"] for f in out["failed"]} == {"g2": "pre-flight failed", "g3": "not attempted"}
    assert [n["guest"] for n in out["not_moved"]] == ["g4", "off"]
    assert out["ok"] is False and out["lines"][0] == "Evacuation of a: 1 moved, 2 failed, 2 not moved."
    assert out["lines"][1] == "  moved  g1 -> b (3.2 s, downtime 40 ms)"
    planned = _evacuation.evacuation_summary("a", {"moves": [{"guest": "g1", "to": "b"}]}, {"g1": {"ok": True, "state": "planned"}})
    assert planned["lines"][1] == "  plan   g1 -> b"


# ------------------------------------------------------------------------------- C10 host UUIDs

def test_c10_duplicate_host_uuid_is_replaced_on_the_later_host_only():
    same = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"
    hosts = {"hosta": {"uuid": same, "uuid_configured": same, "uuid_configured_valid": True},
             "hostb": {"uuid": same, "uuid_configured": None},
             "hostc": {"uuid": "0b7d2c3e-2222-4a2b-9c3d-0123456789ab", "uuid_configured": None}}
    plan = _host_prep.host_uuid_plan(hosts, ["hosta", "hostb", "hostc"])
    assert plan["hosta"]["action"] == "keep"
    assert plan["hostb"]["action"] == "replace" and plan["hostb"]["restart"] is True
    assert plan["hostb"]["uuid"] not in (same, plan["hostc"]["uuid"])
    assert "also hosta's" in plan["hostb"]["reason"]
    assert plan["hostc"] == dict(plan["hostc"], action="pin", restart=False)
    # stable: a rerun computes the same value
    assert _host_prep.host_uuid_plan(hosts, ["hosta", "hostb", "hostc"])["hostb"]["uuid"] == plan["hostb"]["uuid"]


def test_c10_invalid_configured_uuid_and_no_pin():
    hosts = {"a": {"uuid": "1b7d2c3e-2222-4a2b-9c3d-0123456789ab", "uuid_configured": "ffffffff-ffff-ffff-ffff-ffffffffffff",
                   "uuid_configured_valid": False},
             "b": {"uuid": "2b7d2c3e-2222-4a2b-9c3d-0123456789ab", "uuid_configured": None}}
    plan = _host_prep.host_uuid_plan(hosts, ["a", "b"], pin=False)
    assert plan["a"]["action"] == "replace" and "not a valid host UUID" in plan["a"]["reason"]
    assert plan["b"]["action"] == "keep"


def test_new_host_uuid_avoids_taken_values():
    first = _host_prep.new_host_uuid("hostb")
    assert _host_prep.new_host_uuid("hostb", [first]) != first


# ------------------------------------------------------------------------------- reports

SRC = [{"target": "vda", "path": "/i/vm.raw", "format": "raw", "virtual_size": 10 * GIB, "allocation": 256 * MIB,
        "copy": True},
       {"target": "vdb", "path": "/i/vm.swap", "format": "raw", "virtual_size": 10 * GIB, "allocation": 0, "copy": True},
       {"target": "sda", "path": "/iso/seed.iso", "format": "raw", "virtual_size": MIB, "allocation": MIB,
        "copy": False}]


@pytest.mark.parametrize("dst_alloc, sparse", [(256 * MIB, True), (300 * MIB, True), (2 * GIB, False)])
def test_image_report_sparse(dst_alloc, sparse):
    dst = [{"path": "/i/vm.raw", "exists": True, "virtual_size": 10 * GIB, "allocation": dst_alloc},
           {"path": "/i/vm.swap", "exists": True, "virtual_size": 10 * GIB, "allocation": 4096}]
    rep = _report.image_report(SRC, dst, ["/i/vm.raw", "/i/vm.swap"])
    assert [i["target"] for i in rep["images"]] == ["vda", "vdb"]
    assert rep["images"][0]["sparse"] is sparse and rep["ok"] is sparse
    assert rep["images"][0]["created"] is True
    if not sparse:
        assert "not sparse on the destination: 2.0 GiB allocated there, 256.0 MiB on the source" in rep["problems"][0]


def test_image_report_counts_what_the_guest_wrote_during_the_move():
    """Found in the lab: a guest writing new blocks of its data disk during the move left 244 MiB
    allocated on the destination against 84 MiB read before the move; the source image had grown
    as much. The source's allocation right after the move is the reference, never a smaller one."""
    dst = [{"path": "/i/vm.raw", "exists": True, "virtual_size": 10 * GIB, "allocation": 256 * MIB},
           {"path": "/i/vm.swap", "exists": True, "virtual_size": 10 * GIB, "allocation": 244 * MIB}]
    assert not _report.image_report(SRC, dst)["ok"]
    rep = _report.image_report(SRC, dst, src_after={"/i/vm.swap": 240 * MIB, "/i/vm.raw": 100 * MIB})
    assert rep["ok"], rep
    assert [i["src_allocation"] for i in rep["images"]] == [256 * MIB, 240 * MIB]  # the larger of both
    # a destination fully allocated is still found
    dst[1]["allocation"] = 10 * GIB
    rep = _report.image_report(SRC, dst, src_after={"/i/vm.swap": 240 * MIB})
    assert not rep["ok"] and "not sparse on the destination: 10.0 GiB allocated there, 240.0 MiB" in rep["problems"][0]


def test_image_report_missing_and_wrong_size():
    dst = [{"path": "/i/vm.raw", "exists": True, "virtual_size": 5 * GIB, "allocation": 0}]
    rep = _report.image_report(SRC, dst)
    assert not rep["ok"]
    assert "virtual size 5368709120 bytes on the destination, 10737418240 on the source" in rep["problems"][0]
    assert "/i/vm.swap is missing" in rep["problems"][1]


def test_image_report_leaves_shared_disks_out():
    """A disk on storage both hosts see was not copied: no image of it to compare, and the summary
    must not advise removing the 'old image' on the source (it is the guest's only one)."""
    dst = [{"path": "/i/vm.raw", "exists": True, "virtual_size": 10 * GIB, "allocation": 256 * MIB}]
    rep = _report.image_report(SRC, dst, [], shared=["vdb"])
    assert [i["target"] for i in rep["images"]] == ["vda"] and rep["ok"]


def test_migration_summary_lines():
    result = {"changed": True, "state": "migrated", "plan": {"flags": ["VIR_MIGRATE_LIVE"]},
              "stats": {"time_ms": 12345, "downtime_ms": 42, "memory_bytes": 300 * MIB, "disk_bytes": 20 * GIB,
                        "disk_allocated_bytes": 256 * MIB, "iterations": 3}, "warnings": []}
    images = _report.image_report(SRC, [{"path": "/i/vm.raw", "exists": True, "virtual_size": 10 * GIB,
                                         "allocation": 256 * MIB},
                                        {"path": "/i/vm.swap", "exists": True, "virtual_size": 10 * GIB, "allocation": 0}],
                                  ["/i/vm.raw"])
    s = _report.migration_summary("vm", "hosta", "hostb", result, images, ["/i/vm.raw"])
    assert s["duration_s"] == 12.3 and s["downtime_ms"] == 42 and s["images_created"] == ["/i/vm.raw"]
    assert s["lines"][0] == "vm moved hosta -> hostb in 12.3 s, downtime 42 ms."
    assert s["lines"][1] == "moved: memory 300.0 MiB, disks 256.0 MiB of data (20.0 GiB of disk walked), 3 memory pass(es)"
    assert "/i/vm.raw (vda): 10.0 GiB virtual, allocated 256.0 MiB on hosta, 256.0 MiB on hostb" in s["lines"][3]
    assert s["lines"][-1].startswith("the old images on hosta are kept (never deleted by kvmops)")


def test_migration_summary_plan_and_noop():
    plan = _report.migration_summary("vm", "a", "b", {"state": "planned", "plan": {"flags": ["VIR_MIGRATE_LIVE"]}},
                                     check_mode=True, created=["/i/x"])
    assert plan["lines"][0].startswith("PLAN (check mode): vm would move a -> b")
    assert plan["lines"][1] == "images would be created on b: /i/x"
    noop = _report.migration_summary("vm", "b", "b", {"state": "already_migrated", "changed": False})
    assert noop["lines"][0] == "vm already runs on b: nothing to do." and noop["changed"] is False


def test_human_bytes():
    assert _report.human_bytes(None) == "?" and _report.human_bytes(512) == "512 B" and _report.human_bytes(1536) == "1.5 KiB"


# ------------------------------------------------------------------------------- module inputs

def test_libvirt_uris():
    uris = _migration_plan.libvirt_uris({"hosta": "198.18.0.1", "hostb": "fd00::2"}, "root", "ssh", local="hosta")
    assert uris == [{"name": "hosta", "uri": "qemu:///system"},
                    {"name": "hostb", "uri": "qemu+ssh://root@[fd00::2]/system"}]
    assert _migration_plan.libvirt_uris({"b": "10.0.0.2"}, transport="tls")[0]["uri"] == "qemu+tls://10.0.0.2/system"


def test_disk_paths():
    disks = [{"path": "/i/a", "type": "file", "backing": [{"path": "/i/base"}]},
             {"path": None, "type": "network"}, {"path": "/i/a", "type": "file"}]
    assert _disk_info.disk_paths(disks) == ["/i/a", "/i/base"]


def test_disk_formats_are_the_declared_ones():
    disks = [{"path": "/i/a", "type": "file", "format": "qcow2",
              "backing": [{"path": "/i/base", "format": "raw"}, {"path": "/i/undeclared"}]},
             {"path": "/i/n", "type": "network", "format": "raw"}, {"path": "/i/a", "type": "file", "format": "raw"}]
    assert _disk_info.disk_formats(disks) == {"/i/a": "qcow2", "/i/base": "raw"}


def test_findings_table_errors_first():
    rep = {"findings": [{"check": "memory", "status": "ok", "msg": "fine"},
                        {"check": "network", "status": "error", "msg": "br-x missing"}]}
    assert _report.findings_table(rep) == ["ERROR   network            br-x missing"]
    assert len(_report.findings_table(rep, show_ok=True)) == 2


def test_mirror_networks_drop_identity():
    xml = ("<network><name>default</name><uuid>1b7d2c3e-2222-4a2b-9c3d-0123456789ab</uuid>"
           "<forward mode='nat'/><bridge name='virbr0'/><mac address='52:54:00:aa:bb:cc'/>"
           "<ip address='198.18.1.1' netmask='255.255.255.0'/></network>")
    out = _host_prep.mirror_networks([{"name": "default", "xml": xml}, {"name": "other", "xml": xml}], ["default"])
    assert len(out) == 1 and out[0]["name"] == "default"
    assert "<uuid>" not in out[0]["xml"] and "52:54:00" not in out[0]["xml"]
    assert "virbr0" in out[0]["xml"] and "198.18.1.1" in out[0]["xml"]


def test_mirror_networks_parse_with_the_hardened_parser(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("do-not-leak")
    xml = ("<!DOCTYPE network [<!ENTITY leak SYSTEM 'file://%s'>]>"
           "<network><name>default</name><description>&leak;</description><bridge name='virbr0'/></network>" % secret)
    out = _host_prep.network_for_host(xml)
    assert "do-not-leak" not in out and "virbr0" in out
