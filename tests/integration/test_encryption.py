# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 15: guest memory and disks never cross the network in clear.

A random marker is put into the guest's memory (a file of its RAM-backed root filesystem, written
by the guest) and another onto its disk (written into the source's image where the guest never
reads, so it can only cross in the disk stream). The move runs while tcpdump captures the lab
link between the hosts (everything but ssh). With the defaults no marker is in the capture and
TLS handshakes are; with migrate_guest_tls=false and the insecure variable both markers are found
in clear, so the test can fail. Then: certificates the pre-flight must refuse (expired, of
another CA), with both hosts unchanged.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import lab
from conftest import ansible_playbook, lab_cmd

pytestmark = pytest.mark.usefixtures("guest_on_hosta")

GUEST = lab.GUEST
#: where the disk marker goes in the source's image of vda: far from anything the guest reads
DISK_MARK_OFFSET = 1 << 30
#: a TLS record (type handshake 0x16, version 3.1 to 3.4) whose first message is a ClientHello
#: (0x01), at the start of a TCP segment's payload
_PAYLOAD = "((tcp[12:1] & 0xf0) >> 2)"
CLIENT_HELLO = ("tcp[{p}:1] = 0x16 and tcp[{p} + 1:1] = 0x03 and tcp[{p} + 2:1] >= 0x01 and "
                "tcp[{p} + 2:1] <= 0x04 and tcp[{p} + 5:1] = 0x01".format(p=_PAYLOAD))
LINK = "host %s and host %s and not port 22" % (lab.HOSTS["hosta"], lab.HOSTS["hostb"])


def guest_shell(command: str) -> str:
    """Run a command in the guest (its lab command port on eth1), from the observer."""
    res = lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "3", lab.GUEST_IP, "2323"],
                  input=command + "\n", check=False, capture=True, timeout=60)
    return res.stdout or ""


def where_is_guest() -> str:
    for host in lab.HOSTS:
        res = lab.in_host(host, ["virsh", "-q", "domstate", GUEST], check=False, capture=True)
        if res.returncode == 0 and "running" in (res.stdout or ""):
            return host
    raise AssertionError("%s runs on no lab host" % GUEST)


def plant_markers(host: str) -> tuple[bytes, bytes]:
    """(memory marker, disk marker), both random; 1 MiB of each so that a capture holds many
    whole copies whatever the segment boundaries."""
    mem = ("KVMOPS-MEM-%s" % secrets.token_hex(12)).encode()
    disk = ("KVMOPS-DISK-%s" % secrets.token_hex(12)).encode()
    out = guest_shell("rm -f /tmp/mark; i=0; while [ $i -lt 4096 ]; do echo %s%s; i=$((i+1)); done > /tmp/mark;"
                      " wc -c < /tmp/mark" % (mem.decode(), "-" * 200))
    assert re.search(r"^\s*\d{6,}\s*$", out, re.M), "the guest did not write its memory marker: %r" % out
    image = lab.hdir(host, "var-lib-libvirt", "images", "%s.raw" % GUEST)
    block = (disk + b"\n") * (1048576 // (len(disk) + 1))
    fd = os.open(image, os.O_WRONLY)
    try:
        os.pwrite(fd, block, DISK_MARK_OFFSET)
        os.fsync(fd)
    finally:
        os.close(fd)
    return mem, disk


class Capture:
    """tcpdump on the lab bridge (the root namespace sees every packet between the hosts)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Capture":
        self.proc = subprocess.Popen(["tcpdump", "-i", lab.BRIDGE, "-s", "0", "-B", "131072", "-U", "-w", self.path,
                                      LINK], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        assert self.proc.poll() is None, "tcpdump did not start: %s" % self.proc.stderr.read()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=60)[1]
        self.stats = err

    def contains(self, marker: bytes) -> int:
        """How many times ``marker`` appears in the captured bytes."""
        count = 0
        tail = b""
        with open(self.path, "rb") as handle:
            while True:
                chunk = handle.read(1 << 24)
                if not chunk:
                    break
                data = tail + chunk
                count += data.count(marker)
                tail = data[-(len(marker) - 1):]
        return count

    def client_hellos(self) -> dict[int, int]:
        """TLS ClientHello segments in the capture, by destination port."""
        res = subprocess.run(["tcpdump", "-nn", "-r", self.path, CLIENT_HELLO], capture_output=True, text=True,
                             check=False, timeout=300)
        ports: dict[int, int] = {}
        for match in re.finditer(r" > [0-9.]+\.(\d+): ", res.stdout):
            ports[int(match.group(1))] = ports.get(int(match.group(1)), 0) + 1
        return ports

    def size(self) -> int:
        return os.path.getsize(self.path)


def migrate(*extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """migrate.yml to the other host; returns (result, the guest's set_stats entry)."""
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, *extra, timeout=900,
                           extra_env={"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_SHOW_CUSTOM_STATS": "1"})
    try:
        data = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError("no JSON from migrate.yml:\n%s\n%s" % (res.stdout[-4000:], res.stderr[-2000:])) from exc
    stats = data.get("global_custom_stats") or data.get("custom_stats", {}).get("_run", {})
    return res, ((stats or {}).get("kvmops_migrations") or {}).get(GUEST) or {}


@pytest.fixture
def capture_dir():
    where = tempfile.mkdtemp(prefix="kvmops-capture-", dir="/var/tmp")
    yield where
    shutil.rmtree(where, ignore_errors=True)


def test_default_move_is_encrypted_and_plain_move_is_not(capture_dir):
    # defaults: TLS, nothing of the markers on the wire, handshakes on the data connections
    source = where_is_guest()
    mem, disk = plant_markers(source)
    with Capture(os.path.join(capture_dir, "tls.pcap")) as cap:
        res, stats = migrate()
    assert res.returncode == 0, res.stdout[-6000:]
    assert where_is_guest() != source
    assert stats.get("transport", {}).get("memory") == "tls", stats
    assert stats["transport"]["disks"] == "tls" and stats["transport"]["encrypted"] is True
    assert cap.size() > 50 * 1048576, "the capture holds %d bytes only: %s" % (cap.size(), cap.stats)
    hellos = cap.client_hellos()
    assert cap.contains(mem) == 0, "the memory marker crossed in clear with TLS"
    assert cap.contains(disk) == 0, "the disk marker crossed in clear with TLS"
    assert len(hellos) >= 2, "TLS handshakes on %s: expected the memory and the disk (NBD) connections" % hellos

    # asked for plain and allowed: both markers are on the wire (so the test above can fail);
    # a fresh guest on hosta again (the lab's images on hosta are not ours to overwrite)
    lab_cmd("guest", "--recreate", "--wait")
    source = where_is_guest()
    mem, disk = plant_markers(source)
    with Capture(os.path.join(capture_dir, "plain.pcap")) as cap:
        res, stats = migrate("-e", "migrate_guest_tls=false", "-e", "migrate_guest_allow_insecure_transport=true")
    assert res.returncode == 0, res.stdout[-6000:]
    assert where_is_guest() != source
    assert stats.get("transport", {}).get("memory") == "plain" and stats["transport"]["encrypted"] is False
    assert cap.contains(mem) > 0, "the memory marker is not in the plain capture (%d bytes)" % cap.size()
    assert cap.contains(disk) > 0, "the disk marker is not in the plain capture (%d bytes)" % cap.size()
    assert cap.client_hellos() == {}, "a TLS handshake in a plain move"


def test_plain_without_the_variable_is_refused_before_anything():
    lab_cmd("guest", "--recreate", "--wait")
    source = where_is_guest()
    res, _stats = migrate("-e", "migrate_guest_tls=false")
    assert res.returncode != 0
    assert "would cross the network unencrypted" in res.stdout
    assert "migrate_guest_allow_insecure_transport" in res.stdout
    assert where_is_guest() == source


def _install_on(host: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """Put ``files`` (name in /etc/pki/qemu: content) on ``host``; returns the old contents."""
    old = {}
    for name, content in files.items():
        path = lab.hdir(host, "root", "etc", "pki", "qemu", name)
        with open(path, "rb") as handle:
            old[name] = handle.read()
        with open(path, "wb") as handle:
            handle.write(content)
    return old


def _certificate(signer: str, not_after_days: int) -> tuple[bytes, bytes]:
    """(certificate, key) PEM for hostb's names, signed by the group's CA (``signer="group"``, the
    CA the role made in the lab's state) or by a CA nobody trusts (``"foreign"``); expired when
    ``not_after_days`` < 0."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostb")])
    if signer == "group":
        pki = os.path.join(lab.STATE, "pki")
        with open(os.path.join(pki, "ca-cert.pem"), "rb") as handle:
            issuer = x509.load_pem_x509_certificate(handle.read()).subject
        with open(os.path.join(pki, "ca-key.pem"), "rb") as handle:
            signing_key = serialization.load_pem_private_key(handle.read(), password=None)
    else:
        issuer, signing_key = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody else's CA")]), key
    names = [x509.DNSName(h) for h in lab.HOSTS] + [x509.IPAddress(ipaddress.ip_address(a)) for a in lab.HOSTS.values()]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now + datetime.timedelta(days=not_after_days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(signing_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _state(host: str) -> str:
    res = lab.in_host(host, ["sh", "-c", "virsh -q list --all; ls -l /var/lib/libvirt/images"], check=False,
                      capture=True)
    return res.stdout or ""


@pytest.mark.parametrize("fault,expect", [
    ("expired", "expired on"),
    ("other_ca", "not signed by the CA"),
])
def test_bad_destination_certificate_is_caught_by_the_preflight(fault, expect):
    lab_cmd("guest", "--recreate", "--wait")
    source = where_is_guest()
    dest = [h for h in lab.HOSTS if h != source][0]
    cert, key = _certificate("group", -1) if fault == "expired" else _certificate("foreign", 365)
    before = {h: _state(h) for h in lab.HOSTS}
    old = _install_on(dest, {"server-cert.pem": cert, "server-key.pem": key})
    try:
        res, _stats = migrate()
        assert res.returncode != 0, res.stdout[-4000:]
        assert expect in res.stdout, res.stdout[-6000:]
        # the destination as the pre-flight knows it: the address the source dials
        assert re.search(r"server-cert\.pem on %s|server certificate of %s" % ((re.escape(lab.HOSTS[dest]),) * 2),
                         res.stdout), res.stdout[-6000:]
        assert where_is_guest() == source
        assert {h: _state(h) for h in lab.HOSTS} == before
    finally:
        _install_on(dest, old)


def _pki_state() -> tuple[bytes, dict[str, bytes]]:
    """(the group's CA certificate on the controller, each host's QEMU server certificate)."""
    def read(path: str) -> bytes:
        with open(path, "rb") as handle:
            return handle.read()
    return (read(os.path.join(lab.STATE, "pki", "ca-cert.pem")),
            {h: read(lab.hdir(h, "root", "etc", "pki", "qemu", "server-cert.pem")) for h in lab.HOSTS})


def test_rerun_of_the_role_keeps_the_pki_and_check_mode_changes_nothing():
    ca_before, certs_before = _pki_state()
    for check in (True, False):
        res = ansible_playbook("playbooks/prepare_hosts.yml", "--tags", "kvm_host_tls", *(["--check"] if check else []))
        assert res.returncode == 0, res.stdout[-6000:]
        for host in lab.HOSTS:
            assert re.search(r"%s\s+: ok=\d+\s+changed=0 " % host, res.stdout), res.stdout[-3000:]
    assert _pki_state() == (ca_before, certs_before)
    # renewal on request: new certificates of the same CA, the running guest untouched
    running_on = where_is_guest()
    pid_before = lab.in_host(running_on, ["cat", "/run/libvirt/qemu/%s.pid" % GUEST], capture=True).stdout
    res = ansible_playbook("playbooks/prepare_hosts.yml", "--tags", "kvm_host_tls", "-e", "kvm_host_tls_renew=true")
    assert res.returncode == 0, res.stdout[-6000:]
    ca_after, certs_after = _pki_state()
    assert ca_after == ca_before
    assert all(certs_after[h] != certs_before[h] for h in lab.HOSTS)
    assert lab.in_host(running_on, ["cat", "/run/libvirt/qemu/%s.pid" % GUEST], capture=True).stdout == pid_before
    assert where_is_guest() == running_on
    lab_cmd("guest", "--recreate", "--wait")
    res, stats = migrate()
    assert res.returncode == 0 and stats["transport"]["memory"] == "tls", res.stdout[-4000:]
