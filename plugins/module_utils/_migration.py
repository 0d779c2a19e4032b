# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live (or offline) migration of one libvirt domain: flags, typed parameters, the job waiter,
the completion timeout and its escalation, the safety checks on the destination and the result
statistics.

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

Addresses (case C09)
--------------------
The migration stream URI (``VIR_MIGRATE_PARAM_URI``) and the storage stream URI
(``VIR_MIGRATE_PARAM_DISKS_URI``, libvirt >= 6.8; ``LISTEN_ADDRESS`` + ``DISKS_PORT`` before)
are always built from the destination's inventory address, so that nothing depends on the
destination's own host name resolving from the source. IPv6 literals are put in brackets.

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

libvirt versions
----------------
Every optional constant is read with ``getattr(libvirt, NAME, None)``: the binding of libvirt
9.0 (Debian 12) lacks e.g. ``VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES`` (10.9),
``VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL`` (9.4) and
``VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER`` (11.1). A feature the binding lacks is either
skipped with a warning in the plan (zero detection) or refused with a clear message (a flag
that changes semantics). There is no migration parameter for the maximum downtime in libvirt
11.3: it is set with ``virDomainMigrateSetMaxDowntime`` once the job runs.

libvirt API relied on: ``virDomainMigrate3``, ``virDomainGetJobStats`` (with and without
``VIR_DOMAIN_JOB_STATS_COMPLETED``), ``virDomainAbortJob``, ``virDomainMigrateStartPostCopy``,
``virDomainMigrateSetMaxDowntime``, ``virDomainGetState``, ``virDomainGetInfo``,
``virDomainGetBlockInfo``, ``virDomainGetXMLDesc``, ``virDomainSetMetadata``/
``virDomainGetMetadata``, ``virDomainResume``, ``virDomainDestroy``, ``virDomainUndefineFlags``,
``virDomainLookupByName``/``ByUUIDString``. See https://libvirt.org/html/libvirt-libvirt-domain.html
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import threading
import time
import typing as t
import uuid as uuidlib

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _images
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _sockets
from ansible_collections.kvmops.migration.plugins.module_utils import _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

GIB = 1024 ** 3

#: XML namespace of the marker this collection puts into the live XML of a guest it migrates.
METADATA_URI = "https://kvmops.invalid/migration/1"
METADATA_KEY = "kvmops"

COPY_STORAGE_CHOICES = ("all", "incremental", "none")
TRANSPORT_CHOICES = ("ssh", "tls")
TIMEOUT_ACTION_CHOICES = ("abort", "postcopy")
COMPRESSION_CHOICES = ("xbzrle", "mt", "zlib", "zstd")

#: States in which a guest executes (or could, if it is not paused): "running" for C11.
RUNNING_STATES = ("running", "blocked")


def _const(lv: t.Any, name: str) -> t.Any:
    """``libvirt.<name>`` or None when this binding lacks it."""
    return getattr(lv, name, None)


def _need(lv: t.Any, name: str, why: str) -> t.Any:
    """``libvirt.<name>``; raise when the binding lacks it.

    :raises KvmopsError: naming the constant and what needs it.
    """
    value = getattr(lv, name, None)
    if value is None:
        raise KvmopsError("%s needs %s, which this libvirt-python (libvirt %s) does not have: "
                          "upgrade libvirt-python or do without %s." % (why, name, _libvirt.binding_version(lv), why))
    return value


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MigrationOptions:
    """What the user asked for. Units are in the names (``_ms``, ``_s``, ``_mibps``).

    ``domain`` is a name or UUID on the source; ``dest_host`` the destination's inventory
    address (IPv4, IPv6 literal or a name that resolves from the source).
    """

    domain: str
    dest_host: str
    source_uri: str = _libvirt.DEFAULT_URI
    dest_uri: str | None = None
    dest_user: str = "root"
    transport: str = "ssh"
    migrate_port: int | None = None
    disks_port: int | None = None
    live: bool = True
    persistent: bool = True
    undefine_source: bool = True
    copy_storage: str = "all"
    disks: list[str] | None = None
    shared_disks: list[str] = dataclasses.field(default_factory=list)
    detect_zeroes: bool = True
    keep_sparse: bool = True
    bandwidth_mibps: int | None = None
    max_downtime_ms: int | None = None
    auto_converge: bool = False
    auto_converge_initial: int | None = None
    auto_converge_increment: int | None = None
    compression: list[str] = dataclasses.field(default_factory=list)
    parallel_connections: int | None = None
    #: True: QEMU's native TLS (VIR_MIGRATE_TLS), refused without valid certificates on the
    #: source; False: plain, only with ``allow_insecure_transport``; None (auto): TLS when the
    #: source holds valid migration certificates, else refused unless ``allow_insecure_transport``
    tls: bool | None = None
    tls_destination: str | None = None
    #: let guest memory and disks cross the network unencrypted (and qemu+tcp://, no_verify)
    allow_insecure_transport: bool = False
    postcopy: bool = False
    timeout_s_per_gib: float = 800.0
    timeout_min_s: float = 300.0
    timeout_action: str = "abort"
    abort_grace_s: float = 120.0
    sever_after_s: float | None = 10.0
    dest_name: str | None = None
    dest_xml: str | None = None
    persist_xml: str | None = None
    unsafe: bool = False
    cleanup_leftover: bool = False
    poll_interval_s: float = 1.0
    #: the copy set the pre-flight checked and the images were made for: ``[{target, path,
    #: format, virtual_size (bytes)}]`` (other keys ignored); None: not compared
    expect_disks: list[dict[str, t.Any]] | None = None
    #: ``_domain_xml.cpu_fingerprint`` of the CPU the pre-flight checked; None: not compared
    expect_cpu: str | None = None

    def validate(self) -> None:
        """Refuse contradictory options before anything is opened.

        :raises KvmopsError: naming the option and the allowed values.
        """
        if not self.dest_host or not self.dest_host.strip():
            raise KvmopsError("dest_host is empty: give the destination's inventory address.")
        if self.copy_storage not in COPY_STORAGE_CHOICES:
            raise KvmopsError("copy_storage must be one of %s, got %r."
                              % (", ".join(COPY_STORAGE_CHOICES), self.copy_storage))
        if self.transport not in TRANSPORT_CHOICES:
            raise KvmopsError("transport must be ssh or tls, got %r." % self.transport)
        if self.timeout_action not in TIMEOUT_ACTION_CHOICES:
            raise KvmopsError("timeout_action must be abort or postcopy, got %r." % self.timeout_action)
        if self.timeout_action == "postcopy" and not self.postcopy:
            raise KvmopsError("timeout_action=postcopy needs postcopy=true: post-copy is used only "
                              "on explicit opt-in (a failure during post-copy loses the guest).")
        for name in ("migrate_port", "disks_port"):
            port = getattr(self, name)
            if port is not None and not 0 < port < 65536:
                raise KvmopsError("%s must be a TCP port (1-65535), got %s." % (name, port))
        bad = [c for c in self.compression if c not in COMPRESSION_CHOICES]
        if bad:
            raise KvmopsError("Unknown compression method(s) %s: use %s."
                              % (", ".join(bad), ", ".join(COMPRESSION_CHOICES)))
        if set(self.compression) & {"zlib", "zstd"} and not self.parallel_connections:
            raise KvmopsError("Compression zlib/zstd works only with parallel migration: set "
                              "parallel_connections (e.g. 2) or use xbzrle/mt.")
        if self.disks is not None and self.copy_storage == "none":
            raise KvmopsError("disks lists disks to copy, but copy_storage is none: set "
                              "copy_storage to all or incremental, or drop disks.")
        for name in ("bandwidth_mibps", "max_downtime_ms", "parallel_connections",
                     "auto_converge_initial", "auto_converge_increment"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise KvmopsError("%s must not be negative, got %s." % (name, value))
        if (self.auto_converge_initial is not None or self.auto_converge_increment is not None) \
                and not self.auto_converge:
            raise KvmopsError("auto_converge_initial/increment need auto_converge=true.")
        for item in self.expect_disks or []:
            if not isinstance(item, dict) or not item.get("target"):
                raise KvmopsError("expect_disks: every item needs a target (vda ...), got %r." % (item,))


# --------------------------------------------------------------------------------------------
# Addresses (C09)
# --------------------------------------------------------------------------------------------

def format_host(address: str) -> str:
    """An address for a URI: IPv6 literals in brackets, everything else as given.

    ``198.18.0.2`` -> ``198.18.0.2``; ``fd00::2`` -> ``[fd00::2]``; ``[fd00::2]`` unchanged.
    """
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        return text
    if ":" in text:
        return "[%s]" % text
    return text


def build_dest_uri(dest_host: str, transport: str = "ssh", user: str | None = "root",
                   port: int | None = None) -> str:
    """The libvirt connection URI of the destination.

    ``qemu+ssh://root@198.18.0.2/system`` (ssh, the default) or ``qemu+tls://198.18.0.2/system``
    (tls; the certificate must name the address given). ``port`` is the ssh or libvirtd-tls
    port when not the default.
    """
    if transport not in TRANSPORT_CHOICES:
        raise KvmopsError("transport must be ssh or tls, got %r." % transport)
    host = format_host(dest_host)
    if port:
        host = "%s:%d" % (host, port)
    userinfo = "%s@" % user if user and transport == "ssh" else ""
    return "qemu+%s://%s%s/system" % (transport, userinfo, host)


def build_data_uri(address: str, port: int | None = None) -> str:
    """A migration or NBD data URI ``tcp://<address>[:port]`` (IPv6 in brackets)."""
    host = format_host(address)
    return "tcp://%s:%d" % (host, port) if port else "tcp://%s" % host


# --------------------------------------------------------------------------------------------
# The plan: flags and typed parameters
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class MigrationPlan:
    """Everything ``migrate3`` will be called with, plus the limits of the run.

    ``flags`` is the OR of ``flag_names``; ``params`` maps libvirt's parameter names (the values
    of ``VIR_MIGRATE_PARAM_*``) to ints, strings or lists of strings; ``disks`` the targets that
    are copied; ``timeout_s`` None when no completion timeout applies.
    """

    domain: str
    uuid: str
    dest_name: str
    dest_uri: str
    migrate_uri: str | None
    disks_uri: str | None
    flags: int
    flag_names: list[str]
    params: dict[str, t.Any]
    disks: list[str]
    offline: bool
    data_bytes: int
    timeout_s: int | None
    timeout_action: str
    max_downtime_ms: int | None
    warnings: list[str]
    #: copied disks given ``discard='unmap'`` in the destination's live XML (keep_sparse)
    sparse_targets: list[str] = dataclasses.field(default_factory=list)

    def as_result(self) -> dict[str, t.Any]:
        """The plan as returned by the module (check mode and real run)."""
        params = dict(self.params)
        for key in ("destination_xml", "persistent_xml"):
            if key in params:
                params[key] = "(%d characters of XML)" % len(params[key])
        return {
            "domain": self.domain, "uuid": self.uuid, "dest_name": self.dest_name,
            "dest_uri": self.dest_uri, "migrate_uri": self.migrate_uri, "disks_uri": self.disks_uri,
            "flags": list(self.flag_names), "flags_value": self.flags, "params": params,
            "disks": list(self.disks), "offline": self.offline, "data_bytes": self.data_bytes,
            "timeout_s": self.timeout_s, "timeout_action": self.timeout_action,
            "max_downtime_ms": self.max_downtime_ms, "warnings": list(self.warnings),
            "sparse_targets": list(self.sparse_targets),
        }


def completion_timeout_s(data_bytes: int, s_per_gib: float, min_s: float) -> int | None:
    """Completion timeout scaled by the data to move, as Nova's
    ``live_migration_completion_timeout``: ``s_per_gib`` seconds per GiB of memory plus disk
    data, at least ``min_s``. ``s_per_gib <= 0`` disables the timeout (returns None).

    >>> completion_timeout_s(3 * 1024 ** 3, 800, 300)
    2400
    """
    if s_per_gib <= 0:
        return None
    return int(max(float(min_s), math.ceil(s_per_gib * data_bytes / GIB)))


def select_disks(disk_list: list[dict[str, t.Any]], copy_storage: str,
                 override: list[str] | None = None, shared: t.Iterable[str] = ()) -> list[str]:
    """The targets to copy (libvirt's ``migrate_disks``), from ``_domain_xml.disks`` dicts.

    ``copy_storage: none`` copies nothing (every disk must be shared; libvirt checks that).
    Otherwise the copy set of ``_domain_xml.copy_set`` (writable, non-shareable, local; never
    read-only or cdrom, case C13), or ``override`` checked against it: a writable local disk
    left out is refused unless declared in ``shared`` (case C12).

    :raises KvmopsError: a selected disk cannot be copied, or a writable disk is left behind.
    """
    if copy_storage == "none":
        return []
    selected = list(override) if override is not None else _domain_xml.copy_set(disk_list, shared)
    _domain_xml.check_copy_selection(disk_list, selected, shared)
    return selected


def build_flags(opts: MigrationOptions, *, active: bool, persistent: bool, disks: list[str],
                lv: t.Any = None) -> tuple[int, list[str], list[str]]:
    """The ``VIR_MIGRATE_*`` flags of a migration, by name.

    :param active: the guest runs (or is paused); False means offline migration.
    :param persistent: the source domain has a persistent definition.
    :param disks: the targets that are copied (empty: no storage copy flag).
    :returns: ``(flags, names, warnings)``.
    :raises KvmopsError: offline migration with disks to copy (libvirt cannot copy storage
        offline) or without ``persistent``; post-copy on a non-live migration; a flag this
        binding lacks.
    """
    lv = _libvirt.binding(lv)
    names: list[str] = []
    warnings: list[str] = []
    if active:
        if opts.live:
            names.append("VIR_MIGRATE_LIVE")
    else:
        if disks:
            raise KvmopsError(
                "The guest is shut off: libvirt's offline migration moves only the definition and "
                "cannot copy disks (%s). Start the guest and migrate it live, copy the images to "
                "the destination yourself, or set copy_storage: none when the disks are shared or "
                "already in place." % ", ".join(disks), values={"disks": disks})
        if not opts.persistent:
            raise KvmopsError("The guest is shut off: an offline migration must define it on the "
                              "destination; set persistent: true.")
        names.append("VIR_MIGRATE_OFFLINE")
    if opts.persistent:
        names.append("VIR_MIGRATE_PERSIST_DEST")
    if opts.undefine_source:
        if persistent:
            names.append("VIR_MIGRATE_UNDEFINE_SOURCE")
        else:
            warnings.append("undefine_source ignored: the source domain is transient.")
    if disks:
        names.append("VIR_MIGRATE_NON_SHARED_INC" if opts.copy_storage == "incremental"
                     else "VIR_MIGRATE_NON_SHARED_DISK")
    if active:
        if opts.auto_converge:
            names.append("VIR_MIGRATE_AUTO_CONVERGE")
        if opts.compression:
            names.append("VIR_MIGRATE_COMPRESSED")
        if opts.parallel_connections:
            names.append("VIR_MIGRATE_PARALLEL")
        if opts.postcopy:
            if not opts.live:
                raise KvmopsError("postcopy needs a live migration (live: true).")
            names.append("VIR_MIGRATE_POSTCOPY")
    if opts.tls:
        names.append("VIR_MIGRATE_TLS")
    if opts.unsafe:
        names.append("VIR_MIGRATE_UNSAFE")
    flags = 0
    for name in names:
        flags |= _need(lv, name, "Flag %s" % name)
    return flags, names, warnings


#: libvirt 10.9.0 as ``virGetVersion`` counts it
DETECT_ZEROES_SINCE = 10009000


def detect_zeroes_param(lv: t.Any = None) -> str | None:
    """Name of the zero-detection parameter, or None when this libvirt lacks it.

    The binding's constant when it has one; else, when the libvirt library is 10.9 or newer
    (``virGetVersion``), the parameter's documented name ``migrate_disks_detect_zeroes``: an
    older python3-libvirt (Debian 12's 9.0) passes unknown string-list parameters through to a
    newer library (seen in the lab: binding 9.0 with libvirt 11.3).
    """
    lv = _libvirt.binding(lv)
    name = _const(lv, "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES")
    if name is not None:
        return name
    getter = getattr(lv, "getVersion", None)
    try:
        version = int(getter()) if callable(getter) else 0
    except Exception:  # a broken binding: no zero detection rather than a crash
        version = 0
    return "migrate_disks_detect_zeroes" if version >= DETECT_ZEROES_SINCE else None


def build_params(opts: MigrationOptions, *, dest_name: str, disks: list[str], active: bool,
                 lv: t.Any = None) -> tuple[dict[str, t.Any], str | None, str | None, list[str]]:
    """The typed parameters of ``migrate3``.

    Keys are the values of ``VIR_MIGRATE_PARAM_*``; bandwidth in MiB/s; ``migrate_disks`` and
    ``compression`` are lists (multi-value string parameters).

    :returns: ``(params, migrate_uri, disks_uri, warnings)``.
    :raises KvmopsError: a required parameter constant is missing in this binding.
    """
    lv = _libvirt.binding(lv)
    params: dict[str, t.Any] = {}
    warnings: list[str] = []
    migrate_uri = disks_uri = None

    def put(name: str, value: t.Any) -> None:
        params[_need(lv, name, "Parameter %s" % name)] = value

    put("VIR_MIGRATE_PARAM_DEST_NAME", dest_name)
    if opts.dest_xml:
        put("VIR_MIGRATE_PARAM_DEST_XML", opts.dest_xml)
    if opts.persist_xml:
        put("VIR_MIGRATE_PARAM_PERSIST_XML", opts.persist_xml)
    if not active:
        return params, None, None, warnings

    migrate_uri = build_data_uri(opts.dest_host, opts.migrate_port)
    put("VIR_MIGRATE_PARAM_URI", migrate_uri)
    if disks:
        put("VIR_MIGRATE_PARAM_MIGRATE_DISKS", list(disks))
        if _const(lv, "VIR_MIGRATE_PARAM_DISKS_URI") is not None:
            disks_uri = build_data_uri(opts.dest_host, opts.disks_port)
            put("VIR_MIGRATE_PARAM_DISKS_URI", disks_uri)
        else:
            # libvirt < 6.8: the NBD server listens on listen_address[:disks_port].
            put("VIR_MIGRATE_PARAM_LISTEN_ADDRESS", opts.dest_host.strip().strip("[]"))
            if opts.disks_port:
                put("VIR_MIGRATE_PARAM_DISKS_PORT", opts.disks_port)
        if opts.detect_zeroes:
            name = detect_zeroes_param(lv)
            if name is None:
                warnings.append("detect_zeroes skipped: libvirt %s has no migrate_disks_detect_zeroes "
                                "parameter (libvirt >= 10.9)." % _libvirt.binding_version(lv))
            else:
                params[name] = list(disks)
    if opts.bandwidth_mibps:
        put("VIR_MIGRATE_PARAM_BANDWIDTH", int(opts.bandwidth_mibps))
    if opts.auto_converge:
        if opts.auto_converge_initial is not None:
            put("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL", int(opts.auto_converge_initial))
        if opts.auto_converge_increment is not None:
            put("VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT", int(opts.auto_converge_increment))
    if opts.compression:
        put("VIR_MIGRATE_PARAM_COMPRESSION", list(opts.compression))
    if opts.parallel_connections:
        put("VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS", int(opts.parallel_connections))
    if opts.tls and opts.tls_destination:
        put("VIR_MIGRATE_PARAM_TLS_DESTINATION", opts.tls_destination)
    return params, migrate_uri, disks_uri, warnings


def build_plan(opts: MigrationOptions, source: dict[str, t.Any], lv: t.Any = None) -> MigrationPlan:
    """Compute the whole migration without touching anything.

    :param source: facts of the source guest: ``{name, uuid, active: bool, persistent: bool,
        memory_bytes, disks: [_domain_xml.disks dicts], disk_bytes: {target: allocation bytes}}``.
    :raises KvmopsError: contradictory options, an unsafe copy selection (C12/C13), offline
        migration with storage, a constant this libvirt binding lacks.
    """
    opts.validate()
    lv = _libvirt.binding(lv)
    active = bool(source["active"])
    disks = select_disks(source.get("disks") or [], opts.copy_storage, opts.disks, opts.shared_disks)
    flags, names, warnings = build_flags(opts, active=active, persistent=bool(source["persistent"]),
                                         disks=disks, lv=lv)
    dest_name = opts.dest_name or source["name"]
    params, migrate_uri, disks_uri, more = build_params(opts, dest_name=dest_name, disks=disks,
                                                        active=active, lv=lv)
    warnings.extend(more)
    sparse_targets: list[str] = []
    if active and disks and opts.keep_sparse and not opts.dest_xml and source.get("migratable_xml"):
        dest_xml, sparse_targets = _domain_xml.with_discard_unmap(source["migratable_xml"], disks)
        if sparse_targets:
            params[_need(lv, "VIR_MIGRATE_PARAM_DEST_XML", "Parameter VIR_MIGRATE_PARAM_DEST_XML")] = dest_xml
    disk_bytes = sum(int((source.get("disk_bytes") or {}).get(d) or 0) for d in disks)
    data_bytes = (int(source.get("memory_bytes") or 0) if active else 0) + disk_bytes
    timeout_s = completion_timeout_s(data_bytes, opts.timeout_s_per_gib, opts.timeout_min_s) \
        if active else None
    dest_uri = opts.dest_uri or build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    return MigrationPlan(
        domain=source["name"], uuid=source["uuid"], dest_name=dest_name, dest_uri=dest_uri,
        migrate_uri=migrate_uri, disks_uri=disks_uri, flags=flags, flag_names=names,
        params=params, disks=disks, offline=not active, data_bytes=data_bytes,
        timeout_s=timeout_s, timeout_action=opts.timeout_action if active else "abort",
        max_downtime_ms=opts.max_downtime_ms if active else None, warnings=warnings,
        sparse_targets=sparse_targets)


# --------------------------------------------------------------------------------------------
# The guest as the pre-flight saw it
# --------------------------------------------------------------------------------------------

def guest_changes(expect_disks: list[dict[str, t.Any]] | None, expect_cpu: str | None,
                  source: dict[str, t.Any], copied: list[str]) -> list[str]:
    """What changed in the guest since the pre-flight, one phrase per difference (empty: none).

    :param expect_disks: the copy set the pre-flight checked and the destination images were
        created for, ``[{target, path, format, virtual_size}]`` (sizes in bytes; a missing or
        None key is not compared; ``format`` None means raw); None: disks not compared.
    :param expect_cpu: :func:`_domain_xml.cpu_fingerprint` of the checked CPU; None: not compared.
    :param source: :func:`source_facts` of the guest now (``disks``, ``disk_capacity`` from
        ``virDomainGetBlockInfo``, ``cpu_fingerprint``).
    :param copied: the copy set computed now from the fresh XML (:func:`select_disks`).
    """
    out: list[str] = []
    if expect_disks is not None:
        expected = {str(d["target"]): d for d in expect_disks}
        now = {d["target"]: d for d in source.get("disks") or [] if d.get("target") in copied}
        for target in copied:
            if target not in expected:
                out.append("disk %s (%s) was added" % (target, now.get(target, {}).get("path") or "no path"))
        for target, exp in expected.items():
            disk = now.get(target)
            if disk is None:
                out.append("disk %s (%s) was removed or is no longer copied" % (target, exp.get("path") or "no path"))
                continue
            if exp.get("path") and disk.get("path") and os.path.normpath(str(exp["path"])) != \
                    os.path.normpath(str(disk["path"])):
                out.append("disk %s now is %s, not %s" % (target, disk["path"], exp["path"]))
            if exp.get("format") is not None and (exp["format"] or "raw") != (disk.get("format") or "raw"):
                out.append("disk %s now is %s, not %s" % (target, disk.get("format") or "raw", exp["format"]))
            if exp.get("virtual_size") is not None:
                size = (source.get("disk_capacity") or {}).get(target)
                if size is None:
                    out.append("the virtual size of disk %s could not be read" % target)
                elif int(size) != int(exp["virtual_size"]):
                    out.append("disk %s was resized from %d to %d bytes" % (target, int(exp["virtual_size"]), int(size)))
    if expect_cpu is not None and expect_cpu != source.get("cpu_fingerprint"):
        out.append("its CPU definition changed (%s, checked %s)" % (source.get("cpu_fingerprint"), expect_cpu))
    return out


def check_unchanged(opts: MigrationOptions, source: dict[str, t.Any], plan: MigrationPlan) -> None:
    """Refuse to move a guest that no longer matches what the pre-flight checked and the
    preparation made images for (``expect_disks``, ``expect_cpu``).

    :raises KvmopsError: naming each difference (:func:`guest_changes`) and the fix (run the
        playbook again); ``values.changes`` lists them. Nothing has been changed at this point.
    """
    changes = guest_changes(opts.expect_disks, opts.expect_cpu, source, plan.disks)
    if changes:
        raise KvmopsError(
            "Guest %s changed since the pre-flight: %s. Nothing was changed: run the playbook again, so "
            "that the pre-flight checks the guest as it is now and the destination images match it."
            % (source["name"], "; ".join(changes)), values={"changes": changes, "copy_set": plan.disks})


# --------------------------------------------------------------------------------------------
# The destination before the move (C11)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Decision:
    """What to do about the destination: ``action`` is ``migrate``, ``noop`` (already there,
    ``changed: false``), ``cleanup_then_migrate`` or ``fail``; ``case`` names the C11 state
    (``a``-``d``) or ``none``; ``msg`` is for the operator."""

    action: str
    case: str
    msg: str


def classify_destination(source: dict[str, t.Any] | None, by_name: dict[str, t.Any] | None,
                         by_uuid: dict[str, t.Any] | None, *, dest_name: str, dest: str,
                         cleanup_leftover: bool = False) -> Decision:
    """The C11 decision table.

    Each domain argument is ``None`` (absent) or ``{name, uuid, state, active: bool,
    persistent: bool, ours: bool}`` (``state`` as :func:`_libvirt.state_name`; ``ours``: carries this
    collection's migration marker). ``by_name`` is the destination domain named ``dest_name``,
    ``by_uuid`` the one with the source's UUID. ``source`` None: absent on the source (then
    ``by_name`` stands for the guest). ``dest`` names the destination in messages.

    (a) other UUID under the name -> fail; (b) paused leftover with the UUID while the source
    runs -> fail with instructions, or clean up when asked and ours; (c) runs on the destination
    and not on the source -> noop; (d) runs on both -> fail at once, touch nothing.
    """
    if source is None:
        guest = by_uuid or by_name
        if guest is None:
            return Decision("fail", "none", "Guest %s is defined neither on the source nor on %s."
                            % (dest_name, dest))
        if guest["state"] in RUNNING_STATES:
            return Decision("noop", "c", "Guest %s already runs on %s and is absent on the source: "
                            "nothing to do." % (guest["name"], dest))
        if guest["state"] == "shutoff" and guest.get("persistent"):
            return Decision("noop", "c", "Guest %s is defined (shut off) on %s and absent on the "
                            "source: already migrated offline." % (guest["name"], dest))
        return Decision("fail", "b", "Guest %s is %s on %s and absent on the source: an interrupted "
                        "(post-copy?) migration. Do not destroy it before checking where the "
                        "guest's memory is; see virsh -c %s domjobinfo %s." % (
                            guest["name"], guest["state"], dest, dest, guest["name"]))

    src_uuid = source["uuid"]
    src_runs = bool(source.get("active"))
    if by_name is not None and by_name["uuid"] != src_uuid:
        if by_name.get("active") and src_runs:
            return Decision("fail", "d", "STOP: a domain named %s runs on %s (UUID %s) and the "
                            "source guest runs too (UUID %s). Nothing was touched; find out which "
                            "one is the real guest." % (dest_name, dest, by_name["uuid"], src_uuid))
        return Decision("fail", "a", "A different domain named %s is defined on %s (UUID %s, %s; the "
                        "source guest has UUID %s). Rename or remove it there, or migrate under "
                        "another name (dest_name)." % (
                            dest_name, dest, by_name["uuid"], by_name["state"], src_uuid))
    if by_uuid is not None and by_uuid["name"] != dest_name:
        return Decision("fail", "a", "UUID %s is used on %s by domain %s (%s), not %s. Remove or "
                        "rename it there first." % (src_uuid, dest, by_uuid["name"],
                                                    by_uuid["state"], dest_name))
    if by_uuid is None:
        return Decision("migrate", "none", "Destination %s has no domain %s." % (dest, dest_name))

    if by_uuid["state"] in RUNNING_STATES:
        if src_runs:
            return Decision("fail", "d", "STOP: guest %s (UUID %s) runs on the source AND on %s. "
                            "Nothing was touched: stop one copy by hand after finding out which one "
                            "has the current disks and clients." % (dest_name, src_uuid, dest))
        return Decision("noop", "c", "Guest %s already runs on %s; the source keeps only an "
                        "inactive definition: nothing to do." % (dest_name, dest))
    if by_uuid.get("active"):  # paused (or another non-running active state) on the destination
        if not src_runs:
            return Decision("fail", "b", "Guest %s is %s on %s and not running on the source: an "
                            "interrupted (post-copy?) migration; check virsh -c %s domjobinfo %s "
                            "before removing anything."
                            % (dest_name, by_uuid["state"], dest, dest, dest_name))
        if cleanup_leftover and by_uuid.get("ours"):
            return Decision("cleanup_then_migrate", "b", "Removing the %s leftover of an earlier "
                            "kvmops migration of %s from %s." % (by_uuid["state"], dest_name, dest))
        why = ("it carries no kvmops marker, so it is not known to be ours"
               if not by_uuid.get("ours") else "set cleanup_leftover: true to let this module remove it")
        return Decision("fail", "b", "Guest %s is %s on %s while it runs on the source: a leftover of "
                        "an aborted migration. Remove it with 'virsh -c %s destroy %s' (the source "
                        "copy is the live one) after checking that no migration job runs "
                        "(virsh domjobinfo %s on the source); %s." % (
                            dest_name, by_uuid["state"], dest, dest, dest_name, dest_name, why))
    # Defined, inactive, same UUID and name.
    if not src_runs:
        return Decision("fail", "a", "Guest %s is defined on %s and on the source, running on neither: "
                        "decide which definition is current and undefine the other." % (dest_name, dest))
    return Decision("migrate", "none", "Guest %s has an inactive definition on %s with the same UUID: "
                    "the migration replaces it." % (dest_name, dest))


# --------------------------------------------------------------------------------------------
# Progress, escalation and statistics
# --------------------------------------------------------------------------------------------

def _stat(stats: dict[str, t.Any], lv: t.Any, name: str) -> t.Any:
    key = _const(lv, name)
    return stats.get(key) if key is not None else None


def progress_from_stats(stats: dict[str, t.Any], elapsed_s: float, lv: t.Any = None) -> dict[str, t.Any]:
    """One progress sample from ``dom.jobStats()``.

    Shape: ``{elapsed_s, active: bool, phase: setup|storage|memory|none, percent,
    data_total_bytes, data_remaining_bytes, memory_remaining_bytes, disk_remaining_bytes,
    memory_iteration, dirty_rate_bytes_per_s, memory_bps, disk_bps, time_ms, downtime_ms,
    memory_processed_bytes, disk_processed_bytes, data_processed_bytes}``; percent of all data
    (memory + disks) processed, None when libvirt reports no total yet; ``downtime_ms`` of a
    running job is libvirt's estimate.
    """
    lv = _libvirt.binding(lv)
    job_type = stats.get("type")
    active = job_type not in (None, _const(lv, "VIR_DOMAIN_JOB_NONE"),
                              _const(lv, "VIR_DOMAIN_JOB_COMPLETED"),
                              _const(lv, "VIR_DOMAIN_JOB_FAILED"),
                              _const(lv, "VIR_DOMAIN_JOB_CANCELLED"))
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
    kind = _const(lv, "VIR_DOMAIN_METADATA_ELEMENT")
    if kind is None:
        return None
    try:
        text = dom.metadata(kind, METADATA_URI, _const(lv, "VIR_DOMAIN_AFFECT_LIVE") or 0)
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
    kind = _const(lv, "VIR_DOMAIN_METADATA_ELEMENT")
    if kind is None:
        return False
    xml = '<migration run="%s" source="%s" started="%d"/>' % (
        run_id, source.replace('"', ""), int(time.time()))
    try:
        dom.setMetadata(kind, xml, METADATA_KEY, METADATA_URI,
                        _const(lv, "VIR_DOMAIN_AFFECT_LIVE") or 0)
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
    live XML, of the persistent one for a shut-off guest).
    """
    info = describe(dom, lv, where)
    action = "read domain %s" % info["name"]
    xml = _call(lv, action, where, dom.XMLDesc, 0)
    if info["active"]:
        # the migratable live XML (secure: keeps graphics passwords) is the base of a destination XML
        flags = (_const(lv, "VIR_DOMAIN_XML_MIGRATABLE") or 0) | (_const(lv, "VIR_DOMAIN_XML_SECURE") or 0)
        info["migratable_xml"] = _call(lv, action, where, dom.XMLDesc, flags)
    disk_list = _domain_xml.disks(xml)
    info["disks"] = disk_list
    info["cpu_fingerprint"] = _domain_xml.cpu_fingerprint(info.get("migratable_xml") or xml)
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

    def __init__(self, dom: t.Any, dconn: t.Any, params: dict[str, t.Any], flags: int) -> None:
        super().__init__(name="kvmops-migrate3", daemon=True)
        self.dom, self.dconn, self.params, self.flags = dom, dconn, params, flags
        self.result: t.Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.dom.migrate3(self.dconn, self.params, self.flags)
        except BaseException as err:  # handed to the main thread, which reports it
            self.error = err


@dataclasses.dataclass
class Runtime:
    """Injectable clock, sleep, libvirt namespace and command runner (tests use fakes)."""

    lv: t.Any = None
    clock: t.Callable[[], float] = time.monotonic
    sleep: t.Callable[[float], None] = time.sleep
    log: t.Callable[[str], None] = lambda msg: None
    progress: t.Callable[[dict[str, t.Any]], None] = lambda sample: None
    runner: _images.Runner = dataclasses.field(default_factory=_images.SubprocessRunner)
    #: wall-clock time (epoch seconds), for certificate validity
    now: t.Callable[[], float] = time.time
    #: this host's TLS material (:func:`_tls.read_host_tls`)
    tls_material: t.Callable[[], dict[str, t.Any]] = _tls.read_host_tls

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

    monitor = MigrationMonitor(plan.timeout_s, plan.timeout_action, plan.max_downtime_ms,
                               opts.abort_grace_s, lv)
    worker = _Worker(dom, dconn, plan.params, plan.flags)
    worker.start()
    notes: list[str] = []
    severed: list[dict[str, t.Any]] = []  # at most one entry: what closing the data connections did
    reabort = _Reabort(dom, opts, rt, notes, lv)

    def check(elapsed: float) -> t.Any:
        if not worker.is_alive():
            return "done"
        if monitor.aborted_at is None and not _libvirt.is_alive(dconn):
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
        if plan.timeout_action == "postcopy":
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

    if worker.error is not None and monitor.postcopy_at is None:
        # migrate3 can return its error while the source's job still runs (libvirt ends the API
        # call once QEMU reports the migration cancelled or failed, and the storage copy's mirror
        # jobs may still wait on a dead link): the job has ended only when the source domain
        # holds none. Until then keep waiting, and close the data connections as above.
        abort_clock = None if monitor.aborted_at is None else started_clock + monitor.aborted_at
        lingering = _wait_source_job_ended(dom, plan, opts, source["name"], rt, notes, abort_clock, severed, lv,
                                           reabort)

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
            % (source["name"], src_where, opts.dest_host, why, _brief(monitor.last), " ".join(recovery)),
            detail=_libvirt.libvirt_error_detail(err) if not isinstance(err, KvmopsError) else str(err),
            values={"progress": monitor.last, "plan": plan.as_result(), "notes": notes})

    ddom = worker.result
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
    return dict(result, changed=True, state="migrated", now_on=opts.dest_host,
                dest_state=dest_info["state"] if dest_info else None, stats=summary,
                progress=monitor.last, escalation=monitor.reason,
                warnings=result["warnings"] + notes,
                msg="Migrated %s to %s in %s ms (downtime %s ms)." % (
                    source["name"], opts.dest_host, summary.get("time_ms"), summary.get("downtime_ms")))


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


def _brief(sample: dict[str, t.Any] | None) -> str:
    if not sample:
        return "none"
    return "%s, %s%%, %s bytes remaining" % (sample["phase"], sample["percent"],
                                             sample["data_remaining_bytes"])


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
    flag = _const(lv, "VIR_DOMAIN_JOB_STATS_COMPLETED")
    if flag is not None:
        # keep them for the operator: `virsh domjobinfo --completed` still shows this migration
        flag |= _const(lv, "VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED") or 0
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
            if stats and stats.get("type") == _const(lv, "VIR_DOMAIN_JOB_COMPLETED"):
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
    return job not in (None, _const(lv, "VIR_DOMAIN_JOB_NONE"), _const(lv, "VIR_DOMAIN_JOB_COMPLETED"),
                       _const(lv, "VIR_DOMAIN_JOB_FAILED"), _const(lv, "VIR_DOMAIN_JOB_CANCELLED"))


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
    keep = _const(lv, "VIR_DOMAIN_UNDEFINE_KEEP_NVRAM")
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
