"""Issue 14 item 4, case C07 for real: hosta runs Debian 12 (libvirt 9.0, QEMU 7.2, from the
stock release), hostb Debian 13 (libvirt 11.3, QEMU 10.0). Both are prepared by
prepare_hosts.yml. A move from the older to the newer host works; a move the other way is
refused by the pre-flight before anything changes, naming the machine type the older host lacks
and the fix. The lab is left as the other tests expect it: both hosts on Debian 13, prepared,
the demo guest on hosta."""

from __future__ import annotations

import json
import os
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


# Issue 16 item 3: a move the live CPU cannot make. A guest on the newer host runs with a CPU
# model that only the newer QEMU knows, on a machine type both QEMUs have: no live move can take
# it to the older host (the live CPU never changes); only a cold move can.
COLD = "labcold"
COLD_IP, COLD_MAC = "198.18.0.25", 0x25


def _custom_models(host: str, virttype: str, machine: str) -> tuple[dict[str, str], str | None]:
    """The CPU models of ``virsh domcapabilities``' custom mode on ``host`` (usable or not) with
    their vendor, and the vendor of the host-model CPU."""
    xml = lab.in_host_out(host, ["virsh", "domcapabilities", "--virttype", virttype, "--arch", "x86_64",
                                 "--machine", machine])
    custom = re.search(r"<mode name='custom'[^>]*>(.*?)</mode>", xml, re.S).group(1)
    models = {name: (re.search(r"vendor='([^']*)'", attrs) or re.search("()", "")).group(1)
              for attrs, name in re.findall(r"<model ([^>]*)>([^<]+)</model>", custom)}
    host_model = re.search(r"<mode name='host-model'[^>]*>(.*?)</mode>", xml, re.S)
    vendor = re.search(r"<vendor>([^<]+)</vendor>", host_model.group(1)) if host_model else None
    return models, vendor.group(1) if vendor else None


def _common_machine() -> str:
    """The newest versioned i440fx machine type that both hosts' QEMU offer (a cold move keeps
    the machine type: it is guest ABI)."""
    def machines(host: str) -> set[str]:
        return set(re.findall(r"<machine[^>]*>(pc-i440fx-[\d.]+)</machine>", lab.in_host_out(host, ["virsh", "capabilities"])))
    common = machines(OLD) & machines(NEW)
    return max(common, key=lambda m: tuple(int(x) for x in m.rsplit("-", 1)[1].split(".")))


@pytest.fixture
def newer_cpu_guest(mixed_lab):
    """``labcold`` running on the newer host with a CPU model only its QEMU knows; removed from
    both hosts afterwards."""
    virttype = lab.probe_accelerator(lab.build_guest_artifacts())
    machine = _common_machine()
    new_models, vendor = _custom_models(NEW, virttype, machine)
    old_models, _vendor = _custom_models(OLD, virttype, machine)
    only_new = sorted(set(new_models) - set(old_models))
    assert only_new, "no CPU model that only hostb's QEMU knows (%s, %s)" % (virttype, machine)
    # one of the host's own vendor, if there is one: the guest kernel then boots as on its host
    model = ([m for m in only_new if new_models[m] == vendor] or only_new)[0]
    lab_cmd("guest", "--name", COLD, "--ip", COLD_IP, "--mac", hex(COLD_MAC), "--host", NEW, "--recreate",
            "--wait", "--written-mib", "16", "--machine", machine, "--cpu-model", model)
    print("%s on %s: %s, machine %s, CPU model %s (unknown to %s)" % (COLD, NEW, virttype, machine, model, OLD))
    try:
        yield {"model": model, "machine": machine}
    finally:
        lab.remove_guest(NEW, COLD)
        lab.remove_guest(OLD, COLD)
        # (the manifest entries of its images go with the lab's guest --recreate of the fixture's teardown)


def test_cpu_only_the_newer_qemu_knows_is_refused_naming_the_cold_move(newer_cpu_guest):
    before = proof.host_snapshot()
    res = play("playbooks/migrate.yml", "-e", "vm=%s" % COLD, "-e", "dest=%s" % OLD)
    text = re.sub(r"\s+", " ", res.stdout)
    assert res.returncode != 0, res.stdout[-4000:]
    shown = re.search(r"ERROR +cpu .*?there\.", text)
    print(shown.group(0) if shown else "(no ERROR cpu line)")
    assert "The guest CPU cannot run on" in text, text[-4000:]
    assert ("Only a cold move can fix this: set migrate_guest_allow_cold_move=true and the persistent CPU is "
            "normalised to the group's baseline") in text, text[-4000:]
    assert "Traceback" not in res.stdout
    # nothing changed on either host: the guest runs on hostb as it did, no image, no domain on hosta
    assert proof.host_snapshot() == before
    assert lab.domain_hosts(COLD) == {NEW: "running"}


def test_cold_move_with_the_variable_moves_it_and_reports_the_downtime(newer_cpu_guest):
    allow = ("-e", "migrate_guest_allow_cold_move=true")
    before = proof.host_snapshot()
    plan = play("playbooks/migrate.yml", "-e", "vm=%s" % COLD, "-e", "dest=%s" % OLD, *allow, "--check")
    text = re.sub(r"\s+", " ", plan.stdout)
    assert plan.returncode == 0, plan.stdout[-6000:]
    assert "PLAN (check mode): %s would move COLD %s -> %s: shut %s down on the source with the ACPI power button" % (
        COLD, NEW, OLD, COLD) in text, text[-4000:]
    assert proof.host_snapshot() == before
    shown = re.search(r"PLAN \(check mode\): .*? \(its images there are kept\)\.", text)
    print(shown.group(0) if shown else "(no PLAN line)")

    res = play("playbooks/migrate.yml", "-e", "vm=%s" % COLD, "-e", "dest=%s" % OLD, *allow)
    text = re.sub(r"\s+", " ", res.stdout)
    assert res.returncode == 0, res.stdout[-8000:]
    m = re.search(r"%s moved COLD %s -> %s in ([\d.]+) s, downtime (\d+) ms: from the ACPI shutdown request until it "
                  r"ran on the destination: shutdown ([\d.]+) s, disk copy ([\d.]+) s, start ([\d.]+) s" % (COLD, NEW, OLD), text)
    assert m, text[-6000:]
    downtime_s, shutdown_s, copy_s, start_s = int(m.group(2)) / 1000.0, float(m.group(3)), float(m.group(4)), float(m.group(5))
    assert downtime_s >= shutdown_s + copy_s + start_s - 0.3, m.group(0)
    # issue 20: the started guest is watched, and its agent (it ran before the shutdown) answers after the boot
    health = re.search(r"guest on %s: healthy ([\d.]+) s after the switch-over, watched ([\d.]+) s \(agent answered "
                       r"guest-ping; clock offset ([-+][\d.]+) s -> ([-+][\d.]+) s \(re-synced\)\)" % OLD, text)
    assert health, text[-6000:]
    assert abs(float(health.group(4))) < 2.0, health.group(0)
    print("\n".join(line for line in res.stdout.splitlines() if "COLD" in line or "moved:" in line or "images created" in line))
    # shut down by its own OS on the ACPI button (not forced), running on hosta only, answering ping
    console = open(lab.hdir(NEW, "var-log-libvirt", "qemu", "%s-console.log" % COLD)).read()
    assert "kvmops guest: ACPI power button: powering off" in console
    assert "powered off hard" not in text
    assert lab.domain_hosts(COLD) == {OLD: "running"}
    lab.wait_guest_ping(COLD_IP, timeout=90)
    live = lab.in_host_out(OLD, ["virsh", "dumpxml", COLD])
    assert "<model fallback='forbid'>%s</model>" % newer_cpu_guest["model"] not in live
    assert "machine='%s'" % newer_cpu_guest["machine"] in live
    # sparse on hosta, and the old images kept on hostb
    for ext in ("raw", "swap"):
        st = os.stat(lab.hdir(OLD, "var-lib-libvirt", "images", "%s.%s" % (COLD, ext)))
        assert st.st_blocks * 512 < 64 * 1024 ** 2, (ext, st.st_blocks)
        assert os.path.exists(lab.hdir(NEW, "var-lib-libvirt", "images", "%s.%s" % (COLD, ext)))
    # a rerun is a no-op
    again = play("playbooks/migrate.yml", "-e", "vm=%s" % COLD, "-e", "dest=%s" % OLD, *allow)
    assert again.returncode == 0, again.stdout[-4000:]
    assert re.search(r"changed=0 ", again.stdout), again.stdout[-3000:]


def _without_manifests(snap: dict) -> dict:
    return {h: {k: v for k, v in s.items() if k != "manifest"} for h, s in snap.items()}


def _manifest_paths(host: str) -> list[str]:
    path = os.path.join(lab.hdir(host, "var-lib-kvmops-migration"), "manifest.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return sorted(e.get("path", "") for e in json.load(f).get("entries", []))


def test_cold_move_of_a_guest_that_ignores_the_acpi_button_stops_and_changes_nothing(newer_cpu_guest):
    # the guest's OS no longer handles its power button (its acpid is gone)
    lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "2", COLD_IP, "2323"],
            input="killall acpid\n", check=False, capture=True, timeout=30)
    before = proof.host_snapshot()
    res = play("playbooks/migrate.yml", "-e", "vm=%s" % COLD, "-e", "dest=%s" % OLD, "-e", "migrate_guest_allow_cold_move=true",
               "-e", "migrate_guest_shutdown_timeout_s=5")
    text = re.sub(r"\s+", " ", res.stdout)
    assert res.returncode != 0, res.stdout[-4000:]
    assert ("Guest %s did not power off within 5 s of its ACPI power button on the source: its OS ignores the button"
            % COLD) in text, text[-4000:]
    assert "set force_off (migrate_guest_force_off: true)" in text, text[-4000:]
    assert "The persistent CPU normalised by this run was restored." in text, text[-4000:]
    # it still runs on hostb with its old CPU; the images made on hosta are gone again, with their
    # manifest entries; the persistent definition on hostb is what it was
    assert lab.domain_hosts(COLD) == {NEW: "running"}
    assert _without_manifests(proof.host_snapshot()) == _without_manifests(before)
    assert not [p for p in _manifest_paths(OLD) if "/%s." % COLD in p], _manifest_paths(OLD)
    assert "Traceback" not in res.stdout
