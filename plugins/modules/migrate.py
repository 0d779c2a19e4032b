#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: migrate
short_description: Live-migrate a KVM guest to another libvirt host without shared storage
version_added: 0.1.0
description:
  - Moves one libvirt domain from the host this module runs on (the B(source)) to O(dest_host),
    copying its writable local disks, like C(virsh migrate --live --persistent --undefinesource
    --copy-storage-all) but with the copy set computed from the domain XML, explicit data
    addresses, a completion timeout and a safety check of the destination.
  - Run it on the B(source) host. It opens the local libvirt (O(source_uri)) and the destination's
    libvirt (O(dest_uri), by default C(qemu+ssh://root@<dest_host>/system)) from there, so the
    source host needs key login to the destination for the ssh transport.
  - The destination images must exist with the right format and size before the move (libvirt
    cannot create them); prepare them with the collection's image module or role.
  - The migration and disk data streams go to O(dest_host) by address, so nothing depends on the
    destination's own host name resolving from the source.
  - Before moving, the destination is searched for a domain with the guest's name or UUID.
    A guest that already runs on the destination and not on the source gives C(changed=false).
    A different domain under the name, a leftover of an aborted run, or the guest running on
    both hosts stops the module with an explanation; a running copy is never touched.
  - After a failure the source guest keeps running (it is resumed if the failure left it paused),
    and whatever this run created on the destination is removed.
  - A shut-off guest is migrated offline (definition only); libvirt cannot copy storage offline,
    so that needs O(copy_storage=none).
  - The module marks the live XML of a guest it migrates with a C(<kvmops:migration run=...>)
    metadata element (live definition only). It lets a later run recognise a leftover as its own
    (O(cleanup_leftover)).
author:
  - kvmops.migration contributors (!UNKNOWN)
requirements:
  - libvirt-python (python3-libvirt) on the source host
  - lxml (python3-lxml) on the source host
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads both hosts and returns the plan (flags, parameters, disks, URIs, timeout) without moving anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details: A guest that already runs on the destination and is absent (or shut off) on the source gives C(changed=false).
options:
  migrate_port:
    description: TCP port of the memory migration stream on the destination (C(tcp://<dest_host>:<port>)); default chosen by libvirt (49152 and up).
    type: int
  disks_port:
    description: TCP port of the NBD storage stream on the destination; default chosen by libvirt.
    type: int
  live:
    description: Migrate while the guest runs (C(VIR_MIGRATE_LIVE)); false pauses it during the move.
    type: bool
    default: true
  persistent:
    description: Define the guest persistently on the destination (C(VIR_MIGRATE_PERSIST_DEST)).
    type: bool
    default: true
  undefine_source:
    description: Remove the definition from the source after success (C(VIR_MIGRATE_UNDEFINE_SOURCE)).
    type: bool
    default: true
  keep_sparse:
    description:
      - Give the copied disks that have no discard mode C(discard='unmap') in the destination's
        B(live) definition (sent as C(VIR_MIGRATE_PARAM_DEST_XML)), so that zero blocks arrive as
        holes and the destination images stay sparse. Without it QEMU 10 / libvirt 11 fill a raw
        destination image completely, whatever O(detect_zeroes) says.
      - The discard mode is not guest ABI (the guest sees the same disk); the persistent
        definition is not changed. Not applied when O(dest_xml) is given. The disks concerned are
        returned in RV(plan.sparse_targets).
    type: bool
    default: true
  bandwidth_mibps:
    description: Bandwidth limit of the migration in MiB/s (C(VIR_MIGRATE_PARAM_BANDWIDTH)); unlimited when not set.
    type: int
  max_downtime_ms:
    description:
      - Maximum tolerable downtime at switch-over in milliseconds (C(virDomainMigrateSetMaxDowntime)), set once the job runs.
      - With O(downtime_steps) above 1 it is the top of the convergence ladder's downtime steps.
    type: int
  downtime_steps:
    description:
      - The convergence ladder's first lever - the maximum downtime in this many steps, evenly from
        O(downtime_start_ms) up to O(max_downtime_ms) (as oVirt and KubeVirt step it). The first is set
        once the job runs; each new memory pass (the last one did not get the remainder under the limit)
        raises it one step. V(1) sets O(max_downtime_ms) at once. Without O(max_downtime_ms) QEMU keeps its
        default (300 ms) and there are no steps.
      - The steps taken, with the time and memory pass of each, are returned in RV(convergence).
    type: int
    default: 1
  downtime_start_ms:
    description: The first maximum downtime of O(downtime_steps) in milliseconds.
    type: int
    default: 100
  postcopy_on_stall:
    description:
      - The ladder's last lever - switch to post-copy (C(virDomainMigrateStartPostCopy)) once the downtime
        is at its top and O(stall_iterations) more memory passes did not end the move (counted from the start of
        auto-converge's throttling when O(auto_converge) is set). Needs O(postcopy) (the job must start with
        C(VIR_MIGRATE_POSTCOPY)); never while disks are still copied.
      - Auto-converge, the middle lever, cannot be switched on during a job - O(auto_converge) starts the job
        with it, and QEMU then throttles the vCPUs only while the move does not converge.
    type: bool
    default: false
  stall_iterations:
    description: Memory passes at the top of the ladder before O(postcopy_on_stall) switches to post-copy.
    type: int
    default: 3
  switchover_bandwidth_bps:
    description:
      - The bandwidth available for the switch-over in bytes per second, for QEMU's decision when the
        remainder fits in the maximum downtime (C(VIR_MIGRATE_PARAM_BANDWIDTH_AVAIL_SWITCHOVER), libvirt 11.1,
        QEMU 9.1) instead of the rate it measured during the passes, which a O(bandwidth_mibps) cap holds
        down although the final copy is not capped. The role passes the link the pre-flight measured.
      - A binding without the parameter skips it with a warning in RV(plan.warnings).
    type: int
  auto_converge:
    description: Throttle the guest's vCPUs when memory does not converge (C(VIR_MIGRATE_AUTO_CONVERGE)).
    type: bool
    default: false
  auto_converge_initial:
    description: Initial vCPU throttling in percent for O(auto_converge).
    type: int
  auto_converge_increment:
    description: Throttling increment in percent for O(auto_converge).
    type: int
  tls:
    description:
      - Whether the memory and disk streams use QEMU's native TLS (C(VIR_MIGRATE_TLS)).
      - Not set (the default) - TLS when the source holds valid migration certificates (client
        certificate, key and CA in qemu.conf's C(migrate_tls_x509_cert_dir), default
        C(/etc/pki/qemu)); without them the move is refused before anything changes unless
        O(allow_insecure_transport=true). The destination's side is checked by
        M(kvmops.migration.preflight).
      - V(true) - TLS required; V(false) - plain TCP, only with O(allow_insecure_transport=true).
  postcopy:
    description:
      - Allow switching to post-copy (C(VIR_MIGRATE_POSTCOPY)). Only used on this explicit opt-in,
        and only switched on by O(timeout_action=postcopy). A failure during post-copy loses the guest.
  timeout_s_per_gib:
    description:
      - Completion timeout in seconds per GiB of memory plus copied disk allocation (as Nova's
        C(live_migration_completion_timeout)). 0 disables the timeout.
    type: float
    default: 800
  timeout_min_s:
    description: Lower bound of the completion timeout in seconds.
    type: float
    default: 300
  forecast:
    description:
      - The forecast of this move, as M(kvmops.migration.preflight) returns it (RV(kvmops.migration.preflight#module:forecast)).
      - When given and it converges, the completion timeout is O(timeout_forecast_multiple) times its
        C(total_s), at least O(timeout_min_s), instead of O(timeout_s_per_gib). When it does not converge
        (no total to scale), or is not given, O(timeout_s_per_gib) applies as before.
      - O(timeout_s_per_gib=0) disables the timeout in both cases.
    type: dict
  timeout_forecast_multiple:
    description:
      - How many times the forecast total time the move may take before O(timeout_action), when O(forecast) is given.
      - 0 or less ignores the forecast for the timeout.
    type: float
    default: 3
  timeout_action:
    description:
      - What happens when the completion timeout passes. C(abort) cancels the job (C(virDomainAbortJob));
        the guest stays on the source. C(postcopy) switches to post-copy (needs O(postcopy=true))
        when the memory phase runs, and aborts while disks are still being copied.
    type: str
    choices: [abort, postcopy]
    default: abort
  abort_grace_s:
    description: Seconds to wait for an aborted job to end before the module gives up and reports it.
    type: float
    default: 120
  sever_after_s:
    description:
      - Seconds after an abort (pre-copy only) after which, if the job still runs, the source QEMU's data
        connections to the destination (memory and disk streams, to O(migrate_port)/O(disks_port) or to
        libvirt's default migration ports 49152-49215) are closed with C(ss -K). On a link that drops
        packets this ends the aborted job within seconds; without it the job lasts until the link returns
        and a retransmission meets a reset, or until TCP gives up (about 15 minutes). The guest keeps running
        on the source with its disks untouched either way.
      - Needs C(ss) (iproute2) and a kernel with C(CONFIG_INET_DIAG_DESTROY); where that is missing the
        result's notes say so and the job is left to TCP. V(null) never closes connections.
      - From this point on (5 s after the abort when V(null)), while the job still stands, the abort is sent
        again every 5 s (libvirt 11.3 with QEMU 10.0 was seen keeping the cancelled job for minutes after
        QEMU's mirror job had concluded, until a second abort).
    type: float
    default: 10
  postcopy_recover_timeout_s:
    description:
      - Seconds a move that broke its link in post-copy waits for the move to end by itself once the link is back
        (QEMU's stream carries on after a silent cut). Meanwhile the guest waits on the destination for the memory
        pages still on the source; nothing is aborted, destroyed or undefined on either host.
      - When the time is up the module fails with C(values.state=postcopy_paused), saying where the guest is and the
        C(virsh migrate --postcopy-resume) command that resumes the move (libvirt's C(VIR_MIGRATE_POSTCOPY_RESUME)).
        The module never resumes by itself - in the collection's lab (libvirt 11.3) that resume crashed the
        destination's libvirtd. A rerun finds the guest in post-copy and waits again instead of starting a move.
    type: float
    default: 300
  poll_interval_s:
    description: Seconds between two job statistics polls.
    type: float
    default: 1
  dest_xml:
    description:
      - Domain XML for the destination's live definition (C(VIR_MIGRATE_PARAM_DEST_XML)); must keep the guest ABI.
      - Not logged (it can carry graphics passwords); the result shows only its length.
    type: str
  persist_xml:
    description:
      - Domain XML for the destination's persistent definition (C(VIR_MIGRATE_PARAM_PERSIST_XML)).
      - Not logged (it can carry graphics passwords); the result shows only its length.
    type: str
  unsafe:
    description:
      - Force a migration libvirt considers unsafe (C(VIR_MIGRATE_UNSAFE)), for example with a disk
        cache mode other than none on shared storage. Never set on your behalf.
    type: bool
    default: false
  expect_disks:
    description:
      - The copy set the pre-flight checked and the destination images were created for. Right before the
        move the guest's current XML and disk sizes (C(virDomainGetBlockInfo)) are compared with it; a disk
        added (hot-plugged) to or removed from the copy set, resized, or with another path or format stops the
        module before anything changes, naming the disk, with the advice to run the playbook again.
      - The C(preflight) module returns it as RV(kvmops.migration.preflight#module:checked.disks); the
        C(migrate_guest) role passes the disk facts it made the images from. Keys other than those below are
        ignored; a missing key is not compared.
      - Not given (the default), nothing is compared.
    type: list
    elements: dict
  expect_cpu:
    description:
      - C(sha256:) fingerprint of the guest's C(<cpu>) element as the pre-flight checked it
        (RV(kvmops.migration.preflight#module:checked.cpu)). A guest whose CPU definition (of the migratable
        live XML; the persistent one for a shut-off guest) differs now stops the module before anything changes.
      - Not given (the default), the CPU is not compared.
    type: str
  progress_file:
    description:
      - Path on the source host to append one JSON line of progress per poll to (phase, percent,
        bytes remaining, dirty rate). Useful with C(async) tasks. Created with mode 0640 if missing; never truncated.
    type: path
extends_documentation_fragment:
  - kvmops.migration.move.destination
  - kvmops.migration.move.health
  - kvmops.migration.move
notes:
  - Progress lines are also written to the system log of the source host (C(module.log)).
  - The result statistics come from libvirt's completed job statistics, read on the destination
    (libvirt transfers them there at the end of a migration) or on the source.
seealso:
  - name: libvirt migration
    description: Migration modes, flags and parameters.
    link: https://libvirt.org/migration.html
"""

EXAMPLES = r"""
- name: Move vm1 from this host to 198.18.0.2, copying its disks
  kvmops.migration.migrate:
    domain: vm1
    dest_host: 198.18.0.2
  delegate_to: "{{ source_host }}"

- name: Bounded migration with a bandwidth limit and a progress file
  kvmops.migration.migrate:
    domain: vm1
    dest_host: 198.18.0.2
    bandwidth_mibps: 100
    max_downtime_ms: 300
    auto_converge: true
    timeout_s_per_gib: 120
    timeout_min_s: 60
    progress_file: /var/tmp/vm1-migration.jsonl
  async: 7200
  poll: 10

- name: Show what would be done
  kvmops.migration.migrate:
    domain: vm1
    dest_host: "fd00::2"
    migrate_port: 49152
    disks_port: 49153
  check_mode: true
  register: plan

- name: Opt in to post-copy when the memory does not converge in time
  kvmops.migration.migrate:
    domain: busy-db
    dest_host: 198.18.0.2
    postcopy: true
    timeout_action: postcopy
"""

RETURN = r"""
state:
  description:
    - C(migrated), C(already_migrated) (nothing done) or C(planned) (check mode).
    - A failure in failed post-copy has C(values.state=postcopy_paused) (see O(postcopy_recover_timeout_s)).
  returned: always
  type: str
  sample: migrated
transport:
  description:
    - Which transport protects the move's streams (C(memory), C(disks)) - C(tls) (QEMU's native TLS,
      C(VIR_MIGRATE_TLS)), C(plain) (unencrypted, only with O(allow_insecure_transport)) or C(none)
      (nothing streamed - an offline move, or no disk copied); C(control) is the libvirt
      connection's scheme (C(ssh), C(tls), C(tcp)); C(encrypted) no stream crosses in clear.
  returned: when the guest was moved or planned
  type: dict
  sample: {tls: true, memory: tls, disks: tls, control: ssh, encrypted: true}
domain:
  description: Name of the guest on the source.
  returned: always
  type: str
uuid:
  description: UUID of the guest.
  returned: always
  type: str
source:
  description: libvirt URI of the source.
  returned: always
  type: str
destination:
  description: The destination address (O(dest_host)).
  returned: always
  type: str
now_on:
  description: Where the guest is after the run (the destination address, or the source URI in check mode).
  returned: always
  type: str
dest_state:
  description: State of the guest on the destination (C(running), C(paused), C(shutoff)).
  returned: when the guest is on the destination
  type: str
case:
  description: The destination state found before moving (C11 of the collection's field cases), C(none) when clean.
  returned: always
  type: str
plan:
  description: The migration that is (or would be) run.
  returned: when a migration is planned or run
  type: dict
  contains:
    flags:
      description: Names of the C(VIR_MIGRATE_*) flags.
      type: list
      elements: str
      sample: [VIR_MIGRATE_LIVE, VIR_MIGRATE_PERSIST_DEST, VIR_MIGRATE_UNDEFINE_SOURCE, VIR_MIGRATE_NON_SHARED_DISK]
    flags_value:
      description: The flags as a number.
      type: int
    params:
      description: libvirt's typed migration parameters by name (XML documents shortened).
      type: dict
      sample: {destination_name: vm1, migrate_uri: "tcp://198.18.0.2", disks_uri: "tcp://198.18.0.2", migrate_disks: [vda, vdb]}
    disks:
      description: Targets whose storage is copied.
      type: list
      elements: str
    sparse_targets:
      description: Copied disks given C(discard='unmap') in the destination's live definition (O(keep_sparse)).
      type: list
      elements: str
    dest_uri:
      description: libvirt URI of the destination.
      type: str
    migrate_uri:
      description: Memory stream URI.
      type: str
    disks_uri:
      description: Storage stream URI (libvirt 6.8 and later).
      type: str
    offline:
      description: Whether this is an offline migration (definition only).
      type: bool
    data_bytes:
      description: Memory plus copied disk allocation in bytes, the base of the completion timeout.
      type: int
    timeout_s:
      description: Completion timeout in seconds (null when disabled).
      type: int
    timeout_basis:
      description:
        - How RV(plan.timeout_s) was computed. V(per_gib) from O(timeout_s_per_gib), V(forecast) from
          O(forecast) and O(timeout_forecast_multiple), null when there is no timeout.
      type: str
    warnings:
      description: Features skipped (for example zero detection on old libvirt).
      type: list
      elements: str
stats:
  description: Completed job statistics.
  returned: when migrated
  type: dict
  contains:
    time_ms:
      description: Total time of the job in milliseconds.
      type: int
    downtime_ms:
      description: Time the guest was paused at switch-over, in milliseconds.
      type: int
    setup_ms:
      description: Setup time in milliseconds.
      type: int
    memory_bytes:
      description: Memory bytes transferred.
      type: int
    disk_bytes:
      description:
        - Bytes the storage copy processed (libvirt's C(disk_processed), from the source's job
          statistics). The NBD copy walks the whole virtual size of the copied disks, so this
          counts zero regions that were not sent; see RV(stats.disk_allocated_bytes) for the data
          the source disks really hold.
      type: int
    disk_allocated_bytes:
      description: Allocation in bytes of the copied disks on the source (the data that had to move).
      type: int
    data_bytes:
      description: All bytes transferred.
      type: int
    iterations:
      description: Number of memory passes.
      type: int
    dirty_rate_bytes_per_s:
      description: Guest memory dirty rate in bytes per second at the end.
      type: int
    memory_bps:
      description: Memory transfer rate in bytes per second.
      type: int
    disk_bps:
      description: Disk transfer rate in bytes per second.
      type: int
    stats_from:
      description:
        - Where the figures come from. C(completed) - the completed job statistics (of the destination, else
          the source); C(last_sample) - none were readable (after a post-copy move the source domain is gone and
          the destination may report none), so the last progress sample polled on the source gives them;
          C(completed+last_sample) - the sample filled in what the completed statistics lacked; C(none) - nothing known.
        - From a sample, RV(stats.time_ms) is at least the duration (the job ran on for at most one poll interval).
      type: str
      sample: completed
    downtime_estimated:
      description: RV(stats.downtime_ms) is libvirt's estimate from the last progress sample, not the measured downtime.
      type: bool
health:
  description:
    - The guest's health on the destination after the move (see O(health)); C(healthy) is null when the
      check is off or the guest was not running.
  returned: when migrated
  type: dict
  contains:
    healthy:
      description: Whether every check held.
      type: bool
    problems:
      description: Why the guest is not healthy, one line each.
      type: list
      elements: str
    state:
      description: The domain's state on the destination at the end of the watch.
      type: str
    panicked:
      description: Whether a guest panic (crash) was seen.
      type: bool
    panic:
      description: C(after_ms) (since the switch-over) and C(how) of the panic, or null.
      type: dict
    agent:
      description: C(answered), C(no answer), C(none) (no agent ran before the move) or C(not checked).
      type: str
    agent_ms:
      description: Milliseconds from the switch-over until the agent answered C(guest-ping).
      type: int
    clock:
      description:
        - C(offset_before_ms) and C(offset_after_ms) (the guest's clock minus the host's, in milliseconds, before and
          after the re-sync), C(synced) and a C(note); null without an answering agent.
      type: dict
    fstrim:
      description: C(not asked), C(done) or C(failed) with the reason.
      type: str
    time_to_healthy_ms:
      description: Milliseconds from the switch-over until every check held (null when unhealthy).
      type: int
    watched_ms:
      description: Milliseconds the guest was watched.
      type: int
nvram:
  description:
    - The guest's NVRAM file (its UEFI variables) on the source, read right after the switch-over, when the source's
      QEMU has stopped and libvirt has kept the file (the path its domain XML names, read on this host; nothing else
      is read). The C(migrate_guest) role compares it with the file on the destination
      (RV(kvmops.migration.host_info#module:guest_nvram)).
    - Null for a guest without an NVRAM file and for an offline move.
  returned: when migrated
  type: dict
  contains:
    path:
      description: The C(<nvram>) path of the guest's domain XML.
      type: str
    format:
      description: Its format (C(raw) unless the XML says another; another is not read).
      type: str
    exists:
      description: Whether the file exists (null when it could not be told).
      type: bool
    size:
      description: Its size in bytes, null when not read.
      type: int
    sha256:
      description: The SHA-256 of its content (hex), null when not read.
      type: str
    error:
      description: Why it was not read (missing, not a regular file, unreadable, a remote O(source_uri)), else null.
      type: str
  sample: {path: /var/lib/libvirt/qemu/nvram/vm1_VARS.fd, format: raw, exists: true, size: 540672,
           sha256: 6f1ed002ab5595859014ebf0951522d9d2ee3ae8f8f7a7c6b9b3f4a2e8f4a1b0, error: null}
progress:
  description: The last progress sample (phase, percent, bytes remaining, dirty rate in bytes per second).
  returned: when migrated
  type: dict
postcopy_recovery:
  description:
    - How a post-copy move whose link broke ended - C(state) (C(completed) once the link was back), C(paused_s)
      (seconds from the failure until the move ended, while the guest waited for its pages on the destination),
      C(waited_s), C(seen) (the source domain's phases seen - C(failed), C(active), C(gone)).
    - Absent when the move did not need it.
  returned: when a post-copy move lost its link and then completed
  type: dict
  sample: {state: completed, paused_s: 61.2, waited_s: 61.2, seen: [failed, gone]}
escalation:
  description: Why the completion timeout action (or the ladder's post-copy) was taken, if it was.
  returned: when migrated
  type: str
convergence:
  description: The convergence ladder - what the options allowed and the steps taken, each with when.
  returned: when migrated
  type: dict
  contains:
    allowed:
      description: "C(downtime_steps_ms) (the maximum downtimes of the steps), C(auto_converge), C(postcopy) (O(postcopy_on_stall)), C(stall_iterations)."
      type: dict
    steps:
      description:
        - "Each step taken - C(step) (C(downtime), C(auto_converge) or C(postcopy)), C(at_s) (seconds since the job
          started), C(memory_iteration) (libvirt's memory pass), and C(max_downtime_ms) of a downtime step,
          C(throttle_percent) and C(throttle_max_percent) of auto-converge (as QEMU throttled, observed);
          C(applied) false when libvirt refused the call."
      type: list
      elements: dict
    msg:
      description: The steps in words, for the summary.
      type: str
  sample: {allowed: {downtime_steps_ms: [100, 300, 500], auto_converge: true, postcopy: false, stall_iterations: 3},
           steps: [{step: downtime, at_s: 0.0, memory_iteration: null, max_downtime_ms: 100},
                   {step: downtime, at_s: 9.1, memory_iteration: 2, max_downtime_ms: 300},
                   {step: auto_converge, at_s: 12.2, memory_iteration: 3, throttle_percent: 20, throttle_max_percent: 40}],
           msg: "max downtime 100 ms at 0.0 s, 300 ms at 9.1 s (pass 2); auto-converge throttling 20 % at 12.2 s (pass 3), up to 40 %"}
warnings:
  description: Things the operator should know (skipped features, notes of the run), given as Ansible warnings.
  returned: when there are any
  type: list
  elements: str
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
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _host
from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _migration, _migration_monitor, _migration_plan


def argument_spec():
    return dict(
        _args.migrate_spec(),
        progress_file=dict(type="path"),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    _module.check_requirements(module)
    params = dict(module.params)
    progress_file = params.pop("progress_file")
    opts = _migration_plan.MigrationOptions(**params)
    runtime = _migration.Runtime(log=module.log,
                                 progress=_migration_monitor.progress_writer(progress_file, module.log))
    result = _module.call_backend(module, _migration.run_migration, opts, check_mode=module.check_mode, rt=runtime)
    # the role's verification of the source, read here (no remote call of its own)
    copied = [d["path"] for d in opts.expect_disks or [] if d.get("path")]
    module.exit_json(**_host.with_source_after(result, opts.source_uri, copied))


if __name__ == "__main__":
    main()
