# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one hand-written fake of libvirt for the unit tests (issue 17 item 3).

- :class:`LibvirtError`: a ``libvirtError`` with a message and a code, made without a real
  libvirt failure. It subclasses the installed binding's ``libvirtError``, so code that uses the
  real binding (``_libvirt.is_libvirt_error(err)``) and code given a fake namespace both see a
  libvirt error.
- :func:`namespace`, :data:`LV_11_3`, :data:`LV_9_0`, :data:`LV_6_0`: fake ``libvirt`` module
  objects (the constants the code reads, ``libvirtError``, ``getVersion``) of the binding of a
  libvirt version, passed as ``lv``; :data:`CONSTANTS` holds the values of the real binding
  (``test_fake_libvirt.py`` compares them).
- :class:`Domain`: one virDomain: XML (live and inactive), state, persistence, metadata, the
  migration job (``jobStats`` replays recorded samples, ``migrate3`` moves the domain to the
  destination :class:`Connection`, ``abortJob``, post-copy) and what it was asked to change
  (``calls``).
- :class:`Connection`: one virConnect: domains (lookup by name and UUID, ``defineXML``), host
  facts (capabilities, domain capabilities, ``compareHypervisorCPU`` and
  ``baselineHypervisorCPU`` with libvirt's texts, versions, memory), storage pools, networks and
  interfaces. ``readonly=True`` makes every changing call fail, for the code that must change
  nothing (the pre-flight).
- :func:`lab_conn`, :func:`intel_conn`, :func:`rome_conn`: connections to the hosts of the CPU
  fixtures (tests/unit/fixtures/cpu); :func:`connector`: a ``connect(uri)`` context manager.

A test that needs a special behaviour (a job that lingers, a query that times out on the job
lock) sets the attributes meant for it (``lingering_job``, ``completed_late``) or replaces one
method of its instance; it does not write another fake.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
import typing as t

from lxml import etree

from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

try:
    import libvirt as _real  # type: ignore[import-not-found]
except ImportError:  # the fake namespaces work without the binding
    _real = None

GIB = 1024 ** 3
CPU_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "cpu")

#: Constants of libvirt-python 11.3 that the code and these fakes use (values as in the real
#: binding). VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED is left out: the migration driver adds it to
#: its completed-statistics query when the binding has it, and the fake job knows one flag.
CONSTANTS: dict[str, t.Any] = {
    "VIR_MIGRATE_LIVE": 1, "VIR_MIGRATE_PEER2PEER": 2, "VIR_MIGRATE_TUNNELLED": 4,
    "VIR_MIGRATE_PERSIST_DEST": 8, "VIR_MIGRATE_UNDEFINE_SOURCE": 16, "VIR_MIGRATE_PAUSED": 32,
    "VIR_MIGRATE_NON_SHARED_DISK": 64, "VIR_MIGRATE_NON_SHARED_INC": 128,
    "VIR_MIGRATE_CHANGE_PROTECTION": 256, "VIR_MIGRATE_UNSAFE": 512, "VIR_MIGRATE_OFFLINE": 1024,
    "VIR_MIGRATE_COMPRESSED": 2048, "VIR_MIGRATE_ABORT_ON_ERROR": 4096,
    "VIR_MIGRATE_AUTO_CONVERGE": 8192, "VIR_MIGRATE_POSTCOPY": 32768, "VIR_MIGRATE_TLS": 65536,
    "VIR_MIGRATE_PARALLEL": 131072,
    "VIR_MIGRATE_PARAM_URI": "migrate_uri", "VIR_MIGRATE_PARAM_DEST_NAME": "destination_name",
    "VIR_MIGRATE_PARAM_DEST_XML": "destination_xml", "VIR_MIGRATE_PARAM_PERSIST_XML": "persistent_xml",
    "VIR_MIGRATE_PARAM_BANDWIDTH": "bandwidth", "VIR_MIGRATE_PARAM_LISTEN_ADDRESS": "listen_address",
    "VIR_MIGRATE_PARAM_MIGRATE_DISKS": "migrate_disks", "VIR_MIGRATE_PARAM_DISKS_PORT": "disks_port",
    "VIR_MIGRATE_PARAM_DISKS_URI": "disks_uri", "VIR_MIGRATE_PARAM_COMPRESSION": "compression",
    "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL": "auto_converge.initial",
    "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT": "auto_converge.increment",
    "VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS": "parallel.connections",
    "VIR_MIGRATE_PARAM_TLS_DESTINATION": "tls.destination",
    "VIR_MIGRATE_PARAM_COMPRESSION_ZLIB_LEVEL": "compression.zlib.level",
    "VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL": "compression.zstd.level",
    "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES": "migrate_disks_detect_zeroes",
    "VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER": "bandwidth.avail.switchover",
    "VIR_DOMAIN_JOB_NONE": 0, "VIR_DOMAIN_JOB_BOUNDED": 1, "VIR_DOMAIN_JOB_UNBOUNDED": 2,
    "VIR_DOMAIN_JOB_COMPLETED": 3, "VIR_DOMAIN_JOB_FAILED": 4, "VIR_DOMAIN_JOB_CANCELLED": 5,
    "VIR_DOMAIN_JOB_STATS_COMPLETED": 1,
    "VIR_DOMAIN_JOB_TIME_ELAPSED": "time_elapsed", "VIR_DOMAIN_JOB_DOWNTIME": "downtime",
    "VIR_DOMAIN_JOB_SETUP_TIME": "setup_time", "VIR_DOMAIN_JOB_DATA_TOTAL": "data_total",
    "VIR_DOMAIN_JOB_DATA_PROCESSED": "data_processed", "VIR_DOMAIN_JOB_DATA_REMAINING": "data_remaining",
    "VIR_DOMAIN_JOB_MEMORY_TOTAL": "memory_total", "VIR_DOMAIN_JOB_MEMORY_PROCESSED": "memory_processed",
    "VIR_DOMAIN_JOB_MEMORY_REMAINING": "memory_remaining",
    "VIR_DOMAIN_JOB_MEMORY_ITERATION": "memory_iteration",
    "VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE": "memory_dirty_rate",
    "VIR_DOMAIN_JOB_MEMORY_PAGE_SIZE": "memory_page_size", "VIR_DOMAIN_JOB_MEMORY_BPS": "memory_bps",
    "VIR_DOMAIN_JOB_DISK_TOTAL": "disk_total", "VIR_DOMAIN_JOB_DISK_PROCESSED": "disk_processed",
    "VIR_DOMAIN_JOB_DISK_REMAINING": "disk_remaining", "VIR_DOMAIN_JOB_DISK_BPS": "disk_bps",
    "VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE": "auto_converge_throttle",
    "VIR_DOMAIN_NOSTATE": 0, "VIR_DOMAIN_RUNNING": 1, "VIR_DOMAIN_BLOCKED": 2, "VIR_DOMAIN_PAUSED": 3,
    "VIR_DOMAIN_SHUTDOWN": 4, "VIR_DOMAIN_SHUTOFF": 5, "VIR_DOMAIN_CRASHED": 6,
    "VIR_DOMAIN_PMSUSPENDED": 7, "VIR_DOMAIN_PAUSED_MIGRATION": 2,
    "VIR_DOMAIN_METADATA_ELEMENT": 2, "VIR_DOMAIN_AFFECT_LIVE": 1,
    "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM": 8, "VIR_ERR_NO_DOMAIN": 42, "VIR_ERR_NO_DOMAIN_METADATA": 80,
    "VIR_DOMAIN_EVENT_ID_LIFECYCLE": 0, "VIR_DOMAIN_EVENT_STOPPED": 5, "VIR_DOMAIN_EVENT_CRASHED": 8,
    "VIR_DOMAIN_EVENT_CRASHED_PANICKED": 0, "VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED": 1,
    "VIR_DOMAIN_EVENT_STOPPED_CRASHED": 2, "VIR_DOMAIN_SHUTOFF_CRASHED": 3, "VIR_DOMAIN_PAUSED_CRASHED": 10,
    "VIR_DOMAIN_RUNNING_CRASHED": 9, "VIR_DOMAIN_TIME_SYNC": 1,
    "VIR_DOMAIN_STATS_DIRTYRATE": 512, "VIR_DOMAIN_DIRTYRATE_UNSTARTED": 0, "VIR_DOMAIN_DIRTYRATE_MEASURING": 1,
    "VIR_DOMAIN_DIRTYRATE_MEASURED": 2, "VIR_DOMAIN_STATS_DIRTYRATE_CALC_STATUS": "dirtyrate.calc_status",
    "VIR_DOMAIN_STATS_DIRTYRATE_MEGABYTES_PER_SECOND": "dirtyrate.megabytes_per_second",
}

#: Constants only the fakes use (error codes and flags they raise or check; never in a
#: namespace, so the code under test reads exactly :data:`CONSTANTS` from one).
FAKE_ONLY: dict[str, int] = {
    "VIR_ERR_INTERNAL_ERROR": 1, "VIR_ERR_NO_SUPPORT": 3, "VIR_ERR_INVALID_ARG": 8,
    "VIR_ERR_SYSTEM_ERROR": 38, "VIR_ERR_NO_NETWORK": 43, "VIR_ERR_NO_STORAGE_VOL": 50,
    "VIR_ERR_NO_INTERFACE": 57, "VIR_ERR_OPERATION_TIMEOUT": 68, "VIR_ERR_CPU_INCOMPATIBLE": 91,
    "VIR_DOMAIN_XML_SECURE": 1, "VIR_DOMAIN_XML_INACTIVE": 2, "VIR_DOMAIN_XML_MIGRATABLE": 8,
    "VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE": 1, "VIR_CONNECT_BASELINE_CPU_MIGRATABLE": 2,
    "VIR_CPU_COMPARE_SUPERSET": 2, "VIR_ERR_AGENT_UNRESPONSIVE": 86, "VIR_ERR_OPERATION_UNSUPPORTED": 84,
}

#: Added after libvirt 9.0 (libvirt-go-module's version table: 9.4, 9.4, 10.9, 11.1).
NEWER_THAN_9_0 = ("VIR_MIGRATE_PARAM_COMPRESSION_ZLIB_LEVEL", "VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL",
                  "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES",
                  "VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER")

_C = dict(CONSTANTS, **FAKE_ONLY)

#: libvirt's domain states (virDomainState) by the names the tests use
STATES = {"nostate": 0, "running": 1, "blocked": 2, "paused": 3, "shutdown": 4, "shutoff": 5,
          "crashed": 6, "pmsuspended": 7}
_STATE_NAMES = {code: name for name, code in STATES.items()}

_BASE = _real.libvirtError if _real is not None else Exception


class LibvirtError(_BASE):  # type: ignore[misc,valid-type]
    """A ``libvirtError`` carrying a message and a code (``VIR_ERR_*``, default
    VIR_ERR_INTERNAL_ERROR) without a real libvirt failure."""

    def __init__(self, msg: str, code: int = _C["VIR_ERR_INTERNAL_ERROR"]) -> None:  # pylint: disable=super-init-not-called
        # libvirtError.__init__ would read libvirt's last error; keep only our text and code
        Exception.__init__(self, msg)
        self.msg = msg
        self.code = code

    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.msg


def namespace(version: int = 11003000, missing: t.Iterable[str] = ()) -> types.SimpleNamespace:
    """A fake ``libvirt`` module of the binding of libvirt ``version`` (``M*1000000+m*1000+u``):
    :data:`CONSTANTS` without ``missing``, :class:`LibvirtError` and ``getVersion()``."""
    skip = set(missing)
    consts = {k: v for k, v in CONSTANTS.items() if k not in skip}
    return types.SimpleNamespace(libvirtError=LibvirtError, getVersion=lambda: version,
                                 qemuAgentCommand=_agent_command, **consts)


def _agent_command(dom: "Domain", command: str, timeout: int, flags: int) -> str:
    """libvirt_qemu.qemuAgentCommand of a fake namespace: the domain's :meth:`Domain.agent`."""
    return dom.agent(command, timeout)


class FakeClock:
    """A clock (``clock()``) whose ``sleep(s)`` advances it by ``s`` at once (it yields to other
    threads for 2 ms, so a migrate3 worker runs)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        threading.Event().wait(0.002)


LV_11_3 = namespace(11003000)
LV_9_0 = namespace(9000000, NEWER_THAN_9_0)
LV_6_0 = namespace(6000000, NEWER_THAN_9_0 + ("VIR_MIGRATE_PARAM_DISKS_URI",))


def _xml_text(xml: str, tag: str) -> str | None:
    if not xml:
        return None
    return etree.fromstring(xml.encode()).findtext(tag)


class Domain:
    """One virDomain.

    :param name: the domain's name; None: ``<name>`` of ``xml``.
    :param xml: the live XML (``XMLDesc``); ``inactive_xml`` the persistent one (with
        VIR_DOMAIN_XML_INACTIVE; None: the live XML).
    :param uuid: None: ``<uuid>`` of ``xml``.
    :param state: a :data:`STATES` name or a ``VIR_DOMAIN_*`` state code; ``active``, when
        given, makes it running or shutoff. ``reason``: the second element of ``state()``.
    :param memory_kib, vcpus: ``info()``.
    :param samples: the migration job's progress as recorded (``[{stats}]``, tests/unit/fixtures/
        migration), ``completed`` its completed statistics.
    """

    def __init__(self, name: str | None = None, xml: str = "", *, uuid: str | None = None,
                 state: str | int = "running", reason: int = 0, active: bool | None = None,
                 persistent: bool = True, inactive_xml: str | None = None, memory_kib: int = 1048576,
                 vcpus: int = 1, samples: t.Iterable[dict[str, t.Any]] | None = None,
                 completed: dict[str, t.Any] | None = None, conn: "Connection | None" = None) -> None:
        self._name, self._uuid, self.xml, self.inactive_xml = name, uuid, xml, inactive_xml
        self._state = _STATE_NAMES[state] if isinstance(state, int) else state
        if active is not None:
            self._state = "running" if active else "shutoff"
        self.reason, self.persistent, self.conn = reason, persistent, conn
        self.memory_kib, self.vcpus = memory_kib, vcpus
        self.readonly = False
        self.flags_seen: list[int] = []  # the flags of every XMLDesc call
        self.calls: list[t.Any] = []  # every changing call
        self.metadata_xml: str | None = None
        # the migration job
        self.samples = list(samples or [])
        self.completed = completed
        self.finished = threading.Event()
        self.aborted = False
        self.pause_during_migration = False
        self.finish_after_samples = False
        # job types virDomainGetJobInfo reports after migrate3 returned (0: no job), one per
        # call; an exception in the list is raised once (a failed query)
        self.lingering_job: list[t.Any] = []
        self.migrate3_returned = False
        # post-copy whose link breaks (issue 19 item 4): once migrateStartPostCopy was called,
        # migrate3 fails as libvirt 11.3 does, the source paused (post-copy failed), the incoming
        # domain running (post-copy failed), the destination connection dead; then state() gives
        # the (state, reason) of ``states_after`` one per call (the last repeats)
        self.postcopy_link_breaks = False
        self.states_after: list[tuple[str, int]] = []
        # completed statistics read as "no job" this many times before they are there
        self.completed_late = 0
        # the guest agent: None (none runs), else a callable telling whether it answers now
        self.agent_up: t.Callable[[], bool] | None = None
        self.agent_commands: list[str] = []
        # the guest's clock minus the host's, in seconds (guest-get-time through the agent)
        self.clock_offset_s = 0.0
        self.wall: t.Callable[[], float] = lambda: 1_700_000_000.0
        # the pre-flight's measurement (issue 19): the dirty rate (MiB/s) the dirtyrate stats give
        # once measured (None: startDirtyRateCalc is unsupported), how many stats queries still say
        # "measuring", the calculations started (their seconds); wr_bytes of successive blockStats
        # calls per target (the last one repeats; a target not listed has written 0 bytes);
        # memoryStats() in KiB (empty: no balloon, no rss); the calculation modes (flags) QEMU
        # refuses (e.g. the dirty bitmap of a guest with its dirty ring on), the flags started
        self.dirty_refused_flags: set[int] = set()
        self.dirty_flags: list[int] = []
        self.dirty_rate_mibps: int | None = 0
        self.dirty_measuring = 0
        self.dirty_calcs: list[int] = []
        self.block_written: dict[str, list[int]] = {}
        self.memory_stats: dict[str, int] = {}

    def _change(self, call: t.Any) -> None:
        if self.readonly:
            raise AssertionError("%r on domain %s of a read-only fake connection" % (call, self.name()))
        self.calls.append(call)

    # --- reading ---------------------------------------------------------------------------
    def name(self) -> str:
        return self._name if self._name is not None else str(_xml_text(self.xml, "name"))

    def UUIDString(self) -> str | None:  # noqa: N802 - libvirt's name
        return self._uuid if self._uuid is not None else _xml_text(self.xml, "uuid")

    def state(self) -> list[int]:
        if self.migrate3_returned and self.states_after:
            self._state, self.reason = self.states_after.pop(0) if len(self.states_after) > 1 else self.states_after[0]
        return [STATES[self._state], self.reason]

    def isActive(self) -> bool:  # noqa: N802
        return self._state not in ("nostate", "shutoff", "crashed")

    def ID(self) -> int:  # noqa: N802
        return 1 if self.isActive() else -1

    def isPersistent(self) -> bool:  # noqa: N802
        return self.persistent

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        self.flags_seen.append(flags)
        if flags & _C["VIR_DOMAIN_XML_INACTIVE"] and self.inactive_xml is not None:
            return self.inactive_xml
        return self.xml

    def info(self) -> list[int]:
        return [self.state()[0], self.memory_kib, self.memory_kib, self.vcpus, 0]

    def blockInfo(self, target: str) -> list[int]:  # noqa: N802
        return [10 * GIB, 128 * 1024 * 1024, 10 * GIB]

    def connect(self) -> "Connection | None":
        return self.conn

    def blockStats(self, target: str) -> tuple[int, int, int, int, int]:  # noqa: N802
        """(rd_req, rd_bytes, wr_req, wr_bytes, errs): wr_bytes from ``block_written``."""
        seq = self.block_written.get(target) or [0]
        value = seq.pop(0) if len(seq) > 1 else seq[0]
        return (0, 0, 0, value, 0)

    def memoryStats(self) -> dict[str, int]:  # noqa: N802
        return dict(self.memory_stats)

    def startDirtyRateCalc(self, seconds: int, flags: int = 0) -> int:  # noqa: N802
        """Starts QEMU's calculation; changes nothing of the guest (allowed on a read-only fake)."""
        if self.dirty_rate_mibps is None:
            raise LibvirtError("this function is not supported by the connection driver: virDomainStartDirtyRateCalc",
                               FAKE_ONLY["VIR_ERR_NO_SUPPORT"])
        if flags in self.dirty_refused_flags:
            raise LibvirtError("unsupported configuration: mode %d of calc-dirty-rate is not enabled" % flags,
                               FAKE_ONLY["VIR_ERR_OPERATION_UNSUPPORTED"])
        self.dirty_calcs.append(seconds)
        self.dirty_flags.append(flags)
        return 0

    # --- the guest agent -------------------------------------------------------------------
    def agent(self, command: str, timeout: int) -> str:
        """A command to the guest agent (JSON text): the reply text, or libvirt's error."""
        self.agent_commands.append(command)
        if self.agent_up is None or not self.agent_up():
            raise LibvirtError("Guest agent is not responding: QEMU guest agent is not connected",
                               _C["VIR_ERR_AGENT_UNRESPONSIVE"])
        return '{"return":{}}'

    def getTime(self, flags: int = 0) -> dict[str, int]:  # noqa: N802
        self.agent('{"execute":"guest-get-time"}', 5)
        guest = self.wall() + self.clock_offset_s
        return {"seconds": int(guest), "nseconds": int(round((guest - int(guest)) * 1e9))}

    def setTime(self, time: dict[str, int] | None = None, flags: int = 0) -> int:  # noqa: N802 # pylint: disable=redefined-outer-name
        if not isinstance(time, dict) or "seconds" not in time:  # as libvirt-python 11.3 refuses it
            raise TypeError("Dictionary must contains 'seconds'")
        self._change(("setTime", dict(time), flags))
        self.agent('{"execute":"guest-set-time"}', 5)
        if flags & _C["VIR_DOMAIN_TIME_SYNC"]:
            self.clock_offset_s = 0.0
        return 0

    def fSTrim(self, mountpoint: str | None, minimum: int, flags: int = 0) -> int:  # noqa: N802
        self._change(("fSTrim", mountpoint, minimum))
        self.agent('{"execute":"guest-fstrim"}', 5)
        return 0

    def crash(self, state: str = "shutoff", reason: int = _C["VIR_DOMAIN_SHUTOFF_CRASHED"]) -> None:
        """A guest panic as libvirt shows it with ``<on_crash>destroy``: the crashed event, then
        the domain shut off with reason crashed (events on its connection)."""
        if self.conn is not None:
            self.conn.emit(self, _C["VIR_DOMAIN_EVENT_CRASHED"], _C["VIR_DOMAIN_EVENT_CRASHED_PANICKED"])
        self._state, self.reason = state, reason

    def metadata(self, kind: int, uri: str, flags: int = 0) -> str:
        if self.metadata_xml is None:
            raise LibvirtError("metadata not found", _C["VIR_ERR_NO_DOMAIN_METADATA"])
        return self.metadata_xml

    # --- the migration job -----------------------------------------------------------------
    def jobStats(self, flags: int = 0) -> dict[str, t.Any]:  # noqa: N802
        if flags == _C["VIR_DOMAIN_JOB_STATS_COMPLETED"]:
            if self.completed_late:  # a destination that finishes a post-copy move after migrate3
                self.completed_late -= 1
                return {"type": 0}
            return self.completed or {"type": 0}
        if self.migrate3_returned:
            return self._after_migrate3()
        if not self.samples:
            return {"type": 0}
        sample = self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]
        if len(self.samples) == 1 and self.finish_after_samples:
            self.finished.set()
        return sample["stats"]

    def _after_migrate3(self) -> dict[str, t.Any]:
        """jobStats() once migrate3 returned: the lingering job, if any, else none."""
        if self.lingering_job:
            job = self.lingering_job[0]
            if isinstance(job, Exception):  # one failed query, then the next entry
                self.lingering_job.pop(0)
                raise job
            return {"type": job}
        return {"type": 0}

    # --- changes ---------------------------------------------------------------------------
    def setMetadata(self, kind: int, xml: str, key: str, uri: str, flags: int = 0) -> None:  # noqa: N802
        self._change("setMetadata")
        self.metadata_xml = xml

    def migrateSetMaxDowntime(self, ms: int, flags: int = 0) -> None:  # noqa: N802
        self._change(("migrateSetMaxDowntime", ms))

    def abortJob(self) -> None:  # noqa: N802
        self._change("abortJob")
        self.aborted = True
        self.finished.set()

    def migrateStartPostCopy(self, flags: int = 0) -> None:  # noqa: N802
        self._change("migrateStartPostCopy")
        self.finish_after_samples = True
        self.samples = self.samples[-1:]
        self.finished.set()

    def resume(self) -> None:
        self._change("resume")
        self._state = "running"

    def destroy(self) -> None:
        self._change("destroy")
        self._state = "shutoff"
        if not self.persistent and self.conn is not None:
            self.conn.remove(self)

    def undefineFlags(self, flags: int) -> None:  # noqa: N802
        self._change(("undefineFlags", flags))
        if self._state == "shutoff" and self.conn is not None:
            self.conn.remove(self)
        self.persistent = False

    def migrate3(self, dconn: "Connection", params: dict[str, t.Any], flags: int) -> "Domain":
        """The move: the incoming domain is on ``dconn`` (paused, transient) until the job ends
        (``finished``); aborted, it fails with libvirt's text, else the guest runs there."""
        try:
            return self._migrate3(dconn, params, flags)
        finally:
            self.migrate3_returned = True

    def _migrate3(self, dconn: "Connection", params: dict[str, t.Any], flags: int) -> "Domain":
        self._change(("migrate3", dict(params), flags))
        incoming = type(self)(params.get("destination_name", self.name()), self.xml, uuid=self._uuid,
                              state="paused", persistent=False, conn=dconn)
        incoming.metadata_xml = self.metadata_xml
        dconn.add(incoming)
        if self.pause_during_migration:
            self._state = "paused"
        self.finished.wait(10)
        if self.aborted:
            raise LibvirtError("operation aborted: migration out job: canceled by client")
        if self.postcopy_link_breaks and "migrateStartPostCopy" in self.calls:
            self._state, self.reason = "paused", 13  # VIR_DOMAIN_PAUSED_POSTCOPY_FAILED
            incoming._state, incoming.reason = "running", 11  # VIR_DOMAIN_RUNNING_POSTCOPY_FAILED
            dconn.alive = False
            raise LibvirtError("operation failed: job 'migration out' failed in post-copy phase")
        incoming._state = "running"
        incoming.persistent = bool(flags & _C["VIR_MIGRATE_PERSIST_DEST"])
        incoming.completed = self.completed
        incoming.completed_late = self.completed_late
        self._state = "shutoff"
        if flags & _C["VIR_MIGRATE_UNDEFINE_SOURCE"] and self.conn is not None:
            self.conn.remove(self)
        return incoming


class Volume:
    def __init__(self, path: str) -> None:
        self._path = path

    def path(self) -> str:
        return self._path


class StoragePool:
    """A pool by name (``storagePoolLookupByName``): its volumes (name -> path)."""

    def __init__(self, volumes: dict[str, str]) -> None:
        self.volumes = volumes

    def storageVolLookupByName(self, name: str) -> Volume:  # noqa: N802
        return Volume(self.volumes[name])


class PoolDef:
    """A storage pool as ``listAllStoragePools`` returns it: name, XML with its target, state."""

    def __init__(self, name: str, path: str, active: bool = True) -> None:
        self._name, self.path, self.active = name, path, active

    def name(self) -> str:
        return self._name

    def isActive(self) -> int:  # noqa: N802
        return int(self.active)

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        return ("<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>"
                % (self._name, self.path))


class Network:
    """A libvirt network (``networkLookupByName``) or a host interface."""

    def __init__(self, active: bool, bridge: str = "virbr0") -> None:
        self.active, self.bridge = active, bridge

    def isActive(self) -> bool:  # noqa: N802
        return self.active

    def bridgeName(self) -> str:  # noqa: N802
        return self.bridge


class Connection:
    """One virConnect.

    :param uri: ``getURI()``.
    :param domains: :class:`Domain` objects (a dict: its values), each told its connection.
    :param caps: ``getCapabilities()`` XML; ``domcaps``: ``{virttype: domain capabilities XML}``;
        ``baseline``: what ``baselineHypervisorCPU`` returns.
    :param lib_version, version: ``getLibVersion()``, ``getVersion()`` (QEMU).
    :param mem_stats: ``getMemoryStats()`` (KiB; None: a non-libvirt error, as a driver without
        it); ``free_memory``: ``getFreeMemory()`` (bytes); ``hostname``: ``getHostname()``.
    :param pools: ``{pool: {volume: path}}`` for ``storagePoolLookupByName``; ``pool_dirs``:
        ``{pool: target directory}`` for ``listAllStoragePools``.
    :param networks: ``{name: Network}``; ``interfaces``: host interface names;
        ``interface_driver=False``: a libvirtd without an interface backend (as in the lab).
    :param readonly: every changing call (``defineXML``, the domains' changes) fails.
    """

    def __init__(self, uri: str = "test:///fake", domains: t.Iterable[Domain] | dict[str, Domain] = (), *,
                 caps: str | None = None, domcaps: dict[str, str] | None = None, baseline: str | None = None,
                 lib_version: int = 11003000, version: int = 10000000, hostname: str = "localhost",
                 mem_stats: dict[str, int] | None = None, free_memory: int | None = None,
                 node_info: list[t.Any] | None = None,
                 pools: dict[str, dict[str, str]] | None = None, pool_dirs: dict[str, str] | None = None,
                 networks: dict[str, Network] | None = None, interfaces: t.Iterable[str] = (),
                 interface_driver: bool = True, readonly: bool = False) -> None:
        self.uri = uri
        self.caps_xml, self.domcaps_xml, self.baseline = caps, dict(domcaps or {}), baseline
        self.lib_version, self.version, self.hostname = lib_version, version, hostname
        self.mem_stats, self.free_memory = mem_stats, free_memory
        self.node_info = node_info or ["x86_64", 24000, 2, 2000, 1, 1, 2, 1]
        self.pools, self.pool_dirs = pools or {}, pool_dirs or {}
        self.nets, self.ifaces, self.interface_driver = dict(networks or {}), list(interfaces), interface_driver
        self.readonly = readonly
        self.alive = True
        self.closed = False
        self.defined: list[str] = []  # every defineXML
        self.calls: list[tuple[t.Any, ...]] = []  # the CPU queries
        self.domains: list[Domain] = []
        # lifecycle callbacks (domainEventRegisterAny); events=False: no event loop is registered
        self.events = True
        self.callbacks: dict[int, t.Any] = {}
        for dom in (domains.values() if isinstance(domains, dict) else domains):
            self.add(dom)

    def domainEventRegisterAny(self, dom: t.Any, event_id: int, callback: t.Any, opaque: t.Any) -> int:  # noqa: N802
        if not self.events:
            raise LibvirtError("internal error: could not initialize domain event timer")
        cid = len(self.callbacks) + 1
        self.callbacks[cid] = (callback, opaque)
        return cid

    def domainEventDeregisterAny(self, cid: int) -> None:  # noqa: N802
        self.callbacks.pop(cid, None)

    def emit(self, dom: "Domain", event: int, detail: int) -> None:
        """A lifecycle event of ``dom``, delivered to every registered callback."""
        for callback, opaque in list(self.callbacks.values()):
            callback(self, dom, event, detail, opaque)

    def add(self, dom: Domain) -> None:
        dom.conn = self
        dom.readonly = dom.readonly or self.readonly
        self.domains.append(dom)

    def remove(self, dom: Domain) -> None:
        self.domains.remove(dom)

    def getURI(self) -> str:  # noqa: N802
        return self.uri

    def isAlive(self) -> bool:  # noqa: N802
        return self.alive

    def close(self) -> None:
        self.closed = True

    # --- domains ---------------------------------------------------------------------------
    def listAllDomains(self, flags: int = 0) -> list[Domain]:  # noqa: N802
        return list(self.domains)

    def domainListGetStats(self, doms: list[Domain], stats: int, flags: int = 0) -> list[tuple[Domain, dict[str, t.Any]]]:  # noqa: N802
        """The ``dirtyrate`` group only (VIR_DOMAIN_STATS_DIRTYRATE): unstarted, measuring for
        ``dirty_measuring`` queries, then measured with ``dirty_rate_mibps``."""
        assert stats == _C["VIR_DOMAIN_STATS_DIRTYRATE"], stats
        out = []
        for dom in doms:
            status = 0 if not dom.dirty_calcs else 1 if dom.dirty_measuring > 0 else 2
            dom.dirty_measuring -= 1 if status == 1 else 0
            params: dict[str, t.Any] = {"dirtyrate.calc_status": status}
            if status == 2:
                params.update({"dirtyrate.calc_period": dom.dirty_calcs[-1],
                               "dirtyrate.megabytes_per_second": dom.dirty_rate_mibps})
            out.append((dom, params))
        return out

    def _lookup(self, method: str, key: str, what: str) -> Domain:
        for dom in self.domains:
            if getattr(dom, method)() == key:
                return dom
        raise LibvirtError("Domain not found: no domain with matching %s '%s'" % (what, key),
                           _C["VIR_ERR_NO_DOMAIN"])

    def lookupByName(self, name: str) -> Domain:  # noqa: N802
        return self._lookup("name", name, "name")

    def lookupByUUIDString(self, uuid: str) -> Domain:  # noqa: N802
        return self._lookup("UUIDString", uuid, "uuid")

    def defineXML(self, xml: str) -> None:  # noqa: N802
        if self.readonly:
            raise AssertionError("defineXML on a read-only fake connection")
        self.defined.append(xml)
        name = _xml_text(xml, "name")
        for dom in self.domains:
            if dom.name() == name:
                dom.xml = xml

    # --- the host --------------------------------------------------------------------------
    def getCapabilities(self) -> str | None:  # noqa: N802
        return self.caps_xml

    def getDomainCapabilities(self, emulator: str, arch: str, machine: str, virttype: str,  # noqa: N802
                              flags: int = 0) -> str:
        self.calls.append(("domcaps", virttype, machine))
        return self.domcaps_xml[virttype]

    def facts(self, virttype: str) -> _cpu.HostFacts:
        """:class:`_cpu.HostFacts` of this host for ``virttype`` (parsed from its fixtures)."""
        return _cpu.HostFacts(self.uri, _cpu.parse_capabilities(self.caps_xml),
                              _cpu.parse_domcapabilities(self.domcaps_xml[virttype]))

    #: CPU feature names libvirt does not know (it fails on them before anything else)
    KNOWN_UNKNOWN = {"arch-facilities", "no-such-feature"}

    def compareHypervisorCPU(self, emulator: str, arch: str, machine: str, virttype: str,  # noqa: N802
                             xml: str, flags: int) -> int:
        """Follows libvirt's order of checks (machine, unknown names, vendor, missing features)
        and raises with libvirt's texts (captured on the lab machine, see the fixtures' README)."""
        self.calls.append(("compare", virttype, machine, flags))
        assert flags == _C["VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE"]
        facts = self.facts(virttype)
        if machine and machine not in facts.caps.machines(arch):
            raise LibvirtError("invalid argument: the machine '%s' is not supported by emulator "
                               "'/usr/bin/qemu-system-x86_64'" % machine, _C["VIR_ERR_INVALID_ARG"])
        cpu = _cpu.parse_guest_cpu(xml)
        for name, _policy in cpu.features:
            if name in self.KNOWN_UNKNOWN:
                raise LibvirtError("internal error: Unknown CPU feature %s" % name, _C["VIR_ERR_INTERNAL_ERROR"])
        info = facts.domcaps.models.get(cpu.model)
        if cpu.model and info is None:
            raise LibvirtError("internal error: Unknown CPU model %s" % cpu.model, _C["VIR_ERR_INTERNAL_ERROR"])
        if cpu.vendor and cpu.vendor != facts.vendor:
            raise LibvirtError("the CPU is incompatible with host CPU: host CPU vendor does "
                               "not match required CPU vendor %s" % cpu.vendor, _C["VIR_ERR_CPU_INCOMPATIBLE"])
        have = facts.feature_set()
        disabled = cpu.feature_names(("disable", "forbid"))
        missing = [n for n in (info.blockers if info and info.usable == "no" else [])
                   if n not in disabled]
        if info and info.usable == "no" and not info.blockers:
            missing.append("(model %s)" % cpu.model)
        missing += [n for n in cpu.feature_names() if n not in have and n not in missing]
        if missing:
            raise LibvirtError("the CPU is incompatible with host CPU: Host CPU does not "
                               "provide required features: %s" % ", ".join(missing), _C["VIR_ERR_CPU_INCOMPATIBLE"])
        return _C["VIR_CPU_COMPARE_SUPERSET"]

    def baselineHypervisorCPU(self, emulator: str, arch: str, machine: str, virttype: str,  # noqa: N802
                              xmls: list[str], flags: int) -> str | None:
        self.calls.append(("baseline", virttype, len(xmls), flags))
        assert flags == _C["VIR_CONNECT_BASELINE_CPU_MIGRATABLE"]
        return self.baseline

    def getHostname(self) -> str:  # noqa: N802
        return self.hostname

    def getInfo(self) -> list[t.Any]:  # noqa: N802
        return self.node_info

    def getLibVersion(self) -> int:  # noqa: N802
        return self.lib_version

    def getVersion(self) -> int:  # noqa: N802
        return self.version

    def getFreeMemory(self) -> int:  # noqa: N802
        if self.free_memory is None:
            raise RuntimeError("getFreeMemory is not faked here")  # not a libvirt error: propagates
        return self.free_memory

    def getMemoryStats(self, cell: int, flags: int) -> dict[str, int]:  # noqa: N802
        if self.mem_stats is None:
            raise RuntimeError("not supported")  # not a libvirt error: must propagate
        return self.mem_stats

    # --- storage ---------------------------------------------------------------------------
    def listAllStoragePools(self, flags: int = 0) -> list[PoolDef]:  # noqa: N802
        return [PoolDef(name, path) for name, path in self.pool_dirs.items()]

    def storagePoolLookupByName(self, name: str) -> StoragePool:  # noqa: N802
        return StoragePool(self.pools[name])

    def storageVolLookupByPath(self, path: str) -> Volume:  # noqa: N802
        raise LibvirtError("Storage volume not found", _C["VIR_ERR_NO_STORAGE_VOL"])

    # --- networks --------------------------------------------------------------------------
    def networkLookupByName(self, name: str) -> Network:  # noqa: N802
        if name not in self.nets:
            raise LibvirtError("Network not found: no network with matching name '%s'" % name,
                               _C["VIR_ERR_NO_NETWORK"])
        return self.nets[name]

    def interfaceLookupByName(self, name: str) -> Network:  # noqa: N802
        if not self.interface_driver:
            raise LibvirtError("this function is not supported by the connection driver: "
                               "virInterfaceLookupByName", _C["VIR_ERR_NO_SUPPORT"])
        if name not in self.ifaces:
            raise LibvirtError("Interface not found: no interface with matching name '%s'" % name,
                               _C["VIR_ERR_NO_INTERFACE"])
        return Network(True)

    def listAllNetworks(self, flags: int = 0) -> list[Network]:  # noqa: N802
        return list(self.nets.values())


# --- the hosts of the CPU fixtures -----------------------------------------------------------

LAB = "qemu:///system"
HOSTB = "qemu+ssh://root@198.18.0.2/system"
INTEL = "qemu+ssh://root@intel1/system"
ROME = "qemu+ssh://root@rome1/system"
#: the host UUID in lab-amd-capabilities.xml
LAB_UUID = "8d9ddfc6-4b76-406e-8682-a4f88451c69d"


def cpu_fixture(name: str) -> str:
    with open(os.path.join(CPU_FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def _cpu_host(uri: str, caps: str, domcaps: dict[str, str], **kw: t.Any) -> Connection:
    return Connection(uri, kw.pop("domains", ()), caps=cpu_fixture(caps),
                      domcaps={k: cpu_fixture(v) for k, v in domcaps.items()}, **kw)


def lab_conn(uri: str = LAB, **kw: t.Any) -> Connection:
    """The lab machine (AMD, libvirt 11.3): kvm and qemu domain capabilities."""
    return _cpu_host(uri, "lab-amd-capabilities.xml",
                     {"kvm": "lab-amd-domcaps-kvm.xml", "qemu": "lab-amd-domcaps-qemu.xml"}, **kw)


def intel_conn(uri: str = INTEL, **kw: t.Any) -> Connection:
    """An Intel Cascade Lake host."""
    return _cpu_host(uri, "intel-cascadelake-capabilities.xml", {"kvm": "intel-cascadelake-domcaps-kvm.xml"}, **kw)


def rome_conn(uri: str = ROME, **kw: t.Any) -> Connection:
    """An AMD Rome host."""
    return _cpu_host(uri, "amd-rome-capabilities.xml", {"kvm": "amd-rome-domcaps-kvm.xml"}, **kw)


def connector(conns: Connection | dict[str, Connection]) -> t.Callable[..., t.Any]:
    """A ``connect(uri, readonly=False)`` context manager: one connection for every URI, or the
    connection of ``uri`` in a dict (an unknown URI fails as :func:`_libvirt.connection` does,
    with :class:`KvmopsError`)."""
    @contextlib.contextmanager
    def connect(uri: str, readonly: bool = False) -> t.Iterator[Connection]:
        if not isinstance(conns, dict):
            yield conns
            return
        if uri not in conns:
            raise KvmopsError("Could not connect to libvirt at %s." % uri)
        yield conns[uri]
    return connect
