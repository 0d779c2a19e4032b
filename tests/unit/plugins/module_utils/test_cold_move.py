# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the cold move (issue 16 item 3): when a cold move is offered, allowed or
refused (the decision table of _cold_move.move_kind and the destination choice of _locate),
what the pre-flight's CPU error then says, the shutdown's timeout rule, the sparse copy between
two storage streams, and the summary of a cold move."""

from __future__ import annotations

import types

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _cold_move as c
from ansible_collections.kvmops.migration.plugins.module_utils import _evacuation
from ansible_collections.kvmops.migration.plugins.module_utils import _locate
from ansible_collections.kvmops.migration.plugins.module_utils import _report
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from fake_libvirt import FakeClock

GIB = 1024 ** 3
VAR = "migrate_guest_allow_cold_move"


def f(check, status="error", msg=None):
    return {"check": check, "status": status, "host": "hosta", "msg": msg or "%s %s" % (check, status), "values": {}}


def rep(*findings):
    return {"ok": not any(x["status"] == "error" for x in findings), "findings": list(findings)}


# ------------------------------------------------------------------------------- the decision table

@pytest.mark.parametrize("findings, active, allow, kind, offered", [
    # no error: live for a running guest, offline for a shut-off one, whatever allow says
    ([f("cpu", "ok"), f("memory", "warning")], True, False, "live", False),
    ([f("cpu", "ok")], False, True, "offline", False),
    # only CPU errors of a running guest: offered; allowed with the variable
    ([f("cpu"), f("cpu_feature_names"), f("machine", "ok")], True, False, None, True),
    ([f("cpu"), f("cpu_feature_names")], True, True, "cold", True),
    ([f("cpu_feature_names")], True, True, "cold", True),
    # a CPU error of a shut-off guest is not about a live CPU: no cold move (domain_cpu fixes it)
    ([f("cpu")], False, True, None, False),
    # any other error refuses the move, with or without the variable: the machine type is
    # guest ABI and a cold move keeps it
    ([f("cpu"), f("machine")], True, True, None, False),
    ([f("cpu"), f("memory")], True, True, None, False),
    ([f("tls_certificates")], True, True, None, False),
])
def test_move_kind_table(findings, active, allow, kind, offered):
    got = c.move_kind(rep(*findings), active, allow)
    assert got["kind"] == kind and got["cold_offered"] is offered
    errors = [x["msg"] for x in findings if x["status"] == "error"]
    assert got["blockers"] == ([] if kind else errors)


@pytest.mark.parametrize("report, blocker", [
    (None, "no pre-flight report"),
    ({"failed": True, "msg": "could not connect"}, "could not connect"),
])
def test_move_kind_without_a_usable_report(report, blocker):
    assert c.move_kind(report, True, True) == {"kind": None, "cold_offered": False, "blockers": [blocker]}


# ------------------------------------------------------------------------------- the pre-flight's words

def test_offer_names_the_variable_on_cpu_errors_only():
    findings = [f("cpu", msg="The guest CPU cannot run on hosta: its libvirt does not know the CPU model X."),
                f("machine"), f("cpu_feature_names", "ok")]
    out = c.offer(findings, VAR, False, "hosta")
    assert out[0]["msg"].startswith("The guest CPU cannot run on hosta")
    assert ("Only a cold move can fix this: set migrate_guest_allow_cold_move=true and the persistent CPU is "
            "normalised to the group's baseline, the guest is shut down (ACPI power button), moved offline with "
            "its disks and started on hosta; it is down from the shutdown until it runs there.") in out[0]["msg"]
    assert out[0]["values"]["cold_move"] == "offered"
    assert out[1] == findings[1] and out[2] == findings[2]
    assert findings[0]["values"] == {}  # the input is not changed


def test_offer_when_allowed_and_without_a_variable():
    allowed = c.offer([f("cpu", msg="m.")], VAR, True, "hosta")[0]
    assert allowed["msg"].startswith("m. A cold move will fix this (migrate_guest_allow_cold_move is true): ")
    assert allowed["values"]["cold_move"] == "allowed"
    assert c.offer([f("cpu", msg="m.")], None, True, "hosta")[0]["msg"] == "m."


# ------------------------------------------------------------------------------- the destination

def hosts(*names):
    return {n: {"host": {"available_memory_bytes": 8 * GIB}, "domains": []} for n in names}


GUEST = {"name": "vm1", "memory_bytes": GIB, "active": True}


def test_pick_refuses_a_cold_only_host_without_the_variable_and_says_why():
    msg = c.offer([f("cpu", msg="The guest CPU cannot run on hosta.")], VAR, False, "hosta")[0]["msg"]
    choice = _locate.pick_destination(GUEST, "hostb", hosts("hosta"), {"hosta": rep(dict(f("cpu"), msg=msg))})
    assert choice["host"] is None and choice["kind"] is None
    assert choice["ranking"][0]["cold_offered"] is True
    assert "Only a cold move can fix this: set migrate_guest_allow_cold_move=true" in choice["error"]


def test_pick_allows_the_cold_host_with_the_variable():
    choice = _locate.pick_destination(GUEST, "hostb", hosts("hosta"), {"hosta": rep(f("cpu"))}, allow_cold=True)
    assert (choice["host"], choice["kind"], choice["error"]) == ("hosta", "cold", None)


def test_pick_prefers_a_live_move_to_a_cold_one():
    h = hosts("hosta", "hostc")
    h["hosta"]["host"]["available_memory_bytes"] = 64 * GIB  # more room, but only cold
    choice = _locate.pick_destination(GUEST, "hostb", h, {"hosta": rep(f("cpu")), "hostc": rep(f("cpu", "ok"))},
                                      allow_cold=True)
    assert (choice["host"], choice["kind"]) == ("hostc", "live")
    assert [r["kind"] for r in choice["ranking"]] == ["live", "cold"]


def test_pick_keeps_other_errors_with_the_variable():
    choice = _locate.pick_destination(GUEST, "hostb", hosts("hosta"), {"hosta": rep(f("cpu"), f("machine", msg="no pc-q35-10.0"))},
                                      allow_cold=True)
    assert choice["host"] is None and "no pc-q35-10.0" in choice["error"]


def test_evacuation_never_moves_cold():
    plan = _evacuation.plan_evacuation("hostb", [dict(GUEST)], hosts("hosta"), {"vm1": {"hosta": rep(f("cpu"))}})
    assert plan["moves"] == [] and plan["unplaced"][0]["guest"] == "vm1"


# ------------------------------------------------------------------------------- the shutdown rule

class FakeDomain:
    """A guest that powers off ``off_after_s`` after its ACPI button (None: never)."""

    def __init__(self, clock, off_after_s):
        self.clock, self.off_after_s = clock, off_after_s
        self.pressed_at = None
        self.destroyed = False
        self.calls = []

    def shutdownFlags(self, flags):
        self.calls.append(("shutdown", flags))
        self.pressed_at = self.clock()

    def isActive(self):
        if self.destroyed:
            return False
        return not (self.off_after_s is not None and self.clock() - self.pressed_at >= self.off_after_s)

    def destroy(self):
        self.calls.append(("destroy",))
        self.destroyed = True


LV = types.SimpleNamespace(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN=1, libvirtError=RuntimeError)


def test_shutdown_by_acpi_within_the_timeout():
    clock = FakeClock()
    dom = FakeDomain(clock, off_after_s=3)
    got = c.shutdown(dom, "vm1", "hostb", 10, False, LV, clock, clock.sleep)
    assert got == {"shutdown_ms": 3000, "forced": False}
    assert dom.calls == [("shutdown", 1)]


def test_shutdown_timeout_without_force_fails_and_leaves_it_running():
    clock = FakeClock()
    dom = FakeDomain(clock, off_after_s=None)
    with pytest.raises(KvmopsError) as err:
        c.shutdown(dom, "vm1", "hostb", 5, False, LV, clock, clock.sleep)
    assert "did not power off within 5 s of its ACPI power button on hostb" in str(err.value)
    assert "migrate_guest_force_off" in str(err.value) and "migrate_guest_shutdown_timeout_s" in str(err.value)
    assert dom.calls == [("shutdown", 1)] and dom.isActive()


def test_shutdown_timeout_with_force_powers_it_off():
    clock = FakeClock()
    dom = FakeDomain(clock, off_after_s=None)
    got = c.shutdown(dom, "vm1", "hostb", 5, True, LV, clock, clock.sleep)
    assert got["forced"] is True and got["shutdown_ms"] >= 5000
    assert dom.calls == [("shutdown", 1), ("destroy",)]


# ------------------------------------------------------------------------------- the sparse copy

class SourceStream:
    """Hands out ``pieces``: bytes, or ints (holes of that length)."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.finished = False

    def recvFlags(self, nbytes, flags):
        assert flags == 2
        if not self.pieces:
            return b""
        head = self.pieces[0]
        if isinstance(head, int):
            return -3
        self.pieces.pop(0)
        return head

    def recvHole(self, flags):
        return self.pieces.pop(0)

    def finish(self):
        self.finished = True


class DestStream:
    def __init__(self):
        self.out = []
        self.finished = False

    def send(self, data):
        half = max(1, len(data) // 2)  # a short write: the copy must send the rest
        self.out.append(data[:half])
        return half

    def sendHole(self, length, flags):
        self.out.append(length)

    def finish(self):
        self.finished = True


class Vol:
    def __init__(self, stream_holder, role):
        self.holder, self.role = stream_holder, role

    def download(self, stream, offset, length, flags):
        assert (offset, length, flags) == (0, 0, 4)

    def upload(self, stream, offset, length, flags):
        assert (offset, length, flags) == (0, 0, 8)


class NoVolume(RuntimeError):
    def get_error_code(self):
        return 50


class Pool:
    def __init__(self, conn):
        self.conn = conn

    def refresh(self, flags):
        self.conn.calls.append("refresh")

    def destroy(self):
        self.conn.calls.append("destroy")
        self.conn.pooled = False


class Conn:
    """A host whose image is in a pool (``pooled``) or in none: then a transient pool is made."""

    def __init__(self, stream, pooled=True):
        self.stream, self.pooled, self.calls = stream, pooled, []

    def storageVolLookupByPath(self, path):
        if not self.pooled:
            raise NoVolume("Storage volume not found: no storage vol with matching path '%s'" % path)
        return Vol(self, path)

    def listAllStoragePools(self, flags):
        return []

    def storagePoolCreateXML(self, xml, flags):
        assert "<target><path>/var/lib/libvirt/images</path></target>" in xml and flags == 0
        self.calls.append("create")
        self.pooled = True
        return Pool(self)

    def newStream(self, flags):
        return self.stream


def test_copy_volume_sends_data_and_recreates_holes():
    src = SourceStream([b"abcd", 1 << 20, b"xy", 4096])
    dst = DestStream()
    lv = types.SimpleNamespace(VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM=4, VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM=8,
                               VIR_STREAM_RECV_STOP_AT_HOLE=2, VIR_ERR_NO_STORAGE_VOL=50, libvirtError=NoVolume,
                               VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE=2)
    dconn = Conn(dst, pooled=False)  # an image outside every pool of the destination
    got = c.copy_volume(Conn(src), dconn, "/var/lib/libvirt/images/vm1.raw", "hostb", "hosta", lv, FakeClock())
    assert (got["data_bytes"], got["hole_bytes"], got["warnings"]) == (6, (1 << 20) + 4096, [])
    assert dconn.calls == ["create", "destroy"]  # a transient pool for the copy, stopped after it
    assert b"".join(x for x in dst.out if isinstance(x, bytes)) == b"abcdxy"
    assert [x for x in dst.out if isinstance(x, int)] == [1 << 20, 4096]
    assert src.finished and dst.finished


# ------------------------------------------------------------------------------- the summary

def test_summary_of_a_cold_move():
    result = {"mode": "cold", "state": "migrated", "changed": True, "forced": False,
              "stats": {"time_ms": 21400, "downtime_ms": 21400, "shutdown_ms": 2100, "copy_ms": 3200,
                        "start_ms": 400, "disk_bytes": 20 * GIB, "disk_allocated_bytes": 16 * 1024 ** 2,
                        "memory_bytes": 0}}
    s = _report.migration_summary("vm1", "hostb", "hosta", result, {}, [])
    assert s["mode"] == "cold" and s["flags"] is None and s["downtime_ms"] == 21400
    assert s["lines"][0] == ("vm1 moved COLD hostb -> hosta in 21.4 s, downtime 21400 ms: from the ACPI shutdown "
                             "request until it ran on the destination: shutdown 2.1 s, disk copy 3.2 s, start 0.4 s; "
                             "its OS booted after that.")
    assert s["lines"][1].startswith("moved: no memory (cold move), disks 16.0 MiB of data")


def test_summary_of_a_planned_cold_move():
    result = {"mode": "cold", "state": "planned", "changed": True, "plan": ["shut vm1 down", "copy vda"]}
    s = _report.migration_summary("vm1", "hostb", "hosta", result, {}, [], check_mode=True)
    assert s["lines"][0] == "PLAN (check mode): vm1 would move COLD hostb -> hosta: shut vm1 down; copy vda."


def test_chain_refusal_names_each_chained_disk_and_the_fix():
    flat = {"target": "vda", "path": "/img/vm1.raw", "backing_file": None, "backing": []}
    overlay = {"target": "vdb", "path": "/img/vm1-data.qcow2", "backing_file": "/img/base.qcow2",
               "backing": [{"path": "/img/base.qcow2"}]}
    listed_only = {"target": "vdc", "path": "/img/vm1-c.qcow2", "backing": [{"path": "/img/base-c.qcow2"}]}
    assert c.chain_refusal([flat]) is None
    assert c.chain_refusal([]) is None
    one = c.chain_refusal([flat, overlay])
    assert "vdb (/img/vm1-data.qcow2, backed by /img/base.qcow2) has a backing chain" in one
    assert "virsh blockpull DOMAIN TARGET --wait" in one and "vda" not in one
    two = c.chain_refusal([overlay, listed_only])
    assert "vdc (/img/vm1-c.qcow2, backed by /img/base-c.qcow2)" in two and " have a backing chain" in two


def test_nvram_warning_says_the_variables_are_not_carried():
    xml = ("<domain type='qemu'><name>vm1</name><memory unit='MiB'>64</memory><os><type>hvm</type>"
           "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>"
           "<nvram>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram></os></domain>")
    text = c.nvram_warning("vm1", xml, "hostb")
    assert "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd" in text and "does not copy" in text and "hostb" in text
    assert c.nvram_warning("vm1", xml.replace("<nvram>/var/lib/libvirt/qemu/nvram/vm1_VARS.fd</nvram>", ""), "hostb") is None
