"""Issue 14: the lab's hosts are booted Debian servers, and prepare_hosts.yml (the kvm_host role)
is what makes them hypervisors, as on a user's fresh machines.

- four-way on fresh installs: check mode changes nothing (no libvirt appears), the run prepares
  both hosts, a rerun reports changed=0, a rerun in check mode too;
- the services survive a restart of the host (enabled, not only started);
- the migration ports answer the group's other host and refuse the observer (nftables);
- the site's apt proxy is the only way to packages (the hosts reach nothing else).

The lab is left prepared, with the demo guest on hosta, as the other tests expect it."""

from __future__ import annotations

import re
import subprocess
import tempfile
import textwrap

import pytest

from conftest import ansible_playbook, lab, lab_cmd

PORT = 49152  # the first port of the migration range the role opens


def recap(res) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for m in re.finditer(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                         res.stdout, re.M):
        out[m.group(1)] = {"ok": int(m.group(2)), "changed": int(m.group(3)),
                           "unreachable": int(m.group(4)), "failed": int(m.group(5))}
    return out


def failed_tasks(stdout: str) -> str:
    """Each failed task of a playbook's output with its TASK line (the tail of a long output
    may hold only the other hosts' later tasks)."""
    out, task = [], ""
    for line in stdout.splitlines():
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            task = line
        elif line.startswith(("fatal: ", "failed: ")):
            out += [task, line[:3000]]
    return "\n".join(out) or "(no failed task in the output)"


def prepare(*extra: str) -> subprocess.CompletedProcess:
    res = ansible_playbook("playbooks/prepare_hosts.yml", *extra, timeout=1500)
    assert res.returncode == 0, "prepare_hosts.yml %s failed:\n%s\n...\n%s\n%s" % (
        " ".join(extra), failed_tasks(res.stdout), res.stdout[-6000:], res.stderr[-2000:])
    rc = recap(res)
    assert set(rc) == set(lab.HOSTS), rc
    assert all(h["failed"] == 0 and h["unreachable"] == 0 for h in rc.values()), rc
    return res


def has_libvirt(host: str) -> bool:
    return lab.in_host(host, "command -v virsh >/dev/null && test -e /etc/libvirt/qemu.conf",
                       check=False, capture=True).returncode == 0


LISTENER = textwrap.dedent("""\
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", %d)); s.listen(4); s.settimeout(20)
    print("listening", flush=True)
    try:
        while True:
            c, peer = s.accept(); c.sendall(b"kvmops-lab"); c.close()
    except socket.timeout:
        pass
    """) % PORT

CONNECT = textwrap.dedent("""\
    import socket, sys
    try:
        c = socket.create_connection((sys.argv[1], %d), timeout=5)
        print("open", c.recv(16).decode())
    except ConnectionRefusedError:
        print("refused")
    except OSError as err:
        print("error", err)
    """) % PORT


@pytest.fixture(scope="module")
def fresh_hosts():
    """Both hosts as freshly installed Debian servers: booted, sshd with the controller's key,
    python3, nothing of libvirt or QEMU."""
    lab_cmd("down")
    lab_cmd("reset")
    lab_cmd("up", "--no-guest", timeout=1200)
    for host in lab.HOSTS:
        assert not has_libvirt(host), "%s should be a fresh install" % host
        assert lab.in_host_out(host, ["systemctl", "is-system-running"], check=False) in ("running", "degraded")
    yield
    # the state the other tests expect: prepared hosts and the demo guest on hosta
    lab_cmd("up", timeout=1500)
    lab_cmd("guest", "--recreate", "--wait")


def many_sessions_over_one_connection(addr, sessions=16):
    """More sessions at the same time over one multiplexed ssh connection than sshd's default
    MaxSessions (10), as an evacuation's concurrent tasks open: every one must run."""
    with tempfile.TemporaryDirectory() as d:
        base = lab.ssh_cmd(addr, "true")[:-2] + ["-o", "ControlPath=%s/m" % d]
        master = subprocess.run(base + ["-o", "ControlMaster=yes", "-o", "ControlPersist=60s", "-f", "-N",
                                        "root@%s" % addr], capture_output=True, text=True, timeout=30, check=False)
        assert master.returncode == 0, master.stderr
        try:
            procs = [subprocess.Popen(base + ["-o", "ControlMaster=no", "root@%s" % addr, "sleep 3; echo ok"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for dummy in range(sessions)]
            outs = [p.communicate(timeout=60) for p in procs]
        finally:
            subprocess.run(base + ["-O", "exit", "root@%s" % addr], capture_output=True, timeout=15, check=False)
        refused = [err.strip() for out, err in outs if out.strip() != "ok"]
        assert not refused, "%d of %d sessions over one connection to %s failed (sshd MaxSessions): %s" % (
            len(refused), sessions, addr, refused[:2])


def test_prepare_bare_hosts_four_way(fresh_hosts):
    check = prepare("--check")
    assert sum(h["changed"] for h in recap(check).values()) > 0, "check mode must say what would change"
    for host in lab.HOSTS:
        assert not has_libvirt(host), "check mode installed libvirt on %s" % host
        assert lab.in_host(host, ["test", "-e", "/etc/apt/apt.conf.d/80kvmops-migration-proxy"],
                           check=False).returncode != 0

    first = prepare()
    assert all(h["changed"] > 0 for h in recap(first).values()), recap(first)
    for host in lab.HOSTS:
        assert has_libvirt(host)
        # packages came through the site's proxy, the only way out of the lab's hosts
        with open(lab.hdir(host, "root", "etc", "apt", "apt.conf.d", "80kvmops-migration-proxy")) as f:
            assert lab.APT_PROXY in f.read()
        for unit in ("libvirtd.service", "kvmops-migration-firewall.service"):
            assert lab.in_host_out(host, ["systemctl", "is-enabled", unit], check=False) == "enabled", (host, unit)
        # the guests' NAT network is active now and at boot
        info = lab.in_host_out(host, ["virsh", "-q", "net-info", "default"])
        assert re.search(r"^Active:\s+yes", info, re.M) and re.search(r"^Autostart:\s+yes", info, re.M), info
        # qemu.conf carries the site's settings for hosts that are containers
        conf = lab.in_host_out(host, ["cat", "/etc/libvirt/qemu.conf"])
        assert re.search(r'^security_driver = "none"$', conf, re.M), conf[-500:]
        assert re.search(r"^cgroup_controllers = \[\]$", conf, re.M)
        # the other host by its inventory name
        hosts = lab.in_host_out(host, ["cat", "/etc/hosts"])
        for peer, addr in lab.HOSTS.items():
            if peer != host:
                assert re.search(r"^%s\s+%s$" % (re.escape(addr), peer), hosts, re.M), hosts
    # the rules the firewall got are listed in the run's output
    text = re.sub(r"\s+", " ", first.stdout)
    assert "backend: nftables" in text and "ip saddr @peers4 accept" in text, first.stdout[-4000:]
    # the two hosts are two libvirt hosts (distinct host UUIDs), reachable over qemu+ssh
    uuids = set()
    for host in lab.HOSTS:
        caps = lab.in_host_out(host, ["virsh", "capabilities"])
        uuids.add(re.search(r"<uuid>([0-9a-f-]+)</uuid>", caps).group(1))
        peer = next(h for h in lab.HOSTS if h != host)
        res = lab.in_host(host, ["virsh", "-c", "qemu+ssh://root@%s/system" % peer, "hostname"],
                          check=False, capture=True)
        assert res.returncode == 0 and res.stdout.strip() == peer, res.stderr
    assert len(uuids) == 2
    for addr in lab.HOSTS.values():
        many_sessions_over_one_connection(addr)

    second = prepare()
    assert all(h["changed"] == 0 for h in recap(second).values()), second.stdout[-8000:]
    again = prepare("--check")
    assert all(h["changed"] == 0 for h in recap(again).values()), again.stdout[-8000:]


def test_services_survive_a_restart_of_the_host(fresh_hosts):
    host = "hostb"
    if not has_libvirt(host):
        prepare()
    lab.reboot_host(host)
    for unit in ("libvirtd", "kvmops-migration-firewall"):
        # libvirtd is socket-activated on Debian: a connection starts it when it is not running
        lab.wait_for(lambda u=unit: lab.in_host(host, ["systemctl", "is-active", "--quiet", u],
                                                check=False).returncode == 0
                     or (u == "libvirtd" and lab.in_host(host, ["virsh", "-q", "uri"], check=False,
                                                         capture=True).returncode == 0),
                     "%s on %s after the restart" % (unit, host), 60)
    info = lab.in_host_out(host, ["virsh", "-q", "net-info", "default"])
    assert re.search(r"^Active:\s+yes", info, re.M), info  # autostarted
    table = lab.in_host_out(host, ["nft", "list", "table", "inet", "kvmops_migration"])
    assert "reject with tcp reset" in table


def test_migration_ports_open_to_the_peer_and_closed_to_others(fresh_hosts):
    dest, src = "hostb", "hosta"
    for host in lab.HOSTS:
        if not has_libvirt(host):
            prepare()
            break
    listener = subprocess.Popen(["nsenter", "-t", str(lab.holder_pid(dest)), "-a", "--", "python3", "-c", LISTENER],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        from_peer = lab.in_host_out(src, ["python3", "-c", CONNECT, lab.HOSTS[dest]], check=False)
        from_observer = lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "python3", "-c", CONNECT, lab.HOSTS[dest]],
                                capture=True, check=False).stdout.strip()
    finally:
        listener.kill()
        listener.wait()
    assert from_peer == "open kvmops-lab", from_peer
    assert from_observer == "refused", from_observer
