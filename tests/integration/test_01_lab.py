"""Issue 2, item 5: the lab itself. down leaves nothing behind; up brings two prepared libvirt
hosts that answer qemu+ssh from each other, a guest that boots on hosta and answers ping from
observer."""

from __future__ import annotations

import os
import re
import subprocess

from conftest import lab, lab_cmd, lab_status


def _this_process_and_its_parents() -> set[int]:
    """This test's process and its ancestors (pytest, the shell and make that started it): their
    command lines may name the lab's state directory (``--inventory .../inventory.yml``) but they
    are not the lab's."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _leftovers() -> list[str]:
    """Everything of the lab that may exist outside its state directory."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], text=True, capture_output=True, check=False).stdout
    for name in list(lab.HOSTS) + [lab.OBSERVER[0]]:
        if re.search(r"^%s\b" % name, netns, re.M):
            found.append("netns %s" % name)
    links = subprocess.run(["ip", "-o", "link", "show"], text=True, capture_output=True, check=False).stdout
    for name in [lab.BRIDGE] + ["kl-%s" % h for h in list(lab.HOSTS) + [lab.OBSERVER[0]]]:
        if re.search(r"^\d+: %s[@:]" % re.escape(name), links, re.M):
            found.append("link %s" % name)
    with open("/proc/mounts") as f:
        found += ["mount %s" % line.split()[1] for line in f if lab.STATE in line]
    mine = _this_process_and_its_parents()  # pytest's own command line names the lab inventory
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if lab.STATE in cmdline or "guest=migratetest2" in cmdline or "-name guest=" in cmdline:
            found.append("process %s: %s" % (pid, cmdline[:120]))
    if os.path.exists(lab.MANIFEST_DIR) and not os.listdir(lab.MANIFEST_DIR) and os.path.exists(
            os.path.join(lab.STATE, "created-manifest-mountpoint")):
        found.append("mount point %s" % lab.MANIFEST_DIR)
    return found


def test_down_leaves_nothing_and_up_is_idempotent():
    lab_cmd("down")
    assert _leftovers() == []
    assert lab_status()["up"] is False
    lab_cmd("up")
    first = lab_status()
    assert first["up"] is True
    again = lab_cmd("up")
    assert "already in the lab" in again.stdout
    second = lab_status()
    assert second["up"] is True
    # the same daemons and guest: a second up changed nothing
    assert [h["domains"] for h in first["hosts"].values()] == [h["domains"] for h in second["hosts"].values()]


def test_hosts_are_separate_libvirt_hosts_over_ssh(lab_up):
    uuids = set()
    for host, addr in lab.HOSTS.items():
        # each host reaches the other over qemu+ssh with the trust prepare_hosts.yml set up
        peer = next(a for h, a in lab.HOSTS.items() if h != host)
        res = subprocess.run(lab.ssh_cmd(addr, "hostname; virsh -c qemu+ssh://root@%s/system list --all; "
                                               "virsh capabilities" % peer),
                             text=True, capture_output=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[0] == host
        assert "Name" in res.stdout and "State" in res.stdout
        uuids.add(re.search(r"<uuid>([0-9a-f-]+)</uuid>", res.stdout).group(1))
    assert len(uuids) == 2, "each host must have its own host_uuid"
    # storage is not shared: a file made on hosta is not seen on hostb
    marker = "/var/lib/libvirt/images/.lab-test-marker"
    lab.in_host("hosta", ["touch", marker])
    try:
        assert lab.in_host("hostb", ["test", "-e", marker], check=False).returncode != 0
    finally:
        lab.in_host("hosta", ["rm", "-f", marker])
    # the hosts reach each other by key: hostb -> hosta with qemu+ssh, as a migration does
    res = lab.in_host("hostb", ["virsh", "-c", "qemu+ssh://root@hosta/system", "hostname"], capture=True, check=False)
    assert res.returncode == 0 and res.stdout.strip() == "hosta", res.stderr


def test_guest_boots_ticks_and_answers_ping(lab_up):
    where = lab.domain_hosts(lab.GUEST)
    assert list(where.values()) == ["running"], where
    lab.wait_guest_ping(timeout=60)
    host = list(where)[0]
    log = lab.hdir(host, "var-log-libvirt", "qemu", "%s-console.log" % lab.GUEST)
    with open(log) as f:
        ticks = re.findall(r"^tick (\d+) (\S+)$", f.read(), re.M)
    assert ticks, "the guest prints a tick every second on its console"
    # both disks are 10 GiB virtual, sparse (the system disk holds about 256 MiB)
    images = lab.hdir(host, "var-lib-libvirt", "images")
    for name, most in (("%s.raw" % lab.GUEST, 300 * 1024 ** 2), ("%s.swap" % lab.GUEST, 16 * 1024 ** 2)):
        st = os.stat(os.path.join(images, name))
        assert st.st_size == 10 * 1024 ** 3
        assert st.st_blocks * 512 <= most


def test_accelerator_probe_leaves_the_callers_terminal_blocking(lab_up):
    """Issue 14 item 6: the probe runs QEMU with -serial stdio and kills it at its timeout; QEMU
    must not get the caller's terminal, which it would leave non-blocking (the demo's next
    ansible-playbook then refuses to start: "Ansible requires blocking IO")."""
    import fcntl
    import pty
    import sys

    cache = os.path.join(lab.STATE, "guest", "accel")
    with open(cache) as f:
        saved = f.read()
    os.unlink(cache)  # probe again
    master, slave = pty.openpty()
    try:
        code = ("import sys; sys.path.insert(0, %r); import lab; print(lab.probe_accelerator(lab.build_guest_artifacts()))"
                % os.path.dirname(lab.__file__))
        res = subprocess.run([sys.executable, "-c", code], stdin=slave, capture_output=True, text=True,
                             timeout=180, check=False)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip().splitlines()[-1] in ("kvm", "qemu")
        assert not fcntl.fcntl(slave, fcntl.F_GETFL) & os.O_NONBLOCK, "the terminal was left non-blocking"
    finally:
        os.close(master)
        os.close(slave)
        with open(cache, "w") as f:
            f.write(saved)
