# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts of one hypervisor host, read-only: identity, versions, memory, and its domains.

What the roles need to locate a guest in a group, to place guests by free memory, and to find
duplicated host UUIDs (case C10) before anything is touched:

* ``host``: host name, the host UUID libvirt reports (``//host/uuid`` of the capabilities) and
  the one configured in libvirtd.conf (``host_uuid``), CPU vendor/model, CPU count, libvirt and
  QEMU versions, total / free / available memory in bytes (``virNodeGetMemoryStats``: available
  is free + buffers + cached, the kernel's reclaimable page cache).
* ``domains``: every domain defined or running on the host: name, UUID, state, active,
  persistent, current memory in bytes and vCPU count (``virDomainGetInfo``).
* with ``guest``: where that domain is defined, ``guest_disks`` (the ``disks`` of ``disk_info``,
  by ``_disk_info.describe_domain``) and ``guest_paths`` (the files migration does not copy,
  ``_domain_xml.required_files``), so that locating a guest also describes it; ``guest_nvram``,
  the size and SHA-256 of its NVRAM file (UEFI variables) on this host (:func:`_nvram.read_nvram`
  of the path its domain XML names, nothing else), which the role compares after a move with the
  source's file at the switch-over.
* with ``paths`` (what the pre-flight needs of a destination, in one call): ``paths`` (the
  ``disks`` of ``disk_info paths=``, by ``_disk_info.describe_paths``), ``mounts`` (the filesystems
  holding them, in the shape of Ansible's ``ansible_mounts``), ``interfaces`` (the names of
  ``ansible_interfaces``) and ``manifest`` (the entries of the kvmops manifest).
* with ``tls``: ``tls``, the host's material for QEMU's native TLS migration
  (:func:`_tls.read_host_tls`: files, certificates, key fingerprints; never a key).

Relies on: ``virConnectGetCapabilities``, ``virConnectGetLibVersion``/``getVersion``,
``virNodeGetInfo``, ``virNodeGetMemoryStats(VIR_NODE_MEMORY_STATS_ALL_CELLS)``,
``virConnectListAllDomains``, ``virDomainGetInfo`` (memory in KiB); libvirtd.conf(5) syntax
``key = "value"`` with ``#`` comments; proc_pid_mounts(5) (``/proc/self/mounts``, fields as in
fstab(5), octal escapes such as ``\\040``); statvfs(3); ``/sys/class/net`` (one entry per
network interface of the host's network namespace, as Ansible's network facts read it).
"""

from __future__ import annotations

import os
import re
import socket
import stat as stat_module
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _conf, _cpu, _disk_info, _domain_xml, _image_geometry
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt, _manifest, _nvram, _postcopy, _runner, _storage, _tls
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError


DEFAULT_LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
PROC_MOUNTS = "/proc/self/mounts"
SYS_CLASS_NET = "/sys/class/net"
KIB = 1024


_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def parse_host_uuid(conf_text: str) -> str | None:
    """The ``host_uuid`` value set in a libvirtd.conf text (the last one wins), or None
    (:func:`_conf.value`)."""
    return _conf.value(conf_text, "host_uuid")


def is_valid_host_uuid(value: str | None) -> bool:
    """A UUID libvirt accepts as ``host_uuid``: well formed, and not all digits the same
    (libvirt rejects e.g. 00000000-... and ffffffff-... as invalid host UUIDs)."""
    if not value or not _UUID_RE.match(value):
        return False
    return len(set(value.replace("-", "").lower())) > 1


def parse_capabilities(xml: str) -> dict[str, t.Any]:
    """Host UUID, arch, CPU vendor and model from ``virConnectGetCapabilities`` XML, as
    :func:`_cpu.parse_capabilities` (the one parser of it) reads them."""
    caps = _cpu.parse_capabilities(xml)
    return {"uuid": caps.uuid, "arch": caps.arch, "cpu_vendor": caps.cpu_vendor, "cpu_model": caps.cpu_model}


def memory_from_stats(stats: dict[str, int], total_kib: int | None = None) -> dict[str, int | None]:
    """Bytes from ``getMemoryStats`` (KiB): total, free, and available (free + buffers + cached)."""
    total = stats.get("total", total_kib)
    free = stats.get("free")
    available = None
    if free is not None:
        available = free + stats.get("buffers", 0) + stats.get("cached", 0)
    return {"memory_bytes": total * KIB if total is not None else None,
            "free_memory_bytes": free * KIB if free is not None else None,
            "available_memory_bytes": available * KIB if available is not None else None}


def domain_summary(dom: t.Any) -> dict[str, t.Any]:
    """Name, UUID, libvirt domain ID (-1 when inactive), state, its reason (``virDomainGetState``),
    ``postcopy`` (``failed``/``active``/None: :func:`_postcopy.phase`) and ``postcopy_side``
    (``source``/``destination``/None: :data:`_postcopy.SIDES`), active, persistent, memory
    (bytes), vCPUs of one ``virDomain``."""
    state, max_kib, cur_kib, vcpus, _cpu_time = dom.info()
    name = _libvirt.STATE_NAMES.get(state, "unknown")
    reason = int(dom.state()[1])
    return {"name": dom.name(), "uuid": dom.UUIDString(), "id": int(dom.ID()),
            "state": name, "reason": reason, "postcopy": _postcopy.phase(name, reason),
            "postcopy_side": _postcopy.SIDES.get((name, reason)),
            "active": bool(dom.isActive()), "persistent": bool(dom.isPersistent()),
            "memory_bytes": int(cur_kib) * KIB, "max_memory_bytes": int(max_kib) * KIB,
            "vcpus": int(vcpus)}


def read_conf(path: str) -> tuple[bool, str]:
    """(exists, text) of a configuration file; a missing file is not an error."""
    try:
        with open(path) as handle:
            return True, handle.read()
    except FileNotFoundError:
        return False, ""
    except OSError as err:
        raise KvmopsError("Could not read %s: %s." % (path, err.strerror)) from err


def host_facts(conn: t.Any, conf_text: str | None, conf_exists: bool, include_domains: bool = True,
               hostname: str | None = None) -> dict[str, t.Any]:
    """Everything :mod:`host_info` returns, from an open connection and the libvirtd.conf text."""
    with _libvirt.libvirt_errors("read the host capabilities"):
        caps = parse_capabilities(conn.getCapabilities())
        node = conn.getInfo()  # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
        lib_version = conn.getLibVersion()
        hv_version = conn.getVersion()
    mem_stats: dict[str, int] = {}
    try:
        mem_stats = conn.getMemoryStats(-1, 0)  # VIR_NODE_MEMORY_STATS_ALL_CELLS
    except Exception as err:  # an old or restricted driver: fall back to the node info total
        if not _libvirt.is_libvirt_error(err):
            raise
    memory = memory_from_stats(mem_stats, total_kib=int(node[1]) * KIB)
    configured = parse_host_uuid(conf_text or "")
    host = {
        "hostname": hostname or socket.gethostname(),
        "uri": _libvirt.uri_of(conn, None),
        "uuid": caps["uuid"],
        "uuid_configured": configured,
        "uuid_configured_valid": is_valid_host_uuid(configured) if configured is not None else None,
        "libvirtd_conf_exists": conf_exists,
        "arch": caps["arch"] or node[0],
        "cpu_vendor": caps["cpu_vendor"],
        "cpu_model": caps["cpu_model"],
        "cpus": int(node[2]),
        "libvirt_version": _libvirt.version_text(lib_version),
        "hypervisor_version": _libvirt.version_text(hv_version),
    }
    host.update(memory)
    result: dict[str, t.Any] = {"host": host}
    if include_domains:
        with _libvirt.libvirt_errors("list the domains"):
            domains = [domain_summary(d) for d in conn.listAllDomains(0)]
        domains.sort(key=lambda d: d["name"])
        host["running_memory_bytes"] = sum(d["memory_bytes"] for d in domains if d["active"])
        host["running_vcpus"] = sum(d["vcpus"] for d in domains if d["active"])
        result["domains"] = domains
    return result


def facts_after_move(uri: str = _libvirt.DEFAULT_URI, libvirtd_conf: str = DEFAULT_LIBVIRTD_CONF,
                     connect: t.Callable[..., t.Any] = _libvirt.connection) -> dict[str, t.Any] | None:
    """The source host's facts right after a move, as ``host_info`` returns them without a
    guest (``{host, domains}``: :func:`host_facts`), read over a new read-only connection to
    ``uri`` by the module that moved the guest, so that the role's verification of the source
    (the guest is gone from it) costs no remote call of its own.

    :returns: the facts, or None when they cannot be read (the role then reads the source with
        ``host_info``); never raises for libvirt's errors.
    """
    try:
        exists, text = read_conf(libvirtd_conf)
        with connect(uri, readonly=True) as conn:
            return host_facts(conn, text, exists)
    except KvmopsError:
        return None
    except Exception as err:  # a libvirt error of the read: the role reads the source itself
        if not _libvirt.is_libvirt_error(err):
            raise
        return None


def allocation_after_move(paths: t.Iterable[str], stat: t.Callable[[str], t.Any] = os.stat) -> dict[str, int]:
    """``{path: bytes allocated}`` of the source's copied image files right after a move
    (``st_blocks * 512``, what ``qemu-img info`` calls the actual size): what the copy had to
    carry at the switch-over, the guest's writes during the move included. Paths that are not
    regular files (block devices, whose allocation is their size) or cannot be read are left
    out."""
    out: dict[str, int] = {}
    for path in paths:
        try:
            st = stat(path)
        except OSError:
            continue
        if stat_module.S_ISREG(st.st_mode):
            out[str(path)] = int(st.st_blocks) * 512
    return out


def with_source_after(result: dict[str, t.Any], uri: str = _libvirt.DEFAULT_URI,
                      paths: t.Iterable[str] = ()) -> dict[str, t.Any]:
    """``result`` of ``migrate`` or ``cold_move`` with ``source_after`` (:func:`facts_after_move`
    of ``uri``) and ``source_allocation_after`` (:func:`allocation_after_move` of the copied
    images' ``paths``) when its ``state`` is ``migrated``; any other result unchanged. One place
    for both modules, so that the role's verification finds the same keys from either."""
    if result.get("state") == "migrated":
        result["source_after"] = facts_after_move(uri)
        result["source_allocation_after"] = allocation_after_move(paths)
    return result


def guest_facts(conn: t.Any, guest: str, uri: str, runner: _runner.Runner,
                read_nvram: t.Callable[..., dict[str, t.Any] | None] = _nvram.read_nvram) -> dict[str, t.Any]:
    """What the roles need of one guest on the host that defines it, read with ``conn``.

    :param read_nvram: :func:`_nvram.read_nvram` (tests inject another).
    :returns: ``{guest_disks, guest_paths, guest_nvram, guest_error}``: the disks as ``disk_info
        domain=`` returns them (:func:`_disk_info.describe_domain`), the paths of
        :func:`_domain_xml.required_files` (read-only media, kernel, initrd, dtb, loader,
        nvram, nvram template), the NVRAM file of the current XML read on this host
        (:func:`_nvram.read_nvram`: ``{path, format, exists, size, sha256, error}``, None
        without one) and no error; empty lists and None when the guest is not defined here. A
        failure to read the guest (its XML, an image qemu-img cannot read) is ``guest_error``
        with empty lists, so that the host's other facts (where the guest is) still come back;
        the role stops on it. An unreadable NVRAM file is its ``error``, never a failure.
    """
    out: dict[str, t.Any] = {"guest_disks": [], "guest_paths": [], "guest_nvram": None, "guest_error": None}
    try:
        dom = _libvirt.lookup_domain(conn, guest, required=False)
        if dom is None:
            return out
        described = _disk_info.describe_domain(conn, dom, uri, runner)
    except KvmopsError as err:
        out["guest_error"] = str(err)
        return out
    out["guest_disks"] = described["disks"]
    out["guest_paths"] = [f["path"] for f in _domain_xml.required_files(described["facts"])]
    out["guest_nvram"] = read_nvram(described["facts"].get("nvram"), described["facts"].get("nvram_format"))
    return out


def parse_mounts(text: str) -> list[dict[str, str]]:
    """The entries of ``/proc/self/mounts``: ``[{device, mount, fstype, options}]`` with octal
    escapes (``\\040`` for a space) decoded. A mount point mounted over keeps only its last
    entry, the filesystem that is visible there."""
    by_mount: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = [_OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), f) for f in line.split()]
        if len(fields) < 4:
            continue
        by_mount.pop(fields[1], None)
        by_mount[fields[1]] = {"device": fields[0], "mount": fields[1], "fstype": fields[2],
                               "options": fields[3]}
    return list(by_mount.values())


def mount_facts(entry: dict[str, str], statvfs: t.Callable[[str], t.Any] = os.statvfs) -> dict[str, t.Any]:
    """One filesystem in the shape of an ``ansible_mounts`` entry (the same ``statvfs``
    arithmetic as Ansible's mount facts): ``mount, device, fstype, options``, sizes in bytes
    (``size_total``, ``size_available`` = ``f_bavail * f_frsize``, what the pre-flight counts as
    free), ``block_size`` in bytes and ``block_*``/``inode_*`` counts.

    :raises KvmopsError: the filesystem cannot be read (statvfs failed).
    """
    try:
        vfs = statvfs(entry["mount"])
    except OSError as err:
        raise KvmopsError("Could not read the free space of filesystem %s (%s) on this host: %s. "
                          "Check that it is mounted and answers (df %s)." % (
                              entry["mount"], entry["device"], err.strerror or err, entry["mount"]),
                          detail=str(err)) from err
    return dict(entry, size_total=vfs.f_blocks * vfs.f_frsize, size_available=vfs.f_bavail * vfs.f_frsize,
                block_size=vfs.f_bsize, block_total=vfs.f_blocks, block_available=vfs.f_bavail,
                block_used=vfs.f_blocks - vfs.f_bavail, inode_total=vfs.f_files,
                inode_available=vfs.f_favail, inode_used=vfs.f_files - vfs.f_favail)


def mounts_holding(paths: t.Iterable[str], mounts_text: str,
                   statvfs: t.Callable[[str], t.Any] = os.statvfs) -> list[dict[str, t.Any]]:
    """The filesystems that hold ``paths`` (existing or not yet created), each once, as
    :func:`mount_facts`: per path the mount whose mount point is its longest prefix, the rule by
    which the pre-flight picks a filesystem from ``dest_mounts`` (``_storage.mount_holding``).
    Only these are measured: another filesystem (a hung network mount) is never touched."""
    table = parse_mounts(mounts_text)
    out: list[dict[str, t.Any]] = []
    seen: set[str] = set()
    for path in paths:
        entry = _storage.mount_holding(path, table)
        if entry is not None and entry["mount"] not in seen:
            seen.add(entry["mount"])
            out.append(mount_facts(entry, statvfs))
    return out


def interface_names(net_dir: str = SYS_CLASS_NET) -> list[str]:
    """The network interfaces of this host (bridges included), sorted: the names of Ansible's
    ``ansible_interfaces``, from the directories of ``/sys/class/net``."""
    try:
        names = os.listdir(net_dir)
    except OSError as err:
        raise KvmopsError("Could not list the network interfaces in %s on this host: %s."
                          % (net_dir, err.strerror or err), detail=str(err)) from err
    return sorted(n for n in names if os.path.isdir(os.path.join(net_dir, n)))


def path_formats(paths: t.Iterable[str], declared: t.Mapping[str, str | None] | None,
                 manifest: _manifest.Manifest, host: str) -> dict[str, str]:
    """The format to read each path as on this host: the manifest's when it records this very
    file (kvmops made it), else the declared one (``declared``: the source's format of the disk
    or backing layer at that path), else ``raw``. Never probed."""
    out = {}
    for path in paths:
        out[path] = manifest.recorded_format(host, path) or _image_geometry.read_format((declared or {}).get(path))
    return out


def path_facts(paths: list[str], runner: _runner.Runner, manifest_path: str = _manifest.DEFAULT_MANIFEST,
               mounts_file: str = PROC_MOUNTS, net_dir: str = SYS_CLASS_NET,
               statvfs: t.Callable[[str], t.Any] = os.statvfs,
               formats: t.Mapping[str, str | None] | None = None, host: str | None = None) -> dict[str, t.Any]:
    """What the pre-flight needs to know of a destination, read on it: the keys ``paths``
    (``disk_info paths=``), ``mounts``, ``interfaces`` and ``manifest`` (entries; [] when there
    is no manifest), for its options ``dest_disks``, ``dest_mounts``, ``dest_interfaces`` and
    ``dest_manifest``.

    Each path is read as :func:`path_formats` says (``qemu-img info -f FMT``), top layer only:
    no backing chain is followed here (the pre-flight looks every backing path up itself); a
    file not in its declared format is described as raw (``_image_geometry.read_as_declared``).

    :raises KvmopsError: a path is not absolute and normalised, or cannot be read.
    """
    for path in paths:
        _storage.check_image_path(path)
    manifest = _manifest.Manifest(manifest_path)
    fmts = path_formats(paths, formats, manifest, host or socket.gethostname())
    try:
        with open(mounts_file, "r", encoding="utf-8") as handle:
            mounts_text = handle.read()
    except OSError as err:
        raise KvmopsError("Could not read the mounted filesystems (%s) on this host: %s."
                          % (mounts_file, err.strerror or err), detail=str(err)) from err
    return {"paths": _disk_info.describe_paths(paths, runner, formats=fmts, follow_backing=False, fallback_raw=True),
            "mounts": mounts_holding(paths, mounts_text, statvfs),
            "interfaces": interface_names(net_dir),
            "manifest": manifest.entries()}


def run_host_info(params: dict[str, t.Any], runner: _runner.Runner | None = None,
                  connect: t.Callable[..., t.Any] = _libvirt.connection, **sources: t.Any) -> dict[str, t.Any]:
    """The ``host_info`` module: read-only facts of the local host (``params['uri']``), with
    :func:`guest_facts` when ``params['guest']`` is set and :func:`path_facts` when
    ``params['paths']`` is a list (even empty).

    :param sources: ``mounts_file``, ``net_dir``, ``statvfs`` of :func:`path_facts` (tests).
    """
    runner = runner or _runner.SubprocessRunner()
    exists, text = read_conf(params["libvirtd_conf"])
    with connect(params["uri"], readonly=True) as conn:
        result = host_facts(conn, text, exists, include_domains=params["domains"])
        if params.get("guest"):
            result.update(guest_facts(conn, params["guest"], params["uri"], runner))
    if params.get("paths") is not None:
        result.update(path_facts(params["paths"], runner,
                                 params.get("manifest_path") or _manifest.DEFAULT_MANIFEST,
                                 formats=params.get("formats"), **sources))
    if params.get("tls"):
        result["tls"] = _tls.read_host_tls()
    return result
