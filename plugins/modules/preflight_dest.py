#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight_dest
short_description: The destination's half of the pre-flight probes - short-lived listeners on the migration ports, marker files in the image directories
version_added: 0.1.0
description:
  - Run it on the B(destination) of a move, right before M(kvmops.migration.preflight) runs on the
    source, and pass its RV(probe) to that module's O(kvmops.migration.preflight#module:dest_probe).
  - "Ports: for each port of O(ports) it listens on the first free port at or above it (up to
    O(port_max)), the port libvirt's allocator would give the move, and returns which port it
    holds. The source's pre-flight connects to each and so tells C(open) (this listener answered),
    C(closed) (a TCP reset although the listener holds the port: a firewall's REJECT rule) and
    C(filtered) (no answer at all: a firewall drops it) apart. A port held by another program (an
    incoming migration) is never probed."
  - "Shared storage: in the directory of each path of O(paths) it creates a marker file
    C(.kvmops-probe-<probe_id>) (exclusively; never over an existing file). The source's pre-flight
    looks for it: a marker that appears on the source proves the directory is the same storage on
    both hosts (NFS, a cluster filesystem, a bind mount), as Nova's shared storage test does."
  - The module returns once the ports are bound and the markers written. A detached process keeps
    the listeners until every port was probed once or O(lifetime_s) passed, then closes them and
    removes the markers. O(state=absent) removes the markers of O(probe_id) at once.
author:
  - kvmops.migration contributors (@kvmops)
options:
  probe_id:
    description:
      - Identifier of this probe, 8 to 64 letters, digits, C(-) or C(_); part of the marker file names
        and of the line the source sends. Use a new random one per run.
    type: str
    required: true
  state:
    description:
      - C(present) opens the listeners and writes the markers; C(absent) removes the markers of
        O(probe_id) in the directories of O(paths) (only files that hold this probe's line).
    type: str
    choices: [present, absent]
    default: present
  ports:
    description:
      - Migration and disk (NBD) ports the move will ask for, in that order (libvirt takes the first
        free port of its range for each). Empty for an offline move, which uses no data port.
    type: list
    elements: int
    default: []
  port_max:
    description: Last port a busy port may be replaced by (qemu.conf C(migration_port_max)).
    type: int
    default: 49215
  paths:
    description:
      - The guest's image paths as on the source (the same paths are used on the destination); one
        marker per directory. Paths under C(/dev) are skipped.
    type: list
    elements: path
    default: []
  lifetime_s:
    description: Seconds the listeners and markers live at most.
    type: float
    default: 120.0
  address:
    description: Address to listen on; empty listens on every address (IPv6 and IPv4).
    type: str
    default: ""
attributes:
  check_mode:
    support: none
    description:
      - The probe needs its listeners and markers; run it with C(check_mode=false), as the
        C(migrate_guest) role does. It leaves nothing behind.
  diff_mode:
    support: none
    description: Nothing lasting changes, so there is no diff.
  idempotent:
    support: full
    description: Nothing lasting changes; C(changed) is false for O(state=present).
  platform:
    support: full
    platforms: posix
    description: Linux hypervisor hosts.
notes:
  - The listeners answer only a line carrying O(probe_id) and close every other connection
    unanswered; they hold at most one port per entry of O(ports), for at most O(lifetime_s).
seealso:
  - module: kvmops.migration.preflight
"""

EXAMPLES = r"""
- name: Open the destination's side of the probes
  kvmops.migration.preflight_dest:
    probe_id: "{{ lookup('ansible.builtin.password', '/dev/null', chars=['ascii_lowercase', 'digits'], length=16) }}"
    ports: [49152, 49153]
    paths:
      - /var/lib/libvirt/images/vm1.qcow2
  delegate_to: hostb
  register: dst_probe
  check_mode: false

- name: Pre-flight from the source, probing the ports and looking for the markers
  kvmops.migration.preflight:
    domain: vm1
    dest_host: 198.18.0.2
    dest_probe: "{{ dst_probe.probe }}"
  delegate_to: hosta

- name: Remove the markers
  kvmops.migration.preflight_dest:
    probe_id: "{{ dst_probe.probe.probe_id }}"
    state: absent
    paths:
      - /var/lib/libvirt/images/vm1.qcow2
  delegate_to: hostb
  check_mode: false
"""

RETURN = r"""
probe:
  description: What the destination set up, for O(kvmops.migration.preflight#module:dest_probe).
  returned: state is present
  type: dict
  contains:
    probe_id:
      description: O(probe_id).
      type: str
    ports:
      description: One entry per port of O(ports).
      type: list
      elements: dict
      contains:
        requested:
          description: The port asked for.
          type: int
          sample: 49152
        port:
          description: The port held (the first free one at or above C(requested)); null when none.
          type: int
          sample: 49152
        state:
          description: C(listening) or C(unavailable).
          type: str
        reason:
          description: Why another port was taken or none could be (ports in use); null otherwise.
          type: str
    markers:
      description: One entry per directory of O(paths).
      type: list
      elements: dict
      contains:
        dir:
          description: The directory.
          type: str
          sample: /var/lib/libvirt/images
        path:
          description: The marker file.
          type: str
          sample: /var/lib/libvirt/images/.kvmops-probe-k3v9x0q2m8a1z7c4
        state:
          description: C(created), C(absent) (no such directory here) or C(error).
          type: str
        reason:
          description: Why no marker was made; null when it was.
          type: str
    pid:
      description: Process that keeps the listeners and removes the markers; 0 when none was needed.
      type: int
    lifetime_s:
      description: O(lifetime_s).
      type: float
removed:
  description: Marker files removed (O(state=absent)).
  returned: state is absent
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _probe


def run(params: dict) -> dict:
    _probe.check_probe_id(params["probe_id"])
    if params["state"] == "absent":
        removed = _probe.remove_markers(_probe.marker_entries(params["paths"], params["probe_id"]),
                                        params["probe_id"])
        return {"changed": bool(removed), "removed": removed}
    probe = _probe.start(params["ports"], params["paths"], params["probe_id"], port_max=params["port_max"],
                         lifetime_s=params["lifetime_s"], address=params["address"])
    return {"changed": False, "probe": probe}


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            probe_id=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            ports=dict(type="list", elements="int", default=[]),
            port_max=dict(type="int", default=_probe.DEFAULT_PORT_MAX),
            paths=dict(type="list", elements="path", default=[]),
            lifetime_s=dict(type="float", default=_probe.DEFAULT_LIFETIME_S),
            address=dict(type="str", default=""),
        ),
        supports_check_mode=False,
    )
    module.exit_json(**_module.call_backend(module, run, module.params))


if __name__ == "__main__":
    main()
