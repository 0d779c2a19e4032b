# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """The options of a move that M(kvmops.migration.preflight) checks and
    M(kvmops.migration.migrate) carries out: one text, one type and one default for both (their
    argument spec is ``_args.move_spec()``). A module may give an option its own description.

    ``DESTINATION`` (``kvmops.migration.move.destination``) documents the part of them that names
    the guest, the source and the destination (``_args.destination_spec()``), which
    M(kvmops.migration.cold_move) shares; a module of a move extends both."""

    DESTINATION = r"""
options:
  domain:
    description: Name or UUID of the guest on the source host.
    type: str
    required: true
    aliases: [name]
  source_uri:
    description: libvirt URI of the source host, as seen from the host the module runs on.
    type: str
    default: qemu:///system
  dest_host:
    description:
      - Inventory address of the destination host (IPv4, IPv6 literal, or a name that resolves from the source). Used for the
        connection URI and for the migration and disk data URIs.
    type: str
    required: true
  dest_uri:
    description:
      - Full libvirt URI of the destination, for example C(qemu+ssh://root@198.18.0.2/system?keyfile=/root/.ssh/migrate).
      - Default built from O(transport), O(dest_user) and O(dest_host).
    type: str
  dest_user:
    description: User in the default C(qemu+ssh) destination URI.
    type: str
    default: root
  transport:
    description: Transport of the default destination URI (C(qemu+ssh) or C(qemu+tls)).
    type: str
    choices: [ssh, tls]
    default: ssh
"""

    DOCUMENTATION = r"""
options:
  dest_name:
    description: Name of the guest on the destination (C(VIR_MIGRATE_PARAM_DEST_NAME)); default the source name.
    type: str
  copy_storage:
    description:
      - V(all) copies whole disks (C(VIR_MIGRATE_NON_SHARED_DISK)); V(incremental) only the top layer onto identical backing
        images on the destination (C(VIR_MIGRATE_NON_SHARED_INC)); V(none) nothing (every writable disk must be shared).
    type: str
    choices: [all, incremental, none]
    default: all
  disks:
    description:
      - Targets (C(vda), ...) to copy instead of the computed copy set (every writable, non-shareable, local disk; read-only
        and cdrom never). A writable local disk left out is refused unless listed in O(shared_disks).
    type: list
    elements: str
  shared_disks:
    description: Targets that live on storage both hosts reach; they are not copied.
    type: list
    elements: str
    default: []
  tls:
    description:
      - Whether the memory and disk streams use QEMU's native TLS (C(VIR_MIGRATE_TLS)).
      - Not set (the default) - TLS when the hosts hold valid migration certificates; without them the move is refused
        before anything changes unless O(allow_insecure_transport=true).
      - V(true) - TLS required; V(false) - plain TCP, only with O(allow_insecure_transport=true).
    type: bool
  allow_insecure_transport:
    description:
      - Let guest memory and disks cross the network unencrypted, and accept C(qemu+tcp://) or C(no_verify) destination
        URIs; without it those are refused before anything changes.
    type: bool
    default: false
  tls_destination:
    description:
      - Host name the destination's TLS certificate is checked against when it is not O(dest_host), for example when
        O(dest_host) is an address (C(VIR_MIGRATE_PARAM_TLS_DESTINATION)).
    type: str
  detect_zeroes:
    description:
      - Do not transfer all-zero blocks of the copied disks (C(VIR_MIGRATE_PARAM_MIGRATE_DISKS_DETECT_ZEROES), libvirt 10.9
        and later). Keeps destination images sparse when the source cannot tell allocation, at some CPU cost. Skipped with
        a warning on older libvirt.
    type: bool
    default: true
  parallel_connections:
    description:
      - Number of parallel memory connections (C(VIR_MIGRATE_PARALLEL), libvirt 5.2 and later); not set or 0 disables
        parallel migration.
    type: int
  postcopy:
    description:
      - Allow switching to post-copy (C(VIR_MIGRATE_POSTCOPY)). Only on this explicit opt-in; a failure during post-copy
        loses the guest.
    type: bool
    default: false
  compression:
    description:
      - Compression methods of the memory stream (C(VIR_MIGRATE_COMPRESSED)); V(zlib) and V(zstd) need
        O(parallel_connections).
    type: list
    elements: str
    choices: [xbzrle, mt, zlib, zstd]
    default: []
  cleanup_leftover:
    description:
      - Remove a paused leftover of an aborted migration of this guest from the destination before migrating, only when
        it carries this collection's marker and the guest runs on the source.
    type: bool
    default: false
attributes:
  action_group:
    description: Use C(group/kvmops.migration.move) in C(module_defaults) to set these options once for both modules.
    support: full
    membership:
      - kvmops.migration.move
"""

    HEALTH = r"""
options:
  health:
    description:
      - What is checked on the destination once the guest has moved (the destination's libvirt
        connection the move already holds; no extra remote call). An unhealthy guest is returned with
        C(health.healthy=false) and the reasons in C(health.problems); it stays on the destination.
      - The domain must keep running for O(health.window_s) seconds from the switch-over, and no guest
        panic may be reported (a C(<panic>) device such as pvpanic makes QEMU tell libvirt; the lifecycle
        event is watched from before the switch-over, the domain state and its reason after it).
      - When the QEMU guest agent ran in the guest before the move (its channel
        C(org.qemu.guest_agent.0) was connected), C(guest-ping) must answer within
        O(health.agent_timeout_s) seconds; then the guest clock's offset is read and re-synced
        (O(health.sync_clock)), and the file systems are trimmed when O(health.fstrim) is set.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Check the guest's health after the move.
        type: bool
        default: true
      window_s:
        description: Seconds from the switch-over during which the domain must keep running without a panic.
        type: float
        default: 2
      agent_timeout_s:
        description:
          - Seconds from the switch-over within which a guest agent that ran before the move must answer C(guest-ping).
          - A cold move (M(kvmops.migration.cold_move)) adds its C(start_timeout_s) for the boot.
        type: float
        default: 15
      sync_clock:
        description:
          - Re-sync the guest's clock from the destination's RTC through the agent (C(virDomainSetTime) with
            C(VIR_DOMAIN_TIME_SYNC)) after the move, and report the offset before and after.
        type: bool
        default: true
      fstrim:
        description: Trim the guest's mounted file systems through the agent (C(virDomainFSTrim)) after the move.
        type: bool
        default: false
"""
