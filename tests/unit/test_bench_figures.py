# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""make bench's arithmetic without the lab (issue 15 item 5): the source QEMU's CPU time from
/proc/<pid>/stat samples, the figures of a move (throughput against iperf3, % of one core), the
TLS table and its TLS / plain ratios, and the report keeping its hand-written part."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
import bench  # noqa: E402

MIB = 1024 ** 2

# /proc/<pid>/task/<tid>/stat of a QEMU vCPU thread (libvirt's debug-threads=on): the comm has a
# space, a slash and here a ")" of its own; utime 1500, stime 250 (fields 14 and 15)
VCPU_STAT = ("4242 (CPU 0/TCG)) S 1 4240 4240 0 -1 4194368 800 0 0 0 1500 250 0 0 20 0 9 0 "
             "12345 1234567890 4000 18446744073709551615 1 1 0 0 0 0 0 4096 1 0 0 0 17 1 0 0 0 0 0")


def test_stat_ticks_reads_utime_and_stime_after_the_comm():
    assert bench.stat_ticks(VCPU_STAT) == ("CPU 0/TCG)", 1750)


def test_vcpu_threads_by_name():
    assert bench.is_vcpu_thread("CPU 0/TCG")
    assert bench.is_vcpu_thread("CPU 12/KVM")
    for other in ("qemu-system-x86", "live_migration", "mig/src/main", "IO mon_iothread", "worker"):
        assert not bench.is_vcpu_thread(other)


def test_innermost_nspid():
    status = "Name:\tqemu-system-x86\nTgid:\t91234\nNSpid:\t91234\t4242\nPPid:\t1\n"
    assert bench.innermost_nspid(status) == 4242
    assert bench.innermost_nspid("Name:\tx\nNSpid:\t17\n") == 17
    assert bench.innermost_nspid("Name:\tx\n") is None


def test_ticks_at_interpolates_and_clamps():
    samples = [(10.0, 100, 40), (11.0, 200, 60), (12.0, 260, 60)]
    assert bench.ticks_at(samples, 9.0) == (100.0, 40.0)
    assert bench.ticks_at(samples, 10.5) == (150.0, 50.0)
    assert bench.ticks_at(samples, 11.5) == (230.0, 60.0)
    assert bench.ticks_at(samples, 13.0) == (260.0, 60.0)


def test_move_cpu_counts_the_last_job_seconds_before_the_process_exited():
    # 0.1 s samples over 30 s: idle (1 tick/s of vCPU) for 10 s, then a 20 s job burning
    # 0.5 core outside the vCPUs (50 ticks/s at 100 ticks/s)
    samples, total, vcpu = [], 0, 0
    for i in range(301):
        t = i / 10
        samples.append((1000 + t, round(total), round(vcpu)))
        vcpu += 0.1
        total += 0.1 + (5 if t >= 10 else 0)
    got = bench.move_cpu({"exited": True, "samples": samples}, 20.0, 100)
    assert got["cpu_s"] == pytest.approx(10.2, abs=0.1)
    assert got["vcpu_s"] == pytest.approx(0.2, abs=0.02)
    assert got["other_s"] == pytest.approx(10.0, abs=0.1)
    assert got["core_pct"] == pytest.approx(51, abs=0.5)
    assert got["window_s"] == 20.0
    assert got["samples"] == 301


def test_move_cpu_job_longer_than_the_sampling_counts_all_samples():
    samples = [(0.0, 0, 0), (1.0, 100, 0)]
    assert bench.move_cpu({"exited": True, "samples": samples}, 5.0, 100)["cpu_s"] == 1.0


@pytest.mark.parametrize("sampled, job_s", [
    ({"exited": False, "samples": [(0.0, 0, 0), (1.0, 100, 0)]}, 1.0),  # the move failed: QEMU still runs
    ({"exited": True, "samples": [(0.0, 0, 0)]}, 1.0),
    ({"exited": True, "samples": [(0.0, 0, 0), (1.0, 100, 0)]}, 0),  # no job statistics
    ({"pid": None, "exited": False, "samples": []}, 1.0),  # the QEMU process was not found
])
def test_move_cpu_none_without_a_completed_sampled_move(sampled, job_s):
    assert bench.move_cpu(sampled, job_s, 100) is None


CHILD = textwrap.dedent("""
    import ctypes, threading, time

    def burn(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    def vcpu():
        ctypes.CDLL(None).prctl(15, b"CPU 0/TCG", 0, 0, 0)  # PR_SET_NAME, as QEMU names its vCPUs
        burn(0.4)
        time.sleep(0.4)  # alive past a sample, as QEMU's vCPU threads until the process ends

    th = threading.Thread(target=vcpu)
    th.start()
    burn(0.3)
    th.join()
    time.sleep(0.3)  # past the last sample
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux: /proc")
def test_cpu_sampler_on_a_real_process():
    proc = subprocess.Popen([sys.executable, "-c", CHILD])
    sampler = bench.CpuSampler(proc.pid)
    sampler.sample()
    sampler.start()
    assert proc.wait(timeout=30) == 0  # reaped, as the lab host's systemd reaps QEMU
    sampled = sampler.stop(wait_exit=5)
    assert sampled["exited"]
    got = bench.move_cpu(sampled, 60.0, os.sysconf("SC_CLK_TCK"))
    assert 0.6 <= got["cpu_s"] <= 1.0
    assert 0.35 <= got["vcpu_s"] <= 0.5
    assert got["other_s"] == pytest.approx(got["cpu_s"] - got["vcpu_s"])


def test_cpu_sampler_stopped_while_the_process_runs_reports_no_exit():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sampler = bench.CpuSampler(proc.pid)
        sampler.start()
        sampled = sampler.stop()
        assert not sampled["exited"]
        assert sampled["samples"]
        assert bench.move_cpu(sampled, 1.0, 100) is None
    finally:
        proc.kill()
        proc.wait()


def test_cpu_sampler_without_a_pid():
    sampler = bench.CpuSampler(None)
    sampler.start()
    assert sampler.stop() == {"pid": None, "exited": False, "samples": []}


def move(wall_s, job_s, link_mib, downtime_ms=100, cpu_s=None, vcpu_s=0.0, ok=True):
    run = {"ok": ok, "wall_s": wall_s, "link_bytes": link_mib * MIB, "src_alloc": {"system": 1, "swap": 1},
           "dst_alloc": {"system": 1, "swap": 1}, "tasks": []}
    if ok:
        run["job"] = {"Time elapsed": job_s * 1000, "Total downtime": downtime_ms}
        run["cpu"] = None if cpu_s is None else {"cpu_s": cpu_s, "vcpu_s": vcpu_s, "other_s": cpu_s - vcpu_s,
                                                 "core_pct": 100 * cpu_s / job_s}
    else:
        run["error"] = "failed"
    return run


def test_run_figures_throughput_against_iperf3():
    # 2000 MiB in 20 s of job: 100 MiB/s = 838.9 Mbit/s, against 1000 Mbit/s of iperf3
    got = bench.run_figures(move(25.0, 20.0, 2000, cpu_s=8.0, vcpu_s=1.0), 1000.0)
    assert got["mib_s"] == pytest.approx(100.0)
    assert got["iperf_pct"] == pytest.approx(100 * 100 * MIB * 8 / 1e6 / 1000)
    assert got["core_pct"] == pytest.approx(40.0)
    assert got["other_s"] == pytest.approx(7.0)
    assert got["downtime_ms"] == 100
    assert got["wall_s"] == 25.0 and got["job_s"] == 20.0


def test_run_figures_of_a_failed_move_and_without_cpu():
    assert bench.run_figures(move(5.0, 0, 10, ok=False), 1000.0) is None
    got = bench.run_figures(move(25.0, 20.0, 2000), 1000.0)
    assert got["cpu_s"] is None and got["core_pct"] is None
    assert bench.run_figures(move(25.0, 20.0, 2000), 0)["iperf_pct"] is None


def test_median_figures_skip_failed_runs_and_missing_values():
    runs = [move(20.0, 18.0, 1800, cpu_s=4.0), move(30.0, 19.0, 1900), move(22.0, 20.0, 2000, cpu_s=6.0),
            move(1.0, 0, 0, ok=False)]
    got = bench.median_figures(runs, 1000.0)
    assert got["n"] == 3 and got["failed"] == 1
    assert got["wall_s"] == 22.0
    assert got["job_s"] == 19.0
    assert got["cpu_s"] == 5.0
    assert got["mib_s"] == pytest.approx(100.0)
    empty = bench.median_figures([], 1000.0)
    assert empty["n"] == 0 and all(empty[k] is None for k in bench.FIGURES)


def test_tls_rows_medians_and_ratios_per_tool():
    pairs = [{"virsh": move(20.0, 19.0, 1900, cpu_s=5.0, vcpu_s=1.0), "ours": move(36.0, 19.0, 1900, cpu_s=6.0, vcpu_s=1.0)}]
    tls_pairs = [{"virsh": move(21.0, 20.0, 1900, cpu_s=10.0, vcpu_s=1.0),
                  "ours": move(37.0, 20.0, 1900, cpu_s=12.0, vcpu_s=1.0)}]
    rows = bench.tls_rows(pairs, tls_pairs, 1000.0)
    assert rows[2].startswith("| raw virsh plain | 1 | 20.0 | 19.0 | 100 | 100 | ")
    assert rows[2].endswith("| 5.00 | 26 | 4.00 |")
    assert rows[3].startswith("| raw virsh TLS | 1 | 21.0 | 20.0 |")
    assert rows[3].endswith("| 10.00 | 50 | 9.00 |")
    assert rows[4].startswith("| playbook plain | 1 | 36.0 |")
    assert rows[5].startswith("| playbook TLS | 1 | 37.0 |")
    # TLS / plain: wall, job, MiB/s, CPU, CPU outside the vCPUs
    assert rows[-2] == "| raw virsh | 1.05 | 1.05 | 0.95 | 2.00 | 2.25 |"
    assert rows[-1] == "| playbook | 1.03 | 1.05 | 0.95 | 2.00 | 2.20 |"


def test_tls_rows_with_failed_runs_and_no_cpu():
    pairs = [{"virsh": move(20.0, 19.0, 1900), "ours": move(36.0, 19.0, 1900)}]
    tls_pairs = [{"virsh": move(1.0, 0, 0, ok=False), "ours": move(37.0, 20.0, 1900)}]
    rows = bench.tls_rows(pairs, tls_pairs, 1000.0)
    assert rows[3] == "| raw virsh TLS | 0 (1 failed) | - | - | - | - | - | - | - | - |"
    assert rows[-2] == "| raw virsh | - | - | - | - | - |"
    assert rows[-1] == "| playbook | 1.03 | 1.05 | 0.95 | - | - |"


def test_openssl_speed_machine_readable():
    out = "+DT:AES-256-GCM:2:16384\n+R:322246:AES-256-GCM:2.000000\n+H:16384\n+F:25:AES-256-GCM:2639839232.00\n"
    assert bench.parse_openssl_speed(out) == 2639839232.0
    assert bench.parse_openssl_speed("speed: unknown option\n") is None


def test_cipher_line():
    line = bench.cipher_line({"cipher": "AES-256-GCM", "bytes_per_s": 1000 * MIB, "tool": "OpenSSL 3.0.19"}, 1000.0)
    assert "1000 MiB/s (8389 Mbit/s), 8.4 times the link's iperf3 figure" in line
    assert "OpenSSL 3.0.19" in line
    assert "not measured" in bench.cipher_line(None, 1000.0)


def report(tls: bool) -> dict:
    r = {"rate": "1gbit", "started": "2000-01-01 00:00:00", "iperf_mbit_s": 1000.0, "clk_tck": 100,
         "pairs": [{"virsh": move(20.0, 19.0, 1900, cpu_s=5.0), "ours": move(36.0, 19.0, 1900, cpu_s=6.0)}],
         "qcow2_ours": move(36.0, 19.0, 1900), "qcow2_virsh": move(20.0, 19.0, 1900)}
    if tls:
        r["tls_pairs"] = [{"virsh": move(21.0, 20.0, 1900, cpu_s=9.0), "ours": move(37.0, 20.0, 1900, cpu_s=10.0)}]
        r["cipher"] = {"cipher": "AES-256-GCM", "bytes_per_s": 1000 * MIB, "tool": "OpenSSL 3.0.19"}
    return r


@pytest.mark.parametrize("tls", [True, False])
def test_write_report_has_the_tls_section_and_keeps_the_hand_written_part(tmp_path, monkeypatch, capsys, tls):
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "performance.md"
    doc.write_text("# old figures\n\n" + bench.MARKER + "\n\n## Kept by hand\n")
    monkeypatch.setattr(bench, "ROOT", str(tmp_path))
    bench.write_report(report(tls))
    text = doc.read_text()
    assert "# old figures" not in text
    assert text.endswith(bench.MARKER + "\n\n## Kept by hand\n")
    assert "## TLS: QEMU's native TLS against plain" in text
    assert "Wall-time ratio ours / virsh: median **1.80**" in text
    if tls:
        assert "| raw virsh TLS | 1 | 21.0 |" in text
        assert "| playbook | 1.03 | 1.05 | 0.95 | 1.67 | 1.67 |" in text
        assert "sampled every 0.1 s until it exits" in text
        assert "8.4 times the link's iperf3 figure" in text
    else:
        assert "Not run (--skip-tls)." in text
    assert capsys.readouterr().out.startswith("# Performance")


def test_the_checkouts_role_declares_migrate_guest_tls():
    assert bench.role_has_tls()


def test_overhead_split_from_the_task_times():
    run = {"ok": True, "wall_s": 34.0, "job": {"Time elapsed": 20000},
           "tasks": [("Validating arguments", 0.1), ("Read every host", 1.8), ("Pre-flight", 1.5),
                     ("kvmops.migration.migrate_guest : Migrate the guest | vm a -> b", 2.2),
                     ("kvmops.migration.migrate_guest : Wait for the move, showing its progress", 24.0),
                     ("Read the source and the destination after the move", 1.2), ("Report", 0.2)]}
    split = bench.overhead_split(run)
    assert split == pytest.approx({"before": 3.4, "start": 2.2, "wait_beyond_job": 4.0, "health_window": 0.0,
                                   "after": 1.4, "startup_teardown": 34.0 - 31.0, "job_s": 20.0})
    # the health window (the summary's "watched X s") is its own part of the wait
    split = bench.overhead_split(dict(run, health_watched_s=2.1))
    assert split["health_window"] == 2.1 and split["wait_beyond_job"] == pytest.approx(1.9)
    assert bench.overhead_split(dict(run, ok=False)) is None
    assert bench.overhead_split(dict(run, tasks=run["tasks"][:3])) is None


def test_remote_commands_counted_inside_and_outside_the_wait():
    out = textwrap.dedent("""\
        TASK [kvmops.migration.migrate_guest : Read every host] ****
        <198.18.0.1> SSH: EXEC ssh -o ControlMaster=auto 198.18.0.1 '/bin/sh -c ...'
        <198.18.0.2> SSH: EXEC ssh -o ControlMaster=auto 198.18.0.2 '/bin/sh -c ...'
        TASK [kvmops.migration.migrate_guest : Wait for the move, showing its progress] ****
        <198.18.0.1> SSH: EXEC ssh 198.18.0.1 'f=...'
        <198.18.0.1> SSH: EXEC ssh 198.18.0.1 'f=...'
        <198.18.0.1> SSH: EXEC ssh 198.18.0.1 'async_status'
        TASK [kvmops.migration.migrate_guest : Read the source and the destination after the move] ****
        <198.18.0.1> SSH: EXEC ssh 198.18.0.1 '...'
        """)
    assert bench.remote_commands(out) == {"total": 6, "during_job": 3, "outside_job": 3}


def test_percentile_by_nearest_rank():
    assert bench.percentile([1.5, 1.2, 1.3, 1.4, 1.6], 90) == 1.6
    assert bench.percentile([1.5, 1.2, 1.3, 1.4, 1.6], 50) == 1.4
    assert math.isnan(bench.percentile([], 90))


def test_health_watched_from_the_summary_line():
    line = "    - 'guest on hostb: healthy 0.1 s after the switch-over, watched 2.1 s (agent answered guest-ping)'"
    assert bench.health_watched_s(line) == 2.1
    assert bench.health_watched_s("no health line") is None


def test_fixed_cost_and_slope_from_two_disk_sizes():
    def pair(virsh, ours):
        return {"virsh": {"ok": True, "wall_s": virsh}, "ours": {"ok": True, "wall_s": ours}}
    big = [pair(19.7, 25.7), pair(19.6, 25.9), pair(19.8, 25.6)]
    small = [pair(7.0, 12.9), pair(7.1, 13.2)]
    fit = bench.fixed_and_slope(big, small, 2048, 512)
    # overhead: 6.0 s on 2048 MiB, 6.0 s on 512 MiB -> all of it fixed
    assert fit["overhead_big_s"] == pytest.approx(6.0) and fit["overhead_small_s"] == pytest.approx(6.0, abs=0.06)
    assert fit["slope_s_per_gib"] == pytest.approx(0.0, abs=0.1)
    assert bench.fixed_and_slope(big, [], 2048, 512) is None


def test_link_bound_is_the_bytes_over_the_iperf3_rate():
    assert bench.link_bound_s(125_000_000, 1000) == pytest.approx(1.0)  # 1 Gbit over 1000 Mbit/s
    assert bench.link_bound_s(None, 1000) is None and bench.link_bound_s(10, 0) is None


def test_scale_rows_show_each_concurrency_against_the_singles_and_the_bound():
    gib = 1024 ** 3
    singles = {"scale%d" % i: {"wall_s": 20.0, "ok": True, "link_bytes": gib // 2} for i in range(4)}
    sc = {"singles": singles,
          "evacuate_c1": {"wall_s": 60.0, "ok": True, "moved": [], "link_bytes": 2 * gib},
          "evacuate_c2": {"wall_s": 40.0, "ok": True, "moved": [], "link_bytes": 2 * gib},
          "evacuate_c4": {"wall_s": 30.0, "ok": False, "moved": ["scale0"], "link_bytes": 2 * gib}}
    rows = bench.scale_rows(sc, 1000.0)
    bound = 2 * gib * 8 / 1e9  # 17.2 s
    assert rows[2] == "| 4 single moves (migrate.yml each), summed | yes | 80.0 | 1.00 | 2.00 | %.1f | %.2f |" % (
        bound, 80.0 / bound)
    assert rows[3] == "| evacuate.yml, concurrency 1 | yes | 60.0 | 0.75 | 2.00 | %.1f | %.2f |" % (bound, 60.0 / bound)
    assert rows[4].startswith("| evacuate.yml, concurrency 2 | yes | 40.0 | 0.50 |")
    assert rows[5].startswith("| evacuate.yml, concurrency 4 | no (scale0) | 30.0 | 0.38 | 2.00 |")
    assert bench.scale_rows({"singles": singles}, None)[2].endswith("| 2.00 | - | - |")


def test_forecast_lines_of_the_summary():
    ok = "    - 'forecast beside actual: 21.3 s / 19.4 s (+10 %), downtime 100 ms / 118 ms, 2 pass(es)'"
    assert bench.forecast_of(ok) == {"total_s": 21.3, "actual_s": 19.4, "error_pct": 10.0, "converges": True}
    no = "    - 'forecast: does not converge (auto_converge recommended); actual: 20.0 s, downtime 89 ms'"
    assert bench.forecast_of(no) == {"total_s": None, "actual_s": 20.0, "error_pct": None, "converges": False,
                                     "lever": "auto_converge"}
    assert bench.forecast_of("no forecast here") is None


def test_forecast_rows_judge_the_error_and_the_verdict():
    def run(total, actual, err, conv=True):
        return {"ok": True, "forecast": {"total_s": total, "actual_s": actual, "error_pct": err, "converges": conv,
                                         "lever": "auto_converge"}}
    r = {"pairs": [{"ours": run(21.0, 19.0, 11)}, {"ours": run(24.0, 19.0, 26)}, {"ours": run(20.0, 19.0, 5)}],
         "convergence": {"ours_autoconverge": run(None, 20.0, None, conv=False),
                         "ours_postcopy": run(10.0, 19.4, -48)}}
    rows = bench.forecast_rows(r)
    assert rows[2] == "| idle, 2 GiB written, plain | 3 | 21.0 | 19.0 | +11, +26 | yes | yes |"
    assert rows[3].startswith("| idle, 512 MiB written, plain | 0 |")
    assert rows[6] == "| dirtying 64 MiB/s, cap 32 MiB/s (autoconverge) | 1 | - | 20.0 | - | no (auto_converge) | yes |"
    # a forecast that said it converges where plain pre-copy cannot is a wrong verdict
    assert rows[7].endswith("| yes | NO |")
