"""Issue 4, lab part: a guest defined with ``<model>SandyBridge</model><vendor>Intel</vendor>``
on the lab's AMD hosts, before and after kvmops.migration.domain_cpu (default policy: the
migratable baseline of both hosts' host-model CPUs).

What the lab shows (libvirt 11.3, QEMU 10.0, an AMD host under nested KVM):
- libvirt's hypervisor CPU comparison (virConnectCompareHypervisorCPU, ``virsh
  hypervisor-cpu-compare --error``) reports the vendor clash on both hosts, for virttype kvm and
  qemu: "host CPU vendor does not match required CPU vendor Intel";
- a ``type='kvm'`` guest with that CPU fails to start on both hosts with the same message;
- a ``type='qemu'`` (TCG) guest with that CPU starts: TCG emulates any vendor, and libvirt
  checks nothing with the default ``check='none'``; with ``check='full'`` it fails to start
  ("guest CPU doesn't match specification: extra features ..."). The lab's guests run under TCG.
- After domain_cpu both guests define and start on both hosts. Under KVM the baseline keeps
  ``arch-capabilities``, which this nested-KVM host cannot set (QEMU aborts: "failed to set MSR
  0x10a"): ``disable_features: [arch-capabilities]`` is needed there (the module's documented
  field case). The guest kernel does not boot under KVM on this machine (LAB_NOTES), so the KVM
  guest is only checked to run; the TCG guest is checked to boot (console ticks).

The test guest is ``cputest``: no disks, 128 MiB, its own MACs and address (198.18.0.20).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from conftest import lab, run_module

NAME = "cputest"
GROUP = ["qemu+ssh://root@198.18.0.1/system", "qemu+ssh://root@198.18.0.2/system"]
SANDYBRIDGE = "<cpu mode='custom' match='exact'><model>SandyBridge</model><vendor>Intel</vendor></cpu>"
VENDOR_CLASH = "host CPU vendor does not match required CPU vendor Intel"


def cputest_xml(virttype: str, cpu: str = SANDYBRIDGE) -> str:
    xml = lab.guest_xml(virttype, name=NAME, ip="198.18.0.20", mac_suffix=0x20)
    xml = re.sub(r"\s*<disk .*?</disk>", "", xml, flags=re.S)
    xml = re.sub(r"<memory unit='MiB'>\d+</memory>", "<memory unit='MiB'>128</memory>", xml)
    xml, n = re.subn(r"<cpu .*?</cpu>", cpu, xml, flags=re.S)
    assert n == 1 and "<disk" not in xml
    return xml


def virsh(host: str, *args: str, check: bool = True):
    res = lab.in_host(host, ["virsh", "-q"] + list(args), capture=True, check=False)
    if check and res.returncode != 0:
        raise AssertionError("virsh %s on %s: %s" % (" ".join(args), host, res.stderr))
    return res


def define(host: str, xml: str) -> None:
    path = lab.hdir(host, "%s.xml" % NAME)
    lab.write(path, xml)
    virsh(host, "define", path)


def domstate(host: str) -> str:
    return virsh(host, "domstate", NAME).stdout.strip()


def inactive_cpu(host: str) -> str:
    xml = virsh(host, "dumpxml", "--inactive", NAME).stdout
    return re.search(r"<cpu.*?</cpu>", xml, re.S).group(0)


def cleanup() -> None:
    for host in lab.HOSTS:
        virsh(host, "destroy", NAME, check=False)
        virsh(host, "undefine", NAME, check=False)
        for path in (lab.hdir(host, "%s.xml" % NAME),
                     lab.hdir(host, "var-log-libvirt", "qemu", "%s.log" % NAME),
                     lab.hdir(host, "var-log-libvirt", "qemu", "%s-console.log" % NAME)):
            if os.path.exists(path):
                os.unlink(path)
    assert lab.domain_hosts(NAME) == {}, "cputest left behind"


@pytest.fixture
def cputest(lab_up):
    cleanup()
    try:
        yield
    finally:
        cleanup()


def domain_cpu(host: str, check_mode: bool = False, **args) -> dict:
    res = run_module(host, "kvmops.migration.domain_cpu", dict({"domain": NAME, "group_uris": GROUP}, **args),
                     check_mode=check_mode, diff=True)
    assert not res.get("failed"), res.get("msg")
    return res


def start_and_check(host: str, virttype: str) -> None:
    res = virsh(host, "start", NAME, check=False)
    assert res.returncode == 0, "normalised guest does not start on %s: %s" % (host, res.stderr)
    if virttype == "qemu":
        console = lab.hdir(host, "var-log-libvirt", "qemu", "%s-console.log" % NAME)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with open(console, errors="replace") as f:
                if re.search(r"^tick \d+ ", f.read(), re.M):
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the TCG guest did not boot to its ticks on %s within 90 s" % host)
    else:
        time.sleep(2)  # QEMU aborts at once when the CPU cannot be set (MSR 0x10a)
    assert domstate(host) == "running"
    virsh(host, "destroy", NAME)


def test_compare_api_reports_the_vendor_clash(lab_up):
    """virConnectCompareHypervisorCPU (what pre-flight uses) on both hosts, both virttypes."""
    for host in lab.HOSTS:
        path = lab.hdir(host, "lab-test-sandybridge-cpu.xml")
        lab.write(path, SANDYBRIDGE)
        try:
            for virttype in ("kvm", "qemu"):
                res = lab.in_host(host, ["virsh", "hypervisor-cpu-compare", "--error", "--virttype", virttype, path],
                                  capture=True, check=False)
                assert res.returncode != 0 and VENDOR_CLASH in res.stderr, (host, virttype, res.stderr)
        finally:
            os.unlink(path)


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
def test_kvm_guest_refused_then_normalised_boots_on_both_hosts(cputest):
    xml = cputest_xml("kvm")
    for host in lab.HOSTS:
        define(host, xml)
        res = virsh(host, "start", NAME, check=False)
        assert res.returncode != 0 and VENDOR_CLASH in res.stderr, (host, res.stderr)
        assert domstate(host) == "shut off"
    virsh("hostb", "undefine", NAME)
    before = inactive_cpu("hosta")
    args = {"disable_features": ["arch-capabilities"]}  # nested-KVM quirk of the lab machine

    # four-way check: check mode reports the change and defines nothing
    res = domain_cpu("hosta", check_mode=True, **args)
    assert res["changed"] is True and res["effective"] == "next start" and res["virttype"] == "kvm"
    assert "Intel" not in res["cpu_after"] and res["cpu"]["vendor"] == "AMD"  # both hosts are AMD
    assert (res["cpu"]["mode"], res["cpu"]["match"], res["cpu"]["check"], res["cpu"]["fallback"]) == \
        ("custom", "exact", "partial", "forbid")
    assert {"name": "arch-capabilities", "policy": "disable"} in res["cpu"]["features"]
    assert [(v["host"], v["compatible"]) for v in res["validation"]] == [(u, True) for u in GROUP]
    assert "SandyBridge" in res["diff"]["before"] and res["diff"]["after"] == res["cpu_after"]
    assert inactive_cpu("hosta") == before
    # run: defines it
    res = domain_cpu("hosta", **args)
    assert res["changed"] is True
    after = inactive_cpu("hosta")
    assert "SandyBridge" not in after and "Intel" not in after and res["cpu"]["model"] in after
    # rerun, and rerun in check mode: no change
    for check_mode in (False, True):
        res = domain_cpu("hosta", check_mode=check_mode, **args)
        assert res["changed"] is False and res["effective"] == "unchanged"
    assert inactive_cpu("hosta") == after

    # the normalised definition starts on both hosts
    start_and_check("hosta", "kvm")
    define("hostb", virsh("hosta", "dumpxml", "--inactive", NAME).stdout)
    start_and_check("hostb", "kvm")


def test_tcg_guest_normalised_boots_on_both_hosts(cputest):
    """The lab's guests run under TCG: there the SandyBridge/Intel CPU is only refused when
    libvirt checks it (check='full'); the default policy's result boots on both hosts."""
    define("hosta", cputest_xml("qemu", SANDYBRIDGE.replace("match='exact'", "match='exact' check='full'")))
    res = virsh("hosta", "start", NAME, check=False)
    assert res.returncode != 0 and "guest CPU doesn't match specification" in res.stderr, res.stderr
    res = domain_cpu("hosta")
    assert res["changed"] is True and res["virttype"] == "qemu"
    assert "Intel" not in res["cpu_after"] and res["cpu"]["check"] == "partial"
    assert all(v["compatible"] for v in res["validation"])
    assert domain_cpu("hosta")["changed"] is False
    start_and_check("hosta", "qemu")
    define("hostb", virsh("hosta", "dumpxml", "--inactive", NAME).stdout)
    start_and_check("hostb", "qemu")
