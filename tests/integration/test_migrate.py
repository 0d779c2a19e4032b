"""Issue 5, lab part: kvmops.migration.migrate moves migratetest2 (both disks, storage copy)
hosta -> hostb -> hosta on the real lab. While it moves, the observer pings the guest at 10 Hz
and the guest's console clock must keep ticking; afterwards the written regions of the system
disk are identical and the destination images sparse. A rerun is changed=false, check mode
changes nothing, and a deliberately short timeout aborts cleanly with the guest still running
on the source."""

from __future__ import annotations

import proof
from conftest import adhoc_module, lab, run_module

GUEST = lab.GUEST
ADDR = lab.HOSTS
MAX_DOWNTIME_MS = 300
GIB = 1024 ** 3


def _images(host: str) -> dict[str, int]:
    """{name: allocation bytes} of the guest's images on a host."""
    out = {}
    for ext in ("raw", "swap"):
        name = "%s.%s" % (GUEST, ext)
        try:
            out[name] = proof.allocation(host, name)
        except FileNotFoundError:
            pass
    return out


def _prepare_destination(ansible_adhoc, src: str, dst: str) -> list[str]:
    """Pre-create the destination images with the modules, as the role does."""
    info = adhoc_module(ansible_adhoc, src, "kvmops.migration.disk_info", {"domain": GUEST})
    assert not info.get("failed"), info.get("msg")
    created = []
    for disk in info["disks"]:
        if not disk["copy"]:
            continue
        res = adhoc_module(ansible_adhoc, dst, "kvmops.migration.disk_image", {
            "path": disk["path"], "format": disk["format"], "virtual_size": disk["virtual_size"],
            # the lab's images directory is no libvirt pool (see lab.write_inventory)
            "for_domain": GUEST, "allow_outside_pools": True})
        assert not res.get("failed"), res.get("msg")
        created.append(disk["path"])
    return created


def _remove_stale_source_images(host: str) -> None:
    """After a verified move the old source images stay behind (we never delete a disk we did not
    create); the operator removes them. The test does so before moving the guest back."""
    for ext in ("raw", "swap"):
        lab.in_host(host, ["rm", "-f", "/var/lib/libvirt/images/%s.%s" % (GUEST, ext)])


def _allowed_loss(stats: dict) -> int:
    """Pings (every 100 ms) that can fall in the downtime, plus one for the MAC to move."""
    return int(stats["downtime_ms"] // 100) + 2


def _migrate(ansible_adhoc, src: str, dst: str, **extra) -> dict:
    """The migrate module on ``src``: through pytest-ansible, or with ``_check=True`` in check mode
    through ansible-playbook (``run_module``), which pytest-ansible cannot do."""
    args = {"domain": GUEST, "dest_host": ADDR[dst], "max_downtime_ms": MAX_DOWNTIME_MS}
    args.update(extra)
    if args.pop("_check", False):
        return run_module(src, "kvmops.migration.migrate", args, check_mode=True)
    return adhoc_module(ansible_adhoc, src, "kvmops.migration.migrate", args)


def test_check_mode_returns_plan_and_changes_nothing(guest_on_hosta, ansible_adhoc):
    before = (proof.domain_state("hosta"), proof.domain_state("hostb"), _images("hostb"))
    res = _migrate(ansible_adhoc, "hosta", "hostb", _check=True)
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True
    plan = res["plan"]
    assert sorted(plan["disks"]) == ["vda", "vdb"]
    assert plan["migrate_uri"].startswith("tcp://%s" % ADDR["hostb"])
    assert plan["disks_uri"].startswith("tcp://%s" % ADDR["hostb"])
    assert "VIR_MIGRATE_LIVE" in plan["flags"] and "VIR_MIGRATE_NON_SHARED_DISK" in plan["flags"]
    assert (proof.domain_state("hosta"), proof.domain_state("hostb"), _images("hostb")) == before


def test_move_there_and_back_guest_does_not_notice(guest_on_hosta, ansible_adhoc):
    src_digest = proof.region_digest("hosta", "%s.raw" % GUEST)
    src_alloc = _images("hosta")
    created = _prepare_destination(ansible_adhoc, "hosta", "hostb")
    assert sorted(created) == ["/var/lib/libvirt/images/%s.raw" % GUEST, "/var/lib/libvirt/images/%s.swap" % GUEST]
    # a fresh sparse image on the destination before the copy
    assert all(a < 1024 * 1024 for a in _images("hostb").values()), _images("hostb")

    first_tick = proof.last_tick()
    with proof.PingMonitor() as ping:
        res = _migrate(ansible_adhoc, "hosta", "hostb")
    assert not res.get("failed"), res.get("msg")
    assert res["changed"] is True and res["now_on"]
    stats = res["stats"]
    assert 0 < stats["downtime_ms"] <= MAX_DOWNTIME_MS, stats
    assert stats["memory_bytes"] > 0 and stats["disk_bytes"] > 0, stats
    assert proof.domain_state("hostb") == "running"
    assert proof.domain_state("hosta") is None

    # the guest keeps answering: at 10 Hz only the pings of the switch-over window may go
    # unanswered (paused guest, then the bridge learning the guest's MAC on hostb)
    assert ping.sent >= 10 and ping.lost <= _allowed_loss(stats), (stats["downtime_ms"], ping.output[-400:])
    print("hosta->hostb: downtime %s ms, pings %d sent %d lost" % (stats["downtime_ms"], ping.sent, ping.lost))
    lab.wait_for(lambda: proof.last_tick() > first_tick + 3, "ticks on hostb", 20)
    gaps = proof.tick_gaps(proof.console_ticks(), first_tick)
    assert gaps["missing"] == [] and gaps["max_gap_s"] <= 2, gaps

    assert proof.region_digest("hostb", "%s.raw" % GUEST) == src_digest
    dst_alloc = _images("hostb")
    # sparse on the destination: the system disk about its source allocation, the empty disk ~0
    assert dst_alloc["%s.raw" % GUEST] <= src_alloc["%s.raw" % GUEST] * 1.05 + 4 * 1024 * 1024, (src_alloc, dst_alloc)
    assert dst_alloc["%s.swap" % GUEST] <= 16 * 1024 * 1024, (src_alloc, dst_alloc)

    # idempotent: the guest already runs on hostb and is gone from hosta
    again = _migrate(ansible_adhoc, "hosta", "hostb")
    assert not again.get("failed"), again.get("msg")
    assert again["changed"] is False
    again_check = _migrate(ansible_adhoc, "hosta", "hostb", _check=True)  # the fourth way: rerun in check mode
    assert not again_check.get("failed") and again_check["changed"] is False, again_check.get("msg")

    # and back: hosta still holds the old images, which the operator removes first
    _remove_stale_source_images("hosta")
    _prepare_destination(ansible_adhoc, "hostb", "hosta")
    first_tick = proof.last_tick()
    with proof.PingMonitor() as ping:
        back = _migrate(ansible_adhoc, "hostb", "hosta")
    assert not back.get("failed"), back.get("msg")
    assert back["changed"] is True
    assert proof.domain_state("hosta") == "running" and proof.domain_state("hostb") is None
    assert ping.lost <= _allowed_loss(back["stats"]), (back["stats"]["downtime_ms"], ping.output[-400:])
    print("hostb->hosta: downtime %s ms, pings %d sent %d lost" % (back["stats"]["downtime_ms"], ping.sent, ping.lost))
    lab.wait_for(lambda: proof.last_tick() > first_tick + 3, "ticks on hosta", 20)
    gaps = proof.tick_gaps(proof.console_ticks(), first_tick)
    assert gaps["missing"] == [] and gaps["max_gap_s"] <= 2, gaps
    assert proof.region_digest("hosta", "%s.raw" % GUEST) == src_digest


def test_short_timeout_aborts_cleanly(guest_on_hosta, ansible_adhoc):
    where = "hosta" if proof.domain_state("hosta") == "running" else "hostb"
    other = "hostb" if where == "hosta" else "hosta"
    if _images(other):
        for ext in ("raw", "swap"):
            lab.in_host(other, ["rm", "-f", "/var/lib/libvirt/images/%s.%s" % (GUEST, ext)])
        lab.in_host(other, ["rm", "-f", lab.MANIFEST_DIR + "/manifest.json"])
    _prepare_destination(ansible_adhoc, where, other)
    digest = proof.region_digest(where, "%s.raw" % GUEST)
    # 1 MiB/s cannot move 256 MiB of memory and 256 MiB of disk in 5 s
    res = _migrate(ansible_adhoc, where, other, bandwidth_mibps=1, timeout_min_s=5, timeout_s_per_gib=0.001,
                   abort_grace_s=60)
    assert res.get("failed"), res
    assert "timeout" in res["msg"].lower() or "timed out" in res["msg"].lower(), res["msg"]
    assert proof.domain_state(where) == "running"
    assert proof.domain_state(other) is None, "nothing may stay defined on the destination"
    lab.wait_guest_ping(timeout=20)
    assert proof.region_digest(where, "%s.raw" % GUEST) == digest
