"""Issue 3, lab part: disk_info and disk_image on the real two-host lab (no mocks).

- the four-way check of disk_image on hostb (raw; qcow2 with cluster size and compat), checked
  with ``qemu-img info --output=json`` inside hostb;
- disk_info on the running demo guest (images locked by QEMU: force-share);
- the guest's 10 GiB disks reproduced on hostb under other names: sparse, allocation near zero;
- safety: foreign and wrong-size files are refused and stay byte-for-byte unchanged, ``absent``
  only removes what the manifest records, shared storage (a directory bind-mounted into both
  hosts) is refused;
- block targets: a loop device, and LVM on a loop device (LV creation needs the kernel's
  device-mapper: skipped with the reason when the lab machine's kernel has none).

Everything a test creates is removed in ``finally`` (files, manifest entries, mounts, loop
devices, volume groups)."""

from __future__ import annotations

import json
import os
import secrets
import shlex

import pytest

from conftest import adhoc_module, lab, run_module

IMAGES = "/var/lib/libvirt/images"
TEST_DIR = IMAGES + "/lab-test-disk"          # made by disk_image itself (parent dir creation)
MANIFEST = "/var/lib/kvmops-migration/manifest.json"
MIB = 1024 ** 2
GIB = 1024 ** 3


# --------------------------------------------------------------------------- helpers

def sh(host: str, cmd: str, check: bool = True) -> str:
    res = lab.in_host(host, cmd, capture=True, check=False)
    if check and res.returncode != 0:
        raise AssertionError("on %s: %s failed (%d): %s" % (host, cmd, res.returncode, res.stderr))
    return res.stdout


def qemu_img_info(host: str, path: str) -> dict:
    """``qemu-img info --output=json`` of ``path`` inside ``host`` (-U: no lock taken)."""
    return json.loads(sh(host, "qemu-img info --output=json -U %s" % shlex.quote(path)))


def exists(host: str, path: str) -> bool:
    return lab.in_host(host, ["test", "-e", path], check=False, capture=True).returncode == 0


def sha256(host: str, path: str) -> str:
    return sh(host, "sha256sum %s" % shlex.quote(path)).split()[0]


def manifest_file(host: str) -> str:
    """The host's manifest seen from the controller (the host's private state dir)."""
    return lab.hdir(host, "var-lib-kvmops-migration", os.path.basename(MANIFEST))


def manifest_paths(host: str) -> list[str]:
    try:
        with open(manifest_file(host)) as f:
            return [e["path"] for e in json.load(f).get("entries", [])]
    except FileNotFoundError:
        return []


def purge(host: str, paths: list[str], entries: list[str] = ()) -> None:
    """Cleanup: remove the files ``paths`` inside ``host``, and the manifest entries of
    ``paths`` and ``entries`` (devices: their entries only)."""
    for path in paths:
        assert not path.startswith("/dev/")
        lab.in_host(host, ["rm", "-f", path], check=False, capture=True)
    paths = list(paths) + list(entries)
    mf = manifest_file(host)
    if os.path.exists(mf):
        with open(mf) as f:
            doc = json.load(f)
        kept = [e for e in doc.get("entries", []) if e.get("path") not in paths]
        if len(kept) != len(doc.get("entries", [])):
            doc["entries"] = kept
            with open(mf + ".tmp", "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
            os.replace(mf + ".tmp", mf)


@pytest.fixture
def disk_image(ansible_adhoc):
    """``disk_image(host, check_mode=False, diff=False, **args)``: the module on ``host``, through
    pytest-ansible's ``ansible_adhoc``, or ansible-playbook (``run_module``) in check mode or
    with diff, which pytest-ansible cannot give a call. The lab's images directory is no libvirt
    pool, so ``allow_outside_pools`` is on unless a test sets it."""
    def call(host: str, check_mode: bool = False, diff: bool = False, **args) -> dict:
        args.setdefault("allow_outside_pools", True)
        if check_mode or diff:
            return run_module(host, "kvmops.migration.disk_image", args, check_mode=check_mode, diff=diff)
        return adhoc_module(ansible_adhoc, host, "kvmops.migration.disk_image", args)
    return call


def assert_ok(res: dict) -> dict:
    assert not res.get("failed"), res.get("msg")
    return res


def assert_failed(res: dict, *fragments: str) -> str:
    assert res.get("failed"), "expected a failure, got %r" % {k: res.get(k) for k in ("changed", "action", "msg")}
    for frag in fragments:
        assert frag in res["msg"], "%r not in %r" % (frag, res["msg"])
    return res["msg"]


def guest_host() -> str:
    where = lab.domain_hosts(lab.GUEST)
    running = [h for h, s in where.items() if s == "running"]
    assert running, "the demo guest %s must be running somewhere in the lab: %r" % (lab.GUEST, where)
    return running[0]


# --------------------------------------------------------------------------- four-way check

@pytest.mark.parametrize("fmt,size,cluster,compat", [
    ("raw", 3 * GIB + 7 * 512, None, None),
    ("qcow2", 5 * GIB, None, "1.1"),
    ("qcow2", 2 * GIB + 64 * 1024, 2 * MIB, "0.10"),
], ids=["raw", "qcow2-default-cluster", "qcow2-2M-compat0.10"])
def test_disk_image_four_way_on_hostb(lab_up, fmt, size, cluster, compat, disk_image):
    path = "%s/four-way.%s" % (TEST_DIR, fmt)
    args = {"path": path, "format": fmt, "virtual_size": size}
    if cluster:
        args["cluster_size"] = cluster
    if compat:
        args["compat"] = compat
    assert not exists("hostb", TEST_DIR), "leftover %s on hostb" % TEST_DIR
    try:
        # 1. check mode: reports the change, creates nothing (not even the directory)
        res = assert_ok(disk_image("hostb", check_mode=True, diff=True, **args))
        assert res["changed"] is True and res["action"] == "would_create"
        assert res["created_dirs"] == [TEST_DIR]
        assert res["diff"]["before"] == {"exists": False} and res["diff"]["after"]["virtual_size"] == size
        assert not exists("hostb", TEST_DIR)
        assert path not in manifest_paths("hostb")

        # 2. run: creates exactly that image, sparse, recorded
        res = assert_ok(disk_image("hostb", **args))
        assert res["changed"] is True and res["action"] == "created", res["msg"]
        info = qemu_img_info("hostb", path)
        assert info["format"] == fmt
        assert info["virtual-size"] == size
        assert "backing-filename" not in info
        if fmt == "qcow2":
            assert info["cluster-size"] == (cluster or 65536)
            assert info["format-specific"]["data"]["compat"] == (compat or "1.1")
            # metadata only: header, refcount table and block, L1 table: a few clusters
            assert info["actual-size"] <= 4 * max(cluster or 65536, 256 * 1024), info["actual-size"]
        else:
            assert info["actual-size"] == 0
        assert res["after"]["virtual_size"] == size and res["after"]["allocation"] == info["actual-size"]
        assert sh("hostb", "stat -c %%a %s" % path).strip() == "600"
        assert sh("hostb", "stat -c '%%a %%U:%%G' %s" % TEST_DIR).strip() == "711 root:root"
        assert path in manifest_paths("hostb")
        before = sh("hostb", "stat -c '%%i %%s %%Y' %s" % path)

        # 3. rerun: no change, the image untouched
        res = assert_ok(disk_image("hostb", **args))
        assert res["changed"] is False and res["action"] == "reused", res["msg"]
        # 4. rerun in check mode: no change either
        res = assert_ok(disk_image("hostb", check_mode=True, **args))
        assert res["changed"] is False and res["action"] == "reused"
        assert sh("hostb", "stat -c '%%i %%s %%Y' %s" % path) == before

        # state absent, the same four ways
        res = assert_ok(disk_image("hostb", check_mode=True, path=path, state="absent"))
        assert res["changed"] is True and res["action"] == "would_remove"
        assert res["removed_dirs"] == [TEST_DIR]
        assert exists("hostb", path) and path in manifest_paths("hostb")
        res = assert_ok(disk_image("hostb", path=path, state="absent"))
        assert res["changed"] is True and res["action"] == "removed"
        assert not exists("hostb", path) and path not in manifest_paths("hostb")
        # the directory it made for the image (recorded with it) went with it: it was empty
        assert res["removed_dirs"] == [TEST_DIR] and not exists("hostb", TEST_DIR)
        assert exists("hostb", IMAGES)
        for check_mode in (False, True):
            res = assert_ok(disk_image("hostb", check_mode=check_mode, path=path, state="absent"))
            assert res["changed"] is False and res["action"] == "absent"
    finally:
        purge("hostb", [path])
        lab.in_host("hostb", ["rmdir", TEST_DIR], check=False, capture=True)
    assert not exists("hostb", TEST_DIR)


# --------------------------------------------------------------------------- disk_info

def _guest_disks(ansible_adhoc) -> tuple[str, dict]:
    host = guest_host()
    res = assert_ok(adhoc_module(ansible_adhoc, host, "kvmops.migration.disk_info", {"domain": lab.GUEST}))
    return host, res


def test_disk_info_running_guest(lab_up, ansible_adhoc):
    host, res = _guest_disks(ansible_adhoc)
    assert res["changed"] is False
    assert res["domain"]["name"] == lab.GUEST and res["domain"]["active"] is True
    disks = {d["target"]: d for d in res["disks"]}
    assert sorted(disks) == ["vda", "vdb"]
    for dev, name in (("vda", "%s.raw" % lab.GUEST), ("vdb", "%s.swap" % lab.GUEST)):
        d = disks[dev]
        assert d["path"] == "%s/%s" % (IMAGES, name)
        assert (d["device"], d["type"], d["kind"], d["format"]) == ("disk", "file", "file", "raw")
        assert d["virtual_size"] == 10737418240
        assert d["readonly"] is False and d["shareable"] is False and d["copy"] is True
        assert d["cache"] == "none" and d["discard"] is None  # as most field guests: no discard mode
        assert d["backing"] == [] and d["cluster_size"] is None
        assert d["fingerprint"]["size"] == 10737418240
    # about 256 MiB written on the system disk (4 x 64 MiB), nothing on the swap disk
    assert 256 * MIB <= disks["vda"]["allocation"] <= 260 * MIB, disks["vda"]["allocation"]
    assert disks["vdb"]["allocation"] <= 1 * MIB, disks["vdb"]["allocation"]
    assert res["copy_set"] == ["vda", "vdb"]


def test_guest_disks_reproduced_on_hostb_sparse(lab_up, disk_image, ansible_adhoc):
    """C01: the running guest's disks, recreated on hostb with the geometry disk_info returned
    (under other names, so that migrations of the demo guest are not disturbed)."""
    src_host, res = _guest_disks(ansible_adhoc)
    dst_host = "hostb" if src_host == "hosta" else "hosta"
    made = []
    try:
        for disk in res["disks"]:
            assert disk["copy"]
            path = "%s/lab-test-copy.%s" % (IMAGES, disk["path"].rsplit(".", 1)[1])
            args = {"path": path, "format": disk["format"], "virtual_size": disk["virtual_size"],
                    "for_domain": lab.GUEST, "source_fingerprint": disk["fingerprint"]}
            assert not exists(dst_host, path)
            made.append(path)
            out = assert_ok(disk_image(dst_host, **args))
            assert out["changed"] is True and out["action"] == "created", out["msg"]
            info = qemu_img_info(dst_host, path)
            assert (info["format"], info["virtual-size"]) == ("raw", 10737418240)
            assert info["actual-size"] <= 1 * MIB, info["actual-size"]  # near zero before any copy
            st = os.stat(os.path.join(lab.hdir(dst_host, "var-lib-libvirt", "images"), os.path.basename(path)))
            assert st.st_size == 10737418240 and st.st_blocks * 512 <= 1 * MIB
            again = assert_ok(disk_image(dst_host, **args))
            assert again["changed"] is False and again["action"] == "reused"
        for path in made:
            out = assert_ok(disk_image(dst_host, path=path, state="absent"))
            assert out["action"] == "removed"
            assert not exists(dst_host, path) and path not in manifest_paths(dst_host)
    finally:
        purge(dst_host, made)


# --------------------------------------------------------------------------- safety

def _write_foreign(host: str, path: str, size: int) -> str:
    """A file of someone else at ``path``: known content (a header and random data), returns its
    sha256."""
    local = os.path.join(lab.hdir(host, "var-lib-libvirt", "images"), os.path.basename(path))
    assert os.path.dirname(path) == IMAGES
    with open(local, "xb") as f:
        f.write(b"FOREIGN DATA, NOT A KVMOPS IMAGE\n".ljust(4096, b"."))
        f.write(secrets.token_bytes(size - 4096))
    return sha256(host, path)


def test_foreign_and_wrong_size_files_are_left_untouched(lab_up, disk_image):
    path = IMAGES + "/lab-test-foreign.raw"
    size = 1 * MIB
    try:
        digest = _write_foreign("hostb", path, size)
        stat_before = sh("hostb", "stat -c '%%i %%s %%Y %%a' %s" % path)
        # same geometry, but not ours: refused (also in check mode)
        for check_mode in (True, False):
            msg = assert_failed(disk_image("hostb", check_mode=check_mode, path=path, format="raw", virtual_size=size),
                                "dst image %s exists: format raw, virtual size %d bytes; expected raw, %d bytes"
                                % (path, size, size), "not created by kvmops.migration", "left untouched")
        # wrong size (C03: someone rounded, or a leftover): both geometries named
        msg = assert_failed(disk_image("hostb", path=path, format="raw", virtual_size=2 * size),
                            "dst image %s exists: format raw, virtual size %d bytes; expected raw, %d bytes"
                            % (path, size, 2 * size), "virtual_size", "left untouched")
        # wrong format
        msg = assert_failed(disk_image("hostb", path=path, format="qcow2", virtual_size=size),
                            "format raw, virtual size %d bytes; expected qcow2, %d bytes" % (size, size))
        # state absent refuses what the manifest does not record
        msg = assert_failed(disk_image("hostb", path=path, state="absent"),
                            "was not created by kvmops.migration", MANIFEST, "left untouched")
        del msg
        assert sha256("hostb", path) == digest
        assert sh("hostb", "stat -c '%%i %%s %%Y %%a' %s" % path) == stat_before
        assert path not in manifest_paths("hostb")
    finally:
        purge("hostb", [path])


def test_our_image_replaced_by_a_foreign_file_is_no_longer_ours(lab_up, disk_image):
    """The manifest knows an image by path and inode: after someone replaced it (or after our
    image of the wrong size is asked again), nothing is touched."""
    path = IMAGES + "/lab-test-replaced.raw"
    try:
        assert_ok(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB))
        # ours, but asked with another size (a leftover of an aborted run with other input)
        assert_failed(disk_image("hostb", path=path, format="raw", virtual_size=8 * MIB),
                      "virtual size %d bytes; expected raw, %d bytes" % (4 * MIB, 8 * MIB))
        assert qemu_img_info("hostb", path)["virtual-size"] == 4 * MIB
        # someone replaces it at the same path
        sh("hostb", "rm %s" % path)
        digest = _write_foreign("hostb", path, 4 * MIB)
        assert path in manifest_paths("hostb")
        assert_failed(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB),
                      "not created by kvmops.migration")
        assert_failed(disk_image("hostb", path=path, state="absent"), "not created by kvmops.migration")
        assert sha256("hostb", path) == digest
    finally:
        purge("hostb", [path])


def test_image_in_use_by_a_domain_is_refused(lab_up, disk_image):
    """Our image, used by a defined domain: reused only for that domain, never removed."""
    name = "labtestdisk"
    path = "%s/%s.raw" % (IMAGES, name)
    xml = lab.hdir("hostb", "%s.xml" % name)
    try:
        assert_ok(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB, for_domain=name))
        lab.write(xml, lab.guest_xml("qemu", name=name, ip="198.18.0.21", mac_suffix=0x21))
        sh("hostb", "virsh -q define %s" % xml)  # defined, not started: its disks are in use
        res = assert_ok(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB, for_domain=name))
        assert res["changed"] is False and res["action"] == "reused"
        assert_failed(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB, for_domain="other"),
                      "domain(s) %s on hostb use it" % name)
        assert_failed(disk_image("hostb", path=path, state="absent"), "is used by domain(s) %s" % name)
        assert exists("hostb", path)
        sh("hostb", "virsh -q undefine %s" % name)
        assert assert_ok(disk_image("hostb", path=path, state="absent"))["action"] == "removed"
    finally:
        lab.in_host("hostb", ["virsh", "-q", "undefine", name], check=False, capture=True)
        if os.path.exists(xml):
            os.unlink(xml)
        purge("hostb", [path])


def test_absent_leaves_an_image_held_open_by_qemu(lab_up, disk_image):
    """Ours and used by no domain, but open in a QEMU process outside libvirt (qemu-io here):
    state absent leaves it. Found in the lab: ``qemu-img info`` without -U reads a raw image
    that a QEMU holds open (QEMU 10 shares "consistent read"), so only a probe of QEMU's lock
    bytes sees the user."""
    path = IMAGES + "/lab-test-held.raw"
    pidfile = lab.hdir("hostb", "lab-test-qemu-io.pid")
    try:
        assert_ok(disk_image("hostb", path=path, format="raw", virtual_size=4 * MIB))
        sh("hostb", "timeout 120 qemu-io -f raw -c 'sleep 100000' %s >/dev/null 2>&1 & echo $! > %s; "
                    "for i in $(seq 50); do grep -q OFDLCK /proc/locks && "
                    "grep -q \":$(stat -c %%i %s) \" /proc/locks && break; sleep 0.1; done"
           % (path, pidfile, path))
        assert lab.in_host("hostb", ["qemu-img", "info", path], capture=True, check=False).returncode == 0
        assert_failed(disk_image("hostb", path=path, state="absent"), "locked by a running QEMU", "left in place")
        assert exists("hostb", path)
    finally:
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                pid = f.read().strip()
            lab.in_host("hostb", "kill %s; while kill -0 %s 2>/dev/null; do sleep 0.1; done" % (pid, pid),
                        check=False, capture=True)
            os.unlink(pidfile)
    try:
        assert assert_ok(disk_image("hostb", path=path, state="absent"))["action"] == "removed"
    finally:
        purge("hostb", [path])


# --------------------------------------------------------------------------- shared storage

SHARED = IMAGES + "/lab-test-shared"


@pytest.fixture
def shared_dir(lab_up):
    """A directory that both hosts see at the same path: a directory of the lab's shared storage
    (one directory of the machine bound into both hosts at lab.SHARED_DIR) bind-mounted inside
    each host (what an NFS export looks like to the module: same path, same inode, same content
    on both hosts)."""
    backing = os.path.join(lab.STATE, "shared", "lab-test-shared")
    inside = lab.SHARED_DIR + "/lab-test-shared"
    os.makedirs(backing, exist_ok=False)
    mounted = []
    try:
        for host in lab.HOSTS:
            sh(host, "mkdir %s && mount --bind %s %s" % (SHARED, inside, SHARED))
            mounted.append(host)
        yield SHARED
    finally:
        for host in lab.HOSTS:
            if host in mounted:
                lab.in_host(host, ["umount", SHARED], check=False, capture=True)
            lab.in_host(host, ["rmdir", SHARED], check=False, capture=True)
        for name in os.listdir(backing):
            os.unlink(os.path.join(backing, name))
        os.rmdir(backing)


def test_shared_storage_is_refused(shared_dir, disk_image, ansible_adhoc):
    """_storage.shared_storage_reason: the source image visible on the destination with the same
    inode and size (``source_fingerprint`` from disk_info on the source), or a marker file
    written on the source read back with the same token (``shared_marker``)."""
    path = shared_dir + "/vm-shared.raw"
    try:
        # the "source" image, made on hosta
        assert_ok(disk_image("hosta", path=path, format="raw", virtual_size=16 * MIB))
        src = assert_ok(adhoc_module(ansible_adhoc, "hosta", "kvmops.migration.disk_info", {"paths": [path]}))
        fingerprint = src["disks"][0]["fingerprint"]
        assert fingerprint["size"] == 16 * MIB
        digest = sha256("hosta", path)
        # hostb sees the same file: present and absent are both refused
        for check_mode in (True, False):
            assert_failed(disk_image("hostb", check_mode=check_mode, path=path, format="raw",
                                     virtual_size=16 * MIB, source_fingerprint=fingerprint),
                          "Refusing to create %s on hostb" % path, "shared with the source",
                          "same inode (%d)" % fingerprint["inode"])
        assert_failed(disk_image("hostb", path=path, state="absent", source_fingerprint=fingerprint),
                      "Refusing to delete %s on hostb" % path, "shared with the source")
        # a new image beside it is refused too: the marker written on the source is seen
        token = secrets.token_hex(16)
        marker = shared_dir + "/.kvmops-marker"
        sh("hosta", "printf %s > %s" % (token, marker))
        other = shared_dir + "/vm-new.raw"
        assert_failed(disk_image("hostb", path=other, format="raw", virtual_size=16 * MIB,
                                 shared_marker={"path": marker, "token": token}),
                      "Refusing to create %s on hostb" % other, "marker file %s" % marker)
        assert not exists("hostb", other)
        assert sha256("hostb", path) == digest
        # the same evidence on non-shared storage does not refuse: hostb's own images directory
        local_marker = IMAGES + "/.lab-test-marker"
        sh("hosta", "printf %s > %s" % (token, local_marker))
        try:
            local = IMAGES + "/lab-test-not-shared.raw"
            res = assert_ok(disk_image("hostb", check_mode=True, path=local, format="raw", virtual_size=16 * MIB,
                                       shared_marker={"path": local_marker, "token": token}))
            assert res["action"] == "would_create"
        finally:
            sh("hosta", "rm -f %s" % local_marker)
        # the source removes its own image (no shared evidence given there)
        assert assert_ok(disk_image("hosta", path=path, state="absent"))["action"] == "removed"
    finally:
        purge("hosta", [path])
        purge("hostb", [path])


# --------------------------------------------------------------------------- block devices

def _losetup(host: str, backing: str, size: int) -> str:
    sh(host, "truncate -s %d %s" % (size, backing))
    return sh(host, "losetup --find --show %s" % backing).strip()


def test_block_device_loop(lab_up, disk_image, ansible_adhoc):
    """C04 on a plain block device: exact byte size compared, a device not ours refused unless
    adopted, never written."""
    backing = IMAGES + "/lab-test-loop.img"
    size = 64 * MIB
    dev = None
    run_lock = exists("hostb", "/run/lock/lvm")  # the module's lvs makes it
    assert not exists("hostb", backing)
    try:
        dev = _losetup("hostb", backing, size)
        sh("hostb", "head -c 1048576 /dev/urandom | dd of=%s bs=1M conv=notrunc,fsync status=none" % dev)
        digest = sha256("hostb", dev)
        info = assert_ok(adhoc_module(ansible_adhoc, "hostb", "kvmops.migration.disk_info", {"paths": [dev]}))
        d = info["disks"][0]
        assert (d["type"], d["kind"], d["format"], d["virtual_size"], d["lv"]) == ("block", "block", "raw", size, None)
        # exists, right size, not ours: refused unless adopted
        assert_failed(disk_image("hostb", path=dev, virtual_size=size),
                      "not created by kvmops.migration", "adopt_existing")
        res = assert_ok(disk_image("hostb", path=dev, virtual_size=size, adopt_existing=True))
        assert res["changed"] is False and res["action"] == "reused" and "adopted" in res["msg"]
        res = assert_ok(disk_image("hostb", check_mode=True, path=dev, virtual_size=size, adopt_existing=True))
        assert res["changed"] is False
        # wrong size: both sizes named, even with adopt_existing
        assert_failed(disk_image("hostb", path=dev, virtual_size=size // 2, adopt_existing=True),
                      "Block device %s on hostb has %d bytes; the source disk has %d bytes" % (dev, size, size // 2),
                      "Left untouched")
        # never qemu-img on a block path
        assert_failed(disk_image("hostb", path=dev, format="qcow2", virtual_size=size),
                      "qemu-img create is never run on a block path")
        assert_failed(disk_image("hostb", path=dev, state="absent"), "not created by kvmops.migration")
        assert sha256("hostb", dev) == digest
        assert dev not in manifest_paths("hostb")
    finally:
        if dev:
            lab.in_host("hostb", ["losetup", "-d", dev], check=False, capture=True)
        purge("hostb", [backing], entries=[dev] if dev else [])
        if not run_lock:
            lab.in_host("hostb", ["rm", "-rf", "/run/lock/lvm"], check=False, capture=True)


LVM_NOBACKUP = "--config 'backup{backup=0 archive=0}'"


def _dm_missing_reason(host: str) -> str | None:
    """Why LVs cannot be activated in ``host`` (no device-mapper in the kernel), or None."""
    res = lab.in_host(host, ["dmsetup", "version"], capture=True, check=False)
    if res.returncode != 0:
        return "LV activation needs the kernel's device-mapper, which this lab machine lacks: " \
               "`dmsetup version` in %s: %s" % (host, " ".join((res.stderr or res.stdout).split()))
    return None


@pytest.fixture
def loop_vg(lab_up):
    """A volume group with a unique name on a 64 MiB loop device in hostb; removed afterwards
    with everything LVM wrote (backups/archives in the shared /etc/lvm, locks in hostb's /run)."""
    vg = "kvmopslab%s" % secrets.token_hex(3)
    backing = IMAGES + "/lab-test-pv.img"
    etc_dirs = {d: os.path.isdir(d) for d in ("/etc/lvm/backup", "/etc/lvm/archive")}
    run_lock = exists("hostb", "/run/lock/lvm")
    dev = None
    assert not exists("hostb", backing)
    try:
        dev = _losetup("hostb", backing, 64 * MIB)
        sh("hostb", "pvcreate -y %s %s && vgcreate %s %s %s" % (LVM_NOBACKUP, dev, LVM_NOBACKUP, vg, dev))
        yield vg
    finally:
        lab.in_host("hostb", "lvremove -y %s %s" % (LVM_NOBACKUP, vg), check=False, capture=True)
        lab.in_host("hostb", "vgremove -y %s %s" % (LVM_NOBACKUP, vg), check=False, capture=True)
        if dev:
            lab.in_host("hostb", "pvremove -y %s %s" % (LVM_NOBACKUP, dev), check=False, capture=True)
            lab.in_host("hostb", ["losetup", "-d", dev], check=False, capture=True)
        purge("hostb", [backing], entries=["/dev/%s/%s" % (vg, lv) for lv in ("lvtest", "lvwrong")])
        for d, existed in etc_dirs.items():
            if os.path.isdir(d):
                for name in os.listdir(d):
                    if name == vg or name.startswith(vg + "_"):
                        os.unlink(os.path.join(d, name))
                if not existed and not os.listdir(d):
                    os.rmdir(d)
        remaining = sh("hostb", "vgs --noheadings -o vg_name", check=False)
        if not run_lock:
            lab.in_host("hostb", ["rm", "-rf", "/run/lock/lvm"], check=False, capture=True)
        assert vg not in remaining


def test_lvm_checks_on_a_loop_vg(loop_vg, disk_image):
    """What needs only the VG metadata: the missing LV is named, sizes that extents cannot hold
    exactly and sizes beyond the VG's free space are refused before anything is created, and
    check mode reports the LV it would create."""
    vg = loop_vg
    path = "/dev/%s/lvtest" % vg
    assert_failed(disk_image("hostb", path=path, virtual_size=8 * MIB),
                  "Block device %s is missing on hostb: create an LV of exactly %d bytes" % (path, 8 * MIB),
                  "lvcreate -L %db -n lvtest %s" % (8 * MIB, vg))
    assert_failed(disk_image("hostb", path=path, virtual_size=8 * MIB + 512, lv_create=True),
                  "An LV of %d bytes cannot be made in VG %s on hostb: extents of %d bytes"
                  % (8 * MIB + 512, vg, 4 * MIB))
    assert_failed(disk_image("hostb", path=path, virtual_size=1 * GIB, lv_create=True),
                  "VG %s on hostb has" % vg, "LV %s needs %d bytes" % (path, GIB))
    res = assert_ok(disk_image("hostb", check_mode=True, path=path, virtual_size=8 * MIB, lv_create=True))
    assert res["changed"] is True and res["action"] == "would_create" and res["kind"] == "lv"
    assert sh("hostb", "lvs --noheadings -o lv_name %s" % vg).strip() == ""
    assert path not in manifest_paths("hostb")
    reason = _dm_missing_reason("hostb")
    if reason:
        # the real lvcreate fails here: the failure must be reported and nothing recorded
        assert_failed(disk_image("hostb", path=path, virtual_size=8 * MIB, lv_create=True),
                      "Could not create LV %s/lvtest on hostb" % vg)
        assert sh("hostb", "lvs --noheadings -o lv_name %s" % vg).strip() == ""
        assert path not in manifest_paths("hostb")


def test_lvm_lv_created_exactly(loop_vg, disk_image):
    """The four-way check of an LV made by the module: exact byte size, active; a wrong-size LV
    not ours is refused; absent removes ours."""
    reason = _dm_missing_reason("hostb")
    if reason:
        pytest.skip(reason)
    vg = loop_vg
    path = "/dev/%s/lvtest" % vg
    args = {"path": path, "virtual_size": 8 * MIB, "lv_create": True}
    res = assert_ok(disk_image("hostb", check_mode=True, **args))
    assert res["changed"] is True and not exists("hostb", path)
    res = assert_ok(disk_image("hostb", **args))
    assert res["changed"] is True and res["action"] == "created", res["msg"]
    assert sh("hostb", "blockdev --getsize64 %s" % path).strip() == str(8 * MIB)
    assert path in manifest_paths("hostb")
    for check_mode in (False, True):
        res = assert_ok(disk_image("hostb", check_mode=check_mode, **args))
        assert res["changed"] is False and res["action"] == "reused"
    # an LV of another size, made by someone else
    wrong = "/dev/%s/lvwrong" % vg
    sh("hostb", "lvcreate -y %s -L 12m -n lvwrong %s" % (LVM_NOBACKUP, vg))
    assert_failed(disk_image("hostb", path=wrong, virtual_size=8 * MIB, lv_create=True, adopt_existing=True),
                  "has %d bytes; the source disk has %d bytes" % (12 * MIB, 8 * MIB))
    assert_failed(disk_image("hostb", path=wrong, state="absent"), "not created by kvmops.migration")
    assert exists("hostb", wrong)
    res = assert_ok(disk_image("hostb", path=path, state="absent"))
    assert res["action"] == "removed" and path not in manifest_paths("hostb")
    assert "lvtest" not in sh("hostb", "lvs --noheadings -o lv_name %s" % vg)
