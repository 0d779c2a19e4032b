# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The forecast model (issue 19) against recorded job statistics, and its levers.

The recordings (tests/unit/fixtures/migration/jobstats_*.json) are ``virDomainGetJobStats``
samples of three lab moves as the migrate driver sees them, written in the shape of the lab's
runs (commit 1ea13cf: the 256 MiB idle guest of LAB_NOTES, the 512 MiB guest dirtying ~80 MB/s
under a 32 MiB/s limit, the same switched to post-copy). They are hand-built from those runs'
figures, not raw dumps, and QEMU's instantaneous ``*_bps`` fields in them disagree with their
own timelines (the converging one says 64 MiB/s of disk but copies 128 MiB in 1 s). So the
forecast takes from each recording what a measurement before the move would have seen:

- the link rate: what the storage phase carried (disk_processed over its elapsed time);
- the dirty rate: the first memory sample's ``memory_dirty_rate`` x ``memory_page_size``;
- the bandwidth cap: the recorded ``memory_bps`` where the recording ran under a limit (the
  not-converging ones: "at a 32 MiB/s limit"), none otherwise;
- memory in use: the converging move's completed ``memory_processed`` (its 256 MiB guest sent
  90 MiB: zero pages cost nothing; the recording has no in-use figure, and what it sent is the
  upper bound of it); the not-converging ones' ``memory_total`` (the verdict does not depend on it);
- the copied disks' allocation: ``disk_total``.

Besides the recordings, one real figure from docs/performance.md (make bench, 2026-12-03): a
512 MiB guest with 2 GiB written moved in 19.2 s job time over a link iperf3 measured at
957 Mbit/s; 2254110458 bytes crossed the link (memory in use: those minus the 2 GiB of disk).
"""

from __future__ import annotations

import io
import json
import os
import typing as t

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _forecast as fc
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan as mp

import fake_libvirt  # noqa: E402  (tests/unit/plugins/module_utils, as the other tests import it)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "migration")
MIB = fc.MIB


def load(name: str) -> dict[str, t.Any]:
    with open(os.path.join(FIXTURES, name)) as handle:
        return json.load(handle)


def inputs_from_recording(rec: dict[str, t.Any], capped: bool) -> fc.ForecastInputs:
    """The forecast's inputs from a recording (the rules of this module's docstring)."""
    storage = [s for s in rec["samples"] if "memory_iteration" not in s["stats"]]
    link = ((storage[-1]["stats"]["disk_processed"] - storage[0]["stats"]["disk_processed"])
            / (storage[-1]["elapsed_s"] - storage[0]["elapsed_s"]))
    memory = next(s["stats"] for s in rec["samples"] if "memory_iteration" in s["stats"])
    in_use = memory["memory_total"] if capped else rec["completed"]["memory_processed"]
    return fc.ForecastInputs(memory_bytes=in_use, disk_bytes=storage[-1]["stats"]["disk_total"], link_bps=link,
                             dirty_bps=memory["memory_dirty_rate"] * memory["memory_page_size"],
                             bandwidth_bps=memory["memory_bps"] if capped else None, link_measured=True)


RECORDINGS = [("jobstats_converging.json", False, "converges"),
              ("jobstats_not_converging.json", True, "does not converge"),
              ("jobstats_postcopy.json", True, "does not converge")]


@pytest.mark.parametrize("name, capped, verdict", RECORDINGS)
def test_forecast_verdict_of_each_recording(name, capped, verdict):
    out = fc.forecast(inputs_from_recording(load(name), capped))
    assert out["verdict"] == verdict
    assert out["converges"] is (verdict == "converges")


def test_forecast_total_time_of_the_converging_recording_within_25_percent():
    rec = load("jobstats_converging.json")
    out = fc.forecast(inputs_from_recording(rec, False))
    actual_s = rec["completed"]["time_elapsed"] / 1000.0
    assert abs(out["total_s"] - actual_s) <= 0.25 * actual_s, (out["total_s"], actual_s)
    assert out["memory_passes"] < rec["completed"]["memory_iteration"]  # libvirt counts bitmap syncs
    assert out["downtime_ms"] <= 300 and abs(out["downtime_ms"] - rec["completed"]["downtime"]) <= 0.25 * 112
    assert out["recommendation"]["lever"] == "none"


def test_forecast_of_the_bench_move_within_25_percent():
    out = fc.forecast(fc.ForecastInputs(memory_bytes=2254110458 - 2 * fc.GIB, disk_bytes=2 * fc.GIB,
                                        link_bps=957e6 / 8, link_measured=True))
    assert out["converges"] and abs(out["total_s"] - 19.2) <= 0.25 * 19.2
    assert out["assumptions"] == []


@pytest.mark.parametrize("name", ["jobstats_not_converging.json", "jobstats_postcopy.json"])
def test_not_converging_recordings_get_the_gentlest_lever_first(name):
    out = fc.forecast(inputs_from_recording(load(name), True))
    levers = [lv["lever"] for lv in out["levers"]]
    # 78 MiB/s dirtied against the 32 MiB/s cap of a 128 MiB/s link: raising the cap suffices
    assert levers == ["bandwidth", "auto_converge", "postcopy"]
    assert out["recommendation"]["bandwidth_mibps"] == 98
    assert "does not converge" in fc.summary_line(out) and "bandwidth cap" in fc.summary_line(out)
    assert out["total_s"] is None and out["memory_passes"] is None


def test_geometric_passes_and_downtime():
    # 1 GiB in use at 100 MiB/s, dirtying 50 MiB/s: 10.24 s, 5.12 s, 2.56 s ... until <= 30 MiB left
    out = fc.forecast(fc.ForecastInputs(memory_bytes=fc.GIB, disk_bytes=0, link_bps=100 * MIB,
                                        dirty_bps=50 * MIB, link_measured=True))
    # leaves 512, 256, 128, 64, 32 MiB (> 30 MiB), then 16 MiB: 6 passes, 160 ms for the rest
    assert out["converges"] and out["memory_passes"] == 6
    assert out["memory_s"] == pytest.approx(10.24 + 5.12 + 2.56 + 1.28 + 0.64 + 0.32, abs=0.01)
    assert out["downtime_ms"] == pytest.approx(100 + 160, abs=1)
    assert out["total_s"] == pytest.approx(20.16 + 0.26, abs=0.01)
    assert out["storage_s"] == 0.0


def test_storage_must_keep_up_with_the_write_rate():
    base = dict(memory_bytes=64 * MIB, disk_bytes=1024 * MIB, link_bps=100 * MIB, link_measured=True)
    out = fc.forecast(fc.ForecastInputs(disk_write_bps=20 * MIB, **base))
    assert out["storage_s"] == pytest.approx(1024 / 80, abs=0.01)
    assert out["memory_rate_bps"] == 80 * MIB
    heavy = fc.forecast(fc.ForecastInputs(disk_write_bps=60 * MIB, **base))
    assert heavy["converges"] and heavy["recommendation"]["lever"] == "sync_writes"
    never = fc.forecast(fc.ForecastInputs(disk_write_bps=100 * MIB, **base))
    assert not never["converges"] and never["storage_s"] is None
    assert never["recommendation"]["lever"] == "sync_writes" and "mirror never catches up" in never["reason"]


def test_downtime_lever_when_a_small_guest_dirties_faster_than_the_link():
    out = fc.forecast(fc.ForecastInputs(memory_bytes=64 * MIB, disk_bytes=0, link_bps=100 * MIB,
                                        dirty_bps=200 * MIB, link_measured=True))
    assert not out["converges"] and out["needed_downtime_ms"] == 640
    assert out["recommendation"] == {"lever": "downtime", "max_downtime_ms": 650,
                                     "msg": "stepwise downtime increase up to 650 ms (now 300 ms)"}
    fixed = fc.forecast(fc.ForecastInputs(memory_bytes=64 * MIB, disk_bytes=0, link_bps=100 * MIB,
                                          dirty_bps=200 * MIB, max_downtime_ms=650, link_measured=True))
    assert fixed["converges"]


def test_parallel_connections_when_one_connection_is_slower_than_the_link():
    out = fc.forecast(fc.ForecastInputs(memory_bytes=8 * fc.GIB, disk_bytes=0, link_bps=1000 * MIB,
                                        dirty_bps=400 * MIB, stream_bps=300 * MIB, link_measured=True))
    assert not out["converges"] and out["recommendation"]["lever"] == "parallel_connections"
    assert out["recommendation"]["parallel_connections"] == 4


def test_postcopy_when_throttling_would_be_too_much():
    out = fc.forecast(fc.ForecastInputs(memory_bytes=4 * fc.GIB, disk_bytes=0, link_bps=10 * MIB,
                                        dirty_bps=400 * MIB, link_measured=True))
    assert [lv["lever"] for lv in out["levers"]] == ["postcopy"]


def test_assumed_link_is_said():
    inputs = fc.inputs_from_measurement({"memory_bytes": 90 * MIB, "memory_source": "rss", "dirty_bps": None,
                                         "disk_write_bps": 0.0, "window_s": 1.0}, 128 * MIB)
    out = fc.forecast(inputs)
    assert out["link_measured"] is False and inputs.link_bps == fc.ASSUMED_LINK_BPS
    assert out["assumptions"] == ["the link rate (117 MiB/s) is assumed, not measured"]
    assert "link assumed, not measured" in fc.summary_line(out)
    assert out["inputs"]["sources"]["dirty_bps"] == "not measured, taken as 0"
    capped = fc.inputs_from_measurement({"memory_bytes": 1}, 0, bandwidth_mibps=32)
    assert capped.link_bps == 32 * MIB and "bandwidth cap" in capped.sources["link_bps"]


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="link_bps"):
        fc.forecast(fc.ForecastInputs(memory_bytes=1, disk_bytes=0, link_bps=0))
    with pytest.raises(ValueError, match="dirty_bps"):
        fc.forecast(fc.ForecastInputs(memory_bytes=1, disk_bytes=0, link_bps=1, dirty_bps=-1))


@pytest.mark.parametrize("forecast, multiple, floor, expected", [
    ({"converges": True, "total_s": 19.2}, 3, 300, 300),
    ({"converges": True, "total_s": 200.0}, 3, 300, 600),
    ({"converges": True, "total_s": 200.0}, 0, 300, None),
    ({"converges": False, "total_s": None}, 3, 300, None),
    (None, 3, 300, None),
])
def test_completion_timeout_from_the_forecast(forecast, multiple, floor, expected):
    assert fc.completion_timeout_s(forecast, multiple, floor) == expected


def _plan(**kw):
    opts = mp.MigrationOptions(domain="vm1", dest_host="198.18.0.2", allow_insecure_transport=True, tls=False, **kw)
    src = {"name": "vm1", "uuid": "u", "active": True, "persistent": True, "memory_bytes": fc.GIB,
           "disks": [], "disk_bytes": {}}
    return mp.build_plan(opts, src)


def test_plan_keeps_the_per_gib_timeout_without_a_forecast():
    plan = _plan(timeout_s_per_gib=800, timeout_min_s=300)
    assert plan.timeout_s == 800 and plan.timeout_basis == "per_gib"
    assert plan.as_result()["timeout_basis"] == "per_gib"


def test_plan_takes_the_timeout_from_a_converging_forecast():
    converging = {"converges": True, "total_s": 150.0}
    plan = _plan(forecast=converging, timeout_min_s=60)
    assert plan.timeout_s == 450 and plan.timeout_basis == "forecast"
    assert _plan(forecast=converging, timeout_min_s=60, timeout_forecast_multiple=2).timeout_s == 300
    assert _plan(forecast=converging).timeout_s == 450  # above the 300 s floor
    assert _plan(forecast={"converges": True, "total_s": 10.0}).timeout_s == 300  # the floor
    # not converging: nothing to scale, the per-GiB rule stays; disabled stays disabled
    assert _plan(forecast={"converges": False, "total_s": None}).timeout_basis == "per_gib"
    off = _plan(forecast=converging, timeout_s_per_gib=0)
    assert off.timeout_s is None and off.timeout_basis is None


# ------------------------------------------------------------------------------------------
# measuring the guest (fake libvirt)
# ------------------------------------------------------------------------------------------

def _guest():
    guest = fake_libvirt.Domain(name="vm1", memory_kib=524288)
    fake_libvirt.Connection("qemu:///system", [guest], readonly=True)
    return fake_libvirt, guest


def test_measure_guest_reads_dirty_rate_writes_and_memory():
    fl, guest = _guest()
    guest.dirty_rate_mibps, guest.dirty_measuring = 80, 3
    guest.block_written = {"vda": [0, 20 * MIB], "vdb": [5, 5]}
    guest.memory_stats = {"actual": 524288, "rss": 300000}
    clock = fl.FakeClock(10.0)
    out = fc.measure_guest(guest, fl.LV_11_3, ["vda", "vdb"], 1, clock, clock.sleep)
    assert out["dirty_bps"] == 80 * MIB and out["dirty_source"] == "libvirt dirtyrate"
    assert out["disk_write_bps"] == pytest.approx(20 * MIB) and out["window_s"] == 1.0
    assert out["memory_bytes"] == 300000 * 1024 and out["memory_source"] == "rss"
    assert out["problems"] == [] and guest.dirty_calcs == [1] and guest.calls == []


def test_measure_guest_without_dirty_rate_support_or_memory_stats():
    fl, guest = _guest()
    guest.dirty_rate_mibps = None
    clock = fl.FakeClock()
    out = fc.measure_guest(guest, fl.LV_11_3, [], 1, clock, clock.sleep)
    assert out["dirty_bps"] is None and "not supported" in out["problems"][0]
    assert out["memory_bytes"] == 524288 * 1024 and out["memory_source"] == "max_memory"


def test_measure_guest_gives_up_on_a_calculation_that_never_ends():
    fl, guest = _guest()
    guest.dirty_measuring = 1000
    clock = fl.FakeClock()
    out = fc.measure_guest(guest, fl.LV_11_3, [], 1, clock, clock.sleep)
    assert out["dirty_bps"] is None and "did not finish within 4 s" in out["problems"][0]


SMAPS = """55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234    /usr/bin/qemu-system-x86_64
Size:               1024 kB
Rss:                 900 kB
VmFlags: rd ex mr mw me
7f3a00000000-7f3a40000000 rw-p 00000000 00:00 0
Size:            1048576 kB
Rss:              400000 kB
VmFlags: rd wr mr mw me ac
7f3b00000000-7f3b20200000 rw-p 00000000 00:00 0
Size:             526336 kB
KernelPageSize:        4 kB
Rss:               95232 kB
Pss:               95232 kB
VmFlags: rd wr mr mw me ac sd
"""


def test_ram_resident_is_the_rss_of_the_one_mapping_the_size_of_the_guest_memory():
    # the 512 MiB guest's RAM (2 MiB larger: alignment) beside TCG's 1 GiB translation buffer
    assert fc.ram_resident_from_smaps(SMAPS, 512 * MIB) == 95232 * 1024
    # a 1 GiB guest matches the buffer only: taken; both the same size would be ambiguous
    assert fc.ram_resident_from_smaps(SMAPS, 1024 * MIB) == 400000 * 1024
    twice = SMAPS + SMAPS.split("\n", 4)[4]
    assert fc.ram_resident_from_smaps(twice, 512 * MIB) is None
    assert fc.ram_resident_from_smaps(SMAPS, 256 * MIB) is None and fc.ram_resident_from_smaps("", MIB) is None
    assert fc.ram_resident_from_smaps("garbage\nSize: x kB\nRss: 1\n", MIB) is None


def test_guest_ram_resident_reads_the_pid_file_then_smaps(tmp_path):
    (tmp_path / "vm1.pid").write_text("4242\n")
    files = {str(tmp_path / "vm1.pid"): "4242\n", "/proc/4242/smaps": SMAPS}

    def opener(path):
        if path not in files:
            raise FileNotFoundError(path)
        return io.StringIO(files[path])
    assert fc.guest_ram_resident("vm1", 512 * MIB, str(tmp_path), opener) == 95232 * 1024
    assert fc.guest_ram_resident("vm2", 512 * MIB, str(tmp_path), opener) is None  # no pid file
    files[str(tmp_path / "vm1.pid")] = "not a pid"
    assert fc.guest_ram_resident("vm1", 512 * MIB, str(tmp_path), opener) is None


def test_memory_in_use_prefers_the_balloon_then_the_ram_mapping_then_rss():
    fl, guest = _guest()
    guest.memory_stats = {"actual": 524288, "rss": 300000}
    seen = []

    def reader(name, memory):
        seen.append((name, memory))
        return 90 * MIB
    assert fc.memory_in_use(guest, fl.LV_11_3, reader) == (90 * MIB, "ram_rss") and seen == [("vm1", 512 * MIB)]
    assert fc.memory_in_use(guest, fl.LV_11_3, lambda n, m: None) == (300000 * 1024, "rss")
    assert fc.memory_in_use(guest, fl.LV_11_3, lambda n, m: 900 * MIB) == (512 * MIB, "ram_rss")  # capped
    guest.memory_stats = {"actual": 524288, "unused": 424288, "rss": 300000}
    assert fc.memory_in_use(guest, fl.LV_11_3, reader) == (100000 * 1024, "balloon")
    inputs = fc.inputs_from_measurement({"memory_bytes": MIB, "memory_source": "ram_rss"}, 0)
    assert "smaps" in inputs.sources["memory_bytes"]


def test_dirty_rate_mode_follows_the_accelerator():
    # under TCG only page sampling counts anything; KVM counts every written page, as migration does
    assert fc.dirty_rate_mode("qemu") == "page-sampling" and fc.dirty_rate_mode(None) == "page-sampling"
    assert fc.dirty_rate_mode("kvm") == "dirty-bitmap" and fc.dirty_rate_mode("kvm", True) == "dirty-ring"
    assert fc.dirty_rate_mode("qemu", True) == "page-sampling"


@pytest.mark.parametrize("mode,flags", [("page-sampling", 0), ("dirty-bitmap", 1), ("dirty-ring", 2)])
def test_measure_guest_in_each_mode_says_which(mode, flags):
    fl, guest = _guest()
    guest.dirty_rate_mibps = 40
    clock = fl.FakeClock()
    out = fc.measure_guest(guest, fl.LV_11_3, [], 1, clock, clock.sleep, mode)
    assert guest.dirty_flags == [flags] and out["dirty_mode"] == mode and out["problems"] == []
    inputs = fc.inputs_from_measurement(out, 0)
    assert inputs.dirty_mode == mode and inputs.sources["dirty_bps"] == fc.DIRTY_MODE_WORDS[mode]
    sampled = any("sampled" in a for a in fc.forecast(inputs)["assumptions"])
    assert sampled is (mode == "page-sampling")


def test_a_refused_mode_falls_back_to_page_sampling_and_says_so():
    fl, guest = _guest()
    guest.dirty_rate_mibps, guest.dirty_refused_flags = 12, {1}
    clock = fl.FakeClock()
    out = fc.measure_guest(guest, fl.LV_11_3, [], 1, clock, clock.sleep, "dirty-bitmap")
    assert guest.dirty_flags == [0] and out["dirty_mode"] == "page-sampling" and out["dirty_bps"] == 12 * MIB
    assert len(out["problems"]) == 1 and "dirty-bitmap mode" in out["problems"][0]
    # every mode refused: not measured, each refusal said
    fl, guest = _guest()
    guest.dirty_refused_flags = {0, 2}
    out = fc.measure_guest(guest, fl.LV_11_3, [], 1, clock, clock.sleep, "dirty-ring")
    assert out["dirty_bps"] is None and out["dirty_mode"] is None and len(out["problems"]) == 2
    with pytest.raises(ValueError):
        fc.start_measure(guest, fl.LV_11_3, [], 1, clock, "dirty-log")


def test_start_then_finish_sleeps_only_the_rest_of_the_window():
    fl, guest = _guest()
    clock = fl.FakeClock()
    pending = fc.start_measure(guest, fl.LV_11_3, [], 2, clock)
    clock.sleep(1.5)  # the other checks
    out = fc.finish_measure(pending, [], clock, clock.sleep)
    assert out["window_s"] == 2.0 and out["dirty_bps"] == 0.0


# ------------------------------------------------------------------------------------------
# the summary: forecast beside actual
# ------------------------------------------------------------------------------------------

def test_summary_shows_the_forecast_beside_the_actual_move():
    from ansible_collections.kvmops.migration.plugins.module_utils import _report
    rec = load("jobstats_converging.json")
    forecast = fc.forecast(inputs_from_recording(rec, False))
    forecast["msg"] = fc.summary_line(forecast)
    result = {"state": "migrated", "changed": True, "stats": {"time_ms": 2100, "downtime_ms": 112, "iterations": 3}}
    s = _report.migration_summary("vm1", "hosta", "hostb", result, forecast=forecast)
    assert s["forecast"]["total_s"] == forecast["total_s"] and s["forecast"]["actual_s"] == 2.1
    assert s["forecast"]["error_pct"] == round(100 * (forecast["total_s"] - 2.1) / 2.1, 1)
    line = [x for x in s["lines"] if x.startswith("forecast beside actual")][0]
    assert "/ 2.1 s (" in line and "downtime 106 ms / 112 ms" in line
    planned = _report.migration_summary("vm1", "hosta", "hostb", {}, check_mode=True, forecast=forecast)
    assert forecast["msg"] in planned["lines"]
    assert _report.migration_summary("vm1", "hosta", "hostb", result)["forecast"] is None


def test_memory_in_use_caps_rss_at_the_guest_memory():
    # the lab's TCG guest has no balloon: QEMU's rss (262 MiB) exceeds its 256 MiB
    _fl, guest = _guest()
    guest.memory_kib = 262144
    guest.memory_stats = {"rss": 268544}
    assert fc.memory_in_use(guest, fake_libvirt.LV_11_3) == (262144 * 1024, "rss")
    guest.memory_stats = {"actual": 262144, "unused": 200000, "rss": 268544}
    assert fc.memory_in_use(guest, fake_libvirt.LV_11_3) == ((262144 - 200000) * 1024, "balloon")


# --------------------------------------------------------------------------------------------
# Real lab moves (tests/unit/fixtures/migration/lab_*_move.json): the summaries of two moves of
# tests/integration/test_forecast.py, as recorded - the forecast's inputs as the pre-flight
# measured them (link through the migration port's probe, memory in use from rss, dirty rate
# from libvirt), the forecast, and the move's completed job statistics
# --------------------------------------------------------------------------------------------

LAB_MOVES = ["lab_idle_move.json", "lab_dirtying_capped_move.json", "lab_dirtying_not_converging_move.json",
             "lab_disk_writing_capped_move.json"]


def lab_inputs(rec: dict[str, t.Any], **change: t.Any) -> fc.ForecastInputs:
    given = {k: v for k, v in rec["forecast_inputs"].items() if k != "sources"}
    given.update(change)
    return fc.ForecastInputs(link_measured=True, **given)


def converged_by_precopy(rec: dict[str, t.Any]) -> bool:
    """The recorded move converged without a lever that changes how pre-copy works (the ladder's
    downtime steps are within the maximum the forecast assumed; auto-converge and post-copy are
    not)."""
    steps = {s["step"] for s in rec["convergence"]["steps"]}
    return rec["actual"]["stats_from"] == "completed" and not steps & {"auto_converge", "postcopy"}


@pytest.mark.parametrize("name", LAB_MOVES)
def test_lab_move_verdict_is_right(name):
    """The forecast from each real move's measured inputs says "converges" exactly when the
    move converged by pre-copy alone."""
    rec = load(name)
    out = fc.forecast(lab_inputs(rec))
    assert out["converges"] is converged_by_precopy(rec), (out["reason"], rec["convergence"])


@pytest.mark.parametrize("name", [n for n in LAB_MOVES if n != "lab_disk_writing_capped_move.json"])
def test_lab_move_forecast_is_the_model_of_its_measured_inputs(name):
    """The recorded forecast is the model's output from the recorded inputs (the disk-writing
    run's predates the per-disk cap: below)."""
    rec = load(name)
    out = fc.forecast(lab_inputs(rec))
    assert (out["verdict"], out["total_s"], out["downtime_ms"], out["memory_passes"]) == (
        rec["forecast"]["verdict"], rec["forecast"]["total_s"], rec["forecast"]["downtime_ms"],
        rec["forecast"]["memory_passes"])


def test_lab_dirtying_guest_is_forecast_not_converging_with_the_lever_it_then_took():
    """The guest rewriting 32 MiB with new data at a 16 MiB/s cap: page sampling saw 24 MiB/s,
    the forecast said "does not converge" with the raised cap first and auto-converge next; the
    move converged once auto-converge throttled the vCPUs."""
    rec = load("lab_dirtying_not_converging_move.json")
    out = fc.forecast(lab_inputs(rec))
    assert out["verdict"] == "does not converge" == rec["forecast"]["verdict"]
    assert [lv["lever"] for lv in out["levers"]] == rec["forecast"]["levers"] == ["bandwidth", "auto_converge", "postcopy"]
    assert rec["forecast_inputs"]["dirty_mode"] == "page-sampling"
    taken = [s for s in rec["convergence"]["steps"] if s["step"] == "auto_converge"]
    assert taken and taken[0]["throttle_max_percent"] == 99


def test_lab_disk_writing_move_the_cap_is_per_disk():
    """The guest writing 8 MB/s to vdb at a 32 MiB/s cap took 15.3 s. The run's forecast (36.5 s,
    +138 %) sent both disks' 508 MiB and the memory through one 32 MiB/s pipe; libvirt gives the
    cap to each disk's mirror and to the memory stream on its own, which the model now does:
    about 20 s, pessimistic by about 30 % (it sends 305 MB of memory in 4 passes where the move
    sent 177 MB: the sampled dirty rate, 6 samples of 2 MiB, is high for this guest's page cache).
    Pinned as measured, not a target (the bench's is +-25 %)."""
    rec = load("lab_disk_writing_capped_move.json")
    actual_s = rec["actual"]["duration_s"]
    assert rec["forecast"]["total_s"] > 2 * actual_s  # the old single-pipe model of the run
    out = fc.forecast(lab_inputs(rec))
    assert out["converges"] and out["storage_s"] == pytest.approx(268443648 / (32 * MIB - 8363341.88), abs=0.01)
    assert 1.0 < out["total_s"] / actual_s < 1.4, out["total_s"]
    # one copied disk or no allocations known: the disks' copy goes through the cap alone
    single = fc.forecast(lab_inputs(rec, disk_allocations=None))
    assert single["storage_s"] > 1.9 * out["storage_s"]


def test_lab_idle_move_error_is_in_the_inputs_not_the_model():
    """The idle move took 1.8 s. Forecast from the pre-flight's inputs: 0.43 s (-76 %): the probe
    measured the lab's veth at 1563 MiB/s of plain TCP, but the move (TLS, QEMU on a TCG host)
    carried 193 MiB/s; and rss said 256 MiB in use where the move sent 93 MiB. With the rate the
    move achieved the model is +53 %; with the memory it sent as well, within 25 %."""
    rec = load("lab_idle_move.json")
    act = rec["actual"]
    actual_s = act["duration_s"]
    achieved = (act["memory_bytes"] + act["disk_allocated_bytes"]) / actual_s
    assert fc.forecast(lab_inputs(rec))["total_s"] < 0.5 * actual_s
    at_rate = fc.forecast(lab_inputs(rec, link_bps=achieved))["total_s"]
    assert 1.25 * actual_s < at_rate < 2.0 * actual_s
    both = fc.forecast(lab_inputs(rec, link_bps=achieved, memory_bytes=act["memory_bytes"]))["total_s"]
    assert abs(both - actual_s) <= 0.25 * actual_s, (both, actual_s)


def test_lab_capped_move_is_forecast_pessimistic_the_disk_copy_beat_the_cap():
    """At a 32 MiB/s cap the model sends the 256 MiB disk allocation and the memory through the cap
    (19.4 s); the move took 9.4 s: the copy's zero detection skipped the written blocks' zeros and
    the memory sent was 130 MiB, not the 239 MiB rss said. A limit of the model, pinned."""
    rec = load("lab_dirtying_capped_move.json")
    out = fc.forecast(lab_inputs(rec))
    assert out["total_s"] > 1.5 * rec["actual"]["duration_s"]
    steps = [s["step"] for s in rec["convergence"]["steps"]]
    assert steps and set(steps) <= {"downtime"} and rec["convergence"]["allowed"]["downtime_steps_ms"] == [100, 200, 300]
