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
  - "With O(guest), on the host that defines that guest: its disks as
    M(kvmops.migration.disk_info) describes them (RV(guest_disks)), the other host files it
    refers to that a migration does not copy (RV(guest_paths)) and the size and SHA-256 of its
    NVRAM file, the UEFI variables (RV(guest_nvram)). Locating a guest thus also describes it, in
    the same call."
  - "With O(paths), what M(kvmops.migration.preflight) needs to know of a destination, in one
    call: the paths as M(kvmops.migration.disk_info) describes them (RV(paths)), the filesystems
    that hold them (RV(mounts)), the network interfaces (RV(interfaces)) and the entries of the
    kvmops manifest (RV(manifest)); pass them as its O(kvmops.migration.preflight#module:dest_disks),
    O(kvmops.migration.preflight#module:dest_mounts),
    O(kvmops.migration.preflight#module:dest_interfaces) and
    O(kvmops.migration.preflight#module:dest_manifest)."
  - Changes nothing.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the host
  - lxml (python3-lxml)
  - qemu-img (qemu-utils), blockdev (util-linux) and lvs (lvm2) when O(guest) or O(paths) name
    images, as for M(kvmops.migration.disk_info)
options:
  uri:
    description: libvirt URI of the host; the connection is read-only.
  libvirtd_conf:
    description: Path of libvirtd.conf, read for C(host_uuid). A missing file is reported, not an error.
    type: path
    default: /etc/libvirt/libvirtd.conf
  domains:
    description: Include the list of domains.
    type: bool
    default: true
  guest:
    description:
      - Name or UUID of a guest to describe where it is defined (RV(guest_disks),
        RV(guest_paths), RV(guest_nvram), RV(guest_error)). On the other hosts these are empty.
      - Its images are read with C(qemu-img info -U -f FORMAT) (force-share), so a running guest's
        images can be read, each as the format its domain XML declares (never probed; see
        M(kvmops.migration.disk_info)).
    type: str
  paths:
    description:
      - Image files or block devices to look at on this host, for example the disk and backing
        paths of a guest (RV(guest_disks)) and its RV(guest_paths) read on the source, looked at
        on a destination.
      - When given (even empty), adds RV(paths), RV(mounts), RV(interfaces) and RV(manifest).
      - A path that does not exist is reported in RV(paths) with C(exists=false), not as a failure.
      - Each must be absolute and normalised (no C(..), C(.), C(//) or trailing C(/)), else the
        module fails naming the path before reading anything.
      - "Each path is read as one layer (no backing chain is followed; list the backing paths too)
        with C(qemu-img info -f FORMAT), never probed: FORMAT is the one the kvmops manifest
        records when it records this very file, else O(formats) of the path, else C(raw). A file
        that is not in the format O(formats) declares is described as C(raw)."
    type: list
    elements: path
  formats:
    description:
      - The declared format (C(raw), C(qcow2)) per path of O(paths), for example the formats the
        source declares for the guest's disks and backing layers. Paths not listed are C(raw).
    type: dict
    default: {}
  manifest_path:
    description:
      - The kvmops manifest (the images this collection created on the host) read for
        RV(manifest), with O(paths). A missing file gives an empty list.
    type: path
    default: /var/lib/kvmops-migration/manifest.json
  tls:
    description:
      - Also read the host's TLS material for QEMU's native TLS migration into RV(tls) (the files
        of qemu.conf's C(migrate_tls_x509_cert_dir), default C(/etc/pki/qemu)), for
        M(kvmops.migration.preflight)'s O(kvmops.migration.preflight#module:dest_tls). Needs python
        cryptography on the host (C(python3-cryptography)) to read the keys.
    type: bool
    default: false
extends_documentation_fragment:
  - kvmops.migration.connection
  - kvmops.migration.attributes.info_module
notes:
  - Memory values and sizes are bytes; libvirt reports memory in KiB.
  - RV(mounts) lists only the filesystems that hold O(paths) (per path, the mount whose mount
    point is its longest prefix, the rule by which M(kvmops.migration.preflight) picks one from
    O(kvmops.migration.preflight#module:dest_mounts)); no other filesystem is read, so a hung
    network mount elsewhere does not hang the module.
seealso:
  - module: kvmops.migration.preflight
  - module: kvmops.migration.disk_info
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

- name: Locate vm1 and describe its disks where it is defined, in the same call
  kvmops.migration.host_info:
    guest: vm1
  delegate_to: "{{ item }}"
  loop: "{{ groups['kvm_hosts'] }}"
  register: located

- name: Look at vm1's paths, filesystems, interfaces and manifest on hostb
  kvmops.migration.host_info:
    domains: false
    paths: "{{ (src.guest_disks | kvmops.migration.disk_paths) + src.guest_paths }}"
  vars:
    src: "{{ located.results | selectattr('guest_disks') | first }}"
  delegate_to: hostb
  register: hostb_facts

- name: Pre-flight of vm1 to hostb with those facts
  kvmops.migration.preflight:
    domain: vm1
    dest_host: hostb.example.com
    dest_disks: "{{ hostb_facts.paths }}"
    dest_mounts: "{{ hostb_facts.mounts }}"
    dest_interfaces: "{{ hostb_facts.interfaces }}"
    dest_manifest: "{{ hostb_facts.manifest }}"
  delegate_to: hosta
"""

RETURN = r"""
tls:
  description:
    - With O(tls=true) - the TLS material - C(dir); C(qemu_user), C(qemu_group) (who QEMU runs as);
      C(files) (for each of C(ca), C(server_cert), C(server_key), C(client_cert), C(client_key) -
      C(path), C(exists), C(readable_by_qemu), C(problem)); C(certs) (the PEM text of each
      certificate; certificates are public); C(keys) (of each key only C(spki_sha256), the SHA-256
      of its public key, and C(problem)). Private keys never leave the host.
  returned: when O(tls=true)
  type: dict
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
    id: {description: "libvirt domain ID while active, -1 when inactive (two inventory names of one machine report the same IDs).", type: int}
    state: {description: "C(running), C(paused), C(shutoff), ...", type: str}
    active: {description: "Whether it runs (or is paused).", type: bool}
    persistent: {description: "Whether it has a persistent definition.", type: bool}
    memory_bytes: {description: "Current memory in bytes.", type: int}
    max_memory_bytes: {description: "Maximum memory in bytes.", type: int}
    vcpus: {description: "vCPU count.", type: int}
guest_disks:
  description:
    - The disks of O(guest) on this host, exactly as RV(kvmops.migration.disk_info#module:disks) of
      M(kvmops.migration.disk_info) with O(kvmops.migration.disk_info#module:domain) (sizes in
      bytes, backing chain, copy decision, fingerprint).
    - Empty when the guest is not defined here, or when it could not be read (RV(guest_error)).
  returned: when O(guest) is set
  type: list
  elements: dict
  sample:
    - {target: vda, device: disk, type: file, path: /var/lib/libvirt/images/vm1.qcow2, format: qcow2,
       exists: true, virtual_size: 21474836480, allocation: 1610612736, copy: true}
guest_paths:
  description:
    - Other host files O(guest) refers to that a migration does not copy, so they must already be
      on a destination at the same path (case C13), as the pre-flight checks them - read-only
      media (cdrom, read-only floppy or disk), kernel, initrd, device tree (dtb), firmware loader,
      nvram and the nvram template (C(<nvram template=...>), which libvirt creates an absent nvram
      file from).
    - Empty when the guest is not defined here.
  returned: when O(guest) is set
  type: list
  elements: str
  sample: [/var/lib/libvirt/isos/seed.iso, /var/lib/libvirt/boot/vmlinuz]
guest_nvram:
  description:
    - The NVRAM file (UEFI variables) of O(guest) on this host, the path its current domain XML names (nothing else is
      read) - C(path), C(format), C(exists), C(size) (bytes), C(sha256) (hex) and C(error) (why it was not read, for
      example a missing file; never a failure), as RV(kvmops.migration.migrate#module:nvram) of
      M(kvmops.migration.migrate) reads the source's at the switch-over.
    - Null when the guest has no NVRAM file or is not defined here.
  returned: when O(guest) is set
  type: dict
  sample: {path: /var/lib/libvirt/qemu/nvram/vm1_VARS.fd, format: raw, exists: true, size: 540672,
           sha256: 6f1ed002ab5595859014ebf0951522d9d2ee3ae8f8f7a7c6b9b3f4a2e8f4a1b0, error: null}
guest_error:
  description:
    - Why O(guest), defined here, could not be described (its XML, or an image qemu-img cannot
      read); null otherwise. The host's other facts are returned all the same.
  returned: when O(guest) is set
  type: str
paths:
  description:
    - One entry per O(paths) entry, exactly as RV(kvmops.migration.disk_info#module:disks) of
      M(kvmops.migration.disk_info) with O(kvmops.migration.disk_info#module:paths) (sizes in
      bytes); pass it as O(kvmops.migration.preflight#module:dest_disks).
  returned: when O(paths) is set
  type: list
  elements: dict
  sample:
    - {path: /var/lib/libvirt/images/vm1.qcow2, exists: false, virtual_size: null}
mounts:
  description:
    - The filesystems that hold O(paths), each once, in the shape of Ansible's C(ansible_mounts)
      fact; pass it as O(kvmops.migration.preflight#module:dest_mounts).
  returned: when O(paths) is set
  type: list
  elements: dict
  contains:
    mount: {description: "Mount point.", type: str, sample: /var/lib/libvirt/images}
    device: {description: "Mounted device (or source, such as C(tmpfs) or C(server:/export)).", type: str}
    fstype: {description: "Filesystem type.", type: str, sample: ext4}
    options: {description: "Mount options.", type: str}
    size_total: {description: "Size in bytes (C(f_blocks * f_frsize)).", type: int}
    size_available: {description: "Bytes available to unprivileged writers (C(f_bavail * f_frsize)).", type: int}
    block_size: {description: "Block size in bytes (C(f_bsize)).", type: int}
    block_total: {description: "Blocks in all (of C(f_frsize) bytes).", type: int}
    block_available: {description: "Blocks available to unprivileged writers.", type: int}
    block_used: {description: "Blocks not available (total minus available).", type: int}
    inode_total: {description: "Inodes in all.", type: int}
    inode_available: {description: "Inodes available to unprivileged writers.", type: int}
    inode_used: {description: "Inodes not available (total minus available).", type: int}
interfaces:
  description:
    - Names of the network interfaces of the host (bridges included), sorted, as Ansible's
      C(ansible_interfaces) fact; pass it as O(kvmops.migration.preflight#module:dest_interfaces).
  returned: when O(paths) is set
  type: list
  elements: str
  sample: [br0, eth0, lo, virbr0]
manifest:
  description:
    - The entries of the kvmops manifest (O(manifest_path)), the images this collection created
      on the host; empty when there is no manifest. Pass it as
      O(kvmops.migration.preflight#module:dest_manifest).
  returned: when O(paths) is set
  type: list
  elements: dict
  contains:
    host: {description: "Host the image was created on.", type: str}
    path: {description: "Image path.", type: str}
    kind: {description: "C(file) or C(lv).", type: str}
    format: {description: "Image format.", type: str}
    virtual_size: {description: "Virtual size in bytes.", type: int}
    created_at: {description: "When it was created (UTC, ISO 8601).", type: str}
    for_domain: {description: "Guest it was created for.", type: str}
    inode: {description: "Inode number of a file image.", type: int}
    id: {description: "Identity stored in the file's extended attribute, where the filesystem has them.", type: str}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _host, _manifest


def argument_spec() -> dict:
    """The module's options (see DOCUMENTATION)."""
    return dict(
        _args.connection_spec(),
        libvirtd_conf=dict(type="path", default=_host.DEFAULT_LIBVIRTD_CONF),
        domains=dict(type="bool", default=True),
        guest=dict(type="str"),
        paths=dict(type="list", elements="path"),
        formats=dict(type="dict", default={}),
        manifest_path=dict(type="path", default=_manifest.DEFAULT_MANIFEST),
        tls=dict(type="bool", default=False),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
    )
    _module.check_requirements(module)
    module.exit_json(changed=False, **_module.call_backend(module, _host.run_host_info, module.params))


if __name__ == "__main__":
    main()
