# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _host (the host_info module's backend) against the fake libvirt (fake_libvirt.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _checks_storage, _disk_info, _host, _libvirt, _manifest
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from disk_fakes import FakeRunner, real_runner
from fake_libvirt import Connection, Domain, connector

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_FIXTURES = os.path.join(HERE, "..", "..", "fixtures", "cpu")


def host_conn(caps, domains, mem_stats=None):
    """A host (qemu:///system) answering host_facts' calls."""
    return Connection("qemu:///system", domains, caps=caps, mem_stats=mem_stats)


def caps():
    with open(os.path.join(CPU_FIXTURES, "lab-amd-capabilities.xml")) as f:
        return f.read()


@pytest.mark.parametrize("text, expected", [
    ('host_uuid = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"\n', "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"),
    ('#host_uuid = "00000000-1111-2222-3333-444444444444"\n', None),
    ('listen_tls = 0\n  host_uuid="a"  # set by hand\nhost_uuid = "b"\n', "b"),
    ("", None),
])
def test_parse_host_uuid(text, expected):
    assert _host.parse_host_uuid(text) == expected


@pytest.mark.parametrize("value, valid", [
    ("8d6c1f5e-1111-4a2b-9c3d-0123456789ab", True),
    ("ffffffff-ffff-ffff-ffff-ffffffffffff", False),
    ("00000000-0000-0000-0000-000000000000", False),
    ("not-a-uuid", False),
    (None, False),
])
def test_is_valid_host_uuid(value, valid):
    assert _host.is_valid_host_uuid(value) is valid


def test_version_text():
    assert _libvirt.version_text(11003000) == "11.3.0" and _libvirt.version_text(9000000) == "9.0.0"
    assert _libvirt.version_text(None) is None


def test_memory_from_stats():
    mem = _host.memory_from_stats({"total": 1000, "free": 100, "buffers": 10, "cached": 40})
    assert mem == {"memory_bytes": 1024000, "free_memory_bytes": 102400, "available_memory_bytes": 153600}


def test_host_facts_with_domains():
    doms = [Domain("vm2", uuid="u2", state=5, memory_kib=524288, vcpus=2),
            Domain("vm1", uuid="u1", state=1, memory_kib=262144, vcpus=1)]
    conn = host_conn(caps(), doms, {"total": 24 * 1024 ** 2, "free": 1024 ** 2, "buffers": 0, "cached": 1024 ** 2})
    out = _host.host_facts(conn, 'host_uuid = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"\n', True, hostname="hosta")
    h = out["host"]
    assert h["hostname"] == "hosta" and h["uuid"] and h["cpu_vendor"] == "AMD"
    assert h["uuid_configured"] == "8d6c1f5e-1111-4a2b-9c3d-0123456789ab" and h["uuid_configured_valid"] is True
    assert h["libvirt_version"] == "11.3.0" and h["hypervisor_version"] == "10.0.0" and h["cpus"] == 2
    assert h["free_memory_bytes"] == 1024 ** 3 and h["available_memory_bytes"] == 2 * 1024 ** 3
    assert [d["name"] for d in out["domains"]] == ["vm1", "vm2"]
    assert out["domains"][0] == {"name": "vm1", "uuid": "u1", "id": 1, "state": "running", "reason": 0,
                                 "postcopy": None, "postcopy_side": None, "active": True, "persistent": True, "memory_bytes": 256 * 1024 ** 2,
                                 "max_memory_bytes": 256 * 1024 ** 2, "vcpus": 1}
    assert out["domains"][1]["state"] == "shutoff" and not out["domains"][1]["active"]
    assert h["running_memory_bytes"] == 256 * 1024 ** 2 and h["running_vcpus"] == 1


def test_host_facts_without_domains_and_conf():
    conn = host_conn(caps(), [], {"total": 100, "free": 50})
    out = _host.host_facts(conn, "", False, include_domains=False)
    assert "domains" not in out and out["host"]["uuid_configured"] is None
    assert out["host"]["uuid_configured_valid"] is None and out["host"]["libvirtd_conf_exists"] is False


def test_non_libvirt_errors_propagate():
    with pytest.raises(RuntimeError):
        _host.host_facts(host_conn(caps(), [], None), "", True)


def test_facts_after_move_are_host_infos_facts_of_the_source(tmp_path):
    """What migrate/cold_move return as source_after: the role verifies from it that the guest
    left the source, so it must be host_info's shape (host, domains) of that connection."""
    doms = [Domain("other", uuid="u9", state=1, memory_kib=262144, vcpus=1)]
    conn = host_conn(caps(), doms, {"total": 100, "free": 50})
    conf = tmp_path / "libvirtd.conf"
    conf.write_text('host_uuid = "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"\n')
    out = _host.facts_after_move("qemu:///system", str(conf), connect=connector({"qemu:///system": conn}))
    assert [d["name"] for d in out["domains"]] == ["other"]
    assert out["host"]["uuid_configured"] == "8d6c1f5e-1111-4a2b-9c3d-0123456789ab"


def test_facts_after_move_that_cannot_be_read_are_none_for_the_role_to_read_them(tmp_path):
    # no connection to that URI: the role falls back to host_info on the source
    assert _host.facts_after_move("qemu:///nope", str(tmp_path / "x.conf"), connect=connector({})) is None
    with pytest.raises(RuntimeError):  # a bug is not hidden
        _host.facts_after_move("qemu:///system", str(tmp_path / "x.conf"),
                               connect=connector({"qemu:///system": host_conn(caps(), [], None)}))


def test_with_source_after_only_for_a_move_that_happened(monkeypatch):
    seen = []
    monkeypatch.setattr(_host, "facts_after_move", lambda uri: seen.append(uri) or {"host": {}, "domains": []})
    assert _host.with_source_after({"state": "planned"}, "qemu:///system") == {"state": "planned"}
    assert _host.with_source_after({"state": "already_migrated"}) == {"state": "already_migrated"}
    assert seen == []
    out = _host.with_source_after({"state": "migrated"}, "qemu:///system")
    assert out["source_after"] == {"host": {}, "domains": []} and seen == ["qemu:///system"]
    assert out["source_allocation_after"] == {}


def test_allocation_after_move_of_regular_files_only(tmp_path):
    image = tmp_path / "vm.raw"
    with open(image, "wb") as handle:
        handle.truncate(64 * 1024 ** 2)
        handle.seek(1024 ** 2)
        handle.write(b"x" * 1024 ** 2)
        handle.flush()
        os.fsync(handle.fileno())
    out = _host.allocation_after_move([str(image), str(tmp_path / "gone.raw"), "/dev/null"])
    assert list(out) == [str(image)] and out[str(image)] == os.stat(image).st_blocks * 512
    assert 1024 ** 2 <= out[str(image)] < 64 * 1024 ** 2  # sparse: what was written, not the size


def test_read_conf_missing(tmp_path):
    assert _host.read_conf(str(tmp_path / "nope.conf")) == (False, "")
    conf = tmp_path / "libvirtd.conf"
    conf.write_text('host_uuid = "x"\n')
    assert _host.read_conf(str(conf)) == (True, 'host_uuid = "x"\n')


# ------------------------------------------------------------------ guest (locate and describe)
GIB = 1024 ** 3
GUEST_XML = """<domain type='kvm'><name>vm1</name><uuid>0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6f</uuid>
<memory unit='KiB'>262144</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><loader readonly='yes' type='pflash'>@DIR@/OVMF_CODE.fd</loader>
<nvram>@DIR@/vm1_VARS.fd</nvram><kernel>@DIR@/vmlinuz</kernel><initrd>@DIR@/initrd.gz</initrd></os>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/>
<source file='@DIR@/vm1.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='raw' cache='none'/>
<source pool='default' volume='vm1-data.raw'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
<source file='@DIR@/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
</devices></domain>"""


def guest_conn(domains=(), pools=None):
    """A connection with domains by XML and pools that also answers host_facts' calls."""
    return Connection(domains=domains, pools=pools, caps=caps(), mem_stats={"total": 1024 ** 2, "free": 1024})


def guest_host(tmp_path):
    """A connection defining vm1: a qcow2 over a base, a raw pool volume, an ISO, an empty cdrom."""
    runner = real_runner()
    base, top, data = (str(tmp_path / n) for n in ("base.qcow2", "vm1.qcow2", "vm1-data.raw"))
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(GIB)])
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, str(2 * GIB)])
    runner.run(["qemu-img", "create", "-q", "-f", "raw", data, str(GIB)])
    (tmp_path / "seed.iso").write_bytes(b"\0" * 4096)
    xml = GUEST_XML.replace("@DIR@", str(tmp_path))
    return guest_conn([Domain("vm1", xml)], pools={"default": {"vm1-data.raw": data}})


def test_guest_facts_are_disk_infos_disks_and_the_files_not_copied(tmp_path):
    conn = guest_host(tmp_path)
    out = _host.guest_facts(conn, "vm1", "qemu:///system", real_runner())
    expected = _disk_info.disk_info({"domain": "vm1"}, runner=real_runner(), connect=connector(conn))["disks"]
    assert out["guest_error"] is None
    assert out["guest_disks"] == expected
    assert [d["target"] for d in out["guest_disks"]] == ["vda", "vdb", "sda", "sdb"]
    assert out["guest_disks"][1]["path"] == str(tmp_path / "vm1-data.raw")  # the volume, resolved
    assert out["guest_paths"] == [str(tmp_path / n) for n in (
        "seed.iso", "vmlinuz", "initrd.gz", "OVMF_CODE.fd", "vm1_VARS.fd")]


def test_guest_facts_read_the_nvram_file_its_xml_names_and_an_absent_one_is_reported(tmp_path):
    conn = guest_host(tmp_path)
    out = _host.guest_facts(conn, "vm1", "qemu:///system", real_runner())
    assert out["guest_nvram"]["path"] == str(tmp_path / "vm1_VARS.fd")
    assert out["guest_nvram"]["exists"] is False and "does not exist" in out["guest_nvram"]["error"]
    (tmp_path / "vm1_VARS.fd").write_bytes(b"\x01" * 540672)
    nvram = _host.guest_facts(conn, "vm1", "qemu:///system", real_runner())["guest_nvram"]
    assert nvram["exists"] is True and nvram["size"] == 540672 and nvram["error"] is None
    assert nvram["sha256"] == hashlib.sha256(b"\x01" * 540672).hexdigest()


def test_guest_facts_list_the_nvram_template_among_the_files_not_copied(tmp_path):
    runner = real_runner()
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "vm1.qcow2"), str(GIB)])
    xml = GUEST_XML.replace("@DIR@", str(tmp_path)).replace(
        "<nvram>", "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>").split("<disk type='volume'", maxsplit=1)[0] + "</devices></domain>"
    out = _host.guest_facts(guest_conn([Domain("vm1", xml)]), "vm1", "qemu:///system", runner)
    assert out["guest_paths"][-2:] == [str(tmp_path / "vm1_VARS.fd"), "/usr/share/OVMF/OVMF_VARS_4M.fd"]


def test_guest_facts_by_uuid(tmp_path):
    conn = guest_host(tmp_path)
    conn.lookupByUUIDString = lambda u: conn.domains[0]
    out = _host.guest_facts(conn, "0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6f", "qemu:///system", real_runner())
    assert [d["target"] for d in out["guest_disks"]] == ["vda", "vdb", "sda", "sdb"]


def test_guest_facts_where_the_guest_is_not_defined():
    out = _host.guest_facts(guest_conn([]), "vm1", "qemu:///system", real_runner())
    assert out == {"guest_disks": [], "guest_paths": [], "guest_nvram": None, "guest_error": None}


def test_an_unreadable_guest_image_is_guest_error_and_the_host_facts_still_come(tmp_path):
    conn = guest_host(tmp_path)
    runner = FakeRunner(fallback=real_runner().fallback, tools=())
    runner.add(["qemu-img", "info"], rc=1, stderr="qemu-img: Could not open: Permission denied")
    out = _host.run_host_info(params(guest="vm1"), runner=runner, connect=connector(conn))
    assert out["guest_disks"] == [] and out["guest_paths"] == []
    assert "qemu-img" in out["guest_error"] and "Permission denied" in out["guest_error"]
    assert out["host"]["cpu_vendor"] == "AMD"


# ------------------------------------------------------------------ paths (a destination's facts)
MOUNTS = """/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,relatime 0 0
/dev/vdb /srv/vm\\040images xfs rw 0 0
tmpfs /var/lib/libvirt tmpfs rw 0 0
/dev/vda /var/lib/libvirt ext4 rw,relatime 0 0
server:/export /mnt/hung nfs4 rw 0 0
"""


def statvfs(sizes):
    """A statvfs that knows the mount points of ``sizes`` ({mount: (blocks, bavail, files,
    favail)}, 4 KiB blocks) and fails for any other path."""
    def fake(path):
        if path not in sizes:
            raise FileNotFoundError(2, "No such file or directory", path)
        blocks, bavail, files, favail = sizes[path]
        return os.statvfs_result((4096, 4096, blocks, blocks, bavail, files, favail, favail, 0, 255))
    return fake


def test_parse_mounts_decodes_escapes_and_keeps_the_visible_filesystem():
    mounts = {m["mount"]: m for m in _host.parse_mounts(MOUNTS)}
    assert mounts["/srv/vm images"] == {"device": "/dev/vdb", "mount": "/srv/vm images", "fstype": "xfs",
                                        "options": "rw"}
    assert mounts["/var/lib/libvirt"]["fstype"] == "ext4"  # mounted over the tmpfs
    assert len(mounts) == 5


def test_mounts_holding_the_paths_in_the_shape_of_ansible_mounts():
    fake = statvfs({"/": (1000, 400, 100, 60), "/var/lib/libvirt": (2000, 1500, 200, 150)})
    paths = ["/var/lib/libvirt/images/vm1.qcow2", "/var/lib/libvirt/images/base.qcow2", "/boot/vmlinuz",
             "relative/path"]
    out = _host.mounts_holding(paths, MOUNTS, statvfs=fake)
    assert [m["mount"] for m in out] == ["/var/lib/libvirt", "/"]  # each once; /mnt/hung never read
    assert out[0] == {"mount": "/var/lib/libvirt", "device": "/dev/vda", "fstype": "ext4",
                      "options": "rw,relatime", "size_total": 2000 * 4096, "size_available": 1500 * 4096,
                      "block_size": 4096, "block_total": 2000, "block_available": 1500, "block_used": 500,
                      "inode_total": 200, "inode_available": 150, "inode_used": 50}
    # what the pre-flight makes of them, given as dest_mounts
    fs = _checks_storage.DestFiles(mounts=out).filesystem("/var/lib/libvirt/images/new.raw")
    assert fs == {"mount": "/var/lib/libvirt", "device": "/dev/vda", "free_bytes": 1500 * 4096}


def test_a_filesystem_that_cannot_be_read_is_an_error_naming_it():
    with pytest.raises(KvmopsError, match="/srv/vm images"):
        _host.mounts_holding(["/srv/vm images/vm1.raw"], MOUNTS, statvfs=statvfs({}))


def test_interface_names_are_the_directories_of_sys_class_net(tmp_path):
    for name in ("eth0", "br-vlan774", "lo"):
        (tmp_path / "devices" / name).mkdir(parents=True)
        (tmp_path / "net").mkdir(exist_ok=True)
        (tmp_path / "net" / name).symlink_to(tmp_path / "devices" / name)
    (tmp_path / "net" / "bonding_masters").write_text("\n")
    assert _host.interface_names(str(tmp_path / "net")) == ["br-vlan774", "eth0", "lo"]
    with pytest.raises(KvmopsError, match="network interfaces"):
        _host.interface_names(str(tmp_path / "nope"))


def sources(tmp_path):
    """mounts_file, net_dir and statvfs of a host whose every path is on / (tmp_path/net: lo)."""
    (tmp_path / "mounts").write_text("/dev/vda / ext4 rw 0 0\n")
    (tmp_path / "net" / "lo").mkdir(parents=True)
    return {"mounts_file": str(tmp_path / "mounts"), "net_dir": str(tmp_path / "net"),
            "statvfs": statvfs({"/": (1000, 400, 100, 60)})}


def test_path_facts_without_a_manifest(tmp_path):
    image = str(tmp_path / "x.raw")
    real_runner().run(["qemu-img", "create", "-q", "-f", "raw", image, str(GIB)])
    paths = [image, str(tmp_path / "absent.qcow2")]
    out = _host.path_facts(paths, real_runner(), str(tmp_path / "no" / "manifest.json"), **sources(tmp_path))
    assert out["paths"] == _disk_info.disk_info({"paths": paths}, runner=real_runner())["disks"]
    assert [p["exists"] for p in out["paths"]] == [True, False]
    assert [m["mount"] for m in out["mounts"]] == ["/"] and out["mounts"][0]["size_available"] == 400 * 4096
    assert out["interfaces"] == ["lo"]
    assert out["manifest"] == []


def test_path_facts_with_a_manifest(tmp_path):
    manifest = _manifest.Manifest(str(tmp_path / "state" / "manifest.json"))
    entry = {"host": "hostb", "path": "/var/lib/libvirt/images/vm1.qcow2", "kind": "file", "format": "qcow2",
             "virtual_size": 2 * GIB, "created_at": "2026-11-29T20:00:00Z", "for_domain": "vm1", "inode": 12}
    manifest.add(entry)
    out = _host.path_facts([], real_runner(), manifest.path, **sources(tmp_path))
    assert out == {"paths": [], "mounts": [], "interfaces": ["lo"], "manifest": [entry]}


def params(**extra):
    base = {"uri": "qemu:///system", "libvirtd_conf": "/nonexistent/libvirtd.conf", "domains": False,
            "guest": None, "paths": None, "manifest_path": "/nonexistent/manifest.json"}
    base.update(extra)
    return base


def test_run_host_info_adds_guest_and_path_facts_only_when_asked(tmp_path):
    conn, host = guest_host(tmp_path), sources(tmp_path)
    plain = _host.run_host_info(params(), connect=connector(conn))
    assert set(plain) == {"host"}
    qcow2 = str(tmp_path / "vm1.qcow2")
    both = _host.run_host_info(params(guest="vm1", paths=[qcow2], formats={qcow2: "qcow2"}),
                               runner=real_runner(), connect=connector(conn), **host)
    assert set(both) == {"host", "guest_disks", "guest_paths", "guest_nvram", "guest_error", "paths", "mounts", "interfaces",
                         "manifest"}
    assert both["paths"][0]["virtual_size"] == 2 * GIB and both["manifest"] == []
    # no declared format: read as raw (the file's own size), never probed as qcow2
    undeclared = _host.run_host_info(params(paths=[qcow2]), runner=real_runner(), connect=connector(conn), **host)
    assert (undeclared["paths"][0]["format"], undeclared["paths"][0]["virtual_size"]) == (
        "raw", -(-os.path.getsize(qcow2) // 512) * 512)
    empty = _host.run_host_info(params(paths=[]), connect=connector(conn), **host)
    assert (empty["paths"], empty["mounts"], empty["interfaces"]) == ([], [], ["lo"])
