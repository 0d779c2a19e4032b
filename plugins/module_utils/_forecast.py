# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Know before moving (issue 19): how long a live migration will take, how many memory passes it
needs, how long the guest will be paused, whether pre-copy converges at all, and the gentlest
lever that would make it converge.

Two parts:

- :func:`forecast`, pure: from the bytes to move and the rates (all in bytes and bytes per
  second) to a forecast dict (shape below). :func:`completion_timeout_s` turns a forecast into a
  completion timeout (a multiple of the forecast total, with a floor).
- :func:`measure_guest`, read-only on the source's libvirt: the guest's memory dirty rate
  (``virDomainStartDirtyRateCalc`` in the mode :func:`dirty_rate_mode` picks, then the
  ``dirtyrate`` group of ``virConnectGetAllDomainStats``), the write rate of its copied disks (two ``virDomainBlockStats``
  samples over the same window) and its memory in use (``virDomainMemoryStats``, else
  ``virDomainGetInfo``'s maximum). :func:`inputs_from_measurement` joins it with the copied disks'
  allocation and the link rate.

The model
---------
One move as libvirt runs it with copied disks: first the NBD mirror copies every copied disk's
allocation while the guest keeps writing; the mirror is ready once it has caught up, so the
storage phase takes ``disk_bytes / (rate - disk_write_bps)`` and never ends when the guest writes
as fast as the link carries. Then pre-copy of memory, while the mirror keeps forwarding the
guest's writes over the same link (so memory gets ``rate - disk_write_bps``):

- pass 1 sends the memory in use, ``memory_bytes``, in ``t1 = memory_bytes / memory_rate``;
- pass n sends what the guest dirtied during pass n-1, ``min(memory_bytes, dirty_bps * t(n-1))``:
  a geometric series of ratio ``dirty_bps / memory_rate``;
- QEMU stops the guest once what is left can be sent within the allowed downtime at the link
  rate (``remaining <= memory_rate * max_downtime``); the final downtime is that remainder's
  transfer time plus a fixed switch-over cost (device state, the mirror's last sync, resuming on
  the destination; :data:`SWITCHOVER_MS`, the floor of the lab's idle moves).

``rate`` is the link's throughput capped by the bandwidth limit. libvirt applies
``VIR_MIGRATE_PARAM_BANDWIDTH`` to the memory stream and to each copied disk's mirror job on its
own, so under a cap the disks copy in parallel, each at most at the cap and all of them within
the link (``max(sum of allocations / (link - writes), largest allocation / (cap - writes))``),
and memory gets the cap, or what the link has left beside the mirrors' forwarded writes. It does not
converge when the guest dirties memory at least as fast as it can be sent (the ratio is >= 1), or
when it would need more than :data:`MAX_PASSES` passes.

What it ignores (say so to whoever reads a forecast): page size and the per-page header (a few
bytes per 4 KiB page); compression (xbzrle, zstd) and multifd's parallel streams other than
through the rate given; zero pages, which QEMU sends as tiny records - which is why the input is
the memory *in use*, not the guest's size; the working set (the model lets a guest that dirties
fast re-dirty up to all of its memory in use, so a not-converging forecast is pessimistic about
how much a larger downtime would need); the dirty rate changing during the move (auto-converge
throttling, the guest's own load); TCP slow start and the connection set-up (a few hundred ms
with TLS); disk zero detection (``detect_zeroes``) which skips zero blocks of the allocation.

Units: bytes, bytes per second, seconds, milliseconds (``_ms``). Every key says its unit.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

MIB = 1024 ** 2
GIB = 1024 ** 3

#: QEMU's default downtime-limit when ``max_downtime_ms`` is not set (ms)
DEFAULT_MAX_DOWNTIME_MS = 300
#: what the switch-over costs beyond the memory remainder (ms): device state, the disks'
#: mirror completing, resuming on the destination. The lab's idle moves: 105-135 ms
#: (docs/performance.md); the model takes the low end.
SWITCHOVER_MS = 100.0
#: more passes than this is "does not converge" (QEMU has no limit; a move that needs so many
#: passes spends its time re-sending memory)
MAX_PASSES = 30
#: the link rate assumed when none was measured and no bandwidth cap is set: 1 Gbit/s carries
#: about 117 MiB/s of migration data (the lab's 1 Gbit/s link: 111-112 MiB/s, iperf3 957 Mbit/s)
ASSUMED_LINK_BPS = 117 * MIB
#: the largest maximum downtime the forecast recommends stepping up to (ms); beyond it the
#: pause is felt by most guests and auto-converge or post-copy are the gentler levers
DOWNTIME_CEILING_MS = 2000
#: auto-converge is recommended while the throttle it needs stays at or below this (percent)
AUTOCONVERGE_MAX_THROTTLE = 80
#: a guest whose disk writes take more than this fraction of the rate is "write-heavy"
WRITE_HEAVY_FRACTION = 0.5

VERDICTS = ("converges", "does not converge")

#: QEMU's ways of measuring a dirty rate (``virDomainDirtyRateCalcFlags``, libvirt >= 8.1 for the
#: two besides page sampling): ``page-sampling`` hashes 512 sampled 4 KiB pages per GiB at the
#: start and the end of the window, so a page rewritten with the data it held (or written and
#: written back within the window) is not seen; ``dirty-bitmap`` counts every page written in the
#: window through KVM's dirty log, as migration counts them (KVM only: under TCG QEMU counts no
#: page this way and says 0); ``dirty-ring`` the same through KVM's dirty ring, the only way when
#: the guest has its dirty ring on
DIRTY_MODES = {"page-sampling": 0, "dirty-bitmap": 1, "dirty-ring": 2}
#: where the memory in use came from (:func:`memory_in_use`'s source), for the forecast's sources
MEMORY_SOURCE_WORDS = {
    "balloon": "balloon: actual - unused",
    "ram_rss": "resident size of the guest RAM mapping, /proc/<pid>/smaps",
    "rss": "rss of the QEMU process, its own memory included",
    "max_memory": "the guest's maximum memory",
}
#: what each mode's rate means, for the forecast's sources
DIRTY_MODE_WORDS = {
    "page-sampling": "libvirt dirtyrate calculation, page sampling (pages rewritten with the same data are not "
                     "seen: a lower bound)",
    "dirty-bitmap": "libvirt dirtyrate calculation, dirty bitmap (every page written, as migration counts them)",
    "dirty-ring": "libvirt dirtyrate calculation, dirty ring (every page written, as migration counts them)",
}
LEVERS = ("none", "bandwidth", "parallel_connections", "downtime", "auto_converge", "postcopy", "sync_writes")


@dataclasses.dataclass
class ForecastInputs:
    """What the forecast is computed from. Bytes and bytes per second.

    ``memory_bytes``: the guest's memory in use (what pass 1 sends; zero pages cost almost
    nothing). ``disk_bytes``: the allocation of the copied disks. ``link_bps``: what the path
    from source to destination carries (``link_measured`` False: assumed). ``dirty_bps``: the
    guest's memory dirty rate; ``disk_write_bps``: its write rate to the copied disks. The move's
    rate is the least of ``link_bps``, ``bandwidth_bps`` and ``stream_bps``.
    ``max_downtime_ms``: None is QEMU's default. ``bandwidth_bps``: the move's bandwidth cap
    (None: none). ``stream_bps``: what one migration connection carries when known (None: not
    known), for the parallel-connections advice. ``sources``: where each input came from (text,
    shown to the operator).
    """

    memory_bytes: int
    disk_bytes: int
    link_bps: float
    dirty_bps: float = 0.0
    disk_write_bps: float = 0.0
    max_downtime_ms: float | None = None
    bandwidth_bps: float | None = None
    link_measured: bool = False
    stream_bps: float | None = None
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    #: the link measurement behind ``link_bps`` (``_probe.probe_link``), None when not measured
    link: dict[str, t.Any] | None = None
    #: how ``dirty_bps`` was measured (:data:`DIRTY_MODES`), None when not measured
    dirty_mode: str | None = None
    #: the allocation of each copied disk (bytes; their sum is ``disk_bytes``), None: not known
    disk_allocations: list[int] | None = None


def _passes(memory_bytes: float, rate: float, dirty_bps: float, threshold: float) -> tuple[list[float], float, bool]:
    """The pre-copy passes: ``(seconds of each pass, bytes left for the stop-and-copy,
    converged)``."""
    times: list[float] = []
    send = float(memory_bytes)
    while len(times) < MAX_PASSES:
        took = send / rate
        times.append(took)
        left = min(float(memory_bytes), dirty_bps * took)
        if left <= threshold:
            return times, left, True
        send = left
    return times, send, False


def _round(value: float | None, digits: int = 2) -> float | int | None:
    """``value`` rounded to ``digits`` (an int for 0 digits); None stays None."""
    if value is None:
        return None
    return int(round(value)) if digits == 0 else round(value, digits)


def forecast(inputs: ForecastInputs) -> dict[str, t.Any]:
    """The forecast of one live migration (the model of this module's docstring).

    :returns: ``{verdict: "converges" | "does not converge", converges: bool, reason: str,
        link: the measurement behind the link rate or None,
        total_s (None when it does not converge), storage_s (None when the mirror cannot catch
        up), memory_s, memory_passes (pre-copy passes, the first full one included, None when it
        does not converge; libvirt's ``memory_iteration`` counts dirty-bitmap syncs, one or two
        more), downtime_ms (None when
        it does not converge), rate_bps (link and cap), memory_rate_bps, dirty_ratio (dirty rate
        over memory rate), capped (the bandwidth cap is below the link), needed_downtime_ms (the maximum downtime that would let it converge
        at the first pass's remainder), recommendation: {lever, msg, ...: max_downtime_ms,
        parallel_connections, throttle_percent, bandwidth_mibps}, levers: [every lever that
        would help, gentlest first], link_measured: bool, assumptions: [str], inputs: {...}}``.
        Floats are rounded to 2 digits; the ``_ms`` figures are ints.
    :raises ValueError: a negative input or a link rate of zero (no move can be forecast).
    """
    if inputs.link_bps <= 0:
        raise ValueError("link_bps must be positive, got %r" % (inputs.link_bps,))
    for name in ("memory_bytes", "disk_bytes", "dirty_bps", "disk_write_bps"):
        if getattr(inputs, name) < 0:
            raise ValueError("%s must not be negative, got %r" % (name, getattr(inputs, name)))
    downtime_limit_ms = float(inputs.max_downtime_ms if inputs.max_downtime_ms else DEFAULT_MAX_DOWNTIME_MS)
    rate = float(inputs.link_bps)
    capped = bool(inputs.bandwidth_bps) and float(inputs.bandwidth_bps or 0) < rate
    if capped:
        rate = float(inputs.bandwidth_bps or 0)
    if inputs.stream_bps and float(inputs.stream_bps) < rate:
        rate = float(inputs.stream_bps)  # one connection carries less than the link (and the cap)
        capped = False
    write = float(inputs.disk_write_bps) if inputs.disk_bytes else 0.0
    assumptions: list[str] = []
    if not inputs.link_measured:
        assumptions.append("the link rate (%.0f MiB/s) is assumed, not measured" % (inputs.link_bps / MIB))
    if inputs.dirty_mode == "page-sampling":
        assumptions.append("the dirty rate was sampled (QEMU's page sampling, the only way without KVM): pages the "
                           "guest rewrites with the same data are not counted, while migration sends them again")
    out: dict[str, t.Any] = {
        "link_measured": bool(inputs.link_measured), "rate_bps": _round(rate), "capped": capped,
        "link": dict(inputs.link) if inputs.link else None,
        "assumptions": assumptions,
        "inputs": {"memory_bytes": int(inputs.memory_bytes), "disk_bytes": int(inputs.disk_bytes),
                   "link_bps": _round(float(inputs.link_bps)), "dirty_bps": _round(float(inputs.dirty_bps)),
                   "disk_write_bps": _round(float(inputs.disk_write_bps)),
                   "max_downtime_ms": downtime_limit_ms,
                   "bandwidth_bps": _round(float(inputs.bandwidth_bps)) if inputs.bandwidth_bps else None,
                   "stream_bps": _round(float(inputs.stream_bps)) if inputs.stream_bps else None,
                   "dirty_mode": inputs.dirty_mode,
                   "disk_allocations": [int(a) for a in inputs.disk_allocations] if inputs.disk_allocations else None,
                   "sources": dict(inputs.sources)},
    }
    # storage: the mirror copies the allocation and must keep up with the guest's writes
    storage_s: float | None = 0.0
    memory_rate = rate - write
    if capped:
        # libvirt gives the cap to the memory stream and to each disk's mirror job on its own
        # (qemuMigrationSrcNBDStorageCopy: every mirror's speed is the migration bandwidth), so
        # under a cap the disks copy in parallel, each at most at the cap, all within the link
        link = float(inputs.link_bps)
        sizes = [int(a) for a in inputs.disk_allocations or [] if a] or ([int(inputs.disk_bytes)] if inputs.disk_bytes else [])
        if sizes:
            cap = float(inputs.bandwidth_bps or 0)
            storage_s = max(sum(sizes) / (link - write), max(sizes) / (cap - write)) \
                if link > write and cap > write else None
        memory_rate = min(rate, link - write)
    elif inputs.disk_bytes:
        storage_s = inputs.disk_bytes / (rate - write) if rate > write else None
    levers: list[dict[str, t.Any]] = []
    if storage_s is None or memory_rate <= 0:
        out.update(verdict=VERDICTS[1], converges=False, total_s=None, storage_s=None, memory_s=None,
                   memory_passes=None, downtime_ms=None, memory_rate_bps=_round(max(memory_rate, 0.0)),
                   dirty_ratio=None, needed_downtime_ms=None,
                   reason="the guest writes to its copied disks at %.1f MiB/s, as fast as or faster than the "
                          "move can copy them (%.1f MiB/s): the disks' mirror never catches up" % (write / MIB, rate / MIB))
        levers.append({"lever": "sync_writes", "msg": "synchronous disk writes (VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES): "
                       "the guest's writes wait for the destination, so the mirror converges; the guest's disk "
                       "latency grows by the link's round trip during the move"})
        out.update(recommendation=levers[0], levers=levers)
        return out

    threshold = memory_rate * downtime_limit_ms / 1000.0
    times, left, converged = _passes(inputs.memory_bytes, memory_rate, float(inputs.dirty_bps), threshold)
    ratio = float(inputs.dirty_bps) / memory_rate
    first_left = min(float(inputs.memory_bytes), float(inputs.dirty_bps) * times[0]) if times else 0.0
    needed_ms = 1000.0 * first_left / memory_rate
    memory_s = sum(times)
    out.update(memory_rate_bps=_round(memory_rate), dirty_ratio=_round(ratio, 3), memory_passes=len(times),
               storage_s=_round(storage_s), needed_downtime_ms=_round(needed_ms, 0))
    if converged:
        downtime_ms = SWITCHOVER_MS + 1000.0 * left / memory_rate
        out.update(verdict=VERDICTS[0], converges=True, memory_s=_round(memory_s), downtime_ms=_round(downtime_ms, 0),
                   total_s=_round((storage_s or 0.0) + memory_s + downtime_ms / 1000.0),
                   reason="the guest dirties %.1f MiB/s of memory against %.1f MiB/s sent: %d pass(es), the "
                          "last remainder within %.0f ms" % (inputs.dirty_bps / MIB, memory_rate / MIB, len(times),
                                                             downtime_limit_ms))
        if inputs.disk_bytes and write > WRITE_HEAVY_FRACTION * rate:
            levers.append(_sync_writes())
        out.update(recommendation=levers[0] if levers else {"lever": "none", "msg": "none: it converges as asked"},
                   levers=levers)
        return out

    if ratio >= 1:
        reason = ("the guest dirties %.1f MiB/s of memory, as fast as or faster than the %.1f MiB/s the move sends: "
                  "pre-copy never converges" % (inputs.dirty_bps / MIB, memory_rate / MIB))
    else:
        reason = ("the guest dirties %.1f MiB/s of memory against %.1f MiB/s sent: after %d passes the remainder "
                  "still does not fit in %.0f ms" % (inputs.dirty_bps / MIB, memory_rate / MIB, MAX_PASSES, downtime_limit_ms))
    out.update(verdict=VERDICTS[1], converges=False, memory_s=None, downtime_ms=None, total_s=None, reason=reason,
               memory_passes=None)
    levers.extend(_levers(inputs, rate, memory_rate, capped, needed_ms, downtime_limit_ms))
    out.update(recommendation=levers[0], levers=levers)
    return out


def _sync_writes() -> dict[str, t.Any]:
    return {"lever": "sync_writes", "msg": "synchronous disk writes (VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES) for "
            "this write-heavy guest: its writes then wait for the destination, so the disks' mirror cannot fall behind"}


def _levers(inputs: ForecastInputs, rate: float, memory_rate: float, capped: bool, needed_ms: float,
            limit_ms: float) -> list[dict[str, t.Any]]:
    """The levers that would make a not-converging move converge, gentlest first."""
    out: list[dict[str, t.Any]] = []
    dirty = float(inputs.dirty_bps)
    write = float(inputs.disk_write_bps) if inputs.disk_bytes else 0.0
    if capped and inputs.link_bps - write > dirty * 1.25:
        mibps = int(math.ceil((dirty * 1.25 + write) / MIB))
        out.append({"lever": "bandwidth", "bandwidth_mibps": mibps,
                    "msg": "raise the bandwidth limit to at least %d MiB/s (the link carries %.0f MiB/s)"
                           % (mibps, inputs.link_bps / MIB)})
    if inputs.stream_bps and rate == inputs.stream_bps and inputs.link_bps > inputs.stream_bps * 1.2:
        conns = min(8, int(math.ceil(inputs.link_bps / inputs.stream_bps)))
        if min(inputs.link_bps, inputs.stream_bps * conns) - write > dirty:
            out.append({"lever": "parallel_connections", "parallel_connections": conns,
                        "msg": "parallel connections (%d): one connection carries %.0f MiB/s of the link's %.0f MiB/s"
                               % (conns, inputs.stream_bps / MIB, inputs.link_bps / MIB)})
    if needed_ms <= DOWNTIME_CEILING_MS and needed_ms > limit_ms:
        step = int(math.ceil(needed_ms / 50.0) * 50)
        out.append({"lever": "downtime", "max_downtime_ms": step,
                    "msg": "stepwise downtime increase up to %d ms (now %d ms)" % (step, limit_ms)})
    throttle = int(math.ceil(100.0 * (1.0 - 0.8 * memory_rate / dirty))) if dirty > 0 else 0
    if 0 < throttle <= AUTOCONVERGE_MAX_THROTTLE:
        out.append({"lever": "auto_converge", "throttle_percent": throttle,
                    "msg": "auto-converge: throttling the vCPUs by about %d %% brings the dirty rate below the "
                           "%.1f MiB/s sent" % (throttle, memory_rate / MIB)})
    out.append({"lever": "postcopy", "msg": "post-copy (postcopy and timeout_action postcopy): after the first pass the "
                "guest runs on the destination and pulls the rest; a link failure then pauses it until recovered"})
    if inputs.disk_bytes and write > WRITE_HEAVY_FRACTION * rate:
        out.append(_sync_writes())
    return out


def completion_timeout_s(fc: dict[str, t.Any] | None, multiple: float, min_s: float) -> int | None:
    """A completion timeout from a forecast: ``multiple`` times its ``total_s``, at least
    ``min_s`` (seconds, rounded up). None when there is no forecast, it does not converge (no
    total to scale) or ``multiple <= 0``: the caller then keeps its own rule.

    >>> completion_timeout_s({"converges": True, "total_s": 19.2}, 3, 300)
    300
    >>> completion_timeout_s({"converges": True, "total_s": 200.0}, 3, 300)
    600
    """
    if not fc or multiple <= 0 or not fc.get("converges") or fc.get("total_s") is None:
        return None
    return int(max(float(min_s), math.ceil(float(multiple) * float(fc["total_s"]))))


def summary_line(fc: dict[str, t.Any]) -> str:
    """One line for the operator: verdict, total, passes, downtime, the recommendation."""
    link = link_words(fc["link"]) if fc.get("link") else "link assumed, not measured"
    rate = "%.0f MiB/s (%s)" % (float(fc.get("rate_bps") or 0) / MIB,
                                "the bandwidth cap; %s" % link if fc.get("capped") else link)
    if fc.get("converges"):
        head = "Forecast: converges in about %.1f s (%d memory pass(es), downtime about %d ms) at %s" % (
            fc["total_s"], fc["memory_passes"], fc["downtime_ms"], rate)
    else:
        head = "Forecast: does not converge at %s: %s" % (rate, fc.get("reason"))
    rec = (fc.get("recommendation") or {})
    if rec.get("lever", "none") != "none":
        head += "; recommended: %s" % rec["msg"]
        others = [lv["lever"] for lv in fc.get("levers") or [] if lv.get("lever") != rec["lever"]]
        if others:
            head += " (other levers: %s)" % ", ".join(others)
    return head + "."


# --------------------------------------------------------------------------------------------
# Measuring the guest (read-only, on the source)
# --------------------------------------------------------------------------------------------

def _const(lv: t.Any, name: str, fallback: t.Any) -> t.Any:
    value = getattr(lv, name, None)
    return fallback if value is None else value


#: where the system instance of libvirt's QEMU driver keeps each running guest's QEMU pid
QEMU_PID_DIR = "/run/libvirt/qemu"
#: how much larger than the guest's memory the host mapping of its RAM may be (alignment, guard)
RAM_MAPPING_SLACK = 8 * MIB


def ram_resident_from_smaps(text: str, memory_bytes: int, slack: int = RAM_MAPPING_SLACK) -> int | None:
    """The resident bytes of a guest's RAM from its QEMU process's ``/proc/<pid>/smaps`` text:
    the ``Rss`` of the one mapping whose ``Size`` is between ``memory_bytes`` and
    ``memory_bytes + slack`` (QEMU maps the RAM of a guest without NUMA nodes as one block,
    anonymous or a memfd/hugetlbfs file). None when no mapping or more than one has that size
    (several NUMA memory backends, or another mapping of the same size, e.g. TCG's translation
    buffer): the caller then keeps the process's rss. Pages the guest never touched are not
    resident, so this is what pass 1 of a migration can send beyond zero pages (pages the guest
    zeroed itself stay resident and cost little on the wire).

    >>> ram_resident_from_smaps("7f00-7f10 rw-p 00000000 00:00 0\\nSize: 1048576 kB\\nRss: 2048 kB\\n", 1024 ** 3)
    2097152
    """
    found: list[int] = []
    size = rss = None
    for line in text.splitlines() + ["0-0 ---p 0 0:0 0"]:
        head = line.split(None, 1)[0] if line.strip() else ""
        if "-" in head and not head.endswith(":"):
            if size is not None and rss is not None and memory_bytes <= size <= memory_bytes + slack:
                found.append(rss)
            size = rss = None
            continue
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("Size:", "Rss:") and parts[2] == "kB" and parts[1].isdigit():
            if parts[0] == "Size:":
                size = int(parts[1]) * 1024
            else:
                rss = int(parts[1]) * 1024
    return found[0] if len(found) == 1 else None


def guest_ram_resident(name: str, memory_bytes: int, pid_dir: str = QEMU_PID_DIR,
                       opener: t.Callable[..., t.Any] = open) -> int | None:
    """:func:`ram_resident_from_smaps` of the running guest ``name`` on this host: its QEMU pid
    from libvirt's ``<pid_dir>/<name>.pid``, then ``/proc/<pid>/smaps``. Only meaningful where
    the module runs on the guest's host with the local system connection. None when either file
    cannot be read (another libvirt instance, no permission, the guest just stopped)."""
    try:
        with opener("%s/%s.pid" % (pid_dir, name)) as handle:
            pid = int(handle.read().strip())
        with opener("/proc/%d/smaps" % pid) as handle:
            return ram_resident_from_smaps(handle.read(), memory_bytes)
    except (OSError, ValueError):
        return None


def memory_in_use(dom: t.Any, lv: t.Any,
                  ram_reader: t.Callable[[str, int], int | None] | None = None) -> tuple[int, str]:
    """``(bytes, source)``: the guest's memory in use. ``virDomainMemoryStats``: ``actual -
    unused`` (the balloon driver's view; needs the guest's virtio-balloon with a stats period);
    else, with ``ram_reader`` (:func:`guest_ram_resident`, called with the domain's name and its
    memory in bytes), the resident size of the guest's RAM mapping in its QEMU process; else the
    QEMU process's ``rss``: the pages the guest touched plus QEMU's own memory (under TCG its
    translation cache), so an overestimate; each capped at the guest's memory (``actual``, else
    ``virDomainGetInfo``'s maximum); else the maximum memory. ``source`` says which:
    ``balloon``, ``ram_rss``, ``rss`` or ``max_memory``. libvirt reports KiB."""
    stats: dict[t.Any, t.Any] = {}
    try:
        stats = dict(dom.memoryStats() or {})
    except Exception as err:  # a libvirt error: no statistics, the maximum is taken
        if not _libvirt.is_libvirt_error(err, lv):
            raise
    actual = stats.get("actual")
    if actual and stats.get("unused") is not None and int(actual) > int(stats["unused"]):
        return 1024 * (int(actual) - int(stats["unused"])), "balloon"
    maximum = int(dom.info()[1])
    cap = 1024 * int(actual or maximum)
    resident = ram_reader(dom.name(), 1024 * maximum) if ram_reader else None
    if resident is not None:
        return min(int(resident), cap), "ram_rss"
    if stats.get("rss"):
        return min(1024 * int(stats["rss"]), cap), "rss"
    return 1024 * maximum, "max_memory"


def _written(dom: t.Any, targets: t.Sequence[str]) -> dict[str, int]:
    """Bytes written so far per target (``virDomainBlockStats``: rd_req, rd_bytes, wr_req,
    wr_bytes, errs)."""
    return {tg: int(dom.blockStats(tg)[3]) for tg in targets}


def dirty_rate_mode(domain_type: str | None, dirty_ring: bool = False) -> str:
    """The :data:`DIRTY_MODES` mode that measures the dirty rate of a guest the way its migration
    will meet it: ``dirty-ring`` for a KVM guest with its dirty ring on (QEMU refuses the dirty
    bitmap then), ``dirty-bitmap`` for any other KVM guest, ``page-sampling`` for the rest (TCG,
    ``<domain type='qemu'>``, where the dirty log counts nothing for the measurement).

    :param domain_type: ``<domain type>`` (``kvm``, ``qemu``, ...), None when not known.
    :param dirty_ring: ``<features><kvm><dirty-ring state='on'/>``.

    >>> dirty_rate_mode("kvm"), dirty_rate_mode("kvm", True), dirty_rate_mode("qemu")
    ('dirty-bitmap', 'dirty-ring', 'page-sampling')
    """
    if domain_type != "kvm":
        return "page-sampling"
    return "dirty-ring" if dirty_ring else "dirty-bitmap"


@dataclasses.dataclass
class Measurement:
    """A measurement of one guest under way (:func:`start_measure`): the window opened at
    ``started_at`` (monotonic s), the disks' bytes written then, the problems so far."""

    dom: t.Any
    lv: t.Any
    seconds: int
    started_at: float
    written: dict[str, int]
    problems: list[str]
    #: the :data:`DIRTY_MODES` mode the calculation runs in (None: it did not start)
    mode: str | None = None
    #: reads the guest RAM's resident size (:func:`guest_ram_resident`), None: not on its host
    ram_reader: t.Callable[[str, int], int | None] | None = None


def _start_calc(dom: t.Any, lv: t.Any, seconds: int, mode: str, problems: list[str]) -> str | None:
    """``virDomainStartDirtyRateCalc`` in ``mode``, else in page sampling when that mode was
    refused: the mode it runs in, None when none started (the reasons in ``problems``)."""
    for attempt in ([mode, "page-sampling"] if mode != "page-sampling" else [mode]):
        try:
            dom.startDirtyRateCalc(seconds, DIRTY_MODES[attempt])
            return attempt
        except AttributeError:
            problems.append("this libvirt-python has no virDomainStartDirtyRateCalc (libvirt >= 7.2): dirty rate "
                            "not measured")
            return None
        except Exception as err:  # a libvirt error becomes a problem; others propagate
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            problems.append("the dirty rate could not be measured in %s mode (virDomainStartDirtyRateCalc: %s)"
                            % (attempt, err))
    return None


def start_measure(dom: t.Any, lv: t.Any, targets: t.Sequence[str] = (), seconds: int = 1,
                  clock: t.Callable[[], float] = time.monotonic, mode: str = "page-sampling",
                  ram_reader: t.Callable[[str, int], int | None] | None = None) -> Measurement:
    """Open the measuring window of the running guest ``dom`` (``seconds``, an integer >= 1):
    ``virDomainStartDirtyRateCalc(seconds, flags)`` (libvirt >= 7.2, QEMU >= 5.2) in ``mode``
    (:data:`DIRTY_MODES`, :func:`dirty_rate_mode`; a mode libvirt or QEMU refuses falls back to
    page sampling, libvirt's default). None of the modes changes the guest's memory; the dirty
    bitmap and ring turn KVM's dirty logging on for the window, as the first pass of a migration
    does. It takes libvirt's modify job, so it waits if another job holds the guest. And the
    first ``virDomainBlockStats`` of each target. ``ram_reader``: for :func:`memory_in_use`, only
    where this runs on the guest's host. The caller may do other work until
    :func:`finish_measure`, which waits for the rest of the window. Never raises for a libvirt
    failure: it becomes a problem of the measurement.

    :raises ValueError: ``mode`` is not one of :data:`DIRTY_MODES`."""
    if mode not in DIRTY_MODES:
        raise ValueError("dirty rate mode %r is not one of %s" % (mode, ", ".join(DIRTY_MODES)))
    seconds = max(1, int(seconds))
    problems: list[str] = []
    running = _start_calc(dom, lv, seconds, mode, problems)
    written: dict[str, int] = {}
    for target in targets:
        try:
            written.update(_written(dom, [target]))
        except Exception as err:  # a libvirt error becomes a problem; others propagate
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            problems.append("the write rate of %s could not be read (virDomainBlockStats: %s)" % (target, err))
    return Measurement(dom=dom, lv=lv, seconds=seconds, started_at=clock(),
                       written=written, problems=problems, mode=running, ram_reader=ram_reader)


def finish_measure(m: Measurement, targets: t.Sequence[str] | None = None,
                   clock: t.Callable[[], float] = time.monotonic,
                   sleep: t.Callable[[float], None] = time.sleep) -> dict[str, t.Any]:
    """Close the window of :func:`start_measure`: sleep what is left of it, read
    ``virDomainBlockStats`` again (``wr_bytes`` delta of ``targets``, None: every disk sampled, over
    the elapsed time), then ``virConnectGetAllDomainStats`` with ``VIR_DOMAIN_STATS_DIRTYRATE``
    for this domain (``domainListGetStats``) until ``dirtyrate.calc_status`` is
    ``VIR_DOMAIN_DIRTYRATE_MEASURED`` (at most ``seconds + 3`` after the start);
    ``dirtyrate.megabytes_per_second`` is MiB/s (QEMU divides by 2^20). And
    :func:`memory_in_use`.

    :returns: ``{dirty_bps (None when not measured), dirty_source: "libvirt dirtyrate" | None,
        dirty_mode: the :data:`DIRTY_MODES` mode measured in | None, disk_write_bps,
        memory_bytes, memory_source, window_s, problems: [str]}``; a libvirt failure is a
        problem in the list, never an exception.
    """
    left = m.seconds - (clock() - m.started_at)
    if left > 0:
        sleep(left)
    write_bps = 0.0
    chosen = [tg for tg in (m.written if targets is None else targets) if tg in m.written]
    if chosen:
        try:
            after = _written(m.dom, chosen)
            elapsed = max(clock() - m.started_at, 1e-3)
            write_bps = sum(max(0, after[tg] - m.written[tg]) for tg in chosen) / elapsed
        except Exception as err:  # a libvirt error becomes a problem; others propagate
            if not _libvirt.is_libvirt_error(err, m.lv):
                raise
            m.problems.append("the disks' write rate could not be read (virDomainBlockStats: %s)" % err)
    window_s = clock() - m.started_at
    dirty_bps = _read_dirtyrate(m.dom, m.lv, m.seconds, clock, sleep, m.started_at, m.problems) \
        if m.mode is not None else None
    memory, source = memory_in_use(m.dom, m.lv, m.ram_reader)
    return {"dirty_bps": dirty_bps, "dirty_source": "libvirt dirtyrate" if dirty_bps is not None else None,
            "dirty_mode": m.mode if dirty_bps is not None else None,
            "disk_write_bps": round(write_bps, 2), "memory_bytes": int(memory), "memory_source": source,
            "window_s": round(window_s, 2), "problems": list(m.problems)}


def measure_guest(dom: t.Any, lv: t.Any, targets: t.Sequence[str] = (), seconds: int = 1,
                  clock: t.Callable[[], float] = time.monotonic,
                  sleep: t.Callable[[float], None] = time.sleep, mode: str = "page-sampling") -> dict[str, t.Any]:
    """:func:`start_measure` then :func:`finish_measure` of the copied disks ``targets``: the
    guest measured for about ``seconds``, read-only. Shape of :func:`finish_measure`."""
    return finish_measure(start_measure(dom, lv, targets, seconds, clock, mode), list(targets), clock, sleep)


def _read_dirtyrate(dom: t.Any, lv: t.Any, seconds: int, clock: t.Callable[[], float],
                    sleep: t.Callable[[float], None], start: float, problems: list[str]) -> float | None:
    group = _const(lv, "VIR_DOMAIN_STATS_DIRTYRATE", 512)
    measured = _const(lv, "VIR_DOMAIN_DIRTYRATE_MEASURED", 2)
    status_key = _const(lv, "VIR_DOMAIN_STATS_DIRTYRATE_CALC_STATUS", "dirtyrate.calc_status")
    rate_key = _const(lv, "VIR_DOMAIN_STATS_DIRTYRATE_MEGABYTES_PER_SECOND", "dirtyrate.megabytes_per_second")
    conn = dom.connect()
    while True:
        try:
            got = conn.domainListGetStats([dom], group, 0)
        except Exception as err:  # a libvirt error becomes a problem; others propagate
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            problems.append("the dirty rate could not be read (virConnectGetAllDomainStats dirtyrate: %s)" % err)
            return None
        stats = dict(got[0][1]) if got else {}
        if stats.get(status_key) == measured and rate_key in stats:
            return float(stats[rate_key]) * MIB
        if clock() - start > seconds + 3:
            problems.append("the dirty rate calculation did not finish within %d s (calc_status %s)"
                            % (seconds + 3, stats.get(status_key)))
            return None
        sleep(0.2)


def inputs_from_measurement(measured: dict[str, t.Any], disk_bytes: int, *, link: dict[str, t.Any] | None = None,
                            link_bps: float | None = None, bandwidth_mibps: int | None = None,
                            max_downtime_ms: int | None = None, stream_bps: float | None = None,
                            disk_allocations: t.Sequence[int] | None = None) -> ForecastInputs:
    """:class:`ForecastInputs` from :func:`measure_guest` and the copied disks' allocation
    (bytes; ``disk_allocations``: each disk's, for the per-disk cap). The link rate, first found: ``link``, the pre-flight's measurement of the link
    (``_probe.probe_link``'s ``{bps, bytes, seconds, port}``); ``link_bps``, the operator's figure;
    the bandwidth cap; :data:`ASSUMED_LINK_BPS`. Only the first counts as measured; the others are
    said to be assumed. A dirty rate that was not measured counts as 0 and the forecast says so."""
    memory_from = str(measured.get("memory_source"))
    sources = {"memory_bytes": "memory in use (%s)" % MEMORY_SOURCE_WORDS.get(memory_from, memory_from),
               "disk_bytes": "allocation of the copied disks",
               "disk_write_bps": "virDomainBlockStats over %.1f s" % float(measured.get("window_s") or 0)}
    if link and link.get("bps"):
        link_bps = float(link["bps"])
        sources["link_bps"] = link_words(link)
    elif link_bps:
        sources["link_bps"] = "given (forecast.link_mibps), not measured"
    elif bandwidth_mibps:
        link_bps = float(bandwidth_mibps) * MIB
        sources["link_bps"] = "assumed: the bandwidth cap (bandwidth_mibps), not measured"
    else:
        link_bps = float(ASSUMED_LINK_BPS)
        sources["link_bps"] = "assumed: 1 Gbit/s, not measured"
    dirty = measured.get("dirty_bps")
    sources["dirty_bps"] = DIRTY_MODE_WORDS.get(str(measured.get("dirty_mode")), "libvirt dirtyrate calculation") \
        if dirty is not None else "not measured, taken as 0"
    return ForecastInputs(memory_bytes=int(measured.get("memory_bytes") or 0), disk_bytes=int(disk_bytes),
                          link_bps=float(link_bps), dirty_bps=float(dirty or 0.0),
                          disk_write_bps=float(measured.get("disk_write_bps") or 0.0),
                          max_downtime_ms=max_downtime_ms,
                          bandwidth_bps=float(bandwidth_mibps) * MIB if bandwidth_mibps else None,
                          link_measured=bool(link and link.get("bps")), stream_bps=stream_bps, sources=sources,
                          link=dict(link) if link and link.get("bps") else None,
                          dirty_mode=measured.get("dirty_mode") if dirty is not None else None,
                          disk_allocations=[int(a) for a in disk_allocations] if disk_allocations else None)


def link_words(link: dict[str, t.Any]) -> str:
    """``link measured X MiB/s over Y s`` of a measured link (``{bps, seconds, ...}``)."""
    return "link measured %.0f MiB/s over %.1f s" % (float(link["bps"]) / MIB, float(link.get("seconds") or 0))
