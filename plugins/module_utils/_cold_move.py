# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A move the live CPU cannot make: the cold move.

A running guest whose CPU (as it runs now) no destination can provide cannot move live: the
live CPU is guest ABI and never changes during a live migration. Only a cold move fixes it:
the persistent CPU is normalised to the group's baseline (``domain_cpu``), the guest is shut
down cleanly (ACPI power button, with a timeout; powered off hard only when asked), its disks
are copied into images pre-created on the destination, it is defined and started there, and
the source definition is removed. The guest is down from the shutdown request until it runs
on the destination (then its OS boots).

Two parts:

- the decision (pure): :data:`COLD_FIXABLE_CHECKS`, :func:`move_kind` (per destination: live,
  offline, cold, or refused and why) and :func:`hint` (what the pre-flight's CPU error says
  about a cold move);
- the driver :func:`run_cold_move` (the ``cold_move`` module): shutdown, sparse disk copy
  through libvirt storage streams, define, start, undefine the source; on a failure before the
  guest runs on the destination, the definition it made there is removed and the guest is
  started again on the source if this run shut it down.

Relies on: ``virDomainShutdownFlags(VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)``, ``virDomainIsActive``,
``virDomainDestroy`` (only with ``force_off``), ``virDomainGetXMLDesc(INACTIVE | SECURE |
MIGRATABLE)``, ``virDomainDefineXML``/``virDomainCreate``/``virDomainUndefineFlags`` and, for
the disks, ``virStorageVolLookupByPath``, ``virStoragePoolRefresh``,
``virStorageVolDownload``/``virStorageVolUpload`` with the ``SPARSE_STREAM`` flags and
``virStreamRecvFlags(STOP_AT_HOLE)``/``virStreamRecvHole``/``virStreamSendHole`` (libvirt >= 3.4).
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing as t
import uuid
from xml.sax.saxutils import escape

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _health
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _migration
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

#: Pre-flight checks whose error is about the CPU the guest runs with now: a cold move (new
#: persistent CPU, shut down, started on the destination) removes them. Any other error (the
#: machine type, which a cold move keeps; memory; storage; networks ...) still refuses the move.
COLD_FIXABLE_CHECKS = ("cpu", "cpu_feature_names")

#: Bytes asked from a storage stream at a time.
CHUNK_BYTES = 4 * 1024 * 1024


# --------------------------------------------------------------------------------------------
# The decision (pure)
# --------------------------------------------------------------------------------------------

def hint(var: str, allowed: bool, dest: str) -> str:
    """The sentence the pre-flight adds to a running guest's CPU error on ``dest``.

    :param var: the setting that allows a cold move (the role passes
        ``migrate_guest_allow_cold_move``).
    """
    what = ("the persistent CPU is normalised to the group's baseline, the guest is shut down "
            "(ACPI power button), moved offline with its disks and started on %s; it is down "
            "from the shutdown until it runs there" % dest)
    if allowed:
        return " A cold move will fix this (%s is true): %s." % (var, what)
    return " Only a cold move can fix this: set %s=true and %s." % (var, what)


def offer(findings: list[dict[str, t.Any]], var: str | None, allowed: bool, dest: str) -> list[dict[str, t.Any]]:
    """The findings of a running guest with :func:`hint` added to each error of
    :data:`COLD_FIXABLE_CHECKS` (``values.cold_move``: ``offered`` or ``allowed``). Without
    ``var`` the findings are returned as they are."""
    if not var:
        return findings
    out = []
    for item in findings:
        if item.get("status") == "error" and item.get("check") in COLD_FIXABLE_CHECKS:
            item = dict(item, msg=item["msg"] + hint(var, allowed, dest),
                        values=dict(item.get("values") or {}, cold_move="allowed" if allowed else "offered"))
        out.append(item)
    return out


def move_kind(report: dict[str, t.Any] | None, active: bool, allow_cold: bool) -> dict[str, t.Any]:
    """How the guest can go to one destination, from that destination's pre-flight report.

    ============================================  ===========  =============  ==========
    errors in the report                          guest        allow_cold     kind
    ============================================  ===========  =============  ==========
    none                                          running      any            live
    none                                          shut off     any            offline
    only of :data:`COLD_FIXABLE_CHECKS`           running      true           cold
    only of :data:`COLD_FIXABLE_CHECKS`           running      false          None (offered)
    any other (or no report)                      any          any            None
    ============================================  ===========  =============  ==========

    :param report: ``{ok, findings: [{check, status, msg}]}`` (a ``preflight`` result).
    :returns: ``{kind: live|offline|cold|None, cold_offered: bool, blockers: [msg]}``;
        ``blockers`` are the error messages that refuse the move (empty when ``kind`` is set).
    """
    if not report:
        return {"kind": None, "cold_offered": False, "blockers": ["no pre-flight report"]}
    findings = report.get("findings") or []
    if report.get("failed") and not findings:
        return {"kind": None, "cold_offered": False, "blockers": [str(report.get("msg") or "pre-flight failed")]}
    errors = [f for f in findings if f.get("status") == "error"]
    if not errors:
        return {"kind": "live" if active else "offline", "cold_offered": False, "blockers": []}
    offered = bool(active) and all(f.get("check") in COLD_FIXABLE_CHECKS for f in errors)
    if offered and allow_cold:
        return {"kind": "cold", "cold_offered": True, "blockers": []}
    return {"kind": None, "cold_offered": offered, "blockers": [str(f.get("msg", "")) for f in errors]}


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

def _lv_flag(lv: t.Any, name: str) -> int:
    value = _libvirt.const(lv, name)
    if value is None:
        raise KvmopsError("The cold move needs libvirt's %s, which this libvirt-python (libvirt %s) lacks: "
                          "upgrade libvirt on the source." % (name, _libvirt.binding_version(lv)))
    return int(value)


def shutdown(dom: t.Any, name: str, host: str, timeout_s: float, force_off: bool, lv: t.Any,
             clock: t.Callable[[], float] = time.monotonic, sleep: t.Callable[[float], None] = time.sleep
             ) -> dict[str, t.Any]:
    """Press the guest's ACPI power button and wait until it is off.

    :param timeout_s: seconds to wait for the guest to power off.
    :param force_off: after the timeout, power it off hard (``virDomainDestroy``: what a pulled
        plug does; unsaved data in the guest is lost); else fail.
    :returns: ``{shutdown_ms, forced}``.
    :raises KvmopsError: the guest ignores the button (no ACPI, no handler) or takes longer
        than ``timeout_s`` and ``force_off`` is false: it still runs; the request was made and
        may still take effect.
    """
    start = clock()
    with _libvirt.libvirt_errors("press the ACPI power button of %s" % name, host=host):
        dom.shutdownFlags(_lv_flag(lv, "VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN"))
    while True:
        with _libvirt.libvirt_errors("read the state of %s" % name, host=host):
            if not dom.isActive():
                return {"shutdown_ms": int((clock() - start) * 1000), "forced": False}
        if clock() - start >= timeout_s:
            break
        sleep(0.5)
    if not force_off:
        raise KvmopsError(
            "Guest %s did not power off within %d s of its ACPI power button on %s: its OS ignores the "
            "button (no ACPI support or no handler for it) or shuts down more slowly. Nothing was moved and "
            "it still runs on %s; the shutdown request was made and may still take effect (virsh domstate %s). "
            "Raise shutdown_timeout_s (role: migrate_guest_shutdown_timeout_s), or set force_off "
            "(migrate_guest_force_off: true) to power it off hard after the timeout: unsaved data in the "
            "guest is then lost." % (name, int(timeout_s), host, host, name),
            values={"timeout_s": timeout_s})
    with _libvirt.libvirt_errors("power off %s (force_off, after %d s)" % (name, int(timeout_s)), host=host):
        if dom.isActive():
            dom.destroy()
    return {"shutdown_ms": int((clock() - start) * 1000), "forced": True}


def _volume(conn: t.Any, path: str, host: str, lv: t.Any, made: list[t.Any]) -> t.Any:
    """The storage volume of ``path`` on ``conn``.

    The active pools are refreshed once when libvirt does not know the file yet (an image
    created just now). A file in no pool gets a transient ``dir`` pool for its directory
    (``virStoragePoolCreateXML``: nothing is built or changed on disk), appended to ``made`` for
    the caller to stop (``virStoragePoolDestroy`` of a transient pool leaves the files alone).
    :raises KvmopsError: libvirt failed, or the file is not there.
    """
    no_vol = _libvirt.const(lv, "VIR_ERR_NO_STORAGE_VOL")

    def lookup() -> t.Any:
        try:
            return conn.storageVolLookupByPath(path)
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv) or _libvirt.libvirt_error_code(err) != no_vol:
                raise
            return None
    directory = os.path.dirname(path)
    with _libvirt.libvirt_errors("look up the storage volume %s" % path, host=host):
        vol = lookup()
        if vol is None:
            for pool in conn.listAllStoragePools(_lv_flag(lv, "VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE")):
                pool.refresh(0)
            vol = lookup()
    if vol is None:
        name = "kvmops-cold-%s" % uuid.uuid4().hex[:8]
        with _libvirt.libvirt_errors("start a transient storage pool %s for %s (the cold move reads and writes disks "
                                     "through libvirt's storage volumes)" % (name, directory), host=host):
            made.append(conn.storagePoolCreateXML(
                "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, escape(directory)), 0))
            vol = lookup()
    if vol is None:
        raise KvmopsError("Image %s is not on %s: the cold move copies into the images the role pre-created (disk_image)."
                          % (path, host), values={"path": path})
    return vol


def _stop_pools(made: list[t.Any]) -> list[str]:
    """Stop the transient pools :func:`_volume` started; the files stay. :returns: warnings."""
    out = []
    for pool in made:
        try:
            pool.destroy()
        except Exception as err:  # a warning: the copy itself is done or has its own error
            out.append("The transient storage pool %s could not be stopped (%s): virsh pool-destroy it." % (
                _libvirt.name_of(pool), err))
    return out


def copy_volume(sconn: t.Any, dconn: t.Any, path: str, src: str, dest: str, lv: t.Any,
                clock: t.Callable[[], float] = time.monotonic) -> dict[str, t.Any]:
    """Copy the image ``path`` from the source into the image of that path on the destination,
    keeping holes: data is sent, holes are recreated as holes (sparse streams).

    :returns: ``{path, data_bytes, hole_bytes, time_ms, warnings}``.
    :raises KvmopsError: a volume missing, a stream failure (both streams are aborted; the
        destination image is then incomplete, and stays recorded as created).
    """
    made: list[t.Any] = []
    out = None
    try:
        out = _copy(sconn, dconn, _volume(sconn, path, src, lv, made), _volume(dconn, path, dest, lv, made),
                    path, src, dest, lv, clock)
    finally:
        warnings = _stop_pools(made)  # also after a failure; its warnings then go with it
        if out is not None:
            out["warnings"] = warnings
    return out


def _copy(sconn: t.Any, dconn: t.Any, svol: t.Any, dvol: t.Any, path: str, src: str, dest: str, lv: t.Any,
          clock: t.Callable[[], float]) -> dict[str, t.Any]:
    start = clock()
    data = holes = 0
    sst = dst = None
    try:
        with _libvirt.libvirt_errors("copy %s to %s" % (path, dest), host=src):
            sst = sconn.newStream(0)
            svol.download(sst, 0, 0, _lv_flag(lv, "VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM"))
            dst = dconn.newStream(0)
            dvol.upload(dst, 0, 0, _lv_flag(lv, "VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM"))
            stop_at_hole = _lv_flag(lv, "VIR_STREAM_RECV_STOP_AT_HOLE")
            while True:
                got = sst.recvFlags(CHUNK_BYTES, stop_at_hole)
                if got == -3:  # a hole: its length, then the same hole on the destination
                    length = int(sst.recvHole(0))
                    dst.sendHole(length, 0)
                    holes += length
                    continue
                if isinstance(got, int):
                    raise KvmopsError("The storage stream of %s on %s returned %d." % (path, src, got))
                if not got:
                    break
                view = memoryview(got)
                while view:
                    sent = dst.send(bytes(view))
                    view = view[int(sent):]
                data += len(got)
            sst.finish()
            sst = None
            dst.finish()
            dst = None
    finally:
        for stream in (sst, dst):
            if stream is not None:
                try:
                    stream.abort()
                except Exception:  # the copy's own error is the one reported
                    pass
    return {"path": path, "data_bytes": data, "hole_bytes": holes, "time_ms": int((clock() - start) * 1000)}


def _wait_running(dom: t.Any, name: str, host: str, timeout_s: float, lv: t.Any,
                  clock: t.Callable[[], float], sleep: t.Callable[[float], None]) -> None:
    start = clock()
    running = _libvirt.const(lv, "VIR_DOMAIN_RUNNING")
    while True:
        with _libvirt.libvirt_errors("read the state of %s" % name, host=host):
            if dom.state()[0] == running:
                return
        if clock() - start >= timeout_s:
            raise KvmopsError("Guest %s was started on %s but is not running after %d s." % (name, host, int(timeout_s)))
        sleep(0.2)


def nvram_warning(name: str, xml: str, dest: str) -> str | None:
    """What the operator must know when the guest keeps UEFI variables in an NVRAM file: a cold
    move does not carry them (a live move does, with the memory), so libvirt makes the file on
    ``dest`` from the firmware's template: boot entries set in the guest are reset. None when the
    definition names no NVRAM file. ``xml``: the persistent definition (hostile input: parsed with
    the hardened parser)."""
    path = _domain_xml.domain_facts(xml).get("nvram")
    if not path:
        return None
    return ("%s keeps its UEFI variables in %s: a cold move does not copy that file, so libvirt creates it on %s from "
            "the firmware's template (boot entries set in the guest are reset; the source's file is kept: copy it to "
            "%s while the guest is shut off to keep them)." % (name, path, dest, dest))


def chain_refusal(disks: t.Sequence[dict[str, t.Any]]) -> str | None:
    """Why the cold move cannot copy these disks, or None. A cold move copies each image file as
    it is (its bytes, holes kept) into the image pre-created on the destination; a qcow2 layer
    with a backing file would arrive pointing at a base the copy does not carry (missing there,
    or another file of the same path: the guest would read foreign data). Such disks are refused
    before the guest is touched, naming the fix.

    :param disks: ``[{target, path, backing_file?, backing?: [{path}]}]`` (``disk_info`` disks).
    """
    chained = ["%s (%s, backed by %s)" % (d.get("target") or "?", d.get("path"),
                                          d.get("backing_file") or (d.get("backing") or [{}])[0].get("path") or "?")
               for d in disks if d.get("backing_file") or d.get("backing")]
    if not chained:
        return None
    one = len(chained) == 1
    return ("A cold move copies image files as they are, and %s %s a backing chain whose base it would not carry: "
            "flatten %s on the source first (virsh blockpull DOMAIN TARGET --wait, while the guest runs), "
            "then run the move again." % (", ".join(chained), "has" if one else "have", "it" if one else "them"))


def plan(name: str, src: str, dest: str, active: bool, disks: t.Sequence[dict[str, t.Any]],
         timeout_s: float, force_off: bool) -> list[str]:
    """The steps of a cold move, in words (check mode and the result)."""
    steps = []
    if active:
        steps.append("shut %s down on %s with the ACPI power button (wait %d s, then %s)" % (
            name, src, int(timeout_s), "power it off hard" if force_off else "stop and leave it running"))
    steps.append("copy %s to %s (sparse)" % (", ".join("%s %s" % (d.get("target"), d["path"]) for d in disks) or "no disk", dest))
    steps.append("define %s on %s" % (name, dest))
    if active:
        steps.append("start it on %s" % dest)
    steps.append("remove its definition from %s (its images there are kept)" % src)
    return steps


def run_cold_move(params: dict[str, t.Any], check_mode: bool = False,
                  connect: t.Callable[[str], t.ContextManager[t.Any]] = _libvirt.connection,
                  clock: t.Callable[[], float] = time.monotonic,
                  sleep: t.Callable[[float], None] = time.sleep, lv: t.Any = None) -> dict[str, t.Any]:
    """Backend of the ``cold_move`` module, run on the source.

    :param params: ``domain``, ``dest_host``, ``dest_user``, ``transport``, ``dest_uri``,
        ``source_uri`` (default ``qemu:///system``), ``disks`` (``[{target, path}]``: the images to
        copy, pre-created on the destination), ``shutdown_timeout_s``, ``force_off``,
        ``start_timeout_s``.
    :returns: ``{changed, state (planned|migrated|already_migrated), mode: cold, plan: [step], was_running,
        forced, restarted_source: False, copies: [{path, data_bytes, hole_bytes, time_ms}],
        stats: {time_ms, downtime_ms, shutdown_ms, copy_ms, start_ms, disk_bytes, disk_allocated_bytes},
        warnings}``. ``downtime_ms``: from the ACPI request until the guest runs on the destination
        (its OS boots after that).
    :raises KvmopsError: the guest is not where it should be, defined on both hosts, transient; a
        disk has a backing chain (:func:`chain_refusal`, before anything is touched, check mode too); the
        shutdown timed out (nothing moved); a copy, define or start failed (then the definition
        this run made on the destination is removed and the guest started again on the source if
        this run shut it down; the message says so).
    """
    lv = _libvirt.binding(lv)
    name = params["domain"]
    src_uri = params.get("source_uri") or _libvirt.DEFAULT_URI
    dest = params["dest_host"]
    dest_uri = params.get("dest_uri") or _migration_plan.build_dest_uri(
        dest, params.get("transport") or "ssh", params.get("dest_user") or "root")
    disks = list(params.get("disks") or [])
    timeout_s = float(params.get("shutdown_timeout_s") or 120)
    force_off = bool(params.get("force_off"))
    src = "the source"
    result: dict[str, t.Any] = {"changed": False, "mode": "cold", "domain": name, "dest_uri": dest_uri,
                                "was_running": False, "forced": False, "restarted_source": False,
                                "copies": [], "warnings": []}
    with _libvirt.connections([src_uri, dest_uri], connect) as conns:
        sconn, dconn = conns[src_uri], conns[dest_uri]
        sdom = _libvirt.find_domain(sconn, name, lv=lv)
        ddom = _libvirt.find_domain(dconn, name, lv=lv)
        sinfo = _migration.describe(sdom, lv, src) if sdom is not None else None
        dinfo = _migration.describe(ddom, lv, dest) if ddom is not None else None
        if sinfo is None and dinfo is not None and dinfo["persistent"]:
            return dict(result, state="already_migrated", plan=[], msg="%s is defined (%s) on %s and not on the "
                        "source: already moved." % (name, dinfo["state"], dest))
        if sinfo is None:
            raise KvmopsError("Guest %s is defined neither on the source nor on %s." % (name, dest))
        if dinfo is not None:
            raise KvmopsError(
                "Guest %s is defined on the source (%s) and on %s (%s): a cold move defines it on %s, so it stops "
                "before anything changes. If the copy on %s is a leftover, undefine it there (virsh undefine %s), "
                "keeping its images if they are needed." % (name, sinfo["state"], dest, dinfo["state"], dest, dest, name))
        if not sinfo["persistent"]:
            raise KvmopsError("Guest %s is transient on the source: a cold move needs a persistent definition "
                              "to carry over (virsh dumpxml %s > %s.xml; virsh define %s.xml)." % (name, name, name, name))
        refusal = chain_refusal(disks)
        if refusal:
            raise KvmopsError("%s is not moved, nothing was changed by the cold move: %s" % (name, refusal))
        active = bool(sinfo["active"])
        result["was_running"] = active
        result["plan"] = plan(name, src, dest, active, disks, timeout_s, force_off)
        health_opts = _health.HealthOptions.from_params(params.get("health"))
        agent = None
        if active:
            with _libvirt.libvirt_errors("read the live definition of %s" % name, host=src):
                agent = _domain_xml.agent_channel_state(sdom.XMLDesc(0))
            result["plan"].append(_health.plan_words(health_opts, agent))
        if check_mode:
            return dict(result, changed=True, state="planned")
        result["changed"] = True
        start = clock()
        timings: dict[str, int] = {}
        shut = defined = False
        new = None
        try:
            if active:
                done = shutdown(sdom, name, src, timeout_s, force_off, lv, clock, sleep)
                shut = True
                timings["shutdown_ms"] = done["shutdown_ms"]
                result["forced"] = done["forced"]
            copy_start = clock()
            for disk in disks:
                copied = copy_volume(sconn, dconn, disk["path"], src, dest, lv, clock)
                result["warnings"].extend(copied.pop("warnings"))
                result["copies"].append(dict(copied, target=disk.get("target")))
            timings["copy_ms"] = int((clock() - copy_start) * 1000)
            with _libvirt.libvirt_errors("read the persistent definition of %s" % name, host=src):
                xml = sdom.XMLDesc(_lv_flag(lv, "VIR_DOMAIN_XML_INACTIVE") | _lv_flag(lv, "VIR_DOMAIN_XML_SECURE")
                                   | _lv_flag(lv, "VIR_DOMAIN_XML_MIGRATABLE"))
            nvram = nvram_warning(name, xml, dest)
            if nvram:
                result["warnings"].append(nvram)
            with _libvirt.libvirt_errors("define %s" % name, host=dest):
                new = dconn.defineXML(xml)
                defined = True
            if active:
                boot_start = clock()
                with _libvirt.libvirt_errors("start %s" % name, host=dest):
                    new.create()
                _wait_running(new, name, dest, float(params.get("start_timeout_s") or 60), lv, clock, sleep)
                timings["start_ms"] = int((clock() - boot_start) * 1000)
            end = clock()
            if not active:
                boot_start = end
        except KvmopsError as err:
            undo = _undo(sdom, new, name, src, dest, shut, defined, lv)
            result["restarted_source"] = undo["restarted_source"]
            raise KvmopsError(("%s %s" % (err.msg, undo["msg"])).strip(), detail=err.detail,
                              values=dict(err.values or {}, restarted_source=undo["restarted_source"],
                                          copies=result["copies"])) from err
        with _libvirt.libvirt_errors("remove the definition of %s" % name, host=src):
            try:
                sdom.undefineFlags(_undefine_flags(lv))
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                result["warnings"].append(
                    "%s runs on %s, but its shut-off definition on the source could not be removed (%s): "
                    "undefine it there (virsh undefine %s) so that it is defined once." % (
                        name, dest, _libvirt.libvirt_error_detail(err), name))
        result["health"] = _health.disabled()
        if active and new is not None and health_opts.enabled:
            # the guest boots: its agent gets the boot time (start_timeout_s) on top of agent_timeout_s
            boot_opts = dataclasses.replace(health_opts, agent_timeout_s=health_opts.agent_timeout_s
                                            + float(params.get("start_timeout_s") or 60))
            result["health"] = _health.guarded_check(new, opts=boot_opts, since=end, agent=agent, where=dest, lv=lv,
                                                     clock=clock, sleep=sleep)
            if result["health"].get("error"):
                result["warnings"].append(result["health"]["error"])
    total = sum(c["data_bytes"] + c["hole_bytes"] for c in result["copies"])
    result.update(state="migrated", stats={
        "time_ms": int((end - start) * 1000),
        "downtime_ms": int((end - start) * 1000) if active else None,
        "shutdown_ms": timings.get("shutdown_ms"), "copy_ms": timings.get("copy_ms"),
        "start_ms": timings.get("start_ms"), "memory_bytes": 0, "disk_bytes": total,
        "disk_allocated_bytes": sum(c["data_bytes"] for c in result["copies"]), "iterations": 0,
        "stats_from": "cold_move"})
    return result


def _undefine_flags(lv: t.Any) -> int:
    """Undefine keeping NVRAM and TPM state files (kvmops never deletes what it did not create)."""
    flags = 0
    for name in ("VIR_DOMAIN_UNDEFINE_KEEP_NVRAM", "VIR_DOMAIN_UNDEFINE_KEEP_TPM"):
        value = _libvirt.const(lv, name)
        if value is not None:
            flags |= int(value)
    return flags


def _undo(sdom: t.Any, new: t.Any, name: str, src: str, dest: str, shut: bool, defined: bool, lv: t.Any
          ) -> dict[str, t.Any]:
    """After a failure before the guest ran on the destination: remove the definition this run
    made there (stopping it first if it started), then start the guest again on the source if
    this run shut it down. Never raises: what could not be undone is said in ``msg``."""
    notes = []
    if defined and new is not None:
        try:
            if new.isActive():
                new.destroy()
            new.undefineFlags(_undefine_flags(lv))
            notes.append("The definition made on %s was removed." % dest)
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            notes.append("The definition made on %s could NOT be removed (%s): undefine it there (virsh undefine "
                         "%s) before starting the guest on the source." % (dest, _libvirt.libvirt_error_detail(err), name))
            return {"restarted_source": False, "msg": " ".join(notes)}
    restarted = False
    if shut:
        try:
            sdom.create()
            restarted = True
            notes.append("%s was started again on the source (with its normalised persistent CPU)." % name)
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            notes.append("%s could NOT be started again on the source (%s): it is shut off there; start it "
                         "(virsh start %s)." % (name, _libvirt.libvirt_error_detail(err), name))
    return {"restarted_source": restarted, "msg": " ".join(notes)}
