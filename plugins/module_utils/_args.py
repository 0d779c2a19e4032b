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

The option dataclasses (``_migration_plan.MigrationOptions``, ``_preflight.PreflightOptions``) hold
the same defaults for these options as :func:`default` gives (a unit test compares every field),
so that a module's default and the backend's cannot drift apart.
"""

from __future__ import annotations

import copy
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


def connection_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the connection options (``{name: AnsibleModule option dict}``)."""
    return copy.deepcopy(_CONNECTION)


def destination_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the options that name the guest, the source and the destination."""
    return copy.deepcopy(_DESTINATION)


def move_spec() -> dict[str, dict[str, t.Any]]:
    """A fresh copy of the options of a move (``{name: AnsibleModule option dict}``)."""
    return copy.deepcopy(_MOVE)


def default(name: str) -> t.Any:
    """The default of shared option ``name`` (None when it has none); raises KeyError for a name
    that is not a shared option. Lists come as fresh copies."""
    spec = _MOVE[name] if name in _MOVE else _CONNECTION[name]
    return copy.deepcopy(spec.get("default"))
