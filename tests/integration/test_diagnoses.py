"""Issue 16, lab part (written without a lab run): each class of fault is staged on the real lab
and must give its exact finding, stop the run before anything is created, and leave both hosts
as they were.

- a firewall on hostb that rejects (REJECT, tcp-reset) or drops (DROP) the migration ports;
- a broken SSH trust from hosta to hostb: hostb's host key not pinned on hosta, hosta's key not
  authorised on hostb;
- the same directory seen by both hosts (a bind mount of one directory of the machine): reported
  shared, not copied, and libvirt's 'unsafe' refusal predicted until qemu.conf declares it;
- a post-copy move: the summary shows real duration, downtime and bytes;
- a file at the destination path that another guest of hostb uses: the advice names that guest
  and never says to remove the file (item 4).
"""

from __future__ import annotations

import contextlib
import os
import re

import proof
from conftest import adhoc_module, ansible_playbook, lab

GUEST = lab.GUEST
SRC, DEST = "hosta", "hostb"
PROBE_ID = "labdiag0probe001"


def _findings(res: dict, check: str) -> list[dict]:
    return [f for f in res["report"]["findings"] if f["check"] == check]


def _dump(res: dict) -> str:
    return "\n".join("%s %s %s: %s" % (f["status"], f["check"], f["host"], f["msg"])
                     for f in res.get("report", {}).get("findings", [])) or str(res.get("msg"))


def _guest_paths(ansible_adhoc, host: str = SRC, guest: str = GUEST) -> list[str]:
    src = adhoc_module(ansible_adhoc, host, "kvmops.migration.host_info", {"guest": guest, "domains": False})
    assert src.get("guest_disks"), src.get("msg") or src.get("guest_error")
    return [d["path"] for d in src["guest_disks"] if d.get("path")]


def _probe_and_preflight(ansible_adhoc, guest: str = GUEST, probe_ports=(49152, 49153), **extra) -> dict:
    """What the role does: preflight_dest on hostb, the pre-flight on hosta, markers removed (the
    modules called through pytest-ansible's ``ansible_adhoc``)."""
    paths = _guest_paths(ansible_adhoc, guest=guest)
    probe = adhoc_module(ansible_adhoc, DEST, "kvmops.migration.preflight_dest",
                         {"probe_id": PROBE_ID, "ports": list(probe_ports), "paths": paths})
    assert "probe" in probe, probe.get("msg")
    try:
        args = {"domain": guest, "dest_host": lab.HOSTS[DEST], "fail_on_error": False,
                "dest_probe": probe["probe"]}
        args.update(extra)
        res = adhoc_module(ansible_adhoc, SRC, "kvmops.migration.preflight", args)
        assert "report" in res, res.get("msg")
        return res
    finally:
        adhoc_module(ansible_adhoc, DEST, "kvmops.migration.preflight_dest",
                     {"probe_id": PROBE_ID, "state": "absent", "paths": paths})


def _no_marker_left(paths: list[str]) -> None:
    for directory in {os.path.dirname(p) for p in paths}:
        for host in (SRC, DEST):
            out = lab.in_host_out(host, "ls -A %s" % directory, check=False)
            assert ".kvmops-probe-" not in out, (host, directory, out)


@contextlib.contextmanager
def _firewall(target: str):
    """hostb drops or rejects TCP 49152-49215 from hosta (its own netfilter, as a host firewall
    in front of the role's own rules)."""
    verdict = "reject with tcp reset" if target == "REJECT" else "drop"
    rules = ("table inet kvmops_lab_block {\n chain input { type filter hook input priority -300; policy accept;\n"
             "  ip saddr %s tcp dport 49152-49215 %s; }\n}\n" % (lab.HOSTS[SRC], verdict))
    lab.in_host(DEST, ["nft", "-f", "-"], input=rules)
    try:
        yield
    finally:
        lab.in_host(DEST, ["nft", "delete", "table", "inet", "kvmops_lab_block"], check=False, capture=True)


def test_blocked_migration_ports_are_told_apart_and_stop_the_run(guest_on_hosta, ansible_adhoc):
    for target, state, words in (("REJECT", "closed", "REJECT rule"), ("DROP", "filtered", "a firewall drops it")):
        before = proof.host_snapshot()
        with _firewall(target):
            res = _probe_and_preflight(ansible_adhoc)
            ports = _findings(res, "data_port")
            assert ports and all(f["status"] == "error" and f["values"]["state"] == state for f in ports), _dump(res)
            assert all(words in f["msg"] and "kvm_host_firewall" in f["msg"] for f in ports), _dump(res)
            # accepted by the operator: a warning, the rest of the report unchanged
            res = _probe_and_preflight(ansible_adhoc, ports={"ignore_blocked": True})
            assert {f["status"] for f in _findings(res, "data_port")} == {"warning"}, _dump(res)
            # the role stops before creating anything on hostb
            run = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % DEST)
            assert run.returncode != 0 and "is %s" % state in run.stdout, run.stdout[-3000:]
        assert proof.host_snapshot() == before, "a blocked port left something behind (%s)" % target
    _no_marker_left(_guest_paths(ansible_adhoc))
    # open again: the listener answers
    res = _probe_and_preflight(ansible_adhoc)
    assert {f["values"]["state"] for f in _findings(res, "data_port")} == {"open"}, _dump(res)


@contextlib.contextmanager
def _moved_aside(host: str, path: str):
    lab.in_host(host, ["mv", path, path + ".kvmops-test"])
    try:
        yield
    finally:
        lab.in_host(host, ["mv", path + ".kvmops-test", path])


def test_broken_ssh_trust_names_the_kvm_host_task(guest_on_hosta, ansible_adhoc):
    cases = ((SRC, "/root/.ssh/known_hosts", "does not trust the SSH host key of %s" % lab.HOSTS[DEST],
              "Pin the other hypervisors' host keys"),
             (DEST, "/root/.ssh/authorized_keys", "refused the source's SSH key for user root",
              "Authorise the other hypervisors' keys"))
    for host, path, cause, task in cases:
        before = proof.host_snapshot()
        with _moved_aside(host, path):
            res = adhoc_module(ansible_adhoc, SRC, "kvmops.migration.preflight",
                               {"domain": GUEST, "dest_host": lab.HOSTS[DEST], "fail_on_error": False})
        f = [x for x in _findings(res, "dest_connection") if x["status"] == "error"]
        assert f and cause in f[0]["msg"] and task in f[0]["msg"], _dump(res)
        assert "check that libvirtd runs there" not in f[0]["msg"]
        assert proof.host_snapshot() == before


def test_libvirtd_down_on_the_destination_names_the_service(guest_on_hosta, ansible_adhoc):
    lab.stop_libvirtd(DEST)  # systemctl stop, its sockets too
    try:
        res = adhoc_module(ansible_adhoc, SRC, "kvmops.migration.preflight",
                           {"domain": GUEST, "dest_host": lab.HOSTS[DEST], "fail_on_error": False})
    finally:
        lab.start_daemons(DEST)
    f = [x for x in _findings(res, "dest_connection") if x["status"] == "error"]
    assert f and "libvirt does not run on %s" % lab.HOSTS[DEST] in f[0]["msg"], _dump(res)


SHARED = lab.SHARED_DIR  # one directory of the machine, bound into both hosts at this path
SHARED_GUEST = "labshared"


@contextlib.contextmanager
def _shared_guest():
    """A guest on hosta whose two disks are in SHARED, one directory of the machine that the lab
    binds at the same path into both hosts (as NFS or a cluster filesystem would be)."""
    xml = lab.guest_xml("qemu", name=SHARED_GUEST, ip="198.18.0.22", mac_suffix=0x22)
    xml = re.sub(r"/var/lib/libvirt/images/%s" % SHARED_GUEST, "%s/%s" % (SHARED, SHARED_GUEST), xml)
    assert SHARED in xml
    path = lab.hdir(SRC, "%s.xml" % SHARED_GUEST)
    lab.write(path, xml)
    for name in re.findall(r"<source file='([^']+)'", xml):
        if name.startswith(SHARED):
            lab.in_host(SRC, ["truncate", "-s", "64M", name])
    try:
        lab.in_host(SRC, ["virsh", "-q", "define", path], capture=True)
        lab.in_host(SRC, ["virsh", "-q", "start", SHARED_GUEST], capture=True)
        yield
    finally:
        for host in (SRC, DEST):
            lab.in_host(host, ["virsh", "-q", "destroy", SHARED_GUEST], check=False, capture=True)
            lab.in_host(host, ["virsh", "-q", "undefine", SHARED_GUEST], check=False, capture=True)
        lab.in_host(SRC, "rm -f %s/%s*" % (SHARED, SHARED_GUEST), check=False)
        os.unlink(path)


@contextlib.contextmanager
def _declared_shared(host: str):
    conf = lab.hdir(host, "root", "etc", "libvirt", "qemu.conf")
    with open(conf) as f:
        before = f.read()
    lab.write(conf, before + 'shared_filesystems = [ "%s" ]\n' % SHARED)
    _restart_libvirtd(host)
    try:
        yield
    finally:
        lab.write(conf, before)
        _restart_libvirtd(host)


def _restart_libvirtd(host: str) -> None:
    lab.in_host(host, ["systemctl", "restart", "libvirtd"])
    lab.start_daemons(host)


def test_same_directory_on_both_hosts_is_shared_and_not_copied(guest_on_hosta, ansible_adhoc):
    with _shared_guest():
        before = proof.host_snapshot()
        res = _probe_and_preflight(ansible_adhoc, guest=SHARED_GUEST)
        assert res["shared_detected"] == ["vda", "vdb"] and res["copy_set"] == [], _dump(res)
        ok = [f for f in _findings(res, "shared_storage") if f["status"] == "ok"]
        assert any("identity probe" in f["msg"] and "not copied" in f["msg"] for f in ok), _dump(res)
        # a bind mount of a local filesystem: libvirt would refuse 'Migration without shared storage is unsafe'
        unsafe = [f for f in _findings(res, "shared_storage") if f["status"] == "error"]
        assert unsafe and "shared_filesystems" in unsafe[0]["msg"], _dump(res)
        assert proof.host_snapshot() == before
        _no_marker_left(["%s/x" % SHARED])
        with _declared_shared(SRC):
            res = _probe_and_preflight(ansible_adhoc, guest=SHARED_GUEST)
            assert res["report"]["ok"] is True, _dump(res)
            run = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % SHARED_GUEST, "-e", "dest=%s" % DEST)
            assert run.returncode == 0, run.stdout[-4000:]
            assert "not copied: vda, vdb" in run.stdout, run.stdout[-4000:]
            assert "images created on %s: none" % DEST in run.stdout, run.stdout[-4000:]
            assert lab.domain_hosts(SHARED_GUEST) == {DEST: "running"}


POSTCOPY_GUEST = "labpostcopy"


def test_postcopy_move_summary_has_real_figures(lab_up):
    """A diskless 128 MiB guest moved at 1 MiB/s with a completion timeout of 1 s and post-copy
    allowed: the move switches to post-copy in its first memory pass, so the source domain is gone
    when the summary is built; it must still show duration, downtime and bytes."""
    xml = lab.guest_xml("qemu", name=POSTCOPY_GUEST, ip="198.18.0.23", mac_suffix=0x23)
    xml = re.sub(r"\s*<disk .*?</disk>", "", xml, flags=re.S)
    xml = re.sub(r"<memory unit='MiB'>\d+</memory>", "<memory unit='MiB'>128</memory>", xml)
    path = lab.hdir(SRC, "%s.xml" % POSTCOPY_GUEST)
    lab.write(path, xml)
    try:
        lab.in_host(SRC, ["virsh", "-q", "define", path], capture=True)
        lab.in_host(SRC, ["virsh", "-q", "start", POSTCOPY_GUEST], capture=True)
        run = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % POSTCOPY_GUEST, "-e", "dest=%s" % DEST,
                               "-e", "bandwidth=1", "-e", "timeout=1", "-e", "migrate_guest_postcopy=true",
                               "-e", "migrate_guest_timeout_action=postcopy", "-e", "migrate_guest_timeout_s_per_gib=1")
        assert run.returncode == 0, run.stdout[-4000:]
        assert lab.domain_hosts(POSTCOPY_GUEST) == {DEST: "running"}
        head = re.search(r"%s moved %s -> %s in ([^\"]*?)\." % (POSTCOPY_GUEST, SRC, DEST), run.stdout)
        assert head, run.stdout[-4000:]
        assert "None" not in head.group(0) and "unknown" not in head.group(0), head.group(0)
        assert "memory ?" not in run.stdout and "None ms" not in run.stdout, run.stdout[-4000:]
        print(head.group(0))
    finally:
        for host in (SRC, DEST):
            lab.in_host(host, ["virsh", "-q", "destroy", POSTCOPY_GUEST], check=False, capture=True)
            lab.in_host(host, ["virsh", "-q", "undefine", POSTCOPY_GUEST], check=False, capture=True)
        os.unlink(path)


USER_GUEST = "labuser"


def test_destination_file_of_another_guest_is_never_to_be_removed(guest_on_hosta, ansible_adhoc):
    """Issue 16 item 4: the destination path of the guest's disk holds a file that a guest
    defined on hostb uses as its disk. The pre-flight stops the run and its advice must not be
    to remove that file: it names the guest that uses it. Nothing changes on either host."""
    path = [p for p in _guest_paths(ansible_adhoc) if p.endswith("/%s.raw" % GUEST)][0]
    assert lab.in_host(DEST, ["test", "-e", path], check=False).returncode != 0, "%s already on %s" % (path, DEST)
    xml = lab.guest_xml("qemu", name=USER_GUEST, ip="198.18.0.26", mac_suffix=0x26)
    xml = xml.replace("/var/lib/libvirt/images/%s.raw" % USER_GUEST, path)
    assert path in xml
    lab.in_host(DEST, ["truncate", "-s", "4M", path])  # the other guest's data (made by this test)
    definition = lab.hdir(DEST, "%s.xml" % USER_GUEST)  # seen at the same path inside the host
    lab.write(definition, xml)
    try:
        lab.in_host(DEST, ["virsh", "-q", "define", definition], capture=True)
        before = proof.host_snapshot()
        run = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % DEST)
        text = re.sub(r"\s+", " ", run.stdout)
        assert run.returncode != 0, run.stdout[-4000:]
        assert "used by domain %s on %s: never remove it" % (USER_GUEST, lab.HOSTS[DEST]) in text, text[-4000:]
        assert "Remove it on" not in text and "remove or rename" not in text.lower(), text[-4000:]
        assert "Traceback" not in run.stdout
        assert proof.host_snapshot() == before
        assert lab.domain_hosts(GUEST) == {SRC: "running"}
    finally:
        lab.in_host(DEST, ["virsh", "-q", "undefine", USER_GUEST], check=False, capture=True)
        lab.in_host(DEST, ["rm", "-f", path], check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(definition)
