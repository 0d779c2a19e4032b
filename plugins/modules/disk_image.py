#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: disk_image
short_description: Create (or remove) the exact, sparse destination image of a storage migration
version_added: 0.1.0
description:
  - "O(state=present): makes sure an image exists at O(path) with the given O(format) and the exact
    O(virtual_size) in bytes, sparse (no preallocation), ready to receive a storage migration."
  - Raw images are made by C(ftruncate), qcow2 images by
    C(qemu-img create -f qcow2 -o preallocation=off) with O(cluster_size) and O(compat).
  - "Creation is exclusive: the image is built under a temporary name in the same directory and
    linked to O(path) with C(link(2)), which never replaces a file that appeared meanwhile. An
    existing file or device is never truncated, overwritten or resized."
  - Every image created is recorded in a JSON manifest on the host (O(manifest_path)). An
    existing image is reused (no change) only when the manifest records it as created by this
    collection, its format and size match, and no libvirt domain other than O(for_domain) uses it.
    Otherwise the module fails and the message gives both geometries.
  - Missing parent directories are created with O(dir_owner), O(dir_group) and O(dir_mode)
    (default C(root:root 0711), as libvirt's C(/var/lib/libvirt/images)); the image is mode C(0600)
    and libvirt relabels it for the QEMU user when the guest starts. When SELinux is enabled the
    contexts of what was created are restored (C(restorecon)); otherwise that step is skipped.
  - "Block targets (O(path) under C(/dev/)): C(qemu-img create) is never run. An LV of exactly
    O(virtual_size) bytes, active, is required; with O(lv_create=true) a missing LV is created
    (C(lvcreate -L <bytes>b) or, with O(lv_thin_pool), a thin volume after checking the pool's free
    space). A size that the volume group's extents cannot represent exactly is refused."
  - "Backing chains: for a full copy create a flat image of the top layer's virtual size (no
    O(backing_file)). For an incremental copy set O(backing_file) and O(backing_format) to the
    source's; the base must already be on this host with O(backing_virtual_size) and
    O(backing_checksum), or the module fails naming the base."
  - "O(state=absent): removes the image only when the manifest records it as ours and no domain
    uses it; a path that exists and is not ours fails and is left untouched. The parent
    directories the module created for it go too, when they are empty."
  - Shared storage is refused for both states when O(source_fingerprint) or O(shared_marker)
    shows that this host sees the source's storage.
  - "Paths: O(path) must be absolute and normalised (no C(..), C(.), C(//) or trailing C(/)), and
    (unless O(allow_outside_pools=true)) under the target directory of a libvirt storage pool of
    this host (C(virsh pool-list --all)); otherwise the module fails naming the path, the pools and
    the fix before anything is read or changed. Both states keep these rules."
  - "An existing file is never probed for its format: an image the manifest records is read as the
    format recorded (C(qemu-img info -f FORMAT)); any other file as O(format), or as C(raw) when it
    is not in that format (it is refused either way). A qcow2 header inside a raw image (written
    by its guest) is never taken for the image's geometry or backing file."
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the host the module runs on (to find the images in use)
  - lxml (python3-lxml)
  - qemu-img (qemu-utils); blockdev (util-linux); lvm2 for block targets
options:
  path:
    description:
      - Absolute path of the image on this host (the same path as on the source), or a block
        device such as C(/dev/vg0/vm1-data).
    type: path
    required: true
  state:
    description:
      - C(present) creates or reuses the image; C(absent) removes it when it is ours and unused.
    type: str
    choices: [present, absent]
    default: present
  format:
    description:
      - Image format. Block targets hold raw data.
    type: str
    choices: [raw, qcow2]
    default: raw
  virtual_size:
    description:
      - Exact guest-visible size in bytes (the source's C(virtual_size) from
        M(kvmops.migration.disk_info)). A multiple of 512.
      - Required with O(state=present).
    type: int
  cluster_size:
    description:
      - qcow2 cluster size in bytes (the source's). Default is qemu-img's (65536).
    type: int
  compat:
    description:
      - qcow2 compatibility level (the source's).
    type: str
    choices: ['0.10', '1.1']
  backing_file:
    description:
      - Backing file of an incremental overlay, exactly as the source's top layer records it.
    type: str
  backing_format:
    description:
      - Format of O(backing_file). Required with it.
    type: str
    choices: [raw, qcow2]
  backing_virtual_size:
    description:
      - Virtual size in bytes of the source's base; the destination's base must match.
    type: int
  backing_checksum:
    description:
      - Checksum of the source's base file, C(sha256:<hex>) (as RV(kvmops.migration.disk_info#module:disks[].backing[].checksum)).
    type: str
  for_domain:
    description:
      - Name of the domain the image is for; recorded in the manifest. Reuse is allowed while this
        domain (and no other) uses the image.
    type: str
  dir_owner:
    description:
      - Owner of parent directories the module creates.
    type: str
    default: root
  dir_group:
    description:
      - Group of parent directories the module creates.
    type: str
    default: root
  dir_mode:
    description:
      - Octal mode of parent directories the module creates.
    type: raw
    default: '0711'
  lv_create:
    description:
      - Create a missing LV for a block target.
    type: bool
    default: false
  lv_vg:
    description:
      - Volume group of the LV; default from O(path) C(/dev/<vg>/<lv>).
    type: str
  lv_name:
    description:
      - LV name; default from O(path) C(/dev/<vg>/<lv>).
    type: str
  lv_thin_pool:
    description:
      - Create the LV as a thin volume in this pool of O(lv_vg).
    type: str
  adopt_existing:
    description:
      - Accept an existing block device that this collection did not create (an operator prepared
        it for this guest). Its contents will be overwritten by the copy. Files are never adopted.
    type: bool
    default: false
  allow_outside_pools:
    description:
      - Allow O(path) outside every libvirt storage pool of this host (pools are read with
        C(virConnectListAllStoragePools), active or not, and compared by their target directory,
        links resolved for files; a logical pool's C(/dev/VG) holds its LVs).
      - By default such a path is refused, for O(state=present) and O(state=absent) alike; a host
        without pools refuses every path. Set it for images kept in a directory libvirt does not
        manage as a pool.
      - When libvirt does not answer for O(state=absent), the pools are not checked (a warning
        says so); the manifest still decides what may be removed.
    type: bool
    default: false
  manifest_path:
    description:
      - The JSON manifest of images created by this collection on this host.
    type: path
    default: /var/lib/kvmops-migration/manifest.json
  host:
    description:
      - Name of this host in manifest entries. Default is the host name.
    type: str
  uri:
    description:
      - libvirt URI of this host, to find the images its domains use (read-only connection).
  source_fingerprint:
    description:
      - "RV(kvmops.migration.disk_info#module:disks[].fingerprint) of the source image, read on the source host. When the
        same path here has the same inode and size, the storage is shared and the module refuses."
    type: dict
  shared_marker:
    description:
      - "C({path, token}) of a marker file the caller wrote on the source beside the image. When it
        is visible here with the same token, the storage is shared and the module refuses."
    type: dict
attributes:
  check_mode:
    support: full
    description: Reads the state and reports the change that would be made; creates nothing.
  diff_mode:
    support: full
    description: Image geometry before and after (C(exists), C(format), C(virtual_size) in bytes).
  platform:
    support: full
    platforms: posix
    description: Linux hypervisor hosts with QEMU and libvirt.
extends_documentation_fragment:
  - kvmops.migration.connection
notes:
  - Idempotent; a second run with the same options reports no change.
  - The manifest recognises an image by host, path, inode and a random identity kept in the
    extended attribute C(user.kvmops-migration.id) (where the filesystem has user xattrs; a
    deleted file's inode number is often reused at once). A file replaced by someone else at the
    same path is no longer ours. Parent directories created are returned but not recorded.
  - "O(state=absent) also leaves an image in place while a process holds QEMU's lock bytes on it
    (a QEMU, qemu-nbd or qemu-img outside libvirt)."
seealso:
  - module: kvmops.migration.disk_info
  - name: qemu-img create
    description: qcow2 options cluster_size, compat, preallocation.
    link: https://www.qemu.org/docs/master/tools/qemu-img.html
"""

EXAMPLES = r"""
- name: Read the source geometry
  kvmops.migration.disk_info:
    domain: vm1
  delegate_to: hosta
  register: src

- name: Create the destination images for a full copy (flat, sparse, exact size)
  kvmops.migration.disk_image:
    path: "{{ item.path }}"
    format: "{{ item.format }}"
    virtual_size: "{{ item.virtual_size }}"
    cluster_size: "{{ item.cluster_size | default(omit, true) }}"
    compat: "{{ item.compat | default(omit, true) }}"
    for_domain: vm1
    source_fingerprint: "{{ item.fingerprint | default(omit, true) }}"
  loop: "{{ src.disks | selectattr('copy') | selectattr('kind', 'equalto', 'file') | list }}"
  delegate_to: hostb

- name: An LV of exactly the source's size, created when missing (VG vg0 is no libvirt pool here)
  kvmops.migration.disk_image:
    path: /dev/vg0/vm1-data
    virtual_size: 10737418240
    lv_create: true
    allow_outside_pools: true
    for_domain: vm1

- name: Roll back an image this collection created
  kvmops.migration.disk_image:
    path: /var/lib/libvirt/images/vm1.qcow2
    state: absent
"""

RETURN = r"""
path:
  description: The image path.
  returned: always
  type: str
kind:
  description: "C(file) or C(lv)."
  returned: always
  type: str
action:
  description: "What was (or in check mode would be) done: C(created), C(would_create), C(reused),
    C(removed), C(would_remove) or C(absent)."
  returned: always
  type: str
before:
  description: Geometry before the run (C(exists), C(format), C(virtual_size) and C(allocation) in bytes, ...).
  returned: always
  type: dict
after:
  description: Geometry after the run (in check mode the intended one).
  returned: always
  type: dict
  sample: {exists: true, format: qcow2, virtual_size: 21474836480, allocation: 196608, cluster_size: 65536}
created_dirs:
  description:
    - Parent directories created (or to be created in check mode). They are recorded in the
      manifest with the image, and O(state=absent) removes them again when they are empty.
  returned: when O(state=present)
  type: list
  elements: str
removed_dirs:
  description:
    - With O(state=absent), the parent directories created for the image (as recorded in the
      manifest) that were empty once it was gone and were removed (would be, in check mode),
      innermost first. A directory kvmops did not create, or one that is not empty, is never
      removed.
  returned: when O(state=absent)
  type: list
  elements: str
manifest_path:
  description: The manifest consulted and updated.
  returned: always
  type: str
msg:
  description: One line for the operator.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _disk_image
from ansible_collections.kvmops.migration.plugins.module_utils import _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _manifest
from ansible_collections.kvmops.migration.plugins.module_utils import _module


def argument_spec() -> dict:
    """The module's options (see DOCUMENTATION)."""
    return dict(
        _args.connection_spec(),
        path=dict(type="path", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        format=dict(type="str", default="raw", choices=list(_image_geometry.FORMATS)),
        virtual_size=dict(type="int"),
        cluster_size=dict(type="int"),
        compat=dict(type="str", choices=["0.10", "1.1"]),
        backing_file=dict(type="str"),
        backing_format=dict(type="str", choices=list(_image_geometry.FORMATS)),
        backing_virtual_size=dict(type="int"),
        backing_checksum=dict(type="str"),
        for_domain=dict(type="str"),
        dir_owner=dict(type="str", default="root"),
        dir_group=dict(type="str", default="root"),
        dir_mode=dict(type="raw", default="0711"),
        lv_create=dict(type="bool", default=False),
        lv_vg=dict(type="str"),
        lv_name=dict(type="str"),
        lv_thin_pool=dict(type="str"),
        adopt_existing=dict(type="bool", default=False),
        allow_outside_pools=dict(type="bool", default=False),
        manifest_path=dict(type="path", default=_manifest.DEFAULT_MANIFEST),
        host=dict(type="str"),
        source_fingerprint=dict(type="dict"),
        shared_marker=dict(type="dict"),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[("state", "present", ("virtual_size",))],
        required_together=[("backing_file", "backing_format")],
        supports_check_mode=True,
    )
    _module.check_requirements(module)
    module.exit_json(**_module.call_backend(module, _disk_image.disk_image, module.params, check_mode=module.check_mode))


if __name__ == "__main__":
    main()
