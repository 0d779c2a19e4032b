# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan of one migration, computed without touching anything: the options
(:class:`MigrationOptions`), the destination and data URIs, the ``VIR_MIGRATE_*`` flags and typed
parameters of ``virDomainMigrate3`` (:class:`MigrationPlan`, :func:`build_plan`), the completion
timeout, the copy set, the C11 decision table about the destination (:func:`classify_destination`)
and the check that the guest still is what the pre-flight saw (:func:`check_unchanged`).

Pure: no libvirt call is made here; the libvirt-python binding is only read for its constants
(``VIR_MIGRATE_*``, ``VIR_MIGRATE_PARAM_*``) and ``virGetVersion``. The driver is :mod:`_migration`.

Addresses (case C09)
--------------------
The migration stream URI (``VIR_MIGRATE_PARAM_URI``) and the storage stream URI
(``VIR_MIGRATE_PARAM_DISKS_URI``, libvirt >= 6.8; ``LISTEN_ADDRESS`` + ``DISKS_PORT`` before)
are always built from the destination's inventory address, so that nothing depends on the
destination's own host name resolving from the source. IPv6 literals are put in brackets.

libvirt versions
----------------
Every optional constant is read with ``getattr(libvirt, NAME, None)``: the binding of libvirt
9.0 (Debian 12) lacks e.g. ``VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES`` (10.9),
``VIR_MIGRATE_PARAM_COMPRESSION_ZSTD_LEVEL`` (9.4) and
``VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER`` (11.1). A feature the binding lacks is either
skipped with a warning in the plan (zero detection) or refused with a clear message (a flag
that changes semantics). There is no migration parameter for the maximum downtime in libvirt
11.3: it is set with ``virDomainMigrateSetMaxDowntime`` once the job runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _forecast
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

GIB = 1024 ** 3

COPY_STORAGE_CHOICES = _args.choices("move", "copy_storage")
TRANSPORT_CHOICES = _args.choices("move", "transport")
TIMEOUT_ACTION_CHOICES = _args.choices("migrate", "timeout_action")
COMPRESSION_CHOICES = _args.choices("move", "compression")

#: States in which a guest executes (or could, if it is not paused): "running" for C11.
RUNNING_STATES = ("running", "blocked")


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
    source_uri: str = _args.spec_field("migrate", "source_uri")
    dest_uri: str | None = _args.spec_field("migrate", "dest_uri")
    dest_user: str = _args.spec_field("migrate", "dest_user")
    transport: str = _args.spec_field("migrate", "transport")
    migrate_port: int | None = _args.spec_field("migrate", "migrate_port")
    disks_port: int | None = _args.spec_field("migrate", "disks_port")
    live: bool = _args.spec_field("migrate", "live")
    persistent: bool = _args.spec_field("migrate", "persistent")
    undefine_source: bool = _args.spec_field("migrate", "undefine_source")
    copy_storage: str = _args.spec_field("migrate", "copy_storage")
    disks: list[str] | None = _args.spec_field("migrate", "disks")
    shared_disks: list[str] = _args.spec_field("migrate", "shared_disks")
    detect_zeroes: bool = _args.spec_field("migrate", "detect_zeroes")
    keep_sparse: bool = _args.spec_field("migrate", "keep_sparse")
    bandwidth_mibps: int | None = _args.spec_field("migrate", "bandwidth_mibps")
    max_downtime_ms: int | None = _args.spec_field("migrate", "max_downtime_ms")
    auto_converge: bool = _args.spec_field("migrate", "auto_converge")
    auto_converge_initial: int | None = _args.spec_field("migrate", "auto_converge_initial")
    auto_converge_increment: int | None = _args.spec_field("migrate", "auto_converge_increment")
    #: the convergence ladder (``_convergence``): max downtime in this many steps from
    #: downtime_start_ms up to max_downtime_ms, post-copy when it is exhausted
    #: (postcopy_on_stall, after stall_iterations passes at its top)
    downtime_steps: int = _args.spec_field("migrate", "downtime_steps")
    downtime_start_ms: int = _args.spec_field("migrate", "downtime_start_ms")
    postcopy_on_stall: bool = _args.spec_field("migrate", "postcopy_on_stall")
    stall_iterations: int = _args.spec_field("migrate", "stall_iterations")
    #: the bandwidth available for the switch-over (bytes/s; the link the pre-flight measured):
    #: VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER where the binding has it
    switchover_bandwidth_bps: int | None = _args.spec_field("migrate", "switchover_bandwidth_bps")
    compression: list[str] = _args.spec_field("migrate", "compression")
    parallel_connections: int | None = _args.spec_field("migrate", "parallel_connections")
    #: True: QEMU's native TLS (VIR_MIGRATE_TLS), refused without valid certificates on the
    #: source; False: plain, only with ``allow_insecure_transport``; None (auto): TLS when the
    #: source holds valid migration certificates, else refused unless ``allow_insecure_transport``
    tls: bool | None = _args.spec_field("migrate", "tls")
    tls_destination: str | None = _args.spec_field("migrate", "tls_destination")
    #: let guest memory and disks cross the network unencrypted (and qemu+tcp://, no_verify)
    allow_insecure_transport: bool = _args.spec_field("migrate", "allow_insecure_transport")
    postcopy: bool = _args.spec_field("migrate", "postcopy")
    timeout_s_per_gib: float = _args.spec_field("migrate", "timeout_s_per_gib")
    timeout_min_s: float = _args.spec_field("migrate", "timeout_min_s")
    #: the pre-flight's forecast (``_forecast.forecast``); given and converging, the completion
    #: timeout is ``timeout_forecast_multiple`` times its ``total_s`` (at least timeout_min_s)
    #: instead of timeout_s_per_gib; None: the per-GiB rule
    forecast: dict[str, t.Any] | None = _args.spec_field("migrate", "forecast")
    timeout_forecast_multiple: float = _args.spec_field("migrate", "timeout_forecast_multiple")
    timeout_action: str = _args.spec_field("migrate", "timeout_action")
    abort_grace_s: float = _args.spec_field("migrate", "abort_grace_s")
    sever_after_s: float | None = _args.spec_field("migrate", "sever_after_s")
    #: how long a post-copy move whose link broke waits for the link before it reports the guest
    #: paused in failed post-copy (``_postcopy.recover``), in seconds
    postcopy_recover_timeout_s: float = _args.spec_field("migrate", "postcopy_recover_timeout_s")
    dest_name: str | None = _args.spec_field("migrate", "dest_name")
    dest_xml: str | None = _args.spec_field("migrate", "dest_xml")
    persist_xml: str | None = _args.spec_field("migrate", "persist_xml")
    unsafe: bool = _args.spec_field("migrate", "unsafe")
    cleanup_leftover: bool = _args.spec_field("migrate", "cleanup_leftover")
    poll_interval_s: float = _args.spec_field("migrate", "poll_interval_s")
    #: the copy set the pre-flight checked and the images were made for: ``[{target, path,
    #: format, virtual_size (bytes)}]`` (other keys ignored); None: not compared
    expect_disks: list[dict[str, t.Any]] | None = _args.spec_field("migrate", "expect_disks")
    #: ``_domain_xml.cpu_fingerprint`` of the CPU the pre-flight checked; None: not compared
    expect_cpu: str | None = _args.spec_field("migrate", "expect_cpu")
    #: what is checked on the destination after the switch-over (``_health.HealthOptions``)
    health: dict[str, t.Any] = _args.spec_field("migrate", "health")

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
        if self.postcopy_on_stall and not self.postcopy:
            raise KvmopsError("postcopy_on_stall needs postcopy=true: post-copy is used only on explicit "
                              "opt-in (a failure during post-copy pauses the guest on the destination).")
        for name in ("downtime_steps", "downtime_start_ms", "stall_iterations"):
            if getattr(self, name) is None or getattr(self, name) < 1:
                raise KvmopsError("%s must be at least 1, got %s." % (name, getattr(self, name)))
        if self.switchover_bandwidth_bps is not None and self.switchover_bandwidth_bps < 0:
            raise KvmopsError("switchover_bandwidth_bps must not be negative, got %s." % self.switchover_bandwidth_bps)
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


def libvirt_uris(addresses: dict[str, str], user: str = "root", transport: str = "ssh",
                 local: str | None = None) -> list[dict[str, str]]:
    """``[{name, uri}]`` of hosts by inventory name -> address, by name, as seen from ``local``
    (which gets ``qemu:///system``): every other host's URI is :func:`build_dest_uri` of its
    address, ``qemu+ssh://USER@ADDR/system`` (any ``transport`` but ``tls``) or
    ``qemu+tls://ADDR/system``; IPv6 literals in brackets. For ``domain_cpu``'s ``group_uris``."""
    return [{"name": name, "uri": _libvirt.DEFAULT_URI if name == local else
             build_dest_uri(str(addresses[name]), "tls" if transport == "tls" else "ssh", user)}
            for name in sorted(addresses)]


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
    #: how ``timeout_s`` was computed: ``per_gib`` (timeout_s_per_gib), ``forecast``
    #: (timeout_forecast_multiple x the forecast's total_s), None (no timeout)
    timeout_basis: str | None = None

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
            "sparse_targets": list(self.sparse_targets), "timeout_basis": self.timeout_basis,
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


def plan_timeout(opts: MigrationOptions, data_bytes: int) -> tuple[int | None, str | None]:
    """``(timeout_s, basis)`` of a live move: with a converging ``opts.forecast``,
    :func:`_forecast.completion_timeout_s` (``timeout_forecast_multiple`` x its ``total_s``, at
    least ``timeout_min_s``; basis ``forecast``); else :func:`completion_timeout_s` of
    ``data_bytes`` (basis ``per_gib``). ``timeout_s_per_gib <= 0`` disables both: ``(None, None)``.
    """
    if opts.timeout_s_per_gib <= 0:
        return None, None
    from_forecast = _forecast.completion_timeout_s(opts.forecast, opts.timeout_forecast_multiple, opts.timeout_min_s)
    if from_forecast is not None:
        return from_forecast, "forecast"
    return completion_timeout_s(data_bytes, opts.timeout_s_per_gib, opts.timeout_min_s), "per_gib"


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
    name = _libvirt.const(lv, "VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES")
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
        if _libvirt.const(lv, "VIR_MIGRATE_PARAM_DISKS_URI") is not None:
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
    if opts.switchover_bandwidth_bps:
        if _libvirt.const(lv, "VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER") is None:
            warnings.append("switchover_bandwidth_bps not passed: libvirt %s has no bandwidth.avail.switchover "
                            "parameter (libvirt >= 11.1, QEMU >= 9.1); QEMU estimates the switch-over bandwidth "
                            "itself." % _libvirt.binding_version(lv))
        else:
            put("VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER", int(opts.switchover_bandwidth_bps))
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
    timeout_s, timeout_basis = plan_timeout(opts, data_bytes) if active else (None, None)
    dest_uri = opts.dest_uri or build_dest_uri(opts.dest_host, opts.transport, opts.dest_user)
    return MigrationPlan(
        domain=source["name"], uuid=source["uuid"], dest_name=dest_name, dest_uri=dest_uri,
        migrate_uri=migrate_uri, disks_uri=disks_uri, flags=flags, flag_names=names,
        params=params, disks=disks, offline=not active, data_bytes=data_bytes,
        timeout_s=timeout_s, timeout_action=opts.timeout_action if active else "abort",
        max_downtime_ms=opts.max_downtime_ms if active else None, warnings=warnings,
        sparse_targets=sparse_targets, timeout_basis=timeout_basis)


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
