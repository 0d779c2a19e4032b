#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_info
short_description: Identity, memory and guests of a libvirt host, to locate and place guests
version_added: 0.1.0
description:
  - Reads, over a read-only libvirt connection, what the roles need to find a guest in a group of
    hosts and to choose where it goes, and the host UUID facts of case C10.
  - "Host: host name, the host UUID libvirt reports and the one set in libvirtd.conf
    (C(host_uuid)), CPU vendor and model, CPU count, libvirt and QEMU versions, total, free and
    available memory in bytes (available = free + buffers + page cache)."
  - "Domains: every domain defined or running on the host, with name, UUID, state, active,
    persistent, memory in bytes and vCPU count."
  - Changes nothing.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the host
  - lxml (python3-lxml)
options:
  uri:
    description: libvirt URI of the host; the connection is read-only.
    type: str
    default: qemu:///system
  libvirtd_conf:
    description: Path of libvirtd.conf, read for C(host_uuid). A missing file is reported, not an error.
    type: path
    default: /etc/libvirt/libvirtd.conf
  domains:
    description: Include the list of domains.
    type: bool
    default: true
extends_documentation_fragment:
  - kvmops.migration.attributes.info_module
notes:
  - Memory values are bytes; libvirt reports KiB.
seealso:
  - module: kvmops.migration.preflight
  - name: libvirt host UUID
    description: The C(host_uuid) setting of libvirtd.conf.
    link: https://libvirt.org/manpages/libvirtd.html
"""

EXAMPLES = r"""
- name: Facts of every host of the group
  kvmops.migration.host_info:
  delegate_to: "{{ item }}"
  loop: "{{ groups['kvm_hosts'] }}"
  register: hosts

- name: Where does vm1 run?
  ansible.builtin.debug:
    msg: "{{ hosts | kvmops.migration.locate_guest('vm1') }}"
"""

RETURN = r"""
host:
  description: Facts of the host.
  returned: always
  type: dict
  contains:
    hostname: {description: "Host name.", type: str}
    uri: {description: "libvirt URI connected to.", type: str}
    uuid: {description: "Host UUID libvirt reports (capabilities C(//host/uuid)).", type: str}
    uuid_configured: {description: "C(host_uuid) set in libvirtd.conf, or null.", type: str}
    uuid_configured_valid: {description: "Whether that value is a UUID libvirt accepts; null when unset.", type: bool}
    libvirtd_conf_exists: {description: "Whether libvirtd.conf exists.", type: bool}
    arch: {description: "Host architecture.", type: str}
    cpu_vendor: {description: "Host CPU vendor.", type: str}
    cpu_model: {description: "Host CPU model libvirt names.", type: str}
    cpus: {description: "Active CPUs.", type: int}
    libvirt_version: {description: "libvirt version.", type: str, sample: "11.3.0"}
    hypervisor_version: {description: "QEMU version.", type: str, sample: "10.0.0"}
    memory_bytes: {description: "Total memory in bytes.", type: int}
    free_memory_bytes: {description: "Free memory in bytes.", type: int}
    available_memory_bytes: {description: "Free plus buffers and page cache, in bytes.", type: int}
    running_memory_bytes: {description: "Memory of the active domains, in bytes (with O(domains)).", type: int}
    running_vcpus: {description: "vCPUs of the active domains (with O(domains)).", type: int}
domains:
  description: Every domain of the host, by name.
  returned: when O(domains=true)
  type: list
  elements: dict
  contains:
    name: {description: "Domain name.", type: str}
    uuid: {description: "Domain UUID.", type: str}
    state: {description: "C(running), C(paused), C(shutoff), ...", type: str}
    active: {description: "Whether it runs (or is paused).", type: bool}
    persistent: {description: "Whether it has a persistent definition.", type: bool}
    memory_bytes: {description: "Current memory in bytes.", type: int}
    max_memory_bytes: {description: "Maximum memory in bytes.", type: int}
    vcpus: {description: "vCPU count.", type: int}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _host, _libvirt


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            uri=dict(type="str", default=_libvirt.DEFAULT_URI),
            libvirtd_conf=dict(type="path", default=_host.DEFAULT_LIBVIRTD_CONF),
            domains=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    _module.check_requirements(module)
    module.exit_json(changed=False, **_module.call_backend(module, _host.run_host_info, module.params))


if __name__ == "__main__":
    main()
