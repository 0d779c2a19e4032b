"""Domain XML reading and the copy set (cases C12, C13)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml as dx
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from disk_fakes import FIXTURES, fixture

DOMAINS = sorted(os.listdir(os.path.join(FIXTURES, "domains")))


@pytest.mark.parametrize("name", DOMAINS)
def test_every_domain_fixture_parses(name):
    facts = dx.domain_facts(fixture("domains", name))
    assert facts["name"] and facts["uuid"]
    assert isinstance(facts["memory_bytes"], int) and facts["memory_bytes"] > 0
    for disk in facts["disks"]:
        assert disk["target"]
        assert isinstance(disk["copy"], bool) and disk["copy_reason"]


def test_dirty_ring_is_read_from_the_kvm_features():
    base = fixture("domains", "vm1.xml").replace("@DIR@", "/img")
    assert dx.domain_facts(base)["dirty_ring"] is False
    assert dx.domain_facts(base)["domain_type"] == "kvm"
    ring = base.replace("</name>", "</name><features><kvm><dirty-ring state='on' size='4096'/></kvm></features>", 1)
    off = base.replace("</name>", "</name><features><kvm><dirty-ring state='off'/></kvm></features>", 1)
    assert "<features>" not in base and dx.domain_facts(ring)["dirty_ring"] is True
    assert dx.domain_facts(off)["dirty_ring"] is False


def test_vm1_facts():
    facts = dx.domain_facts(fixture("domains", "vm1.xml").replace("@DIR@", "/img"))
    assert facts["memory_bytes"] == 2 * 1024 ** 3
    assert facts["current_memory_bytes"] == 1024 ** 3
    assert (facts["vcpus"], facts["arch"], facts["machine"]) == (2, "x86_64", "pc-q35-7.2")
    assert facts["emulator"] == "/usr/bin/qemu-system-x86_64"
    assert facts["nvram"] == "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd"
    assert facts["loader"] == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    assert "cpu" not in facts
    vda = facts["disks"][0]
    assert (vda["target"], vda["format"], vda["cache"], vda["discard"], vda["path"]) == (
        "vda", "qcow2", "writeback", "unmap", "/img/vm1.qcow2")
    assert vda["backing"] == [{"type": "file", "format": "qcow2", "index": "3", "path": "/img/base.qcow2",
                               "pool": None, "volume": None, "protocol": None, "name": None, "hosts": []}]
    vdb = facts["disks"][1]
    assert (vdb["type"], vdb["path"], vdb["io"], vdb["backing"]) == ("block", "/dev/vg0/vm1-data", "native", [])
    vdc = facts["disks"][3]
    assert (vdc["protocol"], vdc["name"], vdc["hosts"][0]["name"]) == ("rbd", "pool/vm1-ceph", "ceph1")
    vde = facts["disks"][5]
    assert (vde["pool"], vde["volume"], vde["path"]) == ("default", "vm1-scratch.raw", None)
    assert facts["interfaces"] == [
        {"type": "bridge", "source": "br-vlan774", "mac": "52:54:00:00:00:01", "model": "virtio", "target": "vnet0"},
        {"type": "network", "source": "default", "mac": "52:54:00:00:00:02", "model": "e1000e", "target": None},
    ]


def test_kernel_initrd_and_memory_units():
    facts = dx.domain_facts(fixture("domains", "c12_unsafe.xml"))
    assert facts["memory_bytes"] == 1024 ** 3
    assert facts["kernel"] == "/var/lib/kvmops/guest/vmlinuz"
    assert facts["initrd"] == "/var/lib/kvmops/guest/initrd.img"
    assert dx.domain_facts(fixture("domains", "c13_cdrom.xml"))["memory_bytes"] == 262144 * 1024


@pytest.mark.parametrize("value,unit,expected", [
    ("1", "b", 1), ("2", "KB", 2000), ("2", "k", 2048), ("3", "MiB", 3 * 1024 ** 2), ("1", "G", 1024 ** 3),
    ("5", None, 5120), ("1", "TB", 10 ** 12),
])
def test_to_bytes(value, unit, expected):
    assert dx.to_bytes(value, unit) == expected


def test_to_bytes_unknown_unit():
    with pytest.raises(KvmopsError, match="Unknown libvirt size unit"):
        dx.to_bytes("1", "furlongs")


def test_vm1_copy_set():
    disks = dx.disks(fixture("domains", "vm1.xml"))
    # vda qcow2 file, vdb block LV, vde pool volume are copied; cdroms, network, shareable,
    # read-only and empty drives never.
    assert dx.copy_set(disks) == ["vda", "vdb", "vde"]
    must_share = {d["target"] for d in disks if d["must_be_shared"]}
    assert must_share == {"vdc", "vdd"}
    assert dx.copy_set(disks, shared=["vdb"]) == ["vda", "vde"]


def test_c12_copy_set_holds_every_writable_local_disk():
    disks = dx.disks(fixture("domains", "c12_unsafe.xml"))
    assert dx.copy_set(disks) == ["vda", "vdb"]
    dx.check_copy_selection(disks, ["vda", "vdb"])


def test_c12_copying_only_vda_is_refused_naming_vdb():
    disks = dx.disks(fixture("domains", "c12_unsafe.xml"))
    with pytest.raises(KvmopsError) as err:
        dx.check_copy_selection(disks, ["vda"])
    assert "Unsafe migration" in str(err.value) and "vdb" in str(err.value)
    assert err.value.values["left_out"] == ["vdb"]
    # declared (and verified) shared: accepted
    dx.check_copy_selection(disks, ["vda"], shared=["vdb"])


def test_c12_selecting_a_disk_that_cannot_be_copied_is_refused():
    disks = dx.disks(fixture("domains", "vm1.xml"))
    with pytest.raises(KvmopsError, match="sda"):
        dx.check_copy_selection(disks, ["vda", "vdb", "vde", "sda"])
    with pytest.raises(KvmopsError, match="not a disk of the domain"):
        dx.check_copy_selection(disks, ["vdz"])


def test_c13_cdrom_seed_is_never_copied():
    disks = dx.disks(fixture("domains", "c13_cdrom.xml"))
    sda = [d for d in disks if d["target"] == "sda"][0]
    assert sda["readonly"] and not sda["copy"] and not sda["must_be_shared"]
    assert "cdrom" in sda["copy_reason"]
    assert sda["path"] == "/var/lib/libvirt/isos/seed.iso"
    assert dx.copy_set(disks) == ["vda"]


def test_cdrom_without_readonly_element_is_still_readonly():
    xml = ("<domain><name>x</name><devices><disk type='file' device='cdrom'><source file='/i.iso'/>"
           "<target dev='hdc'/></disk></devices></domain>")
    disk = dx.disks(xml)[0]
    assert disk["readonly"] and not disk["copy"]


def test_required_files_are_read_only_media_and_the_files_of_os():
    xml = fixture("domains", "c13_cdrom.xml").replace(
        "<os><type arch='x86_64' machine='pc'>hvm</type></os>",
        "<os><type arch='aarch64' machine='virt'>hvm</type><loader readonly='yes'>/fw/AAVMF_CODE.fd</loader>"
        "<nvram>/nvram/vm13_VARS.fd</nvram><kernel>/boot/Image</kernel><initrd>/boot/initrd</initrd>"
        "<dtb>/boot/virt.dtb</dtb></os>")
    facts = dx.domain_facts(xml)
    assert facts["dtb"] == "/boot/virt.dtb"
    assert [(f["what"], f["path"]) for f in dx.required_files(facts)] == [
        ("cdrom sda", "/var/lib/libvirt/isos/seed.iso"), ("kernel", "/boot/Image"), ("initrd", "/boot/initrd"),
        ("dtb", "/boot/virt.dtb"), ("loader", "/fw/AAVMF_CODE.fd"), ("nvram", "/nvram/vm13_VARS.fd")]
    assert "/boot/virt.dtb" in dx.referenced_paths(xml)


UEFI_OS = ("<domain><name>u</name><os><type arch='x86_64' machine='q35'>hvm</type>"
           "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>%s</os></domain>")


@pytest.mark.parametrize("nvram, expected", [
    ("<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/u_VARS.fd</nvram>",
     {"path": "/var/lib/libvirt/qemu/nvram/u_VARS.fd", "template": "/usr/share/OVMF/OVMF_VARS_4M.fd", "format": None}),
    ("<nvram>/var/lib/libvirt/qemu/nvram/u_VARS.fd</nvram>",
     {"path": "/var/lib/libvirt/qemu/nvram/u_VARS.fd", "template": None, "format": None}),
    ("<nvram type='file' format='qcow2' template='/t.qcow2'><source file='/n/u_VARS.qcow2'/></nvram>",
     {"path": "/n/u_VARS.qcow2", "template": "/t.qcow2", "format": "qcow2"}),
    ("<nvram type='network'><source protocol='iscsi' name='iqn.x/0'/></nvram>",
     {"path": None, "template": None, "format": None}),
    ("<nvram template=' '>/n/u_VARS.fd</nvram>", {"path": "/n/u_VARS.fd", "template": None, "format": None}),
    ("", {"path": None, "template": None, "format": None}),
], ids=["template", "no-template", "type-file-qcow2", "network", "blank-template", "bios"])
def test_nvram_of_reads_path_template_and_format(nvram, expected):
    assert dx.nvram_of(UEFI_OS % nvram) == expected
    facts = dx.domain_facts(UEFI_OS % nvram)
    assert (facts["nvram"], facts["nvram_template"], facts["nvram_format"]) == (
        expected["path"], expected["template"], expected["format"])


def test_required_files_list_the_nvram_template_after_the_nvram_file():
    facts = dx.domain_facts(UEFI_OS % "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/n/u_VARS.fd</nvram>")
    assert [(f["what"], f["path"]) for f in dx.required_files(facts)] == [
        ("loader", "/usr/share/OVMF/OVMF_CODE_4M.fd"), ("nvram", "/n/u_VARS.fd"),
        ("nvram template", "/usr/share/OVMF/OVMF_VARS_4M.fd")]


def test_nvram_template_with_an_entity_is_not_expanded():
    xml = ("<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>" + UEFI_OS % "<nvram template='/t'>&e;</nvram>")
    assert dx.nvram_of(xml)["path"] is None


def test_referenced_paths():
    paths = dx.referenced_paths(fixture("domains", "vm1.xml").replace("@DIR@", "/img"))
    assert {"/img/vm1.qcow2", "/img/base.qcow2", "/dev/vg0/vm1-data", "/img/isos/seed.iso",
            "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd"} <= paths


@pytest.mark.parametrize("text", ["not xml", "<network><name>x</name></network>",
                                  "<!DOCTYPE d [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><domain>&e;</domain>"])
def test_bad_xml_is_an_operator_error(text):
    with pytest.raises(KvmopsError):
        facts = dx.domain_facts(text)
        # an external entity must never be expanded
        assert "root:" not in str(facts)
        raise KvmopsError("parsed without expansion")


def test_with_discard_unmap_sets_only_unset_copied_disks():
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='raw' cache='none'/>
        <source file='/i/a.raw'/><target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='ignore'/>
        <source file='/i/b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='disk'><source file='/i/c.raw'/><target dev='vdc' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
        <source file='/i/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    </devices></domain>"""
    out, changed = dx.with_discard_unmap(xml, ["vda", "vdb", "vdc"])
    assert changed == ["vda", "vdc"]  # vdb keeps the mode its owner chose
    by_target = {d["target"]: d for d in dx.disks(out)}
    assert by_target["vda"]["discard"] == "unmap" and by_target["vda"]["cache"] == "none"
    assert by_target["vdb"]["discard"] == "ignore"
    assert by_target["vdc"]["discard"] == "unmap"
    assert by_target["sda"]["discard"] is None
    same, none = dx.with_discard_unmap(out, ["vda", "vdc"])
    assert none == [] and same == out


# ----------------------------------------------------------------- secrets (issue 13 item 4)
def test_redact_secrets_hides_every_secret_a_domain_xml_carries():
    xml = fixture("domains", "secrets.xml")
    assert xml.count("s3cret") == 8
    out = dx.redact_secrets(xml)
    assert "s3cret" not in out
    assert "passwd='%s'" % dx.REDACTED in out and 'passwd="%s"' % dx.REDACTED in out
    assert "<auth username='%s'>" % dx.REDACTED in out
    assert "<secret type='ceph' usage='%s'/>" % dx.REDACTED in out
    assert "<cookie name='session'>%s</cookie>" % dx.REDACTED in out
    # the rest is kept: still the same domain with the same disks
    assert passwd_valid_to(out) == "2026-12-31T00:00:00"
    assert [d["target"] for d in dx.disks(out)] == ["vda", "vdb", "sda", "vdc"]
    assert dx.domain_facts(out)["name"] == "vm-secrets"


def passwd_valid_to(xml):
    return dx.parse_xml(xml).find("devices/graphics").get("passwdValidTo")


def test_redact_secrets_leaves_xml_without_secrets_byte_for_byte():
    xml = fixture("domains", "vm1.xml")
    assert dx.redact_secrets(xml) == xml


@pytest.mark.parametrize("text, secret", [
    ("qemu-system-x86_64: -vnc 0.0.0.0:0,password=vnc-s3cret: invalid", "vnc-s3cret"),
    ("unsupported configuration: <graphics type=\"vnc\" passwd=\"a b'c\"/>", "a b'c"),
    ("PASSWD = 'x-s3cret' and tls_password=\"y-s3cret\"", "s3cret"),
])
def test_redact_secrets_in_messages(text, secret):
    assert secret not in dx.redact_secrets(text)


def test_redact_walks_a_whole_result_and_keeps_other_values():
    xml = fixture("domains", "secrets.xml")
    result = {"changed": True, "xml": xml, "n": 3, "diff": {"before": xml, "after": [xml, None]},
              "warnings": ("passwd='w-s3cret'",)}
    out = dx.redact(result)
    assert "s3cret" not in repr(out)
    assert out["changed"] is True and out["n"] == 3 and out["diff"]["after"][1] is None
    assert isinstance(out["warnings"], tuple)
    assert "s3cret" in result["xml"]  # the input is not modified
