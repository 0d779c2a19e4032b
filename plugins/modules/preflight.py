#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight
short_description: Check everything a live migration of one KVM guest needs, before anything is touched
version_added: 0.1.0
description:
  - Runs every check a migration of O(domain) from this host (the B(source)) to O(dest_host) needs
    and returns them as one report of findings, each with C(check), C(status) (C(ok), C(warning),
    C(error)), C(host), a message that names the thing and the fix, and the raw values seen.
  - "Checks: the guest is found exactly once in O(group) and is in O(require_state); source and
    destination are different machines (host UUID, address); name and UUID conflicts on the
    destination (a different domain, a leftover of an aborted run, already migrated, running on
    both); CPU compatibility of the running guest (vendor, features, feature names), machine type
    and emulator; free memory; the copy set (a writable disk left out must be declared shared and
    be shown shared), cache modes; every destination image path (absent, ours and matching,
    foreign or of another size), free space per destination filesystem, backing images for
    O(copy_storage=incremental); read-only media, kernel, initrd, dtb, loader and nvram present on the
    destination, and the nvram template when the nvram file is absent there (a missing UEFI loader or
    template names the firmware package to install, such as ovmf); every interface's bridge, network (present and active) or direct device, after
    O(network_map); the destination's libvirt transport port and connection; migration and disk
    ports; names resolve from the source to non-loopback addresses; TLS files; libvirt and QEMU
    versions and the libvirt the chosen options need."
  - Run it on the B(source) host, as the user and with the URI the migration will use.
  - Reads only. It never defines, starts, refreshes or creates anything, on either host.
  - The destination's files cannot be seen from the source. Pass what M(kvmops.migration.host_info)
    with O(kvmops.migration.host_info#module:paths) returned on the destination (one call) -
    RV(kvmops.migration.host_info#module:paths) as O(dest_disks),
    RV(kvmops.migration.host_info#module:mounts) as O(dest_mounts),
    RV(kvmops.migration.host_info#module:interfaces) as O(dest_interfaces) and
    RV(kvmops.migration.host_info#module:manifest) as O(dest_manifest) (or the same facts from
    M(kvmops.migration.disk_info) and C(ansible_mounts)). Without them the destination's libvirt
    storage pools are used where a pool covers the directory; anything else is reported as a
    warning C(not verified), never as ok.
author:
  - kvmops.migration contributors (@kvmops)
requirements:
  - libvirt-python (python3-libvirt) on the source host
  - lxml (python3-lxml) on the source host
  - qemu-img (qemu-utils) on the source host
options:
  group:
    description:
      - All hosts the guest could be on, to find it exactly once. The source and the destination
        need not be listed (the destination is checked for name and UUID conflicts anyway).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Host name for the report.
        type: str
        required: true
      uri:
        description: libvirt URI of the host, as reachable from the source.
        type: str
        required: true
  located:
    description:
      - Where the caller already found the guest (the C(migrate_guest) role's locate step, which reads
        every host of the group once). Given, the group is not searched again; the guest-location check
        judges these facts, with the source's state read now.
      - Leave the destination out of O(located.hosts); it is judged by the name and UUID conflict check.
      - Mutually exclusive with O(group).
    type: dict
    suboptions:
      source:
        description: Host name the guest was found on (the source), as in O(located.hosts).
        type: str
        required: true
      hosts:
        description: Host name to the guest's state there, for every host that defines the guest.
        type: dict
        default: {}
  shared_disks:
    description:
      - Targets declared on storage both hosts reach. Each must be shown shared (the same file,
        inode and size, in O(dest_disks)) or it is an error.
  network_map:
    description: Source bridge or network name to the destination's name, as used in the destination XML.
    type: dict
    default: {}
  require_state:
    description: State the guest must be in on the source. C(any) accepts running and shut off.
    type: str
    choices: [running, shut off, any]
    default: running
  tls:
    description:
      - Whether the memory and disk streams use QEMU's native TLS (C(VIR_MIGRATE_TLS)).
      - Not set (the default) - TLS whenever both hosts hold valid migration certificates; if they
        do not, the move is refused ("guest memory and disks would cross the network unencrypted")
        unless O(allow_insecure_transport=true).
      - V(true) - TLS is required; every certificate fault is an error.
      - V(false) - plain TCP, refused unless O(allow_insecure_transport=true).
      - "Checked on both hosts (the source as TLS client, the destination as server, in the
        directory of qemu.conf C(migrate_tls_x509_cert_dir), default C(/etc/pki/qemu)): each file
        present and readable by QEMU's user, each certificate within its validity and matching its
        key, both signed by one CA, and the destination's certificate naming O(dest_host) (or
        O(tls_destination)). The destination's files come from O(dest_tls)."
      - For O(transport=tls) the libvirt client files (C(/etc/pki/CA/cacert.pem),
        C(/etc/pki/libvirt/clientcert.pem), C(/etc/pki/libvirt/private/clientkey.pem)) are checked too.
  allow_insecure_transport:
    description:
      - Let guest memory and disks cross the network unencrypted (O(tls=false), or no usable
        certificates with O(tls) not set), and accept C(qemu+tcp://) or C(no_verify) destination
        URIs. Each is then a warning, not an error.
  dest_tls:
    description:
      - The destination's TLS material, as RV(kvmops.migration.host_info#module:tls) of
        M(kvmops.migration.host_info) with O(kvmops.migration.host_info#module:tls=true) run on the
        destination. Not given, only the source's certificates are checked (a warning).
    type: dict
  insecure_var:
    description:
      - The setting named in the transport messages as the one that allows an unencrypted move
        (the C(migrate_guest) role passes C(migrate_guest_allow_insecure_transport)).
    type: str
    default: allow_insecure_transport
  cold_move_var:
    description:
      - The setting that allows a cold move (the C(migrate_guest) role passes C(migrate_guest_allow_cold_move)).
        Given, an error of the C(cpu) or C(cpu_feature_names) check of a running guest says that only a cold move
        can fix it (the live CPU never changes in a live migration), names this setting and has
        C(values.cold_move) (C(offered), or C(allowed) with O(cold_move_allowed=true)).
      - Not given, those errors point to M(kvmops.migration.domain_cpu) and a cold boot.
    type: str
  cold_move_allowed:
    description: The setting O(cold_move_var) is true - the CPU errors then say that a cold move will fix them.
    type: bool
    default: false
  images_created_next:
    description:
      - The caller creates the absent destination images of the copied disks right after this check, as the
        C(kvmops.migration.migrate_guest) role does with M(kvmops.migration.disk_image). An absent image is then reported
        as C(ok) (created next) instead of a warning that asks to create it.
    type: bool
    default: false
  ports:
    description: Ports probed on O(dest_host) from the source.
    type: dict
    default: {}
    suboptions:
      migrate:
        description: Memory migration port (the first of libvirt's default range 49152-49215).
        type: int
        default: 49152
      disks:
        description: Disk (NBD) port.
        type: int
        default: 49153
      timeout_s:
        description: Connect timeout per port, in seconds.
        type: float
        default: 3.0
      ignore_blocked:
        description:
          - Report a migration or disk port that is closed, filtered or unreachable from the source as a
            warning instead of an error (for a firewall that opens the ports only while a migration runs).
            The move then probably fails after the destination images were created.
        type: bool
        default: false
  detect_zeroes:
    description: The migration will use zero detection (needs libvirt 10.9 on both hosts; a warning otherwise).
  parallel_connections:
    description: The migration will use parallel connections (needs libvirt 5.2).
  postcopy:
    description: The migration may switch to post-copy.
  compression:
    description: Compression methods the migration will use.
  cleanup_leftover:
    description: A paused leftover of an earlier kvmops run on the destination will be removed (a warning, not an error).
  dest_disks:
    description:
      - The RV(kvmops.migration.disk_info#module:disks) list that M(kvmops.migration.disk_info) returned
        on the destination for the guest's image, media, kernel, initrd, dtb, loader, nvram and nvram template paths,
        or the same list as RV(kvmops.migration.host_info#module:paths) of
        M(kvmops.migration.host_info) run there with O(kvmops.migration.host_info#module:paths).
    type: list
    elements: dict
    default: []
  dest_interfaces:
    description:
      - Names of the destination's network interfaces (its C(ansible_interfaces) fact, or
        RV(kvmops.migration.host_info#module:interfaces)), for the bridge and direct-device checks. Without it libvirt's interface driver is asked, which
        many hosts lack (then the check is a warning, not verified).
    type: list
    elements: str
  dest_mounts:
    description:
      - The destination's C(ansible_mounts) fact (C(mount), C(device), C(size_available) in bytes),
        or RV(kvmops.migration.host_info#module:mounts), for the free space check.
    type: list
    elements: dict
    default: []
  dest_manifest:
    description:
      - Entries of the kvmops manifest on the destination (C(/var/lib/kvmops-migration/manifest.json),
        key C(entries); RV(kvmops.migration.host_info#module:manifest)). An existing destination
        image is ok only when listed there.
      - When not given, an existing image of the right size is a warning (unknown owner).
    type: list
    elements: dict
  forecast:
    description:
      - The forecast of the move (issue 19). A running guest is measured on the source for O(forecast.seconds)
        while the other checks run, read-only - its memory dirty rate (C(virDomainStartDirtyRateCalc), then
        the C(dirtyrate) domain statistics), the write rate of its copied disks (two C(virDomainBlockStats)
        samples over the same window) and its memory in use (C(virDomainMemoryStats), else its maximum
        memory). From those, the copied disks' allocation and the link rate it forecasts the total time,
        the memory passes, the downtime, whether pre-copy converges, and the gentlest lever that would
        make it converge (RV(forecast), finding C(forecast)).
      - The link's throughput is measured through the migration port the move will use (O(forecast.link_probe),
        with O(dest_probe)) - the source streams zeros to the destination's listener for about 1 s (at most
        256 MiB), the listener reports the bytes it received and over what time, and the rate is theirs
        (finding C(forecast), values C(link_bps) and C(link_seconds); C(forecast.link)). The move's rate is the
        least of it and the cap O(forecast.bandwidth_mibps).
      - Without a measurement - O(forecast.link_mibps) when given, else the bandwidth cap, else an assumed
        1 Gbit/s; the forecast says that the rate is assumed.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Measure the guest and forecast the move (a running guest only).
        type: bool
        default: true
      seconds:
        description: The measuring window in seconds (at least 1); it overlaps the other checks.
        type: int
        default: 1
      link_probe:
        description:
          - Measure the link through the migration port's probe (about 1 s, at most 256 MiB of zeros, overlapping the
            guest's measuring window); needs O(dest_probe).
        type: bool
        default: true
      link_mibps:
        description: The throughput of the path from the source to the destination in MiB/s, when not measured.
        type: float
      bandwidth_mibps:
        description: The bandwidth cap the move will have in MiB/s (O(kvmops.migration.migrate#module:bandwidth_mibps)).
        type: int
      max_downtime_ms:
        description:
          - The maximum downtime the move will allow in milliseconds (O(kvmops.migration.migrate#module:max_downtime_ms)).
          - Not set - QEMU's default, 300 ms.
        type: int
      stream_mibps:
        description: What one migration connection carries in MiB/s when known, for the parallel-connections advice.
        type: float
  dest_probe:
    description:
      - RV(kvmops.migration.preflight_dest#module:probe) of M(kvmops.migration.preflight_dest) run on the
        destination just before. With it the migration and disk ports are probed against the listeners
        it holds (C(open), C(closed) by a REJECT rule, C(filtered) by a DROP rule are told apart, and
        the port probed is the one the move will get), and its marker files decide whether a disk's
        directory is shared with the destination (a marker seen on the source means shared, and the disk
        is not copied; a marker not seen means not shared, whatever inode and size say).
      - Without it, ports get a plain connect and shared storage is shown by the same inode and size
        in O(dest_disks).
    type: dict
    suboptions:
      probe_id:
        description: The probe's id.
        type: str
        required: true
      ports:
        description: The ports the listener holds.
        type: list
        elements: dict
        default: []
        suboptions:
          requested:
            description: The port the move asks for.
            type: int
            required: true
          port:
            description: The port held; null when none.
            type: int
          state:
            description: C(listening) or C(unavailable).
            type: str
            required: true
          reason:
            description: Why another or no port is held.
            type: str
      markers:
        description: The marker files made on the destination.
        type: list
        elements: dict
        default: []
        suboptions:
          dir:
            description: The directory.
            type: str
            required: true
          path:
            description: The marker file.
            type: str
            required: true
          state:
            description: C(created), C(absent) or C(error).
            type: str
            required: true
          reason:
            description: Why no marker was made.
            type: str
      pid:
        description: The destination's probe process (informational).
        type: int
      lifetime_s:
        description: Its lifetime (informational).
        type: float
  fail_on_error:
    description:
      - Fail the task when any finding is an error. Set to false to collect reports of many guests;
        RV(report.ok) then tells the result.
    type: bool
    default: true
extends_documentation_fragment:
  - kvmops.migration.move.destination
  - kvmops.migration.move
  - kvmops.migration.attributes.info_module
notes:
  - "Ports, with O(dest_probe): the listener of M(kvmops.migration.preflight_dest) holds the port the
    move will get; its answer is C(open) (ok), a reset is C(closed) (a REJECT rule, error), no answer
    is C(filtered) (a DROP rule, error), an answer that is not the listener's is an error (a NAT or
    proxy), each naming the firewall fix. Without it the destination QEMU listens on its ports only
    during an incoming migration: a connection accepted proves the route; C(connection refused)
    means the host answered but a firewall REJECT rule answers the same way, so it is reported as
    ok with C(values.verified=false) and the words C(not verifiable until the migration); no answer
    is an error (a firewall that drops: the move would fail after the images were created); an
    unreachable host is an error. O(ports.ignore_blocked) makes these errors warnings. The libvirt
    transport port (ssh 22, tls 16514) must accept a connection."
  - "Shared storage: a disk shown shared (the O(dest_probe) marker, else inode and size) is not
    copied (RV(shared_detected)); a writable disk that is not copied must be on a filesystem the
    source's libvirt knows as shared (NFS, GFS2, OCFS2, CephFS, GPFS, BeeGFS ..., read from
    C(/proc/self/mounts)) or under C(shared_filesystems) of its C(/etc/libvirt/qemu.conf), else it
    is an error naming that setting (libvirt would refuse with C(Migration without shared storage
    is unsafe))."
  - The destination's own host name is resolved too; it is a warning only, because
    M(kvmops.migration.migrate) passes explicit data URIs built from O(dest_host).
  - Memory is compared with the guest's maximum memory; free memory comes from
    C(virNodeGetFreeMemory), reclaimable page cache from C(virNodeGetMemoryStats).
  - A copied disk with a cache mode other than C(none) or C(directsync) is a warning; a disk that
    is not copied with such a cache mode is an error when the source's QEMU is older than 4.0
    (libvirt refuses it as C(Unsafe migration)), else a warning (QEMU drops the destination's page
    cache at the switch-over).
seealso:
  - module: kvmops.migration.migrate
  - module: kvmops.migration.disk_info
  - module: kvmops.migration.disk_image
  - name: libvirt TLS certificates
    description: Where libvirt looks for CA, client and server certificates.
    link: https://libvirt.org/kbase/tlscerts.html
"""

EXAMPLES = r"""
- name: Read the destination's view of the guest's paths, its filesystems, interfaces and manifest
  kvmops.migration.host_info:
    domains: false
    paths:
      - /var/lib/libvirt/images/vm1.qcow2
      - /var/lib/libvirt/isos/seed.iso
  delegate_to: hostb
  register: dst

- name: Open the destination's side of the port and shared-storage probes
  kvmops.migration.preflight_dest:
    probe_id: "{{ lookup('ansible.builtin.password', '/dev/null', chars=['ascii_lowercase', 'digits'], length=16) }}"
    ports: [49152, 49153]
    paths:
      - /var/lib/libvirt/images/vm1.qcow2
  delegate_to: hostb
  register: dst_probe
  check_mode: false

- name: Pre-flight of vm1 to hostb, run on the source
  kvmops.migration.preflight:
    domain: vm1
    dest_host: 198.18.0.2
    dest_probe: "{{ dst_probe.probe }}"
    dest_disks: "{{ dst.paths }}"
    dest_mounts: "{{ dst.mounts }}"
    dest_interfaces: "{{ dst.interfaces }}"
    dest_manifest: "{{ dst.manifest }}"
    network_map:
      br-vlan774: br0
  delegate_to: hosta
  register: pre

- name: Collect reports for many guests without failing
  kvmops.migration.preflight:
    domain: "{{ item }}"
    dest_host: 198.18.0.2
    group:
      - {name: hostc, uri: "qemu+ssh://root@198.18.0.3/system"}
    fail_on_error: false
  loop: [vm1, vm2]
  register: reports

- name: List the guests that cannot move
  ansible.builtin.debug:
    msg: "{{ reports.results | rejectattr('report.ok') | map(attribute='domain') | list }}"
"""

RETURN = r"""
report:
  description: The pre-flight report.
  returned: always
  type: dict
  contains:
    ok:
      description: True when no finding is an error.
      type: bool
      sample: false
    findings:
      description: Every check's finding, in the order run.
      type: list
      elements: dict
      contains:
        check:
          description: >-
            Name of the check: C(dest_connection), C(transport_port), C(destination_domain),
            C(guest_location), C(guest_state), C(distinct_hosts), C(cpu), C(cpu_feature_names),
            C(machine), C(emulator), C(memory), C(copy_set), C(shared_storage), C(cache_mode),
            C(dest_image), C(backing_chain), C(free_space), C(required_file), C(network),
            C(name_resolution), C(data_port), C(tls_files), C(tls_certificates), C(transport),
            C(transport_uri), C(versions), C(feature_support), C(forecast) and
            others for host access (C(source_connection), C(host_facts), C(group_host)).
          type: str
          sample: network
        status:
          description: C(ok), C(warning) or C(error).
          type: str
          sample: error
        host:
          description: The host the finding is about (an address or libvirt URI).
          type: str
          sample: 198.18.0.2
        msg:
          description: What was found, naming the thing and the fix.
          type: str
          sample: "The bridge br-vlan774 of NIC 52:54:00:00:00:01 does not exist on 198.18.0.2: create it there, or map it ..."
        values:
          description: Raw values seen; sizes in bytes (keys end in C(_bytes)), ports as numbers.
          type: dict
          sample: {mac: "52:54:00:00:00:01", type: bridge, source: br-vlan774, dest_source: br-vlan774, exists: false}
summary:
  description: Counts of the findings and one line for the operator.
  returned: always
  type: dict
  contains:
    errors: {description: Number of errors., type: int}
    warnings: {description: Number of warnings., type: int}
    oks: {description: Number of ok findings., type: int}
    checks: {description: Number of findings., type: int}
    msg: {description: One line; the error messages when there are errors., type: str}
failed_checks:
  description: Names of the checks with an error.
  returned: always
  type: list
  elements: str
  sample: [network, free_space]
already_migrated:
  description: The guest already runs on the destination and is absent on the source; the other checks were skipped.
  returned: always
  type: bool
checked:
  description:
    - What the checks saw, to hand to the C(migrate) module as O(kvmops.migration.migrate#module:expect_disks)
      and O(kvmops.migration.migrate#module:expect_cpu), so that it refuses a guest changed since.
  returned: always
  type: dict
  contains:
    disks:
      description: The copy set with its geometry (virtual size in bytes); empty when nothing is copied.
      type: list
      elements: dict
      sample: [{target: vda, path: /var/lib/libvirt/images/vm1.qcow2, format: qcow2, virtual_size: 10737418240}]
    cpu:
      description: C(sha256:) fingerprint of the guest's C(<cpu>) element as checked; null when the XML was not read.
      type: str
      sample: "sha256:0c5e..."
shared_detected:
  description:
    - Targets that would be copied but are shown on storage shared with the destination (identity probe
      of O(dest_probe), else the same inode and size). They are not copied; pass them to
      M(kvmops.migration.migrate) in O(kvmops.migration.migrate#module:shared_disks).
  returned: always
  type: list
  elements: str
  sample: [vda]
copy_set:
  description: Targets a storage migration copies (empty when the copy set is unsafe).
  returned: always
  type: list
  elements: str
  sample: [vda]
copy_bytes:
  description:
    - Bytes the storage migration sends for RV(copy_set) (the allocation of each disk, its virtual size when
      the allocation is unknown); V(0) when nothing is copied. The evacuate role moves the largest guests
      (memory plus this) first.
  returned: always
  type: int
  sample: 2147483648
probe_ended:
  description:
    - Whether every port the destination's probe listener (O(dest_probe)) holds was probed open, so that the
      listener has ended and removed its marker files itself. When false (no listener, no port, or a port not
      reached), the caller removes the markers (M(kvmops.migration.preflight_dest) with C(state=absent)).
  returned: always
  type: bool
domain:
  description: The guest as given in O(domain).
  returned: always
  type: str
source:
  description: libvirt URI of the source.
  returned: always
  type: str
destination:
  description: O(dest_host).
  returned: always
  type: str
dest_uri:
  description: libvirt URI used for the destination.
  returned: always
  type: str
  sample: qemu+ssh://root@198.18.0.2/system
forecast:
  description:
    - The forecast of the move from the measured guest (O(forecast)); null when the guest is not running, the
      forecast is off, or the checks stopped before the guest was read. Sizes in bytes, rates in bytes per second,
      times in seconds (C(_s)) and milliseconds (C(_ms)).
    - C(verdict) is C(converges) or C(does not converge); C(reason) says why. C(total_s), C(memory_passes) and
      C(downtime_ms) are null when it does not converge. C(recommendation) is the gentlest lever (C(lever) one of
      C(none), C(bandwidth), C(parallel_connections), C(downtime), C(auto_converge), C(postcopy), C(sync_writes),
      and C(msg)); C(levers) every lever that would help, gentlest first.
    - C(link) is the link measurement (C(bps), C(bytes) the listener received over C(seconds), C(port)), null when
      not measured; C(link_measured) false means the link rate was assumed (C(assumptions) says which); C(inputs.sources) says
      where each input came from; C(measured) is what the guest's measurement saw (C(problems) what it could not).
    - The model ignores compression, zero detection, the working set and changes of the dirty rate during the
      move (see docs/how-it-works.md).
  returned: always
  type: dict
  sample:
    verdict: converges
    converges: true
    total_s: 1.9
    storage_s: 1.1
    memory_s: 0.75
    memory_passes: 1
    downtime_ms: 106
    link_measured: true
    link: {bps: 117440512.0, bytes: 117440512, seconds: 1.0, port: 49152}
    recommendation: {lever: none, msg: "none: it converges as asked"}
    msg: "Forecast: converges in about 1.9 s (1 memory pass(es), downtime about 106 ms) at 112 MiB/s (link measured 112 MiB/s over 1.0 s)."
transport:
  description:
    - Which transport protects the move's streams (C(memory), C(disks)) - C(tls) (QEMU's native TLS,
      C(VIR_MIGRATE_TLS)), C(plain) (unencrypted, only with O(allow_insecure_transport)) or C(none)
      (nothing streamed - an offline move, or no disk copied); C(control) is the libvirt
      connection's scheme (C(ssh), C(tls), C(tcp)); C(encrypted) no stream crosses in clear.
  returned: when the guest was found on the source (null before)
  type: dict
  sample: {tls: true, memory: tls, disks: tls, control: ssh, encrypted: true}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _module
from ansible_collections.kvmops.migration.plugins.module_utils import _preflight


def argument_spec() -> dict:
    return dict(
        _args.preflight_spec(),
        fail_on_error=dict(type="bool", default=True),
    )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=[("group", "located")])
    _module.check_requirements(module)
    result = _module.call_backend(module, _preflight.run_module, module.params)
    if module.params["fail_on_error"] and not result["report"]["ok"]:
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
