# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by several modules: one type and one default per option.

- :func:`connection_spec`: ``uri``, the libvirt connection of the modules that work on one host
  (disk_info, disk_image, domain_cpu, host_info); documented by the ``kvmops.migration.connection``
  doc fragment, action group ``kvmops.migration.host``.
- :func:`move_spec`: the options of a move that ``preflight`` checks and ``migrate`` carries out;
  documented by the ``kvmops.migration.move`` doc fragment (its ``destination`` part and the
  rest), action group ``kvmops.migration.move``;
- :func:`destination_spec`: the part of them that names the guest, the source and the
  destination, which ``cold_move`` takes too (fragment ``kvmops.migration.move.destination``).
- :func:`migrate_spec`, :func:`preflight_spec`: the backend options of ``migrate`` and
  ``preflight`` (the move's and their own); each module adds only what its ``main()`` consumes
  itself (``progress_file``, ``fail_on_error``).

The option dataclasses (``_migration_plan.MigrationOptions``, ``_preflight.PreflightOptions``) take
each field's default from these specs with :func:`spec_field`, so that a default is written once:
a module's default and the backend's cannot drift apart.
"""

from __future__ import annotations

import copy
import dataclasses
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._libvirt import DEFAULT_URI

_CONNECTION: dict[str, dict[str, t.Any]] = {
    "uri": dict(type="str", default=DEFAULT_URI),
}

#: the guest, the source and the destination of a move (also of ``cold_move``)
_DESTINATION: dict[str, dict[str, t.Any]] = {
    "domain": dict(type="str", required=True, aliases=["name"]),
    "source_uri": dict(type="str", default=DEFAULT_URI),
    "dest_host": dict(type="str", required=True),
    "dest_uri": dict(type="str"),
    "dest_user": dict(type="str", default="root"),
    "transport": dict(type="str", choices=["ssh", "tls"], default="ssh"),
}

_MOVE: dict[str, dict[str, t.Any]] = {
    **_DESTINATION,
    "dest_name": dict(type="str"),
    "copy_storage": dict(type="str", choices=["all", "incremental", "none"], default="all"),
    "disks": dict(type="list", elements="str"),
    "shared_disks": dict(type="list", elements="str", default=[]),
    "tls": dict(type="bool"),
    "allow_insecure_transport": dict(type="bool", default=False),
    "tls_destination": dict(type="str"),
    "detect_zeroes": dict(type="bool", default=True),
    "parallel_connections": dict(type="int"),
    "postcopy": dict(type="bool", default=False),
    "compression": dict(type="list", elements="str", choices=["xbzrle", "mt", "zlib", "zstd"], default=[]),
    "cleanup_leftover": dict(type="bool", default=False),
}

#: the suboptions of ``health`` (``migrate``, ``cold_move``): what is checked on the destination
#: after the switch-over (``_health.HealthOptions``)
_HEALTH: dict[str, dict[str, t.Any]] = {
    "enabled": dict(type="bool", default=True),
    "window_s": dict(type="float", default=2),
    "agent_timeout_s": dict(type="float", default=15),
    "sync_clock": dict(type="bool", default=True),
    "fstrim": dict(type="bool", default=False),
}

#: the options only ``migrate`` has (its backend is ``_migration_plan.MigrationOptions``)
_MIGRATE_ONLY: dict[str, dict[str, t.Any]] = {
    "migrate_port": dict(type="int"),
    "disks_port": dict(type="int"),
    "live": dict(type="bool", default=True),
    "persistent": dict(type="bool", default=True),
    "undefine_source": dict(type="bool", default=True),
    "keep_sparse": dict(type="bool", default=True),
    "bandwidth_mibps": dict(type="int"),
    "max_downtime_ms": dict(type="int"),
    "auto_converge": dict(type="bool", default=False),
    "auto_converge_initial": dict(type="int"),
    "auto_converge_increment": dict(type="int"),
    "downtime_steps": dict(type="int", default=1),
    "downtime_start_ms": dict(type="int", default=100),
    "postcopy_on_stall": dict(type="bool", default=False),
    "stall_iterations": dict(type="int", default=3),
    "switchover_bandwidth_bps": dict(type="int"),
    "timeout_s_per_gib": dict(type="float", default=800),
    "timeout_min_s": dict(type="float", default=300),
    "forecast": dict(type="dict"),
    "timeout_forecast_multiple": dict(type="float", default=3),
    "timeout_action": dict(type="str", choices=["abort", "postcopy"], default="abort"),
    "abort_grace_s": dict(type="float", default=120),
    "sever_after_s": dict(type="float", default=10),
    "postcopy_recover_timeout_s": dict(type="float", default=300),
    "poll_interval_s": dict(type="float", default=1),
    "dest_xml": dict(type="str", no_log=True),
    "persist_xml": dict(type="str", no_log=True),
    "unsafe": dict(type="bool", default=False),
    "expect_disks": dict(type="list", elements="dict"),
    "expect_cpu": dict(type="str"),
    "health": dict(type="dict", default={}, options=_HEALTH),
}

#: the options only ``preflight`` has (its backend is ``_preflight.PreflightOptions``; ``ports``
#: becomes its fields migrate_port, disks_port, port_timeout_s and ignore_blocked_ports)
_PREFLIGHT_ONLY: dict[str, dict[str, t.Any]] = {
    "group": dict(type="list", elements="dict", default=[], options=dict(
        name=dict(type="str", required=True), uri=dict(type="str", required=True))),
    "located": dict(type="dict", options=dict(source=dict(type="str", required=True),
                                              hosts=dict(type="dict", default={}))),
    "network_map": dict(type="dict", default={}),
    "require_state": dict(type="str", choices=["running", "shut off", "any"], default="running"),
    "dest_tls": dict(type="dict"),
    "insecure_var": dict(type="str", default="allow_insecure_transport"),
    "cold_move_var": dict(type="str"),
    "cold_move_allowed": dict(type="bool", default=False),
    "images_created_next": dict(type="bool", default=False),
    "ports": dict(type="dict", default={}, options=dict(
        migrate=dict(type="int", default=49152),
        disks=dict(type="int", default=49153),
        timeout_s=dict(type="float", default=3.0),
        ignore_blocked=dict(type="bool", default=False))),
    "dest_disks": dict(type="list", elements="dict", default=[]),
    "dest_mounts": dict(type="list", elements="dict", default=[]),
    "dest_interfaces": dict(type="list", elements="str"),
    "dest_manifest": dict(type="list", elements="dict"),
    #: the forecast of the move (issue 19, ``_forecast``): measure the guest, forecast time,
    #: passes, downtime, convergence
    "forecast": dict(type="dict", default={}, options=dict(
        enabled=dict(type="bool", default=True),
        seconds=dict(type="int", default=1),
        link_probe=dict(type="bool", default=True),
        link_mibps=dict(type="float"),
        bandwidth_mibps=dict(type="int"),
        max_downtime_ms=dict(type="int"),
        stream_mibps=dict(type="float"))),
    "dest_probe": dict(type="dict", options=dict(
        probe_id=dict(type="str", required=True),
        ports=dict(type="list", elements="dict", default=[], options=dict(
            requested=dict(type="int", required=True), port=dict(type="int"),
            state=dict(type="str", required=True), reason=dict(type="str"))),
        markers=dict(type="list", elements="dict", default=[], options=dict(
            dir=dict(type="str", required=True), path=dict(type="str", required=True),
            state=dict(type="str", required=True), reason=dict(type="str"))),
        pid=dict(type="int"), lifetime_s=dict(type="float"))),
}

_SPECS: dict[str, dict[str, dict[str, t.Any]]] = {
    "connection": _CONNECTION,
    "move": _MOVE,
    "migrate": dict(_MOVE, **_MIGRATE_ONLY),
    "preflight": dict(_MOVE, **_PREFLIGHT_ONLY),
    "health": _HEALTH,
}

#: the key of a dataclass field's metadata that names the option its default comes from
SPEC_KEY = "kvmops_spec"

#: AnsibleModule converts a default to the option's type; the fields hold what it would
_CONVERT: dict[str, t.Callable[[t.Any], t.Any]] = {"int": int, "float": float, "bool": bool, "str": str}


def connection_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the connection options (``{name: AnsibleModule option dict}``)."""
    return copy.deepcopy(_CONNECTION)


def destination_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the options that name the guest, the source and the destination."""
    return copy.deepcopy(_DESTINATION)


def move_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the options of a move (``{name: AnsibleModule option dict}``)."""
    return copy.deepcopy(_MOVE)


def migrate_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the backend options of ``migrate``: the move's and its own."""
    return copy.deepcopy(_SPECS["migrate"])


def health_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the ``health`` option (``migrate`` and ``cold_move``)."""
    return {"health": copy.deepcopy(_MIGRATE_ONLY["health"])}


def preflight_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the backend options of ``preflight``: the move's and its own."""
    return copy.deepcopy(_SPECS["preflight"])


def option(spec: str, path: str) -> dict[str, t.Any]:
    """The option dict of ``path`` in spec ``spec`` (``connection``, ``move``, ``migrate``,
    ``preflight``); ``path`` names a suboption with a dot (``ports.timeout_s``). A copy.

    :raises KeyError: no such spec or option.
    """
    options = _SPECS[spec]
    *parents, name = path.split(".")
    for parent in parents:
        options = options[parent]["options"]
    return copy.deepcopy(options[name])


def default(name: str, spec: str | None = None) -> t.Any:
    """The default of option ``name`` (a dotted path for a suboption) of ``spec`` (None: the
    shared move or connection options), converted to the option's type as AnsibleModule does
    (``800`` of a float option is ``800.0``); None when it has none. Lists and dicts come as fresh
    copies.

    :raises KeyError: ``name`` is not an option of that spec.
    """
    if spec is None:
        spec = "move" if name in _MOVE else "connection"
    opt = option(spec, name)
    value = opt.get("default")
    if value is not None and opt.get("type") in _CONVERT:
        value = _CONVERT[opt["type"]](value)
    return value


def spec_field(spec: str, name: str) -> t.Any:
    """A ``dataclasses.field`` whose default is :func:`default` of option ``name`` of ``spec``
    (a fresh copy per instance for a list or dict; no default for a required option); its
    metadata names the option (``{SPEC_KEY: "spec:name"}``), which the unit tests check for
    every field of the option dataclasses.

    :raises KeyError: ``name`` is not an option of that spec.
    """
    # the field is made here for the dataclass body that calls spec_field
    # pylint: disable=invalid-field-call
    metadata = {SPEC_KEY: "%s:%s" % (spec, name)}
    if option(spec, name).get("required"):
        return dataclasses.field(metadata=metadata)
    value = default(name, spec)
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: default(name, spec), metadata=metadata)
    return dataclasses.field(default=value, metadata=metadata)


def choices(spec: str, name: str) -> tuple[str, ...]:
    """The choices of option ``name`` of ``spec`` as a tuple (empty when it has none)."""
    return tuple(option(spec, name).get("choices") or ())
