# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The filter plugin turns Ansible registers (looped results, unreachable items) into the inputs
of the module_utils that decide (_locate, _evacuation, _host_prep, ...)."""

from __future__ import annotations

from ansible_collections.kvmops.migration.plugins.filter import placement as f

GIB = 1024 ** 3


def facts(item, domains, available=8 * GIB, uuid=None):
    return {"item": item, "changed": False, "host": {"uuid": uuid or "u-%s" % item, "available_memory_bytes": available},
            "domains": domains}


def test_filters_are_registered():
    names = set(f.FilterModule().filters())
    assert {"locate_guest", "pick_destination", "plan_evacuation", "host_uuid_plan", "image_report",
            "migration_summary", "mirror_networks", "host_addresses"} <= names


def test_locate_from_a_looped_register_with_an_unreachable_host():
    vm1 = {"name": "vm1", "uuid": "x", "state": "running", "active": True, "memory_bytes": GIB, "vcpus": 1}
    reg = {"results": [facts("hosta", [vm1]), {"item": "hostb", "unreachable": True, "msg": "timed out"}]}
    where = f.locate_guest(reg, "vm1")
    assert where["source"] == "hosta" and where["not_searched"] == {"hostb": "timed out"}
    assert where["reachable"] == ["hosta"]


def test_pick_destination_reads_reports_inside_results():
    hosts = {"results": [facts("a", []), facts("b", [])]}
    reports = {"results": [{"item": "b", "report": {"ok": True, "findings": []}, "summary": {}}]}
    assert f.pick_destination(hosts, {"name": "vm1", "memory_bytes": GIB}, "a", reports)["host"] == "b"


def test_plan_evacuation_from_product_loop():
    hosts = {"results": [facts("a", []), facts("b", []), facts("c", [], 1)]}
    reports = {"results": [{"item": ["g1", "b"], "report": {"ok": True, "findings": []}},
                           {"item": ["g1", "c"], "report": {"ok": True, "findings": []}}]}
    plan = f.plan_evacuation(hosts, "a", [{"name": "g1", "memory_bytes": GIB}], reports)
    assert plan["moves"][0]["to"] == "b"


def test_host_uuid_plan_ignores_unreadable_hosts():
    reg = {"results": [facts("a", [], uuid="same"), facts("b", [], uuid="same"),
                       {"item": "c", "unreachable": True}]}
    for r in reg["results"][:2]:
        r["host"]["uuid_configured"] = "x"
        r["host"]["uuid_configured_valid"] = True
    plan = f.host_uuid_plan(reg, ["a", "b", "c"])
    assert set(plan) == {"a", "b"} and plan["b"]["action"] == "replace"


def test_host_addresses():
    hostvars = {"a": {"ansible_host": "10.0.0.1"}, "b": {}}
    assert f.host_addresses(["a", "b"], hostvars) == {"a": "10.0.0.1", "b": "b"}


def test_mirror_networks_from_register():
    reg = {"results": [{"item": "default", "get_xml": "<network><name>default</name><uuid>1</uuid></network>"},
                       {"item": "x", "skipped": True}]}
    assert f.mirror_networks(reg) == [{"name": "default", "xml": "<network><name>default</name></network>"}]
