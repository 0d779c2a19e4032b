"""Issue 13 item 1, lab part: a raw guest disk whose first sector holds a qcow2 header (as a
guest may write one), naming a 100 GiB virtual size and a host file (/etc/shadow) as its backing
file. Moved by playbooks/migrate.yml, it must stay what the domain XML declares: a raw disk of
its own size. The pre-flight and the plan (check mode) read it as raw and change nothing; the
move creates a raw 10 GiB image on hostb (not a 100 GiB qcow2 one) and copies the guest's
bytes, the fake header included, as data."""

from __future__ import annotations

import json
import os
import re
import subprocess

import proof
from conftest import ansible_playbook, lab

GUEST = lab.GUEST
SWAP = "%s.swap" % GUEST  # the guest's second raw disk (vdb), 10 GiB, empty
HEADER_BYTES = 64 * 1024


def forged_header(tmpdir: str) -> bytes:
    """The first 64 KiB of a qcow2 image of 100 GiB backed by /etc/shadow (raw)."""
    path = os.path.join(tmpdir, "forged.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", path, "100G"],
                   check=True)
    with open(path, "rb") as f:
        data = f.read(HEADER_BYTES)
    os.unlink(path)
    assert data[:4] == b"QFI\xfb" and b"/etc/shadow" in data
    return data


def test_raw_disk_with_a_guest_written_qcow2_header_moves_as_raw(guest_on_hosta, tmp_path):
    header = forged_header(str(tmp_path))
    src = lab.hdir("hosta", "var-lib-libvirt", "images", SWAP)
    size = os.path.getsize(src)
    with open(src, "r+b") as f:  # what the guest could write to sector 0 of vdb
        f.write(header)
    # a probing qemu-img (no -f) would believe it: the trap is real
    probed = json.loads(lab.in_host_out("hosta", ["qemu-img", "info", "-U", "--output=json",
                                                  "/var/lib/libvirt/images/%s" % SWAP]))
    assert probed["format"] == "qcow2" and probed["virtual-size"] == 100 * 1024 ** 3, probed

    before = proof.host_snapshot()
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=hostb", "--check")
    assert res.returncode == 0, res.stdout[-4000:]
    assert proof.host_snapshot() == before
    assert "/etc/shadow" not in res.stdout
    assert "107374182400" not in res.stdout  # the forged virtual size appears nowhere in the plan

    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=hostb")
    assert res.returncode == 0, res.stdout[-4000:]
    assert "Traceback" not in res.stdout + res.stderr
    assert proof.domain_state("hostb") == "running" and proof.domain_state("hosta") is None
    dst = lab.hdir("hostb", "var-lib-libvirt", "images", SWAP)
    assert os.path.getsize(dst) == size  # raw, the source's exact size: not a qcow2 of 100 GiB
    with open(dst, "rb") as f:
        assert f.read(HEADER_BYTES) == header  # the guest's bytes, copied as data
    xml = lab.in_host_out("hostb", ["virsh", "dumpxml", GUEST])
    vdb = re.search(r"<disk[^>]*>(?:(?!</disk>).)*%s(?:(?!</disk>).)*</disk>" % re.escape(SWAP), xml, re.S).group(0)
    assert "type='raw'" in vdb and "backingStore" not in vdb.replace("<backingStore/>", ""), vdb
    manifest = lab.hdir("hostb", "var-lib-kvmops-migration", "manifest.json")
    with open(manifest) as f:
        entry = [e for e in json.load(f)["entries"] if e["path"].endswith(SWAP)][0]
    assert entry.get("format") == "raw" and "/etc/shadow" not in json.dumps(entry), entry
