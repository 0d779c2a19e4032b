# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The UEFI variables after a move: reading an NVRAM file (real files, a FIFO, a directory, an
unreadable one), the comparison of the source's at the switch-over with the destination's, and
its line in the migration summary."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _nvram, _report

VARS = b"\x00" * 1000 + b"Boot0001" + b"\xff" * 539664  # 540672 bytes, the size of OVMF_VARS_4M.fd


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_read_nvram_returns_size_and_sha256_of_the_file(tmp_path):
    path = tmp_path / "vm1_VARS.fd"
    path.write_bytes(VARS)
    out = _nvram.read_nvram(str(path))
    assert out == {"path": str(path), "format": "raw", "exists": True, "size": 540672, "sha256": sha(VARS),
                   "error": None}


def test_no_nvram_path_is_none():
    assert _nvram.read_nvram(None) is None and _nvram.read_nvram("") is None


def test_a_missing_file_is_reported_not_raised(tmp_path):
    out = _nvram.read_nvram(str(tmp_path / "absent_VARS.fd"))
    assert out["exists"] is False and out["sha256"] is None and "does not exist" in out["error"]


def test_a_fifo_is_not_read_and_does_not_hang(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    out = _nvram.read_nvram(fifo)
    assert out["exists"] is True and out["sha256"] is None and "not a regular file" in out["error"]


def test_a_directory_is_not_read(tmp_path):
    out = _nvram.read_nvram(str(tmp_path))
    assert out["sha256"] is None and out["error"]


def test_a_relative_path_is_not_read():
    out = _nvram.read_nvram("nvram/vm1_VARS.fd")
    assert out["sha256"] is None and "not absolute" in out["error"]


def test_an_unreadable_file_names_the_reason(tmp_path):
    def denied(path, flags):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    out = _nvram.read_nvram(str(tmp_path / "vm1_VARS.fd"), opener=denied)
    assert out["exists"] is None and "Permission denied" in out["error"]


def test_a_file_larger_than_the_limit_is_not_read(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 2048)
    out = _nvram.read_nvram(str(path), max_bytes=1024)
    assert out["sha256"] is None and "more than the 1024 read" in out["error"]


def test_a_qcow2_store_is_not_compared_by_its_bytes(tmp_path):
    path = tmp_path / "vm1_VARS.qcow2"
    path.write_bytes(b"QFI\xfb")
    out = _nvram.read_nvram(str(path), "qcow2")
    assert out["sha256"] is None and "qcow2 format" in out["error"]


def entry(data: bytes | None, path: str = "/var/lib/libvirt/qemu/nvram/vm1_VARS.fd", error: str | None = None):
    return {"path": path, "format": "raw", "exists": data is not None, "size": None if data is None else len(data),
            "sha256": None if data is None else sha(data), "error": error}


def test_compare_same_content():
    out = _nvram.compare(entry(VARS), entry(VARS), "hostb")
    assert out["same"] is True and out["src_sha256"] == out["dst_sha256"] == sha(VARS)
    assert out["words"].startswith("nvram: same content as on the source at the switch-over")


def test_compare_different_content_is_a_warning_with_the_two_causes():
    changed = VARS.replace(b"Boot0001", b"Boot0002")
    out = _nvram.compare(entry(VARS), entry(changed), "hostb")
    assert out["same"] is False
    assert "WARNING" in out["words"] and "hostb" in out["words"]
    assert "written UEFI variables since the switch-over" in out["words"] and "not carried" in out["words"]


@pytest.mark.parametrize("src, dst, why", [
    (entry(None, error="the NVRAM file x does not exist"), entry(VARS), "source's file was not read"),
    (entry(VARS), entry(None, error="the NVRAM file x does not exist"), "destination's file was not read (the NVRAM"),
    (entry(VARS), None, "its domain names no NVRAM file"),
])
def test_compare_not_possible_says_why(src, dst, why):
    out = _nvram.compare(src, dst, "hostb")
    assert out["same"] is None and "WARNING, not compared" in out["words"] and why in out["words"]


def test_compare_without_a_source_nvram_is_none():
    assert _nvram.compare(None, entry(VARS), "hostb") is None


MIGRATED = {"state": "migrated", "changed": True, "stats": {"time_ms": 2000, "downtime_ms": 30},
            "plan": {"flags": ["VIR_MIGRATE_LIVE"]}, "nvram": entry(VARS)}


def test_summary_says_the_nvram_has_the_content_of_the_switch_over():
    summary = _report.migration_summary("vm1", "hosta", "hostb", MIGRATED, dest_nvram=entry(VARS))
    assert summary["nvram"]["same"] is True
    assert any(line.startswith("nvram: same content as on the source at the switch-over") for line in summary["lines"])


def test_summary_warns_when_the_nvram_differs_and_the_move_still_counts():
    summary = _report.migration_summary("vm1", "hosta", "hostb", MIGRATED, dest_nvram=entry(b"other"))
    assert summary["nvram"]["same"] is False and summary["state"] == "migrated"
    assert [line for line in summary["lines"] if line.startswith("nvram: WARNING")]


def test_summary_of_a_bios_guest_a_plan_or_a_noop_has_no_nvram_line():
    bios = dict(MIGRATED, nvram=None)
    planned = dict(MIGRATED, state="planned")
    for result in (bios, planned, {"state": "already_migrated"}):
        summary = _report.migration_summary("vm1", "hosta", "hostb", result, dest_nvram=entry(VARS))
        assert summary["nvram"] is None and not [line for line in summary["lines"] if line.startswith("nvram")]
