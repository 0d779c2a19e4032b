"""Issue 19 in the lab: the pre-flight measures the running demo guest (libvirt's dirty-rate
calculation, block stats, memory stats) and the link (a ~1 s stream through the migration port's
probe) and forecasts the move; check mode prints the forecast; a move under a bandwidth cap with
a memory-dirtying guest climbs the convergence ladder, and its result says which steps when.
The guest ends where it was; each move's record (forecast inputs beside the job's figures) is
written to .cache/lab-records/ (the unit fixtures of tests/unit/fixtures/migration/lab_*.json
come from there)."""

from __future__ import annotations

import json
import os
import re
import time

from conftest import ROOT, ansible_playbook, lab, migrate_json, run_module

GUEST = lab.GUEST
#: a loop in the guest rewriting 32 MiB with new data while /tmp/kvmops-dirty exists: each pass
#: copies a window of 48 MiB of random data shifted by 1 MiB from the last one, so every page
#: changes content each pass (about 0.1 s a pass): about 32 MiB of distinct pages dirtied in any
#: second, twice the 16 MiB/s cap. New data, because QEMU's page sampling (the only dirty-rate
#: measurement under TCG) does not see a page rewritten with what it held. The guest's /tmp is its
#: RAM; /dev/shm does not exist there.
DIRTY_START = ("touch /tmp/kvmops-dirty; (cd /tmp && dd if=/dev/urandom of=kvd-pool bs=1M count=48 2>/dev/null && "
               "dd if=kvd-pool of=kvd-x bs=1M count=32 2>/dev/null && i=0 && "
               "while [ -e /tmp/kvmops-dirty ]; do dd if=kvd-pool of=kvd-x bs=1M count=32 skip=$i conv=notrunc "
               "2>/dev/null; i=$(( (i + 1) % 17 )); done; rm -f kvd-pool kvd-x) "
               "</dev/null >/dev/null 2>&1 &\n")
DIRTY_STOP = "rm -f /tmp/kvmops-dirty; echo stopped\n"
#: a loop in the guest writing 4 MiB of random data to its data disk (vdb, 1-1.25 GiB in, clear of
#: the proof's records at its start) and syncing it, then 0.5 s of rest, while /tmp/kvmops-write
#: exists: a few MiB/s of writes the disks' mirror must forward during the move
WRITE_START = ("touch /tmp/kvmops-write; (dd if=/dev/urandom of=/tmp/kvw-pool bs=1M count=4 2>/dev/null && i=0 && "
               "while [ -e /tmp/kvmops-write ]; do dd if=/tmp/kvw-pool of=/dev/vdb bs=1M count=4 "
               "seek=$(( 1024 + i % 64 * 4 )) conv=notrunc,fsync 2>/dev/null; i=$(( i + 1 )); sleep 0.5; done; "
               "rm -f /tmp/kvw-pool) </dev/null >/dev/null 2>&1 &\n")
WRITE_STOP = "rm -f /tmp/kvmops-write; echo stopped\n"


def guest_shell(cmd: str) -> str:
    """One command through the lab guest's shell (port 2323, from the observer)."""
    res = lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "3", lab.GUEST_IP, "2323"],
                  input=cmd, check=False, capture=True)
    return res.stdout or ""


def stop_dirtying(command: str = DIRTY_STOP) -> None:
    for dummy in range(20):  # the guest's shell serves one connection at a time
        if "stopped" in guest_shell(command):
            return
        time.sleep(1)
    raise AssertionError("the loop in %s could not be stopped (%s)" % (GUEST, command.strip()))


def record(name: str, entry: dict) -> None:
    """Keep a move's summary (job figures, forecast and its inputs, ladder) for the unit fixtures."""
    where_to = os.path.join(ROOT, ".cache", "lab-records")
    os.makedirs(where_to, exist_ok=True)
    with open(os.path.join(where_to, name + ".json"), "w") as handle:
        json.dump(entry, handle, indent=1, sort_keys=True)


def flat(res) -> str:
    """Playbook output with the YAML callback's line folding and quote doubling undone."""
    return re.sub(r"\s+", " ", res.stdout).replace("''", "'")


def where() -> dict[str, str]:
    return lab.domain_hosts(GUEST)


def image_files(host: str) -> set[str]:
    return set(os.listdir(lab.hdir(host, "var-lib-libvirt", "images")))


def test_preflight_measures_the_running_guest_and_forecasts(lab_up):
    src = list(where())[0]
    dest = next(h for h in lab.HOSTS if h != src)
    res = run_module(src, "kvmops.migration.preflight", {
        "domain": GUEST, "dest_host": lab.HOSTS[dest], "fail_on_error": False,
        "forecast": {"bandwidth_mibps": 64, "max_downtime_ms": 500}})
    fc = res["forecast"]
    assert fc is not None, res
    measured = fc["measured"]
    # the dirty-rate calculation works on the lab's QEMU (TCG), and the window was about 1 s
    assert measured["dirty_source"] == "libvirt dirtyrate", measured
    assert measured["dirty_mode"] == "page-sampling", measured  # TCG: the only mode that counts
    assert measured["dirty_bps"] is not None and measured["problems"] == [], measured
    assert 0.9 <= measured["window_s"] <= 3.0, measured
    # the lab guest has no balloon: the resident size of its RAM mapping, read on the source host,
    # below the whole QEMU process's rss (TCG's translation buffer and QEMU's own memory)
    assert measured["memory_source"] == "ram_rss" and 0 < measured["memory_bytes"] <= lab.GUEST_MEMORY_MIB * 1024 ** 2
    # the idle demo guest converges at the 64 MiB/s cap; without the destination's probe the link
    # is not measured: its rate is the cap, assumed
    assert fc["verdict"] == "converges", fc
    assert fc["link_measured"] is False and fc["link"] is None and fc["rate_bps"] == 64 * 1024 ** 2
    assert fc["inputs"]["max_downtime_ms"] == 500
    finding = [f for f in res["report"]["findings"] if f["check"] == "forecast"]
    assert finding and finding[0]["status"] == "ok" and "converges in about" in finding[0]["msg"], finding
    assert where() == {src: "running"}


def test_check_mode_prints_the_forecast(lab_up):
    src = list(where())[0]
    before = {h: image_files(h) for h in lab.HOSTS}
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "--check")
    out = flat(res)
    assert res.returncode == 0, res.stdout[-6000:]
    assert "PLAN (check mode)" in out
    # the pre-flight's findings table and the plan's summary both say it
    # the link measured through the migration port's probe (the lab's veth: 1.2-1.6 GB/s of plain TCP;
    # the 256 MiB bound ends the stream after about 0.2 s)
    found = re.search(r"OK forecast Forecast: converges in about [0-9.]+ s \(\d+ memory pass\(es\), downtime about \d+ ms\) "
                      r"at (\d+) MiB/s \(link measured (\d+) MiB/s over ([0-9.]+) s\)", out)
    assert found, out[-6000:]
    assert found.group(1) == found.group(2) and int(found.group(2)) >= 40 and float(found.group(3)) <= 1.5
    assert out.count("Forecast: converges in about") >= 2, out[-6000:]
    assert where() == {src: "running"}
    assert {h: image_files(h) for h in lab.HOSTS} == before


def test_summary_shows_the_forecast_beside_the_actual_move(lab_up):
    """A real move there and back with the playbook: each summary has the forecast beside the
    actual figures (the lab's record of forecast error, printed for the report)."""
    from test_roles import drop_old_images, other, play  # the same helpers as the roles' tests

    # the clock re-sync after the move fails with this libvirt-python ("Dictionary must contains
    # 'seconds'", _health's setTime({}, SYNC)) and fails the wait: not what this test is about
    no_sync = ("-e", "migrate_guest_sync_clock=false")
    home = list(where())[0]
    away = other(home)
    try:
        drop_old_images(away)
        res, idle, there, _recap = migrate_json(GUEST, "-e", "dest=%s" % away, *no_sync)
        assert res.returncode == 0 and where() == {away: "running"}, there[-6000:]
        record("idle", idle)
        there = re.sub(r"\s+", " ", there)
        drop_old_images(home)
        back = flat(play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % home, *no_sync))
        assert where() == {home: "running"}
    finally:
        if home not in where():  # leave the demo guest where it was
            drop_old_images(home)
            play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % home, *no_sync)
        drop_old_images(away)
    for out in (there, back):
        line = re.search(r"forecast beside actual: [0-9.]+ s / [0-9.]+ s \([+-]\d+ %\), downtime \d+ ms / \d+ ms, "
                         r"\d+ pass\(es\) \(link measured \d+ MiB/s over [0-9.]+ s\)", out)
        assert line, out[-6000:]
        moved = re.search(r"moved: memory [^']*", out)
        print(line.group(0), "|", moved.group(0) if moved else "")


def test_a_guest_dirtying_memory_under_a_cap_climbs_the_convergence_ladder(lab_up):
    """A guest dirtying about 32 MiB/s of memory, moved at a 16 MiB/s cap: check mode forecasts
    that pre-copy does not converge (with the link measured) and names the levers, the raised cap
    first and auto-converge among them; then the move with the ladder allowed (max downtime in 3
    steps up to 300 ms, auto-converge) converges by auto-converge, and says which steps it took
    when; the guest is moved back idle."""
    from test_roles import drop_old_images, other, play  # the same helpers as the roles' tests

    no_sync = ("-e", "migrate_guest_sync_clock=false")
    home = list(where())[0]
    away = other(home)
    cap = ("-e", "migrate_guest_bandwidth_mibps=16", "-e", "migrate_guest_max_downtime_ms=300",
           "-e", "migrate_guest_downtime_steps=3", "-e", "migrate_guest_auto_converge=true")
    guest_shell(DIRTY_START)
    try:
        time.sleep(4)  # the random pool is written, the loop runs
        res, planned, out, _recap = migrate_json(GUEST, "-e", "dest=%s" % away, "--check", *cap, *no_sync)
        assert res.returncode == 0, out[-6000:]
        fc = planned["forecast"]
        assert fc["link"] and fc["link"].startswith("link measured") and fc["inputs"]["bandwidth_bps"] == 16 * 1024 ** 2
        # TCG: the page sampling, and the forecast says what it cannot see
        assert fc["inputs"]["dirty_mode"] == "page-sampling", fc
        assert fc["verdict"] == "does not converge", fc
        # the cap is the lever (the link carries more), and auto-converge would do without it
        assert fc["levers"][0] == "bandwidth" and "auto_converge" in fc["levers"], fc
        drop_old_images(away)
        res, moved, out, _recap = migrate_json(GUEST, "-e", "dest=%s" % away, *cap, *no_sync)
        assert res.returncode == 0 and where() == {away: "running"}, out[-6000:]
        ladder = moved["convergence"]
        assert ladder["allowed"]["downtime_steps_ms"] == [100, 200, 300] and ladder["allowed"]["auto_converge"] is True
        steps = ladder["steps"]
        downs = [s for s in steps if s["step"] == "downtime"]
        # the first step when the job runs; each further one at a later memory pass, never past the top
        assert downs and downs[0]["max_downtime_ms"] == 100 and len(downs) <= 3, steps
        assert [s["memory_iteration"] for s in downs[1:]] == sorted({s["memory_iteration"] for s in downs[1:]}), steps
        assert all(s["step"] != "postcopy" for s in steps)  # not allowed
        # the lever the forecast named is the one that made it converge: QEMU throttled the vCPUs
        assert [s for s in steps if s["step"] == "auto_converge"], ladder
        assert "max downtime 100 ms at" in ladder["msg"]
        print("ladder:", ladder["msg"], "| forecast:", fc["verdict"], fc.get("levers"), "| moved:",
              moved["duration_s"], "s", moved["downtime_ms"], "ms", moved["iterations"], "passes")
        record("dirtying_capped", moved)
    finally:
        stop_dirtying()
        if where() != {home: "running"}:
            drop_old_images(home)
            play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % home, *no_sync)
        drop_old_images(away)
    assert where() == {home: "running"}


def test_a_guest_writing_its_disk_is_forecast_with_its_write_rate(lab_up):
    """A guest writing its data disk (a few MiB/s, synced) moved at a 32 MiB/s cap: check mode
    measures the write rate over the window (virDomainBlockStats) and forecasts the mirror
    forwarding it; the move converges as forecast. Its record is the disk-writing fixture of the
    unit tests (tests/unit/fixtures/migration/lab_disk_writing_capped_move.json)."""
    from test_roles import drop_old_images, other, play  # the same helpers as the roles' tests

    no_sync = ("-e", "migrate_guest_sync_clock=false")
    home = list(where())[0]
    away = other(home)
    cap = ("-e", "migrate_guest_bandwidth_mibps=32")
    guest_shell(WRITE_START)
    try:
        time.sleep(3)
        res, planned, out, _recap = migrate_json(GUEST, "-e", "dest=%s" % away, "--check", *cap, *no_sync)
        assert res.returncode == 0, out[-6000:]
        fc = planned["forecast"]
        # 4 MiB every 0.5 s or more (the dd and its sync take time too): at least 1 MiB/s, at most 8
        assert 1 * 1024 ** 2 <= fc["inputs"]["disk_write_bps"] <= 8 * 1024 ** 2, fc["inputs"]
        assert fc["verdict"] == "converges", fc
        drop_old_images(away)
        res, moved, out, _recap = migrate_json(GUEST, "-e", "dest=%s" % away, *cap, *no_sync)
        assert res.returncode == 0 and where() == {away: "running"}, out[-6000:]
        assert moved["forecast"]["inputs"]["disk_write_bps"] > 0 and moved["forecast"]["verdict"] == "converges"
        print("disk-writing move: forecast", moved["forecast"]["total_s"], "s, actual", moved["duration_s"], "s,",
              "written %.1f MiB/s" % (moved["forecast"]["inputs"]["disk_write_bps"] / 1024 ** 2))
        record("disk_writing_capped", moved)
    finally:
        stop_dirtying(WRITE_STOP)
        if where() != {home: "running"}:
            drop_old_images(home)
            play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % home, *no_sync)
        drop_old_images(away)
    assert where() == {home: "running"}
