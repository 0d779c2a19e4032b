"""Issue 8, part 5: the cases of ../shared/cases/CASES.md that can be staged in the lab, each
through the main job (playbooks/migrate.yml) as an operator runs it. Each must fail with a clear
error naming the thing and the fix, before anything is changed: a snapshot of both hosts
(domains, their XML, image files with sizes and allocation, the manifest) is identical before and
after. Cases only the unit tests reach (C02 incremental, C04 LVM, C06 vendor of a running guest,
C07, C09, C13 media) are listed in the README's test section."""

from __future__ import annotations

import os
import re

import pytest
import yaml

import proof
from conftest import ROOT, ansible_playbook, lab

GUEST = lab.GUEST
DEST = "hostb"
IMAGE = "/var/lib/libvirt/images/%s.raw" % GUEST


class Stage:
    """Set the lab up for one case and put it back afterwards."""

    def up(self) -> list[str]:
        """Break the lab; return extra ansible-playbook arguments."""
        return []

    def down(self) -> None:
        pass


class StaleImage(Stage):
    """C03: an image at the guest's path on hostb, not made by us, 1 GiB instead of 10 GiB."""

    def up(self):
        path = lab.hdir(DEST, "var-lib-libvirt", "images", os.path.basename(IMAGE))
        with open(path, "wb") as f:
            f.truncate(1024 ** 3)
        return []

    def down(self):
        os.unlink(lab.hdir(DEST, "var-lib-libvirt", "images", os.path.basename(IMAGE)))


class SmallFilesystem(Stage):
    """C05: hostb's image directory on a 64 MiB filesystem."""

    img = lab.hdir(DEST, "cases-small-fs.img")

    def up(self):
        with open(self.img, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        lab.run(["mkfs.ext4", "-q", "-F", self.img])
        lab.in_host(DEST, ["mount", "-o", "loop", self.img, "/var/lib/libvirt/images"])
        return []

    def down(self):
        lab.in_host(DEST, ["umount", "/var/lib/libvirt/images"], check=False)
        os.unlink(self.img)


class MissingBridge(Stage):
    """C08: br-vm (the guest's eth1 bridge) missing on hostb; hostb keeps its address on eth0."""

    addr = "%s/%d" % (lab.HOSTS[DEST], lab.PREFIX)

    def up(self):
        lab.in_host(DEST, "ip link set eth0 nomaster && ip addr add %s dev eth0 && ip link del br-vm" % self.addr)
        return []

    def down(self):
        lab.in_host(DEST, ["ip", "addr", "del", self.addr, "dev", "eth0"], check=False)
        lab.ensure_netns(DEST, lab.HOSTS[DEST], bridge_inside=True)
        lab.wait_for(lambda: lab.ssh_ok(lab.HOSTS[DEST]), "hostb back on the lab link", 30)


class SameMachine(Stage):
    """C10: the destination is the source under a second inventory name (hosta2 -> 198.18.0.1)."""

    inventory = os.path.join(ROOT, ".cache", "cases-inventory.yml")

    def up(self):
        with open(os.path.join(lab.STATE, "inventory.yml")) as f:
            inv = yaml.safe_load(f)
        hosts = inv["all"]["children"]["kvm_hosts"]["hosts"]
        hosts["hosta2"] = dict(hosts["hosta"])
        with open(self.inventory, "w") as f:
            yaml.safe_dump(inv, f)
        return ["-i", self.inventory, "-e", "dest=hosta2"]

    def down(self):
        os.unlink(self.inventory)


class ConflictingDomain(Stage):
    """C11 a: a domain of the same name, another UUID, defined (inactive) on hostb."""

    path = lab.hdir(DEST, "cases-conflict.xml")

    def up(self):
        with open(self.path, "w") as f:
            f.write(lab.guest_xml("qemu"))  # no UUID in the lab's XML: libvirt makes a new one
        lab.in_host(DEST, ["virsh", "-q", "define", self.path], capture=True)
        return []

    def down(self):
        lab.in_host(DEST, ["virsh", "-q", "undefine", GUEST], capture=True)
        os.unlink(self.path)


class DeclaredSharedNotShared(Stage):
    """C12: vdb declared shared (not copied) while it is a local file on hosta."""

    def up(self):
        return ["-e", '{"migrate_guest_shared_disks": ["vdb"]}']


CASES = {
    # id: (stage, words the error must contain)
    "C03_stale_image": (StaleImage, [IMAGE, "1073741824 bytes", "10737418240 bytes"]),
    "C05_too_little_space": (SmallFilesystem, ["/var/lib/libvirt/images", "free"]),
    "C08_missing_bridge": (MissingBridge, ["br-vm", "52:54:00:6b:01:10"]),
    "C10_same_machine": (SameMachine, ["hosta, hosta2", "look like one machine", "remove the extra entry"]),
    "C11a_conflicting_domain": (ConflictingDomain, [GUEST, "hostb", "UUID"]),
    "C12_declared_shared_not_shared": (DeclaredSharedNotShared, ["vdb", "shared"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_case_fails_clearly_and_changes_nothing(guest_on_hosta, case):
    stage_cls, words = CASES[case]
    stage = stage_cls()
    extra = stage.up()
    try:
        before = proof.host_snapshot()
        args = ["playbooks/migrate.yml", "-e", "vm=%s" % GUEST] + extra
        if not any(a.startswith("dest=") for a in extra):
            args += ["-e", "dest=%s" % DEST]
        res = ansible_playbook(*args)
        text = re.sub(r"\s+", " ", res.stdout)
        assert res.returncode != 0, res.stdout[-3000:]
        for word in words:
            assert word in text, (word, text[-3000:])
        assert "Traceback" not in res.stdout + res.stderr
        assert proof.host_snapshot() == before
        assert proof.domain_state("hosta") == "running"
    finally:
        stage.down()
