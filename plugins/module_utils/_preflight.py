# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pre-flight: every check before anything is touched, as one report.

One small function per check, one report. The checks live by what they look at:
:mod:`_checks_guest` (the guest and both hosts: location, state, distinct hosts, the
destination's domains, CPU, memory, versions), :mod:`_checks_storage` (copy set, cache modes,
shared storage, the destination's images and files, free space) and :mod:`_checks_network`
(networks, names, ports, TLS files). Each returns one finding or a list of findings
``{check, status, host, msg, values}`` (:mod:`_findings`, the one findings type, also of the
CPU checks of ``_cpu``); ``status`` is ``ok``, ``warning`` or ``error``.

Here: the options (:class:`PreflightOptions`, :func:`options_from_params`), the probes of the
world outside libvirt (:class:`Probes`), the transport decision from the options
(:func:`check_transport`), :func:`report`, which builds ``{ok, findings, summary}``, and
:func:`run_preflight`, the backend of the ``preflight`` module: it reads both hosts
(read-only) and runs every check.

Where the facts come from (the module runs on the source host)
--------------------------------------------------------------
- libvirt on both sides: the source guest (live XML, migratable form for the CPU), the
  destination's capabilities, domains (C11), networks, host interfaces, storage pools, free
  memory, versions. Everything is read; nothing is defined, started or refreshed.
- the source's images: ``_disk_info.describe_disk`` (``qemu-img info -U``), locally.
- the destination's files cannot be seen from the source. They come from facts the caller read
  on the destination, all four given by ``kvmops.migration.host_info`` run there with ``paths``:
  ``dest_disks`` (its ``paths``, the ``disks`` list ``kvmops.migration.disk_info`` gives for
  them), ``dest_mounts`` (its ``mounts``, in the shape of the ``ansible_mounts`` fact),
  ``dest_interfaces`` and ``dest_manifest`` (the entries of its kvmops manifest). Without them
  the destination's libvirt storage pools are used where a pool covers the directory
  (``storageVolLookupByPath``, pool ``info()``); a path that neither covers is reported as a
  warning "not verified", never as ok.

Relies on: libvirt ``virConnectGetCapabilities``, ``virConnectGetHostname``,
``virConnectGetLibVersion``, ``virConnectGetVersion``, ``virNodeGetFreeMemory``,
``virNodeGetMemoryStats``, ``virDomainLookupByName``/``virDomainLookupByUUIDString``,
``virDomainGetXMLDesc``, ``virStorageVolLookupByPath``, ``virConnectListAllStoragePools``; for the
forecast of a running guest (:mod:`_forecast`) ``virDomainStartDirtyRateCalc``,
``virConnectGetAllDomainStats`` (dirtyrate), ``virDomainBlockStats``, ``virDomainMemoryStats``;
qemu.conf ``default_tls_x509_cert_dir`` (``/etc/pki/qemu``: ``ca-cert.pem``,
``client-cert.pem``, ``client-key.pem``, ``server-cert.pem``, ``server-key.pem``) for the
transport decision (:mod:`_tls`). The checks name the APIs behind their facts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _checks_guest
from ansible_collections.kvmops.migration.plugins.module_utils import _checks_network
from ansible_collections.kvmops.migration.plugins.module_utils import _checks_storage
from ansible_collections.kvmops.migration.plugins.module_utils import _cold_move
from ansible_collections.kvmops.migration.plugins.module_utils import _cpu
from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _findings
from ansible_collections.kvmops.migration.plugins.module_utils import _forecast
from ansible_collections.kvmops.migration.plugins.module_utils import _host
from ansible_collections.kvmops.migration.plugins.module_utils import _image_use
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _migration
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils import _probe
from ansible_collections.kvmops.migration.plugins.module_utils import _runner
from ansible_collections.kvmops.migration.plugins.module_utils import _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError


STATUSES = _findings.STATUSES

REQUIRE_STATES = _args.choices("preflight", "require_state")
DEFAULT_MIGRATE_PORT = _args.default("ports.migrate", "preflight")
DEFAULT_DISKS_PORT = _args.default("ports.disks", "preflight")


# --------------------------------------------------------------------------------------------
# Findings and the report
# --------------------------------------------------------------------------------------------

#: one finding (:mod:`_findings`, the one findings type of CPU and pre-flight checks)
finding = _findings.finding
#: a finding checked for a known status (:func:`_findings.validated`)
normalise = _findings.validated


def report(findings: t.Iterable[dict[str, t.Any]]) -> dict[str, t.Any]:
    """``{ok, findings, summary: {errors, warnings, oks, checks, msg}}``; ``ok`` is False when
    any finding is an error."""
    items = [normalise(f) for f in findings]
    counts = {s: sum(1 for f in items if f["status"] == s) for s in STATUSES}
    errors = [f["msg"] for f in items if f["status"] == "error"]
    msg = ("Pre-flight passed: %d checks ok, %d warnings." % (counts["ok"], counts["warning"])
           if not errors else "Pre-flight found %d error(s): %s" % (len(errors), " | ".join(errors)))
    return {"ok": not errors, "findings": items,
            "summary": {"errors": counts["error"], "warnings": counts["warning"],
                        "oks": counts["ok"], "checks": len(items), "msg": msg}}


# --------------------------------------------------------------------------------------------
# Orchestration: read both hosts, run every check
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PreflightOptions:
    """What the user asked for (the module's options)."""

    domain: str
    dest_host: str
    dest_uri: str | None = _args.spec_field("preflight", "dest_uri")
    source_uri: str = _args.spec_field("preflight", "source_uri")
    dest_user: str = _args.spec_field("preflight", "dest_user")
    transport: str = _args.spec_field("preflight", "transport")
    group: list[dict[str, str]] = _args.spec_field("preflight", "group")
    copy_storage: str = _args.spec_field("preflight", "copy_storage")
    disks: list[str] | None = _args.spec_field("preflight", "disks")
    shared_disks: list[str] = _args.spec_field("preflight", "shared_disks")
    network_map: dict[str, str] = _args.spec_field("preflight", "network_map")
    require_state: str = _args.spec_field("preflight", "require_state")
    #: True: TLS required; False: plain (needs allow_insecure_transport); None: auto (TLS when
    #: both hosts hold valid certificates of one CA, else an error unless allow_insecure_transport)
    tls: bool | None = _args.spec_field("preflight", "tls")
    allow_insecure_transport: bool = _args.spec_field("preflight", "allow_insecure_transport")
    #: ``host_info``'s ``tls`` of the destination (:func:`_tls.read_host_tls`); None: not read
    dest_tls: dict[str, t.Any] | None = _args.spec_field("preflight", "dest_tls")
    #: the name the destination's certificate is checked against (default: dest_host)
    tls_destination: str | None = _args.spec_field("preflight", "tls_destination")
    #: the setting named in the transport messages (the role passes its variable's name)
    insecure_var: str = _args.spec_field("preflight", "insecure_var")
    migrate_port: int = _args.spec_field("preflight", "ports.migrate")
    disks_port: int = _args.spec_field("preflight", "ports.disks")
    port_timeout_s: float = _args.spec_field("preflight", "ports.timeout_s")
    dest_name: str | None = _args.spec_field("preflight", "dest_name")
    detect_zeroes: bool = _args.spec_field("preflight", "detect_zeroes")
    parallel_connections: int | None = _args.spec_field("preflight", "parallel_connections")
    postcopy: bool = _args.spec_field("preflight", "postcopy")
    compression: list[str] = _args.spec_field("preflight", "compression")
    cleanup_leftover: bool = _args.spec_field("preflight", "cleanup_leftover")
    dest_disks: list[dict[str, t.Any]] = _args.spec_field("preflight", "dest_disks")
    dest_mounts: list[dict[str, t.Any]] = _args.spec_field("preflight", "dest_mounts")
    dest_manifest: list[dict[str, t.Any]] | None = _args.spec_field("preflight", "dest_manifest")
    dest_interfaces: list[str] | None = _args.spec_field("preflight", "dest_interfaces")
    #: where the caller already found the guest: ``{source: host name, hosts: {host: state}}``
    #: (the role's locate step); given, the group is not searched again
    located: dict[str, t.Any] | None = _args.spec_field("preflight", "located")
    #: what ``preflight_dest`` set up on the destination: ``{probe_id, ports: [{requested, port,
    #: state, reason}], markers: [{dir, path, state, reason}]}``; None: plain connects, and
    #: shared storage shown by inode and size only
    dest_probe: dict[str, t.Any] | None = _args.spec_field("preflight", "dest_probe")
    #: a closed, filtered or unreachable data port is a warning, not an error
    ignore_blocked_ports: bool = _args.spec_field("preflight", "ports.ignore_blocked")
    #: the setting that allows a cold move (the role passes migrate_guest_allow_cold_move): a
    #: running guest's CPU errors then say that only a cold move fixes them (:func:`_cold_move.offer`);
    #: None: they point to domain_cpu and a cold boot only
    cold_move_var: str | None = _args.spec_field("preflight", "cold_move_var")
    #: that setting is true: the CPU errors say a cold move will fix them
    cold_move_allowed: bool = _args.spec_field("preflight", "cold_move_allowed")
    #: the caller creates absent destination images right after the pre-flight (the
    #: migrate_guest role, with disk_image): an absent image is then ok, not a warning
    images_created_next: bool = _args.spec_field("preflight", "images_created_next")
    #: the forecast (``{enabled, seconds, link_mibps, bandwidth_mibps, max_downtime_ms,
    #: stream_mibps}``, missing keys: their defaults): a running guest is measured for ``seconds``
    #: while the other checks run (:mod:`_forecast`)
    forecast: dict[str, t.Any] = _args.spec_field("preflight", "forecast")

    def validate(self) -> None:
        """:raises KvmopsError: an option out of range, named."""
        if not self.dest_host or not self.dest_host.strip():
            raise KvmopsError("dest_host is empty: give the destination's inventory address.")
        if self.copy_storage not in _migration_plan.COPY_STORAGE_CHOICES:
            raise KvmopsError("copy_storage must be one of %s, got %r." % (
                ", ".join(_migration_plan.COPY_STORAGE_CHOICES), self.copy_storage))
        if self.located is not None and self.group:
            raise KvmopsError("Give either group (search the hosts for the guest) or located (where it "
                              "was already found), not both.")
        if self.located is not None and not self.located.get("source"):
            raise KvmopsError("located needs source: the host name the guest was found on.")
        if self.require_state not in REQUIRE_STATES:
            raise KvmopsError("require_state must be one of %s, got %r." % (
                ", ".join(REQUIRE_STATES), self.require_state))
        for name in ("migrate_port", "disks_port"):
            if not 0 < int(getattr(self, name)) < 65536:
                raise KvmopsError("%s must be a TCP port (1-65535), got %s." % (name, getattr(self, name)))

    def wanted_features(self) -> list[str]:
        out = []
        if self.detect_zeroes and self.copy_storage != "none":
            out.append("detect_zeroes")
        if self.parallel_connections:
            out.append("parallel")
        if self.postcopy:
            out.append("postcopy")
        if set(self.compression) & {"zlib", "zstd"}:
            out.append("zlib_zstd")
        return out


@dataclasses.dataclass
class Probes:
    """Injectable access to the world outside libvirt (tests pass fakes)."""

    connect: t.Callable[..., t.Any] = _libvirt.connection
    resolver: t.Callable[[str], list[str]] = _checks_network.resolve
    tcp: t.Callable[[str, int, float], str] = _checks_network.tcp_probe
    #: a connect that says hello to a ``preflight_dest`` listener (:func:`_probe.probe_port`)
    probe_port: t.Callable[[str, int, str | None, float], str] = _probe.probe_port
    #: the same probe streaming zeros for about 1 s to measure the link (:func:`_probe.probe_link`)
    probe_link: t.Callable[[str, int, str, float], tuple[str, dict[str, t.Any] | None]] = _probe.probe_link
    marker_seen: t.Callable[[dict[str, t.Any], str], bool] = _probe.marker_seen
    exists: t.Callable[[str], bool] = os.path.exists
    is_local: t.Callable[[str], bool] = _checks_network.is_local_address
    #: the text of a file of the source, None when unreadable (``/proc/self/mounts``, qemu.conf)
    read_text: t.Callable[[str], str | None] = _tls.read_text
    #: the source's own TLS material (:func:`_tls.read_host_tls`) and the wall clock (epoch s)
    tls_material: t.Callable[[], dict[str, t.Any]] = _tls.read_host_tls
    now: t.Callable[[], float] = time.time
    #: the clock and the sleep of the guest's measurement (monotonic s)
    monotonic: t.Callable[[], float] = time.monotonic
    sleep: t.Callable[[float], None] = time.sleep
    #: the resident size of a running guest's RAM on this host (:func:`_forecast.guest_ram_resident`)
    ram_reader: t.Callable[[str, int], int | None] = _forecast.guest_ram_resident
    runner: t.Any = None
    lv: t.Any = None


def _open(stack: contextlib.ExitStack, probes: Probes, uri: str) -> tuple[t.Any, str | None]:
    try:
        return stack.enter_context(probes.connect(uri)), None
    except KvmopsError as err:
        return None, str(err)


def _dest_users(dconn: t.Any, lv: t.Any) -> dict[str, list[str]] | None:
    """Path -> domains on the destination that use it (:func:`_image_use.paths_in_use`, paths
    as the destination names them); None when there is no connection or libvirt could not list
    them (the advice about a file there then says what to check first)."""
    if dconn is None:
        return None
    try:
        return _image_use.paths_in_use(dconn, resolve=False)
    except Exception as err:  # a libvirt error: the users stay unknown, others propagate
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return None


def _host_facts(conn: t.Any, uri: str) -> dict[str, t.Any]:
    with _libvirt.libvirt_errors("read the host facts", host=uri):
        caps = _cpu.parse_capabilities(conn.getCapabilities())
        facts: dict[str, t.Any] = {"uri": uri, "caps": caps, "uuid": caps.uuid,
                                   "hostname": str(conn.getHostname()),
                                   "libvirt": int(conn.getLibVersion()), "qemu": int(conn.getVersion())}
    return facts


def _dest_storage(dconn: t.Any, opts: PreflightOptions, paths: list[str], lv: t.Any) -> _checks_storage.DestFiles:
    """Destination file facts: the caller's (``dest_disks``, ``dest_mounts``,
    ``dest_manifest``), else the destination's libvirt pools (read, never refreshed)."""
    dest = _checks_storage.DestFiles(disks={d["path"]: d for d in opts.dest_disks if d.get("path")},
                                     mounts=list(opts.dest_mounts), manifest=opts.dest_manifest)
    if dconn is None:
        return dest
    try:
        for pool in dconn.listAllStoragePools(0):
            target = _domain_xml.from_string(pool.XMLDesc(0), remove_blank_text=False).findtext("target/path")
            if target and pool.isActive():
                dest.pools[target.rstrip("/")] = {"name": pool.name(), "available_bytes": int(pool.info()[3])}
    except Exception as err:  # no storage driver there: paths without facts stay "not verified"
        if not _libvirt.is_libvirt_error(err, lv):
            raise
    for path in paths:
        if path in dest.disks:
            continue
        try:
            vol = dconn.storageVolLookupByPath(path)
            info = vol.info()
            vol_xml = vol.XMLDesc(0)
        except Exception as err:  # not a volume there, or unreadable: the path stays "not verified"
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            continue
        fmt_el = _domain_xml.from_string(vol_xml, remove_blank_text=False).find("target/format")
        fmt = fmt_el.get("type") if fmt_el is not None else None
        dest.volumes[path] = {"path": path, "virtual_size": int(info[1]), "allocation": int(info[2]),
                              "format": fmt}
    return dest


def _memory(dconn: t.Any, lv: t.Any, host: str = "the destination") -> tuple[int, int | None]:
    """``(free bytes, available bytes or None)`` of the destination (virNodeGetFreeMemory,
    virNodeGetMemoryStats). :raises KvmopsError: the free memory could not be read."""
    with _libvirt.libvirt_errors("read the free memory", host=host):
        free = int(dconn.getFreeMemory())
    try:
        stats = dconn.getMemoryStats(getattr(lv, "VIR_NODE_MEMORY_STATS_ALL_CELLS", -1), 0)
    except Exception as err:  # not every driver reports it: reclaimable memory stays unknown
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return free, None
    return free, 1024 * sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached"))


def run_preflight(opts: PreflightOptions, probes: Probes | None = None) -> dict[str, t.Any]:
    """Read both hosts and run every check; never changes anything.

    :returns: :func:`report` plus ``domain``, ``source``, ``destination``, ``dest_uri``,
        ``copy_set``, ``copy_bytes`` (:func:`copy_bytes` of the copy set), ``already_migrated`` and ``checked`` (``{disks: [{target, path, format,
        virtual_size}], cpu}``: the copy set with the geometry and the CPU fingerprint the checks
        saw, for ``migrate``'s ``expect_disks``/``expect_cpu``; ``cpu`` None before the XML was read).
    :raises KvmopsError: only for invalid options; every failure to read a host is a finding.
    """
    probes = probes or Probes()
    opts.validate()
    lv = _libvirt.binding(probes.lv)
    dest_uri = opts.dest_uri or _migration_plan.build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    dest = opts.dest_host
    src_label = opts.source_uri
    findings: list[dict[str, t.Any]] = []
    result: dict[str, t.Any] = {"domain": opts.domain, "source": src_label, "destination": dest,
                                "dest_uri": dest_uri, "copy_set": [], "copy_bytes": 0, "shared_detected": [],
                                "already_migrated": False, "checked": {"disks": [], "cpu": None},
                                "transport": None, "forecast": None}

    probe = opts.dest_probe or {}
    probe_id = probe.get("probe_id")
    held = {int(p["requested"]): p for p in probe.get("ports") or [] if p.get("requested") is not None}
    probed: dict[int, str] = {}
    links: dict[int, dict[str, t.Any] | None] = {}

    def data_port(requested: int, link: bool = False) -> tuple[str, dict[str, t.Any] | None]:
        """(result, listener entry or None) of the port the move asks for; with ``link``, the
        probe also measures the link into ``links``."""
        entry = held.get(int(requested))
        if entry is None:
            return probes.tcp(opts.dest_host, requested, opts.port_timeout_s), None
        if entry.get("state") != "listening" or not entry.get("port"):
            return "unavailable", entry
        if int(requested) not in probed:
            if link and probe_id:
                probed[int(requested)], links[int(requested)] = probes.probe_link(
                    opts.dest_host, int(entry["port"]), probe_id, opts.port_timeout_s)
            else:
                probed[int(requested)] = probes.probe_port(opts.dest_host, int(entry["port"]), probe_id,
                                                           opts.port_timeout_s)
        return probed[int(requested)], entry

    def done() -> dict[str, t.Any]:
        for requested in held:  # every port the listener holds is probed once: then it ends
            if held[requested].get("state") == "listening" and requested not in probed:
                data_port(requested)
        out = dict(result)
        out.update(report(findings))
        # the listener ends, and removes its markers itself, once each port it holds was probed
        listening = [r for r in held if held[r].get("state") == "listening"]
        out["probe_ended"] = bool(listening) and all(probed.get(r) == "open" for r in listening)
        return out

    with contextlib.ExitStack() as stack:
        sconn, serr = _open(stack, probes, opts.source_uri)
        if sconn is None:
            findings.append(finding("source_connection", "error", src_label, serr or "no connection"))
            return done()
        scheme, tport = _checks_network.transport_port(dest_uri)
        uri_host = _checks_network.uri_hostname(dest_uri) or opts.dest_host
        if tport:
            findings.append(_checks_network.check_transport_port(uri_host, tport, "libvirt %s transport" % scheme,
                                                                 probes.tcp(uri_host, tport, opts.port_timeout_s), dest))
        if scheme == "tls":
            findings.append(_checks_network.check_tls_files(_checks_network.LIBVIRT_TLS_CLIENT_FILES, "the libvirt connection (qemu+tls)",
                                                            probes.exists, src_label))
        dconn, derr = _open(stack, probes, dest_uri)
        if dconn is None:
            findings.append(finding("dest_connection", "error", dest, derr or "no connection",
                                    uri=dest_uri))
        else:
            findings.append(finding("dest_connection", "ok", dest, "Connected to %s as the migration "
                                    "will (%s)." % (dest, dest_uri), uri=dest_uri))

        # Where is the guest (C11, group)?
        try:
            dom = _libvirt.find_domain(sconn, opts.domain, lv=lv)
            info = _migration.describe(dom, lv, src_label) if dom is not None else None
        except KvmopsError as err:
            findings.append(finding("guest_location", "error", src_label, str(err)))
            return done()
        found = {src_label: info}
        if opts.located is not None:  # found by the caller (the role's locate step): not searched again
            found = {str(h): {"state": str(st)} for h, st in (opts.located.get("hosts") or {}).items()}
            found[src_label] = info
            found.pop(str(opts.located["source"]), None)
        for member in opts.group:
            if member.get("uri") in (opts.source_uri, dest_uri) or member.get("name") == opts.dest_host:
                continue  # the destination is judged by the C11 check
            label = member.get("name") or member["uri"]
            with contextlib.ExitStack() as gstack:
                gconn, gerr = _open(gstack, probes, member["uri"])
                try:
                    gdom = _libvirt.find_domain(gconn, opts.domain, lv=lv) if gconn is not None else None
                    if gconn is not None:
                        found[label] = _migration.describe(gdom, lv, label) if gdom else None
                except KvmopsError as err:
                    gconn, gerr = None, str(err)
                if gconn is None:
                    findings.append(finding("group_host", "warning", label,
                                            "Group host not searched for the guest: %s" % gerr))
        try:
            src_facts = _host_facts(sconn, src_label)
            dst_facts = _host_facts(dconn, dest_uri) if dconn is not None else None
        except KvmopsError as err:
            findings.append(finding("host_facts", "error", dest, str(err)))
            return done()
        dest_name = opts.dest_name or (info["name"] if info else opts.domain)
        if dconn is not None:
            uuid_key = info["uuid"] if info else (opts.domain if _libvirt.looks_like_uuid(opts.domain)
                                                  else None)
            try:
                d_by_name = _libvirt.find_domain(dconn, dest_name, by="name", lv=lv)
                d_by_uuid = _libvirt.find_domain(dconn, uuid_key, by="uuid", lv=lv) if uuid_key else None
                by_name = _migration.describe(d_by_name, lv, dest) if d_by_name is not None else None
                by_uuid = _migration.describe(d_by_uuid, lv, dest) if d_by_uuid is not None else None
            except KvmopsError as err:
                findings.append(finding("destination_domain", "error", dest, "The domains on %s could not "
                                        "be read, so a conflict (C11) cannot be ruled out: %s" % (dest, err)))
                return done()
            dd = _checks_guest.check_destination_domain(info, by_name, by_uuid, dest_name, dest, opts.cleanup_leftover)
            findings.append(dd)
            if dd["values"]["already_migrated"]:
                result["already_migrated"] = True
                return done()
            if info is None:
                return done()
        findings.append(_checks_guest.check_location(opts.domain, src_label, found))
        if info is None:
            return done()
        findings.append(_checks_guest.check_state(info, opts.require_state, src_label))
        if dst_facts is None:
            return done()

        active = bool(info["active"])
        with _libvirt.libvirt_errors("read the XML of domain %s" % info["name"], host=src_label):
            xml = _cpu.domain_xml(dom, migratable=active, inactive=not active)
        facts = _domain_xml.domain_facts(xml)
        result["checked"]["cpu"] = _domain_xml.cpu_fingerprint(xml)
        fsettings = forecast_settings(opts.forecast)
        # the guest is measured while the other checks run: finish_measure waits for the rest
        measuring = _forecast.start_measure(dom, lv, [d["target"] for d in facts["disks"] if d.get("copy")],
                                            fsettings["seconds"], probes.monotonic,
                                            _forecast.dirty_rate_mode(facts["domain_type"], facts["dirty_ring"]),
                                            # the guest RAM's resident size, read here only when this is its host
                                            probes.ram_reader if opts.source_uri == _libvirt.DEFAULT_URI else None) \
            if active and fsettings["enabled"] else None
        if measuring is not None and fsettings["link_probe"] and opts.migrate_port:
            # the link, through the port memory will take, for about 1 s inside the guest's window
            data_port(opts.migrate_port, link=True)
        findings.append(_checks_guest.check_distinct_hosts(
            {"host": src_label, "uuid": src_facts["uuid"], "hostname": src_facts["hostname"]},
            {"host": dest, "uuid": dst_facts["uuid"], "hostname": dst_facts["hostname"]},
            opts.dest_host, probes.is_local(opts.dest_host.strip("[]"))
            if _checks_network.is_ip(opts.dest_host) else any(probes.is_local(a) for a in probes.resolver(opts.dest_host))))
        cpu_findings = _checks_guest.check_cpu_all(dconn, xml, dst_facts["caps"], dest)
        findings.extend(_cold_move.offer(cpu_findings, opts.cold_move_var, opts.cold_move_allowed, dest)
                        if active else cpu_findings)
        if active:
            try:
                free, available = _memory(dconn, lv, dest)
            except KvmopsError as err:
                findings.append(finding("memory", "error", dest, str(err)))
            else:
                findings.append(_checks_guest.check_memory(info["name"], int(facts.get("memory_bytes") or 0), free,
                                                           available, dest))

        # Storage
        runner = probes.runner or _runner.SubprocessRunner()
        disks = [_disk_info.describe_disk(d, runner, force_share=True) if d.get("path") and probes.exists(d["path"])
                 else dict(d) for d in facts["disks"]]
        facts["disks"] = disks
        req = _domain_xml.required_files(facts)
        dest_files = _dest_storage(dconn, opts, [d["path"] for d in disks if d.get("path")]
                                   + [r["path"] for r in req] + [b["path"] for d in disks
                                                                 for b in d.get("backing") or [] if b.get("path")], lv)
        proof = _checks_storage.shared_proof(disks, dest_files, probe, probes.marker_seen, dest)
        # a disk shown shared is not copied (copying it would write the image onto itself)
        detected = [d["target"] for d in disks if d.get("copy") and d["target"] in proof
                    and d["target"] not in opts.shared_disks] if opts.copy_storage != "none" else []
        forced = [tg for tg in detected if tg in (opts.disks or [])]
        for target in forced:
            findings.append(finding("shared_storage", "error", dest,
                                    "Disk %s is listed in disks to copy, but it is on storage shared with %s (%s): "
                                    "copying it would write the image onto itself. Leave it out of disks."
                                    % (target, dest, proof[target]), target=target))
        shared = list(opts.shared_disks) + [tg for tg in detected if tg not in forced]
        result["shared_detected"] = [tg for tg in detected if tg not in forced]
        copy_findings = _checks_storage.check_copy_set(disks, opts.copy_storage, shared, proof, dest, opts.disks)
        findings.extend(copy_findings)
        copied = copy_findings[0]["values"].get("copy", []) if copy_findings[0]["status"] == "ok" else []
        result["copy_set"] = copied
        not_copied = copied if copied or opts.copy_storage == "none" else _domain_xml.copy_set(disks, shared)
        findings.extend(_checks_storage.check_cache_modes(disks, not_copied, dest, src_facts.get("qemu")))
        if active:
            kept = [d["target"] for d in disks if d["target"] not in copied and (
                d["target"] in shared or opts.copy_storage == "none")]
            findings.extend(_checks_storage.check_shared_safety(
                disks, copied, kept, _host.parse_mounts(probes.read_text(_host.PROC_MOUNTS) or ""),
                _checks_storage.shared_filesystems(probes.read_text(_tls.QEMU_CONF)), dest))
        if copied and not active:
            findings.append(finding("copy_set", "error", dest, "Guest %s is shut off: libvirt's offline "
                                    "migration cannot copy disks (%s). Start it and migrate live, or "
                                    "copy the images yourself and use copy_storage: none."
                                    % (info["name"], ", ".join(copied)), copy=copied))
        copy_disks = [d for d in disks if d["target"] in copied]
        result["copy_bytes"] = copy_bytes(copy_disks)
        result["checked"]["disks"] = [{k: d.get(k) for k in ("target", "path", "format", "virtual_size")}
                                      for d in copy_disks]
        # the destination's domains are read only when a copied disk's path is taken there
        taken = [d["path"] for d in copy_disks if d.get("path") and (dest_files.lookup(d["path"])[0] or {}).get("exists")]
        used = _dest_users(dconn, lv) if taken else {}
        for disk in copy_disks:
            users = (None if used is None else used.get(disk["path"], [])) if disk.get("path") in taken else []
            findings.append(_checks_storage.check_dest_image(disk, dest_files, dest, info["name"], users=users,
                                                             created_next=opts.images_created_next))
            if opts.copy_storage == "incremental":
                findings.extend(_checks_storage.check_backing(disk, dest_files, dest))
        findings.extend(_checks_storage.check_free_space(copy_disks, dest_files, dest))
        findings.extend(_checks_storage.check_required_files(req, dest_files, dest, live=active))

        # Networks
        lookup = _checks_network.libvirt_network_lookup(dconn, lv, opts.dest_interfaces)
        findings.extend(_checks_network.check_networks(facts["interfaces"], lookup, opts.network_map, dest))

        # Names, ports, TLS
        names = {dst_facts["hostname"]: False}
        names.update({opts.dest_host: True, uri_host: True})
        findings.extend(_checks_network.check_names(names, probes.resolver, dest))
        if active:
            res, entry = data_port(opts.migrate_port)
            findings.append(_checks_network.check_data_port(opts.dest_host, opts.migrate_port, "Migration", res, dest, entry,
                                                            opts.ignore_blocked_ports))
            if copied:
                res, entry = data_port(opts.disks_port)
                findings.append(_checks_network.check_data_port(opts.dest_host, opts.disks_port, "Disk (NBD)", res, dest, entry,
                                                                opts.ignore_blocked_ports))
        findings.extend(check_transport(opts, probes, live=active, copies_disks=bool(copied),
                                        dest_uri=dest_uri, src_label=src_label, dest=dest, result=result))

        wanted = opts.wanted_features()
        if copied and getattr(lv, "VIR_MIGRATE_PARAM_DISKS_URI", None) is not None:
            wanted.append("disks_uri")  # _migration_plan.build_params uses it when the binding has it
        findings.extend(_checks_guest.check_versions(src_facts, dst_facts, wanted, dest))
        if measuring is not None:
            result["forecast"] = forecast_move(measuring, copy_disks, fsettings, probes,
                                               links.get(int(opts.migrate_port)) if opts.migrate_port else None)
            findings.append(forecast_finding(result["forecast"], src_label))
    return done()


def copy_bytes(copy_disks: list[dict[str, t.Any]]) -> int:
    """Bytes a storage migration sends for ``copy_disks`` (described disks: the allocation of
    each, its virtual size when the allocation is unknown); 0 for none."""
    return sum(int(d.get("allocation") or d.get("virtual_size") or 0) for d in copy_disks)


def forecast_settings(given: dict[str, t.Any] | None) -> dict[str, t.Any]:
    """The ``forecast`` option with every missing or None key at its default."""
    out = {k: _args.default("forecast.%s" % k, "preflight") for k in _args.option("preflight", "forecast")["options"]}
    out.update({k: v for k, v in (given or {}).items() if v is not None})
    return out


def forecast_move(measuring: _forecast.Measurement, copy_disks: list[dict[str, t.Any]], settings: dict[str, t.Any],
                  probes: Probes, link: dict[str, t.Any] | None = None) -> dict[str, t.Any]:
    """:func:`_forecast.forecast` of the move from the guest's measurement, the copied disks'
    allocation (bytes) and the link the pre-flight measured (:func:`_probe.probe_link`'s
    ``{bps, bytes, seconds, port}``, None: not measured): the forecast dict plus ``measured``
    (what :func:`_forecast.finish_measure` saw)."""
    measured = _forecast.finish_measure(measuring, [d["target"] for d in copy_disks], probes.monotonic, probes.sleep)
    allocations = [copy_bytes([d]) for d in copy_disks]
    stream = settings.get("stream_mibps")
    given = settings.get("link_mibps")
    inputs = _forecast.inputs_from_measurement(measured, sum(allocations), link=link,
                                               link_bps=float(given) * _forecast.MIB if given else None,
                                               bandwidth_mibps=settings.get("bandwidth_mibps") or None,
                                               max_downtime_ms=settings.get("max_downtime_ms") or None,
                                               stream_bps=float(stream) * _forecast.MIB if stream else None,
                                               disk_allocations=allocations)
    out = _forecast.forecast(inputs)
    out["measured"] = measured
    out["msg"] = _forecast.summary_line(out)
    return out


def forecast_finding(fc: dict[str, t.Any], host: str) -> dict[str, t.Any]:
    """The ``forecast`` finding: ok when it converges, a warning when it does not (the move may
    still finish through its timeout action) or when part of the guest could not be measured."""
    problems = list((fc.get("measured") or {}).get("problems") or [])
    msg = fc["msg"] + ("" if not problems else " Not measured: %s." % "; ".join(problems))
    status = "ok" if fc["converges"] and not problems else "warning"
    rec = fc.get("recommendation") or {}
    return finding("forecast", status, host, msg, verdict=fc["verdict"], total_s=fc.get("total_s"),
                   memory_passes=fc.get("memory_passes"), downtime_ms=fc.get("downtime_ms"),
                   lever=rec.get("lever"), link_measured=fc.get("link_measured"),
                   link_bps=(fc.get("link") or {}).get("bps"), link_seconds=(fc.get("link") or {}).get("seconds"))


def check_transport(opts: PreflightOptions, probes: Probes, *, live: bool, copies_disks: bool, dest_uri: str,
                    src_label: str, dest: str, result: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """Which transport will protect the move's streams (:func:`_tls.decide`), from both hosts'
    TLS material (:func:`_tls.pair_faults`); sets ``result["transport"]``
    (:meth:`_tls.Transport.as_result`)."""
    out: list[dict[str, t.Any]] = []
    faults: list[_tls.Fault] = []
    if live and opts.tls is not False:
        if opts.dest_tls is None:
            out.append(finding("tls_certificates", "warning", dest, "The destination's TLS material was not "
                               "read (give dest_tls: host_info's tls of the destination): only the source's "
                               "certificates are checked."))
        faults = _tls.pair_faults(probes.tls_material(), opts.dest_tls, src_label=src_label, dst_label=dest,
                                  dest_name=opts.tls_destination or opts.dest_host, now=probes.now())
    decided = _tls.decide(opts.tls, opts.allow_insecure_transport, live=live, copies_disks=copies_disks,
                          dest_uri=dest_uri, faults=faults, insecure_var=opts.insecure_var)
    for status, check, msg, host in decided.findings:
        out.append(finding(check, status, host or dest, msg))
    result["transport"] = decided.as_result()
    return out


def options_from_params(params: dict[str, t.Any]) -> PreflightOptions:
    """:class:`PreflightOptions` from the ``preflight`` module's parameters (``ports`` is
    ``{migrate, disks, timeout_s}``)."""
    values = {k: v for k, v in params.items()
              if k in {f.name for f in dataclasses.fields(PreflightOptions)} and v is not None}
    ports = params.get("ports") or {}
    values["migrate_port"] = int(ports.get("migrate") or DEFAULT_MIGRATE_PORT)
    values["disks_port"] = int(ports.get("disks") or DEFAULT_DISKS_PORT)
    values["port_timeout_s"] = float(ports.get("timeout_s") or _args.default("ports.timeout_s", "preflight"))
    values["ignore_blocked_ports"] = bool(ports.get("ignore_blocked"))
    return PreflightOptions(**values)


def run_module(params: dict[str, t.Any], probes: Probes | None = None) -> dict[str, t.Any]:
    """Backend of the ``preflight`` module: ``{changed: False, report: {ok, findings},
    summary, msg, ...}``; ``failed_checks`` lists the errors' check names."""
    result = run_preflight(options_from_params(params), probes)
    rep = {"ok": result.pop("ok"), "findings": result.pop("findings")}
    summary = result.pop("summary")
    return dict(result, changed=False, report=rep, summary=summary, msg=summary["msg"],
                failed_checks=sorted({f["check"] for f in rep["findings"] if f["status"] == "error"}))
