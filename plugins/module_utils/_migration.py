# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libvirt driver of one live (or offline) migration: reads the guest and the destination,
runs ``virDomainMigrate3`` in a worker thread while polling the job, escalates (max downtime,
abort, post-copy, closing the data connections of a cut link), recovers after a failure and reads
the result statistics. The plan it executes is :mod:`_migration_plan`; the pure job monitor is
:mod:`_migration_monitor`.

Why ``virDomainMigrate3`` with an explicit destination connection
-----------------------------------------------------------------
libvirt offers ``dom.migrateToURI3(dconnuri, params, flags)`` (peer-to-peer: the source
daemon opens the destination connection itself) and ``dom.migrate3(dconn, params, flags)``
(managed direct: this process holds both connections and drives Begin/Prepare/Perform/Finish/
Confirm). We use ``migrate3`` because holding ``dconn`` lets us, on the very same connection
libvirt uses for the move:

- look the guest up on the destination by name and by UUID before anything moves (case C11);
- see exactly what appeared on the destination during this run and remove it after a failure
  (a paused incoming domain, a definition), and nothing that existed before;
- read the completed job statistics from the destination domain after ``UNDEFINE_SOURCE`` made
  the source domain vanish (libvirt hands them over in the migration cookie since 1.2.9).

The cost: this process must stay alive for the whole migration (it is the Ansible module on the
source host, so it does), and it needs a libvirt connection to the destination from the source
host (``qemu+ssh://root@<address>/system`` by default, ``qemu+tls://`` supported).

Threads, keepalive and a cut link
---------------------------------
``migrate3`` blocks until the job ends, so it runs in a worker thread while the main thread
polls ``dom.jobStats()`` on the same source connection (libvirt connections are thread-safe and
libvirt-python releases the GIL during calls; ``virsh migrate --verbose`` works the same way).
The connection helper (``_libvirt.connection``) runs libvirt's event loop and turns on client
keepalive for remote URIs, so a destination whose libvirtd died or whose network is cut closes
``dconn``; the monitor then aborts the job (``abortJob`` on the source, whose connection is
local). On a link that drops packets, the abort itself waits for the data already sent to the
destination: ``sever_after_s`` after the abort, the source QEMU's data connections to the
destination are closed (:mod:`_sockets`), which ends the job within seconds instead of when TCP
gives up (minutes), with the guest still running on the source. From then on, while the job
still stands, the abort is sent again every :data:`REABORT_EVERY_S` (:class:`_Reabort`): libvirt
11.3 with QEMU 10.0 was seen keeping the cancelled job (and ``migrate3`` blocked) for minutes,
even after the link was back, with QEMU's mirror job already concluded and no connection left;
a second ``virDomainAbortJob`` ended it at once.

libvirt API relied on: ``virDomainMigrate3``, ``virDomainGetJobStats`` (with and without
``VIR_DOMAIN_JOB_STATS_COMPLETED``), ``virDomainAbortJob``, ``virDomainMigrateStartPostCopy``,
``virDomainMigrateSetMaxDowntime``, ``virDomainGetState``, ``virDomainGetInfo``,
``virDomainGetBlockInfo``, ``virDomainGetXMLDesc``, ``virDomainSetMetadata``/
``virDomainGetMetadata``, ``virDomainResume``, ``virDomainDestroy``, ``virDomainUndefineFlags``,
``virDomainLookupByName``/``ByUUIDString``. See https://libvirt.org/html/libvirt-libvirt-domain.html
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
import typing as t
import uuid as uuidlib

from ansible_collections.kvmops.migration.plugins.module_utils import _convergence
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _health
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _nvram
from ansible_collections.kvmops.migration.plugins.module_utils import _postcopy
from ansible_collections.kvmops.migration.plugins.module_utils import _runner
from ansible_collections.kvmops.migration.plugins.module_utils import _sockets
from ansible_collections.kvmops.migration.plugins.module_utils import _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError
from ansible_collections.kvmops.migration.plugins.module_utils._migration_monitor import MigrationMonitor, completed_summary, progress_text, timing, wait_for
from ansible_collections.kvmops.migration.plugins.module_utils._migration_plan import (
    RUNNING_STATES, MigrationOptions, MigrationPlan, build_dest_uri, build_plan, check_unchanged, classify_destination)

#: XML namespace of the marker this collection puts into the live XML of a guest it migrates.
METADATA_URI = "https://kvmops.invalid/migration/1"
METADATA_KEY = "kvmops"


# --------------------------------------------------------------------------------------------
# Talking to libvirt
# --------------------------------------------------------------------------------------------

def _call(lv: t.Any, action: str, where: str, func: t.Callable[..., t.Any], *args: t.Any) -> t.Any:
    """``func(*args)``; a libvirt error becomes :class:`KvmopsError` naming action and host."""
    try:
        return func(*args)
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        raise KvmopsError("Could not %s on %s." % (action, where),
                          detail=_libvirt.libvirt_error_detail(err)) from err


def describe(dom: t.Any, lv: t.Any, where: str = "the host") -> dict[str, t.Any]:
    """``{name, uuid, state, reason, active, persistent, ours, run}`` of a domain.

    Every libvirt call (``virDomainGetName``/``GetUUIDString``/``GetState``/``IsActive``/
    ``IsPersistent``) goes through :func:`_call`.

    :param where: the host in error messages (URI or inventory address).
    :raises KvmopsError: libvirt could not read the domain (a broken connection, a domain that
        vanished meanwhile), naming the host; libvirt's message as detail.
    """
    name = str(_call(lv, "read the name of a domain", where, dom.name))
    action = "read domain %s" % name
    state, reason = _call(lv, action, where, dom.state)
    info = {"name": name, "uuid": _call(lv, action, where, dom.UUIDString),
            "state": _libvirt.state_name(lv, state), "reason": reason,
            "active": bool(_call(lv, action, where, dom.isActive)),
            "persistent": bool(_call(lv, action, where, dom.isPersistent)), "ours": False, "run": None}
    marker = read_marker(dom, lv)
    if marker is not None:
        info["ours"] = True
        info["run"] = marker
    return info


def read_marker(dom: t.Any, lv: t.Any) -> str | None:
    """The run id in this collection's metadata element of the live XML, or None."""
    kind = _libvirt.const(lv, "VIR_DOMAIN_METADATA_ELEMENT")
    if kind is None:
        return None
    try:
        text = dom.metadata(kind, METADATA_URI, _libvirt.const(lv, "VIR_DOMAIN_AFFECT_LIVE") or 0)
    except Exception as err:
        if _libvirt.is_libvirt_error(err, lv):
            return None
        raise
    marker = 'run="'
    start = text.find(marker)
    if start < 0:
        return None
    end = text.find('"', start + len(marker))
    return text[start + len(marker):end] if end > start else None


def write_marker(dom: t.Any, run_id: str, source: str, lv: t.Any) -> bool:
    """Mark the live guest as being migrated by this run (``<kvmops:migration run=...>`` in
    ``<metadata>``, live XML only; it travels with the guest). Best effort: False if refused."""
    kind = _libvirt.const(lv, "VIR_DOMAIN_METADATA_ELEMENT")
    if kind is None:
        return False
    xml = '<migration run="%s" source="%s" started="%d"/>' % (
        run_id, source.replace('"', ""), int(time.time()))
    try:
        dom.setMetadata(kind, xml, METADATA_KEY, METADATA_URI,
                        _libvirt.const(lv, "VIR_DOMAIN_AFFECT_LIVE") or 0)
    except Exception as err:
        if _libvirt.is_libvirt_error(err, lv):
            return False
        raise
    return True


def source_facts(dom: t.Any, lv: t.Any, where: str = "the source") -> dict[str, t.Any]:
    """Facts :func:`build_plan` needs, read from the source domain.

    Memory is the maximum memory (``virDomainGetInfo``, KiB -> bytes); ``disk_bytes`` the
    allocation and ``disk_capacity`` the virtual size (None: unreadable) of each copy candidate
    (``virDomainGetBlockInfo``), only for an active guest; ``cpu_fingerprint`` that of the
    ``<cpu>`` the destination receives (:func:`_domain_xml.cpu_fingerprint` of the migratable
    live XML, of the persistent one for a shut-off guest); ``nvram`` the NVRAM file its XML names
    (:func:`_domain_xml.nvram_of`: ``{path, template, format}``).
    """
    info = describe(dom, lv, where)
    action = "read domain %s" % info["name"]
    xml = _call(lv, action, where, dom.XMLDesc, 0)
    if info["active"]:
        # the migratable live XML (secure: keeps graphics passwords) is the base of a destination XML
        flags = (_libvirt.const(lv, "VIR_DOMAIN_XML_MIGRATABLE") or 0) | (_libvirt.const(lv, "VIR_DOMAIN_XML_SECURE") or 0)
        info["migratable_xml"] = _call(lv, action, where, dom.XMLDesc, flags)
    disk_list = _domain_xml.disks(xml)
    info["disks"] = disk_list
    # the guest agent's channel state before the move: an agent that ran must answer after it
    info["agent"] = _domain_xml.agent_channel_state(xml) if info["active"] else None
    info["cpu_fingerprint"] = _domain_xml.cpu_fingerprint(info.get("migratable_xml") or xml)
    info["nvram"] = _domain_xml.nvram_of(xml)
    info["memory_bytes"] = int(_call(lv, action, where, dom.info)[1]) * 1024
    sizes: dict[str, int] = {}
    capacity: dict[str, int | None] = {}
    if info["active"]:
        for disk in disk_list:
            if disk.get("copy") and disk.get("target"):
                try:
                    block = dom.blockInfo(disk["target"])
                    sizes[disk["target"]] = int(block[1])
                    capacity[disk["target"]] = int(block[0])
                except Exception as err:
                    if not _libvirt.is_libvirt_error(err, lv):
                        raise
                    sizes[disk["target"]] = 0
                    capacity[disk["target"]] = None
    info["disk_bytes"] = sizes
    info["disk_capacity"] = capacity
    return info


class _Worker(threading.Thread):
    """Runs ``dom.migrate3(dconn, params, flags)``; keeps the result or the exception."""

    def __init__(self, dom: t.Any, dconn: t.Any, params: dict[str, t.Any], flags: int,
                 clock: t.Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="kvmops-migrate3", daemon=True)
        self.dom, self.dconn, self.params, self.flags, self.clock = dom, dconn, params, flags, clock
        self.result: t.Any = None
        self.error: BaseException | None = None
        #: ``clock`` when ``migrate3`` returned (the switch-over, to within libvirt's Finish/Confirm)
        self.ended: float | None = None

    def run(self) -> None:
        try:
            self.result = self.dom.migrate3(self.dconn, self.params, self.flags)
        except BaseException as err:  # handed to the main thread, which reports it
            self.error = err
        finally:
            self.ended = self.clock()


@dataclasses.dataclass
class Runtime:
    """Injectable clock, sleep, libvirt namespace and command runner (tests use fakes)."""

    lv: t.Any = None
    clock: t.Callable[[], float] = time.monotonic
    sleep: t.Callable[[float], None] = time.sleep
    log: t.Callable[[str], None] = lambda msg: None
    progress: t.Callable[[dict[str, t.Any]], None] = lambda sample: None
    runner: _runner.Runner = dataclasses.field(default_factory=_runner.SubprocessRunner)
    #: wall-clock time (epoch seconds), for certificate validity
    now: t.Callable[[], float] = time.time
    #: this host's TLS material (:func:`_tls.read_host_tls`)
    tls_material: t.Callable[[], dict[str, t.Any]] = _tls.read_host_tls
    #: size and SHA-256 of a file on this host (:func:`_nvram.read_nvram`)
    read_nvram: t.Callable[..., dict[str, t.Any] | None] = _nvram.read_nvram
    #: a libvirt connection as a context manager (:func:`_libvirt.connection`): the destination
    #: connection opened again after a post-copy move that lost the first one
    connect: t.Callable[[str], t.ContextManager[t.Any]] = _libvirt.connection

    def pause(self, worker: threading.Thread) -> t.Callable[[float], None]:
        """The sleep of the waits while ``worker`` runs ``migrate3``: with the real clock it is
        ``worker.join(timeout)``, which returns as soon as the call has returned, so the end of the
        job is seen at once rather than on the next poll; an injected ``sleep`` (tests' fake
        clocks) is used as it is."""
        if self.sleep is time.sleep:
            return worker.join
        return self.sleep


def resolve_transport(opts: MigrationOptions, *, live: bool, name: str, rt: Runtime) -> _tls.Transport:
    """Which transport protects this move (:func:`_tls.decide`), from the source's own TLS
    material (:func:`_tls.read_host_tls`; the destination's is checked by the pre-flight).

    :raises KvmopsError: the streams would cross unencrypted without
        ``allow_insecure_transport`` (tls false, or auto without usable certificates), TLS asked
        without usable certificates, or an insecure destination URI; before anything changes.
    """
    dest_uri = opts.dest_uri or build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    faults: list[_tls.Fault] = []
    if live and opts.tls is not False:
        faults = _tls.pair_faults(rt.tls_material(), None, src_label="the source", dst_label=opts.dest_host,
                                  dest_name="", now=rt.now())
    decided = _tls.decide(opts.tls, opts.allow_insecure_transport, live=live,
                          copies_disks=opts.copy_storage != "none", dest_uri=dest_uri, faults=faults,
                          insecure_var="allow_insecure_transport")
    errors = [item[2] for item in decided.findings if item[0] == "error"]
    if errors:
        raise KvmopsError("Refusing to move %s to %s, nothing was changed: %s" % (
            name, opts.dest_host, " ".join(errors)), values={"transport": decided.as_result()})
    return decided


def migrate_domain(opts: MigrationOptions, sconn: t.Any, dconn: t.Any, *, check_mode: bool = False,
                   rt: Runtime | None = None) -> dict[str, t.Any]:
    """Move one guest from ``sconn`` (source) to ``dconn`` (destination), safely.

    Reads the source guest and the destination (C11), builds the plan, refuses a guest that
    changed since the pre-flight (:func:`check_unchanged`; check mode too), and unless check mode:
    removes an owned leftover when asked, marks the guest, runs ``migrate3`` in a worker thread
    while polling job statistics (progress, max downtime, completion timeout with abort or
    post-copy), then verifies where the guest runs and reads the completed statistics.

    :returns: ``{changed, state: migrated|already_migrated|planned, domain, uuid, source,
        destination, now_on, dest_state, plan, stats: {...}, progress, warnings, msg}``.
    :raises KvmopsError: on any failure, after recovery (source resumed, nothing left on the
        destination by this run), naming the phase and host, libvirt's message as detail.
    """
    rt = rt or Runtime()
    lv = _libvirt.binding(rt.lv)
    opts.validate()
    src_where = str(_libvirt.uri_of(sconn, "the host"))
    dest_label = opts.dest_host
    dom = _libvirt.find_domain(sconn, opts.domain, lv=lv)
    source = source_facts(dom, lv, src_where) if dom is not None else None

    dest_name = opts.dest_name or (source["name"] if source else opts.domain)
    d_by_name = _libvirt.find_domain(dconn, dest_name, by="name", lv=lv)
    uuid_key = source["uuid"] if source else (opts.domain if _libvirt.looks_like_uuid(opts.domain)
                                              else None)
    d_by_uuid = _libvirt.find_domain(dconn, uuid_key, by="uuid", lv=lv) if uuid_key else None
    by_name = describe(d_by_name, lv, dest_label) if d_by_name is not None else None
    by_uuid = describe(d_by_uuid, lv, dest_label) if d_by_uuid is not None else None
    if source is not None and _postcopy.in_postcopy(source, lv):
        return _postcopy_rerun(opts, dom, source, rt, lv, src_where=src_where, check_mode=check_mode)
    decision = classify_destination(source, by_name, by_uuid, dest_name=dest_name, dest=dest_label,
                                    cleanup_leftover=opts.cleanup_leftover)
    base = {"domain": source["name"] if source else dest_name,
            "uuid": source["uuid"] if source else (by_uuid or by_name or {}).get("uuid"),
            "source": src_where, "destination": opts.dest_host, "case": decision.case}
    if decision.action == "fail":
        raise KvmopsError(decision.msg, values={"case": decision.case, "source": source and {
            k: source[k] for k in ("name", "uuid", "state")}, "dest_by_name": by_name,
            "dest_by_uuid": by_uuid})
    if decision.action == "noop":
        guest = by_uuid or by_name or {}
        return dict(base, changed=False, state="already_migrated", now_on=opts.dest_host,
                    dest_state=guest.get("state"), msg=decision.msg, warnings=[])

    if source is None:  # pragma: no cover - classify_destination never migrates without one
        raise KvmopsError("Guest %s is not on the source." % opts.domain)
    transport = resolve_transport(opts, live=bool(source["active"]), name=source["name"], rt=rt)
    opts = dataclasses.replace(opts, tls=transport.tls)
    plan = build_plan(opts, source, lv)
    check_unchanged(opts, source, plan)
    if not plan.disks and transport.disks != "none":
        transport.disks = "none"
    result = dict(base, plan=plan.as_result(), transport=transport.as_result(),
                  warnings=list(plan.warnings) + [item[2] for item in transport.findings
                                                  if item[0] == "warning"])
    if decision.action == "cleanup_then_migrate":
        result["warnings"].append(decision.msg)
    health_opts = _health.HealthOptions.from_params(opts.health)
    if source["active"]:
        result["plan"]["health"] = _health.plan_words(health_opts, source.get("agent"))
    if check_mode:
        return dict(result, changed=True, state="planned", now_on=src_where,
                    msg="Would migrate %s to %s (%s)." % (
                        source["name"], opts.dest_host, ", ".join(plan.flag_names)))

    if decision.action == "cleanup_then_migrate":
        _remove_leftover(d_by_uuid, by_uuid, dest_label, lv)
        by_uuid = None
    dest_existed = by_uuid is not None  # an inactive definition the migration replaces
    run_id = uuidlib.uuid4().hex
    marked = source["active"] and write_marker(dom, run_id, src_where, lv)
    if source["active"] and not marked:
        result["warnings"].append("Could not mark the guest with kvmops metadata: a leftover of this "
                                  "run could not be recognised as ours later.")
    was_running = source["state"] in RUNNING_STATES
    rt.log("kvmops.migration: migrating %s to %s flags=%s params=%s" % (
        source["name"], plan.dest_uri, ",".join(plan.flag_names), sorted(plan.params)))

    # registered before the switch-over, so a panic right after it is seen (the incoming domain's
    # events arrive on the destination connection)
    watch = (_health.PanicWatch(rt.clock).start(dconn, source["uuid"], lv)
             if source["active"] and health_opts.enabled else None)
    try:
        return _migrate_and_check(opts, sconn, dconn, dom, source, plan, result, rt, lv, watch, health_opts,
                                  dest_existed=dest_existed, was_running=was_running, src_where=src_where)
    finally:
        if watch is not None:
            watch.stop()


def _postcopy_rerun(opts: MigrationOptions, dom: t.Any, source: dict[str, t.Any], rt: Runtime, lv: t.Any, *,
                    src_where: str, check_mode: bool) -> dict[str, t.Any]:
    """A run that finds the source guest in post-copy (:func:`_postcopy.in_postcopy`: an earlier
    move broke its link after the switch, or still runs): no new move and nothing removed; the
    earlier move is waited for (:func:`_finish_postcopy`). Check mode only says so (``state: planned``)."""
    phase = _postcopy.in_postcopy(source, lv)
    if _postcopy.SIDES.get((source["state"], source["reason"])) == "destination":
        raise KvmopsError("Guest %s is in post-copy on this host (%s), the destination of an interrupted move, and "
                          "waits for its memory from that move's source: nothing was touched. Never destroy it here; "
                          "run the move (or 'virsh domjobinfo %s') on its source." % (source["name"], src_where,
                                                                                      source["name"]))
    plan = build_plan(opts, source, lv)
    base = {"domain": source["name"], "uuid": source["uuid"], "source": src_where, "destination": opts.dest_host,
            "case": "postcopy_%s" % phase, "plan": plan.as_result(), "warnings": list(plan.warnings)}
    if check_mode:
        return dict(base, changed=True, state="planned", now_on=src_where,
                    msg="Guest %s is in %s post-copy towards %s: would wait for that move to end, nothing else." % (
                        source["name"], phase, opts.dest_host))
    return _finish_postcopy(opts, dom, source, plan, base, [], rt, lv, src_where=src_where,
                            detail="found in %s post-copy by this run" % phase, last=None, reason=None)


def _migrate_and_check(opts: MigrationOptions, sconn: t.Any, dconn: t.Any, dom: t.Any, source: dict[str, t.Any],
                       plan: MigrationPlan, result: dict[str, t.Any], rt: Runtime, lv: t.Any,
                       watch: _health.PanicWatch | None, health_opts: _health.HealthOptions, *,
                       dest_existed: bool, was_running: bool, src_where: str) -> dict[str, t.Any]:
    """The part of :func:`migrate_domain` from ``migrate3`` on: run and watch the job, recover
    after a failure, read the result and check the guest's health on the destination."""
    dest_label = opts.dest_host
    ladder = _convergence.Ladder(_convergence.options_for(opts, plan))  # it sets the max downtime, not the monitor
    monitor = MigrationMonitor(plan.timeout_s, plan.timeout_action, None, opts.abort_grace_s, lv)
    worker = _Worker(dom, dconn, plan.params, plan.flags, rt.clock)
    worker.start()
    notes: list[str] = []
    severed: list[dict[str, t.Any]] = []  # at most one entry: what closing the data connections did
    reabort = _Reabort(dom, opts, rt, notes, lv)

    def check(elapsed: float) -> t.Any:
        if not worker.is_alive():
            return "done"
        # (in post-copy, also one started by hand, nothing is aborted: the destination runs the
        # guest; see _finish_postcopy)
        if (monitor.aborted_at is None and monitor.postcopy_at is None and not _libvirt.is_alive(dconn)
                and _postcopy.source_phase(dom, lv) not in _postcopy.IN_POSTCOPY):
            # keepalive closed the destination connection (_libvirt.KEEPALIVE_*): its libvirtd
            # died or the network to it is cut; the migration cannot finish, so stop it now
            monitor.aborted_at = elapsed
            monitor.reason = ("the connection to libvirtd on %s was lost: libvirtd there stopped, or the "
                              "network between the hosts is cut" % opts.dest_host)
            rt.log("kvmops.migration: %s: aborting" % monitor.reason)
            _abort(dom, notes, lv)
            return None
        if (monitor.aborted_at is not None and monitor.postcopy_at is None and not severed
                and opts.sever_after_s is not None and elapsed - monitor.aborted_at >= opts.sever_after_s):
            severed.append(_sever(plan, opts, source["name"], rt, notes))
        if monitor.aborted_at is not None and monitor.postcopy_at is None:
            reabort.maybe(elapsed - monitor.aborted_at)
        if (monitor.aborted_at is not None and monitor.postcopy_at is None
                and elapsed - monitor.aborted_at > monitor.abort_grace_s):
            # also when jobStats() keeps failing (the abort holds the domain's job lock)
            return "stuck"
        try:
            stats = dom.jobStats()
        except Exception as err:  # the job may end between is_alive() and jobStats()
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            return None
        action = monitor.observe(stats, elapsed)
        if monitor.last is not None and monitor.last["active"]:
            rt.progress(monitor.last)
        if action == "wait" and monitor.last is not None and monitor.postcopy_at is None and monitor.aborted_at is None \
                and _convergence.drive(ladder, dom, monitor.last, notes, rt.log, lv):
            monitor.postcopy_at, monitor.reason = elapsed, ladder.reason
        if action == "set_downtime":
            try:
                dom.migrateSetMaxDowntime(int(plan.max_downtime_ms or 0), 0)
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                notes.append("max_downtime_ms not applied: %s" % _libvirt.libvirt_error_detail(err))
        elif action == "postcopy":
            rt.log("kvmops.migration: %s" % monitor.reason)
            try:
                dom.migrateStartPostCopy(0)
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                monitor.postcopy_at = None
                monitor.aborted_at = elapsed
                monitor.reason = "%s; post-copy refused (%s), aborted instead" % (
                    monitor.reason, _libvirt.libvirt_error_detail(err))
                _abort(dom, notes, lv)
        elif action == "abort":
            rt.log("kvmops.migration: %s: aborting" % monitor.reason)
            _abort(dom, notes, lv)
        elif action == "give_up":
            return "stuck"
        return None

    hard_deadline = None
    if plan.timeout_s is not None:
        hard_deadline = plan.timeout_s + opts.abort_grace_s + 10 * max(opts.poll_interval_s, 1.0)
        if plan.timeout_action == "postcopy" or ladder.opts.postcopy:
            hard_deadline = None  # a post-copy phase must be waited for; it cannot be undone
    started_clock = rt.clock()
    outcome = wait_for(check, timing(opts.poll_interval_s, hard_deadline, rt.clock, rt.pause(worker)))
    lingering: str | None = None
    if outcome != "done":
        raise KvmopsError(
            "Migration of %s to %s did not end %s after the abort request (%s); the job may still "
            "run on the source %s while the guest keeps running there. Check 'virsh domjobinfo %s' there and 'virsh -c %s list --all'; "
            "nothing else was touched." % (source["name"], opts.dest_host,
                                           "%d s" % opts.abort_grace_s, monitor.reason, src_where, source["name"],
                                           plan.dest_uri),
            values={"progress": monitor.last, "reason": monitor.reason})

    # a post-copy move, also one switched by hand (virsh migrate-postcopy), is never aborted nor
    # are its connections closed: the destination runs the guest (_finish_postcopy)
    postcopy = worker.error is not None and (monitor.postcopy_at is not None
                                             or _postcopy.source_phase(dom, lv) in _postcopy.IN_POSTCOPY)
    if worker.error is not None and not postcopy:
        # migrate3 can return its error while the source's job still runs (libvirt ends the API
        # call once QEMU reports the migration cancelled or failed, and the storage copy's mirror
        # jobs may still wait on a dead link): the job has ended only when the source domain
        # holds none. Until then keep waiting, and close the data connections as above.
        abort_clock = None if monitor.aborted_at is None else started_clock + monitor.aborted_at
        lingering = _wait_source_job_ended(dom, plan, opts, source["name"], rt, notes, abort_clock, severed, lv,
                                           reabort)

    if postcopy:
        err = worker.error
        return _finish_postcopy(opts, dom, source, plan, result, notes, rt, lv, src_where=src_where,
                                detail=_libvirt.libvirt_error_detail(err) if _libvirt.is_libvirt_error(err, lv) else str(err),
                                last=monitor.last, reason=monitor.reason)

    if worker.error is not None:
        err = worker.error
        try:
            recovery = _recover(sconn, dconn, source, dest_existed, was_running,
                                monitor.postcopy_at is not None, dest_label, lv)
        except Exception as rerr:  # noted: the recovery must never hide the migration's own error
            recovery = ["The recovery after the failure stopped early (%s: %s): check the guest on both "
                        "hosts ('virsh domstate %s'; 'virsh resume %s' on the source if it is paused)."
                        % (type(rerr).__name__, rerr, source["name"], source["name"])]
        if not (_libvirt.is_libvirt_error(err, lv) or isinstance(err, KvmopsError)):
            raise err
        why = monitor.reason or explain_failure(
            _libvirt.libvirt_error_detail(err) if not isinstance(err, KvmopsError) else str(err),
            opts.dest_host, source["name"])
        if severed and severed[0]["closed"]:
            again = (" and sending the abort again (%d time(s))" % len(reabort.sent)) if reabort.sent else ""
            recovery = ["The aborted job was ended %g s after the abort by closing its %d data "
                        "connection(s) to %s on the source%s." % (opts.sever_after_s, len(severed[0]["closed"]),
                                                                  opts.dest_host, again)] + list(recovery)
        elif reabort.sent and not lingering:
            recovery = ["The aborted job ended after the abort was sent again (%d time(s))." % len(reabort.sent)] \
                + list(recovery)
        if lingering:
            recovery = [lingering] + list(recovery)
        raise KvmopsError(
            "Migration of %s from %s to %s failed (%s; last progress: %s). %s"
            % (source["name"], src_where, opts.dest_host, why, progress_text(monitor.last), " ".join(recovery)),
            detail=_libvirt.libvirt_error_detail(err) if not isinstance(err, KvmopsError) else str(err),
            values={"progress": monitor.last, "plan": plan.as_result(), "notes": notes,
                    "convergence": ladder.as_result()})

    ddom = worker.result
    # first, before anything else can take time: the source's QEMU has stopped, so its NVRAM
    # file holds the UEFI variables as they were at the switch-over
    nvram = source_nvram(source, src_where, rt) if source["active"] else None
    stats = _completed_stats(ddom, dom, lv, notes, rt)
    dest_info = None
    if ddom is not None:
        try:
            dest_info = describe(ddom, lv, dest_label)
        except KvmopsError as err:  # the guest has moved: a failed read is a note, not a failure
            notes.append("the migrated guest could not be read on %s: %s" % (dest_label, err))
    leftover = _libvirt.find_domain(sconn, source["uuid"], by="uuid", lv=lv)
    if (leftover is not None and dest_info and dest_info["active"]
            and _call(lv, "read domain %s" % source["name"], src_where, leftover.isActive)):
        raise KvmopsError("STOP: after the migration %s is active on the source AND on %s. Nothing "
                          "more was touched; stop one copy by hand." % (source["name"], opts.dest_host))
    summary = completed_summary(stats, monitor.last, lv)
    if summary and not summary.get("disk_bytes") and plan.disks:
        # The storage copy runs as block jobs before the memory phase; libvirt keeps its figures
        # in the source's job statistics only, which the source loses with the domain
        # (UNDEFINE_SOURCE). A completed copy processed all of it: the largest total polled.
        summary["disk_bytes"] = monitor.disk_total_bytes or None
    if summary:
        summary["disk_allocated_bytes"] = sum(int(source["disk_bytes"].get(d) or 0) for d in plan.disks)
    health = _health.disabled()
    if ddom is not None and source["active"] and health_opts.enabled:
        health = _health.guarded_check(
            ddom, opts=health_opts, since=worker.ended if worker.ended is not None else rt.clock(),
            expect="running" if was_running else "paused", agent=source.get("agent"), watch=watch,
            where=dest_label, lv=lv, clock=rt.clock, sleep=rt.sleep, now=rt.now)
        if health.get("error"):
            notes.append(health["error"])
        if watch is not None and watch.error and not health["panicked"]:
            notes.append("guest panics were watched through the domain state only (no lifecycle events: %s)"
                         % watch.error)
    msg = "Migrated %s to %s in %s ms (downtime %s ms)." % (
        source["name"], opts.dest_host, summary.get("time_ms"), summary.get("downtime_ms"))
    if health["healthy"] is False:
        msg += " BUT the guest is not healthy there: %s." % "; ".join(health["problems"])
    return dict(result, changed=True, state="migrated", now_on=opts.dest_host,
                dest_state=dest_info["state"] if dest_info else None, stats=summary,
                progress=monitor.last, escalation=monitor.reason, health=health, nvram=nvram,
                convergence=ladder.as_result(),
                warnings=result["warnings"] + notes, msg=msg)


def _finish_postcopy(opts: MigrationOptions, dom: t.Any, source: dict[str, t.Any], plan: MigrationPlan,
                     result: dict[str, t.Any], notes: list[str], rt: Runtime, lv: t.Any, *, src_where: str,
                     detail: str, last: dict[str, t.Any] | None, reason: str | None) -> dict[str, t.Any]:
    """After ``migrate3`` failed in post-copy (``detail``: libvirt's error), or on a rerun that
    found the guest in post-copy: never remove, abort or resume anything; wait up to
    ``postcopy_recover_timeout_s`` for the move to end by itself (:func:`_postcopy.wait_for_end`).
    ``last``/``reason``: the monitor's last progress sample and escalation, None on a rerun.

    :returns: the ``migrated`` result with ``postcopy_recovery`` (no health check: the panic
        watch was on the lost connection; a note says so).
    :raises KvmopsError: still in post-copy at the deadline: :func:`_postcopy.paused_message`
        (where the guest is, that it is not lost, the rerun and the ``virsh`` command), with
        ``values.state`` ``postcopy_paused``.
    """
    name = source["name"]
    rt.log("kvmops.migration: %s: post-copy failed (%s): waiting up to %d s for the move to end once the link "
           "to %s is back; nothing is removed" % (name, detail, opts.postcopy_recover_timeout_s, opts.dest_host))
    outcome = _postcopy.wait_for_end(dom, timeout_s=opts.postcopy_recover_timeout_s, clock=rt.clock,
                                     sleep=rt.sleep, lv=lv, log=rt.log)
    if outcome.state == "paused":
        command = _postcopy.resume_command(name, plan.dest_uri, plan.flag_names, plan.migrate_uri, plan.params)
        raise KvmopsError(
            _postcopy.paused_message(name, src_where, opts.dest_host, command, opts.postcopy_recover_timeout_s,
                                     outcome.seen[-1] if outcome.seen else None),
            detail=detail, values={"state": "postcopy_paused", "postcopy_recovery": outcome.as_result(),
                                   "resume_command": command, "progress": last, "notes": notes})
    _finish_source(opts, dom, source, plan, notes, rt, lv, src_where)
    notes.append("the post-copy move lost its link (%s) and completed %.0f s later, once the link was back; "
                 "the health check was not run (its watch was on the lost connection)" % (detail, outcome.paused_s or 0))
    return dict(result, changed=True, state="migrated", now_on=opts.dest_host, dest_state=None,
                stats=completed_summary({}, last, lv), progress=last, escalation=reason, health=_health.disabled(),
                nvram=None, postcopy_recovery=outcome.as_result(), warnings=result["warnings"] + notes,
                msg="Migrated %s to %s: the link broke in post-copy and the move completed %.0f s later, once it "
                    "was back (the guest waited for its memory meanwhile)." % (name, opts.dest_host, outcome.paused_s or 0))


def _finish_source(opts: MigrationOptions, dom: t.Any, source: dict[str, t.Any], plan: MigrationPlan,
                   notes: list[str], rt: Runtime, lv: t.Any, src_where: str) -> None:
    """After a post-copy move that completed without its Confirm phase (the link broke): libvirt
    leaves the source's definition (shut off, reason migrated). With ``VIR_MIGRATE_UNDEFINE_SOURCE``
    in the plan it is undefined (keeping the NVRAM), only once a new connection to the
    destination (``rt.connect``) shows the guest there running and persistent; else a note says
    what to check and run. libvirt API: ``virDomainLookupByUUIDString``, ``virDomainGetState``,
    ``virDomainIsPersistent``, ``virDomainUndefineFlags``."""
    name = source["name"]
    if "VIR_MIGRATE_UNDEFINE_SOURCE" not in plan.flag_names:
        return
    try:
        left = bool(dom.isPersistent()) and not bool(dom.isActive())
    except Exception as err:  # undefined already (libvirt finished the move itself)
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return
    if not left:
        return
    try:
        with rt.connect(plan.dest_uri) as dconn:
            ddom = _libvirt.find_domain(dconn, source["uuid"], by="uuid", lv=lv)
            runs = ddom is not None and _state_of(ddom, name, opts.dest_host, lv) in RUNNING_STATES
            persistent = runs and bool(_call(lv, "read domain %s" % name, opts.dest_host, ddom.isPersistent))
        if not persistent:
            notes.append("the source keeps its shut-off definition of %s: %s; check the guest there ('virsh -c %s "
                         "dominfo %s'), then undefine it on the source with 'virsh undefine --keep-nvram %s'" % (
                             name, "the guest is not running and persistent on %s" % opts.dest_host, plan.dest_uri,
                             name, name))
            return
        _undefine(dom, name, src_where, lv)
        notes.append("the source's shut-off definition of %s was undefined (its NVRAM kept): the move's own last "
                     "step had not run, and the guest runs, persistent, on %s" % (name, opts.dest_host))
    except KvmopsError as err:
        notes.append("the source keeps its shut-off definition of %s (%s): undefine it there with 'virsh undefine "
                     "--keep-nvram %s' once the guest is checked on %s" % (name, err, name, opts.dest_host))


def source_nvram(source: dict[str, t.Any], src_where: str, rt: Runtime) -> dict[str, t.Any] | None:
    """The source's NVRAM file right after the switch-over (:func:`_nvram.read_nvram`, by
    ``rt.read_nvram``): the path of the source's domain XML (``source['nvram']``), read on this
    host, which is the source's only when the source URI is local (the ``migrate`` module runs
    there); with a remote source URI it is not read and ``error`` says why. None without an
    NVRAM file."""
    nvram = source.get("nvram") or {}
    if not nvram.get("path"):
        return None
    if _libvirt.is_remote_uri(src_where):
        return {"path": nvram["path"], "format": nvram.get("format") or "raw", "exists": None, "size": None,
                "sha256": None, "error": "not read: the source's libvirt (%s) is not on the host this module runs on"
                % src_where}
    return rt.read_nvram(nvram["path"], nvram.get("format"))


def explain_failure(detail: str, dest: str, guest: str) -> str:
    """The cause of a failed migration, for the operator, from libvirt's error text: the one
    classification, :func:`_libvirt.explain_failure` (connection faults between the hosts, unsafe
    storage, space, a broken link, blocked ports, QEMU, a cancelled job).

    :param detail: libvirt's message (``libvirtError.get_error_message()``).
    :param dest: the destination host, as the operator named it.
    :param guest: the domain name.
    :returns: a sentence naming the cause and the fix, or "libvirt reported an error" when the
        text is not one of :data:`_libvirt.FAILURE_CAUSES` (the detail is always shown beside it).
    """
    return _libvirt.explain_failure(detail, dest, guest) or "libvirt reported an error"


#: libvirt error codes that mean the source domain is gone: no job of ours can be left there
_GONE_CODES = (42,)  # VIR_ERR_NO_DOMAIN


def _source_job_type(dom: t.Any, lv: t.Any) -> int:
    """The type of the source domain's current job (``virDomainGetJobStats``: 0 none, 1 bounded,
    2 unbounded, 5 cancelled but not yet ended).

    0 when the domain is gone (``VIR_ERR_NO_DOMAIN``) or its connection is closed; -1 when the
    job cannot be read for another reason: while an abort waits on a dead link, the query waits
    for the domain's job lock and times out ("cannot acquire state change lock"), which means
    the job is still there, not that it ended.
    """
    try:
        # virDomainGetJobStats, as 'virsh domjobinfo': virDomainGetJobInfo was seen reporting no
        # job while this showed the cancelled one still there
        return int((dom.jobStats() or {}).get("type", 0))
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        code = _libvirt.libvirt_error_code(err)
        gone = getattr(lv, "VIR_ERR_NO_DOMAIN", _GONE_CODES[0]) if lv is not None else _GONE_CODES[0]
        if code == gone:
            return 0
        conn = getattr(dom, "connect", None)
        try:
            if callable(conn) and not conn().isAlive():
                return 0
        except Exception:  # a dead connection may fail to answer even that
            return 0
        return -1


def _wait_source_job_ended(dom: t.Any, plan: "MigrationPlan", opts: MigrationOptions, name: str,
                           rt: Runtime, notes: list[str], abort_clock: float | None,
                           severed: list[dict[str, t.Any]], lv: t.Any,
                           reabort: "_Reabort | None" = None) -> str | None:
    """After ``migrate3`` failed (pre-copy): wait until the source domain holds no job.

    ``sever_after_s`` after the abort (or after the failure, when nothing was aborted), the
    source QEMU's data connections to the destination are closed (:func:`_sever`), once; from
    then on the abort is sent again every :data:`REABORT_EVERY_S` (``reabort``). Waits at most
    ``abort_grace_s``. ``abort_clock``: ``rt.clock()`` at the abort, None if none was sent.
    libvirt API: ``virDomainGetJobStats`` (``dom.jobStats()``), ``virDomainAbortJob``.

    :returns: None once no job is left; else a sentence for the failure message saying the job
        still runs on the source.
    """
    # "no job" is believed when read twice, a poll interval apart: right after a failure the
    # query was seen answering none while `virsh domjobinfo` showed the cancelled job after it
    if _source_job_type(dom, lv) == 0:
        rt.sleep(opts.poll_interval_s)
        if _source_job_type(dom, lv) == 0:
            return None
    rt.log("kvmops.migration: migrate3 returned but the source still holds a job: waiting for it to end")
    started = rt.clock()
    already = 0.0 if abort_clock is None else max(0.0, started - abort_clock)  # s since the abort
    zeros = [0]

    def check(elapsed: float) -> t.Any:
        if _source_job_type(dom, lv) == 0:
            zeros[0] += 1
            if zeros[0] >= 2:
                return "ended"
            return None
        zeros[0] = 0
        if not severed and opts.sever_after_s is not None and already + elapsed >= opts.sever_after_s:
            severed.append(_sever(plan, opts, name, rt, notes))
        if reabort is not None:
            reabort.maybe(already + elapsed)
        return None

    outcome = wait_for(check, timing(opts.poll_interval_s, opts.abort_grace_s, rt.clock, rt.sleep))
    if outcome == "ended":
        rt.log("kvmops.migration: the source's job ended %.1f s after migrate3 returned" % (rt.clock() - started))
        return None
    return ("The migration job on the source had not ended %d s after the failure: check 'virsh "
            "domjobinfo %s' there; the guest keeps running on its own disks." % (opts.abort_grace_s, name))


def _sever(plan: "MigrationPlan", opts: MigrationOptions, name: str, rt: Runtime,
           notes: list[str]) -> dict[str, t.Any]:
    """Close the source QEMU's data connections to the destination after an abort that did not
    end the job (:func:`_sockets.sever`); what was done goes to the log and ``notes``.

    Pre-copy only (the caller never calls it once post-copy started): the source still owns the
    guest, and a failed data connection leaves it running on its own disks.
    """
    pid = _sockets.qemu_pid(name)
    if pid is None:
        notes.append("the aborted job did not end within %s s; the QEMU process of %s was not found, "
                     "so its connections to %s were left to TCP" % (opts.sever_after_s, name, opts.dest_host))
        return {"closed": [], "left": [], "error": "no QEMU pid"}
    ports = [p for p in (_port_of(plan.migrate_uri), _port_of(plan.disks_uri), opts.migrate_port,
                         opts.disks_port) if p]
    done = _sockets.sever(rt.runner, pid, opts.dest_host, ports)
    unclosed = "; %d could not be closed" % len(done["left"]) if done["left"] else ""
    rt.log("kvmops.migration: the aborted job did not end within %s s: closed %d data connection(s) "
           "of QEMU (pid %d) to %s%s" % (opts.sever_after_s, len(done["closed"]), pid, opts.dest_host, unclosed))
    if done["left"] or done["error"]:
        notes.append("closing the data connections to %s after the abort did not work (%s): the job "
                     "ends when TCP gives up on them (ss -K needs CONFIG_INET_DIAG_DESTROY)"
                     % (opts.dest_host, done["error"] or "%d left" % len(done["left"])))
    else:
        notes.append("the aborted job did not end within %s s: its %d data connection(s) to %s were "
                     "closed on the source (ss -K)" % (opts.sever_after_s, len(done["closed"]), opts.dest_host))
    return done


def _port_of(uri: str | None) -> int | None:
    """The port of a ``tcp://host:port`` data URI, None without one."""
    m = re.search(r":(\d+)/?$", uri or "")
    return int(m.group(1)) if m else None


#: s between two abort requests once the first one has not ended the job by ``sever_after_s``
REABORT_EVERY_S = 5.0


class _Reabort:
    """The abort, sent again while a pre-copy job outlives it (see the module's "Threads,
    keepalive and a cut link"): first at ``sever_after_s`` after the abort (or
    :data:`REABORT_EVERY_S` when closing connections is off), then every
    :data:`REABORT_EVERY_S`. Safe only before post-copy (the caller's condition): the source
    still owns the guest. libvirt API: ``virDomainAbortJob``.
    """

    def __init__(self, dom: t.Any, opts: MigrationOptions, rt: "Runtime", notes: list[str], lv: t.Any):
        self.dom, self.rt, self.notes, self.lv = dom, rt, notes, lv
        self.first_s = opts.sever_after_s if opts.sever_after_s is not None else REABORT_EVERY_S
        self.sent: list[float] = []  # s since the first abort, of each abort sent again

    def maybe(self, since_abort_s: float) -> None:
        """Send the abort again if it is time (``since_abort_s``: s since the first abort)."""
        due = self.first_s if not self.sent else self.sent[-1] + REABORT_EVERY_S
        if since_abort_s < due:
            return
        self.sent.append(since_abort_s)
        self.rt.log("kvmops.migration: the aborted job still stands %.0f s after the abort: abort sent again"
                    % since_abort_s)
        _abort(self.dom, self.notes, self.lv)


def _abort(dom: t.Any, notes: list[str], lv: t.Any) -> None:
    try:
        dom.abortJob()
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        notes.append("abortJob failed: %s" % _libvirt.libvirt_error_detail(err))


#: how long the destination's completed statistics are waited for: libvirt finishes an incoming
#: post-copy move on the destination asynchronously, so right after ``migrate3`` returns they may
#: not be there yet; up to ``_ACTIVE`` seconds while the destination still runs the incoming job,
#: else up to ``_GRACE`` seconds
COMPLETED_STATS_WAIT_ACTIVE_S = 60.0
COMPLETED_STATS_WAIT_GRACE_S = 5.0
#: seconds between two reads of the completed statistics while they are not there yet
COMPLETED_STATS_POLL_S = 0.2


def _completed_stats(ddom: t.Any, sdom: t.Any, lv: t.Any, notes: list[str],
                     rt: "Runtime | None" = None) -> dict[str, t.Any]:
    """Completed job statistics: from the destination domain first (libvirt transfers them
    there at the end of a migration), then from the source domain if it still exists.

    When neither has them yet and the destination domain exists, they are polled again (every
    :data:`COMPLETED_STATS_POLL_S`, by ``rt``'s clock) while the destination's incoming job runs (a post-copy move ends
    there after ``migrate3`` returned), up to :data:`COMPLETED_STATS_WAIT_ACTIVE_S`, else for
    :data:`COMPLETED_STATS_WAIT_GRACE_S`. Returns {} when none come (the caller then uses the
    last progress sample, :func:`completed_summary`).
    """
    rt = rt or Runtime()
    flag = _libvirt.const(lv, "VIR_DOMAIN_JOB_STATS_COMPLETED")
    if flag is not None:
        # keep them for the operator: `virsh domjobinfo --completed` still shows this migration
        flag |= _libvirt.const(lv, "VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED") or 0
    if flag is None:
        notes.append("No completed job statistics: this libvirt-python lacks "
                     "VIR_DOMAIN_JOB_STATS_COMPLETED.")
        return {}
    start = rt.clock()
    failed: dict[str, str] = {}
    while True:
        for where, dom in (("destination", ddom), ("source", sdom)):
            if dom is None or where in failed:
                continue
            try:
                stats = dom.jobStats(flag)
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                failed[where] = _libvirt.libvirt_error_detail(err)
                continue
            if stats and stats.get("type") == _libvirt.const(lv, "VIR_DOMAIN_JOB_COMPLETED"):
                return stats
        if ddom is None or "destination" in failed:
            break
        waited = rt.clock() - start
        limit = COMPLETED_STATS_WAIT_ACTIVE_S if _job_active(ddom, lv) else COMPLETED_STATS_WAIT_GRACE_S
        if waited >= limit:
            break
        rt.sleep(COMPLETED_STATS_POLL_S)
    for where, why in failed.items():
        notes.append("completed statistics not readable on the %s: %s" % (where, why))
    if ddom is not None and "destination" not in failed:
        notes.append("the destination reported no completed statistics within %d s: the figures are "
                     "those of the last progress sample" % int(rt.clock() - start))
    return {}


def _job_active(dom: t.Any, lv: t.Any) -> bool:
    """The domain's current job (``virDomainGetJobStats`` without flags) is still running."""
    try:
        job = (dom.jobStats() or {}).get("type")
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return False
    return job not in (None, _libvirt.const(lv, "VIR_DOMAIN_JOB_NONE"), _libvirt.const(lv, "VIR_DOMAIN_JOB_COMPLETED"),
                       _libvirt.const(lv, "VIR_DOMAIN_JOB_FAILED"), _libvirt.const(lv, "VIR_DOMAIN_JOB_CANCELLED"))


def _remove_leftover(ddom: t.Any, info: dict[str, t.Any] | None, dest: str, lv: t.Any) -> None:
    """Destroy (and undefine when persistent) a leftover on the destination that carries our
    marker (C11 b with ``cleanup_leftover``)."""
    if ddom is None or info is None or not info.get("ours"):
        raise KvmopsError("Refusing to remove %s on %s: it is not marked as ours." % (
            info and info.get("name"), dest))
    action = "read the leftover domain %s" % info["name"]
    if _call(lv, action, dest, ddom.isActive):
        _call(lv, "destroy the leftover domain %s" % info["name"], dest, ddom.destroy)
    if _call(lv, action, dest, ddom.isPersistent):
        _undefine(ddom, info["name"], dest, lv)


def _undefine(ddom: t.Any, name: str, dest: str, lv: t.Any) -> None:
    keep = _libvirt.const(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM")
    if keep is not None:
        _call(lv, "undefine domain %s" % name, dest, ddom.undefineFlags, keep)
    else:
        _call(lv, "undefine domain %s" % name, dest, ddom.undefine)


def _recover(sconn: t.Any, dconn: t.Any, source: dict[str, t.Any], dest_existed: bool,
             was_running: bool, postcopy_started: bool, dest: str, lv: t.Any) -> list[str]:
    """After a failed ``migrate3``: keep the guest running on the source and leave nothing on
    the destination that this run created. Returns sentences for the error message.

    Never raises: the operator must read the migration's own error, so every step of the
    recovery that fails is noted in the returned sentences instead. The order is:

    1. the destination is *read* (``lookupByUUIDString``, ``state``) through guarded calls; a
       dead connection or any error there only makes its state unknown;
    2. the source is resumed when the failure left it paused, whatever step 1 found, except
       when the guest is positively seen running on the destination (resuming then would make
       two running copies);
    3. only then is anything removed from the destination (``destroy``/``undefineFlags``), and
       only while the source holds the guest.
    """
    uuid = source["uuid"]
    name = source["name"]
    if postcopy_started:
        return ["The failure happened in post-copy: the guest's memory is split between both "
                "hosts. Nothing was touched; recover with 'virsh migrate --postcopy-resume' or "
                "see https://libvirt.org/migration.html."]
    out: list[str] = []
    src_where = str(_libvirt.uri_of(sconn, "the host"))

    # 1. read the destination, changing nothing and raising nothing
    ddom: t.Any = None
    dstate: str | None = None
    dest_known = _libvirt.is_alive(dconn)
    dest_why = "no libvirt connection"
    if dest_known:
        try:
            ddom = _libvirt.find_domain(dconn, uuid, by="uuid", lv=lv)
            if ddom is not None:
                dstate = _state_of(ddom, name, dest, lv)
        except KvmopsError as err:
            ddom, dstate, dest_known, dest_why = None, None, False, str(err)
    if not dest_known:
        out.append("%s could not be checked (%s). If its libvirtd only lost this "
                   "connection, it removes the incomplete incoming domain itself within about 30 s; if "
                   "it was restarted, it may keep that domain paused: then run again with "
                   "cleanup_leftover (role: -e migrate_guest_cleanup_leftover=true), which removes it "
                   "only because this run marked it as ours." % (dest, dest_why))

    # 2. the source first
    sdom: t.Any = None
    src_active: bool | None = None  # None: unknown
    sstate: str | None = None
    try:
        sdom = _libvirt.find_domain(sconn, uuid, by="uuid", lv=lv)
        src_active = False
        if sdom is not None:
            src_active = bool(_call(lv, "read the state of domain %s" % name, src_where, sdom.isActive))
            sstate = _state_of(sdom, name, src_where, lv) if src_active else "shutoff"
    except KvmopsError as err:
        out.append("The source guest could not be read after the failure (%s): check it with "
                   "'virsh domstate %s' on the source." % (err, name))
    if dstate in RUNNING_STATES:
        if src_active is not False:
            return out + ["STOP: the guest is active on the source AND runs on %s; nothing was "
                          "touched." % dest]
        return out + ["The guest runs on %s although libvirt reported an error: verify it there "
                      "before doing anything." % dest]
    if sdom is not None and src_active is not False:
        if was_running and sstate in ("paused", None):
            try:
                _call(lv, "resume domain %s" % name, src_where, sdom.resume)
                out.append("The source guest was paused and has been resumed.")
            except KvmopsError as err:
                out.append("The source guest is %s and could not be resumed (%s): run "
                           "'virsh resume %s'." % (sstate or "in an unknown state", err, name))
        else:
            out.append("The guest keeps running on the source (%s)." % sstate)
    elif src_active is False and source.get("active"):
        out.append("WARNING: the guest is no longer active on the source.")

    # 3. the destination, once the source holds the guest
    if ddom is not None and src_active:
        try:
            if dstate != "shutoff":
                _call(lv, "destroy the incomplete incoming domain %s" % name, dest, ddom.destroy)
                out.append("The incomplete incoming domain on %s was destroyed." % dest)
            if not dest_existed and _call(lv, "read domain %s" % name, dest, ddom.isPersistent):
                _undefine(ddom, name, dest, lv)
                out.append("The definition this run created on %s was removed." % dest)
        except KvmopsError as err:
            out.append("Cleanup on %s failed: %s" % (dest, err))
    elif ddom is not None:
        out.append("The domain on %s (%s) was left alone: the source does not hold the guest for "
                   "certain." % (dest, dstate))
    elif dest_known:
        out.append("Nothing is left on %s." % dest)
    return out


def _state_of(dom: t.Any, name: str, where: str, lv: t.Any) -> str:
    """:func:`_libvirt.state_name` of ``dom.state()`` (virDomainGetState), through :func:`_call`.

    :raises KvmopsError: libvirt could not say.
    """
    return _libvirt.state_name(lv, _call(lv, "read the state of domain %s" % name, where, dom.state)[0])


def run_migration(opts: MigrationOptions, *, check_mode: bool = False,
                  rt: Runtime | None = None) -> dict[str, t.Any]:
    """Open the source and destination connections (``_libvirt.connection``), call
    :func:`migrate_domain`, close both.

    The destination URI is ``opts.dest_uri`` or :func:`build_dest_uri` of ``dest_host``.
    :raises KvmopsError: see :func:`migrate_domain`; a connection failure names the URI.
    """
    opts.validate()
    dest_uri = opts.dest_uri or build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    with _libvirt.connection(opts.source_uri) as sconn:
        with _libvirt.connection(dest_uri) as dconn:
            return migrate_domain(opts, sconn, dconn, check_mode=check_mode, rt=rt)
