"""Issue 6, lab part: the pre-flight on the real lab, with the lab broken on purpose. Each break
must give its exact finding (check, status, host, a message naming the thing), and the pre-flight
must change nothing on either host."""

from __future__ import annotations

import contextlib
import os


import proof
from conftest import adhoc_module, lab

GUEST = lab.GUEST
DEST = "hostb"


def _dest_facts(ansible_adhoc) -> dict:
    """What the role hands the pre-flight about the destination: host_info with ``guest`` on
    the source gives the guest's disks and the other files it needs, host_info with ``paths``
    on the destination reads them there with its filesystems, interfaces and manifest (the
    modules called through pytest-ansible's ``ansible_adhoc``, as is the pre-flight)."""
    src = adhoc_module(ansible_adhoc, "hosta", "kvmops.migration.host_info", {"guest": GUEST, "domains": False})
    assert src.get("guest_disks") and src.get("guest_error") is None, src.get("msg") or src.get("guest_error")
    paths = [d["path"] for d in src["guest_disks"] if d.get("path")] + src["guest_paths"]
    dest = adhoc_module(ansible_adhoc, DEST, "kvmops.migration.host_info", {"domains": False, "paths": paths})
    return {"dest_disks": dest["paths"], "dest_mounts": dest["mounts"],
            "dest_interfaces": dest["interfaces"], "dest_manifest": dest["manifest"]}


def _preflight(ansible_adhoc, **extra) -> dict:
    args = {"domain": GUEST, "dest_host": lab.HOSTS[DEST], "fail_on_error": False}
    args.update(extra)
    res = adhoc_module(ansible_adhoc, "hosta", "kvmops.migration.preflight", args)
    assert "report" in res, res.get("msg")
    return res


def _findings(res: dict, status: str) -> list[dict]:
    return [f for f in res["report"]["findings"] if f["status"] == status]


def _one(res: dict, check: str, status: str = "error") -> dict:
    found = [f for f in res["report"]["findings"] if f["check"] == check and f["status"] == status]
    assert found, "no %s finding %s in:\n%s" % (status, check, "\n".join(
        "%s %s %s: %s" % (f["status"], f["check"], f["host"], f["msg"]) for f in res["report"]["findings"]))
    return found[0]


@contextlib.contextmanager
def unchanged():
    before = proof.host_snapshot()
    yield
    assert proof.host_snapshot() == before, "the pre-flight changed something on a host"


def test_clean_lab_has_no_error(guest_on_hosta, ansible_adhoc):
    with unchanged():
        res = _preflight(ansible_adhoc, **_dest_facts(ansible_adhoc))
    errors = _findings(res, "error")
    assert res["report"]["ok"] is True, errors
    checks = {f["check"] for f in res["report"]["findings"]}
    # every class of check ran
    for name in ("cpu", "machine", "memory", "network", "free_space", "distinct_hosts", "destination_domain"):
        assert any(name in c for c in checks), (name, sorted(checks))


def test_missing_bridge_on_destination(guest_on_hosta, ansible_adhoc):
    # hostb's own address lives on br-vm: move it to eth0 first, so that hostb stays reachable
    # and only the guests' bridge is missing
    addr = "%s/%d" % (lab.HOSTS[DEST], lab.PREFIX)
    lab.in_host(DEST, "ip link set eth0 nomaster && ip addr add %s dev eth0 && ip link del br-vm" % addr)
    try:
        with unchanged():
            res = _preflight(ansible_adhoc, **_dest_facts(ansible_adhoc))
        f = _one(res, "network")
        assert "br-vm" in f["msg"] and "52:54:00:6b:01:10" in f["msg"], f["msg"]
        assert res["report"]["ok"] is False
    finally:
        lab.in_host(DEST, ["ip", "addr", "del", addr, "dev", "eth0"], check=False)
        lab.ensure_netns(DEST, lab.HOSTS[DEST], bridge_inside=True)
        lab.wait_for(lambda: lab.ssh_ok(lab.HOSTS[DEST]), "hostb back on the lab link", 30)


def test_destination_filesystem_too_small(guest_on_hosta, ansible_adhoc):
    img = lab.hdir(DEST, "small-fs.img")
    with open(img, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    lab.run(["mkfs.ext4", "-q", "-F", img])
    lab.in_host(DEST, ["mount", "-o", "loop", img, "/var/lib/libvirt/images"])
    try:
        with unchanged():
            res = _preflight(ansible_adhoc, **_dest_facts(ansible_adhoc))
        f = _one(res, "free_space")
        assert "/var/lib/libvirt/images" in f["msg"], f["msg"]
        assert f["values"]["needed_bytes"] > f["values"]["free_bytes"], f["values"]
    finally:
        lab.in_host(DEST, ["umount", "/var/lib/libvirt/images"])
        os.unlink(img)


def test_conflicting_domain_on_destination(guest_on_hosta, ansible_adhoc):
    xml = lab.guest_xml("qemu")
    path = lab.hdir(DEST, "conflict.xml")
    with open(path, "w") as f:
        f.write(xml)  # same name, another UUID (the lab's XML has none: libvirt makes a new one)
    lab.in_host(DEST, ["virsh", "-q", "define", path], capture=True)
    try:
        with unchanged():
            res = _preflight(ansible_adhoc, **_dest_facts(ansible_adhoc))
        f = _one(res, "destination_domain")
        assert GUEST in f["msg"], f["msg"]
    finally:
        lab.in_host(DEST, ["virsh", "-q", "undefine", GUEST], capture=True)
        os.unlink(path)


def test_destination_libvirtd_stopped(guest_on_hosta, ansible_adhoc):
    before = proof.host_snapshot()
    lab.stop_libvirtd(DEST)  # systemctl stop, its sockets too
    try:
        res = _preflight(ansible_adhoc)
        f = _one(res, "dest_connection")
        assert lab.HOSTS[DEST] in f["msg"], f["msg"]
        assert res["report"]["ok"] is False
    finally:
        lab.start_daemons(DEST)
    assert proof.host_snapshot() == before
