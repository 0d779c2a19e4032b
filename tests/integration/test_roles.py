"""Issue 7 in the lab: the playbooks as a user runs them.

prepare_hosts.yml is idempotent on both hosts; migrate.yml moves migratetest2 to the best other
host and back (-e dest), a rerun changes nothing, --check changes nothing on either host;
evacuate.yml empties hosta of two guests. The lab is left as found: migratetest2 back on its
host, the second guest and the test pool removed."""

from __future__ import annotations

import os
import re

import pytest

from conftest import ROOT, ansible_playbook, lab, lab_cmd, run_module

GUEST = lab.GUEST
EVAC = "evactest"
LAB_VARS = "@" + os.path.join(ROOT, "tests", "integration", "lab_vars.yml")
TEST_POOL = "kvmops-test"


def recap(res) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host, summed over the plays."""
    out: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                         res.stdout, re.M):
        host = out.setdefault(m.group(1), {"ok": 0, "changed": 0, "unreachable": 0, "failed": 0})
        for key, val in zip(("ok", "changed", "unreachable", "failed"), m.groups()[1:]):
            host[key] += int(val)
    return out


def changed(res) -> int:
    return sum(h["changed"] for h in recap(res).values())


def play(*args, timeout=900):
    res = ansible_playbook(*args, timeout=timeout)
    assert res.returncode == 0, "ansible-playbook %s failed (%d):\n%s\n%s" % (
        " ".join(args), res.returncode, res.stdout[-8000:], res.stderr[-3000:])
    return res


def where(name: str = GUEST) -> dict[str, str]:
    return lab.domain_hosts(name)


def image_files(host: str) -> set[str]:
    return set(os.listdir(lab.hdir(host, "var-lib-libvirt", "images")))


def other(host: str) -> str:
    return next(h for h in lab.HOSTS if h != host)


def drop_old_images(host: str, name: str = GUEST) -> None:
    """The operator's step after a verified move: the old images stay on the former source (kvmops
    never deletes a disk it did not create) and block a move back to the same paths. Images
    kvmops created are removed with its module (manifest too), others with rm."""
    assert host not in where(name), "%s is still defined on %s" % (name, host)
    for ext in ("raw", "swap"):
        path = "/var/lib/libvirt/images/%s.%s" % (name, ext)
        if os.path.exists(lab.hdir(host, "var-lib-libvirt", "images", "%s.%s" % (name, ext))):
            res = run_module(host, "kvmops.migration.disk_image", {"path": path, "state": "absent"})
            if res.get("failed"):
                lab.in_host(host, ["rm", "-f", path], check=False, capture=True)


def ensure_on(host: str) -> None:
    """migratetest2 running on ``host`` (moved there with the playbook when elsewhere)."""
    now = where()
    assert list(now.values()) == ["running"], now
    if host not in now:
        drop_old_images(host)
        play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % host)
    assert where() == {host: "running"}


@pytest.fixture(scope="module")
def lab_as_found(lab_up):
    """Leave the demo guest where it was, and none of its images on the other host."""
    home = list(where())[0]
    yield
    ensure_on(home)
    drop_old_images(other(home))


def test_prepare_hosts_is_idempotent(lab_up):
    try:
        first = play("playbooks/prepare_hosts.yml", "-e", LAB_VARS)
        assert recap(first)["hosta"]["failed"] == 0
        second = play("playbooks/prepare_hosts.yml", "-e", LAB_VARS)
        assert changed(second) == 0, second.stdout[-6000:]
        check = play("playbooks/prepare_hosts.yml", "-e", LAB_VARS, "--check")
        assert changed(check) == 0, check.stdout[-6000:]
        for host in lab.HOSTS:
            pools = lab.in_host_out(host, ["virsh", "-q", "pool-list", "--autostart", "--name"])
            assert TEST_POOL in pools.split()
            assert "default" in lab.in_host_out(host, ["virsh", "-q", "net-list", "--name"]).split()
    finally:
        for host in lab.HOSTS:
            lab.in_host(host, ["virsh", "-q", "pool-destroy", TEST_POOL], check=False, capture=True)
            lab.in_host(host, ["virsh", "-q", "pool-undefine", TEST_POOL], check=False, capture=True)
            lab.in_host(host, ["rmdir", "/var/lib/libvirt/kvmops-test-pool"], check=False, capture=True)


def test_validation_messages(lab_up):
    res = ansible_playbook("playbooks/migrate.yml")
    assert res.returncode != 0 and "No guest given: name the guest to move with -e vm=NAME" in res.stdout
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=nosuchhost")
    assert res.returncode != 0 and "Destination nosuchhost is not a host of group kvm_hosts" in res.stdout
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=no-such-guest")
    assert res.returncode != 0 and "Guest no-such-guest is not defined on any host of group kvm_hosts" in res.stdout


def test_migrate_check_mode_changes_nothing(lab_as_found):
    src = list(where())[0]
    before = {h: image_files(h) for h in lab.HOSTS}
    res = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "--check")
    assert "PLAN (check mode): %s would move %s -> %s" % (GUEST, src, other(src)) in res.stdout
    assert "Pre-flight passed" in res.stdout
    assert where() == {src: "running"}
    assert {h: image_files(h) for h in lab.HOSTS} == before


def test_migrate_there_and_back_and_rerun_changes_nothing(lab_as_found):
    src = list(where())[0]
    dst = other(src)
    first = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST)
    assert where() == {dst: "running"}
    assert "%s moved %s -> %s in" % (GUEST, src, dst) in first.stdout
    assert re.search(r"%s \[%s\]: (storage|memory|setup)\s+[\d.]+%%" % (GUEST, src), first.stdout), \
        "no progress line during the move"
    assert "images created on %s: /var/lib/libvirt/images/%s.raw" % (dst, GUEST) in first.stdout
    lab.wait_guest_ping(timeout=30)
    again = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % dst)
    assert changed(again) == 0 and "%s already runs on %s: nothing to do." % (GUEST, dst) in again.stdout
    # the old images stay on the source; moving back is refused by the pre-flight until the
    # operator removes them (they are not this collection's to delete)
    refused = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % src)
    assert refused.returncode != 0 and re.search(r"kvmops did not create it|not created by kvmops.migration",
                                                 refused.stdout), refused.stdout[-4000:]
    assert where() == {dst: "running"}
    drop_old_images(src)
    back = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % src)
    assert where() == {src: "running"} and "%s moved %s -> %s in" % (GUEST, dst, src) in back.stdout
    again = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % src)
    assert changed(again) == 0
    lab.wait_guest_ping(timeout=30)


def test_evacuate_hosta_with_two_guests(lab_as_found):
    ensure_on("hosta")
    drop_old_images("hostb")
    lab_cmd("guest", "--name", EVAC, "--ip", "198.18.0.11", "--mac", "0x11", "--wait")
    try:
        assert where(EVAC) == {"hosta": "running"}
        res = play("playbooks/evacuate.yml", "-e", "host=hosta", timeout=1500)
        assert "Evacuation of hosta: 2 moved, 0 failed" in res.stdout, res.stdout[-6000:]
        assert where(GUEST) == {"hostb": "running"} and where(EVAC) == {"hostb": "running"}
        lab.wait_guest_ping(timeout=30)
        lab.wait_guest_ping(ip="198.18.0.11", timeout=30)
    finally:
        for host in where(EVAC):
            lab.in_host(host, ["virsh", "-q", "destroy", EVAC], check=False, capture=True)
            lab.in_host(host, ["virsh", "-q", "undefine", EVAC], check=False, capture=True)
        for host in lab.HOSTS:
            drop_old_images(host, EVAC)
