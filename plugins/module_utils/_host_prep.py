# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host preparation, what the ``kvm_host`` role decides across the group before any move: a
host UUID of its own for every host (case C10: libvirt refuses to migrate between hosts with the
same one) and the libvirt networks mirrored from a reference host, made fit to define on another.

The host UUID facts come from :mod:`_host` (``host_info``: ``uuid``, ``uuid_configured``,
``uuid_configured_valid``); network definitions are the XML of ``virNetworkGetXMLDesc`` as
``community.libvirt.virt_net get_xml`` returns it, parsed with :mod:`_domain_xml`'s hardened parser.
"""

from __future__ import annotations

import typing as t
import uuid as uuidlib

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml

#: UUID namespace of the host UUIDs this collection writes (uuid5 of "kvmops-host:<name>").
HOST_UUID_NAMESPACE = uuidlib.UUID("5d0f8c1e-3b0a-4e58-9a51-6b7f3c2d9e10")


# --------------------------------------------------------------------------------------------
# Host UUIDs (case C10)
# --------------------------------------------------------------------------------------------

def new_host_uuid(host: str, taken: t.Iterable[str] = ()) -> str:
    """A stable UUID for ``host`` (uuid5, so reruns agree) that is not in ``taken``."""
    taken_set = {u.lower() for u in taken if u}
    salt = 0
    while True:
        value = str(uuidlib.uuid5(HOST_UUID_NAMESPACE, "kvmops-host:%s%s" % (
            host, ":%d" % salt if salt else "")))
        if value not in taken_set:
            return value
        salt += 1


def host_uuid_plan(hosts: dict[str, dict[str, t.Any]], order: t.Sequence[str] | None = None,
                   pin: bool = True) -> dict[str, dict[str, t.Any]]:
    """What each host's ``host_uuid`` in libvirtd.conf must be, so that every host of the group
    has its own (case C10).

    :param hosts: inventory host -> ``host_info`` ``host`` dict (``uuid``, ``uuid_configured``,
        ``uuid_configured_valid``).
    :param order: inventory order; the first host holding a duplicated UUID keeps it.
    :param pin: write the current UUID into libvirtd.conf when none is configured (it is then
        kept even if SMBIOS or machine-id change, e.g. when the machine is cloned).
    :returns: host -> ``{action: keep|pin|replace, uuid, current, restart, reason}``;
        ``restart`` is True when libvirtd must be restarted for the value to take effect.
    """
    order = [h for h in (order or sorted(hosts)) if h in hosts]
    order += sorted(h for h in hosts if h not in order)
    taken = [str((hosts[h] or {}).get("uuid") or "").lower() for h in order]
    seen: dict[str, str] = {}
    plan: dict[str, dict[str, t.Any]] = {}
    for host in order:
        facts = hosts[host] or {}
        current = str(facts.get("uuid") or "").lower() or None
        configured = facts.get("uuid_configured")
        valid = facts.get("uuid_configured_valid")
        entry = {"action": "keep", "uuid": current, "current": current, "restart": False, "reason": ""}
        if configured is not None and valid is False:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="host_uuid %r in libvirtd.conf is not a valid host UUID" % configured)
        elif current is None:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="libvirt reports no host UUID")
        elif current in seen:
            entry.update(action="replace", uuid=new_host_uuid(host, taken), restart=True,
                         reason="host UUID %s is also %s's (cloned machines?): libvirt refuses to "
                                "migrate between them ('Attempt to migrate guest to the same host')"
                                % (current, seen[current]))
        elif configured is None and pin:
            entry.update(action="pin", reason="no host_uuid in libvirtd.conf: the current one is "
                                              "written there so that it stays unique")
        if entry["action"] == "replace":
            taken.append(entry["uuid"])
        if current and current not in seen:
            seen[current] = host
        plan[host] = entry
    return plan


# --------------------------------------------------------------------------------------------
# Networks mirrored from a reference host
# --------------------------------------------------------------------------------------------

def network_for_host(xml: str) -> str:
    """A libvirt network definition of another host, made fit to define here: its ``<uuid>``
    and the bridge's ``<mac>`` are removed, so that libvirt gives this host its own (two hosts
    with the same bridge MAC on one segment confuse their neighbours). Parsed with the
    collection's one hardened parser (:func:`_domain_xml.from_string`: no entities, no network).

    :raises KvmopsError: lxml missing. :raises lxml.etree.XMLSyntaxError: not well-formed.
    """
    _domain_xml.require_lxml()
    root = _domain_xml.from_string(xml, remove_blank_text=False)  # the collection's one hardened parser
    for tag in ("uuid", "mac"):
        for node in root.findall(tag):
            root.remove(node)
    return _domain_xml.etree.tostring(root, encoding="unicode")


def mirror_networks(definitions: list[dict[str, t.Any]], only: t.Sequence[str] = ()) -> list[dict[str, str]]:
    """``[{name, xml}]`` from ``[{name, xml}]`` read on the reference host (``only``: names kept,
    empty keeps all), each passed through :func:`network_for_host`."""
    out = []
    for item in definitions or []:
        if only and item.get("name") not in only:
            continue
        out.append({"name": item["name"], "xml": network_for_host(item["xml"])})
    return out
