"""Issue 19 in the lab: the pre-flight measures the running demo guest (libvirt's dirty-rate
calculation, block stats, memory stats) and forecasts the move; check mode prints the forecast.
Nothing changes on either host (the guest stays where it was, no image appears)."""

from __future__ import annotations

import os
import re

from conftest import ansible_playbook, lab, run_module

GUEST = lab.GUEST


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
    assert measured["dirty_bps"] is not None and measured["problems"] == [], measured
    assert 0.9 <= measured["window_s"] <= 3.0, measured
    assert measured["memory_source"] in ("balloon", "rss", "max_memory") and measured["memory_bytes"] > 0
    # the idle demo guest converges at the 64 MiB/s cap; the link rate is the cap, assumed
    assert fc["verdict"] == "converges", fc
    assert fc["link_measured"] is False and fc["rate_bps"] == 64 * 1024 ** 2
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
    assert re.search(r"OK forecast Forecast: converges in about [0-9.]+ s \(\d+ memory pass\(es\), downtime about \d+ ms\) "
                     r"at \d+ MiB/s \(link assumed, not measured\)", out), out[-6000:]
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
        there = flat(play("playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % away, *no_sync))
        assert where() == {away: "running"}
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
                         r"\d+ pass\(es\) \(link rate assumed\)", out)
        assert line, out[-6000:]
        moved = re.search(r"moved: memory [^']*", out)
        print(line.group(0), "|", moved.group(0) if moved else "")
