# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress lines of the migration_wait action."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from ansible_collections.kvmops.migration.plugins.action import migration_wait as w

MIB = 1024 ** 2


def test_last_sample_skips_partial_lines():
    good = {"phase": "memory", "percent": 50.0}
    text = json.dumps({"phase": "storage"}) + "\n" + json.dumps(good) + "\n" + '{"phase": "mem'
    assert w.last_sample(text) == good
    assert w.last_sample("") is None


def test_progress_line():
    sample = {"phase": "storage", "percent": 42.5, "data_remaining_bytes": 150 * MIB,
              "data_total_bytes": 260 * MIB, "memory_iteration": 0, "dirty_rate_bytes_per_s": None,
              "elapsed_s": 3.0}
    assert w.progress_line("vm1 [hosta]", sample) == \
        "vm1 [hosta]: storage  42.5% of memory + disks, 150.0 MiB of 260.0 MiB left (3.0s)"
    sample.update(phase="memory", memory_iteration=2, dirty_rate_bytes_per_s=2 * MIB, percent=None,
                  disk_remaining_bytes=0, memory_remaining_bytes=150 * MIB)
    assert w.progress_line("vm1", sample) == \
        "vm1: memory   ?  % of memory + disks, 150.0 MiB of 260.0 MiB left (disks 0.0 MiB, memory 150.0 MiB), " \
        "memory pass 2, dirty 2.0 MiB/s (3.0s)"
    # no figure at all (no job yet): said so, never "None"
    assert w.progress_line("vm1", {"phase": "none", "percent": None, "data_remaining_bytes": None}) == \
        "vm1: no progress reported yet"
    assert w.progress_line("vm1", None) == "vm1: no progress reported yet"


# The poll's shell command, run by a real /bin/sh against real files (it is what runs on the host)


def _poll(job, progress, wait_s):
    start = time.monotonic()
    out = subprocess.run(["/bin/sh", "-c", w.wait_command(str(job), progress and str(progress), wait_s)],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return w.parse_poll(out), time.monotonic() - start


def _write(path, record):
    tmp = str(path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record))
    os.rename(tmp, path)  # as async_wrapper's jwrite does


def test_poll_waits_while_the_job_runs_and_returns_the_latest_sample(tmp_path):
    job, progress = tmp_path / "123.456", tmp_path / "p.jsonl"
    _write(job, {"started": True, "finished": False, "ansible_job_id": "123.456"})
    progress.write_text(json.dumps({"phase": "storage", "percent": 10.0}) + "\n"
                        + json.dumps({"phase": "memory", "percent": 90.0}) + "\n", encoding="utf-8")
    (state, sample), took = _poll(job, progress, 0.5)
    assert state == "running"
    assert sample == {"phase": "memory", "percent": 90.0}
    assert took >= 0.4  # it waited on the host, not returned at once


def test_poll_sees_the_end_at_once_not_at_the_end_of_its_wait(tmp_path):
    job = tmp_path / "123.456"
    _write(job, {"started": True, "finished": False, "ansible_job_id": "123.456"})
    threading.Timer(0.3, _write, (job, {"changed": True, "state": "migrated"})).start()
    (state, sample), took = _poll(job, None, 20.0)
    assert state == "ended"
    assert sample is None
    assert took < 5.0  # 20 s was allowed: the end stopped the wait


def test_poll_of_an_ended_job_a_missing_job_and_an_unwritten_one(tmp_path):
    job = tmp_path / "1.2"
    _write(job, {"failed": True, "msg": "boom", "ansible_job_id": "1.2"})
    assert _poll(job, tmp_path / "none.jsonl", 5.0)[0] == ("ended", None)
    assert _poll(tmp_path / "9.9", None, 5.0)[0][0] == "missing"
    job.write_text("", encoding="utf-8")  # created, not yet written: still running
    (state, dummy), took = _poll(job, None, 0.3)
    assert state == "running" and took >= 0.2


def test_parse_poll_without_a_state_line():
    assert w.parse_poll("") == ("unknown", None)
    assert w.parse_poll("sh: 1: head: not found\n") == ("unknown", None)
