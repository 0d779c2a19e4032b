# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the roles: thin wrappers that turn Ansible registers (looped results, unreachable
items) into the inputs of the module_utils that decide, so that no decision is written in Jinja:
``_locate`` (where a guest is, where it goes), ``_evacuation`` (what an evacuation moves, and
where), ``_host_prep`` (host UUIDs, mirrored networks), ``_report`` (the findings table, the
image report, the migration summary), ``_migration_plan`` (libvirt URIs of the group) and
``_disk_info`` (the paths and declared formats of a disks list)."""

from __future__ import annotations

from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _evacuation
from ansible_collections.kvmops.migration.plugins.module_utils import _host_prep
from ansible_collections.kvmops.migration.plugins.module_utils import _locate
from ansible_collections.kvmops.migration.plugins.module_utils import _migration_plan
from ansible_collections.kvmops.migration.plugins.module_utils import _report


def _hosts_from_results(results):
    """``{host: facts}`` from a looped ``host_info`` register (``results`` list with ``item``)
    or a dict already keyed by host."""
    if isinstance(results, dict) and "results" in results:
        out = {}
        for res in results["results"]:
            out[res.get("item")] = res
        return out
    return dict(results or {})


def locate_guest(hosts, name, group="kvm_hosts"):
    """``{{ host_facts | kvmops.migration.locate_guest(vm) }}``."""
    return _locate.locate_guest(name, _hosts_from_results(hosts), group)


def _reports(results):
    """``{host: report}`` from a looped ``preflight`` register or a dict of results."""
    out = {}
    for host, res in _hosts_from_results(results).items():
        res = res or {}
        out[host] = res.get("report", res) if isinstance(res, dict) else res
    return out


def pick_destination(hosts, guest, source, reports, reserve_bytes=0, allow_cold=False):
    """``{{ host_facts | kvmops.migration.pick_destination(guest, source, reports) }}``."""
    return _locate.pick_destination(guest, source, _hosts_from_results(hosts),
                                    _reports(reports), int(reserve_bytes or 0), bool(allow_cold))


def select_guests(domains, include=None, exclude=None):
    return _evacuation.select_guests(domains or [], include, exclude)


def plan_evacuation(hosts, source, guests, reports, reserve_bytes=0, concurrency=1):
    """``reports``: a looped ``preflight`` register whose items are ``[guest, host]`` pairs (each
    result's ``copy_bytes`` is read too), or a dict guest -> host -> report."""
    copy_bytes = {}
    if isinstance(reports, dict) and "results" in reports:
        by_guest = {}
        for res in reports["results"]:
            guest, host = res.get("item")[0], res.get("item")[1]
            by_guest.setdefault(guest, {})[host] = res.get("report", res)
            copy_bytes.setdefault(guest, {})[host] = int(res.get("copy_bytes") or 0)
        reports = by_guest
    return _evacuation.plan_evacuation(source, guests or [], _hosts_from_results(hosts), reports or {},
                                       int(reserve_bytes or 0), int(concurrency or 1), copy_bytes)


def evacuation_summary(plan, source, results, skipped=None):
    return _evacuation.evacuation_summary(source, plan or {}, results or {}, skipped or [])


def host_uuid_plan(hosts, order=None, pin=True):
    """Only hosts whose facts were read take part (an unreachable host is not judged)."""
    facts = {}
    for host, res in _hosts_from_results(hosts).items():
        res = res or {}
        if isinstance(res.get("host"), dict) and not res.get("failed") and not res.get("unreachable"):
            facts[host] = res["host"]
    return _host_prep.host_uuid_plan(facts, [h for h in (order or []) if h in facts], bool(pin))


def image_report(src_disks, dst_disks, created=None, slack_ratio=0.10, slack_bytes=64 * 1024 ** 2, shared=None,
                 src_after=None):
    return _report.image_report(src_disks or [], dst_disks or [], created or [],
                                float(slack_ratio), int(slack_bytes), shared or [], src_after or {})


def migration_summary(result, guest, source, dest, images=None, created=None, check_mode=False, dest_nvram=None,
                      forecast=None):
    return _report.migration_summary(guest, source, dest, result or {}, images or {},
                                     created or [], bool(check_mode), dest_nvram or None, forecast or None)


def host_addresses(hosts, hostvars):
    """``{host: ansible_host (or the inventory name)}`` for the inventory names ``hosts``."""
    out = {}
    for host in hosts or []:
        values = hostvars[host] if host in hostvars else {}
        out[host] = str(values.get("ansible_host") or host)
    return out


def libvirt_uris(addresses, user="root", transport="ssh", local=None):
    return _migration_plan.libvirt_uris(dict(addresses or {}), user, transport, local)


def disk_paths(disks):
    return _disk_info.disk_paths(disks or [])


def disk_formats(disks):
    """``{{ disks | kvmops.migration.disk_formats }}``: ``{path: declared format}``."""
    return _disk_info.disk_formats(disks or [])


def findings_table(report, show_ok=False):
    return _report.findings_table(report, bool(show_ok))


def mirror_networks(results, only=None):
    """Networks to define from a looped ``community.libvirt.virt_net`` ``get_xml`` register."""
    defs = []
    for res in (results or {}).get("results", []) if isinstance(results, dict) else results or []:
        if res.get("get_xml"):
            defs.append({"name": res.get("item"), "xml": res["get_xml"]})
    return _host_prep.mirror_networks(defs, only or [])


def preload(value):
    """``{{ '' | kvmops.migration.preload }}`` in a task's name: returns ``value`` unchanged.

    Ansible runs each task in a new worker process forked from ansible-playbook's main process,
    and a worker imports this file (and the module_utils behind it: about 0.25 s) again unless
    the main process already has. A task's name is templated in the main process, so one use
    there, in a role's first task, saves that import on each later task that uses a filter."""
    return value


class FilterModule:
    """kvmops.migration placement and report filters."""

    def filters(self):
        return {
            "locate_guest": locate_guest,
            "pick_destination": pick_destination,
            "select_guests": select_guests,
            "plan_evacuation": plan_evacuation,
            "evacuation_summary": evacuation_summary,
            "host_uuid_plan": host_uuid_plan,
            "image_report": image_report,
            "migration_summary": migration_summary,
            "libvirt_uris": libvirt_uris,
            "host_addresses": host_addresses,
            "disk_paths": disk_paths,
            "disk_formats": disk_formats,
            "findings_table": findings_table,
            "mirror_networks": mirror_networks,
            "preload": preload,
        }
