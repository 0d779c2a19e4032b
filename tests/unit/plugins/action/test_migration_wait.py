# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The progress lines of the migration_wait action."""

from __future__ import annotations

import json

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
        "vm1 [hosta]: storage  42.5% 150.0 MiB remaining of 260.0 MiB (3.0s)"
    sample.update(phase="memory", memory_iteration=2, dirty_rate_bytes_per_s=2 * MIB, percent=None)
    assert w.progress_line("vm1", sample) == \
        "vm1: memory   ?  % 150.0 MiB remaining of 260.0 MiB pass 2 dirty 2.0 MiB/s (3.0s)"
