"""Issue 7 in the lab: the playbooks as a user runs them.

prepare_hosts.yml is idempotent on both hosts; migrate.yml moves migratetest2 to the best other
host and back (-e dest), a rerun changes nothing, --check changes nothing on either host;
evacuate.yml empties hosta of two guests. The lab is left as found: migratetest2 back on its
host, the second guest and the test pool removed."""

from __future__ import annotations

import glob
import os
import re
import tempfile

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


def flat(res) -> str:
    """Playbook output with the YAML callback's line folding and quote doubling undone."""
    return re.sub(r"\s+", " ", res.stdout).replace("''", "'")


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
        assert "ssh-keyscan" not in first.stdout
        addresses = ",".join(lab.HOSTS.values())
        for host in lab.HOSTS:
            # the other host's key is accepted from the group's addresses only; its host key is
            # the one its sshd serves (the lab's key file), pinned under its name and address
            peer = other(host)
            with open(lab.hdir(host, "root-ssh", "authorized_keys")) as f:
                authorized = f.read()
            # the peer's own key, made there by the role
            with open(lab.hdir(peer, "root-ssh", "id_ed25519.pub")) as f:
                peer_key = f.read().split()[1]
            assert 'from="%s" ssh-ed25519 %s' % (addresses, peer_key) in authorized, authorized
            with open(os.path.join(lab.STATE, "keys", "%s_hostkey_ed25519.pub" % peer)) as f:
                host_key = " ".join(f.read().split()[:2])
            with open(lab.hdir(host, "root-ssh", "known_hosts")) as f:
                assert "%s,%s %s" % (peer, lab.HOSTS[peer], host_key) in f.read()
        # qemu+ssh between the hosts still works with the restricted keys
        for host in lab.HOSTS:
            res = lab.in_host(host, ["virsh", "-c", "qemu+ssh://root@%s/system" % lab.HOSTS[other(host)], "hostname"],
                              capture=True, check=False)
            assert res.returncode == 0, res.stderr
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


def _set_host_uuid(host: str, value: str) -> None:
    """Write host_uuid into a lab host's libvirtd.conf and restart its libvirtd (no systemd)."""
    lab.in_host(host, ["sed", "-i", 's/^host_uuid = .*/host_uuid = "%s"/' % value, "/etc/libvirt/libvirtd.conf"])
    lab.in_host(host, ["systemctl", "restart", "libvirtd"])
    lab.wait_for(lambda: lab.in_host(host, ["virsh", "-q", "uri"], check=False, capture=True).returncode == 0,
                 "libvirtd on %s" % host, 30)


def _caps_uuid(host: str) -> str:
    return re.search(r"<uuid>([0-9a-f-]+)</uuid>", lab.in_host_out(host, ["virsh", "capabilities"])).group(1)


def test_c10_cloned_host_uuid_is_replaced_and_libvirtd_restarted(lab_up):
    """hostb gets hosta's host UUID (a cloned machine); prepare_hosts gives hostb its own and
    restarts its libvirtd with the lab's restart command; hosta keeps its UUID."""
    original = _caps_uuid("hostb")
    uuid_a = _caps_uuid("hosta")
    assert "hostb" not in where(), "the test restarts hostb's libvirtd: no guest may run there"
    _set_host_uuid("hostb", uuid_a)
    try:
        assert _caps_uuid("hostb") == uuid_a
        res = play("playbooks/prepare_hosts.yml", "-e", LAB_VARS, "--tags", "kvm_host_uuid,kvm_host_verify")
        assert "is also hosta's (cloned machines?)" in flat(res)
        assert recap(res)["hostb"]["changed"] == 2 and recap(res)["hosta"]["changed"] == 0
        new = _caps_uuid("hostb")
        assert new not in (uuid_a, original) and _caps_uuid("hosta") == uuid_a
        again = play("playbooks/prepare_hosts.yml", "-e", LAB_VARS, "--tags", "kvm_host_uuid,kvm_host_verify")
        assert changed(again) == 0
    finally:
        _set_host_uuid("hostb", original)


def test_validation_messages(lab_up):
    res = ansible_playbook("playbooks/migrate.yml")
    assert res.returncode != 0 and "No guest given: name the guest to move with -e vm=NAME" in flat(res)
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=nosuchhost")
    assert res.returncode != 0 and "Destination nosuchhost is not a host of group kvm_hosts" in flat(res)
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=no-such-guest")
    assert res.returncode != 0 and "Guest no-such-guest is not defined on any host of group kvm_hosts" in flat(res)


def test_migrate_check_mode_changes_nothing(lab_as_found):
    src = list(where())[0]
    before = {h: image_files(h) for h in lab.HOSTS}
    res = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "--check")
    assert "PLAN (check mode): %s would move %s -> %s" % (GUEST, src, other(src)) in flat(res)
    assert "Pre-flight passed" in flat(res)
    assert where() == {src: "running"}
    assert {h: image_files(h) for h in lab.HOSTS} == before


def test_migrate_there_and_back_and_rerun_changes_nothing(lab_as_found):
    src = list(where())[0]
    dst = other(src)
    drop_old_images(dst)  # a clean destination: this run creates the images
    # a bandwidth limit (the survey's variable) makes the move last long enough to show progress
    first = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "bandwidth=32",
                 "-e", "migrate_guest_poll_interval_s=1")
    assert where() == {dst: "running"}
    assert "%s moved %s -> %s in" % (GUEST, src, dst) in flat(first)
    assert re.search(r"%s \[%s\]: (storage|memory|setup)\s+[\d.]+%%" % (GUEST, src), first.stdout), \
        "no progress line during the move"
    assert "images created on %s: /var/lib/libvirt/images/%s.raw" % (dst, GUEST) in flat(first)
    lab.wait_guest_ping(timeout=30)
    again = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % dst)
    assert changed(again) == 0 and "%s already runs on %s: nothing to do." % (GUEST, dst) in flat(again)
    # the old images stay on the source (kvmops never deletes a disk it did not create): the
    # operator removes them before moving the guest back
    drop_old_images(src)
    back = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % src)
    assert where() == {src: "running"} and "%s moved %s -> %s in" % (GUEST, dst, src) in flat(back)
    again = play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % src)
    assert changed(again) == 0
    lab.wait_guest_ping(timeout=30)


def test_failed_move_keeps_the_source_and_removes_only_what_it_created(lab_as_found):
    """A migration that cannot finish in time is aborted by the migrate module: the guest keeps
    running on the source, and the role removes exactly the images this run created on the
    destination; another file in the same directory stays."""
    src = list(where())[0]
    dst = other(src)
    drop_old_images(dst)
    bystander = "/var/lib/libvirt/images/kvmops-test-bystander.img"
    lab.in_host(dst, ["truncate", "-s", "1M", bystander])
    try:
        res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % dst,
                               "-e", "bandwidth=1", "-e", "timeout=5", "-e", "migrate_guest_timeout_s_per_gib=0.001")
        out = flat(res)
        assert res.returncode != 0, out[-3000:]
        assert "The guest is running on %s" % src in out, out[-3000:]
        assert ("Images removed from the destination: /var/lib/libvirt/images/%s.raw, "
                "/var/lib/libvirt/images/%s.swap" % (GUEST, GUEST)) in out, out[-3000:]
        assert where() == {src: "running"}
        assert image_files(dst) == {"kvmops-test-bystander.img"}
        lab.wait_guest_ping(timeout=30)
    finally:
        lab.in_host(dst, ["rm", "-f", bystander])


def test_evacuate_hosta_with_two_guests(lab_as_found):
    ensure_on("hosta")
    drop_old_images("hostb")
    lab_cmd("guest", "--name", EVAC, "--ip", "198.18.0.11", "--mac", "0x11", "--wait")
    try:
        assert where(EVAC) == {"hosta": "running"}
        claims_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "kvmops-evacuate-*")))
        res = play("playbooks/evacuate.yml", "-e", "host=hosta", timeout=1500)
        assert "Evacuation of hosta: 2 moved, 0 failed" in flat(res), res.stdout[-6000:]
        # the sliding window (issue 18.4): the plan's order is the largest first, the lanes took the moves
        # in that order, and never more ran at once than the concurrency (2)
        planned = re.findall(r"([\w.-]+) -> hostb, to send: ([\d.]+) (\w+)", flat(res))
        assert sorted(g for g, _n, _u in planned) == sorted([GUEST, EVAC]), flat(res)[-3000:]
        sizes = [float(n) * 1024 ** "BKMGT".index(u[0]) for _g, n, u in planned]
        assert sizes == sorted(sizes, reverse=True), planned
        window = re.findall(r"moved ([\w.-]+) -> hostb \(.*?\) \[#(\d+) (kvmops-lane-\d+): \+([\d.]+) s to \+([\d.]+) s\]",
                            flat(res))
        assert sorted(g for g, *_x in window) == sorted([GUEST, EVAC]), flat(res)[-3000:]
        started = [g for g, *_x in sorted(window, key=lambda w: int(w[1]))]  # in the order the lanes claimed them
        assert started == [g for g, _n, _u in planned]
        spans = [(float(b), float(e)) for _g, _p, _l, b, e in window]
        most = max(sum(1 for b, e in spans if b <= t < e) for t, _e in spans)
        assert 1 <= most <= 2 and len({lane for _g, _p, lane, _b, _e in window}) <= 2
        assert re.search(r"window: largest first, at most %d at once \(concurrency 2\)" % most, flat(res))
        assert set(glob.glob(os.path.join(tempfile.gettempdir(), "kvmops-evacuate-*"))) <= claims_before  # removed
        assert where(GUEST) == {"hostb": "running"} and where(EVAC) == {"hostb": "running"}
        lab.wait_guest_ping(timeout=30)
        lab.wait_guest_ping(ip="198.18.0.11", timeout=30)
    finally:
        for host in where(EVAC):
            lab.in_host(host, ["virsh", "-q", "destroy", EVAC], check=False, capture=True)
            lab.in_host(host, ["virsh", "-q", "undefine", EVAC], check=False, capture=True)
        for host in lab.HOSTS:
            drop_old_images(host, EVAC)
