"""Issue 14 item 4, case C07 for real: hosta runs Debian 12 (libvirt 9.0, QEMU 7.2, from the
stock release), hostb Debian 13 (libvirt 11.3, QEMU 10.0). Both are prepared by
prepare_hosts.yml. A move from the older to the newer host works; a move the other way is
refused by the pre-flight before anything changes, naming the machine type the older host lacks
and the fix. The lab is left as the other tests expect it: both hosts on Debian 13, prepared,
the demo guest on hosta."""

from __future__ import annotations

import re

import pytest

import proof
from conftest import ansible_playbook, lab, lab_cmd

OLD, NEW = "hosta", "hostb"
GUEST = lab.GUEST
BACK = "labnewer"  # a guest defined on the newer host, with its newest machine type


def debian_version(host: str) -> str:
    return lab.in_host_out(host, ["cat", "/etc/debian_version"])


def qemu_version(host: str) -> str:
    out = lab.in_host_out(host, ["virsh", "version"])
    return re.search(r"hypervisor: QEMU ([\d.]+)", out).group(1)


def play(*args: str):
    res = ansible_playbook(*args, timeout=1500)
    return res


@pytest.fixture(scope="module")
def mixed_lab():
    lab_cmd("up", "--mixed", "--no-guest", timeout=1500)  # hosta gets its Debian 12 disk
    res = play("playbooks/prepare_hosts.yml")
    assert res.returncode == 0, res.stdout[-8000:]
    yield
    lab_cmd("up", "--no-guest", timeout=1500)  # hosta gets its Debian 13 disk back, prepared as it was
    assert lab.suite_of(OLD) == lab.DEFAULT_SUITE
    # the Debian 13 disk still defines the demo guest as it was before the swap: a fresh guest
    lab_cmd("guest", "--recreate", "--wait")


def test_hosts_run_two_debian_releases(mixed_lab):
    assert debian_version(OLD).startswith("12."), debian_version(OLD)
    assert debian_version(NEW).startswith("13."), debian_version(NEW)
    old_q, new_q = qemu_version(OLD), qemu_version(NEW)
    assert int(old_q.split(".")[0]) < int(new_q.split(".")[0]), (old_q, new_q)
    print("hosta: Debian %s, QEMU %s; hostb: Debian %s, QEMU %s"
          % (debian_version(OLD), old_q, debian_version(NEW), new_q))


def test_move_from_debian_12_to_13_works(mixed_lab):
    lab_cmd("guest", "--recreate", "--wait", "--host", OLD)
    res = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % NEW)
    assert res.returncode == 0, res.stdout[-6000:]
    assert proof.domain_state(NEW) == "running" and proof.domain_state(OLD) is None
    lab.wait_guest_ping(timeout=60)


def test_move_from_debian_13_to_12_is_refused_before_anything_changes(mixed_lab):
    lab_cmd("guest", "--name", BACK, "--ip", "198.18.0.24", "--mac", "0x24", "--host", NEW,
            "--recreate", "--wait", "--written-mib", "16")
    try:
        machine = re.search(r"<type [^>]*machine='([^']+)'", lab.in_host_out(NEW, ["virsh", "dumpxml", BACK])).group(1)
        before = proof.host_snapshot()
        res = play("playbooks/migrate.yml", "-e", "vm=%s" % BACK, "-e", "dest=%s" % OLD)
        text = re.sub(r"\s+", " ", res.stdout)
        assert res.returncode != 0, res.stdout[-4000:]
        # names the machine type the older host lacks, and the fix
        assert "Machine type %s" % machine in text and "is not available on" in text, text[-4000:]
        assert "Install a QEMU that has it" in text, text[-4000:]
        assert "Traceback" not in res.stdout
        # nothing changed on either host: no image, no domain on hosta, the guest runs on hostb
        assert proof.host_snapshot() == before
        assert lab.domain_hosts(BACK) == {NEW: "running"}
    finally:
        lab.remove_guest(NEW, BACK)
        lab.remove_guest(OLD, BACK)
