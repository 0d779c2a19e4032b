"""Issue 13 item 3, lab part: a guest changed between the pre-flight and the move is refused by
the migrate module before anything changes.

The pre-flight module runs on hosta against hostb and returns what it checked (``checked``);
then a disk is hot-plugged into (or resized in) the running migratetest2 with virsh, and the
migrate module, given ``expect_disks``/``expect_cpu`` from that report as the migrate_guest role
passes them, must fail naming the disk, with the guest still running on hosta and nothing of it
on hostb. The module fixture recreates the guest afterwards (a hot-plugged disk cannot be
detached reliably from the busybox guest).

NOT RUN YET: written while another engineer held the one lab of this machine.
"""

from __future__ import annotations

import pytest

from conftest import lab, lab_cmd, run_module

GUEST = lab.GUEST
ADDR = lab.HOSTS
HOTPLUG = "/var/lib/libvirt/images/%s-hotplug.raw" % GUEST


def _checked() -> dict:
    res = run_module("hosta", "kvmops.migration.preflight", {
        "domain": GUEST, "dest_host": ADDR["hostb"], "fail_on_error": False})
    assert "checked" in res, res.get("msg")
    assert res["checked"]["disks"] and res["checked"]["cpu"], res["checked"]
    return res["checked"]


def _assert_untouched() -> None:
    state = lab.in_host_out("hosta", ["virsh", "domstate", GUEST]).strip()
    assert state == "running", state
    listed = lab.in_host_out("hostb", ["virsh", "list", "--all", "--name"])
    assert GUEST not in listed.split(), listed
    job = lab.in_host_out("hosta", ["virsh", "domjobinfo", GUEST], check=False)
    assert "None" in job or not job.strip(), job


def _migrate(checked: dict, check_mode: bool = False) -> dict:
    return run_module("hosta", "kvmops.migration.migrate", {
        "domain": GUEST, "dest_host": ADDR["hostb"],
        "expect_disks": checked["disks"], "expect_cpu": checked["cpu"]}, check_mode=check_mode)


@pytest.mark.parametrize("check_mode", [True, False], ids=["check-mode", "run"])
def test_hot_plugged_disk_after_the_preflight_is_refused(guest_on_hosta, check_mode):
    checked = _checked()
    targets = [d["target"] for d in checked["disks"]]
    new = next(t for t in ("vdc", "vdd", "vde") if t not in targets)
    lab.in_host("hosta", ["qemu-img", "create", "-q", "-f", "raw", HOTPLUG, "64M"])
    lab.in_host("hosta", ["virsh", "attach-disk", GUEST, HOTPLUG, new, "--live",
                          "--driver", "qemu", "--subdriver", "raw", "--targetbus", "virtio"])
    try:
        res = _migrate(checked, check_mode=check_mode)
        assert res.get("failed"), res
        assert "changed since the pre-flight" in res["msg"] and "disk %s" % new in res["msg"], res["msg"]
        assert "was added" in res["msg"] and "run the playbook again" in res["msg"]
        _assert_untouched()
    finally:
        _recreate()


def test_resized_disk_after_the_preflight_is_refused(guest_on_hosta):
    checked = _checked()
    disk = checked["disks"][-1]
    bigger = int(disk["virtual_size"]) + 64 * 1024 * 1024
    lab.in_host("hosta", ["virsh", "blockresize", GUEST, disk["target"], "%dB" % bigger])
    try:
        res = _migrate(checked)
        assert res.get("failed"), res
        assert "disk %s was resized from %d to %d bytes" % (disk["target"], disk["virtual_size"], bigger) in res["msg"]
        _assert_untouched()
    finally:
        _recreate()


def test_unchanged_guest_passes_the_comparison_in_check_mode(guest_on_hosta):
    res = _migrate(_checked(), check_mode=True)
    assert not res.get("failed"), res.get("msg")
    assert res["state"] == "planned"


def _recreate() -> None:
    """A fresh guest on hosta for the next test (the hot-plugged disk or the resize undone)."""
    lab_cmd("guest", "--recreate", "--wait")
    lab.in_host("hosta", ["rm", "-f", HOTPLUG])
