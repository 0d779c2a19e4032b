"""Issue 20 item 4 in the lab: a UEFI guest moves with its UEFI variables.

A guest booted by OVMF (Debian's ovmf package, installed on the hosts by the kvm_host role;
``lab.py guest --uefi``: loader OVMF_CODE_4M.fd, its NVRAM file made from OVMF_VARS_4M.fd) gets
an EFI variable of its own, written from inside the guest through efivarfs (the kernel asks
OVMF's SetVariable, which writes the flash, which QEMU writes through to the NVRAM file on the
host). The main job then runs the four ways: check mode changes nothing on either host; the move
reports the NVRAM file on hostb with the content hosta's had at the switch-over (the summary line,
and the same SHA-256 read here on both hosts); a rerun changes nothing, nor does a rerun in check
mode. Finally a cold restart on hostb (destroy, start: OVMF boots again from that NVRAM file) and
the variable is still there, read inside the guest (the file itself changes at that boot: OVMF
keeps non-volatile counters)."""

from __future__ import annotations

import hashlib
import time

import pytest

import proof
from conftest import lab, lab_cmd, migrate_json

GUEST = "uefitest"
IP = "198.18.0.27"
MAC = "0x27"
#: an EFI variable of the test's own (name-GUID, as efivarfs names it)
VAR = "KvmopsTest-6b766d6f-7073-4d69-8772-617465000014"
#: its attributes (NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, little-endian u32) then its data
VALUE = "kvmops-uefi-variable-1"


def nvram_file(host: str) -> str:
    return lab.hdir(host, "var-lib-libvirt", "qemu", "nvram", "%s_VARS.fd" % GUEST)


def sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def guest_shell(command: str, tries: int = 20) -> str:
    """Run a command in the guest through its lab command port (eth1, 2323) and return its output.
    The guest's listener takes a moment to listen again after a connection: a refused connection
    is tried again."""
    for _attempt in range(tries):
        res = lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "3", IP, "2323"],
                      input=command + "\n", check=False, capture=True, timeout=30)
        if "can't connect" not in res.stderr:
            return res.stdout
        time.sleep(0.5)
    raise AssertionError("the guest's shell (%s port 2323) refused %d connections: %s" % (IP, tries, res.stderr))


def read_variable() -> str:
    # efivarfs: 4 bytes of attributes, then the data
    return guest_shell("tail -c +5 /sys/firmware/efi/efivars/%s; echo; echo END" % VAR)


def changed_count(recap: dict) -> int:
    return sum(int(host.get("changed", 0)) for host in recap.values())


@pytest.fixture
def uefi_guest(lab_up):
    # no guest agent: this test is about the UEFI variables, not the agent's clock re-sync (test_health)
    lab_cmd("guest", "--name", GUEST, "--ip", IP, "--mac", MAC, "--recreate", "--wait", "--written-mib", "16", "--uefi",
            "--no-agent")
    yield
    for host in lab.HOSTS:
        lab.remove_guest(host, GUEST)


def test_uefi_guest_moves_with_its_variables_and_boots_again_there(uefi_guest):
    assert "/sys/firmware/efi/efivars" in guest_shell("grep efivarfs /proc/mounts"), "efivarfs not mounted"
    guest_shell("printf '\\007\\000\\000\\000%s' > /sys/firmware/efi/efivars/%s" % (VALUE, VAR))
    assert VALUE in read_variable(), read_variable()
    written = sha256(nvram_file("hosta"))

    # 1. check mode: nothing changes on either host
    before = proof.host_snapshot()
    res, stats, out, recap = migrate_json(GUEST, "-e", "dest=hostb", "--check")
    assert res.returncode == 0, out[-6000:]
    assert stats.get("state") == "planned", stats
    assert proof.host_snapshot() == before
    assert lab.domain_hosts(GUEST) == {"hosta": "running"}

    # 2. the move: the NVRAM file on hostb has the content hosta's had at the switch-over
    res, stats, out, recap = migrate_json(GUEST, "-e", "dest=hostb")
    assert res.returncode == 0, out[-6000:]
    assert stats["state"] == "migrated" and lab.domain_hosts(GUEST) == {"hostb": "running"}, stats
    nvram = stats["nvram"]
    assert nvram["same"] is True, nvram
    assert nvram["path"] == nvram["dst_path"] == "/var/lib/libvirt/qemu/nvram/%s_VARS.fd" % GUEST
    src, dst = sha256(nvram_file("hosta")), sha256(nvram_file("hostb"))
    assert src == dst == nvram["src_sha256"] == nvram["dst_sha256"] == written, (src, dst, nvram, written)
    assert nvram["src_size"] == nvram["dst_size"] == 540672, nvram
    assert nvram["words"].startswith("nvram: same content as on the source at the switch-over"), nvram
    assert "nvram: same content as on the source at the switch-over" in out, out[-4000:]
    assert VALUE in read_variable()

    # 3. a rerun changes nothing; 4. nor does a rerun in check mode
    res, stats, out, recap = migrate_json(GUEST, "-e", "dest=hostb")
    assert res.returncode == 0 and stats["state"] == "already_migrated", out[-4000:]
    assert changed_count(recap) == 0, recap
    before = proof.host_snapshot()
    res, stats, out, recap = migrate_json(GUEST, "-e", "dest=hostb", "--check")
    assert res.returncode == 0 and stats["state"] == "already_migrated", out[-4000:]
    assert changed_count(recap) == 0, recap
    assert proof.host_snapshot() == before

    # a cold restart on hostb: OVMF boots from hostb's NVRAM file, and the variable is still there
    lab.in_host("hostb", ["virsh", "-q", "destroy", GUEST], capture=True)
    lab.in_host("hostb", ["virsh", "-q", "start", GUEST], capture=True)
    lab.wait_guest_ping(IP, timeout=120)
    lab.wait_for(lambda: "END" in guest_shell("echo END"), "the guest's shell on hostb", 60)
    assert VALUE in read_variable(), read_variable()


def test_firmware_missing_on_the_destination_stops_the_move_before_anything_changes(uefi_guest):
    """hostb without OVMF's files (an empty tmpfs over /usr/share/OVMF in its mount namespace, for
    this test only; a restart of the lab host would drop it too): the pre-flight to hostb, where
    the guest's NVRAM file is absent, stops on the loader and on the NVRAM template, each named with
    the fix (the ovmf package, the kvm_host role); nothing changes on either host."""
    loader, template = "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
    before = proof.host_snapshot()
    lab.in_host("hostb", ["mount", "-t", "tmpfs", "-o", "size=1m", "kvmops-uefi-test", "/usr/share/OVMF"], capture=True)
    try:
        assert lab.in_host("hostb", ["test", "-e", template], check=False).returncode == 1
        res, stats, out, _recap = migrate_json(GUEST, "-e", "dest=hostb")
    finally:
        lab.in_host("hostb", ["umount", "/usr/share/OVMF"], capture=True)
    assert lab.in_host("hostb", ["test", "-e", template], check=False).returncode == 0
    assert res.returncode != 0, out[-6000:]
    text = " ".join(out.replace("\\n", " ").split())
    # the findings name the destination by the address the move would use (hostb's ansible_host)
    dest = "198.18.0.2"
    assert "loader %s (the guest's firmware) is missing on %s" % (loader, dest) in text, text[-6000:]
    assert ("nvram template %s is missing on %s, and so is the guest's NVRAM file "
            "/var/lib/libvirt/qemu/nvram/%s_VARS.fd" % (template, dest, GUEST)) in text, text[-6000:]
    assert "install the package ovmf (Debian/Ubuntu) on %s" % dest in text and "kvm_host role" in text, text[-6000:]
    assert "Traceback" not in out
    assert proof.host_snapshot() == before
    assert lab.domain_hosts(GUEST) == {"hosta": "running"}
