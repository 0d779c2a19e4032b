# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The job monitor of a migration, pure: progress samples and result statistics from the
statistics of the migration job (``virDomainGetJobStats`` as ``dom.jobStats()``, with and without
``VIR_DOMAIN_JOB_STATS_COMPLETED``; the ``VIR_DOMAIN_JOB_*`` field names of the libvirt-python
binding), the escalation logic fed one sample at a time (:class:`MigrationMonitor`: max downtime,
completion timeout, abort or post-copy), the waiter's timing (:func:`timing`, :func:`wait_for`)
and the progress writer (:func:`progress_writer`). No libvirt call is made here: the driver
(:mod:`_migration`) polls and acts.
"""

from __future__ import annotations

import json
import os
import time
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt


# --------------------------------------------------------------------------------------------
# Progress, escalation and statistics
# --------------------------------------------------------------------------------------------

def _stat(stats: dict[str, t.Any], lv: t.Any, name: str) -> t.Any:
    key = _libvirt.const(lv, name)
    return stats.get(key) if key is not None else None


def progress_text(sample: dict[str, t.Any] | None) -> str:
    """One sample of :func:`progress_from_stats` in words, the one wording of the progress lines
    (``migration_wait``) and of a failure's "last progress": the phase (``setup``, ``storage``,
    ``memory``), the percent of all data (memory + disks, libvirt's ``data_*`` figures), MiB left
    of MiB in all, what is left of disks and of memory where libvirt tells them apart, the memory
    pass, the dirty rate and the time since the start. A sample without any figure (no job yet, or
    none) is "no progress reported yet"; never "None"."""
    if not sample or (sample.get("phase") in (None, "none") and sample.get("percent") is None
                      and sample.get("data_remaining_bytes") is None):
        return "no progress reported yet"
    mib = 1024.0 ** 2
    percent = sample.get("percent")
    text = "%s %s of memory + disks" % (sample.get("phase") or "?",
                                        "%5.1f%%" % percent if isinstance(percent, (int, float)) else "  ?  %")
    remaining, total = sample.get("data_remaining_bytes"), sample.get("data_total_bytes")
    if remaining is not None:
        text += ", %.1f MiB%s left" % (remaining / mib, " of %.1f MiB" % (total / mib) if total else "")
    elif total:
        text += ", %.1f MiB in all" % (total / mib)
    split = ["%s %.1f MiB" % (what, sample[key] / mib)
             for what, key in (("disks", "disk_remaining_bytes"), ("memory", "memory_remaining_bytes"))
             if sample.get(key) is not None]
    if split and remaining is not None:
        text += " (%s)" % ", ".join(split)
    if sample.get("memory_iteration"):
        text += ", memory pass %s" % sample["memory_iteration"]
    if sample.get("dirty_rate_bytes_per_s"):
        text += ", dirty %.1f MiB/s" % (sample["dirty_rate_bytes_per_s"] / mib)
    if sample.get("elapsed_s") is not None:
        text += " (%ss)" % sample["elapsed_s"]
    return text


def progress_from_stats(stats: dict[str, t.Any], elapsed_s: float, lv: t.Any = None) -> dict[str, t.Any]:
    """One progress sample from ``dom.jobStats()``.

    Shape: ``{elapsed_s, active: bool, phase: setup|storage|memory|none, percent,
    data_total_bytes, data_remaining_bytes, memory_remaining_bytes, disk_remaining_bytes,
    memory_iteration, dirty_rate_bytes_per_s, memory_bps, disk_bps, time_ms, downtime_ms,
    memory_processed_bytes, disk_processed_bytes, data_processed_bytes, auto_converge_throttle}``;
    percent of all data
    (memory + disks) processed, None when libvirt reports no total yet; ``downtime_ms`` of a
    running job is libvirt's estimate.
    """
    lv = _libvirt.binding(lv)
    job_type = stats.get("type")
    active = job_type not in (None, _libvirt.const(lv, "VIR_DOMAIN_JOB_NONE"),
                              _libvirt.const(lv, "VIR_DOMAIN_JOB_COMPLETED"),
                              _libvirt.const(lv, "VIR_DOMAIN_JOB_FAILED"),
                              _libvirt.const(lv, "VIR_DOMAIN_JOB_CANCELLED"))
    total = _stat(stats, lv, "VIR_DOMAIN_JOB_DATA_TOTAL")
    remaining = _stat(stats, lv, "VIR_DOMAIN_JOB_DATA_REMAINING")
    percent = None
    if total:
        percent = round(100.0 * (total - (remaining or 0)) / total, 1)
    iteration = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_ITERATION")
    mem_processed = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_PROCESSED") or 0
    disk_total = _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_TOTAL") or 0
    disk_remaining = _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_REMAINING")
    if not active:
        phase = "none"
    elif (iteration or 0) >= 1 or mem_processed > 0:
        phase = "memory"
    elif disk_total:
        phase = "storage"
    else:
        phase = "setup"
    dirty_pages = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE")
    page_size = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE") or 4096
    return {
        "elapsed_s": round(elapsed_s, 1), "active": bool(active), "phase": phase, "percent": percent,
        "data_total_bytes": total, "data_remaining_bytes": remaining,
        "memory_remaining_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_REMAINING"),
        "disk_remaining_bytes": disk_remaining,
        "disk_total_bytes": disk_total or None,
        "memory_iteration": iteration,
        "dirty_rate_bytes_per_s": dirty_pages * page_size if dirty_pages is not None else None,
        "memory_bps": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_BPS"),
        "disk_bps": _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_BPS"),
        # what the job has done so far, by the job's own clock: the figures of the summary when
        # the completed statistics cannot be read (see completed_summary)
        "time_ms": _stat(stats, lv, "VIR_DOMAIN_JOB_TIME_ELAPSED"),
        "downtime_ms": _stat(stats, lv, "VIR_DOMAIN_JOB_DOWNTIME"),
        "memory_processed_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_PROCESSED"),
        "disk_processed_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_PROCESSED"),
        "data_processed_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_DATA_PROCESSED"),
        # percent of vCPU time auto-converge takes from the guest (the convergence ladder)
        "auto_converge_throttle": _stat(stats, lv, "VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE"),
    }


def result_from_stats(stats: dict[str, t.Any], lv: t.Any = None) -> dict[str, t.Any]:
    """The result statistics of a completed job (``jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)``).

    Shape: ``{time_ms, downtime_ms, setup_ms, memory_bytes, disk_bytes, data_bytes, iterations,
    dirty_rate_bytes_per_s, memory_bps, disk_bps}``; memory/disk bytes are the bytes
    transferred; absent values are None.
    """
    lv = _libvirt.binding(lv)
    dirty_pages = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE")
    page_size = _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE") or 4096
    return {
        "time_ms": _stat(stats, lv, "VIR_DOMAIN_JOB_TIME_ELAPSED"),
        "downtime_ms": _stat(stats, lv, "VIR_DOMAIN_JOB_DOWNTIME"),
        "setup_ms": _stat(stats, lv, "VIR_DOMAIN_JOB_SETUP_TIME"),
        "memory_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_PROCESSED"),
        "disk_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_PROCESSED"),
        "data_bytes": _stat(stats, lv, "VIR_DOMAIN_JOB_DATA_PROCESSED"),
        "iterations": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_ITERATION"),
        "dirty_rate_bytes_per_s": dirty_pages * page_size if dirty_pages is not None else None,
        "memory_bps": _stat(stats, lv, "VIR_DOMAIN_JOB_MEMORY_BPS"),
        "disk_bps": _stat(stats, lv, "VIR_DOMAIN_JOB_DISK_BPS"),
    }


#: figure of :func:`result_from_stats` -> key of the last progress sample that stands in for it
#: (the figures of the summary; rates of a sample are not those of the whole move)
_SAMPLE_FIGURES = {"time_ms": "time_ms", "downtime_ms": "downtime_ms",
                   "memory_bytes": "memory_processed_bytes", "disk_bytes": "disk_processed_bytes",
                   "data_bytes": "data_processed_bytes", "iterations": "memory_iteration"}


def completed_summary(stats: dict[str, t.Any] | None, last: dict[str, t.Any] | None,
                      lv: t.Any = None) -> dict[str, t.Any]:
    """The statistics of a finished move: :func:`result_from_stats` of the completed job, with
    every figure it lacks taken from the last progress sample polled on the source.

    After a post-copy (or escalated) move the source domain is gone, and the destination's
    completed statistics may be missing or partial: the last sample still holds the job's time,
    bytes and passes as of just before the end. ``stats_from`` tells where the figures come
    from: ``completed`` (all from the completed job), ``last_sample`` (none was readable),
    ``completed+last_sample`` (some filled in), or ``none`` (nothing known); ``time_ms`` from a
    sample is at least the duration (the job ran on for at most one poll interval) and
    ``downtime_ms`` from a sample is libvirt's estimate, flagged by ``downtime_estimated``.
    """
    summary = result_from_stats(stats, lv) if stats else {k: None for k in (
        "time_ms", "downtime_ms", "setup_ms", "memory_bytes", "disk_bytes", "data_bytes", "iterations",
        "dirty_rate_bytes_per_s", "memory_bps", "disk_bps")}
    filled = []
    for key, sample_key in _SAMPLE_FIGURES.items():
        if summary.get(key) is None and last and last.get(sample_key) is not None:
            summary[key] = last[sample_key]
            filled.append(key)
    if summary.get("time_ms") is None and last and last.get("elapsed_s") is not None:
        summary["time_ms"] = int(round(float(last["elapsed_s"]) * 1000))
        filled.append("time_ms")
    summary["downtime_estimated"] = "downtime_ms" in filled
    if stats:
        summary["stats_from"] = "completed+last_sample" if filled else "completed"
    else:
        summary["stats_from"] = "last_sample" if filled else "none"
    return summary


class MigrationMonitor:
    """The escalation logic, fed one ``jobStats`` sample at a time (pure: no libvirt calls).

    :meth:`observe` returns what the caller must do now:

    - ``set_downtime``: first sample of a running job and ``max_downtime_ms`` is set;
    - ``abort``: the completion timeout passed (``timeout_action: abort``, or ``postcopy`` while
      disks are still copied: post-copy moves memory only);
    - ``postcopy``: the timeout passed in the memory phase and post-copy was opted in;
    - ``give_up``: an abort was requested ``abort_grace_s`` ago and the job still runs;
    - ``wait``: nothing to do.
    """

    def __init__(self, timeout_s: float | None, action: str = "abort",
                 max_downtime_ms: int | None = None, abort_grace_s: float = 120.0,
                 lv: t.Any = None) -> None:
        self.timeout_s = timeout_s
        self.action = action
        self.max_downtime_ms = max_downtime_ms
        self.abort_grace_s = abort_grace_s
        self.lv = _libvirt.binding(lv)
        self.downtime_applied = False
        self.aborted_at: float | None = None
        self.postcopy_at: float | None = None
        self.reason: str | None = None
        self.last: dict[str, t.Any] | None = None
        #: the largest disk total seen (bytes the storage copy processes), None before any
        self.disk_total_bytes: int | None = None

    def observe(self, stats: dict[str, t.Any], elapsed_s: float) -> str:
        """Take one sample; return the action (see the class docstring)."""
        sample = progress_from_stats(stats, elapsed_s, self.lv)
        self.last = sample
        if sample["disk_total_bytes"]:
            self.disk_total_bytes = max(self.disk_total_bytes or 0, sample["disk_total_bytes"])
        if not sample["active"]:
            return "wait"
        if self.max_downtime_ms and not self.downtime_applied:
            self.downtime_applied = True
            return "set_downtime"
        if self.postcopy_at is not None:
            return "wait"  # post-copy cannot be aborted: the destination owns the guest now
        if self.aborted_at is not None:
            return "give_up" if elapsed_s - self.aborted_at > self.abort_grace_s else "wait"
        if self.timeout_s is None or elapsed_s < self.timeout_s:
            return "wait"
        if self.action == "postcopy" and sample["phase"] == "setup" \
                and elapsed_s < self.timeout_s + self.abort_grace_s:
            # nothing copied yet (connections, the TLS handshake): post-copy is still possible at
            # the first memory sample; aborting now would fail a move that can finish
            return "wait"
        if self.action == "postcopy" and sample["phase"] == "memory":
            self.postcopy_at = elapsed_s
            self.reason = ("completion timeout of %d s reached in memory iteration %s: switched to "
                           "post-copy" % (self.timeout_s, sample["memory_iteration"]))
            return "postcopy"
        self.aborted_at = elapsed_s
        remaining = sample["data_remaining_bytes"]
        self.reason = ("completion timeout of %d s reached with %s bytes still to copy (phase %s)%s"
                       % (self.timeout_s, remaining, sample["phase"],
                          "; post-copy cannot move disk data" if self.action == "postcopy" else ""))
        return "abort"


def timing(interval_s: float, deadline_s: float | None = None,
           clock: t.Callable[[], float] = time.monotonic,
           sleep: t.Callable[[float], None] = time.sleep) -> t.Iterator[float]:
    """The waiter's timing generator: yields the elapsed seconds, sleeping ``interval_s``
    between yields, and stops after the yield at or past ``deadline_s`` (None: never)."""
    start = clock()
    while True:
        elapsed = clock() - start
        yield elapsed
        if deadline_s is not None and elapsed >= deadline_s:
            return
        sleep(interval_s)


def wait_for(check: t.Callable[[float], t.Any], ticks: t.Iterable[float]) -> t.Any:
    """The waiter: call ``check(elapsed_s)`` at each tick until it returns something else than
    None; return that, or None when the ticks (the deadline) run out."""
    for elapsed in ticks:
        result = check(elapsed)
        if result is not None:
            return result
    return None


def progress_writer(path: str | None, log: t.Callable[[str], None] | None = None
                    ) -> t.Callable[[dict[str, t.Any]], None]:
    """A progress callback: one line to ``log`` and one JSON line appended to ``path``
    (created 0640 if missing, never truncated) per sample."""
    def write(sample: dict[str, t.Any]) -> None:
        if log is not None:
            log("kvmops.migration: %s %s%% remaining=%s bytes dirty=%s B/s iteration=%s" % (
                sample.get("phase"), sample.get("percent"), sample.get("data_remaining_bytes"),
                sample.get("dirty_rate_bytes_per_s"), sample.get("memory_iteration")))
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            with os.fdopen(fd, "a") as handle:
                handle.write(json.dumps(sample, sort_keys=True) + "\n")
    return write
