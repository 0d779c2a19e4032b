#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: cold_move
short_description: Move a libvirt guest offline with its disks, shutting it down and starting it on the destination
version_added: 0.1.0
description:
  - The move for a running guest whose CPU no destination can provide (a live migration cannot change the CPU).
    Normalise its persistent CPU first (M(kvmops.migration.domain_cpu)) and pre-create the destination images
    (M(kvmops.migration.disk_image)); the C(kvmops.migration.migrate_guest) role does both with
    C(migrate_guest_allow_cold_move=true).
  - Runs on the source. Presses the guest's ACPI power button and waits O(shutdown_timeout_s) for it to power off
    (then powers it off hard only with O(force_off=true)), copies each image of O(disks) into the image of the same
    path on the destination through libvirt storage streams, keeping holes (sparse; an image in no active pool gets a
    transient C(dir) pool for its directory for the time of its copy, which changes nothing on disk), defines the guest on the
    destination from its persistent definition, starts it there and waits until it runs, then removes the
    definition from the source. The source images are kept.
  - A shut-off guest is moved the same way without the shutdown and stays shut off on the destination.
  - Image files are copied as they are, so a disk with a backing chain is refused before the guest is touched (its base
    would not come along); flatten it first (C(virsh blockpull)) or move the guest live.
  - On a failure before the guest runs on the destination the definition this run made there is removed and the
    guest is started again on the source if this run shut it down; the message says what was undone.
  - Downtime (RV(stats.downtime_ms)) is the time from the ACPI request until the guest runs on the destination; its
    operating system boots after that.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the source host, libvirt 3.4 or later on both hosts (sparse streams)
options:
  disks:
    description:
      - The images to copy, each a dictionary with C(path) (the same path on both hosts) and C(target) (C(vda), ...), as
        the M(kvmops.migration.preflight) copy set gives them. Each must exist on the destination (pre-created).
    type: list
    elements: dict
    default: []
  shutdown_timeout_s:
    description: Seconds to wait for the guest to power off after its ACPI power button was pressed.
    type: int
    default: 120
  force_off:
    description:
      - Power the guest off hard (C(virDomainDestroy)) when it has not powered off after O(shutdown_timeout_s); like
        pulling the plug, unsaved data in the guest is lost. Without it the module fails and the guest keeps running.
    type: bool
    default: false
  start_timeout_s:
    description: Seconds to wait for the guest to be running on the destination after its start.
    type: int
    default: 60
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads both hosts and returns the steps it would take (RV(plan)) without changing anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: A guest defined on the destination and absent from the source gives C(changed=false).
extends_documentation_fragment:
  - kvmops.migration.move.destination
  - kvmops.migration.move.health
notes:
  - Disks are not copied while the guest runs; only images of a shut-off guest are consistent.
"""

EXAMPLES = r"""
- name: Move vm1 cold from this host to 198.18.0.11 (its disks pre-created there)
  kvmops.migration.cold_move:
    domain: vm1
    dest_host: 198.18.0.11
    disks:
      - target: vda
        path: /var/lib/libvirt/images/vm1.qcow2
    shutdown_timeout_s: 180
"""

RETURN = r"""
state:
  description: C(planned) (check mode), C(migrated) or C(already_migrated).
  returned: always
  type: str
mode:
  description: Always C(cold).
  returned: always
  type: str
plan:
  description: The steps of the move, in words.
  returned: always
  type: list
  elements: str
was_running:
  description: Whether the guest ran on the source before the move.
  returned: always
  type: bool
forced:
  description: Whether the guest was powered off hard after the shutdown timeout (O(force_off)).
  returned: always
  type: bool
copies:
  description: Per copied image C(path), C(target), C(data_bytes) (sent), C(hole_bytes) (recreated as holes), C(time_ms).
  returned: always
  type: list
  elements: dict
health:
  description:
    - The started guest's health on the destination (see O(health)), with the keys M(kvmops.migration.migrate) returns
      in its RV(kvmops.migration.migrate#module:health); the window and the agent's timeout count from the start.
  returned: when migrated
  type: dict
stats:
  description: Timings and bytes of the move.
  returned: when migrated
  type: dict
  contains:
    time_ms:
      description: Milliseconds from the ACPI request (or the start of the copy for a shut-off guest) until the end.
      type: int
    downtime_ms:
      description:
        - Milliseconds from the ACPI request until the guest ran on the destination (its OS boots after that); null
          for a guest that was shut off.
      type: int
    shutdown_ms:
      description: Milliseconds the guest took to power off (including the timeout when it was forced).
      type: int
    copy_ms:
      description: Milliseconds of the disk copy.
      type: int
    start_ms:
      description: Milliseconds from the start on the destination until it ran.
      type: int
    disk_bytes:
      description: Bytes of disk walked (data and holes).
      type: int
    disk_allocated_bytes:
      description: Bytes of disk data sent (holes are not sent).
      type: int
    memory_bytes:
      description: Always 0 (no memory moves in a cold move).
      type: int
    stats_from:
      description: Always C(cold_move).
      type: str
source_after:
  description:
    - The source host's facts right after the move, read by this module over a new read-only
      connection to O(source_uri), in the shape of M(kvmops.migration.host_info) without a guest
      (C(host) and C(domains)). The C(migrate_guest) role verifies from them that the guest is gone
      from the source, without another remote call.
    - Null when they could not be read (the role then reads the source with M(kvmops.migration.host_info)).
  returned: when migrated
  type: dict
source_allocation_after:
  description:
    - The bytes allocated of each copied image file on the source right after the move (path to
      bytes; block devices left out), the guest's writes during the move included. The
      C(migrate_guest) role checks the destination images' sparseness against the larger of this
      and the allocation read before the move.
  returned: when migrated
  type: dict
msg:
  description: One line for the operator.
  returned: when already migrated
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args, _cold_move, _host, _module


def argument_spec():
    return dict(
        _args.destination_spec(),
        disks=dict(type="list", elements="dict", default=[]),
        shutdown_timeout_s=dict(type="int", default=120),
        force_off=dict(type="bool", default=False),
        start_timeout_s=dict(type="int", default=60),
        **_args.health_spec(),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    _module.check_requirements(module)
    result = _module.call_backend(module, _cold_move.run_cold_move, module.params, module.check_mode)
    # the role's verification of the source, read here (no remote call of its own)
    copied = [d["path"] for d in module.params["disks"] or [] if d.get("path")]
    module.exit_json(**_host.with_source_after(result, module.params["source_uri"], copied))


if __name__ == "__main__":
    main()
