"""Issue 13 item 1: guest-controlled format probing, path normalisation and the pool rule.

A raw disk's first sector belongs to the guest. The hostile image of these tests is a REAL raw
file whose first 64 KiB are the header of a qcow2 image of 100 GiB backed by /etc/passwd:
``qemu-img info`` without ``-f`` reads it as that qcow2. Every reader of ours must report it as
what its owner declared (raw, its own size, no backing chain) and never touch /etc/passwd.
"""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _disk_image
from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _host
from ansible_collections.kvmops.migration.plugins.module_utils import _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _image_use
from ansible_collections.kvmops.migration.plugins.module_utils import _manifest
from ansible_collections.kvmops.migration.plugins.module_utils import _storage
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from disk_fakes import FakeRunner, real_runner
from fake_libvirt import Connection, Domain, connector

GiB = 1024 ** 3
HOST_FILE = "/etc/passwd"


@pytest.fixture(name="hostile_raw")
def fixture_hostile_raw(tmp_path):
    """A 1 GiB raw image whose first cluster holds a qcow2 header naming /etc/passwd (raw) as
    backing file and 100 GiB as virtual size, as a guest can write it."""
    runner = real_runner()
    raw, hdr = str(tmp_path / "guest.raw"), str(tmp_path / "hdr.qcow2")
    assert runner.run(["qemu-img", "create", "-q", "-f", "raw", raw, str(GiB)]).rc == 0
    assert runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", HOST_FILE, "-F", "raw",
                       hdr, "100G"]).rc == 0
    with open(hdr, "rb") as src:
        header = src.read(64 * 1024)
    with open(raw, "r+b") as dst:  # what the guest does: write its first sector(s)
        dst.write(header)
    assert os.path.getsize(raw) == GiB
    # the trap is real: a probing reader sees a qcow2 of 100 GiB backed by the host file
    probed = runner.run(["qemu-img", "info", "--output=json", "-U", raw])
    assert '"format": "qcow2"' in probed.stdout and HOST_FILE in probed.stdout
    return raw


def _no_host_file(runner):
    """No command we ran named the host file."""
    return not [c for c in runner.calls if any(HOST_FILE in a for a in c)]


@pytest.fixture(name="no_checksums")
def fixture_no_checksums(monkeypatch):
    hashed = []
    real = _image_geometry.file_checksum
    monkeypatch.setattr(_disk_info, "file_checksum", lambda path, *a, **k: hashed.append(path) or real(path, *a, **k))
    return hashed


# ----------------------------------------------------------------- format probing
@pytest.mark.parametrize("declared", ["raw", None])
def test_hostile_raw_disk_is_described_as_raw_without_backing(hostile_raw, no_checksums, declared):
    runner = real_runner()
    disk = {"target": "vda", "device": "disk", "type": "file", "path": hostile_raw, "format": declared,
            "readonly": False, "shareable": False, "backing": []}
    out = _disk_info.describe_disk(disk, runner, force_share=True, checksums=True)
    assert (out["format"], out["detected_format"], out["virtual_size"]) == ("raw", "raw", GiB)
    assert out["backing"] == [] and out["backing_file"] is None and out["backing_format"] is None
    assert _no_host_file(runner) and HOST_FILE not in no_checksums
    infos = [c for c in runner.commands("qemu-img") if c[1] == "info"]
    assert infos and all(c[c.index("-f") + 1] == "raw" and "--backing-chain" not in c for c in infos)


def test_hostile_raw_disk_of_a_running_domain(hostile_raw, no_checksums):
    xml = ("<domain type='kvm'><name>vm1</name><uuid>0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6f</uuid>"
           "<memory unit='MiB'>256</memory><devices><disk type='file' device='disk'>"
           "<driver name='qemu' type='raw'/><source file='%s'/><backingStore/><target dev='vda' bus='virtio'/>"
           "</disk></devices></domain>" % hostile_raw)
    runner = real_runner()
    result = _disk_info.disk_info({"domain": "vm1", "checksums": True}, runner=runner,
                                  connect=connector(Connection(domains=[Domain("vm1", xml)])))
    (disk,) = result["disks"]
    assert (disk["format"], disk["virtual_size"], disk["backing"]) == ("raw", GiB, [])
    assert _no_host_file(runner) and no_checksums == []


def test_hostile_raw_disk_by_path(hostile_raw, no_checksums):
    runner = real_runner()
    (disk,) = _disk_info.disk_info({"paths": [hostile_raw], "checksums": True}, runner=runner)["disks"]
    assert (disk["format"], disk["virtual_size"], disk["backing"]) == ("raw", GiB, [])
    assert _no_host_file(runner) and no_checksums == []


def test_host_info_paths_never_follow_a_backing_file(hostile_raw, tmp_path):
    """Even declared qcow2 (the source's disk at that path is qcow2), a destination file is read
    as one layer: its header's backing file is not opened."""
    runner = real_runner()
    mounts = tmp_path / "mounts"
    mounts.write_text("")
    (net := tmp_path / "net").mkdir()
    out = _host.path_facts([hostile_raw], runner, str(tmp_path / "m.json"), mounts_file=str(mounts),
                           net_dir=str(net), formats={hostile_raw: "qcow2"})
    (disk,) = out["paths"]
    assert disk["backing"] == [] and _no_host_file(runner)
    undeclared = _host.path_facts([hostile_raw], runner, str(tmp_path / "m.json"), mounts_file=str(mounts),
                                  net_dir=str(net))
    assert (undeclared["paths"][0]["format"], undeclared["paths"][0]["virtual_size"]) == ("raw", GiB)


def test_a_declared_qcow2_path_that_is_raw_reads_as_raw_on_a_destination(tmp_path):
    runner = real_runner()
    raw = str(tmp_path / "foreign.raw")
    runner.run(["qemu-img", "create", "-q", "-f", "raw", raw, str(GiB)])
    (disk,) = _disk_info.describe_paths([raw], runner, formats={raw: "qcow2"}, fallback_raw=True)
    assert (disk["format"], disk["virtual_size"]) == ("raw", GiB)
    with pytest.raises(KvmopsError, match="as qcow2"):
        _disk_info.describe_paths([raw], runner, formats={raw: "qcow2"})


def ctx_for(tmp_path, **kw):
    return _disk_image.HostContext(host="hostb", runner=real_runner(), manifest=_manifest.Manifest(str(tmp_path / "m.json")),
                                   **kw)


def _record(ctx, path, fmt="raw", size=GiB):
    ctx.manifest.add({"host": ctx.host, "path": path, "kind": "file", "format": fmt, "virtual_size": size,
                      "created_at": "x", "for_domain": "vm1", "inode": os.lstat(path).st_ino})


def test_our_raw_image_with_a_guest_written_header_is_reused_as_raw(hostile_raw, tmp_path):
    """A move back to a host that holds the raw image we made: the guest wrote a qcow2 header into
    it meanwhile; it is still our raw image of 1 GiB."""
    ctx = ctx_for(tmp_path)
    _record(ctx, hostile_raw)
    result = _disk_image.ensure_image(_disk_image.ImageSpec(path=hostile_raw, format="raw", virtual_size=GiB, for_domain="vm1"), ctx)
    assert (result["action"], result["after"]["format"], result["after"]["virtual_size"]) == ("reused", "raw", GiB)
    assert result["after"]["backing_file"] is None and _no_host_file(ctx.runner)


def test_removing_our_raw_image_reads_it_as_raw(hostile_raw, tmp_path):
    ctx = ctx_for(tmp_path)
    _record(ctx, hostile_raw)
    result = _disk_image.remove_image(hostile_raw, ctx)
    assert result["action"] == "removed" and not os.path.exists(hostile_raw)
    assert (result["before"]["format"], result["before"]["virtual_size"]) == ("raw", GiB)
    infos = [c for c in ctx.runner.commands("qemu-img") if c[1] == "info"]
    assert infos and all(c[c.index("-f") + 1] == "raw" for c in infos) and _no_host_file(ctx.runner)


def test_qemu_holds_lock_passes_the_format(tmp_path):
    path = str(tmp_path / "x.raw")
    real_runner().run(["qemu-img", "create", "-q", "-f", "raw", path, str(GiB)])
    runner = real_runner()
    assert _image_use.qemu_holds_lock(path, runner, "raw") is False
    assert runner.commands("qemu-img")[0] == ["qemu-img", "info", "--output=json", "-f", "raw", path]


def test_libvirt_backing_store_declares_the_chain(tmp_path):
    """A qcow2 overlay on a raw base whose first sector (guest data) holds a qcow2 header: the
    base is read as raw, as libvirt's <backingStore> declares, and its header is not followed."""
    setup = real_runner()
    base, top, hdr = str(tmp_path / "base.raw"), str(tmp_path / "top.qcow2"), str(tmp_path / "hdr.qcow2")
    setup.run(["qemu-img", "create", "-q", "-f", "raw", base, str(GiB)])
    setup.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", HOST_FILE, "-F", "raw", hdr, "100G"])
    with open(hdr, "rb") as src, open(base, "r+b") as dst:
        dst.write(src.read(64 * 1024))
    setup.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", "raw", top, str(2 * GiB)])
    runner = real_runner()
    backing = [{"type": "file", "format": "raw", "path": base}]
    layers = _image_geometry.geometry(top, runner, fmt="qcow2", backing=backing)
    assert [(g.path, g.format, g.virtual_size) for g in layers] == [(top, "qcow2", 2 * GiB), (base, "raw", GiB)]
    # without libvirt's chain, the declared qcow2 top's header says raw for the base: the same
    assert [g.format for g in _image_geometry.geometry(top, runner, fmt="qcow2")] == ["qcow2", "raw"]
    assert _no_host_file(runner)


def test_a_backing_file_without_recorded_format_is_read_as_raw():
    """An old qcow2 whose header names a backing file but no backing format (qemu-img no longer
    makes them): the base is read as raw, never probed."""
    top, base = "/var/lib/libvirt/images/top.qcow2", "/var/lib/libvirt/images/base.img"
    runner = FakeRunner()
    runner.add(["qemu-img", "info", "--output=json", "-U", "-f", "qcow2", top], json.dumps({
        "filename": top, "format": "qcow2", "virtual-size": 2 * GiB, "actual-size": 200704,
        "cluster-size": 65536, "backing-filename": "base.img", "full-backing-filename": base}))
    runner.add(["qemu-img", "info", "--output=json", "-U", "-f", "raw", base], json.dumps({
        "filename": base, "format": "raw", "virtual-size": GiB, "actual-size": 4096}))
    layers = _image_geometry.geometry(top, runner, fmt="qcow2")
    assert [(g.path, g.format, g.virtual_size) for g in layers] == [(top, "qcow2", 2 * GiB), (base, "raw", GiB)]
    assert len(runner.commands("qemu-img")) == 2


def test_a_backing_loop_is_refused(tmp_path):
    runner = real_runner()
    a, b = str(tmp_path / "a.qcow2"), str(tmp_path / "b.qcow2")
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", a, str(GiB)])
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", a, "-F", "qcow2", b, str(GiB)])
    runner.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", b, "-F", "qcow2", a])
    with pytest.raises(KvmopsError, match="loops at"):
        _image_geometry.geometry(b, runner, fmt="qcow2")


@pytest.mark.parametrize("fmt", ["qcow2 -o x", "-U", "QCOW2", "../raw"])
def test_a_format_that_is_no_format_name_is_refused(fmt):
    with pytest.raises(KvmopsError, match="not a qemu-img format name"):
        _image_geometry.read_format(fmt)


# ----------------------------------------------------------------- path normalisation
@pytest.mark.parametrize("path, fix", [
    ("/var/lib/libvirt/images/../../../etc/shadow", "'/var/etc/shadow'"),
    ("/var/lib/libvirt//images/vm1.raw", "'/var/lib/libvirt/images/vm1.raw'"),
    ("//var/lib/libvirt/images/vm1.raw", "'/var/lib/libvirt/images/vm1.raw'"),
    ("/var/lib/libvirt/images/vm1.raw/.", "'/var/lib/libvirt/images/vm1.raw'"),
    ("/var/lib/libvirt/images/./vm1.raw", "'/var/lib/libvirt/images/vm1.raw'"),
    ("/var/lib/libvirt/images/", "'/var/lib/libvirt/images'"),
    ("images/vm1.raw", "absolute path"),
    ("", "absolute path"),
])
def test_paths_that_are_not_normalised_are_refused(path, fix):
    with pytest.raises(KvmopsError) as err:
        _storage.check_image_path(path)
    assert repr(path) in err.value.msg and fix in err.value.msg and "Nothing was read or changed" in err.value.msg


def test_normalised_paths_pass():
    assert _storage.check_image_path("/var/lib/libvirt/images/vm1.raw") == "/var/lib/libvirt/images/vm1.raw"
    assert _storage.check_image_path("/dev/vg0/vm1") == "/dev/vg0/vm1"


def test_disk_image_refuses_a_dotdot_path_before_anything(tmp_path):
    calls = []

    def connect(*_a, **_k):
        calls.append("connect")
        raise AssertionError("libvirt must not be asked")

    path = str(tmp_path / "images" / ".." / "escape.raw")
    for state in ("present", "absent"):
        with pytest.raises(KvmopsError, match="not an absolute, normalised path"):
            _disk_image.disk_image({"path": path, "state": state, "virtual_size": GiB,
                                    "manifest_path": str(tmp_path / "m.json")}, connect=connect, runner=real_runner())
    assert calls == [] and not os.path.exists(str(tmp_path / "escape.raw"))


def test_backing_file_must_be_normalised(tmp_path):
    ctx = ctx_for(tmp_path, allow_outside_pools=True)
    for base in ("/var/lib/libvirt/images/../base.qcow2", "../base.qcow2"):
        spec = _disk_image.ImageSpec(path=str(tmp_path / "vm1.qcow2"), format="qcow2", virtual_size=GiB, backing_file=base,
                                     backing_format="qcow2", backing_virtual_size=GiB, backing_checksum="sha256:00")
        with pytest.raises(KvmopsError, match="backing_file"):
            _disk_image.ensure_image(spec, ctx)


def test_describe_paths_refuses_a_dotdot_path():
    with pytest.raises(KvmopsError, match="normalised"):
        _disk_info.describe_paths(["/var/lib/libvirt/images/../../../etc/shadow"], real_runner())


# ----------------------------------------------------------------- the pool rule
def _params(tmp_path, path, **extra):
    base = {"path": path, "state": "present", "format": "raw", "virtual_size": GiB, "host": "hostb",
            "manifest_path": str(tmp_path / "m.json"), "dir_owner": os.geteuid(), "dir_group": os.getegid()}
    base.update(extra)
    return base


def test_disk_image_refuses_a_path_outside_every_pool(tmp_path):
    pool = str(tmp_path / "pool")
    os.mkdir(pool)
    connect = connector(Connection(pool_dirs={"default": pool}))
    outside = str(tmp_path / "elsewhere" / "vm1.raw")
    with pytest.raises(KvmopsError) as err:
        _disk_image.disk_image(_params(tmp_path, outside), connect=connect, runner=real_runner())
    msg = err.value.msg
    assert outside in msg and "default (%s)" % pool in msg and "allow_outside_pools" in msg
    assert not os.path.exists(os.path.dirname(outside))
    inside = _disk_image.disk_image(_params(tmp_path, pool + "/vm1.raw"), connect=connect, runner=real_runner())
    assert inside["action"] == "created"
    allowed = _disk_image.disk_image(_params(tmp_path, outside, allow_outside_pools=True), connect=connect,
                                     runner=real_runner())
    assert allowed["action"] == "created" and os.path.exists(outside)
    # removal keeps the same rule
    with pytest.raises(KvmopsError, match="Refusing to remove"):
        _disk_image.disk_image(_params(tmp_path, outside, state="absent"), connect=connect, runner=real_runner())
    gone = _disk_image.disk_image(_params(tmp_path, outside, state="absent", allow_outside_pools=True), connect=connect,
                                  runner=real_runner())
    assert gone["action"] == "removed"


def test_a_host_without_pools_refuses_unless_allowed(tmp_path):
    connect = connector(Connection())
    path = str(tmp_path / "vm1.raw")
    with pytest.raises(KvmopsError, match=r"pools: none defined"):
        _disk_image.disk_image(_params(tmp_path, path), check_mode=True, connect=connect, runner=real_runner())
    assert _disk_image.disk_image(_params(tmp_path, path, allow_outside_pools=True), check_mode=True, connect=connect,
                                  runner=real_runner())["action"] == "would_create"


def test_a_symlinked_directory_inside_a_pool_does_not_count(tmp_path):
    pool, outside = tmp_path / "pool", tmp_path / "outside"
    pool.mkdir()
    outside.mkdir()
    os.symlink(str(outside), str(pool / "link"))
    pools = [{"name": "default", "path": str(pool), "active": True}]
    assert _storage.pool_of(str(pool / "vm1.raw"), pools) is not None
    assert _storage.pool_of(str(pool / "link" / "vm1.raw"), pools) is None
    assert _storage.pool_of(str(pool), pools) is None  # the pool directory itself is no image
    assert _storage.pool_of(str(tmp_path / "pool2" / "vm1.raw"), pools) is None  # a text prefix only


def test_lvs_count_under_a_logical_pool_by_their_path():
    pools = [{"name": "vg0", "path": "/dev/vg0", "active": True}]
    assert _storage.pool_of("/dev/vg0/vm1", pools) is not None
    assert _storage.pool_of("/dev/vg1/vm1", pools) is None


def test_removal_when_libvirt_is_down_skips_the_pool_rule_with_a_warning(tmp_path):
    path = str(tmp_path / "vm1.raw")
    ctx = ctx_for(tmp_path, allow_outside_pools=True)
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, virtual_size=GiB), ctx)

    def down(*_a, **_k):
        raise KvmopsError("Could not connect to libvirt at qemu:///system")

    result = _disk_image.disk_image(_params(tmp_path, path, state="absent"), connect=down, runner=real_runner())
    assert result["action"] == "removed" and "storage pools" in " ".join(result["warnings"])


def test_storage_pools_reads_name_and_target():
    conn = Connection(pool_dirs={"default": "/var/lib/libvirt/images/", "vg0": "/dev/vg0"})
    assert _storage.storage_pools(conn) == [{"name": "default", "path": "/var/lib/libvirt/images", "active": True},
                                            {"name": "vg0", "path": "/dev/vg0", "active": True}]
