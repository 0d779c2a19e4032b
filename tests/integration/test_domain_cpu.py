"""Issue 4, lab part: a guest defined with a named CPU model of the other vendor than the one of
the CPU the lab's hosts give such a guest (``SandyBridge``/``Intel`` where that is AMD,
``EPYC``/``AMD`` where it is Intel), chosen per domain type from the hosts' own domain
capabilities (issue 13 item 7): for kvm the machine's vendor, for qemu (TCG) the vendor of the
CPU QEMU emulates at most, AMD on an Intel machine too. Before and after
kvmops.migration.domain_cpu (default policy: the migratable baseline of both hosts' host-model
CPUs).

What the lab shows (libvirt 11.3, QEMU 10.0, a host under nested KVM):
- libvirt's hypervisor CPU comparison (virConnectCompareHypervisorCPU, ``virsh
  hypervisor-cpu-compare --error``) reports the vendor clash on both hosts, for virttype kvm and
  qemu: "host CPU vendor does not match required CPU vendor Intel" (or AMD), each against its
  own domain type's host-model;
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

from conftest import adhoc_module, lab, run_module

NAME = "cputest"
GROUP = ["qemu+ssh://root@198.18.0.1/system", "qemu+ssh://root@198.18.0.2/system"]
#: vendor of the CPU a host gives a guest -> a named model of the other vendor (which such a
#: guest cannot get there)
FOREIGN_MODEL = {"AMD": ("SandyBridge", "Intel"), "Intel": ("EPYC", "AMD")}
VIRTTYPES = ("kvm", "qemu")


def guest_cpu_vendor(host: str, virttype: str) -> str:
    """The vendor of the CPU ``host`` gives a guest of domain type ``virttype``: the host-model
    of ``virsh domcapabilities --virttype`` (/domainCapabilities/cpu/mode[@name='host-model']/
    vendor). For kvm that is the machine's own vendor; for qemu (TCG) it is the vendor of the
    CPU QEMU emulates at most, whatever the machine (AMD for QEMU 10's TCG, on an Intel machine
    too), which is what virConnectCompareHypervisorCPU compares a TCG guest's CPU with."""
    caps = virsh(host, "domcapabilities", "--virttype", virttype).stdout
    m = re.search(r"<mode name='host-model'[^>]*>.*?<vendor>([^<]+)</vendor>", caps, re.S)
    assert m, "no host-model vendor in the %s domain capabilities of %s" % (virttype, host)
    return m.group(1)


@pytest.fixture(scope="module")
def foreign(lab_up) -> dict:
    """Per domain type (kvm, qemu), a CPU definition this lab's hosts cannot provide to such a
    guest, from their domain capabilities: ``{virttype: {vendor (the guest CPU's there), cpu
    (XML), model, other (its vendor), clash (libvirt's message)}}``. Chosen per domain type, so
    that the tests hold on an AMD machine and on an Intel one (whose TCG host-model is AMD)."""
    out = {}
    for virttype in VIRTTYPES:
        vendors = {host: guest_cpu_vendor(host, virttype) for host in lab.HOSTS}
        assert len(set(vendors.values())) == 1, vendors  # the lab's hosts share one machine and one QEMU
        vendor = vendors["hosta"]
        assert vendor in FOREIGN_MODEL, "no CPU model of another vendor known for %s (%s)" % (vendor, virttype)
        model, other = FOREIGN_MODEL[vendor]
        out[virttype] = {"vendor": vendor, "model": model, "other": other,
                         "cpu": "<cpu mode='custom' match='exact'><model>%s</model><vendor>%s</vendor></cpu>" % (model, other),
                         "clash": "host CPU vendor does not match required CPU vendor %s" % other}
    print("guest CPU vendors: %s" % {v: out[v]["vendor"] for v in VIRTTYPES})
    return out


def cputest_xml(virttype: str, cpu: str) -> str:
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


@pytest.fixture
def domain_cpu(ansible_adhoc):
    """``domain_cpu(host, check_mode=False, **args)``: the module on ``host`` for the test
    domain, through pytest-ansible's ``ansible_adhoc``; in check mode (with diff, which the
    four-way check reads) through ansible-playbook (``run_module``): pytest-ansible cannot give a
    call either."""
    def call(host: str, check_mode: bool = False, **args) -> dict:
        args = dict({"domain": NAME, "group_uris": GROUP}, **args)
        if check_mode:
            res = run_module(host, "kvmops.migration.domain_cpu", args, check_mode=True, diff=True)
        else:
            res = adhoc_module(ansible_adhoc, host, "kvmops.migration.domain_cpu", args)
        assert not res.get("failed"), res.get("msg")
        return res
    return call


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


def test_compare_api_reports_the_vendor_clash(foreign):
    """virConnectCompareHypervisorCPU (what pre-flight uses) on both hosts, both virttypes."""
    for host in lab.HOSTS:
        path = lab.hdir(host, "lab-test-foreign-cpu.xml")
        try:
            for virttype in VIRTTYPES:
                lab.write(path, foreign[virttype]["cpu"])
                res = lab.in_host(host, ["virsh", "hypervisor-cpu-compare", "--error", "--virttype", virttype, path],
                                  capture=True, check=False)
                assert res.returncode != 0 and foreign[virttype]["clash"] in res.stderr, (host, virttype, res.stderr)
        finally:
            os.unlink(path)


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm on this machine")
def test_kvm_guest_refused_then_normalised_boots_on_both_hosts(cputest, foreign, domain_cpu):
    foreign = foreign["kvm"]
    xml = cputest_xml("kvm", foreign["cpu"])
    for host in lab.HOSTS:
        define(host, xml)
        res = virsh(host, "start", NAME, check=False)
        assert res.returncode != 0 and foreign["clash"] in res.stderr, (host, res.stderr)
        assert domstate(host) == "shut off"
    virsh("hostb", "undefine", NAME)
    before = inactive_cpu("hosta")
    args = {"disable_features": ["arch-capabilities"]}  # nested-KVM quirk of the lab machine

    # four-way check: check mode reports the change and defines nothing
    res = domain_cpu("hosta", check_mode=True, **args)
    assert res["changed"] is True and res["effective"] == "next start" and res["virttype"] == "kvm"
    assert foreign["other"] not in res["cpu_after"] and res["cpu"]["vendor"] == foreign["vendor"]
    assert (res["cpu"]["mode"], res["cpu"]["match"], res["cpu"]["check"], res["cpu"]["fallback"]) == \
        ("custom", "exact", "partial", "forbid")
    assert {"name": "arch-capabilities", "policy": "disable"} in res["cpu"]["features"]
    assert [(v["host"], v["compatible"]) for v in res["validation"]] == [(u, True) for u in GROUP]
    assert foreign["model"] in res["diff"]["before"] and res["diff"]["after"] == res["cpu_after"]
    assert inactive_cpu("hosta") == before
    # run: defines it
    res = domain_cpu("hosta", **args)
    assert res["changed"] is True
    after = inactive_cpu("hosta")
    assert foreign["model"] not in after and foreign["other"] not in after and res["cpu"]["model"] in after
    # rerun, and rerun in check mode: no change
    for check_mode in (False, True):
        res = domain_cpu("hosta", check_mode=check_mode, **args)
        assert res["changed"] is False and res["effective"] == "unchanged"
    assert inactive_cpu("hosta") == after

    # the normalised definition starts on both hosts
    start_and_check("hosta", "kvm")
    define("hostb", virsh("hosta", "dumpxml", "--inactive", NAME).stdout)
    start_and_check("hostb", "kvm")


def test_tcg_guest_normalised_boots_on_both_hosts(cputest, foreign, domain_cpu):
    """The lab's guests run under TCG: there the other vendor's CPU is only refused when libvirt
    checks it (check='full'); the default policy's result boots on both hosts."""
    foreign = foreign["qemu"]
    define("hosta", cputest_xml("qemu", foreign["cpu"].replace("match='exact'", "match='exact' check='full'")))
    res = virsh("hosta", "start", NAME, check=False)
    assert res.returncode != 0 and "guest CPU doesn't match specification" in res.stderr, res.stderr
    res = domain_cpu("hosta")
    assert res["changed"] is True and res["virttype"] == "qemu"
    assert foreign["other"] not in res["cpu_after"] and res["cpu"]["check"] == "partial"
    assert all(v["compatible"] for v in res["validation"])
    assert domain_cpu("hosta")["changed"] is False
    # the undo the migrate_guest rollback runs: the saved <cpu> back, then the normalisation again
    normalised = inactive_cpu("hosta")
    undo = domain_cpu("hosta", restore_cpu=res["cpu_before"], group_uris=[])
    assert undo["changed"] is True and foreign["model"] in inactive_cpu("hosta") and foreign["other"] in inactive_cpu("hosta")
    assert domain_cpu("hosta", restore_cpu=res["cpu_before"], group_uris=[])["changed"] is False
    assert domain_cpu("hosta")["changed"] is True and inactive_cpu("hosta") == normalised
    start_and_check("hosta", "qemu")
    define("hostb", virsh("hosta", "dumpxml", "--inactive", NAME).stdout)
    start_and_check("hostb", "qemu")
