"""Issue 13 item 3, lab part: a guest changed between the pre-flight and the move is refused by
the migrate module before anything changes.

The pre-flight module runs on hosta against hostb and returns what it checked (``checked``);
then a disk of the running migratetest2 is resized with virsh, and the migrate module, given
``expect_disks``/``expect_cpu`` from that report as the migrate_guest role passes them, must fail
naming the disk, with the guest still running on hosta and nothing of it on hostb.

A hot-plugged disk (the other change of the copy set) cannot be staged on the lab guest: its
'pc' machine has no ACPI, so QEMU refuses ``device_add`` ("Bus 'pci.0' does not support
hotplugging"); the unit tests (test_safety.py) cover it.
"""

from __future__ import annotations

from conftest import adhoc_module, lab, lab_cmd, run_module

GUEST = lab.GUEST
ADDR = lab.HOSTS


def _checked(ansible_adhoc) -> dict:
    res = adhoc_module(ansible_adhoc, "hosta", "kvmops.migration.preflight", {
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


def _migrate(ansible_adhoc, checked: dict, check_mode: bool = False) -> dict:
    """The migrate module on hosta with the pre-flight's ``checked``: through pytest-ansible, or
    in check mode through ansible-playbook (``run_module``), which pytest-ansible cannot do."""
    args = {"domain": GUEST, "dest_host": ADDR["hostb"], "expect_disks": checked["disks"], "expect_cpu": checked["cpu"]}
    if check_mode:
        return run_module("hosta", "kvmops.migration.migrate", args, check_mode=True)
    return adhoc_module(ansible_adhoc, "hosta", "kvmops.migration.migrate", args)


def test_resized_disk_after_the_preflight_is_refused(guest_on_hosta, ansible_adhoc):
    checked = _checked(ansible_adhoc)
    disk = checked["disks"][-1]
    bigger = int(disk["virtual_size"]) + 64 * 1024 * 1024
    lab.in_host("hosta", ["virsh", "blockresize", GUEST, disk["target"], "%dB" % bigger])
    try:
        res = _migrate(ansible_adhoc, checked)
        assert res.get("failed"), res
        assert "disk %s was resized from %d to %d bytes" % (disk["target"], disk["virtual_size"], bigger) in res["msg"]
        _assert_untouched()
    finally:
        _recreate()


def test_unchanged_guest_passes_the_comparison_in_check_mode(guest_on_hosta, ansible_adhoc):
    res = _migrate(ansible_adhoc, _checked(ansible_adhoc), check_mode=True)
    assert not res.get("failed"), res.get("msg")
    assert res["state"] == "planned"


def _recreate() -> None:
    """A fresh guest on hosta for the next test (the resize undone)."""
    lab_cmd("guest", "--recreate", "--wait")
