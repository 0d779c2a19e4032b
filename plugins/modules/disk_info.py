#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: disk_info
short_description: Disk geometry of a libvirt guest or of image paths, for a storage migration
version_added: 0.1.0
description:
  - Reads, for every disk of a domain (by name or UUID) or for a list of image paths, the facts a
    storage migration needs, with sizes in bytes.
  - File images are read with C(qemu-img info --output=json -U -f FORMAT) (force-share), so
    images locked by a running QEMU can be read; sizes come from the JSON, never from
    human-readable text.
  - "The format is never probed: each image is read as the format that is declared for it, the
    domain's C(<driver type>) for O(domain) (none declared: C(raw), as libvirt does), O(format)
    for O(paths). The first sector of a raw disk is written by the guest, which can put a qcow2
    header there naming any virtual size and any host file as backing file; read as raw it is
    just data."
  - "The backing chain is libvirt's C(<backingStore>) chain of the domain where it lists one,
    else what the headers of the layers declared qcow2 name, each with the backing format that
    header records (none recorded: C(raw), never probed). A raw layer has no backing chain."
  - Block devices are measured with C(blockdev --getsize64); LVM facts are added where the device
    is a logical volume (C(lvs --reportformat json --units b)).
  - "Each disk of a domain also says whether a storage migration copies it (RV(disks[].copy)):
    writable, non-shareable, local (file, block, volume) disks with a source. Read-only, cdrom,
    shareable and network disks are never copied."
  - Changes nothing.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the host the module runs on, when O(domain) is used
  - lxml (python3-lxml)
  - qemu-img (qemu-utils); blockdev (util-linux); lvs (lvm2) for LVs
options:
  domain:
    description:
      - Name or UUID of the domain whose disks are described.
      - Exactly one of O(domain) and O(paths) is required.
    type: str
  paths:
    description:
      - Image files or block devices to describe, without a domain.
      - Each must be absolute and normalised (no C(..), C(.), C(//) or trailing C(/)), else the
        module fails naming the path and its normalised spelling.
    type: list
    elements: path
  format:
    description:
      - The format every path of O(paths) is read as (C(qemu-img info -f)); not probed.
      - With the default C(raw) a file is described by its own size and without a backing chain,
        whatever header it holds; set C(qcow2) only for images known to be qcow2 (qemu-img then
        refuses a file that is not) to get their virtual size and backing chain.
      - Ignored with O(domain) (the domain's XML declares each disk's format).
    type: str
    choices: [raw, qcow2]
    default: raw
  uri:
    description:
      - libvirt URI of the host that holds O(domain). The connection is read-only.
  force_share:
    description:
      - Pass C(-U) to C(qemu-img info) so that images in use by a running QEMU can be read.
      - Always on for a running domain.
    type: bool
    default: true
  checksums:
    description:
      - Add the SHA-256 checksum of every backing layer (RV(disks[].backing[].checksum)), as needed
        to prove a base image identical on the destination before an incremental copy.
      - Reads the whole of each backing file.
    type: bool
    default: false
extends_documentation_fragment:
  - kvmops.migration.connection
  - kvmops.migration.attributes.info_module
notes:
  - Sizes are bytes. O(domain) volumes (C(type='volume')) are resolved to their path through the
    storage pool.
  - A source that is missing on this host (for example an ISO) is reported with
    RV(disks[].exists=false), not as a failure.
seealso:
  - name: qemu-img info
    description: The JSON output this module parses.
    link: https://www.qemu.org/docs/master/tools/qemu-img.html
  - name: libvirt domain XML, hard drives
    description: The disk element the facts come from.
    link: https://libvirt.org/formatdomain.html#hard-drives-floppy-disks-cdroms
  - module: kvmops.migration.disk_image
"""

EXAMPLES = r"""
- name: Describe the disks of vm1 on the source host
  kvmops.migration.disk_info:
    domain: vm1
  register: src_disks

- name: Show what a storage migration would copy
  ansible.builtin.debug:
    msg: "{{ src_disks.copy_set }}"

- name: Describe qcow2 images by path, with checksums of their backing layers
  kvmops.migration.disk_info:
    paths:
      - /var/lib/libvirt/images/vm1.qcow2
    format: qcow2
    checksums: true

- name: Describe a raw image and an LV by path (read as raw, no backing chain)
  kvmops.migration.disk_info:
    paths:
      - /var/lib/libvirt/images/vm1-swap.raw
      - /dev/vg0/vm1-data
"""

RETURN = r"""
domain:
  description: The domain described; null when O(paths) was used.
  returned: always
  type: dict
  contains:
    name: {description: "Domain name.", type: str}
    uuid: {description: "Domain UUID.", type: str}
    active: {description: "Whether the domain is running (or paused).", type: bool}
copy_set:
  description: Target names of the disks a storage migration copies (libvirt's C(migrate_disks)).
  returned: always
  type: list
  elements: str
  sample: [vda, vdb]
disks:
  description: One entry per disk of the domain, or per path.
  returned: always
  type: list
  elements: dict
  contains:
    target: {description: "Target device (C(vda)); null for O(paths).", type: str}
    bus: {description: "Target bus (virtio, sata, scsi, ...).", type: str}
    device: {description: "C(disk), C(cdrom), C(floppy) or C(lun).", type: str}
    type: {description: "Disk type: C(file), C(block), C(volume) or C(network).", type: str}
    path: {description: "Source path on this host (a pool volume resolved to its path).", type: str}
    pool: {description: "Storage pool of a volume disk.", type: str}
    volume: {description: "Volume name of a volume disk.", type: str}
    protocol: {description: "Protocol of a network disk (rbd, nbd, iscsi, ...).", type: str}
    name: {description: "Name of a network disk's source.", type: str}
    exists: {description: "Whether the source exists on this host.", type: bool}
    kind: {description: "C(file) or C(block) as found on the host.", type: str}
    format: {description: "Format the image was read as: the domain's driver type (none: C(raw)), or O(format).", type: str}
    detected_format: {description: "Format qemu-img reported when reading it as RV(disks[].format) (never probed).", type: str}
    virtual_size: {description: "Guest-visible size in bytes.", type: int, sample: 21474836480}
    allocation: {description: "Bytes the image really uses on the host (qemu-img actual-size).", type: int}
    cluster_size: {description: "qcow2 cluster size in bytes.", type: int, sample: 65536}
    compat: {description: "qcow2 compatibility level (C(0.10) or C(1.1)).", type: str}
    backing_file: {description: "Backing file of the top layer as recorded in the image.", type: str}
    backing_format: {description: "Backing format of the top layer.", type: str}
    backing:
      description: The backing chain below the top layer, nearest first.
      type: list
      elements: dict
      contains:
        path: {description: "Layer path.", type: str}
        format: {description: "Layer format.", type: str}
        virtual_size: {description: "Layer virtual size in bytes.", type: int}
        allocation: {description: "Bytes used by the layer on the host.", type: int}
        checksum: {description: "C(sha256:<hex>) of the layer file, with O(checksums=true).", type: str}
    readonly: {description: "Read-only disk (cdroms always).", type: bool}
    shareable: {description: "Disk marked shareable.", type: bool}
    cache: {description: "Driver cache mode.", type: str}
    discard: {description: "Driver discard mode.", type: str}
    io: {description: "Driver io mode.", type: str}
    copy: {description: "Whether a storage migration copies this disk.", type: bool}
    copy_reason: {description: "Why it is or is not copied.", type: str}
    must_be_shared:
      description: A writable disk that is not copied; it must be storage both hosts reach.
      type: bool
    lv:
      description: LVM facts when the device is a logical volume; sizes in bytes.
      type: dict
      contains:
        lv_name: {description: "LV name.", type: str}
        vg_name: {description: "Volume group.", type: str}
        size: {description: "LV size in bytes.", type: int}
        active: {description: "Whether the LV is active.", type: bool}
        thin: {description: "Whether it is a thin volume.", type: bool}
        pool_lv: {description: "Thin pool name.", type: str}
        pool_free: {description: "Bytes free in the thin pool.", type: int}
    fingerprint:
      description: >-
        Identity of a file image on this host (C(path), C(inode), C(size) in bytes, C(fsid)); pass
        it to M(kvmops.migration.disk_image) O(kvmops.migration.disk_image#module:source_fingerprint)
        on the destination to detect shared storage.
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _disk_info
from ansible_collections.kvmops.migration.plugins.module_utils import _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _module


def argument_spec() -> dict:
    """The module's options (see DOCUMENTATION)."""
    return dict(
        _args.connection_spec(),
        domain=dict(type="str"),
        paths=dict(type="list", elements="path"),
        format=dict(type="str", default="raw", choices=list(_image_geometry.FORMATS)),
        force_share=dict(type="bool", default=True),
        checksums=dict(type="bool", default=False),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_one_of=[("domain", "paths")],
        mutually_exclusive=[("domain", "paths")],
        supports_check_mode=True,
    )
    _module.check_requirements(module, libvirt=bool(module.params["domain"]))
    module.exit_json(changed=False, **_module.call_backend(module, _disk_info.disk_info, module.params))


if __name__ == "__main__":
    main()
