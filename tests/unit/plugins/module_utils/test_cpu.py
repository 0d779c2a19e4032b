# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _cpu.py with fixture files (tests/unit/fixtures/cpu/README.md) and
the fake libvirt (fake_libvirt.py), whose CPU comparison mimics libvirt's messages."""

from __future__ import annotations

import re

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

from fake_libvirt import (HOSTB, INTEL, LAB, ROME, Domain, LibvirtError, connector, cpu_fixture, intel_conn,
                          lab_conn, rome_conn)

libvirt = pytest.importorskip("libvirt")

fixture = cpu_fixture


def domain(cpu, machine="pc-i440fx-7.2", virttype="kvm", emulator="/usr/bin/qemu-system-x86_64",
           name="vm1"):
    return ("<domain type='%s'><name>%s</name><memory unit='KiB'>65536</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='%s'>hvm</type></os>%s<clock offset='utc'/>"
            "<devices><emulator>%s</emulator></devices></domain>"
            % (virttype, name, machine, cpu, emulator))


C06_CPU = ("<cpu mode='custom' match='exact'><model fallback='allow'>EPYC</model><vendor>AMD</vendor>"
           "<feature policy='require' name='svm'/></cpu>")
SANDY_CPU = "<cpu mode='custom' match='exact'><model fallback='forbid'>SandyBridge</model><vendor>Intel</vendor></cpu>"


# --- parsing ------------------------------------------------------------------------------


def test_parse_lab_capabilities():
    caps = _cpu.parse_capabilities(fixture("lab-amd-capabilities.xml"))
    assert caps.uuid == "8d9ddfc6-4b76-406e-8682-a4f88451c69d"
    assert (caps.arch, caps.cpu_vendor) == ("x86_64", "AMD")
    assert "arch-capabilities" not in caps.cpu_features and "avx2" in caps.cpu_features
    assert caps.emulators("x86_64") == ["/usr/bin/qemu-system-x86_64"]
    machines = caps.machines("x86_64")
    assert machines["pc"] == "pc-i440fx-10.0" and "pc-q35-10.0" in machines
    assert "pc-i440fx-2.12" in caps.guests["x86_64"]["deprecated"]
    assert caps.guests["x86_64"]["domain_types"] == ["qemu", "kvm"]


def test_parse_domcaps_libvirt_11_3_has_blockers_and_canonical():
    dc = _cpu.parse_domcapabilities(fixture("lab-amd-domcaps-kvm.xml"))
    assert (dc.emulator, dc.virttype, dc.machine, dc.arch) == (
        "/usr/bin/qemu-system-x86_64", "kvm", "pc-i440fx-10.0", "x86_64")
    hm = dc.host_model
    assert (hm.model, hm.vendor, hm.fallback) == ("EPYC-Milan", "AMD", "forbid")
    assert ("arch-capabilities", "require") in hm.features  # the nested-KVM quirk of LAB_NOTES
    assert ("svm", "disable") in hm.features
    assert dc.models["Broadwell"].canonical == "Broadwell-v1"
    assert "avx2" in dc.models["Broadwell"].blockers
    # only pentium*/486 are usable under KVM on this machine (LAB_NOTES item 5)
    assert set(dc.usable_models()) == {"486", "486-v1", "pentium", "pentium-v1", "pentium2",
                                       "pentium2-v1", "pentium3", "pentium3-v1"}
    assert "avx512f" in dc.vocabulary


def test_parse_domcaps_libvirt_9_0_form_has_no_blockers():
    dc = _cpu.parse_domcapabilities(fixture("intel-cascadelake-domcaps-kvm.xml"))
    assert dc.host_model.model == "Cascadelake-Server" and dc.host_model.vendor == "Intel"
    ice = dc.models["Icelake-Client"]
    assert ice.deprecated and ice.canonical is None and ice.blockers == []
    assert "SandyBridge" in dc.usable_models() and "EPYC" not in dc.usable_models()


@pytest.mark.parametrize("name", ["lab-amd-domcaps-kvm.xml", "lab-amd-domcaps-qemu.xml",
                                  "intel-cascadelake-domcaps-kvm.xml", "amd-rome-domcaps-kvm.xml"])
def test_every_domcaps_fixture_has_host_model(name):
    dc = _cpu.parse_domcapabilities(fixture(name))
    assert dc.host_model is not None and dc.host_model.model
    assert dc.emulator == "/usr/bin/qemu-system-x86_64"
    assert _cpu.host_model_cpu_xml(_cpu.HostFacts("h", _cpu.parse_capabilities(
        fixture("lab-amd-capabilities.xml")), dc)).startswith("<cpu mode=\"custom\"")


def test_live_xml_differs_from_migratable_xml():
    live = _cpu.parse_guest_cpu(fixture("lab-dom-base-live.xml"))
    migratable = _cpu.parse_guest_cpu(fixture("lab-dom-base-live-migratable.xml"))
    assert live.check == "full" and ("hypervisor", "require") in live.features
    assert migratable.check == "partial" and migratable.features == [("svm", "disable")]
    assert _cpu.canonical_cpu(fixture("lab-dom-base-live-migratable.xml")) == \
        _cpu.canonical_cpu(fixture("lab-dom-base-inactive.xml"))


def test_domain_xml_flags():
    dom = Domain(xml=fixture("lab-dom-base-inactive.xml"), state="shutoff")
    _cpu.domain_xml(dom, migratable=True)
    _cpu.domain_xml(dom, inactive=True, secure=True)
    assert dom.flags_seen == [libvirt.VIR_DOMAIN_XML_MIGRATABLE,
                              libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE]


# --- compare: libvirt's texts as captured on the lab machine (libvirt 11.3) ------------------


@pytest.mark.parametrize("text,field,value", [
    ("the CPU is incompatible with host CPU: host CPU vendor does not match required CPU vendor Intel",
     "vendor_clash", "Intel"),
    ("the CPU is incompatible with host CPU: Host CPU does not provide required features: pni, svm",
     "missing_features", ["pni", "svm"]),
    ("internal error: Unknown CPU feature arch-facilities", "unknown_features", ["arch-facilities"]),
    ("internal error: Unknown CPU model NoSuchModel", "unknown_model", "NoSuchModel"),
    ("invalid argument: the machine 'pc-i440fx-bionic' is not supported by emulator "
     "'/usr/bin/qemu-system-x86_64'", "unsupported_machine", "pc-i440fx-bionic"),
])
def test_comparison_parses_libvirt_error_texts(text, field, value):
    conn = lab_conn()

    def fail(*_args):
        raise LibvirtError(text)
    conn.compareHypervisorCPU = fail
    res = _cpu.compare_cpu(conn, SANDY_CPU, "kvm", host="hostb")
    assert not res.compatible
    assert getattr(res, field) == value
    assert res.detail == text and "hostb" in res.msg


def test_compare_superset_is_compatible():
    res = _cpu.compare_cpu(lab_conn(), "<cpu mode='custom'><model>qemu64</model></cpu>", "qemu")
    assert res.compatible and res.result == "superset" and res.host == LAB


# --- C06 -------------------------------------------------------------------------------------


def test_c06_sandybridge_intel_on_lab_amd_fails_with_vendor_clash():
    xml = domain(SANDY_CPU, machine="pc-i440fx-10.0", virttype="qemu")
    finding = _cpu.check_cpu(lab_conn(), xml, "hostb")
    assert finding["status"] == "error" and finding["check"] == "cpu"
    assert finding["values"]["comparison"]["vendor_clash"] == "Intel"
    assert "vendor Intel" in finding["msg"] and "cannot change during a live migration" in finding["msg"]


def test_c06_epyc_svm_on_intel_destination_names_vendor_clash():
    finding = _cpu.check_cpu(intel_conn(), domain(C06_CPU), INTEL)
    assert finding["status"] == "error"
    assert finding["values"]["comparison"]["vendor_clash"] == "AMD"


def test_c06_without_vendor_names_missing_features_on_intel():
    cpu = "<cpu mode='custom' match='exact'><model>qemu64</model><feature name='svm'/></cpu>"
    comparison = _cpu.check_cpu(intel_conn(), domain(cpu), INTEL)["values"]["comparison"]
    assert comparison["missing_features"] == ["svm"] and comparison["vendor_clash"] is None


def test_c06_normalise_drops_vendor_and_svm_in_mixed_group():
    conns = {INTEL: intel_conn(), ROME: rome_conn()}
    plan = _cpu.plan_normalisation(domain(C06_CPU), list(conns.items()), policy="model",
                                   model="qemu64", features=["svm"])
    res = plan["result"]
    cpu = _cpu.parse_guest_cpu(res.cpu_after)
    assert cpu.vendor is None and "svm" not in cpu.feature_names()
    assert {"item": "feature svm", "reason": "nested-virtualisation feature missing on " + INTEL} in res.dropped
    assert [v.compatible for v in plan["validation"]] == [True, True]


def test_c06_baseline_keeps_vendor_when_every_host_has_it_but_drops_svm():
    # a baseline as libvirt could answer for these two AMD hosts if it kept svm (it does when
    # both host-models require it); the rules must still drop svm the lab host lacks
    baseline = ("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
                "<vendor>AMD</vendor><maxphysaddr mode='passthrough' limit='48'/>"
                "<feature policy='disable' name='pni'/>"
                "<feature policy='require' name='svm'/><feature policy='require' name='x2apic'/></cpu>")
    conns = {LAB: lab_conn(baseline=baseline), ROME: rome_conn()}
    plan = _cpu.plan_normalisation(domain(C06_CPU, virttype="kvm"), list(conns.items()),
                                   policy="baseline", virttype="kvm")
    cpu = _cpu.parse_guest_cpu(plan["result"].cpu_after)
    assert cpu.vendor == "AMD"                    # both hosts are AMD
    assert "svm" not in cpu.feature_names()       # the lab host has no nested SVM
    assert "maxphysaddr" not in plan["result"].cpu_after
    assert ("baseline", "kvm", 2, libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE) in conns[LAB].calls


def test_c06_keeps_svm_when_every_host_has_it():
    conns = {ROME: rome_conn(), "qemu+ssh://root@rome2/system": rome_conn("qemu+ssh://root@rome2/system")}
    plan = _cpu.plan_normalisation(domain(C06_CPU), list(conns.items()), policy="model",
                                   model="EPYC-Rome", features=["svm"])
    cpu = _cpu.parse_guest_cpu(plan["result"].cpu_after)
    assert "svm" in cpu.feature_names() and cpu.vendor is None  # model policy writes no vendor
    assert plan["result"].dropped == []


def test_c06_validation_failure_names_host_and_features():
    conns = {ROME: rome_conn(), INTEL: intel_conn()}
    with pytest.raises(KvmopsError) as err:
        _cpu.plan_normalisation(domain(C06_CPU), list(conns.items()), policy="model",
                                model="EPYC-Rome")
    assert INTEL in err.value.msg and "cannot run on every host" in err.value.msg
    assert err.value.values["validation"][0]["compatible"] is True


# --- C07 -------------------------------------------------------------------------------------


def test_c07_machine_type_not_on_destination_fails():
    xml = domain("", machine="pc-i440fx-bionic")
    caps = _cpu.parse_capabilities(fixture("intel-cascadelake-capabilities.xml"))
    finding = _cpu.check_machine(xml, caps, INTEL)
    assert finding["status"] == "error"
    assert "never changed for a running guest" in finding["msg"]
    assert finding["values"]["available"] == ["pc-i440fx-2.11", "pc-i440fx-6.2", "pc-i440fx-7.1",
                                              "pc-i440fx-7.2"]


def test_c07_machine_type_present_and_deprecated():
    caps = _cpu.parse_capabilities(fixture("lab-amd-capabilities.xml"))
    assert _cpu.check_machine(domain("", machine="pc-q35-10.0"), caps, LAB)["status"] == "ok"
    assert _cpu.check_machine(domain("", machine="pc-i440fx-2.12"), caps, LAB)["status"] == "warning"


def test_c07_compare_reports_unsupported_machine():
    res = _cpu.compare_cpu(intel_conn(), SANDY_CPU, "kvm", machine="pc-i440fx-bionic")
    assert res.result == "error" and res.unsupported_machine == "pc-i440fx-bionic"


def test_c07_arch_facilities_is_renamed_and_reported():
    cpu = ("<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model>"
           "<feature policy='require' name='arch-facilities'/></cpu>")
    xml = domain(cpu, machine="pc-i440fx-10.0", virttype="qemu")
    comparison = _cpu.compare_cpu(lab_conn(), _cpu.cpu_to_xml(_cpu._cpu_element(xml)), "qemu")
    assert comparison.unknown_features == ["arch-facilities"]
    assert "this libvirt calls it arch-capabilities" in comparison.msg
    finding = _cpu.check_feature_names(xml, LAB, comparison)
    assert finding["status"] == "error"
    assert finding["values"]["renames"] == {"arch-facilities": "arch-capabilities"}
    target = _cpu.build_target_cpu("model", model="qemu64", features=["arch-facilities"])
    res = _cpu.normalise_cpu(xml, target)
    assert res.renamed == {"arch-facilities": "arch-capabilities"}
    assert _cpu.parse_guest_cpu(res.cpu_after).feature_names() == ["arch-capabilities"]


def test_c07_disable_features_are_renamed_too():
    target = _cpu.build_target_cpu("host-model")
    res = _cpu.normalise_cpu(domain(""), target, disable_features=["arch_capabilities", "cqm"])
    assert _cpu.parse_guest_cpu(res.cpu_after).features == [("arch-capabilities", "disable"),
                                                            ("cmt", "disable")]


def test_c07_emulator_path_differs_gives_destination_xml():
    xml = domain("", emulator="/usr/bin/kvm")
    caps = _cpu.parse_capabilities(fixture("intel-cascadelake-capabilities.xml"))
    finding = _cpu.check_emulator(xml, caps, INTEL)
    assert finding["status"] == "warning"
    assert finding["values"]["dst_emulator"] == "/usr/bin/qemu-system-x86_64"
    dst = _cpu.destination_xml_with_emulator(xml, finding["values"]["dst_emulator"])
    assert _cpu.domain_platform(dst)["emulator"] == "/usr/bin/qemu-system-x86_64"
    assert _cpu.domain_platform(dst)["machine"] == "pc-i440fx-7.2"
    same = _cpu.check_emulator(domain(""), caps, INTEL)
    assert same["status"] == "ok"


# --- normalisation ---------------------------------------------------------------------------


def test_baseline_on_lab_with_arch_capabilities_disabled():
    conn = lab_conn(baseline=fixture("lab-amd-baseline-kvm.xml"))
    xml = fixture("lab-dom-sandy-inactive.xml").replace("type='qemu'", "type='kvm'")
    plan = _cpu.plan_normalisation(xml, [(LAB, conn)], disable_features=["arch-capabilities"])
    cpu = _cpu.parse_guest_cpu(plan["result"].cpu_after)
    assert (cpu.mode, cpu.match, cpu.check, cpu.model, cpu.fallback) == (
        "custom", "exact", "partial", "EPYC-Milan", "forbid")
    assert ("arch-capabilities", "disable") in cpu.features
    assert cpu.vendor == "AMD"
    assert plan["virttype"] == "kvm"


def test_normalise_is_idempotent():
    baseline = fixture("lab-amd-baseline-qemu.xml")
    target = _cpu.build_target_cpu("baseline", baseline)
    hosts = [lab_conn().facts("qemu")]
    first = _cpu.normalise_cpu(fixture("lab-dom-sandy-inactive.xml"), target, hosts)
    assert first.changed
    second = _cpu.normalise_cpu(first.xml, target, hosts)
    assert not second.changed and second.cpu_after == first.cpu_after


def test_normalise_keeps_topology():
    xml = domain("<cpu mode='custom'><model>qemu64</model><topology sockets='1' dies='1' "
                 "cores='2' threads='1'/></cpu>")
    res = _cpu.normalise_cpu(xml, _cpu.build_target_cpu("model", model="qemu64"))
    assert _cpu.parse_guest_cpu(res.cpu_after).topology["cores"] == "2"


def test_normalise_inserts_cpu_when_absent():
    res = _cpu.normalise_cpu(domain(""), _cpu.build_target_cpu("model", model="qemu64"))
    assert res.changed and res.cpu_before == ""
    assert _cpu.parse_guest_cpu(res.xml).model == "qemu64"


def test_host_model_policy_validates_support_only():
    plan = _cpu.plan_normalisation(domain(SANDY_CPU), [(ROME, rome_conn())], policy="host-model",
                                   disable_features=["arch-capabilities"])
    assert plan["validation"][0].compatible
    assert _cpu.parse_guest_cpu(plan["result"].cpu_after).mode == "host-model"


def test_unknown_policy_and_missing_model():
    with pytest.raises(KvmopsError):
        _cpu.build_target_cpu("passthrough")
    with pytest.raises(KvmopsError):
        _cpu.build_target_cpu("model")


# --- the module backend ----------------------------------------------------------------------


def _sandy_lab(state=libvirt.VIR_DOMAIN_SHUTOFF, persistent=True):
    dom = Domain(xml=fixture("lab-dom-sandy-inactive.xml"), state=state, persistent=persistent)
    local = lab_conn(baseline=fixture("lab-amd-baseline-qemu.xml"), domains={"cpu-sandy": dom})
    hostb = lab_conn(HOSTB)
    return dom, {LAB: local, HOSTB: hostb}


def test_sandybridge_intel_on_this_amd_machine_default_policy():
    dom, conns = _sandy_lab()
    params = {"uri": LAB, "domain": "cpu-sandy", "group_uris": [LAB, HOSTB]}
    result = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert result["changed"] and result["effective"] == "next start"
    assert result["virttype"] == "qemu"   # from the domain's type (TCG lab guest)
    assert result["cpu"]["vendor"] == "AMD" and result["cpu"]["model"] == "EPYC"
    assert "Intel" not in result["cpu_after"]
    assert len(conns[LAB].defined) == 1 and [v["compatible"] for v in result["validation"]] == [True, True]
    assert dom.flags_seen[-1] == libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    again = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert not again["changed"] and again["effective"] == "unchanged"
    assert len(conns[LAB].defined) == 1


def test_check_mode_reports_change_and_defines_nothing():
    _dom, conns = _sandy_lab()
    params = {"uri": LAB, "domain": "cpu-sandy", "group_uris": [LAB, HOSTB]}
    result = _cpu.run_domain_cpu(params, check_mode=True, connect=connector(conns))
    assert result["changed"] and conns[LAB].defined == []
    assert "SandyBridge" in result["diff"]["before"] and "EPYC" in result["diff"]["after"]


def test_running_guest_changes_persistent_definition_only():
    _dom, conns = _sandy_lab(state=libvirt.VIR_DOMAIN_RUNNING)
    params = {"uri": LAB, "domain": "cpu-sandy", "group_uris": [LAB, HOSTB]}
    result = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert result["effective"] == "next cold boot" and result["state"] == "running"
    assert len(conns[LAB].defined) == 1


def test_transient_domain_is_refused():
    _dom, conns = _sandy_lab(state=libvirt.VIR_DOMAIN_RUNNING, persistent=False)
    with pytest.raises(KvmopsError, match="transient"):
        _cpu.run_domain_cpu({"uri": LAB, "domain": "cpu-sandy"}, False, connect=connector(conns))


def test_missing_domain_is_named():
    _dom, conns = _sandy_lab()
    with pytest.raises(KvmopsError, match="nosuch is not defined"):
        _cpu.run_domain_cpu({"uri": LAB, "domain": "nosuch"}, False, connect=connector(conns))


def test_xml_input_returns_xml_and_defines_nothing():
    _dom, conns = _sandy_lab()
    params = {"xml": fixture("lab-dom-sandy-inactive.xml"), "group_uris": [LAB],
              "policy": "model", "model": "qemu64", "disable_features": ["svm"]}
    result = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert result["effective"] == "returned XML only" and conns[LAB].defined == []
    assert _cpu.parse_guest_cpu(result["xml"]).features == [("svm", "disable")]


def test_connection_helper_is_the_default():
    assert _cpu.run_domain_cpu.__defaults__[0] is _libvirt.connection


# --- undo (issue 13 item 5: the role restores the CPU when the move fails) --------------------


def test_result_carries_what_restores_the_persistent_cpu():
    dom, conns = _sandy_lab(state=libvirt.VIR_DOMAIN_RUNNING)
    original = dom.xml
    params = {"uri": LAB, "domain": "cpu-sandy", "group_uris": [LAB, HOSTB]}
    result = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert result["changed"] and "EPYC" in dom.xml
    undo = {"uri": LAB, "domain": "cpu-sandy", "restore_cpu": result["cpu_before"]}
    check = _cpu.run_domain_cpu(undo, check_mode=True, connect=connector(conns))
    assert check["changed"] and len(conns[LAB].defined) == 1
    restored = _cpu.run_domain_cpu(undo, check_mode=False, connect=connector(conns))
    assert restored["changed"] and restored["effective"] == "next cold boot"
    assert len(conns[LAB].defined) == 2
    assert _cpu.canonical_cpu(dom.xml) == _cpu.canonical_cpu(original)
    assert _cpu.parse_guest_cpu(dom.xml).vendor == "Intel"
    # only the <cpu> changed, and the secure XML (with secrets) was the base
    assert _strip_cpu(dom.xml) == _strip_cpu(original)
    assert dom.flags_seen[-1] == libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    again = _cpu.run_domain_cpu(undo, check_mode=False, connect=connector(conns))
    assert not again["changed"] and len(conns[LAB].defined) == 2


def _strip_cpu(xml):
    root = _cpu._parse(xml, "domain XML")
    cpu = root.find("cpu")
    if cpu is not None:
        root.remove(cpu)
    return _cpu.etree.tostring(root, method="c14n")


def test_restore_of_a_domain_that_had_no_cpu_removes_it():
    dom = Domain(xml=domain("", virttype="qemu"), state=libvirt.VIR_DOMAIN_SHUTOFF)
    conns = {LAB: lab_conn(baseline=fixture("lab-amd-baseline-qemu.xml"), domains={"vm1": dom}),
             HOSTB: lab_conn(HOSTB)}
    params = {"uri": LAB, "domain": "vm1", "group_uris": [LAB, HOSTB], "policy": "model",
              "model": "qemu64"}
    result = _cpu.run_domain_cpu(params, check_mode=False, connect=connector(conns))
    assert result["changed"] and result["cpu_before"] == "" and "<cpu" in dom.xml
    restored = _cpu.run_domain_cpu({"uri": LAB, "domain": "vm1", "restore_cpu": result["cpu_before"]},
                                   check_mode=False, connect=connector(conns))
    assert restored["changed"] and restored["cpu_after"] == "" and "<cpu" not in dom.xml


def test_restore_needs_a_domain_and_a_cpu_element():
    dom, conns = _sandy_lab()
    with pytest.raises(KvmopsError, match="restore_cpu needs domain"):
        _cpu.run_domain_cpu({"xml": dom.xml, "restore_cpu": ""}, False, connect=connector(conns))
    with pytest.raises(KvmopsError, match="must be a <cpu> element"):
        _cpu.run_domain_cpu({"uri": LAB, "domain": "cpu-sandy", "restore_cpu": "<os/>"}, False,
                            connect=connector(conns))


class OldLibvirtBaseline:
    """The baseline call of an older libvirt: it refuses each feature it does not know, one per
    call, as libvirt 9.0 does ('Unknown CPU feature cmpccxadd')."""

    def __init__(self, unknown, answer):
        self.unknown, self.answer, self.inputs = set(unknown), answer, []

    def baselineHypervisorCPU(self, emulator, arch, machine, virttype, xmls, flags):
        self.inputs.append(list(xmls))
        for xml in xmls:
            for name in re.findall(r"name=['\"]([^'\"]+)", xml):
                if name in self.unknown:
                    raise LibvirtError("internal error: Unknown CPU feature %s" % name)
        return self.answer


class NoBaseline:
    def __init__(self, text):
        self.text = text

    def baselineHypervisorCPU(self, *args):
        raise LibvirtError(self.text)


NEWER_HOST_MODEL = ("<cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model>"
                    "<feature policy='require' name='cmpccxadd'/><feature policy='require' name='x2apic'/>"
                    "<feature policy='require' name='avx-ifma'/></cpu>")
OLDER_HOST_MODEL = "<cpu mode='custom' match='exact'><model fallback='forbid'>EPYC</model><feature policy='require' name='x2apic'/></cpu>"


def test_group_baseline_leaves_out_features_the_computing_libvirt_does_not_know():
    old = OldLibvirtBaseline({"cmpccxadd", "avx-ifma"}, "<cpu><model>EPYC</model></cpu>")
    got = _cpu.group_baseline([("qemu+ssh://old/system", old)], [OLDER_HOST_MODEL, NEWER_HOST_MODEL], "qemu")
    assert got == "<cpu><model>EPYC</model></cpu>"
    assert len(old.inputs) == 3  # two features unknown: two refusals, then the baseline
    assert "cmpccxadd" not in old.inputs[-1][1] and "avx-ifma" not in old.inputs[-1][1]
    assert "x2apic" in old.inputs[-1][1]


def test_group_baseline_passes_to_the_next_host_and_names_every_reason():
    newer = OldLibvirtBaseline(set(), "<cpu><model>EPYC</model></cpu>")
    got = _cpu.group_baseline([("a", NoBaseline("internal error: Unknown CPU model Foo")), ("b", newer)],
                              [OLDER_HOST_MODEL], "qemu")
    assert got == "<cpu><model>EPYC</model></cpu>"
    with pytest.raises(KvmopsError) as err:
        _cpu.group_baseline([("a", NoBaseline("internal error: Unknown CPU model Foo")),
                             ("b", NoBaseline("no common model"))], [OLDER_HOST_MODEL], "qemu")
    assert "No host of the group could compute the baseline" in str(err.value)
    assert "Unknown CPU model Foo" in str(err.value) and "no common model" in str(err.value)
