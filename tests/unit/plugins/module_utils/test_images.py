"""Geometry parsing, exclusive sparse creation, manifest, free space (cases C01-C05)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _disk_image
from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _image_use
from ansible_collections.kvmops.migration.plugins.module_utils import _lvm
from ansible_collections.kvmops.migration.plugins.module_utils import _manifest
from ansible_collections.kvmops.migration.plugins.module_utils import _storage
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from disk_fakes import FIXTURES, FakeRunner, fixture, real_runner
from fake_libvirt import Connection, Domain, connector

GiB = 1024 ** 3
QEMU_IMG_FIXTURES = sorted(os.listdir(os.path.join(FIXTURES, "qemu-img")))


def ctx_for(tmp_path, runner=None, in_use=None, check_mode=False, **kw):
    return _disk_image.HostContext(host="hostb", runner=runner or real_runner(),
                                   manifest=_manifest.Manifest(str(tmp_path / "state" / "manifest.json")),
                                   in_use=in_use or {}, check_mode=check_mode, **kw)


def allocation(path):
    return os.stat(path).st_blocks * 512


def content(path):
    with open(path, "rb") as handle:
        return handle.read()


# ----------------------------------------------------------------- geometry parsing
@pytest.mark.parametrize("name", QEMU_IMG_FIXTURES)
def test_qemu_img_json_fixtures_give_integer_bytes(name):
    layers = _image_geometry.parse_qemu_img_info(fixture("qemu-img", name))
    for layer in layers:
        assert isinstance(layer.virtual_size, int) and layer.virtual_size > 0
        assert isinstance(layer.allocation, int)
        assert layer.format in ("raw", "qcow2")


def test_raw_geometry():
    (geo,) = _image_geometry.parse_qemu_img_info(fixture("qemu-img", "raw.json"))
    assert (geo.format, geo.virtual_size, geo.allocation, geo.cluster_size, geo.compat) == (
        "raw", 10737418240, 4096, None, None)


def test_qcow2_geometry():
    (geo,) = _image_geometry.parse_qemu_img_info(fixture("qemu-img", "qcow2.json"))
    assert (geo.format, geo.virtual_size, geo.cluster_size, geo.compat, geo.backing_file) == (
        "qcow2", 21474836480, 65536, "1.1", None)


def test_backing_chain_geometry():
    top, base = _image_geometry.parse_qemu_img_info(fixture("qemu-img", "chain.json"))
    assert (top.path, top.virtual_size, top.backing_file, top.backing_format) == (
        "/var/lib/libvirt/images/vm1.qcow2", 22011707392, "/var/lib/libvirt/images/base.qcow2", "qcow2")
    assert (base.path, base.virtual_size, base.backing_file) == (
        "/var/lib/libvirt/images/base.qcow2", 21474836480, None)


@pytest.mark.parametrize("text", [
    "image: vm1.qcow2\nfile format: qcow2\nvirtual size: 20.5 GiB (22011707392 bytes)\n",
    '{"filename": "x", "format": "raw", "virtual-size": "20G"}',
    "[]",
])
def test_human_readable_or_bad_json_is_refused(text):
    with pytest.raises(KvmopsError):
        _image_geometry.parse_qemu_img_info(text)


def test_qemu_img_info_passes_force_share_and_the_declared_format():
    runner = FakeRunner()
    runner.add(["qemu-img", "info"], fixture("qemu-img", "qcow2.json"))
    geo = _image_geometry.qemu_img_info("/var/lib/libvirt/images/vm1.qcow2", runner, "qcow2")
    assert geo.format == "qcow2"
    assert runner.calls[0] == ["qemu-img", "info", "--output=json", "-U", "-f", "qcow2",
                               "/var/lib/libvirt/images/vm1.qcow2"]


def test_qemu_img_failure_keeps_stderr_as_detail():
    runner = FakeRunner()
    runner.add(["qemu-img", "info"], rc=1, stderr="qemu-img: Could not open 'x': No such file")
    with pytest.raises(KvmopsError) as err:
        _image_geometry.qemu_img_info("x", runner, "raw")
    assert err.value.detail == "qemu-img: Could not open 'x': No such file"
    assert err.value.msg.startswith("Could not read the geometry of x")


def test_real_qemu_img_reads_a_real_chain(tmp_path):
    runner = real_runner()
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "top.qcow2")
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(GiB)])
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, str(2 * GiB)])
    layers = _image_geometry.geometry(top, runner, fmt="qcow2")
    assert [(g.path, g.format, g.virtual_size) for g in layers] == [(top, "qcow2", 2 * GiB), (base, "qcow2", GiB)]


# ----------------------------------------------------------------- LVM / block
def test_parse_lvs_thick_thin_and_inactive():
    thick = _lvm.parse_lvs(fixture("lvm", "lv_thick.json"))[0]
    assert (thick["size"], thick["active"], thick["thin"]) == (10737418240, True, False)
    thin = _lvm.parse_lvs(fixture("lvm", "lv_thin.json"))[0]
    assert (thin["thin"], thin["pool_lv"], thin["data_percent"]) == (True, "pool0", 12.5)
    assert _lvm.parse_lvs(fixture("lvm", "lv_inactive.json"))[0]["active"] is False
    assert _lvm.parse_lvs('{"report":[{"lv":[{"lv_size":"4194304B","lv_attr":"-wi-a-----"}]}]}')[0]["size"] == 4194304


def block_runner(size=10737418240, lvs="lv_thick.json"):
    runner = FakeRunner()
    runner.add(["blockdev", "--getsize64"], "%d\n" % size)
    runner.add(["lvs"], fixture("lvm", lvs))
    runner.add(["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _lvm._LVS_FIELDS, "vg0/pool0"],
               fixture("lvm", "thin_pool_small.json"))
    runner.add(["vgs"], fixture("lvm", "vg0.json"))
    runner.add(["lvcreate"], "")
    return runner


def test_block_geometry_of_a_thin_lv():
    geo = _image_geometry.block_geometry("/dev/vg0/vm1-data", block_runner(lvs="lv_thin.json"))
    assert (geo.kind, geo.format, geo.virtual_size) == ("block", "raw", 10737418240)
    assert geo.allocation == 10737418240 // 8
    assert geo.lv["pool_free"] == 4294967296


@pytest.fixture
def fake_block(monkeypatch):
    """Pretend /dev/vg0/vm1-data exists as an idle block device."""
    state = {"exists": True, "busy": False}
    monkeypatch.setattr(_disk_image, "block_device_exists", lambda path, host="": state["exists"])
    monkeypatch.setattr(_disk_image, "block_busy", lambda path: state["busy"])
    return state


LV = "/dev/vg0/vm1-data"


def test_c04_block_target_of_other_size_fails_naming_device_and_both_sizes(tmp_path, fake_block):
    runner = block_runner(size=10737418240 + 4 * 1024 ** 2)
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240, adopt_existing=True)
    with pytest.raises(KvmopsError) as err:
        _disk_image.ensure_image(spec, ctx_for(tmp_path, runner))
    assert "Block device /dev/vg0/vm1-data on hostb has 10741612544 bytes; the source disk has 10737418240 bytes" \
        in str(err.value)
    assert not runner.commands("lvcreate") and not runner.commands("qemu-img")


def test_c04_inactive_lv_is_refused(tmp_path, fake_block):
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240, adopt_existing=True)
    with pytest.raises(KvmopsError, match="inactive: activate it"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, block_runner(lvs="lv_inactive.json")))


def test_c04_existing_lv_not_ours_needs_adopt_existing(tmp_path, fake_block):
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240)
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, block_runner()))
    spec.adopt_existing = True
    result = _disk_image.ensure_image(spec, ctx_for(tmp_path, block_runner()))
    assert (result["changed"], result["action"]) == (False, "reused")


def test_c04_busy_block_device_is_refused(tmp_path, fake_block):
    fake_block["busy"] = True
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240, adopt_existing=True)
    with pytest.raises(KvmopsError, match="mounted or held"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, block_runner()))


def test_c04_missing_lv_without_create_names_the_fix(tmp_path, fake_block):
    fake_block["exists"] = False
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240)
    with pytest.raises(KvmopsError, match=r"lvcreate -L 10737418240b -n vm1-data vg0"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, block_runner()))


def test_c04_lv_created_with_exact_bytes_and_recorded(tmp_path, fake_block, monkeypatch):
    fake_block["exists"] = False
    runner = block_runner()
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240, lv_create=True, for_domain="vm1")
    ctx = ctx_for(tmp_path, runner, check_mode=True)
    assert _disk_image.ensure_image(spec, ctx)["changed"] is True
    assert not runner.commands("lvcreate")
    ctx.check_mode = False
    result = _disk_image.ensure_image(spec, ctx)
    assert runner.commands("lvcreate") == [["lvcreate", "-y", "-L", "10737418240b", "-n", "vm1-data", "vg0"]]
    assert result["action"] == "created" and result["after"]["virtual_size"] == 10737418240
    assert ctx.manifest.find("hostb", LV)["kind"] == "lv"
    fake_block["exists"] = True  # second run: exists, ours, same size
    assert _disk_image.ensure_image(spec, ctx)["changed"] is False


def test_c04_size_not_a_multiple_of_extents_is_refused_before_lvcreate(tmp_path, fake_block):
    fake_block["exists"] = False
    runner = block_runner()
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240 + 512, lv_create=True)
    with pytest.raises(KvmopsError, match="round it up to 10741612544 bytes"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, runner))
    assert not runner.commands("lvcreate")


def test_c04_thin_pool_too_small_names_both_sizes(tmp_path, fake_block):
    fake_block["exists"] = False
    runner = block_runner()
    spec = _disk_image.ImageSpec(path=LV, format="raw", virtual_size=10737418240, lv_create=True, lv_thin_pool="pool0")
    with pytest.raises(KvmopsError) as err:
        _disk_image.ensure_image(spec, ctx_for(tmp_path, runner))
    assert "Thin pool vg0/pool0 on hostb has 4294967296 bytes free" in str(err.value)
    assert "10737418240 bytes" in str(err.value)
    assert not runner.commands("lvcreate")


def test_c04_never_qemu_img_create_on_a_block_path(tmp_path, fake_block):
    fake_block["exists"] = False
    runner = block_runner()
    spec = _disk_image.ImageSpec(path="/dev/vg0/vm1-q", format="qcow2", virtual_size=GiB, lv_create=True)
    with pytest.raises(KvmopsError, match="must hold raw data"):
        _disk_image.ensure_image(spec, ctx_for(tmp_path, runner))
    assert not [c for c in runner.calls if c[:2] == ["qemu-img", "create"]]


# ----------------------------------------------------------------- C01 creation
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_c01_missing_image_is_created_sparse_with_exact_size(tmp_path, fmt):
    path = str(tmp_path / "var" / "lib" / "libvirt" / "images" / ("vm1." + fmt))
    spec = _disk_image.ImageSpec(path=path, format=fmt, virtual_size=10 * GiB, for_domain="vm1",
                                 cluster_size=65536 if fmt == "qcow2" else None, compat="1.1" if fmt == "qcow2" else None,
                                 dir_owner=os.geteuid(), dir_group=os.getegid())
    ctx = ctx_for(tmp_path)
    result = _disk_image.ensure_image(spec, ctx)
    assert (result["changed"], result["action"]) == (True, "created")
    assert result["before"] == {"exists": False}
    geo = _image_geometry.qemu_img_info(path, real_runner(), fmt)
    assert (geo.format, geo.virtual_size) == (fmt, 10 * GiB)
    if fmt == "qcow2":
        assert (geo.cluster_size, geo.compat, geo.backing_file) == (65536, "1.1", None)
    assert allocation(path) < 1024 ** 2  # sparse: no preallocation
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o711
    assert [os.path.basename(d) for d in result["created_dirs"]] == ["var", "lib", "libvirt", "images"]
    entry = ctx.manifest.find("hostb", path)
    assert entry["kind"] == "file" and entry["format"] == fmt and entry["virtual_size"] == 10 * GiB
    assert entry["for_domain"] == "vm1" and entry["created_at"].endswith("Z")
    assert os.listdir(os.path.dirname(path)) == ["vm1." + fmt]  # no temporary left behind
    # idempotent: the second run reuses our image
    again = _disk_image.ensure_image(spec, ctx)
    assert (again["changed"], again["action"]) == (False, "reused")


def test_c01_check_mode_reports_change_and_creates_nothing(tmp_path):
    path = str(tmp_path / "images" / "vm1.qcow2")
    ctx = ctx_for(tmp_path, check_mode=True)
    result = _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="qcow2", virtual_size=21474836480), ctx)
    assert result["changed"] is True and result["action"] == "would_create"
    assert not os.path.exists(os.path.dirname(path))
    assert not os.path.exists(ctx.manifest.path)


def test_size_not_in_sectors_is_refused_and_raw_size_is_exact(tmp_path):
    path = str(tmp_path / "odd.raw")
    with pytest.raises(KvmopsError, match="not a multiple of 512"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="raw", virtual_size=1000001), ctx_for(tmp_path))
    assert not os.path.exists(path)
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="raw", virtual_size=1000448), ctx_for(tmp_path))
    assert os.path.getsize(path) == 1000448


@pytest.mark.parametrize("size", [0, -512, "1G", 1.5, True])
def test_virtual_size_must_be_positive_int_bytes(tmp_path, size):
    with pytest.raises(KvmopsError, match="virtual_size must be a positive integer number of bytes"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=str(tmp_path / "x.raw"), virtual_size=size), ctx_for(tmp_path))


def test_selinux_restorecon_runs_only_when_enabled(tmp_path):
    runner = FakeRunner(fallback=real_runner(), tools=("selinuxenabled",))
    runner.add(["selinuxenabled"], rc=0)
    runner.add(["restorecon"], "")
    path = str(tmp_path / "d" / "x.raw")
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, virtual_size=GiB), ctx_for(tmp_path, runner))
    assert runner.commands("restorecon") == [["restorecon", str(tmp_path / "d"), path]]
    off = FakeRunner(fallback=real_runner(), tools=("selinuxenabled",))
    off.add(["selinuxenabled"], rc=1)
    _disk_image.ensure_image(_disk_image.ImageSpec(path=str(tmp_path / "y.raw"), virtual_size=GiB), ctx_for(tmp_path, off))
    assert not off.commands("restorecon")


# ----------------------------------------------------------------- C02 backing chains
def test_c02_full_copy_gets_a_flat_image_of_the_top_size(tmp_path):
    top, _base = _image_geometry.parse_qemu_img_info(fixture("qemu-img", "chain.json"))
    path = str(tmp_path / "vm1.qcow2")
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="qcow2", virtual_size=top.virtual_size), ctx_for(tmp_path))
    geo = _image_geometry.qemu_img_info(path, real_runner(), "qcow2")
    assert (geo.virtual_size, geo.backing_file) == (22011707392, None)


def _base(tmp_path, size=GiB):
    base = str(tmp_path / "base.qcow2")
    real_runner().run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(size)])
    return base, "sha256:" + _image_geometry.file_checksum(base)


def test_c02_incremental_overlay_keeps_backing_path_and_format(tmp_path):
    base, checksum = _base(tmp_path)
    path = str(tmp_path / "vm1.qcow2")
    spec = _disk_image.ImageSpec(path=path, format="qcow2", virtual_size=2 * GiB, backing_file=base,
                                 backing_format="qcow2", backing_virtual_size=GiB, backing_checksum=checksum)
    _disk_image.ensure_image(spec, ctx_for(tmp_path))
    top, lower = _image_geometry.geometry(path, real_runner(), fmt="qcow2")
    assert (top.backing_file, top.backing_format, top.virtual_size) == (base, "qcow2", 2 * GiB)
    assert lower.path == base


def test_c02_incremental_without_base_fails_naming_the_base(tmp_path):
    base = str(tmp_path / "base.qcow2")
    spec = _disk_image.ImageSpec(path=str(tmp_path / "vm1.qcow2"), format="qcow2", virtual_size=2 * GiB,
                                 backing_file=base, backing_format="qcow2", backing_virtual_size=GiB,
                                 backing_checksum="sha256:00")
    with pytest.raises(KvmopsError, match="Backing base %s of .* is missing on hostb" % base):
        _disk_image.ensure_image(spec, ctx_for(tmp_path))
    assert not os.path.exists(spec.path)


@pytest.mark.parametrize("size_delta,checksum", [(512, None), (0, "sha256:" + "0" * 64)])
def test_c02_incremental_with_a_different_base_fails(tmp_path, size_delta, checksum):
    base, good = _base(tmp_path)
    spec = _disk_image.ImageSpec(path=str(tmp_path / "vm1.qcow2"), format="qcow2", virtual_size=2 * GiB,
                                 backing_file=base, backing_format="qcow2", backing_virtual_size=GiB + size_delta,
                                 backing_checksum=checksum or good)
    with pytest.raises(KvmopsError, match="Backing base %s on hostb" % base):
        _disk_image.ensure_image(spec, ctx_for(tmp_path))
    assert not os.path.exists(spec.path)


# ----------------------------------------------------------------- C03 and the safety rules
def _existing_qcow2(tmp_path, size=21474836480):
    path = str(tmp_path / "vm1.qcow2")
    real_runner().run(["qemu-img", "create", "-q", "-f", "qcow2", path, str(size)])
    return path, content(path)


def test_c03_size_mismatch_refuses_with_both_geometries(tmp_path):
    path, before = _existing_qcow2(tmp_path)
    spec = _disk_image.ImageSpec(path=path, format="qcow2", virtual_size=22011707392)
    with pytest.raises(KvmopsError) as err:
        _disk_image.ensure_image(spec, ctx_for(tmp_path))
    assert ("dst image %s exists: format qcow2, virtual size 21474836480 bytes; expected qcow2, "
            "22011707392 bytes" % path) in str(err.value)
    assert content(path) == before
    assert err.value.values["found"]["virtual_size"] == 21474836480


def test_c03_stale_file_even_when_recorded_ours_is_not_resized(tmp_path):
    path, before = _existing_qcow2(tmp_path)
    ctx = ctx_for(tmp_path)
    ctx.manifest.add({"host": "hostb", "path": path, "kind": "file", "format": "qcow2",
                      "virtual_size": 21474836480, "created_at": "x", "for_domain": "vm1",
                      "inode": os.lstat(path).st_ino})
    with pytest.raises(KvmopsError, match="virtual size 21474836480 bytes; expected qcow2, 22011707392 bytes"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="qcow2", virtual_size=22011707392), ctx)
    assert content(path) == before


def test_c03_matching_file_not_created_by_us_is_refused(tmp_path):
    path, before = _existing_qcow2(tmp_path)
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="qcow2", virtual_size=21474836480), ctx_for(tmp_path))
    assert content(path) == before


def test_never_truncate_an_existing_file(tmp_path):
    path = str(tmp_path / "vm1.raw")
    with open(path, "wb") as handle:
        handle.write(b"precious guest data\n" * 1000)
    before, inode = content(path), os.stat(path).st_ino
    for fmt in ("raw", "qcow2"):
        with pytest.raises(KvmopsError, match="dst image %s exists" % path):
            _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format=fmt, virtual_size=GiB), ctx_for(tmp_path))
    assert content(path) == before and os.stat(path).st_ino == inode
    assert os.listdir(str(tmp_path)) == ["vm1.raw"]  # no manifest, no temporary


def test_symlink_at_the_path_is_never_followed(tmp_path):
    target = tmp_path / "real.raw"
    target.write_bytes(b"data")
    link = tmp_path / "vm1.raw"
    link.symlink_to(target)
    with pytest.raises(KvmopsError, match="not a regular file"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=str(link), virtual_size=GiB), ctx_for(tmp_path))
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_exclusive_creation_never_replaces_a_racing_file(tmp_path, monkeypatch, fmt):
    path = str(tmp_path / ("vm1." + fmt))
    real_link = os.link

    def racing_link(src, dst):
        with open(dst, "wb") as handle:  # another writer wins the race
            handle.write(b"theirs")
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", racing_link)
    ctx = ctx_for(tmp_path)
    with pytest.raises(KvmopsError, match="appeared on hostb while we were creating it"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format=fmt, virtual_size=GiB), ctx)
    assert content(path) == b"theirs"
    assert sorted(os.listdir(str(tmp_path))) == ["vm1." + fmt]  # temporary removed
    assert ctx.manifest.find("hostb", path) is None


def test_manifest_reuse_requires_same_inode_and_no_foreign_user(tmp_path):
    path = str(tmp_path / "vm1.raw")
    spec = _disk_image.ImageSpec(path=path, format="raw", virtual_size=GiB, for_domain="vm1")
    ctx = ctx_for(tmp_path)
    _disk_image.ensure_image(spec, ctx)
    # used by the guest it was made for (after the migration): still fine, no change
    ctx.in_use = {os.path.realpath(path): ["vm1"]}
    assert _disk_image.ensure_image(spec, ctx)["changed"] is False
    # used by another domain: refused
    ctx.in_use = {os.path.realpath(path): ["other"]}
    with pytest.raises(KvmopsError, match="domain\\(s\\) other on hostb use it"):
        _disk_image.ensure_image(spec, ctx)
    # replaced by someone else (new inode, same geometry): no longer ours
    ctx.in_use = {}
    with open(path + ".new", "wb") as handle:
        handle.truncate(GiB)
    os.rename(path + ".new", path)
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.ensure_image(spec, ctx)


def test_absent_removes_only_ours_and_unused(tmp_path):
    ctx = ctx_for(tmp_path)
    foreign = str(tmp_path / "foreign.raw")
    with open(foreign, "wb") as handle:
        handle.write(b"not ours")
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.remove_image(foreign, ctx)
    assert content(foreign) == b"not ours"

    ours = str(tmp_path / "ours.qcow2")
    _disk_image.ensure_image(_disk_image.ImageSpec(path=ours, format="qcow2", virtual_size=GiB), ctx)
    ctx.in_use = {os.path.realpath(ours): ["vm1"]}
    with pytest.raises(KvmopsError, match="used by domain\\(s\\) vm1"):
        _disk_image.remove_image(ours, ctx)
    assert os.path.exists(ours)
    ctx.in_use = {}
    ctx.check_mode = True
    assert _disk_image.remove_image(ours, ctx)["action"] == "would_remove" and os.path.exists(ours)
    ctx.check_mode = False
    result = _disk_image.remove_image(ours, ctx)
    assert (result["changed"], result["action"]) == (True, "removed")
    assert not os.path.exists(ours) and ctx.manifest.find("hostb", ours) is None
    again = _disk_image.remove_image(ours, ctx)
    assert (again["changed"], again["action"]) == (False, "absent")


def test_manifest_file_shape(tmp_path):
    ctx = ctx_for(tmp_path)
    path = str(tmp_path / "a.raw")
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, virtual_size=GiB, for_domain="vm1"), ctx)
    with open(ctx.manifest.path, encoding="utf-8") as handle:
        doc = json.load(handle)
    assert doc["version"] == 1
    (entry,) = doc["entries"]
    assert set(entry) == {"host", "path", "kind", "format", "virtual_size", "created_at", "for_domain", "inode", "id",
                          "created_dirs"}
    assert entry["created_dirs"] == []
    assert os.getxattr(path, _manifest.ID_XATTR).decode() == entry["id"]


def test_file_made_again_at_the_path_with_the_freed_inode_is_not_ours(tmp_path):
    """Found in the lab: after ``rm`` the next file made in the directory gets the same inode
    number, so the inode alone took a foreign file for ours (and ``absent`` would delete it)."""
    ctx = ctx_for(tmp_path)
    path = str(tmp_path / "vm1.raw")
    spec = _disk_image.ImageSpec(path=path, format="raw", virtual_size=GiB)
    _disk_image.ensure_image(spec, ctx)
    inode = os.stat(path).st_ino
    os.unlink(path)
    with open(path, "wb") as handle:
        handle.truncate(GiB)
    if os.stat(path).st_ino != inode:  # simulate the reuse where the filesystem did not reuse it
        ctx.manifest.add(dict(ctx.manifest.find("hostb", path), inode=os.stat(path).st_ino))
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.ensure_image(spec, ctx)
    with pytest.raises(KvmopsError, match="not created by kvmops.migration"):
        _disk_image.remove_image(path, ctx)
    assert os.path.exists(path)


def test_absent_leaves_an_image_open_by_a_qemu_process(tmp_path):
    """A raw image held open by QEMU (lock bytes 100+/200+) is not removed, even when
    ``qemu-img info`` without -U can read it (it can, for a running guest's raw image)."""
    import fcntl
    import multiprocessing
    ctx = ctx_for(tmp_path)
    path = str(tmp_path / "held.raw")
    _disk_image.ensure_image(_disk_image.ImageSpec(path=path, format="raw", virtual_size=GiB), ctx)
    ready, done = multiprocessing.Event(), multiprocessing.Event()

    def hold():  # like QEMU: shared locks on the "consistent read" and "write" bytes
        with open(path, "rb") as handle:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_SH, 2, 100)
            ready.set()
            done.wait(30)

    proc = multiprocessing.Process(target=hold)
    proc.start()
    try:
        assert ready.wait(30)
        assert _image_use.lock_bytes_held(path)
        with pytest.raises(KvmopsError, match="locked by a running QEMU"):
            _disk_image.remove_image(path, ctx)
        assert os.path.exists(path)
    finally:
        done.set()
        proc.join(30)
    assert not _image_use.lock_bytes_held(path)
    assert _disk_image.remove_image(path, ctx)["action"] == "removed"


def test_unreadable_manifest_is_an_operator_error(tmp_path):
    man = tmp_path / "m.json"
    man.write_text("{broken")
    with pytest.raises(KvmopsError, match="manifest .* is unreadable"):
        _manifest.Manifest(str(man)).entries()


# ----------------------------------------------------------------- shared storage
def test_shared_storage_by_fingerprint_refuses_create_and_delete(tmp_path):
    src = str(tmp_path / "vm1.qcow2")
    real_runner().run(["qemu-img", "create", "-q", "-f", "qcow2", src, str(GiB)])
    fp = _storage.storage_fingerprint(src)  # taken "on the source"; same file visible here
    ctx = ctx_for(tmp_path, source_fingerprint=fp)
    with pytest.raises(KvmopsError, match="shared with the source"):
        _disk_image.ensure_image(_disk_image.ImageSpec(path=str(tmp_path / "new.qcow2"), format="qcow2", virtual_size=GiB), ctx)
    with pytest.raises(KvmopsError, match="Refusing to delete"):
        _disk_image.remove_image(src, ctx)
    assert os.path.exists(src) and not os.path.exists(str(tmp_path / "new.qcow2"))


def test_shared_storage_by_marker_and_not_shared_otherwise(tmp_path):
    marker = tmp_path / ".kvmops-marker"
    marker.write_text("token-123\n")
    assert "marker" in _storage.shared_storage_reason(shared_marker={"path": str(marker), "token": "token-123"})
    assert _storage.shared_storage_reason(shared_marker={"path": str(marker), "token": "other"}) is None
    assert _storage.shared_storage_reason(source_fingerprint={"path": str(marker), "inode": 1, "size": 1}) is None
    assert _storage.shared_storage_reason(source_fingerprint={"path": str(tmp_path / "nope"), "inode": 1}) is None


# ----------------------------------------------------------------- C05 free space
def fs(mapping):
    return lambda path: mapping[os.path.dirname(path)]


DST_FS = {"mount": "/var/lib/libvirt/images", "device": "253:1", "free_bytes": 32212254720}


@pytest.mark.parametrize("keep_sparse,data", [(True, 64424509440), (False, 107374182400)])
def test_c05_not_enough_space_names_filesystem_needed_and_free(keep_sparse, data):
    disks = [{"path": "/var/lib/libvirt/images/vm1.qcow2", "target": "vda",
              "virtual_size": 107374182400, "allocation": 64424509440}]
    plan = _storage.plan_free_space(disks, keep_sparse=keep_sparse, fs_lookup=fs({"/var/lib/libvirt/images": DST_FS}),
                                    host="hostb")
    assert plan["ok"] is False
    (group,) = plan["filesystems"]
    margin = _storage.margin_for(data)
    assert (group["data_bytes"], group["margin_bytes"], group["needed_bytes"], group["free_bytes"]) == (
        data, margin, data + margin, 32212254720)
    assert ("Not enough space on hostb in filesystem /var/lib/libvirt/images (device 253:1): need %d bytes"
            % (data + margin)) in plan["msg"]
    assert "free 32212254720 bytes" in plan["msg"]


def test_c05_disks_on_the_same_filesystem_are_summed():
    one = {"mount": "/", "device": "8:1", "free_bytes": 25 * GiB}
    other = {"mount": "/srv", "device": "8:2", "free_bytes": 100 * GiB}
    disks = [{"path": "/a/x.raw", "virtual_size": 40 * GiB, "allocation": 12 * GiB},
             {"path": "/a/y.raw", "virtual_size": 40 * GiB, "allocation": 12 * GiB},
             {"path": "/srv/z.raw", "virtual_size": 40 * GiB, "allocation": 12 * GiB},
             {"path": "/dev/vg0/lv", "virtual_size": 400 * GiB, "allocation": 400 * GiB}]
    plan = _storage.plan_free_space(disks, fs_lookup=fs({"/a": one, "/srv": other}))
    by_mount = {g["mount"]: g for g in plan["filesystems"]}
    assert set(by_mount) == {"/", "/srv"}  # the block target uses no filesystem space
    assert by_mount["/"]["data_bytes"] == 24 * GiB and by_mount["/"]["ok"] is False
    assert by_mount["/"]["needed_bytes"] == 24 * GiB + _storage.margin_for(24 * GiB)
    assert by_mount["/srv"]["ok"] is True and by_mount["/srv"]["data_bytes"] == 12 * GiB
    assert "filesystem / (device 8:1)" in plan["msg"] and "/srv" not in plan["msg"]


def test_margin_is_five_percent_plus_256_mib():
    assert _storage.margin_for(0) == 256 * 1024 ** 2
    assert _storage.margin_for(100 * GiB) == 5 * GiB + 256 * 1024 ** 2


def test_filesystem_of_a_path_not_yet_created(tmp_path):
    info = _storage.filesystem_of(str(tmp_path / "not" / "yet" / "vm1.qcow2"))
    assert info["free_bytes"] > 0 and os.path.isdir(info["mount"])


@pytest.mark.parametrize("path, expected", [
    ("/var/lib/libvirt/images/vm1.qcow2", "/var/lib/libvirt/images"),
    ("/var/lib/libvirt/images", "/var/lib/libvirt/images"),
    ("/var/lib/libvirt/images2/vm1.qcow2", "/"),  # a prefix of the text, not of the path
    ("/srv/vm1.raw", "/srv/"),
    ("relative/vm1.raw", None),
])
def test_mount_holding_is_the_longest_mount_point_prefix(path, expected):
    mounts = [{"mount": "/"}, {"mount": "/srv/"}, {"mount": "/var/lib/libvirt/images"}]
    assert (_storage.mount_holding(path, mounts) or {}).get("mount") == expected


# ----------------------------------------------------------------- backends of the modules
def test_disk_info_backend_for_a_running_domain(tmp_path, monkeypatch):
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: p == LV or real_exists(p))
    runner = real_runner()
    base, top = str(tmp_path / "base.qcow2"), str(tmp_path / "vm1.qcow2")
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(GiB)])
    runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top, str(2 * GiB)])
    scratch = str(tmp_path / "scratch.raw")
    runner.run(["qemu-img", "create", "-q", "-f", "raw", scratch, str(GiB)])
    xml = fixture("domains", "vm1.xml").replace("@DIR@", str(tmp_path))
    conn = Connection(domains=[Domain("vm1", xml)], pools={"default": {"vm1-scratch.raw": scratch}})
    runner.add(["blockdev", "--getsize64"], "10737418240\n")
    result = _disk_info.disk_info({"domain": "vm1", "checksums": True}, runner=runner, connect=connector(conn))
    assert result["domain"] == {"name": "vm1", "uuid": "0f3e5a8c-6f0e-4b0a-9a39-2a1d3c4b5e6f", "active": True}
    disks = {d["target"]: d for d in result["disks"]}
    assert (disks["vda"]["virtual_size"], disks["vda"]["format"], disks["vda"]["cluster_size"]) == (
        2 * GiB, "qcow2", 65536)
    assert disks["vda"]["backing"][0]["path"] == base
    assert disks["vda"]["backing"][0]["checksum"] == "sha256:" + _image_geometry.file_checksum(base)
    assert disks["vda"]["fingerprint"]["inode"] == os.stat(top).st_ino
    assert (disks["vdb"]["kind"], disks["vdb"]["virtual_size"]) == ("block", 10737418240)
    assert disks["vde"]["path"] == scratch and disks["vde"]["virtual_size"] == GiB
    assert disks["sda"]["exists"] is False and disks["sda"]["copy"] is False  # C13: ISO missing here
    assert result["copy_set"] == ["vda", "vdb", "vde"]
    qemu_calls = [c for c in runner.commands("qemu-img") if c[1] == "info"]
    assert qemu_calls and all("-U" in c for c in qemu_calls)


def test_disk_info_backend_for_paths(tmp_path):
    path = str(tmp_path / "x.raw")
    real_runner().run(["qemu-img", "create", "-q", "-f", "raw", path, str(GiB)])
    result = _disk_info.disk_info({"paths": [path]}, runner=real_runner())
    assert result["domain"] is None and result["copy_set"] == []
    assert (result["disks"][0]["format"], result["disks"][0]["virtual_size"]) == ("raw", GiB)


def test_disk_image_backend_is_idempotent_and_diffs(tmp_path):
    path = str(tmp_path / "images" / "vm1.qcow2")
    other = Domain("other", "<domain><name>other</name><devices/></domain>")
    connect = connector(Connection(domains=[other], pool_dirs={"default": str(tmp_path / "images")}))
    params = {"path": path, "state": "present", "format": "qcow2", "virtual_size": 21474836480,
              "manifest_path": str(tmp_path / "m.json"), "host": "hostb", "dir_mode": "0711",
              "dir_owner": os.geteuid(), "dir_group": os.getegid()}
    check = _disk_image.disk_image(params, check_mode=True, connect=connect, runner=real_runner())
    assert check["changed"] and not os.path.exists(path)
    assert check["diff"]["before"] == {"exists": False} and check["diff"]["after"]["virtual_size"] == 21474836480
    run = _disk_image.disk_image(params, connect=connect, runner=real_runner())
    assert run["changed"] and os.path.exists(path)
    rerun = _disk_image.disk_image(params, connect=connect, runner=real_runner())
    assert rerun["changed"] is False and rerun["diff"]["before"] == rerun["diff"]["after"]
    assert _disk_image.disk_image(params, check_mode=True, connect=connect, runner=real_runner())["changed"] is False
    gone = _disk_image.disk_image(dict(params, state="absent"), connect=connect, runner=real_runner())
    assert gone["changed"] and not os.path.exists(path)


def test_paths_in_use_reads_live_and_inactive_xml():
    live = fixture("domains", "c13_cdrom.xml")
    inactive = live.replace("vm13.raw", "vm13-next.raw")
    used = _image_use.paths_in_use(Connection(domains=[Domain("vm13", live, inactive_xml=inactive)]))
    assert used["/var/lib/libvirt/images/vm13.raw"] == ["vm13"]
    assert used["/var/lib/libvirt/images/vm13-next.raw"] == ["vm13"]


# ----------------------------------------------------------------- directories we create (issue 13 item 5)
def _nested(tmp_path, name="vm1.raw"):
    return str(tmp_path / "pool" / "guests" / "vm1" / name)


def _create(ctx, path):
    return _disk_image.ensure_image(_disk_image.ImageSpec(path=path, virtual_size=GiB, dir_owner=os.geteuid(),
                                                          dir_group=os.getegid()), ctx)


def test_created_dirs_are_recorded_in_the_manifest_and_removed_with_the_image(tmp_path):
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    entry = ctx.manifest.find("hostb", path)
    made = [str(tmp_path / "pool"), str(tmp_path / "pool" / "guests"), str(tmp_path / "pool" / "guests" / "vm1")]
    assert [d["path"] for d in entry["created_dirs"]] == made
    assert [d["inode"] for d in entry["created_dirs"]] == [os.lstat(d).st_ino for d in made]
    result = _disk_image.remove_image(path, ctx)
    assert result["action"] == "removed" and result["removed_dirs"] == list(reversed(made))
    assert not os.path.exists(str(tmp_path / "pool")) and os.path.isdir(str(tmp_path))
    assert ctx.manifest.find("hostb", path) is None


def test_check_mode_names_the_dirs_it_would_remove_and_removes_nothing(tmp_path):
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    ctx.check_mode = True
    result = _disk_image.remove_image(path, ctx)
    assert result["action"] == "would_remove" and len(result["removed_dirs"]) == 3
    assert os.path.exists(path) and ctx.manifest.find("hostb", path) is not None


def test_a_recorded_dir_that_is_not_empty_stays_with_what_is_in_it(tmp_path):
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    foreign = str(tmp_path / "pool" / "guests" / "notes.txt")
    with open(foreign, "w", encoding="utf-8") as handle:
        handle.write("the operator's")
    result = _disk_image.remove_image(path, ctx)
    assert result["removed_dirs"] == [str(tmp_path / "pool" / "guests" / "vm1")]
    assert content(foreign) == b"the operator's"


def test_a_dir_shared_by_two_images_of_ours_goes_with_the_last_one(tmp_path):
    ctx = ctx_for(tmp_path)
    first, second = _nested(tmp_path, "vm1.raw"), _nested(tmp_path, "vm1.swap")
    _create(ctx, first)
    _create(ctx, second)
    assert ctx.manifest.find("hostb", second)["created_dirs"] == []
    assert _disk_image.remove_image(first, ctx)["removed_dirs"] == []
    assert len(ctx.manifest.find("hostb", second)["created_dirs"]) == 3  # handed over
    assert len(_disk_image.remove_image(second, ctx)["removed_dirs"]) == 3
    assert not os.path.exists(str(tmp_path / "pool"))


def test_a_dir_made_again_by_someone_else_at_a_recorded_path_is_not_removed(tmp_path):
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    vm1 = str(tmp_path / "pool" / "guests" / "vm1")
    os.rename(vm1, vm1 + ".old")
    os.mkdir(vm1)  # another directory at the recorded path (a new inode: the old one still exists)
    os.rename(os.path.join(vm1 + ".old", "vm1.raw"), path)
    os.rmdir(vm1 + ".old")
    ctx.manifest.add(dict(ctx.manifest.find("hostb", path), inode=os.lstat(path).st_ino))
    result = _disk_image.remove_image(path, ctx)
    assert result["action"] == "removed" and result["removed_dirs"] == []
    assert os.path.isdir(vm1)


def test_entries_without_created_dirs_never_remove_a_dir(tmp_path):
    """Manifests written before the field (or entries of LVs) keep every directory."""
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    old = dict(ctx.manifest.find("hostb", path))
    del old["created_dirs"]
    ctx.manifest.add(old)
    result = _disk_image.remove_image(path, ctx)
    assert result["action"] == "removed" and result["removed_dirs"] == []
    assert os.path.isdir(os.path.dirname(path))


def test_a_recorded_dir_that_does_not_hold_the_image_is_never_removed(tmp_path):
    ctx = ctx_for(tmp_path)
    path = str(tmp_path / "images" / "vm1.raw")
    _create(ctx, path)
    elsewhere = str(tmp_path / "elsewhere")
    os.mkdir(elsewhere)
    entry = ctx.manifest.find("hostb", path)
    entry["created_dirs"].append({"path": elsewhere, "inode": os.lstat(elsewhere).st_ino})
    ctx.manifest.add(entry)
    assert _disk_image.remove_image(path, ctx)["removed_dirs"] == [str(tmp_path / "images")]
    assert os.path.isdir(elsewhere)


def test_removing_an_image_already_gone_still_removes_its_empty_dirs(tmp_path):
    ctx = ctx_for(tmp_path)
    path = _nested(tmp_path)
    _create(ctx, path)
    os.unlink(path)
    result = _disk_image.remove_image(path, ctx)
    assert (result["action"], result["changed"], len(result["removed_dirs"])) == ("absent", True, 3)
    assert not os.path.exists(str(tmp_path / "pool"))


def test_dirs_made_for_an_image_that_could_not_be_made_are_removed(tmp_path, monkeypatch):
    def fail(spec, ctx):
        raise KvmopsError("qemu-img failed")
    monkeypatch.setattr(_disk_image, "_create_file_exclusive", fail)
    with pytest.raises(KvmopsError, match="qemu-img failed"):
        _create(ctx_for(tmp_path), _nested(tmp_path))
    assert not os.path.exists(str(tmp_path / "pool"))
